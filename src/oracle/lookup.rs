//! [`Lookup`]: answering one question from a table, with the oracle's fault injection and
//! panic containment. Shared by the oracle's shards and its costly-answer workers, so a
//! question is answered the same way wherever it is looked up.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{
    oracle::table::AnswerTable,
    protocol::{Answer, AnswersBuilder, Question},
};

/// How questions are looked up: which question is poisoned (fault injection) and how many
/// lookups have panicked.
#[derive(Debug, Default)]
pub struct Lookup {
    panic_question: Option<Question>,
    panics: AtomicU64,
}

impl Lookup {
    /// Lookups that panic when asked `panic_question`, if any.
    pub fn new(panic_question: Option<Question>) -> Self {
        Self { panic_question, panics: AtomicU64::new(0) }
    }

    /// Whether `question` is the one that makes lookups panic.
    pub fn is_poison(&self, question: &[u8]) -> bool {
        self.panic_question.as_ref().is_some_and(|poison| poison.as_bytes() == question)
    }

    /// Lookups that panicked so far.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Appends the table's answer to `question` to `answers`, or [`Answer::INTERNAL_ERROR`]
    /// if looking it up panicked (the panic is logged and counted, and goes no further).
    pub fn answer_into(&self, table: &AnswerTable, question: &[u8], answers: &mut AnswersBuilder) {
        let lookup = || {
            if self.is_poison(question) {
                panic!("oracle.panic_question was asked");
            }
            table.get(question)
        };
        match panic::catch_unwind(AssertUnwindSafe(lookup)) {
            Ok(Some(answer)) => answers.push(answer.as_bytes()),
            Ok(None) => answers.push(Answer::UNKNOWN_APHORISM.as_bytes()),
            Err(_) => {
                let panics = self.panics.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(question = %question.escape_ascii(), panics, "oracle panicked while answering; answered with an internal error");
                answers.push(Answer::INTERNAL_ERROR.as_bytes());
            }
        }
    }
}
