//! A small client: sends questions pipelined on one connection and reads one answer per
//! question, each ending with `.`. Used by `zen-client` and by the tests.

use std::{fmt::Display, io, time::Duration};

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, ToSocketAddrs},
};

use crate::protocol::{ANSWER_END, Answer, Question};

/// The question [`probe`] asks, and the answer it expects.
pub const PROBE: (&[u8], &[u8]) = (b"Beautiful is better than?", b"Ugly.");

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
    #[error("server closed the connection after {answered} of {asked} answers")]
    ClosedEarly {
        /// Answers received.
        answered: usize,
        /// Questions asked.
        asked: usize,
    },
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
/// `"127.0.0.1:1060"` or a `SocketAddr`), then reads one answer per question.
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
) -> Result<Vec<Answer>, ClientError> {
    tokio::time::timeout(timeout, exchange(addr, questions)).await.map_err(|_| ClientError::TimedOut(timeout))?
}

async fn exchange(addr: impl ToSocketAddrs + Display, questions: &[Question]) -> Result<Vec<Answer>, ClientError> {
    let mut stream =
        TcpStream::connect(&addr).await.map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?;
    stream.set_nodelay(true)?;
    let request: Vec<u8> = questions.iter().flat_map(|q| q.as_bytes().iter().copied()).collect();
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
            return Err(ClientError::ClosedEarly { answered: answers.len(), asked: questions.len() });
        }
    }
}

/// Asks the probe question at `addr` (as for [`ask`]) and checks the answer.
///
/// # Errors
///
/// [`ClientError`] if there is no connection, no answer within `timeout`, or not the
/// expected one.
pub async fn probe(addr: impl ToSocketAddrs + Display, timeout: Duration) -> Result<(), ClientError> {
    let (question, expected) = PROBE;
    let answers = ask(addr, &[Question::from_static(question)], timeout).await?;
    match answers.first() {
        Some(answer) if answer.as_bytes() == expected => Ok(()),
        other => Err(ClientError::WrongAnswer {
            expected: expected.escape_ascii().to_string(),
            got: other.map(ToString::to_string).unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_is_not_there_is_named_in_the_error() {
        // An address nothing listens on: bound, then let go.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let error = probe(addr, Duration::from_secs(5)).await.unwrap_err();
        assert!(
            matches!(&error, ClientError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused)
        );
        assert!(error.to_string().starts_with(&format!("cannot connect to {addr}: ")), "{error}");
    }
}
