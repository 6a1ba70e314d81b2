//! Flow control inside one session: reading stops while too many answers wait to be sent.
//!
//! `actix::io::FramedWrite` buffers without bound on tokio sockets (its watermarks only react
//! to `WouldBlock`, which tokio never returns), and it cannot say how much it holds. So the
//! session counts what it hands to the writer, [`TrackedWriter`] counts what the socket
//! accepts, and the difference is the backlog. Above the high-water mark the session pauses
//! its [`GatedStream`] of questions; the writer resumes it once the backlog is back under half
//! the mark. The session can also pause reading while too many questions wait for the oracle.
//! Everything lives on the session's thread, so plain `Cell`s suffice.

use std::{
    cell::Cell,
    io,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker, ready},
    time::Instant,
};

use futures_core::Stream;
use tokio::io::AsyncWrite;

/// Why reading is paused; reading resumes when no reason is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// Unsent answers are above the high-water mark.
    Backlog,
    /// Too many questions are waiting for the oracle.
    Oracle,
}

/// State shared by a session, its reader and its writer.
pub struct Flow {
    high_water: u64,
    queued: Cell<u64>,
    written: Cell<u64>,
    /// Since when answers have waited on the client: set when the socket refuses bytes or takes
    /// only some, cleared when the backlog is empty.
    waiting_since: Cell<Option<Instant>>,
    paused_for_backlog: Cell<bool>,
    paused_for_oracle: Cell<bool>,
    reader: Cell<Option<Waker>>,
    shutdown_after_flush: Cell<bool>,
}

impl Flow {
    /// Flow control pausing reads when more than `high_water` bytes wait to be sent.
    pub fn new(high_water: u64) -> Rc<Self> {
        Rc::new(Self {
            high_water,
            queued: Cell::new(0),
            written: Cell::new(0),
            waiting_since: Cell::new(None),
            paused_for_backlog: Cell::new(false),
            paused_for_oracle: Cell::new(false),
            reader: Cell::new(None),
            shutdown_after_flush: Cell::new(false),
        })
    }

    /// Records `bytes` handed to the writer; pauses reading if the backlog passes the mark.
    /// Returns whether reading is now paused for the backlog.
    pub fn queued(&self, bytes: usize) -> bool {
        self.queued.set(self.queued.get() + bytes as u64);
        if self.backlog() > self.high_water {
            self.paused_for_backlog.set(true);
        }
        self.paused_for_backlog.get()
    }

    /// Bytes handed to the writer that the socket has not accepted yet.
    pub fn backlog(&self) -> u64 {
        self.queued.get() - self.written.get()
    }

    /// Since when answers have waited for the client without the socket taking any; `None`
    /// while the socket takes everything it is given.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.waiting_since.get()
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

    /// Makes the writer send FIN once it has flushed everything.
    pub fn shut_down_after_flush(&self) {
        self.shutdown_after_flush.set(true);
    }

    fn record_written(&self, bytes: usize) {
        self.written.set(self.written.get() + bytes as u64);
        // Progress: any wait starts again from now, or is over.
        self.waiting_since.set((self.backlog() > 0).then(Instant::now));
        if self.paused_for_backlog.get() && self.backlog() <= self.high_water / 2 {
            self.paused_for_backlog.set(false);
            self.wake_reader_if_free();
        }
    }

    fn record_refused(&self) {
        if self.waiting_since.get().is_none() {
            self.waiting_since.set(Some(Instant::now()));
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

/// The write half of a session: counts accepted bytes for [`Flow`], and shuts down its
/// sending side (FIN) at the first flush after [`Flow::shut_down_after_flush`], so the client
/// sees end of file right after the last answer even while the session still reads.
pub struct TrackedWriter {
    inner: Box<dyn AsyncWrite + Unpin>,
    flow: Rc<Flow>,
}

impl TrackedWriter {
    /// Wraps `inner`, reporting to `flow`.
    pub fn new(inner: Box<dyn AsyncWrite + Unpin>, flow: Rc<Flow>) -> Self {
        Self { inner, flow }
    }
}

impl AsyncWrite for TrackedWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let Poll::Ready(result) = Pin::new(&mut self.inner).poll_write(cx, buf) else {
            self.flow.record_refused();
            return Poll::Pending;
        };
        let written = result?;
        self.flow.record_written(written);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        if !self.flow.shutdown_after_flush.get() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
        self.flow.shutdown_after_flush.set(false);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::task::Wake;

    use super::*;

    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn backlog_above_the_mark_pauses_and_draining_to_half_resumes_with_a_wake() {
        let flow = Flow::new(100);
        assert!(!flow.queued(100), "at the mark is not above it");
        assert!(flow.queued(1));
        assert_eq!(flow.pause_reason(), Some(PauseReason::Backlog));

        let wakes = std::sync::Arc::new(CountWakes(0.into()));
        flow.reader.set(Some(Waker::from(wakes.clone())));
        flow.record_written(50);
        assert_eq!(flow.backlog(), 51);
        assert_eq!(flow.pause_reason(), Some(PauseReason::Backlog), "51 is above half the mark");
        flow.record_written(1);
        assert_eq!(flow.pause_reason(), None);
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn the_wait_starts_when_the_socket_refuses_and_ends_when_all_is_written() {
        let flow = Flow::new(100);
        flow.queued(10);
        assert_eq!(flow.waiting_since(), None, "nothing refused yet");
        flow.record_refused();
        let since = flow.waiting_since().unwrap();
        flow.record_refused();
        assert_eq!(flow.waiting_since(), Some(since), "a longer wait keeps its start");
        flow.record_written(4);
        assert!(flow.waiting_since().unwrap() >= since, "progress restarts the wait");
        flow.record_written(6);
        assert_eq!(flow.waiting_since(), None);
    }

    #[test]
    fn reading_resumes_only_when_every_reason_is_gone() {
        let flow = Flow::new(10);
        flow.set_paused_for_oracle(true);
        flow.queued(11);
        flow.record_written(11);
        assert_eq!(flow.pause_reason(), Some(PauseReason::Oracle));
        flow.set_paused_for_oracle(false);
        assert_eq!(flow.pause_reason(), None);
    }
}
