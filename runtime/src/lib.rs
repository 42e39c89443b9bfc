//! The worker host: wasmtime running `wasi:http/proxy` components, one fresh
//! instance per request from a pre-instantiated template, with Workers-style
//! limits (CPU time, memory, wall clock, subrequests) and a gated outbound
//! (bindings go to a [`outbound::BindingClient`]; everything else to the global
//! outbound policy, which refuses private addresses).
//!
//! Modules in the order a request meets them: [`serve`] routes by Host (and
//! [`routes`] patterns) →
//! [`worker`] instantiates and calls the guest within its [`limits`] →
//! the guest's outgoing requests pass [`outbound`]. [`engine`] holds the
//! shared wasmtime engine and the compiled-code cache, and [`code_share`]
//! maps equal machine code of different components from one file.

pub mod api;
pub mod binding_rpc;
pub mod code_share;
pub mod deploy;
pub mod egress;
pub mod engine;
pub mod js;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod outbound;
pub mod prepared;
pub mod routes;
pub mod serve;
pub mod snapshot;
pub mod worker;

pub use engine::{EngineConfig, RuntimeEngine};
pub use limits::Limits;
pub use outbound::{BindingClient, BindingContext, OutboundPolicy};
pub use worker::{Worker, WorkerConfig};
