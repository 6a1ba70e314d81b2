//! The client's side of TLS, for `zen-client --tls`: whom it trusts ([`Trust`]), the
//! certificate it presents if the server asks for one, and the name it expects the server's
//! certificate to carry; and what a failure means, said as what to do about it
//! ([`TlsFailure`]). It resumes no session: every connection is a full handshake.
//!
//! A server that does not speak TLS is told apart from one that does by what it sends first: a
//! TLS server replies to the client's hello at once with a TLS record, while a plain zen-server
//! reads the hello as the start of a question, and answers it with an error, closes, or waits
//! for the rest of it ([`HELLO_REPLY_TIMEOUT`]).
//!
//! A probe that follows the server's own settings trusts exactly the certificate in the
//! server's `tls.cert_file` ([`Trust::Certificate`]): a health check then needs no CA and no
//! name, and still fails against any other server.

use std::{
    io,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::ClientError;
use crate::{protocol::ANSWER_END, tls::read_certificates};

/// How long a server has to send anything back after the client's hello before the client
/// concludes it does not speak TLS: a TLS server replies at once (a round trip and a key
/// exchange), while a plain zen-server may wait for the `?` of a question the hello began.
pub const HELLO_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// The most bytes of a plain server's reply quoted in an error.
const QUOTED_BYTES: usize = 64;

/// Which server certificates the client accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Those chaining to the system's CA certificates, for the expected name.
    System,
    /// Those chaining to the CA certificates in this file (PEM), for the expected name.
    Ca(PathBuf),
    /// Exactly the first certificate in this file (PEM), whatever its name: the server's own.
    Certificate(PathBuf),
}

/// How to speak TLS to a server.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Whom to trust.
    pub trust: Trust,
    /// A client certificate (with the rest of its chain) and its key, both PEM.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must carry; by default, the host of its address.
    pub server_name: Option<String>,
}

/// A client ready to make TLS connections to one server.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// The expected name as written, whom the client trusts and the certificate it presents:
    /// what an error names when it says what to change.
    name: String,
    trust: Trust,
    identity: Option<PathBuf>,
}

