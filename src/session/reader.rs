//! [`QuestionReader`]: the read half of a session's connection as a stream of what the client
//! sent, decoded into questions: the stream the session handles as its `StreamHandler`.
//!
//! It does what `tokio_util`'s `FramedRead` would, with a smaller buffer kept at its size (see
//! [`MIN_READ_SPACE`]), the bytes read counted where they are read, and the end of the input
//! after a read error or a decoding error (as `FramedRead` ends).

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::BytesMut;
use futures_core::Stream;
use tokio::io::AsyncRead;
use tokio_util::{codec::Decoder, io::poll_read_buf};

use crate::codec::{CodecError, Incoming, ZenCodec};

/// Size of a connection's read buffer: a few questions (they are short), and enough for a
/// pipelining client's burst in one or two reads. It grows only for a long unfinished question.
pub const READ_BUFFER_BYTES: usize = 256;

/// Free space the reader makes sure of before every read, so that no read takes less than this
/// much for want of room (taking questions off the front of the buffer shrinks its free space;
/// when too little is left, the buffer is moved back to the start of its allocation, or grows
/// by doubling if an unfinished question fills it).
const MIN_READ_SPACE: usize = 128;

/// What a reader reads its limit from and reports what it reads to.
pub trait ReaderContext {
    /// The longest question accepted now (a reload may change it between two reads).
    fn max_question_bytes(&self) -> usize;
    /// `bytes` were read.
    fn received(&self, bytes: usize);
}

/// Reads a connection and decodes what it reads, as its context says.
pub struct QuestionReader<R, C> {
    read: R,
    buffer: BytesMut,
    codec: ZenCodec,
    state: ReadState,
    context: C,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// Bytes came in since the decoder last found nothing.
    Decodable,
    /// The decoder needs more bytes.
    Reading,
    /// The client sent end of file: what is left is decoded, then the input has ended.
    AtEof,
    /// Nothing more comes: end of file decoded, or reading failed.
    Ended,
}

impl<R: AsyncRead + Unpin, C: ReaderContext> QuestionReader<R, C> {
    /// Reads `read`, with questions as long as `context` says, and tells it how many bytes each
    /// read took.
    pub fn new(read: R, context: C) -> Self {
        Self {
            read,
            buffer: BytesMut::with_capacity(READ_BUFFER_BYTES),
            codec: ZenCodec::new(context.max_question_bytes()),
            state: ReadState::Reading,
            context,
        }
    }

    /// The next thing the client sent, reading as needed; `None` once the input has ended
    /// (after end of file, or after an error).
    fn poll_incoming(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, CodecError>>> {
        loop {
            let decoded = match self.state {
                ReadState::Ended => return Poll::Ready(None),
                ReadState::Reading => None,
                ReadState::Decodable => self.decoded(ZenCodec::decode),
                ReadState::AtEof => match self.decoded(ZenCodec::decode_eof) {
                    None => {
                        self.state = ReadState::Ended;
                        return Poll::Ready(None);
                    }
                    some => some,
                },
            };
            if let Some(incoming) = decoded {
                return Poll::Ready(Some(incoming));
            }
            self.state = ReadState::Reading;
            if self.buffer.capacity() - self.buffer.len() < MIN_READ_SPACE {
                self.buffer.reserve(READ_BUFFER_BYTES);
            }
            match ready!(poll_read_buf(Pin::new(&mut self.read), cx, &mut self.buffer)) {
                Ok(0) => self.state = ReadState::AtEof,
                Ok(read) => {
                    self.context.received(read);
                    self.codec.set_max_question_bytes(self.context.max_question_bytes());
                    self.state = ReadState::Decodable;
                }
                Err(error) => {
                    self.state = ReadState::Ended;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
    }

    /// What `decode` finds in the buffer; the input ends on an error.
    fn decoded(
        &mut self,
        decode: fn(&mut ZenCodec, &mut BytesMut) -> Result<Option<Incoming>, CodecError>,
    ) -> Option<Result<Incoming, CodecError>> {
        let decoded = decode(&mut self.codec, &mut self.buffer).transpose();
        if matches!(decoded, Some(Err(_))) {
            self.state = ReadState::Ended;
        }
        decoded
    }
}

impl<R: AsyncRead + Unpin, C: ReaderContext + Unpin> Stream for QuestionReader<R, C> {
    type Item = Result<Incoming, CodecError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_incoming(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, io, rc::Rc, task::Waker};

    use tokio::io::ReadBuf;

    use super::*;

    /// Gives one question per read, `left` times, then end of file; records the room each read
    /// offered.
    struct OneQuestionAtATime {
        left: usize,
        offered: Rc<RefCell<Vec<usize>>>,
    }

    impl AsyncRead for OneQuestionAtATime {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            self.offered.borrow_mut().push(buf.remaining());
            if self.left > 0 {
                self.left -= 1;
                buf.put_slice(b"Beautiful is better than?");
            }
            Poll::Ready(Ok(()))
        }
    }

    /// A fixed limit; reads go uncounted.
    struct Limit(usize);

    impl ReaderContext for Limit {
        fn max_question_bytes(&self) -> usize {
            self.0
        }

        fn received(&self, _: usize) {}
    }

    #[test]
    fn every_read_is_offered_at_least_the_minimum_room_in_a_buffer_that_stays_its_size() {
        let offered = Rc::default();
        let connection = OneQuestionAtATime { left: 100, offered: Rc::clone(&offered) };
        let mut reader = QuestionReader::new(connection, Limit(1024));
        let mut cx = Context::from_waker(Waker::noop());
        let mut questions = 0;
        while let Poll::Ready(Some(incoming)) = reader.poll_incoming(&mut cx) {
            assert!(matches!(incoming, Ok(Incoming::Questions(_))), "{incoming:?}");
            questions += 1;
        }
        assert_eq!(questions, 100);
        let offered = offered.borrow();
        assert_eq!(offered.len(), 101, "one read per question, and the one finding end of file");
        assert!(offered.iter().all(|&room| room >= MIN_READ_SPACE), "{offered:?}");
        // What is left of the allocation from where the buffer now starts: never more than it
        // was made with, so it was moved back to its start rather than grown.
        assert!(reader.buffer.capacity() <= READ_BUFFER_BYTES, "grew to {}", reader.buffer.capacity());
    }
}
