//! The binding-worker's Prometheus metrics: binding calls by outcome.
//! Process-wide; a node adds them to its registry with [`register`].

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use warren_protocol::ProxyError;

type Labels = Vec<(&'static str, &'static str)>;

/// The metrics the binding-worker updates.
#[derive(Default)]
pub struct BindingMetrics {
    /// Binding calls by `code`: `ok`, or the ProxyError code the worker saw.
    pub calls: Family<Labels, Counter>,
}

static METRICS: LazyLock<BindingMetrics> = LazyLock::new(BindingMetrics::default);

/// This process's binding-worker metrics.
pub fn metrics() -> &'static BindingMetrics {
    &METRICS
}

impl BindingMetrics {
    /// Counts one finished call.
    pub fn call<T>(&self, result: &Result<T, ProxyError>) {
        let code = match result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        self.calls.get_or_create(&vec![("code", code)]).inc();
    }
}

/// Adds the binding-worker's metrics to `registry` under `warren_`.
pub fn register(registry: &mut Registry) {
    registry.register(
        "binding_calls",
        "Binding calls by outcome: ok or the ProxyError code",
        metrics().calls.clone(),
    );
}
