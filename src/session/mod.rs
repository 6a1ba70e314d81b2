//! [`ZenSession`]: one actor per client connection.
//!
//! The question's path: the socket's read half is a stream of [`Incoming`] batches decoded by
//! [`ZenCodec`] (registered with `add_stream`, behind the [`GatedStream`] of flow control); each
//! batch goes to the worker's oracle shard as one [`Ask`]; each reply fills the batch's slot in
//! a queue kept in question order, and the queue is written from the front to the
//! [`AnswerSink`] as slots fill, whatever order the replies come back in.
//!
//! A session moves through phases (`Phase`): serving; draining (still taking questions while the
//! client keeps asking, until it has been quiet for `drain_grace`); finishing (no new questions,
//! answering those asked); closing (every answer with the sink, which writes them out and then shuts down the
//! sending side); and, after refusing a question, lingering (reading and discarding until the
//! client closes, so that closing with unread input does not reset the connection before the
//! client has read the refusal). It ends when the client has closed and every question received
//! before is answered, when a question is too long (after saying so), when the server drains
//! (after answering what was asked and saying so), on a timeout, or on any I/O error.
//!
//! Memory per session is bounded: the codec caps a question's bytes, and reading pauses
//! ([`Flow`]) while more than `max_pending_bytes` of answers wait or too many questions wait
//! for the oracle. The worker's [`SessionRegistry`] tells the session when its timeouts are
//! due: a connection completing no question for `idle_timeout` is closed, a client reading
//! nothing for `write_timeout` while answers wait is dropped. The connection's [`Permit`]
//! goes back to the server's admission when the session is dropped, however it ends.
//!
//! - [`flow`]: pausing and resuming reading.
//! - [`sink`]: the write half, with its backlog and explicit half-close.
//! - [`registry`]: one worker's sessions, their deadlines and drain.

pub mod flow;
pub mod registry;
pub mod sink;

use std::{cell::Cell, collections::VecDeque, io, net::SocketAddr, pin::Pin, rc::Rc, sync::Arc, task, time::Duration};

use actix::{fut::ActorFuture, prelude::*};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Instant,
};
use tokio_util::codec::FramedRead;

use self::{
    flow::{Flow, GatedStream},
    registry::{Notice, RegistryKey, SessionRegistry},
    sink::AnswerSink,
};
use crate::{
    admission::Permit,
    codec::{CodecError, Incoming, READ_BUFFER_BYTES, ZenCodec},
    metrics::{CloseReason, Metrics, Outcome, Tally},
    oracle::{Answered, Ask},
    protocol::{Answer, Answers, Questions},
};

/// Questions a session may have waiting for the oracle before it stops reading.
pub const MAX_QUESTIONS_AT_ORACLE: usize = 256;

/// After refusing a too-long question, how long the session keeps reading (and discarding)
/// so that closing with unread input does not reset the connection before the client has
/// read the refusal.
pub const LINGER_AFTER_REFUSAL: Duration = Duration::from_secs(2);

/// Per-session limits.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Longest question accepted, `?` included.
    pub max_question_bytes: usize,
    /// Unsent answer bytes above which the session stops reading.
    pub max_pending_bytes: usize,
    /// A connection completing no question for this long is closed.
    pub idle_timeout: Duration,
    /// A client reading nothing for this long while answers wait is disconnected.
    pub write_timeout: Duration,
    /// When the server drains, how long a client must have asked nothing before it is told
    /// the server is shutting down and closed (so that one between two questions is not cut
    /// off).
    pub drain_grace: Duration,
}

/// Who the session serves.
#[derive(Debug, Clone, Copy)]
pub struct SessionInfo {
    /// Unique within this process, in order of acceptance.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
}

/// What a session needs from its worker; one per worker thread, shared by its sessions (a
/// copy in every session would cost each idle connection ~150 bytes).
pub struct SessionDeps {
    /// Where questions are answered: the oracle shard of this thread.
    pub oracle: Recipient<Ask>,
    /// Limits. A reload may change them: sizes then apply to sessions that start later,
    /// timeouts to every session from its next check.
    pub config: Cell<SessionConfig>,
    /// The sessions of this thread, for drain and timeouts.
    pub registry: Rc<SessionRegistry>,
    /// What this thread's sessions count, added to `metrics` now and then by the worker.
    pub tally: Tally,
    /// Where the counts go; also takes each batch's latency.
    pub metrics: Metrics,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking questions and answering them.
    Serving,
    /// The server is draining: still taking questions, until the client has been quiet for
    /// `drain_grace` (counted from this instant at the earliest).
    Draining(Instant),
    /// Taking no more questions; answering those already asked.
    Finishing(Input),
    /// Every answer is with the sink, which writes them out, then shuts down sending.
    Closing(Input),
    /// Answered and shut down after a refusal; discarding input until the client closes or
    /// [`LINGER_AFTER_REFUSAL`] has passed.
    Lingering,
}

