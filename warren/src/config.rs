//! `edge.toml`: the strict configuration of `warren serve`. Unknown keys are
//! errors naming the key's path; every default is written next to its field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use warren_store::{EtcdConfig, EtcdStore, EtcdTls, SqliteStore, Store};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeFile {
    /// State directory: SQLite database, sealing key, worker bundles and
    /// caches (default `warren-data`, relative to the config file).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// This node's name (default: the host name); also a name in its node
    /// certificate when it is a valid DNS name.
    pub node_name: Option<String>,
    /// No longer used: node certificates from the cluster CA replaced the
    /// internal secret, and a file that still sets it is refused.
    #[serde(default)]
    internal_secret: Option<toml::Value>,
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
    /// The node-to-node link.
    #[serde(default)]
    pub peer: PeerSection,
    /// The Prometheus metrics port.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// The file this was read from and its text, as read (not keys: set
    /// by [`load`]).
    #[serde(skip)]
    pub source: Option<(PathBuf, String)>,
}

/// `[metrics]`: Prometheus `/metrics` on its own port, loopback by default
/// (the metrics name accounts and workers, so the port is for the operator,
/// not the Internet).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Serve the metrics port (default true).
    pub enabled: bool,
    /// Listen address (default `127.0.0.1:9464`). While the port is taken the
    /// next four are tried, then a free port; the log names the one bound.
    pub listen: SocketAddr,
}

/// Default metrics address of `warren serve`.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            listen: DEFAULT_METRICS_LISTEN,
        }
    }
}

/// `[peer]`: the node-to-node link (QUIC, mutual TLS with node certificates)
/// over which nodes relay tunnel streams and fetch bundles from each other.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSection {
    /// UDP listen address (default `127.0.0.1:0`: a free port, enough for
    /// nodes on one machine).
    pub listen: SocketAddr,
    /// `host:port` other nodes dial, written into this node's record in the
    /// store (default: the bound address; required when `listen` is
    /// unspecified, e.g. `0.0.0.0:7845`).
    pub advertise: Option<String>,
}

impl Default for PeerSection {
    fn default() -> Self {
        PeerSection {
            listen: ([127, 0, 0, 1], 0).into(),
            advertise: None,
        }
    }
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
    /// URL clients use, written into the first-start profile (default
    /// `http://<listen>`, or `https://<listen>` with `tls`).
    pub public_url: Option<String>,
    /// Serve the API over HTTPS (default false).
    pub tls: bool,
    /// With `tls`: the certificate chain (PEM) to serve. Without it the node
    /// issues itself one from the cluster CA for `tls_names`.
    pub tls_cert: Option<PathBuf>,
    /// With `tls_cert`: its private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// With `tls` and no `tls_cert`: the DNS names and IP addresses the
    /// issued certificate is valid for (default: the host of `public_url`,
    /// else the listen address).
    pub tls_names: Vec<String>,
}

impl ApiSection {
    /// The URL clients use: `public_url`, else the scheme and `bound` address.
    pub fn url(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None if self.tls => format!("https://{bound}"),
            None => format!("http://{bound}"),
        }
    }

    /// The names an issued API certificate covers: `tls_names`, else the
    /// host of `public_url`, else the listen address's IP.
    pub fn issued_names(&self) -> Vec<String> {
        if !self.tls_names.is_empty() {
            return self.tls_names.clone();
        }
        if let Some(host) = self.public_url.as_deref().and_then(url_host) {
            return vec![host];
        }
        vec![self.listen.ip().to_string()]
    }

    fn check(&self) -> anyhow::Result<()> {
        if let Some(u) = &self.public_url {
            let https = u.starts_with("https://");
            anyhow::ensure!(
                https || u.starts_with("http://"),
                "api.public_url: must start with http:// or https:// (got {u:?})"
            );
            anyhow::ensure!(url_host(u).is_some(), "api.public_url: no host in {u:?}");
            anyhow::ensure!(
                https == self.tls,
                "api.public_url: {u:?} is {} but api.tls is {}: set both to agree",
                if https { "https://" } else { "http://" },
                self.tls
            );
        }
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "api.tls_cert and api.tls_key: give both or neither"
        );
        if !self.tls {
            for (key, set) in [
                ("tls_cert", self.tls_cert.is_some()),
                ("tls_names", !self.tls_names.is_empty()),
            ] {
                anyhow::ensure!(!set, "api.{key}: only with api.tls = true");
            }
        }
        anyhow::ensure!(
            !self.tls
                || self.tls_cert.is_some()
                || !self.tls_names.is_empty()
                || self.public_url.is_some()
                || !self.listen.ip().is_unspecified(),
            "api.tls_names: required when the API listens on {} without a public_url \
             (the names clients reach it by, for its certificate)",
            self.listen.ip()
        );
        anyhow::ensure!(
            self.tls_cert.is_none() || self.tls_names.is_empty(),
            "api.tls_names: only for a certificate the node issues (not with api.tls_cert)"
        );
        Ok(())
    }
}

