//! A real dnsmasq answering inside a namespace, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::NetNs;

/// A running dnsmasq; it answers only for what it was given (`--local=/internal/`
/// makes every other `.internal` name NXDOMAIN).
pub struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Dnsmasq {
    /// Starts dnsmasq in `ns` on `listen:53` with `records` as `(name, ip)` pairs,
    /// answered with a TTL of 30 s.
    pub fn start(
        ns: &NetNs,
        listen: IpAddr,
        records: &[(&str, IpAddr)],
    ) -> anyhow::Result<Dnsmasq> {
        Self::start_with_ttl(ns, listen, records, 30)
    }

    /// Like [`Dnsmasq::start`], answering (and denying) with TTL `ttl` seconds.
    pub fn start_with_ttl(
        ns: &NetNs,
        listen: IpAddr,
        records: &[(&str, IpAddr)],
        ttl: u32,
    ) -> anyhow::Result<Dnsmasq> {
        let mut cmd = ns.command("dnsmasq");
        cmd.args([
            "--no-daemon",
            "--port=53",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--log-queries",
            "--log-facility=-",
            "--local=/internal/",
            "--user=root",
        ]);
        cmd.arg(format!("--listen-address={listen}"));
        cmd.arg(format!("--local-ttl={ttl}"));
        cmd.arg(format!("--neg-ttl={ttl}"));
        for (name, ip) in records {
            cmd.arg(format!("--host-record={name},{ip}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("starting dnsmasq (package dnsmasq-base)")?;
        let stderr = child.stderr.take().context("dnsmasq stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let d = Dnsmasq {
            child,
            addr: SocketAddr::new(listen, 53),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.log_contains("started") {
            if Instant::now() > deadline {
                bail!("dnsmasq did not start: {:?}", d.log_lines());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// Where it answers.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn log_contains(&self, needle: &str) -> bool {
        self.log_lines().iter().any(|l| l.contains(needle))
    }

    /// How many queries for `name` it has received.
    pub fn queries_for(&self, name: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.contains("query[") && l.contains(&format!(" {name} from")))
            .count()
    }

    /// [`Self::queries_for`] once the log has caught up with `expected`
    /// (dnsmasq may write a line just after answering), or after 2 s.
    pub async fn logged_queries(&self, name: &str, expected: usize) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let n = self.queries_for(name);
            if n >= expected || std::time::Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
