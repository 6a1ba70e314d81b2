//! [`AnswerSink`]: the write half of a session's connection, as a sink of [`Answers`] (each
//! batch already the exact bytes of its answers, the frames of the protocol's output).
//!
//! Answers are queued as they are sent, each batch as the bytes it already is (shared, not
//! copied: a lone answer from the table is the table's own bytes), and written out by
//! [`AnswerSink::poll_write_out`], which the session's context polls as its last item: every
//! answer sent while the session handles its messages or reads questions goes out in one
//! (vectored) write in the same poll, and what the socket does not take waits, in order, until
//! the socket has room again. The sink knows exactly how many bytes wait
//! ([`AnswerSink::backlog`]) and since when the client has taken none
//! ([`AnswerSink::stalled_since`]): the session's flow control and write timeout read them.
//! Closing is explicit: [`AnswerSink::poll_close`] writes out what waits, flushes, and shuts
//! down the sending side, so the client sees end of file right after the last answer.
//!
//! What the connection took is flushed before the sink counts as written out: a TLS stream may
//! take bytes into its own buffer when the socket is full, and they leave only on a flush (a
//! plain socket's flush does nothing). Until the flush is done the sink is stalled, as it is
//! while answers wait.
//!
//! `actix::io::FramedWrite` does none of this on tokio sockets: its buffer has no bound that
//! engages (its watermarks react only to `WouldBlock`, which tokio never returns), it cannot
//! say how much it holds, it never shuts the socket down, its `close()` wakes nothing, and its
//! `write()` defers the write to a later poll of the actor.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use tokio::{io::AsyncWrite, time::Instant};

use crate::protocol::Answers;

/// Batches written in one system call at most (Linux takes up to 1024 in one `writev`).
const MAX_SLICES_PER_WRITE: usize = 64;

/// A queue that grew beyond this many batches is given back once it is empty again, so that a
/// burst does not cost an idle connection memory for the rest of its life.
const KEEP_QUEUE_SLOTS: usize = 16;

/// Batches a queue has room for at first and after a burst: one, not the four a first push
/// would make; a client asking one question at a time needs no more.
const QUEUE_SLOTS_AT_FIRST: usize = 1;

/// The sending side of one client's connection.
pub struct AnswerSink {
    io: Box<dyn AsyncWrite + Unpin>,
    /// Bytes handed to the sink that the socket has not taken yet, in order.
    waiting: VecDeque<Bytes>,
    /// Their total.
    backlog: usize,
    /// Since when bytes have waited without the socket taking any.
    stalled_since: Option<Instant>,
    /// Bytes the socket took since [`AnswerSink::take_sent`] was last called.
    sent: usize,
    /// Whether the connection took bytes since it was last flushed.
    unflushed: bool,
}

impl AnswerSink {
    /// A sink writing to `io`.
    pub fn new(io: Box<dyn AsyncWrite + Unpin>) -> Self {
        Self {
            io,
            waiting: VecDeque::with_capacity(QUEUE_SLOTS_AT_FIRST),
            backlog: 0,
            stalled_since: None,
            sent: 0,
            unflushed: false,
        }
    }

    /// Queues `answers` after everything sent before; [`AnswerSink::poll_write_out`] writes
    /// them. Answers sent during one poll of the session go out in one write.
    pub fn send(&mut self, answers: Answers) {
        let bytes = answers.into_bytes();
        self.backlog += bytes.len();
        self.waiting.push_back(bytes);
    }

    /// Bytes sent to the sink that the socket has not taken yet.
    pub fn backlog(&self) -> usize {
        self.backlog
    }

    /// Since when answers have waited for the client without the socket taking any; `None`
    /// while nothing waits.
    pub fn stalled_since(&self) -> Option<Instant> {
        self.stalled_since
    }

    /// The bytes the socket took since the last call.
    pub fn take_sent(&mut self) -> usize {
        std::mem::take(&mut self.sent)
    }

