//! Configuration and registry storage behind one trait.
//!
//! [`Store`] is what every part uses and the one source of truth for everything
//! that must outlive a node: accounts, API tokens, tunnels, VPC services, worker
//! scripts, the registry of live tunnel connections and the cluster CA
//! ([`CaRecord`]). [`SqliteStore`] is the embedded backend (the default),
//! [`EtcdStore`] the shared one. Every listing is by an owning key (a prefix
//! scan), live connections are written with a lease so a dead node's entries
//! expire by themselves, and changes are published on a [`Store::watch`]
//! channel so caches ([`cache::ServiceCache`], [`cache::ScriptCache`]) drop
//! what changed. Worker bundles (MBs) live beside the store in a
//! content-addressed [`blobs::BlobDir`]; a node that lacks one fetches it
//! from its peers ([`peers::PeerContent`]).

pub mod blobs;
pub mod cache;
mod etcd;
pub mod peers;
pub mod sealing;
mod secret;
mod service;
mod sqlite;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use etcd::{EtcdConfig, EtcdStore, EtcdTls};
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

/// An edge node of the cluster, held under a lease: how its peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// The node's name (unique in the cluster; `edge_name` of its connections).
    pub name: String,
    /// UDP `host:port` of its node-to-node QUIC link.
    pub peer_addr: String,
    /// RFC 3339 time it started.
    pub started_at: String,
}

/// A deployed worker script as stored: who owns it, what it binds and routes,
/// and which bundle (by content hash) runs it. The upload metadata is kept as
/// the JSON the runtime validated; the store reads only the fields copied out
/// beside it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScriptRecord {
    /// Worker name (unique across accounts: it is also a hostname label).
    pub name: String,
    /// Owning account.
    pub account_id: String,
    /// Identity minted when the worker is created and kept by redeploys.
    pub tag: String,
    /// The upload metadata, as JSON.
    pub metadata: String,
    /// Ids of the VPC services its bindings name.
    pub services: Vec<String>,
    /// Route patterns it serves, canonical.
    pub routes: Vec<String>,
    /// SHA-256 (lowercase hex) of its bundle in the [`blobs::BlobDir`].
    pub bundle: String,
    /// Secrets (`secret_text` bindings) by name, each sealed with the edge's
    /// sealing key ([`sealing::Sealer`]; opaque to the store, kept as hex).
    #[serde(
        default,
        with = "hex_map",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub secrets: std::collections::BTreeMap<String, Vec<u8>>,
    /// RFC 3339 time of the first upload.
    pub created_on: String,
    /// RFC 3339 time of the last upload.
    pub modified_on: String,
}

/// Sealed secrets as hex strings (a JSON array of byte numbers would be
/// twice as large, and an etcd value is limited to 1.5 MiB).
mod hex_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, v)| (k, hex::encode(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                hex::decode(&v)
                    .map(|b| (k.clone(), b))
                    .map_err(|e| serde::de::Error::custom(format!("secrets.{k}: {e}")))
            })
            .collect()
    }
}

/// The cluster's certificate authority as stored: the one CA every node
/// issues its certificates from and every tunnel token pins. Both halves are
/// PEM; the key is a secret (whoever reads the store can read it).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaRecord {
    /// The CA certificate (PEM).
    pub cert_pem: String,
    /// The CA's private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRecord")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
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
    /// A worker script (by name) was deployed, redeployed or deleted.
    Script(String),
    /// Changes may have been missed (a watch was cut and resumed, a change
    /// log was trimmed): anything cached may be stale.
    All,
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
    /// The backend cannot be reached right now (etcd down, no quorum); the
    /// operation did not happen and may succeed if tried again.
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
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

    /// Records (or refreshes) a live edge node; it expires after `lease`
    /// unless refreshed again.
    async fn put_node(&self, node: &NodeRecord, lease: Duration) -> StoreResult<()>;
    /// Removes a node at once (clean shutdown).
    async fn remove_node(&self, name: &str) -> StoreResult<()>;
    /// The unexpired nodes, by name.
    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>>;

    /// Stores an API token's hash for an account; returns the token's id.
    async fn create_api_token(
        &self,
        account_id: &str,
        name: &str,
        hash: [u8; 32],
    ) -> StoreResult<String>;
    /// The account an API token (by hash) belongs to.
    async fn account_for_token(&self, hash: [u8; 32]) -> StoreResult<Option<String>>;

    /// Stores a worker script if the stored one is still exactly `expected`,
    /// the record the caller read and changed (`None`: only if there is no
    /// script by that name); `false` (nothing written) when another write got
    /// there first. The whole record is compared, not only its tag, which
    /// stays the same across versions: a change made meanwhile by another
    /// node (a secret deleted, a redeploy) is never overwritten unseen.
    async fn put_script(
        &self,
        script: &ScriptRecord,
        expected: Option<&ScriptRecord>,
    ) -> StoreResult<bool>;
    /// Looks a script up by name (any account: callers check ownership).
    async fn get_script(&self, name: &str) -> StoreResult<Option<ScriptRecord>>;
    /// Every script of every account, by name (restoring a node, route checks).
    async fn list_scripts(&self) -> StoreResult<Vec<ScriptRecord>>;
    /// Deletes a script of the account; `false` when it does not exist there.
    async fn delete_script(&self, account_id: &str, name: &str) -> StoreResult<bool>;
    /// Names of the scripts whose bindings name `service_id`, sorted.
    async fn scripts_binding(&self, service_id: &str) -> StoreResult<Vec<String>>;

    /// Subscribes to changes: those made through this store at once (before
    /// the write returns), those made by other processes or nodes as the
    /// backend learns of them.
    fn watch(&self) -> broadcast::Receiver<Change>;

    /// The cluster CA, when one has been stored.
    async fn cluster_ca(&self) -> StoreResult<Option<CaRecord>>;
    /// Stores `ca` as the cluster CA unless one is stored already (atomically:
    /// of concurrent calls exactly one writes), and returns the stored one —
    /// `ca` itself, or the CA another node stored first.
    async fn init_cluster_ca(&self, ca: &CaRecord) -> StoreResult<CaRecord>;
}

/// Formats a time as RFC 3339 with second precision (`2026-11-22T10:00:00Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
