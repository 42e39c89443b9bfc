//! The tunnel's messages as plain Rust values, with their Cap'n Proto encodings.
//!
//! Callers never touch Cap'n Proto readers: [`WireMessage::from_bytes`] checks sizes,
//! decodes, validates every field and returns an owned value, or a [`DecodeError`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::ErrorCode;
use crate::frame::{self, DecodeError, read_capnp, write_capnp};
use crate::tunnel_capnp as wire;

/// Size limit of a control-stream message body.
pub const MAX_CONTROL_MESSAGE: usize = 16 * 1024;
/// Size limit of a data-stream header message body.
pub const MAX_CONNECT_MESSAGE: usize = 4 * 1024;
/// Size limit of a DNS envelope body (a DNS message is at most 64 KiB).
pub const MAX_DNS_MESSAGE: usize = 65_535 + 512;
/// Longest text field we accept (ids, versions, messages).
pub const MAX_TEXT: usize = 1024;
/// Most feature strings a connector may announce.
pub const MAX_FEATURES: usize = 32;

/// A message that travels on the tunnel.
pub trait WireMessage: Sized {
    /// Largest body accepted for this message.
    const LIMIT: usize;
    /// Encodes the message body (no length prefix).
    fn to_bytes(&self) -> Vec<u8>;
    /// Decodes and validates a message body.
    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError>;
    /// Encodes the message as a length-prefixed frame.
    fn to_frame(&self) -> Vec<u8> {
        frame::frame(&self.to_bytes())
    }
}

pub(crate) fn check_body<T: WireMessage>(body: &[u8]) -> Result<(), DecodeError> {
    if body.len() > T::LIMIT {
        return Err(DecodeError::TooLarge {
            len: body.len(),
            limit: T::LIMIT,
        });
    }
    Ok(())
}

pub(crate) fn text(
    r: capnp::Result<capnp::text::Reader<'_>>,
    field: &'static str,
) -> Result<String, DecodeError> {
    let s = r?.to_str()?;
    if s.len() > MAX_TEXT {
        return Err(DecodeError::InvalidField {
            field,
            reason: "text too long",
        });
    }
    Ok(s.to_owned())
}

fn ip_from_bytes(bytes: &[u8]) -> Result<Option<IpAddr>, DecodeError> {
    match bytes.len() {
        0 => Ok(None),
        4 => {
            let mut a = [0u8; 4];
            a.copy_from_slice(bytes);
            Ok(Some(IpAddr::V4(Ipv4Addr::from(a))))
        }
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            Ok(Some(IpAddr::V6(Ipv6Addr::from(a))))
        }
        _ => Err(DecodeError::InvalidField {
            field: "ip",
            reason: "must be 0, 4 or 16 bytes",
        }),
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn set_addr(mut b: wire::socket_address::Builder<'_>, addr: Option<SocketAddr>) {
    if let Some(addr) = addr {
        b.set_ip(&ip_bytes(addr.ip())[..]);
        b.set_port(addr.port());
    }
}

fn get_addr(r: wire::socket_address::Reader<'_>) -> Result<Option<SocketAddr>, DecodeError> {
    Ok(ip_from_bytes(r.get_ip()?)?.map(|ip| SocketAddr::new(ip, r.get_port())))
}

pub(crate) fn code_to_wire(code: Option<ErrorCode>) -> wire::ErrorCode {
    use wire::ErrorCode as W;
    match code {
        None => W::None,
        Some(ErrorCode::DnsError) => W::DnsError,
        Some(ErrorCode::ConnectionRefused) => W::ConnectionRefused,
        Some(ErrorCode::ConnectionTimeout) => W::ConnectionTimeout,
        Some(ErrorCode::ConnectionTerminated) => W::ConnectionTerminated,
        Some(ErrorCode::ConnectionLimitReached) => W::ConnectionLimitReached,
        Some(ErrorCode::DestinationUnavailable) => W::DestinationUnavailable,
        Some(ErrorCode::DestinationForbidden) => W::DestinationForbidden,
        Some(ErrorCode::TlsError) => W::TlsError,
        Some(ErrorCode::ServiceNotFound) => W::ServiceNotFound,
        Some(ErrorCode::BindingNotFound) => W::BindingNotFound,
    }
}

pub(crate) fn code_from_wire(code: wire::ErrorCode) -> Option<ErrorCode> {
    use wire::ErrorCode as W;
    match code {
        W::None => None,
        W::DnsError => Some(ErrorCode::DnsError),
        W::ConnectionRefused => Some(ErrorCode::ConnectionRefused),
        W::ConnectionTimeout => Some(ErrorCode::ConnectionTimeout),
        W::ConnectionTerminated => Some(ErrorCode::ConnectionTerminated),
        W::ConnectionLimitReached => Some(ErrorCode::ConnectionLimitReached),
        W::DestinationUnavailable => Some(ErrorCode::DestinationUnavailable),
        W::DestinationForbidden => Some(ErrorCode::DestinationForbidden),
        W::TlsError => Some(ErrorCode::TlsError),
        W::ServiceNotFound => Some(ErrorCode::ServiceNotFound),
        W::BindingNotFound => Some(ErrorCode::BindingNotFound),
    }
}

/// Connector → edge, first message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// Account that owns the tunnel.
    pub account_id: String,
    /// Tunnel to register a connection for.
    pub tunnel_id: String,
    /// The tunnel secret (raw bytes).
    pub secret: Vec<u8>,
    /// Index of this connection among the connector's HA connections.
    pub conn_index: u8,
    /// Stable id of the connector process.
    pub connector_id: String,
    /// Connector version string.
    pub version: String,
    /// Optional features the connector supports.
    pub features: Vec<String>,
    /// How many connections the connector intends to keep.
    pub ha_connections: u8,
}

