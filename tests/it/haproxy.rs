//! The shipped `deploy/haproxy/haproxy.cfg` under the real HAProxy, in front of two zen-servers
//! listening for it with `proxy.listen`: clients from several addresses are answered by both,
//! which log each client's own address; a rolling restart (each server in turn stopped with
//! SIGTERM, out until HAProxy's health check has seen it go, started again on the same ports and
//! back in) under a steady stream of book-like clients loses no question, with SIGTERM alone
//! and, needing no retry at all, when each server is first drained in HAProxy through its
//! runtime API; and a SIGKILLed server is taken out by the health check while the other one
//! serves everyone.
//!
//! The test's copy of the file differs only in addresses: ports of the test's for the frontend
//! and the two servers, and the runtime API's socket in the test's directory, where the test
//! reads HAProxy's view of each server (`show stat`).

use std::{
    collections::HashSet,
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use socket2::{Domain, Protocol, Socket, Type};

use crate::helpers::{
    DEADLINE, Launch, TempConfig, TempDir, ZenServer, free_port_below_ephemeral, launch_on_port_from,
};

const SHIPPED: &str = "deploy/haproxy/haproxy.cfg";
/// The backend and its servers, as the shipped file names them.
const BACKEND: &str = "zen_servers";
const SERVERS: [&str; 2] = ["zen1", "zen2"];
/// Where HAProxy connects to the servers from: on loopback, the servers' own address. The
/// servers trust only this address, as the shipped file's comments say to set them up; the
/// health checks, which name no client, show it as their peer.
const HAPROXY_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The book's client's three questions and their answers.
const BOOK: [(&[u8], &[u8]); 3] = [
    (b"Beautiful is better than?", b"Ugly."),
    (b"Explicit is better than?", b"Implicit."),
    (b"Simple is better than?", b"Complex."),
];

/// A loopback address clients connect from, other than HAProxy's own (127.0.0.1).
fn client_address(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// One zen-server behind HAProxy: a plain listener on an ephemeral port (where the test learns
/// that it listens) and a PROXY listener on a fixed one, which HAProxy's file names.
struct Backend {
    server: ZenServer,
    /// `[proxy]` settings naming the fixed port, kept for restarts.
    settings: TempConfig,
    proxy_port: u16,
    /// The logs of the processes before this one.
    earlier_logs: String,
}

impl Backend {
    fn start() -> Self {
        // Below the ephemeral ports: while the server restarts, the clients' and HAProxy's own
        // connections, thousands of them, could otherwise be given its port.
        let (server, settings, proxy_port) = launch_on_port_from(free_port_below_ephemeral, |port| {
            // The lame-duck period outlasts HAProxy's detection (`fall 2` checks `inter 500` ms
            // apart): by the time the listener closes, no client connection arrives any more.
            let settings = TempConfig::new(&format!(
                "[server]\nlame_duck_ms = 2000\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\ntrusted = [\"{HAPROXY_SOURCE}/32\"]\n"
            ));
            (Launch::args(&["--config", settings.path(), "--listen", "127.0.0.1:0"]), settings)
        });
        Self { server, settings, proxy_port, earlier_logs: String::new() }
    }

    /// Starts the server again with the same settings, on the same PROXY port.
    fn restart(&mut self) {
        let launch = Launch::args(&["--config", self.settings.path(), "--listen", "127.0.0.1:0"]);
        let earlier = std::mem::replace(&mut self.server, ZenServer::launch(launch));
        self.earlier_logs += &earlier.log();
        self.earlier_logs.push('\n');
    }

    /// The log of every process so far.
    fn log(&self) -> String {
        format!("{}{}", self.earlier_logs, self.server.log())
    }

    /// The peers of the connections it accepted from clients: every `connection accepted`
    /// event's `peer`, but HAProxy's health checks.
    fn clients_served(&self) -> Vec<SocketAddr> {
        self.server.log().lines().filter_map(accepted_peer).filter(|peer| peer.ip() != HAPROXY_SOURCE).collect()
    }

    /// Waits until its log has a conversation of the client at `addr`.
    fn has_served(&self, addr: SocketAddr) -> bool {
        self.server.wait_for_log(&["connection accepted", &format!(" peer={addr}}}")], DEADLINE).is_some()
    }

    /// Waits until it has served any client (not a health check).
    fn wait_until_serving_clients(&self) -> bool {
        self.server.wait_for_log_count(
            |line| accepted_peer(line).is_some_and(|peer| peer.ip() != HAPROXY_SOURCE),
            1,
            DEADLINE,
        )
    }
}

/// Waits until one of `backends` has logged a conversation of the client at `addr`.
fn wait_until_logged(backends: &[Backend], addr: SocketAddr) -> bool {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if backends.iter().any(|backend| backend.clients_served().contains(&addr)) {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The `peer` of a `connection accepted` event: `session{id=7 peer=127.0.0.2:40000}: ...`.
fn accepted_peer(line: &str) -> Option<SocketAddr> {
    if !line.contains("connection accepted") {
        return None;
    }
    line.split(" peer=").nth(1)?.split('}').next()?.parse().ok()
}

/// HAProxy, running the test's copy of the shipped file in the foreground; killed (by PID)
/// when dropped.
struct HaProxy {
    child: Child,
    log: Arc<Mutex<String>>,
    /// The frontend, where clients connect.
    addr: SocketAddr,
    api: PathBuf,
    _dir: TempDir,
}

impl HaProxy {
    /// Runs the test's copy of the shipped file, in front of `backends`, until its runtime API
    /// answers; tries another frontend port if the one picked was taken meanwhile.
    fn start(backends: [&Backend; 2]) -> Self {
        let shipped = std::fs::read_to_string(SHIPPED).unwrap();
        let dir = TempDir::new("haproxy");
        let api = dir.path().join("admin.sock");
        let servers = [backends[0].proxy_port, backends[1].proxy_port];
        for _ in 0..5 {
            // HAProxy listens with SO_REUSEPORT: a port another test's HAProxy also took would
            // not fail, but share the clients. A port never given twice in this process, then.
            let port = free_port_below_ephemeral();
            let file = dir.path().join("haproxy.cfg");
            std::fs::write(&file, test_copy(&shipped, port, servers, &api)).unwrap();
            if let Some((child, log)) = run(&file, &api, port) {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                return Self { child, log, addr, api, _dir: dir };
            }
        }
        panic!("no free port for haproxy's frontend in five tries");
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends `command` to the runtime API; what HAProxy said.
    fn api(&self, command: &str) -> String {
        ask_api(&self.api, command).unwrap_or_else(|error| panic!("haproxy's runtime API: {error}"))
    }

    /// One column of `server`'s line in `show stat` (one CSV line per frontend, backend and
    /// server, after a header naming the columns).
    fn stat(&self, server: &str, column: &str) -> String {
        let stat = self.api("show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> =
            lines.next().and_then(|line| line.strip_prefix("# ")).expect("show stat's header").split(',').collect();
        let index = |name: &str| header.iter().position(|&field| field == name).expect("a show stat column");
        let (proxy, name, wanted) = (index("pxname"), index("svname"), index(column));
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|fields| fields.get(proxy) == Some(&BACKEND) && fields.get(name) == Some(&server))
            .and_then(|fields| fields.get(wanted).map(|value| value.to_string()))
            .unwrap_or_else(|| panic!("no {BACKEND}/{server} in show stat:\n{stat}"))
    }

    /// HAProxy's view of `server`: `UP`, `DOWN`, on its way (`UP 1/2`, `DOWN 1/2`), `DRAIN`.
    fn status(&self, server: &str) -> String {
        self.stat(server, "status")
    }

    /// Over the whole backend: connections that failed for good (`econ`), and connection
    /// attempts a server refused which HAProxy made again, to the same server (`wretr`) or
    /// another one (`wredis`).
    fn connection_errors_and_retries(&self) -> (u64, u64) {
        let count = |column: &str| -> u64 {
            self.stat("BACKEND", column).parse().unwrap_or_else(|_| panic!("{column} is a number"))
        };
        (count("econ"), count("wretr") + count("wredis"))
    }

    /// Waits until `column` of `server`'s line in `show stat` is `value`.
    fn wait_for_stat(&self, server: &str, column: &str, value: &str) {
        let end = Instant::now() + DEADLINE;
        loop {
            let now = self.stat(server, column);
            if now == value {
                return;
            }
            assert!(
                Instant::now() < end,
                "{server}'s {column} is still {now:?}, not {value:?}; haproxy's log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until HAProxy sees `server` as `status` (`UP`, `DOWN`, `DRAIN`).
    fn wait_for_status(&self, server: &str, status: &str) {
        self.wait_for_stat(server, "status", status);
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks `file` with `haproxy -c`, then runs it with `-db` (in the foreground, logging on
/// standard error) until its runtime API at `api` answers: the process and its log so far,
/// or `None` if HAProxy could not listen on `port`.
pub fn run(file: &Path, api: &Path, port: u16) -> Option<(Child, Arc<Mutex<String>>)> {
    let check = Command::new(haproxy_bin()).arg("-c").arg("-f").arg(file).output().unwrap();
    assert!(
        check.status.success(),
        "haproxy -c fails on {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut child = Command::new(haproxy_bin())
        .arg("-f")
        .arg(file)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
    let reader = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let end = Instant::now() + DEADLINE;
    loop {
        if ask_api(api, "show info").is_ok() {
            return Some((child, log));
        }
        if child.try_wait().unwrap().is_some() {
            // Its standard error is closed: the reader ends once it has every line.
            reader.join().unwrap();
            let said = log.lock().unwrap().clone();
            assert!(
                said.contains("cannot bind socket") && said.contains(&format!(":{port}]")),
                "haproxy exited:\n{said}"
            );
            return None;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("haproxy's runtime API did not answer in time; its log:\n{}", log.lock().unwrap());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `command` to the runtime API at `api`; what HAProxy said.
fn ask_api(api: &Path, command: &str) -> io::Result<String> {
    let mut api = UnixStream::connect(api)?;
    api.set_read_timeout(Some(DEADLINE))?;
    api.write_all(format!("{command}\n").as_bytes())?;
    let mut said = String::new();
    api.read_to_string(&mut said)?;
    Ok(said)
}

/// `haproxy` from `PATH`, or where Debian puts it (`/usr/sbin`, not in users' `PATH`).
fn haproxy_bin() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join("haproxy")).find(|bin| bin.is_file()))
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"))
}

/// The shipped file with the frontend on `frontend`, the servers on `servers` and the runtime
/// API at `api`; every other line as shipped.
fn test_copy(shipped: &str, frontend: u16, servers: [u16; 2], api: &Path) -> String {
    let changes = [
        ("bind *:1060", format!("bind *:{frontend}")),
        ("server zen1 127.0.0.1:10601 ", format!("server zen1 127.0.0.1:{} ", servers[0])),
        ("server zen2 127.0.0.1:10602 ", format!("server zen2 127.0.0.1:{} ", servers[1])),
        ("stats socket /run/haproxy/admin.sock ", format!("stats socket {} ", api.display())),
    ];
    let mut made = [0; 4];
    let copy: Vec<String> = shipped
        .lines()
        .map(|line| {
            let setting = line.trim_start();
            match changes.iter().position(|(from, _)| setting.starts_with(from)) {
                Some(index) => {
                    made[index] += 1;
                    line.replacen(changes[index].0, &changes[index].1, 1)
                }
                None => line.to_owned(),
            }
        })
        .collect();
    for ((from, _), count) in changes.iter().zip(made) {
        assert_eq!(count, 1, "{SHIPPED} should have one line starting with {from:?}");
    }
    copy.join("\n") + "\n"
}

/// A client as the book's: from `source`, connects to `addr`, asks the three questions, each
/// with one write and answered before the next, and closes. Returns its own address, which the
/// server that answered logs as the peer; or what went wrong.
fn converse(source: Ipv4Addr, addr: SocketAddr) -> Result<SocketAddr, String> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| format!("socket: {e}"))?;
    socket.bind(&SocketAddr::from((source, 0)).into()).map_err(|e| format!("binding {source}: {e}"))?;
    socket.connect_timeout(&addr.into(), DEADLINE).map_err(|e| format!("{source} connecting to {addr}: {e}"))?;
    let mut stream: TcpStream = socket.into();
    let local = stream.local_addr().map_err(|e| format!("{source}: {e}"))?;
    stream
        .set_read_timeout(Some(DEADLINE))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("{local}: {e}"))?;
    for (question, expected) in BOOK {
        let asked = question.escape_ascii();
        stream.write_all(question).map_err(|e| format!("{local} asking {asked}: {e}"))?;
        let mut answer = Vec::new();
        let mut buffer = [0; 256];
        while !answer.ends_with(b".") {
            match stream.read(&mut buffer) {
                Ok(0) => {
                    return Err(format!(
                        "{local}: closed after {:?}, asked {asked}",
                        answer.escape_ascii().to_string()
                    ));
                }
                Ok(read) => answer.extend_from_slice(&buffer[..read]),
                Err(e) => {
                    return Err(format!("{local}: {e} after {:?}, asked {asked}", answer.escape_ascii().to_string()));
                }
            }
        }
        if answer != expected {
            return Err(format!("{local} asked {asked}, answered {:?}", answer.escape_ascii().to_string()));
        }
    }
    Ok(local)
}

/// Book-like clients in a loop, one thread each, until stopped: each conversation counted, each
/// failure kept.
struct Clients {
    stop: Arc<AtomicBool>,
    conversations: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Clients {
    /// `sources.len()` threads, each connecting from its own address.
    fn start(sources: &[Ipv4Addr], addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let conversations = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = sources
            .iter()
            .map(|&source| {
                let (stop, conversations, failures) = (stop.clone(), conversations.clone(), failures.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Err(failure) = converse(source, addr) {
                            failures.lock().unwrap().push(failure);
                        }
                        conversations.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self { stop, conversations, failures, threads }
    }

    /// Conversations over so far, failed or not.
    fn count(&self) -> usize {
        self.conversations.load(Ordering::Relaxed)
    }

    /// Stops every thread after its conversation: how many there were, and the failures.
    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        (self.conversations.load(Ordering::Relaxed), self.failures.lock().unwrap().clone())
    }
}

/// Two zen-servers and HAProxy in front of them, both servers up in HAProxy's eyes.
fn start_all() -> ([Backend; 2], HaProxy) {
    let backends = [Backend::start(), Backend::start()];
    let haproxy = HaProxy::start([&backends[0], &backends[1]]);
    for server in SERVERS {
        haproxy.wait_for_status(server, "UP");
    }
    (backends, haproxy)
}

#[test]
#[ignore = "needs haproxy: apt-get install haproxy"]
fn clients_through_haproxy_are_answered_by_both_backends_which_log_the_real_client_addresses() {
    let (backends, haproxy) = start_all();
    let mut clients = Vec::new();
    for n in 2..10 {
        for _ in 0..2 {
            let client = converse(client_address(n), haproxy.addr)
                .unwrap_or_else(|failure| panic!("{failure}; haproxy's log:\n{}", haproxy.log()));
            clients.push(client);
        }
    }
    for &client in &clients {
        assert!(
            wait_until_logged(&backends, client),
            "no server logged the client {client}; logs:\n{}\n{}",
            backends[0].server.log(),
            backends[1].server.log()
        );
    }
    let expected: HashSet<SocketAddr> = clients.iter().copied().collect();
    for (backend, name) in backends.iter().zip(SERVERS) {
        let served = backend.clients_served();
        assert!(!served.is_empty(), "{name} served no client; haproxy's log:\n{}", haproxy.log());
        for peer in &served {
            assert!(expected.contains(peer), "{name} logged {peer}, which is none of the clients {clients:?}");
        }
    }
    let served = backends[0].clients_served().len() + backends[1].clients_served().len();
    assert_eq!(served, clients.len(), "each conversation is logged once, by the server that answered it");
}

/// How a rolling restart takes each server out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TakeOut {
    /// SIGTERM only: the server's lame-duck period fails HAProxy's checks while it still
    /// accepts, so HAProxy takes it out before its listener closes.
    Sigterm,
    /// `set server ... state drain` through the runtime API first, SIGTERM once HAProxy has no
    /// connection open to it, `state ready` after the restart.
    DrainInHaproxyFirst,
}

/// A rolling restart under book-like clients, and what it left behind.
struct RollingRestart {
    conversations: usize,
    /// Conversations over while each server was being restarted.
    during: [usize; 2],
    failures: Vec<String>,
    haproxy: HaProxy,
    backends: [Backend; 2],
}

impl RollingRestart {
    /// Six threads of clients through HAProxy, from six addresses, while each server in turn
    /// is taken out as `take_out` says, stopped (exit 0 after a clean drain), started again on
    /// the same ports and serving clients again.
    fn run(take_out: TakeOut) -> Self {
        let (mut backends, haproxy) = start_all();
        let sources: Vec<Ipv4Addr> = (10..16).map(client_address).collect();
        let clients = Clients::start(&sources, haproxy.addr);
        let mut during = [0; 2];
        for (index, name) in SERVERS.into_iter().enumerate() {
            let before = clients.count();
            let backend = &mut backends[index];
            if take_out == TakeOut::DrainInHaproxyFirst {
                haproxy.api(&format!("set server {BACKEND}/{name} state drain"));
                haproxy.wait_for_status(name, "DRAIN");
                haproxy.wait_for_stat(name, "scur", "0");
            }
            backend.server.signal(Signal::SIGTERM);
            let status =
                backend.server.wait_exit(DEADLINE).unwrap_or_else(|| panic!("{name} did not exit after SIGTERM"));
            assert_eq!(status.code(), Some(0), "{name}'s exit; log:\n{}", backend.server.log());
            assert!(backend.server.log().contains("drained unfinished=0"), "{name}'s log:\n{}", backend.server.log());
            // Restarted at once, the server would be back before a health check noticed: it
            // stays out until HAProxy shows it down.
            haproxy.wait_for_status(name, "DOWN");
            backend.restart();
            if take_out == TakeOut::DrainInHaproxyFirst {
                haproxy.api(&format!("set server {BACKEND}/{name} state ready"));
            }
            haproxy.wait_for_status(name, "UP");
            assert!(
                backend.wait_until_serving_clients(),
                "HAProxy sends no client to {name} after its restart; haproxy's log:\n{}",
                haproxy.log()
            );
            during[index] = clients.count() - before;
        }
        let (conversations, failures) = clients.stop();
        Self { conversations, during, failures, haproxy, backends }
    }

    /// Fails the test, with every log, if any conversation failed or none happened during a
    /// restart.
    fn assert_no_question_lost(&self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} conversations failed, first ones: {:#?}\nhaproxy's log:\n{}\nzen1's log:\n{}\nzen2's log:\n{}",
            self.failures.len(),
            self.conversations,
            &self.failures[..self.failures.len().min(10)],
            self.haproxy.log(),
            self.backends[0].log(),
            self.backends[1].log()
        );
        assert!(self.during.iter().all(|&count| count > 0), "no conversation during a restart: {:?}", self.during);
    }
}

/// Runs a rolling restart taking each server out as `take_out` says, and fails the test if a
/// question was lost, or a connection refused or tried again.
fn rolling_restart_loses_nothing_and_refuses_nobody(take_out: TakeOut) {
    let restart = RollingRestart::run(take_out);
    let (errors, retries) = restart.haproxy.connection_errors_and_retries();
    eprintln!(
        "rolling restart ({take_out:?}): {} conversations, {:?} during each server's restart, {errors} connection \
         errors, {retries} connections refused and tried again, {} failed",
        restart.conversations,
        restart.during,
        restart.failures.len()
    );
    restart.assert_no_question_lost();
    // Each server failed HAProxy's checks during its lame-duck period, before its listener
    // closed (or was drained in HAProxy first): HAProxy stopped sending clients there first, so
    // none was refused and none had to be tried again.
    assert_eq!((errors, retries), (0, 0), "a connection was refused; haproxy's log:\n{}", restart.haproxy.log());
}

#[test]
#[ignore = "needs haproxy: apt-get install haproxy"]
fn a_rolling_restart_under_short_lived_clients_loses_no_question() {
    rolling_restart_loses_nothing_and_refuses_nobody(TakeOut::Sigterm);
}

#[test]
#[ignore = "needs haproxy: apt-get install haproxy"]
fn a_rolling_restart_that_drains_each_server_in_haproxy_first_needs_no_retry() {
    rolling_restart_loses_nothing_and_refuses_nobody(TakeOut::DrainInHaproxyFirst);
}

#[test]
#[ignore = "needs haproxy: apt-get install haproxy"]
fn a_killed_backend_is_detected_by_the_health_check_and_traffic_moves_to_the_other() {
    let (mut backends, haproxy) = start_all();
    backends[0].server.signal(Signal::SIGKILL);
    assert!(backends[0].server.wait_exit(DEADLINE).is_some(), "zen1 survived SIGKILL");
    let killed = Instant::now();

    // Clients keep coming while HAProxy's checks find zen1 gone (two failed checks, 500 ms
    // apart); the ones it still sends there are refused and tried again on zen2, or fail if
    // its retries run out: those are only counted, for the report.
    let source = client_address(20);
    let mut failed = 0;
    while haproxy.status("zen1") != "DOWN" {
        assert!(
            killed.elapsed() < DEADLINE,
            "zen1 still {:?}; haproxy's log:\n{}",
            haproxy.status("zen1"),
            haproxy.log()
        );
        failed += usize::from(converse(source, haproxy.addr).is_err());
    }
    let down_after = killed.elapsed();
    assert_eq!(haproxy.stat("zen1", "check_status"), "L4CON", "zen1's last check could not connect");
    // Then every client succeeds: 10 in a row within the deadline, then 50 more, all on zen2.
    let mut in_a_row = 0;
    while in_a_row < 10 {
        assert!(killed.elapsed() < DEADLINE, "no 10 clients in a row succeeded; haproxy's log:\n{}", haproxy.log());
        in_a_row = if converse(source, haproxy.addr).is_ok() { in_a_row + 1 } else { 0 };
    }
    assert_eq!(haproxy.status("zen2"), "UP");

    let mut clients = Vec::new();
    for n in 0..50 {
        let source = client_address(21 + n % 4);
        let client = converse(source, haproxy.addr)
            .unwrap_or_else(|failure| panic!("conversation {n} after zen1 was taken out: {failure}"));
        clients.push(client);
    }
    for client in clients {
        assert!(backends[1].has_served(client), "zen2 did not log {client}; its log:\n{}", backends[1].server.log());
    }
    eprintln!("zen1 down {down_after:?} after SIGKILL; {failed} conversations failed before that");
}
