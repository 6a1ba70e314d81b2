//! Startup wiring: settings and bound listeners in, a running actor system out.
//!
//! [`App::start`] starts, on the current actix `System`, every actor of the daemon: the worker
//! threads, the [`Oracle`] (on this thread) and its shard on each worker thread, a
//! [`Worker`](crate::server::worker::Worker) on each worker thread, and the [`Server`] (on
//! this thread, which also runs sessions). [`run`] binds the configured addresses and calls
//! [`serve`], which adds the signal handlers and runs until a drain completes. Listeners are
//! bound before anything else starts, so a bad address fails fast, and `serve` takes listeners
//! bound elsewhere (tests, inherited sockets).

use std::{io, net::SocketAddr, num::NonZeroUsize};

use actix::{Actor, Addr, System};

use crate::{
    admission::Admission,
    config::Settings,
    oracle::{Oracle, TableError},
    server::{
        Server,
        listener::{self, AcceptStream, ListenError},
        worker::Workers,
    },
    shutdown,
    threads::WorkerThreads,
};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A configured address could not be listened on.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The answer table breaks the protocol's rules.
    #[error("invalid oracle.answers: {0}")]
    Answers(#[from] TableError),
    /// The runtime, a listener's registration or the signal handlers failed.
    #[error("{what}: {source}")]
    Runtime {
        /// What was being set up.
        what: &'static str,
        /// What the system said.
        source: io::Error,
    },
}

/// The daemon's actors, running.
pub struct App {
    /// Accepts and drains.
    pub server: Addr<Server>,
    /// The one owner of the answer table.
    pub oracle: Addr<Oracle>,
    /// Where the listeners listen, in order.
    pub addrs: Vec<SocketAddr>,
    threads: WorkerThreads,
}

impl App {
    /// Starts every actor on the current actix `System`, serving on already-bound,
    /// non-blocking `listeners`.
    ///
    /// # Errors
    ///
    /// [`RunError`] if the answer table is invalid or a listener cannot be registered.
    pub fn start(listeners: Vec<std::net::TcpListener>, settings: &Settings) -> Result<App, RunError> {
        let table = settings.oracle.table()?;
        let listeners = listeners
            .into_iter()
            .map(|listener| AcceptStream::new(listener, settings.limits.connection_options()))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| RunError::Runtime { what: "cannot register listener", source })?;
        let addrs = listeners.iter().map(AcceptStream::local_addr).collect();
        let threads =
            WorkerThreads::spawn(NonZeroUsize::new(settings.server.worker_count()).unwrap_or(NonZeroUsize::MIN));
        let arbiters = threads.arbiters();
        let oracle = Oracle::start(table, settings.oracle.oracle_config(), &arbiters);
        let workers = Workers::start(&arbiters, &oracle.shards, settings.limits.session());
        let admission = Admission::new(settings.limits.max_connections);
        let server = Server::new(listeners, workers, admission, settings.server.shutdown_timeout()).start();
        Ok(App { server, oracle: oracle.oracle, addrs, threads })
    }

    /// Stops the worker threads and waits for them; the actors on them are dropped.
    pub fn stop(self) {
        self.threads.stop_and_join();
    }
}

/// Binds every address of `settings.server.listen`, then [`serve`]s.
///
/// # Errors
///
/// [`RunError`] naming the address that could not be bound, or whatever `serve` reports.
pub fn run(settings: &Settings) -> Result<(), RunError> {
    let listeners = settings
        .server
        .listen
        .iter()
        .map(|&addr| listener::bind(addr, settings.server.backlog))
        .collect::<Result<Vec<_>, _>>()?;
    serve(listeners, settings)
}

/// Serves on already-bound, non-blocking `listeners` until SIGTERM or SIGINT has drained the
/// server. Blocks the calling thread, which becomes the actix `System`'s main arbiter.
///
/// # Errors
///
/// [`RunError`] if the answer table is invalid or the runtime cannot be set up.
pub fn serve(listeners: Vec<std::net::TcpListener>, settings: &Settings) -> Result<(), RunError> {
    let system = System::new();
    let app = system.block_on(async {
        let app = App::start(listeners, settings)?;
        shutdown::handle_signals(app.server.clone().recipient())
            .map_err(|source| RunError::Runtime { what: "cannot install signal handlers", source })?;
        Ok::<_, RunError>(app)
    })?;
    let result = system.run().map_err(|source| RunError::Runtime { what: "actor system failed", source });
    app.stop();
    result
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
        let listener = listener::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let app = App::start(vec![listener], &settings).unwrap();
        // Handed to the four workers in turn: ten connections on each.
        let mut clients = Vec::new();
        for _ in 0..40 {
            let mut client = TcpStream::connect(app.addrs[0]).await.unwrap();
            assert_eq!(ask(&mut client, b"Beautiful is better than?", 5).await, b"Ugly.");
            clients.push(client);
        }
        let table = AnswerTable::new([("Beautiful is better than?", "Pretty.")]).unwrap();
        app.oracle.send(ReplaceTable(table)).await.unwrap();
        for client in &mut clients {
            assert_eq!(ask(client, b"Beautiful is better than?", 7).await, b"Pretty.");
        }
        app.stop();
    }
}
