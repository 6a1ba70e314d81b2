//! [`Workers`]: where sessions run. One [`Worker`] actor on each worker thread starts the
//! sessions handed to it and owns their [`SessionRegistry`]; beside it on its thread runs the
//! oracle's replica its sessions ask. The server hands connections to the workers in turn.
//!
//! The server accepts on the control thread; each connection is taken off that thread's
//! reactor (`into_std`) and registered again on its worker's (`from_std`), so that all of a
//! connection's I/O happens on one worker thread.

use std::{cell::Cell, rc::Rc};

use actix::{fut::wrap_future, prelude::*};
use tokio::net::TcpStream;

use super::opening::{self, Opening};
use crate::{
    admission::Permit,
    metrics::{CloseReason, FLUSH_INTERVAL, Metrics, Tally},
    oracle::StartedOracle,
    session::{SessionConfig, SessionDeps, SessionInfo, registry::SessionRegistry},
    threads::WorkerThreads,
    tls,
};

/// The worker of each worker thread, and whose turn it is.
pub struct Workers {
    /// One per thread; never empty.
    workers: Vec<Addr<Worker>>,
    next: usize,
    /// Where a connection that cannot be handed over is counted.
    metrics: Metrics,
}

/// A worker thread did not answer a liveness check as it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unresponsive {
    /// The worker actor is gone.
    #[error("a worker is gone")]
    WorkerGone,
    /// The worker's thread is alive but the oracle replica its sessions ask is gone.
    #[error("an oracle replica is gone")]
    ReplicaGone,
}

impl Workers {
    /// Starts a worker and an oracle replica on each of `threads`; the worker's sessions ask
    /// that replica, follow `config`, and count into `metrics`; handshakes on TLS listeners use
    /// `tls`.
    pub fn start(
        threads: &WorkerThreads,
        oracle: &StartedOracle,
        config: SessionConfig,
        metrics: &Metrics,
        tls: Option<&tls::Acceptor>,
    ) -> Self {
        let workers = threads
            .arbiters()
            .map(|thread| {
                let (oracle, metrics, tls) = (oracle.clone(), metrics.clone(), tls.cloned());
                Worker::start_in_arbiter(&thread, move |_| Worker::new(&oracle, config, metrics, tls))
            })
            .collect();
        Self { workers, next: 0, metrics: metrics.clone() }
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Starts a session for `stream` on the next worker in turn, once it is through its
    /// `opening`. A connection that cannot be handed over is closed and counted.
    pub fn adopt(&mut self, stream: TcpStream, info: SessionInfo, permit: Permit, opening: Opening) {
        let Some(worker) = self.workers.get(self.next % self.workers.len().max(1)) else { return };
        self.next = self.next.wrapping_add(1);
        match stream.into_std() {
            Ok(socket) => worker.do_send(Adopt { socket, info, permit, opening }),
            Err(error) => {
                tracing::warn!(peer = %info.peer, %error, "could not hand over accepted connection");
                self.metrics.closed_unserved(CloseReason::Error);
            }
        }
    }

    /// Gives every worker new session limits (see [`SessionDeps::config`]).
    pub fn set_session_config(&self, config: SessionConfig) {
        for worker in &self.workers {
            worker.do_send(SetSessionConfig(config));
        }
    }

    /// Tells every worker to drain its sessions.
    pub fn drain(&self) {
        for worker in &self.workers {
            worker.do_send(DrainSessions);
        }
    }

    /// Resolves once every worker thread has answered a liveness message, with its oracle
    /// replica still there: one check per thread.
    ///
    /// # Errors
    ///
    /// [`Unresponsive`] naming what is gone.
    pub fn check_alive(&self) -> impl Future<Output = Result<(), Unresponsive>> + use<> {
        let checks: Vec<_> = self.workers.iter().map(|worker| worker.send(WorkerAlive)).collect();
        async move {
            for check in checks {
                check.await.map_err(|_| Unresponsive::WorkerGone)??;
            }
            Ok(())
        }
    }
}

/// Starts a session for a connection on the worker's thread.
#[derive(Message)]
#[rtype(result = "()")]
struct Adopt {
    /// Taken off the control thread's reactor, to be registered on the worker's.
    socket: std::net::TcpStream,
    info: SessionInfo,
    permit: Permit,
    opening: Opening,
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
#[rtype(result = "Result<(), Unresponsive>")]
struct WorkerAlive;

/// The sessions of one worker thread.
pub struct Worker {
    /// Shared by every session of this worker.
    deps: Rc<SessionDeps>,
    /// Handshakes on TLS listeners, if there are any.
    tls: Option<tls::Acceptor>,
}

impl Worker {
    /// A worker for the current thread, with an oracle replica of its own beside it.
    fn new(oracle: &StartedOracle, config: SessionConfig, metrics: Metrics, tls: Option<tls::Acceptor>) -> Self {
        let registry = SessionRegistry::new();
        Self {
            deps: Rc::new(SessionDeps {
                oracle: oracle.start_replica(),
                answer_bound: oracle.answer_bound(),
                config: Cell::new(config),
                registry,
                tally: Tally::default(),
                metrics,
            }),
            tls,
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

    fn handle(&mut self, Adopt { socket, info, permit, opening }: Adopt, ctx: &mut Self::Context) {
        let stream = match TcpStream::from_std(socket) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(peer = %info.peer, %error, "could not register accepted connection");
                self.deps.tally.closed(CloseReason::Error);
                return;
            }
        };
        if let Some((stream, info, permit)) = opening::start_plain(stream, info, permit, &opening, &self.deps) {
            let opened =
                opening::open_until_drained(stream, info, permit, opening, self.tls.clone(), self.deps.clone());
            ctx.spawn(wrap_future(opened));
        }
    }
}

impl Handler<WorkerAlive> for Worker {
    type Result = Result<(), Unresponsive>;

