//! Creating tunnels and their tokens.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use warren_protocol::token::TunnelToken;
use warren_store::{Store, StoreError, Tunnel, hash_secret};

/// Bytes of a generated tunnel secret.
pub const SECRET_LEN: usize = 32;

/// Creates a tunnel with a fresh random secret and returns it with the token a
/// connector starts with. The secret itself is not stored (only its hash), so the
/// token is shown once.
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
        .create_tunnel(account_id, name, hash_secret(&secret))
        .await?;
    let token = TunnelToken {
        account_id: account_id.to_owned(),
        tunnel_id: tunnel.id.clone(),
        secret: STANDARD.encode(secret),
        edges,
        ca_sha256,
    };
    Ok((tunnel, token))
}
