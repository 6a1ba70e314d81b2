//! A small client: sends questions pipelined on one connection and reads one answer per
//! question, each ending with `.`. Used by `zen-client` and by the tests.

use std::{
    fmt::Display,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, ToSocketAddrs},
};

use crate::{
    config::Settings,
    protocol::{ANSWER_END, Answer, QUESTION_END, Question, is_leading_whitespace},
};

/// The question [`probe`] asks, and the answer it expects.
const PROBE: (&[u8], &[u8]) = (b"Beautiful is better than?", b"Ugly.");

/// Why asking failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made to the server.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as it was given.
        addr: String,
        /// Why connecting failed.
        source: io::Error,
    },
    /// Writing the questions or reading the answers failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// No complete answer came in time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The server closed the connection before answering every question.
    #[error("{addr} closed the connection after {answered} of {asked} answers{hint}")]
    ClosedEarly {
        /// The address as it was given.
        addr: String,
        /// Answers received.
        answered: usize,
        /// Questions asked.
        asked: usize,
        /// What may be wrong, when nothing at all was answered.
        hint: &'static str,
    },
    /// A question to ask does not end with `?`.
    #[error("{0:?} does not end with '?': the server would wait for the rest of it")]
    Unterminated(String),
    /// The probe question got another answer.
    #[error("expected \"{expected}\", got \"{got}\"")]
    WrongAnswer {
        /// What the probe expects.
        expected: String,
        /// What the server said.
        got: String,
    },
}

/// Sends every question in one write to `addr` (an address, or a host name and port, such as
/// `"127.0.0.1:1060"` or a `SocketAddr`), after a PROXY header if `proxy_header` (for a
/// listener in `proxy.listen`), then reads one answer per question.
///
/// # Errors
///
/// [`ClientError::Connect`] naming `addr` if no connection can be made; another
/// [`ClientError`] if the connection fails, the server closes early, or `timeout` (for the
/// whole exchange) passes.
pub async fn ask(
    addr: impl ToSocketAddrs + Display,
    questions: &[Question],
    timeout: Duration,
    proxy_header: bool,
) -> Result<Vec<Answer>, ClientError> {
    exchange(addr, if proxy_header { PROXY_HEADER } else { b"" }, questions, timeout).await
}

/// Sends `preamble` (such as a PROXY header), then every question in the same write; reads one
/// answer per question, within `timeout` for the whole exchange.
async fn exchange(
    addr: impl ToSocketAddrs + Display,
    preamble: &[u8],
    questions: &[Question],
    timeout: Duration,
) -> Result<Vec<Answer>, ClientError> {
    let answers = tokio::time::timeout(timeout, exchange_untimed(addr, preamble, questions));
    answers.await.map_err(|_| ClientError::TimedOut(timeout))?
}

async fn exchange_untimed(
    addr: impl ToSocketAddrs + Display,
    preamble: &[u8],
    questions: &[Question],
) -> Result<Vec<Answer>, ClientError> {
    let mut stream =
        TcpStream::connect(&addr).await.map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?;
    stream.set_nodelay(true)?;
    let questions_bytes = questions.iter().flat_map(|q| q.as_bytes().iter().copied());
    let request: Vec<u8> = preamble.iter().copied().chain(questions_bytes).collect();
    stream.write_all(&request).await?;
    let mut answers = Vec::with_capacity(questions.len());
    let mut buffer = BytesMut::with_capacity(4096);
    loop {
        while answers.len() < questions.len() {
            let Some(end) = memchr::memchr(ANSWER_END, &buffer) else { break };
            answers.push(Answer::new(buffer.split_to(end + 1).freeze()));
        }
        if answers.len() == questions.len() {
            return Ok(answers);
        }
        if stream.read_buf(&mut buffer).await? == 0 {
            // A PROXY listener closes, without a word, a connection that starts with no header.
            let hint = match (answers.is_empty(), preamble.is_empty()) {
                (true, true) => {
                    "; if it is a PROXY listener (proxy.listen), use --proxy-header or the server's plain address (server.listen)"
                }
                _ => "",
            };
            return Err(ClientError::ClosedEarly {
                addr: addr.to_string(),
                answered: answers.len(),
                asked: questions.len(),
                hint,
            });
        }
    }
}

