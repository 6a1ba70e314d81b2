//! [`Server`]: the actor that owns the listeners, accepts connections, admits them within the
//! connection limit and hands each to a [`Worker`](worker::Worker), which runs its
//! [`ZenSession`](crate::session::ZenSession): one that answers, holding the fewest
//! connections (see [`worker`]).
//!
//! A client over the limit is told `Error: server busy.` and closed at once, with no session.
//! On [`Drain`] the server stops accepting, tells every worker to drain its sessions, and
//! replies once every admitted connection's permit has come back or the shutdown timeout has
//! passed. Told to exit when idle, it reports [`ServerIdle`] once no connection has been open
//! or has arrived for that long (inetd's modes: one inherited connection, served, is all).
//!
//! Every [`LIVENESS_INTERVAL`] it checks its workers; one that has not answered for
//! `server.worker_stall_timeout_secs` is reported, once, as [`WorkerStalled`]: the daemon then
//! drains what it can and exits, to be restarted.
//!
//! - [`listener`]: binding listening sockets; accepting with back-off on exhaustion.
//! - [`opening`]: what a connection goes through before its session: a PROXY header, the
//!   client's share, a TLS handshake.
//! - [`worker`]: the workers that run sessions, one per thread.

pub mod listener;
pub mod opening;
pub mod worker;

use std::{
    io::Write,
    mem,
    net::{Shutdown, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{fut::wrap_future, prelude::*};

use self::{
    listener::{AcceptError, AcceptStream, Accepted, ConnectionOptions, Keepalive, ListenerKind},
    opening::Opening,
    worker::{LIVENESS_INTERVAL, Unresponsive, Workers},
};
use crate::{
    admission::Admission,
    config::Settings,
    log_queue,
    metrics::{FLUSH_INTERVAL, Metrics},
    protocol::Answer,
    proxy::ProxyPolicy,
    session::SessionInfo,
    threads,
};

/// Stop accepting (after the lame-duck period, if there is one), let every session answer what
/// it was asked, and reply when all are gone (or the shutdown timeout has passed).
#[derive(Debug, Message)]
#[rtype(result = "DrainReport")]
pub struct Drain;

/// Asks every worker thread whether it is alive; the reply comes once all have answered (a
/// wedged thread never lets it come).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), Unresponsive>")]
pub struct CheckAlive;

/// The server has been idle for as long as it was told to wait before exiting.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ServerIdle {
    /// What kind of idleness, for the log.
    pub cause: &'static str,
}

/// A worker thread has not answered for `server.worker_stall_timeout_secs`: the daemon cannot
/// serve every client it accepts, and exits to be restarted.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WorkerStalled {
    /// Which worker (from 1).
    pub worker: usize,
    /// How long it has not answered.
    pub silent: Duration,
}

/// When the server reports itself idle.
#[derive(Debug, Clone)]
pub struct ExitWhenIdle {
    /// How long no connection must be open or arrive.
    pub after: Duration,
    /// Who is told.
    pub notify: Recipient<ServerIdle>,
}

/// New limits, from a reload: the server's own, for connections accepted from now on. (The
/// limits sessions read go with the answer table, to the Oracle: see
/// [`ReplaceTable`](crate::oracle::ReplaceTable).)
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ApplyLimits {
    /// Who may send PROXY headers.
    pub proxy: ProxyPolicy,
    /// Connections served at once.
    pub max_connections: u32,
    /// Connections one client may hold at once (0: no limit).
    pub max_connections_per_client: u32,
    /// How long a drain waits.
    pub shutdown_timeout: Duration,
    /// How long a drain keeps accepting first.
    pub lame_duck: Duration,
    /// Socket options of accepted connections.
    pub connection_options: ConnectionOptions,
    /// How long a worker may leave a liveness check unanswered before the daemon exits.
    pub worker_stall_timeout: Duration,
}

