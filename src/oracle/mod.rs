//! The Oracle: the one owner of the answer table, on the control thread, with a replica of it
//! on each worker thread, which the sessions of that thread ask.
//!
//! [`Oracle`] holds the current answer table and replaces it ([`ReplaceTable`]): one actor with
//! one address. Sessions do not ask it directly: asking an actor on another thread cost two
//! thread switches per question and halved throughput on one core. Each worker thread has an
//! [`OracleReplica`] instead (started with [`StartedOracle::start_replica`]), and the sessions
//! of that thread [`Ask`] it. Every replica reads the Oracle's one table (an [`ArcSwap`]), so
//! one [`ReplaceTable`] changes the answers of every worker at once, and a batch of questions
//! is always answered from one table, never a mix of two.
//!
//! Their messages, each handled by a typed `Handler`: the [`Oracle`] takes [`ReplaceTable`]; an
//! [`OracleReplica`] takes [`Ask`], whose answers go back to the asking session as an
//! [`Answered`] message.
//!
//! [`Ask`] and [`Answered`] travel between actors of one thread, so they go through
//! same-thread [`Inbox`](crate::inbox::Inbox)es, which the receiving actors register on their
//! contexts as message streams, rather than through actix mailboxes, which would box each
//! message and queue it with atomic operations (two allocations per message, four per batch
//! asked and answered). An `Ask` carries the asker's inbox, which never leaves its thread, so
//! an inbox is its only way in; `Answered` can also be sent to a session's address.
//!
//! - [`table`]: [`AnswerTable`], validated on construction.
//! - [`lookup`]: answering one question, with fault injection and panic containment.
//! - [`costly`]: the pool paying the simulated cost of answers, off the session threads.

pub mod costly;
pub mod lookup;
pub mod table;

use std::{
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use actix::{fut::wrap_future, prelude::*};
use arc_swap::ArcSwap;

pub use self::table::{AnswerTable, TableError};
use self::{
    costly::{Computed, CostlyAnswers},
    lookup::Lookup,
};
use crate::{
    health::Health,
    inbox,
    metrics::{FLUSH_INTERVAL, Metrics, Outcome, Tally},
    protocol::{Answer, Answers, AnswersBuilder, Question, Questions},
};

/// How long the Oracle keeps a table it replaced before dropping it: so that the last
/// reference to an old table (and the work of freeing it) is the Oracle's, on the control
/// thread, and not a replica's still finishing a batch with it on a worker thread.
const RETIRED_TABLE_KEPT: Duration = Duration::from_secs(1);

/// Asks for the answers to a batch of questions, sent to a replica's inbox ([`Asks`]). The
/// answers come back as a message of their own, [`Answered`], to `reply_to`: the asking
/// session's inbox, with no response future to poll in between.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ask {
    /// The questions, in order.
    pub questions: Questions,
    /// The asker's number for this batch, returned with the answers.
    pub seq: u64,
    /// Where the answers go.
    pub reply_to: inbox::Sender<Answered>,
}

/// Where the sessions of one thread send their [`Ask`]s: the inbox of that thread's replica.
pub type Asks = inbox::Sender<Ask>;

/// The answers to one [`Ask`]: one per question, in the same order.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Answered {
    /// The number the asker gave the batch.
    pub seq: u64,
    /// The answers.
    pub answers: Answers,
}

/// Replaces the whole answer table; the reply comes once it is in force: every batch a replica
/// answers from then on, on every worker, is answered from the new table.
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
    /// Fault injection: asking this question blocks the thread looking it up, for good.
    pub hang_question: Option<Question>,
}

/// The longest answer the oracle can give right now, in bytes: the table's longest, or an
/// error answer if that is longer. A session counts it for every question it has asked and
/// not yet been answered (see [`crate::session`]'s memory bound).
#[derive(Debug, Clone)]
pub struct AnswerBound(Arc<AtomicUsize>);

impl AnswerBound {
    /// The bound for answers from `table`.
    pub fn of(table: &AnswerTable) -> Self {
        Self(Arc::new(AtomicUsize::new(Self::bytes(table))))
    }

