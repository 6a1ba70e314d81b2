//! Shutdown on SIGTERM and SIGINT: drain, deadline, and the second signal.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::helpers::{DEADLINE, Launch, TempConfig, ZenServer, ask_like_the_book, connect, read_to_close};

/// How long a drain with nothing left to send may take, generously.
const PROMPTLY: Duration = Duration::from_secs(3);

fn drain_with(signal: Signal) {
    let mut server = ZenServer::start();
    let mut idle = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut idle, b"Beautiful is better than?"), b"Ugly.");
    let mut halfway = connect(server.addr());
    halfway.write_all(b"Explicit is").unwrap();
    let silent = connect(server.addr());
    assert!(server.wait_for_log(&["connection accepted", "id=3"], DEADLINE).is_some());

    // Each client reads what it is told and closes at the end of it, as clients do (one that
    // stays open is waited for, up to the linger after the server's last answer).
    let told: Vec<_> = [idle, halfway, silent]
        .into_iter()
        .map(|mut stream| std::thread::spawn(move || read_to_close(&mut stream)))
        .collect();
    let sent = Instant::now();
    server.signal(signal);
    let status = server.wait_exit(PROMPTLY).unwrap_or_else(|| panic!("still running; log:\n{}", server.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(sent.elapsed() < PROMPTLY);
    for client in told {
        assert_eq!(client.join().unwrap(), b"Error: server shutting down.");
    }
    assert!(server.log().contains("drained unfinished=0"), "log:\n{}", server.log());
}

#[test]
fn sigterm_with_connected_clients_tells_them_and_exits_0_promptly() {
    drain_with(Signal::SIGTERM);
}

#[test]
fn sigint_drains_like_sigterm() {
    drain_with(Signal::SIGINT);
}

/// A server whose one question has a 100 KB answer, and a client that asks it 200 times
/// without reading: 20 MB the kernel cannot buffer, so the session cannot finish.
fn server_with_a_stuck_client(shutdown_timeout_secs: u64) -> (ZenServer, std::net::TcpStream, TempConfig) {
    let answer = "z".repeat(100_000);
    let file = TempConfig::new(&format!(
        "[server]\nshutdown_timeout_secs = {shutdown_timeout_secs}\n[oracle]\nanswers = [{{ question = \"Big?\", answer = \"{answer}.\" }}]\n"
    ));
    let server = ZenServer::launch(Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]));
    let mut stuck = connect(server.addr());
    stuck.write_all(&b"Big?".repeat(200)).unwrap();
    let mut first = [0; 1];
    stuck.read_exact(&mut first).unwrap(); // the answers are being written
    (server, stuck, file)
}

#[test]
fn a_drain_gives_up_on_a_client_that_does_not_read_after_the_shutdown_timeout() {
    let (mut server, _stuck, _file) = server_with_a_stuck_client(1);
    let sent = Instant::now();
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(DEADLINE).unwrap_or_else(|| panic!("still running; log:\n{}", server.log()));
    assert_eq!(status.code(), Some(0));
    assert!(sent.elapsed() >= Duration::from_millis(900), "exited before the timeout: {:?}", sent.elapsed());
    assert!(server.log().contains("drained unfinished=1"), "log:\n{}", server.log());
}

#[test]
fn a_second_signal_during_a_drain_exits_at_once() {
    let (mut server, _stuck, _file) = server_with_a_stuck_client(600);
    server.signal(Signal::SIGTERM);
    assert!(server.wait_for_log(&["shutting down"], DEADLINE).is_some(), "log:\n{}", server.log());
    server.signal(Signal::SIGINT);
    let status = server.wait_exit(PROMPTLY).unwrap_or_else(|| panic!("still running; log:\n{}", server.log()));
    assert_eq!(status.code(), Some(130), "log:\n{}", server.log());
    // The log says why, though the process exits without the usual flush at the end.
    assert!(
        server.wait_for_log(&["WARN", "second signal: exiting at once", "signal=\"SIGINT\""], DEADLINE).is_some(),
        "log:\n{}",
        server.log()
    );
}
