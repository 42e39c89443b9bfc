//! Fast failover, end to end with real processes: `warren serve`, connectors
//! inside a network namespace of the test's own, an HTTP origin reachable only
//! through them, and a JS worker calling it through its binding.
//!
//! - A node killed with SIGKILL and started again on the same ports and data
//!   directory answers its connectors' old connections with QUIC stateless
//!   resets (its reset key is kept in the data directory), so they reconnect
//!   at once: the first 200 through the binding comes within 2 s of the node
//!   listening again, not after an idle timeout.
//! - One of two connector replicas of a tunnel killed with SIGKILL under load:
//!   requests on its connections fail over to the other replica (streams not
//!   yet answered move to another connection, dead pooled tunnels are replayed
//!   on new ones), so almost none fail and none takes over 2 s.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren_testkit::dnsmasq::Dnsmasq;
use warren_testkit::netns::NetNs;
use warren_testkit::origin;

mod common;
use common::{Kill, WARREN, connector_bin, first_ok, free_tcp, ok_json, service, warren};

/// Runs `warren serve --config DIR/edge.toml` (written from `config`), its log
/// appended to `DIR/node.log`.
fn serve(dir: &Path, config: &str, profile: &Path) -> Kill {
    let path = dir.join("edge.toml");
    std::fs::write(&path, config).expect("config");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .expect("log");
    Kill(
        Command::new(WARREN)
            .args(["serve", "--config"])
            .arg(&path)
            .env("WARREN_PROFILE", profile)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("warren serve"),
    )
}

/// A connector process with its log kept in memory.
struct Connector {
    process: Kill,
    log: Arc<Mutex<Vec<String>>>,
    /// `/ready` and `/metrics`, on the namespace side of the link.
    metrics: SocketAddr,
}

