//! The sessions of one worker thread: one place to drain them all, and one timer per thread
//! (not one per session) that tells each session when its timeouts are due.
//!
//! A session registers when it starts and says when it next wants its idle and write timeouts
//! checked; every [`SWEEP_INTERVAL`] the thread's sweeper sends [`Notice::CheckTimeouts`] to
//! the sessions whose time has come. Nothing here wakes an idle session before its timeout, and
//! a session costs no timer and no future of its own (each would be polled on every one of its
//! wake-ups, and would cost every idle connection a few hundred bytes). Timeouts fire up to one
//! interval late.
//!
//! Everything is thread-local: sessions never leave the worker they were started on.

use std::{
    cell::RefCell,
    collections::HashMap,
    time::{Duration, Instant},
};

use actix::{Message, Recipient};

/// How often each worker thread looks for sessions whose timeouts are due.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What the worker thread tells a session.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum Notice {
    /// Answer what was asked, say the server is shutting down, and close.
    Drain,
    /// The time asked for with [`check_timeouts_at`] has come.
    CheckTimeouts,
}

struct Entry {
    session: Recipient<Notice>,
    check_at: Instant,
}

#[derive(Default)]
struct LocalSessions {
    draining: bool,
    sweeping: bool,
    sessions: HashMap<u64, Entry>,
}

thread_local! {
    static LOCAL: RefCell<LocalSessions> = RefCell::default();
}

/// Records a session of this thread, to have its timeouts checked at `check_at`; starts the
/// thread's sweeper if needed (so this must run on an actix arbiter). Returns `true` if this
/// thread is already draining, in which case the session should drain at once.
pub fn register(id: u64, session: Recipient<Notice>, check_at: Instant) -> bool {
    LOCAL.with_borrow_mut(|local| {
        local.sessions.insert(id, Entry { session, check_at });
        if !local.sweeping {
            local.sweeping = true;
            actix_rt::spawn(sweep());
        }
        local.draining
    })
}

/// Forgets a session of this thread that has stopped.
pub fn unregister(id: u64) {
    LOCAL.with_borrow_mut(|local| local.sessions.remove(&id));
}

/// Asks for the session's timeouts to be checked at `at` (instead of whenever was asked before).
pub fn check_timeouts_at(id: u64, at: Instant) {
    LOCAL.with_borrow_mut(|local| {
        if let Some(entry) = local.sessions.get_mut(&id) {
            entry.check_at = at;
        }
    });
}

/// Asks for the session's timeouts to be checked no later than `at`.
pub fn check_timeouts_by(id: u64, at: Instant) {
    LOCAL.with_borrow_mut(|local| {
        if let Some(entry) = local.sessions.get_mut(&id) {
            entry.check_at = entry.check_at.min(at);
        }
    });
}

/// Tells every session of this thread to drain, and marks the thread so that sessions that
/// start later drain at once.
pub fn drain_this_thread() {
    LOCAL.with_borrow_mut(|local| {
        local.draining = true;
        for entry in local.sessions.values() {
            entry.session.do_send(Notice::Drain);
        }
    });
}

async fn sweep() {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        LOCAL.with_borrow_mut(|local| {
            for entry in local.sessions.values_mut().filter(|entry| entry.check_at <= now) {
                // Not again until the session says when.
                entry.check_at = now + Duration::from_secs(24 * 60 * 60);
                entry.session.do_send(Notice::CheckTimeouts);
            }
        });
    }
}
