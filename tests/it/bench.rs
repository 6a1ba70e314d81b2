//! `zen-client bench` against the real server: every mode runs, checks every answer, and
//! reports zero errors. (Correctness of the tool, not speed.)

use std::process::Command;

use crate::helpers::ZenServer;

const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_zen-client");

/// Runs `zen-client bench` with `args` against `server`, returning its JSON report.
fn bench(server: &ZenServer, args: &[&str]) -> serde_json::Value {
    let addr = server.addr().to_string();
    let output = Command::new(CLIENT_BIN)
        .args(["bench", "--addr", &addr, "--json", "--warmup", "0.2"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "bench {args:?} failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("not JSON ({error}): {stdout}"))
}

fn assert_clean(report: &serde_json::Value) {
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["answers"].as_u64().unwrap() > 0, "{report}");
    assert!(report["latency_us"]["p99"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn pipelined_bench_checks_every_answer_without_errors() {
    let server = ZenServer::start();
    let report = bench(&server, &["--conns", "4", "--depth", "8", "--duration", "1"]);
    assert_clean(&report);
    assert!(report["answers_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn paced_bench_never_sends_more_than_the_asked_rate() {
    let server = ZenServer::start();
    let report = bench(&server, &["--conns", "4", "--rate", "2000", "--duration", "1"]);
    assert_clean(&report);
    // However slow the machine, pacing never asks ahead of its schedule: at most 2000 in the
    // measured second, with room for questions whose answers land just inside it.
    let answers = report["answers"].as_f64().unwrap();
    assert!(answers <= 2000.0 * 1.3, "asked for 2000 in 1 s, got {answers}");
}

#[test]
fn with_the_server_pid_every_mode_reports_server_cpu_per_answer_and_the_clients_cpu_share() {
    let server = ZenServer::start();
    let pid = server.pid().to_string();
    for args in [
        &["--conns", "4", "--depth", "8", "--duration", "1"][..],
        &["--conns", "4", "--rate", "2000", "--duration", "1"],
        &["--mode", "churn", "--conns", "4", "--duration", "1"],
    ] {
        let report = bench(&server, &[args, &["--server-pid", &pid]].concat());
        assert_clean(&report);
        // Answering thousands of questions takes the server more than 0 CPU ticks (10 ms).
        assert!(report["server_cpu_seconds"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["server_cpu_us_per_answer"].as_f64().unwrap() > 0.0, "{report}");
        let client_cpu = report["client_cpu_percent"].as_f64().unwrap();
        assert!((0.0..=100.0 * 1.1).contains(&client_cpu), "{report}");
        assert_eq!(report["client_bound"].as_bool(), Some(client_cpu > 95.0), "{report}");
    }
}

#[test]
fn without_the_server_pid_only_the_clients_cpu_share_is_reported() {
    let server = ZenServer::start();
    let report = bench(&server, &["--conns", "1", "--duration", "0.5"]);
    assert_clean(&report);
    assert!(report["server_cpu_seconds"].is_null(), "{report}");
    assert!(report["server_cpu_us_per_answer"].is_null(), "{report}");
    assert!(report["client_cpu_percent"].as_f64().is_some(), "{report}");
    assert!(report["client_bound"].is_boolean(), "{report}");
}

#[test]
fn churn_bench_counts_connections() {
    let server = ZenServer::start();
    let report = bench(&server, &["--mode", "churn", "--conns", "4", "--duration", "1"]);
    assert_clean(&report);
    assert_eq!(report["connections"], report["answers"]);
}

#[test]
fn idle_bench_holds_connections_and_reports_server_memory() {
    let server = ZenServer::start();
    let pid = server.pid().to_string();
    let report = bench(&server, &["--mode", "idle", "--conns", "200", "--hold", "0.5", "--server-pid", &pid]);
    assert_clean(&report);
    assert_eq!(report["connections"], 200);
    assert!(report["server_kib_per_conn"].as_f64().is_some(), "{report}");
    assert!(report["server_cpu_seconds"].as_f64().is_some(), "{report}");
}

#[test]
fn a_bench_against_a_server_giving_wrong_answers_fails() {
    // This server's answer to the benchmark's first question is not the book's.
    let file = crate::helpers::TempConfig::new(
        "[oracle]\nanswers = [{ question = \"Beautiful is better than?\", answer = \"Pretty.\" }]\n",
    );
    let server = ZenServer::launch(crate::helpers::Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]));
    let output = Command::new(CLIENT_BIN)
        .args([
            "bench",
            "--addr",
            &server.addr().to_string(),
            "--json",
            "--conns",
            "1",
            "--duration",
            "0.5",
            "--warmup",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
}
