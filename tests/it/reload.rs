//! SIGHUP: the settings are read again from every layer and applied live where they can be; a
//! broken file changes nothing and stops nothing; clients pipelining across reloads lose no
//! answer and see no error.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::helpers::{
    DEADLINE, Launch, NotifySocket, TempConfig, ZenServer, ask_like_the_book, connect, read_to_close,
};

fn table(answer: &str) -> String {
    format!("[oracle]\nanswers = [{{ question = \"Beautiful is better than?\", answer = \"{answer}\" }}]\n")
}

/// Sends SIGHUP and waits for the `count`-th outcome of a reload (taken or failed) in the log.
fn reload(server: &ZenServer, count: usize) {
    server.signal(Signal::SIGHUP);
    let outcome = |line: &str| line.contains("settings reloaded") || line.contains("reload failed");
    assert!(server.wait_for_log_count(outcome, count, DEADLINE), "reload {count} not done; log:\n{}", server.log());
}

fn launch_with(file: &TempConfig) -> ZenServer {
    ZenServer::launch(Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]))
}

#[test]
fn a_new_table_on_disk_answers_on_the_same_open_connection_after_sighup() {
    let file = TempConfig::new(&table("Ugly."));
    let server = launch_with(&file);
    let mut client = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Ugly.");
    file.write(&table("Pretty."));
    reload(&server, 1);
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Pretty.");
    assert!(server.log().contains("settings reloaded changed=oracle.answers"), "log:\n{}", server.log());
}

#[test]
fn a_reload_that_raises_the_question_limit_and_adds_a_longer_question_answers_it_on_a_connection_opened_before() {
    let file = TempConfig::new(&table("Ugly."));
    let server = launch_with(&file);
    let mut client = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Ugly.");
    // 2,000 bytes: longer than the 1,024 in force when the connection opened.
    let long = format!("{}?", "L".repeat(1999));
    file.write(&format!(
        "[limits]\nmax_question_bytes = 4096\n[oracle]\nanswers = [{{ question = \"{long}\", answer = \"Long.\" }}]\n"
    ));
    reload(&server, 1);
    assert_eq!(ask_like_the_book(&mut client, long.as_bytes()), b"Long.", "log:\n{}", server.log());
}

#[test]
fn a_reload_that_changes_nothing_says_so() {
    let file = TempConfig::new(&table("Ugly."));
    let server = launch_with(&file);
    reload(&server, 1);
    assert!(server.log().contains("settings reloaded changed=nothing"), "log:\n{}", server.log());
}

#[test]
fn a_broken_file_keeps_the_old_table_the_process_and_every_connection() {
    let file = TempConfig::new(&table("Ugly."));
    let mut server = launch_with(&file);
    let mut client = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Ugly.");
    file.write(&format!("[server]\nworkers = 2.5\n{}", table("Pretty.")));
    reload(&server, 1);
    let failure = server.log().lines().find(|l| l.contains("reload failed")).unwrap_or_default().to_owned();
    assert!(
        failure.contains("ERROR") && failure.contains(&format!("invalid server.workers = 2.5 in {}", file.path())),
        "{failure}"
    );
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Ugly.", "the old table");
    file.write("[server\n");
    reload(&server, 2);
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Ugly.");
    assert_eq!(ask_like_the_book(&mut connect(server.addr()), b"Beautiful is better than?"), b"Ugly.");
    assert!(server.wait_exit(Duration::from_millis(100)).is_none(), "the process exited on a bad reload");
    // Fixed, it takes.
    file.write(&table("Pretty."));
    reload(&server, 3);
    assert_eq!(ask_like_the_book(&mut client, b"Beautiful is better than?"), b"Pretty.");
}

