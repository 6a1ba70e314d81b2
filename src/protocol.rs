//! The units of the Zen protocol: a [`Question`] ends with `?`, an [`Answer`] ends with `.`.
//!
//! This module owns the protocol's constants and the answers the server gives on its own
//! (errors); framing lives in [`crate::codec`], the question-to-answer table in [`crate::oracle`].

use std::{borrow::Borrow, fmt};

use bytes::Bytes;

/// The port the book's servers and client use when none is given.
pub const DEFAULT_PORT: u16 = 1060;

/// The byte that ends every question.
pub const QUESTION_END: u8 = b'?';

/// The byte that ends every answer; clients read until they see it.
pub const ANSWER_END: u8 = b'.';

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
    /// Sent, before closing, to every client still connected when the server drains.
    pub const SHUTTING_DOWN: Answer = Answer::from_static(b"Error: server shutting down.");
    /// Sent when the oracle failed to answer a question.
    pub const INTERNAL_ERROR: Answer = Answer::from_static(b"Error: internal error.");

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

    /// The number of bytes the answer takes on the wire.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the answer has no bytes (never true of a valid answer).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_answer_follows_the_answer_rules() {
        for answer in [
            Answer::UNKNOWN_APHORISM,
            Answer::QUESTION_TOO_LONG,
            Answer::SERVER_BUSY,
            Answer::SHUTTING_DOWN,
            Answer::INTERNAL_ERROR,
        ] {
            let bytes = answer.as_bytes();
            assert_eq!(bytes.last(), Some(&ANSWER_END), "{answer:?}");
            assert_eq!(bytes.iter().filter(|&&b| b == ANSWER_END).count(), 1, "{answer:?}");
        }
    }

    #[test]
    fn questions_display_escaped() {
        let question = Question::new(&b"\x00caf\xc3\xa9?"[..]);
        assert_eq!(question.to_string(), "\\x00caf\\xc3\\xa9?");
    }
}
