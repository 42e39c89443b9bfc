//! Worker scripts: validating an upload (metadata + modules), verifying its
//! bindings against the [`ServiceDirectory`], building JS with ComponentizeJS,
//! compiling, storing the result on disk and swapping it into the [`Router`].
//! On start, stored scripts come back without rebuilding or recompiling.
//!
//! Uploads build and compile concurrently; only the short commit step (the
//! final conflict checks, storing, swapping into the router) is serialized,
//! so a slow or stuck build delays no other deploy. Route patterns are
//! compared in canonical form, and no two accounts may hold routes whose
//! hosts overlap: the first account to claim a host keeps it.
//! The HTTP shape (multipart `PUT`, `GET`, `DELETE`) lives with the rest of the
//! API in `warren`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
pub use warren_api::scripts::{BindingSpec, LimitsSpec, ScriptInfo, ScriptMetadata};

use crate::engine::RuntimeEngine;
use crate::js::{JsBuildError, JsBuilder};
use crate::limits::Limits;
use crate::logs::{LogHub, Subscription, WorkerKey};
use crate::outbound::BindingClient;
use crate::routes::RoutePattern;
use crate::serve::Router;
use crate::worker::{Worker, WorkerConfig};

/// Who owns a VPC service: deploy-time binding verification asks this.
#[async_trait]
pub trait ServiceDirectory: Send + Sync + 'static {
    /// The owning account of `service_id`, or `None` when there is no such service.
    async fn service_owner(&self, service_id: &str) -> Result<Option<String>, String>;
}

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
    /// Where scripts are stored (`<dir>/<name>/script.json` + `worker.wasm`).
    pub dir: PathBuf,
    /// JS build tooling.
    pub js: JsBuilder,
    /// Where binding calls go.
    pub client: Option<Arc<dyn BindingClient>>,
    /// Binding verification.
    pub directory: Arc<dyn ServiceDirectory>,
    /// Largest `limits.cpu_ms` an upload may ask for (see [`DEFAULT_MAX_CPU_MS`]).
    pub max_cpu_ms: u64,
}

/// Default of [`ScriptsConfig::max_cpu_ms`]: 30 s, the most Workers allows.
pub const DEFAULT_MAX_CPU_MS: u64 = 30_000;

