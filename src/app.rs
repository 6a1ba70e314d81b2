//! Startup wiring: settings and sockets in, a running actor system out.
//!
//! [`App::start`] starts, on the current actix `System`, every actor of the daemon. The current
//! thread is the control plane: it runs the [`Server`] (accept), the [`Control`] actor, the
//! [`Oracle`] and, in [`serve`], the signal handlers, and no session. Each worker
//! thread runs a [`Worker`](crate::server::worker::Worker), the oracle replica its sessions ask,
//! and its sessions. [`run`] binds the configured
//! addresses unless it is handed sockets, and [`serve`] adds the signal handlers and runs until
//! a drain completes. Listeners are bound before anything else starts, so a bad address fails
//! fast, and `serve` takes sockets bound elsewhere (tests, systemd, inetd).

use std::{io, net::SocketAddr, num::NonZeroUsize, time::Duration};

use actix::{Actor, Addr, AsyncContext, Context, System};

use crate::{
    admission::Admission,
    config::Settings,
    control::{Control, ReloadSources, WORKER_STALLED_EXIT},
    limits::SessionConfig,
    metrics::Metrics,
    notify::Notifier,
    oracle::{Live, Oracle, OracleConfig},
    server::{
        ApplyLimits, ExitWhenIdle, Server,
        listener::{self, AcceptStream, ListenError, ListenerKind},
        worker::Workers,
    },
    signals,
    threads::WorkerThreads,
    tls,
};

/// How long worker threads get to end once the actor system has stopped. Their sessions have
/// been drained by then (or the shutdown timeout has passed), so ending takes them
/// milliseconds; a thread wedged for good is left behind after this.
pub const THREAD_STOP_TIMEOUT: Duration = Duration::from_millis(250);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A configured address could not be listened on.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A worker thread stopped answering for `server.worker_stall_timeout_secs`; the daemon
    /// drained what it could and exits, to be restarted.
    #[error("a worker thread stopped answering for server.worker_stall_timeout_secs; exiting to be restarted")]
    WorkerStalled,
    /// The runtime, a listener's registration or the signal handlers failed.
    #[error("{what}: {source}")]
    Runtime {
        /// What was being set up.
        what: &'static str,
        /// What the system said.
        source: io::Error,
    },
}

/// A bound, non-blocking listening socket.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub socket: std::net::TcpListener,
    /// What its connections begin with.
    pub kind: ListenerKind,
}

impl Listener {
    /// `socket`, of the kind `settings` give its address (for sockets bound elsewhere:
    /// systemd's, inetd's): behind a PROXY-speaking load balancer if it is in `proxy.listen`,
    /// TLS if in `tls.listen`, both if in `tls.proxy_listen`.
    pub fn inherited(socket: std::net::TcpListener, settings: &Settings) -> Self {
        let kind = socket.local_addr().map_or(ListenerKind::default(), |addr| settings.listener_kind(addr));
        Self { socket, kind }
    }
}

/// What the daemon serves.
#[derive(Debug)]
pub enum Sockets {
    /// Listening sockets: bound here, or inherited (systemd, inetd's wait mode).
    Listeners(Vec<Listener>),
    /// One accepted, non-blocking connection (inetd's nowait mode): served, then the daemon
    /// exits.
    Connection(std::net::TcpStream),
}

/// What the daemon does besides serving its sockets with its settings.
#[derive(Default)]
pub struct Options {
    /// Shut down once no connection has been open or arrived for this long.
    pub exit_when_idle: Option<Duration>,
    /// Where a reload (SIGHUP) reads from; without it, reloads are refused.
    pub reload: Option<ReloadSources>,
    /// Where the counts go.
    pub metrics: Metrics,
}

/// The daemon's actors, running.
pub struct App {
    /// Accepts and drains.
    pub server: Addr<Server>,
    /// The one owner of the answer table (each worker thread has a replica that reads it).
    pub oracle: Addr<Oracle>,
    /// The daemon's life: shutdown, readiness, watchdog.
    pub control: Addr<Control>,
    /// Where the listeners listen, in order.
    pub addrs: Vec<SocketAddr>,
    threads: WorkerThreads,
}

