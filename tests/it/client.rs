//! `zen-client ask`, `probe` and `bench` against the real server, and against no server at
//! all: what they print and their exit codes (0 ok, 1 failure, 2 bad command line).

use std::{
    net::TcpListener,
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::helpers::{DEADLINE, TempDir, ZenServer};

const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_zen-client");

fn zen_client(args: &[&str]) -> Output {
    Command::new(CLIENT_BIN).args(args).env_remove("ZEN_ADDR").output().unwrap()
}

/// An address nothing listens on: bound to an ephemeral port, then let go.
fn vacant_addr() -> String {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

#[test]
fn ask_prints_each_question_with_its_answer() {
    let server = ZenServer::start();
    let addr = server.addr().to_string();
    let output = zen_client(&["ask", "--addr", &addr, "Beautiful is better than?", "Why?"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout, "Beautiful is better than? Ugly.\nWhy? Error: unknown aphorism.\n");
}

#[test]
fn probe_exits_0_against_a_healthy_server() {
    let server = ZenServer::start();
    let output = zen_client(&["probe", "--addr", &server.addr().to_string()]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn an_unreachable_server_exits_1_with_one_line_naming_the_address() {
    let addr = vacant_addr();
    for command in [&["ask", "--addr", &addr, "Why?"][..], &["probe", "--addr", &addr]] {
        let output = zen_client(command);
        assert_eq!(output.status.code(), Some(1), "{command:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(&format!("zen-client: cannot connect to {addr}: ")), "{stderr}");
        assert!(stderr.contains("refused"), "{stderr}");
    }
}

#[test]
fn a_bad_command_line_exits_2() {
    assert_eq!(zen_client(&["ask"]).status.code(), Some(2));
    assert_eq!(zen_client(&["bench", "--mode", "fast"]).status.code(), Some(2));
    assert_eq!(zen_client(&["probe", "--timeout", "0"]).status.code(), Some(2));
    assert_eq!(zen_client(&["--help"]).status.code(), Some(0));
}

#[test]
fn an_address_without_a_port_is_a_command_line_mistake() {
    let output = zen_client(&["probe", "--addr", "127.0.0.1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected HOST:PORT"));
}

#[test]
fn asking_a_proxy_listener_without_a_header_names_it_and_says_what_to_do() {
    let file = crate::helpers::TempConfig::new("[proxy]\nlisten = [\"127.0.0.1:0\"]\n");
    let server = ZenServer::launch(
        crate::helpers::Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]).listeners(2),
    );
    let behind = server.proxy_addr().to_string();
    let output = zen_client(&["ask", "--addr", &behind, "Why?"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&behind) && stderr.contains("--proxy-header"), "{stderr}");
    let output = zen_client(&["ask", "--proxy-header", "--addr", &behind, "Why?"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "Why? Error: unknown aphorism.\n");
}

#[test]
fn each_help_opens_with_its_own_description_and_gives_examples_signals_exit_codes_and_variables() {
    let help = String::from_utf8(zen_client(&["--help"]).stdout).unwrap();
    assert!(help.starts_with("Asks a Zen server questions"), "{help}");
    assert!(help.contains("Examples:") && help.contains("Exit codes:"), "{help}");
    let output = Command::new(crate::helpers::SERVER_BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for part in ["Examples:", "127.0.0.1:1060", "SIGHUP", "SIGTERM", "ZEN_<SECTION>__<KEY>", "Exit codes:", "78"] {
        assert!(help.contains(part), "{part} missing from zen-server --help:\n{help}");
    }
}

#[test]
fn tls_to_a_plain_listener_is_told_within_a_second_or_so_to_drop_tls() {
    let server = ZenServer::start();
    let addr = server.addr().to_string();
    // Whom the client trusts does not matter: the server never gets to a certificate.
    let dir = TempDir::new("plain-tls");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap().cert.pem()).unwrap();
    let ca = ca.to_str().unwrap();
    // The plain server answers the hello as a question when its random bytes hold a '?' (about
    // one connection in three), and otherwise waits for the rest of a question.
    let answered = format!(
        "zen-client: the server at {addr} does not speak TLS here (it answered the TLS hello with \"Error: unknown aphorism.\"): drop --tls\n"
    );
    let silent = format!(
        "zen-client: the server at {addr} sent nothing back to the TLS hello within 1s, where a TLS server replies at once: if it does not speak TLS here, drop --tls\n"
    );
    for _ in 0..3 {
        let started = Instant::now();
        let output = zen_client(&["ask", "--tls", "--ca", ca, "--addr", &addr, "Why?"]);
        let took = started.elapsed();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr == answered || stderr == silent, "{stderr}");
        // Well before ask's own 5 s timeout, which would say there was no answer.
        assert!(took < Duration::from_millis(4500), "told after {took:?}");
    }
}

#[test]
fn a_misspelt_command_is_told_the_command_it_may_be() {
    for (word, command) in [("aks", "ask"), ("prboe", "probe"), ("bnech", "bench"), ("pro", "probe")] {
        let output = zen_client(&[word]);
        assert_eq!(output.status.code(), Some(2), "{word}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with(&format!("error: unrecognized subcommand '{word}'")), "{stderr}");
        assert!(stderr.contains(&format!("a similar subcommand exists: '{command}'")), "{stderr}");
    }
    let output = zen_client(&["frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("similar"));
}

#[test]
fn bench_takes_a_host_name_and_still_spreads_loopback_connections_over_source_addresses() {
    let server = ZenServer::start();
    let addr = format!("localhost:{}", server.addr().port());
    // Paced, so that it loads nobody's machine.
    let args = ["--conns", "3", "--rate", "100", "--duration", "0.3", "--warmup", "0", "--json"];
    let output = zen_client(&[&["bench", "--addr", &addr][..], &args].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["answers"].as_u64().is_some_and(|answers| answers > 0), "{report}");
    // Connections 2 and 3 come from the second and third loopback addresses.
    for source in ["127.0.0.2", "127.0.0.3"] {
        let from = format!("peer={source}:");
        let seen = server.wait_for_log(&["connection accepted", &from], DEADLINE);
        assert!(seen.is_some(), "no connection from {source}:\n{}", server.log());
    }
    // A name that does not resolve is one line naming it.
    let output = zen_client(&["bench", "--addr", "no-such-host.invalid:1060"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("zen-client: cannot connect to no-such-host.invalid:1060: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn bench_offers_no_option_it_refuses() {
    let help = String::from_utf8(zen_client(&["bench", "--help"]).stdout).unwrap();
    assert!(help.contains("--tls") && !help.contains("--proxy-header"), "{help}");
    assert_eq!(zen_client(&["bench", "--proxy-header"]).status.code(), Some(2));
    // Where it is accepted, its help says how it goes with --tls.
    for command in ["ask", "probe"] {
        let help = String::from_utf8(zen_client(&[command, "--help"]).stdout).unwrap();
        assert!(help.contains("--proxy-header") && help.contains("tls.proxy_listen"), "{command}: {help}");
    }
}
