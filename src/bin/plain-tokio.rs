//! The yardstick for benchmarks: the Zen protocol in plain tokio, with no actors.
//!
//! One task per connection reads into a buffer, frames questions exactly as the protocol says,
//! looks each one up in the same answer table as `zen-server` and writes all answers of one read
//! with one write. No limits, timeouts, logging or graceful shutdown: only what the protocol
//! itself costs. With one thread (the default under `taskset -c 0`) it runs tokio's
//! single-threaded scheduler; with more, the multi-threaded one.
//!
//! A binary built only when asked for (feature `yardstick`), not an example: examples are built
//! with the dev-dependencies' features, and tokio's `test-util` (the tests' paused clock) would
//! make every read of the time cost the yardstick more than it costs `zen-server`.
//!
//! ```sh
//! cargo run --release --features yardstick --bin plain-tokio -- --listen 127.0.0.1:1061 [--threads N]
//! ```

use std::{net::SocketAddr, num::NonZeroUsize, sync::Arc, time::Duration};

use anyhow::Context;
use bytes::{Buf, BytesMut};
use clap::Parser;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use zen_server::{
    Answer,
    config::Settings,
    oracle::AnswerTable,
    protocol::{QUESTION_END, is_leading_whitespace},
};

/// Same limit as zen-server's default.
const MAX_QUESTION_BYTES: usize = 1024;

/// The Zen protocol in plain tokio: the benchmarks' reference server.
#[derive(Debug, Parser)]
#[command(name = "plain-tokio")]
struct Args {
    /// Address to listen on, IP:PORT.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1061")]
    listen: SocketAddr,
    /// Threads serving connections; by default, one per CPU this process may use.
    #[arg(long, value_name = "N")]
    threads: Option<NonZeroUsize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = match args.threads {
        Some(threads) => threads.get(),
        None => std::thread::available_parallelism().context("cannot count CPUs")?.get(),
    };
    let table = Settings::builtin()?.oracle.answers;
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    let addr = args.listen;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!("plain-tokio: listening addr={} threads={threads}", listener.local_addr()?);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, table.clone()));
                }
                // Out of descriptors and the like: wait a little rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
}

async fn serve(mut stream: TcpStream, table: Arc<AnswerTable>) {
    let _ = stream.set_nodelay(true);
    let mut input = BytesMut::with_capacity(4096);
    let mut output = Vec::with_capacity(4096);
    let unknown = Answer::UNKNOWN_APHORISM;
    loop {
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let too_long = loop {
            let blanks = input.iter().take_while(|&&b| is_leading_whitespace(b)).count();
            input.advance(blanks);
            match memchr::memchr(QUESTION_END, &input) {
                Some(end) if end < MAX_QUESTION_BYTES => {
                    // No clone of the answer: a lookup and a copy, nothing more per question.
                    let answer = table.get(&input[..=end]).unwrap_or(&unknown).as_bytes();
                    output.extend_from_slice(answer);
                    input.advance(end + 1);
                }
                Some(_) => break true,
                None => break input.len() >= MAX_QUESTION_BYTES,
            }
        };
        if too_long {
            output.extend_from_slice(Answer::QUESTION_TOO_LONG.as_bytes());
        }
        if !output.is_empty() {
            if stream.write_all(&output).await.is_err() || too_long {
                return;
            }
            output.clear();
        }
    }
}