/// Whether the client's input is still read once the session takes no more questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Read and thrown away (after a refusal), until the client closes.
    Discarding,
    /// At end of file, failed, or no longer read.
    Ended,
}

/// One batch of answers, waiting for the oracle or ready to be written, and when its questions
/// were read (for the latency metric; none for the server's own last answer).
struct Slot {
    read_at: Option<Instant>,
    answers: Option<Answers>,
}

/// The actor serving one client.
pub struct ZenSession {
    info: SessionInfo,
    deps: Rc<SessionDeps>,
    key: RegistryKey,
    /// This session, where the oracle sends its answers.
    reply_to: Arc<Recipient<Answered>>,
    /// Counts this connection as admitted until the session is dropped.
    _permit: Permit,
    sink: AnswerSink,
    flow: Rc<Flow>,
    reader: SpawnHandle,
    phase: Phase,
    /// Batches in question order; the front is the next to be written.
    slots: VecDeque<Slot>,
    /// Sequence number of the front slot; a batch's slot is `seq - first_seq`.
    first_seq: u64,
    questions_at_oracle: usize,
    last_question: Instant,
    answers_written: u64,
    /// Why the session ends, once that is known (the first reason wins).
    close_reason: Option<CloseReason>,
}

impl ZenSession {
    /// Starts a session on the current arbiter over any byte stream split in two halves.
    pub fn start<R, W>(read: R, write: W, info: SessionInfo, deps: Rc<SessionDeps>, permit: Permit) -> Addr<Self>
    where
        R: AsyncRead + Unpin + 'static,
        W: AsyncWrite + Unpin + 'static,
    {
        ZenSession::create(move |ctx| {
            let config = deps.config.get();
            let flow = Flow::new(config.max_pending_bytes);
            let read = CountingReader { inner: read, deps: deps.clone() };
            let reader = FramedRead::with_capacity(read, ZenCodec::new(config.max_question_bytes), READ_BUFFER_BYTES);
            let reader = ctx.add_stream(GatedStream::new(reader, flow.clone()));
            // The sink's item comes after the reader, the only other item that sends answers,
            // and the context polls items after handling messages: whatever is sent in a poll
            // is written at its end, in one write.
            ctx.spawn(WriteOut);
            let now = Instant::now();
            let key = deps.registry.register(ctx.address().recipient(), now + config.idle_timeout);
            ZenSession {
                info,
                key,
                reply_to: Arc::new(ctx.address().recipient()),
                deps,
                _permit: permit,
                sink: AnswerSink::new(Box::new(write)),
                flow,
                reader,
                phase: Phase::Serving,
                slots: VecDeque::new(),
                first_seq: 0,
                questions_at_oracle: 0,
                last_question: now,
                answers_written: 0,
                close_reason: None,
            }
        })
    }

    /// Starts a session on the current arbiter for an accepted TCP connection.
    pub fn start_tcp(stream: TcpStream, info: SessionInfo, deps: Rc<SessionDeps>, permit: Permit) -> Addr<Self> {
        let (read, write) = stream.into_split();
        Self::start(read, write, info, deps, permit)
    }

    /// The span of this session's log events, created for each event rather than kept, which
    /// would cost every idle connection a few hundred bytes.
    fn span(&self) -> tracing::Span {
        tracing::info_span!("session", id = self.info.id, peer = %self.info.peer)
    }

    fn ask(&mut self, questions: Questions) {
        let seq = self.first_seq + self.slots.len() as u64;
        let count = questions.len();
        self.last_question = Instant::now();
        self.slots.push_back(Slot { read_at: Some(self.last_question), answers: None });
        self.questions_at_oracle += count;
        if self.questions_at_oracle >= MAX_QUESTIONS_AT_ORACLE {
            self.flow.set_paused_for_oracle(true);
        }
        // `do_send` ignores the shard's mailbox capacity (the session bounds what it has at the
        // oracle itself) and reports nothing, so a gone shard is checked for first.
        if self.deps.oracle.connected() {
            self.deps.oracle.do_send(Ask { questions, seq, reply_to: self.reply_to.clone() });
        } else {
            tracing::error!(parent: &self.span(), "oracle is gone; answering with internal errors");
            self.deps.tally.answered(Outcome::InternalError, count as u64);
            self.fill(seq, Answers::repeated(&Answer::INTERNAL_ERROR, count));
        }
    }

