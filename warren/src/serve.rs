//! `warren serve --config edge.toml`: an edge node with the parts its config
//! names — the API (with worker deploys), the tunnel edge, the CONNECT front
//! door, the binding-worker and the worker runtime — sharing one store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use tokio::sync::watch;
use warren_binding_worker::{BindingWorker, FrontDoorConfig as BindingFrontDoor, RpcServer};
use warren_iris::api::{ApiState, router};
use warren_iris::ca::EdgeCa;
use warren_iris::dns_cache::{DnsCache, DnsCacheConfig};
use warren_iris::origin_tls::OriginTls;
use warren_iris::peer::{self, PeerConfig, PeerLink};
use warren_iris::sealing::Sealer;
use warren_iris::tunnel_admin::TunnelAdmin;
use warren_iris::tunnels::Tunnels;
use warren_iris::{EdgeConfig, FrontDoor, FrontDoorConfig, NodeIdentity, TunnelEdge};
use warren_protocol::listen::ConnLimits;
use warren_protocol::pipe::{PipeDialer, pipe_pair};
use warren_runtime::binding_rpc::{Endpoint, RpcBindingClient};
use warren_runtime::deploy::{Scripts, ScriptsConfig};
use warren_runtime::js::{BuildLimits, JsBuilder};
use warren_runtime::logs::LogHub;
use warren_runtime::serve::Router;
use warren_runtime::{BindingClient, EngineConfig, RuntimeEngine};
use warren_store::blobs::BlobDir;
use warren_store::cache::ServiceCache;
use warren_store::peers::{LocalContent, PeerContent};
use warren_store::{Store, hash_secret};

use crate::config::{self, EdgeFile};
use crate::profile::{self, Profile};

/// `prefix` followed by 32 random bytes, base64url: tokens, secrets, boundaries.
pub fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

/// The node's trust roots are the cluster CA (in the store) and the sealing
/// key (in the data directory). A node that has started before — its data
/// directory holds a CA of older versions, or its own SQLite store already
/// holds the cluster CA — stops when the sealing key is missing, naming the
/// file, rather than make a new key (which could not open the tunnel tokens
/// and worker secrets stored sealed). An unreadable or empty key is refused
/// where it is loaded.
fn check_sealing_key(file: &EdgeFile, legacy_ca: bool, stored_ca: bool) -> anyhow::Result<()> {
    use warren_iris::sealing;
    let own_store = file.store.backend == config::StoreBackend::Sqlite;
    let started_before = legacy_ca || (own_store && stored_ca);
    let key = file.data_dir.join(sealing::KEY_FILE);
    if started_before && !key.exists() {
        anyhow::bail!(
            "the sealing key {} is missing, but this node has started before: restore it from a \
             backup (a new key could not open the tunnel tokens and worker secrets stored sealed)",
            key.display()
        );
    }
    Ok(())
}

