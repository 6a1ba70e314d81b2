//! [`Health`]: whether the daemon can serve every client it accepts, and the health question
//! that tells a probe so.
//!
//! The server watches its worker threads (see [`crate::server::worker`]): one that stops answering
//! is routed around at once, and once it has not answered for [`STALL_SEEN_AFTER`] the daemon
//! is unhealthy until the thread answers again or the daemon exits
//! (`server.worker_stall_timeout_secs`). Clients are still served, by the other threads. A
//! probe learns it by asking [`HEALTH_QUESTION`] on any connection: every worker's oracle
//! replica answers it from this state, [`Answer::HEALTHY`] or [`Answer::UNHEALTHY`], whichever
//! worker the probe's connection landed on. No answer table may hold that question.
//!
//! [`HEALTH_QUESTION`]: crate::protocol::HEALTH_QUESTION

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use crate::protocol::Answer;

/// How long a worker thread must have left a liveness check unanswered for the daemon to count
/// it as stalled and itself as unhealthy (it is routed around well before that).
pub const STALL_SEEN_AFTER: Duration = Duration::from_secs(1);

/// Worker threads seen stalled right now; shared by the server, which sets it, and every oracle
/// replica, which answers the health question from it.
#[derive(Debug, Default)]
pub struct Health {
    stalled: AtomicUsize,
}

impl Health {
    /// `workers` worker threads are stalled now.
    pub fn set_stalled(&self, workers: usize) {
        self.stalled.store(workers, Ordering::Relaxed);
    }

    /// How many worker threads are stalled now.
    pub fn stalled(&self) -> usize {
        self.stalled.load(Ordering::Relaxed)
    }

    /// The answer to the health question now.
    pub fn answer(&self) -> Answer {
        if self.stalled() == 0 { Answer::HEALTHY } else { Answer::UNHEALTHY }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_answer_follows_the_stalled_workers() {
        let health = Health::default();
        assert_eq!(health.answer(), Answer::HEALTHY);
        health.set_stalled(1);
        assert_eq!(health.answer(), Answer::UNHEALTHY);
        health.set_stalled(0);
        assert_eq!(health.answer(), Answer::HEALTHY);
    }
}