/// The questions in `text`, framed as the server frames them: each ends with its `?`, and
/// whitespace before one is not part of it.
///
/// # Errors
///
/// [`ClientError::Unterminated`] if `text` ends with bytes that are not a whole question: the
/// server would wait for the rest of it.
pub fn questions_in(text: &str) -> Result<Vec<Question>, ClientError> {
    let mut questions = Vec::new();
    let mut rest = text.trim_start_matches(|c: char| c.is_ascii() && is_leading_whitespace(c as u8));
    while !rest.is_empty() {
        let Some(end) = rest.find(char::from(QUESTION_END)) else {
            return Err(ClientError::Unterminated(rest.to_owned()));
        };
        questions.push(Question::new(rest[..=end].to_owned()));
        rest = rest[end + 1..].trim_start_matches(|c: char| c.is_ascii() && is_leading_whitespace(c as u8));
    }
    Ok(questions)
}

/// A question and the answer a healthy server gives it.
#[derive(Debug, Clone)]
pub struct Probe {
    /// What is asked.
    pub question: Question,
    /// What must come back.
    pub answer: Answer,
    /// Start with a PROXY header (`PROXY UNKNOWN`: the server keeps the socket's own peer), to
    /// probe a listener where connections must start with one.
    pub proxy_header: bool,
}

/// The PROXY header sent with `--proxy-header`: version 1, no address relayed (the server keeps
/// the socket's own peer).
pub const PROXY_HEADER: &[u8] = b"PROXY UNKNOWN\r\n";

impl Probe {
    /// The book's first question, `Beautiful is better than?`, expecting `Ugly.`.
    pub fn book() -> Self {
        let (question, answer) = PROBE;
        Self { question: Question::from_static(question), answer: Answer::from_static(answer), proxy_header: false }
    }

    /// What to probe for a server running with `settings`: its first listening address (in
    /// `proxy.listen`, with a PROXY header, if `proxy_header`; a wildcard address becomes the
    /// loopback address of its family) and the first entry of its answer table, so a probe
    /// follows the configured ports and answers.
    pub fn for_settings(settings: &Settings, proxy_header: bool) -> (Option<SocketAddr>, Self) {
        let listen = match proxy_header {
            true => settings.restart.proxy.listen.addrs(),
            false => settings.restart.server.listen.addrs(),
        };
        let addr = listen.first().map(|&addr| match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
            IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
            _ => addr,
        });
        let probe = settings.live.oracle.answers.entries().into_iter().next().map_or_else(Self::book, |entry| Self {
            question: Question::new(entry.question.clone()),
            answer: Answer::new(entry.answer.clone()),
            proxy_header: false,
        });
        (addr, Self { proxy_header, ..probe })
    }
}

/// Asks `probe`'s question at `addr` (as for [`ask`]) and checks the answer.
///
/// # Errors
///
/// [`ClientError`] if there is no connection, no answer within `timeout`, or not the
/// expected one.
pub async fn probe(addr: impl ToSocketAddrs + Display, probe: &Probe, timeout: Duration) -> Result<(), ClientError> {
    let preamble = if probe.proxy_header { PROXY_HEADER } else { b"" };
    let answers = exchange(addr, preamble, std::slice::from_ref(&probe.question), timeout).await?;
    match answers.first() {
        Some(answer) if *answer == probe.answer => Ok(()),
        other => Err(ClientError::WrongAnswer {
            expected: probe.answer.to_string(),
            got: other.map(ToString::to_string).unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_splits_into_questions_as_the_server_frames_them() {
        let questions = questions_in(" A?B c?\nD?").unwrap();
        let texts: Vec<String> = questions.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["A?", "B c?", "D?"]);
        let error = questions_in("A?Beautiful is better than").unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"Beautiful is better than\" does not end with '?': the server would wait for the rest of it"
        );
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_named_in_the_error() {
        // An address nothing listens on: bound, then let go.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let error = probe(addr, &Probe::book(), Duration::from_secs(5)).await.unwrap_err();
        assert!(
            matches!(&error, ClientError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused)
        );
        assert!(error.to_string().starts_with(&format!("cannot connect to {addr}: ")), "{error}");
    }
}