    fn bytes(table: &AnswerTable) -> usize {
        let errors = [Answer::UNKNOWN_APHORISM, Answer::INTERNAL_ERROR, Answer::UNHEALTHY];
        errors.iter().map(|answer| answer.as_bytes().len()).chain([table.longest_answer()]).max().unwrap_or_default()
    }

    /// The longest answer, in bytes.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, table: &AnswerTable) {
        self.0.store(Self::bytes(table), Ordering::Relaxed);
    }
}

/// The table in use and, if answers are costly, which of its questions are already computed.
#[derive(Debug)]
struct Current {
    table: Arc<AnswerTable>,
    computed: Computed,
}

impl Current {
    fn new(table: Arc<AnswerTable>) -> Arc<Self> {
        Arc::new(Self { table, computed: Computed::default() })
    }
}

/// What the Oracle and every replica share.
#[derive(Debug)]
struct Shared {
    current: ArcSwap<Current>,
    bound: AnswerBound,
    lookup: Lookup,
    costly: Option<CostlyAnswers>,
}

/// The Oracle: holds the answer table, replaces it, and reports the lookups that panicked.
pub struct Oracle {
    shared: Arc<Shared>,
    metrics: Metrics,
}

/// The Oracle once started, and what its replicas are started from.
#[derive(Clone)]
pub struct StartedOracle {
    /// The Oracle's address, for [`ReplaceTable`].
    pub addr: Addr<Oracle>,
    shared: Arc<Shared>,
    metrics: Metrics,
}

impl Oracle {
    /// Starts the Oracle on the current arbiter, counting answers into `metrics`; must be
    /// called inside a running actix `System`.
    pub fn start(table: Arc<AnswerTable>, config: OracleConfig, metrics: &Metrics) -> StartedOracle {
        let costly =
            (!config.simulated_cost.is_zero()).then(|| CostlyAnswers::start(config.simulated_cost, config.workers));
        let shared = Arc::new(Shared {
            bound: AnswerBound::of(&table),
            current: ArcSwap::new(Current::new(table)),
            lookup: Lookup::new(config.panic_question, config.hang_question, Arc::default()),
            costly,
        });
        let addr = Oracle { shared: shared.clone(), metrics: metrics.clone() }.start();
        StartedOracle { addr, shared, metrics: metrics.clone() }
    }
}

impl StartedOracle {
    /// Starts a replica on the current thread, for the sessions of this thread to ask.
    pub fn start_replica(&self) -> Asks {
        inbox::start(OracleReplica { shared: self.shared.clone(), tally: Rc::default(), metrics: self.metrics.clone() })
    }

    /// The longest answer the oracle can give, kept up to date across replacements.
    pub fn answer_bound(&self) -> AnswerBound {
        self.shared.bound.clone()
    }

    /// The daemon's health, which the replicas answer the health question from.
    pub fn health(&self) -> Arc<Health> {
        self.shared.lookup.health().clone()
    }
}

impl Actor for Oracle {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.metrics.is_enabled() {
            ctx.run_interval(FLUSH_INTERVAL, |oracle, _| {
                oracle.metrics.set_oracle_panics(oracle.shared.lookup.panics());
            });
        }
    }
}

impl Handler<ReplaceTable> for Oracle {
    type Result = ();

    fn handle(&mut self, ReplaceTable(table): ReplaceTable, ctx: &mut Self::Context) {
        tracing::debug!(questions = table.len(), "answer table replaced");
        // The bound first: a question asked from now on is counted for the longer of the two
        // tables' answers.
        self.shared.bound.set(&table);
        let retired = self.shared.current.swap(Current::new(table));
        ctx.run_later(RETIRED_TABLE_KEPT, move |_, _| drop(retired));
    }
}

