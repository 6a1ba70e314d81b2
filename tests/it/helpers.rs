//! Running the real `zen-server` binary: start it on an ephemeral port, learn its address
//! from its `listening` log event, watch its log, signal it, scrape its metrics endpoint, and
//! kill it (by PID) when the test is over.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};

#[path = "../../src/bin/zen-client/procfs.rs"]
mod procfs;

/// How long anything a test waits for may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_zen-server");

/// Lines the server has written to standard error so far, and whether that has ended.
#[derive(Clone, Default)]
struct Log(Arc<(Mutex<Lines>, Condvar)>);

/// The lines, and whether standard error was closed.
type Lines = (Vec<String>, bool);

impl Log {
    fn push(&self, line: String) {
        let (lines, changed) = &*self.0;
        lines.lock().unwrap().0.push(line);
        changed.notify_all();
    }

    /// Standard error was closed: every line is in.
    fn end(&self) {
        let (lines, changed) = &*self.0;
        lines.lock().unwrap().1 = true;
        changed.notify_all();
    }

    /// Waits up to `deadline` until every line is in; whether it is.
    fn wait_for_end(&self, deadline: Duration) -> bool {
        let (lines, changed) = &*self.0;
        let guard = lines.lock().unwrap();
        !changed.wait_timeout_while(guard, deadline, |(_, ended)| !*ended).unwrap().1.timed_out()
    }

    /// The first `count` lines matching `predicate`, waiting up to `deadline` for them.
    fn wait_for_lines(
        &self,
        deadline: Duration,
        count: usize,
        predicate: impl Fn(&str) -> bool,
    ) -> Option<Vec<String>> {
        let (lines, changed) = &*self.0;
        let end = Instant::now() + deadline;
        let mut guard = lines.lock().unwrap();
        loop {
            let matching: Vec<String> = guard.0.iter().filter(|line| predicate(line)).take(count).cloned().collect();
            if matching.len() == count {
                return Some(matching);
            }
            let left = end.checked_duration_since(Instant::now())?;
            guard = changed.wait_timeout(guard, left).unwrap().0;
        }
    }

    fn text(&self) -> String {
        self.0.0.lock().unwrap().0.join("\n")
    }
}

/// A `zen-server` process started by a test; killed when dropped if it is still running.
pub struct ZenServer {
    child: Child,
    log: Log,
    /// Every address the server said it listens on, in order.
    pub addrs: Vec<SocketAddr>,
    status: Option<ExitStatus>,
}

/// How to start the server.
#[derive(Default)]
pub struct Launch {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// How many `listening` events to wait for.
    pub listeners: usize,
    /// A lower limit on open file descriptors (`ulimit -n`), set before the server starts.
    pub fd_limit: Option<u32>,
    /// A command the server runs under (`systemd-socket-activate -l ADDR`, `unshare ...`): its
    /// words, then the server's path and arguments.
    pub wrapper: Vec<String>,
    /// The server's standard input and output (nothing by default), and its standard error
    /// (by default a pipe the test reads the log from).
    pub stdin: Option<Stdio>,
    pub stdout: Option<Stdio>,
    pub stderr: Option<Stdio>,
    /// Log text that says the server is ready, instead of `listening` events.
    pub ready_when: Option<String>,
    /// How long the server may take to be ready ([`DEADLINE`] unless said).
    pub ready_within: Option<Duration>,
}

impl Launch {
    pub fn args(args: &[&str]) -> Self {
        Self { args: args.iter().map(|a| a.to_string()).collect(), listeners: 1, ..Self::default() }
    }

    /// `zen-server --listen 127.0.0.1:0` with these environment settings.
    pub fn with_env(vars: &[(&str, &str)]) -> Self {
        vars.iter().fold(Self::args(&["--listen", "127.0.0.1:0"]), |launch, (name, value)| launch.env(name, value))
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn ready_within(mut self, deadline: Duration) -> Self {
        self.ready_within = Some(deadline);
        self
    }

    pub fn listeners(mut self, count: usize) -> Self {
        self.listeners = count;
        self
    }

    pub fn fd_limit(mut self, limit: u32) -> Self {
        self.fd_limit = Some(limit);
        self
    }

    pub fn wrapper(mut self, words: &[&str]) -> Self {
        self.wrapper = words.iter().map(|w| w.to_string()).collect();
        self
    }

    pub fn stdin(mut self, stdin: impl Into<Stdio>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    pub fn stdout(mut self, stdout: impl Into<Stdio>) -> Self {
        self.stdout = Some(stdout.into());
        self
    }

    /// Standard error elsewhere than the test's pipe: the server's log is then not seen.
    pub fn stderr(mut self, stderr: impl Into<Stdio>) -> Self {
        self.stderr = Some(stderr.into());
        self
    }

    pub fn ready_when(mut self, text: &str) -> Self {
        self.ready_when = Some(text.into());
        self
    }
}

/// A `zen-server` command with a clean environment: no `ZEN_*` variable of the test runner's.
pub fn server_command(args: &[String], env: &[(String, String)], fd_limit: Option<u32>, wrapper: &[String]) -> Command {
    let mut command = match (fd_limit, wrapper.split_first()) {
        // The shell sets the limit and replaces itself with the server: same PID.
        (Some(limit), _) => {
            let mut shell = Command::new("sh");
            shell.arg("-c").arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\"")).arg(SERVER_BIN);
            shell
        }
        (None, Some((program, words))) => {
            let mut command = Command::new(program);
            command.args(words).arg(SERVER_BIN);
            command
        }
        (None, None) => Command::new(SERVER_BIN),
    };
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ZEN_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command
}

