//! [`Control`]: the owner of the daemon's life as a whole, on the main thread. Signals, the
//! service manager and the server's own idleness all end up here as messages: it tells the
//! service manager when the daemon is ready and when it stops, feeds the watchdog only while
//! every actor answers, turns a [`Reload`] into new settings for every actor that can take
//! them, and turns a [`Shutdown`] into one drain of the [`Server`] and then the end of the
//! actor system.
//!
//! A reload re-reads every layer (the file, the environment the daemon started with, its
//! flags) and validates the whole result before anything changes. If it is valid, the answer
//! table is swapped atomically for every worker, the log filter changes, and limits apply to new
//! connections (timeouts to every connection); settings that cannot change live are named in
//! one warning. If not, nothing changes, the error names the layer, key and value, and the
//! daemon serves on with what it had.

use std::time::Duration;

use actix::{fut::wrap_future, prelude::*};

use crate::{
    config::{Settings, Sources},
    metrics::Metrics,
    notify::Notifier,
    oracle::{self, Oracle, ReplaceTable},
    server::{self, Drain, DrainReport, Server, ServerIdle},
    telemetry::LogControl,
};

/// Drain the server and stop the daemon.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// Why, for the log: a signal's name, or what made the server idle.
    pub cause: &'static str,
}

/// Re-read every settings layer and apply what can change live.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Reload;

/// What a reload reads from and changes besides the actors.
#[derive(Debug, Clone)]
pub struct ReloadSources {
    /// The layers, as the daemon started with them (the file is read again).
    pub sources: Sources,
    /// The log filter.
    pub log: Option<LogControl>,
}

/// The daemon's control actor.
pub struct Control {
    server: Addr<Server>,
    oracle: Addr<Oracle>,
    notifier: Notifier,
    /// What `STATUS=` says while serving.
    serving: String,
    /// The settings in effect.
    settings: Settings,
    reload: Option<ReloadSources>,
    metrics: Metrics,
    shutting_down: bool,
}

impl Control {
    /// Control over `server` and `oracle` running with `settings`, reporting to `notifier` and
    /// counting reloads in `metrics`; `serving` describes what is served, for the service
    /// manager's status line. Without `reload`, a [`Reload`] is refused with a warning.
    pub fn new(
        server: Addr<Server>,
        oracle: Addr<Oracle>,
        notifier: Notifier,
        serving: String,
        settings: Settings,
        reload: Option<ReloadSources>,
        metrics: Metrics,
    ) -> Self {
        Self { server, oracle, notifier, serving, settings, reload, metrics, shutting_down: false }
    }

    fn reload(&mut self) {
        let Some(reload) = &self.reload else {
            tracing::warn!("cannot reload: this server was not started from settings layers");
            return;
        };
        self.notifier.reloading();
        let (new, needs_restart) = match Settings::reload(&reload.sources, &self.settings) {
            Ok(reloaded) => reloaded,
            Err(error) => {
                tracing::error!(%error, "reload failed; serving on with the settings in use");
                self.metrics.reloaded(false);
                self.notifier.reloaded(&format!("reload failed, serving with the previous settings: {error}"));
                return;
            }
        };
        let live = self.settings.changed_keys(&new);
        if live.iter().any(|key| key == "oracle.answers")
            && let Ok(table) = new.oracle.table()
        {
            self.oracle.do_send(ReplaceTable(table));
        }
        if live.iter().any(|key| key == "log.level")
            && let Some(log) = &reload.log
            && let Err(error) = log.set_level(&new.log.level)
        {
            tracing::error!(%error, "cannot change the log level");
        }
        self.server.do_send(new.server_limits());
        let list = |keys: &[String]| keys.join(", ");
        if !needs_restart.is_empty() {
            tracing::warn!(keys = %list(&needs_restart), "changed settings that take effect only after a restart");
        }
        tracing::info!(changed = %list(&live), "settings reloaded");
        self.metrics.reloaded(true);
        self.settings = new;
        let status = match needs_restart.is_empty() {
            true => format!("{}; settings reloaded", self.serving),
            false => format!("{}; settings reloaded, a restart is needed for {}", self.serving, list(&needs_restart)),
        };
        self.notifier.reloaded(&status);
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

impl Handler<Reload> for Control {
    type Result = ();

    fn handle(&mut self, _: Reload, _ctx: &mut Self::Context) {
        if !self.shutting_down {
            self.reload();
        }
    }
}

impl Handler<ServerIdle> for Control {
    type Result = ();

    fn handle(&mut self, ServerIdle { cause }: ServerIdle, ctx: &mut Self::Context) {
        self.handle(Shutdown { cause }, ctx);
    }
}
