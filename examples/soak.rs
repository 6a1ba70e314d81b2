//! Soak test: minutes of mixed load against a release `zen-server`, run as a daemon is (metrics
//! on, its settings reloaded every 10 s), reporting its memory, open file descriptors and what
//! its metrics count as the run goes on.
//!
//! ```sh
//! scripts/soak.sh --minutes 10          # builds release, then runs this
//! cargo run --release --example soak -- --minutes 10 --server target/release/zen-server
//! ```
//!
//! The load, all on loopback: connection churn (one question per connection, paced well below
//! the kernel's connection-tracking limits), pipelined clients (100 questions per write, every
//! answer checked), idle clients that ask now and then, and hostile clients taking turns:
//! oversized questions, partial questions, resets in the middle of answers, clients that never
//! read, dribblers and binary garbage. The server runs with a 5-second idle timeout and a
//! 2-second write timeout so the hostile ones are cleaned up often. Every 10 s its settings file
//! changes (a second answer comes or goes; the load's question keeps its answer) and the server
//! gets SIGHUP. Any wrong answer to a well-behaved client is an error, and so is a table that
//! did not change with its file by the next reload, a reload that the server's metrics do not
//! count as taken, or fewer answers in its metrics than the clients received (a lower bound:
//! the server also answers the hostile clients). Exit code 0 only if there were no errors and
//! the server drained cleanly at the end.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use clap::Parser;

#[allow(dead_code, reason = "the file also reads CPU times, which the soak does not report")]
#[path = "../src/bin/zen-client/procfs.rs"]
mod procfs;

/// Minutes of mixed load against a zen-server, reporting its memory and open descriptors.
#[derive(Debug, Parser)]
#[command(name = "soak")]
struct Args {
    /// How long to run the load.
    #[arg(long, value_name = "MINUTES", default_value = "10", value_parser = parse_minutes)]
    minutes: Duration,
    /// The zen-server binary to start.
    #[arg(long, value_name = "PATH", default_value = "target/release/zen-server")]
    server: PathBuf,
}

/// Parses a positive number of minutes, fractions allowed.
fn parse_minutes(text: &str) -> Result<Duration, String> {
    let minutes: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of minutes"))?;
    match Duration::try_from_secs_f64(minutes * 60.0) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("{text:?} is not a positive number of minutes")),
    }
}

const QUESTION: &[u8] = b"Beautiful is better than?";
const ANSWER: &[u8] = b"Ugly.";
/// New connections per second from the churn threads together.
const CHURN_PER_SECOND: u32 = 400;
const PIPELINED_CLIENTS: usize = 4;
const IDLE_CLIENTS: usize = 200;
/// How often the settings are changed and reloaded, and the figures printed.
const EVERY: Duration = Duration::from_secs(10);

/// The two settings files a reload alternates between: the load's question keeps its answer.
const SETTINGS: [&str; 2] = [
    "[oracle]\nanswers = [{ question = \"Beautiful is better than?\", answer = \"Ugly.\" }]\n",
    "[oracle]\nanswers = [\n  { question = \"Beautiful is better than?\", answer = \"Ugly.\" },\n  \
     { question = \"Explicit is better than?\", answer = \"Implicit.\" },\n]\n",
];

#[derive(Default)]
struct Counters {
    churned: AtomicU64,
    pipelined: AtomicU64,
    idle_answers: AtomicU64,
    hostile: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    /// Counts an error; the first few are described on standard error.
    fn error(&self, what: &str, detail: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Relaxed) < 10 {
            eprintln!("error: {what}: {detail}");
        }
    }
}

