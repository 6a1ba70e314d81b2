//! [`Control`]: the owner of the daemon's life as a whole, on the main thread. Signals, the
//! service manager and the server's own idleness all end up here as messages: it tells the
//! service manager when the daemon is ready and when it stops, feeds the watchdog only while
//! every actor answers, turns a [`Reload`] into new settings for every actor that can take
//! them, and turns a [`Shutdown`] into one drain of the [`Server`] and then the end of the
//! actor system.
//!
//! A reload re-reads every layer (the file, the environment the daemon started with, its
//! flags) and validates the whole result before anything changes. Reading, parsing, validating
//! and building the answer table happen on a thread of their own, so that neither the worker
//! threads nor accepting wait for them. If the result is valid, the answer table and the limits
//! sessions read are swapped as one snapshot, in force for every worker and every open
//! connection at once (only the keepalive keys wait for new connections); the log filter
//! changes; new TLS handshakes use the certificate and key read again from their files (a pair
//! that cannot be used fails the reload, and the old one stays); settings that cannot change
//! live are named in one warning.
//! Only once the new table is in force is the reload reported (the log's `settings reloaded`,
//! the reload counter, `READY=1`). If the result is not valid, nothing changes, the error names
//! the layer, key and value, and the daemon serves on with what it had. A SIGHUP that comes
//! while a reload is under way starts one more reload once it is over.

use std::{sync::Arc, time::Duration};

use actix::{fut::wrap_future, prelude::*};
use tokio::sync::oneshot;

use crate::{
    config::{ConfigError, Settings, Sources},
    limits::SessionConfig,
    metrics::Metrics,
    notify::Notifier,
    oracle::{AnswerTable, Oracle, ReplaceTable},
    server::{ApplyLimits, CheckAlive, Drain, DrainReport, Server, ServerIdle, WorkerStalled},
    telemetry::LogControl,
    tls,
};

/// Drain the server and stop the daemon.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// Why, for the log: a signal's name, or what made the server idle.
    pub cause: &'static str,
}

/// Live settings that apply to connections accepted after a reload only: a socket's keepalive is
/// set when it is accepted. (Every limit a session reads applies to open connections too.)
const NEW_CONNECTIONS_ONLY: [&str; 3] =
    ["limits.keepalive_idle_secs", "limits.keepalive_interval_secs", "limits.keepalive_retries"];

/// The actor system's exit code when a worker thread stalled: the daemon's is then 70
/// (`EX_SOFTWARE`), which every supervisor in `deploy/` restarts.
pub const WORKER_STALLED_EXIT: i32 = 70;

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
    /// The TLS listeners' handshakes, whose identity a reload replaces.
    tls: Option<tls::Acceptor>,
    shutting_down: bool,
    /// What the actor system exits with once drained.
    exit_code: i32,
    /// Whether a reload is under way, and whether another was asked for meanwhile.
    reloading: Reloading,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reloading {
    No,
    Yes,
    AndAgain,
}

/// Why a reload was not taken.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Settings(#[from] ConfigError),
    #[error("cannot start the thread reading the settings: {0}")]
    Thread(std::io::Error),
    #[error("the thread reading the settings ended without a result")]
    Lost,
}

/// The new settings, read and validated, with what a reload does with them.
struct Prepared {
    settings: Settings,
    /// Keys that changed and are applied now.
    live: Vec<String>,
    /// Keys that changed and need a restart.
    needs_restart: Vec<String>,
    /// The new answer table, if it changed.
    table: Option<Arc<AnswerTable>>,
}

/// Reads every layer again over `running`, and builds and validates the result (on the calling
/// thread, which is never one that serves clients).
fn prepare(sources: &Sources, running: &Settings) -> Result<Prepared, ReloadError> {
    let (mut settings, needs_restart) = Settings::reload(sources, running)?;
    let live = running.changed_keys(&settings);
    let table = match live.iter().any(|key| key == "oracle.answers") {
        true => Some(settings.oracle.answers.clone()),
        // The same table: the one in force stays, with what was computed of it, on this reload
        // and the next.
        false => {
            settings.oracle.answers = running.oracle.answers.clone();
            None
        }
    };
    Ok(Prepared { settings, live, needs_restart, table })
}

impl Control {
    /// Control over `server` and `oracle` running with `settings`, reporting to `notifier`;
    /// `serving` describes what is served, for the service manager's status line. Without
    /// `reload`, a [`Reload`] is refused with a warning.
    pub fn new(
        server: Addr<Server>,
        oracle: Addr<Oracle>,
        notifier: Notifier,
        serving: String,
        settings: Settings,
        reload: Option<ReloadSources>,
    ) -> Self {
        Self {
            server,
            oracle,
            notifier,
            serving,
            settings,
            reload,
            metrics: Metrics::disabled(),
            tls: None,
            shutting_down: false,
            exit_code: 0,
            reloading: Reloading::No,
        }
    }