/// The host of an `http(s)://host[:port][/path]` URL (IPv6 without brackets).
fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_owned())
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: ([127, 0, 0, 1], 8787).into(),
            public_url: None,
            tls: false,
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
        }
    }
}

/// `[tunnel]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelSection {
    /// UDP listen address (default `0.0.0.0:7844`).
    pub listen: SocketAddr,
    /// Addresses connectors dial, written into tokens (default: the bound
    /// address; on 0.0.0.0 / `[::]` the loopback address with the bound port,
    /// so a token never names an address nobody can dial).
    pub public_addresses: Vec<String>,
    /// QUIC keep-alive interval: a connection that sent nothing for this long
    /// sends a ping (default 500 ms).
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// QUIC idle timeout: a connector connection that sent nothing for this
    /// long is dead and its streams fail over (default 1.2 s; the smaller of
    /// this and the connector's own applies).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Take tunnel connections over TCP too, for connectors whose network
    /// blocks UDP (default true).
    pub tcp: bool,
    /// TCP address of that fallback (default: `listen`'s address and port,
    /// TCP). When its port differs from `listen`'s, tokens carry it.
    pub tcp_listen: Option<SocketAddr>,
}

impl TunnelSection {
    /// The TCP fallback listener as the edge takes it.
    pub fn tcp_listen(&self) -> warren_iris::edge::TcpListen {
        match (self.tcp, self.tcp_listen) {
            (false, _) => warren_iris::edge::TcpListen::Off,
            (true, None) => warren_iris::edge::TcpListen::SamePort,
            (true, Some(addr)) => warren_iris::edge::TcpListen::At(addr),
        }
    }

    /// The TCP port tokens name, when it is not the QUIC port.
    pub fn token_tcp_port(&self) -> Option<u16> {
        self.tcp_listen
            .filter(|a| self.tcp && a.port() != self.listen.port())
            .map(|a| a.port())
    }
}

impl Default for TunnelSection {
    fn default() -> Self {
        TunnelSection {
            tcp: true,
            tcp_listen: None,
            listen: ([0, 0, 0, 0], warren_protocol::DEFAULT_EDGE_PORT).into(),
            public_addresses: Vec::new(),
            keep_alive: warren_iris::edge::DEFAULT_KEEP_ALIVE,
            idle_timeout: warren_iris::edge::DEFAULT_IDLE_TIMEOUT,
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
    /// Processes that serve workers (default 1: this one). With more, that
    /// many single-threaded child processes share the listener
    /// (`SO_REUSEPORT`), each running every worker; set it to the number of
    /// cores for throughput.
    pub processes: usize,
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
            processes: 1,
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
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite` (default; the file is `<data_dir>/warren.db`) or `etcd`.
    pub backend: StoreBackend,
    /// etcd: client URLs of the members, `http://` or `https://` (required
    /// with `backend = "etcd"`; no default).
    pub endpoints: Vec<String>,
    /// etcd: every key is under this prefix, so clusters can share an etcd
    /// (default `/warren/`).
    pub prefix: Option<String>,
    /// etcd: CA certificate (PEM) for `https://` endpoints (required with them).
    pub ca_file: Option<PathBuf>,
    /// etcd: client certificate (PEM), for members that ask for one (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// etcd: the client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// etcd: user for etcd's authentication (with `password`).
    pub user: Option<String>,
    /// etcd: that user's password.
    pub password: Option<String>,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: StoreBackend::Sqlite,
            endpoints: Vec::new(),
            prefix: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password: None,
        }
    }
}

