//! [`Workers`]: where sessions run, and where each connection goes. One [`Worker`] actor on each
//! worker thread starts the sessions handed to it and owns their [`SessionRegistry`]; beside it
//! on its thread runs the oracle's replica its sessions ask.
//!
//! The server places each connection it accepts, from the control thread, on a worker that
//! answered its last liveness check, and among those on the one holding the fewest connections
//! (as Envoy's exact connection balance does; actix-server's accept loop likewise skips workers
//! that are gone or full). The connection is handed over once, as a plain socket no reactor has
//! seen: the worker registers it on its own thread's reactor, where all of its I/O happens.
//!
//! A hand-over goes through the worker's [`Handoff`], a queue that the worker registers on its
//! context as its stream of [`Adopt`] messages. A worker that stops answering (a session or a
//! lookup has wedged its thread: see `oracle.hang_question`) is routed around from its first
//! missed check, [`LIVENESS_INTERVAL`]: no new connection goes to it, and the ones handed to it
//! but not taken yet are taken back and placed again. The server checks every worker each
//! interval ([`Workers::check`]); one that has not answered for [`STALL_SEEN_AFTER`] is stalled:
//! the daemon is unhealthy (see [`crate::health`]) until the worker answers again, or until
//! `server.worker_stall_timeout_secs` has passed and the daemon exits to be restarted.

use std::{
    cell::Cell,
    collections::VecDeque,
    pin::Pin,
    rc::Rc,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context as TaskContext, Poll, Waker},
    time::{Duration, Instant},
};

use actix::{fut::wrap_future, prelude::*};
use futures_core::Stream;
use tokio::net::TcpStream;

use super::opening::{self, Opening};
use crate::{
    admission::Permit,
    health::{Health, STALL_SEEN_AFTER},
    metrics::{CloseReason, FLUSH_INTERVAL, Metrics, Tally},
    oracle::StartedOracle,
    session::{SessionDeps, SessionInfo, registry::SessionRegistry},
    threads::WorkerThreads,
    tls,
};

/// How often the server checks that every worker answers; a worker that has not answered the
/// last check when the next is due gets no new connection until it does.
pub const LIVENESS_INTERVAL: Duration = Duration::from_millis(100);

/// The workers, as the server (on the control thread) sees them.
pub struct Workers {
    /// One per thread; never empty.
    workers: Vec<WorkerSlot>,
    /// Where the next placement starts looking among equally loaded workers, so that they take
    /// turns.
    next: usize,
    /// When the last check ran.
    last_check: Instant,
    /// What the health question is answered from.
    health: Arc<Health>,
    /// Where a connection that cannot be handed over is counted.
    metrics: Metrics,
}

/// One worker, as the server sees it.
struct WorkerSlot {
    addr: Addr<Worker>,
    /// Connections handed to the worker and not taken by it yet.
    handoff: Arc<Handoff>,
    /// Connections the worker holds (its sessions and those still opening), counted down by
    /// their permits however they end.
    load: Arc<AtomicUsize>,
    /// When the check the worker has not answered yet was sent; shared with the reply's
    /// handler on the control thread.
    unanswered_since: Rc<Cell<Option<Instant>>>,
    /// Whether the worker was last counted as stalled; shared with a drain under way.
    stalled: Rc<Cell<bool>>,
}

impl WorkerSlot {
    /// Whether the worker answered its last check: nothing unanswered older than one interval.
    fn answers(&self, now: Instant) -> bool {
        self.unanswered_since.get().is_none_or(|since| now.saturating_duration_since(since) < LIVENESS_INTERVAL)
    }

    /// How long the worker has left a check unanswered.
    fn silent_for(&self, now: Instant) -> Duration {
        self.unanswered_since.get().map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}

/// A worker thread did not answer a liveness check as it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unresponsive {
    /// The worker actor is gone.
    #[error("a worker is gone")]
    WorkerGone,
    /// The worker's thread is alive but the oracle replica its sessions ask is gone.
    #[error("an oracle replica is gone")]
    ReplicaGone,
}

/// What a check of the workers found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// Workers stalled now.
    pub stalled: usize,
    /// The longest any worker has been silent, and which (from 1).
    pub longest_silence: Option<(usize, Duration)>,
}

