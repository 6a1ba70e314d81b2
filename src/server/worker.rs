//! [`Workers`]: where sessions run. One [`Worker`] actor on each worker thread starts the
//! sessions handed to it and owns their [`SessionRegistry`]; the server hands connections to
//! the workers in turn.
//!
//! A connection accepted on the server's own thread goes to that thread's worker as it is; one
//! for another thread is taken off the accepting thread's reactor (`into_std`) and registered
//! again on the worker's (`from_std`), so that each connection's I/O happens on one thread.

use std::{cell::Cell, io::Cursor, rc::Rc, sync::Arc};

use actix::{fut::wrap_future, prelude::*};
use actix_rt::ArbiterHandle;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    admission::Permit,
    metrics::{CloseReason, FLUSH_INTERVAL, Metrics, Tally},
    oracle::{Ask, OracleShard},
    protocol::Answer,
    proxy::{Proxied, ProxyPolicy},
    session::{SessionConfig, SessionDeps, SessionInfo, ZenSession, registry::SessionRegistry},
    threads::PerThread,
};

/// The worker of each worker thread, and whose turn it is.
pub struct Workers {
    workers: PerThread<Addr<Worker>>,
    next: usize,
    /// Where a connection that cannot be handed over is counted.
    metrics: Metrics,
}

impl Workers {
    /// Starts a worker on each of `arbiters`, whose sessions ask that thread's oracle shard,
    /// follow `config`, and count into `metrics`.
    pub fn start(
        arbiters: &PerThread<ArbiterHandle>,
        shards: &PerThread<Addr<OracleShard>>,
        config: SessionConfig,
        metrics: &Metrics,
    ) -> Self {
        let workers = arbiters.zip(shards).map(|(arbiter, shard)| {
            let (oracle, metrics) = (Addr::clone(shard).recipient(), metrics.clone());
            Worker::start_in_arbiter(arbiter, move |_| Worker::new(oracle, config, metrics))
        });
        Self { workers, next: 0, metrics: metrics.clone() }
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.workers.len().get()
    }

    /// Starts a session for `stream` on the next worker in turn; with `proxy`, once `stream`'s
    /// PROXY header has been read.
    /// A connection that cannot be handed over is closed and counted.
    pub fn adopt(&mut self, stream: TcpStream, info: SessionInfo, permit: Permit, proxy: Option<Arc<ProxyPolicy>>) {
        let index = self.next % self.count();
        self.next = self.next.wrapping_add(1);
        let Some(worker) = self.workers.get(index) else { return };
        let connection = if index == 0 {
            Connection::OnThisThread(stream)
        } else {
            match stream.into_std() {
                Ok(socket) => Connection::HandedOver(socket),
                Err(error) => {
                    tracing::warn!(peer = %info.peer, %error, "could not hand over accepted connection");
                    self.metrics.closed_unserved(CloseReason::Error);
                    return;
                }
            }
        };
        worker.do_send(Adopt { connection, info, permit, proxy });
    }

    /// Gives every worker new session limits (see [`SessionDeps::config`]).
    pub fn set_session_config(&self, config: SessionConfig) {
        for worker in self.workers.iter() {
            worker.do_send(SetSessionConfig(config));
        }
    }

    /// Tells every worker to drain its sessions.
    pub fn drain(&self) {
        for worker in self.workers.iter() {
            worker.do_send(DrainSessions);
        }
    }

    /// Resolves once every worker has answered a liveness message.
    ///
    /// # Errors
    ///
    /// [`MailboxError`] if a worker is gone.
    pub fn check_alive(&self) -> impl Future<Output = Result<(), MailboxError>> + use<> {
        let checks: Vec<_> = self.workers.iter().map(|worker| worker.send(WorkerAlive)).collect();
        async move {
            for check in checks {
                check.await?;
            }
            Ok(())
        }
    }
}

/// An accepted connection on its way to a worker.
enum Connection {
    /// Registered with the reactor of the worker's own thread already.
    OnThisThread(TcpStream),
    /// Taken off another thread's reactor, to be registered on the worker's.
    HandedOver(std::net::TcpStream),
}