impl ZenServer {
    /// Starts `zen-server --listen 127.0.0.1:0` with the built-in settings.
    pub fn start() -> Self {
        Self::launch(Launch::args(&["--listen", "127.0.0.1:0"]))
    }

    /// Starts the server as `launch` says and waits until it listens (or says it is ready).
    pub fn launch(launch: Launch) -> Self {
        let (listeners, ready_when) = (launch.listeners, launch.ready_when.clone());
        let deadline = launch.ready_within.unwrap_or(DEADLINE);
        let mut server = Self::spawn(launch);
        if let Some(text) = ready_when {
            if server.wait_for_log(&[&text], deadline).is_none() {
                panic!("server did not say {text:?} in time; log:\n{}", server.log());
            }
            return server;
        }
        let Some(lines) = server.log.wait_for_lines(deadline, listeners, is_listening) else {
            panic!("server did not listen in time; log:\n{}", server.log());
        };
        server.addrs = lines.iter().map(|line| listening_addr(line)).collect();
        server
    }

    /// Starts the server as `launch` says, without waiting for anything.
    pub fn spawn(mut launch: Launch) -> Self {
        let mut command = server_command(&launch.args, &launch.env, launch.fd_limit, &launch.wrapper);
        let stdin = launch.stdin.take().unwrap_or_else(Stdio::null);
        let stdout = launch.stdout.take().unwrap_or_else(Stdio::null);
        let stderr = launch.stderr.take().unwrap_or_else(Stdio::piped);
        let mut child = command.stdin(stdin).stdout(stdout).stderr(stderr).spawn().unwrap();
        let log = Log::default();
        if let Some(stderr) = child.stderr.take() {
            let sink = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    match line {
                        Ok(line) => sink.push(line),
                        Err(_) => break,
                    }
                }
                sink.end();
            });
        } else {
            log.end();
        }
        Self { child, log, addrs: Vec::new(), status: None }
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Waits up to `deadline` for a log line containing every one of `parts`.
    /// The address of the server's PROXY protocol listener, once it listens.
    pub fn proxy_addr(&self) -> SocketAddr {
        let line = self.wait_for_log(&["listening", "proxy=true"], DEADLINE).expect("a PROXY listener");
        listening_addr(&line)
    }

    /// The address of the server's listener in `tls.listen` (`tls.proxy_listen` with `proxy`),
    /// once it listens.
    pub fn tls_addr(&self, proxy: bool) -> SocketAddr {
        let kind = format!("proxy={proxy} tls=true");
        let line = self.wait_for_log(&["listening", &kind], DEADLINE).expect("a TLS listener");
        listening_addr(&line)
    }

    pub fn wait_for_log(&self, parts: &[&str], deadline: Duration) -> Option<String> {
        let lines = self.log.wait_for_lines(deadline, 1, |line| parts.iter().all(|part| line.contains(part)))?;
        lines.into_iter().next()
    }

    /// Waits up to `deadline` until `count` log lines satisfy `predicate`.
    pub fn wait_for_log_count(&self, predicate: impl Fn(&str) -> bool, count: usize, deadline: Duration) -> bool {
        self.log.wait_for_lines(deadline, count, predicate).is_some()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    pub fn signal(&self, signal: signal::Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        signal::kill(pid, signal).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        procfs::rss_kib(self.pid()).expect("the server's memory")
    }

    /// CPU time the server process has used so far (user + system).
    pub fn cpu_time(&self) -> Duration {
        procfs::cpu_time(self.pid()).expect("the server's CPU time")
    }

    /// Waits until the server has read every byte its clients sent so far: none of its
    /// connections, accepted or still queued, holds unread bytes in the kernel.
    pub fn wait_until_read(&self) {
        let port = self.addr().port();
        let end = Instant::now() + DEADLINE;
        loop {
            let unread = queued_bytes_on_port(port, Queue::Receive);
            if unread == 0 {
                return;
            }
            assert!(Instant::now() < end, "the server left {unread} bytes unread; log:\n{}", self.log());
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the server has written answers that a client has not taken: some of its
    /// connections have bytes waiting in the kernel to be sent.
    pub fn wait_until_answers_wait(&self) {
        let port = self.addr().port();
        let end = Instant::now() + DEADLINE;
        while queued_bytes_on_port(port, Queue::Send) == 0 {
            assert!(Instant::now() < end, "no answer waits for a client; log:\n{}", self.log());
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits up to `deadline` for the process to exit (and its log to be read to the end).
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                self.log.wait_for_end(end.saturating_duration_since(Instant::now()));
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A socket's queue in the kernel.
#[derive(Clone, Copy)]
enum Queue {
    /// Bytes written and not yet taken by the peer.
    Send,
    /// Bytes received and not yet read.
    Receive,
}

/// Bytes in `queue` of the established IPv4 connections whose local port is `port`, from
/// `/proc/net/tcp` (columns: `sl local_address rem_address st tx_queue:rx_queue`, addresses
/// and queues in hexadecimal, state `01` for established).
fn queued_bytes_on_port(port: u16, queue: Queue) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local_port = format!(":{port:04X}");
    let mut total = 0;
    for line in table.lines().skip(1) {
        let mut columns = line.split_whitespace().skip(1);
        let (Some(local), Some(state), Some(queues)) = (columns.next(), columns.nth(1), columns.next()) else {
            continue;
        };
        if local.ends_with(&local_port) && state == "01" {
            let (tx_queue, rx_queue) = queues.split_once(':').unwrap();
            let bytes = match queue {
                Queue::Send => tx_queue,
                Queue::Receive => rx_queue,
            };
            total += u64::from_str_radix(bytes, 16).unwrap();
        }
    }
    total
}

/// The `listening` event, in text or JSON format.
fn is_listening(line: &str) -> bool {
    line.contains(" listening ") || line.contains("\"message\":\"listening\"")
}

fn listening_addr(line: &str) -> SocketAddr {
    let text = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("addr="))
        .or_else(|| line.split("\"addr\":\"").nth(1).and_then(|rest| rest.split('"').next()))
        .unwrap_or_else(|| panic!("no address in {line}"));
    text.parse().unwrap()
}

impl Drop for ZenServer {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `zen-server` to completion (for commands and failures that exit by themselves).
pub fn run_server(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut child = server_command(&args, &env, None, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("zen-server {args:?} did not exit in time");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status, stdout, stderr)
}

/// A TOML file in the temporary directory, removed on drop.
pub struct TempConfig(pub PathBuf);

impl TempConfig {
    pub fn new(contents: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!("zen-it-{}-{}.toml", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Replaces the file's contents (as an editor saving it would).
    pub fn write(&self, contents: &str) {
        std::fs::write(&self.0, contents).unwrap();
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A raw connection with a read deadline.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads until `n` answers (each ending with '.') have arrived; returns them.
pub fn read_answers(stream: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
    let mut answers = Vec::with_capacity(n);
    let mut current = Vec::new();
    let mut buffer = [0; 4096];
    while answers.len() < n {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "connection closed after {} of {n} answers", answers.len());
        for &byte in &buffer[..read] {
            current.push(byte);
            if byte == b'.' {
                answers.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(current.is_empty(), "bytes after the last answer: {:?}", current.escape_ascii().to_string());
    answers
}

/// Whether anything (bytes or the end of the stream) has arrived on `stream` and waits to be
/// read; reads nothing.
pub fn has_arrived(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let peeked = stream.peek(&mut [0; 1]);
    stream.set_nonblocking(false).unwrap();
    !matches!(peeked, Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
}

/// Reads until the server closes the connection.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    stream.read_to_end(&mut received).unwrap();
    received
}

/// Reads until end of file or a reset; a reset after the server's last words is fine.
pub fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(error) => panic!("read failed after {} bytes: {error}", received.len()),
        }
    }
}

/// Asks one question the way the book's client does and returns the answer.
pub fn ask_like_the_book(stream: &mut TcpStream, question: &[u8]) -> Vec<u8> {
    stream.write_all(question).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    while !answer.ends_with(b".") {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "closed before the answer to {:?}", question.escape_ascii().to_string());
        answer.extend_from_slice(&buffer[..read]);
    }
    answer
}

/// A directory in the temporary directory, removed with its contents on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(purpose: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!("zen-it-{purpose}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The service manager's end of `NOTIFY_SOCKET`.
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: TempDir,
}

impl NotifySocket {
    pub fn new() -> Self {
        let dir = TempDir::new("notify");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Self { socket, path, _dir: dir }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The next notification, if one comes within `deadline`.
    pub fn next(&self, deadline: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(deadline)).unwrap();
        let mut buffer = [0; 4096];
        let n = self.socket.recv(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
    }

    /// Waits for a notification holding `line`; returns it with every one seen on the way.
    pub fn wait_for(&self, line: &str) -> (String, Vec<String>) {
        self.wait_for_within(line, DEADLINE)
    }

    /// [`Self::wait_for`], for up to `deadline`.
    pub fn wait_for_within(&self, line: &str, deadline: Duration) -> (String, Vec<String>) {
        let end = Instant::now() + deadline;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let Some(message) = self.next(left) else { break };
            if message.lines().any(|l| l == line) {
                return (message, seen);
            }
            seen.push(message);
        }
        panic!("no {line:?} within {deadline:?}; got {seen:?}");
    }
}

/// Raises this process's soft limit on open files to `need`, for a test that holds that many
/// connections; panics, saying so, if the hard limit is lower.
pub fn raise_fd_limit(need: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(hard >= need, "this test holds {need} connections; the hard limit on open files is {hard}");
    if soft < need {
        setrlimit(Resource::RLIMIT_NOFILE, need, hard).unwrap();
    }
}

/// A connection to `addr` from the local address `source` (on loopback: 127.0.0.2 and so on,
/// as other clients).
pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect_timeout(&addr.into(), DEADLINE).unwrap();
    socket.into()
}

/// The ports [`free_port`] and [`free_port_below_ephemeral`] gave out in this test process:
/// neither gives one twice (two binds to port 0 in a row can get the same port).
static PORTS_GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A port nothing uses right now on any address (bound, then let go), for settings and tools
/// that need a port number up front rather than port 0; never one given before in this test
/// process.
pub fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
        let mut given = PORTS_GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A port nothing uses right now, below the system's range of ephemeral ports, as a deployment's
/// fixed ports are: unlike [`free_port`]'s, it is never given to an outgoing connection, nor
/// returned twice in one test process, so a server restarted on it while clients connect (and
/// other tests pick ports) finds it free again.
pub fn free_port_below_ephemeral() -> u16 {
    const LOWEST: u16 = 10_000;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral = range.split_whitespace().next().and_then(|low| low.parse().ok()).unwrap_or(32_768_u16);
    assert!(ephemeral > LOWEST + 1000, "ephemeral ports start at {ephemeral}: no room below");
    let span = u32::from(ephemeral - LOWEST);
    // Where to start looking: somewhere else in each test process.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let start = nanos ^ std::process::id();
    let mut given = PORTS_GIVEN.lock().unwrap();
    let port = (0..span)
        .map(|step| LOWEST + u16::try_from(start.wrapping_add(step) % span).unwrap())
        .find(|port| !given.contains(port) && std::net::TcpListener::bind(("0.0.0.0", *port)).is_ok())
        .expect("a free port below the ephemeral range");
    given.push(port);
    port
}

/// Launches what `launch` makes of a free port; tries another port if someone took the first
/// one in between (it was only free when it was picked).
pub fn launch_on_free_port(launch: impl Fn(u16) -> (Launch, TempConfig)) -> (ZenServer, TempConfig, u16) {
    launch_on_port_from(free_port, launch)
}

/// [`launch_on_free_port`] with ports from `pick`.
pub fn launch_on_port_from(
    pick: impl Fn() -> u16,
    launch: impl Fn(u16) -> (Launch, TempConfig),
) -> (ZenServer, TempConfig, u16) {
    for _ in 0..5 {
        let port = pick();
        let (launch, config) = launch(port);
        let mut server = ZenServer::spawn(launch);
        match server.log.wait_for_lines(DEADLINE, 1, |line| is_listening(line) || line.contains("cannot listen")) {
            Some(lines) if is_listening(&lines[0]) => {
                server.addrs = vec![listening_addr(&lines[0])];
                return (server, config, port);
            }
            Some(_) => continue,
            None => panic!("server did not listen in time; log:\n{}", server.log()),
        }
    }
    panic!("no free port in five tries");
}

/// One HTTP GET of the metrics page.
pub fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: zen\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The body may be chunked; the exposition's own lines are what matter.
    body.lines().filter(|line| line.starts_with('#') || line.starts_with("zen_")).collect::<Vec<_>>().join("\n")
}

/// A server with metrics on a free port, and that port's address.
pub fn server_with_metrics(settings: &str) -> (ZenServer, TempConfig, SocketAddr) {
    let (server, config, port) = launch_on_free_port(|port| {
        let config = TempConfig::new(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n{settings}"));
        (Launch::args(&["--config", config.path(), "--listen", "127.0.0.1:0"]), config)
    });
    (server, config, SocketAddr::from(([127, 0, 0, 1], port)))
}
