//! The Prometheus endpoint at `metrics.listen`: exact counts after known traffic, the gauge of
//! connections served, reloads and contained panics counted, and the exposition accepted by
//! `promtool check metrics`.

use std::{
    io::Write,
    net::{Shutdown, SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::helpers::{DEADLINE, ask_like_the_book, connect, read_to_close, scrape, server_with_metrics};

/// The value of the series `series` (name and labels, exactly as exposed).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until every one of `expected` has its value (counts are added once a second).
pub fn wait_for_values(addr: SocketAddr, expected: &[(&str, f64)]) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let text = scrape(addr);
        if expected.iter().all(|(series, want)| value(&text, series) == Some(*want)) {
            return text;
        }
        if Instant::now() > end {
            let got: Vec<String> =
                expected.iter().map(|(series, _)| format!("{series} = {:?}", value(&text, series))).collect();
            panic!("expected {expected:?}, got {got:?}; scrape:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_scrape_after_known_traffic_has_exact_counts() {
    let (server, _config, metrics) = server_with_metrics("[limits]\nmax_connections = 2\nmax_question_bytes = 100\n");
    let mut sent_by_clients = 0;
    // Two known questions and an unknown one, then end of file.
    let mut whole = connect(server.addr());
    let questions = b"Beautiful is better than?Why?Simple is better than?";
    whole.write_all(questions).unwrap();
    whole.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut whole), b"Ugly.Error: unknown aphorism.Complex.");
    sent_by_clients += questions.len();
    // Part of a question, then end of file.
    let mut partial = connect(server.addr());
    partial.write_all(b"Beautiful is").unwrap();
    partial.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut partial), b"");
    sent_by_clients += 12;
    // Both have given their permits back (a session is counted as it stops, and its permit
    // goes with it before the next flush): the limit of two has room again.
    wait_for_values(
        metrics,
        &[
            ("zen_connections_closed_total{reason=\"eof\"}", 1.0),
            ("zen_connections_closed_total{reason=\"partial\"}", 1.0),
        ],
    );
    // A question over the limit: refused, then the rest is read and thrown away.
    let mut long = connect(server.addr());
    long.write_all(&[b'x'; 300]).unwrap();
    long.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut long), b"Error: question too long.");
    sent_by_clients += 300;
    // Those three have given their permits back once their closes are counted: a session is
    // counted as it stops, and its permit goes with it before the next flush.
    wait_for_values(
        metrics,
        &[
            ("zen_connections_closed_total{reason=\"eof\"}", 1.0),
            ("zen_connections_closed_total{reason=\"partial\"}", 1.0),
            ("zen_connections_closed_total{reason=\"too_long\"}", 1.0),
        ],
    );
    // Two held, a third refused.
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect(server.addr())).collect();
    for stream in &mut held {
        assert_eq!(ask_like_the_book(stream, b"Explicit is better than?"), b"Implicit.");
        sent_by_clients += 24;
    }
    wait_for_values(metrics, &[("zen_connections_active", 2.0)]);
    let mut busy = connect(server.addr());
    assert_eq!(read_to_close(&mut busy), b"Error: server busy.");
    drop(held);
    let answers = "Ugly.Error: unknown aphorism.Complex.Error: question too long.Implicit.Implicit.Error: server busy.";
    let text = wait_for_values(
        metrics,
        &[
            ("zen_connections_accepted_total", 6.0),
            ("zen_connections_active", 0.0),
            ("zen_connections_closed_total{reason=\"eof\"}", 3.0),
            ("zen_connections_closed_total{reason=\"partial\"}", 1.0),
            ("zen_connections_closed_total{reason=\"too_long\"}", 1.0),
            ("zen_connections_closed_total{reason=\"busy\"}", 1.0),
            ("zen_connections_closed_total{reason=\"idle_timeout\"}", 0.0),
            ("zen_connections_closed_total{reason=\"write_timeout\"}", 0.0),
            ("zen_connections_closed_total{reason=\"error\"}", 0.0),
            ("zen_connections_closed_total{reason=\"shutdown\"}", 0.0),
            ("zen_questions_answered_total{outcome=\"known\"}", 4.0),
            ("zen_questions_answered_total{outcome=\"unknown\"}", 1.0),
            ("zen_questions_answered_total{outcome=\"too_long\"}", 1.0),
            ("zen_questions_answered_total{outcome=\"internal_error\"}", 0.0),
            ("zen_received_bytes_total", sent_by_clients as f64),
            ("zen_sent_bytes_total", answers.len() as f64),
            ("zen_oracle_panics_total", 0.0),
        ],
    );
    // One latency sample per batch: at least the three reads that held questions (the refusal of
    // the long one is the server's own answer, not sampled).
    let batches = value(&text, "zen_answer_latency_seconds_count").unwrap();
    assert!(batches >= 3.0, "{batches}\n{text}");
    assert_eq!(value(&text, "zen_answer_latency_seconds_bucket{le=\"+Inf\"}"), Some(batches));
    let version = format!("zen_build_info{{version=\"{}\",commit=", env!("CARGO_PKG_VERSION"));
    assert!(text.lines().any(|line| line.starts_with(&version) && line.ends_with("} 1")), "{text}");
}

