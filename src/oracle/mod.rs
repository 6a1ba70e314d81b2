//! The oracle: the one owner of the answer table, and the shards that answer from it.
//!
//! [`Oracle`] is the single, shared oracle of the server: one actor with one address, which
//! holds the current answer table and takes the control messages ([`ReplaceTable`],
//! [`CheckAlive`]). Sessions do not ask it directly: asking an actor on another thread cost two
//! thread switches per question and halved throughput on one core. Instead the oracle starts one
//! [`OracleShard`] on each worker thread, and the sessions of that thread [`Ask`] their shard.
//! Every shard reads the owner's one table (an [`ArcSwap`]), so one [`ReplaceTable`] changes
//! the answers of every worker at once, and a batch of questions is always answered from one
//! table, never a mix of two.
//!
//! - [`table`]: [`AnswerTable`], validated on construction.
//! - [`lookup`]: answering one question, with fault injection and panic containment.
//! - [`costly`]: the pool paying the simulated cost of answers, off the session threads.

pub mod costly;
pub mod lookup;
pub mod table;

use std::{rc::Rc, sync::Arc, time::Duration};

use actix::{fut::wrap_future, prelude::*};
use actix_rt::ArbiterHandle;
use arc_swap::ArcSwap;

pub use self::table::{AnswerTable, TableError};
use self::{
    costly::{Computed, CostlyAnswers},
    lookup::Lookup,
};
use crate::{
    metrics::{FLUSH_INTERVAL, Metrics, Outcome, Tally},
    protocol::{Answer, Answers, AnswersBuilder, Question, Questions},
    threads::PerThread,
};

/// Asks for the answers to a batch of questions. The answers come back as a message of their
/// own, [`Answered`], to `reply_to`: to the asking session's mailbox, where it is handled like
/// any other message, with no response future to poll in between.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ask {
    /// The questions, in order.
    pub questions: Questions,
    /// The asker's number for this batch, returned with the answers.
    pub seq: u64,
    /// Where the answers go; shared, since a session asks many times and cloning a
    /// `Recipient` allocates.
    pub reply_to: Arc<Recipient<Answered>>,
}

/// The answers to one [`Ask`]: one per question, in the same order.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Answered {
    /// The number the asker gave the batch.
    pub seq: u64,
    /// The answers.
    pub answers: Answers,
}

/// Replaces the whole answer table; questions asked afterwards, on every worker, get the new
/// answers.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReplaceTable(pub AnswerTable);

/// Asks the oracle and every one of its shards to answer; the reply comes once all have
/// (liveness: a wedged shard or worker thread never lets it come).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), MailboxError>")]
pub struct CheckAlive;

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

/// The table in use and, if answers are costly, which of its questions are already computed.
#[derive(Debug)]
struct Current {
    table: AnswerTable,
    computed: Computed,
}

impl Current {
    fn new(table: AnswerTable) -> Arc<Self> {
        Arc::new(Self { table, computed: Computed::default() })
    }
}

/// What the owner and every shard share.
#[derive(Debug)]
struct Shared {
    current: ArcSwap<Current>,
    lookup: Lookup,
    costly: Option<CostlyAnswers>,
}

/// The oracle's one owner: holds the answer table, replaces it, checks its shards, and reports
/// the lookups that panicked.
pub struct Oracle {
    shared: Arc<Shared>,
    shards: Vec<Addr<OracleShard>>,
    metrics: Metrics,
}

/// The oracle's actors once started: the owner, and one shard per worker thread, in the order
/// the threads were given.
#[derive(Debug, Clone)]
pub struct StartedOracle {
    /// The owner, for control messages.
    pub oracle: Addr<Oracle>,
    /// Where each worker thread's sessions ask.
    pub shards: PerThread<Addr<OracleShard>>,
}

impl Oracle {
    /// Starts the oracle on the current arbiter and one shard on each of `threads`, counting
    /// answers into `metrics`; must be called inside a running actix `System`.
    pub fn start(
        table: AnswerTable,
        config: OracleConfig,
        threads: &PerThread<ArbiterHandle>,
        metrics: &Metrics,
    ) -> StartedOracle {
        let costly =
            (!config.simulated_cost.is_zero()).then(|| CostlyAnswers::start(config.simulated_cost, config.workers));
        let shared = Arc::new(Shared {
            current: ArcSwap::new(Current::new(table)),
            lookup: Lookup::new(config.panic_question, config.hang_question),
            costly,
        });
        let shards = threads.map(|thread| {
            let (shared, metrics) = (shared.clone(), metrics.clone());
            OracleShard::start_in_arbiter(thread, move |_| OracleShard { shared, tally: Rc::default(), metrics })
        });
        let oracle = Oracle { shared, shards: shards.iter().cloned().collect(), metrics: metrics.clone() }.start();
        StartedOracle { oracle, shards }
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

    fn handle(&mut self, ReplaceTable(table): ReplaceTable, _ctx: &mut Self::Context) {
        tracing::debug!(questions = table.len(), "answer table replaced");
        self.shared.current.store(Current::new(table));
    }
}

impl Handler<CheckAlive> for Oracle {
    type Result = ResponseFuture<Result<(), MailboxError>>;