    /// Writes what waits, as far as the socket takes it, and flushes it; `Ready(Ok)` once
    /// nothing waits, in the sink or in the connection's own buffer.
    ///
    /// # Errors
    ///
    /// If the socket failed.
    pub fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut progress = false;
        while let Some(front) = self.waiting.front() {
            let written = if self.waiting.len() == 1 {
                Pin::new(&mut self.io).poll_write(cx, front)
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES_PER_WRITE];
                let count =
                    slices.iter_mut().zip(&self.waiting).map(|(slice, bytes)| *slice = IoSlice::new(bytes)).count();
                Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count])
            };
            match written {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.consume(n);
                    progress = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return self.stalled(progress),
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return self.stalled(progress),
            }
        }
        self.stalled_since = None;
        if self.waiting.capacity() > KEEP_QUEUE_SLOTS {
            self.waiting = VecDeque::with_capacity(QUEUE_SLOTS_AT_FIRST);
        }
        Poll::Ready(Ok(()))
    }

    /// The connection takes nothing more for now; taking some bytes before was progress, and a
    /// slow reader's wait starts again.
    fn stalled(&mut self, progress: bool) -> Poll<io::Result<()>> {
        if progress || self.stalled_since.is_none() {
            self.stalled_since = Some(Instant::now());
        }
        Poll::Pending
    }

    /// Drops the first `n` bytes waiting: the socket took them.
    fn consume(&mut self, mut n: usize) {
        self.backlog -= n;
        self.sent += n;
        self.unflushed = true;
        while let Some(front) = self.waiting.front_mut() {
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.waiting.pop_front();
        }
    }

    /// Writes what waits, flushes, and shuts down the sending side (the half-close): the
    /// client reads end of file after the last answer. A connection that cannot take the
    /// shutdown yet (TLS's `close_notify` waits for room in the socket) is stalled like one that
    /// cannot take answers, so the write timeout covers the close too.
    ///
    /// # Errors
    ///
    /// If the socket failed.
    pub fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_write_out(cx))?;
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => return self.stalled(false),
        }
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Pending => self.stalled(false),
            done => done,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, task::Poll};

    use tokio::io::{AsyncReadExt, duplex};

    use super::*;
    use crate::protocol::Answer;

    fn answers(text: &'static [u8]) -> Answers {
        Answers::single(&Answer::from_static(text))
    }

    /// A connection that takes every byte into a buffer of its own, as TLS does, and lets
    /// them out only on a flush that completes once it is allowed to.
    #[derive(Default)]
    struct Buffering {
        buffered: Vec<u8>,
        out: Vec<u8>,
        flush_allowed: bool,
        /// Whether the shutdown (TLS's `close_notify`) finds room.
        shutdown_allowed: bool,
    }

    #[derive(Clone, Default)]
    struct Shared(std::rc::Rc<std::cell::RefCell<Buffering>>);

    impl AsyncWrite for Shared {
        fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.0.borrow_mut().buffered.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let mut state = self.0.borrow_mut();
            if !state.flush_allowed {
                return Poll::Pending;
            }
            let buffered = std::mem::take(&mut state.buffered);
            state.out.extend(buffered);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.0.borrow().shutdown_allowed {
                true => Poll::Ready(Ok(())),
                false => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn a_close_the_connection_cannot_take_yet_counts_as_stalled() {
        let connection = Shared::default();
        connection.0.borrow_mut().flush_allowed = true;
        let mut sink = AnswerSink::new(Box::new(connection.clone()));
        sink.send(answers(b"Ugly."));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(sink.poll_close(&mut cx).is_pending());
        assert_eq!(connection.0.borrow().out.as_slice(), b"Ugly.");
        assert!(sink.stalled_since().is_some(), "a shutdown that waits runs no write timeout");
        connection.0.borrow_mut().shutdown_allowed = true;
        assert!(matches!(sink.poll_close(&mut cx), Poll::Ready(Ok(()))));
    }

    #[tokio::test]
    async fn answers_in_the_connections_own_buffer_are_not_written_out_until_flushed() {
        let connection = Shared::default();
        let mut sink = AnswerSink::new(Box::new(connection.clone()));
        sink.send(answers(b"Ugly."));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(sink.poll_write_out(&mut cx).is_pending(), "written out while still in the connection's buffer");
        assert!(sink.stalled_since().is_some());
        assert_eq!(sink.backlog(), 0);
        connection.0.borrow_mut().flush_allowed = true;
        assert!(matches!(sink.poll_write_out(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!((connection.0.borrow().out.as_slice(), sink.stalled_since()), (&b"Ugly."[..], None));
    }

    #[tokio::test]
    async fn answers_are_written_exactly_and_in_order_then_end_of_file() {
        let (mut client, server) = duplex(64);
        let mut sink = AnswerSink::new(Box::new(server));
        sink.send(answers(b"Ugly."));
        assert_eq!(sink.backlog(), 5, "queued until written out");
        poll_fn(|cx| sink.poll_write_out(cx)).await.unwrap();
        sink.send(answers(b"Error: unknown aphorism."));
        poll_fn(|cx| sink.poll_close(cx)).await.unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"Ugly.Error: unknown aphorism.");
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_waits_and_counts_as_backlog_since_the_refusal() {
        let (mut client, server) = duplex(8);
        let mut sink = AnswerSink::new(Box::new(server));
        assert!(poll_fn(|cx| Poll::Ready(sink.poll_write_out(cx))).await.is_ready());
        assert_eq!(sink.stalled_since(), None, "nothing waits");
        sink.send(answers(b"0123456789abcdef."));
        assert!(poll_fn(|cx| Poll::Ready(sink.poll_write_out(cx))).await.is_pending());
        assert_eq!(sink.backlog(), 9, "the pipe took 8 bytes");
        let since = sink.stalled_since().expect("the socket refused bytes");
        assert!(poll_fn(|cx| Poll::Ready(sink.poll_write_out(cx))).await.is_pending());
        assert_eq!(sink.stalled_since(), Some(since), "a longer wait keeps its start");
        let mut first = [0; 8];
        client.read_exact(&mut first).await.unwrap();
        assert!(poll_fn(|cx| Poll::Ready(sink.poll_write_out(cx))).await.is_pending());
        assert_eq!(sink.backlog(), 1);
        assert!(sink.stalled_since().unwrap() >= since, "progress restarts the wait");
        let mut second = [0; 1];
        client.read_exact(&mut second).await.unwrap();
        poll_fn(|cx| sink.poll_write_out(cx)).await.unwrap();
        assert_eq!((sink.backlog(), sink.stalled_since()), (0, None));
    }

    #[tokio::test]
    async fn batches_queued_together_are_written_in_order_however_little_the_socket_takes() {
        let (mut client, server) = duplex(3);
        let mut sink = AnswerSink::new(Box::new(server));
        for text in [&b"Ugly."[..], b"Implicit.", b"Complex."] {
            sink.send(Answers::single(&Answer::new(text)));
        }
        assert_eq!(sink.backlog(), 22);
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.unwrap();
            received
        });
        poll_fn(|cx| sink.poll_close(cx)).await.unwrap();
        assert_eq!((sink.backlog(), sink.take_sent()), (0, 22));
        drop(sink);
        assert_eq!(reader.await.unwrap(), b"Ugly.Implicit.Complex.");
    }
}