    /// Counts reloads (and the certificate's expiry) in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Gives every reload's TLS identity to `tls`.
    #[must_use]
    pub fn with_tls(mut self, tls: Option<tls::Acceptor>) -> Self {
        self.tls = tls;
        self
    }

    /// Starts a reload, or, if one is under way, asks for another once it is over.
    fn reload(&mut self, ctx: &mut Context<Self>) {
        let Some(reload) = &self.reload else {
            tracing::warn!("cannot reload: this server was not started from settings layers");
            return;
        };
        if self.reloading != Reloading::No {
            self.reloading = Reloading::AndAgain;
            return;
        }
        self.reloading = Reloading::Yes;
        self.notifier.reloading();
        let (sources, running) = (reload.sources.clone(), self.settings.clone());
        let (done, prepared) = oneshot::channel();
        let reader = std::thread::Builder::new()
            .name("zen-reload".into())
            .spawn(move || drop(done.send(prepare(&sources, &running))));
        let (oracle, server, log) = (self.oracle.clone(), self.server.clone(), reload.log.clone());
        let running_table = self.settings.oracle.answers.clone();
        let (acceptor, metrics) = (self.tls.clone(), self.metrics.clone());
        let applied = async move {
            reader.map_err(ReloadError::Thread)?;
            let mut prepared = prepared.await.map_err(|_| ReloadError::Lost)??;
            if let (Some(acceptor), Some(identity)) = (&acceptor, &prepared.settings.identity) {
                acceptor.replace(identity, prepared.settings.tls.handshake_timeout_ms.millis());
                metrics.set_certificate_expiry(identity.not_after);
                tracing::info!(subject = %identity.subject, expires = %identity.expires, "TLS certificate loaded");
                identity.warn_if_expiring();
            }
            // The table and the limits sessions read, in one step (the table in force, when it
            // did not change, keeps what was computed of it); answered once stored: in force for
            // every replica's next batch and every session's next read.
            let table = prepared.table.take().unwrap_or(running_table);
            if oracle.send(ReplaceTable { table, limits: SessionConfig::from(&prepared.settings) }).await.is_err() {
                tracing::error!("the oracle is gone; the answer table and session limits were not replaced");
            }
            if prepared.live.iter().any(|key| key == "log.level")
                && let Some(log) = &log
                && let Err(error) = log.set_level(prepared.settings.log.level.as_str())
            {
                tracing::error!(%error, "cannot change the log level");
            }
            let _ = server.send(ApplyLimits::from(&prepared.settings)).await;
            Ok(prepared)
        };
        ctx.spawn(wrap_future::<_, Self>(applied).map(|applied, control, ctx| {
            control.reloaded(applied);
            if std::mem::replace(&mut control.reloading, Reloading::No) == Reloading::AndAgain && !control.shutting_down
            {
                control.reload(ctx);
            }
        }));
    }

    /// Reports how a reload ended, once what it changed is in force.
    fn reloaded(&mut self, applied: Result<Prepared, ReloadError>) {
        let Prepared { settings, live, needs_restart, .. } = match applied {
            Ok(prepared) => prepared,
            Err(error) => {
                tracing::error!(%error, "reload failed; serving on with the settings in use");
                self.metrics.reloaded(false);
                self.notifier.reloaded(&format!("reload failed, serving with the previous settings: {error}"));
                return;
            }
        };
        let list = |keys: &[String]| keys.join(", ");
        if !needs_restart.is_empty() {
            tracing::warn!(keys = %list(&needs_restart), "changed settings that take effect only after a restart");
        }
        let changed = if live.is_empty() { "nothing".to_owned() } else { list(&live) };
        let later: Vec<String> =
            live.iter().filter(|key| NEW_CONNECTIONS_ONLY.contains(&key.as_str())).cloned().collect();
        let answers = settings.oracle.answers.len();
        match later.is_empty() {
            true => tracing::info!(%changed, answers, "settings reloaded"),
            false => tracing::info!(%changed, answers, new_connections_only = %list(&later), "settings reloaded"),
        }
        for warning in settings.warnings.iter().filter(|warning| !self.settings.warnings.contains(warning)) {
            tracing::warn!("{warning}");
        }
        self.metrics.reloaded(true);
        self.settings = settings;
        let status = match needs_restart.is_empty() {
            true => format!("{}; settings reloaded", self.serving),
            false => format!("{}; settings reloaded, a restart is needed for {}", self.serving, list(&needs_restart)),
        };
        self.notifier.reloaded(&status);
    }

