//! TLS on the listeners that speak it (`tls.listen`, and `tls.proxy_listen` after a PROXY
//! header): the server's [`Identity`] (its certificate chain and key, and the CA that client
//! certificates must chain to, if any), loaded and checked from its files; and the
//! [`Acceptor`], which runs each handshake within its timeout and whose identity a reload
//! replaces, for handshakes from then on (established connections go on untouched).
//!
//! TLS 1.3 and 1.2 only, with rustls and its `ring` provider: on this project's machine `ring`
//! built in 29 s where `aws-lc-rs` took 48 s, for a server-side handshake (ECDSA P-256, X25519)
//! of 81 to 86 µs against 74 to 83 µs, a difference within the noise of a connection's cost.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    version::{TLS12, TLS13},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::telemetry::one_line;

/// How long before its certificate expires the daemon starts warning (`check-config`, the log
/// at start and on each reload), as the alert rule shipped beside it does.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The files of a server's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The certificate, then the rest of its chain.
    Certificate,
    /// The certificate's private key.
    Key,
    /// The CA client certificates must chain to.
    ClientCa,
}

/// An identity's files cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TlsError {
    /// Which file.
    pub file: TlsFile,
    /// Its path.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The server's certificate and key, ready for handshakes, and what its certificate says.
#[derive(Debug)]
pub struct Identity {
    config: Arc<ServerConfig>,
    /// The certificate's subject, as `CN=...`.
    pub subject: String,
    /// When the certificate expires, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The same, written as a date.
    pub expires: String,
}

impl Identity {
    /// Loads the chain in `cert` and the key in `key` (PEM), and, with `client_ca`, requires
    /// client certificates that chain to it; checks that the chain is in order (each certificate
    /// issued by the next), that the key is the certificate's, and that the certificate has not
    /// expired.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file and what is wrong.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let fail = |file, path: &Path, reason: String| TlsError { file, path: path.to_owned(), reason };
        let certs = read_certificates(cert).map_err(|reason| fail(TlsFile::Certificate, cert, reason))?;
        let leaf = Certificate::parse(&certs[0]).map_err(|reason| fail(TlsFile::Certificate, cert, reason))?;
        for (index, pair) in certs.windows(2).enumerate() {
            let (issued, issuer) = (Certificate::parse(&pair[0]), Certificate::parse(&pair[1]));
            let (issued, issuer) = match (issued, issuer) {
                (Ok(issued), Ok(issuer)) => (issued, issuer),
                (Err(reason), _) | (_, Err(reason)) => return Err(fail(TlsFile::Certificate, cert, reason)),
            };
            if issued.issuer != issuer.subject {
                let reason = format!(
                    "the chain is out of order: certificate {} ({}) did not issue certificate {} ({}, issued by {})",
                    index + 2,
                    issuer.subject,
                    index + 1,
                    issued.subject,
                    issued.issuer
                );
                return Err(fail(TlsFile::Certificate, cert, reason));
            }
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs() as i64);
        if leaf.not_after < now {
            return Err(fail(TlsFile::Certificate, cert, format!("the certificate expired on {}", leaf.expires)));
        }
        if leaf.not_before > now {
            return Err(fail(
                TlsFile::Certificate,
                cert,
                format!("the certificate is not valid before {}", leaf.valid_from),
            ));
        }
        let private_key = read_pem_file(key)
            .and_then(|pem| PrivateKeyDer::from_pem_slice(&pem).map_err(|_| "holds no private key (PEM)".to_owned()))
            .map_err(|reason| fail(TlsFile::Key, key, reason))?;
        let verifier = client_ca
            .map(|ca| client_verifier(ca).map_err(|reason| fail(TlsFile::ClientCa, ca, reason)))
            .transpose()?;
        let builder = ServerConfig::builder_with_protocol_versions(&[&TLS13, &TLS12]);
        let builder = match verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(certs, private_key).map_err(|error| {
            let reason = match error {
                rustls::Error::InconsistentKeys(_) => "is not the key of the certificate".to_owned(),
                error => error.to_string(),
            };
            fail(TlsFile::Key, key, reason)
        })?;
        Ok(Self { config: Arc::new(config), subject: leaf.subject, not_after: leaf.not_after, expires: leaf.expires })
    }

    /// Whether the certificate expires within `time` from now.
    pub fn expires_within(&self, time: Duration) -> bool {
        let soon = SystemTime::now() + time;
        soon.duration_since(UNIX_EPOCH).map_or(true, |soon| soon.as_secs() as i64 > self.not_after)
    }

    /// Warns in the log if the certificate expires within [`EXPIRY_WARNING`].
    pub fn warn_if_expiring(&self) {
        if self.expires_within(EXPIRY_WARNING) {
            tracing::warn!(subject = %self.subject, expires = %self.expires, "the TLS certificate expires within 14 days");
        }
    }
}