impl App {
    /// Starts every actor on the current actix `System`, serving `sockets` as `settings` and
    /// `options` say.
    ///
    /// # Errors
    ///
    /// [`RunError`] if a socket cannot be registered.
    pub fn start(sockets: Sockets, settings: &Settings, options: Options) -> Result<App, RunError> {
        let Options { exit_when_idle, reload, metrics } = options;
        let live = Live::new(settings.oracle.answers.clone(), SessionConfig::from(settings));
        let (listeners, connection) = match sockets {
            Sockets::Listeners(listeners) => (listeners, None),
            Sockets::Connection(connection) => (Vec::new(), Some(connection)),
        };
        let ApplyLimits {
            proxy,
            max_connections,
            max_connections_per_client,
            shutdown_timeout,
            lame_duck,
            connection_options,
            worker_stall_timeout,
        } = ApplyLimits::from(settings);
        let listeners = listeners
            .into_iter()
            .map(|Listener { socket, kind }| Ok(AcceptStream::new(socket, connection_options)?.with_kind(kind)))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| RunError::Runtime { what: "cannot register listener", source })?;
        let addrs: Vec<SocketAddr> = listeners.iter().map(AcceptStream::local_addr).collect();
        let acceptor = settings.identity.as_ref().map(|identity| {
            let tls_addrs = listeners.iter().filter(|listener| listener.kind().tls).map(AcceptStream::local_addr);
            for addr in tls_addrs {
                tracing::info!(%addr, subject = %identity.subject, expires = %identity.expires, "serving TLS");
            }
            identity.warn_if_expiring();
            metrics.set_certificate_expiry(identity.not_after);
            tls::Acceptor::new(identity, settings.tls.handshake_timeout_ms.millis())
        });
        let threads = WorkerThreads::spawn(NonZeroUsize::new(settings.worker_count()).unwrap_or(NonZeroUsize::MIN));
        let oracle = Oracle::start(live, OracleConfig::from(&settings.oracle), &metrics);
        let workers = Workers::start(&threads, &oracle, &metrics, acceptor.as_ref(), oracle.health());
        let admission = Admission::new(max_connections);
        admission.set_per_client_limit(max_connections_per_client);
        let control_context = Context::<Control>::new();
        let mut server = Server::new(listeners, workers, admission, shutdown_timeout)
            .with_metrics(metrics.clone())
            .with_proxy_policy(proxy)
            .with_lame_duck(lame_duck)
            .on_worker_stall(worker_stall_timeout, control_context.address().recipient());
        let serving = match connection {
            Some(connection) => {
                server = server.with_inherited_connection(connection);
                "serving the connection on standard input".to_owned()
            }
            None => {
                let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                format!("serving on {} with {} worker threads", addrs.join(", "), threads.count())
            }
        };
        if let Some(after) = exit_when_idle.or(server.has_inherited_connection().then_some(Duration::ZERO)) {
            server = server.exit_when_idle(ExitWhenIdle { after, notify: control_context.address().recipient() });
        }
        let server = server.start();
        let notifier = Notifier::from_env();
        let control = Control::new(server.clone(), oracle.addr.clone(), notifier, serving, settings.clone(), reload)
            .with_metrics(metrics)
            .with_tls(acceptor);
        let control = control_context.run(control);
        Ok(App { server, oracle: oracle.addr, control, addrs, threads })
    }

    /// Stops the worker threads and waits for them, up to [`THREAD_STOP_TIMEOUT`]: a thread
    /// stuck for good (see `oracle.hang_question`) does not keep the process from exiting.
    pub fn stop(self) {
        if !self.threads.stop_and_join(THREAD_STOP_TIMEOUT) {
            tracing::warn!("a worker thread did not stop in time; exiting without it");
        }
    }
}

/// Serves `sockets`, or binds every address of `server.listen`, `proxy.listen`, `tls.listen`
/// and `tls.proxy_listen` when there are none, until the daemon shuts down (see [`serve`]).
///
/// # Errors
///
/// [`RunError`] naming the address that could not be bound, or whatever `serve` reports.
pub fn run(settings: &Settings, sockets: Option<Sockets>, options: Options) -> Result<(), RunError> {
    let sockets = match sockets {
        Some(sockets) => sockets,
        None => {
            let server = &settings.server;
            let bind = |(addr, kind)| {
                let backlog = u32::try_from(server.backlog.get()).unwrap_or(u32::MAX);
                listener::bind(addr, backlog, server.reuse_port.0).map(|socket| Listener { socket, kind })
            };
            let listeners = settings.listen_addrs().into_iter().map(bind).collect::<Result<Vec<_>, _>>()?;
            Sockets::Listeners(listeners)
        }
    };
    serve(sockets, settings, options)
}

/// Serves `sockets` until SIGTERM or SIGINT (or idleness, with `options.exit_when_idle`) has
/// drained the server; SIGHUP reloads from `options.reload`. Blocks the calling thread, which becomes the actix `System`'s main arbiter.
///
/// # Errors
///
/// [`RunError`] if the runtime cannot be set up.
pub fn serve(sockets: Sockets, settings: &Settings, options: Options) -> Result<(), RunError> {
    let system = System::new();
    let app = system.block_on(async {
        let app = App::start(sockets, settings, options)?;
        signals::handle_signals(app.control.clone().recipient(), app.control.clone().recipient())
            .map_err(|source| RunError::Runtime { what: "cannot install signal handlers", source })?;
        Ok::<_, RunError>(app)
    })?;
    let result = system.run_with_code().map_err(|source| RunError::Runtime { what: "actor system failed", source });
    app.stop();
    match result? {
        WORKER_STALLED_EXIT => Err(RunError::WorkerStalled),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;
    use crate::{
        config::Sources,
        oracle::{AnswerTable, ReplaceTable},
    };

    async fn ask(client: &mut TcpStream, question: &[u8], answer_len: usize) -> Vec<u8> {
        client.write_all(question).await.unwrap();
        let mut answer = vec![0; answer_len];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut answer)).await.unwrap().unwrap();
        answer
    }

    #[actix::test]
    async fn one_replace_table_changes_the_answer_on_every_connection_of_every_worker() {
        let sources =
            Sources { env: [("ZEN_SERVER__WORKERS".to_owned(), "4".to_owned())].into(), ..Sources::default() };
        let settings = Settings::load(&sources).unwrap();
        let listener = listener::bind("127.0.0.1:0".parse().unwrap(), 64, false).unwrap();
        let listener = Listener { socket: listener, kind: ListenerKind::default() };
        let app = App::start(Sockets::Listeners(vec![listener]), &settings, Options::default()).unwrap();
        // Spread over the four workers: ten connections on each.
        let mut clients = Vec::new();
        for _ in 0..40 {
            let mut client = TcpStream::connect(app.addrs[0]).await.unwrap();
            assert_eq!(ask(&mut client, b"Beautiful is better than?", 5).await, b"Ugly.");
            clients.push(client);
        }
        let table = AnswerTable::new([("Beautiful is better than?", "Pretty.")]).unwrap();
        app.oracle
            .send(ReplaceTable { table: std::sync::Arc::new(table), limits: SessionConfig::from(&settings) })
            .await
            .unwrap();
        for client in &mut clients {
            assert_eq!(ask(client, b"Beautiful is better than?", 7).await, b"Pretty.");
        }
        app.stop();
    }
}
