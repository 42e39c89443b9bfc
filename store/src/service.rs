//! VPC services: a named private destination behind one tunnel (Cloudflare's shape,
//! "VPC services"). These are the stored, already-validated values; the API layer
//! turns Cloudflare-shaped JSON into them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// What kind of traffic the service carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    /// HTTP (and HTTPS) requests from bindings.
    Http,
    /// Raw TCP (reserved).
    Tcp,
}

/// How iris verifies an origin's certificate for `https://` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertVerificationMode {
    /// Chain to a trusted root and the name in the URL (the default).
    #[default]
    VerifyFull,
    /// Chain to a trusted root, any name.
    VerifyCa,
    /// No verification.
    Disabled,
}

/// Where the service is, inside its tunnel's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceHost {
    /// A name resolved inside the network (by `resolver_ips`, or the connector's default).
    Hostname {
        /// The name.
        hostname: String,
        /// The tunnel whose network resolves and reaches it.
        tunnel_id: String,
        /// Resolvers to ask (empty: the connector's default).
        resolver_ips: Vec<IpAddr>,
    },
    /// Fixed addresses.
    Addresses {
        /// IPv4 address, if any.
        ipv4: Option<Ipv4Addr>,
        /// IPv6 address, if any.
        ipv6: Option<Ipv6Addr>,
        /// The tunnel whose network reaches them.
        tunnel_id: String,
    },
}

impl ServiceHost {
    /// The tunnel this host is reached through.
    pub fn tunnel_id(&self) -> &str {
        match self {
            ServiceHost::Hostname { tunnel_id, .. } | ServiceHost::Addresses { tunnel_id, .. } => {
                tunnel_id
            }
        }
    }
}

/// A VPC service as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcService {
    /// Service id (UUID).
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Display name.
    pub name: String,
    /// Traffic type.
    pub service_type: ServiceType,
    /// Port for `http://` requests; `None` refuses that scheme.
    pub http_port: Option<u16>,
    /// Port for `https://` requests; `None` refuses that scheme.
    pub https_port: Option<u16>,
    /// Port for `tcp` services.
    pub tcp_port: Option<u16>,
    /// Where it is.
    pub host: ServiceHost,
    /// Origin certificate verification for `https://`.
    pub cert_verification_mode: CertVerificationMode,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
}
