//! The etcd backend: every node of a cluster talks to the same etcd, so what
//! one node writes, the others read and hear about.
//!
//! All keys live under one prefix (default `/warren/`), so several clusters
//! can share an etcd. Values are JSON. Each listing is a prefix scan of an
//! index key written in the same transaction as the record it points to:
//!
//! | key | value |
//! | --- | --- |
//! | `accounts/<id>` | account |
//! | `tokens/<sha256 hex>` | token (id, account, name) |
//! | `tunnels/<id>`, `account-tunnels/<account>/<id>` | tunnel, empty |
//! | `services/<id>`, `account-services/<account>/<id>`, `tunnel-services/<tunnel>/<id>` | service, empty, empty |
//! | `scripts/<name>`, `service-scripts/<service>/<name>` | script, empty |
//! | `connections/<id>`, `tunnel-connections/<tunnel>/<id>` | connection (both under its lease) |
//! | `nodes/<name>` | an edge node (under its lease) |
//! | `cluster-ca` | the cluster CA: certificate and private key (PEM) |
//!
//! Key parts are escaped (`%` → `%25`, `/` → `%2F`) so an id cannot reach
//! into another key. Writes that touch several keys are one etcd transaction
//! guarded by compares (the owner account exists, the record is unchanged
//! since it was read), so they happen whole or not at all.
//!
//! Live connections are held by a lease of their own, kept alive by each
//! refresh: when a node dies, etcd deletes its connections when their leases
//! run out. One background task watches the prefix and turns key events into
//! [`Change`]s; when the watch breaks it reconnects with backoff (to the next
//! member), resumes after the last revision it saw, and publishes
//! [`Change::All`].
//!
//! Members: each endpoint has a client of its own, and requests go to one
//! member at a time (the last that answered). A request that finds its member
//! unreachable, without a leader, or silent for [`ATTEMPT_TIMEOUT`] is sent
//! to the next member, round after round, until it succeeds or about 2 s have
//! passed. Reads are safe to repeat; every write is made safe to repeat too,
//! since a request cut off by a member's death may still have been committed:
//! updates are compare-and-swap loops that read again, a create or script
//! write sent more than once that finds exactly its own value stored counts
//! as done, and a delete sent more than once that finds the record gone
//! reports it deleted. A repeated lease grant may leave an unused lease,
//! which expires.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use crate::{
    Account, CaRecord, Change, ConnectionRecord, NodeRecord, ScriptRecord, Store, StoreError,
    StoreResult, Tunnel, VpcService, rfc3339,
};

/// Longest wait for a connection to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one request, over every member asked; past it the call
/// fails as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one member's answer while other members could be asked
/// (a request in flight when the leader dies waits for the election).
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(600);
/// Pause before asking every member again when none answered.
const ROUND_PAUSE: Duration = Duration::from_millis(50);
/// HTTP/2 pings find a dead connection (a watch that would wait forever).
/// etcd answers pings more often than every 5 s with GOAWAY, so 10 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys read per request of a prefix scan.
const PAGE: i64 = 1000;
/// Gets batched into one transaction (etcd allows 128 operations by default).
const GETS_PER_TXN: usize = 100;
/// Attempts of a read-check-write loop that keeps losing to other writers.
const CAS_ATTEMPTS: usize = 32;
/// Bounds of the watch's reconnect backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// gRPC status codes that mean "not reachable right now".
const GRPC_CANCELLED: i32 = 1;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_UNAVAILABLE: i32 = 14;

/// Where and how to reach etcd.
#[derive(Clone)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://host:2379`, `https://…` with [`EtcdConfig::tls`]).
    pub endpoints: Vec<String>,
    /// Every key is under this prefix (default `/warren/`; a `/` is added at
    /// the end when missing, so `/a` and `/ab` stay apart).
    pub prefix: String,
    /// TLS to the members (for `https://` endpoints).
    pub tls: Option<EtcdTls>,
    /// User for etcd's authentication (with [`EtcdConfig::password`]).
    pub user: Option<String>,
    /// Password of [`EtcdConfig::user`].
    pub password: Option<String>,
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl EtcdConfig {
    /// The default prefix.
    pub const DEFAULT_PREFIX: &'static str = "/warren/";

    /// Plain connections to `endpoints` under the default prefix.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            prefix: Self::DEFAULT_PREFIX.into(),
            tls: None,
            user: None,
            password: None,
        }
    }
}

/// TLS files (PEM) for the connections to etcd.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA certificate(s) the members' certificates chain to.
    pub ca_file: PathBuf,
    /// Client certificate, for members that require one (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// Private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// A lease this store holds for one of its live connections.
#[derive(Clone, Copy)]
struct HeldLease {
    id: i64,
    ttl: i64,
}

/// One member's endpoint and its client (connected on first use when the
/// member could not be reached at start).
struct Member {
    endpoint: String,
    client: Mutex<Option<Client>>,
}

/// The members, and which one requests go to first.
struct Members {
    list: Vec<Member>,
    options: ConnectOptions,
    /// Index of the member that answered last.
    preferred: AtomicUsize,
    /// The endpoints, for error messages.
    endpoints: String,
}

