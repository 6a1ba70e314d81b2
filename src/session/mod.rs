//! [`ZenSession`]: one actor per client connection.
//!
//! The question's path: the session reads the socket's read half itself ([`QuestionReader`],
//! batches of questions decoded by [`ZenCodec`], read only while [`Flow`] control allows); each
//! batch goes to the oracle replica of the session's thread as one [`Ask`]; each reply
//! ([`Answered`], taken from the session's [`Inbox`]) fills the batch's slot in a queue kept in
//! question order, and the queue is written from the front to the
//! [`AnswerSink`] as slots fill, whatever order the replies come back in.
//!
//! A session moves through phases (`Phase`): serving; draining (still taking questions while the
//! client keeps asking, until it has been quiet for `drain_grace`); finishing (no new questions,
//! answering those asked); closing (every answer with the sink, which writes them out and then
//! shuts down the sending side); and, after a last answer of the server's own (refusing a
//! question, or saying the server is shutting down), lingering (reading and discarding until
//! the client closes, so that closing with unread input does not reset the connection before
//! the client has read that answer). It ends when the client has closed and every question
//! received before is answered, when a question is too long (after saying so), when the server
//! drains (after answering what was asked and saying so), on a timeout, or on any I/O error.
//!
//! # Memory
//!
//! What a connection can make the server hold is bounded in bytes. The session counts what it
//! owes its client: for each question at the oracle, the question's bytes and the longest
//! answer the oracle can give ([`AnswerBound`]); answers back from the oracle that wait for
//! earlier ones; and answers the socket has not taken yet (the [`AnswerSink`]'s backlog). A
//! batch of questions read is asked only as far as what is owed stays within
//! `max_pending_bytes`; the rest of the batch is held back, and reading paused ([`Flow`]),
//! until enough is written out. When nothing is owed, one question is asked whatever it costs
//! (or a question whose answer is longer than the mark could never be asked). So a connection
//! holds at most:
//!
//! - what it is owed: `max(max_pending_bytes, max_question_bytes + longest answer)`;
//! - its read buffer: an unfinished question (less than `max_question_bytes`) and a read's
//!   worth beyond it ([`READ_BUFFER_BYTES`]), in an allocation that grows by doubling;
//! - questions held back: cut from one read buffer, so as many bytes at most;
//! - the session itself: its actor, mailbox and place in the registry ([`SESSION_BYTES`]).
//!
//! [`SessionConfig::most_bytes_held`] adds these up.
//!
//! Questions and answers beyond that stay in the kernel's socket buffers (bounded by the
//! kernel, not counted in the process's memory). A reload that makes the longest answer longer
//! counts the new length for questions asked after it.
//!
//! The worker's [`SessionRegistry`] tells the session when its timeouts are due: a connection
//! completing no question for `idle_timeout` is closed, a client reading nothing for
//! `write_timeout` while answers wait is dropped. The connection's [`Permit`] goes back to the
//! server's admission when the session is dropped, however it ends.
//!
//! - [`flow`]: pausing and resuming reading.
//! - [`reader`]: the read half, decoded into questions.
//! - [`sink`]: the write half, with its backlog and explicit half-close.
//! - [`registry`]: one worker's sessions, their deadlines and drain.

pub mod flow;
pub mod reader;
pub mod registry;
pub mod sink;

use std::{cell::Cell, collections::VecDeque, io, net::SocketAddr, pin::Pin, rc::Rc, task, time::Duration};

use actix::{fut::ActorFuture, prelude::*};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    time::Instant,
};

use self::{
    flow::Flow,
    reader::{QuestionReader, READ_BUFFER_BYTES},
    registry::{Notice, RegistryKey, SessionRegistry},
    sink::AnswerSink,
};
use crate::{
    admission::Permit,
    codec::{CodecError, Incoming},
    inbox::Inbox,
    metrics::{CloseReason, Metrics, Outcome, Tally},
    oracle::{AnswerBound, Answered, Ask, Asks},
    protocol::{Answer, Answers, Questions},
};

/// What a session costs besides its buffers: its actor, mailbox, inbox, both halves of its
/// connection and place in the registry. An idle connection measures about 2.2 KiB in all, its
/// 256-byte read buffer included (`scripts/bench.sh`, 10,000 idle connections).
pub const SESSION_BYTES: usize = 3 * 1024;

