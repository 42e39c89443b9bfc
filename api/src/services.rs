//! VPC services (`/accounts/{account_id}/connectivity/directory/services`):
//! the create/replace request in Cloudflare's shape, its validation into a
//! stored [`VpcService`], and the service as the API shows it.
//!
//! Rules: `type` http|tcp (`tcp_port` only, and required, for tcp); `name`
//! 1–255 characters; `host` is exactly one of `hostname` +
//! `resolver_network { tunnel_id, resolver_ips? }` or `ipv4` and/or `ipv6` +
//! `network { tunnel_id }`; a hostname has no scheme, path, port or
//! whitespace, is not an IP literal and is at most 253 characters; ports are
//! 1–65535 (both http ports absent: 80 and 443; one given: only that scheme);
//! `tls_settings.cert_verification_mode` defaults to `verify_full`. Whether
//! the tunnel is one of the account's is for the server to check.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
pub use warren_store::{CertVerificationMode, ServiceType};
use warren_store::{ServiceHost, VpcService};

use crate::field::FieldError;

/// A TCP port, 1–65535 (0 is refused when parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(u16);

const PORT_RULE: &str = "must be an integer from 1 to 65535";

impl Port {
    /// `port`, unless it is 0.
    pub fn new(port: u16) -> Option<Port> {
        (port != 0).then_some(Port(port))
    }

    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer from 1 to 65535")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                u16::try_from(v)
                    .ok()
                    .and_then(Port::new)
                    .ok_or_else(|| E::custom(PORT_RULE))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(PORT_RULE))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        d.deserialize_u64(PortVisitor)
    }
}

/// `POST` and `PUT` of a service. Every field is optional on the wire so
/// that [`ServiceRequest::validate`] can name a missing one by its pointer
/// (and the CLI can assemble one from flags); the read-only fields of the
/// service (`service_id`, `created_at`, `updated_at`) are accepted and ignored,
/// so a service read from the API can be sent back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRequest {
    /// `http` or `tcp`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<ServiceType>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port for `http://` requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<Port>,
    /// Port for `https://` requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_port: Option<Port>,
    /// Port of a `tcp` service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<Port>,
    /// Where the service is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostRequest>,
    /// Origin certificate verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_settings: Option<TlsSettingsRequest>,
    /// Read-only: ignored.
    #[serde(default, skip_serializing)]
    pub service_id: Option<IgnoredAny>,
    /// Read-only: ignored.
    #[serde(default, skip_serializing)]
    pub created_at: Option<IgnoredAny>,
    /// Read-only: ignored.
    #[serde(default, skip_serializing)]
    pub updated_at: Option<IgnoredAny>,
}

/// `host` of a request: `hostname` + `resolver_network`, or `ipv4` and/or
/// `ipv6` + `network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRequest {
    /// A name resolved inside the private network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The tunnel (and resolvers) for `hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver_network: Option<ResolverNetworkRequest>,
    /// A fixed IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// A fixed IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// The tunnel for `ipv4` / `ipv6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRequest>,
}

/// `host.resolver_network` of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverNetworkRequest {
    /// The tunnel whose network resolves and reaches the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<String>,
    /// Resolvers to ask (default: the connector's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver_ips: Option<Vec<IpAddr>>,
}

/// `host.network` of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// The tunnel whose network reaches the addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<String>,
}

/// `tls_settings` of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettingsRequest {
    /// `verify_full` (default), `verify_ca` or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_verification_mode: Option<CertVerificationMode>,
}

fn required(pointer: &str) -> FieldError {
    FieldError::new(pointer, "is required")
}