/// The cluster CA, from the store. A store without one adopts the CA of
/// `<data_dir>/edge-ca.{crt,key}` when there is one (a node of an older
/// version keeps the CA its tokens pin), else a new one — unless the store
/// already holds tunnels, whose tokens pin a CA that is then lost. Nodes
/// starting together agree: the first CA stored wins. A data-directory CA
/// that is not the store's stops the node (tokens this node issued pin it).
async fn cluster_ca(file: &EdgeFile, store: &dyn Store) -> anyhow::Result<Arc<EdgeCa>> {
    use warren_iris::ca;
    let err = |e: ca::CaError| anyhow::anyhow!("{e}");
    let local = EdgeCa::load(&file.data_dir).map_err(err)?;
    let stored = store
        .cluster_ca()
        .await
        .context("cannot read the cluster CA from the store")?;
    check_sealing_key(file, local.is_some(), stored.is_some())?;
    let (cert, key) = (
        file.data_dir.join(ca::CERT_FILE),
        file.data_dir.join(ca::KEY_FILE),
    );
    let record = match stored {
        Some(r) => r,
        None => {
            let offer = match &local {
                Some(l) => l.to_record(),
                None => {
                    for account in store.list_accounts().await? {
                        anyhow::ensure!(
                            store.list_tunnels(&account.id).await?.is_empty(),
                            "the store holds tunnels but no cluster CA, and the edge CA ({}, {}) \
                             is missing: restore both files from a backup (the tokens of those \
                             tunnels pin that CA; a new one would cut off every connector)",
                            cert.display(),
                            key.display()
                        );
                    }
                    EdgeCa::generate().map_err(err)?.to_record()
                }
            };
            store
                .init_cluster_ca(&offer)
                .await
                .context("cannot store the cluster CA")?
        }
    };
    let ca = EdgeCa::from_record(&record).map_err(err)?;
    if let Some(l) = &local
        && l.fingerprint() != ca.fingerprint()
    {
        anyhow::bail!(
            "the edge CA in {} and {} (sha256 {}) is not the cluster CA in the store (sha256 {}): \
             tunnel tokens this node issued pin the first. Point the node at the store it used, \
             or move both files away to join this store with its CA (this node's connectors \
             then need new tokens: `warren tunnel token`)",
            cert.display(),
            key.display(),
            l.fingerprint(),
            ca.fingerprint()
        );
    }
    if local.is_none() {
        tracing::info!(ca_sha256 = %ca.fingerprint(), "cluster CA from the store");
    }
    Ok(Arc::new(ca))
}

/// This node's name (unique in a cluster): the config's `node_name`, else
/// the host name.
fn node_name(file: &EdgeFile) -> String {
    file.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "warren-node".to_owned())
    })
}

/// On an empty store: an account and an admin API token (printed once), and
/// with `write_profile` a client profile for `api_url`, trusting `ca_cert`
/// (PEM) when the API's certificate was issued by the edge. The token is
/// printed before the profile is written, so a profile that cannot be
/// written loses nothing.
async fn first_start(
    store: &dyn Store,
    api_url: &str,
    ca_cert: Option<&str>,
    write_profile: bool,
) -> anyhow::Result<()> {
    if !store.list_accounts().await?.is_empty() {
        return Ok(());
    }
    let account = store.create_account("default").await?;
    let token = random_token("wrn_");
    store
        .create_api_token(&account.id, "admin", hash_secret(token.as_bytes()))
        .await?;
    if !write_profile {
        return Ok(());
    }
    println!(
        "First start: created account {} and an admin API token (shown once):",
        account.id
    );
    println!("  {token}");
    let written = profile::write(&Profile {
        api: api_url.to_owned(),
        account_id: account.id.clone(),
        token: token.clone(),
        ca_cert: ca_cert.map(str::to_owned),
    });
    match written {
        Ok(path) => println!("Client profile written to {} (mode 0600).", path.display()),
        Err(e) => {
            println!(
                "The client profile could not be written ({e:#}); the token above still works: \
                 `warren login --api {api_url} --account-id {}` reads it from stdin.",
                account.id
            );
        }
    }
    Ok(())
}