impl WireMessage for RegisterRequest {
    const LIMIT: usize = MAX_CONTROL_MESSAGE;

    fn to_bytes(&self) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        let mut b = msg.init_root::<wire::register_request::Builder<'_>>();
        b.set_account_id(self.account_id.as_str());
        b.set_tunnel_id(self.tunnel_id.as_str());
        b.set_secret(&self.secret[..]);
        b.set_conn_index(self.conn_index);
        b.set_connector_id(self.connector_id.as_str());
        b.set_version(self.version.as_str());
        b.set_ha_connections(self.ha_connections);
        let mut f = b.init_features(self.features.len() as u32);
        for (i, s) in self.features.iter().enumerate() {
            f.set(i as u32, s.as_str());
        }
        write_capnp(&msg)
    }

    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        check_body::<Self>(body)?;
        let msg = read_capnp(body)?;
        let r = msg.get_root::<wire::register_request::Reader<'_>>()?;
        let secret = r.get_secret()?;
        if secret.len() > 1024 {
            return Err(DecodeError::InvalidField {
                field: "secret",
                reason: "too long",
            });
        }
        let features_r = r.get_features()?;
        if features_r.len() as usize > MAX_FEATURES {
            return Err(DecodeError::InvalidField {
                field: "features",
                reason: "too many",
            });
        }
        let mut features = Vec::with_capacity(features_r.len() as usize);
        for f in features_r.iter() {
            features.push(text(f, "features")?);
        }
        Ok(RegisterRequest {
            account_id: text(r.get_account_id(), "accountId")?,
            tunnel_id: text(r.get_tunnel_id(), "tunnelId")?,
            secret: secret.to_vec(),
            conn_index: r.get_conn_index(),
            connector_id: text(r.get_connector_id(), "connectorId")?,
            version: text(r.get_version(), "version")?,
            features,
            ha_connections: r.get_ha_connections(),
        })
    }
}

/// Why the edge refused a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Unknown tunnel or wrong secret (the edge does not say which).
    BadCredentials,
    /// The edge does not speak the connector's protocol version.
    UnsupportedVersion,
    /// The edge is shedding load; retry later.
    Overloaded,
    /// The request could not be decoded.
    Malformed,
}

/// Edge → connector, the answer to [`RegisterRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterResponse {
    /// The connection is registered and may now carry streams.
    Ok {
        /// Id the edge gave this connection.
        connection_id: String,
        /// Name of the edge node.
        edge_name: String,
    },
    /// The registration was refused.
    Refused {
        /// Why.
        reason: RefusalReason,
        /// Plain words for the connector's log.
        message: String,
        /// How long the connector should wait before trying again.
        retry_after_ms: u32,
    },
}

impl WireMessage for RegisterResponse {
    const LIMIT: usize = MAX_CONTROL_MESSAGE;