impl ServiceRequest {
    /// Checks every rule but the tunnel's ownership.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.to_service("", "", "", "").map(drop)
    }

    /// The stored service this request describes, with identity and times
    /// from the caller; the first broken rule names its field. The tunnel's
    /// ownership is not checked here (see [`tunnel_pointer`]).
    pub fn to_service(
        &self,
        id: &str,
        account_id: &str,
        created_at: &str,
        updated_at: &str,
    ) -> Result<VpcService, FieldError> {
        let service_type = self.service_type.ok_or_else(|| required("/type"))?;
        let name = self.name.as_deref().ok_or_else(|| required("/name"))?;
        if name.trim().is_empty() || name.len() > 255 {
            return Err(FieldError::new("/name", "must be 1 to 255 characters"));
        }
        let (mut http_port, mut https_port) = (
            self.http_port.map(Port::get),
            self.https_port.map(Port::get),
        );
        match service_type {
            ServiceType::Http => {
                if self.tcp_port.is_some() {
                    return Err(FieldError::new("/tcp_port", "only for type \"tcp\""));
                }
                if http_port.is_none() && https_port.is_none() {
                    (http_port, https_port) = (Some(80), Some(443));
                }
            }
            ServiceType::Tcp => {
                if self.tcp_port.is_none() {
                    return Err(FieldError::new("/tcp_port", "is required for type \"tcp\""));
                }
            }
        }
        let host = self
            .host
            .as_ref()
            .ok_or_else(|| required("/host"))?
            .to_host()?;
        let cert_verification_mode = self
            .tls_settings
            .as_ref()
            .and_then(|t| t.cert_verification_mode)
            .unwrap_or_default();
        Ok(VpcService {
            id: id.to_owned(),
            account_id: account_id.to_owned(),
            name: name.to_owned(),
            service_type,
            http_port,
            https_port,
            tcp_port: self.tcp_port.map(Port::get),
            host,
            cert_verification_mode,
            created_at: created_at.to_owned(),
            updated_at: updated_at.to_owned(),
        })
    }
}

impl HostRequest {
    /// The tunnel this host names, if any (either network).
    pub fn tunnel_id(&self) -> Option<&str> {
        self.resolver_network
            .as_ref()
            .and_then(|n| n.tunnel_id.as_deref())
            .or_else(|| self.network.as_ref().and_then(|n| n.tunnel_id.as_deref()))
    }

    fn to_host(&self) -> Result<ServiceHost, FieldError> {
        let addresses = self.ipv4.is_some() || self.ipv6.is_some();
        if let Some(hostname) = &self.hostname {
            if addresses {
                return Err(FieldError::new(
                    "/host",
                    "must be exactly one of hostname, or ipv4 and/or ipv6",
                ));
            }
            if self.network.is_some() {
                return Err(FieldError::new(
                    "/host/network",
                    "goes with ipv4/ipv6; a hostname takes resolver_network",
                ));
            }
            let hostname =
                check_hostname(hostname).map_err(|m| FieldError::new("/host/hostname", m))?;
            let net = self
                .resolver_network
                .as_ref()
                .ok_or_else(|| required("/host/resolver_network"))?;
            let tunnel_id = net
                .tunnel_id
                .clone()
                .ok_or_else(|| required("/host/resolver_network/tunnel_id"))?;
            Ok(ServiceHost::Hostname {
                hostname,
                tunnel_id,
                resolver_ips: net.resolver_ips.clone().unwrap_or_default(),
            })
        } else if addresses {
            if self.resolver_network.is_some() {
                return Err(FieldError::new(
                    "/host/resolver_network",
                    "goes with hostname; ipv4/ipv6 take network",
                ));
            }
            let tunnel_id = self
                .network
                .as_ref()
                .ok_or_else(|| required("/host/network"))?
                .tunnel_id
                .clone()
                .ok_or_else(|| required("/host/network/tunnel_id"))?;
            Ok(ServiceHost::Addresses {
                ipv4: self.ipv4,
                ipv6: self.ipv6,
                tunnel_id,
            })
        } else {
            Err(FieldError::new(
                "/host",
                "needs hostname, or ipv4 and/or ipv6",
            ))
        }
    }
}

/// The pointer of a host's `tunnel_id` (for "no such tunnel in this account").
pub fn tunnel_pointer(host: &ServiceHost) -> &'static str {
    match host {
        ServiceHost::Hostname { .. } => "/host/resolver_network/tunnel_id",
        ServiceHost::Addresses { .. } => "/host/network/tunnel_id",
    }
}

