//! systemd: the notify protocol against a datagram socket the test owns (readiness, status,
//! the watchdog fed only while every actor answers, stopping), socket activation with
//! `systemd-socket-activate`, and the shipped unit files through `systemd-analyze verify`.

use std::{
    io::Write,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::helpers::{DEADLINE, Launch, NotifySocket, TempDir, ZenServer, ask_like_the_book, connect, free_port};

fn notified_server(notify: &NotifySocket, watchdog_usec: u32, extra: &[(&str, &str)]) -> ZenServer {
    let launch = extra.iter().fold(
        Launch::with_env(&[("NOTIFY_SOCKET", notify.path()), ("WATCHDOG_USEC", &watchdog_usec.to_string())]),
        |launch, (name, value)| launch.env(name, value),
    );
    ZenServer::launch(launch)
}

#[test]
fn the_service_manager_hears_ready_with_a_status_then_the_watchdog_then_stopping() {
    let notify = NotifySocket::new();
    let mut server = notified_server(&notify, 400_000, &[]);
    let (ready, _) = notify.wait_for("READY=1");
    let status = ready.lines().find_map(|l| l.strip_prefix("STATUS=")).unwrap_or_default().to_owned();
    assert!(status.starts_with(&format!("serving on {}", server.addr())), "{ready:?}");
    // Pinged every half of WATCHDOG_USEC: several within a second.
    for _ in 0..3 {
        notify.wait_for("WATCHDOG=1");
    }
    server.signal(Signal::SIGTERM);
    let (stopping, _) = notify.wait_for("STOPPING=1");
    assert!(stopping.contains("STATUS=draining (SIGTERM)"), "{stopping:?}");
    assert_eq!(server.wait_exit(DEADLINE).and_then(|s| s.code()), Some(0));
}

#[test]
fn a_reload_says_reloading_with_the_time_then_ready_with_whether_it_took() {
    let notify = NotifySocket::new();
    let file = crate::helpers::TempConfig::new("");
    let launch =
        Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]).env("NOTIFY_SOCKET", notify.path());
    let server = ZenServer::launch(launch);
    notify.wait_for("READY=1");
    server.signal(Signal::SIGHUP);
    let (reloading, _) = notify.wait_for("RELOADING=1");
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading:?}");
    let (ready, _) = notify.wait_for("READY=1");
    assert!(ready.contains("STATUS=") && ready.contains("settings reloaded"), "{ready:?}");
    file.write("[limits]\nmax_connections = 0\n");
    server.signal(Signal::SIGHUP);
    notify.wait_for("RELOADING=1");
    let (ready, _) = notify.wait_for("READY=1");
    assert!(ready.contains("reload failed") && ready.contains("limits.max_connections = 0"), "{ready:?}");
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_server_runs() {
    let server = ZenServer::launch(Launch::with_env(&[("WATCHDOG_USEC", "100000")]));
    let mut client = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut client, b"Simple is better than?"), b"Complex.");
    assert!(!server.log().contains("watchdog"), "no watchdog without a service manager:\n{}", server.log());
}

