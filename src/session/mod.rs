//! [`ZenSession`]: one actor per client connection.
//!
//! Its protocol is its handlers:
//!
//! - `StreamHandler<Result<Incoming, CodecError>>`: what the client sent, decoded into batches of
//!   questions by [`QuestionReader`], registered on the session's context to be read only while
//!   its [`Flow`] control allows ([`flow::add_gated_stream`]);
//! - `Handler<Answered>`: the oracle's answers to one batch, from the replica of the session's
//!   thread, through the session's same-thread [`Inbox`](crate::inbox::Inbox);
//! - `Handler<Notice>`: from its worker's [`SessionRegistry`], drain, or check the timeouts.
//!
//! Each batch of questions is sent to the replica as one [`Ask`], numbered, and given its slot in
//! the session's [`AnswerQueue`]; answers fill their slots in whatever order they come and are
//! handed to the [`AnswerSink`] from the front, so they leave in question order. The sink is the
//! context's last item (`Writer`): whatever a wake-up of the session produced goes out in one
//! write at its end.
//!
//! A session's life is one [`Phase`], each holding what only it has: serving (reading, asking,
//! answering); draining (still taking questions while the client keeps asking, until it has been
//! quiet for `drain_grace`); answering (no new questions, answering those asked); closing (every
//! answer with the sink, which writes them out and then shuts down the sending side); lingering
//! (after a last answer of the server's own, reading and discarding until the client closes, so
//! that closing with unread input does not reset the connection before the client has read that
//! answer); ended. The reason a connection ends is known from the moment it stops taking
//! questions, and counted when it ends: the client closed (after whole questions, or in the
//! middle of one), a question was too long, the server drained, a timeout, an I/O error.
//!
//! # Memory
//!
//! What a connection can make the server hold is bounded in bytes. The session counts what it
//! owes its client: for each question at the oracle, the question's bytes and the longest
//! answer the oracle can give ([`Snapshot::answer_bound`](crate::oracle::Snapshot)); answers back from the oracle that wait for
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
//! [`most_bytes_held`] adds these up.
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
//! - [`queue`]: batches in question order, from read to answered.
//! - [`sink`]: the write half, with its backlog and explicit half-close.
//! - [`registry`]: one worker's sessions, their deadlines and drain.

pub mod flow;
pub mod queue;
pub mod reader;
pub mod registry;
pub mod sink;

use std::{net::SocketAddr, pin::Pin, rc::Rc, task, time::Duration};

use actix::{fut::ActorFuture, prelude::*};
use futures_core::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    time::Instant,
};

use self::{
    flow::{Flow, FlowControlled},
    queue::AnswerQueue,
    reader::{QuestionReader, READ_BUFFER_BYTES, ReaderContext},
    registry::{Notice, RegistryKey, SessionRegistry},
    sink::AnswerSink,
};
use crate::{
    admission::Permit,
    codec::{CodecError, Incoming},
    inbox,
    limits::SessionConfig,
    metrics::{CloseReason, Metrics, Outcome, Tally},
    oracle::{Answered, Ask, Asks, Live},
    protocol::{Answer, Answers, Questions},
};

/// What a session costs besides its buffers: its actor, mailbox, inbox, both halves of its
/// connection and place in the registry. An idle connection measures about 2.2 KiB in all, its
/// 256-byte read buffer included (`scripts/bench.sh`, 10,000 idle connections).
pub const SESSION_BYTES: usize = 3 * 1024;

/// After its last answer (refusing a too-long question, or telling the client the server is
/// shutting down), how long the session keeps reading and discarding, so that closing with
/// unread input does not reset the connection before the client has read that answer.
pub const LINGER_AFTER_LAST_ANSWER: Duration = Duration::from_secs(2);

