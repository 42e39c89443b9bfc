//! The connector's local HTTP port: `/ready`, `/healthcheck`, Prometheus
//! `/metrics` (the connector's own `warren_connector_*` metrics, `build_info`
//! and the standard `process_*` metrics), as cloudflared serves them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use warren_protocol::ErrorCode;
use warren_protocol::metrics::ProcessMetrics;
pub use warren_protocol::metrics::bind;

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

impl Metrics {
    /// A fresh set of metrics for connector `connector_id`.
    pub fn new(connector_id: String) -> Self {
        let mut root = Registry::default();
        warren_protocol::metrics::register_build_info(&mut root, "warren-connector");
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
        warren_protocol::metrics::render(&self.registry, &self.process)
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
        [(header::CONTENT_TYPE, warren_protocol::metrics::CONTENT_TYPE)],
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
