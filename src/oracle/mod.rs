//! The Oracle: the one owner of the answer table, on the control thread, with a replica of it
//! on each worker thread, which the sessions of that thread ask.
//!
//! [`Oracle`] holds the current answer table with the limits sessions read (one snapshot) and
//! replaces both at once ([`ReplaceTable`]): one actor with one address. Sessions do not ask it directly: asking an actor on another thread cost two
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

use std::{rc::Rc, sync::Arc, time::Duration};

use actix::{fut::wrap_future, prelude::*};
use arc_swap::ArcSwap;

pub use self::table::{AnswerTable, TableError};
use self::{
    costly::{Computed, CostlyAnswers},
    lookup::Lookup,
};
use crate::{
    config::OracleSettings,
    health::Health,
    inbox,
    limits::SessionConfig,
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

/// Replaces the answer table and the session limits read with it, in one step; the reply comes
/// once they are in force: every batch a replica answers from then on, and every limit a session
/// reads, on every worker, comes from the new ones.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReplaceTable {
    /// The new table (the one in force, when only limits change).
    pub table: Arc<AnswerTable>,
    /// The limits every session reads with it.
    pub limits: SessionConfig,
}

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

impl From<&OracleSettings> for OracleConfig {
    fn from(oracle: &OracleSettings) -> Self {
        OracleConfig {
            simulated_cost: oracle.simulated_cost_ms.millis(),
            workers: oracle.workers.count(),
            panic_question: oracle.panic_question.question().cloned(),
            hang_question: oracle.hang_question.question().cloned(),
        }
    }
}

/// What a reload changes for connections already open, as one snapshot: the answer table, the
/// limits every session reads, the longest answer the table can give; and, if answers are
/// costly, which of the table's questions are computed already.
#[derive(Debug)]
pub struct Snapshot {
    table: Arc<AnswerTable>,
    /// The limits every session reads.
    pub limits: SessionConfig,
    /// The longest answer the oracle can give from this table, or an error answer if that is
    /// longer, in bytes: a session counts it for every question it has asked and not yet been
    /// answered (see the memory bound in [`crate::session`]).
    pub answer_bound: usize,
    /// Which table this is: one more with every new table, the same when only limits change.
    generation: u64,
    computed: Arc<Computed>,
}

impl Snapshot {
    fn new(table: Arc<AnswerTable>, limits: SessionConfig, generation: u64) -> Arc<Self> {
        let errors = [Answer::UNKNOWN_APHORISM, Answer::INTERNAL_ERROR, Answer::UNHEALTHY];
        let answer_bound =
            errors.iter().map(|answer| answer.as_bytes().len()).chain([table.longest_answer()]).max().unwrap_or(0);
        Arc::new(Self { table, limits, answer_bound, generation, computed: Arc::default() })
    }
}

/// The snapshot in force, shared by the Oracle, which replaces it, and every worker thread,
/// which reads it; cloning shares it.
#[derive(Debug, Clone)]
pub struct Live(Arc<ArcSwap<Snapshot>>);

impl Live {
    /// `table` and `limits` in force.
    pub fn new(table: Arc<AnswerTable>, limits: SessionConfig) -> Self {
        Self(Arc::new(ArcSwap::new(Snapshot::new(table, limits, 0))))
    }

    /// The snapshot in force now; held only briefly (never across an await), so that a
    /// replaced one is freed by the Oracle.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.0.load()
    }

    /// The limits in force now.
    pub fn limits(&self) -> SessionConfig {
        self.0.load().limits
    }
}

/// What the Oracle and every replica share.
#[derive(Debug)]
struct Shared {
    live: Live,
    lookup: Lookup,
    costly: Option<CostlyAnswers>,
}