/// The most bytes one connection can make the server hold under `config` while the oracle's
/// longest answer is `longest_answer` bytes (see the module's memory bound).
pub fn most_bytes_held(config: &SessionConfig, longest_answer: usize) -> usize {
    let owed = config.max_pending_bytes.max(config.max_question_bytes.saturating_add(longest_answer));
    let read_buffer = config.max_question_bytes.saturating_add(READ_BUFFER_BYTES).saturating_mul(2);
    let held_back = read_buffer;
    owed.saturating_add(read_buffer).saturating_add(held_back).saturating_add(SESSION_BYTES)
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
    /// The snapshot a reload swaps: the limits every session reads, per batch, read and
    /// timeout check, and the longest answer counted for every question asked.
    pub live: Live,
    /// The sessions of this thread, for drain and timeouts.
    pub registry: Rc<SessionRegistry>,
    /// What this thread's sessions count, added to `metrics` now and then by the worker.
    pub tally: Tally,
    /// Where the counts go; also takes each batch's latency.
    pub metrics: Metrics,
}

/// What a client sent, as the session's stream of questions yields it.
pub type Received = Result<Incoming, CodecError>;

/// Where a session is in its life. Each phase holds what only it has: the means to stop
/// reading while questions are taken, the reason the connection ends from the moment it stops
/// taking them.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Taking questions and answering them.
    Serving {
        /// The stream of the client's questions, to cancel on an idle timeout.
        reading: SpawnHandle,
    },
    /// The server is draining: still taking questions, until the client has been quiet for
    /// `drain_grace` (counted from `since` at the earliest).
    Draining { since: Instant },
    /// Taking no more questions; answering those already asked.
    Answering { reason: CloseReason, input: Input },
    /// Every answer is with the sink, which writes them out, then shuts down sending.
    Closing { reason: CloseReason, input: Input },
    /// Sending shut down after a last answer of the server's own (a refusal, or the server
    /// shutting down); discarding input until the client closes or
    /// [`LINGER_AFTER_LAST_ANSWER`] has passed.
    Lingering { reason: CloseReason },
    /// Stopped.
    Ended { reason: CloseReason },
}

/// Whether the client's input is still read once the session takes no more questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Read and thrown away (after the server's own last answer), until the client closes.
    Discarded,
    /// At end of file, failed, or no longer read.
    Ended,
}

impl Phase {
    /// Why the connection ends; a session stopped while it still took questions was stopped
    /// with its thread, by the server shutting down.
    fn reason(self) -> CloseReason {
        match self {
            Phase::Serving { .. } | Phase::Draining { .. } => CloseReason::Shutdown,
            Phase::Answering { reason, .. }
            | Phase::Closing { reason, .. }
            | Phase::Lingering { reason }
            | Phase::Ended { reason } => reason,
        }
    }

    fn takes_questions(self) -> bool {
        matches!(self, Phase::Serving { .. } | Phase::Draining { .. })
    }
}

/// The actor serving one client.
pub struct ZenSession {
    info: SessionInfo,
    deps: Rc<SessionDeps>,
    key: RegistryKey,
    /// Where the oracle's answers go: this session's inbox, which its context reads.
    answers: inbox::Sender<Answered>,
    /// Counts this connection as admitted until the session is dropped.
    permit: Permit,
    phase: Phase,
    queue: AnswerQueue,
    sink: AnswerSink,
    flow: Flow,
    last_question: Instant,
    answers_written: u64,
}

impl ZenSession {
    /// Starts a session on the current arbiter for an accepted TCP connection.
    pub fn start_tcp(stream: TcpStream, info: SessionInfo, deps: Rc<SessionDeps>, permit: Permit) -> Addr<Self> {
        let (read, write) = stream.into_split();
        Self::start(read, write, info, deps, permit)
    }

    /// Starts a session on the current arbiter over any byte stream split in two halves.
    pub fn start<R, W>(read: R, write: W, info: SessionInfo, deps: Rc<SessionDeps>, permit: Permit) -> Addr<Self>
    where
        R: AsyncRead + Unpin + 'static,
        W: AsyncWrite + Unpin + 'static,
    {
        let questions = QuestionReader::new(read, deps.clone());
        Self::start_with(questions, write, info, deps, permit)
    }

