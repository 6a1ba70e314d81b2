//! [`Server`]: the actor that owns the listeners, accepts connections and places one
//! [`ZenSession`] per client on the worker arbiters, round robin.
//!
//! An accepted socket is taken off this arbiter's reactor (`into_std`) and registered again on
//! the worker that runs its session (`from_std`), so each connection's I/O happens on one
//! thread. The server counts live sessions (up on accept, down on [`SessionClosed`]) and, on
//! [`Drain`], stops accepting, tells every session to finish, and replies once the count is
//! zero or the shutdown timeout has passed.

use std::{
    io::{self, Write},
    mem,
    net::{Shutdown, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use socket2::{SockRef, TcpKeepalive};
use tokio::{net::TcpStream, sync::oneshot};

use crate::{
    listener::{AcceptError, AcceptStream, Accepted},
    local_sessions,
    oracle::Ask,
    protocol::Answer,
    session::{SessionClosed, SessionConfig, SessionDeps, SessionInfo, ZenSession},
};

/// Settings of the server actor.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Passed to every session.
    pub session: SessionConfig,
    /// Sessions served at once; clients beyond it are told the server is busy.
    pub max_connections: usize,
    /// TCP keepalive for accepted connections, if any.
    pub keepalive: Option<Keepalive>,
    /// How long a drain waits for sessions before giving up on them.
    pub shutdown_timeout: Duration,
}

/// TCP keepalive probing, so that sessions of vanished peers end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub retries: u32,
}

/// A worker arbiter that runs sessions, and the oracle its sessions ask (on the same arbiter,
/// so asking never crosses threads).
#[derive(Debug, Clone)]
pub struct Worker {
    /// Where sessions run.
    pub arbiter: ArbiterHandle,
    /// The oracle for those sessions.
    pub oracle: Recipient<Ask>,
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
    workers: Vec<Worker>,
    /// What sessions on each worker need, built once the server's address is known.
    session_deps: Vec<Arc<SessionDeps>>,
    next_worker: usize,
    config: ServerConfig,
    live_sessions: usize,
    /// Clients refused since the server last had room, for one log line per episode.
    refused_while_full: u64,
    last_id: u64,
    drain: Option<DrainState>,
}

struct DrainState {
    started: Instant,
    waiters: Vec<oneshot::Sender<DrainReport>>,
}

impl Server {
    /// A server accepting on `listeners` and running sessions on `workers`, round robin.
    pub fn new(listeners: Vec<AcceptStream>, workers: Vec<Worker>, config: ServerConfig) -> Self {
        Self {
            listeners,
            accepting: Vec::new(),
            workers,
            session_deps: Vec::new(),
            next_worker: 0,
            config,
            live_sessions: 0,
            refused_while_full: 0,
            last_id: 0,
            drain: None,
        }
    }

    fn place(&mut self, Accepted { stream, peer }: Accepted) {
        if self.live_sessions >= self.config.max_connections {
            self.refuse(stream, peer);
            return;
        }
        if self.refused_while_full > 0 {
            tracing::info!(refused = self.refused_while_full, "accepting again");
            self.refused_while_full = 0;
        }
        self.last_id += 1;
        let info = SessionInfo { id: self.last_id, peer };
        if let Err(error) = configure(&stream, self.config.keepalive) {
            tracing::debug!(%peer, %error, "could not set socket options");
        }
        let socket = match stream.into_std() {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%peer, %error, "could not hand over accepted connection");
                return;
            }
        };
        let index = self.next_worker % self.workers.len().max(1);
        let (Some(worker), Some(deps)) = (self.workers.get(index), self.session_deps.get(index)) else {
            tracing::error!(%peer, "no worker to run sessions; connection dropped");
            return;
        };
        let deps = deps.clone();
        self.next_worker = self.next_worker.wrapping_add(1);
        self.live_sessions += 1;
        if !worker.arbiter.spawn_fn(move || start_session(socket, info, deps)) {
            self.live_sessions -= 1;
            tracing::error!(%peer, "worker thread is gone; connection dropped");
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
        if self.live_sessions == 0 {
            self.finish_drain(ctx);
        }
    }

    fn finish_drain(&mut self, ctx: &mut Context<Self>) {
        let Some(drain) = self.drain.as_mut() else { return };
        let report = DrainReport { unfinished: self.live_sessions, elapsed: drain.started.elapsed() };
        for waiter in mem::take(&mut drain.waiters) {
            let _ = waiter.send(report);
        }
        ctx.stop();
    }
}

/// Sets the options every accepted connection gets: no Nagle delay (one answer per write
/// must not wait for the previous one's ACK) and keepalive.
fn configure(stream: &TcpStream, keepalive: Option<Keepalive>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    if let Some(keepalive) = keepalive {
        let probes = TcpKeepalive::new()
            .with_time(keepalive.idle)
            .with_interval(keepalive.interval)
            .with_retries(keepalive.retries);
        SockRef::from(stream).set_tcp_keepalive(&probes)?;
    }
    Ok(())
}

/// Runs on the worker arbiter: registers the socket with that arbiter's reactor.
fn start_session(socket: std::net::TcpStream, info: SessionInfo, deps: Arc<SessionDeps>) {
    match TcpStream::from_std(socket) {
        Ok(stream) => {
            ZenSession::start_tcp(stream, info, deps);
        }
        Err(error) => {
            tracing::warn!(peer = %info.peer, %error, "could not register accepted connection");
            if let Some(server) = &deps.server {
                server.do_send(SessionClosed { id: info.id, answers: 0 });
            }
        }
    }
}

impl Actor for Server {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let server = ctx.address().recipient();
        self.session_deps = self
            .workers
            .iter()
            .map(|worker| {
                let (oracle, server, config) = (worker.oracle.clone(), Some(server.clone()), self.config.session);
                Arc::new(SessionDeps { oracle, server, config })
            })
            .collect();
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

impl Handler<SessionClosed> for Server {
    type Result = ();

    fn handle(&mut self, _closed: SessionClosed, ctx: &mut Self::Context) {
        self.live_sessions = self.live_sessions.saturating_sub(1);
        if self.drain.is_some() {
            self.finish_drain_when_idle(ctx);
        }
    }
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
                worker.arbiter.spawn_fn(local_sessions::drain_this_thread);
            }
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
        listener,
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
            keepalive: Some(Keepalive { idle: Duration::from_secs(60), interval: Duration::from_secs(5), retries: 3 }),
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    async fn start_server() -> (Addr<Server>, std::net::SocketAddr) {
        let table = AnswerTable::new([("Beautiful is better than?", "Ugly.")]).unwrap();
        let oracle = Oracle::new(table, OracleConfig::default()).start();
        let socket = listener::bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let accept = AcceptStream::new(socket).unwrap();
        let addr = accept.local_addr();
        let worker = Worker { arbiter: Arbiter::current(), oracle: oracle.recipient() };
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
