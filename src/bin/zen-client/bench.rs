//! The load generator behind `zen-client bench`.
//!
//! Three modes, each checking every answer byte for byte (a wrong, missing or extra answer, a
//! failed connection or an early close is an error, counted and reported):
//! - [`BenchMode::Pipelined`]: `conns` connections, each keeping `depth` questions in flight
//!   (closed loop), or, with a `rate`, sending at fixed intended times whatever the server does
//!   (open loop), latency then measured from the intended send time so that a slow server cannot
//!   hide its queueing (no coordinated omission).
//! - [`BenchMode::Churn`]: `conns` loops of connect, ask `depth` questions one after another,
//!   close.
//! - [`BenchMode::Idle`]: open `conns` connections, ask once on each, hold them.
//!
//! Each mode speaks either protocol ([`BenchProtocol`]): the Zen protocol, or Redis's `PING`,
//! so that a Redis server, measured with the same load, shows what a well-tuned server of
//! another kind spends per answer.
//!
//! Latencies go into HDR histograms (one per connection, merged at the end). Against a
//! loopback address, connections are spread over source addresses 127.0.0.1 to 127.0.0.254 so
//! that many connections, or fast churn, never run out of ephemeral ports.
//!
//! CPU use is read from `/proc` ([`procfs`]) at both ends of the measured window: the
//! server's, given its process ID, to report its CPU time per answer; and always this
//! process's own, as a share of the CPUs it may run on, so that a report says when the load
//! generator, not the server, was the bottleneck ([`BenchReport::client_bound`]).

use std::{
    collections::VecDeque,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{self as std_mpsc, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::mpsc,
    task::JoinSet,
    time::MissedTickBehavior,
};

use zen_server::client::TlsClient;

use crate::procfs;

/// What a protocol's load consists of: the questions asked in turn, each with the one answer
/// expected, and the byte that ends every answer (answers are framed by it, then compared whole).
#[derive(Debug, Clone, Copy)]
struct Exchanges {
    pairs: &'static [(&'static [u8], &'static [u8])],
    terminator: u8,
}

impl Exchanges {
    /// The question asked `index`-th, with its expected answer.
    fn nth(&self, index: usize) -> (&'static [u8], &'static [u8]) {
        self.pairs[index % self.pairs.len()]
    }
}

/// Three of the book's questions; every Zen answer ends with a full stop.
const ZEN_EXCHANGES: Exchanges = Exchanges {
    pairs: &[
        (b"Beautiful is better than?", b"Ugly."),
        (b"Explicit is better than?", b"Implicit."),
        (b"Simple is better than?", b"Complex."),
    ],
    terminator: b'.',
};

/// Redis's inline `PING` and its simple-string reply, which ends with a line feed.
const REDIS_PING_EXCHANGES: Exchanges = Exchanges { pairs: &[(b"PING\r\n", b"+PONG\r\n")], terminator: b'\n' };

/// Longest a single exchange (connect, or one answer) may take before it counts as an error.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read at a time.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Connections opened at once in idle mode.
const IDLE_OPEN_CONCURRENCY: usize = 256;

/// Highest latency the histograms record, in microseconds (larger values are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;

/// Above this share of the CPUs it may use, the load generator itself was the bottleneck, and
/// the throughput measured is its limit rather than the server's.
const CLIENT_BOUND_PERCENT: f64 = 95.0;

/// What kind of load to generate (`--mode`, and `mode` in the JSON report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    /// Connections with questions in flight (or paced, with --rate).
    Pipelined,
    /// Connect, ask one question, close, repeat.
    Churn,
    /// Open connections, ask once on each, hold them.
    Idle,
}

/// What the load generator asks and expects (`--protocol`, and `protocol` in the JSON report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BenchProtocol {
    /// The Zen protocol: three of the book's questions in turn, each answer ending with '.'.
    Zen,
    /// Redis's inline `PING\r\n`, answered `+PONG\r\n`: to measure a Redis server with the same
    /// load generator.
    RedisPing,
}

impl BenchProtocol {
    /// The protocol's name, as `--protocol` and the JSON report spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zen => "zen",
            Self::RedisPing => "redis-ping",
        }
    }

    fn exchanges(self) -> Exchanges {
        match self {
            Self::Zen => ZEN_EXCHANGES,
            Self::RedisPing => REDIS_PING_EXCHANGES,
        }
    }
}

/// A benchmark run.
#[derive(Clone)]
pub struct BenchConfig {
    /// The server.
    pub addr: SocketAddr,
    /// Speak TLS to it, so.
    pub tls: Option<TlsClient>,
    /// What to ask and expect.
    pub protocol: BenchProtocol,
    /// The kind of load.
    pub mode: BenchMode,
    /// Connections (pipelined, idle) or concurrent loops (churn).
    pub conns: usize,
    /// Questions in flight per connection (pipelined, without a rate); questions asked one
    /// after another per connection (churn).
    pub depth: usize,
    /// Measured time.
    pub duration: Duration,
    /// Time before measuring starts.
    pub warmup: Duration,
    /// Aggregate questions per second, at fixed intended times (pipelined).
    pub rate: Option<f64>,
    /// How long to hold the connections (idle).
    pub hold: Duration,
    /// The server's processes (a proxy in front of it too), to report their CPU time (every
    /// mode) and memory (idle), added together.
    pub server_pids: Vec<u32>,
    /// Print progress to standard error every second.
    pub progress: bool,
}