/// Events read and handled in one poll of a session at most.
const READS_PER_POLL: usize = 16;

/// After its last answer (refusing a too-long question, or telling the client the server is
/// shutting down), how long the session keeps reading and discarding, so that closing with
/// unread input does not reset the connection before the client has read that answer.
pub const LINGER_AFTER_LAST_ANSWER: Duration = Duration::from_secs(2);

/// Per-session limits.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Longest question accepted, `?` included.
    pub max_question_bytes: usize,
    /// Bytes owed to the client (see the module's memory bound) above which the session stops
    /// asking and reading.
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

impl SessionConfig {
    /// The most bytes one connection can make the server hold while the oracle's longest
    /// answer is `longest_answer` bytes (see the module's memory bound).
    pub fn most_bytes_held(&self, longest_answer: usize) -> usize {
        let owed = self.max_pending_bytes.max(self.max_question_bytes + longest_answer);
        let read_buffer = 2 * (self.max_question_bytes + READ_BUFFER_BYTES);
        let held_back = read_buffer;
        owed + read_buffer + held_back + SESSION_BYTES
    }
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
    /// Where questions are answered: the oracle replica of this thread.
    pub oracle: Asks,
    /// The longest answer the oracle can give, counted for every question asked.
    pub answer_bound: AnswerBound,
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
    /// Shut down after a last answer of the server's own (a refusal, or the server shutting
    /// down); discarding input until the client closes or [`LINGER_AFTER_LAST_ANSWER`] has
    /// passed.
    Lingering,
}

/// Whether the client's input is still read once the session takes no more questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Read and thrown away (after the server's own last answer), until the client closes.
    Discarding,
    /// At end of file, failed, or no longer read.
    Ended,
}

/// One batch of questions on its way to answers, and when its questions were read (for the
/// latency metric; none for the server's own last answer).
struct Slot {
    read_at: Option<Instant>,
    batch: Batch,
}

/// Where a batch is.
enum Batch {
    /// Read, held back until what is owed leaves room (only ever the last slot).
    Unasked(Questions),
    /// Asked; counted as `owed` bytes until its answers come.
    AtOracle { owed: usize },
    /// Answered, waiting for the batches before it.
    Answered(Answers),
}

