//! [`Lookup`]: answering one question from a table, with the oracle's fault injection (a
//! question that panics, one that blocks its thread) and panic containment; and the health
//! question, answered from the daemon's [`Health`]. Every lookup runs on a replica, on the asking
//! session's thread; the costly-answer workers only pay the simulated cost.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};

use crate::{
    health::Health,
    metrics::Outcome,
    oracle::table::AnswerTable,
    protocol::{Answer, AnswersBuilder, HEALTH_QUESTION, QUESTION_END, Question, is_leading_whitespace},
};

/// How questions are looked up: which questions are poisoned (fault injection), how many
/// lookups have panicked, and the health the health question is answered from.
#[derive(Debug, Default)]
pub struct Lookup {
    panic_question: Option<Question>,
    hang_question: Option<Question>,
    panics: AtomicU64,
    health: Arc<Health>,
}

impl Lookup {
    /// Lookups that panic when asked `panic_question`, and block their thread for good when
    /// asked `hang_question`, if any; the health question is answered from `health`.
    pub fn new(panic_question: Option<Question>, hang_question: Option<Question>, health: Arc<Health>) -> Self {
        Self { panic_question, hang_question, panics: AtomicU64::new(0), health }
    }

    /// The health the health question is answered from.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
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
        if question == HEALTH_QUESTION {
            let health = self.health.answer();
            answers.push_answer(&health);
            return if health == Answer::HEALTHY { Outcome::Known } else { Outcome::InternalError };
        }
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

/// A fault-injection question: none (`""`), or a question a client can ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FaultQuestion(Option<Question>);

impl FaultQuestion {
    /// The question, if there is one.
    pub fn question(&self) -> Option<&Question> {
        self.0.as_ref()
    }

    /// Its length in bytes (0 for none).
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |question| question.as_bytes().len())
    }

    /// Whether there is no question.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl TryFrom<String> for FaultQuestion {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bytes = text.as_bytes();
        let ends_with_its_only_mark =
            bytes.last() == Some(&QUESTION_END) && bytes.iter().filter(|&&b| b == QUESTION_END).count() == 1;
        match text.is_empty() {
            true => Ok(Self(None)),
            false if ends_with_its_only_mark && !bytes.first().copied().is_some_and(is_leading_whitespace) => {
                Ok(Self(Some(Question::new(text))))
            }
            false => Err("a question no client can ask (it must end with its only '?' and not start with whitespace), so it could never trigger; leave it empty for none".into()),
        }
    }
}

impl From<FaultQuestion> for String {
    fn from(question: FaultQuestion) -> String {
        question.0.map(|question| String::from_utf8_lossy(question.as_bytes()).into_owned()).unwrap_or_default()
    }
}