impl Workers {
    /// Starts a worker and an oracle replica on each of `threads`; the workers' sessions ask
    /// those replicas and count into `metrics`; handshakes on TLS listeners use `tls`; the
    /// workers' stalls are told through `health`.
    pub fn start(
        threads: &WorkerThreads,
        oracle: &StartedOracle,
        metrics: &Metrics,
        tls: Option<&tls::Acceptor>,
        health: Arc<Health>,
    ) -> Self {
        let workers = threads
            .arbiters()
            .map(|thread| {
                let handoff = Arc::new(Handoff::default());
                let (oracle, metrics, tls, taken) = (oracle.clone(), metrics.clone(), tls.cloned(), handoff.clone());
                let addr = Worker::start_in_arbiter(&thread, move |ctx| {
                    ctx.add_message_stream(Adoptions(taken));
                    Worker::new(&oracle, metrics, tls)
                });
                WorkerSlot {
                    addr,
                    handoff,
                    load: Arc::default(),
                    unanswered_since: Rc::default(),
                    stalled: Rc::default(),
                }
            })
            .collect();
        Self { workers, next: 0, last_check: Instant::now(), health, metrics: metrics.clone() }
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Hands `socket` to a worker, which starts its session once it is through its `opening`:
    /// among the workers that answered their last check, the one holding the fewest
    /// connections (taking turns among equals); if none answered, the least loaded of all.
    pub fn adopt(&mut self, socket: std::net::TcpStream, info: SessionInfo, permit: Permit, opening: Opening) {
        self.place(Adopt { socket, info, permit, opening }, Instant::now());
    }

    fn place(&mut self, mut adopt: Adopt, now: Instant) {
        let count = self.workers.len();
        let order = (0..count).map(|step| (self.next + step) % count);
        let fewest = |candidates: &mut dyn Iterator<Item = usize>| {
            candidates.min_by_key(|&index| self.workers[index].load.load(Ordering::Relaxed))
        };
        let answering = fewest(&mut order.clone().filter(|&index| self.workers[index].answers(now)));
        let Some(index) = answering.or_else(|| fewest(&mut order.clone())) else { return };
        self.next = (index + 1) % count;
        let worker = &self.workers[index];
        adopt.permit.count_in(worker.load.clone());
        worker.handoff.push(adopt);
    }

    /// Sends each worker that answered its last check another, takes back the connections
    /// handed to workers that did not, and places them again; says how many workers are
    /// stalled and which has been silent longest. Run every [`LIVENESS_INTERVAL`] by the
    /// server, which `ctx` belongs to.
    pub fn check<A>(&mut self, ctx: &mut A::Context) -> Check
    where
        A: Actor,
        A::Context: AsyncContext<A>,
    {
        let now = Instant::now();
        // The control thread itself did not run for a while (the process was stopped, or the
        // machine starved it): the workers get a fresh interval, not the blame.
        let away = now.saturating_duration_since(self.last_check) > 2 * LIVENESS_INTERVAL;
        self.last_check = now;
        let mut reclaimed = Vec::new();
        // Taken back only to go to a worker that answers, if any does.
        let any_answers = self.workers.iter().any(|worker| worker.answers(now));
        for (index, worker) in self.workers.iter_mut().enumerate() {
            match worker.unanswered_since.get() {
                None => {
                    worker.unanswered_since.set(Some(now));
                    let unanswered_since = worker.unanswered_since.clone();
                    let check = worker.addr.send(WorkerAlive);
                    ctx.spawn(wrap_future(async move {
                        match check.await {
                            Ok(Ok(())) => unanswered_since.set(None),
                            // Left unanswered: the worker is routed around, then counted as
                            // stalled, and the daemon exits to be restarted.
                            Ok(Err(error)) => tracing::error!(worker = index + 1, %error, "a worker cannot serve"),
                            Err(_) => tracing::error!(worker = index + 1, "a worker is gone"),
                        }
                    }));
                }
                Some(_) if away => worker.unanswered_since.set(Some(now)),
                Some(_) if any_answers && !worker.answers(now) => reclaimed.extend(worker.handoff.take_all()),
                Some(_) => {}
            }
        }
        for adopt in reclaimed {
            tracing::debug!(peer = %adopt.info.peer, "a worker did not answer; placing its waiting connection again");
            self.place(adopt, now);
        }
        let mut check = Check { stalled: 0, longest_silence: None };
        for (index, worker) in self.workers.iter_mut().enumerate() {
            let silent = worker.silent_for(now);
            let stalled = silent >= STALL_SEEN_AFTER;
            if stalled != worker.stalled.get() {
                worker.stalled.set(stalled);
                let (worker, silent_ms) = (index + 1, silent.as_millis() as u64);
                match stalled {
                    true => tracing::warn!(
                        worker,
                        silent_ms,
                        "a worker thread stopped answering; routing connections around it"
                    ),
                    false => tracing::info!(worker, "a worker thread answers again"),
                }
            }
            check.stalled += usize::from(stalled);
            if check.longest_silence.is_none_or(|(_, longest)| silent > longest) && !silent.is_zero() {
                check.longest_silence = Some((index + 1, silent));
            }
        }
        self.health.set_stalled(check.stalled);
        self.metrics.set_workers_stalled(check.stalled);
        check
    }

    /// Connections held by the workers stalled at the time of each call, which a drain cannot
    /// wait for.
    pub fn held_by_stalled(&self) -> impl Fn() -> usize + 'static {
        let workers: Vec<_> = self.workers.iter().map(|worker| (worker.stalled.clone(), worker.load.clone())).collect();
        move || workers.iter().filter(|(stalled, _)| stalled.get()).map(|(_, load)| load.load(Ordering::Relaxed)).sum()
    }

