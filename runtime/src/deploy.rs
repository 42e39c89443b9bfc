//! Worker scripts: validating an upload (metadata + modules), verifying its
//! bindings against the store's VPC services, building JS with ComponentizeJS,
//! compiling, and committing the result: the bundle into the content-addressed
//! [`BlobDir`], the script's record into the [`Store`] (the one source of
//! truth, shared by every node and process), then the worker into this node's
//! [`Router`].
//!
//! Every node follows the store's change feed: a script deployed, redeployed
//! or deleted anywhere is loaded or removed here too. At start the node serves
//! what the store holds, without rebuilding or recompiling; a bundle that fails
//! to load is logged and its record (so its name and routes) stays its
//! owner's. A bundle this node does not have is fetched from its peers
//! ([`ScriptsConfig::peers`]) in the background, checked against its hash,
//! and retried with backoff until a peer has it (meanwhile an older version
//! stays served); the compiled code for it is taken from a peer too when one
//! with the same engine has it, so the worker is served without compiling.
//! A crash at any point of a deploy leaves the old or the new version in the
//! store, never none: the bundle is written (atomically) before the record
//! that names it.
//!
//! Uploads build and compile concurrently; only the short commit step (the
//! final conflict checks, storing, swapping into the router) is serialized
//! per node, and the store's compare-and-swap on the whole stored record read
//! at commit catches a create, delete, redeploy or secret change another node
//! commits meanwhile (the tag alone stays the same across versions). Two
//! redeploys of one worker building at once on two nodes end last writer
//! wins, as on Workers; secrets changed during a build are kept. Route
//! patterns are compared in canonical form, and no two accounts may hold
//! routes whose hosts overlap: the first account to claim a host keeps it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use warren_api::scripts::{
    MAX_SECRETS, SecretInfo, SecretRequest, SecretType, check_secret_name, check_secret_text,
};
use warren_store::blobs::{BlobDir, BlobError};
use warren_store::peers::PeerContent;
use warren_store::sealing::{Sealer, worker_secret_context};
use warren_store::{Change, ScriptRecord, Store, StoreError};

pub use warren_api::scripts::{BindingSpec, LimitsSpec, ScriptInfo, ScriptMetadata};

use crate::engine::CompiledPart;
use crate::engine::RuntimeEngine;
use crate::js::{JsBuildError, JsBuilder};
use crate::limits::Limits;
use crate::logs::{LogHub, Subscription, Unsubscribed, WorkerKey};
use crate::outbound::BindingClient;
use crate::routes::RoutePattern;
use crate::serve::Router;
use crate::worker::{Secrets, Worker, WorkerConfig};

/// Sealed secrets by name, as a [`ScriptRecord`] keeps them.
type Sealed = BTreeMap<String, Vec<u8>>;

/// One uploaded module file.
#[derive(Debug, Clone)]
pub struct Module {
    /// Its part name: a relative path (`worker.js`, `lib/util.js`).
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A field is wrong (`pointer` is a JSON pointer into the metadata, or the part name).
    #[error("{pointer}: {message}")]
    Invalid {
        /// Where.
        pointer: String,
        /// What is wrong.
        message: String,
    },
    /// A binding names a service that is not in the account.
    #[error("binding {binding}: {message}")]
    Binding {
        /// The binding's name.
        binding: String,
        /// Why.
        message: String,
    },
    /// The name, or a route's host, belongs to another account's worker, or
    /// the route to another worker of the account.
    #[error("{0}")]
    Conflict(String),
    /// The code did not build or load (message names file and line).
    #[error("{0}")]
    Script(String),
    /// The store cannot be reached right now; nothing was changed.
    #[error("{0}")]
    Unavailable(String),
    /// Storage, tooling or compilation failed.
    #[error("{0}")]
    Internal(String),
}

fn invalid(pointer: &str, message: impl Into<String>) -> DeployError {
    DeployError::Invalid {
        pointer: pointer.to_owned(),
        message: message.into(),
    }
}

fn internal(e: impl std::fmt::Display) -> DeployError {
    DeployError::Internal(e.to_string())
}

/// Worker names: lowercase letters, digits and dashes, 1–63 long, as on Workers.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_binding_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn valid_module_path(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

fn now() -> String {
    warren_store::rfc3339(std::time::SystemTime::now())
}

/// What `Scripts` needs to build and run workers.
pub struct ScriptsConfig {
    /// Where scripts' records live (and VPC services are looked up).
    pub store: Arc<dyn Store>,
    /// Where bundles live.
    pub blobs: BlobDir,
    /// A directory of scripts stored by older versions
    /// (`<dir>/<name>/script.json` + `worker.wasm`), moved into the store at
    /// start.
    pub legacy_dir: Option<PathBuf>,
    /// At start, remove bundles no record names once they are an hour old.
    /// Only the process that commits deploys to this bundle directory may:
    /// another one could remove a bundle a deploy is committing.
    pub tidy_bundles: bool,
    /// JS build tooling.
    pub js: JsBuilder,
    /// Where binding calls go.
    pub client: Option<Arc<dyn BindingClient>>,
    /// Largest `limits.cpu_ms` an upload may ask for (see [`DEFAULT_MAX_CPU_MS`]).
    pub max_cpu_ms: u64,
    /// The cluster's other nodes, asked for a bundle this node lacks (checked
    /// against its hash before it is stored) and for its compiled code
    /// (native code: peers are authenticated cluster nodes, trusted like the
    /// store). `None`: a missing bundle is logged and the worker not served.
    pub peers: Option<Arc<dyn PeerContent>>,
    /// Seals worker secrets before they are stored and opens them when a
    /// worker is loaded (the node's `sealing.key`; nodes serving the same
    /// workers need the same key).
    pub sealer: Arc<Sealer>,
}

/// What became of a secret delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretDeleted {
    /// The secret was deleted (a new version of the worker, without it).
    Deleted,
    /// The account has no worker of that name.
    NoScript,
    /// The worker has no secret of that name.
    NoSecret,
}