/// The largest file read as certificates or a key: far more than any chain.
const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// The contents of a PEM file: a regular file (a FIFO would block, a device never end) of at
/// most [`MAX_PEM_FILE_BYTES`].
fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    let metadata = std::fs::metadata(path).map_err(|error| format!("cannot read it: {error}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".into());
    }
    if metadata.len() > MAX_PEM_FILE_BYTES {
        return Err(format!("is larger than {MAX_PEM_FILE_BYTES} bytes: no certificate chain or key is"));
    }
    std::fs::read(path).map_err(|error| format!("cannot read it: {error}"))
}

/// The certificates in `path`, in order; at least one.
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem_file(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|error| format!("is not PEM: {error:?}"))?;
    if certs.is_empty() {
        return Err("holds no certificate (PEM)".into());
    }
    Ok(certs)
}

/// A verifier of client certificates chaining to the CAs in `path`.
fn client_verifier(path: &Path) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert).map_err(|error| format!("not a CA certificate: {error}"))?;
    }
    WebPkiClientVerifier::builder(Arc::new(roots)).build().map_err(|error| error.to_string())
}

/// What one certificate says of itself.
struct Certificate {
    subject: String,
    issuer: String,
    not_before: i64,
    valid_from: String,
    not_after: i64,
    expires: String,
}

impl Certificate {
    fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|error| format!("a certificate does not parse: {error}"))?;
        let validity = cert.validity();
        Ok(Self {
            // Escaped: a name may hold any character, and a log line or message quoting it
            // must stay one line.
            subject: one_line(&cert.subject().to_string()),
            issuer: one_line(&cert.issuer().to_string()),
            not_before: validity.not_before.timestamp(),
            valid_from: validity.not_before.to_string(),
            not_after: validity.not_after.timestamp(),
            expires: validity.not_after.to_string(),
        })
    }
}

/// How handshakes end, as metrics name them: `ok`, then each kind of [`HandshakeError`].
pub const HANDSHAKE_RESULTS: [&str; 5] = ["ok", "timeout", "bad_client_hello", "client_certificate_refused", "error"];

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client took longer than the handshake timeout.
    #[error("no handshake within {0:?}")]
    TimedOut(Duration),
    /// The client sent what is no TLS client hello (or an unacceptable one).
    #[error("bad client hello: {0}")]
    BadClientHello(rustls::Error),
    /// The client's certificate was missing or did not chain to `tls.client_ca_file`.
    #[error("client certificate refused: {0}")]
    ClientCertificateRefused(rustls::Error),
    /// The connection failed or closed during the handshake.
    #[error("{0}")]
    Io(io::Error),
}

impl HandshakeError {
    /// Its place in [`HANDSHAKE_RESULTS`].
    pub fn index(&self) -> usize {
        match self {
            Self::TimedOut(_) => 1,
            Self::BadClientHello(_) => 2,
            Self::ClientCertificateRefused(_) => 3,
            Self::Io(_) => 4,
        }
    }