    fn to_bytes(&self) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        let b = msg.init_root::<wire::register_response::Builder<'_>>();
        match self {
            RegisterResponse::Ok {
                connection_id,
                edge_name,
            } => {
                let mut ok = b.init_ok();
                ok.set_connection_id(connection_id.as_str());
                ok.set_edge_name(edge_name.as_str());
            }
            RegisterResponse::Refused {
                reason,
                message,
                retry_after_ms,
            } => {
                let mut r = b.init_refused();
                r.set_reason(match reason {
                    RefusalReason::BadCredentials => wire::RefusalReason::BadCredentials,
                    RefusalReason::UnsupportedVersion => wire::RefusalReason::UnsupportedVersion,
                    RefusalReason::Overloaded => wire::RefusalReason::Overloaded,
                    RefusalReason::Malformed => wire::RefusalReason::Malformed,
                });
                r.set_message(message.as_str());
                r.set_retry_after_ms(*retry_after_ms);
            }
        }
        write_capnp(&msg)
    }

    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        check_body::<Self>(body)?;
        let msg = read_capnp(body)?;
        let r = msg.get_root::<wire::register_response::Reader<'_>>()?;
        Ok(match r.which()? {
            wire::register_response::Which::Ok(ok) => RegisterResponse::Ok {
                connection_id: text(ok.get_connection_id(), "connectionId")?,
                edge_name: text(ok.get_edge_name(), "edgeName")?,
            },
            wire::register_response::Which::Refused(refused) => RegisterResponse::Refused {
                reason: match refused.get_reason()? {
                    wire::RefusalReason::BadCredentials => RefusalReason::BadCredentials,
                    wire::RefusalReason::UnsupportedVersion => RefusalReason::UnsupportedVersion,
                    wire::RefusalReason::Overloaded => RefusalReason::Overloaded,
                    wire::RefusalReason::Malformed => RefusalReason::Malformed,
                },
                message: text(refused.get_message(), "message")?,
                retry_after_ms: refused.get_retry_after_ms(),
            },
        })
    }
}

/// Messages on the control stream after registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMessage {
    /// Connector → edge: send no new streams on this connection.
    Unregister,
    /// Edge → connector: acknowledged; no new streams will arrive.
    UnregisterAck,
}

impl WireMessage for ControlMessage {
    const LIMIT: usize = MAX_CONTROL_MESSAGE;

    fn to_bytes(&self) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        let mut b = msg.init_root::<wire::control_message::Builder<'_>>();
        match self {
            ControlMessage::Unregister => b.set_unregister(()),
            ControlMessage::UnregisterAck => b.set_unregister_ack(()),
        }
        write_capnp(&msg)
    }

    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        check_body::<Self>(body)?;
        let msg = read_capnp(body)?;
        let r = msg.get_root::<wire::control_message::Reader<'_>>()?;
        Ok(match r.which()? {
            wire::control_message::Which::Unregister(()) => ControlMessage::Unregister,
            wire::control_message::Which::UnregisterAck(()) => ControlMessage::UnregisterAck,
        })
    }
}

/// Edge → connector, the header of a data stream: which TCP destination to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Address the connector should connect to.
    pub destination: SocketAddr,
    /// Id tying this stream to the request that caused it (for logs).
    pub flow_id: String,
    /// Connect timeout in milliseconds (0 = the connector's default).
    pub timeout_ms: u32,
}

impl WireMessage for ConnectRequest {
    const LIMIT: usize = MAX_CONNECT_MESSAGE;

    fn to_bytes(&self) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        let mut b = msg.init_root::<wire::connect_request::Builder<'_>>();
        set_addr(b.reborrow().init_destination(), Some(self.destination));
        b.set_flow_id(self.flow_id.as_str());
        b.set_timeout_ms(self.timeout_ms);
        write_capnp(&msg)
    }

    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        check_body::<Self>(body)?;
        let msg = read_capnp(body)?;
        let r = msg.get_root::<wire::connect_request::Reader<'_>>()?;
        let destination = get_addr(r.get_destination()?)?.ok_or(DecodeError::InvalidField {
            field: "destination",
            reason: "missing",
        })?;
        Ok(ConnectRequest {
            destination,
            flow_id: text(r.get_flow_id(), "flowId")?,
            timeout_ms: r.get_timeout_ms(),
        })
    }
}

