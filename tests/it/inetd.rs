//! The book's two inetd variants: one accepted connection on standard input (`--inetd`,
//! inetd's nowait mode), and a listening socket on standard input (`--listen-fd 0
//! --exit-when-idle SECS`, inetd's wait mode); the wrong kind of socket in either; both driven
//! by real socket-passing tools, `systemd-socket-activate` and socat; and the shipped lines of
//! `deploy/inetd/inetd.conf` under the real inetd, Debian's `openbsd-inetd`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::{
        fd::OwnedFd,
        unix::{fs::PermissionsExt, net::UnixStream},
    },
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::helpers::{
    DEADLINE, Launch, SERVER_BIN, TempDir, ZenServer, ask_like_the_book, connect, free_port, free_port_below_ephemeral,
    read_answers, read_to_close, read_until_closed,
};

const EX_CONFIG: i32 = 78;
const EX_UNAVAILABLE: i32 = 69;

/// A connected pair: the client's end, and the server's end as accepted.
fn accepted_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    (client, accepted)
}

/// Waits for the server to exit by itself and returns its exit code.
fn exit_code(server: &mut ZenServer) -> Option<i32> {
    let status = server.wait_exit(DEADLINE).unwrap_or_else(|| panic!("still running; log:\n{}", server.log()));
    status.code()
}

#[test]
fn inetd_mode_serves_the_connection_on_standard_input_then_exits_0() {
    let (mut client, accepted) = accepted_pair();
    // As inetd does: the connection is both standard input and standard output.
    let output = OwnedFd::from(accepted.try_clone().unwrap());
    let launch = Launch::args(&["--inetd"]).stdin(OwnedFd::from(accepted)).stdout(output);
    let mut server = ZenServer::launch(launch.ready_when("serving the connection on standard input"));
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Ugly.");
    client.write_all(b"Explicit is better than?Simple is better than?").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut client), b"Implicit.Complex.", "answers, and nothing else (no log lines)");
    assert_eq!(exit_code(&mut server), Some(0), "log:\n{}", server.log());
}

#[test]
fn wait_mode_serves_every_client_on_the_inherited_listener_then_exits_when_idle() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let launch = Launch::args(&["--listen-fd", "0", "--exit-when-idle", "1"]).stdin(OwnedFd::from(listener));
    let mut server = ZenServer::launch(launch);
    assert_eq!(server.addr(), addr, "it listens where it was told");
    for _ in 0..3 {
        let mut client = connect(addr);
        client.write_all(b"Beautiful is better than?Simple is better than?").unwrap();
        assert_eq!(read_answers(&mut client, 2), [&b"Ugly."[..], b"Complex."]);
    }
    let served = Instant::now();
    assert_eq!(exit_code(&mut server), Some(0), "log:\n{}", server.log());
    assert!(
        served.elapsed() >= Duration::from_millis(900),
        "exited after {:?}, before 1 s of idleness",
        served.elapsed()
    );
    assert!(server.log().contains("cause=\"idle\""), "log:\n{}", server.log());
}

#[test]
fn a_client_still_connected_keeps_the_wait_mode_server_from_exiting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let launch = Launch::args(&["--listen-fd", "0", "--exit-when-idle", "1"]).stdin(OwnedFd::from(listener));
    let mut server = ZenServer::launch(launch);
    let mut client = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Ugly.");
    // Twice the idle time with the client connected: still served.
    assert!(server.wait_exit(Duration::from_secs(2)).is_none(), "exited under a connected client");
    assert_eq!(ask_like_the_book(&mut client, b"Simple is better than?"), b"Complex.");
    drop(client);
    assert_eq!(exit_code(&mut server), Some(0));
}

#[test]
fn a_client_connected_in_wait_mode_keeps_nobody_else_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let launch = Launch::args(&["--listen-fd", "0", "--exit-when-idle", "1"]).stdin(OwnedFd::from(listener));
    let server = ZenServer::launch(launch);
    let mut staying = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut staying, b"Beautiful is better than?"), b"Ugly.");
    // For three idle periods, while the server waits for the staying client to leave, others
    // come and go: every one is served, none is told the server is busy.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let mut other = connect(server.addr());
        assert_eq!(ask_like_the_book(&mut other, b"Simple is better than?"), b"Complex.", "log:\n{}", server.log());
        drop(other);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ask_like_the_book(&mut staying, b"Explicit is better than?"), b"Implicit.");
}