impl Members {
    /// Member `i`'s client, connecting it if needed.
    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let member = &self.list[i];
        if let Some(c) = member.client.lock().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let c = Client::connect([member.endpoint.as_str()], Some(self.options.clone())).await?;
        if let Ok(mut slot) = member.client.lock() {
            return Ok(slot.get_or_insert(c).clone());
        }
        Ok(c)
    }

    /// Runs `op` on the preferred member, and on the next ones while members
    /// are unreachable, have no leader or do not answer (see the module
    /// documentation), for up to [`REQUEST_TIMEOUT`]. Other errors return
    /// at once. The flag says whether more than one attempt was made (an
    /// earlier one may have been applied).
    async fn call<T, F, Fut>(&self, mut op: F) -> StoreResult<(T, bool)>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.list.len();
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let mut i = self.preferred.load(Ordering::Relaxed) % n;
        let mut attempts = 0usize;
        loop {
            let now = tokio::time::Instant::now();
            let per_attempt = if n > 1 {
                ATTEMPT_TIMEOUT
            } else {
                REQUEST_TIMEOUT + Duration::from_millis(500)
            };
            let limit = per_attempt.min(deadline.saturating_duration_since(now));
            attempts += 1;
            let attempt = async {
                let client = self.client(i).await?;
                op(client).await
            };
            let error = match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(v)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok((v, attempts > 1));
                }
                Ok(Err(e)) if !is_unavailable(&e) => return Err(classify(&self.endpoints, e)),
                Ok(Err(e)) => classify(&self.endpoints, e),
                Err(_) => timed_out(&self.endpoints),
            };
            if n == 1 || tokio::time::Instant::now() >= deadline {
                return Err(error);
            }
            tracing::debug!(endpoint = %self.list[i].endpoint, error = %error, "etcd member failed a request; asking the next");
            // The next calls start on the next member too.
            let next = (i + 1) % n;
            let _ = self
                .preferred
                .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
            i = next;
            if attempts.is_multiple_of(n) {
                let pause = ROUND_PAUSE
                    .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                tokio::time::sleep(pause).await;
            }
        }
    }
}

struct Inner {
    members: Arc<Members>,
    prefix: String,
    changes: broadcast::Sender<Change>,
    leases: Mutex<HashMap<String, HeldLease>>,
    /// Dropped with the store: stops the watch task.
    _stop: oneshot::Sender<()>,
}

/// The store on an etcd cluster (see the module documentation for the layout).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

/// Stored shapes (private: the JSON in etcd, not the API).
#[derive(Serialize, Deserialize)]
struct AccountDoc {
    id: String,
    name: String,
    created_at: String,
}

#[derive(Serialize, Deserialize)]
struct TokenDoc {
    id: String,
    account_id: String,
    name: String,
    created_at: String,
}

#[derive(Serialize, Deserialize)]
struct TunnelDoc {
    id: String,
    account_id: String,
    name: String,
    /// Hex.
    secret_hash: String,
    created_at: String,
    first_connected_at: Option<String>,
    /// Hex.
    sealed_secret: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ConnectionDoc {
    id: String,
    tunnel_id: String,
    connector_id: String,
    client_version: String,
    edge_name: String,
    origin_ip: String,
    opened_at: String,
    conn_index: u8,
    ha_connections: u8,
}

impl From<&Tunnel> for TunnelDoc {
    fn from(t: &Tunnel) -> Self {
        TunnelDoc {
            id: t.id.clone(),
            account_id: t.account_id.clone(),
            name: t.name.clone(),
            secret_hash: hex::encode(t.secret_hash),
            created_at: t.created_at.clone(),
            first_connected_at: t.first_connected_at.clone(),
            sealed_secret: t.sealed_secret.as_ref().map(hex::encode),
        }
    }
}

impl From<&ConnectionRecord> for ConnectionDoc {
    fn from(r: &ConnectionRecord) -> Self {
        ConnectionDoc {
            id: r.id.clone(),
            tunnel_id: r.tunnel_id.clone(),
            connector_id: r.connector_id.clone(),
            client_version: r.client_version.clone(),
            edge_name: r.edge_name.clone(),
            origin_ip: r.origin_ip.clone(),
            opened_at: r.opened_at.clone(),
            conn_index: r.conn_index,
            ha_connections: r.ha_connections,
        }
    }
}

impl From<ConnectionDoc> for ConnectionRecord {
    fn from(d: ConnectionDoc) -> Self {
        ConnectionRecord {
            id: d.id,
            tunnel_id: d.tunnel_id,
            connector_id: d.connector_id,
            client_version: d.client_version,
            edge_name: d.edge_name,
            origin_ip: d.origin_ip,
            opened_at: d.opened_at,
            conn_index: d.conn_index,
            ha_connections: d.ha_connections,
        }
    }
}

/// Escapes one key part so it holds no `/`.
fn esc(part: &str) -> String {
    part.replace('%', "%25").replace('/', "%2F")
}

/// Undoes [`esc`]; `None` for a malformed escape.
fn unesc(part: &str) -> Option<String> {
    let mut out = Vec::with_capacity(part.len());
    let bytes = part.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = part.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The smallest key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// Lease TTL in whole seconds (rounded up, at least 1).
fn lease_secs(lease: Duration) -> i64 {
    let ms = lease.as_millis().max(1);
    ms.div_ceil(1000).min(i64::MAX as u128) as i64
}

/// What the chain of `e`'s sources says: `Some(true)` when it holds an I/O
/// error of the connection, `Some(false)` when that error is bad TLS data (a
/// certificate the other side refused: configuration, not an outage).
fn io_in_chain(e: &(dyn std::error::Error + 'static)) -> Option<bool> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind() != std::io::ErrorKind::InvalidData);
        }
        next = err.source();
    }
    None
}

/// Whether an etcd error means "cannot be reached right now".
fn is_unavailable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::IoError(io) => io.kind() != std::io::ErrorKind::InvalidData,
        E::TransportError(t) => io_in_chain(t).unwrap_or(true),
        E::GRpcStatus(s) => {
            // A status made on this side from a broken connection carries
            // the I/O error as its source (etcd's own statuses have none).
            if let Some(io) = std::error::Error::source(s).and_then(io_in_chain) {
                return io;
            }
            let code = i32::from(s.code());
            let msg = s.message();
            matches!(
                code,
                GRPC_CANCELLED | GRPC_DEADLINE_EXCEEDED | GRPC_UNAVAILABLE
            ) && !msg.contains("certificate")
                || msg.contains("transport error")
                || msg.contains("no leader")
                || msg.contains("leader changed")
                || msg.contains("timed out")
                || msg.contains("too many requests")
        }
        _ => false,
    }
}

/// Maps an etcd error: unreachable cluster → [`StoreError::Unavailable`]
/// naming the endpoints, anything else → [`StoreError::Backend`].
fn classify(endpoints: &str, e: etcd_client::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(format!("etcd at {endpoints}: {e}"))
    } else {
        StoreError::Backend(format!("etcd at {endpoints}: {e}"))
    }
}