/// First wait before asking the peers again for a bundle none could give.
const FETCH_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(250);
/// Longest wait between two such attempts.
const FETCH_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest one fetch from the peers may take before it counts as failed.
const FETCH_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How long a new tail waits for the node's other runtime processes to
/// follow it before it is live anyway.
pub const RELAY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Default of [`ScriptsConfig::max_cpu_ms`]: 30 s, the most Workers allows.
pub const DEFAULT_MAX_CPU_MS: u64 = 30_000;

/// Other processes serving this node's workers from the same store (its
/// runtime processes): a change committed through this one returns once
/// they serve it too, so a request right after a deploy never meets the
/// old version.
#[async_trait::async_trait]
pub trait Replicas: Send + Sync {
    /// Returns once every replica serves what the store holds for worker
    /// `name` (or gave up waiting for one, logged).
    async fn sync(&self, name: &str);
}

/// The deployed scripts of this node.
pub struct Scripts {
    engine: Arc<RuntimeEngine>,
    router: Arc<Router>,
    logs: Arc<LogHub>,
    config: ScriptsConfig,
    infos: Mutex<HashMap<String, ScriptInfo>>,
    /// The sealed secrets of each served worker, as its record had them (a
    /// secret change is a new version even within the same second).
    sealed: Mutex<HashMap<String, Sealed>>,
    /// Serializes the commit step of uploads and deletes (never a build).
    committing: tokio::sync::Mutex<()>,
    /// Builds and compiles running at once: one per core, so uploads (each
    /// build may use 2 GiB and a core) queue instead of swamping the node.
    building: tokio::sync::Semaphore,
    /// Scripts whose bundle is being fetched from peers: name → bundle hash.
    fetching: Mutex<HashMap<String, String>>,
    /// Brought in step after each change committed here.
    replicas: std::sync::OnceLock<Arc<dyn Replicas>>,
}

impl Scripts {
    /// Scripts served by `router`, logging to `logs`.
    pub fn new(
        engine: Arc<RuntimeEngine>,
        router: Arc<Router>,
        logs: Arc<LogHub>,
        config: ScriptsConfig,
    ) -> Arc<Self> {
        Arc::new(Scripts {
            engine,
            router,
            logs,
            config,
            infos: Mutex::new(HashMap::new()),
            sealed: Mutex::new(HashMap::new()),
            committing: tokio::sync::Mutex::new(()),
            building: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            fetching: Mutex::new(HashMap::new()),
            replicas: std::sync::OnceLock::new(),
        })
    }

    /// Has changes committed here wait for `replicas` (once; later calls
    /// are ignored).
    pub fn set_replicas(&self, replicas: Arc<dyn Replicas>) {
        let _ = self.replicas.set(replicas);
    }

    /// Waits for the replicas, if any, to serve what the store holds for `name`.
    async fn sync_replicas(&self, name: &str) {
        if let Some(r) = self.replicas.get() {
            r.sync(name).await;
        }
    }

    /// Brings worker `name` here in line with its record in the store now
    /// (what following the store does within moments).
    pub async fn sync(self: &Arc<Self>, name: &str) {
        self.reconcile(name).await
    }

    /// The router serving these workers.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The live-log hub of these workers.
    pub fn logs(&self) -> &Arc<LogHub> {
        &self.logs
    }

    /// Follows the live logs of `account_id`'s worker `name`; refused when
    /// the account has no such worker or the worker has all the tails it may
    /// have ([`crate::logs::MAX_TAILS_PER_WORKER`]). The subscription ends when the
    /// worker is deleted.
    /// It is returned once the node's other runtime processes send its
    /// events too (or after [`RELAY_WAIT`], with a warning), so a request
    /// served after it is never missed.
    pub async fn tail(&self, account_id: &str, name: &str) -> Result<Subscription, Unsubscribed> {
        let info = self.get(account_id, name).ok_or(Unsubscribed::NoWorker)?;
        let sub = self.logs.subscribe(&log_key(&info))?;
        if tokio::time::timeout(RELAY_WAIT, self.logs.relayed(sub.number()))
            .await
            .is_err()
        {
            tracing::warn!(
                worker = %name,
                "a runtime process did not follow a new tail in time; it may miss events"
            );
        }
        Ok(sub)
    }

    fn worker(
        &self,
        info: &ScriptInfo,
        routes: Vec<RoutePattern>,
        wasm: Vec<u8>,
    ) -> Result<Worker, DeployError> {
        let mut limits = Limits::default();
        if let Some(cpu) = info.metadata.limits.cpu_ms {
            // A stored script keeps to a maximum lowered since its upload.
            limits.cpu_ms = cpu.min(self.config.max_cpu_ms);
        }
        let mut bindings = HashMap::new();
        let mut env = Vec::new();
        for b in &info.metadata.bindings {
            match b {
                BindingSpec::VpcService { name, service_id } => {
                    bindings.insert(name.clone(), service_id.clone());
                }
                BindingSpec::PlainText { name, text } => env.push((name.clone(), text.clone())),
                // Never stored in the metadata: taken out at upload.
                BindingSpec::SecretText { .. } => {}
                // A Wasm worker reads a JSON var as its JSON text.
                BindingSpec::Json { name, json } => env.push((name.clone(), json.to_string())),
            }
        }
        let config = WorkerConfig {
            name: info.id.clone(),
            account_id: info.account_id.clone(),
            tag: info.tag.clone(),
            bindings,
            env,
            limits,
            routes,
            js: !info.metadata.main_module.ends_with(".wasm"),
            ..Default::default()
        };
        Worker::new(
            self.engine.clone(),
            config,
            &wasm,
            self.config.client.clone(),
        )
        .map(|w| w.with_logs(self.logs.clone()))
        .map_err(|e| DeployError::Script(format!("the component does not load: {e:#}")))
    }