/// Why a TLS connection to a server failed, as what it means and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TlsFailure {
    /// What the server sent back, or did not, is no TLS.
    #[error("the server at {addr} does not speak TLS here ({evidence}): drop --tls")]
    NotTls {
        /// The address as it was given.
        addr: String,
        /// What it did instead of replying with TLS.
        evidence: String,
    },
    /// The server sent nothing back to the client's hello, which a TLS server answers at once.
    #[error(
        "the server at {addr} sent nothing back to the TLS hello within {HELLO_REPLY_TIMEOUT:?}, where a TLS server replies at once: if it does not speak TLS here, drop --tls"
    )]
    SilentAtHello {
        /// The address as it was given.
        addr: String,
    },
    /// The server closed the connection at the client's hello, without a word.
    #[error("the server at {addr} closed the connection at the TLS hello{what_to_do}")]
    ClosedAtHello {
        /// The address as it was given.
        addr: String,
        /// What may be wrong, and what to do: no TLS there, or a PROXY header expected first.
        what_to_do: &'static str,
    },
    /// The server's certificate does not chain to a CA the client trusts.
    #[error("the certificate of the server at {addr} is not trusted ({why}): pass --ca FILE (the CA that signed it)")]
    Untrusted {
        /// The address as it was given.
        addr: String,
        /// Whom the client trusted.
        why: String,
    },
    /// The server presents a CA certificate (basicConstraints CA:TRUE) as its own.
    #[error(
        "the server at {addr} presents a CA certificate (basicConstraints CA:TRUE) as its own, which TLS clients refuse: it must serve a certificate its CA issued for it (CA:FALSE)"
    )]
    CaAsServer {
        /// The address as it was given.
        addr: String,
    },
    /// The server's certificate is not for the name the client expects.
    #[error("the certificate of the server at {addr} {names}, not {expected}: {what_to_do}")]
    WrongName {
        /// The address as it was given.
        addr: String,
        /// The names the certificate holds, as a phrase.
        names: String,
        /// The name expected.
        expected: String,
        /// Which name to ask for instead.
        what_to_do: String,
    },
    /// The server's certificate is past its end or before its start.
    #[error("the certificate of the server at {addr} {when}: the server must serve a valid one")]
    OutOfDate {
        /// The address as it was given.
        addr: String,
        /// How far out of date, as a phrase.
        when: String,
    },
    /// The server's certificate is not for servers (its extended key usage).
    #[error(
        "the certificate of the server at {addr} is not for a server (its extendedKeyUsage lacks serverAuth): the server must serve one that is"
    )]
    NotForServers {
        /// The address as it was given.
        addr: String,
    },
    /// The server presents another certificate than the one its settings name.
    #[error(
        "the server at {addr} presented a certificate that is not the certificate of the server's tls.cert_file ({path}): another server listens there, or the file changed since the server read it"
    )]
    NotTheConfigured {
        /// The address as it was given.
        addr: String,
        /// The file the certificate was expected from.
        path: String,
    },
    /// The server wants a client certificate and was given none.
    #[error(
        "the server at {addr} asks for a client certificate: pass --cert FILE and --key FILE (a certificate from the CA in its tls.client_ca_file)"
    )]
    CertificateRequired {
        /// The address as it was given.
        addr: String,
    },
    /// The server refused the client's certificate.
    #[error(
        "the server at {addr} refused the client certificate in --cert {path} ({alert:?}): pass one from the CA in its tls.client_ca_file"
    )]
    CertificateRefused {
        /// The address as it was given.
        addr: String,
        /// The client certificate's file.
        path: String,
        /// What the server said.
        alert: AlertDescription,
    },
    /// Another failure, as the TLS library says it.
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// The address as it was given.
        addr: String,
        /// Why.
        source: io::Error,
    },
}