fn timed_out(endpoints: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "etcd at {endpoints} did not answer within {REQUEST_TIMEOUT:?}"
    ))
}

fn key_text(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

/// Decodes a stored JSON value; a malformed one names its key.
fn decode<T: DeserializeOwned>(kv: &KeyValue) -> StoreResult<T> {
    serde_json::from_slice(kv.value()).map_err(|e| {
        StoreError::Backend(format!("malformed value at etcd key {}: {e}", key_text(kv)))
    })
}

fn encode<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))
}

fn hash_from_hex(kv: &KeyValue, text: &str) -> StoreResult<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|e| {
        StoreError::Backend(format!(
            "malformed secret hash at etcd key {}: {e}",
            key_text(kv)
        ))
    })?;
    Ok(out)
}

fn tunnel_from(kv: &KeyValue) -> StoreResult<Tunnel> {
    let d: TunnelDoc = decode(kv)?;
    let secret_hash = hash_from_hex(kv, &d.secret_hash)?;
    let sealed_secret = d
        .sealed_secret
        .map(|s| {
            hex::decode(s).map_err(|e| {
                StoreError::Backend(format!(
                    "malformed sealed secret at etcd key {}: {e}",
                    key_text(kv)
                ))
            })
        })
        .transpose()?;
    Ok(Tunnel {
        id: d.id,
        account_id: d.account_id,
        name: d.name,
        secret_hash,
        created_at: d.created_at,
        first_connected_at: d.first_connected_at,
        sealed_secret,
    })
}

/// The first `Get` response of a transaction's `n`-th operation.
fn txn_get(resp: &TxnResponse, n: usize) -> Option<KeyValue> {
    match resp.op_responses().into_iter().nth(n) {
        Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
        _ => None,
    }
}

/// Whether the `n`-th operation of a failed transaction read `body`: sent
/// again after a failure, a create that finds its own value was applied by
/// the earlier attempt.
fn holds(resp: &TxnResponse, n: usize, body: &str) -> bool {
    txn_get(resp, n).is_some_and(|kv| kv.value() == body.as_bytes())
}

