//! [`Server`]: the actor that owns the listeners, accepts connections and places one
//! [`ZenSession`] per client on the worker arbiters, round robin.
//!
//! A session placed on another arbiter gets its socket taken off this arbiter's reactor
//! (`into_std`) and registered again on that arbiter's (`from_std`), so each connection's I/O
//! happens on one thread; sessions placed on the server's own arbiter need neither. Every session holds a [`ConnectionPermit`] from the server's [`ConnectionCount`],
//! released when the session is dropped however it ends, so the count needs no message per
//! connection. On [`Drain`] the server stops accepting, tells every session to finish, and
//! replies once the count is zero or the shutdown timeout has passed.

use std::{
    io::Write,
    mem,
    net::{Shutdown, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use tokio::{net::TcpStream, sync::oneshot};

use crate::{
    listener::{AcceptError, AcceptStream, Accepted},
    local_sessions,
    oracle::Ask,
    protocol::Answer,
    session::{SessionConfig, SessionDeps, SessionInfo, ZenSession},
};

/// How often a drain checks whether every session is gone.
pub const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Settings of the server actor.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Passed to every session.
    pub session: SessionConfig,
    /// Sessions served at once; clients beyond it are told the server is busy.
    pub max_connections: usize,
    /// How long a drain waits for sessions before giving up on them.
    pub shutdown_timeout: Duration,
}

/// An arbiter that runs sessions, and the oracle its sessions ask (on the same arbiter, so
/// asking never crosses threads).
#[derive(Debug, Clone)]
pub struct Worker {
    /// Where sessions run: another arbiter, or `None` for the server's own, whose sessions
    /// need no hand-over between threads at all.
    pub arbiter: Option<ArbiterHandle>,
    /// The oracle for those sessions.
    pub oracle: Recipient<Ask>,
}

/// The number of connections being served.
#[derive(Debug, Clone, Default)]
pub struct ConnectionCount(Arc<AtomicUsize>);

impl ConnectionCount {
    /// Connections admitted whose permit has not been released yet.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Counts one more connection until the returned permit is dropped.
    pub fn admit(&self) -> ConnectionPermit {
        self.0.fetch_add(1, Ordering::AcqRel);
        ConnectionPermit(self.0.clone())
    }
}

/// One connection's place in a [`ConnectionCount`], given back when dropped.
#[derive(Debug)]
pub struct ConnectionPermit(Arc<AtomicUsize>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Stop accepting, let every session answer what it was asked, and reply when all are gone.
#[derive(Debug, Message)]
#[rtype(result = "DrainReport")]
pub struct Drain;

/// How a drain ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions still open when the shutdown timeout ran out (0 on a clean drain).
    pub unfinished: usize,
    /// Time from the start of the drain to its end.
    pub elapsed: Duration,
}

/// The accepting actor.
pub struct Server {
    /// Moved into the actor's context when it starts.
    listeners: Vec<AcceptStream>,
    accepting: Vec<SpawnHandle>,
    workers: Vec<Placement>,
    next_worker: usize,
    config: ServerConfig,
    live: ConnectionCount,
    /// Clients refused since the server last had room, for one log line per episode.
    refused_while_full: u64,
    last_id: u64,
    drain: Option<DrainState>,
}

/// Where sessions go: an arbiter (`None` for the server's own) and what its sessions need, one
/// shared copy per worker.
struct Placement {
    arbiter: Option<ArbiterHandle>,
    deps: Arc<SessionDeps>,
}

struct DrainState {
    started: Instant,
    waiters: Vec<oneshot::Sender<DrainReport>>,
}

impl Server {
    /// A server accepting on `listeners` and running sessions on `workers`, round robin.
    pub fn new(listeners: Vec<AcceptStream>, workers: Vec<Worker>, config: ServerConfig) -> Self {
        let workers = workers
            .into_iter()
            .map(|Worker { arbiter, oracle }| Placement {
                arbiter,
                deps: Arc::new(SessionDeps { oracle, config: config.session }),
            })
            .collect();
        Self {
            listeners,
            accepting: Vec::new(),
            workers,
            next_worker: 0,
            config,
            live: ConnectionCount::default(),
            refused_while_full: 0,
            last_id: 0,
            drain: None,
        }
    }

    fn place(&mut self, Accepted { stream, peer }: Accepted) {
        if self.live.get() >= self.config.max_connections {
            self.refuse(stream, peer);
            return;
        }
        if self.refused_while_full > 0 {
            tracing::info!(refused = self.refused_while_full, "accepting again");
            self.refused_while_full = 0;
        }
        let Some(worker) = self.workers.get(self.next_worker % self.workers.len().max(1)) else {
            tracing::error!(%peer, "no worker to run sessions; connection dropped");
            return;
        };
        self.next_worker = self.next_worker.wrapping_add(1);
        self.last_id += 1;
        let (info, deps, permit) = (SessionInfo { id: self.last_id, peer }, worker.deps.clone(), self.live.admit());
        let Some(arbiter) = &worker.arbiter else {
            ZenSession::start_tcp(stream, info, deps, permit);
            return;
        };
        match stream.into_std() {
            Ok(socket) => {
                if !arbiter.spawn_fn(move || start_session(socket, info, deps, permit)) {
                    tracing::error!(%peer, "worker thread is gone; connection dropped");
                }
            }
            Err(error) => tracing::warn!(%peer, %error, "could not hand over accepted connection"),
        }
    }

    /// Tells a client over the limit that the server is busy, and closes. The socket is new,
    /// so its send buffer has room: one non-blocking write, no session, no waiting.
    fn refuse(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.refused_while_full == 0 {
            tracing::warn!(%peer, max_connections = self.config.max_connections, "server full; refusing clients");
        } else {
            tracing::debug!(%peer, "server full; client refused");
        }
        self.refused_while_full += 1;
        if let Ok(mut socket) = stream.into_std() {
            let _ = socket.write(Answer::SERVER_BUSY.as_bytes());
            let _ = socket.shutdown(Shutdown::Write);
        }
    }

    fn finish_drain_when_idle(&mut self, ctx: &mut Context<Self>) {
        if self.live.get() == 0 {
            self.finish_drain(ctx);
        }
    }

    fn finish_drain(&mut self, ctx: &mut Context<Self>) {
        let Some(drain) = self.drain.as_mut() else { return };
        let report = DrainReport { unfinished: self.live.get(), elapsed: drain.started.elapsed() };
        for waiter in mem::take(&mut drain.waiters) {
            let _ = waiter.send(report);
        }
        ctx.stop();
    }
}

/// Runs on the worker arbiter: registers the socket with that arbiter's reactor.
fn start_session(socket: std::net::TcpStream, info: SessionInfo, deps: Arc<SessionDeps>, permit: ConnectionPermit) {
    match TcpStream::from_std(socket) {
        Ok(stream) => {
            ZenSession::start_tcp(stream, info, deps, permit);
        }
        Err(error) => tracing::warn!(peer = %info.peer, %error, "could not register accepted connection"),
    }
}

impl Actor for Server {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for listener in mem::take(&mut self.listeners) {
            tracing::info!(addr = %listener.local_addr(), workers = self.workers.len(), "listening");
            self.accepting.push(ctx.add_stream(listener));
        }
    }
}

