//! Certificates, TLS and QUIC configurations, and connected pairs for the tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren_transport::{Conn, TcpConfig, tcp};

/// The name the edge certificate carries and the client verifies.
pub const SERVER_NAME: &str = "warren-edge";
/// The QUIC ALPN (as warren-protocol's).
pub const QUIC_ALPN: &[u8] = b"warren-tunnel/1";

/// A CA and an edge certificate it issued, as the QUIC-side rustls configs.
pub struct Pki {
    pub server: rustls::ServerConfig,
    pub client: rustls::ClientConfig,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A fresh CA and edge certificate; configs with the QUIC ALPN, TLS 1.3 only
/// (as iris and the connector build them).
pub fn pki() -> Pki {
    pki_with(provider(), provider())
}

/// [`pki`] with the server's and the client's crypto providers given.
pub fn pki_with(
    server_provider: Arc<rustls::crypto::CryptoProvider>,
    client_provider: Arc<rustls::crypto::CryptoProvider>,
) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let chain = vec![cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut server = rustls::ServerConfig::builder_with_provider(server_provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    server.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_cert.der().to_vec()))
        .unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(client_provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    Pki { server, client }
}

/// A TCP tunnel listener (as the edge would run it) whose connections come
/// out of the returned channel.
pub async fn tcp_server(
    pki: &Pki,
    cfg: TcpConfig,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Conn>,
    CancellationToken,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    tokio::spawn(tcp::serve(
        listener,
        tcp::server_tls(&pki.server),
        cfg,
        move |c| {
            let _ = tx.send(c);
        },
        shutdown.clone(),
    ));
    (addr, rx, shutdown)
}

/// A connected TCP pair: (connector side, edge side).
pub async fn tcp_pair_with(cfg: TcpConfig) -> (Conn, Conn) {
    let pki = pki();
    let (addr, mut rx, _shutdown) = tcp_server(&pki, cfg.clone()).await;
    let client = tcp::connect(addr, tcp::client_tls(&pki.client), SERVER_NAME, &cfg)
        .await
        .unwrap();
    let server = rx.recv().await.unwrap();
    (client, server)
}

/// A connected TCP pair with the default configuration.
pub async fn tcp_pair() -> (Conn, Conn) {
    tcp_pair_with(TcpConfig::default()).await
}

fn quic_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(500)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(1200)).unwrap(),
        ))
        .max_concurrent_bidi_streams(4096u32.into())
        .max_concurrent_uni_streams(256u32.into())
        .stream_receive_window((8u32 * 1024 * 1024).into())
        .receive_window((32u32 * 1024 * 1024).into())
        .send_window(32 * 1024 * 1024);
    t
}

/// A connected QUIC pair: (connector side, edge side). The endpoints are
/// returned to keep them alive.
pub async fn quic_pair() -> (Conn, Conn, quinn::Endpoint, quinn::Endpoint) {
    let (c, s, ce, se) = quic_pair_of(&pki()).await;
    (
        Conn::Quic(c.expect("client handshake")),
        Conn::Quic(s.expect("server handshake")),
        ce,
        se,
    )
}

/// A QUIC handshake between `pki`'s configs: each side's result, and the endpoints.
pub async fn quic_pair_of(
    pki: &Pki,
) -> (
    Result<quinn::Connection, quinn::ConnectionError>,
    Result<quinn::Connection, quinn::ConnectionError>,
    quinn::Endpoint,
    quinn::Endpoint,
) {
    let transport = Arc::new(quic_transport());
    let server_crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(pki.server.clone()).unwrap();
    let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server_cfg.transport_config(transport.clone());
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let client_crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(pki.client.clone()).unwrap();
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(client_crypto));
    client_cfg.transport_config(transport);
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(client_cfg);
    let addr = server.local_addr().unwrap();
    let (c, s) = tokio::join!(
        async { client.connect(addr, SERVER_NAME).unwrap().await },
        async { server.accept().await.unwrap().await },
    );
    (c, s, client, server)
}