    /// Starts a session on the current arbiter taking what its client sent from `received`
    /// (what [`ZenSession::start`] makes of a connection's read half) and writing its answers to
    /// `write`.
    pub fn start_with<S, W>(
        received: S,
        write: W,
        info: SessionInfo,
        deps: Rc<SessionDeps>,
        permit: Permit,
    ) -> Addr<Self>
    where
        S: Stream<Item = Received> + Unpin + 'static,
        W: AsyncWrite + Unpin + 'static,
    {
        ZenSession::create(move |ctx| {
            let idle_timeout = deps.live.limits().idle_timeout;
            let (answers, inbox) = inbox::inbox();
            // The context polls its items in this order on every wake-up, after its mailbox:
            // answers first (what they settle is no longer counted at its upper bound when the
            // questions read next are weighed against what may be owed), then questions, then
            // the writer, so that whatever the wake-up produced goes out in one write.
            ctx.add_message_stream(inbox);
            let reading = flow::add_gated_stream(received, ctx);
            ctx.spawn(Writer);
            let now = Instant::now();
            let key = deps.registry.register(ctx.address().recipient(), now + idle_timeout);
            ZenSession {
                info,
                key,
                answers,
                sink: AnswerSink::new(Box::new(write)),
                deps,
                permit,
                phase: Phase::Serving { reading },
                queue: AnswerQueue::default(),
                flow: Flow::default(),
                last_question: now,
                answers_written: 0,
            }
        })
    }

    /// The span of this session's log events, created for each event rather than kept, which
    /// would cost every idle connection a few hundred bytes.
    fn span(&self) -> tracing::Span {
        tracing::info_span!("session", id = self.info.id, peer = %self.info.peer)
    }

    /// Bytes owed to the client, in all.
    fn owed(&self) -> usize {
        self.queue.owed() + self.sink.backlog()
    }

    /// Questions read: asked as far as what is owed allows, the rest held back.
    fn questions(&mut self, questions: Questions) {
        if !self.phase.takes_questions() {
            return;
        }
        self.last_question = Instant::now();
        self.queue.push_questions(self.last_question, questions);
        self.ask_held(self.last_question);
    }

    /// Asks, at `now`, for the questions held, as many as fit within `max_pending_bytes` of
    /// what is owed (one at least when nothing is owed); tells flow control whether to read.
    fn ask_held(&mut self, now: Instant) {
        let live = self.deps.live.load();
        let (per_question, limits) = (live.answer_bound, live.limits);
        drop(live);
        while self.queue.holds_questions() {
            let owed = self.owed();
            let room = limits.max_pending_bytes.saturating_sub(owed);
            let Some((seq, questions)) = self.queue.next_to_ask(now, room, per_question, owed == 0) else { break };
            self.ask(seq, questions);
            // Answers that never come end the session then (see `check_timeouts`); a deadline
            // already set earlier stays, so the registry is not touched once per question.
            self.deps.registry.check_by(self.key, now + limits.write_timeout);
        }
        self.flow.set_owed(self.owed(), self.queue.holds_questions(), limits.max_pending_bytes);
    }

    /// Less is owed (answers came back at their real length, or the client took some): questions
    /// held back may be asked, and reading may resume.
    fn owed_less(&mut self) {
        if self.queue.holds_questions() || self.flow.is_paused() {
            self.ask_held(Instant::now());
        }
    }

    /// Sends batch `seq` to the oracle; answers it with internal errors if the oracle is gone.
    fn ask(&mut self, seq: u64, questions: Questions) {
        // The replica's inbox has no bound: the session bounds what it has at the oracle itself.
        let ask = Ask { questions, seq, reply_to: self.answers.clone() };
        if let Err(Ask { questions, .. }) = self.deps.oracle.send(ask) {
            tracing::error!(parent: &self.span(), "oracle is gone; answering with internal errors");
            let count = questions.len();
            self.deps.tally.answered(Outcome::InternalError, count as u64);
            self.queue.fill(seq, Answers::repeated(&Answer::INTERNAL_ERROR, count));
            self.write_ready();
        }
    }

    /// Hands the answers ready at the front of the queue to the sink; closes once every answer
    /// is there, if the session takes no more questions.
    fn write_ready(&mut self) {
        let mut now = None;
        while let Some((read_at, answers)) = self.queue.pop_answered() {
            self.answers_written += answers.len() as u64;
            self.sink.send(answers);
            if let Some(read_at) = read_at
                && self.deps.metrics.is_enabled()
            {
                let now = *now.get_or_insert_with(Instant::now);
                self.deps.metrics.record_latency(now - read_at);
            }
        }
        if let Phase::Answering { reason, input } = self.phase
            && self.queue.is_empty()
        {
            self.phase = Phase::Closing { reason, input };
        }
    }

