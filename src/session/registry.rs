//! [`SessionRegistry`]: the sessions of one worker thread, so that they can be drained
//! together and told exactly when their timeouts are due.
//!
//! The worker that owns the registry creates it on its thread and hands it to its sessions
//! through their dependencies; it lives as long as the worker and its sessions. A session
//! registers when it starts and says when it next wants its timeouts checked; one
//! [`DelayQueue`] per worker holds those deadlines, and [`SessionRegistry::run_timers`] (driven
//! by the owner) sends [`Notice::CheckTimeouts`] to each session when its deadline comes. No
//! session costs a timer or a future of its own (each would be polled on every one of its
//! wake-ups, and would cost every idle connection a few hundred bytes), and nothing is scanned
//! periodically.

use std::{
    cell::RefCell,
    future::poll_fn,
    rc::Rc,
    task::{Context, Poll},
};

use actix::{Message, Recipient};
use slab::Slab;
use tokio::{sync::Notify, time::Instant};
use tokio_util::time::{DelayQueue, delay_queue};

/// What a worker tells one of its sessions.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum Notice {
    /// Finish the conversation (until the client is quiet for `drain_grace`), say the server
    /// is shutting down, and close.
    Drain,
    /// The deadline the session asked for has come.
    CheckTimeouts,
}

/// A session's place in its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryKey(usize);

/// The sessions of one worker thread.
#[derive(Default)]
pub struct SessionRegistry {
    inner: RefCell<Inner>,
    /// Told when the drain starts, for connections not yet sessions (see [`Self::drained`]).
    drain_started: Notify,
}

#[derive(Default)]
struct Inner {
    sessions: Slab<Entry>,
    deadlines: DelayQueue<usize>,
    /// Set once by [`SessionRegistry::drain`]: sessions registering later drain at once.
    draining: bool,
}

struct Entry {
    session: Recipient<Notice>,
    /// `None` once the deadline has passed and until the session asks for another.
    deadline: Option<delay_queue::Key>,
}

impl SessionRegistry {
    /// An empty registry, shared by its owner and its sessions.
    pub fn new() -> Rc<Self> {
        Rc::default()
    }

    /// Records a session that wants its timeouts checked at `check_at`.
    pub fn register(&self, session: Recipient<Notice>, check_at: Instant) -> RegistryKey {
        let mut inner = self.inner.borrow_mut();
        let Inner { sessions, deadlines, .. } = &mut *inner;
        let entry = sessions.vacant_entry();
        let key = RegistryKey(entry.key());
        let deadline = deadlines.insert_at(key.0, check_at);
        entry.insert(Entry { session, deadline: Some(deadline) });
        key
    }

    /// Whether [`SessionRegistry::drain`] was called: a session starting now should drain at
    /// once.
    pub fn is_draining(&self) -> bool {
        self.inner.borrow().draining
    }

    /// Resolves once [`SessionRegistry::drain`] has been called (at once if it has been): for
    /// a connection still opening, which is no session yet.
    pub async fn drained(&self) {
        let mut notified = std::pin::pin!(self.drain_started.notified());
        notified.as_mut().enable();
        if self.is_draining() {
            return;
        }
        notified.await;
    }

    /// Forgets a session that has ended.
    pub fn unregister(&self, key: RegistryKey) {
        let mut inner = self.inner.borrow_mut();
        if let Some(entry) = inner.sessions.try_remove(key.0)
            && let Some(deadline) = entry.deadline
        {
            inner.deadlines.remove(&deadline);
        }
    }

    /// Has the session's timeouts checked at `at`, instead of whenever was asked before.
    pub fn check_at(&self, key: RegistryKey, at: Instant) {
        self.reschedule(key, |_| at);
    }

    /// Has the session's timeouts checked no later than `at`.
    pub fn check_by(&self, key: RegistryKey, at: Instant) {
        self.reschedule(key, |current| current.map_or(at, |current| current.min(at)));
    }

    fn reschedule(&self, key: RegistryKey, when: impl FnOnce(Option<Instant>) -> Instant) {
        let mut inner = self.inner.borrow_mut();
        let Inner { sessions, deadlines, .. } = &mut *inner;
        let Some(entry) = sessions.get_mut(key.0) else { return };
        match entry.deadline {
            Some(deadline) => {
                let current = deadlines.deadline(&deadline);
                let at = when(Some(current));
                if at != current {
                    deadlines.reset_at(&deadline, at);
                }
            }
            None => entry.deadline = Some(deadlines.insert_at(key.0, when(None))),
        }
    }