    /// Serves what the store holds (at start), after moving scripts stored
    /// by older versions into it: no JS rebuild, no recompilation when the
    /// compiled-code cache has the component. Returns how many workers load.
    pub async fn restore(self: &Arc<Self>) -> anyhow::Result<usize> {
        if let Some(dir) = self.config.legacy_dir.clone() {
            self.import_legacy(&dir).await?;
        }
        let mut records = self.config.store.list_scripts().await?;
        // Oldest first, so a host claimed by two accounts (stored before
        // routes were checked across accounts) stays with the first.
        records.sort_by(|a, b| (&a.created_on, &a.name).cmp(&(&b.created_on, &b.name)));
        let records_bundles: HashSet<String> = records.iter().map(|r| r.bundle.clone()).collect();
        let _one = self.committing.lock().await;
        let mut n = 0;
        for record in records {
            if self.load(record).await {
                n += 1;
            }
        }
        // Bundles no record names (a deploy that crashed between the two
        // writes, versions replaced since) go once they are an hour old.
        if !self.config.tidy_bundles {
            return Ok(n);
        }
        let keep: HashSet<String> = records_bundles;
        let blobs = self.config.blobs.clone();
        match tokio::task::spawn_blocking(move || blobs.retain(&keep)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "unused bundles removed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot tidy the bundle directory"),
            Err(e) => tracing::warn!(error = %e, "cannot tidy the bundle directory"),
        }
        Ok(n)
    }

    /// Keeps this node in step with the store: a script deployed, redeployed
    /// or deleted through any node or process is loaded or removed here.
    /// Runs until the store's change feed closes or `self` is dropped.
    pub fn follow(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let mut changes = self.config.store.watch();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let change = changes.recv().await;
                let Some(this) = weak.upgrade() else { return };
                match change {
                    Ok(Change::Script(name)) => this.reconcile(&name).await,
                    Ok(Change::All) | Err(RecvError::Lagged(_)) => this.reconcile_all().await,
                    Ok(_) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// Brings worker `name` here in line with its record in the store.
    async fn reconcile(self: &Arc<Self>, name: &str) {
        // Read under the lock, so a record read earlier never replaces a
        // newer version committed meanwhile.
        let _one = self.committing.lock().await;
        let record = match self.config.store.get_script(name).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(worker = name, error = %e, "cannot read a changed script");
                return;
            }
        };
        match record {
            None => self.unload(name),
            Some(record) => {
                let current = self.infos.lock().ok().and_then(|i| i.get(name).cloned());
                let sealed = self.sealed.lock().ok().and_then(|s| s.get(name).cloned());
                if current.is_some_and(|c| {
                    c.etag == record.bundle
                        && c.tag == record.tag
                        && c.modified_on == record.modified_on
                }) && sealed.as_ref() == Some(&record.secrets)
                {
                    return;
                }
                self.load(record).await;
            }
        }
    }

    /// Brings every worker here in line with the store (after missed changes).
    async fn reconcile_all(self: &Arc<Self>) {
        let records = match self.config.store.list_scripts().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list scripts after missed changes");
                return;
            }
        };
        let names: HashSet<String> = records.iter().map(|r| r.name.clone()).collect();
        let gone: Vec<String> = self
            .infos
            .lock()
            .map(|i| i.keys().filter(|n| !names.contains(*n)).cloned().collect())
            .unwrap_or_default();
        {
            let _one = self.committing.lock().await;
            for name in gone {
                self.unload(&name);
            }
        }
        for r in records {
            self.reconcile(&r.name).await;
        }
    }

    /// Loads `record`'s bundle and serves it; `false` (logged) when it cannot
    /// be. Called under `committing`.
    async fn load(self: &Arc<Self>, record: ScriptRecord) -> bool {
        let name = record.name.clone();
        let info = match info_of(&record) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(worker = %name, error = %e, "stored script unreadable; not served");
                return false;
            }
        };
        let secrets = match self.open_secrets(&record) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(worker = %name, error = %e, "stored script's secrets cannot be opened; not served");
                return false;
            }
        };
        let wasm = match self.config.blobs.get(&record.bundle) {
            Ok(w) => w,
            Err(e @ (BlobError::Missing(_) | BlobError::Corrupt(_)))
                if self.config.peers.is_some() =>
            {
                tracing::info!(worker = %name, error = %e, "fetching the bundle from peers");
                self.fetch_later(&name, &record.bundle);
                return false;
            }
            Err(e) => {
                tracing::error!(worker = %name, error = %e, "stored script's bundle cannot be read; not served");
                return false;
            }
        };
        let mut routes = Vec::new();
        let others: Vec<ScriptInfo> = self
            .infos
            .lock()
            .map(|i| i.values().cloned().collect())
            .unwrap_or_default();
        for r in parse_routes(&info.metadata.routes).unwrap_or_default() {
            match route_conflict(&others, &info.account_id, &info.id, &r) {
                Some(e) => tracing::error!(worker = %name, error = %e, "stored route not served"),
                None => routes.push(r),
            }
        }
        let this = self.clone();
        let info2 = info.clone();
        let worker = tokio::task::spawn_blocking(move || this.worker(&info2, routes, wasm)).await;
        match worker {
            Ok(Ok(w)) => {
                self.install(info, w.with_secrets(secrets), record.secrets);
                true
            }
            Ok(Err(e)) => {
                tracing::error!(worker = %name, error = %e, "stored script failed to load");
                false
            }
            Err(e) => {
                tracing::error!(worker = %name, error = %e, "stored script failed to load");
                false
            }
        }
    }

    /// Fetches bundle `hash` of worker `name` from the peers in the
    /// background, retrying with backoff while the store still names it,
    /// then loads the worker. One task per worker and bundle.
    fn fetch_later(self: &Arc<Self>, name: &str, hash: &str) {
        let Ok(mut fetching) = self.fetching.lock() else {
            return;
        };
        if fetching.get(name).is_some_and(|h| h == hash) {
            return;
        }
        fetching.insert(name.to_owned(), hash.to_owned());
        drop(fetching);
        let weak = Arc::downgrade(self);
        let (name, hash) = (name.to_owned(), hash.to_owned());
        tokio::spawn(async move {
            let mut backoff = FETCH_BACKOFF_MIN;
            let mut attempt = 0u32;
            loop {
                let Some(this) = weak.upgrade() else { return };
                attempt += 1;
                match this.config.store.get_script(&name).await {
                    Ok(Some(r)) if r.bundle == hash => match this.fetch_bundle(&hash).await {
                        Ok(()) => {
                            tracing::info!(worker = %name, bundle = %hash, attempt, "bundle fetched from a peer");
                            let js = serde_json::from_str::<ScriptMetadata>(&r.metadata)
                                .is_ok_and(|m| !m.main_module.ends_with(".wasm"));
                            this.fetch_compiled(&hash, js).await;
                            this.done_fetching(&name, &hash);
                            this.reconcile(&name).await;
                            return;
                        }
                        Err(e) => tracing::warn!(
                            worker = %name, bundle = %hash, attempt, retry_in = ?backoff, error = %e,
                            "cannot fetch the bundle from peers; not served yet"
                        ),
                    },
                    // Deleted or redeployed since: whatever replaced it is
                    // loaded by its own change.
                    Ok(_) => {
                        this.done_fetching(&name, &hash);
                        return;
                    }
                    Err(e) => tracing::warn!(
                        worker = %name, retry_in = ?backoff, error = %e,
                        "cannot read the script whose bundle is missing"
                    ),
                }
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(FETCH_BACKOFF_MAX);
            }
        });
    }

    fn done_fetching(&self, name: &str, hash: &str) {
        if let Ok(mut fetching) = self.fetching.lock()
            && fetching.get(name).is_some_and(|h| h == hash)
        {
            fetching.remove(name);
        }
    }

    /// One attempt to get bundle `hash` from a peer, verified and stored.
    async fn fetch_bundle(&self, hash: &str) -> Result<(), String> {
        let blobs = self.config.blobs.clone();
        let have = hash.to_owned();
        // Stored meanwhile (a deploy through this node, a shared directory)?
        if tokio::task::spawn_blocking(move || blobs.get(&have).is_ok())
            .await
            .unwrap_or(false)
        {
            return Ok(());
        }
        let Some(peers) = self.config.peers.clone() else {
            return Err("no peers configured".into());
        };
        let mut dest = self
            .config
            .blobs
            .writer(hash)
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(FETCH_LIMIT, peers.fetch_bundle(hash, &mut dest)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err("no peer has it".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no complete answer within {FETCH_LIMIT:?}")),
        }
        // A peer's bytes are stored only when they hash to `hash`.
        dest.commit().await.map_err(|e| e.to_string())
    }

    /// Takes the compiled code of bundle `hash` from a peer whose engine has
    /// this one's fingerprint, unless it is cached here: for a JS worker
    /// (`js`) that splits, the template all JS workers share and its
    /// snapshot module; else the bundle's own file. When no peer has a file,
    /// or it does not load, the worker is compiled here as usual.
    async fn fetch_compiled(&self, hash: &str, js: bool) {
        let Some(peers) = self.config.peers.clone() else {
            return;
        };
        let split = match js {
            true => {
                let (blobs, engine, bundle) = (
                    self.config.blobs.clone(),
                    self.engine.clone(),
                    hash.to_owned(),
                );
                tokio::task::spawn_blocking(move || {
                    blobs
                        .get(&bundle)
                        .ok()
                        .and_then(|wasm| engine.js_compiled_parts(&wasm))
                })
                .await
                .ok()
                .flatten()
            }
            false => None,
        };
        let parts = match split {
            Some(parts) => parts.to_vec(),
            None => vec![CompiledPart {
                key: self.engine.compiled_key(hash),
                module: false,
            }],
        };
        for part in parts {
            if self.engine.has_compiled_key(&part.key) {
                continue;
            }
            let fetched = async {
                let mut dest = self
                    .engine
                    .compiled_dir()
                    .writer(&part.key)
                    .await
                    .map_err(|e| e.to_string())?;
                match tokio::time::timeout(FETCH_LIMIT, peers.fetch_compiled(&part.key, &mut dest))
                    .await
                {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => return Ok(false),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err(format!("no complete answer within {FETCH_LIMIT:?}")),
                }
                let staged = dest.finish().await.map_err(|e| e.to_string())?;
                let engine = self.engine.clone();
                let path = staged.path().to_owned();
                let module = part.module;
                tokio::task::spawn_blocking(move || engine.check_compiled_part(&path, module))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{e:#}"))?;
                staged.persist().await.map_err(|e| e.to_string())?;
                Ok::<bool, String>(true)
            };
            let key = &part.key;
            match fetched.await {
                Ok(true) => tracing::info!(bundle = %hash, %key, "compiled code taken from a peer"),
                Ok(false) => {
                    tracing::info!(bundle = %hash, %key, "no peer has compiled code for this engine; compiling here")
                }
                Err(e) => {
                    tracing::warn!(bundle = %hash, %key, error = %e, "compiled code from peers unusable; compiling here")
                }
            }
        }
    }

    /// Opens the sealed secrets of `record` (an error names the secret,
    /// never a value).
    fn open_secrets(&self, record: &ScriptRecord) -> Result<Secrets, String> {
        let mut out = Vec::with_capacity(record.secrets.len());
        for (name, sealed) in &record.secrets {
            let context = worker_secret_context(&record.account_id, &record.tag, name);
            let plain = self.config.sealer.open(&context, sealed).ok_or_else(|| {
                format!("secret {name} does not open with this node's sealing key (nodes serving one worker need the same sealing.key)")
            })?;
            let text =
                String::from_utf8(plain).map_err(|_| format!("secret {name} is not UTF-8"))?;
            out.push((name.clone(), text));
        }
        Ok(Secrets::new(out))
    }

    /// Seals `text` as secret `name` of the worker with `account_id` and `tag`.
    fn seal(
        &self,
        account_id: &str,
        tag: &str,
        name: &str,
        text: &str,
    ) -> Result<Vec<u8>, DeployError> {
        self.config
            .sealer
            .seal(
                &worker_secret_context(account_id, tag, name),
                text.as_bytes(),
            )
            .ok_or_else(|| DeployError::Internal(format!("cannot seal secret {name}")))
    }

    /// Serves `worker` as `info` on this node (replacing an older version),
    /// whose record has the `sealed` secrets.
    fn install(&self, info: ScriptInfo, worker: Worker, sealed: Sealed) {
        let replaced = self
            .infos
            .lock()
            .ok()
            .and_then(|i| i.get(&info.id).cloned());
        if let Some(old) = replaced.filter(|o| o.tag != info.tag) {
            // Deleted and created again elsewhere: the old identity's tails end.
            self.logs.close(&log_key(&old));
        }
        self.logs.open(&log_key(&info));
        self.router.deploy(worker);
        tracing::info!(worker = %info.id, etag = %info.etag, "worker deployed");
        if let Ok(mut s) = self.sealed.lock() {
            s.insert(info.id.clone(), sealed);
        }
        if let Ok(mut i) = self.infos.lock() {
            i.insert(info.id.clone(), info);
        }
    }

    /// Stops serving `name` on this node.
    fn unload(&self, name: &str) {
        let Some(info) = self.infos.lock().ok().and_then(|mut i| i.remove(name)) else {
            return;
        };
        self.router.remove(name);
        if let Ok(mut s) = self.sealed.lock() {
            s.remove(name);
        }
        self.logs.close(&log_key(&info));
        tracing::info!(worker = name, "worker removed");
    }

    /// Moves `<dir>/<name>/{script.json,worker.wasm}` (older versions' way of
    /// storing scripts) into the store and the bundle directory.
    async fn import_legacy(&self, dir: &Path) -> anyhow::Result<()> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if !valid_name(&name) {
                continue;
            }
            let loaded = (|| -> anyhow::Result<(ScriptInfo, Vec<u8>)> {
                let info: ScriptInfo =
                    serde_json::from_slice(&std::fs::read(path.join("script.json"))?)?;
                Ok((info, std::fs::read(path.join("worker.wasm"))?))
            })();
            let (mut info, wasm) = match loaded {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(script = %name, error = %e, "old stored script unreadable; left in place");
                    continue;
                }
            };
            if info.tag.is_empty() {
                info.tag = new_tag();
            }
            info.etag = self.config.blobs.put(&wasm)?;
            let record = record_of(&info, Sealed::new())?;
            if self.config.store.get_script(&name).await?.is_none() {
                self.config.store.put_script(&record, None).await?;
            }
            std::fs::remove_dir_all(&path)?;
            tracing::info!(script = %name, "moved an old stored script into the store");
        }
        Ok(())
    }

    /// The script `name` of `account_id`, as this node serves it.
    pub fn get(&self, account_id: &str, name: &str) -> Option<ScriptInfo> {
        let i = self.infos.lock().ok()?;
        i.get(name).filter(|s| s.account_id == account_id).cloned()
    }

    /// The scripts of `account_id` this node serves.
    pub fn list(&self, account_id: &str) -> Vec<ScriptInfo> {
        let Ok(i) = self.infos.lock() else {
            return vec![];
        };
        let mut v: Vec<ScriptInfo> = i
            .values()
            .filter(|s| s.account_id == account_id)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Removes a script everywhere; `false` when the account has no such script.
    pub async fn delete(&self, account_id: &str, name: &str) -> Result<bool, DeployError> {
        let _one = self.committing.lock().await;
        if !self
            .config
            .store
            .delete_script(account_id, name)
            .await
            .map_err(store_error)?
        {
            return Ok(false);
        }
        self.unload(name);
        drop(_one);
        self.sync_replicas(name).await;
        Ok(true)
    }

    /// Validates, verifies, builds, stores and deploys an upload. Requests in
    /// flight finish on the version they started with. Builds run outside
    /// any lock; the conflict checks run before the build and again in the
    /// serialized commit step.
    pub async fn put(
        self: &Arc<Self>,
        account_id: &str,
        name: &str,
        metadata: ScriptMetadata,
        modules: Vec<Module>,
    ) -> Result<ScriptInfo, DeployError> {
        if !valid_name(name) {
            return Err(invalid(
                "/script_name",
                "use 1 to 63 lowercase letters, digits and dashes, not starting with a dash",
            ));
        }
        self.check(account_id, &metadata, &modules).await?;
        let routes = parse_routes(&metadata.routes)?;
        // Before the build, so a refused upload costs no build; again at commit.
        let previous = self.conflicts(account_id, name, &routes).await?;
        let keep = metadata.keep_bindings.iter().any(|t| t == "secret_text");
        // Checked on the metadata as uploaded, so pointers count its bindings.
        let no_secrets = Sealed::new();
        let current = previous.as_ref().map_or(&no_secrets, |(_, r)| &r.secrets);
        secrets_after(&metadata, &take_secrets(metadata.clone()).1, current, keep)?;
        let (metadata, uploaded) = take_secrets(metadata);
        let previous = previous.map(|(p, _)| p);
        let building = self.building.acquire().await.map_err(internal)?;
        let started = std::time::Instant::now();
        let wasm = self.build(name, &metadata, modules).await?;
        let built = started.elapsed();
        let t = now();
        let info = ScriptInfo {
            id: name.to_owned(),
            account_id: account_id.to_owned(),
            tag: previous.as_ref().map_or_else(new_tag, |p| p.tag.clone()),
            etag: crate::engine::content_hash(&wasm),
            created_on: previous
                .as_ref()
                .map_or_else(|| t.clone(), |p| p.created_on.clone()),
            modified_on: t,
            metadata,
        };
        let this = self.clone();
        let (info2, wasm2) = (info.clone(), wasm.clone());
        let worker = tokio::task::spawn_blocking(move || this.worker(&info2, routes, wasm2))
            .await
            .map_err(internal)??;
        let loaded = started.elapsed() - built;
        drop(building);
        let _one = self.committing.lock().await;
        let now_previous = self
            .conflicts(account_id, name, &worker.config().routes)
            .await?;
        if now_previous.as_ref().map(|(p, _)| &p.tag) != previous.as_ref().map(|p| &p.tag) {
            return Err(changed_while_building(name));
        }
        // The record this version replaces: stored only if it is still that
        // one, whichever node changed it meanwhile.
        let expected = now_previous.as_ref().map(|(_, r)| r.clone());
        // The secrets as they are now (a secret put meanwhile is kept),
        // with the upload's own sealed for this worker.
        let kept = now_previous.map(|(_, r)| r.secrets).unwrap_or_default();
        let names = secrets_after(&info.metadata, &uploaded, &kept, keep)?;
        let mut sealed = Sealed::new();
        let mut plain = Vec::with_capacity(names.len());
        for (secret, text) in &uploaded {
            sealed.insert(
                secret.clone(),
                self.seal(account_id, &info.tag, secret, text)?,
            );
            plain.push((secret.clone(), text.clone()));
        }
        if keep {
            let kept_record = ScriptRecord {
                secrets: kept
                    .into_iter()
                    .filter(|(k, _)| !sealed.contains_key(k))
                    .collect(),
                ..record_of(&info, Sealed::new()).map_err(internal)?
            };
            let opened = self
                .open_secrets(&kept_record)
                .map_err(DeployError::Internal)?;
            plain.extend(opened.into_pairs());
            sealed.extend(kept_record.secrets);
        }
        let worker = worker.with_secrets(Secrets::new(plain));
        // The bundle first: a crash between the two leaves the old record,
        // whose bundle is still there.
        let blobs = self.config.blobs.clone();
        tokio::task::spawn_blocking(move || blobs.put(&wasm))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        let record = record_of(&info, sealed).map_err(internal)?;
        if !self
            .config
            .store
            .put_script(&record, expected.as_ref())
            .await
            .map_err(store_error)?
        {
            return Err(changed_while_building(name));
        }
        self.install(info.clone(), worker, record.secrets);
        drop(_one);
        self.sync_replicas(name).await;
        // Where an upload's time went: the JS build (none when cached), loading
        // (compiling unless cached), then committing and every runtime process.
        tracing::info!(
            worker = name,
            build_ms = built.as_millis() as u64,
            load_ms = loaded.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "upload served"
        );
        Ok(info)
    }

    /// The stored record of `account_id`'s script `name`, if it has one.
    async fn record(
        &self,
        account_id: &str,
        name: &str,
    ) -> Result<Option<ScriptRecord>, DeployError> {
        Ok(self
            .config
            .store
            .get_script(name)
            .await
            .map_err(store_error)?
            .filter(|r| r.account_id == account_id))
    }

    /// The secrets of `account_id`'s script `name` (names only, sorted);
    /// `None` when the account has no such script.
    pub async fn secrets(
        &self,
        account_id: &str,
        name: &str,
    ) -> Result<Option<Vec<SecretInfo>>, DeployError> {
        Ok(self.record(account_id, name).await?.map(|r| {
            r.secrets
                .into_keys()
                .map(|name| SecretInfo {
                    name,
                    kind: SecretType::SecretText,
                })
                .collect()
        }))
    }

    /// Adds or replaces a secret of `account_id`'s script `name`: a new
    /// version of the worker (same bundle), stored with the secret sealed
    /// and served by every node. `None` when the account has no such script.
    pub async fn put_secret(
        self: &Arc<Self>,
        account_id: &str,
        name: &str,
        secret: &SecretRequest,
    ) -> Result<Option<SecretInfo>, DeployError> {
        secret
            .validate()
            .map_err(|e| invalid(&e.pointer, e.message))?;
        let _one = self.committing.lock().await;
        let Some(read) = self.record(account_id, name).await? else {
            return Ok(None);
        };
        let mut record = read.clone();
        let metadata: ScriptMetadata = serde_json::from_str(&record.metadata).map_err(internal)?;
        if let Some(b) = metadata.bindings.iter().find(|b| b.name() == secret.name) {
            return Err(invalid(
                "/name",
                format!(
                    "{} is already a binding of worker {name} ({}); a secret needs a name of its own",
                    secret.name,
                    binding_type(b)
                ),
            ));
        }
        if !record.secrets.contains_key(&secret.name) && record.secrets.len() >= MAX_SECRETS {
            return Err(invalid(
                "/name",
                format!(
                    "worker {name} has {MAX_SECRETS} secrets, the most a worker may have; delete one first"
                ),
            ));
        }
        let sealed = self.seal(account_id, &record.tag, &secret.name, &secret.text)?;
        record.secrets.insert(secret.name.clone(), sealed);
        self.commit_secrets(&read, record).await?;
        drop(_one);
        self.sync_replicas(name).await;
        Ok(Some(SecretInfo {
            name: secret.name.clone(),
            kind: SecretType::SecretText,
        }))
    }

    /// Deletes secret `secret` of `account_id`'s script `name` (a new
    /// version of the worker without it).
    pub async fn delete_secret(
        self: &Arc<Self>,
        account_id: &str,
        name: &str,
        secret: &str,
    ) -> Result<SecretDeleted, DeployError> {
        let _one = self.committing.lock().await;
        let Some(read) = self.record(account_id, name).await? else {
            return Ok(SecretDeleted::NoScript);
        };
        let mut record = read.clone();
        if record.secrets.remove(secret).is_none() {
            return Ok(SecretDeleted::NoSecret);
        }
        self.commit_secrets(&read, record).await?;
        drop(_one);
        self.sync_replicas(name).await;
        Ok(SecretDeleted::Deleted)
    }

    /// Stores `record` (`read` with changed secrets) as a new version, if
    /// the stored one is still `read`, and serves it here; every other node
    /// follows the change. Called under `committing`.
    async fn commit_secrets(
        self: &Arc<Self>,
        read: &ScriptRecord,
        mut record: ScriptRecord,
    ) -> Result<(), DeployError> {
        record.modified_on = now();
        if !self
            .config
            .store
            .put_script(&record, Some(read))
            .await
            .map_err(store_error)?
        {
            return Err(DeployError::Conflict(format!(
                "worker {} was changed meanwhile (deleted, redeployed or its secrets changed on another node); try again",
                record.name
            )));
        }
        self.load(record).await;
        Ok(())
    }

    /// Refuses `name` when another account's worker has it, and `routes`
    /// that conflict with any stored script's (see [`route_conflict`]).
    /// Returns the account's current version of the script, if any, with
    /// its sealed secrets.
    async fn conflicts(
        &self,
        account_id: &str,
        name: &str,
        routes: &[RoutePattern],
    ) -> Result<Option<(ScriptInfo, ScriptRecord)>, DeployError> {
        let stored = self
            .config
            .store
            .list_scripts()
            .await
            .map_err(store_error)?;
        let mut others = Vec::with_capacity(stored.len());
        let mut previous = None;
        for r in &stored {
            match info_of(r) {
                Ok(i) if i.id == name => previous = Some((i, r.clone())),
                Ok(i) => others.push(i),
                Err(e) => tracing::warn!(worker = %r.name, error = %e, "stored script unreadable"),
            }
        }
        if let Some((p, _)) = &previous
            && p.account_id != account_id
        {
            return Err(DeployError::Conflict(format!(
                "the worker name {name} is taken"
            )));
        }
        match routes
            .iter()
            .find_map(|r| route_conflict(&others, account_id, name, r))
        {
            Some(e) => Err(e),
            None => Ok(previous),
        }
    }

    async fn check(
        &self,
        account_id: &str,
        metadata: &ScriptMetadata,
        modules: &[Module],
    ) -> Result<(), DeployError> {
        for m in modules {
            if !valid_module_path(&m.name) {
                return Err(invalid(
                    &format!("/modules/{}", m.name),
                    "module names are relative paths without . or .. segments",
                ));
            }
        }
        if !modules.iter().any(|m| m.name == metadata.main_module) {
            return Err(invalid(
                "/main_module",
                format!("no uploaded module is named {:?}", metadata.main_module),
            ));
        }
        for (i, r) in parse_routes(&metadata.routes)?.iter().enumerate() {
            if self.router.in_workers_domain(r) {
                return Err(invalid(
                    &format!("/routes/{i}"),
                    "reaches into the workers domain, whose hosts belong to the workers of those names (a worker answers at <name>.<workers domain> without a route)",
                ));
            }
        }
        match metadata.limits.cpu_ms {
            Some(0) => return Err(invalid("/limits/cpu_ms", "must be at least 1")),
            Some(cpu) if cpu > self.config.max_cpu_ms => {
                return Err(invalid(
                    "/limits/cpu_ms",
                    format!(
                        "{cpu} is over this node's maximum of {} ms",
                        self.config.max_cpu_ms
                    ),
                ));
            }
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        for (i, b) in metadata.bindings.iter().enumerate() {
            let bname = b.name();
            if let BindingSpec::SecretText { name, text } = b {
                check_secret_name(name).map_err(|m| invalid(&format!("/bindings/{i}/name"), m))?;
                check_secret_text(text).map_err(|m| invalid(&format!("/bindings/{i}/text"), m))?;
            }
            if !valid_binding_name(bname) {
                return Err(invalid(
                    &format!("/bindings/{i}/name"),
                    format!("{bname:?} is not a valid binding name (a JS identifier)"),
                ));
            }
            if !seen.insert(bname.to_owned()) {
                return Err(invalid(
                    &format!("/bindings/{i}/name"),
                    format!("binding {bname} is declared twice"),
                ));
            }
            if let BindingSpec::VpcService { name, service_id } = b {
                let owner = self
                    .config
                    .store
                    .get_service(service_id)
                    .await
                    .map_err(store_error)?
                    .map(|s| s.account_id);
                if owner.as_deref() != Some(account_id) {
                    return Err(DeployError::Binding {
                        binding: name.clone(),
                        message: format!("VPC service {service_id} does not exist in this account"),
                    });
                }
            }
        }
        Ok(())
    }

    async fn build(
        &self,
        name: &str,
        metadata: &ScriptMetadata,
        modules: Vec<Module>,
    ) -> Result<Vec<u8>, DeployError> {
        if metadata.main_module.ends_with(".wasm") {
            return modules
                .into_iter()
                .find(|m| m.name == metadata.main_module)
                .map(|m| m.bytes)
                .ok_or_else(|| invalid("/main_module", "missing"));
        }
        let vars: BTreeMap<String, serde_json::Value> = metadata
            .bindings
            .iter()
            .filter_map(|b| match b {
                BindingSpec::PlainText { name, text } => {
                    Some((name.clone(), serde_json::Value::String(text.clone())))
                }
                BindingSpec::Json { name, json } => Some((name.clone(), json.clone())),
                BindingSpec::VpcService { .. } | BindingSpec::SecretText { .. } => None,
            })
            .collect();
        let bindings: Vec<String> = metadata
            .bindings
            .iter()
            .filter_map(|b| match b {
                BindingSpec::VpcService { name, .. } => Some(name.clone()),
                BindingSpec::PlainText { .. }
                | BindingSpec::SecretText { .. }
                | BindingSpec::Json { .. } => None,
            })
            .collect();
        let js = self.config.js.clone();
        let main = metadata.main_module.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || -> Result<Vec<u8>, DeployError> {
            let src = tempfile::tempdir().map_err(internal)?;
            for m in &modules {
                let p = src.path().join(&m.name);
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(internal)?;
                }
                std::fs::write(&p, &m.bytes).map_err(internal)?;
            }
            js.build(src.path(), &main, &vars, &bindings)
                .map_err(|e| match e {
                    JsBuildError::Script(m) => DeployError::Script(m),
                    e @ (JsBuildError::TimedOut(_) | JsBuildError::Killed(_)) => {
                        DeployError::Script(format!("build of worker {name} {e}"))
                    }
                    other => DeployError::Internal(other.to_string()),
                })
        })
        .await
        .map_err(internal)?
    }
}