impl Connector {
    /// Starts `warren-connector run` for `token` inside `ns`, its local port
    /// on `metrics_port` of the namespace's address.
    fn spawn(ns: &NetNs, token: &str, metrics_port: u16) -> Connector {
        let metrics = SocketAddr::new(ns.inner_ip().into(), metrics_port);
        let mut child = ns
            .command(&connector_bin())
            .args(["run", "--grace-period", "1s", "--metrics"])
            .arg(metrics.to_string())
            .env("WARREN_TUNNEL_TOKEN", token)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("connector");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(plain(&line));
            }
        });
        Connector {
            process: Kill(child),
            log,
            metrics,
        }
    }

    /// The log lines containing `needle`.
    fn lines(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().expect("log lock");
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// The registered connections `/ready` reports (0 when it does not answer).
    async fn ready(&self) -> u64 {
        let Ok(tcp) = tokio::net::TcpStream::connect(self.metrics).await else {
            return 0;
        };
        let Ok((_, body)) = origin::get(tcp, "localhost", "/ready").await else {
            return 0;
        };
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["readyConnections"].as_u64())
            .unwrap_or(0)
    }

    async fn wait_ready(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ready().await < n {
            assert!(
                Instant::now() < deadline,
                "the connector did not register {n} connections"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `line` without terminal colour codes (`ESC [ … m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Prints the node's log and the connectors' when the test fails.
struct ShowLogs {
    dir: std::path::PathBuf,
    connectors: Vec<Arc<Mutex<Vec<String>>>>,
}

impl Drop for ShowLogs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let node = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        eprintln!("--- node log");
        for l in node.lines() {
            eprintln!("{l}");
        }
        for (i, log) in self.connectors.iter().enumerate() {
            eprintln!("--- connector {i} log");
            if let Ok(lines) = log.lock() {
                for l in lines.iter() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// A node's config: fixed ports (so a restart listens where it did), the
/// tunnel edge on the host side of `ns`'s link.
fn node_config(ns: &NetNs, api: SocketAddr, runtime: SocketAddr) -> String {
    let udp = std::net::UdpSocket::bind((ns.host_ip(), 0))
        .and_then(|s| s.local_addr())
        .expect("udp port");
    format!(
        "data_dir = \"data\"\n[api]\nlisten = \"{api}\"\n[tunnel]\nlisten = \"{udp}\"\n\
         [connect]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"127.0.0.1:0\"\n\
         [runtime]\nlisten = \"{runtime}\"\nmax_cpu_ms = 60000\n"
    )
}

/// Creates the tunnel `lab`; its id and token.
fn tunnel(profile: &Path) -> (String, String) {
    let tunnel = ok_json(profile, &["tunnel", "create", "lab", "--json"]);
    let id = tunnel["id"].as_str().expect("tunnel id").to_owned();
    let out = warren(profile, &["tunnel", "token", &id]);
    assert!(out.status.success());
    (id, String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Deploys the control-plane test worker as `shop` (VERSION=v1), bound to
/// `service_id` as `API`: `GET /` answers `v1: <what the origin's /hello says>`.
fn deploy(dir: &Path, profile: &Path, service_id: &str) {
    let worker = dir.join("shop");
    std::fs::create_dir_all(worker.join("src")).expect("dir");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/control-plane-worker/src/index.js"
        ),
        worker.join("src/index.js"),
    )
    .expect("copy worker");
    let config = serde_json::json!({
        "name": "shop",
        "main": "src/index.js",
        "vars": { "VERSION": "v1" },
        "limits": { "cpu_ms": 60000 },
        "vpc_services": [{ "binding": "API", "service_id": service_id }],
    });
    std::fs::write(worker.join("warren.json"), config.to_string()).expect("config");
    let out = warren(profile, &["deploy", worker.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const HOST: &str = "shop.workers.localhost";
const ANSWER: &str = "v1: hello from origin";

/// GET / through the runtime: status and body, or why no answer came.
async fn try_get(runtime: SocketAddr) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(runtime)
        .await
        .map_err(|e| e.to_string())?;
    let (status, body) = origin::get(tcp, HOST, "/")
        .await
        .map_err(|e| e.to_string())?;
    Ok((status.as_u16(), String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_has_its_connectors_back_at_once() {
    let ns = NetNs::create().expect("netns");
    let inner: IpAddr = ns.inner_ip().into();
    origin::serve(ns.bind_tcp(&format!("{inner}:8000")).expect("bind")).expect("origin");
    let dns = Dnsmasq::start(&ns, inner, &[("inventory.internal", inner)]).expect("dnsmasq");

    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("profile.json");
    let api: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let config = node_config(&ns, api, runtime);
    let mut node = serve(dir.path(), &config, &profile);
    common::wait_for_profile(&profile);

    let (tunnel_id, token) = tunnel(&profile);
    let connector = Connector::spawn(&ns, &token, 20241);
    let _logs = ShowLogs {
        dir: dir.path().to_owned(),
        connectors: vec![connector.log.clone()],
    };
    // A hostname service: after the restart its name is resolved through the
    // tunnel again (the node's DNS cache is gone with it).
    let resolver = dns.addr().ip().to_string();
    let svc = service(
        &profile,
        &tunnel_id,
        "inventory.internal",
        &resolver,
        &["--http-port", "8000"],
    );
    deploy(dir.path(), &profile, &svc);
    connector.wait_ready(4).await;
    let (status, body) = first_ok(runtime, HOST, "/").await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, ANSWER)
    );

    // SIGKILL: no connection is closed, no record removed. Then at once the
    // same binary, config and data directory.
    drop(node);
    let killed = Instant::now();
    node = serve(dir.path(), &config, &profile);
    while std::net::TcpStream::connect(runtime).is_err() {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the restarted node did not listen"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let listening = Instant::now();
    let (mut tries, mut last) = (0, Err(String::new()));
    while listening.elapsed() < Duration::from_secs(30) {
        tries += 1;
        last = try_get(runtime).await;
        if matches!(&last, Ok((200, _))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_200 = listening.elapsed();
    eprintln!(
        "kill -9 -> restarted node listening: {:?}; listening -> first 200 through the binding: {first_200:?} ({tries} tries)",
        listening - killed
    );
    assert_eq!(
        last.as_ref().map(|(s, b)| (*s, b.as_str())),
        Ok((200, ANSWER))
    );
    assert!(
        first_200 <= Duration::from_secs(2),
        "first 200 came {first_200:?} after the node listened again"
    );

    // The connector saw its connections reset by the restarted node (a
    // stateless reset), not an idle timeout, and re-dialled at once.
    let lost = connector.lines("tunnel connection lost");
    assert!(
        lost.iter().any(|l| l.contains("reset by peer")),
        "no connection was reset: {lost:#?}"
    );
    assert!(
        lost.iter().all(|l| !l.contains("timed out")),
        "a connection timed out instead of being reset: {lost:#?}"
    );
    assert!(
        lost.iter().all(|l| l.contains("retry_in=0ns")),
        "a lost connection waited before re-dialling: {lost:#?}"
    );
    connector.wait_ready(4).await;
    drop(node);
}

/// What one client saw under load.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
    slowest: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_replica_killed_under_load_costs_almost_no_request() {
    let ns = NetNs::create().expect("netns");
    let inner: IpAddr = ns.inner_ip().into();
    origin::serve(ns.bind_tcp(&format!("{inner}:8000")).expect("bind")).expect("origin");

    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("profile.json");
    let api: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let _node = serve(dir.path(), &node_config(&ns, api, runtime), &profile);
    common::wait_for_profile(&profile);

    // One tunnel, two replicas of its connector (4 connections each).
    let (tunnel_id, token) = tunnel(&profile);
    let mut victim = Connector::spawn(&ns, &token, 20241);
    let survivor = Connector::spawn(&ns, &token, 20242);
    let _logs = ShowLogs {
        dir: dir.path().to_owned(),
        connectors: vec![victim.log.clone(), survivor.log.clone()],
    };
    let inner_s = inner.to_string();
    let svc = ok_json(
        &profile,
        &[
            "vpc",
            "service",
            "create",
            "inv",
            "--type",
            "http",
            "--tunnel-id",
            &tunnel_id,
            "--ipv4",
            &inner_s,
            "--http-port",
            "8000",
            "--json",
        ],
    );
    deploy(
        dir.path(),
        &profile,
        svc["service_id"].as_str().expect("service id"),
    );
    victim.wait_ready(4).await;
    survivor.wait_ready(4).await;
    let (status, body) = first_ok(runtime, HOST, "/").await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, ANSWER)
    );

    // 4 clients loop for 6 s; one replica is killed 2 s in.
    let start = Instant::now();
    let run_for = Duration::from_secs(6);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        clients.spawn(async move {
            let mut t = Tally::default();
            while start.elapsed() < run_for {
                let sent = Instant::now();
                let r = try_get(runtime).await;
                let took = sent.elapsed();
                t.slowest = t.slowest.max(took);
                match r {
                    Ok((200, b)) if b == ANSWER => t.ok += 1,
                    other => t.failed.push(format!(
                        "{:?} after {took:?}: {other:?}",
                        sent.duration_since(start)
                    )),
                }
            }
            t
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = start.elapsed();
    let _ = victim.process.0.kill();
    let _ = victim.process.0.wait();

    let mut all = Tally::default();
    while let Some(t) = clients.join_next().await {
        let t = t.expect("client task");
        all.ok += t.ok;
        all.failed.extend(t.failed);
        all.slowest = all.slowest.max(t.slowest);
    }
    let total = all.ok + all.failed.len() as u64;
    eprintln!(
        "replica killed at {killed_at:?}: {total} requests, {} ok, {} failed, slowest {:?}",
        all.ok,
        all.failed.len(),
        all.slowest
    );
    assert!(total >= 200, "too few requests ran: {total}");
    assert!(
        all.failed.len() as u64 * 1000 <= total,
        "more than 0.1% failed: {:#?}",
        all.failed
    );
    assert!(
        all.slowest <= Duration::from_secs(2),
        "a request took {:?}",
        all.slowest
    );
    // The survivor carried on throughout.
    assert_eq!(survivor.ready().await, 4);
}
