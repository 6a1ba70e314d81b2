//! Signals: the first SIGTERM or SIGINT asks [`Control`](crate::control::Control) to drain and
//! stop; a second one, while draining, ends the process at once with the shell's exit code for
//! that signal (143 for SIGTERM, 130 for SIGINT). SIGHUP asks it to reload the settings.

use std::io;

use actix::Recipient;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    control::{Reload, Shutdown},
    log_queue,
};

/// Listens for SIGTERM, SIGINT and SIGHUP on the current arbiter, for as long as the process
/// runs.
///
/// # Errors
///
/// If a signal handler cannot be installed.
pub fn handle_signals(control: Recipient<Shutdown>, reload: Recipient<Reload>) -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    actix_rt::spawn(async move {
        while hangup.recv().await.is_some() {
            reload.do_send(Reload);
        }
    });
    actix_rt::spawn(async move {
        let first = next_signal(&mut terminate, &mut interrupt).await;
        control.do_send(Shutdown { cause: first.name });
        let second = next_signal(&mut terminate, &mut interrupt).await;
        tracing::warn!(signal = second.name, "second signal: exiting at once");
        log_queue::flush_before_exit();
        std::process::exit(second.exit_code);
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