    /// Takes no more questions, for `reason`; answers those asked, then closes. `last_word`,
    /// the server's own answer, comes after them, and the client's input is then read and
    /// thrown away until the client has read it.
    fn stop_taking_questions(&mut self, reason: CloseReason, last_word: Option<Answer>, input: Input) {
        self.phase = Phase::Answering { reason, input };
        if let Some(answer) = last_word {
            self.queue.push_last_word(answer);
            self.ask_held(Instant::now());
        }
        self.write_ready();
    }

    /// The client's input ended, for `reason`: every question read before is still answered.
    fn input_ended(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        match self.phase {
            Phase::Serving { .. } | Phase::Draining { .. } => self.stop_taking_questions(reason, None, Input::Ended),
            Phase::Answering { reason, .. } => self.phase = Phase::Answering { reason, input: Input::Ended },
            Phase::Closing { reason, .. } => self.phase = Phase::Closing { reason, input: Input::Ended },
            Phase::Lingering { reason } => self.end(reason, ctx),
            Phase::Ended { .. } => {}
        }
    }

    /// Stops the session, for `reason`.
    fn end(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        self.phase = Phase::Ended { reason };
        ctx.stop();
    }

    /// Keeps taking questions until the client has been quiet for `drain_grace`; then answers
    /// what was asked, says the server is shutting down, and closes.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if let Phase::Serving { .. } = self.phase {
            tracing::debug!(parent: &self.span(), "draining");
            self.phase = Phase::Draining { since: Instant::now() };
            self.check_timeouts(ctx);
        }
    }

    /// Acts on whichever timeout is due, and asks the registry to check again when the next
    /// one will be.
    fn check_timeouts(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let config = self.deps.live.limits();
        let next = if let Some(since) = self.sink.stalled_since() {
            let due = since + config.write_timeout;
            if now >= due {
                tracing::info!(parent: &self.span(), unsent = self.sink.backlog(), "client stopped reading; disconnecting");
                self.end(CloseReason::WriteTimeout, ctx);
                return;
            }
            due
        } else if let Some(asked) = self.queue.at_oracle_since() {
            let due = asked + config.write_timeout;
            if now >= due {
                tracing::warn!(parent: &self.span(), "the oracle owed answers for limits.write_timeout_secs and gave none; closing");
                self.end(CloseReason::Unanswered, ctx);
                return;
            }
            due
        } else if let Phase::Draining { since } = self.phase {
            let due = self.last_question.max(since) + config.drain_grace;
            if !self.queue.is_empty() {
                // Checked again when the answers are in (see `Answered`).
                now + config.write_timeout
            } else if now >= due {
                self.stop_taking_questions(CloseReason::Shutdown, Some(Answer::SHUTTING_DOWN), Input::Discarded);
                return;
            } else {
                due
            }
        } else if let Phase::Serving { reading } = self.phase
            && self.queue.is_empty()
        {
            let due = self.last_question + config.idle_timeout;
            if now >= due {
                tracing::info!(parent: &self.span(), "idle timeout; closing");
                ctx.cancel_future(reading);
                self.stop_taking_questions(CloseReason::IdleTimeout, None, Input::Ended);
                return;
            }
            due
        } else {
            // Answers are on their way; look again later.
            now + config.idle_timeout.min(config.write_timeout)
        };
        self.deps.registry.check_at(self.key, next);
    }

    /// Writes out what waits in the sink, or closes it once every answer is there; called by
    /// the context's last item ([`Writer`]) on every wake-up.
    fn write_out(&mut self, ctx: &mut Context<Self>, task: &mut task::Context<'_>) {
        let closing = match self.phase {
            Phase::Closing { .. } => true,
            Phase::Lingering { .. } | Phase::Ended { .. } => return,
            _ => false,
        };
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
                    self.deps.registry.check_by(self.key, since + self.deps.live.limits().write_timeout);
                }
            }
            task::Poll::Ready(Err(error)) => {
                tracing::info!(parent: &self.span(), %error, "write failed");
                self.end(CloseReason::Error, ctx);
            }
        }
    }

    /// Every answer is written and the client told end of file.
    fn sending_shut_down(&mut self, ctx: &mut Context<Self>) {
        match self.phase {
            Phase::Closing { reason, input: Input::Discarded } => {
                self.phase = Phase::Lingering { reason };
                self.permit.linger();
                // Nothing is owed any more: read (and discard) whatever comes.
                self.flow.set_owed(0, false, 0);
                ctx.run_later(LINGER_AFTER_LAST_ANSWER, move |session, ctx| session.end(reason, ctx));
            }
            phase => self.end(phase.reason(), ctx),
        }
    }
}