impl std::fmt::Debug for StoreSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSection")
            .field("backend", &self.backend)
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl StoreSection {
    /// Checks the combination of keys; errors name the key (`store.endpoints: …`).
    fn check(&self) -> anyhow::Result<()> {
        if self.backend != StoreBackend::Etcd {
            let etcd_only = [
                ("endpoints", !self.endpoints.is_empty()),
                ("prefix", self.prefix.is_some()),
                ("ca_file", self.ca_file.is_some()),
                ("cert_file", self.cert_file.is_some()),
                ("key_file", self.key_file.is_some()),
                ("user", self.user.is_some()),
                ("password", self.password.is_some()),
            ];
            for (key, set) in etcd_only {
                anyhow::ensure!(!set, "store.{key}: only with backend = \"etcd\"");
            }
            return Ok(());
        }
        anyhow::ensure!(
            !self.endpoints.is_empty(),
            "store.endpoints: required with backend = \"etcd\" (e.g. [\"http://127.0.0.1:2379\"])"
        );
        let mut https = 0;
        for e in &self.endpoints {
            let rest = if let Some(rest) = e.strip_prefix("https://") {
                https += 1;
                rest
            } else if let Some(rest) = e.strip_prefix("http://") {
                rest
            } else {
                anyhow::bail!("store.endpoints: {e:?} must start with http:// or https://");
            };
            anyhow::ensure!(
                !rest.is_empty() && !rest.contains('/'),
                "store.endpoints: {e:?} must be scheme://host:port"
            );
        }
        anyhow::ensure!(
            https == 0 || https == self.endpoints.len(),
            "store.endpoints: all http:// or all https://"
        );
        anyhow::ensure!(
            self.prefix.as_deref() != Some(""),
            "store.prefix: must not be empty"
        );
        if https > 0 {
            anyhow::ensure!(
                self.ca_file.is_some(),
                "store.ca_file: required with https:// endpoints"
            );
        } else {
            for (key, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("cert_file", self.cert_file.is_some()),
                ("key_file", self.key_file.is_some()),
            ] {
                anyhow::ensure!(!set, "store.{key}: only with https:// endpoints");
            }
        }
        anyhow::ensure!(
            self.cert_file.is_some() == self.key_file.is_some(),
            "store.{}: required with store.{}",
            if self.cert_file.is_some() {
                "key_file"
            } else {
                "cert_file"
            },
            if self.cert_file.is_some() {
                "cert_file"
            } else {
                "key_file"
            },
        );
        anyhow::ensure!(
            self.user.is_some() == self.password.is_some(),
            "store.{}: required with store.{}",
            if self.user.is_some() {
                "password"
            } else {
                "user"
            },
            if self.user.is_some() {
                "user"
            } else {
                "password"
            },
        );
        Ok(())
    }

    /// The etcd connection this section describes.
    pub fn etcd_config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints.clone(),
            prefix: self
                .prefix
                .clone()
                .unwrap_or_else(|| EtcdConfig::DEFAULT_PREFIX.into()),
            tls: self.ca_file.as_ref().map(|ca| EtcdTls {
                ca_file: ca.clone(),
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
            }),
            user: self.user.clone(),
            password: self.password.clone(),
        }
    }
}

/// Storage backends.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Embedded SQLite.
    Sqlite,
    /// An etcd cluster shared by the nodes.
    Etcd,
}

/// Opens the store `file` names: SQLite at `<data_dir>/warren.db` (creating
/// the directory), or a connection to etcd (failing when it cannot be reached).
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
        StoreBackend::Etcd => {
            let store = EtcdStore::connect(file.store.etcd_config())
                .await
                .context("cannot open the etcd store ([store] in the config)")?;
            Ok(Arc::new(store))
        }
    }
}

/// Reads and checks `path`; relative paths inside resolve against its folder.
pub fn load(path: &Path) -> anyhow::Result<EdgeFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    from_text(path, text)
}

