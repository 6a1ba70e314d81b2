//! Faults inside the server: a panicking oracle, a slow oracle, connections reset by clients,
//! running out of file descriptors.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::helpers::{DEADLINE, Launch, TempConfig, ZenServer, ask_like_the_book, connect, has_arrived, read_answers};

#[test]
fn a_panic_is_one_json_event_named_panic_with_its_message_and_location() {
    let server = ZenServer::launch(
        Launch::args(&["--listen", "127.0.0.1:0"])
            .env("ZEN_LOG__FORMAT", "json")
            .env("ZEN_ORACLE__PANIC_QUESTION", "Poison?"),
    );
    assert_eq!(ask_like_the_book(&mut connect(server.addr()), b"Poison?"), b"Error: internal error.");
    let line = server.wait_for_log(&["\"level\":\"ERROR\""], DEADLINE).expect("an error event");
    let event: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"));
    // Each key once: a parser keeping the last of two `message` keys would lose the event's name.
    assert_eq!(line.matches("\"message\":").count(), 1, "{line}");
    assert_eq!(event["message"], "panic", "{line}");
    assert_eq!(event["panic_message"], "oracle.panic_question was asked", "{line}");
    assert!(event["location"].as_str().is_some_and(|location| location.starts_with("src/")), "{line}");
}

#[test]
fn an_oracle_panic_answers_that_question_with_an_internal_error_and_nothing_else_breaks() {
    let file = TempConfig::new("[oracle]\npanic_question = \"Poison?\"\n");
    let server = ZenServer::launch(Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]));
    let mut bystander = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut bystander, b"Simple is better than?"), b"Complex.");

    let mut victim = connect(server.addr());
    victim.write_all(b"Beautiful is better than?Poison?Explicit is better than?").unwrap();
    assert_eq!(read_answers(&mut victim, 3), [&b"Ugly."[..], b"Error: internal error.", b"Implicit."]);
    assert!(server.wait_for_log(&["oracle panicked while answering", "panics=1"], DEADLINE).is_some());
    assert!(server.wait_for_log(&["ERROR", "panic", "oracle.panic_question was asked"], DEADLINE).is_some());
    let errors = server.log().lines().filter(|line| line.contains(" ERROR ")).count();
    assert_eq!(errors, 1, "one error event per contained panic; log:\n{}", server.log());

    // The same session, the other session and new sessions all keep working, and it recovers
    // each time.
    assert_eq!(ask_like_the_book(&mut victim, b"Poison?"), b"Error: internal error.");
    assert_eq!(ask_like_the_book(&mut victim, b"Simple is better than?"), b"Complex.");
    assert_eq!(ask_like_the_book(&mut bystander, b"Beautiful is better than?"), b"Ugly.");
    assert_eq!(ask_like_the_book(&mut connect(server.addr()), b"Explicit is better than?"), b"Implicit.");
    assert!(server.wait_for_log(&["panics=2"], DEADLINE).is_some());
}

/// A server knowing 16 questions `Q0?`..`Q15?`, each answer costing 2 s of work on 8 oracle
/// workers: long enough that no answer given at once can be mistaken for a computed one, and
/// that the last ones are still being computed seconds after they were asked.
fn slow_oracle_server() -> (ZenServer, TempConfig) {
    let entries: Vec<String> = (0..16).map(|i| format!("{{ question = \"Q{i}?\", answer = \"A{i}.\" }}")).collect();
    let file = TempConfig::new(&format!(
        "[oracle]\nsimulated_cost_ms = 2000\nworkers = 8\nanswers = [{}]\n",
        entries.join(", ")
    ));
    let server = ZenServer::launch(Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]));
    (server, file)
}

/// Opens one connection per question and sends it, without waiting for the answers.
fn ask_each_on_its_own_connection(addr: SocketAddr, questions: impl IntoIterator<Item = String>) -> Vec<TcpStream> {
    let ask = |question: String| {
        let mut stream = connect(addr);
        stream.write_all(question.as_bytes()).unwrap();
        stream
    };
    questions.into_iter().map(ask).collect()
}