    fn handle(&mut self, _: WorkerAlive, _ctx: &mut Self::Context) -> Self::Result {
        if self.deps.oracle.is_connected() { Ok(()) } else { Err(Unresponsive::ReplicaGone) }
    }
}

impl Handler<DrainSessions> for Worker {
    type Result = ();

    fn handle(&mut self, _: DrainSessions, _ctx: &mut Self::Context) {
        self.deps.registry.drain();
    }
}

#[cfg(test)]
mod tests {
    use std::{num::NonZeroUsize, sync::Arc, time::Duration};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{
        admission::Admission,
        oracle::{AnswerTable, Oracle, OracleConfig},
    };

    /// A worker on a thread of its own, its sessions asking a table of one question; the thread
    /// is for the caller to stop.
    fn worker() -> (Addr<Worker>, WorkerThreads) {
        let threads = WorkerThreads::spawn(NonZeroUsize::MIN);
        let table = AnswerTable::new([("Beautiful is better than?", "Ugly.")]).unwrap();
        let oracle = Oracle::start(Arc::new(table), OracleConfig::default(), &Metrics::disabled());
        let config = SessionConfig {
            max_question_bytes: 64,
            max_pending_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            drain_grace: Duration::ZERO,
        };
        let thread = threads.arbiters().next().unwrap();
        let worker =
            Worker::start_in_arbiter(&thread, move |_| Worker::new(&oracle, config, Metrics::disabled(), None));
        (worker, threads)
    }

    /// A client, and the server's end of its connection as [`Adopt`] carries it.
    async fn adopt(admission: &Admission) -> (tokio::net::TcpStream, Adopt) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (socket, peer) = listener.accept().unwrap();
        socket.set_nonblocking(true).unwrap();
        let info = SessionInfo { id: 1, peer };
        (client, Adopt { socket, info, permit: admission.try_admit().unwrap(), opening: Opening::default() })
    }

    async fn read_all(client: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut received)).await.unwrap().unwrap();
        received
    }

    #[actix::test]
    async fn an_adopted_connection_is_served_on_the_workers_thread_until_it_ends() {
        let (worker, threads) = worker();
        let admission = Admission::new(4);
        let (mut client, adopted) = adopt(&admission).await;
        worker.send(adopted).await.unwrap();
        client.write_all(b"Beautiful is better than?Why?").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_all(&mut client).await, b"Ugly.Error: unknown aphorism.");
        tokio::time::timeout(Duration::from_secs(5), admission.all_released()).await.unwrap();
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    #[actix::test]
    async fn a_worker_told_to_drain_tells_its_sessions_and_those_it_starts_later() {
        let (worker, threads) = worker();
        let admission = Admission::new(4);
        let (mut before, adopted) = adopt(&admission).await;
        worker.send(adopted).await.unwrap();
        worker.send(DrainSessions).await.unwrap();
        let (mut after, adopted) = adopt(&admission).await;
        worker.send(adopted).await.unwrap();
        assert_eq!(read_all(&mut before).await, b"Error: server shutting down.");
        assert_eq!(read_all(&mut after).await, b"Error: server shutting down.");
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    #[actix::test]
    async fn a_worker_answers_its_liveness_check_with_its_replica_there() {
        let (worker, threads) = worker();
        assert_eq!(worker.send(WorkerAlive).await.unwrap(), Ok(()));
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }
}
