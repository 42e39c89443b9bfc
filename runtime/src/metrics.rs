//! The runtime's Prometheus metrics: requests by worker and outcome, and the
//! CPU time workers spent. Process-wide; a node adds them to its registry
//! with [`register`].

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The metrics the runtime updates.
#[derive(Default)]
pub struct RuntimeMetrics {
    /// Requests by `account`, `worker` and `outcome` (the tail event's:
    /// `ok`, `exception`, `exceededCpu`, `exceededMemory`, `exceededWallClock`,
    /// `canceled`).
    pub requests: Family<Labels, Counter>,
    /// Guest CPU milliseconds by `account` and `worker`.
    pub cpu_ms: Family<Labels, Counter>,
}

static METRICS: LazyLock<RuntimeMetrics> = LazyLock::new(RuntimeMetrics::default);

/// This process's runtime metrics.
pub fn metrics() -> &'static RuntimeMetrics {
    &METRICS
}

impl RuntimeMetrics {
    /// The counters of `worker` in `account`, looked up once (a worker keeps
    /// them, so a request adds to them without building labels).
    pub fn worker(&self, account: &str, worker: &str) -> WorkerCounters {
        let who = vec![
            ("account", account.to_owned()),
            ("worker", worker.to_owned()),
        ];
        let mut ok = who.clone();
        ok.push(("outcome", "ok".to_owned()));
        WorkerCounters {
            cpu_ms: self.cpu_ms.get_or_create(&who).clone(),
            ok: self.requests.get_or_create(&ok).clone(),
            who,
        }
    }
}

/// One worker's counters.
#[derive(Clone)]
pub struct WorkerCounters {
    who: Labels,
    cpu_ms: Counter,
    ok: Counter,
}

impl WorkerCounters {
    /// Counts one finished request with `outcome` and the CPU it used.
    pub fn request(&self, outcome: &str, cpu_ms: u64) {
        self.cpu_ms.inc_by(cpu_ms);
        if outcome == "ok" {
            self.ok.inc();
            return;
        }
        let mut labels = self.who.clone();
        labels.push(("outcome", outcome.to_owned()));
        metrics().requests.get_or_create(&labels).inc();
    }
}

/// Adds the runtime's metrics to `registry` under `warren_`.
pub fn register(registry: &mut Registry) {
    let m = metrics();
    registry.register(
        "worker_requests",
        "Worker requests by account, worker and outcome",
        m.requests.clone(),
    );
    registry.register(
        "worker_cpu_milliseconds",
        "CPU milliseconds spent in workers, by account and worker",
        m.cpu_ms.clone(),
    );
}
