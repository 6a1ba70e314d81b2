//! Clients that misbehave: oversized, endless, binary, slow, too many, not reading.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    thread,
    time::{Duration, Instant},
};

use crate::helpers::{DEADLINE, Launch, ZenServer, ask_like_the_book, connect, read_answers, read_until_closed};

fn still_serving(server: &ZenServer) {
    let mut stream = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut stream, b"Beautiful is better than?"), b"Ugly.");
}

#[test]
fn an_oversized_question_is_refused_and_the_connection_closed() {
    let server = ZenServer::start();
    let mut stream = connect(server.addr());
    stream.write_all(b"Simple is better than?").unwrap();
    stream.write_all(&[b'a'; 2000]).unwrap();
    stream.write_all(b"?Explicit is better than?").unwrap();
    assert_eq!(read_until_closed(&mut stream), b"Complex.Error: question too long.");
    assert!(server.wait_for_log(&["question too long", "limit=1024"], DEADLINE).is_some());
    still_serving(&server);
}

#[test]
fn ten_megabytes_without_a_question_mark_get_one_refusal_and_a_close() {
    let server = ZenServer::start();
    let mut stream = connect(server.addr());
    let mut sender = stream.try_clone().unwrap();
    // The server stops reading early; the sender stops when the connection closes.
    let flood = thread::spawn(move || {
        let chunk = [b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < 10 * 1024 * 1024 {
            match sender.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        let _ = sender.shutdown(Shutdown::Write);
    });
    assert_eq!(read_until_closed(&mut stream), b"Error: question too long.");
    flood.join().unwrap();
    still_serving(&server);
}

#[test]
fn random_binary_with_nul_bytes_gets_one_unknown_answer_per_question() {
    let server = ZenServer::start();
    let mut stream = connect(server.addr());
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut input = Vec::new();
    let mut questions = 0;
    while input.len() < 100_000 {
        let length = 1 + next() % 200;
        // Every byte value but '?', and enough NULs to matter; a leading space is stripped.
        input.push(b'!');
        input.extend((0..length).map(|_| match (next() % 256) as u8 {
            b'?' | 200..=255 => 0,
            byte => byte,
        }));
        input.push(b'?');
        questions += 1;
    }
    stream.write_all(&input).unwrap();
    let answers = read_answers(&mut stream, questions);
    assert!(answers.iter().all(|answer| answer == b"Error: unknown aphorism."));
}

#[test]
fn a_client_dribbling_a_question_is_closed_at_the_idle_timeout() {
    let server = ZenServer::launch(Launch::with_env(&[("ZEN_LIMITS__IDLE_TIMEOUT_SECS", "1")]));
    let mut dribbler = connect(server.addr());
    let started = Instant::now();
    let mut sender = dribbler.try_clone().unwrap();
    let dribble = thread::spawn(move || {
        for byte in b"Beautiful is better than".iter().cycle() {
            if sender.write_all(&[*byte]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    // Meanwhile others are served.
    still_serving(&server);
    assert_eq!(read_until_closed(&mut dribbler), b"");
    let lasted = started.elapsed();
    assert!(lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(5), "closed after {lasted:?}");
    assert!(server.wait_for_log(&["idle timeout"], DEADLINE).is_some());
    dribble.join().unwrap();
}

#[test]
fn clients_over_max_connections_are_told_the_server_is_busy_until_others_leave() {
    let server = ZenServer::launch(Launch::with_env(&[("ZEN_LIMITS__MAX_CONNECTIONS", "3")]));
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = connect(server.addr());
            assert_eq!(ask_like_the_book(&mut stream, b"Simple is better than?"), b"Complex.");
            stream
        })
        .collect();
    let mut extra = connect(server.addr());
    extra.write_all(b"Simple is better than?").unwrap();
    assert_eq!(read_until_closed(&mut extra), b"Error: server busy.");
    // Those already connected are not disturbed.
    assert_eq!(ask_like_the_book(&mut held[0], b"Explicit is better than?"), b"Implicit.");

    drop(held.pop());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut stream = connect(server.addr());
        stream.write_all(b"Beautiful is better than?").unwrap();
        let mut answer = [0; 5];
        if stream.read_exact(&mut answer).is_ok() && &answer == b"Ugly." {
            break;
        }
        assert!(Instant::now() < deadline, "the count never went down after a client left");
    }
    assert!(server.wait_for_log(&["server full; refusing clients"], DEADLINE).is_some());
}

#[test]
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn a_client_that_pipelines_without_reading_is_bounded_and_dropped_while_others_are_served() {
    const QUESTIONS_BYTES: usize = 100 * 1024 * 1024;
    let server = ZenServer::launch(Launch::with_env(&[("ZEN_LIMITS__WRITE_TIMEOUT_SECS", "3")]));
    still_serving(&server);
    let baseline_kib = server.rss_kib();

    let stuck = connect(server.addr());
    let mut sender = stuck.try_clone().unwrap();
    let pipeliner = thread::spawn(move || {
        let chunk = b"Beautiful is better than?".repeat(64 * 1024 / 25);
        let mut sent = 0;
        while sent < QUESTIONS_BYTES {
            match sender.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });

    let mut peak_kib = 0;
    let mut slowest = Duration::ZERO;
    while !pipeliner.is_finished() {
        let asked = Instant::now();
        still_serving(&server);
        slowest = slowest.max(asked.elapsed());
        peak_kib = peak_kib.max(server.rss_kib());
        thread::sleep(Duration::from_millis(100));
    }
    let sent = pipeliner.join().unwrap();
    eprintln!(
        "pipelining client: sent {} KiB before being dropped; server RSS {baseline_kib} KiB before, peak {peak_kib} KiB; slowest other answer {slowest:?}",
        sent / 1024
    );
    assert!(sent < QUESTIONS_BYTES, "the server read everything: nothing held the client back");
    // Bound: the session's 64 KiB of pending answers and its buffers, far below the 100 MB sent.
    assert!(peak_kib < baseline_kib + 32 * 1024, "RSS grew from {baseline_kib} KiB to {peak_kib} KiB");
    // Served meanwhile, not after the stuck client's 3 s write timeout freed the server.
    assert!(slowest < Duration::from_secs(2), "another client waited {slowest:?}");
    assert!(server.wait_for_log(&["client stopped reading; disconnecting"], DEADLINE).is_some());
    drop(stuck);
}

#[test]
#[ignore = "needs ss: apt-get install iproute2"]
fn accepted_connections_get_the_configured_keepalive() {
    let server = ZenServer::launch(Launch::with_env(&[("ZEN_LIMITS__KEEPALIVE_IDLE_SECS", "77")]));
    let mut stream = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut stream, b"Simple is better than?"), b"Complex.");
    // The server's end of the connection, as the kernel reports it: its keepalive timer runs.
    let port = server.addr().port().to_string();
    let filter = format!("( sport = :{port} )");
    let output = std::process::Command::new("ss").args(["-tnoH", "state", "established", &filter]).output().unwrap();
    let sockets = String::from_utf8_lossy(&output.stdout);
    assert!(sockets.contains("timer:(keepalive,1min"), "no 77 s keepalive timer in:\n{sockets}");
}

#[test]
fn clients_pipelining_for_long_answers_without_reading_hold_no_more_than_the_documented_bound_each() {
    const CLIENTS: usize = 20;
    const ANSWER_BYTES: usize = 100_000;
    let answer = format!("{}.", "z".repeat(ANSWER_BYTES - 1));
    let file = crate::helpers::TempConfig::new(&format!(
        "[oracle]\nanswers = [{{ question = \"Big?\", answer = \"{answer}\" }}]\n"
    ));
    let server = ZenServer::launch(Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]));
    // The settings' defaults, as the server runs with them.
    let settings = zen_server::config::Settings::builtin().unwrap();
    let per_connection =
        zen_server::session::most_bytes_held(&zen_server::limits::SessionConfig::from(&settings), ANSWER_BYTES);
    let mut warm = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut warm, b"Big?").len(), ANSWER_BYTES);
    let baseline_kib = server.rss_kib();

    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut client = connect(server.addr());
            client.write_all(&b"Big?".repeat(1024)).unwrap();
            client
        })
        .collect();
    // Once answers wait for every client, the server holds what it will hold; a while more
    // shows whether it keeps growing.
    server.wait_until_answers_wait();
    let mut peak_kib = 0;
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        peak_kib = peak_kib.max(server.rss_kib());
        thread::sleep(Duration::from_millis(20));
    }
    let grown = peak_kib.saturating_sub(baseline_kib) * 1024;
    let bound = CLIENTS as u64 * per_connection as u64;
    eprintln!("{CLIENTS} clients: RSS {baseline_kib} KiB before, peak {peak_kib} KiB; bound {bound} bytes");
    assert!(grown <= bound, "the server grew by {grown} bytes, more than {CLIENTS} × {per_connection}");
    assert_eq!(ask_like_the_book(&mut warm, b"Big?").len(), ANSWER_BYTES, "others are still served");
    drop(clients);
}
