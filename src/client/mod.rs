//! A small client: sends questions pipelined on one connection and reads one answer per
//! question, each ending with `.`, in plain text or over TLS ([`tls`]), after a PROXY header
//! if asked. Used by `zen-client` and by the tests.

pub mod tls;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

pub use self::tls::{TlsClient, TlsFailure, TlsOptions, Trust};
use crate::{
    config::Settings,
    protocol::{ANSWER_END, Answer, HEALTH_QUESTION, QUESTION_END, Question, is_leading_whitespace},
    server::listener::ListenerKind,
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
    /// The TLS settings cannot be used (a file, a name).
    #[error("{0}")]
    Tls(String),
    /// TLS failed: the handshake, or the server's refusal of the client's certificate after it.
    #[error("{0}")]
    TlsFailed(#[from] TlsFailure),
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

/// A server to ask, and how to speak to it.
#[derive(Clone)]
pub struct Target {
    /// `HOST:PORT` (a host name, an IP address, an IPv6 address in brackets).
    pub addr: String,
    /// Start with a PROXY header ([`PROXY_HEADER`]), for a listener in `proxy.listen` or
    /// `tls.proxy_listen`.
    pub proxy_header: bool,
    /// Speak TLS (after the PROXY header, if there is one).
    pub tls: Option<TlsClient>,
}

impl Target {
    /// A plain target at `addr`, with no PROXY header.
    pub fn plain(addr: impl ToString) -> Self {
        Self { addr: addr.to_string(), proxy_header: false, tls: None }
    }
}

/// A connection in plain text or over TLS.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// Sends every question in one write to `target`, then reads one answer per question.
///
/// # Errors
///
/// [`ClientError::Connect`] naming the address if no connection can be made; another
/// [`ClientError`] if the handshake or the connection fails, the server closes early, or
/// `timeout` (for the whole exchange) passes.
pub async fn ask(target: &Target, questions: &[Question], timeout: Duration) -> Result<Vec<Answer>, ClientError> {
    let answers = tokio::time::timeout(timeout, exchange(target, questions));
    answers.await.map_err(|_| ClientError::TimedOut(timeout))?
}

/// Opens one connection to `target` as [`ask`] does (its PROXY header and TLS handshake
/// included), closes it, and returns the address reached: of those `target.addr` names, the
/// first that accepted.
///
/// # Errors
///
/// As [`ask`]'s, for connecting.
pub async fn reach(target: &Target, timeout: Duration) -> Result<SocketAddr, ClientError> {
    let reached = async { connect(target).await.map(|(peer, _)| peer) };
    tokio::time::timeout(timeout, reached).await.map_err(|_| ClientError::TimedOut(timeout))?
}

/// Connects to `target`: the PROXY header, then the TLS handshake, as it says. Returns the
/// address connected to, and the connection.
async fn connect(target: &Target) -> Result<(SocketAddr, Pin<Box<dyn Connection>>), ClientError> {
    let addr = target.addr.as_str();
    let mut stream =
        TcpStream::connect(addr).await.map_err(|source| ClientError::Connect { addr: addr.to_owned(), source })?;
    let peer = stream.peer_addr()?;
    stream.set_nodelay(true)?;
    if target.proxy_header {
        stream.write_all(PROXY_HEADER).await?;
    }
    let connection: Pin<Box<dyn Connection>> = match &target.tls {
        None => Box::pin(stream),
        Some(tls) => Box::pin(tls.handshake(stream, addr, target.proxy_header).await?),
    };
    Ok((peer, connection))
}

async fn exchange(target: &Target, questions: &[Question]) -> Result<Vec<Answer>, ClientError> {
    let (_, mut stream) = connect(target).await?;
    // A TLS 1.3 server refuses a client's certificate only after the client's side of the
    // handshake is done: the refusal comes with the first read or write.
    let failed = |error: io::Error| match &target.tls {
        Some(tls) => {
            tls.explain(&target.addr, target.proxy_header, error).map_or_else(ClientError::Io, ClientError::from)
        }
        None => ClientError::Io(error),
    };
    let request: Vec<u8> = questions.iter().flat_map(|q| q.as_bytes().iter().copied()).collect();
    stream.write_all(&request).await.map_err(failed)?;
    stream.flush().await.map_err(failed)?;
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
        let read = match stream.read_buf(&mut buffer).await {
            // A TLS server that closes without a close_notify has closed all the same.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof && target.tls.is_some() => 0,
            read => read.map_err(failed)?,
        };
        if read == 0 {
            // A PROXY listener closes, without a word, a connection that starts with no header,
            // and a TLS listener one that starts with no handshake.
            let hint = match (answers.is_empty(), target.proxy_header, target.tls.is_some()) {
                (true, false, false) => {
                    "; if it is a PROXY listener (proxy.listen) use --proxy-header, if a TLS listener (tls.listen) --tls, or the server's plain address (server.listen)"
                }
                (true, true, false) => "; if it is a PROXY listener that speaks TLS (tls.proxy_listen), add --tls",
                _ => "",
            };
            return Err(ClientError::ClosedEarly {
                addr: target.addr.clone(),
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
}

/// The PROXY header sent with `--proxy-header`: version 1, no address relayed (the server keeps
/// the socket's own peer).
pub const PROXY_HEADER: &[u8] = b"PROXY UNKNOWN\r\n";

impl Probe {
    /// The book's first question, `Beautiful is better than?`, expecting `Ugly.`.
    pub fn book() -> Self {
        let (question, answer) = PROBE;
        Self { question: Question::from_static(question), answer: Answer::from_static(answer) }
    }

    /// What to probe for a server running with `settings`: the first entry of its answer table
    /// at its first listening address, with what connections there begin with. Without
    /// `proxy_header`, that is the first of `server.listen`, or of `tls.listen` if it has none
    /// (or if `tls`); with it, the first of `proxy.listen`, or of `tls.proxy_listen`. A
    /// wildcard address becomes the loopback address of its family. So a probe follows the
    /// configured ports, answers and TLS.
    pub fn for_settings(
        settings: &Settings,
        proxy_header: bool,
        tls: bool,
    ) -> (Option<(SocketAddr, ListenerKind)>, Self) {
        let listen = settings.listen_addrs();
        let wanted = |kind: &ListenerKind| kind.proxy == proxy_header && (kind.tls || !tls);
        let addr = listen.into_iter().find(|(_, kind)| wanted(kind)).map(|(addr, kind)| {
            let addr = match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
                IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
                _ => addr,
            };
            (addr, kind)
        });
        let probe = settings.oracle.answers.entries().into_iter().next().map_or_else(Self::book, |entry| Self {
            question: Question::new(entry.question.clone()),
            answer: Answer::new(entry.answer.clone()),
        });
        (addr, probe)
    }
}

/// Asks `probe`'s question of `target` (as [`ask`] does), then the health question, on one
/// connection, and checks both answers: the first says the server answers from its table, the
/// second that none of its worker threads is stalled (see [`crate::health`]), whichever the
/// connection landed on.
///
/// # Errors
///
/// [`ClientError`] if there is no connection, no answer within `timeout`, or not the
/// expected one.
pub async fn probe(target: &Target, probe: &Probe, timeout: Duration) -> Result<(), ClientError> {
    let health = Question::from_static(HEALTH_QUESTION);
    let answers = ask(target, &[probe.question.clone(), health], timeout).await?;
    for (answer, expected) in answers.iter().map(Some).chain([None]).zip([&probe.answer, &Answer::HEALTHY]) {
        if answer != Some(expected) {
            return Err(ClientError::WrongAnswer {
                expected: expected.to_string(),
                got: answer.map(ToString::to_string).unwrap_or_default(),
            });
        }
    }
    Ok(())
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
        let error = probe(&Target::plain(addr), &Probe::book(), Duration::from_secs(5)).await.unwrap_err();
        assert!(
            matches!(&error, ClientError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused)
        );
        assert!(error.to_string().starts_with(&format!("cannot connect to {addr}: ")), "{error}");
    }
}
