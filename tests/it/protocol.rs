//! The Zen protocol as the book's client and other clients speak it.

use std::{
    io::{Read, Write},
    net::Shutdown,
    thread,
    time::Duration,
};

use crate::helpers::{DEADLINE, Launch, ZenServer, ask_like_the_book, connect, read_answers, read_to_close};

const BOOK: [(&[u8], &[u8]); 3] = [
    (b"Beautiful is better than?", b"Ugly."),
    (b"Explicit is better than?", b"Implicit."),
    (b"Simple is better than?", b"Complex."),
];

#[test]
fn the_three_aphorisms_get_the_books_answers_byte_for_byte() {
    let server = ZenServer::start();
    let mut stream = connect(server.addr());
    for (question, answer) in BOOK.iter().rev() {
        assert_eq!(ask_like_the_book(&mut stream, question), *answer);
    }
}

#[test]
fn an_unknown_question_gets_the_error_answer() {
    let server = ZenServer::start();
    let mut stream = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut stream, b"What is the meaning of life?"), b"Error: unknown aphorism.");
    assert_eq!(ask_like_the_book(&mut stream, b"beautiful is better than?"), b"Error: unknown aphorism.");
}

#[test]
fn a_thousand_pipelined_questions_in_one_write_are_answered_in_order() {
    let server = ZenServer::start();
    let mut stream = connect(server.addr());
    let questions: Vec<(&[u8], &[u8])> = (0..1000)
        .map(|i| if i % 7 == 3 { (&b"Why?"[..], &b"Error: unknown aphorism."[..]) } else { BOOK[i % 3] })
        .collect();
    let request: Vec<u8> = questions.iter().flat_map(|(q, _)| q.iter().copied()).collect();
    stream.write_all(&request).unwrap();
    let answers = read_answers(&mut stream, questions.len());
    for (index, ((_, expected), answer)) in questions.iter().zip(&answers).enumerate() {
        assert_eq!(answer.as_slice(), *expected, "answer {index}");
    }
}

#[test]
fn a_question_sent_one_byte_at_a_time_is_one_question() {
    let server = ZenServer::start();
    let mut stream = connect(server.addr());
    for byte in b"Simple is better than?" {
        stream.write_all(&[*byte]).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(read_answers(&mut stream, 1), [b"Complex.".to_vec()]);
}

#[test]
fn whitespace_before_questions_is_ignored_as_for_nc_and_telnet() {
    let server = ZenServer::start();
    let mut stream = connect(server.addr());
    stream.write_all(b"Beautiful is better than?\r\n  Explicit is better than?\n").unwrap();
    assert_eq!(read_answers(&mut stream, 2), [b"Ugly.".to_vec(), b"Implicit.".to_vec()]);
}

#[test]
fn a_client_closing_mid_question_is_logged_and_others_are_still_served() {
    let server = ZenServer::start();
    let mut partial = connect(server.addr());
    partial.write_all(b"Beautiful is better than").unwrap();
    partial.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut partial), b"");
    let logged = server.wait_for_log(&["client sent part of a question", "partial=Beautiful is better than"], DEADLINE);
    assert!(logged.is_some(), "log:\n{}", server.log());

    let mut next = connect(server.addr());
    assert_eq!(ask_like_the_book(&mut next, b"Explicit is better than?"), b"Implicit.");
}

#[test]
fn a_half_closed_client_gets_every_answer_then_end_of_file() {
    let server = ZenServer::start();
    let mut stream = connect(server.addr());
    let request: Vec<u8> = BOOK.iter().flat_map(|(q, _)| q.iter().copied()).collect();
    stream.write_all(&request).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut stream), b"Ugly.Implicit.Complex.");
}

#[test]
fn non_utf8_and_nul_bytes_are_just_an_unknown_question() {
    let server = ZenServer::start();
    let mut stream = connect(server.addr());
    stream.write_all(b"\x00\xff\xfe\x80?Simple is better than?").unwrap();
    assert_eq!(read_answers(&mut stream, 2), [b"Error: unknown aphorism.".to_vec(), b"Complex.".to_vec()]);
}

#[test]
fn five_hundred_concurrent_clients_are_all_answered() {
    // All from 127.0.0.1, which one client's share (256) would not let in.
    let launch = Launch::args(&["--listen", "127.0.0.1:0"]).env("ZEN_LIMITS__MAX_CONNECTIONS_PER_CLIENT", "0");
    let server = ZenServer::launch(launch);
    let addr = server.addr();
    // Every client connects first and only then asks, so all 500 are open at once.
    let streams: Vec<_> = (0..500).map(|_| connect(addr)).collect();
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(index, mut stream)| {
            thread::spawn(move || {
                let (question, answer) = BOOK[index % 3];
                stream.write_all(question).unwrap();
                let mut received = vec![0; answer.len()];
                stream.read_exact(&mut received).unwrap();
                assert_eq!(received, answer, "client {index}");
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
}