fn new_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn log_key(info: &ScriptInfo) -> WorkerKey {
    WorkerKey {
        account_id: info.account_id.clone(),
        tag: info.tag.clone(),
    }
}

/// Parses route patterns; the first bad one is an error pointing at it.
fn parse_routes(routes: &[String]) -> Result<Vec<RoutePattern>, DeployError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let parsed =
            RoutePattern::parse(r).map_err(|e| invalid(&format!("/routes/{i}"), e.to_string()))?;
        if !seen.insert(parsed.canonical()) {
            return Err(invalid(
                &format!("/routes/{i}"),
                format!("route {r:?} is listed twice"),
            ));
        }
        out.push(parsed);
    }
    Ok(out)
}

/// Splits an upload's `secret_text` bindings from its metadata: they are
/// stored sealed, never in the metadata (which the API shows).
fn take_secrets(mut metadata: ScriptMetadata) -> (ScriptMetadata, Vec<(String, String)>) {
    let mut secrets = Vec::new();
    metadata.bindings.retain(|b| match b {
        BindingSpec::SecretText { name, text } => {
            secrets.push((name.clone(), text.clone()));
            false
        }
        _ => true,
    });
    (metadata, secrets)
}

/// The secret names a worker has after an upload with `metadata` (secrets
/// already taken out) and `uploaded` secrets, given its current `sealed` ones
/// (kept when `keep`). A kept secret named like one of the upload's other
/// bindings, or more than [`MAX_SECRETS`], is refused.
fn secrets_after(
    metadata: &ScriptMetadata,
    uploaded: &[(String, String)],
    sealed: &Sealed,
    keep: bool,
) -> Result<HashSet<String>, DeployError> {
    let mut names: HashSet<String> = uploaded.iter().map(|(n, _)| n.clone()).collect();
    if keep {
        for (i, b) in metadata.bindings.iter().enumerate() {
            if !matches!(b, BindingSpec::SecretText { .. }) && sealed.contains_key(b.name()) {
                return Err(invalid(
                    &format!("/bindings/{i}/name"),
                    format!(
                        "{} is a secret of this worker (kept by keep_bindings); delete the secret or rename the binding",
                        b.name()
                    ),
                ));
            }
        }
        names.extend(sealed.keys().cloned());
    }
    if names.len() > MAX_SECRETS {
        return Err(invalid(
            "/bindings",
            format!(
                "the worker would have {} secrets; the most is {MAX_SECRETS}",
                names.len()
            ),
        ));
    }
    Ok(names)
}