impl TlsClient {
    /// A client as `options` say, for the server at `addr` (`HOST:PORT`).
    ///
    /// # Errors
    ///
    /// [`ClientError::Tls`] naming the file or name that cannot be used.
    pub fn new(options: &TlsOptions, addr: &str) -> Result<Self, ClientError> {
        let invalid = |what: String| ClientError::Tls(what);
        let builder = ClientConfig::builder();
        let builder = match &options.trust {
            Trust::Certificate(path) => {
                let certificate = read_certificates(path)
                    .map_err(|reason| invalid(format!("{}: {reason}", path.display())))?
                    .remove(0);
                let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
                builder.dangerous().with_custom_certificate_verifier(Arc::new(Pinned { certificate, algorithms }))
            }
            Trust::Ca(path) => {
                let mut roots = RootCertStore::empty();
                let certificates =
                    read_certificates(path).map_err(|reason| invalid(format!("--ca {}: {reason}", path.display())))?;
                for certificate in certificates {
                    roots.add(certificate).map_err(|error| invalid(format!("--ca {}: {error}", path.display())))?;
                }
                builder.with_root_certificates(roots)
            }
            Trust::System => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if roots.is_empty() {
                    return Err(invalid("no CA certificate found on this system; give --ca FILE".into()));
                }
                builder.with_root_certificates(roots)
            }
        };
        let mut config = match &options.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let certs = read_certificates(cert)
                    .map_err(|reason| invalid(format!("--cert {}: {reason}", cert.display())))?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|error| invalid(format!("--key {}: no private key (PEM): {error}", key.display())))?;
                builder
                    .with_client_auth_cert(certs, key_der)
                    .map_err(|error| invalid(format!("--key {}: {error}", key.display())))?
            }
        };
        // Every connection makes a full handshake: `ask` and `probe` are one connection each,
        // and `bench --mode churn` is to measure what a new client costs.
        config.resumption = rustls::client::Resumption::disabled();
        let name = match &options.server_name {
            Some(name) => name.clone(),
            None => host_of(addr).to_owned(),
        };
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| invalid(format!("{name:?} is neither a host name nor an IP address (--server-name)")))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            name,
            trust: options.trust.clone(),
            identity: options.identity.as_ref().map(|(cert, _)| cert.clone()),
        })
    }

    /// Completes the client's side of a handshake on `stream`.
    ///
    /// # Errors
    ///
    /// If the handshake fails (the reason is in the error).
    pub async fn connect(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name.clone(), stream).await
    }

    /// Completes the client's side of a handshake on `stream` with the server at `addr` (after
    /// a PROXY header, with `proxy_header`), as [`connect`](Self::connect) does, but giving up
    /// at once on a reply that is no TLS, and after [`HELLO_REPLY_TIMEOUT`] without any.
    ///
    /// # Errors
    ///
    /// [`TlsFailure`] saying what the failure means and what to do.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        addr: &str,
        proxy_header: bool,
    ) -> Result<impl AsyncRead + AsyncWrite + Unpin + Send + use<>, TlsFailure> {
        let mut connect = self.connector.connect(self.server_name.clone(), Watched::new(stream));
        let handshake = match tokio::time::timeout(HELLO_REPLY_TIMEOUT, &mut connect).await {
            Ok(handshake) => handshake,
            Err(_) if connect.get_ref().is_some_and(|io| io.heard == 0) => {
                return Err(TlsFailure::SilentAtHello { addr: addr.to_owned() });
            }
            // Something came: a TLS server, if a slow one.
            Err(_) => connect.await,
        };
        handshake.map_err(|error| {
            self.explain(addr, proxy_header, error)
                .unwrap_or_else(|source| TlsFailure::Handshake { addr: addr.to_owned(), source })
        })
    }

    /// What `error`, met on a TLS connection to the server at `addr` (during its handshake or
    /// after: a server may refuse a client's certificate only then), means.
    ///
    /// # Errors
    ///
    /// `error` itself, when nothing more is known of it.
    pub fn explain(&self, addr: &str, proxy_header: bool, error: io::Error) -> Result<TlsFailure, io::Error> {
        let addr = addr.to_owned();
        let inner = error.get_ref();
        if let Some(not_tls) = inner.and_then(|inner| inner.downcast_ref::<NotTls>()) {
            return Ok(match not_tls {
                NotTls::Answered(said) => {
                    TlsFailure::NotTls { addr, evidence: format!("it answered the TLS hello with \"{said}\"") }
                }
                NotTls::Closed => {
                    let what_to_do = match proxy_header {
                        true => " after the PROXY header: if it does not speak TLS there, drop --tls",
                        false => {
                            ": if it expects a PROXY header first (proxy.listen, tls.proxy_listen), add --proxy-header; if it does not speak TLS, drop --tls"
                        }
                    };
                    TlsFailure::ClosedAtHello { addr, what_to_do }
                }
            });
        }
        let Some(tls_error) = inner.and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
            return Err(error);
        };
        // No trusted signature on the chain: rustls says so in several ways, after the issuer
        // it tried (a system CA may bear the same name as a self-signed certificate).
        let why = match &self.trust {
            Trust::System => "not signed by a CA this system trusts".to_owned(),
            Trust::Ca(path) => format!("not signed by a CA in --ca {}", path.display()),
            Trust::Certificate(path) => format!("not the certificate in {}", path.display()),
        };
        let failure = match tls_error {
            rustls::Error::InvalidCertificate(certificate) => match certificate {
                CertificateError::UnknownIssuer
                | CertificateError::BadSignature
                | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
                | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                    TlsFailure::Untrusted { addr, why }
                }
                #[allow(deprecated)]
                CertificateError::UnsupportedSignatureAlgorithm => TlsFailure::Untrusted { addr, why },
                CertificateError::Other(OtherError(other))
                    if matches!(other.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity)) =>
                {
                    TlsFailure::CaAsServer { addr }
                }
                CertificateError::NotValidForNameContext { presented, .. } => self.wrong_name(addr, presented),
                CertificateError::NotValidForName => self.wrong_name(addr, &[]),
                CertificateError::ExpiredContext { time, not_after } => {
                    let when = format!("expired {} ago", ago(not_after.as_secs(), time.as_secs()));
                    TlsFailure::OutOfDate { addr, when }
                }
                CertificateError::NotValidYetContext { time, not_before } => {
                    let when = format!(
                        "is not valid for another {} (are both clocks right?)",
                        ago(time.as_secs(), not_before.as_secs())
                    );
                    TlsFailure::OutOfDate { addr, when }
                }
                CertificateError::Expired => TlsFailure::OutOfDate { addr, when: "has expired".to_owned() },
                CertificateError::NotValidYet => TlsFailure::OutOfDate { addr, when: "is not valid yet".to_owned() },
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                    TlsFailure::NotForServers { addr }
                }
                CertificateError::ApplicationVerificationFailure => match &self.trust {
                    Trust::Certificate(path) => TlsFailure::NotTheConfigured { addr, path: path.display().to_string() },
                    Trust::System | Trust::Ca(_) => return Err(error),
                },
                _ => return Err(error),
            },
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
                TlsFailure::CertificateRequired { addr }
            }
            rustls::Error::AlertReceived(
                alert @ (AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateUnknown),
            ) => match &self.identity {
                Some(path) => TlsFailure::CertificateRefused { addr, path: path.display().to_string(), alert: *alert },
                None => return Err(error),
            },
            _ => return Err(error),
        };
        Ok(failure)
    }

    /// The failure of a certificate whose names (`presented`, as rustls renders its
    /// subjectAltName entries) do not include the expected one.
    fn wrong_name(&self, addr: String, presented: &[String]) -> TlsFailure {
        let names: Vec<&str> = presented.iter().map(|entry| presented_name(entry)).collect();
        let (names, what_to_do) = match names.as_slice() {
            [] => (
                "is for no name at all (it has no subjectAltName)".to_owned(),
                "the server must serve a certificate with its names".to_owned(),
            ),
            [name] => (format!("is for {name}"), format!("pass --server-name {name}")),
            names => (format!("is for {}", names.join(", ")), "pass --server-name NAME (one of those)".to_owned()),
        };
        TlsFailure::WrongName { addr, names, expected: self.name.clone(), what_to_do }
    }
}