/// The API's TLS: the certificate files `[api]` names, or one issued from
/// the cluster CA (whose PEM is then returned, for clients to trust, and
/// written to `<data_dir>/api-ca.pem`).
fn api_tls(file: &EdgeFile, ca: &EdgeCa) -> anyhow::Result<(rustls::ServerConfig, Option<String>)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let api = &file.api;
    let (chain, key, issued) = match (&api.tls_cert, &api.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    anyhow::anyhow!("api.tls_cert: cannot read {}: {e}", cert.display())
                })?;
            anyhow::ensure!(
                !chain.is_empty(),
                "api.tls_cert: no certificate in {}",
                cert.display()
            );
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                anyhow::anyhow!(
                    "api.tls_key: cannot read a private key from {}: {e}",
                    key.display()
                )
            })?;
            (chain, key, None)
        }
        _ => {
            let names = api.issued_names();
            let (chain, key) = ca.issue_api_cert(&names).map_err(|e| {
                anyhow::anyhow!("cannot issue the API certificate for {names:?}: {e}")
            })?;
            let pem = ca.cert_pem().to_owned();
            let path = file.data_dir.join("api-ca.pem");
            std::fs::write(&path, &pem)
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(names = ?names, ca = %path.display(), "API certificate issued from the cluster CA");
            (chain, key, Some(pem))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("api.tls_cert / api.tls_key: the key does not match the certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, issued))
}

fn origin_roots(
    file: &EdgeFile,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = Vec::new();
    for f in &file.connect.origin_ca_files {
        for cert in CertificateDer::pem_file_iter(f)
            .with_context(|| format!("cannot read {}", f.display()))?
        {
            roots.push(cert.with_context(|| format!("bad certificate in {}", f.display()))?);
        }
    }
    Ok(roots)
}

/// Where ComponentizeJS lives: the config, `$WARREN_JS_DIR`, the source
/// checkout the binary was built from, or `./runtime/js`.
pub fn js_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os("WARREN_JS_DIR") {
        return PathBuf::from(p);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/js");
    if built.join("build.mjs").is_file() {
        return built;
    }
    PathBuf::from("runtime/js")
}

/// A binding RPC address: `unix:/path` or `host:port`.
fn rpc_endpoint(s: &str) -> anyhow::Result<Endpoint> {
    match s.strip_prefix("unix:") {
        Some(p) => Ok(Endpoint::Unix(PathBuf::from(p))),
        None => Ok(Endpoint::Tcp(s.parse().with_context(|| {
            format!("{s:?} is neither host:port nor unix:/path")
        })?)),
    }
}

/// A running node: its parts' addresses and handles, and how to stop it.
pub struct Running {
    /// The node's store.
    pub store: Arc<dyn Store>,
    /// The API's URL, when this node runs the API.
    pub api_url: Option<String>,
    /// Where workers are served, when this node runs the runtime.
    pub runtime_addr: Option<SocketAddr>,
    /// Workers' domain.
    pub workers_domain: String,
    /// The tunnel edge's UDP address, when this node runs the tunnel edge.
    pub tunnel_addr: Option<SocketAddr>,
    /// Where `/metrics` is served, unless `[metrics] enabled = false`.
    pub metrics_addr: Option<SocketAddr>,
    /// Tunnel creation and tokens.
    pub admin: Arc<TunnelAdmin>,
    /// Deployed workers, when this node runs the runtime.
    pub scripts: Option<Arc<Scripts>>,
    /// The runtime's tail subscriptions, when this node runs the runtime.
    pub logs: Option<Arc<LogHub>>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Stops every part and waits for them.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// What the parts of one node share.
struct Node<'a> {
    file: &'a EdgeFile,
    store: Arc<dyn Store>,
    /// One change-driven service cache for the front door and the binding-worker.
    services: Arc<ServiceCache>,
    /// The cluster CA (tunnel edge certificates, tokens).
    ca: Arc<EdgeCa>,
    /// This node's certificate from the cluster CA (internal hops).
    identity: Arc<NodeIdentity>,
    limits: ConnLimits,
    /// This process is one of a node's runtime processes.
    runtime_process: bool,
    stop: watch::Receiver<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Node<'_> {
    /// Completes when the node is told to stop.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// Starts the parts `file` names, and only those; `write_profile` writes the
/// first-start client profile.
pub async fn start(file: &EdgeFile, write_profile: bool) -> anyhow::Result<Running> {
    start_as(file, write_profile, false).await
}

/// Starts one of a node's runtime processes (see [`crate::processes`]):
/// `file` names only the runtime, on the parent's address.
pub async fn start_runtime_process(file: &EdgeFile) -> anyhow::Result<Running> {
    start_as(file, false, true).await
}

async fn start_as(
    file: &EdgeFile,
    write_profile: bool,
    runtime_process: bool,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&file.data_dir)
        .with_context(|| format!("cannot create {}", file.data_dir.display()))?;
    let parts = &file.parts;
    anyhow::ensure!(
        !parts.connect || parts.tunnel,
        "parts.connect needs parts.tunnel in the same process: the front door dials through this node's tunnel connections"
    );
    let store: Arc<dyn Store> = config::open_store(file).await?;
    let ca = cluster_ca(file, store.as_ref()).await?;
    let identity =
        Arc::new(NodeIdentity::issue(&ca, &node_name(file)).map_err(|e| anyhow::anyhow!("{e}"))?);
    let legacy_secret = file.data_dir.join("internal-secret");
    if legacy_secret.exists() {
        tracing::info!(
            file = %legacy_secret.display(),
            "the internal secret is no longer used (node certificates replaced it); the file can be deleted"
        );
    }
    let (stop_tx, stop) = watch::channel(false);
    let mut node = Node {
        file,
        services: ServiceCache::new(store.clone()),
        store: store.clone(),
        ca: ca.clone(),
        identity: identity.clone(),
        limits: file.connections.limits(),
        runtime_process,
        stop,
        tasks: tokio::task::JoinSet::new(),
    };
    let tunnel = match parts.tunnel {
        true => Some(start_tunnel(&mut node)?),
        false => None,
    };
    // A runtime process shares its parent's data directory; the parent is
    // the cluster's node.
    let peers = match (parts.tunnel || parts.runtime) && !runtime_process {
        true => Some(start_peer(&mut node, tunnel.as_ref().map(|(t, _)| t))?),
        false => None,
    };
    let admin = Arc::new(TunnelAdmin {
        edges: match (&tunnel, file.tunnel.public_addresses.is_empty()) {
            (Some((_, addr)), true) => vec![token_edge(*addr).to_string()],
            _ => file.tunnel.public_addresses.clone(),
        },
        ca_sha256: ca.fingerprint(),
        tcp_port: file.tunnel.token_tcp_port(),
        sealer: Sealer::load_or_create(&file.data_dir)?,
    });
    let door = match &tunnel {
        Some((tunnels, _)) if parts.connect => Some(start_connect(&mut node, tunnels).await?),
        _ => None,
    };
    let binding = match parts.binding {
        true => Some(start_binding(&mut node, door.as_ref()).await?),
        false => None,
    };
    let runtime = match parts.runtime {
        true => Some(start_runtime(&mut node, binding.as_ref(), peers.as_ref()).await?),
        false => None,
    };
    let scripts = runtime.as_ref().map(|(_, s, _)| s.clone());
    let logs = runtime.as_ref().map(|(_, _, l)| l.clone());
    let api_url = match parts.api {
        true => Some(start_api(&mut node, admin.clone(), scripts.clone(), write_profile).await?),
        false => None,
    };
    let metrics_addr = match file.metrics.enabled {
        true => Some(start_metrics(&mut node).await?),
        false => None,
    };
    Ok(Running {
        store,
        api_url,
        runtime_addr: runtime.map(|(a, _, _)| a),
        workers_domain: file.runtime.workers_domain.clone(),
        tunnel_addr: tunnel.map(|(_, a)| a),
        metrics_addr,
        admin,
        scripts,
        logs,
        stop: stop_tx,
        tasks: node.tasks,
    })
}

/// The tunnel edge (QUIC, and its TCP fallback): connectors register here.
fn start_tunnel(node: &mut Node<'_>) -> anyhow::Result<(Tunnels, SocketAddr)> {
    let file = node.file;
    let mut edge_config = EdgeConfig::new(file.tunnel.listen, file.data_dir.clone());
    edge_config.edge_name = node_name(file);
    edge_config.keep_alive = file.tunnel.keep_alive;
    edge_config.idle_timeout = file.tunnel.idle_timeout;
    edge_config.tcp_listen = file.tunnel.tcp_listen();
    let edge = TunnelEdge::bind_with_ca(edge_config, node.store.clone(), node.ca.clone())?;
    let addr = edge.local_addr()?;
    let tunnels = edge.tunnels();
    match edge.tcp_addr() {
        Some(tcp) => {
            tracing::info!(%addr, %tcp, "tunnel edge listening (QUIC on UDP, fallback on TCP)")
        }
        None => tracing::info!(%addr, "tunnel edge listening"),
    }
    let stop = node.stopped();
    node.tasks.spawn(edge.run(stop));
    Ok((tunnels, addr))
}

/// The node-to-node link: registers this node in the store, relays tunnel
/// streams and DNS to the node holding a tunnel's connections, and serves
/// this node's bundles to peers.
fn start_peer(node: &mut Node<'_>, tunnels: Option<&Tunnels>) -> anyhow::Result<Arc<PeerLink>> {
    let file = node.file;
    let (server, client) =
        peer::quic_configs(&node.identity).map_err(|e| anyhow::anyhow!("{e}"))?;
    let link = PeerLink::bind(
        file.peer.listen,
        server,
        client,
        node.store.clone(),
        PeerConfig {
            node_name: node_name(file),
            advertise: file.peer.advertise.clone(),
        },
    )?;
    if let Some(t) = tunnels {
        link.set_tunnels(t.clone());
        t.set_peers(&link);
    }
    let stop = node.stopped();
    node.tasks.spawn(link.clone().serve(stop));
    Ok(link)
}

/// The CONNECT front door (on its listener, and over in-memory pipes for a
/// binding-worker in this process, still CONNECT over HTTP).
async fn start_connect(node: &mut Node<'_>, tunnels: &Tunnels) -> anyhow::Result<FrontDoorHandle> {
    let file = node.file;
    let dns = Arc::new(DnsCache::new(
        tunnels.clone(),
        DnsCacheConfig {
            min_ttl: file.dns_cache.min_ttl,
            max_ttl: file.dns_cache.max_ttl,
            max_negative_ttl: file.dns_cache.max_negative_ttl,
            max_entries: file.dns_cache.max_entries,
        },
    ));
    let door = FrontDoor::new(
        node.services.clone(),
        tunnels.clone(),
        dns,
        OriginTls::new(&origin_roots(file)?).map_err(|e| anyhow::anyhow!("{e}"))?,
        FrontDoorConfig {
            identity: node.identity.clone(),
            attempt_timeout: file.connect.attempt_timeout,
        },
    );
    let listener = tokio::net::TcpListener::bind(file.connect.listen)
        .await
        .with_context(|| format!("cannot listen on {}", file.connect.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "CONNECT front door listening");
    let (dialer, pipes) = pipe_pair();
    let stop = node.stopped();
    node.tasks.spawn(door.clone().serve_in_process(pipes, stop));
    let stop = node.stopped();
    node.tasks
        .spawn(door.serve_with(listener, node.limits, stop));
    Ok(FrontDoorHandle {
        addr,
        in_process: dialer,
    })
}

/// Where this process's front door is.
struct FrontDoorHandle {
    addr: SocketAddr,
    in_process: PipeDialer,
}

/// Where this process's binding-worker is.
struct BindingHandle {
    /// In-memory pipes, for a runtime in this process.
    in_process: Endpoint,
    /// Its RPC listener (`host:port` or `unix:/path`), for other processes.
    listening: String,
}

/// The binding-worker: the binding RPC on its listener, and over in-memory
/// pipes for a runtime in this process.
async fn start_binding(
    node: &mut Node<'_>,
    door: Option<&FrontDoorHandle>,
) -> anyhow::Result<BindingHandle> {
    let file = node.file;
    let door_addr = match (file.binding.front_door, door) {
        (Some(a), _) => a,
        (None, Some(d)) => d.addr,
        (None, None) => file.connect.listen,
    };
    let mut fd = BindingFrontDoor::new(door_addr, &node.identity.client_config(&[]));
    fd.idle_timeout = file.binding.idle_timeout;
    if file.binding.front_door.is_none() {
        fd.in_process = door.map(|d| d.in_process.clone());
    }
    let server = RpcServer::new(BindingWorker::new(node.services.clone(), fd));
    let (dialer, pipes) = pipe_pair();
    let stop = node.stopped();
    node.tasks.spawn(server.clone().serve(pipes, stop));
    let stop = node.stopped();
    let endpoint = match rpc_endpoint(&file.binding.listen)? {
        Endpoint::Tcp(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a}"))?;
            let bound = Endpoint::Tcp(l.local_addr()?);
            let tls = node.identity.server_config(&[]);
            let limits = node.limits;
            node.tasks
                .spawn(async move { server.serve_tls(l, &tls, limits, stop).await });
            bound
        }
        Endpoint::Unix(p) => {
            let l = bind_unix(&p)?;
            node.tasks.spawn(server.serve_with(l, node.limits, stop));
            Endpoint::Unix(p)
        }
        e @ Endpoint::Memory(_) => e, // (never from a config file)
    };
    tracing::info!(?endpoint, "binding-worker listening");
    let listening = match &endpoint {
        Endpoint::Tcp(a) => a.to_string(),
        Endpoint::Unix(p) => format!("unix:{}", p.display()),
        Endpoint::Memory(_) => file.binding.listen.clone(),
    };
    Ok(BindingHandle {
        in_process: Endpoint::Memory(dialer),
        listening,
    })
}

/// A Unix socket for the binding RPC, reachable by this user only: calls on
/// it are not authenticated otherwise. The file is made 0600 right after
/// binding (put it in a 0700 directory to leave no moment at all when others
/// could connect); a directory others may enter is logged.
fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private (0600)", path.display()))?;
    if let Some(dir) = path.parent()
        && let Ok(meta) = std::fs::metadata(dir)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            dir = %dir.display(),
            "the binding RPC socket's directory is open to other users; use a 0700 directory"
        );
    }
    Ok(l)
}