impl From<&Settings> for ApplyLimits {
    fn from(settings: &Settings) -> Self {
        let (limits, server) = (&settings.limits, &settings.server);
        let keepalive = (limits.keepalive_idle_secs.get() > 0).then(|| Keepalive {
            idle: limits.keepalive_idle_secs.secs(),
            interval: limits.keepalive_interval_secs.secs(),
            retries: u32::try_from(limits.keepalive_retries.get()).unwrap_or(u32::MAX),
        });
        ApplyLimits {
            proxy: ProxyPolicy {
                trusted: settings.proxy.trusted.ranges().to_vec(),
                header_timeout: settings.proxy.header_timeout_ms.millis(),
            },
            max_connections: u32::try_from(limits.max_connections.get()).unwrap_or(u32::MAX),
            max_connections_per_client: u32::try_from(limits.max_connections_per_client.get()).unwrap_or(u32::MAX),
            shutdown_timeout: server.shutdown_timeout_secs.secs(),
            lame_duck: server.lame_duck_ms.millis(),
            connection_options: ConnectionOptions { keepalive },
            worker_stall_timeout: server.worker_stall_timeout_secs.secs(),
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions still owed answers when the drain ended: when the shutdown timeout ran out, or
    /// when only the clients of a stalled worker thread were left (0 on a clean drain);
    /// sessions that only lingered after their last answer are not counted.
    pub unfinished: usize,
    /// Time from the start of the drain to its end.
    pub elapsed: Duration,
    /// Whether the shutdown timeout ended it (rather than the sessions, or all but a stalled
    /// worker thread's).
    pub timed_out: bool,
}

/// The accepting actor.
pub struct Server {
    /// Moved into the actor's context when it starts.
    listeners: Vec<AcceptStream>,
    /// Handles on the listening sockets, to change their options on a reload and to empty
    /// their queues on a drain, each with what its connections begin with.
    listening_sockets: Vec<(std::net::TcpListener, ListenerKind)>,
    accepting: Vec<SpawnHandle>,
    workers: Workers,
    admission: Admission,
    shutdown_timeout: Duration,
    /// Clients refused since the server last had room, for one log line per episode.
    refused_while_full: u64,
    last_id: u64,
    /// The drain, once it has started.
    draining: Option<Draining>,
    /// A connection handed over instead of accepted (inetd), served first.
    inherited: Option<std::net::TcpStream>,
    exit_when_idle: Option<ExitWhenIdle>,
    metrics: Metrics,
    /// Who may send PROXY headers, on the listeners that expect them.
    proxy: Arc<ProxyPolicy>,
    /// How long a drain keeps accepting, failing health checks, before closing the listeners.
    lame_duck: Duration,
    /// How long a worker may leave a liveness check unanswered before the daemon exits.
    worker_stall_timeout: Duration,
    /// Who is told of a worker stalled that long (once).
    on_stall: Option<Recipient<WorkerStalled>>,
}

impl Server {
    /// A server accepting on `listeners`, admitting as `admission` allows, and running
    /// sessions on `workers`; a drain waits up to `shutdown_timeout` for them.
    pub fn new(
        listeners: Vec<AcceptStream>,
        workers: Workers,
        admission: Admission,
        shutdown_timeout: Duration,
    ) -> Self {
        Self {
            listeners,
            listening_sockets: Vec::new(),
            accepting: Vec::new(),
            workers,
            admission,
            shutdown_timeout,
            refused_while_full: 0,
            last_id: 0,
            draining: None,
            inherited: None,
            exit_when_idle: None,
            metrics: Metrics::disabled(),
            proxy: Arc::new(ProxyPolicy { trusted: Vec::new(), header_timeout: Duration::ZERO }),
            lame_duck: Duration::ZERO,
            worker_stall_timeout: Duration::MAX,
            on_stall: None,
        }
    }

    /// Tells `notify` of a worker that has not answered for `timeout` (once).
    #[must_use]
    pub fn on_worker_stall(mut self, timeout: Duration, notify: Recipient<WorkerStalled>) -> Self {
        self.worker_stall_timeout = timeout;
        self.on_stall = Some(notify);
        self
    }

    /// On a drain, keeps accepting for `lame_duck` first (see [`Drain`]).
    #[must_use]
    pub fn with_lame_duck(mut self, lame_duck: Duration) -> Self {
        self.lame_duck = lame_duck;
        self
    }

    /// Lets `policy` decide who may send PROXY headers on the listeners that expect them.
    #[must_use]
    pub fn with_proxy_policy(mut self, policy: ProxyPolicy) -> Self {
        self.proxy = Arc::new(policy);
        self
    }

    /// Counts connections into `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Serves `connection`, handed over by inetd, before anything accepted.
    #[must_use]
    pub fn with_inherited_connection(mut self, connection: std::net::TcpStream) -> Self {
        self.inherited = Some(connection);
        self
    }

    /// Whether a connection was handed over with
    /// [`with_inherited_connection`](Self::with_inherited_connection).
    pub fn has_inherited_connection(&self) -> bool {
        self.inherited.is_some()
    }

    /// Reports [`ServerIdle`] once no connection has been open or has arrived for `after`.
    #[must_use]
    pub fn exit_when_idle(mut self, idle: ExitWhenIdle) -> Self {
        self.exit_when_idle = Some(idle);
        self
    }

    /// Accepts what already waits in the listeners' queues (closing a listener would reset
    /// those connections), then closes the listeners: from here on, a sibling listening with
    /// `SO_REUSEPORT` or nobody gets new connections.
    fn stop_accepting(&mut self, ctx: &mut Context<Self>) {
        for handle in self.accepting.drain(..) {
            ctx.cancel_future(handle);
        }
        for (socket, kind) in mem::take(&mut self.listening_sockets) {
            while let Ok((stream, peer)) = listener::accept(&socket) {
                self.admit(Accepted { stream, peer, kind });
            }
        }
    }

    /// Reports idleness once no connection has been open for `after` since the last one
    /// closed (or since the start).
    fn watch_idleness(&mut self, ctx: &mut Context<Self>) {
        let Some(ExitWhenIdle { after, .. }) = self.exit_when_idle else { return };
        let admission = self.admission.clone();
        ctx.spawn(wrap_future::<_, Self>(async move { admission.idle_for(after).await }).map(|(), server, _| {
            if let Some(idle) = &server.exit_when_idle {
                let cause = if server.accepting.is_empty() { "the connection was served" } else { "idle" };
                idle.notify.do_send(ServerIdle { cause });
            }
        }));
    }

    /// Checks the workers (see [`Workers::check`]); reports one silent for
    /// `worker_stall_timeout`, once.
    fn check_workers(&mut self, ctx: &mut Context<Self>) {
        let check = self.workers.check::<Self>(ctx);
        let Some((worker, silent)) = check.longest_silence else { return };
        if silent >= self.worker_stall_timeout
            && let Some(notify) = self.on_stall.take()
        {
            let (silent_s, timeout_s) = (silent.as_secs(), self.worker_stall_timeout.as_secs());
            tracing::error!(
                worker,
                silent_s,
                timeout_s,
                "a worker thread has not answered for server.worker_stall_timeout_secs; draining what can be drained and exiting, to be restarted"
            );
            notify.do_send(WorkerStalled { worker, silent });
        }
    }

    fn admit(&mut self, Accepted { stream, peer, kind }: Accepted) {
        self.metrics.accepted();
        let Some(permit) = self.admission.try_admit() else {
            self.refuse(stream, peer, kind.tls);
            return;
        };
        if self.refused_while_full > 0 {
            tracing::info!(refused = self.refused_while_full, "accepting again");
            self.refused_while_full = 0;
        }
        self.last_id += 1;
        let opening = Opening { proxy: kind.proxy.then(|| self.proxy.clone()), tls: kind.tls };
        self.workers.adopt(stream, SessionInfo { id: self.last_id, peer }, permit, opening);
    }

    /// Tells a client over the limit that the server is busy, and closes. The socket is new,
    /// so its send buffer has room: one non-blocking write, no session, no waiting. If the
    /// client had already sent something, closing with it unread makes the kernel send a reset,
    /// which can reach a client before it reads the refusal; holding refused connections open
    /// to read first would let a flood of them use up descriptors, which the limit protects.
    /// A TLS client, which could not read a plain answer, gets a TLS alert instead.
    fn refuse(&mut self, mut socket: std::net::TcpStream, peer: SocketAddr, tls: bool) {
        if self.refused_while_full == 0 {
            tracing::warn!(%peer, max_connections = self.admission.limit(), "server full; refusing clients");
        } else {
            tracing::debug!(%peer, "server full; client refused");
        }
        self.refused_while_full += 1;
        let busy = Answer::SERVER_BUSY;
        let refusal = if tls { &TLS_BUSY_ALERT[..] } else { busy.as_bytes() };
        let sent = socket.write(refusal).unwrap_or(0);
        let _ = socket.shutdown(Shutdown::Write);
        self.metrics.refused_busy(sent);
    }
}

/// What a TLS client over the connection limit is sent: a TLS record holding a fatal
/// `internal_error` alert (RFC 8446, section 6), which its TLS library reports as such,
/// where plain text would read as a corrupt record.
const TLS_BUSY_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 80];

impl Actor for Server {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (pid, workers, cpus) = (std::process::id(), self.workers.count(), threads::usable_cpus());
        for listener in mem::take(&mut self.listeners) {
            let (addr, kind) = (listener.local_addr(), listener.kind());
            tracing::info!(%addr, pid, workers, cpus, proxy = kind.proxy, tls = kind.tls, "listening");
            match listener.socket() {
                Ok(socket) => self.listening_sockets.push((socket, kind)),
                Err(error) => {
                    tracing::warn!(%error, "cannot keep a handle on the listener; a reload cannot change its keepalive")
                }
            }
            self.accepting.push(ctx.add_stream(listener));
        }
        if let Some(stream) = self.inherited.take() {
            match stream.peer_addr() {
                Ok(peer) => {
                    tracing::info!(%peer, "serving the connection on standard input");
                    self.admit(Accepted { stream, peer, kind: ListenerKind::default() });
                }
                Err(error) => tracing::warn!(%error, "cannot serve the connection on standard input"),
            }
        }
        self.watch_idleness(ctx);
        ctx.run_interval(LIVENESS_INTERVAL, Self::check_workers);
        if self.metrics.is_enabled() {
            ctx.run_interval(FLUSH_INTERVAL, |server, _| {
                server.metrics.set_active(server.admission.admitted());
                server.metrics.set_log_lines_dropped(log_queue::dropped_lines());
            });
        }
    }
}

