//! `edge.toml`: the strict configuration of `warren serve`. Unknown keys are
//! errors naming the key's path; every default is written next to its field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use warren_store::{SqliteStore, Store};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeFile {
    /// State directory: SQLite database, edge CA, sealing key, internal secret
    /// (default `warren-data`, relative to the config file).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// This node's name (default: the host name).
    pub node_name: Option<String>,
    /// Secret binding-workers present to the CONNECT front door (default:
    /// generated once into `<data_dir>/internal-secret`).
    pub internal_secret: Option<String>,
    /// Which parts this node runs.
    #[serde(default)]
    pub parts: Parts,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiSection,
    /// The tunnel edge (QUIC).
    #[serde(default)]
    pub tunnel: TunnelSection,
    /// The CONNECT front door.
    #[serde(default)]
    pub connect: ConnectSection,
    /// DNS cache bounds.
    #[serde(default)]
    pub dns_cache: DnsCacheSection,
    /// The worker runtime.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// The binding-worker.
    #[serde(default)]
    pub binding: BindingSection,
    /// Storage.
    #[serde(default)]
    pub store: StoreSection,
    /// Limits every listening socket of the node applies.
    #[serde(default)]
    pub connections: ConnectionsSection,
}

/// `[connections]`: applied to every listener (workers, API, CONNECT front
/// door, binding RPC).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsSection {
    /// Most connections open at once per listener (default 10 000); one more
    /// is answered `503` and closed.
    pub max: usize,
    /// Most connections open at once per listener from one client address
    /// (default 1 000; 0 = no per-address cap, for a node behind a proxy).
    pub max_per_ip: usize,
    /// Longest wait for a complete HTTP request head, and for the next
    /// request on an idle HTTP/1.1 keep-alive connection (default 20 s).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection that moves no byte for this long is closed (default 120 s).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for ConnectionsSection {
    fn default() -> Self {
        let d = warren_protocol::listen::ConnLimits::default();
        ConnectionsSection {
            max: d.max_connections,
            max_per_ip: d.max_per_ip,
            header_timeout: d.header_timeout,
            idle_timeout: d.idle_timeout,
        }
    }
}

impl ConnectionsSection {
    /// As the listeners take them.
    pub fn limits(&self) -> warren_protocol::listen::ConnLimits {
        warren_protocol::listen::ConnLimits {
            max_connections: self.max.max(1),
            max_per_ip: self.max_per_ip,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("warren-data")
}

/// Parts a node runs (all by default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Parts {
    /// The API (default true).
    pub api: bool,
    /// The tunnel edge (default true).
    pub tunnel: bool,
    /// The CONNECT front door (default true).
    pub connect: bool,
    /// The worker runtime and its deploy API (default true).
    pub runtime: bool,
    /// The binding-worker (default true).
    pub binding: bool,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            api: true,
            tunnel: true,
            connect: true,
            runtime: true,
            binding: true,
        }
    }
}

/// `[api]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Listen address (default `127.0.0.1:8787`).
    pub listen: SocketAddr,
    /// URL clients use, written into the first-start profile (default `http://<listen>`).
    pub public_url: Option<String>,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: ([127, 0, 0, 1], 8787).into(),
            public_url: None,
        }
    }
}

/// `[tunnel]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelSection {
    /// UDP listen address (default `0.0.0.0:7844`).
    pub listen: SocketAddr,
    /// Addresses connectors dial, written into tokens (default: the bound address).
    pub public_addresses: Vec<String>,
}

impl Default for TunnelSection {
    fn default() -> Self {
        TunnelSection {
            listen: ([0, 0, 0, 0], warren_protocol::DEFAULT_EDGE_PORT).into(),
            public_addresses: Vec::new(),
        }
    }
}

/// `[connect]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectSection {
    /// Listen address (default `127.0.0.1:8788`; binding-workers connect here).
    pub listen: SocketAddr,
    /// Connect timeout per resolved address (default 5 s).
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Extra CA certificates (PEM files) trusted for origins.
    pub origin_ca_files: Vec<PathBuf>,
}

