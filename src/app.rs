//! Startup wiring: settings and bound listeners in, a running actor system out.
//!
//! [`run`] binds the configured addresses and calls [`serve`], which runs sessions on
//! `server.workers` arbiters (the main thread, which also accepts, and one more thread per
//! further worker), each with its own oracle, starts the [`Server`] and the signal handlers
//! on the main thread, then runs until a drain completes. Listeners are bound
//! before anything else starts, so a bad address fails fast, and `serve` accepts listeners
//! bound elsewhere (tests, inherited sockets).

use std::{io, sync::Arc};

use actix::{Actor, Arbiter, System};
use actix_rt::ArbiterHandle;

use crate::{
    config::Settings,
    listener::{self, AcceptStream, ListenError},
    oracle::{AnswerTable, Oracle, TableError},
    server::{Server, ServerConfig, Worker},
    shutdown,
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
    let table = Arc::new(settings.oracle.table()?);
    let system = System::new();
    let arbiters = system.block_on(async { start(listeners, settings, table) })?;
    let result = system.run().map_err(|source| RunError::Runtime { what: "actor system failed", source });
    for arbiter in arbiters {
        arbiter.stop();
        arbiter.join().ok();
    }
    result
}

/// Starts every actor on the running system; returns the arbiters to join at exit.
fn start(
    listeners: Vec<std::net::TcpListener>,
    settings: &Settings,
    table: Arc<AnswerTable>,
) -> Result<Vec<Arbiter>, RunError> {
    let listeners = listeners
        .into_iter()
        .map(|listener| AcceptStream::new(listener, settings.limits.connection_options()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|source| RunError::Runtime { what: "cannot register listener", source })?;
    // The main thread, which accepts, runs sessions too: one thread per CPU in all.
    let arbiters: Vec<Arbiter> = (1..settings.server.worker_count()).map(|_| Arbiter::new()).collect();
    let handles: Vec<ArbiterHandle> =
        [Arbiter::current()].into_iter().chain(arbiters.iter().map(Arbiter::handle)).collect();
    let oracles = Oracle::start_on(&handles, table, settings.oracle.oracle_config());
    let workers = handles.iter().zip(oracles).enumerate().map(|(index, (arbiter, oracle))| Worker {
        arbiter: (index > 0).then(|| arbiter.clone()),
        oracle: oracle.recipient(),
    });
    let config = ServerConfig {
        session: settings.limits.session(),
        max_connections: settings.limits.max_connections,
        shutdown_timeout: settings.server.shutdown_timeout(),
    };
    let server = Server::new(listeners, workers.collect(), config);
    shutdown::handle_signals(server.start().recipient())
        .map_err(|source| RunError::Runtime { what: "cannot install signal handlers", source })?;
    Ok(arbiters)
}