impl BenchConfig {
    fn dialer(&self) -> Dialer {
        Dialer { addr: self.addr, tls: self.tls.clone() }
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// What a run measured; printed as text or as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// What was asked and expected.
    pub protocol: BenchProtocol,
    /// The kind of load.
    pub mode: BenchMode,
    /// Connections or loops.
    pub conns: usize,
    /// Questions in flight per connection (pipelined), or asked per connection (churn).
    pub depth: usize,
    /// Aggregate intended rate, if any.
    pub rate: Option<f64>,
    /// Measured seconds.
    pub seconds: f64,
    /// Correct answers received while measuring.
    pub answers: u64,
    /// `answers` per second.
    pub answers_per_sec: f64,
    /// Connections completed while measuring (churn) or opened (idle).
    pub connections: u64,
    /// `connections` per second (churn).
    pub connections_per_sec: f64,
    /// Wrong, missing or extra answers, failed connections and early closes.
    pub errors: u64,
    /// Latency of answers received while measuring: per question (pipelined, idle) or per
    /// connection from connect to answer (churn).
    pub latency_us: Latency,
    /// The server's RSS before connecting (idle, with a server PID).
    pub server_rss_kib_before: Option<u64>,
    /// The server's RSS with every connection open (idle, with a server PID).
    pub server_rss_kib_held: Option<u64>,
    /// RSS added per held connection (idle, with a server PID).
    pub server_kib_per_conn: Option<f64>,
    /// CPU time (user and system) the server used while measured, in seconds (with a server
    /// PID). Idle mode measures from opening the first connection to the end of the hold.
    pub server_cpu_seconds: Option<f64>,
    /// `server_cpu_seconds` per correct answer, in microseconds (with a server PID and at least
    /// one answer).
    pub server_cpu_us_per_answer: Option<f64>,
    /// Correct answers per time the server's threads were put on a CPU while measured (with a
    /// server PID whose threads all lived through the window): below saturation, how many
    /// answers each wake-up of the server carried.
    pub answers_per_server_run: Option<f64>,
    /// CPUs this process may run on (its affinity mask and CPU quota).
    pub client_cpus: usize,
    /// CPU time this process used while measured, as a percentage of the `client_cpus` CPUs
    /// over the same wall time; `None` only if `/proc` could not say.
    pub client_cpu_percent: Option<f64>,
    /// Whether `client_cpu_percent` was above 95%: the load generator was the bottleneck, and
    /// a faster server would not have been measured faster.
    pub client_bound: bool,
}

/// The benchmark could not run at all (as opposed to errors it counts).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A setting makes no sense, e.g. zero connections.
    #[error("invalid benchmark: {0}")]
    Invalid(String),
}

/// When measuring happens.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

/// Both processes' CPU clocks, read at one moment.
#[derive(Debug, Clone)]
struct CpuReading {
    at: Instant,
    /// One per server process; `None` if one could not be read.
    server: Option<Vec<procfs::CpuClock>>,
    client: Option<Duration>,
}

impl CpuReading {
    /// Reads the CPU time used so far by the server's processes, if any are given (to the
    /// nanosecond, see [`procfs::CpuClock`]), and by this process.
    fn now(server_pids: &[u32]) -> Self {
        let server = match server_pids {
            [] => None,
            pids => pids.iter().map(|&pid| procfs::CpuClock::read(pid).ok()).collect(),
        };
        Self { at: Instant::now(), server, client: procfs::cpu_time(std::process::id()).ok() }
    }

    /// The CPU used between this reading and `later`.
    fn until(&self, later: &CpuReading) -> CpuUse {
        let (server, server_runs) = match (&self.server, &later.server) {
            (Some(before), Some(after)) => {
                let pairs = || before.iter().zip(after);
                (
                    pairs().map(|(before, after)| after.since(before)).sum(),
                    pairs().map(|(before, after)| after.runs_since(before)).sum(),
                )
            }
            _ => (None, None),
        };
        CpuUse {
            wall: later.at.saturating_duration_since(self.at),
            server,
            server_runs,
            client: later.client.zip(self.client).and_then(|(after, before)| after.checked_sub(before)),
        }
    }
}

/// CPU time used by the server and by this process over a stretch of wall time.
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    wall: Duration,
    server: Option<Duration>,
    /// Times the server's threads were put on a CPU.
    server_runs: Option<u64>,
    client: Option<Duration>,
}

