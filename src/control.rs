//! [`Control`]: the owner of the daemon's life as a whole, on the main thread. Signals, the
//! service manager and the server's own idleness all end up here as messages: it tells the
//! service manager when the daemon is ready and when it stops, feeds the watchdog only while
//! every actor answers, and turns a [`Shutdown`] into one drain of the [`Server`] and then the
//! end of the actor system.

use std::time::Duration;

use actix::{fut::wrap_future, prelude::*};

use crate::{
    notify::Notifier,
    oracle::{self, Oracle},
    server::{self, Drain, DrainReport, Server, ServerIdle},
};

/// Drain the server and stop the daemon.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// Why, for the log: a signal's name, or what made the server idle.
    pub cause: &'static str,
}

/// The daemon's control actor.
pub struct Control {
    server: Addr<Server>,
    oracle: Addr<Oracle>,
    notifier: Notifier,
    /// What `STATUS=` says while serving.
    serving: String,
    shutting_down: bool,
}

impl Control {
    /// Control over `server` and `oracle`, reporting to `notifier`; `serving` describes what is
    /// served, for the service manager's status line.
    pub fn new(server: Addr<Server>, oracle: Addr<Oracle>, notifier: Notifier, serving: String) -> Self {
        Self { server, oracle, notifier, serving, shutting_down: false }
    }

    /// Asks every actor whether it is alive; feeds the watchdog if all answer within `within`.
    fn check_alive(&mut self, within: Duration, ctx: &mut Context<Self>) {
        let (server, oracle) = (self.server.send(server::CheckAlive), self.oracle.send(oracle::CheckAlive));
        let checks = async move {
            let server = async { server.await.map_err(|_| "server").and_then(|r| r.map_err(|_| "a worker thread")) };
            let oracle = async { oracle.await.map_err(|_| "oracle").and_then(|r| r.map_err(|_| "an oracle shard")) };
            match tokio::time::timeout(within, async { tokio::try_join!(server, oracle) }).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(which)) => Err(format!("{which} is gone")),
                Err(_) => Err(format!("not every worker thread and oracle shard answered within {within:?}")),
            }
        };
        ctx.spawn(wrap_future::<_, Self>(checks).map(|result, control, _| match result {
            Ok(()) => control.notifier.watchdog(),
            Err(problem) => {
                tracing::error!(%problem, "liveness check failed; not feeding the watchdog");
                control.notifier.status(&format!("unresponsive: {problem}"));
            }
        }));
    }
}

impl Actor for Control {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.notifier.ready(&self.serving);
        if let Some(timeout) = self.notifier.watchdog_timeout() {
            let every = timeout / 2;
            tracing::info!(every_ms = every.as_millis() as u64, "feeding the watchdog while every actor answers");
            ctx.run_interval(every, move |control, ctx| control.check_alive(every, ctx));
        }
    }
}

impl Handler<Shutdown> for Control {
    type Result = ();

    fn handle(&mut self, Shutdown { cause }: Shutdown, ctx: &mut Self::Context) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        tracing::info!(cause, "shutting down: no new connections, answering what was asked");
        self.notifier.stopping(&format!("draining ({cause})"));
        ctx.spawn(wrap_future::<_, Self>(self.server.send(Drain)).map(|report, _, _| {
            match report {
                Ok(DrainReport { unfinished: 0, elapsed }) => {
                    tracing::info!(unfinished = 0, elapsed_ms = elapsed.as_millis() as u64, "drained");
                }
                Ok(DrainReport { unfinished, elapsed }) => {
                    tracing::warn!(
                        unfinished,
                        "shutdown timeout passed with clients still waiting for answers; closing them"
                    );
                    tracing::warn!(unfinished, elapsed_ms = elapsed.as_millis() as u64, "drained");
                }
                Err(error) => tracing::warn!(%error, "server was already gone"),
            }
            System::current().stop();
        }));
    }
}

impl Handler<ServerIdle> for Control {
    type Result = ();

    fn handle(&mut self, ServerIdle { cause }: ServerIdle, ctx: &mut Self::Context) {
        self.handle(Shutdown { cause }, ctx);
    }
}