#[test]
fn a_new_log_level_takes_effect_and_restart_only_changes_are_named() {
    let file = TempConfig::new("[log]\nlevel = \"warn,zen_server::server=info,zen_server::control=info\"\n");
    let server = launch_with(&file);
    drop(connect(server.addr()));
    file.write("[server]\nworkers = 7\nbacklog = 9\n[log]\nlevel = \"info\"\n");
    reload(&server, 1);
    let warning =
        server.log().lines().find(|l| l.contains("take effect only after a restart")).unwrap_or_default().to_owned();
    assert!(
        warning.contains("WARN") && warning.contains("keys=server.backlog, server.workers"),
        "{warning}\n{}",
        server.log()
    );
    assert!(!server.log().contains("connection accepted"), "info events before the reload:\n{}", server.log());
    drop(connect(server.addr()));
    assert!(server.wait_for_log(&["connection accepted"], DEADLINE).is_some(), "log:\n{}", server.log());
}

#[test]
fn a_lower_connection_limit_applies_to_new_clients_at_once() {
    let file = TempConfig::new("");
    let server = launch_with(&file);
    let mut held = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut held, b"Simple is better than?"), b"Complex.");
    file.write("[limits]\nmax_connections = 1\n");
    reload(&server, 1);
    let mut extra = connect(server.addr());
    assert_eq!(read_to_close(&mut extra), b"Error: server busy.");
    assert_eq!(ask_like_the_book(&mut held, b"Simple is better than?"), b"Complex.", "those connected stay");
}

#[test]
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn twenty_reloads_under_pipelining_clients_lose_no_answer_and_give_no_error() {
    const BATCH: usize = 50;
    let file = TempConfig::new(&table("Ugly."));
    let server = launch_with(&file);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, answered, addr) = (stop.clone(), answered.clone(), server.addr());
            thread::spawn(move || {
                let mut stream = connect(addr);
                let questions = b"Beautiful is better than?".repeat(BATCH);
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) || rounds == 0 {
                    stream.write_all(&questions).unwrap();
                    for answer in crate::helpers::read_answers(&mut stream, BATCH) {
                        assert!(answer == b"Ugly." || answer == b"Pretty.", "{:?}", String::from_utf8_lossy(&answer));
                    }
                    answered.fetch_add(BATCH as u64, Ordering::Relaxed);
                    rounds += 1;
                }
            })
        })
        .collect();
    let end = Instant::now() + DEADLINE;
    while answered.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < end, "no client got answers");
        thread::sleep(Duration::from_millis(10));
    }
    let before = answered.load(Ordering::Relaxed);
    for count in 1..=20 {
        file.write(&table(if count % 2 == 1 { "Pretty." } else { "Ugly." }));
        reload(&server, count);
    }
    let during = answered.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client saw a wrong or missing answer");
    }
    assert!(during > 0, "no answer while the settings were reloaded");
    assert_eq!(server.log().matches("settings reloaded").count(), 20);
    assert!(!server.log().contains("ERROR"), "log:\n{}", server.log());
}

/// How long a server may take to load or reload the large table below: parsed, merged over the
/// other layers and compared with the running one, it takes about 2 s in a debug build, and
/// several times as long when other work keeps the cores busy. It bounds a hang; nothing is
/// timed with it.
const LARGE_TABLE_DEADLINE: Duration = Duration::from_secs(60);

/// A table of 50,000 questions besides the book's first, which `beautiful` answers.
fn large_table(beautiful: &str) -> String {
    let mut text = String::from("[server]\nworkers = 2\n[oracle]\nanswers = [\n");
    text.push_str(&format!("{{ question = \"Beautiful is better than?\", answer = \"{beautiful}\" }},\n"));
    for i in 0..50_000 {
        text.push_str(&format!("{{ question = \"Question number {i}?\", answer = \"Answer number {i}.\" }},\n"));
    }
    text.push_str("]\n");
    text
}

