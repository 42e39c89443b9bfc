//! The tunnel token: one string that starts a connector (docs/tunnel.md).
//!
//! base64url (no padding) of `{"a": account, "t": tunnel, "s": base64 secret,
//! "e": [edge addresses], "ca": sha256 of the edge CA certificate, hex}`, and
//! `"tp": port` when the edges take the TCP fallback on another port.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// Everything a connector needs to find, trust and authenticate to the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelToken {
    /// Account id.
    #[serde(rename = "a")]
    pub account_id: String,
    /// Tunnel id.
    #[serde(rename = "t")]
    pub tunnel_id: String,
    /// Tunnel secret, standard base64.
    #[serde(rename = "s")]
    pub secret: String,
    /// Edge addresses (`host:port`).
    #[serde(rename = "e")]
    pub edges: Vec<String>,
    /// SHA-256 of the edge CA certificate (DER), lowercase hex.
    #[serde(rename = "ca")]
    pub ca_sha256: String,
    /// TCP port of the edges' fallback listener, when it is not the edge
    /// address's port (absent: the same port number, TCP).
    #[serde(rename = "tp", default, skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
}

/// Why a token string could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not base64url.
    #[error("the token is not base64url text (was it copied whole?)")]
    NotBase64,
    /// Not the token's JSON shape.
    #[error("the token does not hold a Warren tunnel token: {0}")]
    BadJson(String),
    /// The secret inside is not base64 or too short.
    #[error("the token's secret is not base64 of at least 32 bytes")]
    BadSecret,
    /// The CA fingerprint is not 64 hex digits.
    #[error("the token's CA fingerprint is not a hex SHA-256")]
    BadFingerprint,
    /// No edge address.
    #[error("the token names no edge address")]
    NoEdges,
}

/// Smallest tunnel secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

impl TunnelToken {
    /// Encodes the token as the string users copy around.
    pub fn encode(&self) -> String {
        // Serializing a struct of strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// Decodes and validates a token string (surrounding whitespace is ignored).
    pub fn decode(s: &str) -> Result<TunnelToken, TokenError> {
        let raw = URL_SAFE_NO_PAD
            .decode(s.trim().trim_end_matches('='))
            .map_err(|_| TokenError::NotBase64)?;
        let token: TunnelToken =
            serde_json::from_slice(&raw).map_err(|e| TokenError::BadJson(e.to_string()))?;
        token.secret_bytes()?;
        if token.ca_sha256.len() != 64 || !token.ca_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::BadFingerprint);
        }
        if token.edges.is_empty() {
            return Err(TokenError::NoEdges);
        }
        Ok(token)
    }

    /// The secret as raw bytes.
    pub fn secret_bytes(&self) -> Result<Vec<u8>, TokenError> {
        let bytes = STANDARD
            .decode(&self.secret)
            .map_err(|_| TokenError::BadSecret)?;
        if bytes.len() < MIN_SECRET_LEN {
            return Err(TokenError::BadSecret);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TunnelToken {
        TunnelToken {
            account_id: "acc".into(),
            tunnel_id: "tun".into(),
            secret: STANDARD.encode([9u8; 32]),
            edges: vec!["127.0.0.1:7844".into()],
            ca_sha256: "ab".repeat(32),
            tcp_port: None,
        }
    }

    #[test]
    fn round_trips_and_has_no_padding() {
        let s = sample().encode();
        assert!(!s.contains('='));
        assert_eq!(TunnelToken::decode(&format!("  {s}\n")), Ok(sample()));
    }

    #[test]
    fn refuses_bad_tokens_with_the_reason() {
        assert_eq!(TunnelToken::decode("!!!"), Err(TokenError::NotBase64));
        let short = TunnelToken {
            secret: STANDARD.encode([1u8; 8]),
            ..sample()
        };
        assert_eq!(
            TunnelToken::decode(&short.encode()),
            Err(TokenError::BadSecret)
        );
        let fp = TunnelToken {
            ca_sha256: "xyz".into(),
            ..sample()
        };
        assert_eq!(
            TunnelToken::decode(&fp.encode()),
            Err(TokenError::BadFingerprint)
        );
        let no_edges = TunnelToken {
            edges: vec![],
            ..sample()
        };
        assert_eq!(
            TunnelToken::decode(&no_edges.encode()),
            Err(TokenError::NoEdges)
        );
        let extra = URL_SAFE_NO_PAD.encode(br#"{"a":"x","t":"y","s":"z","e":[],"ca":"","zz":1}"#);
        assert!(matches!(
            TunnelToken::decode(&extra),
            Err(TokenError::BadJson(_))
        ));
    }
}