/// Measures the CPU used over `window`, reading the clocks on a thread of the blocking pool: the
/// load may keep every runtime thread busy, which would delay a task's readings.
///
/// Dropping the returned sender says the load is over: if it ends before the window does
/// (every connection failed), the last reading is taken at once, and before the window starts,
/// there is no reading at all.
fn measure_cpu(window: Window, server_pids: Vec<u32>) -> (std_mpsc::Sender<()>, tokio::task::JoinHandle<CpuUse>) {
    let (load_running, load_over) = std_mpsc::channel::<()>();
    // Waits until `at`; false if the load ended first.
    let wait_until = move |at: Instant| {
        matches!(load_over.recv_timeout(at.saturating_duration_since(Instant::now())), Err(RecvTimeoutError::Timeout))
    };
    let readings = tokio::task::spawn_blocking(move || {
        if !wait_until(window.start) {
            return CpuUse::default();
        }
        let start = CpuReading::now(&server_pids);
        wait_until(window.end);
        start.until(&CpuReading::now(&server_pids))
    });
    (load_running, readings)
}

/// What one connection or loop measured.
struct Tally {
    answers: u64,
    connections: u64,
    errors: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            answers: 0,
            connections: 0,
            errors: 0,
            latency: Histogram::new_with_max(MAX_LATENCY_US, 3).expect("valid histogram bounds"),
        }
    }

    fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).min(MAX_LATENCY_US);
        self.latency.saturating_record(micros);
    }

    /// Counts `count` errors, here and in the live progress.
    fn fail(&mut self, live: &Live, count: u64) {
        self.errors += count;
        live.errors.fetch_add(count, Relaxed);
    }

    fn merge(&mut self, other: &Tally) {
        self.answers += other.answers;
        self.connections += other.connections;
        self.errors += other.errors;
        let _ = self.latency.add(&other.latency);
    }
}

/// Live counts for the progress line.
#[derive(Default)]
struct Live {
    answers: AtomicU64,
    errors: AtomicU64,
}

/// Runs the benchmark `config` describes.
///
/// # Errors
///
/// [`BenchError::Invalid`] if the configuration cannot describe a run; everything that goes
/// wrong during the run is counted in [`BenchReport::errors`] instead.
pub async fn run(config: &BenchConfig) -> Result<BenchReport, BenchError> {
    if config.conns == 0 || config.depth == 0 {
        return Err(BenchError::Invalid("connections and depth must be at least 1".into()));
    }
    let pacing = config.rate.map(|rate| pacing_interval(config.conns, rate)).transpose()?;
    if source_for(config.addr, 0).is_none() && config.conns > DEFAULT_SHARE {
        eprintln!(
            "bench: {} connections, all from one address: a zen-server with its default settings lets one client hold {DEFAULT_SHARE} (limits.max_connections_per_client); only against 127.0.0.0/8 are they spread over 254 addresses",
            config.conns
        );
    }
    let live = Arc::new(Live::default());
    let progress = config.progress.then(|| tokio::spawn(report_progress(live.clone())));
    let report = match config.mode {
        BenchMode::Pipelined | BenchMode::Churn => run_timed(config, pacing, &live).await,
        BenchMode::Idle => run_idle(config, &live).await,
    };
    if let Some(progress) = progress {
        progress.abort();
    }
    Ok(report)
}

/// The longest a bench may last, and the longest pacing interval: a week.
pub const A_WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// The interval between one connection's questions when `conns` share `rate` questions per
/// second: at least a microsecond, at most a week.
pub fn pacing_interval(conns: usize, rate: f64) -> Result<Duration, BenchError> {
    let invalid = || {
        BenchError::Invalid(format!(
            "{rate} questions/s over {conns} connections cannot be paced: the rate must be positive, \
             at most 1,000,000 per connection, and at least one per connection per week"
        ))
    };
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(invalid());
    }
    match Duration::try_from_secs_f64(conns as f64 / rate) {
        Ok(interval) if interval >= Duration::from_micros(1) && interval <= A_WEEK => Ok(interval),
        _ => Err(invalid()),
    }
}

async fn report_progress(live: Arc<Live>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let (mut last, started) = (0, Instant::now());
    loop {
        ticker.tick().await;
        let answers = live.answers.load(Relaxed);
        eprintln!(
            "[{:>4.0}s] {:>10} answers/s, {} errors",
            started.elapsed().as_secs_f64(),
            answers - last,
            live.errors.load(Relaxed)
        );
        last = answers;
    }
}

/// `pacing`: with a rate, the interval between one connection's questions.
async fn run_timed(config: &BenchConfig, pacing: Option<Duration>, live: &Arc<Live>) -> BenchReport {
    let start = Instant::now() + config.warmup;
    let window = Window { start, end: start + config.duration };
    let (load_running, cpu) = measure_cpu(window, config.server_pids.clone());
    let exchanges = config.protocol.exchanges();
    let mut tasks = JoinSet::new();
    for index in 0..config.conns {
        let (dialer, source, live) = (config.dialer(), source_for(config.addr, index), live.clone());
        match (config.mode, pacing) {
            (BenchMode::Churn, _) => tasks.spawn(churn(dialer, exchanges, index, config.depth, window, live)),
            (_, Some(interval)) => {
                // Spread the connections' schedules over one interval.
                let offset = interval.mul_f64(index as f64 / config.conns as f64);
                tasks.spawn(paced(dialer, source, exchanges, interval, offset, window, live))
            }
            (_, None) => tasks.spawn(closed_loop(dialer, source, exchanges, config.depth, window, live)),
        };
    }
    let mut total = Tally::new();
    while let Some(tally) = tasks.join_next().await {
        match tally {
            Ok(tally) => total.merge(&tally),
            Err(_) => total.errors += 1,
        }
    }
    drop(load_running);
    // Without readings, the report says the CPU use is unknown.
    let cpu = cpu.await.unwrap_or_default();
    report(config, &total, None, None, &cpu)
}

