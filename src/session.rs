//! [`ZenSession`]: one actor per client connection.
//!
//! Questions arrive as batches from [`ZenCodec`] over the read half (registered as a stream),
//! go to the [`Oracle`](crate::oracle::Oracle) as one [`Ask`] per batch, and the answers are
//! written through an `actix::io::FramedWrite` in the order the questions arrived, whatever
//! order the oracle's replies come back in: each batch takes a slot in a queue and the queue
//! is written out from the front as slots fill.
//!
//! Memory per session is bounded: the codec caps a question's bytes, and reading pauses
//! ([`Flow`]) while more than `max_pending_bytes` of answers wait to be sent or too many
//! questions wait for the oracle. The worker thread's sweeper ([`local_sessions`]) tells the
//! session when to check its timeouts: a connection that completes no question for
//! `idle_timeout` is closed, a client that reads nothing for `write_timeout` while answers wait
//! is dropped.
//!
//! The session ends when the client has sent end of file and every question received before
//! it is answered, when a question is too long (after saying so), when the server drains
//! (after answering what was already asked and saying so), on a timeout, or on any I/O error.
//! The [`ConnectionPermit`] it holds is given back to the server's count when it is dropped.

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{io::FramedWrite, io::WriteHandler, prelude::*};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_util::codec::FramedRead;

use crate::{
    backpressure::{Flow, GatedStream, TrackedWriter},
    codec::{CodecError, Incoming, READ_BUFFER_BYTES, ZenCodec},
    local_sessions::{self, Notice},
    oracle::Ask,
    protocol::{Answer, Answers, Questions},
    server::ConnectionPermit,
};

/// Questions a session may have waiting for the oracle before it stops reading.
pub const MAX_QUESTIONS_AT_ORACLE: usize = 256;

/// After refusing a too-long question, how long the session keeps reading (and discarding)
/// so that closing with unread input does not reset the connection before the client has
/// read the error.
pub const LINGER_AFTER_REFUSAL: Duration = Duration::from_secs(2);

/// Per-session limits.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Longest question accepted, `?` included.
    pub max_question_bytes: usize,
    /// Unsent answer bytes above which the session stops reading.
    pub max_pending_bytes: u64,
    /// A connection completing no question for this long is closed.
    pub idle_timeout: Duration,
    /// A client reading nothing for this long while answers wait is disconnected.
    pub write_timeout: Duration,
}

/// Who the session serves.
#[derive(Debug, Clone, Copy)]
pub struct SessionInfo {
    /// Unique within this process, in order of acceptance.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
}

/// What a session needs from the rest of the server; one per worker, shared by its sessions
/// through an `Arc` (a copy in every session would cost each idle connection ~150 bytes).
#[derive(Debug, Clone)]
pub struct SessionDeps {
    /// Where questions are answered.
    pub oracle: Recipient<Ask>,
    /// Limits.
    pub config: SessionConfig,
}

type AnswerWriter = FramedWrite<Answers, TrackedWriter, ZenCodec>;

/// One batch of answers, waiting for the oracle or ready to be written.
enum Slot {
    Waiting,
    Ready(Answers),
}

/// The actor serving one client.
pub struct ZenSession {
    info: SessionInfo,
    deps: Arc<SessionDeps>,
    /// Counts this connection as live until the session is dropped.
    _permit: ConnectionPermit,
    writer: AnswerWriter,
    flow: Rc<Flow>,
    read_stream: SpawnHandle,
    /// Batches in question order; the front is the next to be written.
    slots: VecDeque<Slot>,
    /// Sequence number of the front slot; a batch's slot is `seq - first_seq`.
    first_seq: u64,
    questions_at_oracle: usize,
    last_question: Instant,
    /// Still taking new questions.
    accepting: bool,
    /// The read stream is still running.
    reading: bool,
    close_requested: bool,
    write_failed: bool,
    answers_written: u64,
}

impl ZenSession {
    /// Starts a session on the current arbiter over any byte stream split in two halves.
    pub fn start<R, W>(
        read: R,
        write: W,
        info: SessionInfo,
        deps: Arc<SessionDeps>,
        permit: ConnectionPermit,
    ) -> Addr<Self>
    where
        R: AsyncRead + Unpin + 'static,
        W: AsyncWrite + Unpin + 'static,
    {
        ZenSession::create(move |ctx| {
            let config = deps.config;
            let codec = ZenCodec::new(config.max_question_bytes);
            let flow = Flow::new(config.max_pending_bytes);
            let reader = FramedRead::with_capacity(read, codec.clone(), READ_BUFFER_BYTES);
            let read_stream = ctx.add_stream(GatedStream::new(reader, flow.clone()));
            let writer = FramedWrite::new(TrackedWriter::new(Box::new(write), flow.clone()), codec, ctx);
            ZenSession {
                info,
                deps,
                _permit: permit,
                writer,
                flow,
                read_stream,
                slots: VecDeque::new(),
                first_seq: 0,
                questions_at_oracle: 0,
                last_question: Instant::now(),
                accepting: true,
                reading: true,
                close_requested: false,
                write_failed: false,
                answers_written: 0,
            }
        })
    }

