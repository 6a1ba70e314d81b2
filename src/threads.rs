//! [`WorkerThreads`]: the threads that serve clients, each an actix arbiter of its own.
//!
//! The thread that starts them (the actix `System`'s, the main thread) is the control plane and
//! serves no client: it hosts the signals, `Control`, the `Server` (accept) and the oracle's
//! owner. A session that wedges a worker thread therefore never takes accepting, reloading or
//! the signals with it.

use std::{num::NonZeroUsize, time::Duration};

use actix::Arbiter;
use actix_rt::ArbiterHandle;

/// The CPUs this process may use: its affinity mask, and its cgroup's CPU quota rounded down
/// (at least one), as Rust's `available_parallelism` counts them.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// The worker threads, at least one.
pub struct WorkerThreads {
    /// Kept to stop and join at exit (an `Arbiter` does neither when dropped).
    arbiters: Vec<Arbiter>,
}

impl WorkerThreads {
    /// Starts `count` new threads.
    pub fn spawn(count: NonZeroUsize) -> Self {
        Self { arbiters: (0..count.get()).map(|_| Arbiter::new()).collect() }
    }

    /// How many threads there are.
    pub fn count(&self) -> NonZeroUsize {
        NonZeroUsize::new(self.arbiters.len()).unwrap_or(NonZeroUsize::MIN)
    }

    /// Every thread's arbiter, in order.
    pub fn arbiters(&self) -> impl Iterator<Item = ArbiterHandle> + '_ {
        self.arbiters.iter().map(Arbiter::handle)
    }

    /// Stops the threads and waits up to `within` for them to end; `false` if some did not (a
    /// thread stuck for good, see `oracle.hang_question`, is left behind: the process exits
    /// without it).
    pub fn stop_and_join(self, within: Duration) -> bool {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        let (ended, all_ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for arbiter in self.arbiters {
                let _ = arbiter.join();
            }
            let _ = ended.send(());
        });
        all_ended.recv_timeout(within).is_ok()
    }
}