    /// Its name in metrics.
    pub fn name(&self) -> &'static str {
        HANDSHAKE_RESULTS[self.index()]
    }

    fn from_io(error: io::Error) -> Self {
        let rustls = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).cloned();
        match rustls {
            Some(
                error @ (rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertificate(_)
                | rustls::Error::InvalidCertRevocationList(_)),
            ) => Self::ClientCertificateRefused(error),
            Some(error @ (rustls::Error::InvalidMessage(_) | rustls::Error::PeerIncompatible(_))) => {
                Self::BadClientHello(error)
            }
            Some(error @ rustls::Error::InappropriateHandshakeMessage { .. }) => Self::BadClientHello(error),
            _ => Self::Io(error),
        }
    }
}

/// Runs handshakes with the current identity; shared by every worker, replaced on a reload.
#[derive(Clone)]
pub struct Acceptor {
    current: Arc<ArcSwap<Current>>,
}

struct Current {
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

impl Acceptor {
    /// Handshakes with `identity`, each within `handshake_timeout`.
    pub fn new(identity: &Identity, handshake_timeout: Duration) -> Self {
        let current = Current { config: identity.config.clone(), handshake_timeout };
        Self { current: Arc::new(ArcSwap::from_pointee(current)) }
    }

    /// Handshakes from now on use `identity` and `handshake_timeout`.
    pub fn replace(&self, identity: &Identity, handshake_timeout: Duration) {
        self.current.store(Arc::new(Current { config: identity.config.clone(), handshake_timeout }));
    }