fn main() -> ExitCode {
    let Args { minutes: duration, server: server_bin } = Args::parse();
    let minutes = duration.as_secs_f64() / 60.0;

    let settings = std::env::temp_dir().join(format!("zen-soak-{}.toml", std::process::id()));
    std::fs::write(&settings, SETTINGS[0]).expect("writable temporary directory");
    let (mut server, addr, metrics) = start_server(&server_bin, &settings);
    let pid = server.id();
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let mut workers = Vec::new();
    let mut spawn = |work: fn(SocketAddr, &AtomicBool, &Counters)| {
        let (stop, counters) = (stop.clone(), counters.clone());
        workers.push(thread::spawn(move || work(addr, &stop, &counters)));
    };
    spawn(churn);
    spawn(churn);
    for _ in 0..PIPELINED_CLIENTS {
        spawn(pipelined);
    }
    spawn(idle);
    spawn(hostile);

    println!("soak: {minutes} min against {} (pid {pid}) on {addr}, metrics on {metrics}", server_bin.display());
    println!(
        "{:>7} {:>9} {:>5} {:>9} {:>11} {:>9} {:>8} {:>6} {:>8} {:>12}",
        "time_s", "rss_kib", "fds", "churned", "pipelined", "idle", "hostile", "errors", "reloads", "answered"
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut reloads = 0;
    while started.elapsed() < duration {
        thread::sleep(EVERY.min(duration.saturating_sub(started.elapsed())));
        check_table(addr, reloads, &counters);
        let scraped = scrape(metrics).unwrap_or_else(|error| {
            counters.error("metrics", error);
            String::new()
        });
        let sample = (started.elapsed().as_secs(), rss_kib(pid), open_fds(pid));
        println!(
            "{:>7} {:>9} {:>5} {:>9} {:>11} {:>9} {:>8} {:>6} {:>8} {:>12}",
            sample.0,
            sample.1,
            sample.2,
            counters.churned.load(Relaxed),
            counters.pipelined.load(Relaxed),
            counters.idle_answers.load(Relaxed),
            counters.hostile.load(Relaxed),
            counters.errors.load(Relaxed),
            metric(&scraped, "zen_reloads_total{result=\"ok\"}"),
            metric(&scraped, "zen_questions_answered_total{outcome=\"known\"}"),
        );
        samples.push(sample);
        reloads += 1;
        std::fs::write(&settings, SETTINGS[reloads % 2]).expect("writable settings file");
        let _ = Command::new("kill").arg("-HUP").arg(pid.to_string()).status();
    }
    stop.store(true, Relaxed);
    for worker in workers {
        worker.join().expect("load thread panicked");
    }
    // Connections left by the load close within the server's timeouts, and the metrics, flushed
    // each second, catch up.
    thread::sleep(Duration::from_secs(8));
    let settled = (rss_kib(pid), open_fds(pid));
    let first = samples.first().copied().unwrap_or((0, settled.0, settled.1));
    let peak_rss = samples.iter().map(|s| s.1).max().unwrap_or(settled.0);
    println!(
        "start (after 10 s): rss {} KiB, fds {}; peak rss {} KiB; end, load stopped: rss {} KiB, fds {}",
        first.1, first.2, peak_rss, settled.0, settled.1
    );
    check_table(addr, reloads, &counters);
    let scraped = scrape(metrics).unwrap_or_else(|error| {
        counters.error("metrics", error);
        String::new()
    });
    let (taken, failed) = (
        metric(&scraped, "zen_reloads_total{result=\"ok\"}"),
        metric(&scraped, "zen_reloads_total{result=\"failed\"}"),
    );
    if (taken, failed) != (reloads as u64, 0) {
        counters.error("reloads", format!("{reloads} asked for; the server counts {taken} taken and {failed} failed"));
    }
    let received =
        counters.churned.load(Relaxed) + counters.pipelined.load(Relaxed) + counters.idle_answers.load(Relaxed);
    let answered = metric(&scraped, "zen_questions_answered_total{outcome=\"known\"}");
    if answered < received {
        counters.error(
            "metrics",
            format!("the server counts {answered} known questions answered; clients received {received}"),
        );
    }
    println!(
        "reloads: {reloads} asked for, {taken} taken; answers: {received} received, {answered} counted by the server"
    );

    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let drained = server.wait().map(|status| status.success()).unwrap_or(false);
    let _ = std::fs::remove_file(&settings);
    let errors = counters.errors.load(Relaxed);
    println!("errors: {errors}; server drained and exited 0: {drained}");
    if errors == 0 && drained { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Checks that the table of the settings file the `reloads`-th reload wrote is the one in force:
/// the second question is answered only while that file has it.
fn check_table(addr: SocketAddr, reloads: usize, counters: &Counters) {
    let expected: &[u8] = if reloads % 2 == 1 { b"Implicit." } else { b"Error: unknown aphorism." };
    let result = connect(addr)
        .ok_or_else(|| "connect failed".to_string())
        .and_then(|mut stream| exchange(&mut stream, b"Explicit is better than?", expected));
    if let Err(error) = result {
        counters.error("reload", format!("after reload {reloads}: {error}"));
    }
}

/// One HTTP GET of the server's metrics page.
fn scrape(addr: SocketAddr) -> Result<String, String> {
    let mut stream = connect(addr).ok_or_else(|| format!("cannot connect to {addr}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: zen\r\nConnection: close\r\n\r\n")
        .map_err(|error| format!("write failed: {error}"))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|error| format!("read failed: {error}"))?;
    Ok(response)
}

/// The value of the sample named `name` (with its labels) in `scraped`, 0 if absent.
fn metric(scraped: &str, name: &str) -> u64 {
    scraped
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

fn start_server(bin: &Path, settings: &Path) -> (Child, SocketAddr, SocketAddr) {
    let metrics = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port for metrics");
    let mut server = Command::new(bin)
        .arg("--config")
        .arg(settings)
        .args(["--listen", "127.0.0.1:0"])
        .env("ZEN_LOG__LEVEL", "warn,zen_server::server=info")
        .env("ZEN_LIMITS__IDLE_TIMEOUT_SECS", "5")
        .env("ZEN_LIMITS__WRITE_TIMEOUT_SECS", "2")
        .env("ZEN_METRICS__LISTEN", metrics.to_string())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot start {}: {error} (build it with cargo build --release)", bin.display())
        });
    let mut lines = BufReader::new(server.stderr.take().expect("piped stderr")).lines();
    let addr = loop {
        let line = lines.next().expect("server exited before listening").expect("readable stderr");
        if let Some(addr) = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")) {
            break addr.parse().expect("listening address");
        }
    };
    // Keep draining the server's log so it never blocks on a full pipe.
    thread::spawn(move || lines.for_each(drop));
    (server, addr, metrics)
}

fn rss_kib(pid: u32) -> u64 {
    procfs::rss_kib(pid).unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|dir| dir.count()).unwrap_or(0)
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(stream)
}

