//! [`Admission`]: the connection limit. Each session holds a [`Permit`] for as long as it
//! lives; when none is left the server refuses new clients, and a drain waits, without
//! polling, until every permit has come back.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `limit` connections served at once.
#[derive(Debug, Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: u32,
}

/// One admitted connection; given back when dropped, however its session ends.
#[derive(Debug)]
pub struct Permit {
    _held: OwnedSemaphorePermit,
}

impl Admission {
    /// Admits up to `limit` connections at once.
    pub fn new(limit: u32) -> Self {
        Self { permits: Arc::new(Semaphore::new(limit as usize)), limit }
    }

    /// A permit for one more connection, or `None` if `limit` are already admitted.
    pub fn try_admit(&self) -> Option<Permit> {
        self.permits.clone().try_acquire_owned().ok().map(|held| Permit { _held: held })
    }

    /// Connections admitted whose permit has not come back yet.
    pub fn admitted(&self) -> usize {
        self.limit as usize - self.permits.available_permits()
    }

    /// The most connections admitted at once.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Waits until every permit has come back (and holds none).
    pub async fn all_released(&self) {
        // The semaphore is never closed, so acquiring cannot fail.
        let _all = self.permits.acquire_many(self.limit).await;
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