/// A binding's `type`, as the metadata writes it.
fn binding_type(b: &BindingSpec) -> &'static str {
    match b {
        BindingSpec::VpcService { .. } => "vpc_service",
        BindingSpec::PlainText { .. } => "plain_text",
        BindingSpec::SecretText { .. } => "secret_text",
        BindingSpec::Json { .. } => "json",
    }
}

/// The store's record of a script, with its `secrets` sealed.
fn record_of(info: &ScriptInfo, secrets: Sealed) -> Result<ScriptRecord, serde_json::Error> {
    let m = &info.metadata;
    let mut services: Vec<String> = m
        .bindings
        .iter()
        .filter_map(|b| match b {
            BindingSpec::VpcService { service_id, .. } => Some(service_id.clone()),
            BindingSpec::PlainText { .. }
            | BindingSpec::SecretText { .. }
            | BindingSpec::Json { .. } => None,
        })
        .collect();
    services.sort();
    services.dedup();
    Ok(ScriptRecord {
        name: info.id.clone(),
        account_id: info.account_id.clone(),
        tag: info.tag.clone(),
        metadata: serde_json::to_string(m)?,
        services,
        routes: m.routes.clone(),
        bundle: info.etag.clone(),
        secrets,
        created_on: info.created_on.clone(),
        modified_on: info.modified_on.clone(),
    })
}