impl StreamHandler<Result<Accepted, AcceptError>> for Server {
    fn handle(&mut self, item: Result<Accepted, AcceptError>, _ctx: &mut Self::Context) {
        match item {
            Ok(accepted) => self.admit(accepted),
            Err(error @ AcceptError::Exhausted { .. }) => tracing::warn!(%error, "accept failed"),
            Err(error @ AcceptError::Connection(_)) => tracing::debug!(%error, "accept failed"),
        }
    }

    /// A listener's stream never ends on its own; only a drain cancels it.
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Handler<ApplyLimits> for Server {
    type Result = ();

    fn handle(&mut self, limits: ApplyLimits, _ctx: &mut Self::Context) {
        self.admission.set_limit(limits.max_connections);
        self.admission.set_per_client_limit(limits.max_connections_per_client);
        self.proxy = Arc::new(limits.proxy);
        self.shutdown_timeout = limits.shutdown_timeout;
        self.lame_duck = limits.lame_duck;
        self.worker_stall_timeout = limits.worker_stall_timeout;
        for (socket, _) in &self.listening_sockets {
            if let Err(error) = limits.connection_options.apply(socket) {
                tracing::warn!(%error, "cannot set the new keepalive on a listener");
            }
        }
    }
}

impl Handler<CheckAlive> for Server {
    type Result = ResponseFuture<Result<(), Unresponsive>>;