#[test]
fn the_log_says_where_metrics_are_served() {
    let (server, _config, metrics) = server_with_metrics("");
    let line = server.wait_for_log(&["serving metrics"], DEADLINE).unwrap_or_default();
    assert!(line.contains(&format!("http://{metrics}/metrics")), "log:\n{}", server.log());
}

#[test]
fn reloads_and_contained_panics_are_counted() {
    let (server, config, metrics) = server_with_metrics("[oracle]\npanic_question = \"Poison?\"\n");
    let mut client = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut client, b"Poison?"), b"Error: internal error.");
    let port = metrics.port();
    config.write(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n[oracle]\npanic_question = \"Poison?\"\n[limits]\nmax_connections = 9\n"));
    server.signal(Signal::SIGHUP);
    wait_for_values(metrics, &[("zen_reloads_total{result=\"ok\"}", 1.0)]);
    config.write("[limits]\nmax_connections = -1\n");
    server.signal(Signal::SIGHUP);
    wait_for_values(
        metrics,
        &[
            ("zen_reloads_total{result=\"ok\"}", 1.0),
            ("zen_reloads_total{result=\"failed\"}", 1.0),
            ("zen_oracle_panics_total", 1.0),
            ("zen_questions_answered_total{outcome=\"internal_error\"}", 1.0),
        ],
    );
}

#[test]
#[ignore = "needs promtool: apt-get install prometheus"]
fn promtool_accepts_the_exposition() {
    let (server, _config, metrics) = server_with_metrics("");
    let mut client = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Ugly.");
    let text = wait_for_values(metrics, &[("zen_questions_answered_total{outcome=\"known\"}", 1.0)]);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(format!("{text}\n").as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_health_check_failed_while_draining_is_counted_like_any_connection() {
    let settings = "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[server]\nlame_duck_ms = 3000\n";
    let (server, _config, metrics) = server_with_metrics(settings);
    let behind = server.proxy_addr();
    server.signal(Signal::SIGTERM);
    assert!(server.wait_for_log(&["failing health checks and still accepting"], DEADLINE).is_some());
    let mut check = connect(behind);
    let header = b"PROXY UNKNOWN\r\n";
    check.write_all(header).unwrap();
    let answer = read_to_close(&mut check);
    assert_eq!(answer, b"Error: server shutting down.");
    wait_for_values(
        metrics,
        &[
            ("zen_connections_accepted_total", 1.0),
            ("zen_connections_closed_total{reason=\"shutdown\"}", 1.0),
            ("zen_received_bytes_total", header.len() as f64),
            ("zen_sent_bytes_total", answer.len() as f64),
        ],
    );
}