/// The worker runtime: restores the workers the store holds, follows the
/// store for deploys made anywhere, and serves them — here, or with
/// `[runtime] processes` over 1 from that many runtime processes.
async fn start_runtime(
    node: &mut Node<'_>,
    binding: Option<&BindingHandle>,
    link: Option<&Arc<PeerLink>>,
) -> anyhow::Result<(SocketAddr, Arc<Scripts>, Arc<LogHub>)> {
    let file = node.file;
    let processes = file.runtime.processes.max(1);
    let mut engine_config = EngineConfig::new(file.data_dir.join("compiled"));
    // Compiles run in a process of this binary (`warren compile-component`),
    // so their working memory is not left in the node. /proc/self/exe is the
    // running binary even after an upgrade replaced the file.
    engine_config.compiler = Some(PathBuf::from("/proc/self/exe"));
    // The JS engine compiled when Warren was installed (`warren prepare-js`).
    let js = js_dir(file.runtime.js_dir.as_deref());
    let prepared = warren_runtime::prepared::prepared_dir(&js);
    if !node.runtime_process {
        match warren_runtime::prepared::Stamp::read(&prepared) {
            Ok(Some(_)) => {
                tracing::info!(folder = %prepared.display(), "the JS toolchain is prepared")
            }
            Ok(None) => {
                tracing::info!(folder = %prepared.display(), "the JS toolchain is not prepared: the first JS deploy builds and compiles the JS engine (`warren prepare-js` does it once)")
            }
            Err(e) => {
                tracing::warn!(error = %e, folder = %prepared.display(), "the prepared JS toolchain cannot be read; JS deploys build and compile the JS engine")
            }
        }
    }
    engine_config.prepared = Some(prepared.clone());
    if node.runtime_process {
        // The node's instance pool is shared out among its processes.
        engine_config.max_instances = engine_config
            .max_instances
            .div_ceil(processes as u32)
            .max(2);
    }
    let engine = RuntimeEngine::new(engine_config)?;
    let router = Router::new(&file.runtime.workers_domain);
    let rpc = match (&file.runtime.binding_rpc, binding) {
        (Some(s), _) => rpc_endpoint(s)?,
        (None, Some(b)) => b.in_process.clone(),
        (None, None) => rpc_endpoint(&file.binding.listen)?,
    };
    let client: Arc<dyn BindingClient> = Arc::new(RpcBindingClient::new(
        rpc,
        Some(&node.identity.client_config(&[])),
        4,
    ));
    let bundles = file.data_dir.join("bundles");
    let blobs =
        BlobDir::open(&bundles).with_context(|| format!("cannot open {}", bundles.display()))?;
    if let Some(link) = link {
        link.set_content(LocalContent::new(
            blobs.clone(),
            engine.compiled_dir().clone(),
        ));
    }
    // A runtime process takes what its parent fetched from peers from
    // their shared directories.
    let peers = match node.runtime_process {
        true => Some(Arc::new(LocalContent::new(
            blobs.clone(),
            engine.compiled_dir().clone(),
        )) as Arc<dyn PeerContent>),
        false => link.map(|l| l.clone() as Arc<dyn PeerContent>),
    };
    let logs = Arc::new(LogHub::default());
    let scripts = Scripts::new(
        engine,
        router.clone(),
        logs.clone(),
        ScriptsConfig {
            store: node.store.clone(),
            blobs,
            legacy_dir: (!node.runtime_process).then(|| file.data_dir.join("workers")),
            tidy_bundles: !node.runtime_process,
            js: JsBuilder::new(js)
                .with_cache(file.data_dir.join("built"))
                .with_prepared(prepared)
                .with_limits(BuildLimits {
                    timeout: file.runtime.build_timeout,
                    ..BuildLimits::default()
                }),
            client: Some(client),
            max_cpu_ms: file.runtime.max_cpu_ms,
            peers,
            sealer: Arc::new(Sealer::load_or_create(&file.data_dir)?),
        },
    );
    // Follow before restoring, so nothing deployed meanwhile is missed.
    let following = scripts.follow();
    let n = scripts.restore().await?;
    if processes > 1 && !node.runtime_process {
        let addr = start_runtime_processes(node, binding, &scripts, &logs, processes).await?;
        let stop = node.stopped();
        node.tasks.spawn(async move {
            stop.await;
            following.abort();
        });
        return Ok((addr, scripts, logs));
    }
    let listen = file.runtime.listen;
    let listener = match node.runtime_process {
        true => shared_socket(listen).and_then(|s| s.listen(1024)),
        false => tokio::net::TcpListener::bind(listen).await,
    }
    .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, workers = n, domain = %file.runtime.workers_domain, "serving workers");
    let stop = node.stopped();
    let limits = node.limits;
    node.tasks.spawn(async move {
        tokio::select! {
            () = router.serve_with(listener, limits) => {}
            () = stop => {}
        }
        following.abort();
    });
    Ok((addr, scripts, logs))
}

