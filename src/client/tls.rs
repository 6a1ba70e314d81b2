//! The client's side of TLS, for `zen-client --tls`: whom it trusts ([`Trust`]), the
//! certificate it presents if the server asks for one, and the name it expects the server's
//! certificate to carry. It resumes no session: every connection is a full handshake.
//!
//! A probe that follows the server's own settings trusts exactly the certificate in the
//! server's `tls.cert_file` ([`Trust::Certificate`]): a health check then needs no CA and no
//! name, and still fails against any other server.

use std::{io, path::PathBuf, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::ClientError;
use crate::tls::read_certificates;

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
        Ok(Self { connector: TlsConnector::from(Arc::new(config)), server_name })
    }

    /// Completes the client's side of a handshake on `stream`.
    ///
    /// # Errors
    ///
    /// If the handshake fails (the reason is in the error).
    pub async fn connect(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name.clone(), stream).await
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
            false => Err(rustls::Error::General("not the certificate of the server's tls.cert_file".into())),
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
    use super::*;

    #[test]
    fn the_expected_name_is_the_host_of_the_address() {
        assert_eq!(host_of("localhost:1060"), "localhost");
        assert_eq!(host_of("[::1]:1060"), "::1");
        assert_eq!(host_of("127.0.0.1:1060"), "127.0.0.1");
    }
}
