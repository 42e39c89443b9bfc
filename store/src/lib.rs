//! Configuration and registry storage behind one trait.
//!
//! [`Store`] is what every part uses; [`SqliteStore`] is the embedded backend (the
//! default). The trait is shaped for a key-value backend too (etcd, later): every
//! listing is by an owning key (a prefix scan), live connections are written with a
//! lease so a dead node's entries expire by themselves, and changes are published on
//! a [`Store::watch`] channel so caches can be invalidated.

mod secret;
mod service;
mod sqlite;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use secret::{hash_secret, secret_matches};
pub use service::{CertVerificationMode, ServiceHost, ServiceType, VpcService};
pub use sqlite::SqliteStore;

/// An account: the owner of tunnels, services and workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Account id (32 lowercase hex digits, like Cloudflare's account tags).
    pub id: String,
    /// Display name.
    pub name: String,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// A tunnel: a named way into one private network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// Tunnel id (UUID).
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Name given at creation.
    pub name: String,
    /// SHA-256 of the tunnel secret; the secret itself is never stored.
    pub secret_hash: [u8; 32],
    /// RFC 3339 creation time.
    pub created_at: String,
    /// When a connector first registered, if ever (for `inactive` vs `down`).
    pub first_connected_at: Option<String>,
    /// The secret sealed with the edge's sealing key (so the token can be shown
    /// again); opaque to the store. `None` when the secret was not kept.
    pub sealed_secret: Option<Vec<u8>>,
}

/// A live connection between a connector and an edge node, held under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRecord {
    /// Connection id (UUID) the edge assigned.
    pub id: String,
    /// Tunnel it serves.
    pub tunnel_id: String,
    /// Connector process id (`client_id` in the API).
    pub connector_id: String,
    /// Connector version.
    pub client_version: String,
    /// Edge node holding it (`colo_name` in the API).
    pub edge_name: String,
    /// Connector's address as the edge saw it.
    pub origin_ip: String,
    /// RFC 3339 time it registered.
    pub opened_at: String,
    /// Index among the connector's HA connections.
    pub conn_index: u8,
    /// How many connections the connector intends to keep.
    pub ha_connections: u8,
}

/// A change published to watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A tunnel was created or deleted.
    Tunnel(String),
    /// The live connections of a tunnel changed.
    Connections(String),
    /// A VPC service was created, replaced or deleted.
    Service(String),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (disk, database, network); the operation did not happen.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The operation refers to something that does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Storage of accounts, tunnels and the live-connection registry.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an account with a fresh id.
    async fn create_account(&self, name: &str) -> StoreResult<Account>;
    /// Looks an account up.
    async fn get_account(&self, id: &str) -> StoreResult<Option<Account>>;
    /// All accounts.
    async fn list_accounts(&self) -> StoreResult<Vec<Account>>;

    /// Creates a tunnel for an existing account, storing only the secret's hash.
    async fn create_tunnel(
        &self,
        account_id: &str,
        name: &str,
        secret_hash: [u8; 32],
        sealed_secret: Option<Vec<u8>>,
    ) -> StoreResult<Tunnel>;
    /// Looks a tunnel up by id.
    async fn get_tunnel(&self, tunnel_id: &str) -> StoreResult<Option<Tunnel>>;
    /// The tunnels of an account, oldest first.
    async fn list_tunnels(&self, account_id: &str) -> StoreResult<Vec<Tunnel>>;
    /// Deletes a tunnel; `false` when it did not exist in that account.
    async fn delete_tunnel(&self, account_id: &str, tunnel_id: &str) -> StoreResult<bool>;

    /// Records (or refreshes) a live connection; it expires after `lease` unless
    /// refreshed again.
    async fn put_connection(&self, record: &ConnectionRecord, lease: Duration) -> StoreResult<()>;
    /// Removes a live connection at once (clean disconnect).
    async fn remove_connection(&self, connection_id: &str) -> StoreResult<()>;
    /// The unexpired connections of a tunnel.
    async fn list_connections(&self, tunnel_id: &str) -> StoreResult<Vec<ConnectionRecord>>;

    /// Stores a new VPC service (its `id` and times are set by the caller).
    async fn create_service(&self, service: &VpcService) -> StoreResult<()>;
    /// Looks a service up by id (any account: callers check ownership).
    async fn get_service(&self, service_id: &str) -> StoreResult<Option<VpcService>>;
    /// The services of an account, oldest first.
    async fn list_services(&self, account_id: &str) -> StoreResult<Vec<VpcService>>;
    /// Replaces a service of the account; `false` when it does not exist there.
    async fn replace_service(&self, service: &VpcService) -> StoreResult<bool>;
    /// Deletes a service of the account; `false` when it does not exist there.
    async fn delete_service(&self, account_id: &str, service_id: &str) -> StoreResult<bool>;
    /// How many services name a tunnel (a tunnel they name cannot be deleted).
    async fn services_using_tunnel(&self, tunnel_id: &str) -> StoreResult<usize>;

    /// Stores an API token's hash for an account; returns the token's id.
    async fn create_api_token(
        &self,
        account_id: &str,
        name: &str,
        hash: [u8; 32],
    ) -> StoreResult<String>;
    /// The account an API token (by hash) belongs to.
    async fn account_for_token(&self, hash: [u8; 32]) -> StoreResult<Option<String>>;

    /// Subscribes to changes made through this store.
    fn watch(&self) -> broadcast::Receiver<Change>;
}

/// Formats a time as RFC 3339 with second precision (`2026-11-22T10:00:00Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
