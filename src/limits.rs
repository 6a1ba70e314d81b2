//! [`SessionConfig`]: the limits every session reads: how long a question may be, how much a
//! connection may be owed, its timeouts.
//!
//! They are defined apart from the session so that the Oracle can hold them in the one snapshot
//! a reload swaps, beside the answer table ([`crate::oracle::Live`]): every session reads them
//! from there, per batch of questions, per read and per timeout check, so that a reload applies
//! to open connections and their new questions at once, never a new table with old limits.

use std::time::Duration;

use crate::config::Settings;

/// Per-session limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Longest question accepted, `?` included.
    pub max_question_bytes: usize,
    /// Bytes owed to the client (see the memory bound in [`crate::session`]) above which the
    /// session stops asking and reading.
    pub max_pending_bytes: usize,
    /// A connection completing no question for this long is closed.
    pub idle_timeout: Duration,
    /// A client reading nothing for this long while answers wait is disconnected; a session
    /// waiting this long for answers the oracle owes it gives up.
    pub write_timeout: Duration,
    /// When the server drains, how long a client must have asked nothing before it is told
    /// the server is shutting down and closed (so that one between two questions is not cut
    /// off).
    pub drain_grace: Duration,
}

impl From<&Settings> for SessionConfig {
    fn from(settings: &Settings) -> Self {
        let limits = &settings.limits;
        SessionConfig {
            max_question_bytes: limits.max_question_bytes.count(),
            max_pending_bytes: limits.max_pending_bytes.count(),
            idle_timeout: limits.idle_timeout_secs.secs(),
            write_timeout: limits.write_timeout_secs.secs(),
            drain_grace: settings.server.drain_grace_ms.millis(),
        }
    }
}