    fn handle(&mut self, _: CheckAlive, _ctx: &mut Self::Context) -> Self::Result {
        let checks: Vec<_> = self.shards.iter().map(|shard| shard.send(ShardAlive)).collect();
        Box::pin(async move {
            for check in checks {
                check.await?;
            }
            Ok(())
        })
    }
}

/// Answers the questions of one worker thread's sessions from the oracle's table.
///
/// Lookups run inside `catch_unwind` ([`Lookup`]): a panic answers that question with
/// [`Answer::INTERNAL_ERROR`], is logged and counted, and the shard keeps serving (actix would
/// otherwise lose the actor, and every later question of its sessions with it). With a
/// simulated cost, known questions not computed yet are paid for by the [`CostlyAnswers`]
/// pool and remembered; unknown and remembered questions are answered at once.
pub struct OracleShard {
    shared: Arc<Shared>,
    /// Answers given on this thread, by outcome, not yet added to `metrics`.
    tally: Rc<Tally>,
    metrics: Metrics,
}

impl Actor for OracleShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.metrics.is_enabled() {
            ctx.run_interval(FLUSH_INTERVAL, |shard, _| shard.metrics.add(&shard.tally));
        }
    }
}

/// A shard's part of [`CheckAlive`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct ShardAlive;

impl Handler<ShardAlive> for OracleShard {
    type Result = ();

    fn handle(&mut self, _: ShardAlive, _ctx: &mut Self::Context) {}
}

impl Handler<Ask> for OracleShard {
    type Result = ();

    fn handle(&mut self, Ask { questions, seq, reply_to }: Ask, ctx: &mut Self::Context) {
        let shared = &self.shared;
        let Some(costly) = &shared.costly else {
            let answers = answer_all(&shared.lookup, &shared.current.load().table, &questions, &self.tally);
            reply_to.do_send(Answered { seq, answers });
            return;
        };
        let current = shared.current.load_full();
        let costs_work = |question: &[u8]| shared.lookup.is_poison(question) || current.table.knows(question);
        let still_costly = current.computed.still_costly(questions.iter(), costs_work);
        let to_compute =
            Questions::from_list(questions.iter().zip(&still_costly).filter(|(_, costly)| **costly).map(|(q, _)| q));
        if to_compute.is_empty() {
            let answers = answer_all(&shared.lookup, &current.table, &questions, &self.tally);
            reply_to.do_send(Answered { seq, answers });
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
            reply_to.do_send(Answered { seq, answers: answers.finish() });
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
    use tokio::sync::mpsc;

    use super::*;
    use crate::{oracle::table::book_table, threads::WorkerThreads};

    fn start(table: AnswerTable, config: OracleConfig) -> StartedOracle {
        Oracle::start(
            table,
            config,
            &PerThread { here: Arbiter::current(), elsewhere: Vec::new() },
            &Metrics::disabled(),
        )
    }

    /// Receives answers in place of a session.
    struct Asker(mpsc::UnboundedSender<Answered>);

    impl Actor for Asker {
        type Context = Context<Self>;
    }

    impl Handler<Answered> for Asker {
        type Result = ();
        fn handle(&mut self, answered: Answered, _: &mut Self::Context) {
            let _ = self.0.send(answered);
        }
    }

    /// Asks `shard` and waits for the answers.
    async fn ask(shard: &Addr<OracleShard>, questions: &[&[u8]]) -> Answers {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let reply_to = Arc::new(Asker(sender).start().recipient());
        shard.do_send(Ask { questions: Questions::from_list(questions.iter().copied()), seq: 7, reply_to });
        let answered = tokio::time::timeout(Duration::from_secs(5), receiver.recv()).await.unwrap().unwrap();
        assert_eq!(answered.seq, 7, "the batch's number comes back with its answers");
        answered.answers
    }

    #[actix::test]
    async fn a_shard_answers_a_batch_in_order_through_its_address() {
        let oracle = start(book_table(), OracleConfig::default());
        let questions = [&b"Explicit is better than?"[..], b"Why?", b"Beautiful is better than?"];
        let answers = ask(&oracle.shards.here, &questions).await;
        assert_eq!(answers.len(), 3);
        assert_eq!(answers.iter().collect::<Vec<_>>(), [&b"Implicit."[..], b"Error: unknown aphorism.", b"Ugly."]);
    }

    #[actix::test]
    async fn one_replacement_changes_the_answers_of_every_shard() {
        let threads = WorkerThreads::spawn(4.try_into().unwrap());
        let started = Oracle::start(book_table(), OracleConfig::default(), &threads.arbiters(), &Metrics::disabled());
        let new_table = AnswerTable::new([("Flat is better than?", "Nested.")]).unwrap();
        started.oracle.send(ReplaceTable(new_table)).await.unwrap();
        for shard in started.shards.iter() {
            let questions = [&b"Flat is better than?"[..], b"Beautiful is better than?"];
            let answers = ask(shard, &questions).await;
            assert_eq!(answers.as_bytes(), b"Nested.Error: unknown aphorism.");
        }
        started.oracle.send(CheckAlive).await.unwrap().unwrap();
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    #[actix::test]
    async fn a_costly_oracle_keeps_answers_in_order_across_cheap_costly_and_failing_questions() {
        let config = OracleConfig {
            simulated_cost: Duration::from_millis(1),
            workers: 2,
            panic_question: Some(Question::from_static(b"Poison?")),
            hang_question: None,
        };
        let oracle = start(book_table(), config);
        let questions: [&[u8]; 5] =
            [b"Why?", b"Simple is better than?", b"Poison?", b"Beautiful is better than?", b"How?"];
        let expected = "Error: unknown aphorism.Complex.Error: internal error.Ugly.Error: unknown aphorism.";
        for round in 0..2 {
            // The second round answers the two known questions from what was computed.
            let answers = ask(&oracle.shards.here, &questions).await;
            assert_eq!(answers.len(), 5, "round {round}");
            assert_eq!(String::from_utf8_lossy(answers.as_bytes()), expected, "round {round}");
        }
    }
}