/// Checks `text`, read from `path`; relative paths inside resolve against
/// its folder.
pub fn from_text(path: &Path, text: String) -> anyhow::Result<EdgeFile> {
    let mut file = parse(&text).with_context(|| format!("invalid config {}", path.display()))?;
    file.source = Some((path.to_owned(), text));
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
    for pem in [
        &mut file.api.tls_cert,
        &mut file.api.tls_key,
        &mut file.store.ca_file,
        &mut file.store.cert_file,
        &mut file.store.key_file,
    ]
    .into_iter()
    .flatten()
    {
        if pem.is_relative() {
            *pem = base.join(&*pem);
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
    file.api.check()?;
    anyhow::ensure!(
        file.internal_secret.is_none(),
        "internal_secret: no longer used — node certificates from the cluster CA replaced the \
         internal secret (parts authenticate each other with mutual TLS); remove the key"
    );
    for (key, value) in [
        (
            "connections.header_timeout",
            file.connections.header_timeout,
        ),
        ("connections.idle_timeout", file.connections.idle_timeout),
        ("tunnel.keep_alive", file.tunnel.keep_alive),
    ] {
        anyhow::ensure!(!value.is_zero(), "{key}: must be more than 0");
    }
    anyhow::ensure!(
        file.tunnel.keep_alive < file.tunnel.idle_timeout,
        "tunnel.keep_alive: must be less than tunnel.idle_timeout ({})",
        humantime_serde::re::humantime::format_duration(file.tunnel.idle_timeout)
    );
    for (i, a) in file.tunnel.public_addresses.iter().enumerate() {
        let host = match a.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok_and(|p| p != 0) => {
                h.trim_start_matches('[').trim_end_matches(']')
            }
            _ => anyhow::bail!("tunnel.public_addresses[{i}]: {a:?} is not host:port"),
        };
        anyhow::ensure!(
            !host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified()),
            "tunnel.public_addresses[{i}]: {a:?} is a wildcard address no connector can dial; \
             name an address of this node that connectors reach"
        );
    }
    anyhow::ensure!(
        (1..=MAX_RUNTIME_PROCESSES).contains(&file.runtime.processes),
        "runtime.processes: must be from 1 to {MAX_RUNTIME_PROCESSES}"
    );
    file.store.check()?;
    Ok(file)
}

/// Most `[runtime] processes` a node may run.
pub const MAX_RUNTIME_PROCESSES: usize = 64;

