//! Wire formats every Warren part shares.
//!
//! This crate encodes and decodes; it opens no socket and knows nothing of an async
//! runtime (the optional `tokio` feature adds one helper that reads a frame from a
//! stream). iris and the connector wrap it with QUIC.
//!
//! - [`binding`]: the binding RPC's call and reply heads (runtime ↔ binding-worker).
//! - [`error`]: the ProxyError taxonomy with stable string names.
//! - [`frame`]: length-prefixed frames with explicit size limits.
//! - `listen` (with `tokio`): accept-loop backoff, connection caps and idle
//!   timeouts every listener of a node applies.
//! - [`messages`]: the tunnel's messages (control stream, data streams, DNS).
//! - `metrics` (with `metrics`): `process_*` and `build_info` metrics and the
//!   metrics port's binding, shared by the edge and the connector.
//! - [`preamble`]: the magic + version + kind that opens every tunnel stream.
//! - [`token`]: the tunnel token a connector is started with.

pub mod binding;
#[cfg(feature = "body")]
pub mod body;
pub mod error;
pub mod frame;
#[cfg(feature = "tokio")]
pub mod io;
#[cfg(feature = "tokio")]
pub mod listen;
pub mod messages;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "tokio")]
pub mod pipe;
pub mod preamble;
pub mod token;

#[allow(clippy::all, missing_docs, unused_qualifications, dead_code)]
pub(crate) mod tunnel_capnp {
    include!(concat!(env!("OUT_DIR"), "/tunnel_capnp.rs"));
}

#[allow(clippy::all, missing_docs, unused_qualifications, dead_code)]
pub(crate) mod binding_capnp {
    include!(concat!(env!("OUT_DIR"), "/binding_capnp.rs"));
}

pub use error::{ErrorCode, ProxyError};
pub use frame::DecodeError;

/// ALPN protocol id the tunnel's QUIC connections negotiate.
pub const TUNNEL_ALPN: &[u8] = b"warren-tunnel/1";

/// Server name the connector asks for and the edge certificate carries, whatever
/// address the edge is dialled at (the edge is identified by its CA, not by a DNS name).
pub const EDGE_SERVER_NAME: &str = "warren-edge";

/// Server name every node certificate carries and every client on an internal
/// hop (binding-worker → front door, runtime → binding RPC, node → node) asks
/// for, whatever address it dials: nodes are identified by their certificate
/// from the cluster CA, not by a DNS name.
pub const NODE_SERVER_NAME: &str = "warren-node";

/// Default UDP port of the tunnel edge.
pub const DEFAULT_EDGE_PORT: u16 = 7844;

/// Header naming the ProxyError code wherever a failure crosses HTTP: iris's
/// refused CONNECT answers, and the answer a guest gets for a failed binding call.
pub const PROXY_ERROR_HEADER: &str = "warren-proxy-error";