/// Checks a hostname and returns it in canonical form (lowercase, no
/// trailing dot).
pub fn check_hostname(h: &str) -> Result<String, &'static str> {
    if h.contains("://") {
        return Err("must not contain a scheme");
    }
    if h.contains('/') {
        return Err("must not contain a path");
    }
    if h.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace");
    }
    if h.parse::<IpAddr>().is_ok() || h.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        return Err("must be a name, not an IP address (use ipv4/ipv6)");
    }
    if h.contains(':') {
        return Err("must not contain a port (ports are http_port/https_port)");
    }
    let name = h.trim_end_matches('.');
    if name.is_empty() || h.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(label_ok) {
        return Err("is not a valid host name");
    }
    Ok(name.to_ascii_lowercase())
}

/// A service as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Service id (UUID).
    pub service_id: String,
    /// `type` and the ports that go with it.
    #[serde(flatten)]
    pub ports: Ports,
    /// Display name.
    pub name: String,
    /// Where it is.
    pub host: Host,
    /// Origin certificate verification.
    pub tls_settings: TlsSettings,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
}

/// `type` with its ports: `http_port` and `https_port` (`null`: that scheme
/// is refused) for http, `tcp_port` for tcp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Ports {
    /// An HTTP service.
    Http {
        /// Port for `http://` requests.
        http_port: Option<u16>,
        /// Port for `https://` requests.
        https_port: Option<u16>,
    },
    /// A TCP service.
    Tcp {
        /// Its port.
        tcp_port: Option<u16>,
    },
}

impl Ports {
    /// The service type.
    pub fn service_type(&self) -> ServiceType {
        match self {
            Ports::Http { .. } => ServiceType::Http,
            Ports::Tcp { .. } => ServiceType::Tcp,
        }
    }
}

/// `host` of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Host {
    /// A name resolved inside the network.
    Hostname {
        /// The name.
        hostname: String,
        /// Its tunnel and resolvers.
        resolver_network: ResolverNetwork,
    },
    /// Fixed addresses.
    Addresses {
        /// IPv4 address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ipv4: Option<Ipv4Addr>,
        /// IPv6 address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ipv6: Option<Ipv6Addr>,
        /// Their tunnel.
        network: Network,
    },
}

/// `host.resolver_network` of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverNetwork {
    /// The tunnel.
    pub tunnel_id: String,
    /// Resolvers asked (absent: the connector's default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolver_ips: Vec<IpAddr>,
}

/// `host.network` of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The tunnel.
    pub tunnel_id: String,
}

/// `tls_settings` of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSettings {
    /// How the origin's certificate is verified.
    pub cert_verification_mode: CertVerificationMode,
}

impl From<&VpcService> for Service {
    fn from(s: &VpcService) -> Self {
        let host = match &s.host {
            ServiceHost::Hostname {
                hostname,
                tunnel_id,
                resolver_ips,
            } => Host::Hostname {
                hostname: hostname.clone(),
                resolver_network: ResolverNetwork {
                    tunnel_id: tunnel_id.clone(),
                    resolver_ips: resolver_ips.clone(),
                },
            },
            ServiceHost::Addresses {
                ipv4,
                ipv6,
                tunnel_id,
            } => Host::Addresses {
                ipv4: *ipv4,
                ipv6: *ipv6,
                network: Network {
                    tunnel_id: tunnel_id.clone(),
                },
            },
        };
        Service {
            service_id: s.id.clone(),
            ports: match s.service_type {
                ServiceType::Http => Ports::Http {
                    http_port: s.http_port,
                    https_port: s.https_port,
                },
                ServiceType::Tcp => Ports::Tcp {
                    tcp_port: s.tcp_port,
                },
            },
            name: s.name.clone(),
            host,
            tls_settings: TlsSettings {
                cert_verification_mode: s.cert_verification_mode,
            },
            created_at: s.created_at.clone(),
            updated_at: s.updated_at.clone(),
        }
    }
}

