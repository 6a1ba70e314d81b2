//! [`AnswerTable`]: the questions the oracle knows and their answers, every entry checked
//! against the protocol's rules when the table is built, so a table that exists is valid. The
//! settings build it from their list of [`AnswerEntry`]s, which serde reads.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::protocol::{ANSWER_END, Answer, HEALTH_QUESTION, QUESTION_END, Question, is_leading_whitespace};

/// Why a set of entries cannot be an answer table; names the entry by its position (from zero)
/// and quotes its question.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// There is no entry at all.
    #[error("the table is empty: the server would know no answer at all; list at least one")]
    Empty,
    /// A question is not a run of bytes ending with its only `?`.
    #[error("entry {index}: question \"{question}\" must end with '?' and contain no other '?'")]
    BadQuestion {
        /// Position of the entry, from zero.
        index: usize,
        /// The question, escaped.
        question: String,
    },
    /// A question starts with whitespace, which is never part of a received question.
    #[error("entry {index}: question \"{question}\" starts with whitespace, so no client can ask it")]
    LeadingWhitespace {
        /// Position of the entry, from zero.
        index: usize,
        /// The question, escaped.
        question: String,
    },
    /// An answer is not a run of bytes ending with its only `.`.
    #[error("entry {index} (question \"{question}\"): answer \"{answer}\" must end with '.' and contain no other '.'")]
    BadAnswer {
        /// Position of the entry, from zero.
        index: usize,
        /// Its question, escaped.
        question: String,
        /// The answer, escaped.
        answer: String,
    },
    /// A question is the health check's, which the server answers itself.
    #[error(
        "entry {index}: question \"{question}\" is the health check's, which zen-server answers itself (zen-client probe asks it); ask something else"
    )]
    Reserved {
        /// Position of the entry, from zero.
        index: usize,
        /// The question, escaped.
        question: String,
    },
    /// The same question appears twice.
    #[error("entry {index}: question \"{question}\" is already answered by entry {first}")]
    Duplicate {
        /// Position of the repeated entry, from zero.
        index: usize,
        /// Position of its first appearance.
        first: usize,
        /// The question, escaped.
        question: String,
    },
}

/// One entry of `oracle.answers`, as the settings list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerEntry {
    /// The question, ending with `?`.
    pub question: String,
    /// Its answer, ending with `.`.
    pub answer: String,
}

/// Questions and their answers, every entry checked against the protocol's rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<AnswerEntry>", into = "Vec<AnswerEntry>")]
pub struct AnswerTable {
    /// FxHash (`rustc-hash`): about three times cheaper than SipHash or FNV on questions of a few
    /// dozen bytes. Flooding is no concern: the keys are the operator's few questions, so no
    /// client input can make a lookup cost more than comparing against them all.
    answers: FxHashMap<Question, (usize, Answer)>,
    /// The longest answer, in bytes: what a question may cost a session (its byte budget).
    longest_answer: usize,
}

impl AnswerTable {
    /// Builds a table from `(question, answer)` pairs.
    ///
    /// # Errors
    ///
    /// A [`TableError`] naming the first entry whose question does not end with its only `?`,
    /// starts with whitespace, is the health check's, or repeats an earlier one, or whose answer
    /// does not end with its only `.`.
    pub fn new<Q, A>(entries: impl IntoIterator<Item = (Q, A)>) -> Result<Self, TableError>
    where
        Q: Into<Question>,
        A: Into<Answer>,
    {
        let mut answers = FxHashMap::default();
        let mut longest_answer = 0;
        for (index, (question, answer)) in entries.into_iter().enumerate() {
            let (question, answer) = (question.into(), answer.into());
            if !ends_with_its_only(question.as_bytes(), QUESTION_END) {
                return Err(TableError::BadQuestion { index, question: question.to_string() });
            }
            if question.as_bytes().first().copied().is_some_and(is_leading_whitespace) {
                return Err(TableError::LeadingWhitespace { index, question: question.to_string() });
            }
            if question.as_bytes() == HEALTH_QUESTION {
                return Err(TableError::Reserved { index, question: question.to_string() });
            }
            if !ends_with_its_only(answer.as_bytes(), ANSWER_END) {
                return Err(TableError::BadAnswer {
                    index,
                    question: question.to_string(),
                    answer: answer.to_string(),
                });
            }
            if let Some((first, _)) = answers.get(&question) {
                let first = *first;
                return Err(TableError::Duplicate { index, first, question: question.to_string() });
            }
            longest_answer = longest_answer.max(answer.as_bytes().len());
            answers.insert(question, (index, answer));
        }
        Ok(Self { answers, longest_answer })
    }

    /// The answer to `question`, or [`Answer::UNKNOWN_APHORISM`].
    pub fn answer(&self, question: &[u8]) -> Answer {
        self.get(question).cloned().unwrap_or(Answer::UNKNOWN_APHORISM)
    }

    /// The table's answer to `question`, if it has one.
    pub fn get(&self, question: &[u8]) -> Option<&Answer> {
        self.answers.get(question).map(|(_, answer)| answer)
    }