fn report(
    config: &BenchConfig,
    total: &Tally,
    rss_before: Option<u64>,
    rss_held: Option<u64>,
    cpu: &CpuUse,
) -> BenchReport {
    let seconds = config.duration.as_secs_f64();
    let histogram = &total.latency;
    let latency = if histogram.is_empty() {
        Latency::default()
    } else {
        Latency {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    };
    let per_conn = rss_before
        .zip(rss_held)
        .map(|(before, held)| (held.saturating_sub(before)) as f64 / total.connections.max(1) as f64);
    let server_cpu_seconds = cpu.server.map(|used| used.as_secs_f64());
    let server_cpu_us_per_answer =
        server_cpu_seconds.filter(|_| total.answers > 0).map(|seconds| seconds * 1e6 / total.answers as f64);
    let answers_per_server_run =
        cpu.server_runs.filter(|&runs| runs > 0).map(|runs| total.answers as f64 / runs as f64);
    let client_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let client_cpu_percent = cpu
        .client
        .filter(|_| !cpu.wall.is_zero())
        .map(|used| used.as_secs_f64() / cpu.wall.as_secs_f64() / client_cpus as f64 * 100.0);
    BenchReport {
        protocol: config.protocol,
        mode: config.mode,
        conns: config.conns,
        depth: config.depth,
        rate: config.rate,
        seconds,
        answers: total.answers,
        answers_per_sec: total.answers as f64 / seconds,
        connections: total.connections,
        connections_per_sec: total.connections as f64 / seconds,
        errors: total.errors,
        latency_us: latency,
        server_rss_kib_before: rss_before,
        server_rss_kib_held: rss_held,
        server_kib_per_conn: per_conn,
        server_cpu_seconds,
        server_cpu_us_per_answer,
        answers_per_server_run,
        client_cpus,
        client_cpu_percent,
        client_bound: client_cpu_percent.is_some_and(|percent| percent > CLIENT_BOUND_PERCENT),
    }
}

/// The connections one client may hold in a zen-server with its built-in settings.
const DEFAULT_SHARE: usize = 256;

/// Source address for connection `index`: spread over 127.0.0.1-254 for loopback targets.
fn source_for(target: SocketAddr, index: usize) -> Option<IpAddr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % 254) as u8))),
        _ => None,
    }
}

/// The reading side of a connection, plain or TLS.
type Reader = Box<dyn AsyncRead + Unpin + Send>;
/// The writing side of a connection, plain or TLS.
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// How to open a connection to the server.
#[derive(Clone)]
struct Dialer {
    addr: SocketAddr,
    tls: Option<TlsClient>,
}

impl Dialer {
    /// Connects from `source` (if given), completes the TLS handshake if there is TLS, within
    /// [`EXCHANGE_TIMEOUT`].
    async fn connect(&self, source: Option<IpAddr>) -> io::Result<(Reader, Writer)> {
        let attempt = async {
            let stream = match source {
                Some(source) => {
                    let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                    socket.bind(SocketAddr::new(source, 0))?;
                    socket.connect(self.addr).await?
                }
                None => TcpStream::connect(self.addr).await?,
            };
            stream.set_nodelay(true)?;
            Ok::<(Reader, Writer), io::Error>(match &self.tls {
                None => {
                    let (read, write) = stream.into_split();
                    (Box::new(read), Box::new(write))
                }
                Some(tls) => {
                    let (read, write) = tokio::io::split(tls.connect(stream).await?);
                    (Box::new(read), Box::new(write))
                }
            })
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, attempt).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }
}

/// Reads from a connection and hands out the answers in it, one at a time, each ending with
/// `terminator`.
struct AnswerReader<R> {
    reader: R,
    terminator: u8,
    pending: BytesMut,
}

impl<R: AsyncRead + Unpin> AnswerReader<R> {
    fn new(reader: R, exchanges: Exchanges) -> Self {
        Self { reader, terminator: exchanges.terminator, pending: BytesMut::with_capacity(READ_BUFFER_BYTES) }
    }

    /// Whether the next answer already received is `expected` (consuming it); `None` if no
    /// complete answer has arrived yet.
    fn check_buffered(&mut self, expected: &[u8]) -> Option<bool> {
        let end = memchr::memchr(self.terminator, &self.pending)?;
        let matches = self.pending[..=end] == *expected;
        self.pending.advance(end + 1);
        Some(matches)
    }

