//! The PROXY protocol (HAProxy's, versions 1 and 2) on the listeners configured for it
//! (`proxy.listen`): every connection there must start with a header, from a trusted source
//! range (`proxy.trusted`), within `proxy.header_timeout_ms` and [`MAX_HEADER_BYTES`], naming
//! the client the load balancer is relaying. That client is then the connection's peer in logs
//! and metrics. A `LOCAL` (v2) or `UNKNOWN` (v1) header, as HAProxy's own health checks send,
//! keeps the socket's peer. Whether a header is present is never guessed: on such a listener it
//! is required, on the others it is just bytes of a question.

use std::{io, net::SocketAddr, time::Duration};

use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult, v1, v2};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::telemetry::one_line;

/// The longest header accepted: version 2's 16 bytes and a payload with addresses and a few
/// TLVs (version 1 is at most 107 bytes).
pub const MAX_HEADER_BYTES: usize = 16 + 512;

/// Who may send a PROXY header, and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPolicy {
    /// Source ranges allowed to send a header (the load balancers).
    pub trusted: Vec<IpNet>,
    /// How long a connection may take to send its header.
    pub header_timeout: Duration,
}

/// Why a connection on a PROXY listener is closed before any question.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The connection does not come from a trusted source range.
    #[error("{peer} is not in proxy.trusted")]
    Untrusted {
        /// Where it comes from.
        peer: SocketAddr,
    },
    /// No whole header within the timeout.
    #[error("no PROXY header within {0:?}")]
    TimedOut(Duration),
    /// The bytes are not a PROXY header; the parser's reason, control characters escaped (its
    /// messages quote `\r\n`, which would break the log line).
    #[error("not a PROXY header: {0}")]
    Malformed(String),
    /// Longer than [`MAX_HEADER_BYTES`] without being a whole header.
    #[error("PROXY header longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    /// The connection ended before its header did.
    #[error("closed before the end of its PROXY header")]
    ClosedEarly,
    /// Reading failed.
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] io::Error),
}

impl ProxyError {
    fn malformed(reason: &dyn std::fmt::Display) -> Self {
        Self::Malformed(one_line(&reason.to_string()))
    }
}

/// What a PROXY header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxied {
    /// The client relayed, or `None` for a `LOCAL`/`UNKNOWN` header (the socket's peer is the
    /// client: a health check, say).
    pub client: Option<SocketAddr>,
    /// The header's length in bytes.
    pub header_bytes: usize,
    /// Bytes read after the header: the start of the first question.
    pub rest: Bytes,
}

impl ProxyPolicy {
    /// Whether `peer` may send a header.
    pub fn trusts(&self, peer: SocketAddr) -> bool {
        self.trusted.iter().any(|range| range.contains(&peer.ip().to_canonical()))
    }

    /// Reads the header at the start of `read`, from `peer`.
    ///
    /// # Errors
    ///
    /// [`ProxyError`] if `peer` is not trusted, or the header is missing, malformed, too long
    /// or late.
    pub async fn read_header<R: AsyncRead + Unpin>(
        &self,
        read: &mut R,
        peer: SocketAddr,
    ) -> Result<Proxied, ProxyError> {
        if !self.trusts(peer) {
            return Err(ProxyError::Untrusted { peer });
        }
        tokio::time::timeout(self.header_timeout, read_header(read))
            .await
            .map_err(|_| ProxyError::TimedOut(self.header_timeout))?
    }
}

async fn read_header<R: AsyncRead + Unpin>(read: &mut R) -> Result<Proxied, ProxyError> {
    let mut received = BytesMut::with_capacity(128);
    loop {
        if read.read_buf(&mut received).await? == 0 {
            return Err(ProxyError::ClosedEarly);
        }
        let result = HeaderResult::parse(&received);
        // A version 1 line that has ended is all there will be, whatever the parser says.
        let line_ended = received.starts_with(b"PROXY ") && memchr::memmem::find(&received, b"\r\n").is_some();
        let (length, client) = match result {
            HeaderResult::V1(Err(error)) if line_ended => return Err(ProxyError::malformed(&error)),
            result if result.is_incomplete() => {
                if received.len() >= MAX_HEADER_BYTES {
                    return Err(ProxyError::TooLong);
                }
                continue;
            }
            HeaderResult::V1(Ok(header)) => (header.header.len(), v1_client(&header.addresses)),
            HeaderResult::V2(Ok(header)) => (header.len(), v2_client(&header)),
            HeaderResult::V1(Err(error)) => return Err(ProxyError::malformed(&error)),
            HeaderResult::V2(Err(error)) => return Err(ProxyError::malformed(&error)),
        };
        if length > MAX_HEADER_BYTES {
            return Err(ProxyError::TooLong);
        }
        return Ok(Proxied { client, header_bytes: length, rest: received.split_off(length).freeze() });
    }
}