/// Reloads a table of 50,001 entries while `askers` connections ask one question at a time,
/// as the book's client does, and checks that the reload is reported once the new table is in
/// force on every worker; returns the longest any asker waited for an answer meanwhile.
fn reload_a_large_table(askers: usize) -> Duration {
    let file = TempConfig::new(&large_table("Ugly."));
    let notify = NotifySocket::new();
    let server = ZenServer::launch(
        Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"])
            .env("NOTIFY_SOCKET", notify.path())
            .ready_within(LARGE_TABLE_DEADLINE),
    );
    notify.wait_for_within("READY=1", LARGE_TABLE_DEADLINE);
    let stop = Arc::new(AtomicBool::new(false));
    let askers: Vec<_> = (0..askers)
        .map(|_| {
            let (stop, mut stream) = (stop.clone(), connect(server.addr()));
            thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let answer = ask_like_the_book(&mut stream, b"Beautiful is better than?");
                    slowest = slowest.max(asked.elapsed());
                    assert!(answer == b"Ugly." || answer == b"Pretty.", "{}", String::from_utf8_lossy(&answer));
                }
                slowest
            })
        })
        .collect();
    // And connections spread over the workers ask right after the reload is reported.
    let mut checkers: Vec<_> = (0..4).map(|_| connect(server.addr())).collect();
    for checker in &mut checkers {
        assert_eq!(ask_like_the_book(checker, b"Beautiful is better than?"), b"Ugly.");
    }

    file.write(&large_table("Pretty."));
    let signalled = Instant::now();
    server.signal(Signal::SIGHUP);
    let reloaded = server.wait_for_log(&["settings reloaded"], LARGE_TABLE_DEADLINE);
    assert!(reloaded.is_some(), "log:\n{}", server.log());
    for checker in &mut checkers {
        assert_eq!(ask_like_the_book(checker, b"Beautiful is better than?"), b"Pretty.", "after the log line");
    }
    let (ready, _) = notify.wait_for_within("READY=1", LARGE_TABLE_DEADLINE);
    assert!(ready.contains("settings reloaded"), "{ready:?}");
    for checker in &mut checkers {
        assert_eq!(ask_like_the_book(checker, b"Beautiful is better than?"), b"Pretty.", "after READY=1");
    }
    let reload_took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let slowest = askers.into_iter().map(|asker| asker.join().expect("a wrong answer")).max().unwrap_or_default();
    eprintln!("reload of 50,001 entries reported after {reload_took:?}; slowest answer meanwhile {slowest:?}");
    slowest
}

#[test]
fn reloading_a_large_table_is_reported_once_in_force_on_every_worker() {
    reload_a_large_table(0);
}

#[test]
#[ignore = "load test, seconds of full CPU: cargo test -- --ignored"]
fn reloading_a_large_table_keeps_every_client_answered_within_100_ms() {
    let slowest = reload_a_large_table(4);
    assert!(slowest <= Duration::from_millis(100), "an answer waited {slowest:?} during the reload");
}

#[test]
fn the_pid_in_the_listening_line_names_this_server_to_signal_and_no_other() {
    let (file, other_file) = (TempConfig::new(&table("Ugly.")), TempConfig::new(&table("Ugly.")));
    let (server, other) = (launch_with(&file), launch_with(&other_file));
    let line = server.wait_for_log(&["listening"], DEADLINE).expect("a listening line");
    let pid = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("pid="))
        .unwrap_or_else(|| panic!("no pid field in {line}"));
    assert_eq!(pid.parse::<u32>().ok(), Some(server.pid()), "{line}");
    assert_ne!(server.pid(), other.pid());
    // Both files change; only the server signalled reads its own again.
    file.write(&table("Pretty."));
    other_file.write(&table("Pretty."));
    let status = std::process::Command::new("kill").args(["-HUP", pid]).status().expect("kill runs");
    assert!(status.success());
    assert!(server.wait_for_log(&["settings reloaded", "answers=1"], DEADLINE).is_some(), "log:\n{}", server.log());
    assert_eq!(ask_like_the_book(&mut connect(server.addr()), b"Beautiful is better than?"), b"Pretty.");
    // The other, not signalled, still serves its old table.
    assert!(!other.log().contains("settings reloaded"), "{}", other.log());
    assert_eq!(ask_like_the_book(&mut connect(other.addr()), b"Beautiful is better than?"), b"Ugly.");
}
