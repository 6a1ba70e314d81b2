//! The session's tests: first by its messages alone (what its client sent, as its stream of
//! questions yields it; the oracle's `Answered`; the worker's `Notice`), writing to an in-memory
//! sink, on tokio's paused clock; then over an in-memory connection, reading and writing bytes.

use std::{
    cell::{Cell, RefCell},
    io,
    sync::Arc,
    task::{Context as TaskContext, Poll, Waker},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    sync::mpsc,
};

use super::*;
use crate::{
    admission::Admission,
    inbox::{self, Inbox},
    oracle::AnswerTable,
    protocol::AnswersBuilder,
};

/// Limits roomy enough not to matter unless a test changes them.
fn config(max_question_bytes: usize) -> SessionConfig {
    SessionConfig {
        max_question_bytes,
        max_pending_bytes: 64 * 1024,
        idle_timeout: Duration::from_secs(60),
        write_timeout: Duration::from_secs(60),
        drain_grace: Duration::ZERO,
    }
}

/// Whether `elapsed` (on the paused clock) is `ms` milliseconds, as the timer wheel's
/// millisecond ticks give it: not earlier, and at most one tick later.
fn is_due_at(elapsed: Duration, ms: u64) -> bool {
    (Duration::from_millis(ms)..=Duration::from_millis(ms + 1)).contains(&elapsed)
}

/// Asserts that `happened` turns true `after` the instant `since` on the paused clock: not
/// by the millisecond before, and by the one after.
async fn assert_happens(since: Instant, after: Duration, happened: impl Fn() -> bool, what: &str) {
    let tick = Duration::from_millis(1);
    tokio::time::sleep_until(since + after - tick).await;
    settle().await;
    assert!(!happened(), "{what} before {after:?}");
    tokio::time::sleep_until(since + after + tick).await;
    settle().await;
    assert!(happened(), "{what} not after {after:?}");
}

/// Lets every task of the thread run until none has anything left to do, without moving the
/// paused clock.
async fn settle() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------------
// By messages.

/// What a test writes to: takes bytes while it has room for them (all it is given, unless told
/// otherwise), records whether it was shut down, and can be made to fail.
#[derive(Clone, Default)]
struct MemorySink(Rc<RefCell<SinkState>>);

#[derive(Default)]
struct SinkState {
    written: Vec<u8>,
    /// Bytes it takes before it refuses (`Pending`); `None`: no limit.
    room: Option<usize>,
    shut_down: bool,
    failing: bool,
    waker: Option<Waker>,
}

impl MemorySink {
    /// A sink that takes nothing until given room.
    fn full() -> Self {
        let sink = Self::default();
        sink.0.borrow_mut().room = Some(0);
        sink
    }

    /// Everything written so far, as text.
    fn written(&self) -> String {
        String::from_utf8_lossy(&self.0.borrow().written).into_owned()
    }

    fn is_shut_down(&self) -> bool {
        self.0.borrow().shut_down
    }