#[test]
fn inetd_mode_exits_at_once_after_its_connection_whatever_the_lame_duck_period() {
    let (mut client, accepted) = accepted_pair();
    let output = OwnedFd::from(accepted.try_clone().unwrap());
    let launch = Launch::args(&["--inetd"])
        .env("ZEN_SERVER__LAME_DUCK_MS", "4000")
        .stdin(OwnedFd::from(accepted))
        .stdout(output);
    let mut server = ZenServer::launch(launch.ready_when("serving the connection on standard input"));
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Ugly.");
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut client), b"");
    let closed = Instant::now();
    assert_eq!(exit_code(&mut server), Some(0), "log:\n{}", server.log());
    // Nothing listens, so there is no lame-duck period to wait out.
    assert!(closed.elapsed() < Duration::from_secs(3), "exited {:?} after its connection", closed.elapsed());
}

#[test]
fn inetd_mode_with_the_connection_on_standard_error_too_sends_the_client_answers_only() {
    let (mut client, accepted) = accepted_pair();
    // As inetd does: the connection is standard input, output and error. The log goes to the
    // system log, or nowhere where there is none, and never to the client.
    let (output, error) = (OwnedFd::from(accepted.try_clone().unwrap()), OwnedFd::from(accepted.try_clone().unwrap()));
    let launch = Launch::args(&["--inetd"]).stdin(OwnedFd::from(accepted)).stdout(output).stderr(error);
    let mut server = ZenServer::spawn(launch);
    client.write_all(b"Beautiful is better than?Why?").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut client), b"Ugly.Error: unknown aphorism.");
    assert_eq!(exit_code(&mut server), Some(0));
}

#[test]
fn a_client_gone_before_the_inetd_mode_server_started_is_a_one_line_error_and_a_retryable_exit() {
    let (client, accepted) = accepted_pair();
    // Reset: the accepted socket is left with no peer.
    socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO)).unwrap();
    drop(client);
    let mut server = ZenServer::spawn(Launch::args(&["--inetd"]).stdin(OwnedFd::from(accepted)));
    assert_eq!(exit_code(&mut server), Some(EX_UNAVAILABLE), "log:\n{}", server.log());
    let log = server.log();
    assert_eq!(log.trim_end().lines().count(), 1, "one line expected:\n{log}");
    assert!(log.contains("--inetd: descriptor 0: Transport endpoint is not connected"), "{log}");
}

/// Runs the server with `stdin` and `args`, expecting it to refuse at once.
fn refused(args: &[&str], stdin: OwnedFd) -> String {
    let mut server = ZenServer::spawn(Launch::args(args).stdin(stdin));
    assert_eq!(exit_code(&mut server), Some(EX_CONFIG), "log:\n{}", server.log());
    let log = server.log();
    assert_eq!(log.trim_end().lines().count(), 1, "one line expected:\n{log}");
    log
}

#[test]
fn the_wrong_kind_of_socket_on_standard_input_is_a_one_line_error_and_exit_78() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let log = refused(&["--inetd"], OwnedFd::from(listener));
    assert!(log.contains("--inetd: descriptor 0 is a listening socket") && log.contains("--listen-fd 0"), "{log}");

    let (_client, accepted) = accepted_pair();
    let log = refused(&["--listen-fd", "0"], OwnedFd::from(accepted));
    assert!(
        log.contains("--listen-fd: descriptor 0 is a connection, not listening") && log.contains("--inetd"),
        "{log}"
    );

    let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let log = refused(&["--inetd"], null);
    assert!(log.contains("--inetd: descriptor 0 is not a socket"), "{log}");
}

/// How docs/deployment.md runs `--inetd` under socat, and what the error says to do when
/// socat hands over a UNIX socket instead of the TCP connection.
const SOCAT_COMMAND: &str = r#"socat TCP-LISTEN:PORT,reuseaddr,fork EXEC:"zen-server --inetd",nofork"#;

#[test]
fn a_unix_socket_on_standard_input_as_socat_passes_without_nofork_is_refused_naming_the_command_that_works() {
    let (_socat, server_end) = UnixStream::pair().unwrap();
    let log = refused(&["--inetd"], OwnedFd::from(server_end));
    assert!(log.contains("--inetd: descriptor 0 is a UNIX socket") && log.contains(SOCAT_COMMAND), "{log}");
}

/// socat, started by a test with a command line of docs/deployment.md; stopped by its PID.
struct Socat {
    child: Child,
    /// What socat and the servers it started wrote to standard error.
    lines: mpsc::Receiver<String>,
}

