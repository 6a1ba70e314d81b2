//! [`Lookup`]: answering one question from a table, with the oracle's fault injection (a
//! question that panics, one that blocks its thread) and panic containment. Every lookup runs on
//! a replica, on the asking session's thread; the costly-answer workers only pay the simulated cost.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{
    metrics::Outcome,
    oracle::table::AnswerTable,
    protocol::{Answer, AnswersBuilder, Question},
};

/// How questions are looked up: which questions are poisoned (fault injection) and how many
/// lookups have panicked.
#[derive(Debug, Default)]
pub struct Lookup {
    panic_question: Option<Question>,
    hang_question: Option<Question>,
    panics: AtomicU64,
}

impl Lookup {
    /// Lookups that panic when asked `panic_question`, and block their thread for good when
    /// asked `hang_question`, if any.
    pub fn new(panic_question: Option<Question>, hang_question: Option<Question>) -> Self {
        Self { panic_question, hang_question, panics: AtomicU64::new(0) }
    }

    /// Whether `question` is one of the fault-injection questions.
    pub fn is_poison(&self, question: &[u8]) -> bool {
        [&self.panic_question, &self.hang_question].into_iter().flatten().any(|poison| poison.as_bytes() == question)
    }

    /// Lookups that panicked so far.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Appends the table's answer to `question` to `answers`, or [`Answer::INTERNAL_ERROR`]
    /// if looking it up panicked (the panic is logged and counted, and goes no further); says
    /// which it was.
    pub fn answer_into(&self, table: &AnswerTable, question: &[u8], answers: &mut AnswersBuilder) -> Outcome {
        let lookup = || {
            if self.panic_question.as_ref().is_some_and(|poison| poison.as_bytes() == question) {
                panic!("oracle.panic_question was asked");
            }
            if self.hang_question.as_ref().is_some_and(|poison| poison.as_bytes() == question) {
                tracing::error!("oracle.hang_question was asked: this worker thread stops for good");
                loop {
                    std::thread::park();
                }
            }
            table.get(question)
        };
        match panic::catch_unwind(AssertUnwindSafe(lookup)) {
            Ok(Some(answer)) => {
                answers.push_answer(answer);
                Outcome::Known
            }
            Ok(None) => {
                answers.push_answer(&Answer::UNKNOWN_APHORISM);
                Outcome::Unknown
            }
            Err(_) => {
                let panics = self.panics.fetch_add(1, Ordering::Relaxed) + 1;
                // The panic itself was logged as an error by the panic hook; this says what
                // became of it.
                tracing::warn!(question = %question.escape_ascii(), panics, "oracle panicked while answering; answered with an internal error");
                answers.push_answer(&Answer::INTERNAL_ERROR);
                Outcome::InternalError
            }
        }
    }
}