    /// Puts the answers to batch `seq` in its slot and sends what is ready.
    fn fill(&mut self, seq: u64, answers: Answers) {
        self.questions_at_oracle -= answers.len();
        if self.questions_at_oracle < MAX_QUESTIONS_AT_ORACLE {
            self.flow.set_paused_for_oracle(false);
        }
        if let Some(slot) = seq.checked_sub(self.first_seq).and_then(|i| self.slots.get_mut(i as usize)) {
            slot.answers = Some(answers);
        }
        self.write_ready();
    }

    /// Queues a last answer from the server itself and takes no more questions.
    fn finish_with(&mut self, answer: Answer, input: Input) {
        self.phase = Phase::Finishing(input);
        self.slots.push_back(Slot { read_at: None, answers: Some(Answers::single(&answer)) });
        self.write_ready();
    }

    /// Sends the answers at the front of the queue that are ready.
    fn write_ready(&mut self) {
        let mut now = None;
        while self.slots.front().is_some_and(|slot| slot.answers.is_some()) {
            let Some(Slot { read_at, answers: Some(answers) }) = self.slots.pop_front() else { break };
            self.first_seq += 1;
            self.answers_written += answers.len() as u64;
            self.sink.send(&answers);
            if let Some(read_at) = read_at
                && self.deps.metrics.is_enabled()
            {
                let now = *now.get_or_insert_with(Instant::now);
                self.deps.metrics.record_latency(now - read_at);
            }
        }
        self.close_when_answered();
    }

    /// Keeps taking questions until the client has been quiet for `drain_grace`; then answers
    /// what was asked, says the server is shutting down, and closes.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.phase == Phase::Serving {
            tracing::debug!(parent: &self.span(), "draining");
            self.phase = Phase::Draining(Instant::now());
            self.check_timeouts(ctx);
        }
    }

    /// Whether the session takes questions.
    fn taking_questions(&self) -> bool {
        matches!(self.phase, Phase::Serving | Phase::Draining(_))
    }

    /// Tells flow control and the write timeout how many bytes wait for the client.
    fn backlog_changed(&mut self) {
        self.flow.set_backlog(self.sink.backlog());
        if let Some(since) = self.sink.stalled_since() {
            self.deps.registry.check_by(self.key, since + self.deps.config.get().write_timeout);
        }
    }

    fn close_when_answered(&mut self) {
        if let Phase::Finishing(input) = self.phase
            && self.slots.is_empty()
        {
            self.phase = Phase::Closing(input);
            self.sink.close();
        }
    }

    fn stop_reading(&mut self, ctx: &mut Context<Self>) {
        ctx.cancel_future(self.reader);
    }

    /// Polled as one of the context's items: writes out what waits in the sink, and closes it
    /// once asked to.
    fn poll_sink(&mut self, ctx: &mut Context<Self>, task: &mut task::Context<'_>) -> task::Poll<()> {
        let closing = self.sink.is_closing();
        let result = if closing { self.sink.poll_close(task) } else { self.sink.poll_write_out(task) };
        self.deps.tally.sent(self.sink.take_sent());
        match result {
            task::Poll::Ready(Ok(())) if closing => {
                self.sending_shut_down(ctx);
                task::Poll::Ready(())
            }
            task::Poll::Ready(Ok(())) | task::Poll::Pending => {
                self.backlog_changed();
                task::Poll::Pending
            }
            task::Poll::Ready(Err(error)) => {
                self.write_failed(&error, ctx);
                task::Poll::Ready(())
            }
        }
    }

    /// Every answer is written and the client told end of file.
    fn sending_shut_down(&mut self, ctx: &mut Context<Self>) {
        if self.phase == Phase::Closing(Input::Discarding) {
            self.phase = Phase::Lingering;
            ctx.run_later(LINGER_AFTER_REFUSAL, |_, ctx| ctx.stop());
        } else {
            ctx.stop();
        }
    }

    /// Records why the session is ending, unless a reason is known already.
    fn ending(&mut self, reason: CloseReason) {
        self.close_reason.get_or_insert(reason);
    }

    fn write_failed(&mut self, error: &io::Error, ctx: &mut Context<Self>) {
        self.ending(CloseReason::Error);
        tracing::info!(parent: &self.span(), %error, "write failed");
        ctx.stop();
    }

    /// The client sent end of file, or reading failed.
    fn input_ended(&mut self, ctx: &mut Context<Self>) {
        self.phase = match self.phase {
            Phase::Serving | Phase::Draining(_) | Phase::Finishing(_) => Phase::Finishing(Input::Ended),
            Phase::Closing(_) => Phase::Closing(Input::Ended),
            Phase::Lingering => {
                ctx.stop();
                return;
            }
        };
        self.close_when_answered();
    }

    fn check_timeouts(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let config = self.deps.config.get();
        let next = if let Some(since) = self.sink.stalled_since() {
            let due = since + config.write_timeout;
            if now >= due {
                tracing::info!(parent: &self.span(), unsent = self.sink.backlog(), "client stopped reading; disconnecting");
                self.ending(CloseReason::WriteTimeout);
                ctx.stop();
                return;
            }
            due
        } else if let Phase::Draining(since) = self.phase {
            let due = self.last_question.max(since) + config.drain_grace;
            if !self.slots.is_empty() {
                // Checked again when the answers are in (see `Answered`).
                now + config.write_timeout
            } else if now >= due {
                self.stop_reading(ctx);
                self.ending(CloseReason::Shutdown);
                self.finish_with(Answer::SHUTTING_DOWN, Input::Ended);
                return;
            } else {
                due
            }
        } else if self.phase == Phase::Serving && self.slots.is_empty() {
            let due = self.last_question + config.idle_timeout;
            if now >= due {
                tracing::info!(parent: &self.span(), "idle timeout; closing");
                self.ending(CloseReason::IdleTimeout);
                self.stop_reading(ctx);
                self.phase = Phase::Finishing(Input::Ended);
                self.close_when_answered();
                return;
            }
            due
        } else {
            // Answers are on their way; look again later.
            now + config.idle_timeout.min(config.write_timeout)
        };
        self.deps.registry.check_at(self.key, next);
    }
}

