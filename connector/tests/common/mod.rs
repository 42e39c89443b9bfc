//! Shared harness of the end-to-end tests: an edge on the host, the
//! `warren-connector` binary inside a network namespace of the test's own.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use tokio::sync::oneshot;
use warren_iris::tunnel_admin::create_tunnel;
use warren_iris::{EdgeConfig, TunnelEdge, Tunnels};
use warren_protocol::ErrorCode;
use warren_protocol::token::TunnelToken;
use warren_store::{SqliteStore, Store};
use warren_testkit::netns::NetNs;
use warren_testkit::{origin, wait_for};

pub const CONNECTOR: &str = env!("CARGO_BIN_EXE_warren-connector");
pub const METRICS_PORT: u16 = 20241;
pub const LONG: Duration = Duration::from_secs(60);

/// A running edge (iris's tunnel half) with a way to stop it.
pub struct Edge {
    pub tunnels: Tunnels,
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Edge {
    pub fn start(store: Arc<dyn Store>, listen: SocketAddr, data_dir: &std::path::Path) -> Edge {
        let mut config = EdgeConfig::new(listen, data_dir.to_owned());
        config.edge_name = "test-edge".into();
        let edge = TunnelEdge::bind(config, store).expect("edge binds");
        let (stop, stopped) = oneshot::channel::<()>();
        let tunnels = edge.tunnels();
        let addr = edge.local_addr().expect("edge address");
        let fingerprint = edge.ca().fingerprint();
        let task = tokio::spawn(edge.run(async {
            let _ = stopped.await;
        }));
        Edge {
            tunnels,
            addr,
            fingerprint,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// The connector process, with its log captured.
pub struct Connector {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub metrics: SocketAddr,
}

impl Connector {
    pub fn spawn(ns: &NetNs, token: &str, extra: &[String]) -> Connector {
        let metrics = SocketAddr::new(IpAddr::V4(ns.inner_ip()), METRICS_PORT);
        let mut cmd = ns.command(CONNECTOR);
        cmd.args([
            "run",
            "--metrics",
            &metrics.to_string(),
            "--grace-period",
            "20s",
        ])
        .args(extra)
        .env("WARREN_TUNNEL_TOKEN", token)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("connector starts");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("connector: {line}");
                sink.lock().expect("log lock").push(line);
            }
        });
        Connector {
            child,
            log,
            metrics,
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log_count(needle) > 0
    }

    pub fn log_count(&self, needle: &str) -> usize {
        let log = self.log.lock().expect("log lock");
        log.iter().filter(|l| l.contains(needle)).count()
    }

    /// GET a path of the connector's local HTTP port.
    pub async fn local(&self, path: &str) -> Option<(StatusCode, String)> {
        let tcp = tokio::net::TcpStream::connect(self.metrics).await.ok()?;
        let (status, body) = origin::get(tcp, "localhost", path).await.ok()?;
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    pub fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "connector did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's world: namespace, store, edge, a tunnel and its token.
pub struct World {
    pub ns: NetNs,
    pub store: Arc<SqliteStore>,
    pub data: tempfile::TempDir,
    pub edge: Edge,
    pub tunnel_id: String,
    pub token: TunnelToken,
}

impl World {
    pub async fn new() -> World {
        let ns = NetNs::create().expect("network namespace (run the tests as root)");
        let store = Arc::new(SqliteStore::open_in_memory().expect("store"));
        let data = tempfile::tempdir().expect("tempdir");
        let account = store.create_account("test").await.expect("account");
        let edge = Edge::start(
            store.clone(),
            SocketAddr::new(IpAddr::V4(ns.host_ip()), 0),
            data.path(),
        );
        let (tunnel, token) = create_tunnel(
            store.as_ref(),
            &account.id,
            "test",
            vec![edge.addr.to_string()],
            edge.fingerprint.clone(),
        )
        .await
        .expect("tunnel");
        World {
            ns,
            store,
            data,
            edge,
            tunnel_id: tunnel.id,
            token,
        }
    }

    pub fn connector(&self, extra: &[String]) -> Connector {
        Connector::spawn(&self.ns, &self.token.encode(), extra)
    }

    pub fn connections(&self) -> Vec<std::sync::Arc<warren_iris::registry::LiveConnection>> {
        self.edge.tunnels.registry().connections(&self.tunnel_id)
    }

    pub async fn wait_registered(&self, n: usize) {
        let tunnels = self.edge.tunnels.clone();
        let id = self.tunnel_id.clone();
        wait_for(&format!("{n} registered connections"), LONG, || {
            let live = tunnels.registry().candidates(&id).len();
            async move { (live == n).then_some(()) }
        })
        .await;
    }

    /// An HTTP origin inside the namespace, on its private loopback.
    pub fn origin(&self) -> SocketAddr {
        origin::serve(self.ns.bind_tcp("127.0.0.1:0").expect("origin listener")).expect("origin")
    }

    pub async fn open(
        &self,
        dest: SocketAddr,
        flow: &str,
    ) -> Result<warren_iris::TunnelStream, ErrorCode> {
        self.edge
            .tunnels
            .open_tcp(&self.tunnel_id, dest, Duration::from_secs(5), flow)
            .await
            .map_err(|e| e.code)
    }

    pub async fn get(&self, dest: SocketAddr, path: &str) -> Result<(StatusCode, u64), ErrorCode> {
        let s = self.open(dest, "test").await?;
        origin::get_len(s, "origin.internal", path)
            .await
            .map_err(|_| ErrorCode::ConnectionTerminated)
    }
}

/// GET a path of the connector's local port; panics when it does not answer.
pub async fn w_local(c: &Connector, path: &str) -> (StatusCode, String) {
    c.local(path).await.expect("connector local port answers")
}
