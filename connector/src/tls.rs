//! How the connector trusts the edge: the CA pinned by fingerprint in the token
//! (found in the chain the edge presents), or a CA certificate file. Nothing else.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// Where the edge's trust anchor comes from.
#[derive(Debug, Clone)]
pub enum EdgeTrust {
    /// SHA-256 (raw bytes) of the edge CA certificate, from the token.
    Fingerprint([u8; 32]),
    /// A CA certificate given with `--ca-cert`.
    CaCert(CertificateDer<'static>),
}

/// Verifies the edge chain against a CA pinned by fingerprint.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the edge's certificate is not issued by the CA pinned in the token (wrong edge, or a token for another edge)".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
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

/// The client configurations for dialling the edge with `trust`: QUIC, and
/// the TCP fallback's TLS (same verification, the TCP transport's ALPN).
pub fn client_config(
    trust: &EdgeTrust,
    transport: quinn::TransportConfig,
) -> anyhow::Result<(quinn::ClientConfig, Arc<rustls::ClientConfig>)> {
    // Offers X25519MLKEM768 first (post-quantum), X25519 after it.
    let provider = warren_transport::pq::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = match trust {
        EdgeTrust::Fingerprint(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa {
                fingerprint: *fingerprint,
                provider,
            }))
            .with_no_client_auth(),
        EdgeTrust::CaCert(cert) => {
            let mut roots = RootCertStore::empty();
            roots.add(cert.clone())?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![warren_protocol::TUNNEL_ALPN.to_vec()];
    let tcp = warren_transport::tcp::client_tls(&tls);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport));
    Ok((config, tcp))
}