impl EtcdStore {
    /// Connects to etcd, checks it answers, and starts following changes
    /// under the prefix from the current revision on.
    pub async fn connect(config: EtcdConfig) -> StoreResult<Self> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Backend("etcd: no endpoints given".into()));
        }
        let endpoints = config.endpoints.join(", ");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            // etcd refuses pings while no stream is open; the watch is one.
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        match (&config.user, &config.password) {
            (Some(user), Some(password)) => {
                // etcd's tokens expire (5 min idle by default): get a new one.
                options = options
                    .with_user(user, password)
                    .with_auto_token_refresh(true);
            }
            (None, None) => {}
            _ => {
                return Err(StoreError::Backend(
                    "etcd: user and password go together".into(),
                ));
            }
        }
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        // A client per member, connected at once (which only authenticates,
        // with a user); one that cannot be reached now is connected on use.
        let mut connecting = tokio::task::JoinSet::new();
        for (i, endpoint) in config.endpoints.iter().enumerate() {
            let (endpoint, options) = (endpoint.clone(), options.clone());
            connecting.spawn(async move {
                let c = tokio::time::timeout(
                    CONNECT_TIMEOUT + REQUEST_TIMEOUT,
                    Client::connect([endpoint], Some(options)),
                )
                .await;
                (i, c)
            });
        }
        let mut clients: Vec<Option<Client>> = vec![None; config.endpoints.len()];
        while let Some(done) = connecting.join_next().await {
            match done {
                Ok((i, Ok(Ok(c)))) => clients[i] = Some(c),
                Ok((_, Ok(Err(e)))) if !is_unavailable(&e) => {
                    return Err(classify(&endpoints, e));
                }
                Ok(_) => {}
                Err(e) => return Err(StoreError::Backend(format!("etcd: connecting: {e}"))),
            }
        }
        let members = Arc::new(Members {
            list: config
                .endpoints
                .iter()
                .zip(clients)
                .map(|(endpoint, client)| Member {
                    endpoint: endpoint.clone(),
                    client: Mutex::new(client),
                })
                .collect(),
            options,
            preferred: AtomicUsize::new(0),
            endpoints: endpoints.clone(),
        });
        let mut prefix = config.prefix.clone();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let (changes, _) = broadcast::channel(256);
        let (stop_tx, stop_rx) = oneshot::channel();
        let store = EtcdStore {
            inner: Arc::new(Inner {
                members,
                prefix,
                changes,
                leases: Mutex::new(HashMap::new()),
                _stop: stop_tx,
            }),
        };
        // The revision now: the watch starts right after it.
        let probe = store
            .range(
                store.inner.prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?;
        let revision = probe.header().map(|h| h.revision()).unwrap_or(0);
        let follower = Follower {
            members: store.inner.members.clone(),
            prefix: store.inner.prefix.clone(),
            changes: store.inner.changes.clone(),
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = stop_rx => {}
                _ = follower.run(revision + 1) => {}
            }
        });
        Ok(store)
    }

    /// The key prefix in use (always ending in `/` unless empty).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// `<prefix><kind>/<escaped part>/…`.
    fn key(&self, kind: &str, parts: &[&str]) -> String {
        let mut k = format!("{}{kind}", self.inner.prefix);
        for p in parts {
            k.push('/');
            k.push_str(&esc(p));
        }
        k
    }

    /// Runs one request on a member, failing over to the others (see
    /// [`Members::call`]).
    async fn call<T, F, Fut>(&self, op: F) -> StoreResult<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        Ok(self.inner.members.call(op).await?.0)
    }

    /// Puts `value` at `key` under lease `lease` (safe to send twice).
    async fn put_leased(&self, key: String, value: String, lease: i64) -> StoreResult<()> {
        self.call(|c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.kv_client()
                    .put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// A range read.
    async fn range(
        &self,
        key: impl Into<Vec<u8>>,
        opts: Option<GetOptions>,
    ) -> StoreResult<GetResponse> {
        let key = key.into();
        self.call(|c| {
            let (key, opts) = (key.clone(), opts.clone());
            async move { c.kv_client().get(key, opts).await }
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> StoreResult<TxnResponse> {
        Ok(self.txn_retried(txn).await?.0)
    }

    /// A transaction, and whether it was sent more than once (an earlier
    /// attempt may have been applied).
    async fn txn_retried(&self, txn: Txn) -> StoreResult<(TxnResponse, bool)> {
        self.inner
            .members
            .call(|c| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })
            .await
    }

    async fn get(&self, key: String) -> StoreResult<Option<KeyValue>> {
        let mut resp = self.range(key, None).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// Every key under `prefix` (which ends in `/`), in key order, read page
    /// by page at one revision.
    async fn scan(&self, prefix: String, keys_only: bool) -> StoreResult<Vec<KeyValue>> {
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.into_bytes();
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE)
                .with_revision(revision);
            if keys_only {
                opts = opts.with_keys_only();
            }
            let mut resp = self.range(from.clone(), Some(opts)).await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else {
                return Ok(out);
            };
            from = last.key().to_vec();
            from.push(0);
            out.extend(kvs);
            if !more {
                return Ok(out);
            }
        }
    }

    /// The last key part of each index key under `prefix`, unescaped.
    async fn scan_ids(&self, prefix: String) -> StoreResult<Vec<String>> {
        let kvs = self.scan(prefix, true).await?;
        kvs.iter()
            .map(|kv| {
                let key = key_text(kv);
                key.rsplit('/')
                    .next()
                    .and_then(unesc)
                    .ok_or_else(|| StoreError::Backend(format!("malformed etcd key {key}")))
            })
            .collect()
    }

    /// The records of `table` that the index `index`/`owner` lists.
    async fn indexed(&self, index: &str, owner: &str, table: &str) -> StoreResult<Vec<KeyValue>> {
        let ids = self.scan_ids(self.key(index, &[owner, ""])).await?;
        let keys = ids.iter().map(|id| self.key(table, &[id])).collect();
        self.get_many(keys).await
    }

    /// The values of `keys` that exist, in order, batched into transactions.
    async fn get_many(&self, keys: Vec<String>) -> StoreResult<Vec<KeyValue>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(GETS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.clone(), None)).collect();
            let resp = self.txn(Txn::new().and_then(ops)).await?;
            for r in resp.op_responses() {
                if let TxnOpResponse::Get(g) = r {
                    out.extend(g.kvs().iter().cloned());
                }
            }
        }
        Ok(out)
    }

    fn publish(&self, change: Change) {
        // No subscriber is fine.
        let _ = self.inner.changes.send(change);
    }

    fn account_exists(&self, account_id: &str) -> Compare {
        Compare::version(self.key("accounts", &[account_id]), CompareOp::Greater, 0)
    }

    fn contention(what: &str) -> StoreError {
        StoreError::Backend(format!(
            "{what}: gave up after {CAS_ATTEMPTS} attempts lost to concurrent writers"
        ))
    }

    /// Sends one keep-alive for `lease`; `false` when it has expired.
    async fn keep_alive(&self, lease: i64) -> StoreResult<bool> {
        self.call(|c| async move {
            match c.lease_client().keep_alive(lease).await {
                Ok(_) => Ok(true),
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Revokes a lease this store no longer needs; failures only delay expiry.
    async fn revoke(&self, lease: i64) {
        let revoked = self
            .call(|c| async move { c.lease_client().revoke(lease).await })
            .await;
        if let Err(e) = revoked {
            tracing::debug!(error = %e, lease, "could not revoke an etcd lease; it will expire");
        }
    }

    /// Sets a tunnel's `first_connected_at` unless already set.
    async fn mark_connected(&self, tunnel_id: &str, at: &str) -> StoreResult<()> {
        let key = self.key("tunnels", &[tunnel_id]);
        for _ in 0..CAS_ATTEMPTS {
            let Some(kv) = self.get(key.clone()).await? else {
                return Ok(());
            };
            let mut tunnel = tunnel_from(&kv)?;
            if tunnel.first_connected_at.is_some() {
                return Ok(());
            }
            tunnel.first_connected_at = Some(at.to_owned());
            let body = encode(&TunnelDoc::from(&tunnel))?;
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([TxnOp::put(key.clone(), body, None)]),
                )
                .await?;
            if resp.succeeded() {
                return Ok(());
            }
        }
        Err(Self::contention("marking a tunnel connected"))
    }
}

fn read_pem(path: &PathBuf, what: &str) -> StoreResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        StoreError::Backend(format!(
            "etcd TLS: cannot read the {what} {}: {e}",
            path.display()
        ))
    })
}

fn tls_options(tls: &EtcdTls) -> StoreResult<TlsOptions> {
    let mut options =
        TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem(&tls.ca_file, "CA file")?));
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            options = options.identity(Identity::from_pem(
                read_pem(cert, "certificate file")?,
                read_pem(key, "key file")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Backend(
                "etcd TLS: cert_file and key_file go together".into(),
            ));
        }
    }
    Ok(options)
}

/// The watch task's state.
struct Follower {
    members: Arc<Members>,
    prefix: String,
    changes: broadcast::Sender<Change>,
}

impl Follower {
    /// Turns a key into the change it means, if any (index keys written in
    /// the same transaction as their record say nothing more).
    fn change_for(&self, key: &[u8]) -> Option<Change> {
        let rest = std::str::from_utf8(key.strip_prefix(self.prefix.as_bytes())?).ok()?;
        let mut parts = rest.split('/');
        let kind = parts.next()?;
        let first = unesc(parts.next()?)?;
        match kind {
            "tunnels" => Some(Change::Tunnel(first)),
            "services" => Some(Change::Service(first)),
            "scripts" => Some(Change::Script(first)),
            "tunnel-connections" => Some(Change::Connections(first)),
            _ => None,
        }
    }