/// Answers the questions of one worker thread's sessions from the oracle's table.
///
/// Lookups run inside `catch_unwind` ([`Lookup`]): a panic answers that question with
/// [`Answer::INTERNAL_ERROR`], is logged and counted, and the replica keeps serving (actix would
/// otherwise lose the actor, and every later question of its sessions with it). With a
/// simulated cost, known questions not computed yet are paid for by the [`CostlyAnswers`]
/// pool and remembered; unknown and remembered questions are answered at once.
pub struct OracleReplica {
    shared: Arc<Shared>,
    /// Answers given on this thread, by outcome, not yet added to `metrics`.
    tally: Rc<Tally>,
    metrics: Metrics,
}

impl Actor for OracleReplica {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.metrics.is_enabled() {
            ctx.run_interval(FLUSH_INTERVAL, |replica, _| replica.metrics.add(&replica.tally));
        }
    }
}

/// A session gone before its answers needs them no more.
fn reply(reply_to: &inbox::Sender<Answered>, answered: Answered) {
    let _ = reply_to.send(answered);
}

impl Handler<Ask> for OracleReplica {
    type Result = ();

    fn handle(&mut self, Ask { questions, seq, reply_to }: Ask, ctx: &mut Self::Context) {
        let shared = &self.shared;
        let Some(costly) = &shared.costly else {
            let answers = answer_all(&shared.lookup, &shared.current.load().table, &questions, &self.tally);
            reply(&reply_to, Answered { seq, answers });
            return;
        };
        let current = shared.current.load_full();
        let costs_work = |question: &[u8]| shared.lookup.is_poison(question) || current.table.knows(question);
        let still_costly = current.computed.still_costly(questions.iter(), costs_work);
        let to_compute =
            Questions::from_list(questions.iter().zip(&still_costly).filter(|(_, costly)| **costly).map(|(q, _)| q));
        if to_compute.is_empty() {
            let answers = answer_all(&shared.lookup, &current.table, &questions, &self.tally);
            reply(&reply_to, Answered { seq, answers });
            return;
        }
        let (shared, costly, tally) = (shared.clone(), costly.clone(), self.tally.clone());
        ctx.spawn(wrap_future(async move {
            let paid = costly.pay_for(to_compute.clone()).await;
            if let Err(error) = &paid {
                tracing::error!(%error, "oracle workers are gone");
            } else {
                current.computed.remember(&to_compute);
            }
            let mut answers = AnswersBuilder::with_capacity(questions.len());
            for (question, costly) in questions.iter().zip(still_costly) {
                let outcome = if costly && paid.is_err() {
                    answers.push_answer(&Answer::INTERNAL_ERROR);
                    Outcome::InternalError
                } else {
                    shared.lookup.answer_into(&current.table, question, &mut answers)
                };
                tally.answered(outcome, 1);
            }
            reply(&reply_to, Answered { seq, answers: answers.finish() });
        }));
    }
}

