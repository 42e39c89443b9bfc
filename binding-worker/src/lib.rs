//! The binding-worker: serves the binding RPC (runtime → here, Cap'n Proto
//! heads on HTTP/2 streams), checks each binding context against the store,
//! and reaches the VPC service through iris's CONNECT front door, speaking
//! HTTP/1.1 to the origin inside pooled tunnels.
//!
//! - [`check`]: the binding context must name a service of the worker's account.
//! - [`pool`]: CONNECT tunnels pooled per (service, scheme, host).
//! - [`fetch`]: one call — request shaping, redirects, error mapping.
//! - [`rpc`]: the RPC server.
//! - [`trace`]: the W3C `traceparent` sent to the origin.
//! - [`metrics`]: binding calls by outcome.

pub mod check;
pub mod fetch;
pub mod metrics;
pub mod pool;
pub mod rpc;
pub mod trace;

pub use fetch::BindingWorker;
pub use pool::FrontDoorConfig;
pub use rpc::RpcServer;
