//! The shipped `deploy/supervisord/zen-server.conf` under the real supervisord: it starts and
//! answers, a killed server is respawned and answers within a second of being spawned, one that
//! exits 70 because a worker thread stalled is respawned, `supervisorctl stop` drains and exits
//! 0, and a settings error ends FATAL instead of restarting in a loop.

use std::{
    net::SocketAddr,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::helpers::{DEADLINE, SERVER_BIN, TempConfig, TempDir, ask_like_the_book, connect, free_port};

/// A supervisord of the test's own, running the shipped program section.
struct Supervisord {
    child: Child,
    dir: TempDir,
    addr: SocketAddr,
}

impl Supervisord {
    /// Runs the shipped program section with the test's binary, a settings file listening on a
    /// free port (plus `settings`), and the log in the test's directory: only paths and the user
    /// change.
    fn start(settings: &str) -> (Self, TempConfig) {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = TempConfig::new(&format!("[server]\nlisten = [\"{addr}\"]\n{settings}"));
        let dir = TempDir::new("supervisord");
        let shipped = std::fs::read_to_string("deploy/supervisord/zen-server.conf").unwrap();
        let program: String = shipped
            .lines()
            .filter(|line| !line.starts_with("user="))
            .map(|line| {
                if line.starts_with("command=") {
                    format!("command={SERVER_BIN} --config {}", config.path())
                } else if line.starts_with("stdout_logfile=") {
                    format!("stdout_logfile={}", dir.path().join("zen-server.log").display())
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let socket = dir.path().join("supervisor.sock");
        let main = format!(
            "[unix_http_server]\nfile={socket}\n\n[supervisord]\nnodaemon=true\nlogfile={dir}/supervisord.log\npidfile={dir}/supervisord.pid\nchildlogdir={dir}\n\n[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n[supervisorctl]\nserverurl=unix://{socket}\n\n{program}\n",
            socket = socket.display(),
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("supervisord.conf"), main).unwrap();
        let child = Command::new("supervisord")
            .arg("-c")
            .arg(dir.path().join("supervisord.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (Self { child, dir, addr }, config)
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new("supervisorctl")
            .arg("-c")
            .arg(self.dir.path().join("supervisord.conf"))
            .args(args)
            .output()
            .unwrap()
    }

    /// `supervisorctl status zen-server`, e.g. `RUNNING`, `FATAL`.
    fn state(&self) -> String {
        let output = self.ctl(&["status", "zen-server"]);
        String::from_utf8_lossy(&output.stdout).split_whitespace().nth(1).unwrap_or_default().to_owned()
    }

    fn wait_for_state(&self, state: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.state() == state {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The server's process ID, as supervisord reports it.
    fn server_pid(&self) -> Option<i32> {
        String::from_utf8_lossy(&self.ctl(&["pid", "zen-server"]).stdout).trim().parse().ok().filter(|&pid| pid > 0)
    }

    /// Waits until the server answers on its address.
    fn wait_answering(&self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(mut stream) = std::net::TcpStream::connect(self.addr) {
                stream.set_read_timeout(Some(DEADLINE)).unwrap();
                if std::io::Write::write_all(&mut stream, b"Simple is better than?").is_ok() {
                    let mut answer = [0; 8];
                    if std::io::Read::read_exact(&mut stream, &mut answer).is_ok() && &answer == b"Complex." {
                        return true;
                    }
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}\n{}", read("supervisord.log"), read("zen-server.log"))
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        // Stops the program too (supervisord stops its programs on SIGTERM).
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end && self.child.try_wait().ok().flatten().is_none() {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs supervisord: apt-get install supervisor"]
fn supervisord_starts_restarts_after_a_kill_and_stops_with_a_drain() {
    let (supervisor, _config) = Supervisord::start("");
    assert!(supervisor.wait_answering(DEADLINE), "never answered; log:\n{}", supervisor.log());
    assert!(supervisor.wait_for_state("RUNNING", DEADLINE), "log:\n{}", supervisor.log());

    let pid = supervisor.server_pid().expect("a server process");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    // supervisord notices the death and spawns again on its own one-second ticks (about 2 s
    // in all, whatever the program does); what zen-server controls is the time from being
    // spawned to answering. Seeing the log line late only makes that time look longer.
    let respawned = |log: &str| log.matches("spawned: 'zen-server'").count() >= 2;
    let end = Instant::now() + DEADLINE;
    while !respawned(&supervisor.log()) {
        assert!(Instant::now() < end, "not spawned again after a kill; log:\n{}", supervisor.log());
        thread::sleep(Duration::from_millis(10));
    }
    let spawned = Instant::now();
    assert!(supervisor.wait_answering(DEADLINE), "not answering after a kill; log:\n{}", supervisor.log());
    let own_part = spawned.elapsed();
    eprintln!("killed to spawned (supervisord): {:?}; spawned to answering: {own_part:?}", spawned - killed);
    assert!(own_part < Duration::from_secs(1), "answering {own_part:?} after being spawned");
    assert_ne!(supervisor.server_pid(), Some(pid), "the same process answered after SIGKILL");

    let mut client = connect(supervisor.addr);
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Ugly.");
    let output = supervisor.ctl(&["stop", "zen-server"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("stopped"), "{output:?}");
    assert_eq!(crate::helpers::read_to_close(&mut client), b"Error: server shutting down.");
    assert!(supervisor.log().contains("stopped: zen-server (exit status 0)"), "log:\n{}", supervisor.log());
}

#[test]
fn the_user_the_program_runs_as_is_created_by_the_command_its_file_and_the_docs_give() {
    let shipped = std::fs::read_to_string("deploy/supervisord/zen-server.conf").unwrap();
    let user = shipped.lines().find_map(|line| line.strip_prefix("user=")).expect("a user= line");
    let useradd = format!("useradd --system --no-create-home --shell /usr/sbin/nologin {user}");
    assert!(shipped.contains(&useradd), "the file does not say how to create {user}");
    let docs = std::fs::read_to_string("docs/deployment.md").unwrap();
    assert!(docs.contains(&useradd), "docs/deployment.md does not say how to create {user}");
}

#[test]
#[ignore = "needs supervisord: apt-get install supervisor"]
fn a_settings_error_ends_fatal_instead_of_restarting_in_a_loop() {
    let (supervisor, _config) = Supervisord::start("[limits]\nmax_connections = 0\n");
    assert!(
        supervisor.wait_for_state("FATAL", Duration::from_secs(30)),
        "state {}; log:\n{}",
        supervisor.state(),
        supervisor.log()
    );
    let log = supervisor.log();
    assert!(log.contains("invalid limits.max_connections = 0"), "the reason is in the log:\n{log}");
    // Given up for good: still FATAL a little later, no new attempt.
    let attempts = log.matches("spawned: 'zen-server'").count();
    thread::sleep(Duration::from_secs(2));
    assert_eq!(supervisor.state(), "FATAL");
    assert_eq!(supervisor.log().matches("spawned: 'zen-server'").count(), attempts);
}

#[test]
#[ignore = "needs supervisord: apt-get install supervisor"]
fn a_worker_stalled_for_the_stall_timeout_makes_the_server_exit_70_and_supervisord_restarts_it() {
    let settings = "workers = 2\nworker_stall_timeout_secs = 2\n[oracle]\nhang_question = \"Hang?\"\n";
    let (supervisor, _config) = Supervisord::start(settings);
    assert!(supervisor.wait_answering(DEADLINE), "never answered; log:\n{}", supervisor.log());
    let pid = supervisor.server_pid().expect("a server process");
    let mut wedging = connect(supervisor.addr);
    std::io::Write::write_all(&mut wedging, b"Hang?").unwrap();
    let end = Instant::now() + DEADLINE;
    while !supervisor.log().contains("exited: zen-server (exit status 70; not expected)") {
        assert!(Instant::now() < end, "no exit 70; log:\n{}", supervisor.log());
        thread::sleep(Duration::from_millis(50));
    }
    let respawned = |log: &str| log.matches("spawned: 'zen-server'").count() >= 2;
    while !respawned(&supervisor.log()) {
        assert!(Instant::now() < end, "not spawned again; log:\n{}", supervisor.log());
        thread::sleep(Duration::from_millis(50));
    }
    assert!(supervisor.wait_answering(DEADLINE), "not answering again; log:\n{}", supervisor.log());
    assert_ne!(supervisor.server_pid(), Some(pid), "the stalled process answered");
}