/// The Oracle: holds the answer table (in the snapshot every worker reads), replaces it, and
/// reports the lookups that panicked.
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
    /// Starts the Oracle on the current arbiter with `live` in force, counting answers into
    /// `metrics`; must be called inside a running actix `System`.
    pub fn start(live: Live, config: OracleConfig, metrics: &Metrics) -> StartedOracle {
        let costly =
            (!config.simulated_cost.is_zero()).then(|| CostlyAnswers::start(config.simulated_cost, config.workers));
        let shared = Arc::new(Shared {
            live,
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

    /// The snapshot in force, kept up to date across replacements.
    pub fn live(&self) -> Live {
        self.shared.live.clone()
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

    fn handle(&mut self, ReplaceTable { table, limits }: ReplaceTable, ctx: &mut Self::Context) {
        tracing::debug!(questions = table.len(), "answer table and session limits replaced");
        let live = &self.shared.live.0;
        let current = live.load_full();
        let replacement = match Arc::ptr_eq(&current.table, &table) {
            // The same table with other limits: what was computed of it stays.
            true => Arc::new(Snapshot { table, limits, computed: current.computed.clone(), ..*current }),
            false => Snapshot::new(table, limits, current.generation + 1),
        };
        let retired = live.swap(replacement);
        drop(current);
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
        let current = shared.live.load();
        let Some(costly) = &shared.costly else {
            let answers = answer_all(&shared.lookup, &current.table, &questions, &self.tally);
            reply(&reply_to, Answered { seq, answers });
            return;
        };
        let costs_work = |question: &[u8]| shared.lookup.is_poison(question) || current.table.knows(question);
        let still_costly = current.computed.still_costly(questions.iter(), costs_work);
        let to_compute =
            Questions::from_list(questions.iter().zip(&still_costly).filter(|(_, costly)| **costly).map(|(q, _)| q));
        if to_compute.is_empty() {
            let answers = answer_all(&shared.lookup, &current.table, &questions, &self.tally);
            reply(&reply_to, Answered { seq, answers });
            return;
        }
        // Nothing of the snapshot is held while the cost is paid: the whole batch is answered
        // from the one in force once it is (and a replaced table is freed by the Oracle, on
        // the control thread, not by this thread after a long wait).
        let generation = current.generation;
        drop(current);
        let (shared, costly, tally) = (shared.clone(), costly.clone(), self.tally.clone());
        ctx.spawn(wrap_future(async move {
            let paid = costly.pay_for(to_compute.clone()).await;
            let current = shared.live.load();
            match &paid {
                Err(error) => tracing::error!(%error, "oracle workers are gone"),
                Ok(()) if current.generation == generation => current.computed.remember(&to_compute),
                Ok(()) => {}
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

    /// Session limits that a test changes to tell one snapshot from another.
    fn limits(max_question_bytes: usize) -> SessionConfig {
        SessionConfig {
            max_question_bytes,
            max_pending_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            drain_grace: Duration::ZERO,
        }
    }

    /// The oracle, with `table` in force, and one replica on the current thread.
    fn start(table: AnswerTable, config: OracleConfig) -> (StartedOracle, Asks) {
        let oracle = Oracle::start(Live::new(Arc::new(table), limits(64)), config, &Metrics::disabled());
        let replica = oracle.start_replica();
        (oracle, replica)
    }

    /// `table` with `limits(max_question_bytes)`, replacing the snapshot in force.
    fn replace(table: AnswerTable, max_question_bytes: usize) -> ReplaceTable {
        ReplaceTable { table: Arc::new(table), limits: limits(max_question_bytes) }
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
        let (oracle, _) = start(book_table(), OracleConfig::default());
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
        oracle.addr.send(replace(new_table, 128)).await.unwrap();
        let live = oracle.live().load();
        assert_eq!((live.answer_bound, live.limits), ("Nested and nested again.".len(), limits(128)), "one snapshot");
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
        assert_eq!(oracle.live().load().answer_bound, Answer::UNKNOWN_APHORISM.as_bytes().len());
        let long = format!("{}.", "x".repeat(100_000));
        let table = AnswerTable::new([("Big?".to_owned(), long)]).unwrap();
        oracle.addr.send(replace(table, 64)).await.unwrap();
        assert_eq!(oracle.live().load().answer_bound, 100_001);
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
        // New limits with the same table keep what was computed; a new table has computed
        // nothing yet.
        let table = oracle.live().load().table.clone();
        oracle.addr.send(ReplaceTable { table, limits: limits(100) }).await.unwrap();
        ask(&replica, &[b"Simple is better than?"]).await;
        assert_eq!(paid(), Some(3));
        oracle.addr.send(replace(book_table(), 100)).await.unwrap();
        ask(&replica, &[b"Simple is better than?"]).await;
        assert_eq!(paid(), Some(4));
    }
}