impl Socat {
    /// Runs `command` (a shell command line starting with `socat`, listening on `port`), with
    /// this build's zen-server first on the PATH, and waits until it listens.
    fn start(command: &str, port: u16) -> Self {
        let bin = std::path::Path::new(SERVER_BIN).parent().unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut shell = Command::new("sh");
        // `exec`: the PID is socat's.
        shell.arg("-c").arg(format!("exec {command}")).env("PATH", path);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ZEN_") {
                shell.env_remove(name);
            }
        }
        let mut child = shell.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let (sender, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let end = Instant::now() + DEADLINE;
        while !is_listening_on(port) {
            assert!(Instant::now() < end, "socat did not listen on {port} in time: {command}");
            thread::sleep(Duration::from_millis(10));
        }
        Self { child, lines }
    }

    /// Waits for a line containing `text`; returns it, or every line seen.
    fn wait_for(&self, text: &str) -> Result<String, Vec<String>> {
        let end = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else { break };
            if line.contains(text) {
                return Ok(line);
            }
            seen.push(line);
        }
        Err(seen)
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Whether a socket listens on TCP port `port` (`/proc/net/tcp` and `tcp6`, state `0A`).
fn is_listening_on(port: u16) -> bool {
    let local_port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).unwrap_or_default().lines().skip(1).any(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            columns.len() > 3 && columns[1].ends_with(&local_port) && columns[3] == "0A"
        })
    })
}

#[test]
#[ignore = "needs socat: apt-get install socat"]
fn under_socat_with_nofork_each_client_is_answered_and_without_it_the_error_gives_the_command_that_works() {
    let documented = std::fs::read_to_string("docs/deployment.md").unwrap();
    assert!(documented.contains(SOCAT_COMMAND), "docs/deployment.md does not give {SOCAT_COMMAND}");

    let port = free_port();
    let socat = Socat::start(&SOCAT_COMMAND.replace("PORT", &port.to_string()), port);
    for _ in 0..2 {
        let mut client = connect(format!("127.0.0.1:{port}").parse().unwrap());
        client.write_all(b"Beautiful is better than?Explicit is better than?").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_close(&mut client), b"Ugly.Implicit.");
    }
    drop(socat);

    // Without nofork, socat relays between the client and a UNIX socket it gives the server.
    let port = free_port();
    let socat = Socat::start(&SOCAT_COMMAND.replace("PORT", &port.to_string()).replace(",nofork", ""), port);
    let mut client = connect(format!("127.0.0.1:{port}").parse().unwrap());
    client.write_all(b"Beautiful is better than?").unwrap();
    let error = socat.wait_for("zen-server: ").unwrap_or_else(|seen| panic!("no error from zen-server: {seen:?}"));
    assert!(error.contains("--inetd: descriptor 0 is a UNIX socket") && error.contains(SOCAT_COMMAND), "{error}");
    assert_eq!(read_until_closed(&mut client), b"", "no answer without nofork");
}

#[test]
#[ignore = "needs systemd-socket-activate: apt-get install systemd"]
fn nowait_mode_under_systemd_socket_activate_serves_each_connection_with_its_own_server() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let activator = ZenServer::launch(
        Launch::args(&["--inetd"])
            .wrapper(&["systemd-socket-activate", "--inetd", "--accept", "-l", &listen])
            .ready_when("Listening on"),
    );
    for _ in 0..3 {
        let mut client = connect(listen.parse().unwrap());
        client.write_all(b"Beautiful is better than?Explicit is better than?").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_close(&mut client), b"Ugly.Implicit.", "log:\n{}", activator.log());
    }
    assert!(
        activator.wait_for_log(&["serving the connection on standard input"], DEADLINE).is_some(),
        "log:\n{}",
        activator.log()
    );
}

#[test]
#[ignore = "needs systemd-socket-activate: apt-get install systemd"]
fn wait_mode_under_systemd_socket_activate_serves_then_exits_0_when_idle() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // systemd-socket-activate starts the server when the first client connects.
    let mut server = ZenServer::launch(
        Launch::args(&["--listen-fd", "0", "--exit-when-idle", "1"])
            .wrapper(&["systemd-socket-activate", "--inetd", "-l", &listen])
            .ready_when("Listening on"),
    );
    for _ in 0..2 {
        let mut client = connect(listen.parse().unwrap());
        assert_eq!(ask_like_the_book(&mut client, b"Simple is better than?"), b"Complex.");
    }
    assert_eq!(exit_code(&mut server), Some(0), "log:\n{}", server.log());
}

/// Debian's `openbsd-inetd` in the foreground (`-d`), serving the shipped lines of
/// `deploy/inetd/inetd.conf` with only their address and the server's path changed; stopped by
/// its PID.
struct Inetd {
    child: Child,
    /// Its debug lines, each with when it was read.
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<String>,
    _dir: TempDir,
}