/// Starts a session for a connection on the worker's thread.
#[derive(Message)]
#[rtype(result = "()")]
struct Adopt {
    connection: Connection,
    info: SessionInfo,
    permit: Permit,
    /// Read a PROXY header first, as this policy says.
    proxy: Option<Arc<ProxyPolicy>>,
}

/// Tells the worker's sessions to drain, and the ones it starts later too.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct DrainSessions;

/// New limits for the worker's sessions.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct SetSessionConfig(SessionConfig);

impl Handler<SetSessionConfig> for Worker {
    type Result = ();

    fn handle(&mut self, SetSessionConfig(config): SetSessionConfig, _ctx: &mut Self::Context) {
        self.deps.config.set(config);
    }
}

/// Answered at once: the worker's thread is not stuck.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct WorkerAlive;

/// The sessions of one worker thread.
pub struct Worker {
    /// Shared by every session of this worker.
    deps: Rc<SessionDeps>,
}

impl Worker {
    fn new(oracle: Recipient<Ask>, config: SessionConfig, metrics: Metrics) -> Self {
        let registry = SessionRegistry::new();
        Self {
            deps: Rc::new(SessionDeps {
                oracle,
                config: Cell::new(config),
                registry,
                tally: Tally::default(),
                metrics,
            }),
        }
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.spawn(wrap_future(self.deps.registry.clone().run_timers()));
        if self.deps.metrics.is_enabled() {
            ctx.run_interval(FLUSH_INTERVAL, |worker, _| worker.deps.metrics.add(&worker.deps.tally));
        }
    }
}

impl Handler<Adopt> for Worker {
    type Result = ();

    fn handle(&mut self, Adopt { connection, info, permit, proxy }: Adopt, ctx: &mut Self::Context) {
        let stream = match connection {
            Connection::OnThisThread(stream) => stream,
            Connection::HandedOver(socket) => match TcpStream::from_std(socket) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(peer = %info.peer, %error, "could not register accepted connection");
                    self.deps.tally.closed(CloseReason::Error);
                    return;
                }
            },
        };
        let Some(proxy) = proxy else {
            ZenSession::start_tcp(stream, info, self.deps.clone(), permit);
            return;
        };
        let deps = self.deps.clone();
        ctx.spawn(wrap_future(async move {
            let (mut read, write) = stream.into_split();
            match proxy.read_header(&mut read, info.peer).await {
                Ok(Proxied { client: None, header_bytes, .. }) if deps.registry.is_draining() => {
                    // A load balancer's health check: tell it this server is going away.
                    tracing::debug!(peer = %info.peer, "failing a health check while draining");
                    deps.tally.received(header_bytes);
                    let mut write = write;
                    if write.write_all(Answer::SHUTTING_DOWN.as_bytes()).await.is_ok() {
                        deps.tally.sent(Answer::SHUTTING_DOWN.as_bytes().len());
                    }
                    deps.tally.closed(CloseReason::Shutdown);
                    drop(permit);
                }
                Ok(Proxied { client, header_bytes, rest }) => {
                    deps.tally.received(header_bytes);
                    tracing::debug!(proxy = %info.peer, client = ?client, "PROXY header read");
                    let info = SessionInfo { peer: client.unwrap_or(info.peer), ..info };
                    ZenSession::start(Cursor::new(rest).chain(read), write, info, deps, permit);
                }
                Err(error) => {
                    tracing::info!(peer = %info.peer, %error, "closing a connection without a valid PROXY header");
                    deps.tally.closed(CloseReason::Proxy);
                }
            }
        }));
    }
}

impl Handler<WorkerAlive> for Worker {
    type Result = ();

    fn handle(&mut self, _: WorkerAlive, _ctx: &mut Self::Context) {}
}

impl Handler<DrainSessions> for Worker {
    type Result = ();

    fn handle(&mut self, _: DrainSessions, _ctx: &mut Self::Context) {
        self.deps.registry.drain();
    }
}