/// The answers to every one of `questions`, looked up now, counted in `tally`.
fn answer_all(lookup: &Lookup, table: &AnswerTable, questions: &Questions, tally: &Tally) -> Answers {
    let mut answers = AnswersBuilder::with_capacity(questions.len());
    for question in questions.iter() {
        tally.answered(lookup.answer_into(table, question, &mut answers), 1);
    }
    answers.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{oracle::table::book_table, threads::WorkerThreads};

    /// The oracle and one replica on the current thread.
    fn start(table: AnswerTable, config: OracleConfig) -> (StartedOracle, Asks) {
        let oracle = Oracle::start(Arc::new(table), config, &Metrics::disabled());
        let replica = oracle.start_replica();
        (oracle, replica)
    }

    /// Asks `replica` and waits for the answers, in place of a session.
    async fn ask(replica: &Asks, questions: &[&[u8]]) -> Answers {
        let (reply_to, answers) = inbox::inbox();
        let questions = Questions::from_list(questions.iter().copied());
        assert!(replica.send(Ask { questions, seq: 7, reply_to }).is_ok(), "the replica is there");
        let answered = tokio::time::timeout(Duration::from_secs(5), std::future::poll_fn(|cx| answers.poll_recv(cx)))
            .await
            .unwrap();
        assert_eq!(answered.seq, 7, "the batch's number comes back with its answers");
        answered.answers
    }

    #[actix::test]
    async fn a_replica_answers_an_ask_with_one_answered_message_holding_the_answers_in_order() {
        let (_oracle, replica) = start(book_table(), OracleConfig::default());
        let questions = [&b"Explicit is better than?"[..], b"Why?", b"Beautiful is better than?"];
        let answers = ask(&replica, &questions).await;
        assert_eq!(answers.len(), 3);
        assert_eq!(answers.iter().collect::<Vec<_>>(), [&b"Implicit."[..], b"Error: unknown aphorism.", b"Ugly."]);
    }

    #[actix::test]
    async fn one_replacement_is_in_force_for_every_replica_once_acknowledged() {
        let threads = WorkerThreads::spawn(4.try_into().unwrap());
        let oracle = Oracle::start(Arc::new(book_table()), OracleConfig::default(), &Metrics::disabled());
        // A replica on each thread, asked from its own thread once the replacement is in force.
        let mut asked = Vec::new();
        let (in_force, _) = tokio::sync::watch::channel(false);
        for thread in threads.arbiters() {
            let (oracle, mut in_force, (answers, answered)) =
                (oracle.clone(), in_force.subscribe(), tokio::sync::oneshot::channel());
            thread.spawn_fn(move || {
                let replica = oracle.start_replica();
                actix_rt::spawn(async move {
                    let _ = in_force.wait_for(|&in_force| in_force).await;
                    let questions = [&b"Flat is better than?"[..], b"Beautiful is better than?"];
                    let _ = answers.send(ask(&replica, &questions).await.as_bytes().to_vec());
                });
            });
            asked.push(answered);
        }
        let new_table = AnswerTable::new([("Flat is better than?", "Nested and nested again.")]).unwrap();
        oracle.addr.send(ReplaceTable(Arc::new(new_table))).await.unwrap();
        assert_eq!(oracle.answer_bound().get(), "Nested and nested again.".len(), "the bound follows the table");
        in_force.send_replace(true);
        for answered in asked {
            let answers = tokio::time::timeout(Duration::from_secs(5), answered).await.unwrap().unwrap();
            assert_eq!(answers, b"Nested and nested again.Error: unknown aphorism.");
        }
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    #[actix::test]
    async fn the_answer_bound_is_the_longest_answer_or_the_longest_error() {
        let (oracle, _) = start(book_table(), OracleConfig::default());
        assert_eq!(oracle.answer_bound().get(), Answer::UNKNOWN_APHORISM.as_bytes().len());
        let long = format!("{}.", "x".repeat(100_000));
        let table = AnswerTable::new([("Big?".to_owned(), long)]).unwrap();
        oracle.addr.send(ReplaceTable(Arc::new(table))).await.unwrap();
        assert_eq!(oracle.answer_bound().get(), 100_001);
    }

    #[actix::test]
    async fn a_costly_oracle_keeps_answers_in_order_across_cheap_costly_and_failing_questions() {
        let config = OracleConfig {
            simulated_cost: Duration::from_millis(1),
            workers: 2,
            panic_question: Some(Question::from_static(b"Poison?")),
            hang_question: None,
        };
        let (oracle, replica) = start(book_table(), config);
        let questions: [&[u8]; 5] =
            [b"Why?", b"Simple is better than?", b"Poison?", b"Beautiful is better than?", b"How?"];
        let expected = "Error: unknown aphorism.Complex.Error: internal error.Ugly.Error: unknown aphorism.";
        let paid = || oracle.shared.costly.as_ref().map(CostlyAnswers::paid);
        for round in 0..2 {
            let answers = ask(&replica, &questions).await;
            assert_eq!(answers.len(), 5, "round {round}");
            assert_eq!(String::from_utf8_lossy(answers.as_bytes()), expected, "round {round}");
            // The two known questions and the poisoned one cost work the first time only: the
            // second round answers them from what was computed.
            assert_eq!(paid(), Some(3), "round {round}");
        }
        // A new table has computed nothing yet.
        oracle.addr.send(ReplaceTable(Arc::new(book_table()))).await.unwrap();
        ask(&replica, &[b"Simple is better than?"]).await;
        assert_eq!(paid(), Some(4));
    }
}
