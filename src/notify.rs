//! [`Notifier`]: what the daemon tells its service manager (systemd's notify protocol, through
//! the `sd-notify` crate): `READY=1` once it accepts, `STOPPING=1` when it starts to drain,
//! `WATCHDOG=1` while its actors are alive, and `STATUS=` lines a person would want to read in
//! `systemctl status`. Without `NOTIFY_SOCKET` in the environment every call does nothing.
//!
//! `NOTIFY_SOCKET` is never removed from the environment: the daemon notifies for as long as it
//! runs (a reload or a stop after the first notification would otherwise go unheard).

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends notifications to the service manager, if there is one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// A notifier for this process: active if `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Self {
        Self { enabled: std::env::var_os("NOTIFY_SOCKET").is_some() }
    }

    /// How often the service manager expects `WATCHDOG=1`, if it asked for it
    /// (`WATCHDOG_USEC`, for this process).
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        if self.enabled { sd_notify::watchdog_enabled() } else { None }
    }

    /// The daemon accepts connections.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// The daemon is draining and will exit.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// The daemon is reloading its settings (`Type=notify-reload` needs the time with it).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(error) => tracing::warn!(%error, "cannot read the monotonic clock for RELOADING=1"),
        }
    }

    /// A reload is over (whether it took or not, `status` says).
    pub fn reloaded(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Every actor answered in time: feeds the watchdog.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled
            && let Err(error) = sd_notify::notify(states)
        {
            tracing::warn!(%error, "cannot notify the service manager");
        }
    }
}