    /// Watches the prefix from `next` on, forever: reconnects with backoff
    /// after a break, to the next member, and resumes after the last
    /// revision seen.
    async fn run(self, mut next: i64) {
        let mut backoff = BACKOFF_MIN;
        let mut resumed = false;
        let mut member = self.members.preferred.load(Ordering::Relaxed);
        loop {
            member %= self.members.list.len();
            let endpoint = &self.members.list[member].endpoint;
            match self.follow(member, &mut next, resumed, &mut backoff).await {
                Ok(()) => tracing::warn!(%endpoint, "etcd watch ended; resuming"),
                Err(e) => {
                    tracing::warn!(%endpoint, error = %e, "etcd watch broken; resuming")
                }
            }
            resumed = true;
            member += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One watch stream on member `member`, until it breaks.
    async fn follow(
        &self,
        member: usize,
        next: &mut i64,
        resumed: bool,
        backoff: &mut Duration,
    ) -> Result<(), String> {
        let opts = WatchOptions::new().with_prefix().with_start_revision(*next);
        let watching = async {
            let mut client = self.members.client(member).await?.watch_client();
            client.watch(self.prefix.clone(), Some(opts)).await
        };
        let mut stream = match tokio::time::timeout(REQUEST_TIMEOUT, watching).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        };
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            if resp.created() {
                *backoff = BACKOFF_MIN;
                if resumed {
                    // Events during the break are replayed after this, but
                    // anything cached may have been read from a lagging
                    // member or during the outage: start over.
                    let _ = self.changes.send(Change::All);
                }
            }
            if resp.compact_revision() > 0 {
                // The events from `next` on are gone: resume at the oldest
                // revision kept, and let watchers reload.
                let _ = self.changes.send(Change::All);
                *next = (*next).max(resp.compact_revision());
                return Err(format!(
                    "revision compacted (oldest kept {})",
                    resp.compact_revision()
                ));
            }
            if resp.canceled() {
                return Err(format!("watch cancelled: {}", resp.cancel_reason()));
            }
            let mut sent: Vec<Change> = Vec::new();
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                *next = (*next).max(kv.mod_revision() + 1);
                if let Some(change) = self.change_for(kv.key())
                    && !sent.contains(&change)
                {
                    let _ = self.changes.send(change.clone());
                    sent.push(change);
                }
            }
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn create_account(&self, name: &str) -> StoreResult<Account> {
        let account = Account {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: name.to_owned(),
            created_at: rfc3339(SystemTime::now()),
        };
        let key = self.key("accounts", &[&account.id]);
        let body = encode(&AccountDoc {
            id: account.id.clone(),
            name: account.name.clone(),
            created_at: account.created_at.clone(),
        })?;
        let (resp, retried) = self
            .txn_retried(
                Txn::new()
                    .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), body.clone(), None)])
                    .or_else([TxnOp::get(key, None)]),
            )
            .await?;
        // Sent more than once and holding this very value (fresh id): an
        // earlier attempt of this call created it.
        if !(resp.succeeded() || retried && holds(&resp, 0, &body)) {
            return Err(StoreError::Backend(format!(
                "account id {} already exists",
                account.id
            )));
        }
        Ok(account)
    }

    async fn get_account(&self, id: &str) -> StoreResult<Option<Account>> {
        let Some(kv) = self.get(self.key("accounts", &[id])).await? else {
            return Ok(None);
        };
        let d: AccountDoc = decode(&kv)?;
        Ok(Some(Account {
            id: d.id,
            name: d.name,
            created_at: d.created_at,
        }))
    }

    async fn list_accounts(&self) -> StoreResult<Vec<Account>> {
        let kvs = self.scan(self.key("accounts", &[""]), false).await?;
        let mut accounts = kvs
            .iter()
            .map(|kv| {
                decode::<AccountDoc>(kv).map(|d| Account {
                    id: d.id,
                    name: d.name,
                    created_at: d.created_at,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        accounts.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(accounts)
    }

    async fn create_tunnel(
        &self,
        account_id: &str,
        name: &str,
        secret_hash: [u8; 32],
        sealed_secret: Option<Vec<u8>>,
    ) -> StoreResult<Tunnel> {
        let tunnel = Tunnel {
            id: uuid::Uuid::now_v7().to_string(),
            account_id: account_id.to_owned(),
            name: name.to_owned(),
            secret_hash,
            created_at: rfc3339(SystemTime::now()),
            first_connected_at: None,
            sealed_secret,
        };
        let key = self.key("tunnels", &[&tunnel.id]);
        let body = encode(&TunnelDoc::from(&tunnel))?;
        let (resp, retried) = self
            .txn_retried(
                Txn::new()
                    .when([
                        self.account_exists(account_id),
                        Compare::version(key.clone(), CompareOp::Equal, 0),
                    ])
                    .and_then([
                        TxnOp::put(key.clone(), body.clone(), None),
                        TxnOp::put(
                            self.key("account-tunnels", &[account_id, &tunnel.id]),
                            "",
                            None,
                        ),
                    ])
                    .or_else([TxnOp::get(key, None)]),
            )
            .await?;
        // Sent more than once and holding this very value (fresh id): an
        // earlier attempt of this call created it.
        if !(resp.succeeded() || retried && holds(&resp, 0, &body)) {
            return Err(StoreError::NotFound("account"));
        }
        self.publish(Change::Tunnel(tunnel.id.clone()));
        Ok(tunnel)
    }

    async fn get_tunnel(&self, tunnel_id: &str) -> StoreResult<Option<Tunnel>> {
        self.get(self.key("tunnels", &[tunnel_id]))
            .await?
            .map(|kv| tunnel_from(&kv))
            .transpose()
    }

    async fn list_tunnels(&self, account_id: &str) -> StoreResult<Vec<Tunnel>> {
        let mut tunnels = self
            .indexed("account-tunnels", account_id, "tunnels")
            .await?
            .iter()
            .map(tunnel_from)
            .collect::<StoreResult<Vec<_>>>()?;
        tunnels.retain(|t| t.account_id == account_id);
        tunnels.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(tunnels)
    }

    async fn delete_tunnel(&self, account_id: &str, tunnel_id: &str) -> StoreResult<bool> {
        let key = self.key("tunnels", &[tunnel_id]);
        // Set once the delete was sent more than once: a record found gone
        // afterwards may have been deleted by this call.
        let mut maybe_deleted = false;
        for _ in 0..CAS_ATTEMPTS {
            let Some(kv) = self.get(key.clone()).await? else {
                if maybe_deleted {
                    self.publish(Change::Tunnel(tunnel_id.to_owned()));
                }
                return Ok(maybe_deleted);
            };
            if tunnel_from(&kv)?.account_id != account_id {
                return Ok(false);
            }
            let (resp, retried) = self
                .txn_retried(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([
                            TxnOp::delete(key.clone(), None),
                            TxnOp::delete(
                                self.key("account-tunnels", &[account_id, tunnel_id]),
                                None,
                            ),
                        ]),
                )
                .await?;
            maybe_deleted |= retried;
            if resp.succeeded() {
                self.publish(Change::Tunnel(tunnel_id.to_owned()));
                return Ok(true);
            }
        }
        Err(Self::contention("deleting a tunnel"))
    }

    async fn put_connection(&self, record: &ConnectionRecord, lease: Duration) -> StoreResult<()> {
        let ttl = lease_secs(lease);
        let held = self
            .inner
            .leases
            .lock()
            .ok()
            .and_then(|l| l.get(&record.id).copied());
        if let Some(h) = held
            && h.ttl == ttl
            && self.keep_alive(h.id).await?
        {
            self.publish(Change::Connections(record.tunnel_id.clone()));
            return Ok(());
        }
        // First registration, a new lease length, or the lease ran out.
        // Repeated after a failure, a grant may leave an unused lease: it
        // expires by itself.
        let granted = self
            .call(|c| async move { c.lease_client().grant(ttl, None).await })
            .await?;
        let id = granted.id();
        let body = encode(&ConnectionDoc::from(record))?;
        let with_lease = || Some(PutOptions::new().with_lease(id));
        let written = self
            .txn(Txn::new().and_then([
                TxnOp::put(
                    self.key("connections", &[&record.id]),
                    body.clone(),
                    with_lease(),
                ),
                TxnOp::put(
                    self.key("tunnel-connections", &[&record.tunnel_id, &record.id]),
                    body,
                    with_lease(),
                ),
            ]))
            .await;
        if let Err(e) = written {
            self.revoke(id).await;
            return Err(e);
        }
        if let Ok(mut l) = self.inner.leases.lock() {
            l.insert(record.id.clone(), HeldLease { id, ttl });
        }
        if let Some(old) = held
            && old.id != id
        {
            self.revoke(old.id).await;
        }
        self.mark_connected(&record.tunnel_id, &record.opened_at)
            .await?;
        self.publish(Change::Connections(record.tunnel_id.clone()));
        Ok(())
    }

    async fn remove_connection(&self, connection_id: &str) -> StoreResult<()> {
        let held = self
            .inner
            .leases
            .lock()
            .ok()
            .and_then(|mut l| l.remove(connection_id));
        let key = self.key("connections", &[connection_id]);
        let Some(kv) = self.get(key.clone()).await? else {
            if let Some(h) = held {
                self.revoke(h.id).await;
            }
            return Ok(());
        };
        let doc: ConnectionDoc = decode(&kv)?;
        self.txn(Txn::new().and_then([
            TxnOp::delete(key, None),
            TxnOp::delete(
                self.key("tunnel-connections", &[&doc.tunnel_id, connection_id]),
                None,
            ),
        ]))
        .await?;
        if let Some(h) = held {
            self.revoke(h.id).await;
        }
        self.publish(Change::Connections(doc.tunnel_id));
        Ok(())
    }

    async fn list_connections(&self, tunnel_id: &str) -> StoreResult<Vec<ConnectionRecord>> {
        let kvs = self
            .scan(self.key("tunnel-connections", &[tunnel_id, ""]), false)
            .await?;
        let mut records = kvs
            .iter()
            .map(|kv| decode::<ConnectionDoc>(kv).map(ConnectionRecord::from))
            .collect::<StoreResult<Vec<_>>>()?;
        records.sort_by(|a, b| (&a.opened_at, &a.id).cmp(&(&b.opened_at, &b.id)));
        Ok(records)
    }

    async fn create_service(&self, service: &VpcService) -> StoreResult<()> {
        let key = self.key("services", &[&service.id]);
        let account = self.key("accounts", &[&service.account_id]);
        let body = encode(service)?;
        let (resp, retried) = self
            .txn_retried(
                Txn::new()
                    .when([
                        self.account_exists(&service.account_id),
                        Compare::version(key.clone(), CompareOp::Equal, 0),
                    ])
                    .and_then([
                        TxnOp::put(key.clone(), body.clone(), None),
                        TxnOp::put(
                            self.key("account-services", &[&service.account_id, &service.id]),
                            "",
                            None,
                        ),
                        TxnOp::put(
                            self.key("tunnel-services", &[service.host.tunnel_id(), &service.id]),
                            "",
                            None,
                        ),
                    ])
                    .or_else([TxnOp::get(account, None), TxnOp::get(key, None)]),
            )
            .await?;
        // Sent more than once and holding this very value: an earlier
        // attempt of this call created it.
        if !(resp.succeeded() || retried && holds(&resp, 1, &body)) {
            if txn_get(&resp, 0).is_none() {
                return Err(StoreError::NotFound("account"));
            }
            return Err(StoreError::Backend(format!(
                "service id {} already exists",
                service.id
            )));
        }
        self.publish(Change::Service(service.id.clone()));
        Ok(())
    }

    async fn get_service(&self, service_id: &str) -> StoreResult<Option<VpcService>> {
        self.get(self.key("services", &[service_id]))
            .await?
            .map(|kv| decode(&kv))
            .transpose()
    }

    async fn list_services(&self, account_id: &str) -> StoreResult<Vec<VpcService>> {
        let mut services = self
            .indexed("account-services", account_id, "services")
            .await?
            .iter()
            .map(decode::<VpcService>)
            .collect::<StoreResult<Vec<_>>>()?;
        services.retain(|s| s.account_id == account_id);
        services.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(services)
    }

    async fn replace_service(&self, service: &VpcService) -> StoreResult<bool> {
        let key = self.key("services", &[&service.id]);
        let body = encode(service)?;
        for _ in 0..CAS_ATTEMPTS {
            let Some(kv) = self.get(key.clone()).await? else {
                return Ok(false);
            };
            let old: VpcService = decode(&kv)?;
            if old.account_id != service.account_id {
                return Ok(false);
            }
            let mut ops = vec![TxnOp::put(key.clone(), body.clone(), None)];
            if old.host.tunnel_id() != service.host.tunnel_id() {
                ops.push(TxnOp::delete(
                    self.key("tunnel-services", &[old.host.tunnel_id(), &service.id]),
                    None,
                ));
                ops.push(TxnOp::put(
                    self.key("tunnel-services", &[service.host.tunnel_id(), &service.id]),
                    "",
                    None,
                ));
            }
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then(ops),
                )
                .await?;
            if resp.succeeded() {
                self.publish(Change::Service(service.id.clone()));
                return Ok(true);
            }
        }
        Err(Self::contention("replacing a service"))
    }

    async fn delete_service(&self, account_id: &str, service_id: &str) -> StoreResult<bool> {
        let key = self.key("services", &[service_id]);
        // Set once the delete was sent more than once: a record found gone
        // afterwards may have been deleted by this call.
        let mut maybe_deleted = false;
        for _ in 0..CAS_ATTEMPTS {
            let Some(kv) = self.get(key.clone()).await? else {
                if maybe_deleted {
                    self.publish(Change::Service(service_id.to_owned()));
                }
                return Ok(maybe_deleted);
            };
            let old: VpcService = decode(&kv)?;
            if old.account_id != account_id {
                return Ok(false);
            }
            let (resp, retried) = self
                .txn_retried(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([
                            TxnOp::delete(key.clone(), None),
                            TxnOp::delete(
                                self.key("account-services", &[account_id, service_id]),
                                None,
                            ),
                            TxnOp::delete(
                                self.key("tunnel-services", &[old.host.tunnel_id(), service_id]),
                                None,
                            ),
                        ]),
                )
                .await?;
            maybe_deleted |= retried;
            if resp.succeeded() {
                self.publish(Change::Service(service_id.to_owned()));
                return Ok(true);
            }
        }
        Err(Self::contention("deleting a service"))
    }

    async fn services_using_tunnel(&self, tunnel_id: &str) -> StoreResult<usize> {
        let prefix = self.key("tunnel-services", &[tunnel_id, ""]);
        let resp = self
            .range(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?;
        Ok(resp.count().max(0) as usize)
    }

    async fn put_node(&self, node: &NodeRecord, lease: Duration) -> StoreResult<()> {
        let ttl = lease_secs(lease);
        let lease_key = format!("node:{}", node.name);
        let held = self
            .inner
            .leases
            .lock()
            .ok()
            .and_then(|l| l.get(&lease_key).copied());
        let body = encode(node)?;
        if let Some(h) = held
            && h.ttl == ttl
            && self.keep_alive(h.id).await?
        {
            // The record may have moved (a new address): rewrite it under the
            // lease it already has.
            self.put_leased(self.key("nodes", &[&node.name]), body, h.id)
                .await?;
            return Ok(());
        }
        let granted = self
            .call(|c| async move { c.lease_client().grant(ttl, None).await })
            .await?;
        let id = granted.id();
        let written = self
            .put_leased(self.key("nodes", &[&node.name]), body, id)
            .await;
        if let Err(e) = written {
            self.revoke(id).await;
            return Err(e);
        }
        if let Ok(mut l) = self.inner.leases.lock() {
            l.insert(lease_key, HeldLease { id, ttl });
        }
        if let Some(old) = held
            && old.id != id
        {
            self.revoke(old.id).await;
        }
        Ok(())
    }

    async fn remove_node(&self, name: &str) -> StoreResult<()> {
        let held = self
            .inner
            .leases
            .lock()
            .ok()
            .and_then(|mut l| l.remove(&format!("node:{name}")));
        let key = self.key("nodes", &[name]);
        self.call(|c| {
            let key = key.clone();
            async move { c.kv_client().delete(key, None).await }
        })
        .await?;
        if let Some(h) = held {
            self.revoke(h.id).await;
        }
        Ok(())
    }

    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        let kvs = self.scan(self.key("nodes", &[""]), false).await?;
        kvs.iter().map(decode::<NodeRecord>).collect()
    }

    async fn create_api_token(
        &self,
        account_id: &str,
        name: &str,
        hash: [u8; 32],
    ) -> StoreResult<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let key = self.key("tokens", &[&hex::encode(hash)]);
        let body = encode(&TokenDoc {
            id: id.clone(),
            account_id: account_id.to_owned(),
            name: name.to_owned(),
            created_at: rfc3339(SystemTime::now()),
        })?;
        let (resp, retried) = self
            .txn_retried(
                Txn::new()
                    .when([
                        self.account_exists(account_id),
                        Compare::version(key.clone(), CompareOp::Equal, 0),
                    ])
                    .and_then([TxnOp::put(key.clone(), body.clone(), None)])
                    .or_else([
                        TxnOp::get(self.key("accounts", &[account_id]), None),
                        TxnOp::get(key, None),
                    ]),
            )
            .await?;
        // Sent more than once and holding this very value (fresh id): an
        // earlier attempt of this call created it.
        if !(resp.succeeded() || retried && holds(&resp, 1, &body)) {
            if txn_get(&resp, 0).is_none() {
                return Err(StoreError::NotFound("account"));
            }
            return Err(StoreError::Backend(
                "an API token with that hash already exists".into(),
            ));
        }
        Ok(id)
    }

    async fn account_for_token(&self, hash: [u8; 32]) -> StoreResult<Option<String>> {
        let Some(kv) = self.get(self.key("tokens", &[&hex::encode(hash)])).await? else {
            return Ok(None);
        };
        Ok(Some(decode::<TokenDoc>(&kv)?.account_id))
    }

    async fn put_script(
        &self,
        script: &ScriptRecord,
        expected: Option<&ScriptRecord>,
    ) -> StoreResult<bool> {
        let key = self.key("scripts", &[&script.name]);
        let body = encode(script)?;
        let new: BTreeSet<&str> = script.services.iter().map(String::as_str).collect();
        let mut maybe_written = false;
        for _ in 0..CAS_ATTEMPTS {
            let current = self.get(key.clone()).await?;
            if maybe_written
                && current
                    .as_ref()
                    .is_some_and(|kv| kv.value() == body.as_bytes())
            {
                // Exactly this record, times included, after a write sent
                // more than once: an earlier attempt of this call wrote it.
                self.publish(Change::Script(script.name.clone()));
                return Ok(true);
            }
            let (revision, old) = match &current {
                Some(kv) => (kv.mod_revision(), Some(decode::<ScriptRecord>(kv)?)),
                None => (0, None),
            };
            if old.as_ref() != expected {
                return Ok(false);
            }
            let mut ops = vec![TxnOp::put(key.clone(), body.clone(), None)];
            if let Some(old) = &old {
                let gone: BTreeSet<&str> = old
                    .services
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !new.contains(s))
                    .collect();
                for s in gone {
                    ops.push(TxnOp::delete(
                        self.key("service-scripts", &[s, &script.name]),
                        None,
                    ));
                }
            }
            for s in &new {
                ops.push(TxnOp::put(
                    self.key("service-scripts", &[s, &script.name]),
                    "",
                    None,
                ));
            }
            let (resp, retried) = self
                .txn_retried(
                    Txn::new()
                        // Unchanged since read (0: still absent).
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            revision,
                        )])
                        .and_then(ops),
                )
                .await?;
            maybe_written |= retried;
            if resp.succeeded() {
                self.publish(Change::Script(script.name.clone()));
                return Ok(true);
            }
            // Another write got in between: look again (it may have written
            // the same record, or one equal to `expected` again).
        }
        Err(Self::contention("storing a script"))
    }

    async fn get_script(&self, name: &str) -> StoreResult<Option<ScriptRecord>> {
        self.get(self.key("scripts", &[name]))
            .await?
            .map(|kv| decode(&kv))
            .transpose()
    }

    async fn list_scripts(&self) -> StoreResult<Vec<ScriptRecord>> {
        let kvs = self.scan(self.key("scripts", &[""]), false).await?;
        let mut scripts = kvs
            .iter()
            .map(decode::<ScriptRecord>)
            .collect::<StoreResult<Vec<_>>>()?;
        scripts.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(scripts)
    }

    async fn delete_script(&self, account_id: &str, name: &str) -> StoreResult<bool> {
        let key = self.key("scripts", &[name]);
        // Set once the delete was sent more than once: a record found gone
        // afterwards may have been deleted by this call.
        let mut maybe_deleted = false;
        for _ in 0..CAS_ATTEMPTS {
            let Some(kv) = self.get(key.clone()).await? else {
                if maybe_deleted {
                    self.publish(Change::Script(name.to_owned()));
                }
                return Ok(maybe_deleted);
            };
            let old: ScriptRecord = decode(&kv)?;
            if old.account_id != account_id {
                return Ok(false);
            }
            let bound: BTreeSet<&str> = old.services.iter().map(String::as_str).collect();
            let mut ops = vec![TxnOp::delete(key.clone(), None)];
            for s in bound {
                ops.push(TxnOp::delete(self.key("service-scripts", &[s, name]), None));
            }
            let (resp, retried) = self
                .txn_retried(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then(ops),
                )
                .await?;
            maybe_deleted |= retried;
            if resp.succeeded() {
                self.publish(Change::Script(name.to_owned()));
                return Ok(true);
            }
        }
        Err(Self::contention("deleting a script"))
    }

    async fn scripts_binding(&self, service_id: &str) -> StoreResult<Vec<String>> {
        let mut names = self
            .scan_ids(self.key("service-scripts", &[service_id, ""]))
            .await?;
        names.sort();
        Ok(names)
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    async fn cluster_ca(&self) -> StoreResult<Option<CaRecord>> {
        self.get(self.key("cluster-ca", &[]))
            .await?
            .map(|kv| decode(&kv))
            .transpose()
    }

    async fn init_cluster_ca(&self, ca: &CaRecord) -> StoreResult<CaRecord> {
        let key = self.key("cluster-ca", &[]);
        let resp = self
            .txn(
                Txn::new()
                    // Created only while absent: the first node wins.
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), encode(ca)?, None)])
                    .or_else([TxnOp::get(key.clone(), None)]),
            )
            .await?;
        if resp.succeeded() {
            return Ok(ca.clone());
        }
        let kv = txn_get(&resp, 0).ok_or_else(|| {
            StoreError::Backend(format!(
                "etcd key {key} was neither absent nor readable in one transaction"
            ))
        })?;
        decode(&kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts_escape_and_unescape() {
        for s in ["plain", "a/b", "50%", "%2F/", "ünï/cödé", ""] {
            let e = esc(s);
            assert!(!e.contains('/'), "{e}");
            assert_eq!(unesc(&e).as_deref(), Some(s));
        }
        assert_eq!(unesc("%zz"), None);
        assert_eq!(unesc("%2"), None);
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/w/"), b"/w0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn leases_round_up_to_whole_seconds() {
        assert_eq!(lease_secs(Duration::from_millis(1)), 1);
        assert_eq!(lease_secs(Duration::from_millis(1000)), 1);
        assert_eq!(lease_secs(Duration::from_millis(1001)), 2);
        assert_eq!(lease_secs(Duration::from_secs(30)), 30);
    }
}
