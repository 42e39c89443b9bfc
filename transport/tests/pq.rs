//! X25519MLKEM768 on both transports, proven by handshakes whose client
//! offers no other group: they succeed against the tunnel's provider and fail
//! against a classical-only one. Hostile shares are refused, not a panic.

mod common;

use std::sync::Arc;

use common::{SERVER_NAME, pki_with, quic_pair_of, tcp_server};
use rustls::crypto::CryptoProvider;
use warren_transport::pq::{X25519MLKEM768, crypto_provider};
use warren_transport::{TcpConfig, tcp};

/// A provider whose only group is the hybrid one.
fn hybrid_only() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.kx_groups = vec![X25519MLKEM768];
    Arc::new(p)
}

fn classical_only() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[test]
fn the_tunnel_provider_prefers_the_hybrid_group_and_keeps_the_classical_ones() {
    let names: Vec<_> = crypto_provider()
        .kx_groups
        .iter()
        .map(|g| g.name())
        .collect();
    assert_eq!(names[0], rustls::NamedGroup::X25519MLKEM768);
    assert!(names.contains(&rustls::NamedGroup::X25519));
}

#[tokio::test]
async fn quic_agrees_on_x25519mlkem768() {
    let pki = pki_with(crypto_provider(), hybrid_only());
    let (c, s, _ce, _se) = quic_pair_of(&pki).await;
    assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");

    // Control: the same client against a classical-only edge has no common group.
    let pki = pki_with(classical_only(), hybrid_only());
    let (c, _s, _ce, _se) = quic_pair_of(&pki).await;
    let err = c.expect_err("no common group").to_string();
    assert!(err.to_lowercase().contains("handshake"), "{err}");
}

#[tokio::test]
async fn tls_over_tcp_agrees_on_x25519mlkem768() {
    let pki = pki_with(crypto_provider(), hybrid_only());
    let cfg = TcpConfig::default();
    let (addr, mut rx, _stop) = tcp_server(&pki, cfg.clone()).await;
    let client = tcp::connect(addr, tcp::client_tls(&pki.client), SERVER_NAME, &cfg).await;
    assert!(client.is_ok(), "{:?}", client.err());
    assert!(rx.recv().await.is_some());

    let pki = pki_with(classical_only(), hybrid_only());
    let (addr, _rx, _stop) = tcp_server(&pki, cfg.clone()).await;
    let err = tcp::connect(addr, tcp::client_tls(&pki.client), SERVER_NAME, &cfg)
        .await
        .expect_err("no common group")
        .to_string();
    assert!(err.contains("TLS handshake"), "{err}");
}

#[tokio::test]
async fn an_older_classical_client_still_connects_to_the_tunnel_provider() {
    let pki = pki_with(crypto_provider(), classical_only());
    let (c, s, _ce, _se) = quic_pair_of(&pki).await;
    assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
}

#[test]
fn hostile_shares_are_refused() {
    // Server side: wrong lengths, and an encapsulation key that is not one.
    for share in [vec![], vec![7u8; 1216 - 1], vec![7u8; 1216 + 1]] {
        assert!(X25519MLKEM768.start_and_complete(&share).is_err());
    }
    let mut bad_ek = vec![0xffu8; 1216];
    bad_ek[1184..].copy_from_slice(&[9u8; 32]);
    assert!(X25519MLKEM768.start_and_complete(&bad_ek).is_err());
    // Client side: a server share of the wrong length.
    for share in [vec![], vec![1u8; 1120 - 1], vec![1u8; 1120 + 1]] {
        let kx = X25519MLKEM768.start().expect("start");
        assert_eq!(kx.pub_key().len(), 1216);
        assert!(kx.complete(&share).is_err());
    }
}

#[test]
fn both_sides_derive_the_same_64_byte_secret() {
    let client = X25519MLKEM768.start().expect("start");
    let server = X25519MLKEM768
        .start_and_complete(client.pub_key())
        .expect("server");
    assert_eq!(server.pub_key.len(), 1120);
    let server_secret = server.secret.secret_bytes().to_vec();
    let client_secret = client.complete(&server.pub_key).expect("client");
    assert_eq!(client_secret.secret_bytes(), &server_secret[..]);
    assert_eq!(server_secret.len(), 64);
}
