//! The units of the Zen protocol: a [`Question`] ends with `?`, an [`Answer`] ends with `.`;
//! [`Questions`] and [`Answers`] carry the ones received or given together as one piece of
//! bytes each, so that a batch costs one allocation however many questions it holds.
//!
//! This module owns the protocol's constants and the answers the server gives on its own
//! (errors); framing lives in [`crate::codec`], the question-to-answer table in [`crate::oracle`].

use std::{borrow::Borrow, fmt};

use bytes::{BufMut, Bytes, BytesMut};

/// The port the book's servers and client use when none is given.
pub const DEFAULT_PORT: u16 = 1060;

/// The byte that ends every question.
pub const QUESTION_END: u8 = b'?';

/// The byte that ends every answer; clients read until they see it.
pub const ANSWER_END: u8 = b'.';

/// The question a probe asks to learn the server's health: the server answers it itself,
/// [`Answer::HEALTHY`] or [`Answer::UNHEALTHY`] (see [`crate::health`]); no answer table may
/// hold it.
pub const HEALTH_QUESTION: &[u8] = b"Is zen-server healthy?";

/// Whether `byte` is whitespace that may precede a question without being part of it.
pub fn is_leading_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// The bytes of one question, including its final `?`.
///
/// Questions are bytes, not text: they need not be UTF-8.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Question(Bytes);

impl Question {
    /// Wraps bytes received from a client or read from the settings.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// Wraps a static byte string, for tests and constants.
    pub const fn from_static(bytes: &'static [u8]) -> Self {
        Self(Bytes::from_static(bytes))
    }

    /// The question's bytes, `?` included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<[u8]> for Question {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Question(\"{}\")", self.0.escape_ascii())
    }
}

impl fmt::Display for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

/// The bytes of one answer, including its final `.`; sent to the client exactly as they are.
///
/// Cloning is cheap (a reference count), so the table hands out clones, never copies.
#[derive(Clone, PartialEq, Eq)]
pub struct Answer(Bytes);

impl Answer {
    /// The answer to any question the oracle does not know.
    pub const UNKNOWN_APHORISM: Answer = Answer::from_static(b"Error: unknown aphorism.");
    /// Sent, before closing, to a client whose question is longer than the server accepts.
    pub const QUESTION_TOO_LONG: Answer = Answer::from_static(b"Error: question too long.");
    /// Sent, before closing, to a client that connects while the server is full.
    pub const SERVER_BUSY: Answer = Answer::from_static(b"Error: server busy.");
    /// Sent, before closing, to a client that already holds as many connections as one may.
    pub const TOO_MANY_FROM_CLIENT: Answer = Answer::from_static(b"Error: too many connections from your address.");
    /// Sent, before closing, to every client still connected when the server drains.
    pub const SHUTTING_DOWN: Answer = Answer::from_static(b"Error: server shutting down.");
    /// Sent when the oracle failed to answer a question.
    pub const INTERNAL_ERROR: Answer = Answer::from_static(b"Error: internal error.");
    /// The answer to [`HEALTH_QUESTION`] while every worker thread answers.
    pub const HEALTHY: Answer = Answer::from_static(b"Healthy.");
    /// The answer to [`HEALTH_QUESTION`] while a worker thread is stalled (see [`crate::health`]).
    pub const UNHEALTHY: Answer = Answer::from_static(b"Error: server unhealthy.");

    /// Wraps answer bytes read from the settings or from the wire.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// Wraps a static byte string.
    pub const fn from_static(bytes: &'static [u8]) -> Self {
        Self(Bytes::from_static(bytes))
    }

    /// The answer's bytes, `.` included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Answer(\"{}\")", self.0.escape_ascii())
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

impl From<&'static str> for Question {
    fn from(text: &'static str) -> Self {
        Question::from_static(text.as_bytes())
    }
}

impl From<String> for Question {
    fn from(text: String) -> Self {
        Question::new(text)
    }
}

impl From<&'static str> for Answer {
    fn from(text: &'static str) -> Self {
        Answer::from_static(text.as_bytes())
    }
}

impl From<String> for Answer {
    fn from(text: String) -> Self {
        Answer::new(text)
    }
}

/// Complete questions received together, in order, kept as the bytes they arrived in (with
/// any whitespace between them).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Questions {
    bytes: Bytes,
    count: usize,
}

impl Questions {
    /// Wraps bytes holding `count` complete questions and whitespace only; the codec makes sure.
    pub(crate) fn from_framed(bytes: Bytes, count: usize) -> Self {
        Self { bytes, count }
    }