    /// Lets the sink take `bytes` more.
    fn make_room(&self, bytes: usize) {
        let mut state = self.0.borrow_mut();
        state.room = state.room.map(|room| room + bytes);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// Makes every write from now on fail.
    fn fail(&self) {
        let mut state = self.0.borrow_mut();
        state.failing = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

impl AsyncWrite for MemorySink {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut state = self.0.borrow_mut();
        if state.failing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let taken = buf.len().min(state.room.unwrap_or(usize::MAX));
        if taken == 0 {
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        state.written.extend_from_slice(&buf[..taken]);
        state.room = state.room.map(|room| room - taken);
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.0.borrow_mut().shut_down = true;
        Poll::Ready(Ok(()))
    }
}

/// The session's stream of what its client sent, fed by the test; counts what the session
/// took from it, so that a test sees when reading pauses.
struct Input {
    received: mpsc::UnboundedReceiver<Received>,
    taken: Rc<Cell<usize>>,
}

impl Stream for Input {
    type Item = Received;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Received>> {
        let polled = self.received.poll_recv(cx);
        if let Poll::Ready(Some(_)) = polled {
            self.taken.set(self.taken.get() + 1);
        }
        polled
    }
}

/// A session driven by its messages.
struct Driven {
    session: Addr<ZenSession>,
    /// What the client sent, as the session's reader would yield it; dropped: end of input.
    input: Option<mpsc::UnboundedSender<Received>>,
    /// How many items the session took from `input`.
    taken: Rc<Cell<usize>>,
    /// Where the session sends its asks: the oracle, played by the test.
    asks: Inbox<Ask>,
    sink: MemorySink,
    /// Counts the session until it has ended.
    live: Admission,
    deps: Rc<SessionDeps>,
}

/// Starts a session whose answers are at most as long as the book's error answers, fed by the
/// test, writing to `sink`, with a registry whose timers run.
fn driven(config: SessionConfig, sink: MemorySink) -> Driven {
    let (oracle, asks) = inbox::inbox();
    let registry = SessionRegistry::new();
    actix_rt::spawn(registry.clone().run_timers());
    let deps = Rc::new(SessionDeps {
        oracle,
        live: Live::new(Arc::new(AnswerTable::default()), config),
        registry,
        tally: Tally::default(),
        metrics: Metrics::disabled(),
    });
    let (input, received) = mpsc::unbounded_channel();
    let taken = Rc::new(Cell::new(0));
    let live = Admission::new(10);
    let info = SessionInfo { id: 1, peer: "127.0.0.1:9".parse().unwrap() };
    let session = ZenSession::start_with(
        Input { received, taken: taken.clone() },
        sink.clone(),
        info,
        deps.clone(),
        live.try_admit().unwrap(),
    );
    Driven { session, input: Some(input), taken, asks, sink, live, deps }
}

fn questions(list: &[&'static [u8]]) -> Questions {
    Questions::from_list(list.iter().copied())
}

fn answers(list: &[&'static [u8]]) -> Answers {
    let mut answers = AnswersBuilder::default();
    for answer in list {
        answers.push(answer);
    }
    answers.finish()
}

impl Driven {
    /// The client sends `received`; the session has handled it when this returns.
    async fn send(&self, received: Received) {
        self.input.as_ref().expect("input still open").send(received).unwrap();
        settle().await;
    }

    async fn ask(&self, list: &[&'static [u8]]) {
        self.send(Ok(Incoming::Questions(questions(list)))).await;
    }

    /// The client's input ends.
    async fn end_input(&mut self) {
        self.input = None;
        settle().await;
    }

    /// The batches the session asked the oracle since the last call: their numbers and sizes.
    fn asked(&self) -> Vec<(u64, usize)> {
        let cx = TaskContext::from_waker(Waker::noop());
        std::iter::from_fn(|| match self.asks.poll_recv(&cx) {
            Poll::Ready(ask) => Some((ask.seq, ask.questions.len())),
            Poll::Pending => None,
        })
        .collect()
    }

    /// The oracle answers batch `seq`.
    async fn answer(&self, seq: u64, list: &[&'static [u8]]) {
        self.session.send(Answered { seq, answers: answers(list) }).await.unwrap();
        settle().await;
    }

    async fn notice(&self, notice: Notice) {
        self.session.send(notice).await.unwrap();
        settle().await;
    }

    fn has_ended(&self) -> bool {
        self.live.admitted() == 0
    }

    /// Whether the session has answered everything and shut down sending, and only waits for
    /// the client to close (or the linger time to pass).
    fn is_lingering(&self) -> bool {
        self.live.admitted() == 1 && self.live.unfinished() == 0
    }

    /// Asserts that the session has ended, counted for `reason` and nothing else.
    fn assert_ended_for(&self, reason: CloseReason) {
        assert!(self.has_ended(), "the session has not ended");
        let counted: Vec<_> =
            CloseReason::ALL.into_iter().filter(|&reason| self.deps.tally.closed_for(reason) > 0).collect();
        assert_eq!(counted, [reason], "ended for {counted:?}");
    }
}

#[actix::test]
async fn answers_leave_in_question_order_whatever_order_the_answered_messages_come_in() {
    tokio::time::pause();
    let client = driven(config(64), MemorySink::default());
    for question in [&b"a?"[..], b"b?", b"c?"] {
        client.ask(&[question]).await;
    }
    assert_eq!(client.asked(), [(0, 1), (1, 1), (2, 1)], "one ask per batch, numbered in order");
    client.answer(2, &[b"C."]).await;
    assert_eq!(client.sink.written(), "", "the third answer waits for the first two");
    client.answer(0, &[b"A."]).await;
    assert_eq!(client.sink.written(), "A.");
    client.answer(1, &[b"B."]).await;
    assert_eq!(client.sink.written(), "A.B.C.");
}

#[actix::test]
async fn questions_are_asked_only_as_far_as_the_bytes_owed_allow_and_reading_waits_for_the_client() {
    tokio::time::pause();
    // Each question costs its 2 bytes and the longest answer, 24: three fit in 100 bytes.
    let client = driven(SessionConfig { max_pending_bytes: 100, ..config(64) }, MemorySink::full());
    const ANSWER: &[u8] = b"abcdefghijklmnopqrs.";
    client.ask(&[b"q?", b"q?", b"q?", b"q?", b"q?", b"q?"]).await;
    assert_eq!(client.asked(), [(0, 3)], "three of six asked");
    client.ask(&[b"r?"]).await;
    assert_eq!(client.taken.get(), 1, "read on while questions were held back");
    // Back at their real length, 60 bytes the client does not take: one more question fits.
    client.answer(0, &[ANSWER, ANSWER, ANSWER]).await;
    assert_eq!(client.asked(), [(1, 1)]);
    client.answer(1, &[ANSWER]).await;
    assert_eq!(client.asked(), [], "asked beyond the mark");
    client.sink.make_room(80);
    settle().await;
    assert_eq!(client.sink.written().len(), 80);
    assert_eq!(client.asked(), [(2, 2)], "the rest, once the client took its answers");
    assert_eq!(client.taken.get(), 1, "read on while owing more than half the mark");
    client.answer(2, &[ANSWER, ANSWER]).await;
    assert_eq!(client.taken.get(), 2, "reading resumed owing half the mark");
    assert_eq!(client.asked(), [(3, 1)]);
}

#[actix::test]
async fn a_question_whose_answer_may_be_longer_than_the_mark_is_asked_when_nothing_is_owed() {
    tokio::time::pause();
    let client = driven(SessionConfig { max_pending_bytes: 10, ..config(64) }, MemorySink::default());
    client.ask(&[b"q?", b"q?"]).await;
    assert_eq!(client.asked(), [(0, 1)], "one, since nothing was owed");
    client.answer(0, &[b"A."]).await;
    assert_eq!(client.asked(), [(1, 1)], "then the next");
}

#[actix::test]
async fn at_end_of_input_every_question_asked_is_answered_then_sending_shuts_down_and_the_session_ends() {
    tokio::time::pause();
    let mut client = driven(config(64), MemorySink::default());
    client.ask(&[b"a?", b"b?"]).await;
    client.end_input().await;
    assert!(!client.sink.is_shut_down() && !client.has_ended(), "closed with answers owed");
    client.answer(0, &[b"A.", b"B."]).await;
    assert_eq!(client.sink.written(), "A.B.");
    assert!(client.sink.is_shut_down());
    client.assert_ended_for(CloseReason::Eof);
}

#[actix::test]
async fn a_partial_question_at_end_of_input_gets_no_answer_and_is_counted_as_such() {
    tokio::time::pause();
    let mut client = driven(config(64), MemorySink::default());
    client.ask(&[b"a?"]).await;
    client.send(Ok(Incoming::PartialAtEof(Bytes::from_static(b"Beautiful is")))).await;
    client.end_input().await;
    client.answer(0, &[b"A."]).await;
    assert_eq!(client.sink.written(), "A.");
    client.assert_ended_for(CloseReason::Partial);
}

#[actix::test]
async fn a_too_long_question_is_refused_after_the_answers_before_it_then_the_session_lingers_until_the_client_closes() {
    tokio::time::pause();
    let mut client = driven(config(64), MemorySink::default());
    client.ask(&[b"a?"]).await;
    client.send(Ok(Incoming::TooLong { limit: 64 })).await;
    client.ask(&[b"late?"]).await;
    assert_eq!(client.asked(), [(0, 1)], "nothing is asked after the refusal");
    client.answer(0, &[b"A."]).await;
    assert_eq!(client.sink.written(), "A.Error: question too long.");
    assert!(client.sink.is_shut_down());
    assert!(client.is_lingering(), "ended at once, before the client could read its last answer");
    client.end_input().await;
    client.assert_ended_for(CloseReason::TooLong);
}

#[actix::test]
async fn a_lingering_session_ends_after_the_linger_time_if_the_client_never_closes() {
    tokio::time::pause();
    let client = driven(config(64), MemorySink::default());
    client.send(Ok(Incoming::TooLong { limit: 64 })).await;
    assert!(client.is_lingering());
    assert_happens(Instant::now(), LINGER_AFTER_LAST_ANSWER, || client.has_ended(), "ended").await;
    client.assert_ended_for(CloseReason::TooLong);
}

#[actix::test]
async fn a_drain_answers_what_was_asked_says_the_server_is_shutting_down_and_closes() {
    tokio::time::pause();
    let mut client = driven(config(64), MemorySink::default());
    client.ask(&[b"a?"]).await;
    client.notice(Notice::Drain).await;
    assert_eq!(client.sink.written(), "", "told before its answer");
    client.answer(0, &[b"A."]).await;
    assert_eq!(client.sink.written(), "A.Error: server shutting down.");
    assert!(client.is_lingering());
    client.end_input().await;
    client.assert_ended_for(CloseReason::Shutdown);
}

#[actix::test]
async fn a_client_asking_while_the_server_drains_is_answered_until_it_has_been_quiet_for_the_grace() {
    tokio::time::pause();
    let client = driven(SessionConfig { drain_grace: Duration::from_millis(300), ..config(64) }, MemorySink::default());
    client.notice(Notice::Drain).await;
    for seq in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.ask(&[b"b?"]).await;
        client.answer(seq, &[b"B."]).await;
    }
    assert_eq!(client.sink.written(), "B.B.B.", "told between two questions");
    let grace = Duration::from_millis(300);
    assert_happens(Instant::now(), grace, || client.sink.is_shut_down(), "told and closed").await;
    assert_eq!(client.sink.written(), "B.B.B.Error: server shutting down.");
}

#[actix::test]
async fn an_idle_session_is_told_at_once_when_the_server_drains() {
    tokio::time::pause();
    let client = driven(config(64), MemorySink::default());
    client.notice(Notice::Drain).await;
    assert_eq!(client.sink.written(), "Error: server shutting down.");
    assert!(client.is_lingering());
}

#[actix::test]
async fn a_session_that_completes_no_question_for_the_idle_timeout_closes_saying_nothing() {
    tokio::time::pause();
    let client =
        driven(SessionConfig { idle_timeout: Duration::from_millis(300), ..config(64) }, MemorySink::default());
    client.ask(&[b"a?"]).await;
    let asked = Instant::now();
    client.answer(0, &[b"A."]).await;
    assert_happens(asked, Duration::from_millis(300), || client.has_ended(), "closed").await;
    assert_eq!(client.sink.written(), "A.", "nothing is said on an idle close");
    assert!(client.sink.is_shut_down());
    client.assert_ended_for(CloseReason::IdleTimeout);
}

#[actix::test]
async fn a_session_owed_answers_is_not_idle() {
    tokio::time::pause();
    let client =
        driven(SessionConfig { idle_timeout: Duration::from_millis(100), ..config(64) }, MemorySink::default());
    client.ask(&[b"a?"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!client.has_ended(), "closed while its answer was on its way");
    client.answer(0, &[b"A."]).await;
    assert_eq!(client.sink.written(), "A.");
}

#[actix::test]
async fn a_client_that_takes_none_of_its_answers_for_the_write_timeout_is_dropped() {
    tokio::time::pause();
    let client = driven(SessionConfig { write_timeout: Duration::from_millis(200), ..config(64) }, MemorySink::full());
    client.ask(&[b"a?"]).await;
    let stalled = Instant::now();
    client.answer(0, &[b"A."]).await;
    assert_happens(stalled, Duration::from_millis(200), || client.has_ended(), "dropped").await;
    client.assert_ended_for(CloseReason::WriteTimeout);
}

#[actix::test]
async fn a_session_owed_answers_that_never_come_ends_at_the_write_timeout_as_unanswered() {
    tokio::time::pause();
    let client =
        driven(SessionConfig { write_timeout: Duration::from_millis(200), ..config(64) }, MemorySink::default());
    let asked = Instant::now();
    client.ask(&[b"a?"]).await;
    assert_happens(asked, Duration::from_millis(200), || client.has_ended(), "ended").await;
    assert_eq!(client.sink.written(), "");
    client.assert_ended_for(CloseReason::Unanswered);
}

#[actix::test]
async fn answers_that_keep_coming_within_the_write_timeout_keep_the_session() {
    tokio::time::pause();
    let client =
        driven(SessionConfig { write_timeout: Duration::from_millis(200), ..config(64) }, MemorySink::default());
    for seq in 0..5 {
        client.ask(&[b"a?"]).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        client.answer(seq, &[b"A."]).await;
    }
    assert!(!client.has_ended(), "ended though every answer came within the write timeout");
    assert_eq!(client.sink.written(), "A.".repeat(5));
}

#[actix::test]
async fn a_failed_write_ends_the_session_as_an_error() {
    tokio::time::pause();
    let client = driven(config(64), MemorySink::default());
    client.sink.fail();
    client.ask(&[b"a?"]).await;
    client.answer(0, &[b"A."]).await;
    client.assert_ended_for(CloseReason::Error);
}

#[actix::test]
async fn a_failed_read_still_answers_what_was_asked_and_ends_as_an_error() {
    tokio::time::pause();
    let mut client = driven(config(64), MemorySink::default());
    client.ask(&[b"a?"]).await;
    client.send(Err(CodecError::Io(io::ErrorKind::ConnectionReset.into()))).await;
    client.end_input().await;
    client.answer(0, &[b"A."]).await;
    assert_eq!(client.sink.written(), "A.");
    client.assert_ended_for(CloseReason::Error);
}

#[actix::test]
async fn questions_are_answered_with_internal_errors_when_the_oracle_is_gone() {
    tokio::time::pause();
    let mut client = driven(config(64), MemorySink::default());
    drop(std::mem::take(&mut client.asks));
    client.ask(&[b"a?", b"b?"]).await;
    assert_eq!(client.sink.written(), "Error: internal error.Error: internal error.");
}

#[test]
fn a_session_stopped_with_its_thread_is_counted_as_closed_by_the_shutdown() {
    let system = System::new();
    let client = system.block_on(async {
        let client = driven(config(64), MemorySink::default());
        client.ask(&[b"a?"]).await;
        client
    });
    drop(system);
    client.assert_ended_for(CloseReason::Shutdown);
}

// ---------------------------------------------------------------------------------------------
// Over an in-memory connection.

/// Answers `q?` with `q.`, after sleeping as many milliseconds as the question's digits say.
struct EchoOracle;

impl Actor for EchoOracle {
    type Context = Context<Self>;
}

impl Handler<Ask> for EchoOracle {
    type Result = ();

    fn handle(&mut self, Ask { questions, seq, reply_to }: Ask, ctx: &mut Self::Context) {
        ctx.spawn(actix::fut::wrap_future(async move {
            let mut answers = AnswersBuilder::default();
            for question in questions.iter() {
                let text = &question[..question.len() - 1];
                let delay: u64 =
                    text.iter().filter(|b| b.is_ascii_digit()).fold(0, |n, &b| n * 10 + u64::from(b - b'0'));
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                answers.push(&[text, b"."].concat());
            }
            let _ = reply_to.send(Answered { seq, answers: answers.finish() });
        }));
    }
}

struct Harness {
    client: DuplexStream,
    /// Counts the session until it has ended.
    live: Admission,
    /// The session's worker's: its registry, its tally.
    deps: Rc<SessionDeps>,
}

/// The duplex pipe's buffer, in each direction: what a socket's kernel buffers would hold.
const PIPE_BYTES: usize = 4096;

/// Starts a session over an in-memory pipe, with a registry of its own whose timers run,
/// asking `oracle`, whose answers are at most as long as the book's error answers.
fn start_session(oracle: Asks, config: SessionConfig) -> (DuplexStream, Admission, Rc<SessionDeps>) {
    start_session_live(oracle, Live::new(Arc::new(AnswerTable::default()), config))
}

/// [`start_session`] with the table and limits of `live`.
fn start_session_live(oracle: Asks, live: Live) -> (DuplexStream, Admission, Rc<SessionDeps>) {
    let (client, server_side) = tokio::io::duplex(PIPE_BYTES);
    let (read, write) = tokio::io::split(server_side);
    let admission = Admission::new(10);
    let registry = SessionRegistry::new();
    actix_rt::spawn(registry.clone().run_timers());
    let info = SessionInfo { id: 1, peer: "127.0.0.1:9".parse().unwrap() };
    let deps = Rc::new(SessionDeps { oracle, live, registry, tally: Tally::default(), metrics: Metrics::disabled() });
    ZenSession::start(read, write, info, deps.clone(), admission.try_admit().unwrap());
    (client, admission, deps)
}

fn echo_session(config: SessionConfig) -> Harness {
    let (client, live, deps) = start_session(inbox::start(EchoOracle), config);
    Harness { client, live, deps }
}

async fn read_to_end(client: &mut DuplexStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut received)).await.unwrap().unwrap();
    received
}

async fn read_exactly(client: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut received = vec![0; n];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut received)).await.unwrap().unwrap();
    received
}

#[actix::test]
async fn a_half_closed_client_gets_every_answer_then_end_of_file() {
    tokio::time::pause();
    let mut session = echo_session(config(64));
    session.client.write_all(b"a? b?\nc10?").await.unwrap();
    session.client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut session.client).await, b"a.b.c10.");
    ended(&session, CloseReason::Eof).await;
}

#[actix::test]
async fn a_client_that_closes_without_asking_is_closed_and_counted() {
    tokio::time::pause();
    let mut session = echo_session(config(64));
    session.client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut session.client).await, b"");
    ended(&session, CloseReason::Eof).await;
}