    /// Waits for more bytes; `Ok(false)` at end of file.
    async fn fill(&mut self) -> io::Result<bool> {
        self.pending.reserve(READ_BUFFER_BYTES);
        Ok(self.reader.read_buf(&mut self.pending).await? > 0)
    }

    /// Waits up to [`EXCHANGE_TIMEOUT`] for the next answer and says whether it is `expected`;
    /// `None` at end of file, on an error or on timeout.
    async fn check_next(&mut self, expected: &[u8]) -> Option<bool> {
        let wait = async {
            loop {
                if let Some(matches) = self.check_buffered(expected) {
                    return Some(matches);
                }
                if !self.fill().await.ok()? {
                    return None;
                }
            }
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, wait).await.ok().flatten()
    }
}

/// Closed loop: `depth` questions in flight; each answer lets the next question go. A server
/// that stops answering fails the connection [`EXCHANGE_TIMEOUT`] after the window.
async fn closed_loop(
    dialer: Dialer,
    source: Option<IpAddr>,
    exchanges: Exchanges,
    depth: usize,
    window: Window,
    live: Arc<Live>,
) -> Tally {
    let mut tally = Tally::new();
    let Ok((reader, mut writer)) = dialer.connect(source).await else {
        tally.fail(&live, 1);
        return tally;
    };
    let mut answers = AnswerReader::new(reader, exchanges);
    let mut in_flight: VecDeque<(Instant, usize)> = VecDeque::with_capacity(depth);
    let mut next_question = 0;
    let mut request = Vec::with_capacity(depth * 32);
    let mut ask = |request: &mut Vec<u8>, in_flight: &mut VecDeque<(Instant, usize)>, at: Instant| {
        request.extend_from_slice(exchanges.nth(next_question).0);
        in_flight.push_back((at, next_question));
        next_question = next_question.wrapping_add(1);
    };
    let now = Instant::now();
    for _ in 0..depth {
        ask(&mut request, &mut in_flight, now);
    }
    // One timer for the whole connection, not one per read.
    let deadline = tokio::time::Instant::from_std(window.end + EXCHANGE_TIMEOUT);
    let exchange = async {
        loop {
            if !request.is_empty() {
                writer.write_all(&request).await.ok()?;
                writer.flush().await.ok()?;
                request.clear();
            }
            if in_flight.is_empty() || !answers.fill().await.ok()? {
                return Some(());
            }
            let now = Instant::now();
            let (mut correct, mut wrong) = (0, 0);
            while let Some(&(sent, index)) = in_flight.front() {
                match answers.check_buffered(exchanges.nth(index).1) {
                    None => break,
                    Some(true) => {
                        if window.contains(now) {
                            tally.answers += 1;
                            tally.record(now - sent);
                        }
                        correct += 1;
                    }
                    Some(false) => wrong += 1,
                }
                in_flight.pop_front();
                if now < window.end {
                    ask(&mut request, &mut in_flight, now);
                }
            }
            tally.fail(&live, wrong);
            live.answers.fetch_add(correct, Relaxed);
        }
    };
    let _ = tokio::time::timeout_at(deadline, exchange).await;
    // Questions still in flight were never answered.
    tally.fail(&live, in_flight.len() as u64);
    tally
}

/// Open loop: one question every `interval` from `window.start - warmup + offset`, whatever
/// the server does; latency counts from when each question should have been sent.
async fn paced(
    dialer: Dialer,
    source: Option<IpAddr>,
    exchanges: Exchanges,
    interval: Duration,
    offset: Duration,
    window: Window,
    live: Arc<Live>,
) -> Tally {
    let mut tally = Tally::new();
    let Ok((reader, mut writer)) = dialer.connect(source).await else {
        tally.fail(&live, 1);
        return tally;
    };
    let (intended_tx, mut intended_rx) = mpsc::unbounded_channel::<(Instant, usize)>();
    let sender = tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut next = 0;
        loop {
            let intended = ticker.tick().await.into_std();
            if intended >= window.end {
                return;
            }
            // Queued before writing, so the reader never sees an answer it cannot match.
            let question = exchanges.nth(next).0;
            if intended_tx.send((intended, next)).is_err()
                || writer.write_all(question).await.is_err()
                || writer.flush().await.is_err()
            {
                return;
            }
            next = next.wrapping_add(1);
        }
    });
    let mut answers = AnswerReader::new(reader, exchanges);
    while let Some((intended, index)) = intended_rx.recv().await {
        match answers.check_next(exchanges.nth(index).1).await {
            Some(true) => {
                let now = Instant::now();
                if window.contains(now) {
                    tally.answers += 1;
                    tally.record(now - intended);
                }
                live.answers.fetch_add(1, Relaxed);
            }
            Some(false) => tally.fail(&live, 1),
            None => {
                tally.fail(&live, 1 + intended_rx.len() as u64);
                break;
            }
        }
    }
    sender.abort();
    tally
}