impl Inetd {
    /// Serves the nowait line on `nowait_port` and the wait line on `wait_port`.
    fn start(nowait_port: u16, wait_port: u16) -> Self {
        let dir = TempDir::new("inetd");
        // inetd runs the server as `nobody`, who may not reach the build directory.
        let server = dir.path().join("zen-server");
        std::fs::copy(SERVER_BIN, &server).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let shipped = std::fs::read_to_string("deploy/inetd/inetd.conf").unwrap();
        let service = |line: &str, port: u16| {
            let line = line.trim_start_matches('#');
            let line = line.replacen("zen\t", &format!("127.0.0.1:{port}\t"), 1);
            line.replace("/usr/local/bin/zen-server", server.to_str().unwrap())
        };
        let nowait = shipped.lines().find(|line| line.starts_with("zen\t") && line.contains("\tnowait\t"));
        let wait =
            shipped.lines().find(|line| line.trim_start_matches('#').starts_with("zen\t") && line.contains("\twait\t"));
        let (Some(nowait), Some(wait)) = (nowait, wait) else { panic!("the shipped lines are missing:\n{shipped}") };
        let conf = dir.path().join("inetd.conf");
        std::fs::write(&conf, format!("{}\n{}\n", service(nowait, nowait_port), service(wait, wait_port))).unwrap();
        let mut child = Command::new("/usr/sbin/inetd")
            .arg("-d")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send((Instant::now(), line));
            }
        });
        let mut inetd = Self { child, lines, seen: Vec::new(), _dir: dir };
        for port in [nowait_port, wait_port] {
            inetd.wait_for(|line| line.starts_with(&format!("ADD: 127.0.0.1:{port} ")));
        }
        inetd
    }

    /// Waits for a line matching `predicate`; returns it and when it was read.
    fn wait_for(&mut self, predicate: impl Fn(&str) -> bool) -> (Instant, String) {
        let end = Instant::now() + DEADLINE;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let Ok((at, line)) = self.lines.recv_timeout(left) else { break };
            self.seen.push(line.clone());
            if predicate(&line) {
                return (at, line);
            }
        }
        panic!("inetd did not say what was expected; it said:\n{}", self.seen.join("\n"));
    }
}

impl Drop for Inetd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs openbsd-inetd: apt-get install openbsd-inetd"]
fn the_shipped_lines_under_openbsd_inetd_answer_only_and_the_wait_mode_server_exits_when_idle() {
    // Fixed ports, as a deployment's are: never an outgoing connection's, never the same twice.
    let (nowait_port, wait_port) = (free_port_below_ephemeral(), free_port_below_ephemeral());
    let mut inetd = Inetd::start(nowait_port, wait_port);

    // nowait: inetd puts the connection on standard input, output and error; the client gets
    // its answers and nothing else.
    for _ in 0..2 {
        let mut client = connect(format!("127.0.0.1:{nowait_port}").parse().unwrap());
        client.write_all(b"Beautiful is better than?Why?").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_close(&mut client), b"Ugly.Error: unknown aphorism.", "answers, and nothing else");
    }
    inetd.wait_for(|line| line.ends_with("reaped, status 0"));

    // wait: one server takes the listening socket and serves every client, then exits SECS
    // after the last one closed.
    let shipped = std::fs::read_to_string("deploy/inetd/inetd.conf").unwrap();
    let secs: u64 = shipped
        .split("--exit-when-idle ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|secs| secs.parse().ok())
        .expect("the wait line's --exit-when-idle");
    let addr = format!("127.0.0.1:{wait_port}").parse().unwrap();
    let mut first = connect(addr);
    assert_eq!(ask_like_the_book(&mut first, b"Simple is better than?"), b"Complex.");
    let (_, started) = inetd.wait_for(|line| line.contains(" execv "));
    let pid = started.split_whitespace().next().unwrap().to_owned();
    let mut second = connect(addr);
    assert_eq!(ask_like_the_book(&mut second, b"Explicit is better than?"), b"Implicit.");
    drop(first);
    drop(second);
    let closed = Instant::now();
    let (reaped_at, reaped) = inetd.wait_for(|line| line.starts_with(&format!("{pid} reaped")));
    assert!(reaped.ends_with("status 0"), "{reaped}");
    let after = reaped_at - closed;
    eprintln!("the wait-mode server (--exit-when-idle {secs}) exited {after:?} after its last client closed");
    assert!(after >= Duration::from_secs(secs) - Duration::from_millis(100), "exited after {after:?}");
    assert!(after <= Duration::from_secs(secs + 1), "exited after {after:?}");
}