    /// Tells every worker to drain its sessions.
    pub fn drain(&self) {
        for worker in &self.workers {
            worker.addr.do_send(DrainSessions);
        }
    }

    /// Resolves once every worker thread has answered a liveness message, with its oracle
    /// replica still there: one check per thread.
    ///
    /// # Errors
    ///
    /// [`Unresponsive`] naming what is gone.
    pub fn check_alive(&self) -> impl Future<Output = Result<(), Unresponsive>> + use<> {
        let checks: Vec<_> = self.workers.iter().map(|worker| worker.addr.send(WorkerAlive)).collect();
        async move {
            for check in checks {
                check.await.map_err(|_| Unresponsive::WorkerGone)??;
            }
            Ok(())
        }
    }
}

/// Starts a session for a connection on the worker's thread.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Adopt {
    /// The accepted socket, non-blocking, registered with no reactor yet.
    pub socket: std::net::TcpStream,
    /// Who the session serves.
    pub info: SessionInfo,
    /// Counts the connection as admitted (and in its worker's load) until it ends.
    pub permit: Permit,
    /// What the connection begins with.
    pub opening: Opening,
}

/// Connections handed to one worker and not yet taken: the worker takes them as its stream of
/// [`Adopt`] messages, and the server takes them back from a worker that stopped answering.
#[derive(Default)]
pub struct Handoff(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    connections: VecDeque<Adopt>,
    /// The worker's task, if it found none and waits.
    worker: Option<Waker>,
}

impl Handoff {
    fn push(&self, adopt: Adopt) {
        let mut waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.connections.push_back(adopt);
        let worker = waiting.worker.take();
        drop(waiting);
        if let Some(worker) = worker {
            worker.wake();
        }
    }

    fn take_all(&self) -> VecDeque<Adopt> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner).connections)
    }
}

/// A worker's stream of the connections handed to it; never ends.
struct Adoptions(Arc<Handoff>);