/// Connector → edge, the answer to [`ConnectRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectResponse {
    /// `None` when connected (raw bytes follow); otherwise why not.
    pub error: Option<ErrorCode>,
    /// Detail for logs.
    pub message: String,
}

impl WireMessage for ConnectResponse {
    const LIMIT: usize = MAX_CONNECT_MESSAGE;

    fn to_bytes(&self) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        let mut b = msg.init_root::<wire::connect_response::Builder<'_>>();
        b.set_error(code_to_wire(self.error));
        b.set_message(self.message.as_str());
        write_capnp(&msg)
    }

    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        check_body::<Self>(body)?;
        let msg = read_capnp(body)?;
        let r = msg.get_root::<wire::connect_response::Reader<'_>>()?;
        Ok(ConnectResponse {
            error: code_from_wire(r.get_error()?),
            message: text(r.get_message(), "message")?,
        })
    }
}

/// Edge → connector (a datagram): resolve this DNS query inside the private network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// Correlates the answer with the query.
    pub id: u32,
    /// Resolver to ask; `None` means the connector's own default.
    pub resolver: Option<SocketAddr>,
    /// The raw DNS query message.
    pub message: Vec<u8>,
}

impl WireMessage for DnsQuery {
    const LIMIT: usize = MAX_DNS_MESSAGE;

    fn to_bytes(&self) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        let mut b = msg.init_root::<wire::dns_query::Builder<'_>>();
        b.set_id(self.id);
        set_addr(b.reborrow().init_resolver(), self.resolver);
        b.set_message(&self.message[..]);
        write_capnp(&msg)
    }

    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        check_body::<Self>(body)?;
        let msg = read_capnp(body)?;
        let r = msg.get_root::<wire::dns_query::Reader<'_>>()?;
        let resolver = if r.has_resolver() {
            get_addr(r.get_resolver()?)?
        } else {
            None
        };
        Ok(DnsQuery {
            id: r.get_id(),
            resolver,
            message: r.get_message()?.to_vec(),
        })
    }
}

/// Connector → edge: the answer to a [`DnsQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The id of the query this answers.
    pub id: u32,
    /// `Ok(raw DNS response)` or why no response could be had.
    pub result: Result<Vec<u8>, ErrorCode>,
}

impl WireMessage for DnsAnswer {
    const LIMIT: usize = MAX_DNS_MESSAGE;

    fn to_bytes(&self) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        let mut b = msg.init_root::<wire::dns_answer::Builder<'_>>();
        b.set_id(self.id);
        match &self.result {
            Ok(m) => {
                b.set_error(wire::ErrorCode::None);
                b.set_message(&m[..]);
            }
            Err(code) => b.set_error(code_to_wire(Some(*code))),
        }
        write_capnp(&msg)
    }

    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        check_body::<Self>(body)?;
        let msg = read_capnp(body)?;
        let r = msg.get_root::<wire::dns_answer::Reader<'_>>()?;
        let result = match code_from_wire(r.get_error()?) {
            None => Ok(r.get_message()?.to_vec()),
            Some(code) => Err(code),
        };
        Ok(DnsAnswer {
            id: r.get_id(),
            result,
        })
    }
}

/// Node → node: the first message of a stream on the node-to-node link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRequest {
    /// Open a data stream to `request.destination` on one of the receiving
    /// node's own connections of the tunnel; a [`PeerResponse`] (the
    /// connector's answer), then raw bytes both ways.
    Connect {
        /// The tunnel.
        tunnel_id: String,
        /// What the connector is asked to dial.
        request: ConnectRequest,
    },
    /// Resolve through one of the receiving node's own connections of the
    /// tunnel; the [`PeerResponse`] carries the raw DNS response.
    Dns {
        /// The tunnel.
        tunnel_id: String,
        /// Resolver to ask; `None` means the connector's own default.
        resolver: Option<SocketAddr>,
        /// The raw DNS query message.
        message: Vec<u8>,
    },
    /// A worker bundle by SHA-256 (lowercase hex): a [`PeerResponse`], then
    /// its bytes until the end of the stream.
    Bundle(String),
    /// A compiled component by cache key: a [`PeerResponse`], then its bytes
    /// until the end of the stream.
    Compiled(String),
}

