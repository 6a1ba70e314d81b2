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
fn paced_bench_sends_about_the_asked_rate() {
    let server = ZenServer::start();
    let report = bench(&server, &["--conns", "4", "--rate", "2000", "--duration", "1"]);
    assert_clean(&report);
    let answers = report["answers"].as_f64().unwrap();
    assert!((1000.0..=2600.0).contains(&answers), "asked for 2000 in 1 s, got {answers}");
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