/// A script as the API shows it, from its record.
fn info_of(r: &ScriptRecord) -> Result<ScriptInfo, serde_json::Error> {
    Ok(ScriptInfo {
        id: r.name.clone(),
        tag: r.tag.clone(),
        account_id: r.account_id.clone(),
        metadata: serde_json::from_str(&r.metadata)?,
        etag: r.bundle.clone(),
        created_on: r.created_on.clone(),
        modified_on: r.modified_on.clone(),
    })
}

fn store_error(e: StoreError) -> DeployError {
    match e {
        StoreError::Unavailable(_) => {
            DeployError::Unavailable(format!("{e}; nothing was changed, try again"))
        }
        e => DeployError::Internal(e.to_string()),
    }
}

fn changed_while_building(name: &str) -> DeployError {
    DeployError::Conflict(format!(
        "worker {name} was created or deleted while this upload was building; upload it again"
    ))
}

/// Why worker `name` of `account_id` may not have `route`, given the other
/// workers: another account holds a route whose hosts overlap it (that worker
/// is not named), or another worker of the account has the same pattern.
fn route_conflict(
    others: &[ScriptInfo],
    account_id: &str,
    name: &str,
    route: &RoutePattern,
) -> Option<DeployError> {
    let canonical = route.canonical();
    for other in others.iter().filter(|i| i.id != name) {
        for theirs in other
            .metadata
            .routes
            .iter()
            .filter_map(|r| RoutePattern::parse(r).ok())
        {
            let pattern = route.as_written();
            if other.account_id != account_id && route.hosts_overlap(&theirs) {
                return Some(DeployError::Conflict(format!(
                    "route {pattern} overlaps a host another account routes"
                )));
            }
            if other.account_id == account_id && theirs.canonical() == canonical {
                return Some(DeployError::Conflict(format!(
                    "route {pattern} is already served by worker {}",
                    other.id
                )));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_workers_rules() {
        assert!(valid_name("inventory-proxy"));
        assert!(!valid_name("Inventory"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(valid_binding_name("API_2"));
        assert!(!valid_binding_name("2API"));
        assert!(valid_module_path("lib/greet.js"));
        assert!(!valid_module_path("../etc/passwd"));
        assert!(!valid_module_path("/abs.js"));
    }

    #[test]
    fn metadata_is_strict() {
        let ok: ScriptMetadata = serde_json::from_str(
            r#"{"main_module":"worker.js","bindings":[{"type":"vpc_service","name":"API","service_id":"s"},{"type":"plain_text","name":"G","text":"hi"}],"limits":{"cpu_ms":20}}"#,
        )
        .unwrap();
        assert_eq!(ok.limits.cpu_ms, Some(20));
        let bad = serde_json::from_str::<ScriptMetadata>(r#"{"main_module":"w.js","colour":1}"#);
        assert!(bad.unwrap_err().to_string().contains("colour"));
    }
}