    /// Asks every worker thread whether it is alive (the control thread is, since this runs);
    /// feeds the watchdog if all answer within `within`.
    fn check_alive(&mut self, within: Duration, ctx: &mut Context<Self>) {
        let check = self.server.send(CheckAlive);
        let checks = async move {
            match tokio::time::timeout(within, check).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(unresponsive))) => Err(unresponsive.to_string()),
                Ok(Err(_)) => Err("the server is gone".to_owned()),
                Err(_) => Err(format!("not every worker thread answered within {within:?}")),
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
        match self.settings.server.lame_duck_ms.get() {
            0 => tracing::info!(cause, "shutting down: no new connections, answering what was asked"),
            lame_duck_ms => {
                tracing::info!(cause, lame_duck_ms, "shutting down: answering what was asked, after a lame-duck period")
            }
        }
        self.notifier.stopping(&format!("draining ({cause})"));
        ctx.spawn(wrap_future::<_, Self>(self.server.send(Drain)).map(|report, control: &mut Self, _| {
            match report {
                Ok(DrainReport { unfinished: 0, elapsed, .. }) => {
                    tracing::info!(unfinished = 0, elapsed_ms = elapsed.as_millis() as u64, "drained");
                }
                Ok(DrainReport { unfinished, elapsed, timed_out }) => {
                    match timed_out {
                        true => tracing::warn!(
                            unfinished,
                            "shutdown timeout passed with clients still waiting for answers; closing them"
                        ),
                        false => tracing::warn!(
                            unfinished,
                            "clients of a stalled worker thread still wait for answers; closing them"
                        ),
                    }
                    tracing::warn!(unfinished, elapsed_ms = elapsed.as_millis() as u64, "drained");
                }
                Err(error) => tracing::warn!(%error, "server was already gone"),
            }
            System::current().stop_with_code(control.exit_code);
        }));
    }
}

impl Handler<WorkerStalled> for Control {
    type Result = ();

    fn handle(&mut self, WorkerStalled { worker, silent }: WorkerStalled, ctx: &mut Self::Context) {
        if self.shutting_down {
            // Ending anyway, as asked: the exit says how the shutdown went, not this.
            return;
        }
        self.exit_code = WORKER_STALLED_EXIT;
        let silent_s = silent.as_secs();
        self.notifier
            .status(&format!("worker thread {worker} has not answered for {silent_s} s; exiting to be restarted"));
        self.handle(Shutdown { cause: "a worker thread stalled" }, ctx);
    }
}

impl Handler<Reload> for Control {
    type Result = ();

    fn handle(&mut self, _: Reload, ctx: &mut Self::Context) {
        if !self.shutting_down {
            self.reload(ctx);
        }
    }
}

impl Handler<ServerIdle> for Control {
    type Result = ();

    fn handle(&mut self, ServerIdle { cause }: ServerIdle, ctx: &mut Self::Context) {
        self.handle(Shutdown { cause }, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(vars: &[(&str, &str)]) -> Sources {
        let env = vars.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
        Sources { env, ..Sources::default() }
    }

    #[test]
    fn a_reload_that_leaves_the_table_as_it_was_keeps_the_one_in_force_reload_after_reload() {
        let running = Settings::load(&Sources::default()).unwrap();
        let first = prepare(&sources(&[("ZEN_LOG__LEVEL", "debug")]), &running).unwrap();
        assert_eq!((first.live.as_slice(), first.table.is_none()), (&["log.level".to_owned()][..], true));
        assert!(Arc::ptr_eq(&first.settings.oracle.answers, &running.oracle.answers));
        let second = prepare(&sources(&[("ZEN_LOG__LEVEL", "info")]), &first.settings).unwrap();
        assert!(second.table.is_none());
        assert!(
            Arc::ptr_eq(&second.settings.oracle.answers, &running.oracle.answers),
            "a new table every other reload"
        );
    }

    #[test]
    fn a_reload_that_changes_the_table_hands_over_the_new_one() {
        let running = Settings::load(&Sources::default()).unwrap();
        let path = std::env::temp_dir().join(format!("zen-control-{}.toml", std::process::id()));
        std::fs::write(&path, "[[oracle.answers]]\nquestion = \"Why?\"\nanswer = \"Because.\"\n").unwrap();
        let file = crate::config::ConfigFile { path: path.clone(), named_by: "--config" };
        let prepared = prepare(&Sources { file: Some(file), ..Sources::default() }, &running);
        let _ = std::fs::remove_file(&path);
        let prepared = prepared.unwrap();
        let table = prepared.table.expect("the table changed");
        assert!(Arc::ptr_eq(&table, &prepared.settings.oracle.answers));
        assert_eq!(table.len(), 1);
    }
}