    /// Whether the table has an answer for `question`.
    pub fn knows(&self, question: &[u8]) -> bool {
        self.answers.contains_key(question)
    }

    /// The number of questions the table knows.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether the table knows no question at all.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// The entries, in the order they were listed.
    pub fn entries(&self) -> Vec<AnswerEntry> {
        let mut entries: Vec<_> =
            self.answers.iter().map(|(question, (index, answer))| (*index, question, answer)).collect();
        entries.sort_unstable_by_key(|(index, ..)| *index);
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        entries
            .into_iter()
            .map(|(_, question, answer)| AnswerEntry {
                question: text(question.as_bytes()),
                answer: text(answer.as_bytes()),
            })
            .collect()
    }

    /// The longest question in the table, in bytes.
    pub fn longest_question(&self) -> usize {
        self.answers.keys().map(|question| question.as_bytes().len()).max().unwrap_or(0)
    }

    /// The longest answer in the table, in bytes.
    pub fn longest_answer(&self) -> usize {
        self.longest_answer
    }
}

impl TryFrom<Vec<AnswerEntry>> for AnswerTable {
    type Error = TableError;

    /// A table of at least one entry.
    fn try_from(entries: Vec<AnswerEntry>) -> Result<Self, TableError> {
        if entries.is_empty() {
            return Err(TableError::Empty);
        }
        Self::new(entries.into_iter().map(|AnswerEntry { question, answer }| (question, answer)))
    }
}

impl From<AnswerTable> for Vec<AnswerEntry> {
    fn from(table: AnswerTable) -> Self {
        table.entries()
    }
}

fn ends_with_its_only(bytes: &[u8], end: u8) -> bool {
    bytes.last() == Some(&end) && memchr::memchr(end, bytes) == Some(bytes.len() - 1)
}

/// The book's three questions and answers, for tests.
#[cfg(test)]
pub(crate) fn book_table() -> AnswerTable {
    AnswerTable::new([
        ("Beautiful is better than?", "Ugly."),
        ("Explicit is better than?", "Implicit."),
        ("Simple is better than?", "Complex."),
    ])
    .expect("the book's table follows the rules")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_questions_get_their_answers_and_others_the_error() {
        let table = book_table();
        assert_eq!(table.answer(b"Simple is better than?").as_bytes(), b"Complex.");
        assert_eq!(table.answer(b"simple is better than?"), Answer::UNKNOWN_APHORISM);
        assert_eq!(table.answer(b"Simple is better than"), Answer::UNKNOWN_APHORISM);
    }

    #[test]
    fn a_question_without_its_final_question_mark_is_rejected() {
        let error = AnswerTable::new([("Ok?", "Yes."), ("Why", "No.")]).unwrap_err();
        assert_eq!(error, TableError::BadQuestion { index: 1, question: "Why".into() });
    }

    #[test]
    fn a_question_with_an_inner_question_mark_is_rejected() {
        let error = AnswerTable::new([("Why? Not?", "No.")]).unwrap_err();
        assert!(matches!(error, TableError::BadQuestion { index: 0, .. }), "{error}");
    }

    #[test]
    fn an_answer_with_an_inner_period_is_rejected() {
        let error = AnswerTable::new([("Why?", "Because. Really.")]).unwrap_err();
        assert!(matches!(error, TableError::BadAnswer { index: 0, .. }), "{error}");
        assert!(error.to_string().contains("Because. Really."), "{error}");
    }

    #[test]
    fn an_answer_without_its_final_period_is_rejected() {
        let error = AnswerTable::new([("Why?", "Because")]).unwrap_err();
        assert!(matches!(error, TableError::BadAnswer { .. }), "{error}");
    }

    #[test]
    fn a_question_starting_with_whitespace_is_rejected() {
        let error = AnswerTable::new([(" Why?", "Because.")]).unwrap_err();
        assert!(matches!(error, TableError::LeadingWhitespace { .. }), "{error}");
    }

    #[test]
    fn a_bad_answer_is_named_with_its_question() {
        let error = AnswerTable::new([("Why?", "Because. Really.")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "entry 0 (question \"Why?\"): answer \"Because. Really.\" must end with '.' and contain no other '.'"
        );
    }

    #[test]
    fn entries_come_back_in_their_order_and_an_empty_list_is_no_table() {
        let entry = |question: &str, answer: &str| AnswerEntry { question: question.into(), answer: answer.into() };
        let entries = vec![entry("B?", "Two."), entry("A?", "One."), entry("C?", "Three.")];
        let table = AnswerTable::try_from(entries.clone()).unwrap();
        assert_eq!(table.entries(), entries);
        assert_eq!(AnswerTable::try_from(Vec::new()), Err(TableError::Empty));
    }

    #[test]
    fn a_repeated_question_names_both_entries() {
        let error = AnswerTable::new([("Why?", "A."), ("How?", "B."), ("Why?", "C.")]).unwrap_err();
        assert_eq!(error.to_string(), "entry 2: question \"Why?\" is already answered by entry 0");
    }
}