impl WireMessage for PeerRequest {
    const LIMIT: usize = MAX_DNS_MESSAGE;

    fn to_bytes(&self) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        let b = msg.init_root::<wire::peer_request::Builder<'_>>();
        match self {
            PeerRequest::Connect { tunnel_id, request } => {
                let mut g = b.init_connect();
                g.set_tunnel_id(tunnel_id.as_str());
                let mut r = g.init_request();
                set_addr(r.reborrow().init_destination(), Some(request.destination));
                r.set_flow_id(request.flow_id.as_str());
                r.set_timeout_ms(request.timeout_ms);
            }
            PeerRequest::Dns {
                tunnel_id,
                resolver,
                message,
            } => {
                let mut g = b.init_dns();
                g.set_tunnel_id(tunnel_id.as_str());
                set_addr(g.reborrow().init_resolver(), *resolver);
                g.set_message(&message[..]);
            }
            PeerRequest::Bundle(sha) => b.init_bundle(sha.len() as u32).push_str(sha),
            PeerRequest::Compiled(key) => b.init_compiled(key.len() as u32).push_str(key),
        }
        write_capnp(&msg)
    }

    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        use wire::peer_request::Which;
        check_body::<Self>(body)?;
        let msg = read_capnp(body)?;
        let r = msg.get_root::<wire::peer_request::Reader<'_>>()?;
        Ok(match r.which()? {
            Which::Connect(g) => {
                let c = g.get_request()?;
                let destination =
                    get_addr(c.get_destination()?)?.ok_or(DecodeError::InvalidField {
                        field: "destination",
                        reason: "missing",
                    })?;
                PeerRequest::Connect {
                    tunnel_id: text(g.get_tunnel_id(), "tunnelId")?,
                    request: ConnectRequest {
                        destination,
                        flow_id: text(c.get_flow_id(), "flowId")?,
                        timeout_ms: c.get_timeout_ms(),
                    },
                }
            }
            Which::Dns(g) => PeerRequest::Dns {
                tunnel_id: text(g.get_tunnel_id(), "tunnelId")?,
                resolver: if g.has_resolver() {
                    get_addr(g.get_resolver()?)?
                } else {
                    None
                },
                message: g.get_message()?.to_vec(),
            },
            Which::Bundle(t) => PeerRequest::Bundle(text(t, "bundle")?),
            Which::Compiled(t) => PeerRequest::Compiled(text(t, "compiled")?),
        })
    }
}

/// Node → node: the answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerResponse {
    /// `None` when done (for content: found, its bytes follow); otherwise why not.
    pub error: Option<ErrorCode>,
    /// Detail for logs and error messages.
    pub message: String,
    /// The raw DNS response of a [`PeerRequest::Dns`] (empty otherwise).
    pub data: Vec<u8>,
}

impl PeerResponse {
    /// A success with no data.
    pub fn ok() -> Self {
        PeerResponse {
            error: None,
            message: String::new(),
            data: Vec::new(),
        }
    }

    /// A failure.
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Self {
        PeerResponse {
            error: Some(code),
            message: message.into(),
            data: Vec::new(),
        }
    }
}

impl WireMessage for PeerResponse {
    const LIMIT: usize = MAX_DNS_MESSAGE + MAX_TEXT;

