//! The API model: Cloudflare-shaped request and response types for every
//! resource Warren serves, used by the parts that serve them and by the
//! `warren` CLI alike, so the two ends cannot drift apart.
//!
//! - [`envelope`]: the v4 envelope every answer is wrapped in.
//! - [`field`]: errors that name the offending field (a JSON pointer), and the
//!   strict parse that produces them.
//! - [`accounts`], [`tunnels`], [`services`], [`scripts`], [`tail`]: one
//!   module per resource.
//! - `server` (cargo feature): what an axum handler needs on top of these.
//!
//! Requests are strict (unknown fields are errors) and carry their semantic
//! checks (`validate`), so the CLI can refuse a bad request before sending it
//! and the server refuses it with the same words.

pub mod accounts;
pub mod envelope;
pub mod field;
pub mod scripts;
#[cfg(feature = "server")]
pub mod server;
pub mod services;
pub mod tail;
pub mod tunnels;

pub use envelope::{ApiMessage, Envelope, ErrorSource, ResultInfo};
pub use field::{FieldError, from_name, from_slice_at, from_value_at};
