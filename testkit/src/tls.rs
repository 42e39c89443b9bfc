//! Certificates for test origins: a private CA and leaves it signs, or
//! self-signed certificates nobody trusts; and TLS clients a test points at a
//! node's internal listeners (one with a certificate from a CA of its own,
//! one with none).

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A private certificate authority.
pub struct TestCa {
    cert: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: &KeyPair,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

impl TestCa {
    /// A fresh CA.
    pub fn new() -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            cert: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (to trust it).
    pub fn cert(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// The CA certificate as PEM (to hand to a client as a file).
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// A leaf for `names` signed by this CA, as PEM files' text: the chain
    /// (leaf, then CA) and the leaf's private key.
    pub fn leaf_pem(&self, names: &[&str]) -> anyhow::Result<(String, String)> {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let key = KeyPair::generate()?;
        let leaf = params.signed_by(&key, &self.issuer)?;
        Ok((format!("{}{}", leaf.pem(), self.pem), key.serialize_pem()))
    }

    /// A server configuration presenting a leaf for `names`, signed by this CA.
    pub fn server_config(&self, names: &[&str]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let key = KeyPair::generate()?;
        let leaf = params.signed_by(&key, &self.issuer)?;
        server_config(vec![leaf.der().clone(), self.cert.clone()], &key)
    }
}

impl TestCa {
    /// A TLS 1.3 client presenting a leaf certificate from this CA (client
    /// authentication) and trusting the servers `roots` vouch for, offering
    /// `alpn`.
    pub fn client_config(
        &self,
        roots: &[CertificateDer<'static>],
        alpn: &[&[u8]],
    ) -> anyhow::Result<rustls::ClientConfig> {
        let mut params = CertificateParams::new(vec!["test-client".to_owned()])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let leaf = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut c = client_builder(roots)?
            .with_client_auth_cert(vec![leaf.der().clone(), self.cert.clone()], key)?;
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(c)
    }
}

fn client_builder(
    roots: &[CertificateDer<'static>],
) -> anyhow::Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store))
}

/// A TLS 1.3 client with no certificate of its own, trusting the servers
/// `roots` vouch for, offering `alpn`.
pub fn anonymous_client(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ClientConfig> {
    let mut c = client_builder(roots)?.with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(c)
}

/// A server configuration with a self-signed certificate for `names`.
pub fn self_signed(names: &[&str]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    server_config(vec![cert.der().clone()], &key)
}