#[test]
fn a_slow_oracle_computes_the_answers_of_parallel_clients_in_parallel() {
    let (server, _file) = slow_oracle_server();
    let addr = server.addr();
    let started = Instant::now();
    let askers: Vec<_> = (0..16)
        .map(|i| thread::spawn(move || ask_like_the_book(&mut connect(addr), format!("Q{i}?").as_bytes())))
        .collect();
    for (i, asker) in askers.into_iter().enumerate() {
        assert_eq!(asker.join().unwrap(), format!("A{i}.").as_bytes());
    }
    // One after another, 16 answers costing 2 s each take 32 s; 8 workers side by side, 4 s.
    let all = started.elapsed();
    assert!(all < Duration::from_secs(16), "16 answers costing 2 s each on 8 workers took {all:?}: not parallel");
}

/// The connections among `streams` on which nothing has arrived yet.
fn still_waiting(streams: &[TcpStream]) -> Vec<usize> {
    (0..streams.len()).filter(|&i| !has_arrived(&streams[i])).collect()
}

#[test]
fn an_unknown_question_is_answered_before_the_costly_answers_being_computed() {
    let (server, _file) = slow_oracle_server();
    let addr = server.addr();
    let mut costly = ask_each_on_its_own_connection(addr, (0..16).map(|i| format!("Q{i}?")));
    // Every costly question has been read, so their answers are being computed or queued for a
    // worker. On a loaded machine some may already have been answered: only the others count.
    server.wait_until_read();
    let computing = still_waiting(&costly);

    let cheap = ask_like_the_book(&mut connect(addr), b"Why?");
    assert_eq!(cheap, b"Error: unknown aphorism.");
    let overtaking: Vec<usize> = computing.iter().copied().filter(|&i| has_arrived(&costly[i])).collect();
    assert!(overtaking.is_empty(), "the unknown question waited for the costly answers of {overtaking:?}");
    // Some were still being computed when it was answered (the last ones take 4 s): it overtook
    // them.
    assert!(!still_waiting(&costly).is_empty(), "every costly answer came before the unknown question's");

    for (i, stream) in costly.iter_mut().enumerate() {
        assert_eq!(read_answers(stream, 1), [format!("A{i}.").into_bytes()]);
    }
}

#[test]
fn a_remembered_answer_comes_back_before_new_ones_asked_at_the_same_time() {
    let (server, _file) = slow_oracle_server();
    let addr = server.addr();
    // Computed once, then remembered.
    assert_eq!(ask_like_the_book(&mut connect(addr), b"Q0?"), b"A0.");

    let mut fresh = ask_each_on_its_own_connection(addr, (1..16).map(|i| format!("Q{i}?")));
    server.wait_until_read();
    let computing = still_waiting(&fresh);
    let again = ask_like_the_book(&mut connect(addr), b"Q0?");
    assert_eq!(again, b"A0.");
    let overtaking: Vec<usize> = computing.iter().copied().filter(|&i| has_arrived(&fresh[i])).collect();
    assert!(overtaking.is_empty(), "the remembered answer waited for the new answers of {overtaking:?}");
    assert!(!still_waiting(&fresh).is_empty(), "every new answer came before the remembered one");

    for (i, stream) in (1..).zip(&mut fresh) {
        assert_eq!(read_answers(stream, 1), [format!("A{i}.").into_bytes()]);
    }
}

#[test]
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn a_client_resetting_mid_answer_ends_only_its_own_session() {
    let server = ZenServer::start();
    let mut bystander = connect(server.addr());
    for _ in 0..3 {
        let mut resetter = connect(server.addr());
        resetter.write_all(&b"Beautiful is better than?".repeat(200_000)).unwrap();
        let mut some = [0; 1024];
        resetter.read_exact(&mut some).unwrap();
        socket2::SockRef::from(&resetter).set_linger(Some(Duration::ZERO)).unwrap();
        drop(resetter); // RST while answers are being written
    }
    assert!(server.wait_for_log(&["failed", "Connection reset by peer", "peer=127.0.0.1:"], DEADLINE).is_some());
    assert_eq!(ask_like_the_book(&mut bystander, b"Simple is better than?"), b"Complex.");
    assert_eq!(ask_like_the_book(&mut connect(server.addr()), b"Simple is better than?"), b"Complex.");
}