    /// Questions given one by one (each must end with its only `?`).
    pub fn from_list<'q>(questions: impl IntoIterator<Item = &'q [u8]>) -> Self {
        let mut bytes = Vec::new();
        let mut count = 0;
        for question in questions {
            bytes.extend_from_slice(question);
            count += 1;
        }
        Self { bytes: bytes.into(), count }
    }

    /// Each question, `?` included, without the whitespace around it.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.bytes[..];
        std::iter::from_fn(move || {
            rest = &rest[rest.iter().take_while(|&&b| is_leading_whitespace(b)).count()..];
            let end = memchr::memchr(QUESTION_END, rest)?;
            let (question, tail) = rest.split_at(end + 1);
            rest = tail;
            Some(question)
        })
    }

    /// One of these questions (a slice [`Questions::iter`] gave) as its own value, sharing
    /// these bytes.
    ///
    /// # Panics
    ///
    /// If `question` is not a slice of these questions' bytes.
    pub fn question(&self, question: &[u8]) -> Question {
        Question(self.bytes.slice_ref(question))
    }

    /// How many questions there are.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// These questions, then `more`, as one batch (copied).
    pub fn followed_by(&self, more: &Questions) -> Questions {
        let bytes = [&self.bytes[..], &more.bytes[..]].concat();
        Self { bytes: bytes.into(), count: self.count + more.count }
    }

    /// What these questions cost when each costs its own bytes plus `per_question`.
    pub fn cost(&self, per_question: usize) -> usize {
        self.bytes.len().saturating_add(self.count.saturating_mul(per_question))
    }

    /// Takes the first of these questions, as many as fit in `room` bytes when each costs its
    /// own bytes plus `per_question` (with `at_least_one`, the first whatever it costs);
    /// returns them with their cost and leaves the rest, or `None` if not even one fits.
    pub fn take_within(&mut self, room: usize, per_question: usize, at_least_one: bool) -> Option<(Questions, usize)> {
        let cost = |bytes: usize, count: usize| bytes.saturating_add(count.saturating_mul(per_question));
        let all = self.cost(per_question);
        if all <= room {
            return Some((std::mem::take(self), all));
        }
        let (mut end, mut count) = (0, 0);
        for question in self.iter() {
            let question_end = question.as_ptr() as usize - self.bytes.as_ptr() as usize + question.len();
            if cost(question_end, count + 1) > room && !(at_least_one && count == 0) {
                break;
            }
            (end, count) = (question_end, count + 1);
        }
        if count == 0 {
            return None;
        }
        self.count -= count;
        Some((Questions { bytes: self.bytes.split_to(end), count }, cost(end, count)))
    }
}

impl fmt::Debug for Questions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(|q| q.escape_ascii().to_string())).finish()
    }
}

/// The answers to one batch of questions, in order, as the bytes to send.
#[derive(Clone, PartialEq, Eq)]
pub struct Answers {
    bytes: Bytes,
    count: usize,
}

impl Answers {
    /// One answer on its own.
    pub fn single(answer: &Answer) -> Self {
        Self { bytes: answer.0.clone(), count: 1 }
    }

    /// The same answer `count` times.
    pub fn repeated(answer: &Answer, count: usize) -> Self {
        Self { bytes: answer.as_bytes().repeat(count).into(), count }
    }

    /// All the answers' bytes, as they go on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// All the answers' bytes, as they go on the wire, shared.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Each answer, `.` included (every answer holds exactly one `.`, its last byte).
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes.split_inclusive(|&b| b == ANSWER_END)
    }

    /// How many answers there are.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl fmt::Debug for Answers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(|a| a.escape_ascii().to_string())).finish()
    }
}

/// Builds [`Answers`] one answer at a time. A batch of one answer from the table (a client
/// that waits for each answer) shares that answer's bytes instead of copying them.
#[derive(Debug, Default)]
pub struct AnswersBuilder {
    /// The only answer so far, shared, while there is only one.
    first: Option<Bytes>,
    bytes: BytesMut,
    count: usize,
    /// Answers expected, to size the buffer once a second one comes.
    expected: usize,
}

impl AnswersBuilder {
    /// A builder for about `count` answers.
    pub fn with_capacity(count: usize) -> Self {
        Self { expected: count, ..Self::default() }
    }

    /// Appends `answer`, sharing its bytes while it is the only one.
    pub fn push_answer(&mut self, answer: &Answer) {
        if self.count == 0 {
            self.first = Some(answer.0.clone());
            self.count = 1;
        } else {
            self.push(answer.as_bytes());
        }
    }