/// Reads `expected.len()` bytes; describes what went wrong if they are not `expected`.
fn read_exactly(stream: &mut TcpStream, expected: &[u8]) -> Result<(), String> {
    let mut received = vec![0; expected.len()];
    stream.read_exact(&mut received).map_err(|error| format!("read failed: {error}"))?;
    if received == expected { Ok(()) } else { Err(format!("wrong answer: {}", received.escape_ascii())) }
}

/// Asks `request` on `stream` and checks the reply is `expected`.
fn exchange(stream: &mut TcpStream, request: &[u8], expected: &[u8]) -> Result<(), String> {
    stream.write_all(request).map_err(|error| format!("write failed: {error}"))?;
    read_exactly(stream, expected)
}

fn churn(addr: SocketAddr, stop: &AtomicBool, counters: &Counters) {
    let pause = Duration::from_secs(2) / CHURN_PER_SECOND;
    while !stop.load(Relaxed) {
        match connect(addr)
            .ok_or_else(|| "connect failed".to_string())
            .and_then(|mut s| exchange(&mut s, QUESTION, ANSWER))
        {
            Ok(()) => counters.churned.fetch_add(1, Relaxed),
            Err(error) => {
                counters.error("churn", error);
                0
            }
        };
        thread::sleep(pause);
    }
}

fn pipelined(addr: SocketAddr, stop: &AtomicBool, counters: &Counters) {
    let request = QUESTION.repeat(100);
    let answers = ANSWER.repeat(100);
    while !stop.load(Relaxed) {
        let Some(mut stream) = connect(addr) else {
            counters.error("pipelined", "connect failed");
            continue;
        };
        // A connection asks 200 rounds, then a new one takes over.
        for _ in 0..200 {
            if stop.load(Relaxed) {
                break;
            }
            if let Err(error) = exchange(&mut stream, &request, &answers) {
                counters.error("pipelined", error);
                break;
            }
            counters.pipelined.fetch_add(100, Relaxed);
        }
    }
}

fn idle(addr: SocketAddr, stop: &AtomicBool, counters: &Counters) {
    let mut clients: Vec<TcpStream> = Vec::new();
    while !stop.load(Relaxed) {
        let round = Instant::now();
        clients.retain_mut(|stream| match exchange(stream, QUESTION, ANSWER) {
            Ok(()) => {
                counters.idle_answers.fetch_add(1, Relaxed);
                true
            }
            Err(error) => {
                counters.error("idle", format!("{error} ({:?} into a round)", round.elapsed()));
                false
            }
        });
        while clients.len() < IDLE_CLIENTS {
            match connect(addr) {
                Some(stream) => clients.push(stream),
                None => {
                    counters.error("idle", "connect failed");
                    break;
                }
            }
        }
        // Ask again well within the 5 s idle timeout, even when a round is slow under load.
        thread::sleep(Duration::from_millis(500));
    }
}

fn hostile(addr: SocketAddr, stop: &AtomicBool, counters: &Counters) {
    let mut round = 0u64;
    while !stop.load(Relaxed) {
        round += 1;
        let Some(mut stream) = connect(addr) else { continue };
        match round % 6 {
            0 => {
                let _ = stream.write_all(&[b'x'; 4096]);
                let mut reply = Vec::new();
                let _ = stream.read_to_end(&mut reply);
                if !reply.starts_with(b"Error: question too long.") {
                    counters.error("oversized", format!("got {}", reply.escape_ascii()));
                }
            }
            1 => {
                let _ = stream.write_all(b"Beautiful is better");
                let _ = stream.shutdown(Shutdown::Write);
            }
            2 => {
                let _ = stream.write_all(&QUESTION.repeat(40_000));
                let mut some = [0; 100];
                let _ = stream.read(&mut some);
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
            3 => {
                // Never reads: the server stops reading it and drops it after the write timeout.
                let _ = stream.set_write_timeout(Some(Duration::from_secs(3)));
                let chunk = QUESTION.repeat(2000);
                while stream.write_all(&chunk).is_ok() && !stop.load(Relaxed) {}
            }
            4 => {
                // Dribbles for 8 s, past the idle timeout: the server closes it.
                for byte in b"Explicit is better than implicit, they say" {
                    if stop.load(Relaxed) || stream.write_all(&[*byte]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(200));
                }
            }
            _ => {
                let garbage: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
                let _ = stream.write_all(&garbage);
            }
        }
        counters.hostile.fetch_add(1, Relaxed);
        thread::sleep(Duration::from_millis(100));
    }
}