impl StreamHandler<Result<Accepted, AcceptError>> for Server {
    fn handle(&mut self, item: Result<Accepted, AcceptError>, _ctx: &mut Self::Context) {
        match item {
            Ok(accepted) => self.place(accepted),
            Err(error @ AcceptError::Exhausted { .. }) => tracing::warn!(%error, "accept failed"),
            Err(error @ AcceptError::Connection(_)) => tracing::debug!(%error, "accept failed"),
        }
    }

    /// A listener's stream never ends on its own; only a drain cancels it.
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Handler<Drain> for Server {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (waiter, report) = oneshot::channel();
        if self.drain.is_none() {
            for handle in self.accepting.drain(..) {
                ctx.cancel_future(handle);
            }
            for worker in &self.workers {
                match &worker.arbiter {
                    Some(arbiter) => {
                        arbiter.spawn_fn(local_sessions::drain_this_thread);
                    }
                    None => local_sessions::drain_this_thread(),
                }
            }
            ctx.run_interval(DRAIN_POLL_INTERVAL, |server, ctx| server.finish_drain_when_idle(ctx));
            ctx.run_later(self.config.shutdown_timeout, |server, ctx| server.finish_drain(ctx));
        }
        let drain = self.drain.get_or_insert_with(|| DrainState { started: Instant::now(), waiters: Vec::new() });
        drain.waiters.push(waiter);
        self.finish_drain_when_idle(ctx);
        Box::pin(async move { report.await.unwrap_or_default() })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{
        listener::{self, ConnectionOptions},
        oracle::{AnswerTable, Oracle, OracleConfig},
    };

    fn config() -> ServerConfig {
        ServerConfig {
            session: SessionConfig {
                max_question_bytes: 64,
                max_pending_bytes: 64 * 1024,
                idle_timeout: Duration::from_secs(60),
                write_timeout: Duration::from_secs(60),
            },
            max_connections: 2,
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    async fn start_server() -> (Addr<Server>, std::net::SocketAddr) {
        let table = AnswerTable::new([("Beautiful is better than?", "Ugly.")]).unwrap();
        let oracle = Oracle::new(table, OracleConfig::default()).start();
        let socket = listener::bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let accept = AcceptStream::new(socket, ConnectionOptions::default()).unwrap();
        let addr = accept.local_addr();
        let worker = Worker { arbiter: None, oracle: oracle.recipient() };
        (Server::new(vec![accept], vec![worker], config()).start(), addr)
    }

    async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await.unwrap().unwrap();
        received
    }

    #[actix::test]
    async fn server_on_an_ephemeral_port_answers_each_client() {
        let (_server, addr) = start_server().await;
        for _ in 0..3 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(b"Beautiful is better than?Why?").await.unwrap();
            client.shutdown().await.unwrap();
            assert_eq!(read_all(&mut client).await, b"Ugly.Error: unknown aphorism.");
        }
    }

    #[actix::test]
    async fn drain_closes_idle_clients_refuses_new_ones_and_reports_when_done() {
        let (server, addr) = start_server().await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"Beautiful is better than?").await.unwrap();
        let mut first = [0; 5];
        idle.read_exact(&mut first).await.unwrap();
        let report = tokio::time::timeout(Duration::from_secs(5), server.send(Drain)).await.unwrap().unwrap();
        assert_eq!(report.unfinished, 0);
        assert_eq!(read_all(&mut idle).await, b"Error: server shutting down.");
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting after the drain");
    }
}