/// The read half of a session's connection, counting the bytes it reads.
struct CountingReader<R> {
    inner: R,
    deps: Rc<SessionDeps>,
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.deps.tally.received(buf.filled().len() - before);
        result
    }
}

/// The [`AnswerSink`]'s item in the session's context: polled whenever the session is, it
/// writes out what the socket did not take at once, and closes the sink when asked to.
struct WriteOut;

impl ActorFuture<ZenSession> for WriteOut {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        session: &mut ZenSession,
        ctx: &mut Context<ZenSession>,
        task: &mut task::Context<'_>,
    ) -> task::Poll<()> {
        session.poll_sink(ctx, task)
    }
}

impl Actor for ZenSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(parent: &self.span(), "connection accepted");
        if self.deps.registry.is_draining() {
            self.drain(ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.deps.tally.closed(self.close_reason.unwrap_or(CloseReason::Eof));
        self.deps.registry.unregister(self.key);
        tracing::info!(parent: &self.span(), answers = self.answers_written, "connection closed");
    }
}

impl StreamHandler<Result<Incoming, CodecError>> for ZenSession {
    fn handle(&mut self, item: Result<Incoming, CodecError>, _ctx: &mut Self::Context) {
        match item {
            Ok(Incoming::Questions(questions)) if self.taking_questions() => self.ask(questions),
            Ok(Incoming::Questions(_)) => {}
            Ok(Incoming::TooLong { limit }) => {
                tracing::info!(parent: &self.span(), limit, "question too long");
                if self.taking_questions() {
                    self.ending(CloseReason::TooLong);
                    self.deps.tally.answered(Outcome::TooLong, 1);
                    self.finish_with(Answer::QUESTION_TOO_LONG, Input::Discarding);
                }
            }
            Ok(Incoming::PartialAtEof(bytes)) => {
                self.ending(CloseReason::Partial);
                tracing::info!(parent: &self.span(), partial = %bytes.escape_ascii(), "client sent part of a question, then closed");
            }
            Err(CodecError::Io(error)) => {
                self.ending(CloseReason::Error);
                tracing::info!(parent: &self.span(), %error, "read failed");
            }
        }
    }

    /// End of input: answer everything already asked, then close (the client may have only
    /// shut down its sending side).
    fn finished(&mut self, ctx: &mut Self::Context) {
        self.input_ended(ctx);
    }
}

impl Handler<Notice> for ZenSession {
    type Result = ();

