//! TLS from iris to an origin, per the service's `cert_verification_mode`:
//! `verify_full` (chain and name), `verify_ca` (chain, any name), `disabled`.
//! Trusted roots: the public web roots plus any CAs the edge is configured with.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use warren_protocol::{ErrorCode, ProxyError};
use warren_store::CertVerificationMode;

use crate::tunnels::TunnelStream;

/// One TLS client configuration per verification mode, built once.
#[derive(Clone)]
pub struct OriginTls {
    full: TlsConnector,
    ca: TlsConnector,
    disabled: TlsConnector,
}

/// Accepts a chain the inner verifier accepts, or one it rejects only for its name.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

/// Accepts any certificate (signatures of the handshake are still checked).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

fn name_only(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(e) if name_only(&e) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_error(detail: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorCode::TlsError, detail)
}

impl OriginTls {
    /// Trusts the public web roots plus `extra_roots` (the private network's CAs).
    pub fn new(extra_roots: &[CertificateDer<'static>]) -> Result<Self, ProxyError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for r in extra_roots {
            roots
                .add(r.clone())
                .map_err(|e| tls_error(format!("unusable origin CA: {e}")))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| tls_error(e.to_string()))?;
        let build = |v: Arc<dyn ServerCertVerifier>| -> Result<TlsConnector, ProxyError> {
            let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_error(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(v)
                .with_no_client_auth();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(TlsConnector::from(Arc::new(c)))
        };
        Ok(OriginTls {
            full: build(webpki.clone())?,
            ca: build(Arc::new(AnyName(webpki)))?,
            disabled: build(Arc::new(NoVerification(provider.clone())))?,
        })
    }

    /// Runs the TLS handshake to the origin over `stream`, with SNI `host`.
    pub async fn connect(
        &self,
        mode: CertVerificationMode,
        host: &str,
        stream: TunnelStream,
    ) -> Result<TlsStream<TunnelStream>, ProxyError> {
        let connector = match mode {
            CertVerificationMode::VerifyFull => &self.full,
            CertVerificationMode::VerifyCa => &self.ca,
            CertVerificationMode::Disabled => &self.disabled,
        };
        let name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|_| tls_error(format!("{host:?} is not a valid TLS server name")))?;
        connector
            .connect(name, stream)
            .await
            .map_err(|e| tls_error(format!("TLS to the origin failed: {e}")))
    }
}
