//! Listeners behind a PROXY-speaking load balancer, through the real binary: the header's
//! client becomes the session's peer, a LOCAL/UNKNOWN header keeps the socket's, and a
//! missing, malformed, late or untrusted header closes the connection (logged and counted),
//! while the plain listener is unaffected.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use crate::helpers::{
    DEADLINE, Launch, TempConfig, ZenServer, ask_like_the_book, connect, free_port, launch_on_free_port, read_to_close,
};

const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_zen-client");

/// A server with a plain listener and a PROXY listener, both on ephemeral ports; the PROXY
/// listener's address.
fn server_behind_proxy(settings: &str) -> (ZenServer, SocketAddr, TempConfig) {
    let config = TempConfig::new(&format!("[proxy]\nlisten = [\"127.0.0.1:0\"]\nheader_timeout_ms = 300\n{settings}"));
    let server = ZenServer::launch(Launch::args(&["--config", config.path(), "--listen", "127.0.0.1:0"]).listeners(2));
    let addr = server.proxy_addr();
    (server, addr, config)
}

fn refused_with(server: &ZenServer, behind: SocketAddr, send: &[u8], reason: &str) {
    let mut stream = connect(behind);
    stream.write_all(send).unwrap();
    assert_eq!(read_to_close(&mut stream), b"", "no answer without a valid header");
    let line = server.wait_for_log(&["closing a connection without a valid PROXY header", reason], DEADLINE);
    assert!(line.is_some(), "{reason}; log:\n{}", server.log());
}

#[test]
fn a_version_1_header_makes_its_client_the_sessions_peer() {
    let (server, behind, _config) = server_behind_proxy("");
    let mut stream = connect(behind);
    let header = format!("PROXY TCP4 192.0.2.7 {} 51000 {}\r\n", behind.ip(), behind.port());
    stream.write_all(header.as_bytes()).unwrap();
    assert_eq!(ask_like_the_book(&mut stream, b"Beautiful is better than?"), b"Ugly.");
    assert_eq!(ask_like_the_book(&mut stream, b"Simple is better than?"), b"Complex.");
    assert!(
        server.wait_for_log(&["peer=192.0.2.7:51000", "connection accepted"], DEADLINE).is_some(),
        "log:\n{}",
        server.log()
    );
}

#[test]
fn a_header_and_questions_in_one_write_are_all_served() {
    let (server, behind, _config) = server_behind_proxy("");
    let mut stream = connect(behind);
    stream.write_all(b"PROXY TCP6 2001:db8::7 ::1 51000 1060\r\nBeautiful is better than?Why?").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut stream), b"Ugly.Error: unknown aphorism.");
    assert!(server.wait_for_log(&["peer=[2001:db8::7]:51000"], DEADLINE).is_some(), "log:\n{}", server.log());
}

#[test]
fn a_local_or_unknown_header_keeps_the_sockets_peer_as_health_checks_need() {
    let (server, behind, _config) = server_behind_proxy("");
    let mut stream = connect(behind);
    let mine = stream.local_addr().unwrap();
    stream.write_all(b"PROXY UNKNOWN\r\n").unwrap();
    assert_eq!(ask_like_the_book(&mut stream, b"Explicit is better than?"), b"Implicit.");
    assert!(server.wait_for_log(&[&format!("peer={mine}"), "connection accepted"], DEADLINE).is_some());
    // zen-client's probe can speak to such a listener.
    let output =
        Command::new(CLIENT_BIN).args(["probe", "--proxy-header", "--addr", &behind.to_string()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = Command::new(CLIENT_BIN).args(["probe", "--addr", &behind.to_string()]).output().unwrap();
    assert!(!output.status.success(), "a probe without the header passed a PROXY listener");
}

#[test]
fn a_missing_malformed_or_late_header_closes_the_connection_and_the_plain_listener_is_unaffected() {
    let (server, behind, _config) = server_behind_proxy("");
    refused_with(&server, behind, b"Beautiful is better than?", "not a PROXY header");
    refused_with(&server, behind, b"PROXY TCP4 nonsense\r\n", "not a PROXY header");
    let late = Instant::now();
    refused_with(&server, behind, b"PROXY TCP4 192.0.2.7", "no PROXY header within 300ms");
    assert!(late.elapsed() >= Duration::from_millis(250), "closed after {:?}", late.elapsed());
    let mut plain = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut plain, b"Simple is better than?"), b"Complex.");
}

#[test]
fn a_connection_from_outside_the_trusted_ranges_is_closed() {
    let (server, behind, _config) = server_behind_proxy("trusted = [\"10.0.0.0/8\"]\n");
    let mut stream = connect(behind);
    stream.write_all(b"PROXY UNKNOWN\r\nBeautiful is better than?").unwrap();
    assert_eq!(read_to_close(&mut stream), b"");
    assert!(server.wait_for_log(&["is not in proxy.trusted"], DEADLINE).is_some(), "log:\n{}", server.log());
}

#[test]
fn during_the_lame_duck_period_clients_are_still_served_and_health_checks_fail() {
    // Long enough that a busy machine cannot let it pass before the checks below.
    let settings = "[server]\nlame_duck_ms = 5000\nshutdown_timeout_secs = 8\n";
    let (mut server, behind, _config) = server_behind_proxy(settings);
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait_for_log(&["failing health checks and still accepting"], DEADLINE).is_some());
    let shutting_down = server.wait_for_log(&["shutting down"], DEADLINE).unwrap_or_default();
    assert!(
        !shutting_down.contains("no new connections") && shutting_down.contains("lame-duck period"),
        "the log says what happens: {shutting_down}"
    );
    let mut check = connect(behind);
    check.write_all(b"PROXY UNKNOWN\r\nBeautiful is better than?").unwrap();
    assert_eq!(read_to_close(&mut check), b"Error: server shutting down.");
    let mut client = connect(behind);
    client.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 1060\r\n").unwrap();
    assert_eq!(ask_like_the_book(&mut client, b"Simple is better than?"), b"Complex.");
    drop(client);
    assert_eq!(server.wait_exit(DEADLINE).and_then(|s| s.code()), Some(0), "log:\n{}", server.log());
    assert!(TcpStream::connect(behind).is_err(), "still listening after the exit");
}

#[test]
fn probe_with_a_proxy_header_and_the_servers_settings_probes_its_proxy_listener() {
    let proxy_port = free_port();
    let (server, file, _port) = launch_on_free_port(|port| {
        let file = TempConfig::new(&format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\n"
        ));
        (Launch::args(&["--config", file.path()]), file)
    });
    assert_eq!(server.proxy_addr().port(), proxy_port);
    for args in [&["probe"][..], &["probe", "--proxy-header"]] {
        let output = Command::new(CLIENT_BIN).args(args).env("ZEN_CONFIG", file.path()).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
}
