//! Creating tunnels and their tokens.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use warren_protocol::token::TunnelToken;
use warren_store::{Store, StoreError, Tunnel, hash_secret};

use crate::sealing::Sealer;

/// Bytes of a generated tunnel secret.
pub const SECRET_LEN: usize = 32;

/// Creates a tunnel with a fresh random secret and returns it with the token a
/// connector starts with. Only the secret's hash is stored, so this token is shown
/// once (the API's [`TunnelAdmin`] also keeps it sealed).
pub async fn create_tunnel(
    store: &dyn Store,
    account_id: &str,
    name: &str,
    edges: Vec<String>,
    ca_sha256: String,
) -> Result<(Tunnel, TunnelToken), StoreError> {
    let mut secret = [0u8; SECRET_LEN];
    rand::rng().fill_bytes(&mut secret);
    let tunnel = store
        .create_tunnel(account_id, name, hash_secret(&secret), None)
        .await?;
    let token = token_for(&tunnel, &secret, edges, ca_sha256);
    Ok((tunnel, token))
}

fn token_for(tunnel: &Tunnel, secret: &[u8], edges: Vec<String>, ca_sha256: String) -> TunnelToken {
    TunnelToken {
        account_id: tunnel.account_id.clone(),
        tunnel_id: tunnel.id.clone(),
        secret: STANDARD.encode(secret),
        edges,
        ca_sha256,
        tcp_port: None,
    }
}

/// Tunnel creation and token retrieval for an edge: knows its addresses, CA
/// fingerprint and sealing key.
pub struct TunnelAdmin {
    /// Edge addresses written into tokens.
    pub edges: Vec<String>,
    /// Fingerprint of the edge CA.
    pub ca_sha256: String,
    /// TCP fallback port written into tokens when it differs from the edge
    /// addresses' port (`None`: the same port number).
    pub tcp_port: Option<u16>,
    /// Seals secrets so tokens can be shown again.
    pub sealer: Sealer,
}

impl TunnelAdmin {
    /// Creates a tunnel with `secret` (or a random one) and returns its token.
    pub async fn create(
        &self,
        store: &dyn Store,
        account_id: &str,
        name: &str,
        secret: Option<Vec<u8>>,
    ) -> Result<(Tunnel, TunnelToken), StoreError> {
        let secret = secret.unwrap_or_else(|| {
            let mut s = vec![0u8; SECRET_LEN];
            rand::rng().fill_bytes(&mut s);
            s
        });
        // Sealed bound to its own hash, so it cannot be moved to another tunnel.
        let hash = hash_secret(&secret);
        let sealed = self.sealer.seal(&hex::encode(hash), &secret);
        let tunnel = store.create_tunnel(account_id, name, hash, sealed).await?;
        let token = TunnelToken {
            tcp_port: self.tcp_port,
            ..token_for(&tunnel, &secret, self.edges.clone(), self.ca_sha256.clone())
        };
        Ok((tunnel, token))
    }

    /// The token of an existing tunnel, when its secret was kept.
    pub fn token(&self, tunnel: &Tunnel) -> Option<TunnelToken> {
        let secret = self.sealer.open(
            &hex::encode(tunnel.secret_hash),
            tunnel.sealed_secret.as_deref()?,
        )?;
        Some(TunnelToken {
            tcp_port: self.tcp_port,
            ..token_for(tunnel, &secret, self.edges.clone(), self.ca_sha256.clone())
        })
    }
}