/// The name in one of rustls's renderings of a subjectAltName entry (`DnsName("localhost")`,
/// `IpAddress(127.0.0.1)`); any other entry as it is.
fn presented_name(entry: &str) -> &str {
    let dns = entry.strip_prefix("DnsName(\"").and_then(|rest| rest.strip_suffix("\")"));
    let ip = || entry.strip_prefix("IpAddress(").and_then(|rest| rest.strip_suffix(')'));
    dns.or_else(ip).unwrap_or(entry)
}

/// The time from `earlier` to `later` (seconds since the epoch), in the largest whole unit.
fn ago(earlier: u64, later: u64) -> String {
    let seconds = later.saturating_sub(earlier);
    let (count, unit) = match seconds {
        0..120 => (seconds, "second"),
        120..7200 => (seconds / 60, "minute"),
        7200..172_800 => (seconds / 3600, "hour"),
        _ => (seconds / 86_400, "day"),
    };
    format!("{count} {unit}{}", if count == 1 { "" } else { "s" })
}

/// What a server sent first that no TLS server would.
#[derive(Debug, thiserror::Error)]
enum NotTls {
    /// Bytes that do not begin a TLS record, quoted (escaped, up to the end of the first
    /// answer, at most [`QUOTED_BYTES`]).
    #[error("the server answered the TLS hello with \"{0}\"")]
    Answered(String),
    /// The end of the connection (or a reset), before any byte.
    #[error("the server closed the connection at the TLS hello")]
    Closed,
}