fn v1_client(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        v1::Addresses::Tcp6(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(header: &v2::Header<'_>) -> Option<SocketAddr> {
    match (header.command, header.addresses) {
        (v2::Command::Proxy, v2::Addresses::IPv4(ip)) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        (v2::Command::Proxy, v2::Addresses::IPv6(ip)) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        _ => None,
    }
}

/// A source range allowed to send PROXY headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustedRange(pub IpNet);

impl TryFrom<String> for TrustedRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse().map(Self).map_err(|_| "expected an address range such as 10.0.0.0/8 or ::1/128".into())
    }
}

impl From<TrustedRange> for String {
    fn from(range: TrustedRange) -> String {
        range.0.to_string()
    }
}

/// `proxy.trusted`: at least one range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<TrustedRange>", into = "Vec<TrustedRange>")]
pub struct Trusted(Vec<IpNet>);

impl Trusted {
    /// The ranges.
    pub fn ranges(&self) -> &[IpNet] {
        &self.0
    }
}

impl TryFrom<Vec<TrustedRange>> for Trusted {
    type Error = String;

    fn try_from(ranges: Vec<TrustedRange>) -> Result<Self, String> {
        if ranges.is_empty() {
            return Err(
                "at least one range is needed (proxy.listen without trusted senders would accept no one)".into()
            );
        }
        Ok(Self(ranges.into_iter().map(|range| range.0).collect()))
    }
}

impl From<Trusted> for Vec<TrustedRange> {
    fn from(trusted: Trusted) -> Self {
        trusted.0.into_iter().map(TrustedRange).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ProxyPolicy {
        ProxyPolicy { trusted: vec!["127.0.0.0/8".parse().unwrap()], header_timeout: Duration::from_millis(200) }
    }

    const BALANCER: &str = "127.0.0.1:40000";

    async fn read(bytes: &[u8]) -> Result<Proxied, ProxyError> {
        policy().read_header(&mut &bytes[..], BALANCER.parse().unwrap()).await
    }

    #[tokio::test]
    async fn a_version_1_header_names_the_client_and_what_follows_is_kept() {
        let proxied = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 1060\r\nBeautiful is better than?").await.unwrap();
        assert_eq!(proxied.client, Some("192.0.2.7:51000".parse().unwrap()));
        assert_eq!(&proxied.rest[..], b"Beautiful is better than?");
    }

    #[tokio::test]
    async fn a_version_2_header_names_the_client_and_local_keeps_the_peer() {
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            ("[2001:db8::7]:51000".parse::<SocketAddr>().unwrap(), "[2001:db8::1]:1060".parse::<SocketAddr>().unwrap()),
        )
        .build()
        .unwrap();
        let proxied = read(&[&header[..], b"Why?"].concat()).await.unwrap();
        assert_eq!(proxied.client, Some("[2001:db8::7]:51000".parse().unwrap()));
        assert_eq!(&proxied.rest[..], b"Why?");
        let local = v2::Builder::new(
            v2::Version::Two | v2::Command::Local,
            v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(read(&local).await.unwrap().client, None);
        assert_eq!(read(b"PROXY UNKNOWN\r\n").await.unwrap().client, None);
    }

    #[tokio::test]
    async fn a_missing_malformed_cut_or_untrusted_header_is_refused() {
        assert!(matches!(read(b"Beautiful is better than?").await, Err(ProxyError::Malformed(_))));
        assert!(matches!(read(b"PROXY TCP4 nonsense\r\n").await, Err(ProxyError::Malformed(_))));
        assert!(matches!(read(b"PROXY TCP4 192.0.2.7").await, Err(ProxyError::ClosedEarly)));
        let untrusted = policy().read_header(&mut &b"PROXY UNKNOWN\r\n"[..], "192.0.2.9:1".parse().unwrap()).await;
        assert!(matches!(untrusted, Err(ProxyError::Untrusted { .. })));
        let endless = [b'P', b'R', b'O', b'X', b'Y', b' ', b'T', b'C', b'P', b'4', b' '].repeat(100);
        assert!(matches!(read(&endless).await, Err(ProxyError::Malformed(_) | ProxyError::TooLong)));
    }

    #[tokio::test]
    async fn the_parsers_reason_is_logged_on_one_line() {
        // Found by the fuzzer: the parser's message quotes a real "\r\n".
        let error = read(b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 10 2\x03PR?\r\n").await.unwrap_err().to_string();
        assert_eq!(error, "not a PROXY header: Header must end in '\\r\\n'.");
    }

    #[tokio::test]
    async fn a_header_that_never_comes_times_out() {
        let (_writer, mut reader) = tokio::io::duplex(64);
        let result = policy().read_header(&mut reader, BALANCER.parse().unwrap()).await;
        assert!(matches!(result, Err(ProxyError::TimedOut(_))), "{result:?}");
    }
}