#[test]
fn running_out_of_file_descriptors_pauses_accepting_without_spinning_and_recovers() {
    let server =
        ZenServer::launch(Launch::args(&["--listen", "127.0.0.1:0"]).env("ZEN_SERVER__WORKERS", "1").fd_limit(48));
    let addr = server.addr();
    // More connections than descriptors left: the kernel queues them, accept fails with EMFILE.
    let crowd: Vec<TcpStream> = (0..60).map(|_| connect(addr)).collect();
    assert!(server.wait_for_log(&["accept failed", "out of resources"], DEADLINE).is_some(), "log:\n{}", server.log());
    let cpu_before = server.cpu_time();
    thread::sleep(Duration::from_secs(1));
    let cpu_used = server.cpu_time() - cpu_before;
    // A spinning accept loop uses about the whole second; pausing, next to nothing.
    assert!(
        cpu_used < Duration::from_millis(600),
        "accept loop used {cpu_used:?} of CPU in 1 s while out of descriptors"
    );

    drop(crowd);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut stream = connect(addr);
        if stream.write_all(b"Simple is better than?").is_ok() {
            let mut answer = [0; 8];
            if stream.read_exact(&mut answer).is_ok() && &answer == b"Complex." {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never recovered; log:\n{}", server.log());
        thread::sleep(Duration::from_millis(50));
    }
}

/// A server of two worker threads, both wedged for good by `oracle.hang_question`, and the
/// clients that wedged them.
fn server_with_every_worker_wedged(shutdown_timeout_secs: u64) -> (ZenServer, Vec<TcpStream>) {
    let server = ZenServer::launch(Launch::with_env(&[
        ("ZEN_SERVER__WORKERS", "2"),
        ("ZEN_SERVER__SHUTDOWN_TIMEOUT_SECS", &shutdown_timeout_secs.to_string()),
        ("ZEN_ORACLE__HANG_QUESTION", "Hang?"),
    ]));
    // Connections go to the workers in turn: four of them reach both twice.
    let hung: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut client = connect(server.addr());
            client.write_all(b"Hang?").unwrap();
            client
        })
        .collect();
    let wedged = |line: &str| line.contains("oracle.hang_question was asked");
    assert!(server.wait_for_log_count(wedged, 2, DEADLINE), "both threads should be wedged; log:\n{}", server.log());
    (server, hung)
}

#[test]
fn sigterm_ends_a_server_whose_every_worker_is_wedged_within_the_shutdown_timeout() {
    let (mut server, hung) = server_with_every_worker_wedged(2);
    let asked = Instant::now();
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(DEADLINE).unwrap_or_else(|| panic!("still running; log:\n{}", server.log()));
    let took = asked.elapsed();
    // A drain that gave up exits 0, with a warning naming the clients cut off, once the
    // shutdown timeout has passed (by the server's own clock; how soon after that the process
    // is gone is the machine's to say).
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    let drained = server.log().lines().find(|line| line.contains("drained")).unwrap_or_default().to_owned();
    assert!(drained.contains("unfinished=4"), "log:\n{}", server.log());
    let waited: u64 = drained.split("elapsed_ms=").nth(1).and_then(|ms| ms.trim().parse().ok()).unwrap_or(0);
    assert!(waited >= 2000, "gave up after {waited} ms, before the 2 s shutdown timeout: {drained}");
    eprintln!("exited {took:?} after SIGTERM, the drain having waited {waited} ms");
    drop(hung);
}

#[test]
fn a_second_sigterm_ends_a_server_whose_every_worker_is_wedged_at_once() {
    let (mut server, hung) = server_with_every_worker_wedged(60);
    server.signal(Signal::SIGTERM);
    assert!(server.wait_for_log(&["shutting down"], DEADLINE).is_some(), "log:\n{}", server.log());
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(DEADLINE).unwrap_or_else(|| panic!("still running; log:\n{}", server.log()));
    assert_eq!(status.code(), Some(143), "log:\n{}", server.log());
    drop(hung);
}