/// Connect, ask, read the answer, close; again until the window ends.
async fn churn(
    dialer: Dialer,
    exchanges: Exchanges,
    index: usize,
    questions: usize,
    window: Window,
    live: Arc<Live>,
) -> Tally {
    let mut tally = Tally::new();
    let mut round = index;
    while Instant::now() < window.end {
        let started = Instant::now();
        let (source, first) = (source_for(dialer.addr, round), round);
        let dialer = &dialer;
        // Like the book's client: each question in one write, its answer read before the next.
        let exchange = async move {
            let (reader, mut writer) = dialer.connect(source).await.ok()?;
            let mut answers = AnswerReader::new(reader, exchanges);
            for asked in 0..questions {
                let (question, expected) = exchanges.nth(first + asked);
                writer.write_all(question).await.ok()?;
                writer.flush().await.ok()?;
                if !answers.check_next(expected).await? {
                    return Some(false);
                }
            }
            Some(true)
        };
        round = round.wrapping_add(7919); // a prime stride walks every source address
        match exchange.await {
            Some(true) => {
                let now = Instant::now();
                if window.contains(now) {
                    tally.answers += questions as u64;
                    tally.connections += 1;
                    tally.record(now - started);
                }
                live.answers.fetch_add(questions as u64, Relaxed);
            }
            _ => tally.fail(&live, 1),
        }
    }
    tally
}

/// Opens `conns` connections, asks once on each, holds them for `hold`.
async fn run_idle(config: &BenchConfig, live: &Arc<Live>) -> BenchReport {
    let rss = || match config.server_pids.as_slice() {
        [] => None,
        pids => pids.iter().map(|&pid| procfs::rss_kib(pid)).sum(),
    };
    let rss_before = rss();
    // The answers of this mode are asked while opening: the window spans opening and holding.
    let cpu_start = CpuReading::now(&config.server_pids);
    let mut total = Tally::new();
    let exchanges = config.protocol.exchanges();
    let mut held = Vec::with_capacity(config.conns);
    let opened_at = Instant::now();
    for first in (0..config.conns).step_by(IDLE_OPEN_CONCURRENCY) {
        let mut batch = JoinSet::new();
        for index in first..(first + IDLE_OPEN_CONCURRENCY).min(config.conns) {
            let (dialer, source) = (config.dialer(), source_for(config.addr, index));
            batch.spawn(async move {
                let started = Instant::now();
                let (question, expected) = exchanges.nth(index);
                let (mut reader, mut writer) = dialer.connect(source).await.ok()?;
                writer.write_all(question).await.ok()?;
                writer.flush().await.ok()?;
                let mut answer = vec![0; expected.len()];
                tokio::time::timeout(EXCHANGE_TIMEOUT, reader.read_exact(&mut answer)).await.ok()?.ok()?;
                (answer == expected).then(|| ((reader, writer), started.elapsed()))
            });
        }
        while let Some(result) = batch.join_next().await {
            match result {
                Ok(Some((stream, latency))) => {
                    total.answers += 1;
                    total.connections += 1;
                    total.record(latency);
                    live.answers.fetch_add(1, Relaxed);
                    held.push(stream);
                }
                _ => total.fail(live, 1),
            }
        }
    }
    eprintln!("holding {} connections (opened in {:.1?}) for {:?}", held.len(), opened_at.elapsed(), config.hold);
    // Let the server settle (its buffers, its allocator) before reading its memory.
    tokio::time::sleep(config.hold / 2).await;
    let rss_held = rss();
    tokio::time::sleep(config.hold - config.hold / 2).await;
    let cpu = cpu_start.until(&CpuReading::now(&config.server_pids));
    drop(held);
    let timed = BenchConfig { duration: config.hold, ..config.clone() };
    report(&timed, &total, rss_before, rss_held, &cpu)
}