/// A TCP socket bound to `addr` with `SO_REUSEPORT`, which a node's runtime
/// processes (all of this user) bind together.
fn shared_socket(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Reserves the runtime's address (bound, never listening, so no
/// connection waits on it) and starts the runtime processes that serve it.
/// This process keeps its workers loaded for its API (deploys, tails) but
/// serves none.
async fn start_runtime_processes(
    node: &mut Node<'_>,
    binding: Option<&BindingHandle>,
    scripts: &Scripts,
    logs: &Arc<LogHub>,
    count: usize,
) -> anyhow::Result<SocketAddr> {
    let file = node.file;
    let reserved = shared_socket(file.runtime.listen)
        .with_context(|| format!("cannot listen on {}", file.runtime.listen))?;
    let listen = reserved.local_addr()?;
    let binding_rpc = match (&file.runtime.binding_rpc, binding) {
        (Some(s), _) => s.clone(),
        (None, Some(b)) => b.listening.clone(),
        (None, None) => file.binding.listen.clone(),
    };
    let config = file.source.clone().context(
        "runtime.processes over 1 needs the node started from a config file (its processes read it)",
    )?;
    let replicas = crate::processes::start(
        crate::processes::Children {
            config,
            count,
            listen,
            binding_rpc,
            logs: logs.clone(),
        },
        node.stop.clone(),
        &mut node.tasks,
    )
    .await?;
    scripts.set_replicas(replicas);
    let stop = node.stopped();
    node.tasks.spawn(async move {
        stop.await;
        drop(reserved);
    });
    Ok(listen)
}

/// The API: tunnels and VPC services (iris's routes) and, with a runtime in
/// this process, worker scripts (the runtime's routes).
async fn start_api(
    node: &mut Node<'_>,
    admin: Arc<TunnelAdmin>,
    scripts: Option<Arc<Scripts>>,
    write_profile: bool,
) -> anyhow::Result<String> {
    let file = node.file;
    let listener = tokio::net::TcpListener::bind(file.api.listen)
        .await
        .with_context(|| format!("cannot listen on {}", file.api.listen))?;
    let addr = listener.local_addr()?;
    let url = file.api.url(addr);
    let tls = match file.api.tls {
        true => Some(api_tls(file, &node.ca)?),
        false => None,
    };
    let ca_pem = tls.as_ref().and_then(|(_, pem)| pem.as_deref());
    first_start(node.store.as_ref(), &url, ca_pem, write_profile).await?;
    tracing::info!(%addr, "API listening");
    let state = ApiState {
        store: node.store.clone(),
        admin,
    };
    let mut app = router(state);
    if let Some(s) = &scripts {
        app = app.merge(warren_runtime::api::routes(node.store.clone(), s.clone()));
    }
    let stop = node.stopped();
    let service = hyper_util::service::TowerToHyperService::new(app);
    match tls {
        Some((config, _)) => {
            node.tasks.spawn(warren_protocol::listen::serve_https(
                "API",
                listener,
                node.limits,
                |_| {},
                Arc::new(config),
                service,
                stop,
            ));
        }
        None => {
            node.tasks.spawn(warren_protocol::listen::serve_http(
                "API",
                listener,
                node.limits,
                |_| {},
                service,
                stop,
            ));
        }
    }
    Ok(url)
}

/// Prometheus `/metrics`: `build_info`, `process_*`, and the `warren_*`
/// metrics of the parts this node runs.
async fn start_metrics(node: &mut Node<'_>) -> anyhow::Result<SocketAddr> {
    use prometheus_client::registry::Registry;
    let want = node.file.metrics.listen;
    let listener = match warren_protocol::metrics::bind(want, 4).await {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tokio::net::TcpListener::bind(SocketAddr::new(want.ip(), 0)).await
        }
        other => other,
    }
    .with_context(|| format!("cannot listen on {want} for metrics"))?;
    let addr = listener.local_addr()?;
    let mut root = Registry::default();
    warren_protocol::metrics::register_build_info(&mut root, "warren");
    let process = Arc::new(warren_protocol::metrics::ProcessMetrics::default());
    process.register(&mut root);
    let parts = &node.file.parts;
    let warren = root.sub_registry_with_prefix("warren");
    if parts.tunnel {
        warren_iris::metrics::register(warren);
    }
    if parts.runtime {
        warren_runtime::metrics::register(warren);
    }
    if parts.binding {
        warren_binding_worker::metrics::register(warren);
    }
    let registry = Arc::new(root);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (registry, process) = (registry.clone(), process.clone());
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        warren_protocol::metrics::CONTENT_TYPE,
                    )],
                    warren_protocol::metrics::render(&registry, &process),
                )
            }
        }),
    );
    tracing::info!(%addr, "metrics listening");
    let stop = node.stopped();
    node.tasks.spawn(warren_protocol::listen::serve_http(
        "metrics",
        listener,
        node.limits,
        |_| {},
        hyper_util::service::TowerToHyperService::new(app),
        stop,
    ));
    Ok(addr)
}

/// The address a token names for a tunnel edge bound to `bound` without
/// `[tunnel] public_addresses`: the bound address, or on a wildcard (which
/// nobody can dial) the loopback address with its port.
fn token_edge(bound: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let loopback: std::net::IpAddr = match bound {
        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    tracing::warn!(
        %bound,
        "tunnel tokens name {}: set [tunnel] public_addresses for connectors on other machines",
        SocketAddr::new(loopback, bound.port())
    );
    SocketAddr::new(loopback, bound.port())
}

/// Runs the node until Ctrl-C or SIGTERM, on `config_path` (else
/// `./edge.toml` if there is one, else the defaults).
pub async fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    let file = config::load_or_default(config_path)?;
    let node = start(&file, true).await?;
    warren_connector::shutdown_signal().await;
    tracing::info!("shutting down");
    node.stop().await;
    Ok(())
}