/// The file `warren serve` reads: `explicit` (which must exist), else
/// `edge.toml` in the current folder when there is one, else the defaults
/// (data in `./warren-data`).
pub fn load_or_default(explicit: Option<&Path>) -> anyhow::Result<EdgeFile> {
    if let Some(path) = explicit {
        return load(path);
    }
    let path = Path::new("edge.toml");
    if path.exists() {
        return load(path);
    }
    tracing::info!(
        "no edge.toml here: running on the defaults (docs/edge.md), data in ./warren-data"
    );
    let mut file = parse("")?;
    file.data_dir = std::env::current_dir()
        .context("the current folder")?
        .join(&file.data_dir);
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
    fn tunnel_keep_alive_and_idle_timeout_are_read_and_checked() {
        let f = parse("").expect("empty is valid");
        assert_eq!(f.tunnel.keep_alive, Duration::from_millis(500));
        assert_eq!(f.tunnel.idle_timeout, Duration::from_millis(1200));
        let f = parse("[tunnel]\nkeep_alive = \"5s\"\nidle_timeout = \"15s\"\n").expect("valid");
        assert_eq!(f.tunnel.keep_alive, Duration::from_secs(5));
        assert_eq!(f.tunnel.idle_timeout, Duration::from_secs(15));
        let e = parse("[tunnel]\nkeep_alive = \"0s\"\n").expect_err("zero");
        assert_eq!(e.to_string(), "tunnel.keep_alive: must be more than 0");
        let e = parse("[tunnel]\nkeep_alive = \"2s\"\nidle_timeout = \"2s\"\n").expect_err("equal");
        assert_eq!(
            e.to_string(),
            "tunnel.keep_alive: must be less than tunnel.idle_timeout (2s)"
        );
        let e = parse("[tunnel]\nidle_timeout = \"soon\"\n").expect_err("bad duration");
        assert!(e.to_string().starts_with("tunnel.idle_timeout"), "{e}");
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

    #[test]
    fn public_addresses_must_be_dialable() {
        let f = parse(
            "[tunnel]\npublic_addresses = [\"edge.example.com:7844\", \"[2001:db8::1]:443\"]\n",
        )
        .expect("valid");
        assert_eq!(f.tunnel.public_addresses.len(), 2);
        for (text, error) in [
            (
                "[tunnel]\npublic_addresses = [\"0.0.0.0:7844\"]\n",
                "tunnel.public_addresses[0]: \"0.0.0.0:7844\" is a wildcard address no connector can dial; \
                 name an address of this node that connectors reach",
            ),
            (
                "[tunnel]\npublic_addresses = [\"10.0.0.1:7844\", \"[::]:7844\"]\n",
                "tunnel.public_addresses[1]: \"[::]:7844\" is a wildcard address no connector can dial; \
                 name an address of this node that connectors reach",
            ),
            (
                "[tunnel]\npublic_addresses = [\"edge.example.com\"]\n",
                "tunnel.public_addresses[0]: \"edge.example.com\" is not host:port",
            ),
        ] {
            assert_eq!(parse(text).expect_err(text).to_string(), error);
        }
    }

    #[test]
    fn api_tls_is_read_and_its_keys_must_agree() {
        let addr: SocketAddr = "127.0.0.1:8787".parse().expect("addr");
        let f = parse("").expect("valid");
        assert!(!f.api.tls);
        assert_eq!(f.api.url(addr), "http://127.0.0.1:8787");
        let f = parse("[api]\nlisten = \"127.0.0.2:8443\"\ntls = true\n").expect("valid");
        assert_eq!(f.api.url(addr), "https://127.0.0.1:8787");
        assert_eq!(f.api.issued_names(), ["127.0.0.2"]);
        let f = parse("[api]\ntls = true\npublic_url = \"https://edge.example.com:8443/\"\n")
            .expect("valid");
        assert_eq!(f.api.url(addr), "https://edge.example.com:8443");
        assert_eq!(f.api.issued_names(), ["edge.example.com"]);
        let f = parse("[api]\ntls = true\npublic_url = \"https://[::1]:8443\"\n").expect("valid");
        assert_eq!(f.api.issued_names(), ["::1"]);
        let f =
            parse("[api]\ntls = true\ntls_names = [\"a.example\", \"10.0.0.5\"]\n").expect("valid");
        assert_eq!(f.api.issued_names(), ["a.example", "10.0.0.5"]);
        for (text, error) in [
            (
                "[api]\npublic_url = \"https://edge.example.com\"\n",
                "api.public_url: \"https://edge.example.com\" is https:// but api.tls is false: set both to agree",
            ),
            (
                "[api]\ntls = true\npublic_url = \"http://edge.example.com\"\n",
                "api.public_url: \"http://edge.example.com\" is http:// but api.tls is true: set both to agree",
            ),
            (
                "[api]\npublic_url = \"edge.example.com\"\n",
                "api.public_url: must start with http:// or https:// (got \"edge.example.com\")",
            ),
            (
                "[api]\nlisten = \"0.0.0.0:8443\"\ntls = true\n",
                "api.tls_names: required when the API listens on 0.0.0.0 without a public_url \
                 (the names clients reach it by, for its certificate)",
            ),
            (
                "[api]\ntls = true\ntls_cert = \"c.pem\"\n",
                "api.tls_cert and api.tls_key: give both or neither",
            ),
            (
                "[api]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
                "api.tls_cert: only with api.tls = true",
            ),
            (
                "[api]\ntls = true\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_names = [\"a\"]\n",
                "api.tls_names: only for a certificate the node issues (not with api.tls_cert)",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!(e.to_string(), error);
        }
    }

    #[test]
    fn runtime_processes_are_one_by_default_and_bounded() {
        assert_eq!(parse("").expect("empty").runtime.processes, 1);
        assert_eq!(
            parse("[runtime]\nprocesses = 4\n")
                .expect("valid")
                .runtime
                .processes,
            4
        );
        for n in [0, 65] {
            let e = parse(&format!("[runtime]\nprocesses = {n}\n")).expect_err("refused");
            assert_eq!(e.to_string(), "runtime.processes: must be from 1 to 64");
        }
    }

    #[test]
    fn the_internal_secret_is_refused_with_what_replaced_it() {
        let e = parse("internal_secret = \"s3cret\"\n").expect_err("refused");
        assert!(
            e.to_string().starts_with(
                "internal_secret: no longer used — node certificates from the cluster CA replaced"
            ),
            "{e}"
        );
    }

    #[test]
    fn the_etcd_store_is_read_with_its_options() {
        let f = parse(
            "[store]\nbackend = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\", \"https://10.0.0.2:2379\"]\n\
             prefix = \"/edge-eu/\"\nca_file = \"/etc/warren/etcd-ca.pem\"\ncert_file = \"c.pem\"\n\
             key_file = \"k.pem\"\nuser = \"warren\"\npassword = \"hunter2\"\n",
        )
        .expect("valid");
        assert_eq!(f.store.backend, StoreBackend::Etcd);
        let c = f.store.etcd_config();
        assert_eq!(
            c.endpoints,
            ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
        );
        assert_eq!(c.prefix, "/edge-eu/");
        let tls = c.tls.expect("tls");
        assert_eq!(tls.ca_file, PathBuf::from("/etc/warren/etcd-ca.pem"));
        assert_eq!(tls.cert_file, Some(PathBuf::from("c.pem")));
        assert_eq!(tls.key_file, Some(PathBuf::from("k.pem")));
        assert_eq!(c.user.as_deref(), Some("warren"));
        assert_eq!(c.password.as_deref(), Some("hunter2"));
        assert!(!format!("{:?}", f.store).contains("hunter2"));

        let f = parse("[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n")
            .expect("valid");
        let c = f.store.etcd_config();
        assert_eq!(c.prefix, "/warren/");
        assert!(c.tls.is_none() && c.user.is_none());
        assert_eq!(
            parse("").expect("valid").store.backend,
            StoreBackend::Sqlite
        );
    }

    #[test]
    fn bad_store_combinations_name_the_key() {
        let etcd = "[store]\nbackend = \"etcd\"\n";
        let http = "[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n";
        let https = "[store]\nbackend = \"etcd\"\nendpoints = [\"https://e:2379\"]\n";
        for (text, starts) in [
            (etcd.to_string(), "store.endpoints: required"),
            (
                format!("{etcd}endpoints = []\n"),
                "store.endpoints: required",
            ),
            (
                format!("{etcd}endpoints = [\"127.0.0.1:2379\"]\n"),
                "store.endpoints: \"127.0.0.1:2379\" must start with",
            ),
            (
                format!("{etcd}endpoints = [\"http://a:1\", \"https://b:1\"]\n"),
                "store.endpoints: all http",
            ),
            (
                "[store]\nendpoints = [\"http://127.0.0.1:2379\"]\n".to_string(),
                "store.endpoints: only with backend = \"etcd\"",
            ),
            (
                "[store]\nprefix = \"/x/\"\n".to_string(),
                "store.prefix: only with backend",
            ),
            (
                "[store]\nuser = \"u\"\n".to_string(),
                "store.user: only with backend",
            ),
            (
                format!("{http}prefix = \"\"\n"),
                "store.prefix: must not be empty",
            ),
            (https.to_string(), "store.ca_file: required with https://"),
            (
                format!("{http}ca_file = \"ca.pem\"\n"),
                "store.ca_file: only with https://",
            ),
            (
                format!("{https}ca_file = \"ca.pem\"\ncert_file = \"c.pem\"\n"),
                "store.key_file: required with store.cert_file",
            ),
            (
                format!("{http}password = \"p\"\n"),
                "store.user: required with store.password",
            ),
            (
                format!("{http}user = \"u\"\n"),
                "store.password: required with store.user",
            ),
            (format!("{http}endpionts = []\n"), "store"),
        ] {
            let e = parse(&text).expect_err(&text);
            assert!(e.to_string().starts_with(starts), "{text}: {e}");
        }
    }

    #[test]
    fn store_files_resolve_against_the_config_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edge.toml");
        std::fs::write(
            &path,
            "[store]\nbackend = \"etcd\"\nendpoints = [\"https://e:2379\"]\nca_file = \"pki/ca.pem\"\n\
             cert_file = \"/abs/c.pem\"\nkey_file = \"pki/k.pem\"\n",
        )
        .expect("write");
        let f = load(&path).expect("load");
        assert_eq!(f.store.ca_file, Some(dir.path().join("pki/ca.pem")));
        assert_eq!(f.store.cert_file, Some(PathBuf::from("/abs/c.pem")));
        assert_eq!(f.store.key_file, Some(dir.path().join("pki/k.pem")));
    }

    #[tokio::test]
    async fn open_store_opens_sqlite_or_connects_to_etcd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = parse("").expect("valid");
        f.data_dir = dir.path().join("state");
        let s = open_store(&f).await.expect("sqlite");
        let a = s.create_account("a").await.expect("account");
        assert!(f.data_dir.join("warren.db").is_file());

        let etcd = warren_testkit::etcd::Etcd::shared().expect("etcd");
        let prefix = format!("/open-store-{}/", a.id);
        let text = format!(
            "[store]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"{prefix}\"\n",
            etcd.endpoint()
        );
        let f = parse(&text).expect("valid");
        let s = open_store(&f).await.expect("etcd");
        let b = s.create_account("b").await.expect("account");
        assert_eq!(s.list_accounts().await.expect("list"), vec![b]);

        // Nothing listens there: a clear error, quickly.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let text =
            format!("[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:{port}\"]\n");
        let start = std::time::Instant::now();
        let e = open_store(&parse(&text).expect("valid"))
            .await
            .err()
            .expect("unreachable");
        assert!(start.elapsed() < Duration::from_secs(5));
        let msg = format!("{e:#}");
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(msg.contains("unavailable"), "{msg}");
    }
}