impl Stream for Adoptions {
    type Item = Adopt;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Adopt>> {
        let mut waiting = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
        match waiting.connections.pop_front() {
            Some(adopt) => Poll::Ready(Some(adopt)),
            None => {
                waiting.worker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Tells the worker's sessions to drain, and the ones it starts later too.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct DrainSessions;

/// Answered at once: the worker's thread is not stuck.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), Unresponsive>")]
struct WorkerAlive;

/// The sessions of one worker thread.
pub struct Worker {
    /// Shared by every session of this worker.
    deps: Rc<SessionDeps>,
    /// Handshakes on TLS listeners, if there are any.
    tls: Option<tls::Acceptor>,
}

impl Worker {
    /// A worker for the current thread, with an oracle replica of its own beside it.
    fn new(oracle: &StartedOracle, metrics: Metrics, tls: Option<tls::Acceptor>) -> Self {
        Self {
            deps: Rc::new(SessionDeps {
                oracle: oracle.start_replica(),
                live: oracle.live(),
                registry: SessionRegistry::new(),
                tally: Tally::default(),
                metrics,
            }),
            tls,
        }
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.spawn(wrap_future(self.deps.registry.clone().run_timers()));
        if self.deps.metrics.is_enabled() {
            ctx.run_interval(FLUSH_INTERVAL, |worker, _| worker.deps.metrics.add(&worker.deps.tally));
        }
    }
}

impl Handler<Adopt> for Worker {
    type Result = ();

    fn handle(&mut self, Adopt { socket, info, permit, opening }: Adopt, ctx: &mut Self::Context) {
        let stream = match TcpStream::from_std(socket) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(peer = %info.peer, %error, "could not register accepted connection");
                self.deps.tally.closed(CloseReason::Error);
                return;
            }
        };
        if let Some((stream, info, permit)) = opening::start_plain(stream, info, permit, &opening, &self.deps) {
            let opened =
                opening::open_until_drained(stream, info, permit, opening, self.tls.clone(), self.deps.clone());
            ctx.spawn(wrap_future(opened));
        }
    }
}

impl Handler<WorkerAlive> for Worker {
    type Result = Result<(), Unresponsive>;

    fn handle(&mut self, _: WorkerAlive, _ctx: &mut Self::Context) -> Self::Result {
        if self.deps.oracle.is_connected() { Ok(()) } else { Err(Unresponsive::ReplicaGone) }
    }
}

impl Handler<DrainSessions> for Worker {
    type Result = ();

    fn handle(&mut self, _: DrainSessions, _ctx: &mut Self::Context) {
        self.deps.registry.drain();
    }
}

#[cfg(test)]
mod tests {
    use std::{num::NonZeroUsize, sync::mpsc as std_mpsc};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{
        admission::Admission,
        limits::SessionConfig,
        oracle::{AnswerTable, Live, Oracle, OracleConfig},
        protocol::Answer,
    };

    /// An oracle knowing one question, with roomy limits.
    fn oracle() -> StartedOracle {
        let table = AnswerTable::new([("Beautiful is better than?", "Ugly.")]).unwrap();
        let limits = SessionConfig {
            max_question_bytes: 64,
            max_pending_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            drain_grace: Duration::ZERO,
        };
        Oracle::start(Live::new(Arc::new(table), limits), OracleConfig::default(), &Metrics::disabled())
    }

    /// A worker on a thread of its own; the thread is for the caller to stop.
    fn worker() -> (Addr<Worker>, WorkerThreads) {
        let (threads, oracle) = (WorkerThreads::spawn(NonZeroUsize::MIN), oracle());
        let thread = threads.arbiters().next().unwrap();
        let worker = Worker::start_in_arbiter(&thread, move |_| Worker::new(&oracle, Metrics::disabled(), None));
        (worker, threads)
    }

    /// A client, and the server's end of its connection as [`Adopt`] carries it.
    async fn adopt(admission: &Admission) -> (tokio::net::TcpStream, Adopt) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (socket, peer) = crate::server::listener::accept(&listener).unwrap();
        let info = SessionInfo { id: 1, peer };
        (client, Adopt { socket, info, permit: admission.try_admit().unwrap(), opening: Opening::default() })
    }

    async fn read_all(client: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut received)).await.unwrap().unwrap();
        received
    }

    #[actix::test]
    async fn an_adopted_connection_is_served_on_the_workers_thread_until_it_ends() {
        let (worker, threads) = worker();
        let admission = Admission::new(4);
        let (mut client, adopted) = adopt(&admission).await;
        worker.send(adopted).await.unwrap();
        client.write_all(b"Beautiful is better than?Why?").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_all(&mut client).await, b"Ugly.Error: unknown aphorism.");
        tokio::time::timeout(Duration::from_secs(5), admission.all_released()).await.unwrap();
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    #[actix::test]
    async fn a_worker_told_to_drain_tells_its_sessions_and_those_it_starts_later() {
        let (worker, threads) = worker();
        let admission = Admission::new(4);
        let (mut before, adopted) = adopt(&admission).await;
        worker.send(adopted).await.unwrap();
        worker.send(DrainSessions).await.unwrap();
        let (mut after, adopted) = adopt(&admission).await;
        worker.send(adopted).await.unwrap();
        assert_eq!(read_all(&mut before).await, b"Error: server shutting down.");
        assert_eq!(read_all(&mut after).await, b"Error: server shutting down.");
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    #[actix::test]
    async fn a_worker_answers_its_liveness_check_with_its_replica_there() {
        let (worker, threads) = worker();
        assert_eq!(worker.send(WorkerAlive).await.unwrap(), Ok(()));
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    /// Places connections and checks workers, as the server does; for the tests of placement.
    struct Placer(Workers);

    impl Actor for Placer {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "Check")]
    struct CheckNow;

    impl Handler<CheckNow> for Placer {
        type Result = MessageResult<CheckNow>;

        fn handle(&mut self, _: CheckNow, ctx: &mut Self::Context) -> Self::Result {
            MessageResult(self.0.check::<Self>(ctx))
        }
    }

    impl Handler<Adopt> for Placer {
        type Result = ();

        fn handle(&mut self, adopt: Adopt, _: &mut Self::Context) {
            self.0.place(adopt, Instant::now());
        }
    }

    /// Workers on `count` threads of their own, behind a placer, and their loads.
    fn placer(count: usize) -> (Addr<Placer>, Vec<Arc<AtomicUsize>>, WorkerThreads, Arc<Health>) {
        let (threads, oracle) = (WorkerThreads::spawn(NonZeroUsize::new(count).unwrap()), oracle());
        let workers = Workers::start(&threads, &oracle, &Metrics::disabled(), None, oracle.health());
        let loads = workers.workers.iter().map(|worker| worker.load.clone()).collect();
        (Placer(workers).start(), loads, threads, oracle.health())
    }

    /// Blocks `threads`' first thread until the returned sender is dropped.
    fn wedge_first(threads: &WorkerThreads) -> std_mpsc::Sender<()> {
        let (release, wedged) = std_mpsc::channel::<()>();
        threads.arbiters().next().unwrap().spawn_fn(move || {
            let _ = wedged.recv();
        });
        release
    }

    #[actix::test]
    async fn each_connection_goes_to_the_worker_holding_the_fewest() {
        let (placer, loads, threads, _) = placer(2);
        let admission = Admission::new(10);
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (client, adopted) = adopt(&admission).await;
            placer.send(adopted).await.unwrap();
            clients.push(client);
        }
        let held: Vec<usize> = loads.iter().map(|load| load.load(Ordering::Relaxed)).collect();
        assert_eq!(held, [2, 2], "four connections, two workers");
        clients.truncate(1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while loads.iter().map(|load| load.load(Ordering::Relaxed)).sum::<usize>() > 1 {
            assert!(Instant::now() < deadline, "the closed connections still count");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (_client, adopted) = adopt(&admission).await;
        let emptier = loads.iter().position(|load| load.load(Ordering::Relaxed) == 0).unwrap();
        placer.send(adopted).await.unwrap();
        assert_eq!(loads[emptier].load(Ordering::Relaxed), 1, "not the one still holding a connection");
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }

    #[actix::test]
    async fn connections_waiting_for_a_worker_that_stopped_answering_go_to_one_that_answers() {
        let (placer, _, threads, health) = placer(2);
        let release = wedge_first(&threads);
        let admission = Admission::new(10);
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (client, adopted) = adopt(&admission).await;
            placer.send(adopted).await.unwrap();
            clients.push(client);
        }
        // Checked as the server checks, every interval, until every client is answered.
        let checking = actix_rt::spawn({
            let placer = placer.clone();
            async move {
                loop {
                    let _ = placer.send(CheckNow).await;
                    tokio::time::sleep(LIVENESS_INTERVAL).await;
                }
            }
        });
        for client in &mut clients {
            client.write_all(b"Beautiful is better than?").await.unwrap();
            client.shutdown().await.unwrap();
            assert_eq!(read_all(client).await, b"Ugly.");
        }
        // Silent for a second, the wedged worker counts as stalled, and health says so.
        let deadline = Instant::now() + Duration::from_secs(10);
        while health.answer() == Answer::HEALTHY {
            assert!(Instant::now() < deadline, "never counted as stalled");
            tokio::time::sleep(LIVENESS_INTERVAL).await;
        }
        drop(release);
        while health.answer() != Answer::HEALTHY {
            assert!(Instant::now() < deadline, "still counted as stalled once it answers");
            tokio::time::sleep(LIVENESS_INTERVAL).await;
        }
        checking.abort();
        assert!(threads.stop_and_join(Duration::from_secs(5)));
    }
}
