//! Each client's share of connections (`limits.max_connections_per_client`): one client over
//! its share is told so and closed while others are served; behind a PROXY listener the share
//! is the header's client's, and an IPv6 client's is its /64's; and 10,000 connections from
//! one address, held idle or dribbling, leave clients from another address their usual
//! latency.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    helpers::{
        DEADLINE, Launch, TempConfig, ZenServer, ask_like_the_book, connect_from, has_arrived, raise_fd_limit,
        read_to_close, read_until_closed, server_with_metrics,
    },
    metrics::wait_for_values,
};

const REFUSAL: &[u8] = b"Error: too many connections from your address.";

fn client(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Reads what the server said before it closed, taking a reset after its last words as a close.
fn said_before_closing(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    read_until_closed(stream)
}

/// Whether the server still holds `stream` open: asks a question and gets its answer.
fn answered(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(b"Beautiful is better than?").is_ok() && {
        let mut answer = [0; 5];
        stream.read_exact(&mut answer).is_ok() && &answer == b"Ugly."
    }
}

#[test]
fn a_client_over_its_share_is_told_so_and_others_are_served_as_before() {
    let launch = Launch::args(&["--listen", "127.0.0.1:0"]).env("ZEN_LIMITS__MAX_CONNECTIONS_PER_CLIENT", "3");
    let server = ZenServer::launch(launch);
    let addr = server.addr();
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from(client(2), addr)).collect();
    assert!(held.iter_mut().all(answered));
    let mut over = connect_from(client(2), addr);
    assert_eq!(said_before_closing(&mut over), REFUSAL);
    let mut other = connect_from(client(3), addr);
    assert_eq!(ask_like_the_book(&mut other, b"Simple is better than?"), b"Complex.");
    let warned =
        server.wait_for_log(&["a client holds its share of connections", "client=127.0.0.2", "limit=3"], DEADLINE);
    assert!(warned.is_some(), "{}", server.log());
    // A connection given back makes room.
    held.pop();
    let end = Instant::now() + DEADLINE;
    loop {
        let mut again = connect_from(client(2), addr);
        if answered(&mut again) {
            break;
        }
        assert!(Instant::now() < end, "no room for 127.0.0.2 after one of its connections closed");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn behind_a_proxy_listener_the_share_is_the_headers_client_and_ipv6_counts_by_64() {
    let config = TempConfig::new("[proxy]\nlisten = [\"127.0.0.1:0\"]\n[limits]\nmax_connections_per_client = 2\n");
    let server = ZenServer::launch(Launch::args(&["--config", config.path(), "--listen", "127.0.0.1:0"]).listeners(2));
    let behind = server.proxy_addr();
    let from = |header: &str| {
        let mut stream = connect_from(client(1), behind);
        stream.write_all(header.as_bytes()).unwrap();
        stream
    };
    let v4 = "PROXY TCP4 192.0.2.7 127.0.0.1 5000 1060\r\n";
    let mut held = [from(v4), from(v4)];
    assert!(held.iter_mut().all(answered));
    assert_eq!(said_before_closing(&mut from(v4)), REFUSAL, "a third connection of 192.0.2.7");
    assert!(answered(&mut from("PROXY TCP4 192.0.2.8 127.0.0.1 5000 1060\r\n")), "another client, same balancer");
    let mut v6 = [from("PROXY TCP6 2001:db8::1 ::1 5000 1060\r\n"), from("PROXY TCP6 2001:db8::2 ::1 5000 1060\r\n")];
    assert!(v6.iter_mut().all(answered));
    assert_eq!(said_before_closing(&mut from("PROXY TCP6 2001:db8::ffff ::1 5000 1060\r\n")), REFUSAL, "same /64");
    assert!(answered(&mut from("PROXY TCP6 2001:db8:0:1::1 ::1 5000 1060\r\n")), "the next /64");
}

/// Latencies of book-like exchanges (connect, ask, read the answer, close) from `source`, one
/// after another, until `stop`; every answer must be right.
fn ask_repeatedly(addr: SocketAddr, source: IpAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<Duration>> {
    thread::spawn(move || {
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) || latencies.is_empty() {
            let started = Instant::now();
            let mut stream = connect_from(source, addr);
            assert_eq!(ask_like_the_book(&mut stream, b"Explicit is better than?"), b"Implicit.");
            latencies.push(started.elapsed());
            thread::sleep(Duration::from_millis(2));
        }
        latencies
    })
}

fn percentile(latencies: &mut [Duration], percent: usize) -> Duration {
    latencies.sort();
    latencies[(latencies.len() - 1) * percent / 100]
}

#[test]
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn ten_thousand_connections_from_one_address_leave_others_their_usual_latency() {
    const FLOOD: usize = 10_000;
    const SHARE: usize = 256;
    raise_fd_limit(FLOOD as u64 + 1000);
    let (server, _config, metrics) = server_with_metrics("[limits]\nmax_connections = 15000\n");
    let addr = server.addr();
    // The usual latency, before the flood.
    let stop = Arc::new(AtomicBool::new(false));
    let baseline = ask_repeatedly(addr, client(3), stop.clone());
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut baseline = baseline.join().unwrap();
    // The flood, with the other client asking all along.
    let stop = Arc::new(AtomicBool::new(false));
    let during = ask_repeatedly(addr, client(3), stop.clone());
    let flood: Vec<TcpStream> = (0..FLOOD).map(|_| connect_from(client(2), addr)).collect();
    // Every connection over the share is told so and closed; the share is held.
    let end = Instant::now() + DEADLINE;
    while flood.iter().filter(|stream| has_arrived(stream)).count() < FLOOD - SHARE {
        assert!(Instant::now() < end, "the server did not refuse every connection over the share in time");
        thread::sleep(Duration::from_millis(50));
    }
    let (refused, mut held): (Vec<TcpStream>, Vec<TcpStream>) = flood.into_iter().partition(has_arrived);
    assert_eq!(held.len(), SHARE);
    for mut stream in refused {
        assert_eq!(read_to_close(&mut stream), REFUSAL);
    }
    // Half the share dribbles a byte every two seconds, half stays idle, while the other client
    // goes on asking.
    let dribble_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < dribble_until {
        for stream in held.iter_mut().step_by(2) {
            stream.write_all(b"x").unwrap();
        }
        thread::sleep(Duration::from_secs(2));
    }
    stop.store(true, Ordering::Relaxed);
    let mut during = during.join().unwrap();
    let (usual, now) = (percentile(&mut baseline, 99), percentile(&mut during, 99));
    eprintln!(
        "another client's latency, p50 / p99: {:?} / {usual:?} before, {:?} / {now:?} during ({} exchanges)",
        percentile(&mut baseline, 50),
        percentile(&mut during, 50),
        during.len()
    );
    // Far above any usual latency here (well under a millisecond), far below a client's patience.
    assert!(now < Duration::from_millis(100), "p99 {now:?} during the flood against {usual:?} before");
    let refused = (FLOOD - SHARE) as f64;
    wait_for_values(metrics, &[("zen_connections_closed_total{reason=\"per_client_limit\"}", refused)]);
    let warnings = server.log().lines().filter(|line| line.contains("a client holds its share")).count();
    assert_eq!(warnings, 1, "one warning for the whole episode");
}
