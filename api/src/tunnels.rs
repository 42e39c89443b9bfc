//! Tunnels (`/accounts/{account_id}/cfd_tunnel`): the create request, the
//! tunnel with its status and live connections, and the token.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use warren_protocol::token::MIN_SECRET_LEN;
use warren_store::ConnectionRecord;

use crate::field::FieldError;

/// `POST /cfd_tunnel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTunnel {
    /// Tunnel name (1–255 characters).
    pub name: String,
    /// Base64 of a secret of at least 32 bytes; the edge makes one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_secret: Option<String>,
    /// Accepted for Cloudflare compatibility (`local` / `cloudflare`); not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_src: Option<String>,
}

impl CreateTunnel {
    /// Checks the name and decodes the secret (`None`: let the edge make one).
    pub fn validate(&self) -> Result<Option<Vec<u8>>, FieldError> {
        if self.name.trim().is_empty() || self.name.len() > 255 {
            return Err(FieldError::new(
                "/name",
                "must be a non-empty string of at most 255 characters",
            ));
        }
        match &self.tunnel_secret {
            None => Ok(None),
            Some(s) => match STANDARD.decode(s) {
                Ok(b) if b.len() >= MIN_SECRET_LEN => Ok(Some(b)),
                _ => Err(FieldError::new(
                    "/tunnel_secret",
                    format!("must be base64 of at least {MIN_SECRET_LEN} bytes"),
                )),
            },
        }
    }
}

/// A tunnel's health, from its live connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelStatus {
    /// No connector has ever connected.
    Inactive,
    /// None connected now.
    Down,
    /// Fewer connections than the connector asked for.
    Degraded,
    /// All the connections the connector asked for.
    Healthy,
}

impl TunnelStatus {
    /// The status of a tunnel with the live connections `live`.
    pub fn of(tunnel: &warren_store::Tunnel, live: &[ConnectionRecord]) -> Self {
        if live.is_empty() {
            return if tunnel.first_connected_at.is_some() {
                TunnelStatus::Down
            } else {
                TunnelStatus::Inactive
            };
        }
        let wanted = live
            .iter()
            .map(|c| usize::from(c.ha_connections))
            .max()
            .unwrap_or(1);
        if live.len() < wanted {
            TunnelStatus::Degraded
        } else {
            TunnelStatus::Healthy
        }
    }

    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelStatus::Inactive => "inactive",
            TunnelStatus::Down => "down",
            TunnelStatus::Degraded => "degraded",
            TunnelStatus::Healthy => "healthy",
        }
    }
}

/// A live connection between a connector and an edge node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// Connection id.
    pub id: String,
    /// The connector process.
    pub client_id: String,
    /// The connector's version.
    pub client_version: String,
    /// The edge node holding it.
    pub colo_name: String,
    /// RFC 3339 time it registered.
    pub opened_at: String,
    /// The connector's address as the edge saw it.
    pub origin_ip: String,
}

impl From<&ConnectionRecord> for Connection {
    fn from(c: &ConnectionRecord) -> Self {
        Connection {
            id: c.id.clone(),
            client_id: c.connector_id.clone(),
            client_version: c.client_version.clone(),
            colo_name: c.edge_name.clone(),
            opened_at: c.opened_at.clone(),
            origin_ip: c.origin_ip.clone(),
        }
    }
}

/// A tunnel as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    /// Tunnel id (UUID).
    pub id: String,
    /// Owning account.
    pub account_tag: String,
    /// Name.
    pub name: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 deletion time (set only in the answer to a delete).
    pub deleted_at: Option<String>,
    /// Health.
    pub status: TunnelStatus,
    /// Live connections.
    pub connections: Vec<Connection>,
}

impl Tunnel {
    /// The API view of a stored tunnel with its live connections.
    pub fn new(t: &warren_store::Tunnel, live: &[ConnectionRecord]) -> Self {
        Tunnel {
            id: t.id.clone(),
            account_tag: t.account_id.clone(),
            name: t.name.clone(),
            created_at: t.created_at.clone(),
            deleted_at: None,
            status: TunnelStatus::of(t, live),
            connections: live.iter().map(Connection::from).collect(),
        }
    }
}

/// The answer to a create: the tunnel and the token a connector runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedTunnel {
    /// The tunnel.
    #[serde(flatten)]
    pub tunnel: Tunnel,
    /// The connector's token (`warren-connector run --token …`).
    pub token: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::field::from_value_at;

    #[test]
    fn create_is_strict_and_validated() {
        let ok: CreateTunnel = from_value_at(json!({ "name": "lab" }), "").unwrap();
        assert_eq!(ok.validate(), Ok(None));
        let e = from_value_at::<CreateTunnel>(json!({ "nme": "lab" }), "").unwrap_err();
        assert_eq!(e.pointer, "/nme");
        let e = from_value_at::<CreateTunnel>(json!({}), "").unwrap_err();
        assert_eq!(e.to_string(), "name: is required");
        let short = CreateTunnel {
            name: "x".into(),
            tunnel_secret: Some(STANDARD.encode([1u8; 8])),
            config_src: None,
        };
        assert_eq!(short.validate().unwrap_err().pointer, "/tunnel_secret");
        let blank = CreateTunnel {
            name: " ".into(),
            ..short
        };
        assert_eq!(blank.validate().unwrap_err().pointer, "/name");
    }

    #[test]
    fn a_created_tunnel_is_the_tunnel_plus_its_token() {
        let t = CreatedTunnel {
            tunnel: Tunnel {
                id: "i".into(),
                account_tag: "a".into(),
                name: "n".into(),
                created_at: "c".into(),
                deleted_at: None,
                status: TunnelStatus::Inactive,
                connections: vec![],
            },
            token: "tok".into(),
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(
            v,
            json!({ "id": "i", "account_tag": "a", "name": "n", "created_at": "c",
                    "deleted_at": null, "status": "inactive", "connections": [], "token": "tok" })
        );
        assert_eq!(serde_json::from_value::<CreatedTunnel>(v).unwrap(), t);
    }
}