/// The connection under a TLS client, watching what the server sends first: a TLS server's
/// first bytes are a record's header, a content type from 20 to 23 (change_cipher_spec, alert,
/// handshake, application_data) and the version's major number, 3; a plain zen-server's answer
/// (`Error: ...`) begins otherwise. Its verdict is a [`NotTls`] error instead of the bytes.
struct Watched<IO> {
    inner: IO,
    /// Bytes received so far, counted up to the two that tell a TLS record.
    heard: usize,
}

impl<IO> Watched<IO> {
    fn new(inner: IO) -> Self {
        Self { inner, heard: 0 }
    }

    /// Whether `byte`, at `position` from the start of the stream, can begin a TLS record.
    fn fits_a_record(position: usize, byte: u8) -> bool {
        match position {
            0 => (20..=23).contains(&byte),
            _ => byte == 3,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        const TOLD_AFTER: usize = 2;
        if self.heard >= TOLD_AFTER {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let read = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        let closed = || io::Error::new(io::ErrorKind::UnexpectedEof, NotTls::Closed);
        let new = &buf.filled()[before..];
        match read {
            Err(_) if self.heard == 0 => return Poll::Ready(Err(closed())),
            Err(error) => return Poll::Ready(Err(error)),
            Ok(()) if new.is_empty() && self.heard == 0 => return Poll::Ready(Err(closed())),
            Ok(()) => {}
        }
        let heard = self.heard;
        if !new
            .iter()
            .take(TOLD_AFTER - heard)
            .enumerate()
            .all(|(index, &byte)| Self::fits_a_record(heard + index, byte))
        {
            let end = memchr::memchr(ANSWER_END, new).map_or(new.len(), |end| end + 1).min(QUOTED_BYTES);
            let said = new[..end].escape_ascii().to_string();
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, NotTls::Answered(said))));
        }
        self.heard += new.len();
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The host in `HOST:PORT`, without the brackets of an IPv6 address.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[').and_then(|host| host.strip_suffix(']')).unwrap_or(host)
}

