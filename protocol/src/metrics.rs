//! Metrics every Warren daemon exports next to its own: the standard
//! `process_*` metrics, `build_info`, and how a metrics port is bound.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// `Content-Type` of a `/metrics` answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Registers `build_info{version,type,arch,os}` (OpenMetrics adds `_info` to
/// the name `build`), as cloudflared exports it; `kind` is the binary.
pub fn register_build_info(registry: &mut Registry, kind: &'static str) {
    registry.register(
        "build",
        "Build information",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            ("type", kind),
            ("arch", std::env::consts::ARCH),
            ("os", std::env::consts::OS),
        ]),
    );
}

/// The registry as Prometheus/OpenMetrics text, `process` refreshed first.
pub fn render(registry: &Registry, process: &ProcessMetrics) -> String {
    process.refresh();
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
#[derive(Default)]
pub struct ProcessMetrics {
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
    /// Adds the metrics to `registry` (unprefixed, as Prometheus names them).
    pub fn register(&self, registry: &mut Registry) {
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
    pub fn refresh(&self) {
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