impl BenchReport {
    /// The report as a few lines of text.
    pub fn to_text(&self) -> String {
        let mut text = match (self.mode, self.rate) {
            (BenchMode::Pipelined, Some(rate)) => {
                format!("pipelined: {} connections at {rate:.0} questions/s in all", self.conns)
            }
            (BenchMode::Pipelined, None) => format!("pipelined: {} connections x depth {}", self.conns, self.depth),
            (BenchMode::Churn, _) => format!("churn: {} concurrent connect-ask-close loops", self.conns),
            (BenchMode::Idle, _) => format!("idle: {} connections held", self.conns),
        };
        text.push_str(&format!(", {:.1} s measured, {} protocol\n", self.seconds, self.protocol.name()));
        text.push_str(&format!("answers: {} ({:.0}/s), errors: {}\n", self.answers, self.answers_per_sec, self.errors));
        if self.mode != BenchMode::Pipelined {
            text.push_str(&format!("connections: {} ({:.0}/s)\n", self.connections, self.connections_per_sec));
        }
        let l = &self.latency_us;
        text.push_str(&format!(
            "latency us: p50 {} p90 {} p99 {} p99.9 {} max {} mean {:.1}\n",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        ));
        if let (Some(before), Some(held), Some(per_conn)) =
            (self.server_rss_kib_before, self.server_rss_kib_held, self.server_kib_per_conn)
        {
            text.push_str(&format!(
                "server rss: {before} KiB before, {held} KiB held: {per_conn:.2} KiB per connection\n"
            ));
        }
        if let Some(seconds) = self.server_cpu_seconds {
            text.push_str(&format!("server cpu: {seconds:.2} s"));
            if let Some(per_answer) = self.server_cpu_us_per_answer {
                text.push_str(&format!(", {per_answer:.2} us per answer"));
            }
            if let Some(per_run) = self.answers_per_server_run {
                text.push_str(&format!(", {per_run:.1} answers per wake-up"));
            }
            text.push('\n');
        }
        let cpus = match self.client_cpus {
            1 => "the 1 CPU it may use".to_owned(),
            n => format!("the {n} CPUs it may use"),
        };
        match self.client_cpu_percent {
            Some(percent) => text.push_str(&format!("client cpu: {percent:.0}% of {cpus}\n")),
            None => text.push_str("client cpu: unknown\n"),
        }
        if self.client_bound {
            text.push_str("client-bound: the load generator was the bottleneck\n");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_paced_only_between_a_microsecond_and_a_week_per_question() {
        assert_eq!(pacing_interval(50, 50_000.0).unwrap(), Duration::from_millis(1));
        assert!(pacing_interval(50, 50_000_000.0).is_ok(), "a microsecond");
        assert!(pacing_interval(50, 1e12).is_err(), "an interval that rounds to nothing");
        assert!(pacing_interval(50, 1e-30).is_err(), "an interval longer than any run");
        assert!(pacing_interval(1, 0.0).is_err());
        assert!(pacing_interval(1, f64::NAN).is_err());
    }

    fn config() -> BenchConfig {
        BenchConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 1060)),
            tls: None,
            protocol: BenchProtocol::Zen,
            mode: BenchMode::Pipelined,
            conns: 50,
            depth: 1,
            duration: Duration::from_secs(2),
            warmup: Duration::ZERO,
            rate: Some(50_000.0),
            hold: Duration::from_secs(1),
            server_pids: vec![1],
            progress: false,
        }
    }

    fn tally(answers: u64) -> Tally {
        let mut tally = Tally::new();
        tally.answers = answers;
        tally.record(Duration::from_micros(100));
        tally
    }

    /// Answers that have all arrived, ready to be framed.
    fn arrived(exchanges: Exchanges, bytes: &'static [u8]) -> AnswerReader<&'static [u8]> {
        let mut answers = AnswerReader::new(&b""[..], exchanges);
        answers.pending.extend_from_slice(bytes);
        answers
    }

    #[test]
    fn every_expected_answer_ends_with_its_protocols_terminator_and_holds_no_other() {
        for protocol in [BenchProtocol::Zen, BenchProtocol::RedisPing] {
            let exchanges = protocol.exchanges();
            for (question, answer) in exchanges.pairs {
                assert_eq!(answer.last(), Some(&exchanges.terminator), "{protocol:?}: {}", answer.escape_ascii());
                let ends = answer.iter().filter(|&&byte| byte == exchanges.terminator).count();
                assert_eq!(ends, 1, "{protocol:?}: {}", answer.escape_ascii());
                assert!(!question.is_empty());
            }
        }
        assert_eq!(BenchProtocol::RedisPing.exchanges().nth(7), (&b"PING\r\n"[..], &b"+PONG\r\n"[..]));
    }

    #[test]
    fn zen_answers_are_framed_by_their_full_stop() {
        let mut answers = arrived(ZEN_EXCHANGES, b"Ugly.Pretty.Complex.Compl");
        assert_eq!(answers.check_buffered(b"Ugly."), Some(true));
        // A wrong answer is consumed whole: the next one is still checked from its start.
        assert_eq!(answers.check_buffered(b"Implicit."), Some(false));
        assert_eq!(answers.check_buffered(b"Complex."), Some(true));
        assert_eq!(answers.check_buffered(b"Complex."), None, "an unfinished answer waits");
        // A line feed ends nothing in this protocol.
        let mut answers = arrived(ZEN_EXCHANGES, b"+PONG\r\n");
        assert_eq!(answers.check_buffered(b"Ugly."), None);
    }

    #[test]
    fn redis_ping_answers_are_framed_by_their_line_feed() {
        let mut answers = arrived(REDIS_PING_EXCHANGES, b"+PONG\r\n-ERR wrong. really\r\n+PONG\r\n+PONG\r");
        assert_eq!(answers.check_buffered(b"+PONG\r\n"), Some(true));
        // A full stop ends nothing in this protocol: the error is one wrong answer.
        assert_eq!(answers.check_buffered(b"+PONG\r\n"), Some(false));
        assert_eq!(answers.check_buffered(b"+PONG\r\n"), Some(true));
        assert_eq!(answers.check_buffered(b"+PONG\r\n"), None, "an unfinished answer waits");
        // Byte for byte: a bare line feed, or another case, is wrong.
        let mut answers = arrived(REDIS_PING_EXCHANGES, b"+PONG\n+pong\r\n");
        assert_eq!(answers.check_buffered(b"+PONG\r\n"), Some(false));
        assert_eq!(answers.check_buffered(b"+PONG\r\n"), Some(false));
    }

    #[tokio::test]
    async fn an_answer_cut_short_by_the_end_of_the_stream_is_missing() {
        let mut answers = AnswerReader::new(&b"+PONG\r\n+PONG\r"[..], REDIS_PING_EXCHANGES);
        assert_eq!(answers.check_next(b"+PONG\r\n").await, Some(true));
        assert_eq!(answers.check_next(b"+PONG\r\n").await, None);
        let mut answers = AnswerReader::new(&b"Ugly.Implicit"[..], ZEN_EXCHANGES);
        assert_eq!(answers.check_next(b"Ugly.").await, Some(true));
        assert_eq!(answers.check_next(b"Implicit.").await, None);
    }

    #[test]
    fn the_text_report_names_the_protocol() {
        let zen = report(&config(), &tally(10), None, None, &CpuUse::default());
        assert!(zen.to_text().contains("s measured, zen protocol\n"), "{}", zen.to_text());
        let redis = BenchConfig { protocol: BenchProtocol::RedisPing, ..config() };
        let measured = report(&redis, &tally(10), None, None, &CpuUse::default());
        assert!(measured.to_text().contains("s measured, redis-ping protocol\n"), "{}", measured.to_text());
        assert_eq!(serde_json::to_value(&measured).unwrap()["protocol"], "redis-ping");
    }

    #[test]
    fn server_cpu_is_reported_per_answer() {
        let cpu = CpuUse {
            wall: Duration::from_secs(2),
            server: Some(Duration::from_millis(500)),
            server_runs: Some(25_000),
            client: Some(Duration::ZERO),
        };
        let measured = report(&config(), &tally(100_000), None, None, &cpu);
        assert_eq!(measured.server_cpu_seconds, Some(0.5));
        assert_eq!(measured.server_cpu_us_per_answer, Some(5.0));
        assert_eq!(measured.answers_per_server_run, Some(4.0));
        let text = measured.to_text();
        assert!(text.contains("server cpu: 0.50 s, 5.00 us per answer, 4.0 answers per wake-up"), "{text}");
    }

    #[test]
    fn a_client_using_all_the_cpus_it_may_use_is_flagged_as_the_bottleneck() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let busy = CpuUse {
            wall: Duration::from_secs(2),
            server: None,
            server_runs: None,
            client: Some(Duration::from_secs(2) * 97 / 100 * cpus as u32),
        };
        let measured = report(&config(), &tally(10), None, None, &busy);
        assert_eq!(measured.client_cpus, cpus);
        assert!(measured.client_cpu_percent.is_some_and(|percent| (percent - 97.0).abs() < 0.01), "{measured:?}");
        assert!(measured.client_bound);
        assert!(
            measured.to_text().contains("client-bound: the load generator was the bottleneck"),
            "{}",
            measured.to_text()
        );

        let calm = CpuUse { client: Some(Duration::from_secs(1) * cpus as u32), ..busy };
        let measured = report(&config(), &tally(10), None, None, &calm);
        assert!(!measured.client_bound, "{measured:?}");
        assert!(!measured.to_text().contains("client-bound"), "{}", measured.to_text());
    }

    #[test]
    fn without_a_server_pid_or_answers_there_is_no_cpu_per_answer() {
        let cpu =
            CpuUse { wall: Duration::from_secs(2), server: None, server_runs: None, client: Some(Duration::ZERO) };
        let measured = report(&config(), &tally(10), None, None, &cpu);
        assert_eq!((measured.server_cpu_seconds, measured.server_cpu_us_per_answer), (None, None));
        assert!(!measured.to_text().contains("server cpu"));

        let cpu = CpuUse { server: Some(Duration::from_millis(10)), ..cpu };
        let measured = report(&config(), &tally(0), None, None, &cpu);
        assert_eq!((measured.server_cpu_seconds, measured.server_cpu_us_per_answer), (Some(0.01), None));
    }

    #[test]
    fn the_json_report_keeps_its_fields_and_names_the_mode_in_lowercase() {
        let measured = report(&config(), &tally(10), None, None, &CpuUse::default());
        let json = serde_json::to_value(&measured).unwrap();
        assert_eq!(json["mode"], "pipelined");
        assert_eq!(json["protocol"], "zen");
        for field in [
            "conns",
            "depth",
            "rate",
            "seconds",
            "answers",
            "answers_per_sec",
            "connections",
            "connections_per_sec",
            "errors",
            "latency_us",
            "server_rss_kib_before",
            "server_rss_kib_held",
            "server_kib_per_conn",
            "server_cpu_seconds",
            "server_cpu_us_per_answer",
            "answers_per_server_run",
            "client_cpus",
            "client_cpu_percent",
            "client_bound",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
    }
}