    /// The span of this session's log events, created for each event rather than kept, which
    /// would cost every idle connection a few hundred bytes.
    fn span(&self) -> tracing::Span {
        tracing::info_span!("session", id = self.info.id, peer = %self.info.peer)
    }

    /// Starts a session on the current arbiter for an accepted TCP connection.
    pub fn start_tcp(
        stream: TcpStream,
        info: SessionInfo,
        deps: Arc<SessionDeps>,
        permit: ConnectionPermit,
    ) -> Addr<Self> {
        let (read, write) = stream.into_split();
        Self::start(read, write, info, deps, permit)
    }

    fn ask(&mut self, questions: Questions, ctx: &mut Context<Self>) {
        let seq = self.first_seq + self.slots.len() as u64;
        let count = questions.len();
        self.last_question = Instant::now();
        self.slots.push_back(Slot::Waiting);
        self.questions_at_oracle += count;
        if self.questions_at_oracle >= MAX_QUESTIONS_AT_ORACLE {
            self.flow.set_paused_for_oracle(true);
        }
        let request = self.deps.oracle.send(Ask(questions));
        ctx.spawn(request.into_actor(self).map(move |reply, session, ctx| {
            let answers = reply.unwrap_or_else(|error| {
                tracing::error!(parent: &session.span(), %error, "oracle did not answer");
                Answers::repeated(&Answer::INTERNAL_ERROR, count)
            });
            session.questions_at_oracle -= count;
            if session.questions_at_oracle < MAX_QUESTIONS_AT_ORACLE {
                session.flow.set_paused_for_oracle(false);
            }
            session.fill(seq, answers, ctx);
        }));
    }

    fn fill(&mut self, seq: u64, answers: Answers, ctx: &mut Context<Self>) {
        if let Some(slot) = seq.checked_sub(self.first_seq).and_then(|i| self.slots.get_mut(i as usize)) {
            *slot = Slot::Ready(answers);
        }
        self.write_ready(ctx);
    }

    /// Queues a last answer from the server itself and takes no more questions.
    fn finish_with(&mut self, answer: Answer, ctx: &mut Context<Self>) {
        self.accepting = false;
        self.slots.push_back(Slot::Ready(Answers::single(&answer)));
        self.write_ready(ctx);
    }

    fn write_ready(&mut self, ctx: &mut Context<Self>) {
        let mut bytes = 0;
        while let Some(Slot::Ready(_)) = self.slots.front() {
            let Some(Slot::Ready(answers)) = self.slots.pop_front() else { break };
            self.first_seq += 1;
            self.answers_written += answers.len() as u64;
            bytes += answers.as_bytes().len();
            self.writer.write(answers);
        }
        if bytes > 0 && self.flow.queued(bytes) {
            // Reading is paused until the client reads; make sure a stalled client is noticed.
            let waiting_since = self.flow.waiting_since().unwrap_or_else(Instant::now);
            local_sessions::check_timeouts_by(self.info.id, waiting_since + self.deps.config.write_timeout);
        }
        self.close_when_done(ctx);
    }

    fn close_when_done(&mut self, ctx: &mut Context<Self>) {
        if !self.accepting && self.slots.is_empty() && !self.close_requested {
            self.close_requested = true;
            self.flow.shut_down_after_flush();
            self.writer.close();
            // `close()` wakes nothing, and the writer may already have been polled in this
            // pass of the context; a new item makes the context poll every item again.
            ctx.spawn(fut::ready(()));
        }
    }

    fn stop_reading(&mut self, ctx: &mut Context<Self>) {
        ctx.cancel_future(self.read_stream);
        self.reading = false;
        self.accepting = false;
    }

    fn check_timeouts(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let next = if self.flow.backlog() > 0 {
            let due = self.flow.waiting_since().unwrap_or(now) + self.deps.config.write_timeout;
            if now >= due {
                tracing::info!(parent: &self.span(), unsent = self.flow.backlog(), "client stopped reading; disconnecting");
                ctx.stop();
                return;
            }
            due
        } else if self.accepting && self.slots.is_empty() {
            let due = self.last_question + self.deps.config.idle_timeout;
            if now >= due {
                tracing::info!(parent: &self.span(), "idle timeout; closing");
                self.stop_reading(ctx);
                self.close_when_done(ctx);
                return;
            }
            due
        } else {
            now + self.deps.config.idle_timeout.min(self.deps.config.write_timeout)
        };
        local_sessions::check_timeouts_at(self.info.id, next);
    }
}

impl Actor for ZenSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(parent: &self.span(), "connection accepted");
        let check_at = Instant::now() + self.deps.config.idle_timeout;
        if local_sessions::register(self.info.id, ctx.address().recipient(), check_at) {
            ctx.notify(Notice::Drain);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        local_sessions::unregister(self.info.id);
        tracing::info!(parent: &self.span(), answers = self.answers_written, "connection closed");
    }
}

