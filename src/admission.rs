//! [`Admission`]: the connection limit. Each session holds a [`Permit`] for as long as it
//! lives; at the limit the server refuses new clients, and a drain waits, without polling,
//! until every permit has come back.
//!
//! A count of permits out, checked against the limit: so a reload can lower or raise the limit
//! at once, without waiting for connections to end. Waiting for the count to reach zero admits
//! no fewer clients meanwhile (a semaphore's `acquire_many` would take every free permit while
//! it waits). Only the server admits, from one thread; permits come back from any thread.

use std::{
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
};

use tokio::sync::Notify;

/// At most `limit` connections at once.
#[derive(Debug, Clone)]
pub struct Admission {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    admitted: AtomicUsize,
    limit: AtomicU32,
    /// Told when the last permit out comes back.
    all_released: Notify,
}

/// One admitted connection; given back when dropped, however its session ends.
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.shared.admitted.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.all_released.notify_waiters();
        }
    }
}

impl Admission {
    /// Admits up to `limit` connections at once.
    pub fn new(limit: u32) -> Self {
        let shared =
            Shared { admitted: AtomicUsize::new(0), limit: AtomicU32::new(limit), all_released: Notify::new() };
        Self { shared: Arc::new(shared) }
    }

    /// A permit for one more connection, or `None` if `limit` are already admitted.
    pub fn try_admit(&self) -> Option<Permit> {
        let limit = self.limit() as usize;
        self.shared
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |admitted| (admitted < limit).then_some(admitted + 1))
            .ok()
            .map(|_| Permit { shared: self.shared.clone() })
    }

    /// Connections admitted whose permit has not come back yet.
    pub fn admitted(&self) -> usize {
        self.shared.admitted.load(Ordering::Acquire)
    }

    /// The most connections admitted at once.
    pub fn limit(&self) -> u32 {
        self.shared.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit for connections admitted from now on; those already admitted stay.
    pub fn set_limit(&self, limit: u32) {
        self.shared.limit.store(limit, Ordering::Relaxed);
    }

    /// Waits until no permit is out.
    pub async fn all_released(&self) {
        loop {
            // Registered before the count is read, so a release in between is not missed.
            let mut released = pin!(self.shared.all_released.notified());
            released.as_mut().enable();
            if self.admitted() == 0 {
                return;
            }
            released.await;
        }
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

    #[tokio::test]
    async fn waiting_for_all_released_admits_as_many_as_before() {
        let admission = Admission::new(3);
        let first = admission.try_admit().unwrap();
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.all_released().await }
        });
        tokio::task::yield_now().await;
        let others: Vec<Permit> = (0..2).map(|_| admission.try_admit().expect("admitted while waiting")).collect();
        assert_eq!(admission.admitted(), 3);
        assert!(admission.try_admit().is_none(), "the limit still holds");
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "released while two permits were out");
        drop(others);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }
}
