//! The runtime's Prometheus metrics: requests by worker and outcome, and the
//! CPU time workers spent. Process-wide; a node adds them to its registry
//! with [`register`].

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use serde::{Deserialize, Serialize};

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
    /// Every series this process has counted in, so its totals can be
    /// reported ([`RuntimeMetrics::totals`]).
    series: Mutex<HashMap<Series, Counter>>,
}

/// One series of the runtime's metrics: `outcome` set for a request count,
/// absent for CPU milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Series {
    /// Owning account.
    pub account: String,
    /// Worker name.
    pub worker: String,
    /// The request outcome; `None` for the CPU-milliseconds series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl Series {
    fn labels(&self) -> Labels {
        let mut l = vec![
            ("account", self.account.clone()),
            ("worker", self.worker.clone()),
        ];
        if let Some(o) = &self.outcome {
            l.push(("outcome", o.clone()));
        }
        l
    }
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
        let counters = WorkerCounters {
            cpu_ms: self.cpu_ms.get_or_create(&who).clone(),
            ok: self.requests.get_or_create(&ok).clone(),
            who,
        };
        let series = |outcome: Option<&str>| Series {
            account: account.to_owned(),
            worker: worker.to_owned(),
            outcome: outcome.map(str::to_owned),
        };
        self.remember(series(None), &counters.cpu_ms);
        self.remember(series(Some("ok")), &counters.ok);
        counters
    }

    fn remember(&self, series: Series, counter: &Counter) {
        if let Ok(mut s) = self.series.lock() {
            s.entry(series).or_insert_with(|| counter.clone());
        }
    }

    /// Every series this process counted in, with its total so far.
    pub fn totals(&self) -> Vec<(Series, u64)> {
        self.series
            .lock()
            .map(|s| s.iter().map(|(k, c)| (k.clone(), c.get())).collect())
            .unwrap_or_default()
    }

    /// Adds `n` to `series` (counts another process of this node made).
    pub fn add(&self, series: &Series, n: u64) {
        let family = match series.outcome {
            Some(_) => &self.requests,
            None => &self.cpu_ms,
        };
        family.get_or_create(&series.labels()).inc_by(n);
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
        let m = metrics();
        let counter = m.requests.get_or_create(&labels).clone();
        counter.inc();
        let series = Series {
            account: self.who[0].1.clone(),
            worker: self.who[1].1.clone(),
            outcome: Some(outcome.to_owned()),
        };
        m.remember(series, &counter);
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
