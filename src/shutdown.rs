//! Graceful shutdown: SIGTERM and SIGINT become a [`Drain`] of the
//! [`Server`](crate::server::Server), which reaches every session through the registry of
//! each worker thread's sessions ([`crate::session::registry`]).
//!
//! A second signal while draining ends the process at once, with the shell's exit code for
//! that signal (143 for SIGTERM, 130 for SIGINT).

use std::io;

use actix::{Recipient, System};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::server::Drain;

/// Listens for SIGTERM and SIGINT on the current arbiter: the first drains `server` and then
/// stops the actix `System`; a second one exits the process immediately.
///
/// # Errors
///
/// If a signal handler cannot be installed.
pub fn handle_signals(server: Recipient<Drain>) -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    actix_rt::spawn(async move {
        let first = next_signal(&mut terminate, &mut interrupt).await;
        tracing::info!(signal = first.name, "shutting down: no new connections, answering what was asked");
        tokio::select! {
            report = server.send(Drain) => {
                match report {
                    Ok(report) => tracing::info!(
                        unfinished = report.unfinished,
                        elapsed_ms = report.elapsed.as_millis() as u64,
                        "drained"
                    ),
                    Err(error) => tracing::warn!(%error, "server was already gone"),
                }
                System::current().stop();
            }
            second = next_signal(&mut terminate, &mut interrupt) => {
                tracing::warn!(signal = second.name, "second signal: exiting at once");
                std::process::exit(second.exit_code);
            }
        }
    });
    Ok(())
}

struct Received {
    name: &'static str,
    exit_code: i32,
}

async fn next_signal(terminate: &mut Signal, interrupt: &mut Signal) -> Received {
    tokio::select! {
        _ = terminate.recv() => Received { name: "SIGTERM", exit_code: 128 + 15 },
        _ = interrupt.recv() => Received { name: "SIGINT", exit_code: 128 + 2 },
    }
}