#[actix::test]
async fn a_partial_question_at_end_of_file_gets_no_answer() {
    tokio::time::pause();
    let mut session = echo_session(config(64));
    session.client.write_all(b"a?Beautiful is").await.unwrap();
    session.client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut session.client).await, b"a.");
    ended(&session, CloseReason::Partial).await;
}

#[actix::test]
async fn a_too_long_question_is_refused_after_the_questions_before_it() {
    tokio::time::pause();
    let mut session = echo_session(config(8));
    session.client.write_all(b"a?bcdefghijk").await.unwrap();
    assert_eq!(read_to_end(&mut session.client).await, b"a.Error: question too long.");
}

#[actix::test]
async fn after_saying_the_server_is_shutting_down_a_session_lingers_reading_until_the_client_closes() {
    tokio::time::pause();
    let mut session = echo_session(config(64));
    session.client.write_all(b"a?").await.unwrap();
    assert_eq!(read_exactly(&mut session.client, 2).await, b"a.");
    session.deps.registry.drain();
    assert_eq!(read_to_end(&mut session.client).await, b"Error: server shutting down.");
    // A question sent just then is read and dropped, not met with a closed connection.
    session.client.write_all(b"b?").await.unwrap();
    run_a_while().await;
    assert_eq!((session.live.admitted(), session.live.unfinished()), (1, 0), "open, lingering, and owed nothing");
    session.client.shutdown().await.unwrap();
    ended(&session, CloseReason::Shutdown).await;
}

