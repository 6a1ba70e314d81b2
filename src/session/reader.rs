//! [`QuestionReader`]: the read half of a session's connection, decoded into questions.
//!
//! It does what `tokio_util`'s `FramedRead` would, but is polled by the session itself, from
//! the one item of its context that also takes the oracle's answers and writes them: no stream
//! of its own for the context to poll on every wake-up, no adapter around it, and the bytes
//! read counted where they are read.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::BytesMut;
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

/// Reads a connection and decodes what it reads.
pub struct QuestionReader {
    read: Box<dyn AsyncRead + Unpin>,
    buffer: BytesMut,
    codec: ZenCodec,
    state: ReadState,
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

impl QuestionReader {
    /// Reads `read`, with questions of at most `max_question_bytes` bytes.
    pub fn new(read: Box<dyn AsyncRead + Unpin>, max_question_bytes: usize) -> Self {
        Self {
            read,
            buffer: BytesMut::with_capacity(READ_BUFFER_BYTES),
            codec: ZenCodec::new(max_question_bytes),
            state: ReadState::Reading,
        }
    }

    /// The next thing the client sent, reading as needed and reporting each read's length to
    /// `received`; `None` once the input has ended (after end of file, or after an error).
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        mut received: impl FnMut(usize),
    ) -> Poll<Option<Result<Incoming, CodecError>>> {
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
                    received(read);
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

    #[test]
    fn every_read_is_offered_at_least_the_minimum_room_in_a_buffer_that_stays_its_size() {
        let offered = Rc::default();
        let connection = OneQuestionAtATime { left: 100, offered: Rc::clone(&offered) };
        let mut reader = QuestionReader::new(Box::new(connection), 1024);
        let mut cx = Context::from_waker(Waker::noop());
        let mut questions = 0;
        while let Poll::Ready(Some(incoming)) = reader.poll_next(&mut cx, |_| {}) {
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