#[test]
fn wedged_worker_threads_stop_the_watchdog_and_the_control_thread_says_so() {
    let notify = NotifySocket::new();
    let env = [
        ("ZEN_SERVER__WORKERS", "2"),
        ("ZEN_ORACLE__HANG_QUESTION", "Hang?"),
        ("ZEN_SERVER__SHUTDOWN_TIMEOUT_SECS", "1"),
    ];
    let mut server = notified_server(&notify, 400_000, &env);
    notify.wait_for("WATCHDOG=1");
    // Connections go to the two workers in turn: both threads wedge. The liveness checks run
    // on the control thread, which serves no client, and can say what is wrong.
    let hung: Vec<_> = (0..2)
        .map(|_| {
            let mut client = connect(server.addr());
            client.write_all(b"Hang?").unwrap();
            client
        })
        .collect();
    let (unresponsive, _) = notify.wait_for("STATUS=unresponsive: not every worker thread answered within 200ms");
    assert!(!unresponsive.contains("WATCHDOG=1"), "{unresponsive:?}");
    // From then on, no more pings: a full second is five periods of 200 ms.
    let quiet_until = Instant::now() + Duration::from_secs(1);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        if let Some(message) = notify.next(left) {
            assert!(!message.lines().any(|l| l == "WATCHDOG=1"), "fed the watchdog while wedged: {message:?}");
        }
    }
    assert!(server.log().contains("liveness check failed; not feeding the watchdog"), "log:\n{}", server.log());
    // The wedged threads cannot drain; the shutdown timeout and the bounded join still end the
    // process.
    server.signal(Signal::SIGTERM);
    notify.wait_for("STOPPING=1");
    assert_eq!(server.wait_exit(DEADLINE).and_then(|s| s.code()), Some(0), "log:\n{}", server.log());
    assert!(server.log().contains("did not stop in time"), "log:\n{}", server.log());
    drop(hung);
}

#[test]
#[ignore = "needs systemd-socket-activate: apt-get install systemd"]
fn socket_activation_serves_on_the_inherited_sockets_instead_of_binding() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // server.listen says another port: the inherited socket wins, and the log says so.
    // systemd-socket-activate starts the server when the first client connects.
    let mut server = ZenServer::launch(
        Launch::with_env(&[("ZEN_SERVER__LISTEN", "127.0.0.1:1")])
            .wrapper(&["systemd-socket-activate", "-l", &listen])
            .ready_when("Listening on"),
    );
    let mut client = connect(listen.parse().unwrap());
    assert_eq!(ask_like_the_book(&mut client, b"Explicit is better than?"), b"Implicit.");
    assert!(server.wait_for_log(&["server.listen is not used"], DEADLINE).is_some(), "log:\n{}", server.log());
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait_exit(DEADLINE).and_then(|s| s.code()), Some(0), "log:\n{}", server.log());
}

/// A root directory for `systemd-analyze verify --root`: the shipped units, the binaries they
/// run, and the system's own units they refer to.
fn unit_root(units: &[(&str, String)]) -> TempDir {
    let root = TempDir::new("units");
    let dir = |path: &str| {
        let dir = root.path().join(path);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    std::fs::copy(crate::helpers::SERVER_BIN, dir("usr/local/bin").join("zen-server")).unwrap();
    std::fs::copy("/bin/kill", dir("bin").join("kill")).unwrap();
    for (name, text) in units {
        std::fs::write(dir("etc/systemd/system").join(name), text).unwrap();
    }
    let status =
        Command::new("cp").args(["-a", "/usr/lib/systemd/system"]).arg(dir("usr/lib/systemd")).status().unwrap();
    assert!(status.success());
    root
}

fn verify(units: &[(&str, String)]) -> (bool, String) {
    let root = unit_root(units);
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(units.iter().map(|(name, _)| name))
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn shipped(name: &str) -> String {
    std::fs::read_to_string(Path::new("deploy/systemd").join(name)).unwrap()
}

#[test]
#[ignore = "needs systemd-analyze: apt-get install systemd"]
fn the_shipped_unit_files_pass_systemd_analyze_verify() {
    let units =
        [("zen-server.service", shipped("zen-server.service")), ("zen-server.socket", shipped("zen-server.socket"))];
    let (ok, complaints) = verify(&units);
    assert!(ok && complaints.is_empty(), "systemd-analyze verify:\n{complaints}");
    let service = &units[0].1;
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(service.lines().any(|l| l.starts_with(line)), "{line} missing from the service");
    }
    // The check can fail: a misspelled key is reported.
    let broken = [
        ("zen-server.service", service.replace("Type=notify", "Typ=notify")),
        ("zen-server.socket", shipped("zen-server.socket")),
    ];
    let (_, complaints) = verify(&broken);
    assert!(complaints.contains("Unknown key 'Typ'"), "{complaints}");
}
