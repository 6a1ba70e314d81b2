//! Costly answers: the pool of threads that pays each answer's simulated cost, so that neither
//! the oracle's replicas nor the sessions on their threads ever block, and [`Computed`], the
//! questions of one table whose cost has been paid already (answered at once from then on).

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use actix::prelude::*;

use crate::protocol::{Question, Questions};

/// A pool of threads paying the cost of answers.
#[derive(Debug, Clone)]
pub struct CostlyAnswers {
    workers: Addr<CostWorker>,
    /// Questions whose cost has been paid, in all.
    paid: Arc<AtomicU64>,
}

impl CostlyAnswers {
    /// Starts `threads` threads, each paying `cost` per question; must be called inside a
    /// running actix `System`.
    pub fn start(cost: Duration, threads: usize) -> Self {
        Self { workers: SyncArbiter::start(threads.max(1), move || CostWorker { cost }), paid: Arc::default() }
    }

    /// Pays the cost of every one of `questions` on the pool.
    ///
    /// # Errors
    ///
    /// [`MailboxError`] if the pool's threads are gone.
    pub async fn pay_for(&self, questions: Questions) -> Result<(), MailboxError> {
        let count = questions.len() as u64;
        self.workers.send(PayFor(questions)).await?;
        self.paid.fetch_add(count, Ordering::Relaxed);
        Ok(())
    }

    /// How many questions' costs have been paid so far.
    pub fn paid(&self) -> u64 {
        self.paid.load(Ordering::Relaxed)
    }
}

/// The questions of one answer table whose cost has been paid.
#[derive(Debug, Default)]
pub struct Computed(Mutex<HashSet<Question>>);

impl Computed {
    /// For each of `questions`, whether it still costs work: whether `costs_work` says it
    /// would and it has not been computed yet.
    pub fn still_costly<'q>(
        &self,
        questions: impl Iterator<Item = &'q [u8]>,
        costs_work: impl Fn(&[u8]) -> bool,
    ) -> Vec<bool> {
        let computed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        questions.map(|question| costs_work(question) && !computed.contains(question)).collect()
    }

    /// Remembers that `questions` have been computed.
    pub fn remember(&self, questions: &Questions) {
        let mut computed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        computed.extend(questions.iter().map(|question| questions.question(question)));
    }
}

/// One thread of the pool.
struct CostWorker {
    cost: Duration,
}

impl Actor for CostWorker {
    type Context = SyncContext<Self>;
}

/// Pays the simulated cost of each question.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct PayFor(Questions);

impl Handler<PayFor> for CostWorker {
    type Result = ();

    fn handle(&mut self, PayFor(questions): PayFor, _ctx: &mut Self::Context) {
        for _ in 0..questions.len() {
            std::thread::sleep(self.cost);
        }
    }
}
