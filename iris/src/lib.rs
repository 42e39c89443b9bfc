//! Iris, Warren's VPC router.
//!
//! This crate holds the tunnel edge: the QUIC listener connectors dial
//! ([`edge`]), the registry of live connections per tunnel ([`registry`]), the
//! operations the VPC router performs through a tunnel ([`tunnels`]: open a TCP
//! stream, ask a DNS question), name resolution through the tunnel
//! ([`resolve`]) and its cache ([`dns_cache`]). The CONNECT front door and the API arrive with the VPC router
//! issue and sit on top of these.
//!
//! Module order follows a request: [`edge`] accepts connections →
//! [`registry`] tracks them → [`resolve`] asks DNS through one →
//! [`tunnels`] opens the data stream.

pub mod api;
pub mod ca;
pub mod connect;
pub mod dns_cache;
pub mod edge;
pub mod identity;
pub mod metrics;
pub mod origin_tls;
pub mod peer;
pub mod registry;
pub mod reset_key;
pub mod resolve;
pub use warren_store::sealing;
pub mod tunnel_admin;
pub mod tunnels;

pub use ca::EdgeCa;
pub use connect::{FrontDoor, FrontDoorConfig};
pub use edge::{EdgeConfig, TunnelEdge};
pub use identity::NodeIdentity;
pub use tunnels::{TunnelStream, Tunnels};
