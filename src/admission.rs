//! [`Admission`]: the connection limit. Each session holds a [`Permit`] for as long as it
//! lives; at the limit the server refuses new clients, and a drain waits, without polling,
//! until every permit has come back.
//!
//! The semaphore holds every permit there could ever be, and the limit is checked against the
//! permits out: so a reload can lower or raise the limit at once, without waiting for
//! connections to end or forgetting permits. Only the server admits, from one thread.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits in the semaphore: more than any limit can be.
const ALL_PERMITS: u32 = u32::MAX >> 3;

/// At most `limit` connections served at once.
#[derive(Debug, Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: Arc<AtomicU32>,
}

/// One admitted connection; given back when dropped, however its session ends.
#[derive(Debug)]
pub struct Permit {
    _held: OwnedSemaphorePermit,
}

impl Admission {
    /// Admits up to `limit` connections at once (at most `u32::MAX >> 3`).
    pub fn new(limit: u32) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(ALL_PERMITS as usize)),
            limit: Arc::new(AtomicU32::new(limit.min(ALL_PERMITS))),
        }
    }

    /// A permit for one more connection, or `None` if `limit` are already admitted.
    pub fn try_admit(&self) -> Option<Permit> {
        if self.admitted() >= self.limit() as usize {
            return None;
        }
        self.permits.clone().try_acquire_owned().ok().map(|held| Permit { _held: held })
    }

    /// Connections admitted whose permit has not come back yet.
    pub fn admitted(&self) -> usize {
        ALL_PERMITS as usize - self.permits.available_permits()
    }

    /// The most connections admitted at once.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit for connections admitted from now on; those already admitted stay.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit.min(ALL_PERMITS), Ordering::Relaxed);
    }

    /// Waits until every permit has come back (and holds none).
    pub async fn all_released(&self) {
        // The semaphore is never closed, so acquiring cannot fail.
        let _all = self.permits.acquire_many(ALL_PERMITS).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_limit_refuses_one_more_and_a_returned_permit_admits_again() {
        let admission = Admission::new(2);
        let first = admission.try_admit().unwrap();
        let _second = admission.try_admit().unwrap();
        assert!(admission.try_admit().is_none());
        assert_eq!(admission.admitted(), 2);
        drop(first);
        assert_eq!(admission.admitted(), 1);
        assert!(admission.try_admit().is_some());
    }

    #[tokio::test]
    async fn a_lower_limit_refuses_at_once_and_a_higher_one_admits_at_once() {
        let admission = Admission::new(3);
        let held: Vec<Permit> = (0..3).map(|_| admission.try_admit().unwrap()).collect();
        admission.set_limit(2);
        assert!(admission.try_admit().is_none());
        assert_eq!(admission.admitted(), 3, "those admitted stay");
        admission.set_limit(5);
        assert!(admission.try_admit().is_some());
        drop(held);
    }

    #[tokio::test]
    async fn all_released_waits_for_the_last_permit() {
        let admission = Admission::new(3);
        let permit = admission.try_admit().unwrap();
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.all_released().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "released while a permit was held");
        drop(permit);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(admission.admitted(), 0, "waiting holds nothing afterwards");
    }
}
