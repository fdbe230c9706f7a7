//! TLS (rustls) for connections that leave loopback. The scheduler (and
//! each worker, for its peers) makes a key and a self-signed certificate at
//! start, unless given its own; the certificate travels in the scheduler
//! file (for the scheduler) or in the assignment (for a worker's peers), and
//! whoever connects checks that the server presents exactly that
//! certificate: pinning, so no certificate authority or host name is
//! involved.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::ConnectError;

/// A stream a connection runs over: plain TCP, or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key that could not be read or made.
    #[error("{0}")]
    Identity(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its private key.
pub struct TlsIdentity {
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity(..)")
    }
}

impl TlsIdentity {
    /// A fresh key and a self-signed certificate for these names.
    pub fn generate(names: &[String]) -> Result<TlsIdentity, TlsError> {
        let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Identity(e.to_string()))?;
        let params = rcgen::CertificateParams::new(names.to_vec())
            .map_err(|e| TlsError::Identity(e.to_string()))?;
        let certificate = params
            .self_signed(&key)
            .map_err(|e| TlsError::Identity(e.to_string()))?;
        Ok(TlsIdentity {
            certificate: certificate.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|e| TlsError::Identity(e.to_string()))?,
        })
    }

    /// A certificate and key from PEM files (`--tls-cert`, `--tls-key`).
    pub fn from_pem_files(certificate: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        let bad = |what: &Path, e: rustls::pki_types::pem::Error| {
            TlsError::Identity(format!("{}: {e}", what.display()))
        };
        Ok(TlsIdentity {
            certificate: CertificateDer::from_pem_file(certificate)
                .map_err(|e| bad(certificate, e))?,
            key: PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?,
        })
    }

    /// The certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        self.certificate.as_ref()
    }

    /// The certificate, PEM (for the scheduler file).
    pub fn certificate_pem(&self) -> String {
        let der = self.certificate.as_ref();
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        let text = base64_encode(der);
        for line in text.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// What a server accepts TLS connections with.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Identity(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![self.certificate.clone()], self.key.clone_key())
            .map_err(|e| TlsError::Identity(e.to_string()))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// The DER of the first certificate in a PEM text.
pub fn certificate_from_pem(pem: &str) -> Result<Vec<u8>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| TlsError::Identity(format!("not a PEM certificate: {e}")))
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Trusts exactly one certificate.
#[derive(Debug)]
struct Pinned {
    certificate: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.certificate.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The connection over `stream`: TLS checked against `pinned` (DER) when
/// given, else plain.
pub async fn secure(stream: TcpStream, pinned: Option<&[u8]>) -> Result<BoxStream, ConnectError> {
    let Some(certificate) = pinned else {
        return Ok(Box::new(stream));
    };
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            certificate: certificate.to_vec(),
            provider,
        }))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("wrun").expect("a valid name");
    let tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    Ok(Box::new(tls))
}

/// Whether a host name or address is this machine's loopback only.
pub fn is_loopback(host: &str) -> bool {
    use std::net::ToSocketAddrs;
    match (host, 0u16).to_socket_addrs() {
        Ok(addresses) => {
            let addresses: Vec<_> = addresses.collect();
            !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_round_trips_through_pem() {
        let identity = TlsIdentity::generate(&["localhost".into()]).unwrap();
        let pem = identity.certificate_pem();
        assert_eq!(
            certificate_from_pem(&pem).unwrap(),
            identity.certificate_der()
        );
        assert!(identity.acceptor().is_ok());
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"abc"), "YWJj");
        assert!(is_loopback("127.0.0.1") && is_loopback("localhost") && !is_loopback("0.0.0.0"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_trusts_the_pinned_certificate_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let identity = TlsIdentity::generate(&["wrun".into()]).unwrap();
        let other = TlsIdentity::generate(&["wrun".into()]).unwrap();
        let acceptor = identity.acceptor().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (stream, _) = listener.accept().await.unwrap();
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let mut buf = [0u8; 5];
                    tls.read_exact(&mut buf).await.unwrap();
                    tls.write_all(&buf).await.unwrap();
                    tls.flush().await.unwrap();
                }
            }
        });
        let stream = TcpStream::connect(address).await.unwrap();
        let mut tls = secure(stream, Some(identity.certificate_der()))
            .await
            .unwrap();
        tls.write_all(b"hello").await.unwrap();
        tls.flush().await.unwrap();
        let mut echo = [0u8; 5];
        tls.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"hello");
        let stream = TcpStream::connect(address).await.unwrap();
        let refused = secure(stream, Some(other.certificate_der())).await;
        assert!(matches!(refused, Err(ConnectError::Tls(_))));
        server.await.unwrap();
    }
}