impl Default for ConnectSection {
    fn default() -> Self {
        ConnectSection {
            listen: ([127, 0, 0, 1], 8788).into(),
            attempt_timeout: Duration::from_secs(5),
            origin_ca_files: Vec::new(),
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Where workers are served (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Workers answer at `<name>.<workers_domain>` (default `workers.localhost`).
    pub workers_domain: String,
    /// The binding-worker's RPC address: `host:port`, or `unix:/path` (default:
    /// this node's `[binding] listen`).
    pub binding_rpc: Option<String>,
    /// The `runtime/js` folder with ComponentizeJS installed (default: found
    /// next to the binary's source checkout, or `$WARREN_JS_DIR`).
    pub js_dir: Option<PathBuf>,
    /// A JS worker's build (which runs its top-level code) is killed after
    /// this long and the upload refused (default 60 s).
    #[serde(with = "humantime_serde")]
    pub build_timeout: Duration,
    /// Largest `limits.cpu_ms` an upload may ask for; more is refused
    /// (default 30000, Workers' maximum).
    pub max_cpu_ms: u64,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            listen: ([127, 0, 0, 1], 8080).into(),
            workers_domain: "workers.localhost".into(),
            binding_rpc: None,
            js_dir: None,
            build_timeout: Duration::from_secs(60),
            max_cpu_ms: warren_runtime::deploy::DEFAULT_MAX_CPU_MS,
        }
    }
}

/// `[binding]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BindingSection {
    /// Binding RPC listen address: `host:port` or `unix:/path` (default `127.0.0.1:8789`).
    pub listen: String,
    /// iris's CONNECT front door (default: this node's `[connect] listen`).
    pub front_door: Option<SocketAddr>,
    /// Idle CONNECT tunnels close after this long (default 90 s).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for BindingSection {
    fn default() -> Self {
        BindingSection {
            listen: "127.0.0.1:8789".into(),
            front_door: None,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// `[dns_cache]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsCacheSection {
    /// Floor on answer lifetimes (default 5 s).
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Ceiling on positive answers (default 300 s).
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Ceiling on negative answers (default 60 s).
    #[serde(with = "humantime_serde")]
    pub max_negative_ttl: Duration,
    /// Most names cached (default 10 000).
    pub max_entries: usize,
}

impl Default for DnsCacheSection {
    fn default() -> Self {
        let d = warren_iris::dns_cache::DnsCacheConfig::default();
        DnsCacheSection {
            min_ttl: d.min_ttl,
            max_ttl: d.max_ttl,
            max_negative_ttl: d.max_negative_ttl,
            max_entries: d.max_entries,
        }
    }
}

/// `[store]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite` (default; the file is `<data_dir>/warren.db`).
    pub backend: StoreBackend,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: StoreBackend::Sqlite,
        }
    }
}

/// Storage backends.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Embedded SQLite.
    Sqlite,
}

/// Opens the store `file` names: SQLite at `<data_dir>/warren.db` (creating
/// the directory).
pub async fn open_store(file: &EdgeFile) -> anyhow::Result<Arc<dyn Store>> {
    match file.store.backend {
        StoreBackend::Sqlite => {
            std::fs::create_dir_all(&file.data_dir)
                .with_context(|| format!("cannot create {}", file.data_dir.display()))?;
            let path = file.data_dir.join("warren.db");
            let store = SqliteStore::open(&path)
                .with_context(|| format!("cannot open the store {}", path.display()))?;
            Ok(Arc::new(store))
        }
    }
}

/// Reads and checks `path`; relative paths inside resolve against its folder.
pub fn load(path: &Path) -> anyhow::Result<EdgeFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut file = parse(&text).with_context(|| format!("invalid config {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    if file.data_dir.is_relative() {
        file.data_dir = base.join(&file.data_dir);
    }
    if let Some(js) = &mut file.runtime.js_dir
        && js.is_relative()
    {
        *js = base.join(&*js);
    }
    for ca in &mut file.connect.origin_ca_files {
        if ca.is_relative() {
            *ca = base.join(&*ca);
        }
    }
    Ok(file)
}

/// Parses config text; errors name the key's path (`connect.listen: …`).
pub fn parse(text: &str) -> anyhow::Result<EdgeFile> {
    let de = toml::Deserializer::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let file: EdgeFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.message().to_owned();
        anyhow::anyhow!("{path}: {msg}")
    })?;
    for (key, value) in [
        (
            "connections.header_timeout",
            file.connections.header_timeout,
        ),
        ("connections.idle_timeout", file.connections.idle_timeout),
    ] {
        anyhow::ensure!(!value.is_zero(), "{key}: must be more than 0");
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_an_empty_file() {
        let f = parse("").expect("empty is valid");
        assert_eq!(f.api.listen, "127.0.0.1:8787".parse().expect("addr"));
        assert!(f.parts.api && f.parts.tunnel && f.parts.connect);
        assert_eq!(f.dns_cache.max_ttl, Duration::from_secs(300));
        assert_eq!(f.runtime.build_timeout, Duration::from_secs(60));
        assert_eq!(f.runtime.max_cpu_ms, 30_000);
    }

    #[test]
    fn values_are_read() {
        let f = parse(
            "data_dir = \"/var/lib/warren\"\n[connect]\nlisten = \"127.0.0.1:9000\"\nattempt_timeout = \"2s\"\n[dns_cache]\nmin_ttl = \"1s\"\n",
        )
        .expect("valid");
        assert_eq!(f.data_dir, PathBuf::from("/var/lib/warren"));
        assert_eq!(f.connect.attempt_timeout, Duration::from_secs(2));
        assert_eq!(f.dns_cache.min_ttl, Duration::from_secs(1));
        let f = parse("[runtime]\nbuild_timeout = \"5s\"\nmax_cpu_ms = 100\n").expect("valid");
        assert_eq!(f.runtime.build_timeout, Duration::from_secs(5));
        assert_eq!(f.runtime.max_cpu_ms, 100);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_path() {
        let e = parse("[connect]\nlisen = \"127.0.0.1:1\"\n").expect_err("typo");
        assert!(e.to_string().starts_with("connect"), "{e}");
        assert!(e.to_string().contains("lisen"), "{e}");
        let e = parse("[dns_cache]\nmax_ttl = \"soon\"\n").expect_err("bad duration");
        assert!(e.to_string().starts_with("dns_cache.max_ttl"), "{e}");
        let e = parse("[store]\nbackend = \"postgres\"\n").expect_err("bad backend");
        assert!(e.to_string().starts_with("store.backend"), "{e}");
        let e = parse("[connections]\nidle_timeout = \"0s\"\n").expect_err("zero");
        assert_eq!(
            e.to_string(),
            "connections.idle_timeout: must be more than 0"
        );
    }
}
