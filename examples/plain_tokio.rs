//! The yardstick for benchmarks: the Zen protocol in plain tokio, with no actors.
//!
//! One task per connection reads into a buffer, frames questions exactly as the protocol says,
//! looks each one up in the same answer table as `zen-server` and writes all answers of one read
//! with one write. No limits, timeouts, logging or graceful shutdown: only what the protocol
//! itself costs. With one thread (the default under `taskset -c 0`) it runs tokio's
//! single-threaded scheduler; with more, the multi-threaded one.
//!
//! ```sh
//! cargo run --release --example plain_tokio -- --listen 127.0.0.1:1061 [--threads N]
//! ```

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Buf, BytesMut};
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let option = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let addr: SocketAddr = option("--listen").unwrap_or_else(|| "127.0.0.1:1061".into()).parse()?;
    let threads = match option("--threads") {
        Some(threads) => threads.parse()?,
        None => std::thread::available_parallelism()?.get(),
    };
    let table = Arc::new(Settings::builtin()?.oracle.table()?);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        eprintln!("plain_tokio: listening addr={} threads={threads}", listener.local_addr()?);
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
                    output.extend_from_slice(table.answer(&input[..=end]).as_bytes());
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