    /// Tells every session to drain, and has sessions that register later drain at once.
    pub fn drain(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.draining = true;
        for (_, entry) in &inner.sessions {
            entry.session.do_send(Notice::Drain);
        }
        self.drain_started.notify_waiters();
    }

    /// The number of sessions registered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.borrow().sessions.len()
    }

    /// Tells sessions when their deadlines come, for as long as the registry exists; the
    /// registry's owner runs this on the registry's thread.
    pub fn run_timers(self: Rc<Self>) -> impl Future<Output = ()> {
        poll_fn(move |cx| self.poll_deadlines(cx))
    }

    fn poll_deadlines(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.borrow_mut();
        let Inner { sessions, deadlines, .. } = &mut *inner;
        // An empty queue returns `Ready(None)` and still wakes this task when a deadline is
        // added, so there is nothing to do but wait.
        while let Poll::Ready(Some(expired)) = deadlines.poll_expired(cx) {
            if let Some(entry) = sessions.get_mut(*expired.get_ref()) {
                entry.deadline = None;
                entry.session.do_send(Notice::CheckTimeouts);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix::prelude::*;
    use tokio::sync::mpsc;

    use super::*;

    /// Forwards every notice it gets.
    struct Listener(mpsc::UnboundedSender<&'static str>);

    impl Actor for Listener {
        type Context = actix::Context<Self>;
    }

    impl Handler<Notice> for Listener {
        type Result = ();
        fn handle(&mut self, notice: Notice, _: &mut Self::Context) {
            let _ = self.0.send(match notice {
                Notice::Drain => "drain",
                Notice::CheckTimeouts => "check",
            });
        }
    }

    fn listener() -> (Recipient<Notice>, mpsc::UnboundedReceiver<&'static str>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Listener(sender).start().recipient(), receiver)
    }

    async fn next(notices: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
        tokio::time::timeout(Duration::from_secs(5), notices.recv()).await.unwrap().unwrap()
    }

    /// Whether the paused clock shows `ms` milliseconds since `start`, as the timer wheel's
    /// millisecond ticks give it: not earlier, and at most one tick later.
    fn is_at(start: Instant, ms: u64) -> bool {
        (Duration::from_millis(ms)..=Duration::from_millis(ms + 1)).contains(&start.elapsed())
    }

    #[actix::test]
    async fn deadlines_come_in_order_and_an_earlier_one_moves_a_session_forward() {
        tokio::time::pause();
        let registry = SessionRegistry::new();
        actix_rt::spawn(registry.clone().run_timers());
        let now = Instant::now();
        let (late, mut late_notices) = listener();
        let (early, mut early_notices) = listener();
        let late_key = registry.register(late, now + Duration::from_secs(60));
        registry.register(early, now + Duration::from_millis(50));
        assert_eq!(next(&mut early_notices).await, "check");
        assert!(is_at(now, 50), "told after {:?}", now.elapsed());
        registry.check_by(late_key, now + Duration::from_millis(100));
        registry.check_by(late_key, now + Duration::from_secs(30)); // later: no change
        assert_eq!(next(&mut late_notices).await, "check");
        assert!(is_at(now, 100), "told after {:?}", now.elapsed());
        let moved = Instant::now();
        registry.check_at(late_key, moved + Duration::from_millis(20));
        assert_eq!(next(&mut late_notices).await, "check");
        assert!(is_at(moved, 20), "told after {:?}", moved.elapsed());
    }

    #[actix::test]
    async fn drain_reaches_every_registered_session_and_marks_the_registry() {
        let registry = SessionRegistry::new();
        let (first, mut first_notices) = listener();
        let (second, mut second_notices) = listener();
        let far = Instant::now() + Duration::from_secs(60);
        registry.register(first, far);
        let second_key = registry.register(second.clone(), far);
        registry.unregister(second_key);
        assert!(!registry.is_draining());
        registry.drain();
        assert_eq!(next(&mut first_notices).await, "drain");
        assert!(registry.is_draining(), "sessions registering later are to drain at once");
        assert_eq!(registry.len(), 1);
        // Handled after anything the registry sent it before: a wrongly sent drain would be
        // the first notice.
        second.send(Notice::CheckTimeouts).await.unwrap();
        assert_eq!(next(&mut second_notices).await, "check", "an unregistered session was told to drain");
    }
}
