//! The second yardstick for benchmarks: zen-server's design written plainly, the way actix's own
//! examples write a TCP actor service (actix/examples `websockets/chat-tcp`).
//!
//! A `Server` actor handles the listener's stream of connections and starts a `ZenSession` for
//! each; the session's read half is a `FramedRead` registered as its `StreamHandler`, one
//! question per item; each question is sent to the one shared `Oracle` actor with `send(..)`,
//! and `.wait(ctx)` holds the session until the answer is back, which keeps answers in order;
//! answers go out through `actix::io::FramedWrite`. Everything runs on one arbiter. No limits
//! beyond the question's length, no timeouts, logging or graceful shutdown: what the design
//! costs when written as the examples write it, and what zen-server's choices (batches, same-
//! thread inboxes, its own reader and sink, answers in flight while reading on) save.
//!
//! ```sh
//! cargo run --release --features yardstick --bin plain-actix -- --listen 127.0.0.1:1062
//! ```

use std::{io, net::SocketAddr, pin::Pin, sync::Arc, task};

use actix::{
    io::{FramedWrite, WriteHandler},
    prelude::*,
};
use anyhow::Context as _;
use bytes::{Buf, Bytes, BytesMut};
use clap::Parser;
use tokio::net::{TcpListener, TcpStream, tcp::OwnedWriteHalf};
use tokio_util::codec::{Decoder, Encoder, FramedRead};
use zen_server::{
    Answer,
    config::Settings,
    oracle::AnswerTable,
    protocol::{QUESTION_END, is_leading_whitespace},
};

/// Same limit as zen-server's default.
const MAX_QUESTION_BYTES: usize = 1024;

/// zen-server's design in plain actix: the benchmarks' second yardstick.
#[derive(Debug, Parser)]
#[command(name = "plain-actix")]
struct Args {
    /// Address to listen on, IP:PORT.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1062")]
    listen: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let table = Settings::builtin()?.oracle.answers;
    let system = System::new();
    let listener = system.block_on(async {
        let listener =
            TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!("plain-actix: listening addr={}", listener.local_addr()?);
        let oracle = Oracle { table }.start();
        Server::create(|ctx| {
            ctx.add_stream(Connections(listener));
            Server { oracle }
        });
        anyhow::Ok(())
    });
    listener?;
    system.run()?;
    Ok(())
}

/// The listener's connections as a stream.
struct Connections(TcpListener);

impl futures_core::Stream for Connections {
    type Item = io::Result<TcpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> task::Poll<Option<Self::Item>> {
        self.0.poll_accept(cx).map(|accepted| Some(accepted.map(|(stream, _)| stream)))
    }
}

/// Accepts connections and starts a session for each.
struct Server {
    oracle: Addr<Oracle>,
}

impl Actor for Server {
    type Context = Context<Self>;
}

impl StreamHandler<io::Result<TcpStream>> for Server {
    /// A failed accept (out of descriptors, say) is skipped, as actix's examples do; the
    /// benchmarks never run it near its descriptor limit.
    fn handle(&mut self, accepted: io::Result<TcpStream>, _: &mut Context<Self>) {
        let Ok(stream) = accepted else { return };
        let _ = stream.set_nodelay(true);
        let oracle = self.oracle.clone();
        ZenSession::create(|ctx| {
            let (read, write) = stream.into_split();
            ctx.add_stream(FramedRead::new(read, QuestionCodec));
            ZenSession { oracle, writer: FramedWrite::new(write, QuestionCodec, ctx) }
        });
    }
}

/// Asks the oracle for the answer to one question.
#[derive(Message)]
#[rtype(result = "Answer")]
struct Ask(Bytes);

/// Owns the answer table; answers every session's questions.
struct Oracle {
    table: Arc<AnswerTable>,
}

impl Actor for Oracle {
    type Context = Context<Self>;
}

impl Handler<Ask> for Oracle {
    type Result = MessageResult<Ask>;

    fn handle(&mut self, Ask(question): Ask, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.table.answer(&question))
    }
}

/// One client: questions in from its `FramedRead`, answers out through its `FramedWrite`.
struct ZenSession {
    oracle: Addr<Oracle>,
    writer: FramedWrite<Answer, OwnedWriteHalf, QuestionCodec>,
}

impl Actor for ZenSession {
    type Context = Context<Self>;
}

impl StreamHandler<Result<Bytes, QuestionError>> for ZenSession {
    fn handle(&mut self, question: Result<Bytes, QuestionError>, ctx: &mut Context<Self>) {
        match question {
            Ok(question) => self
                .oracle
                .send(Ask(question))
                .into_actor(self)
                .map(|answer, session, _| session.writer.write(answer.unwrap_or(Answer::INTERNAL_ERROR)))
                .wait(ctx),
            Err(QuestionError::TooLong) => {
                self.writer.write(Answer::QUESTION_TOO_LONG);
                self.writer.close();
            }
            Err(QuestionError::Io) => ctx.stop(),
        }
    }

    /// At end of file, every answer is written out before the connection closes. `close()`
    /// does not wake actix's writer, and the writer may already have been polled in this
    /// wake-up, so the close is a message through the session's own mailbox, which is read
    /// before the writer is polled again.
    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.address().do_send(CloseWriter);
    }
}

/// Closes the session's writer once what it holds is written.
#[derive(Message)]
#[rtype(result = "()")]
struct CloseWriter;

impl Handler<CloseWriter> for ZenSession {
    type Result = ();

    fn handle(&mut self, _: CloseWriter, _: &mut Context<Self>) {
        self.writer.close();
    }
}

impl WriteHandler<io::Error> for ZenSession {}

/// What reading a question can end with: the question is too long, or reading failed.
#[derive(Debug)]
enum QuestionError {
    TooLong,
    Io,
}

impl From<io::Error> for QuestionError {
    fn from(_: io::Error) -> Self {
        Self::Io
    }
}

/// One question per frame, as the protocol frames them; answers written as they are.
struct QuestionCodec;

impl Decoder for QuestionCodec {
    type Item = Bytes;
    type Error = QuestionError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, QuestionError> {
        let blanks = src.iter().take_while(|&&b| is_leading_whitespace(b)).count();
        src.advance(blanks);
        match memchr::memchr(QUESTION_END, src) {
            Some(end) if end < MAX_QUESTION_BYTES => Ok(Some(src.split_to(end + 1).freeze())),
            Some(_) => Err(QuestionError::TooLong),
            None if src.len() >= MAX_QUESTION_BYTES => Err(QuestionError::TooLong),
            None => Ok(None),
        }
    }
}

impl Encoder<Answer> for QuestionCodec {
    type Error = io::Error;

    fn encode(&mut self, answer: Answer, dst: &mut BytesMut) -> io::Result<()> {
        dst.extend_from_slice(answer.as_bytes());
        Ok(())
    }
}
