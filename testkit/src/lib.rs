//! Test plumbing with real parts: a private network of the test's own
//! ([`netns`]), a real DNS server inside it ([`dnsmasq`]), real HTTP origins
//! ([`origin`]), a hostile DNS server for rebinding attacks ([`rebind_dns`]),
//! a real etcd ([`etcd`]), and a node's processes in `/proc` ([`procs`]).
//! Tests panic with a clear message when the machine cannot provide them (run
//! `scripts/setup.sh` as root).

pub mod dnsmasq;
pub mod etcd;
pub mod netns;
pub mod origin;
pub mod procs;
pub mod rebind_dns;
pub mod tls;

use std::time::Duration;

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The names in folder `dir`, sorted (panics when it cannot be read).
pub fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| match e {
            Ok(e) => e.file_name().to_string_lossy().into_owned(),
            Err(e) => panic!("cannot read {}: {e}", dir.display()),
        })
        .collect();
    names.sort();
    names
}

/// A port free on `ip` for UDP and for TCP alike at the time of asking (a
/// tunnel edge listens on both with one number; a port taken on TCP would
/// leave it without the TCP fallback).
pub fn free_port_on(ip: std::net::Ipv4Addr) -> u16 {
    for _ in 0..64 {
        let udp = std::net::UdpSocket::bind((ip, 0)).expect("udp port");
        let port = udp.local_addr().expect("udp addr").port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

/// Resident memory of process `pid` in bytes (`VmRSS`), or `None` when it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Samples the RSS of `pids` every 20 ms until dropped; [`RssPeak::peaks`]
/// gives each process's highest sample.
pub struct RssPeak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl RssPeak {
    /// Starts sampling.
    pub fn start(pids: Vec<u32>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = vec![0u64; pids.len()];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    *peak = (*peak).max(rss_bytes(*pid).unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peaks
        });
        RssPeak {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns each process's peak, in the order given.
    pub fn peaks(mut self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}