    fn to_bytes(&self) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        let mut b = msg.init_root::<wire::peer_response::Builder<'_>>();
        b.set_error(code_to_wire(self.error));
        b.set_message(self.message.as_str());
        b.set_data(&self.data[..]);
        write_capnp(&msg)
    }

    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        check_body::<Self>(body)?;
        let msg = read_capnp(body)?;
        let r = msg.get_root::<wire::peer_response::Reader<'_>>()?;
        Ok(PeerResponse {
            error: code_from_wire(r.get_error()?),
            message: text(r.get_message(), "message")?,
            data: r.get_data()?.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(m: T) {
        let bytes = m.to_bytes();
        assert_eq!(T::from_bytes(&bytes).as_ref(), Ok(&m));
        let framed = m.to_frame();
        let (body, used) = frame::split_frame(&framed, T::LIMIT)
            .expect("valid frame")
            .expect("complete frame");
        assert_eq!(used, framed.len());
        assert_eq!(T::from_bytes(body).as_ref(), Ok(&m));
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(RegisterRequest {
            account_id: "acc".into(),
            tunnel_id: "0191dce4-9ab4-7fce-b660-8e5dec5172da".into(),
            secret: vec![7; 32],
            conn_index: 3,
            connector_id: "c1".into(),
            version: "0.1.0".into(),
            features: vec!["dns-datagrams".into()],
            ha_connections: 4,
        });
        round_trip(RegisterResponse::Ok {
            connection_id: "x".into(),
            edge_name: "edge-a".into(),
        });
        round_trip(RegisterResponse::Refused {
            reason: RefusalReason::BadCredentials,
            message: "no".into(),
            retry_after_ms: 30_000,
        });
        round_trip(ControlMessage::Unregister);
        round_trip(PeerRequest::Connect {
            tunnel_id: "t1".into(),
            request: ConnectRequest {
                destination: "10.0.0.5:8080".parse().expect("addr"),
                flow_id: "req-1".into(),
                timeout_ms: 5000,
            },
        });
        round_trip(PeerRequest::Dns {
            tunnel_id: "t1".into(),
            resolver: Some("10.0.0.53:53".parse().expect("addr")),
            message: vec![1, 2, 3],
        });
        round_trip(PeerRequest::Dns {
            tunnel_id: "t1".into(),
            resolver: None,
            message: vec![4],
        });
        round_trip(PeerRequest::Bundle("ab".repeat(32)));
        round_trip(PeerRequest::Compiled("key-1".into()));
        round_trip(PeerResponse::ok());
        round_trip(PeerResponse {
            error: None,
            message: String::new(),
            data: vec![9; 300],
        });
        round_trip(PeerResponse::failed(
            ErrorCode::DestinationUnavailable,
            "no connection",
        ));
        round_trip(ControlMessage::UnregisterAck);
        round_trip(ConnectRequest {
            destination: "[fd00::1]:8080".parse().expect("literal"),
            flow_id: "req-1".into(),
            timeout_ms: 1500,
        });
        round_trip(ConnectResponse {
            error: Some(ErrorCode::DestinationForbidden),
            message: "policy".into(),
        });
        round_trip(ConnectResponse {
            error: None,
            message: String::new(),
        });
        round_trip(DnsQuery {
            id: 9,
            resolver: Some("10.0.0.2:53".parse().expect("literal")),
            message: vec![1, 2, 3],
        });
        round_trip(DnsQuery {
            id: 10,
            resolver: None,
            message: vec![],
        });
        round_trip(DnsAnswer {
            id: 9,
            result: Ok(vec![4, 5]),
        });
        round_trip(DnsAnswer {
            id: 9,
            result: Err(ErrorCode::DnsError),
        });
    }

    #[test]
    fn a_destination_with_a_bad_ip_length_is_refused() {
        let mut msg = capnp::message::Builder::new_default();
        let mut b = msg.init_root::<wire::connect_request::Builder<'_>>();
        let mut d = b.reborrow().init_destination();
        d.set_ip(&[1, 2, 3][..]);
        d.set_port(80);
        let bytes = write_capnp(&msg);
        assert_eq!(
            ConnectRequest::from_bytes(&bytes),
            Err(DecodeError::InvalidField {
                field: "ip",
                reason: "must be 0, 4 or 16 bytes"
            })
        );
    }

    #[test]
    fn a_missing_destination_is_refused() {
        let mut msg = capnp::message::Builder::new_default();
        msg.init_root::<wire::connect_request::Builder<'_>>();
        let bytes = write_capnp(&msg);
        assert!(matches!(
            ConnectRequest::from_bytes(&bytes),
            Err(DecodeError::InvalidField {
                field: "destination",
                ..
            })
        ));
    }

    #[test]
    fn an_oversized_text_is_refused() {
        let m = ConnectResponse {
            error: None,
            message: "x".repeat(MAX_TEXT + 1),
        };
        assert!(matches!(
            ConnectResponse::from_bytes(&m.to_bytes()),
            Err(DecodeError::InvalidField {
                field: "message",
                ..
            })
        ));
    }

    #[test]
    fn an_oversized_body_is_refused() {
        let big = vec![0u8; MAX_CONNECT_MESSAGE + 8];
        assert!(matches!(
            ConnectRequest::from_bytes(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
