//! `zen-client bench` against the real server: every mode runs, checks every answer, and
//! reports zero errors; with `--protocol redis-ping`, the same against a real Redis server, and
//! errors against zen-server. (Correctness of the tool, not speed.)

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::helpers::{DEADLINE, TempDir, ZenServer, free_port_below_ephemeral};

const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_zen-client");

/// Runs `zen-client bench` with `args` against the server at `addr`, returning its JSON report.
fn bench(addr: SocketAddr, args: &[&str]) -> serde_json::Value {
    let addr = addr.to_string();
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
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn pipelined_bench_checks_every_answer_without_errors() {
    let server = ZenServer::start();
    let report = bench(server.addr(), &["--conns", "4", "--depth", "8", "--duration", "1"]);
    assert_clean(&report);
    assert!(report["answers_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn paced_bench_never_sends_more_than_the_asked_rate() {
    let server = ZenServer::start();
    let report = bench(server.addr(), &["--conns", "4", "--rate", "2000", "--duration", "1"]);
    assert_clean(&report);
    // However slow the machine, pacing never asks ahead of its schedule: at most 2000 in the
    // measured second, with room for questions whose answers land just inside it.
    let answers = report["answers"].as_f64().unwrap();
    assert!(answers <= 2000.0 * 1.3, "asked for 2000 in 1 s, got {answers}");
}

#[test]
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn with_the_server_pid_every_mode_reports_server_cpu_per_answer_and_the_clients_cpu_share() {
    let server = ZenServer::start();
    let pid = server.pid().to_string();
    for args in [
        &["--conns", "4", "--depth", "8", "--duration", "1"][..],
        &["--conns", "4", "--rate", "2000", "--duration", "1"],
        &["--mode", "churn", "--conns", "4", "--duration", "1"],
    ] {
        let report = bench(server.addr(), &[args, &["--server-pid", &pid]].concat());
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
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn without_the_server_pid_only_the_clients_cpu_share_is_reported() {
    let server = ZenServer::start();
    let report = bench(server.addr(), &["--conns", "1", "--duration", "0.5"]);
    assert_clean(&report);
    assert!(report["server_cpu_seconds"].is_null(), "{report}");
    assert!(report["server_cpu_us_per_answer"].is_null(), "{report}");
    assert!(report["client_cpu_percent"].as_f64().is_some(), "{report}");
    assert!(report["client_bound"].is_boolean(), "{report}");
}

#[test]
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn churn_bench_counts_connections() {
    let server = ZenServer::start();
    let report = bench(server.addr(), &["--mode", "churn", "--conns", "4", "--duration", "1"]);
    assert_clean(&report);
    assert_eq!(report["connections"], report["answers"]);
}

#[test]
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn idle_bench_holds_connections_and_reports_server_memory() {
    let server = ZenServer::start();
    let pid = server.pid().to_string();
    let report = bench(server.addr(), &["--mode", "idle", "--conns", "200", "--hold", "0.5", "--server-pid", &pid]);
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

/// A Redis server on a port of its own, answering `PING`; killed (by PID) when dropped.
struct Redis {
    child: Child,
    addr: SocketAddr,
    /// Its working directory, holding its log; removed after the server is killed.
    _dir: TempDir,
}

impl Redis {
    /// Starts `redis-server` without persistence, listening on loopback only, and waits until it
    /// answers `PING`; tries another port if the one picked was taken meanwhile.
    fn start() -> Self {
        let dir = TempDir::new("redis");
        let log = dir.path().join("redis.log");
        for _ in 0..5 {
            // Never given twice in this process: a PONG can only come from this test's server.
            let port = free_port_below_ephemeral();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--protected-mode", "no"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(&log)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server runs");
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let end = Instant::now() + DEADLINE;
            while Instant::now() < end && child.try_wait().unwrap().is_none() {
                if answers_ping(addr) {
                    return Self { child, addr, _dir: dir };
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not answer PING; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the server at `addr` answers `PING` with `+PONG`.
fn answers_ping(addr: SocketAddr) -> bool {
    let ask = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"PING\r\n")?;
        let mut answer = [0; 7];
        stream.read_exact(&mut answer)?;
        Ok(&answer == b"+PONG\r\n")
    };
    ask().unwrap_or(false)
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn redis_ping_bench_gets_every_pong_in_every_mode() {
    let redis = Redis::start();
    let pid = redis.child.id().to_string();
    for args in [
        &["--conns", "4", "--depth", "8", "--duration", "1"][..],
        &["--conns", "4", "--rate", "2000", "--duration", "1"],
        &["--mode", "churn", "--conns", "4", "--depth", "3", "--duration", "1"],
        &["--mode", "idle", "--conns", "200", "--hold", "0.5"],
    ] {
        let report = bench(redis.addr, &[args, &["--protocol", "redis-ping", "--server-pid", &pid]].concat());
        assert_clean(&report);
        assert_eq!(report["protocol"], "redis-ping", "{report}");
        assert!(report["server_cpu_seconds"].as_f64().is_some(), "{report}");
    }
}

#[test]
fn a_redis_ping_bench_against_zen_server_fails() {
    let server = ZenServer::start();
    // Over a kilobyte of PINGs without a '?': zen-server says the question is too long, which
    // is no +PONG, and closes.
    let output = Command::new(CLIENT_BIN)
        .args(["bench", "--addr", &server.addr().to_string(), "--protocol", "redis-ping", "--json"])
        .args(["--conns", "2", "--depth", "256", "--duration", "0.5", "--warmup", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["protocol"], "redis-ping", "{report}");
    assert_eq!(report["answers"], 0, "{report}");
    assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
}
