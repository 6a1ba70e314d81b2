//! [`WorkerThreads`]: the threads that run sessions, the current one (which also accepts)
//! first; and [`PerThread`], one value for each of them, so that a list of workers can never
//! be empty.

use std::{num::NonZeroUsize, time::Duration};

use actix::Arbiter;
use actix_rt::ArbiterHandle;

/// The current thread's arbiter and the arbiters spawned for further workers.
pub struct WorkerThreads {
    current: ArbiterHandle,
    /// Kept to stop and join at exit (an `Arbiter` does neither when dropped).
    spawned: Vec<Arbiter>,
}

impl WorkerThreads {
    /// The current thread and `count - 1` new ones; must be called on an actix arbiter.
    pub fn spawn(count: NonZeroUsize) -> Self {
        Self { current: Arbiter::current(), spawned: (1..count.get()).map(|_| Arbiter::new()).collect() }
    }

    /// How many threads there are, the current one included.
    pub fn count(&self) -> NonZeroUsize {
        NonZeroUsize::MIN.saturating_add(self.spawned.len())
    }

    /// Every thread's arbiter, the current thread's first.
    pub fn arbiters(&self) -> PerThread<ArbiterHandle> {
        PerThread { here: self.current.clone(), elsewhere: self.spawned.iter().map(Arbiter::handle).collect() }
    }

    /// Stops the spawned threads and waits up to `within` for them to end; `false` if some
    /// did not (a thread stuck for good is left behind).
    pub fn stop_and_join(self, within: Duration) -> bool {
        for arbiter in &self.spawned {
            arbiter.stop();
        }
        let (ended, all_ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for arbiter in self.spawned {
                let _ = arbiter.join();
            }
            let _ = ended.send(());
        });
        all_ended.recv_timeout(within).is_ok()
    }
}

/// One value for each worker thread: the current thread's, then the others' in order.
#[derive(Debug, Clone)]
pub struct PerThread<T> {
    /// The current thread's.
    pub here: T,
    /// The other threads', in the order they were spawned.
    pub elsewhere: Vec<T>,
}

impl<T> PerThread<T> {
    /// Every value, the current thread's first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.here).chain(&self.elsewhere)
    }

    /// The number of threads.
    pub fn len(&self) -> NonZeroUsize {
        NonZeroUsize::MIN.saturating_add(self.elsewhere.len())
    }

    /// A value for each thread, made by `make` from this one's.
    pub fn map<U>(&self, mut make: impl FnMut(&T) -> U) -> PerThread<U> {
        PerThread { here: make(&self.here), elsewhere: self.elsewhere.iter().map(make).collect() }
    }

    /// Pairs each thread's value with its value in `other` (as far as both have threads).
    pub fn zip<'a, U>(&'a self, other: &'a PerThread<U>) -> PerThread<(&'a T, &'a U)> {
        PerThread { here: (&self.here, &other.here), elsewhere: self.elsewhere.iter().zip(&other.elsewhere).collect() }
    }

    /// The value of thread `index` (0 is the current one), if there is such a thread.
    pub fn get(&self, index: usize) -> Option<&T> {
        index.checked_sub(1).map_or(Some(&self.here), |i| self.elsewhere.get(i))
    }
}