    fn handle(&mut self, _: CheckAlive, _ctx: &mut Self::Context) -> Self::Result {
        Box::pin(self.workers.check_alive())
    }
}

/// When a drain started, and until when the listeners stay open (its lame-duck period).
#[derive(Debug, Clone, Copy)]
struct Draining {
    started: Instant,
    listening_until: Instant,
}

impl Handler<Drain> for Server {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> Self::Result {
        let Draining { started, listening_until } = match self.draining {
            Some(draining) => draining,
            None => {
                // Sessions, and those started from now on, finish their conversations; health
                // checks are told the server is shutting down.
                self.workers.drain();
                let started = Instant::now();
                let listening_until = if self.lame_duck.is_zero() || self.accepting.is_empty() {
                    self.stop_accepting(ctx);
                    started
                } else {
                    let lame_duck_ms = self.lame_duck.as_millis() as u64;
                    tracing::info!(
                        lame_duck_ms,
                        "failing health checks and still accepting before closing the listeners"
                    );
                    ctx.run_later(self.lame_duck, |server, ctx| server.stop_accepting(ctx));
                    started + self.lame_duck
                };
                *self.draining.insert(Draining { started, listening_until })
            }
        };
        let deadline = started + self.shutdown_timeout;
        let admission = self.admission.clone();
        // A stalled worker's connections never come back; the drain waits for the others.
        let stuck = self.workers.held_by_stalled();
        Box::pin(async move {
            tokio::time::sleep_until(listening_until.into()).await;
            let drained = async {
                while admission.admitted() > stuck() {
                    if stuck() == 0 {
                        admission.all_released().await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            let timed_out = tokio::time::timeout_at(deadline.into(), drained).await.is_err();
            DrainReport { unfinished: admission.unfinished(), elapsed: started.elapsed(), timed_out }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{num::NonZeroUsize, pin::Pin, task};

    use futures_core::Stream;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        sync::mpsc,
    };

    use super::*;
    use crate::{
        limits::SessionConfig,
        oracle::{AnswerTable, Live, Oracle, OracleConfig, StartedOracle},
        server::listener::{self, ConnectionOptions},
        threads::WorkerThreads,
    };

    fn session_config(idle_timeout: Duration) -> SessionConfig {
        SessionConfig {
            max_question_bytes: 64,
            max_pending_bytes: 64 * 1024,
            idle_timeout,
            write_timeout: Duration::from_secs(60),
            drain_grace: Duration::ZERO,
        }
    }

    #[test]
    fn keepalive_idle_zero_turns_keepalive_off() {
        let builtin = Settings::builtin().unwrap();
        assert!(ApplyLimits::from(&builtin).connection_options.keepalive.is_some());
        let env = [("ZEN_LIMITS__KEEPALIVE_IDLE_SECS".to_owned(), "0".to_owned())].into();
        let off = Settings::load(&crate::config::Sources { env, ..Default::default() }).unwrap();
        assert!(ApplyLimits::from(&off).connection_options.keepalive.is_none());
    }

    /// An oracle knowing one question, and workers asking it on `threads` new threads (for the
    /// caller to stop).
    fn workers(threads: usize, idle_timeout: Duration) -> (StartedOracle, Workers, WorkerThreads) {
        let threads = WorkerThreads::spawn(NonZeroUsize::new(threads).unwrap());
        let table = AnswerTable::new([("Beautiful is better than?", "Ugly.")]).unwrap();
        let live = Live::new(Arc::new(table), session_config(idle_timeout));
        let oracle = Oracle::start(live, OracleConfig::default(), &Metrics::disabled());
        let workers = Workers::start(&threads, &oracle, &Metrics::disabled(), None, oracle.health());
        (oracle, workers, threads)
    }

    /// A server on an ephemeral port with `threads` worker threads; the threads are for the
    /// caller to stop.
    fn start_server(threads: usize, idle_timeout: Duration) -> (Addr<Server>, SocketAddr, WorkerThreads) {
        let (_oracle, workers, threads) = workers(threads, idle_timeout);
        let socket = listener::bind("127.0.0.1:0".parse().unwrap(), 16, false).unwrap();
        let accept = AcceptStream::new(socket, ConnectionOptions::default()).unwrap();
        let addr = accept.local_addr();
        let server = Server::new(vec![accept], workers, Admission::new(2), Duration::from_secs(5)).start();
        (server, addr, threads)
    }

    async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await.unwrap().unwrap();
        received
    }

    #[actix::test]
    async fn server_on_an_ephemeral_port_answers_each_client() {
        let (_server, addr, threads) = start_server(2, Duration::from_secs(60));
        for _ in 0..3 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(b"Beautiful is better than?Why?").await.unwrap();
            client.shutdown().await.unwrap();
            assert_eq!(read_all(&mut client).await, b"Ugly.Error: unknown aphorism.");
        }
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    #[actix::test]
    async fn drain_closes_idle_clients_refuses_new_ones_and_reports_when_done() {
        let (server, addr, threads) = start_server(2, Duration::from_secs(60));
        let mut told = Vec::new();
        for _ in 0..2 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(b"Beautiful is better than?").await.unwrap();
            let mut first = [0; 5];
            client.read_exact(&mut first).await.unwrap();
            // Reads the last words, then closes, which ends the session's linger.
            told.push(actix_rt::spawn(async move { read_all(&mut client).await }));
        }
        let report = tokio::time::timeout(Duration::from_secs(5), server.send(Drain)).await.unwrap().unwrap();
        assert_eq!((report.unfinished, report.timed_out), (0, false));
        for client in told {
            assert_eq!(client.await.unwrap(), b"Error: server shutting down.");
        }
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting after the drain");
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    /// Connections as a listener's stream yields them, fed by the test.
    struct Connections(mpsc::UnboundedReceiver<Result<Accepted, AcceptError>>);

    impl Stream for Connections {
        type Item = Result<Accepted, AcceptError>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }

    /// A server with no listener, fed its accepted connections by the test, admitting `limit`
    /// at once on `threads` worker threads (for the caller to stop); and a listening socket for
    /// the test's clients to connect to.
    fn fed_server(
        threads: usize,
        limit: u32,
    ) -> (Addr<Server>, mpsc::UnboundedSender<Result<Accepted, AcceptError>>, WorkerThreads, std::net::TcpListener)
    {
        let (_oracle, workers, threads) = workers(threads, Duration::from_secs(60));
        let (feed, connections) = mpsc::unbounded_channel();
        let server = Server::create(|ctx| {
            ctx.add_stream(Connections(connections));
            Server::new(Vec::new(), workers, Admission::new(limit), Duration::from_secs(5))
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (server, feed, threads, listener)
    }

    /// A client connected to `listener`, and the connection as the server accepts it.
    async fn connection(listener: &std::net::TcpListener) -> (TcpStream, Accepted) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, peer) = listener::accept(listener).unwrap();
        (client, Accepted { stream, peer, kind: ListenerKind::default() })
    }

    #[actix::test]
    async fn every_accepted_connection_becomes_a_session_that_answers_whichever_worker_runs_it() {
        let (_server, feed, threads, listener) = fed_server(2, 10);
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (client, accepted) = connection(&listener).await;
            feed.send(Ok(accepted)).unwrap();
            clients.push(client);
        }
        for mut client in clients {
            client.write_all(b"Beautiful is better than?").await.unwrap();
            client.shutdown().await.unwrap();
            assert_eq!(read_all(&mut client).await, b"Ugly.");
        }
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    #[actix::test]
    async fn a_connection_accepted_over_the_limit_is_told_the_server_is_busy_and_a_failed_accept_changes_nothing() {
        let (_server, feed, threads, listener) = fed_server(1, 1);
        let (mut first, accepted) = connection(&listener).await;
        feed.send(Ok(accepted)).unwrap();
        feed.send(Err(AcceptError::Connection(std::io::ErrorKind::ConnectionAborted.into()))).unwrap();
        let (mut second, accepted) = connection(&listener).await;
        feed.send(Ok(accepted)).unwrap();
        assert_eq!(read_all(&mut second).await, b"Error: server busy.");
        first.write_all(b"Beautiful is better than?").await.unwrap();
        first.shutdown().await.unwrap();
        assert_eq!(read_all(&mut first).await, b"Ugly.", "the first still served");
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    #[actix::test]
    async fn a_drain_tells_every_session_and_reports_once_every_connection_is_gone() {
        let (server, feed, threads, listener) = fed_server(2, 10);
        let mut told = Vec::new();
        for _ in 0..3 {
            let (mut client, accepted) = connection(&listener).await;
            feed.send(Ok(accepted)).unwrap();
            client.write_all(b"Beautiful is better than?").await.unwrap();
            let mut first = [0; 5];
            client.read_exact(&mut first).await.unwrap();
            // Reads the last words, then closes, which ends the session's linger.
            told.push(actix_rt::spawn(async move { read_all(&mut client).await }));
        }
        let report = tokio::time::timeout(Duration::from_secs(5), server.send(Drain)).await.unwrap().unwrap();
        assert_eq!((report.unfinished, report.timed_out), (0, false));
        for client in told {
            assert_eq!(client.await.unwrap(), b"Error: server shutting down.");
        }
        let (mut late, accepted) = connection(&listener).await;
        feed.send(Ok(accepted)).unwrap();
        assert_eq!(read_all(&mut late).await, b"Error: server shutting down.", "accepted during the drain");
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }
}