/// The actor serving one client.
pub struct ZenSession {
    info: SessionInfo,
    deps: Rc<SessionDeps>,
    key: RegistryKey,
    /// The oracle's answers, sent by the replica to this inbox and taken by [`Connection`].
    answers: Inbox<Answered>,
    /// Counts this connection as admitted until the session is dropped.
    permit: Permit,
    sink: AnswerSink,
    flow: Flow,
    /// The client's input, while it is read.
    reader: Option<QuestionReader>,
    phase: Phase,
    /// Batches in question order; the front is the next to be written.
    slots: VecDeque<Slot>,
    /// Sequence number of the front slot; a batch's slot is `seq - first_seq`.
    first_seq: u64,
    /// Bytes owed to the client in `slots`: for batches at the oracle, their questions and
    /// longest possible answers; for answered ones, their answers. (The sink's backlog is the
    /// rest of what is owed.)
    owed_in_slots: usize,
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
            // The context's one item takes the oracle's answers, reads, and writes, in that
            // order; the context polls it after handling messages, so whatever is sent in a
            // poll is written at its end, in one write.
            ctx.spawn(Connection);
            let now = Instant::now();
            let key = deps.registry.register(ctx.address().recipient(), now + config.idle_timeout);
            ZenSession {
                info,
                key,
                answers: Inbox::default(),
                deps,
                permit,
                sink: AnswerSink::new(Box::new(write)),
                flow: Flow::new(config.max_pending_bytes),
                reader: Some(QuestionReader::new(Box::new(read), config.max_question_bytes)),
                phase: Phase::Serving,
                // Room for one batch, not the four a first push would make: a client asking
                // one question at a time needs no more, and an idle connection keeps it.
                slots: VecDeque::with_capacity(1),
                first_seq: 0,
                owed_in_slots: 0,
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

    /// Asks for questions read, as far as what is owed allows; holds back the rest.
    fn ask(&mut self, questions: Questions) {
        self.last_question = Instant::now();
        let read_at = Some(self.last_question);
        let (owed, cost) = (self.owed(), questions.cost(self.deps.answer_bound.get()));
        if owed + cost <= self.flow.high_water() {
            // The usual case, all at once.
            let seq = self.first_seq + self.slots.len() as u64;
            self.slots.push_back(Slot { read_at, batch: Batch::AtOracle { owed: cost } });
            self.owed_in_slots += cost;
            self.send_to_oracle(questions, seq);
            self.flow.set_owed(self.owed(), false);
        } else {
            self.slots.push_back(Slot { read_at, batch: Batch::Unasked(questions) });
            self.ask_held_back();
        }
    }

    /// Bytes owed to the client, in all.
    fn owed(&self) -> usize {
        self.owed_in_slots + self.sink.backlog()
    }

    /// Asks for the questions held back in the last slot, as many as fit within
    /// `max_pending_bytes` of what is owed (one at least when nothing is owed); tells flow
    /// control whether to read.
    fn ask_held_back(&mut self) {
        let owed = self.owed();
        let next_seq = self.first_seq + self.slots.len() as u64;
        let (room, per_question) = (self.flow.high_water().saturating_sub(owed), self.deps.answer_bound.get());
        if let Some(slot) = self.slots.back_mut()
            && let Batch::Unasked(held) = &mut slot.batch
            && let Some((questions, cost)) = held.take_within(room, per_question, owed == 0)
        {
            let rest = (!held.is_empty()).then(|| std::mem::take(held));
            slot.batch = Batch::AtOracle { owed: cost };
            let read_at = slot.read_at;
            self.owed_in_slots += cost;
            if let Some(rest) = rest {
                self.slots.push_back(Slot { read_at, batch: Batch::Unasked(rest) });
            }
            self.send_to_oracle(questions, next_seq - 1);
        }
        self.flow.set_owed(self.owed(), self.holds_questions());
    }

    /// Whether questions read are held back, unasked (only ever in the last slot).
    fn holds_questions(&self) -> bool {
        matches!(self.slots.back(), Some(Slot { batch: Batch::Unasked(_), .. }))
    }

    /// What is owed went down: asks for questions held back, if there are any, and tells flow
    /// control.
    fn owed_less(&mut self) {
        if self.holds_questions() {
            self.ask_held_back();
        } else {
            self.flow.set_owed(self.owed(), false);
        }
    }

    fn send_to_oracle(&mut self, questions: Questions, seq: u64) {
        // The replica's inbox has no bound: the session bounds what it has at the oracle itself.
        let ask = Ask { questions, seq, reply_to: self.answers.sender() };
        if let Err(Ask { questions, .. }) = self.deps.oracle.send(ask) {
            tracing::error!(parent: &self.span(), "oracle is gone; answering with internal errors");
            let count = questions.len();
            self.deps.tally.answered(Outcome::InternalError, count as u64);
            self.fill(seq, Answers::repeated(&Answer::INTERNAL_ERROR, count));
        }
    }

    /// Puts the answers to batch `seq` in its slot and sends what is ready.
    fn fill(&mut self, seq: u64, answers: Answers) {
        if let Some(slot) = seq.checked_sub(self.first_seq).and_then(|i| self.slots.get_mut(i as usize))
            && let Batch::AtOracle { owed } = slot.batch
        {
            self.owed_in_slots = self.owed_in_slots - owed + answers.as_bytes().len();
            slot.batch = Batch::Answered(answers);
        }
        self.write_ready();
    }

    /// Queues a last answer from the server itself and takes no more questions.
    fn finish_with(&mut self, answer: Answer, input: Input) {
        self.phase = Phase::Finishing(input);
        self.owed_in_slots += answer.as_bytes().len();
        self.slots.push_back(Slot { read_at: None, batch: Batch::Answered(Answers::single(&answer)) });
        self.write_ready();
    }

    /// Sends the answers at the front of the queue that are ready.
    fn write_ready(&mut self) {
        let mut now = None;
        while let Some(Slot { batch: Batch::Answered(_), .. }) = self.slots.front() {
            let Some(Slot { read_at, batch: Batch::Answered(answers) }) = self.slots.pop_front() else { break };
            self.first_seq += 1;
            self.answers_written += answers.len() as u64;
            self.owed_in_slots -= answers.as_bytes().len();
            self.sink.send(answers);
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

    fn close_when_answered(&mut self) {
        if let Phase::Finishing(input) = self.phase
            && self.slots.is_empty()
        {
            self.phase = Phase::Closing(input);
            self.sink.close();
        }
    }

    fn stop_reading(&mut self) {
        self.reader = None;
    }

    /// Reads and handles what the client sent, while flow control allows, up to
    /// [`READS_PER_POLL`] events (then the task is woken to go on, so that a client sending
    /// without pause cannot keep the others of its thread waiting).
    fn read_questions(&mut self, ctx: &mut Context<Self>, task: &mut task::Context<'_>) {
        for _ in 0..READS_PER_POLL {
            let Some(reader) = &mut self.reader else { return };
            if self.flow.is_paused() {
                self.flow.wake_on_resume(task.waker());
                return;
            }
            let tally = &self.deps.tally;
            match reader.poll_next(task, |bytes| tally.received(bytes)) {
                task::Poll::Pending => return,
                task::Poll::Ready(Some(incoming)) => self.incoming(incoming),
                task::Poll::Ready(None) => {
                    self.reader = None;
                    self.input_ended(ctx);
                    return;
                }
            }
        }
        task.waker().wake_by_ref();
    }

    /// What the client sent.
    fn incoming(&mut self, incoming: Result<Incoming, CodecError>) {
        match incoming {
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

    /// Writes out what waits in the sink, and closes it once asked to; nothing once it is shut
    /// down.
    fn poll_sink(&mut self, ctx: &mut Context<Self>, task: &mut task::Context<'_>) {
        if self.phase == Phase::Lingering {
            return;
        }
        let closing = self.sink.is_closing();
        let result = if closing { self.sink.poll_close(task) } else { self.sink.poll_write_out(task) };
        let sent = self.sink.take_sent();
        if sent > 0 {
            self.deps.tally.sent(sent);
            self.owed_less();
        }
        match result {
            task::Poll::Ready(Ok(())) if closing => self.sending_shut_down(ctx),
            task::Poll::Ready(Ok(())) => {}
            task::Poll::Pending => {
                // The client takes nothing: its write timeout runs from when it stopped.
                if let Some(since) = self.sink.stalled_since() {
                    self.deps.registry.check_by(self.key, since + self.deps.config.get().write_timeout);
                }
            }
            task::Poll::Ready(Err(error)) => self.write_failed(&error, ctx),
        }
    }

    /// Every answer is written and the client told end of file.
    fn sending_shut_down(&mut self, ctx: &mut Context<Self>) {
        if self.phase == Phase::Closing(Input::Discarding) {
            self.phase = Phase::Lingering;
            self.permit.linger();
            // Nothing is owed any more: read (and discard) whatever comes.
            self.flow.set_owed(0, false);
            ctx.run_later(LINGER_AFTER_LAST_ANSWER, |_, ctx| ctx.stop());
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
                self.ending(CloseReason::Shutdown);
                self.finish_with(Answer::SHUTTING_DOWN, Input::Discarding);
                return;
            } else {
                due
            }
        } else if self.phase == Phase::Serving && self.slots.is_empty() {
            let due = self.last_question + config.idle_timeout;
            if now >= due {
                tracing::info!(parent: &self.span(), "idle timeout; closing");
                self.ending(CloseReason::IdleTimeout);
                self.stop_reading();
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

/// The one item of a session's context, polled whenever the session is: takes the oracle's
/// answers, reads what the client sent, and writes out what is ready (closing the sink when asked
/// to). The session ends by stopping its context, never by this item ending.
struct Connection;

impl ActorFuture<ZenSession> for Connection {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        session: &mut ZenSession,
        ctx: &mut Context<ZenSession>,
        task: &mut task::Context<'_>,
    ) -> task::Poll<()> {
        if ctx.state().alive() {
            // Answers first: what they settle is no longer counted at its upper bound when
            // the questions read next are weighed against what may be owed.
            while let task::Poll::Ready(answered) = session.answers.poll_recv(task) {
                session.answered(answered, ctx);
            }
            session.read_questions(ctx, task);
            session.poll_sink(ctx, task);
        }
        task::Poll::Pending
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

impl Handler<Notice> for ZenSession {
    type Result = ();

    fn handle(&mut self, notice: Notice, ctx: &mut Self::Context) {
        match notice {
            Notice::Drain => self.drain(ctx),
            Notice::CheckTimeouts => self.check_timeouts(ctx),
        }
    }
}

impl ZenSession {
    /// The oracle's answers to one batch.
    fn answered(&mut self, Answered { seq, answers }: Answered, ctx: &mut Context<Self>) {
        self.fill(seq, answers);
        self.owed_less();
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
        inbox,
        protocol::{AnswersBuilder, Question},
    };

    /// Answers `q?` with `q.`, after sleeping as many milliseconds as the question's digits
    /// say; reports each question it receives.
    struct EchoOracle(mpsc::UnboundedSender<Question>);

    impl Actor for EchoOracle {
        type Context = Context<Self>;
    }

    impl StreamHandler<Ask> for EchoOracle {
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
                let _ = reply_to.send(Answered { seq, answers: answers.finish() });
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

    /// Starts a session over an in-memory pipe, with a registry of its own whose timers run,
    /// asking `oracle`, whose answers are at most as long as the book's error answers.
    fn start_session(oracle: Asks, config: SessionConfig) -> (DuplexStream, Admission, Rc<SessionRegistry>) {
        start_session_bounded(oracle, AnswerBound::of(&crate::oracle::AnswerTable::default()), config)
    }

    /// [`start_session`] with answers at most `answer_bound` long.
    fn start_session_bounded(
        oracle: Asks,
        answer_bound: AnswerBound,
        config: SessionConfig,
    ) -> (DuplexStream, Admission, Rc<SessionRegistry>) {
        let (client, server_side) = tokio::io::duplex(PIPE_BYTES);
        let (read, write) = tokio::io::split(server_side);
        let live = Admission::new(10);
        let registry = SessionRegistry::new();
        actix_rt::spawn(registry.clone().run_timers());
        let info = SessionInfo { id: 1, peer: "127.0.0.1:9".parse().unwrap() };
        let deps = Rc::new(SessionDeps {
            oracle,
            answer_bound,
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
        let (client, live, registry) = start_session(inbox::start(EchoOracle(seen)), config);
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
        tokio::time::pause();
        let mut session = echo_session(config(64));
        session.client.write_all(b"slow200?").await.unwrap();
        session.oracle_received(b"slow200?").await; // so the next question is another batch
        session.client.write_all(b"fast0?").await.unwrap();
        session.client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut session.client).await, b"slow200.fast0.");
    }

    #[actix::test]
    async fn a_half_closed_client_gets_every_answer_then_end_of_file() {
        tokio::time::pause();
        let mut session = echo_session(config(64));
        session.client.write_all(b"a? b?\nc10?").await.unwrap();
        session.client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut session.client).await, b"a.b.c10.");
        ended(&session.live).await;
    }

    #[actix::test]
    async fn a_client_that_closes_without_asking_is_closed_and_counted() {
        tokio::time::pause();
        let mut session = echo_session(config(64));
        session.client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut session.client).await, b"");
        ended(&session.live).await;
    }

    #[actix::test]
    async fn a_partial_question_at_end_of_file_gets_no_answer() {
        tokio::time::pause();
        let mut session = echo_session(config(64));
        session.client.write_all(b"a?Beautiful is").await.unwrap();
        session.client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut session.client).await, b"a.");
    }

    #[actix::test]
    async fn a_too_long_question_is_refused_after_the_questions_before_it() {
        tokio::time::pause();
        let mut session = echo_session(config(8));
        session.client.write_all(b"a?bcdefghijk").await.unwrap();
        assert_eq!(read_to_end(&mut session.client).await, b"a.Error: question too long.");
    }

    #[actix::test]
    async fn draining_answers_what_was_asked_then_says_so_and_closes() {
        tokio::time::pause();
        let mut session = echo_session(config(64));
        session.client.write_all(b"first300?").await.unwrap();
        session.oracle_received(b"first300?").await;
        session.registry.drain();
        assert_eq!(read_to_end(&mut session.client).await, b"first300.Error: server shutting down.");
        ended(&session.live).await;
    }

    #[actix::test]
    async fn a_client_asking_while_draining_is_answered_until_it_has_been_quiet_for_the_grace() {
        tokio::time::pause();
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
        let quiet = quiet.elapsed();
        assert!(is_due_at(quiet, 300), "told after {quiet:?} of quiet, not the grace");
        ended(&session.live).await;
    }

    #[actix::test]
    async fn after_saying_the_server_is_shutting_down_a_session_lingers_reading_until_the_client_closes() {
        tokio::time::pause();
        let mut session = echo_session(config(64));
        session.client.write_all(b"a?").await.unwrap();
        assert_eq!(read_exactly(&mut session.client, 2).await, b"a.");
        session.registry.drain();
        assert_eq!(read_to_end(&mut session.client).await, b"Error: server shutting down.");
        // A question sent just then is read and dropped, not met with a closed connection.
        session.client.write_all(b"b?").await.unwrap();
        settle().await;
        assert_eq!((session.live.admitted(), session.live.unfinished()), (1, 0), "open, lingering, and owed nothing");
        session.client.shutdown().await.unwrap();
        ended(&session.live).await;
    }

    #[actix::test]
    async fn a_session_lingers_after_its_last_answer_no_longer_than_the_linger_time() {
        tokio::time::pause();
        let mut session = echo_session(config(64));
        session.registry.drain();
        assert_eq!(read_to_end(&mut session.client).await, b"Error: server shutting down.");
        let told = Instant::now();
        ended(&session.live).await;
        let lingered = told.elapsed();
        // `ended` looks every 5 ms.
        let linger = LINGER_AFTER_LAST_ANSWER..=LINGER_AFTER_LAST_ANSWER + Duration::from_millis(5);
        assert!(linger.contains(&lingered), "lingered {lingered:?}");
    }

    #[actix::test]
    async fn an_idle_session_closes_at_once_on_drain() {
        tokio::time::pause();
        let mut session = echo_session(config(64));
        session.client.write_all(b"a?").await.unwrap();
        assert_eq!(read_exactly(&mut session.client, 2).await, b"a.");
        session.registry.drain();
        assert_eq!(read_to_end(&mut session.client).await, b"Error: server shutting down.");
    }

    #[actix::test]
    async fn questions_get_internal_errors_when_the_oracle_is_gone() {
        tokio::time::pause();
        let (oracle, gone) = inbox::inbox();
        drop(gone);
        let (mut client, _live, _registry) = start_session(oracle, config(64));
        client.write_all(b"a?b?").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut client).await, b"Error: internal error.Error: internal error.");
    }

    /// Whether `elapsed` (on the paused clock) is `ms` milliseconds, as the timer wheel's
    /// millisecond ticks give it: not earlier, and at most one tick later.
    fn is_due_at(elapsed: Duration, ms: u64) -> bool {
        (Duration::from_millis(ms)..=Duration::from_millis(ms + 1)).contains(&elapsed)
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
    async fn a_client_that_reads_nothing_for_the_write_timeout_is_dropped() {
        tokio::time::pause();
        let timeouts =
            SessionConfig { max_pending_bytes: 1024, write_timeout: Duration::from_millis(200), ..config(64) };
        let session = echo_session(timeouts);
        let (_reader, mut writer) = tokio::io::split(session.client);
        tokio::spawn(async move { writer.write_all(&b"q?".repeat(50_000)).await });
        ended(&session.live).await;
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

    #[actix::test]
    async fn a_session_that_keeps_asking_is_not_idle() {
        tokio::time::pause();
        let mut session = echo_session(SessionConfig { idle_timeout: Duration::from_millis(200), ..config(64) });
        for _ in 0..8 {
            session.client.write_all(b"a?").await.unwrap();
            assert_eq!(read_exactly(&mut session.client, 2).await, b"a.");
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        assert_eq!(session.live.admitted(), 1, "closed while active");
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

    impl StreamHandler<Ask> for SizedOracle {
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
        let table = crate::oracle::AnswerTable::new([(
            "q?".to_owned(),
            String::from_utf8_lossy(answer.as_bytes()).into_owned(),
        )]);
        let (batches, asked) = mpsc::unbounded_channel();
        let oracle = inbox::start(SizedOracle { answer: answer.clone(), batches });
        let config = SessionConfig { max_pending_bytes, ..config(64) };
        let (client, live, _registry) = start_session_bounded(oracle, AnswerBound::of(&table.unwrap()), config);
        (client, live, asked, answer)
    }

    /// Waits until the runtime has nothing left to do.
    async fn settle() {
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
        settle().await;
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
                let oracle = Oracle::start(std::sync::Arc::new(table), OracleConfig::default(), &Metrics::disabled());
                let replica = oracle.start_replica();
                let (client, _live, _registry) = start_session_bounded(replica, oracle.answer_bound(), config(max));
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
