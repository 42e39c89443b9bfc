//! The API model: Cloudflare-shaped request and response types for every
//! resource Warren serves, used by the parts that serve them and by the
//! `warren` CLI alike, so the two ends cannot drift apart.

pub mod scripts;