    fn handle(&mut self, notice: Notice, ctx: &mut Self::Context) {
        match notice {
            Notice::Drain => self.drain(ctx),
            Notice::CheckTimeouts => self.check_timeouts(ctx),
        }
    }
}

impl Handler<Answered> for ZenSession {
    type Result = ();

    fn handle(&mut self, Answered { seq, answers }: Answered, ctx: &mut Self::Context) {
        self.fill(seq, answers);
        if matches!(self.phase, Phase::Draining(_)) && self.slots.is_empty() {
            self.check_timeouts(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
        sync::mpsc,
    };

    use super::*;
    use crate::{
        admission::Admission,
        protocol::{AnswersBuilder, Question},
    };

    /// Answers `q?` with `q.`, after sleeping as many milliseconds as the question's digits
    /// say; reports each question it receives.
    struct EchoOracle(mpsc::UnboundedSender<Question>);

    impl Actor for EchoOracle {
        type Context = Context<Self>;
    }

    impl Handler<Ask> for EchoOracle {
        type Result = ();

        fn handle(&mut self, Ask { questions, seq, reply_to }: Ask, ctx: &mut Self::Context) {
            for question in questions.iter() {
                let _ = self.0.send(questions.question(question));
            }
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
                reply_to.do_send(Answered { seq, answers: answers.finish() });
            }));
        }
    }

    struct Harness {
        client: DuplexStream,
        /// Counts the session until it has ended.
        live: Admission,
        /// The worker's sessions: this one.
        registry: Rc<SessionRegistry>,
        /// Questions as the oracle receives them.
        asked: mpsc::UnboundedReceiver<Question>,
    }

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

    /// The duplex pipe's buffer, in each direction: what a socket's kernel buffers would hold.
    const PIPE_BYTES: usize = 4096;

    /// Starts a session over an in-memory pipe, with a registry of its own whose timers run.
    fn start_session(oracle: Recipient<Ask>, config: SessionConfig) -> (DuplexStream, Admission, Rc<SessionRegistry>) {
        let (client, server_side) = tokio::io::duplex(PIPE_BYTES);
        let (read, write) = tokio::io::split(server_side);
        let live = Admission::new(10);
        let registry = SessionRegistry::new();
        actix_rt::spawn(registry.clone().run_timers());
        let info = SessionInfo { id: 1, peer: "127.0.0.1:9".parse().unwrap() };
        let deps = Rc::new(SessionDeps {
            oracle,
            config: Cell::new(config),
            registry: registry.clone(),
            tally: Tally::default(),
            metrics: Metrics::disabled(),
        });
        ZenSession::start(read, write, info, deps, live.try_admit().unwrap());
        (client, live, registry)
    }

    fn echo_session(config: SessionConfig) -> Harness {
        let (seen, asked) = mpsc::unbounded_channel();
        let (client, live, registry) = start_session(EchoOracle(seen).start().recipient(), config);
        Harness { client, live, registry, asked }
    }

    impl Harness {
        async fn oracle_received(&mut self, question: &[u8]) {
            let received = tokio::time::timeout(Duration::from_secs(5), self.asked.recv()).await.unwrap().unwrap();
            assert_eq!(received.as_bytes(), question);
        }
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
    async fn answers_go_out_in_question_order_even_when_the_oracle_replies_out_of_order() {
        let mut session = echo_session(config(64));
        session.client.write_all(b"slow200?").await.unwrap();
        session.oracle_received(b"slow200?").await; // so the next question is another batch
        session.client.write_all(b"fast0?").await.unwrap();
        session.client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut session.client).await, b"slow200.fast0.");
    }

    #[actix::test]
    async fn a_half_closed_client_gets_every_answer_then_end_of_file() {
        let mut session = echo_session(config(64));
        session.client.write_all(b"a? b?\nc10?").await.unwrap();
        session.client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut session.client).await, b"a.b.c10.");
        ended(&session.live).await;
    }

    #[actix::test]
    async fn a_client_that_closes_without_asking_is_closed_and_counted() {
        let mut session = echo_session(config(64));
        session.client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut session.client).await, b"");
        ended(&session.live).await;
    }

    #[actix::test]
    async fn a_partial_question_at_end_of_file_gets_no_answer() {
        let mut session = echo_session(config(64));
        session.client.write_all(b"a?Beautiful is").await.unwrap();
        session.client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut session.client).await, b"a.");
    }

    #[actix::test]
    async fn a_too_long_question_is_refused_after_the_questions_before_it() {
        let mut session = echo_session(config(8));
        session.client.write_all(b"a?bcdefghijk").await.unwrap();
        assert_eq!(read_to_end(&mut session.client).await, b"a.Error: question too long.");
    }

    #[actix::test]
    async fn draining_answers_what_was_asked_then_says_so_and_closes() {
        let mut session = echo_session(config(64));
        session.client.write_all(b"first300?").await.unwrap();
        session.oracle_received(b"first300?").await;
        session.registry.drain();
        assert_eq!(read_to_end(&mut session.client).await, b"first300.Error: server shutting down.");
        ended(&session.live).await;
    }

    #[actix::test]
    async fn a_client_asking_while_draining_is_answered_until_it_has_been_quiet_for_the_grace() {
        let mut session = echo_session(SessionConfig { drain_grace: Duration::from_millis(300), ..config(64) });
        session.client.write_all(b"a?").await.unwrap();
        assert_eq!(read_exactly(&mut session.client, 2).await, b"a.");
        session.registry.drain();
        // Between two questions when the drain starts: the next ones are still answered.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            session.client.write_all(b"b?").await.unwrap();
            assert_eq!(read_exactly(&mut session.client, 2).await, b"b.");
        }
        let quiet = Instant::now();
        assert_eq!(read_to_end(&mut session.client).await, b"Error: server shutting down.");
        assert!(quiet.elapsed() >= Duration::from_millis(250), "closed after {:?} of quiet", quiet.elapsed());
        ended(&session.live).await;
    }

    #[actix::test]
    async fn an_idle_session_closes_at_once_on_drain() {
        let mut session = echo_session(config(64));
        session.client.write_all(b"a?").await.unwrap();
        assert_eq!(read_exactly(&mut session.client, 2).await, b"a.");
        session.registry.drain();
        assert_eq!(read_to_end(&mut session.client).await, b"Error: server shutting down.");
    }

    #[actix::test]
    async fn questions_get_internal_errors_when_the_oracle_is_gone() {
        struct Gone;
        impl Actor for Gone {
            type Context = Context<Self>;
            fn started(&mut self, ctx: &mut Self::Context) {
                ctx.stop();
            }
        }
        impl Handler<Ask> for Gone {
            type Result = ();
            fn handle(&mut self, _: Ask, _: &mut Self::Context) {
                unreachable!("stopped before any question")
            }
        }
        let oracle = Gone.start().recipient();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while oracle.connected() {
            assert!(tokio::time::Instant::now() < deadline, "stub oracle did not stop");
            tokio::task::yield_now().await;
        }
        let (mut client, _live, _registry) = start_session(oracle, config(64));
        client.write_all(b"a?b?").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut client).await, b"Error: internal error.Error: internal error.");
    }

    /// Waits until the session has ended and given its permit back.
    async fn ended(live: &Admission) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while live.admitted() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the session did not end");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix::test]
    async fn a_client_that_reads_nothing_stops_being_read_until_it_reads() {
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
    async fn a_client_that_reads_nothing_for_the_write_timeout_is_dropped() {
        let timeouts =
            SessionConfig { max_pending_bytes: 1024, write_timeout: Duration::from_millis(200), ..config(64) };
        let session = echo_session(timeouts);
        let (_reader, mut writer) = tokio::io::split(session.client);
        tokio::spawn(async move { writer.write_all(&b"q?".repeat(50_000)).await });
        ended(&session.live).await;
    }

    #[actix::test]
    async fn a_client_dribbling_a_question_is_closed_at_the_idle_timeout() {
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
        assert!(started.elapsed() >= Duration::from_millis(250), "closed after {:?}", started.elapsed());
        dribble.abort();
    }

    #[actix::test]
    async fn a_session_that_keeps_asking_is_not_idle() {
        let mut session = echo_session(SessionConfig { idle_timeout: Duration::from_millis(200), ..config(64) });
        for _ in 0..8 {
            session.client.write_all(b"a?").await.unwrap();
            assert_eq!(read_exactly(&mut session.client, 2).await, b"a.");
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        assert_eq!(session.live.admitted(), 1, "closed while active");
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
                let threads = crate::threads::PerThread { here: Arbiter::current(), elsewhere: Vec::new() };
                let oracle = Oracle::start(table, OracleConfig::default(), &threads, &Metrics::disabled());
                let (client, _live, _registry) = start_session(oracle.shards.here.recipient(), config(max));
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
}
