//! Flow control inside one session: reading stops while too many answers wait to be sent, or
//! too many questions wait for the oracle, and resumes when neither is the case.
//!
//! The session reports its sink's backlog and its questions at the oracle to its [`Flow`];
//! the [`GatedStream`] of questions yields nothing while `Flow` says reading is paused, and is
//! woken when it may read again. Reading resumes only once the backlog is back under half the
//! mark, so a client reading slowly does not flip reading on and off at every answer.
//! Everything lives on the session's thread, so plain `Cell`s suffice.

use std::{
    cell::Cell,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
};

use futures_core::Stream;

/// Why reading is paused; reading resumes when no reason is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// Unsent answers are above the high-water mark.
    Backlog,
    /// Too many questions are waiting for the oracle.
    Oracle,
}

/// Whether a session may read, shared by the session and its reader.
pub struct Flow {
    high_water: usize,
    paused_for_backlog: Cell<bool>,
    paused_for_oracle: Cell<bool>,
    reader: Cell<Option<Waker>>,
}

impl Flow {
    /// Flow control pausing reads while more than `high_water` bytes wait to be sent.
    pub fn new(high_water: usize) -> Rc<Self> {
        Rc::new(Self {
            high_water,
            paused_for_backlog: Cell::new(false),
            paused_for_oracle: Cell::new(false),
            reader: Cell::new(None),
        })
    }

    /// Reports the bytes waiting to be sent: above the mark pauses reading, at or below half
    /// of it resumes reading.
    pub fn set_backlog(&self, backlog: usize) {
        if backlog > self.high_water {
            self.paused_for_backlog.set(true);
        } else if self.paused_for_backlog.get() && backlog <= self.high_water / 2 {
            self.paused_for_backlog.set(false);
            self.wake_reader_if_free();
        }
    }

    /// Pauses or resumes reading for the oracle.
    pub fn set_paused_for_oracle(&self, paused: bool) {
        self.paused_for_oracle.set(paused);
        self.wake_reader_if_free();
    }

    /// Why reading is paused, if it is.
    pub fn pause_reason(&self) -> Option<PauseReason> {
        if self.paused_for_backlog.get() {
            Some(PauseReason::Backlog)
        } else if self.paused_for_oracle.get() {
            Some(PauseReason::Oracle)
        } else {
            None
        }
    }

    fn wake_reader_if_free(&self) {
        if self.pause_reason().is_none()
            && let Some(waker) = self.reader.take()
        {
            waker.wake();
        }
    }
}

/// A stream that yields nothing while its [`Flow`] says reading is paused.
pub struct GatedStream<S> {
    inner: S,
    flow: Rc<Flow>,
}

impl<S> GatedStream<S> {
    /// Gates `inner` with `flow`.
    pub fn new(inner: S, flow: Rc<Flow>) -> Self {
        Self { inner, flow }
    }
}

impl<S: Stream + Unpin> Stream for GatedStream<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.flow.pause_reason().is_some() {
            self.flow.reader.set(Some(cx.waker().clone()));
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::Wake,
    };

    use super::*;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn backlog_above_the_mark_pauses_and_draining_to_half_resumes_with_a_wake() {
        let flow = Flow::new(100);
        flow.set_backlog(100);
        assert_eq!(flow.pause_reason(), None, "at the mark is not above it");
        flow.set_backlog(101);
        assert_eq!(flow.pause_reason(), Some(PauseReason::Backlog));

        let wakes = Arc::new(CountWakes(0.into()));
        flow.reader.set(Some(Waker::from(wakes.clone())));
        flow.set_backlog(51);
        assert_eq!(flow.pause_reason(), Some(PauseReason::Backlog), "51 is above half the mark");
        flow.set_backlog(50);
        assert_eq!(flow.pause_reason(), None);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn reading_resumes_only_when_every_reason_is_gone() {
        let flow = Flow::new(10);
        flow.set_paused_for_oracle(true);
        flow.set_backlog(11);
        flow.set_backlog(0);
        assert_eq!(flow.pause_reason(), Some(PauseReason::Oracle));
        flow.set_paused_for_oracle(false);
        assert_eq!(flow.pause_reason(), None);
    }
}