impl StreamHandler<Result<Incoming, CodecError>> for ZenSession {
    fn handle(&mut self, item: Result<Incoming, CodecError>, ctx: &mut Self::Context) {
        match item {
            Ok(Incoming::Questions(questions)) if self.accepting => self.ask(questions, ctx),
            Ok(Incoming::Questions(_)) => {}
            Ok(Incoming::TooLong) => {
                tracing::info!(parent: &self.span(), limit = self.deps.config.max_question_bytes, "question too long");
                self.finish_with(Answer::QUESTION_TOO_LONG, ctx);
            }
            Ok(Incoming::PartialAtEof(bytes)) => {
                tracing::info!(parent: &self.span(), partial = %bytes.escape_ascii(), "client sent part of a question, then closed");
            }
            Err(CodecError::Io(error)) => {
                tracing::info!(parent: &self.span(), %error, "read failed");
            }
        }
    }

    /// End of input: answer everything already asked, then close (the client may have only
    /// shut down its sending side).
    fn finished(&mut self, ctx: &mut Self::Context) {
        self.reading = false;
        self.accepting = false;
        if self.writer.closed() {
            ctx.stop();
        } else {
            self.close_when_done(ctx);
        }
    }
}

impl Handler<Notice> for ZenSession {
    type Result = ();

    fn handle(&mut self, notice: Notice, ctx: &mut Self::Context) {
        match notice {
            // Stop reading, answer what was already asked, say so, and close.
            Notice::Drain if self.accepting => {
                tracing::debug!(parent: &self.span(), "draining");
                self.stop_reading(ctx);
                self.finish_with(Answer::SHUTTING_DOWN, ctx);
            }
            Notice::Drain => {}
            Notice::CheckTimeouts => self.check_timeouts(ctx),
        }
    }
}

impl WriteHandler<io::Error> for ZenSession {
    fn error(&mut self, error: io::Error, _ctx: &mut Self::Context) -> Running {
        tracing::info!(parent: &self.span(), %error, "write failed");
        self.write_failed = true;
        Running::Stop
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if self.reading && !self.write_failed {
            ctx.run_later(LINGER_AFTER_REFUSAL, |_, ctx| ctx.stop());
        } else {
            ctx.stop();
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
        protocol::{AnswersBuilder, Question},
        server::ConnectionCount,
    };

    /// Answers `q?` with `q.`, after sleeping as many milliseconds as the question's digits
    /// say; reports each question it receives.
    struct EchoOracle(mpsc::UnboundedSender<Question>);

    impl Actor for EchoOracle {
        type Context = Context<Self>;
    }

    impl Handler<Ask> for EchoOracle {
        type Result = ResponseFuture<Answers>;

        fn handle(&mut self, Ask(questions): Ask, _ctx: &mut Self::Context) -> Self::Result {
            for question in questions.iter() {
                let _ = self.0.send(questions.question(question));
            }
            Box::pin(async move {
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
                answers.finish()
            })
        }
    }

    struct Harness {
        client: DuplexStream,
        /// Counts the session until it has ended.
        live: ConnectionCount,
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
        }
    }

    /// The duplex pipe's buffer, in each direction: what a socket's kernel buffers would hold.
    const PIPE_BYTES: usize = 4096;

    fn start_session(oracle: Recipient<Ask>, config: SessionConfig) -> (DuplexStream, ConnectionCount) {
        let (client, server_side) = tokio::io::duplex(PIPE_BYTES);
        let (read, write) = tokio::io::split(server_side);
        let live = ConnectionCount::default();
        let info = SessionInfo { id: 1, peer: "127.0.0.1:9".parse().unwrap() };
        ZenSession::start(read, write, info, Arc::new(SessionDeps { oracle, config }), live.admit());
        (client, live)
    }

    fn echo_session(config: SessionConfig) -> Harness {
        let (seen, asked) = mpsc::unbounded_channel();
        let (client, live) = start_session(EchoOracle(seen).start().recipient(), config);
        Harness { client, live, asked }
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
        local_sessions::drain_this_thread();
        assert_eq!(read_to_end(&mut session.client).await, b"first300.Error: server shutting down.");
        ended(&session.live).await;
    }

    #[actix::test]
    async fn an_idle_session_closes_at_once_on_drain() {
        let mut session = echo_session(config(64));
        session.client.write_all(b"a?").await.unwrap();
        assert_eq!(read_exactly(&mut session.client, 2).await, b"a.");
        local_sessions::drain_this_thread();
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
            type Result = Answers;
            fn handle(&mut self, _: Ask, _: &mut Self::Context) -> Answers {
                unreachable!("stopped before any question")
            }
        }
        let oracle = Gone.start().recipient();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while oracle.connected() {
            assert!(tokio::time::Instant::now() < deadline, "stub oracle did not stop");
            tokio::task::yield_now().await;
        }
        let (mut client, _live) = start_session(oracle, config(64));
        client.write_all(b"a?b?").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut client).await, b"Error: internal error.Error: internal error.");
    }

    /// Waits until the session has ended and given its permit back.
    async fn ended(live: &ConnectionCount) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while live.get() > 0 {
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
        assert_eq!(session.live.get(), 1, "closed while active");
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
                let oracle = Oracle::new(table, OracleConfig::default()).start();
                let (client, _live) = start_session(oracle.recipient(), config(max));
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