/// Waits until the session has ended and given its permit back, and checks that it was counted
/// as ending for `reason`.
async fn ended(session: &Harness, reason: CloseReason) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while session.live.admitted() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the session did not end");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(session.deps.tally.closed_for(reason), 1, "not counted as ending for {reason:?}");
}

#[actix::test]
async fn a_client_that_reads_nothing_stops_being_read_until_it_reads() {
    tokio::time::pause();
    let session = echo_session(SessionConfig { max_pending_bytes: 1024, ..config(64) });
    // 100 KB of questions: far more than the pipe plus the pending limit can hold.
    let questions = b"q?".repeat(50_000);
    let (mut reader, mut writer) = tokio::io::split(session.client);
    let sent = Rc::new(std::cell::Cell::new(0));
    let sent_so_far = sent.clone();
    let write = tokio::task::spawn_local(async move {
        for chunk in questions.chunks(1000) {
            writer.write_all(chunk).await?;
            sent_so_far.set(sent_so_far.get() + chunk.len());
        }
        Ok::<_, std::io::Error>(writer)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sent.get() < 20_000, "the session read {} bytes although nobody read its answers", sent.get());
    let mut answers = Vec::new();
    let mut buffer = vec![0; 8192];
    while answers.len() < 100_000 {
        let n = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buffer)).await.unwrap().unwrap();
        assert!(n > 0);
        answers.extend_from_slice(&buffer[..n]);
    }
    assert_eq!(answers, b"q.".repeat(50_000));
    let mut writer = write.await.unwrap().unwrap();
    writer.shutdown().await.unwrap();
}