/// The session's writer, the last item of its context (as `actix::io::FramedWrite` is the last
/// of a session that uses it): polled after the session's messages, answers and questions on
/// every wake-up, it writes out what they produced, in one write. The session ends by stopping
/// its context, never by this item ending.
struct Writer;

impl ActorFuture<ZenSession> for Writer {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        session: &mut ZenSession,
        ctx: &mut Context<ZenSession>,
        task: &mut task::Context<'_>,
    ) -> task::Poll<()> {
        session.write_out(ctx, task);
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
        self.deps.tally.closed(self.phase.reason());
        self.deps.registry.unregister(self.key);
        tracing::info!(parent: &self.span(), answers = self.answers_written, "connection closed");
    }
}

/// A session's reader follows the limit in force and counts what it reads in its worker's tally.
impl ReaderContext for Rc<SessionDeps> {
    fn max_question_bytes(&self) -> usize {
        self.live.limits().max_question_bytes
    }

    fn received(&self, bytes: usize) {
        self.tally.received(bytes);
    }
}

impl FlowControlled for ZenSession {
    fn flow(&self) -> &Flow {
        &self.flow
    }
}

/// What the client sent.
impl StreamHandler<Received> for ZenSession {
    fn handle(&mut self, received: Received, ctx: &mut Self::Context) {
        match received {
            Ok(Incoming::Questions(questions)) => self.questions(questions),
            Ok(Incoming::TooLong { limit }) => {
                tracing::info!(parent: &self.span(), limit, "question too long");
                if self.phase.takes_questions() {
                    self.deps.tally.answered(Outcome::TooLong, 1);
                    self.stop_taking_questions(CloseReason::TooLong, Some(Answer::QUESTION_TOO_LONG), Input::Discarded);
                }
            }
            Ok(Incoming::PartialAtEof(bytes)) => {
                tracing::info!(parent: &self.span(), partial = %bytes.escape_ascii(), "client sent part of a question, then closed");
                self.input_ended(CloseReason::Partial, ctx);
            }
            Err(CodecError::Io(error)) => {
                tracing::info!(parent: &self.span(), %error, "read failed");
                self.input_ended(CloseReason::Error, ctx);
            }
        }
    }

    /// End of the client's input (after end of file or an error): every question read before
    /// it is still answered, where actix's default would stop the session at once.
    fn finished(&mut self, ctx: &mut Self::Context) {
        self.input_ended(CloseReason::Eof, ctx);
    }
}

/// The oracle's answers to one batch.
impl Handler<Answered> for ZenSession {
    type Result = ();

    fn handle(&mut self, Answered { seq, answers }: Answered, ctx: &mut Self::Context) {
        self.queue.fill(seq, answers);
        self.write_ready();
        self.owed_less();
        if let Phase::Draining { .. } = self.phase
            && self.queue.is_empty()
        {
            self.check_timeouts(ctx);
        }
    }
}

/// From the worker: drain, or check the timeouts.
impl Handler<Notice> for ZenSession {
    type Result = ();

    fn handle(&mut self, notice: Notice, ctx: &mut Self::Context) {
        match notice {
            Notice::Drain => self.drain(ctx),
            Notice::CheckTimeouts => self.check_timeouts(ctx),
        }
    }
}

#[cfg(test)]
mod tests;
