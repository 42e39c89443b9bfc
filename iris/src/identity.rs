//! A node's identity on the internal hops: at start each node issues itself a
//! certificate from the cluster CA (a fresh key pair, never written to disk),
//! for [`NODE_SERVER_NAME`] and the node's name, valid as a TLS server and as a
//! client. Parts of a cluster then authenticate each other both ways: a server
//! ([`NodeIdentity::server_config`]) accepts only clients whose certificate
//! chains to the cluster CA, a client ([`NodeIdentity::client_config`])
//! presents its certificate and trusts only the cluster CA. TCP hops use these
//! with tokio-rustls; QUIC hops with [`NodeIdentity::quic_server_config`] and
//! [`NodeIdentity::quic_client_config`].
//!
//! Whoever can read the store can read the CA key and so make a node
//! certificate: the store (etcd) must be protected like the CA itself.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;

use crate::ca::{CaError, EdgeCa};

/// The DNS name every node certificate carries and every node client asks
/// for, whatever address it dials (nodes are told apart by their certificate,
/// not by a name in DNS).
pub use warren_protocol::NODE_SERVER_NAME;

/// Why a node identity could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Issuing the certificate failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Building a TLS configuration failed.
    #[error("node identity TLS setup failed: {0}")]
    Tls(String),
}

fn tls_err(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Tls(e.to_string())
}

/// This node's certificate from the cluster CA, as TLS configurations.
pub struct NodeIdentity {
    node_name: String,
    ca: CertificateDer<'static>,
    fingerprint: String,
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_name", &self.node_name)
            .field("ca_sha256", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Whether `name` can be a DNS name in a certificate (letters, digits, `-`
/// and `.`; labels of 1 to 63 characters).
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl NodeIdentity {
    /// Issues this node a certificate from `ca` for [`NODE_SERVER_NAME`] and
    /// `node_name` (added as a second name when it is a valid DNS name), with
    /// a fresh key pair, valid for TLS servers and clients.
    pub fn issue(ca: &EdgeCa, node_name: &str) -> Result<NodeIdentity, IdentityError> {
        let mut names = vec![NODE_SERVER_NAME.to_owned()];
        let lower = node_name.to_ascii_lowercase();
        if is_dns_name(&lower) && lower != NODE_SERVER_NAME {
            names.push(lower);
        }
        let mut params = CertificateParams::new(names).map_err(CaError::from)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Warren node {node_name}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let (chain, key) = ca.issue(params)?;
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).map_err(tls_err)?;
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(tls_err)?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(tls_err)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(tls_err)?;
        Ok(NodeIdentity {
            node_name: node_name.to_owned(),
            ca: ca.cert_der().clone(),
            fingerprint: ca.fingerprint(),
            server,
            client,
        })
    }

    /// The node's name, as given to [`NodeIdentity::issue`].
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The cluster CA's certificate (DER).
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// SHA-256 of the cluster CA certificate, lowercase hex (what tunnel
    /// tokens pin).
    pub fn ca_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The name a client verifies a node server by: [`NODE_SERVER_NAME`].
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from(NODE_SERVER_NAME).expect("NODE_SERVER_NAME is a valid DNS name")
    }

    /// A TLS 1.3 server presenting this node's certificate, offering `alpn`,
    /// that completes a handshake only with a client whose certificate chains
    /// to the cluster CA (a client without one, or with another CA's, is
    /// refused in the handshake).
    pub fn server_config(&self, alpn: &[&[u8]]) -> rustls::ServerConfig {
        let mut c = self.server.clone();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        c
    }

    /// A TLS 1.3 client presenting this node's certificate, offering `alpn`,
    /// that trusts only servers with a certificate from the cluster CA for
    /// [`NODE_SERVER_NAME`] (dial with [`NodeIdentity::server_name`]).
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut c = self.client.clone();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        c
    }