/// A service read from the API, as the request that would store it again.
impl From<&Service> for ServiceRequest {
    fn from(s: &Service) -> Self {
        let (http_port, https_port, tcp_port) = match s.ports {
            Ports::Http {
                http_port,
                https_port,
            } => (http_port, https_port, None),
            Ports::Tcp { tcp_port } => (None, None, tcp_port),
        };
        let host = match &s.host {
            Host::Hostname {
                hostname,
                resolver_network,
            } => HostRequest {
                hostname: Some(hostname.clone()),
                resolver_network: Some(ResolverNetworkRequest {
                    tunnel_id: Some(resolver_network.tunnel_id.clone()),
                    resolver_ips: (!resolver_network.resolver_ips.is_empty())
                        .then(|| resolver_network.resolver_ips.clone()),
                }),
                ..HostRequest::default()
            },
            Host::Addresses {
                ipv4,
                ipv6,
                network,
            } => HostRequest {
                ipv4: *ipv4,
                ipv6: *ipv6,
                network: Some(NetworkRequest {
                    tunnel_id: Some(network.tunnel_id.clone()),
                }),
                ..HostRequest::default()
            },
        };
        ServiceRequest {
            service_type: Some(s.ports.service_type()),
            name: Some(s.name.clone()),
            http_port: http_port.and_then(Port::new),
            https_port: https_port.and_then(Port::new),
            tcp_port: tcp_port.and_then(Port::new),
            host: Some(host),
            tls_settings: Some(TlsSettingsRequest {
                cert_verification_mode: Some(s.tls_settings.cert_verification_mode),
            }),
            ..ServiceRequest::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::field::from_value_at;

    fn invalid(body: Value) -> FieldError {
        match from_value_at::<ServiceRequest>(body.clone(), "") {
            Err(e) => e,
            Ok(r) => r.validate().expect_err(&body.to_string()),
        }
    }

    #[test]
    fn every_rule_names_its_field() {
        let named = |h: &str| json!({ "type": "http", "name": "s", "host": { "hostname": h, "resolver_network": { "tunnel_id": "t" } } });
        let mut cases = vec![
            (named("http://a.internal"), "/host/hostname", "scheme"),
            (named("a.internal/items"), "/host/hostname", "path"),
            (named("a.internal:8080"), "/host/hostname", "port"),
            (named("10.0.0.1"), "/host/hostname", "IP address"),
            (named("[fd00::1]"), "/host/hostname", "IP address"),
            (named("in valid"), "/host/hostname", "whitespace"),
            (named(&"a".repeat(254)), "/host/hostname", "253"),
            (named("-a.internal"), "/host/hostname", "valid host name"),
            (
                json!({ "type": "ftp", "name": "s", "host": {} }),
                "/type",
                "http",
            ),
            (json!({ "name": "s" }), "/type", "is required"),
            (json!({ "type": "http", "name": " " }), "/name", "1 to 255"),
            (
                json!({ "type": "http", "name": "s" }),
                "/host",
                "is required",
            ),
            (
                json!({ "type": "http", "name": "s", "host": {} }),
                "/host",
                "needs hostname",
            ),
            (
                json!({ "type": "tcp", "name": "s", "host": { "ipv4": "10.0.0.1", "network": { "tunnel_id": "t" } } }),
                "/tcp_port",
                "is required",
            ),
            (
                json!({ "type": "http", "name": "s", "tcp_port": 22, "host": { "ipv4": "10.0.0.1", "network": { "tunnel_id": "t" } } }),
                "/tcp_port",
                "only for type",
            ),
            (
                json!({ "type": "http", "name": "s", "host": { "hostname": "a.internal", "ipv6": "fd00::1", "resolver_network": { "tunnel_id": "t" } } }),
                "/host",
                "exactly one",
            ),
            (
                json!({ "type": "http", "name": "s", "host": { "hostname": "a.internal" } }),
                "/host/resolver_network",
                "is required",
            ),
            (
                json!({ "type": "http", "name": "s", "host": { "hostname": "a.internal", "resolver_network": {} } }),
                "/host/resolver_network/tunnel_id",
                "is required",
            ),
            (
                json!({ "type": "http", "name": "s", "host": { "hostname": "a.internal", "resolver_network": { "tunnel_id": "t", "resolver_ips": ["x"] } } }),
                "/host/resolver_network/resolver_ips/0",
                "IP address",
            ),
            (
                json!({ "type": "http", "name": "s", "host": { "ipv4": "10.0.0.1", "network": { "tunnel_id": "t", "resolver_ips": [] } } }),
                "/host/network/resolver_ips",
                "unknown field",
            ),
            (
                json!({ "type": "http", "name": "s", "host": { "ipv4": "300.1.1.1", "network": { "tunnel_id": "t" } } }),
                "/host/ipv4",
                "IPv4",
            ),
            (
                json!({ "type": "http", "name": "s", "host": { "ipv4": "10.0.0.1" } }),
                "/host/network",
                "is required",
            ),
            (
                json!({ "type": "http", "bogus": 1 }),
                "/bogus",
                "unknown field",
            ),
        ];
        for (port, key) in [(70000, "http_port"), (0, "https_port"), (-1, "tcp_port")] {
            let mut body = named("ok.internal");
            body[key] = json!(port);
            cases.push((
                body,
                Box::leak(format!("/{key}").into_boxed_str()),
                "1 to 65535",
            ));
        }
        let mut mode = named("ok.internal");
        mode["tls_settings"] = json!({ "cert_verification_mode": "sometimes" });
        cases.push((mode, "/tls_settings/cert_verification_mode", "verify_full"));
        for (body, pointer, words) in cases {
            let e = invalid(body.clone());
            assert_eq!(e.pointer, pointer, "{body} → {e}");
            assert!(
                e.message.contains(words),
                "{body}: {e:?} should mention {words:?}"
            );
        }
    }

    #[test]
    fn defaults_and_the_round_trip_through_the_api_shape() {
        let req: ServiceRequest = from_value_at(
            json!({ "type": "http", "name": "inv", "host": { "hostname": "Inv.Internal.", "resolver_network": { "tunnel_id": "t", "resolver_ips": ["10.0.0.2"] } } }),
            "",
        )
        .unwrap();
        let s = req.to_service("id", "acc", "c", "u").unwrap();
        assert_eq!((s.http_port, s.https_port), (Some(80), Some(443)));
        assert_eq!(s.cert_verification_mode, CertVerificationMode::VerifyFull);
        let view = Service::from(&s);
        let v = serde_json::to_value(&view).unwrap();
        assert_eq!(
            v,
            json!({
                "service_id": "id", "type": "http", "name": "inv",
                "http_port": 80, "https_port": 443,
                "host": { "hostname": "inv.internal", "resolver_network": { "tunnel_id": "t", "resolver_ips": ["10.0.0.2"] } },
                "tls_settings": { "cert_verification_mode": "verify_full" },
                "created_at": "c", "updated_at": "u",
            })
        );
        assert_eq!(serde_json::from_value::<Service>(v.clone()).unwrap(), view);
        // What the API shows can be sent back as is (read-only fields ignored)…
        let again: ServiceRequest = from_value_at(v, "").unwrap();
        assert_eq!(again.to_service("id", "acc", "c", "u").unwrap(), s);
        // …or rebuilt from the typed view.
        let rebuilt = ServiceRequest::from(&view);
        assert_eq!(rebuilt.to_service("id", "acc", "c", "u").unwrap(), s);

        let tcp: ServiceRequest = from_value_at(
            json!({ "type": "tcp", "name": "db", "tcp_port": 5432, "host": { "ipv6": "fd00::5", "network": { "tunnel_id": "t" } } }),
            "",
        )
        .unwrap();
        let tcp = Service::from(&tcp.to_service("i", "a", "c", "u").unwrap());
        let v = serde_json::to_value(&tcp).unwrap();
        assert_eq!(v["tcp_port"], json!(5432));
        assert!(v.get("http_port").is_none());
        assert_eq!(
            v["host"],
            json!({ "ipv6": "fd00::5", "network": { "tunnel_id": "t" } })
        );
        assert_eq!(serde_json::from_value::<Service>(v).unwrap(), tcp);

        // One scheme only: the other port is null, not absent.
        let https = Service {
            ports: Ports::Http {
                http_port: None,
                https_port: Some(8443),
            },
            ..view
        };
        let v = serde_json::to_value(&https).unwrap();
        assert_eq!(
            (v["http_port"].clone(), v.get("http_port").is_some()),
            (Value::Null, true)
        );
    }
}