    /// Completes the server's side of a handshake on `io`, within the handshake timeout or
    /// `at_most`, whichever is shorter. No handshake state is made until the client has sent
    /// something: a client that connects and says nothing costs what a plain idle connection
    /// does.
    ///
    /// # Errors
    ///
    /// [`HandshakeError`] saying why it did not complete.
    pub async fn accept<IO>(&self, io: IO, at_most: Duration) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Readable + Unpin,
    {
        let current = self.current.load_full();
        let timeout = current.handshake_timeout.min(at_most);
        let handshake = async {
            io.readable().await.map_err(HandshakeError::Io)?;
            tokio_rustls::TlsAcceptor::from(current.config.clone()).accept(io).await.map_err(HandshakeError::from_io)
        };
        tokio::time::timeout(timeout, handshake).await.unwrap_or(Err(HandshakeError::TimedOut(timeout)))
    }
}

/// A connection that says when its client has sent something.
pub trait Readable {
    /// Resolves once there is something to read (or the connection has ended).
    fn readable(&self) -> impl Future<Output = io::Result<()>>;
}

impl Readable for tokio::net::TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> {
        tokio::net::TcpStream::readable(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{
        BasicConstraints, Certificate as Made, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        date_time_ymd,
    };
    use rustls::{ClientConfig, pki_types::ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio_rustls::TlsConnector;

    use super::*;

    /// In memory, the handshake starts at once.
    impl Readable for DuplexStream {
        async fn readable(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A directory of certificates made for one test: a CA, and what it signs.
    pub struct Pki {
        pub dir: PathBuf,
        ca: Made,
        ca_key: KeyPair,
        ca_pem: String,
    }

    impl Pki {
        pub fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!("zen-tls-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let dir = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, "Zen Test CA");
            let key = KeyPair::generate().unwrap();
            let ca = params.self_signed(&key).unwrap();
            let ca_pem = ca.pem();
            std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
            Self { dir, ca, ca_key: key, ca_pem }
        }

        /// Writes `name.pem` (the certificate for `localhost`, then the CA's unless `alone`) and
        /// `name.key`, valid until `not_after` (a year), as a client's with `client`.
        pub fn issue(&self, name: &str, not_after: i32, client: bool) -> (PathBuf, PathBuf) {
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.not_after = date_time_ymd(not_after, 1, 1);
            if client {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
            let (cert_path, key_path) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
            std::fs::write(&cert_path, cert.pem() + &self.ca_pem).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            (cert_path, key_path)
        }

        pub fn ca(&self) -> PathBuf {
            self.dir.join("ca.pem")
        }

        /// A client trusting the CA, with the certificate `name` if given.
        pub fn client(&self, name: Option<&str>) -> TlsConnector {
            let mut roots = RootCertStore::empty();
            roots.add(read_certificates(&self.ca()).unwrap().remove(0)).unwrap();
            let builder = ClientConfig::builder().with_root_certificates(roots);
            let config = match name {
                None => builder.with_no_client_auth(),
                Some(name) => {
                    let certs = read_certificates(&self.dir.join(format!("{name}.pem"))).unwrap();
                    let key = PrivateKeyDer::from_pem_file(self.dir.join(format!("{name}.key"))).unwrap();
                    builder.with_client_auth_cert(certs, key).unwrap()
                }
            };
            TlsConnector::from(Arc::new(config))
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn load_error(cert: &Path, key: &Path) -> (TlsFile, String) {
        let error = Identity::load(cert, key, None).unwrap_err();
        (error.file, error.reason)
    }

    #[test]
    fn a_name_with_a_line_break_is_quoted_on_one_line() {
        let pki = Pki::new();
        let (cert, key) = pki.issue("zen\nINFO forged log line", 2100, false);
        let identity = Identity::load(&cert, &key, None).unwrap();
        assert!(!identity.subject.contains('\n') && identity.subject.contains("zen\\nINFO"), "{}", identity.subject);
    }

    #[test]
    fn a_good_pair_loads_and_says_what_it_is() {
        let pki = Pki::new();
        let (cert, key) = pki.issue("server", 2100, false);
        let identity = Identity::load(&cert, &key, Some(&pki.ca())).unwrap();
        assert_eq!(identity.subject, "CN=server");
        assert!(identity.expires.contains("2100"), "{}", identity.expires);
        assert!(!identity.expires_within(EXPIRY_WARNING));
    }

    #[test]
    fn every_unusable_file_is_named_with_its_reason() {
        let pki = Pki::new();
        let (cert, key) = pki.issue("server", 2100, false);
        let (_, other_key) = pki.issue("other", 2100, false);
        let (expired, expired_key) = pki.issue("expired", 2020, false);
        let missing = pki.dir.join("missing.pem");
        let (file, reason) = load_error(&missing, &key);
        assert_eq!(file, TlsFile::Certificate);
        assert!(reason.starts_with("cannot read it: No such file"), "{reason}");
        assert_eq!(load_error(&key, &key), (TlsFile::Certificate, "holds no certificate (PEM)".into()));
        assert_eq!(load_error(&cert, &cert), (TlsFile::Key, "holds no private key (PEM)".into()));
        assert_eq!(load_error(&cert, &other_key), (TlsFile::Key, "is not the key of the certificate".into()));
        let (file, reason) = load_error(&expired, &expired_key);
        assert_eq!(file, TlsFile::Certificate);
        assert!(reason.starts_with("the certificate expired on Jan  1 00:00:00 2020"), "{reason}");
        // The CA first, then the server's certificate: out of order.
        let pem = std::fs::read_to_string(&cert).unwrap();
        let split = pem.find("-----BEGIN CERTIFICATE-----").map(|_| pem.rfind("-----BEGIN CERTIFICATE-----").unwrap());
        let (leaf, ca) = pem.split_at(split.unwrap());
        let reversed = pki.dir.join("reversed.pem");
        std::fs::write(&reversed, format!("{ca}{leaf}")).unwrap();
        let (file, reason) = load_error(&reversed, &key);
        assert_eq!(file, TlsFile::Certificate);
        assert!(
            reason.starts_with(
                "the chain is out of order: certificate 2 (CN=server) did not issue certificate 1 (CN=Zen Test CA"
            ),
            "{reason}"
        );
        assert_eq!(load_error(&pki.dir, &key), (TlsFile::Certificate, "is not a regular file".into()));
        let error = Identity::load(&cert, &key, Some(&key)).unwrap_err();
        assert_eq!((error.file, error.reason.as_str()), (TlsFile::ClientCa, "holds no certificate (PEM)"));
    }

    /// An acceptor with `pki`'s server certificate, asking for client certificates if `clients`.
    fn acceptor(pki: &Pki, clients: bool, timeout: Duration) -> Acceptor {
        let (cert, key) = pki.issue("server", 2100, false);
        let ca = pki.ca();
        Acceptor::new(&Identity::load(&cert, &key, clients.then_some(ca.as_path())).unwrap(), timeout)
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_talks_through_the_handshake() {
        let pki = Pki::new();
        let acceptor = acceptor(&pki, false, Duration::from_secs(5));
        let (client, server) = duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut stream = acceptor.accept(server, Duration::MAX).await.unwrap();
            let mut question = [0; 2];
            stream.read_exact(&mut question).await.unwrap();
            stream.write_all(b"B.").await.unwrap();
            stream.flush().await.unwrap();
            question
        });
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = pki.client(None).connect(name, client).await.unwrap();
        client.write_all(b"A?").await.unwrap();
        let mut answer = [0; 2];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!((&server.await.unwrap(), &answer), (b"A?", b"B."));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_given_up_on_after_the_handshake_timeout() {
        let pki = Pki::new();
        let acceptor = acceptor(&pki, false, Duration::from_secs(7));
        let (_client, server) = duplex(1024);
        let started = tokio::time::Instant::now();
        let error = acceptor.accept(server, Duration::MAX).await.unwrap_err();
        assert_eq!((error.name(), started.elapsed()), ("timeout", Duration::from_secs(7)));
    }

    #[tokio::test]
    async fn garbage_instead_of_a_client_hello_is_named_so() {
        let pki = Pki::new();
        let acceptor = acceptor(&pki, false, Duration::from_secs(5));
        let (mut client, server) = duplex(1024);
        client.write_all(b"Beautiful is better than?").await.unwrap();
        let error = acceptor.accept(server, Duration::MAX).await.unwrap_err();
        assert_eq!(error.name(), "bad_client_hello", "{error}");
    }

    #[tokio::test]
    async fn with_a_client_ca_only_clients_with_a_certificate_from_it_get_in() {
        let pki = Pki::new();
        pki.issue("client", 2100, true);
        let acceptor = acceptor(&pki, true, Duration::from_secs(5));
        let name = ServerName::try_from("localhost").unwrap();
        for (certificate, accepted) in [(Some("client"), true), (None, false)] {
            let (client, server) = duplex(64 * 1024);
            let handshake = tokio::spawn({
                let acceptor = acceptor.clone();
                async move { acceptor.accept(server, Duration::MAX).await.map(drop) }
            });
            let mut client = pki.client(certificate).connect(name.clone(), client).await.unwrap();
            // TLS 1.3: the client learns of a refusal when it next reads.
            let _ = client.write_all(b"A?").await;
            let _ = client.read(&mut [0; 8]).await;
            match handshake.await.unwrap() {
                Ok(()) => assert!(accepted, "a client without a certificate got in"),
                Err(error) => {
                    assert!(!accepted, "{error}");
                    assert_eq!(error.name(), "client_certificate_refused", "{error}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_replaced_identity_is_served_from_the_next_handshake_on() {
        let pki = Pki::new();
        let acceptor = acceptor(&pki, false, Duration::from_secs(5));
        let served = |acceptor: Acceptor| {
            let connector = pki.client(None);
            async move {
                let (client, server) = duplex(64 * 1024);
                let handshake = tokio::spawn(async move { acceptor.accept(server, Duration::MAX).await.map(drop) });
                let client = connector.connect(ServerName::try_from("localhost").unwrap(), client).await.unwrap();
                handshake.await.unwrap().unwrap();
                let leaf = client.get_ref().1.peer_certificates().unwrap()[0].clone();
                Certificate::parse(&leaf).unwrap().subject
            }
        };
        assert_eq!(served(acceptor.clone()).await, "CN=server");
        let (cert, key) = pki.issue("renewed", 2101, false);
        acceptor.replace(&Identity::load(&cert, &key, None).unwrap(), Duration::from_secs(3));
        assert_eq!(served(acceptor.clone()).await, "CN=renewed");
        assert_eq!(acceptor.current.load().handshake_timeout, Duration::from_secs(3));
    }
}