#[actix::test]
async fn a_client_dribbling_a_question_is_closed_at_the_idle_timeout() {
    tokio::time::pause();
    let mut session = echo_session(SessionConfig { idle_timeout: Duration::from_millis(300), ..config(64) });
    session.client.write_all(b"a?").await.unwrap();
    assert_eq!(read_exactly(&mut session.client, 2).await, b"a.");
    let started = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(session.client);
    let dribble = tokio::spawn(async move {
        while writer.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(rest, b"", "nothing is said on an idle close");
    let idle = started.elapsed();
    assert!(is_due_at(idle, 300), "closed after {idle:?}, not the idle timeout");
    dribble.abort();
}

/// Answers every question with the same answer of a given length, at once; reports how
/// many questions each batch it is asked holds.
struct SizedOracle {
    answer: Answer,
    batches: mpsc::UnboundedSender<usize>,
}

impl Actor for SizedOracle {
    type Context = Context<Self>;
}

impl Handler<Ask> for SizedOracle {
    type Result = ();

    fn handle(&mut self, Ask { questions, seq, reply_to }: Ask, _: &mut Self::Context) {
        let _ = self.batches.send(questions.len());
        let mut answers = AnswersBuilder::default();
        for _ in 0..questions.len() {
            answers.push_answer(&self.answer);
        }
        let _ = reply_to.send(Answered { seq, answers: answers.finish() });
    }
}

/// A session whose oracle answers every question with `answer_bytes` bytes.
fn sized_session(
    answer_bytes: usize,
    max_pending_bytes: usize,
) -> (DuplexStream, Admission, mpsc::UnboundedReceiver<usize>, Answer) {
    let answer = Answer::new(format!("{}.", "x".repeat(answer_bytes - 1)));
    let table =
        crate::oracle::AnswerTable::new([("q?".to_owned(), String::from_utf8_lossy(answer.as_bytes()).into_owned())]);
    let (batches, asked) = mpsc::unbounded_channel();
    let oracle = inbox::start(SizedOracle { answer: answer.clone(), batches });
    let config = SessionConfig { max_pending_bytes, ..config(64) };
    let (client, live, _deps) = start_session_live(oracle, Live::new(Arc::new(table.unwrap()), config));
    (client, live, asked, answer)
}

/// Lets the runtime run, and the paused clock move, until nothing is left to do.
async fn run_a_while() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[actix::test]
async fn a_client_reading_nothing_is_asked_for_no_more_than_the_byte_budget_allows() {
    tokio::time::pause();
    const ANSWER: usize = 300;
    const BUDGET: usize = 1000;
    let (client, _live, mut asked, answer) = sized_session(ANSWER, BUDGET);
    let (mut reader, mut writer) = tokio::io::split(client);
    writer.write_all(&b"q?".repeat(50)).await.unwrap();
    run_a_while().await;
    let mut questions_asked = 0;
    while let Ok(batch) = asked.try_recv() {
        questions_asked += batch;
    }
    // Every answer is in the pipe or owed; owed stays within the budget (plus one question
    // and its answer, when the budget is exceeded by the last one asked).
    let most = (PIPE_BYTES + BUDGET + 2 + ANSWER) / ANSWER;
    assert!(questions_asked <= most, "{questions_asked} questions asked, at most {most} expected");
    assert!(questions_asked > PIPE_BYTES / ANSWER, "only {questions_asked} questions asked");
    let mut received = vec![0; 50 * ANSWER];
    tokio::time::timeout(Duration::from_secs(5), reader.read_exact(&mut received)).await.unwrap().unwrap();
    assert_eq!(received, answer.as_bytes().repeat(50), "every answer, once the client reads");
}

#[actix::test]
async fn an_answer_longer_than_the_budget_is_asked_for_one_question_at_a_time() {
    tokio::time::pause();
    let (client, _live, mut asked, answer) = sized_session(5000, 1000);
    let (mut reader, mut writer) = tokio::io::split(client);
    writer.write_all(&b"q?".repeat(5)).await.unwrap();
    let mut received = vec![0; 5 * 5000];
    tokio::time::timeout(Duration::from_secs(5), reader.read_exact(&mut received)).await.unwrap().unwrap();
    assert_eq!(received, answer.as_bytes().repeat(5));
    let batches: Vec<usize> = std::iter::from_fn(|| asked.try_recv().ok()).collect();
    assert_eq!(batches, [1; 5], "one question asked at a time");
}

proptest::proptest! {
    #[test]
    fn a_session_answers_any_input_split_anyhow_as_the_reference_framing_says(
        input in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b'a'),
                proptest::strategy::Just(b'b'),
                proptest::strategy::Just(b' '),
                proptest::strategy::Just(b'?'),
                proptest::strategy::Just(b'\n'),
                proptest::prelude::any::<u8>(),
            ],
            0..300,
        ),
        lengths in proptest::collection::vec(0usize..40, 0..16),
        max in 1usize..16,
    ) {
        use crate::{codec::reference::{self, Ending}, oracle::{AnswerTable, Oracle, OracleConfig}};


        let table = AnswerTable::new([("a?", "A."), ("b a?", "B.")]).unwrap();
        let (questions, ending) = reference::frame(&input, max);
        let mut expected: Vec<u8> = questions.iter().flat_map(|q| table.answer(q).as_bytes().to_vec()).collect();
        if ending == Ending::TooLong {
            expected.extend_from_slice(Answer::QUESTION_TOO_LONG.as_bytes());
        }
        let chunks: Vec<Vec<u8>> = reference::split(&input, &lengths).into_iter().map(<[u8]>::to_vec).collect();
        let received = System::new().block_on(async move {
            let live = Live::new(Arc::new(table), config(max));
            let oracle = Oracle::start(live.clone(), OracleConfig::default(), &Metrics::disabled());
            let replica = oracle.start_replica();
            let (client, _live, _deps) = start_session_live(replica, live);
            let (mut reader, mut writer) = tokio::io::split(client);
            tokio::task::spawn_local(async move {
                for chunk in chunks {
                    if writer.write_all(&chunk).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = writer.shutdown().await;
            });
            let mut received = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut received)).await.unwrap().unwrap();
            received
        });
        proptest::prop_assert_eq!(received.escape_ascii().to_string(), expected.escape_ascii().to_string());
    }
}
