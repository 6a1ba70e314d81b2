//! The answers: [`AnswerTable`], validated on construction, and the [`Oracle`] actors that
//! answer [`Ask`] messages from it.
//!
//! The table is plain data behind an `Arc`, shared by every oracle, so it can be swapped whole
//! ([`ReplaceTable`]) while sessions keep asking; each reply copies its answers out of it into
//! one piece of bytes ([`Answers`]).

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use actix::prelude::*;
use actix_rt::ArbiterHandle;

use crate::protocol::{
    ANSWER_END, Answer, Answers, AnswersBuilder, QUESTION_END, Question, Questions, is_leading_whitespace,
};

/// Why a set of entries cannot be an answer table; names the entry by its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
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
    #[error("entry {index}: answer \"{answer}\" must end with '.' and contain no other '.'")]
    BadAnswer {
        /// Position of the entry, from zero.
        index: usize,
        /// The answer, escaped.
        answer: String,
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

/// Questions and their answers, every entry checked against the protocol's rules.
#[derive(Debug, Clone, Default)]
pub struct AnswerTable {
    answers: HashMap<Question, (usize, Answer), BuildHasherDefault<Fnv1a>>,
}

/// FNV-1a: several times cheaper than the default SipHash on short questions. Flooding is no
/// concern here: the keys are the operator's few questions, so no client input can make a
/// lookup cost more than comparing against them all.
#[derive(Debug, Clone, Copy)]
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl AnswerTable {
    /// Builds a table from `(question, answer)` pairs.
    ///
    /// # Errors
    ///
    /// A [`TableError`] naming the first entry whose question does not end with its only `?`,
    /// starts with whitespace, or repeats an earlier one, or whose answer does not end with
    /// its only `.`.
    pub fn new<Q, A>(entries: impl IntoIterator<Item = (Q, A)>) -> Result<Self, TableError>
    where
        Q: Into<Question>,
        A: Into<Answer>,
    {
        let mut answers = HashMap::default();
        for (index, (question, answer)) in entries.into_iter().enumerate() {
            let (question, answer) = (question.into(), answer.into());
            if !ends_with_its_only(question.as_bytes(), QUESTION_END) {
                return Err(TableError::BadQuestion { index, question: question.to_string() });
            }
            if question.as_bytes().first().copied().is_some_and(is_leading_whitespace) {
                return Err(TableError::LeadingWhitespace { index, question: question.to_string() });
            }
            if !ends_with_its_only(answer.as_bytes(), ANSWER_END) {
                return Err(TableError::BadAnswer { index, answer: answer.to_string() });
            }
            if let Some((first, _)) = answers.get(&question) {
                let first = *first;
                return Err(TableError::Duplicate { index, first, question: question.to_string() });
            }
            answers.insert(question, (index, answer));
        }
        Ok(Self { answers })
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

    /// The longest question in the table, in bytes.
    pub fn longest_question(&self) -> usize {
        self.answers.keys().map(|q| q.as_bytes().len()).max().unwrap_or(0)
    }
}

fn ends_with_its_only(bytes: &[u8], end: u8) -> bool {
    bytes.last() == Some(&end) && memchr::memchr(end, bytes) == Some(bytes.len() - 1)
}

/// Asks for the answers to a batch of questions; the reply holds one answer per question,
/// in the same order.
#[derive(Debug, Message)]
#[rtype(result = "Answers")]
pub struct Ask(pub Questions);

/// Replaces the whole answer table; questions asked afterwards get the new answers.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReplaceTable(pub Arc<AnswerTable>);

/// How the oracle answers, beyond its table.
#[derive(Debug, Clone, Default)]
pub struct OracleConfig {
    /// Blocking work each computed answer costs; zero answers every question at once.
    pub simulated_cost: Duration,
    /// Threads computing costly answers (when `simulated_cost` is not zero).
    pub workers: usize,
    /// Fault injection: asking this question makes the lookup panic.
    pub panic_question: Option<Question>,
}

/// An actor that knows the answers: every session asks the oracle on its own arbiter.
///
/// A server runs one oracle per worker arbiter ([`Oracle::start_on`]), all sharing one answer
/// table, one panic count and one pool of workers for costly answers, so that asking never
/// leaves the session's thread: a single oracle on a thread of its own cost two thread switches
/// per question and halved throughput on one core.
///
/// Lookups run inside `catch_unwind`: a panic answers that question with
/// [`Answer::INTERNAL_ERROR`], is logged and counted, and the oracle keeps serving (actix would
/// otherwise lose the actor, and every later question of its sessions with it). With a
/// simulated cost, answers to known questions are computed by the pool of [`OracleWorker`]
/// threads and remembered; unknown and remembered questions are answered at once (from the
/// table: the work models finding the answer, which is then cheap).
pub struct Oracle {
    table: Arc<AnswerTable>,
    faults: Arc<Faults>,
    costly: Option<Arc<CostlyAnswers>>,
}

/// Fault injection and the count of contained panics, shared by every oracle and worker.
#[derive(Debug, Default)]
struct Faults {
    panic_question: Option<Question>,
    panics: AtomicU64,
}

/// The pool computing costly answers and what it computed, shared by every oracle.
struct CostlyAnswers {
    workers: Addr<OracleWorker>,
    computed: Mutex<Computed>,
}

/// The questions whose answers have been computed already (their cost paid), for one table.
#[derive(Default)]
struct Computed {
    table: Option<Arc<AnswerTable>>,
    questions: HashSet<Question>,
}

impl Computed {
    /// The questions computed from `table` (forgetting those of any other table).
    fn for_table(&mut self, table: &Arc<AnswerTable>) -> &mut HashSet<Question> {
        if !self.table.as_ref().is_some_and(|known| Arc::ptr_eq(known, table)) {
            self.table = Some(table.clone());
            self.questions.clear();
        }
        &mut self.questions
    }
}

impl Oracle {
    /// A lone oracle answering from `table`, with its own worker pool if answers have a cost
    /// (so it must be created inside a running actix `System`).
    pub fn new(table: impl Into<Arc<AnswerTable>>, config: OracleConfig) -> Self {
        let (faults, costly) = Self::shared_parts(config);
        Self { table: table.into(), faults, costly }
    }

    /// Starts one oracle on each of `arbiters`, all sharing `table`, the panic count and the
    /// worker pool; must be called inside a running actix `System`.
    pub fn start_on(arbiters: &[ArbiterHandle], table: Arc<AnswerTable>, config: OracleConfig) -> Vec<Addr<Oracle>> {
        let (faults, costly) = Self::shared_parts(config);
        arbiters
            .iter()
            .map(|arbiter| {
                let oracle = Oracle { table: table.clone(), faults: faults.clone(), costly: costly.clone() };
                Oracle::start_in_arbiter(arbiter, move |_| oracle)
            })
            .collect()
    }

    fn shared_parts(config: OracleConfig) -> (Arc<Faults>, Option<Arc<CostlyAnswers>>) {
        let faults = Arc::new(Faults { panic_question: config.panic_question, panics: AtomicU64::new(0) });
        let costly = (!config.simulated_cost.is_zero()).then(|| {
            let (cost, faults) = (config.simulated_cost, faults.clone());
            let workers =
                SyncArbiter::start(config.workers.max(1), move || OracleWorker { cost, faults: faults.clone() });
            Arc::new(CostlyAnswers { workers, computed: Mutex::default() })
        });
        (faults, costly)
    }
}

impl Faults {
    /// Whether `question` is the one that makes lookups panic.
    fn is_poison(&self, question: &[u8]) -> bool {
        self.panic_question.as_ref().is_some_and(|poison| poison.as_bytes() == question)
    }

    /// Appends the table's answer to `question` to `answers`, or an internal error if looking
    /// it up panicked.
    fn answer_into(&self, table: &AnswerTable, question: &[u8], answers: &mut AnswersBuilder) {
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

impl Actor for Oracle {
    type Context = Context<Self>;
}

impl Handler<Ask> for Oracle {
    type Result = ActorResponse<Self, Answers>;

    fn handle(&mut self, Ask(questions): Ask, _ctx: &mut Self::Context) -> Self::Result {
        let Some(costly) = &self.costly else {
            return ActorResponse::reply(answer_all(&self.faults, &self.table, &questions));
        };
        // Unknown questions and those computed before are answered now; the rest cost work.
        let costs_work: Vec<bool> = {
            let mut computed = costly.computed.lock().unwrap_or_else(PoisonError::into_inner);
            let computed = computed.for_table(&self.table);
            questions
                .iter()
                .map(|q| self.faults.is_poison(q) || (self.table.knows(q) && !computed.contains(q)))
                .collect()
        };
        let to_compute = Questions::from_list(questions.iter().zip(&costs_work).filter(|(_, c)| **c).map(|(q, _)| q));
        let (table, faults, costly) = (self.table.clone(), self.faults.clone(), costly.clone());
        if to_compute.is_empty() {
            return ActorResponse::reply(answer_all(&faults, &table, &questions));
        }
        let request = costly.workers.send(Compute { table: table.clone(), questions: to_compute.clone() });
        ActorResponse::r#async(request.into_actor(self).map(move |computed_answers, _, _| {
            let computed_answers = computed_answers.unwrap_or_else(|error| {
                tracing::error!(%error, "oracle workers are gone");
                Answers::repeated(&Answer::INTERNAL_ERROR, to_compute.len())
            });
            let mut computed = costly.computed.lock().unwrap_or_else(PoisonError::into_inner);
            let computed = computed.for_table(&table);
            // Remember what was computed, unless computing it failed.
            for (question, answer) in to_compute.iter().zip(computed_answers.iter()) {
                if table.get(question).is_some_and(|known| known.as_bytes() == answer) {
                    computed.insert(to_compute.question(question));
                }
            }
            let mut computed_answers = computed_answers.iter();
            let mut answers = AnswersBuilder::with_capacity(questions.len());
            for (question, costs_work) in questions.iter().zip(costs_work) {
                if !costs_work {
                    faults.answer_into(&table, question, &mut answers);
                } else {
                    answers.push(computed_answers.next().unwrap_or(Answer::INTERNAL_ERROR.as_bytes()));
                }
            }
            answers.finish()
        }))
    }
}

/// The answers to every one of `questions`, looked up now.
fn answer_all(faults: &Faults, table: &AnswerTable, questions: &Questions) -> Answers {
    let mut answers = AnswersBuilder::with_capacity(questions.len());
    for question in questions.iter() {
        faults.answer_into(table, question, &mut answers);
    }
    answers.finish()
}

impl Handler<ReplaceTable> for Oracle {
    type Result = ();

    fn handle(&mut self, ReplaceTable(table): ReplaceTable, _ctx: &mut Self::Context) {
        tracing::debug!(questions = table.len(), "answer table replaced");
        self.table = table;
    }
}

/// Computes costly answers on a thread of its own, one of a pool behind the [`Oracle`].
pub struct OracleWorker {
    cost: Duration,
    faults: Arc<Faults>,
}

impl Actor for OracleWorker {
    type Context = SyncContext<Self>;
}

/// Computes the answers to `questions` from `table`, at the simulated cost each.
#[derive(Message)]
#[rtype(result = "Answers")]
struct Compute {
    table: Arc<AnswerTable>,
    questions: Questions,
}

impl Handler<Compute> for OracleWorker {
    type Result = Answers;

    fn handle(&mut self, Compute { table, questions }: Compute, _ctx: &mut Self::Context) -> Answers {
        let mut answers = AnswersBuilder::with_capacity(questions.len());
        for question in questions.iter() {
            std::thread::sleep(self.cost);
            self.faults.answer_into(&table, question, &mut answers);
        }
        answers.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book_table() -> AnswerTable {
        AnswerTable::new([
            ("Beautiful is better than?", "Ugly."),
            ("Explicit is better than?", "Implicit."),
            ("Simple is better than?", "Complex."),
        ])
        .unwrap()
    }

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
    fn a_repeated_question_names_both_entries() {
        let error = AnswerTable::new([("Why?", "A."), ("How?", "B."), ("Why?", "C.")]).unwrap_err();
        assert_eq!(error.to_string(), "entry 2: question \"Why?\" is already answered by entry 0");
    }

    #[actix::test]
    async fn oracle_answers_a_batch_in_order_through_its_address() {
        let oracle = Oracle::new(book_table(), OracleConfig::default()).start();
        let questions = [&b"Explicit is better than?"[..], b"Why?", b"Beautiful is better than?"];
        let answers = oracle.send(Ask(Questions::from_list(questions))).await.unwrap();
        assert_eq!(answers.len(), 3);
        assert_eq!(answers.iter().collect::<Vec<_>>(), [&b"Implicit."[..], b"Error: unknown aphorism.", b"Ugly."]);
    }

    #[actix::test]
    async fn oracle_answers_from_the_new_table_after_a_replacement() {
        let oracle = Oracle::new(book_table(), OracleConfig::default()).start();
        let new_table = AnswerTable::new([("Flat is better than?", "Nested.")]).unwrap();
        oracle.send(ReplaceTable(Arc::new(new_table))).await.unwrap();
        let questions = [&b"Flat is better than?"[..], b"Beautiful is better than?"];
        let answers = oracle.send(Ask(Questions::from_list(questions))).await.unwrap();
        assert_eq!(answers.as_bytes(), b"Nested.Error: unknown aphorism.");
    }

    #[actix::test]
    async fn a_costly_oracle_keeps_answers_in_order_across_cheap_costly_and_failing_questions() {
        let config = OracleConfig {
            simulated_cost: Duration::from_millis(1),
            workers: 2,
            panic_question: Some(Question::from_static(b"Poison?")),
        };
        let oracle = Oracle::new(book_table(), config).start();
        let questions: [&[u8]; 5] =
            [b"Why?", b"Simple is better than?", b"Poison?", b"Beautiful is better than?", b"How?"];
        let expected = "Error: unknown aphorism.Complex.Error: internal error.Ugly.Error: unknown aphorism.";
        for round in 0..2 {
            // The second round answers the two known questions from what was computed.
            let answers = oracle.send(Ask(Questions::from_list(questions))).await.unwrap();
            assert_eq!(answers.len(), 5, "round {round}");
            assert_eq!(String::from_utf8_lossy(answers.as_bytes()), expected, "round {round}");
        }
    }
}
