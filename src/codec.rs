//! [`ZenCodec`]: splits a byte stream into questions.
//!
//! Framing follows the protocol: a question is every byte up to and including the next `?`,
//! leading ASCII whitespace excluded. The decoder yields every complete question it finds in
//! one read as a single batch ([`Incoming::Questions`]), so one read costs one trip to the
//! oracle however many questions it held. It never keeps more than `max_question_bytes - 1`
//! bytes of an unfinished question: a longer question is reported as [`Incoming::TooLong`]
//! the moment the limit is reached, without waiting for its `?`. Bytes left at end of file are
//! reported as [`Incoming::PartialAtEof`] rather than as a question.
//!
//! What to do with each event (answer, close, log) is the session's business.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::protocol::{QUESTION_END, Questions, is_leading_whitespace};

/// What the decoder found in the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// One or more complete questions, in the order they arrived.
    Questions(Questions),
    /// The question being received is longer than `limit` bytes; nothing more will be decoded.
    TooLong {
        /// The codec's `max_question_bytes`.
        limit: usize,
    },
    /// The stream ended in the middle of a question; these are its bytes.
    PartialAtEof(Bytes),
}

/// Errors from the read side of a connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Reading from the connection failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// Decodes questions, with a byte cap. (Answers need no encoding: [`crate::protocol::Answers`]
/// are the bytes to send.)
#[derive(Debug, Clone)]
pub struct ZenCodec {
    max_question_bytes: usize,
    /// Bytes of the unfinished question already searched for `?`, so none is searched twice.
    scanned: usize,
    state: DecodeState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    Reading,
    /// A too-long question was found after a batch that still has to be handed out.
    TooLongPending,
    /// Too long was reported: everything else is discarded.
    Rejected,
}

impl ZenCodec {
    /// A codec accepting questions of up to `max_question_bytes` bytes, `?` included.
    ///
    /// A limit of zero is treated as one (the shortest question is a lone `?`).
    pub fn new(max_question_bytes: usize) -> Self {
        Self { max_question_bytes: max_question_bytes.max(1), scanned: 0, state: DecodeState::Reading }
    }

    /// Accepts questions of up to `max_question_bytes` bytes from the next decode on (a reload
    /// may change the limit between two reads); a question already longer is refused then.
    pub fn set_max_question_bytes(&mut self, max_question_bytes: usize) {
        self.max_question_bytes = max_question_bytes.max(1);
    }

    fn reject(&mut self, src: &mut BytesMut, batch: Questions) -> Option<Incoming> {
        src.clear();
        self.scanned = 0;
        if batch.is_empty() {
            self.state = DecodeState::Rejected;
            Some(Incoming::TooLong { limit: self.max_question_bytes })
        } else {
            self.state = DecodeState::TooLongPending;
            Some(Incoming::Questions(batch))
        }
    }
}

/// Takes the first `length` bytes of `src`, which hold `count` complete questions and the
/// whitespace around them, as one copy.
fn cut_questions(src: &mut BytesMut, length: usize, count: usize) -> Questions {
    let questions = Questions::from_framed(Bytes::copy_from_slice(&src[..length]), count);
    src.advance(length);
    questions
}

impl Decoder for ZenCodec {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        match self.state {
            DecodeState::Reading => {}
            DecodeState::TooLongPending => {
                self.state = DecodeState::Rejected;
                src.clear();
                return Ok(Some(Incoming::TooLong { limit: self.max_question_bytes }));
            }
            DecodeState::Rejected => {
                src.clear();
                return Ok(None);
            }
        }
        // First find how far the complete questions go (and whether one is too long), then copy
        // them out in one piece: the read buffer is never shared, so it is reused in place.
        let (mut position, mut complete, mut count) = (0, 0, 0);
        let too_long = loop {
            if self.scanned == 0 {
                position += src[position..].iter().take_while(|&&b| is_leading_whitespace(b)).count();
            }
            match memchr::memchr(QUESTION_END, &src[position + self.scanned..]) {
                Some(offset) => {
                    let end = position + self.scanned + offset + 1;
                    self.scanned = 0;
                    if end - position > self.max_question_bytes {
                        break true;
                    }
                    (position, complete, count) = (end, end, count + 1);
                }
                // Even the `?` still to come would make it too long.
                None if src.len() - position >= self.max_question_bytes => break true,
                None => {
                    self.scanned = src.len() - position;
                    break false;
                }
            }
        };
        let batch = cut_questions(src, complete, count);
        if too_long {
            return Ok(self.reject(src, batch));
        }
        src.advance(position - complete);
        Ok((!batch.is_empty()).then_some(Incoming::Questions(batch)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        if let Some(incoming) = self.decode(src)? {
            return Ok(Some(incoming));
        }
        if src.is_empty() {
            return Ok(None);
        }
        self.scanned = 0;
        Ok(Some(Incoming::PartialAtEof(src.split().freeze())))
    }
}

/// The protocol's framing written as plainly as possible, over a whole input at once: what
/// the decoder must agree with however the input is split. For tests and the fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod reference {
    use crate::protocol::{QUESTION_END, is_leading_whitespace};