/// Accepts one certificate only, whatever name it carries; checks the handshake's signatures
/// as any verifier does.
#[derive(Debug)]
struct Pinned {
    certificate: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match end_entity.as_ref() == self.certificate.as_ref() {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt, duplex},
        net::TcpListener,
    };

    use super::*;

    #[test]
    fn the_expected_name_is_the_host_of_the_address() {
        assert_eq!(host_of("localhost:1060"), "localhost");
        assert_eq!(host_of("[::1]:1060"), "::1");
        assert_eq!(host_of("127.0.0.1:1060"), "127.0.0.1");
    }

    #[test]
    fn names_are_read_from_rustls_renderings_of_subject_alt_names() {
        assert_eq!(presented_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(presented_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(presented_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn spans_of_time_are_said_in_their_largest_whole_unit() {
        assert_eq!(ago(100, 101), "1 second");
        assert_eq!(ago(0, 119), "119 seconds");
        assert_eq!(ago(0, 3600), "60 minutes");
        assert_eq!(ago(0, 7200), "2 hours");
        assert_eq!(ago(0, 10 * 86_400 + 5), "10 days");
        assert_eq!(ago(5, 0), "0 seconds");
    }

    /// Reads through [`Watched`] each of `pieces` as the server sends it; the bytes read, or
    /// the first error and what [`Watched`] made of it.
    async fn watched(pieces: &[&[u8]]) -> Result<Vec<u8>, Option<String>> {
        let (client, mut server) = duplex(1024);
        let mut watched = Watched::new(client);
        let mut read = Vec::new();
        for piece in pieces {
            server.write_all(piece).await.unwrap();
            let mut buffer = [0; 64];
            let count = watched.read(&mut buffer).await.map_err(|error| {
                error.get_ref().and_then(|inner| inner.downcast_ref::<NotTls>()).map(ToString::to_string)
            })?;
            read.extend_from_slice(&buffer[..count]);
        }
        Ok(read)
    }

    #[tokio::test]
    async fn a_tls_record_passes_and_anything_else_first_is_no_tls() {
        assert_eq!(watched(&[b"\x16\x03\x03\x00\x7a"]).await.unwrap(), b"\x16\x03\x03\x00\x7a");
        // An alert, its header split, then anything: only the first two bytes are judged.
        assert_eq!(watched(&[b"\x15", b"\x03\x03", b"E"]).await.unwrap(), b"\x15\x03\x03E");
        let said = "the server answered the TLS hello with \"Error: unknown aphorism.\"";
        let answers = b"Error: unknown aphorism.Error: unknown aphorism.";
        assert_eq!(watched(&[answers]).await.unwrap_err().as_deref(), Some(said));
        let said = "the server answered the TLS hello with \"\\x01\"";
        assert_eq!(watched(&[b"\x16", b"\x01"]).await.unwrap_err().as_deref(), Some(said));
        let (client, server) = duplex(64);
        drop(server);
        let error = Watched::new(client).read(&mut [0; 8]).await.unwrap_err();
        assert!(matches!(error.get_ref().and_then(|inner| inner.downcast_ref()), Some(NotTls::Closed)), "{error}");
    }

    /// What a plain server does with a TLS hello.
    #[derive(Clone, Copy)]
    enum Plain {
        Answers,
        Closes,
        WaitsForMore,
    }

    /// The failure of a TLS client against a server that reads its hello and does as `plain`
    /// says, and how long it took.
    async fn failure_against(plain: Plain) -> (String, String, Duration) {
        let pki = crate::tls::tests::Pki::new();
        let options = TlsOptions { trust: Trust::Ca(pki.ca()), identity: None, server_name: None };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let client = TlsClient::new(&options, &addr).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream.read(&mut [0; 4096]).await;
            match plain {
                Plain::Answers => stream.write_all(b"Error: unknown aphorism.").await.unwrap(),
                Plain::Closes => {}
                Plain::WaitsForMore => while stream.read(&mut [0; 4096]).await.is_ok_and(|read| read > 0) {},
            }
        });
        let started = Instant::now();
        let stream = TcpStream::connect(&addr).await.unwrap();
        let Err(failure) = client.handshake(stream, &addr, false).await else { panic!("a handshake with no TLS") };
        let took = started.elapsed();
        server.abort();
        (addr, failure.to_string(), took)
    }

    #[tokio::test]
    async fn a_plain_server_is_told_by_its_answer_at_once_by_its_close_or_by_its_silence_after_a_second() {
        let (addr, failure, _) = failure_against(Plain::Answers).await;
        let expected = format!(
            "the server at {addr} does not speak TLS here (it answered the TLS hello with \"Error: unknown aphorism.\"): drop --tls"
        );
        assert_eq!(failure, expected);
        let (addr, failure, _) = failure_against(Plain::Closes).await;
        let expected = format!(
            "the server at {addr} closed the connection at the TLS hello: if it expects a PROXY header first (proxy.listen, tls.proxy_listen), add --proxy-header; if it does not speak TLS, drop --tls"
        );
        assert_eq!(failure, expected);
        let (addr, failure, took) = failure_against(Plain::WaitsForMore).await;
        let expected = format!(
            "the server at {addr} sent nothing back to the TLS hello within 1s, where a TLS server replies at once: if it does not speak TLS here, drop --tls"
        );
        assert_eq!(failure, expected);
        assert!(took >= HELLO_REPLY_TIMEOUT, "{took:?}");
    }
}
