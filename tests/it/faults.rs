//! Faults inside the server: a panicking oracle, a slow oracle, connections reset by clients,
//! running out of file descriptors.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use crate::helpers::{DEADLINE, Launch, TempConfig, ZenServer, ask_like_the_book, connect, read_answers};

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

    // The same session, the other session and new sessions all keep working, and it recovers
    // each time.
    assert_eq!(ask_like_the_book(&mut victim, b"Poison?"), b"Error: internal error.");
    assert_eq!(ask_like_the_book(&mut victim, b"Simple is better than?"), b"Complex.");
    assert_eq!(ask_like_the_book(&mut bystander, b"Beautiful is better than?"), b"Ugly.");
    assert_eq!(ask_like_the_book(&mut connect(server.addr()), b"Explicit is better than?"), b"Implicit.");
    assert!(server.wait_for_log(&["panics=2"], DEADLINE).is_some());
}

/// A table of 64 questions `Q0?`..`Q63?`, each answer costing 50 ms on 8 workers.
fn slow_oracle_config() -> TempConfig {
    let entries: Vec<String> = (0..64).map(|i| format!("{{ question = \"Q{i}?\", answer = \"A{i}.\" }}")).collect();
    TempConfig::new(&format!("[oracle]\nsimulated_cost_ms = 50\nworkers = 8\nanswers = [{}]\n", entries.join(", ")))
}

fn ask_timed(addr: SocketAddr, question: String) -> (Vec<u8>, Duration) {
    let mut stream = connect(addr);
    let asked = Instant::now();
    let answer = ask_like_the_book(&mut stream, question.as_bytes());
    (answer, asked.elapsed())
}

#[test]
fn a_slow_oracle_answers_parallel_clients_in_parallel_and_cheap_questions_at_once() {
    let file = slow_oracle_config();
    let server = ZenServer::launch(Launch::args(&["--config", file.path(), "--listen", "127.0.0.1:0"]));
    let addr = server.addr();
    let started = Instant::now();
    let askers: Vec<_> = (0..64).map(|i| thread::spawn(move || (i, ask_timed(addr, format!("Q{i}?"))))).collect();
    // While the 64 costly answers are computed (64 x 50 ms on 8 workers: about 400 ms), an
    // unknown question costs nothing and must not queue behind them.
    thread::sleep(Duration::from_millis(50));
    let (cheap, cheap_time) = ask_timed(addr, "Why?".into());
    assert_eq!(cheap, b"Error: unknown aphorism.");
    for asker in askers {
        let (i, (answer, _)) = asker.join().unwrap();
        assert_eq!(answer, format!("A{i}.").as_bytes());
    }
    let all = started.elapsed();
    // A remembered answer is cheap too.
    let (again, again_time) = ask_timed(addr, "Q7?".into());
    assert_eq!(again, b"A7.");
    eprintln!(
        "64 costly answers in {all:?} (serial: 3.2 s); unknown question {cheap_time:?}; remembered {again_time:?}"
    );
    assert!(all < Duration::from_millis(1600), "64 x 50 ms took {all:?}: not parallel");
    assert!(cheap_time < Duration::from_millis(200), "a cheap question waited {cheap_time:?}");
    assert!(again_time < Duration::from_millis(200), "a remembered answer waited {again_time:?}");
}

#[test]
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
    assert!(
        cpu_used < Duration::from_millis(300),
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