    /// How a stream of questions ends.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Ending {
        /// After a complete question, or only whitespace.
        Clean,
        /// With a question longer than the limit.
        TooLong,
        /// In the middle of a question: these bytes.
        Partial(Vec<u8>),
    }

    /// Splits `input` at the given chunk lengths (the rest in one last chunk).
    pub fn split<'a>(input: &'a [u8], lengths: &[usize]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = input;
        for &length in lengths {
            let (chunk, tail) = rest.split_at(length.min(rest.len()));
            chunks.push(chunk);
            rest = tail;
        }
        chunks.push(rest);
        chunks
    }

    /// The questions in `input`, in order, and how it ends, for a limit of `max` bytes.
    pub fn frame(input: &[u8], max: usize) -> (Vec<Vec<u8>>, Ending) {
        let mut questions = Vec::new();
        let mut start = 0;
        loop {
            while start < input.len() && is_leading_whitespace(input[start]) {
                start += 1;
            }
            if start == input.len() {
                return (questions, Ending::Clean);
            }
            match input[start..].iter().position(|&b| b == QUESTION_END) {
                Some(offset) if offset < max => {
                    questions.push(input[start..=start + offset].to_vec());
                    start += offset + 1;
                }
                Some(_) => return (questions, Ending::TooLong),
                None if input.len() - start >= max => return (questions, Ending::TooLong),
                None => return (questions, Ending::Partial(input[start..].to_vec())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{reference::Ending, *};

    /// What the decoder said, with each batch of questions as a list.
    #[derive(Debug, PartialEq, Eq)]
    enum Event {
        Questions(Vec<Vec<u8>>),
        TooLong,
        PartialAtEof(Vec<u8>),
    }

    impl From<Incoming> for Event {
        fn from(incoming: Incoming) -> Self {
            match incoming {
                Incoming::Questions(batch) => {
                    assert_eq!(batch.iter().count(), batch.len());
                    Event::Questions(batch.iter().map(<[u8]>::to_vec).collect())
                }
                Incoming::TooLong { .. } => Event::TooLong,
                Incoming::PartialAtEof(bytes) => Event::PartialAtEof(bytes.to_vec()),
            }
        }
    }

    /// Feeds `chunks` one at a time, as separate reads, then signals end of file.
    fn decode_all(codec: &mut ZenCodec, chunks: &[&[u8]]) -> Vec<Event> {
        let mut buffer = BytesMut::new();
        let mut events = Vec::new();
        for chunk in chunks {
            buffer.extend_from_slice(chunk);
            while let Some(event) = codec.decode(&mut buffer).unwrap() {
                events.push(event.into());
            }
            assert!(buffer.len() < codec.max_question_bytes, "buffered {}", buffer.len());
        }
        while let Some(event) = codec.decode_eof(&mut buffer).unwrap() {
            events.push(event.into());
        }
        events
    }

    fn questions(list: &[&'static [u8]]) -> Event {
        Event::Questions(list.iter().map(|q| q.to_vec()).collect())
    }

    #[test]
    fn one_question_split_over_many_reads_is_one_question() {
        let events = decode_all(&mut ZenCodec::new(1024), &[b"Beau", b"tiful is ", b"better than?"]);
        assert_eq!(events, [questions(&[b"Beautiful is better than?"])]);
    }

    #[test]
    fn pipelined_questions_in_one_read_come_out_as_one_batch_in_order() {
        let events = decode_all(&mut ZenCodec::new(1024), &[b"a?b?c?"]);
        assert_eq!(events, [questions(&[b"a?", b"b?", b"c?"])]);
    }

    #[test]
    fn leading_whitespace_is_not_part_of_a_question() {
        let events = decode_all(&mut ZenCodec::new(1024), &[b" \t\r\nWhy?\r\n", b"  Why not?"]);
        assert_eq!(events, [questions(&[b"Why?"]), questions(&[b"Why not?"])]);
    }

    #[test]
    fn whitespace_inside_and_at_the_end_of_a_question_is_kept() {
        let events = decode_all(&mut ZenCodec::new(1024), &[b"a  b \n?"]);
        assert_eq!(events, [questions(&[b"a  b \n?"])]);
    }

    #[test]
    fn non_utf8_and_nul_bytes_are_just_bytes() {
        let events = decode_all(&mut ZenCodec::new(1024), &[b"\x00\xff\xfe?"]);
        assert_eq!(events, [questions(&[b"\x00\xff\xfe?"])]);
    }

    #[test]
    fn a_question_of_exactly_the_limit_is_accepted() {
        let events = decode_all(&mut ZenCodec::new(4), &[b"abc?"]);
        assert_eq!(events, [questions(&[b"abc?"])]);
    }

    #[test]
    fn a_question_reaching_the_limit_without_its_end_is_too_long_at_once() {
        let mut codec = ZenCodec::new(4);
        let mut buffer = BytesMut::from(&b"abcd"[..]);
        assert_eq!(codec.decode(&mut buffer).unwrap().map(Event::from), Some(Event::TooLong));
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_terminated_question_over_the_limit_is_too_long() {
        let events = decode_all(&mut ZenCodec::new(4), &[b"abcd?"]);
        assert_eq!(events, [Event::TooLong]);
    }

    #[test]
    fn questions_before_a_too_long_one_are_delivered_first() {
        let events = decode_all(&mut ZenCodec::new(4), &[b"ab?cdefgh?ij?"]);
        assert_eq!(events, [questions(&[b"ab?"]), Event::TooLong]);
    }

    #[test]
    fn nothing_is_decoded_after_too_long() {
        let events = decode_all(&mut ZenCodec::new(4), &[b"abcdef", b"x?", b"y"]);
        assert_eq!(events, [Event::TooLong]);
    }

    #[test]
    fn oversized_so_far_input_dribbled_in_is_stopped_at_the_limit() {
        let mut codec = ZenCodec::new(8);
        let mut buffer = BytesMut::new();
        let mut events = Vec::new();
        for _ in 0..100 {
            buffer.extend_from_slice(b"z");
            if let Some(event) = codec.decode(&mut buffer).unwrap() {
                events.push(Event::from(event));
            }
            assert!(buffer.len() < 8);
        }
        assert_eq!(events, [Event::TooLong]);
    }

    #[test]
    fn partial_question_at_end_of_file_is_reported_with_its_bytes() {
        let events = decode_all(&mut ZenCodec::new(1024), &[b"Why?Beautiful is better than"]);
        assert_eq!(events, [questions(&[b"Why?"]), Event::PartialAtEof(b"Beautiful is better than".to_vec())]);
    }

    #[test]
    fn trailing_whitespace_at_end_of_file_is_not_a_partial_question() {
        let events = decode_all(&mut ZenCodec::new(1024), &[b"Why?\r\n"]);
        assert_eq!(events, [questions(&[b"Why?"])]);
    }

    /// Bytes that matter to framing, plus any byte at all.
    fn framing_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![Just(b'a'), Just(b'?'), Just(b' '), Just(b'\n'), Just(b'\r'), Just(0u8), any::<u8>()];
        prop::collection::vec(byte, 0..400)
    }

    proptest! {
        #[test]
        fn decoding_any_split_of_any_input_agrees_with_the_reference_framing(
            input in framing_bytes(),
            lengths in prop::collection::vec(0usize..64, 0..24),
            max in 1usize..48,
        ) {
            let mut codec = ZenCodec::new(max);
            // decode_all also checks that no more than `max - 1` bytes stay buffered.
            let events = decode_all(&mut codec, &reference::split(&input, &lengths));
            let (expected_questions, expected_ending) = reference::frame(&input, max);
            let mut questions = Vec::new();
            let mut ending = Ending::Clean;
            for (index, event) in events.iter().enumerate() {
                prop_assert_eq!(&ending, &Ending::Clean, "event after the end: {:?}", events);
                match event {
                    Event::Questions(batch) => {
                        prop_assert!(!batch.is_empty());
                        questions.extend(batch.iter().cloned());
                    }
                    Event::TooLong => ending = Ending::TooLong,
                    Event::PartialAtEof(bytes) => {
                        prop_assert_eq!(index, events.len() - 1);
                        ending = Ending::Partial(bytes.clone());
                    }
                }
            }
            prop_assert_eq!(questions, expected_questions);
            prop_assert_eq!(ending, expected_ending);
        }
    }
}