    /// [`NodeIdentity::server_config`] for a quinn endpoint (transport
    /// settings left at quinn's defaults).
    pub fn quic_server_config(&self, alpn: &[&[u8]]) -> Result<quinn::ServerConfig, IdentityError> {
        let tls = QuicServerConfig::try_from(self.server_config(alpn)).map_err(tls_err)?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(tls)))
    }

    /// [`NodeIdentity::client_config`] for a quinn endpoint (connect with the
    /// server name [`NODE_SERVER_NAME`]).
    pub fn quic_client_config(&self, alpn: &[&[u8]]) -> Result<quinn::ClientConfig, IdentityError> {
        let tls = QuicClientConfig::try_from(self.client_config(alpn)).map_err(tls_err)?;
        Ok(quinn::ClientConfig::new(Arc::new(tls)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_become_a_second_dns_name_only_when_valid() {
        assert!(is_dns_name("node-a"));
        assert!(is_dns_name("edge-1.eu.example"));
        assert!(!is_dns_name("node a"));
        assert!(!is_dns_name("-a"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name(""));
        let ca = EdgeCa::generate().expect("ca");
        // An odd name is fine: the certificate just carries the fixed name.
        let id = NodeIdentity::issue(&ca, "node with spaces").expect("identity");
        assert_eq!(id.node_name(), "node with spaces");
        assert_eq!(id.ca_fingerprint(), ca.fingerprint());
        assert!(id.quic_server_config(&[b"x"]).is_ok());
        assert!(id.quic_client_config(&[b"x"]).is_ok());
    }

    /// Runs a handshake between `client` and `server` over a pipe; what each
    /// side saw (the client's result after a round trip of application data,
    /// since TLS 1.3 refuses a client certificate after the client's side is
    /// done).
    async fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> (Result<Vec<u8>, std::io::Error>, Result<(), std::io::Error>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (c, s) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let server = tokio::spawn(async move {
            let mut tls = acceptor.accept(s).await?;
            let mut b = [0u8; 4];
            tls.read_exact(&mut b).await?;
            tls.write_all(&b).await?;
            tls.shutdown().await
        });
        let client = async {
            let mut tls = connector.connect(NodeIdentity::server_name(), c).await?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            tls.write_all(b"ping").await?;
            let mut b = [0u8; 4];
            tls.read_exact(&mut b).await?;
            assert_eq!(&b, b"ping");
            Ok(alpn.unwrap_or_default())
        };
        let client = client.await;
        let server = server.await.expect("server task");
        (client, server)
    }

    /// The TLS alert inside an I/O error, if that is what it is.
    fn alert(e: &std::io::Error) -> Option<rustls::AlertDescription> {
        match e.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::AlertReceived(a) => Some(*a),
            _ => None,
        }
    }

    #[tokio::test]
    async fn nodes_of_one_cluster_accept_each_other_and_nobody_else() {
        let ca = EdgeCa::generate().expect("ca");
        let a = NodeIdentity::issue(&ca, "node-a").expect("a");
        let b = NodeIdentity::issue(&ca, "node-b").expect("b");
        let (client, server) = handshake(
            a.client_config(&[b"h2"]),
            b.server_config(&[b"h2", b"http/1.1"]),
        )
        .await;
        assert_eq!(client.expect("client side"), b"h2".to_vec());
        server.expect("server side");

        // A client with no certificate at all.
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).expect("root");
        let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let (client, server) = handshake(anonymous, b.server_config(&[])).await;
        let e = client.expect_err("no certificate must be refused");
        assert_eq!(
            alert(&e),
            Some(rustls::AlertDescription::CertificateRequired),
            "{e}"
        );
        assert!(server.is_err());

        // A client certificate from another CA (the client trusts this
        // cluster's CA, so only the server's check can refuse it).
        let other = EdgeCa::generate().expect("ca");
        let mut params = CertificateParams::new(vec![NODE_SERVER_NAME.to_owned()]).expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (chain, key) = other.issue(params).expect("foreign certificate");
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).expect("root");
        let foreign = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
        let (client, server) = handshake(foreign, b.server_config(&[])).await;
        let e = client.expect_err("another CA's client must be refused");
        assert_eq!(alert(&e), Some(rustls::AlertDescription::UnknownCA), "{e}");
        assert!(server.is_err());

        // A server of another cluster.
        let stranger = NodeIdentity::issue(&other, "x").expect("x");
        let (client, _) = handshake(a.client_config(&[]), stranger.server_config(&[])).await;
        let e = client.expect_err("another CA's server must be refused");
        assert!(
            matches!(
                e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{e}"
        );
    }
}