/// The deployed scripts of this node.
pub struct Scripts {
    engine: Arc<RuntimeEngine>,
    router: Arc<Router>,
    logs: Arc<LogHub>,
    config: ScriptsConfig,
    infos: Mutex<HashMap<String, ScriptInfo>>,
    /// Serializes the commit step of uploads and deletes (never a build).
    committing: tokio::sync::Mutex<()>,
    /// Builds and compiles running at once: one per core, so uploads (each
    /// build may use 2 GiB and a core) queue instead of swamping the node.
    building: tokio::sync::Semaphore,
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
            committing: tokio::sync::Mutex::new(()),
            building: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
        })
    }

    /// The router serving these workers.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The live-log hub of these workers.
    pub fn logs(&self) -> &Arc<LogHub> {
        &self.logs
    }

    /// Follows the live logs of `account_id`'s worker `name`; `None` when the
    /// account has no such worker. The subscription ends when it is deleted.
    pub fn tail(&self, account_id: &str, name: &str) -> Option<Subscription> {
        let info = self.get(account_id, name)?;
        self.logs.subscribe(&log_key(&info))
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

    /// Loads every stored script (at start): no JS rebuild, no recompilation
    /// when the compiled-code cache has the component.
    pub async fn restore(self: &Arc<Self>) -> anyhow::Result<usize> {
        let dir = self.config.dir.clone();
        std::fs::create_dir_all(&dir)?;
        let mut stored = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !valid_name(name) {
                continue;
            }
            let loaded = (|| -> anyhow::Result<(ScriptInfo, Vec<u8>)> {
                let info: ScriptInfo =
                    serde_json::from_slice(&std::fs::read(path.join("script.json"))?)?;
                Ok((info, std::fs::read(path.join("worker.wasm"))?))
            })();
            match loaded {
                Ok(l) => stored.push(l),
                Err(e) => {
                    tracing::error!(script = name, error = %e, "stored script unreadable; skipped");
                }
            }
        }
        // Oldest first, so a host claimed by two accounts (stored before
        // routes were checked across accounts) stays with the first.
        stored.sort_by(|a, b| (&a.0.created_on, &a.0.id).cmp(&(&b.0.created_on, &b.0.id)));
        let mut n = 0;
        for (mut info, wasm) in stored {
            if info.tag.is_empty() {
                info.tag = new_tag();
            }
            let mut routes = Vec::new();
            for r in parse_routes(&info.metadata.routes).unwrap_or_default() {
                match self.route_conflict(&info.account_id, &info.id, &r) {
                    Some(e) => {
                        tracing::error!(script = %info.id, error = %e, "stored route not served")
                    }
                    None => routes.push(r),
                }
            }
            let this = self.clone();
            let info2 = info.clone();
            let worker =
                tokio::task::spawn_blocking(move || this.worker(&info2, routes, wasm)).await?;
            match worker {
                Ok(w) => {
                    self.logs.open(&log_key(&info));
                    self.router.deploy(w);
                    if let Ok(mut i) = self.infos.lock() {
                        i.insert(info.id.clone(), info);
                    }
                    n += 1;
                }
                Err(e) => {
                    tracing::error!(script = %info.id, error = %e, "stored script failed to load")
                }
            }
        }
        Ok(n)
    }

    /// The script `name` of `account_id`.
    pub fn get(&self, account_id: &str, name: &str) -> Option<ScriptInfo> {
        let i = self.infos.lock().ok()?;
        i.get(name).filter(|s| s.account_id == account_id).cloned()
    }

    /// The scripts of `account_id`.
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

    /// Names of the workers that bind `service_id`.
    pub fn workers_binding(&self, service_id: &str) -> Vec<String> {
        let Ok(i) = self.infos.lock() else {
            return vec![];
        };
        let mut v: Vec<String> = i
            .values()
            .filter(|s| {
                s.metadata.bindings.iter().any(
                    |b| matches!(b, BindingSpec::VpcService { service_id: id, .. } if id == service_id),
                )
            })
            .map(|s| s.id.clone())
            .collect();
        v.sort();
        v
    }

    /// Removes a script; `false` when the account has no such script.
    pub async fn delete(&self, account_id: &str, name: &str) -> Result<bool, DeployError> {
        let _one = self.committing.lock().await;
        let Some(info) = self.get(account_id, name) else {
            return Ok(false);
        };
        self.router.remove(name);
        if let Ok(mut i) = self.infos.lock() {
            i.remove(name);
        }
        self.logs.close(&log_key(&info));
        let path = self.config.dir.join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(internal)?;
        }
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
        self.conflicts(account_id, name, &routes)?;
        let previous = self.get(account_id, name);
        let building = self.building.acquire().await.map_err(internal)?;
        let wasm = self.build(name, &metadata, modules).await?;
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
        drop(building);
        let _one = self.committing.lock().await;
        self.conflicts(account_id, name, &worker.config().routes)?;
        if self.get(account_id, name).map(|i| i.tag) != previous.map(|p| p.tag) {
            return Err(DeployError::Conflict(format!(
                "worker {name} was created or deleted while this upload was building; upload it again"
            )));
        }
        store_script(&self.config.dir, &info, &wasm).map_err(internal)?;
        self.logs.open(&log_key(&info));
        self.router.deploy(worker);
        if let Ok(mut i) = self.infos.lock() {
            i.insert(name.to_owned(), info.clone());
        }
        tracing::info!(worker = name, etag = %info.etag, "worker deployed");
        Ok(info)
    }

    /// Refuses `name` when another account's worker has it, and `routes`
    /// that conflict (see [`Scripts::route_conflict`]).
    fn conflicts(
        &self,
        account_id: &str,
        name: &str,
        routes: &[RoutePattern],
    ) -> Result<(), DeployError> {
        if let Some(other) = self
            .infos
            .lock()
            .ok()
            .and_then(|i| i.get(name).map(|s| s.account_id.clone()))
            && other != account_id
        {
            return Err(DeployError::Conflict(format!(
                "the worker name {name} is taken"
            )));
        }
        match routes
            .iter()
            .find_map(|r| self.route_conflict(account_id, name, r))
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Why worker `name` of `account_id` may not have `route`: another
    /// account holds a route whose hosts overlap it (that worker is not
    /// named), or another worker of the account has the same pattern.
    fn route_conflict(
        &self,
        account_id: &str,
        name: &str,
        route: &RoutePattern,
    ) -> Option<DeployError> {
        let infos = self.infos.lock().ok()?;
        let canonical = route.canonical();
        for other in infos.values().filter(|i| i.id != name) {
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
            let bname = match b {
                BindingSpec::VpcService { name, .. } | BindingSpec::PlainText { name, .. } => name,
            };
            if !valid_binding_name(bname) {
                return Err(invalid(
                    &format!("/bindings/{i}/name"),
                    format!("{bname:?} is not a valid binding name (a JS identifier)"),
                ));
            }
            if !seen.insert(bname.clone()) {
                return Err(invalid(
                    &format!("/bindings/{i}/name"),
                    format!("binding {bname} is declared twice"),
                ));
            }
            if let BindingSpec::VpcService { name, service_id } = b {
                let owner = self
                    .config
                    .directory
                    .service_owner(service_id)
                    .await
                    .map_err(DeployError::Internal)?;
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
        let vars: BTreeMap<String, String> = metadata
            .bindings
            .iter()
            .filter_map(|b| match b {
                BindingSpec::PlainText { name, text } => Some((name.clone(), text.clone())),
                BindingSpec::VpcService { .. } => None,
            })
            .collect();
        let bindings: Vec<String> = metadata
            .bindings
            .iter()
            .filter_map(|b| match b {
                BindingSpec::VpcService { name, .. } => Some(name.clone()),
                BindingSpec::PlainText { .. } => None,
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

/// Writes `<dir>/<name>/{script.json,worker.wasm}`, replacing the old copy only
/// once the new one is complete.
fn store_script(dir: &Path, info: &ScriptInfo, wasm: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{}", info.id, uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(tmp.join("worker.wasm"), wasm)?;
    std::fs::write(
        tmp.join("script.json"),
        serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?,
    )?;
    let target = dir.join(&info.id);
    let old = dir.join(format!(
        ".{}.old.{}",
        info.id,
        uuid::Uuid::new_v4().simple()
    ));
    if target.exists() {
        std::fs::rename(&target, &old)?;
    }
    std::fs::rename(&tmp, &target)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
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
