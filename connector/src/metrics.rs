//! The connector's local HTTP port: `/ready`, `/healthcheck`, Prometheus
//! `/metrics` (the connector's own `warren_connector_*` metrics, `build_info`
//! and the standard `process_*` metrics), as cloudflared serves them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use warren_protocol::ErrorCode;

type Labels = Vec<(&'static str, &'static str)>;

/// Counters and gauges the connector exports.
pub struct Metrics {
    registry: Registry,
    /// Connections by state: `connecting`, `registered`, `backoff`.
    pub connections: Family<Labels, Gauge>,
    /// Data streams being served now.
    pub streams_active: Gauge,
    /// Data streams served since start.
    pub streams_total: Counter,
    /// DNS queries answered, by `result` (`ok` / `error`).
    pub dns_queries: Family<Labels, Counter>,
    /// Failed streams and queries, by `code`.
    pub errors: Family<Labels, Counter>,
    /// Payload bytes, by `direction` (`to_origin` / `from_origin`).
    pub bytes: Family<Labels, Counter>,
    ready: AtomicI64,
    connector_id: String,
    process: ProcessMetrics,
}

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
#[derive(Default)]
struct ProcessMetrics {
    cpu_seconds: Counter<f64, AtomicU64>,
    cpu_seen: Mutex<f64>,
    resident_memory_bytes: Gauge,
    virtual_memory_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time_seconds: Gauge<f64, AtomicU64>,
}

impl ProcessMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            self.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            self.resident_memory_bytes.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            self.virtual_memory_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            self.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            self.max_fds.clone(),
        );
        registry.register(
            "process_threads",
            "Number of OS threads in the process",
            self.threads.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            self.start_time_seconds.clone(),
        );
    }

    /// Reads `/proc/self` (Linux); on a failed read the values stay as they were.
    fn refresh(&self) {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100) as f64;
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .filter(|p| *p > 0)
            .unwrap_or(4096);
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            // Fields after the command name, from field 3 (state) on.
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            if let (Some(utime), Some(stime)) = (num(11), num(12)) {
                let total = (utime + stime) as f64 / ticks;
                if let Ok(mut seen) = self.cpu_seen.lock()
                    && total > *seen
                {
                    self.cpu_seconds.inc_by(total - *seen);
                    *seen = total;
                }
            }
            if let Some(threads) = num(17) {
                self.threads.set(threads as i64);
            }
            if let Some(vsize) = num(20) {
                self.virtual_memory_bytes.set(vsize as i64);
            }
            if let Some(rss) = num(21) {
                self.resident_memory_bytes.set(rss as i64 * page);
            }
            let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
            if let (Some(start), Some(boot)) = (num(19), boot) {
                self.start_time_seconds
                    .set(boot as f64 + start as f64 / ticks);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            self.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
        }
    }
}

impl Metrics {
    /// A fresh set of metrics for connector `connector_id`.
    pub fn new(connector_id: String) -> Self {
        let mut root = Registry::default();
        // (OpenMetrics adds `_info`: exported as `build_info`, as cloudflared.)
        root.register(
            "build",
            "Build information about the connector",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("type", "warren-connector"),
                ("arch", std::env::consts::ARCH),
                ("os", std::env::consts::OS),
            ]),
        );
        let process = ProcessMetrics::default();
        process.register(&mut root);
        let registry = root.sub_registry_with_prefix("warren_connector");
        let connections = Family::<Labels, Gauge>::default();
        let streams_active = Gauge::default();
        let streams_total = Counter::default();
        let dns_queries = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        registry.register(
            "connections",
            "Tunnel connections by state",
            connections.clone(),
        );
        registry.register(
            "streams_active",
            "Data streams being served",
            streams_active.clone(),
        );
        registry.register("streams", "Data streams served", streams_total.clone());
        registry.register("dns_queries", "DNS queries answered", dns_queries.clone());
        registry.register("errors", "Failures by ProxyError code", errors.clone());
        registry.register("bytes", "Payload bytes carried", bytes.clone());
        Metrics {
            registry: root,
            connections,
            streams_active,
            streams_total,
            dns_queries,
            errors,
            bytes,
            ready: AtomicI64::new(0),
            connector_id,
            process,
        }
    }

    /// Moves one connection from state `from` to `to` (either may be `None`).
    pub fn conn_state(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if let Some(f) = from {
            self.connections.get_or_create(&vec![("state", f)]).dec();
            if f == "registered" {
                self.ready.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if let Some(t) = to {
            self.connections.get_or_create(&vec![("state", t)]).inc();
            if t == "registered" {
                self.ready.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Counts a failure by its code.
    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&vec![("code", code.as_str())])
            .inc();
    }

    /// Registered connections now.
    pub fn ready_connections(&self) -> i64 {
        self.ready.load(Ordering::Acquire)
    }

    fn render(&self) -> String {
        self.process.refresh();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

async fn ready(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let n = m.ready_connections();
    let status = if n > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": status.as_u16(),
        "readyConnections": n,
        "connectorId": m.connector_id,
    })
    .to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

/// Serves the local HTTP port on `listener` until the process ends (accept
/// errors back off, connections are capped, slow heads and idle connections
/// are closed, as on every Warren listener).
pub async fn serve(listener: tokio::net::TcpListener, m: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/healthcheck", get(|| async { "OK\n" }))
        .route("/metrics", get(metrics))
        .with_state(m);
    let limits = warren_protocol::listen::ConnLimits {
        max_connections: 256,
        ..Default::default()
    };
    let service = hyper_util::service::TowerToHyperService::new(app);
    warren_protocol::listen::serve_http(
        "metrics",
        listener,
        limits,
        |_| {},
        service,
        std::future::pending(),
    )
    .await;
    Ok(())
}

/// Binds the metrics address `addr`; while it is taken, the next port up,
/// `fallback` more times (cloudflared's 20241–20245). The last error when
/// none is free.
pub async fn bind(addr: SocketAddr, fallback: u16) -> std::io::Result<tokio::net::TcpListener> {
    let mut port = addr.port();
    let mut left = fallback;
    loop {
        match tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && left > 0 && port < u16::MAX => {
                tracing::info!(port, "metrics port taken; trying the next");
                port += 1;
                left -= 1;
            }
            other => return other,
        }
    }
}
