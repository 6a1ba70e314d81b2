//! [`Admission`]: the connection limit. Each session holds a [`Permit`] for as long as it
//! lives; at the limit the server refuses new clients, and a drain waits, without polling,
//! until every permit has come back. A session that has said its last words and only lingers
//! (reading and discarding, so that closing does not reset the connection under them) marks
//! its permit so: it is no longer waiting for anything, and a drain that gives up does not
//! count it as cut off. The admission also knows when the last permit out came back, so that a
//! server told to exit when idle exits that long after its last connection closed.
//!
//! A count of permits out, checked against the limit: so a reload can lower or raise the limit
//! at once, without waiting for connections to end. Waiting for the count to reach zero admits
//! no fewer clients meanwhile (a semaphore's `acquire_many` would take every free permit while
//! it waits). Only the server admits, from one thread; permits come back from any thread.

use std::{
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

/// At most `limit` connections at once.
#[derive(Debug, Clone)]
pub struct Admission {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    admitted: AtomicUsize,
    /// Of those admitted, how many only linger.
    lingering: AtomicUsize,
    limit: AtomicU32,
    /// Told when the last permit out comes back.
    all_released: Notify,
    /// When the admission was made, the origin of `released_at_nanos`.
    created: Instant,
    /// When the last permit out came back (or the admission was made), in nanoseconds after
    /// `created`.
    released_at_nanos: AtomicU64,
}

impl Shared {
    fn released_at(&self) -> Instant {
        self.created + Duration::from_nanos(self.released_at_nanos.load(Ordering::Acquire))
    }
}

/// One admitted connection; given back when dropped, however its session ends.
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    lingering: bool,
}

impl Permit {
    /// The connection has had every answer and only lingers until it closes.
    pub fn linger(&mut self) {
        if !self.lingering {
            self.lingering = true;
            self.shared.lingering.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.lingering {
            self.shared.lingering.fetch_sub(1, Ordering::AcqRel);
        }
        if self.shared.admitted.fetch_sub(1, Ordering::AcqRel) == 1 {
            let nanos = self.shared.created.elapsed().as_nanos();
            self.shared.released_at_nanos.store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Release);
            self.shared.all_released.notify_waiters();
        }
    }
}

impl Admission {
    /// Admits up to `limit` connections at once.
    pub fn new(limit: u32) -> Self {
        let shared = Shared {
            admitted: AtomicUsize::new(0),
            lingering: AtomicUsize::new(0),
            limit: AtomicU32::new(limit),
            all_released: Notify::new(),
            created: Instant::now(),
            released_at_nanos: AtomicU64::new(0),
        };
        Self { shared: Arc::new(shared) }
    }

    /// A permit for one more connection, or `None` if `limit` are already admitted.
    pub fn try_admit(&self) -> Option<Permit> {
        let limit = self.limit() as usize;
        self.shared
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |admitted| (admitted < limit).then_some(admitted + 1))
            .ok()
            .map(|_| Permit { shared: self.shared.clone(), lingering: false })
    }

    /// Connections admitted whose permit has not come back yet.
    pub fn admitted(&self) -> usize {
        self.shared.admitted.load(Ordering::Acquire)
    }

    /// Connections admitted that do not only linger: those still owed something.
    pub fn unfinished(&self) -> usize {
        self.admitted().saturating_sub(self.shared.lingering.load(Ordering::Acquire))
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

    /// Waits until no permit has been out for `quiet`: that long after the last one came back
    /// (or after the admission was made, if none was ever taken), with none taken meanwhile.
    pub async fn idle_for(&self, quiet: Duration) {
        loop {
            self.all_released().await;
            let since = self.shared.released_at();
            tokio::time::sleep_until(since + quiet).await;
            if self.admitted() == 0 && self.shared.released_at() == since {
                return;
            }
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
    async fn a_lingering_connection_is_admitted_but_not_unfinished() {
        let admission = Admission::new(3);
        let mut lingering = admission.try_admit().unwrap();
        let _working = admission.try_admit().unwrap();
        lingering.linger();
        lingering.linger();
        assert_eq!((admission.admitted(), admission.unfinished()), (2, 1));
        drop(lingering);
        assert_eq!((admission.admitted(), admission.unfinished()), (1, 1));
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

    #[tokio::test(start_paused = true)]
    async fn idleness_is_counted_from_the_last_permit_back_however_many_came_and_went() {
        let admission = Admission::new(3);
        let start = Instant::now();
        let idle = tokio::spawn({
            let admission = admission.clone();
            async move {
                admission.idle_for(Duration::from_secs(2)).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held = admission.try_admit().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held); // at 2 s
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(admission.try_admit().unwrap()); // at 3.5 s, while the wait from 2 s runs
        assert_eq!(idle.await.unwrap() - start, Duration::from_millis(5500), "2 s after the last one came back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_never_connected_to_is_idle_from_its_start() {
        let admission = Admission::new(3);
        let start = Instant::now();
        admission.idle_for(Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
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