    /// Appends `answer`, copied.
    pub fn push(&mut self, answer: &[u8]) {
        if self.bytes.is_empty() {
            self.bytes.reserve(self.expected.max(2) * 16);
        }
        if let Some(first) = self.first.take() {
            self.bytes.put_slice(&first);
        }
        self.bytes.put_slice(answer);
        self.count += 1;
    }

    /// The answers so far.
    pub fn finish(self) -> Answers {
        match self.first {
            Some(first) => Answers { bytes: first, count: 1 },
            None => Answers { bytes: self.bytes.freeze(), count: self.count },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_answer_follows_the_answer_rules() {
        for answer in [
            Answer::UNKNOWN_APHORISM,
            Answer::QUESTION_TOO_LONG,
            Answer::SERVER_BUSY,
            Answer::TOO_MANY_FROM_CLIENT,
            Answer::SHUTTING_DOWN,
            Answer::INTERNAL_ERROR,
            Answer::HEALTHY,
            Answer::UNHEALTHY,
        ] {
            let bytes = answer.as_bytes();
            assert_eq!(bytes.last(), Some(&ANSWER_END), "{answer:?}");
            assert_eq!(bytes.iter().filter(|&&b| b == ANSWER_END).count(), 1, "{answer:?}");
        }
    }

    #[test]
    fn questions_iterate_without_the_whitespace_between_them() {
        let questions = Questions::from_framed(Bytes::from_static(b"a? \r\nb c?\tz?"), 3);
        let list: Vec<&[u8]> = questions.iter().collect();
        assert_eq!(list, [&b"a?"[..], b"b c?", b"z?"]);
        assert_eq!(questions.question(list[1]).as_bytes(), b"b c?");
    }

    #[test]
    fn questions_are_taken_as_far_as_their_cost_fits() {
        let all = Questions::from_framed(Bytes::from_static(b"a? bb?\nccc?"), 3);
        // Costs with 10 per question: "a?" 12, " bb?" 4 more and 10, "\nccc?" 5 more and 10.
        let mut rest = all.clone();
        let (taken, cost) = rest.take_within(100, 10, false).unwrap();
        assert_eq!((taken, cost, rest.len()), (all.clone(), 11 + 30, 0), "everything fits");

        let mut rest = all.clone();
        let (taken, cost) = rest.take_within(26, 10, false).unwrap();
        assert_eq!((taken.iter().collect::<Vec<_>>(), cost), (vec![&b"a?"[..], b"bb?"], 26));
        assert_eq!(rest.iter().collect::<Vec<_>>(), [&b"ccc?"[..]]);
        assert_eq!(rest.len(), 1);

        let mut rest = all.clone();
        assert_eq!(rest.take_within(11, 10, false), None, "not even the first");
        assert_eq!(rest, all, "nothing taken");
        let (taken, cost) = rest.take_within(11, 10, true).unwrap();
        assert_eq!((taken.iter().collect::<Vec<_>>(), cost), (vec![&b"a?"[..]], 12), "the first, whatever it costs");
        assert_eq!(rest.len(), 2);
    }

    #[test]
    fn answers_iterate_one_by_one() {
        let mut builder = AnswersBuilder::with_capacity(2);
        builder.push(b"Ugly.");
        builder.push(Answer::UNKNOWN_APHORISM.as_bytes());
        let answers = builder.finish();
        assert_eq!(answers.len(), 2);
        assert_eq!(answers.iter().collect::<Vec<_>>(), [&b"Ugly."[..], b"Error: unknown aphorism."]);
        assert_eq!(
            Answers::repeated(&Answer::INTERNAL_ERROR, 2).as_bytes(),
            b"Error: internal error.Error: internal error."
        );
    }

    #[test]
    fn a_batch_of_one_shares_its_answer_and_more_answers_are_joined_in_order() {
        let ugly = Answer::new(String::from("Ugly."));
        let mut one = AnswersBuilder::with_capacity(1);
        one.push_answer(&ugly);
        let one = one.finish();
        assert_eq!(one.as_bytes().as_ptr(), ugly.as_bytes().as_ptr(), "shared, not copied");
        let mut three = AnswersBuilder::with_capacity(3);
        three.push_answer(&ugly);
        three.push_answer(&Answer::UNKNOWN_APHORISM);
        three.push(b"Complex.");
        let three = three.finish();
        assert_eq!((three.len(), three.as_bytes()), (3, &b"Ugly.Error: unknown aphorism.Complex."[..]));
    }

    #[test]
    fn questions_display_escaped() {
        let question = Question::new(&b"\x00caf\xc3\xa9?"[..]);
        assert_eq!(question.to_string(), "\\x00caf\\xc3\\xa9?");
    }
}
