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

use crate::codec::{CodecError, Incoming, READ_BUFFER_BYTES, ZenCodec};

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
            self.buffer.reserve(1);
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
