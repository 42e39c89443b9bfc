//! iris's Prometheus metrics: live tunnel connections on this node and the
//! DNS cache's hits and misses. Process-wide (one iris per process); a node
//! adds them to its registry with [`register`].

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// The metrics iris updates.
#[derive(Default)]
pub struct IrisMetrics {
    /// Registered connector connections on this node, by `transport`.
    pub tunnel_connections: Family<Labels, Gauge>,
    /// DNS cache lookups by `result`: `hit` (answered from the cache,
    /// negative answers included) or `miss` (asked through the tunnel).
    pub dns_cache: Family<Labels, Counter>,
}

static METRICS: LazyLock<IrisMetrics> = LazyLock::new(IrisMetrics::default);

/// This process's iris metrics.
pub fn metrics() -> &'static IrisMetrics {
    &METRICS
}

/// Adds iris's metrics to `registry` under `warren_`.
pub fn register(registry: &mut Registry) {
    let m = metrics();
    registry.register(
        "tunnel_connections",
        "Connector connections registered on this node",
        m.tunnel_connections.clone(),
    );
    registry.register(
        "dns_cache_lookups",
        "DNS cache lookups by result (hit or miss)",
        m.dns_cache.clone(),
    );
}
