//! One part of the process stops while the rest runs: a worker thread wedged by a lookup that
//! never returns is routed around, makes the probe fail on every try once it is seen stalled,
//! and makes the daemon exit 70 to be restarted; a log that nobody reads stops no client.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::helpers::{DEADLINE, Launch, ZenServer, connect, free_port, scrape};

const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_zen-client");

/// Asks `question` on a new connection and reads one answer, within `within`.
fn ask_within(addr: SocketAddr, question: &[u8], within: Duration) -> Result<Vec<u8>, String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, within).map_err(|error| error.to_string())?;
    stream.set_read_timeout(Some(within)).unwrap();
    stream.write_all(question).map_err(|error| error.to_string())?;
    let mut answer = Vec::new();
    let mut buffer = [0; 256];
    while !answer.ends_with(b".") {
        match stream.read(&mut buffer) {
            Ok(0) => return Err(format!("closed after {:?}", started.elapsed())),
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
            Err(error) => return Err(format!("{error} after {:?}", started.elapsed())),
        }
    }
    Ok(answer)
}

#[test]
fn a_wedged_worker_is_routed_around_fails_every_probe_once_seen_and_makes_the_daemon_exit_70() {
    let mut server = ZenServer::launch(Launch::with_env(&[
        ("ZEN_SERVER__WORKERS", "2"),
        ("ZEN_SERVER__WORKER_STALL_TIMEOUT_SECS", "3"),
        ("ZEN_ORACLE__HANG_QUESTION", "Hang?"),
    ]));
    let addr = server.addr();
    // Wedges the worker this connection lands on, for good.
    let mut wedging = connect(addr);
    wedging.write_all(b"Hang?").unwrap();
    assert!(server.wait_for_log(&["oracle.hang_question was asked"], DEADLINE).is_some(), "{}", server.log());

    for client in 0..20 {
        let answer = ask_within(addr, b"Beautiful is better than?", Duration::from_secs(1));
        assert_eq!(answer.as_deref(), Ok(&b"Ugly."[..]), "client {client}; log:\n{}", server.log());
    }

    assert!(server.wait_for_log(&["a worker thread stopped answering"], DEADLINE).is_some(), "{}", server.log());
    // From then until the exit, every probe fails, whichever worker its connection lands on:
    // told the server is unhealthy, and at the end refused as the daemon drains and exits.
    let (mut probes, mut unhealthy) = (0, 0);
    while server.wait_exit(Duration::ZERO).is_none() {
        let probe = Command::new(CLIENT_BIN).args(["probe", "--addr", &addr.to_string()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&probe.stderr);
        assert!(!probe.status.success(), "probe {probes} passed while a worker was stalled");
        unhealthy += usize::from(stderr.contains("Error: server unhealthy."));
        probes += 1;
    }
    assert!(unhealthy > 0, "no probe told the server was unhealthy ({probes} probes)");
    let status = server.wait_exit(DEADLINE).expect("the daemon exited");
    assert_eq!(status.code(), Some(70), "log:\n{}", server.log());
    let log = server.log();
    assert!(
        log.contains("a worker thread has not answered for server.worker_stall_timeout_secs") && log.contains("ERROR"),
        "{log}"
    );
    // The drain did not wait for the wedged connection, and says why it was left.
    assert!(
        log.contains("clients of a stalled worker thread still wait for answers; closing them unfinished=1"),
        "{log}"
    );
    assert!(!log.contains("shutdown timeout passed"), "{log}");
}

#[test]
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn a_log_that_nobody_reads_stops_no_client_and_its_dropped_lines_are_counted_and_told() {
    let (port, metrics_port) = (free_port(), free_port());
    let (addr, metrics): (SocketAddr, SocketAddr) =
        (format!("127.0.0.1:{port}").parse().unwrap(), format!("127.0.0.1:{metrics_port}").parse().unwrap());
    let (mut unread, stderr) = std::io::pipe().unwrap();
    let server = ZenServer::spawn(
        Launch::args(&["--listen", &addr.to_string()])
            .env("ZEN_LOG__LEVEL", "debug")
            .env("ZEN_METRICS__LISTEN", &metrics.to_string())
            .stderr(stderr),
    );
    let end = Instant::now() + DEADLINE;
    while TcpStream::connect(addr).is_err() || TcpStream::connect(metrics).is_err() {
        assert!(Instant::now() < end, "the server did not listen");
        thread::sleep(Duration::from_millis(20));
    }

    // 1,000 clients, ten at a time, each asking once; every one is answered.
    let mut latencies = Vec::new();
    for _ in 0..100 {
        let clients: Vec<_> = (0..10)
            .map(|_| {
                thread::spawn(move || {
                    let asked = Instant::now();
                    let answer = ask_within(addr, b"Beautiful is better than?", DEADLINE);
                    (answer, asked.elapsed())
                })
            })
            .collect();
        for client in clients {
            let (answer, took) = client.join().unwrap();
            assert_eq!(answer.as_deref(), Ok(&b"Ugly."[..]));
            latencies.push(took);
        }
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!("1,000 clients with standard error unread: p99 {p99:?}");
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");

    // The drops are counted, and told once the log is read again.
    let end = Instant::now() + DEADLINE;
    let dropped = loop {
        let text = scrape(metrics);
        let dropped = text
            .lines()
            .find_map(|line| line.strip_prefix("zen_log_lines_dropped_total "))
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped > 0.0 {
            break dropped;
        }
        assert!(Instant::now() < end, "no dropped line counted:\n{text}");
        thread::sleep(Duration::from_millis(100));
    };
    let (told, log) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut text = Vec::new();
        let mut buffer = [0; 65536];
        while let Ok(read @ 1..) = unread.read(&mut buffer) {
            text.extend_from_slice(&buffer[..read]);
            let lines = String::from_utf8_lossy(&text);
            if let Some(line) = lines.lines().find(|line| line.contains("log lines were dropped")) {
                let _ = told.send(line.to_owned());
                return;
            }
        }
    });
    let line = log.recv_timeout(DEADLINE).expect("no line told of the dropped lines once the log was read");
    assert!(line.contains("WARN") && line.contains("dropped="), "{dropped} dropped; told: {line}");
    // Killing the server closes the pipe, which ends the reader.
    drop(server);
}
