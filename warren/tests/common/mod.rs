//! Shared by warren's end-to-end tests: the binaries, child processes that die
//! with the test, the CLI run against a profile, and GETs through the runtime.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use warren_testkit::origin;

/// The `warren` binary under test.
pub const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// The `warren-connector` binary next to `warren` (built here if the run has not).
pub fn connector_bin() -> String {
    let p = Path::new(WARREN).with_file_name("warren-connector");
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "warren-connector"])
            .status()
            .expect("cargo build");
        assert!(st.success(), "building warren-connector failed");
    }
    p.to_string_lossy().into_owned()
}

/// A child process killed (and reaped) when dropped.
pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback TCP port free at the time of asking, and not one this test
/// was given before.
pub fn free_tcp() -> u16 {
    // Two binds in a row can get the same port. A node given one port for
    // two listeners moves the second to the next port, and the test then
    // talks to the wrong listener (seen: /metrics read from the runtime).
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// `warren ARGS` with the client profile `profile` and none of the
/// environment's `WARREN_*` client settings.
pub fn warren_command(profile: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(WARREN);
    c.args(args)
        .env("WARREN_PROFILE", profile)
        .env_remove("WARREN_API")
        .env_remove("WARREN_API_TOKEN")
        .env_remove("WARREN_ACCOUNT_ID")
        .env_remove("WARREN_CA_CERT");
    c
}

/// Runs `warren ARGS` with the client profile `profile`.
pub fn warren(profile: &Path, args: &[&str]) -> Output {
    warren_command(profile, args).output().expect("warren runs")
}

/// Runs `warren ARGS` (which must succeed) and parses its JSON output.
pub fn ok_json(profile: &Path, args: &[&str]) -> Value {
    let out = warren(profile, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// GET through the runtime with the worker's Host; (status, body).
pub async fn get(runtime: SocketAddr, host: &str, path: &str) -> (u16, bytes::Bytes) {
    let tcp = tokio::net::TcpStream::connect(runtime)
        .await
        .expect("runtime");
    let (status, body) = origin::get(tcp, host, path).await.expect("request");
    (status.as_u16(), body)
}

/// Creates a tunnel named `lab` and starts `warren-connector` for it inside
/// `ns` (2 HA connections, 1 s grace period); the tunnel id and the connector.
pub fn tunnel_with_connector(profile: &Path, ns: &warren_testkit::netns::NetNs) -> (String, Kill) {
    let tunnel = ok_json(profile, &["tunnel", "create", "lab", "--json"]);
    let tunnel_id = tunnel["id"].as_str().expect("tunnel id").to_owned();
    let token = warren(profile, &["tunnel", "token", &tunnel_id]);
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let connector = Kill(
        ns.command(&connector_bin())
            .args(["run", "--token", &token, "--ha-connections", "2"])
            .args(["--grace-period", "1s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("connector"),
    );
    (tunnel_id, connector)
}

/// Creates an http VPC service `inv` for `hostname` through `tunnel_id`,
/// resolved by `resolver`, with the extra `flags` (ports, TLS mode); its id.
pub fn service(
    profile: &Path,
    tunnel_id: &str,
    hostname: &str,
    resolver: &str,
    flags: &[&str],
) -> String {
    let mut args = vec![
        "vpc",
        "service",
        "create",
        "inv",
        "--type",
        "http",
        "--tunnel-id",
        tunnel_id,
        "--hostname",
        hostname,
        "--resolver-ips",
        resolver,
        "--json",
    ];
    args.extend_from_slice(flags);
    ok_json(profile, &args)["service_id"]
        .as_str()
        .expect("service id")
        .to_owned()
}

/// A `warren serve` started by [`start_serve`], with its first-start profile.
pub struct Served {
    /// The node (killed when dropped).
    pub node: Kill,
    /// The client profile it wrote.
    pub profile: std::path::PathBuf,
    /// The API's address.
    pub api: SocketAddr,
    /// The first account.
    pub account_id: String,
    /// Its admin token.
    pub token: String,
}

/// Writes `config` to `dir/edge.toml` and runs `serve --config` on it with
/// `warren` — the program of `cmd`, which may also be a wrapper (`prlimit …
/// WARREN`, `ip netns exec NS WARREN`) — then waits for the first-start
/// profile.
pub fn start_serve(mut cmd: Command, dir: &Path, config: &str) -> Served {
    std::fs::write(dir.join("edge.toml"), config).expect("config");
    let profile = dir.join("profile.json");
    let node = Kill(
        cmd.args(["serve", "--config"])
            .arg(dir.join("edge.toml"))
            .env("WARREN_PROFILE", &profile)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("warren serve"),
    );
    wait_for_profile(&profile);
    let p: Value =
        serde_json::from_slice(&std::fs::read(&profile).expect("profile")).expect("profile JSON");
    let api = p["api"]
        .as_str()
        .and_then(|u| {
            u.strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
        })
        .and_then(|a| a.trim_end_matches('/').parse().ok())
        .expect("API address");
    Served {
        node,
        api,
        account_id: p["account_id"].as_str().expect("account").to_owned(),
        token: p["token"].as_str().expect("token").to_owned(),
        profile,
    }
}

/// Waits until `warren serve` has written the first-start profile.
pub fn wait_for_profile(profile: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !profile.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the edge did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// GETs `path` until it answers 200 (the connector may still be
/// registering) or 30 s pass; the last answer.
pub async fn first_ok(runtime: SocketAddr, host: &str, path: &str) -> (u16, bytes::Bytes) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, b) = get(runtime, host, path).await;
        if s == 200 || std::time::Instant::now() > deadline {
            return (s, b);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A certificate from the cluster CA of the SQLite store in `data_dir`, as
/// every node on that store issues itself (whoever reads the store can).
pub async fn node_identity(data_dir: &Path, name: &str) -> warren_iris::NodeIdentity {
    use warren_store::Store;
    let store = warren_store::SqliteStore::open(&data_dir.join("warren.db")).expect("store");
    let record = store
        .cluster_ca()
        .await
        .expect("store read")
        .expect("the store holds a cluster CA");
    let ca = warren_iris::EdgeCa::from_record(&record).expect("a usable CA");
    warren_iris::NodeIdentity::issue(&ca, name).expect("node identity")
}

/// Sends `METHOD path` with no body and a bearer token to the API at `api`;
/// the response's status.
pub fn api_request(api: SocketAddr, method: &str, path: &str, token: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).expect("API");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {api}\r\nauthorization: Bearer {token}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"))
}

/// Writes the test worker as `name` with `VERSION=version`, bound to
/// `service` when given.
pub fn write_worker(dir: &Path, name: &str, version: &str, service: Option<&str>) {
    std::fs::create_dir_all(dir.join("src")).expect("dir");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/control-plane-worker/src/index.js"
        ),
        dir.join("src/index.js"),
    )
    .expect("copy worker");
    let mut config = serde_json::json!({
        "name": name,
        "main": "src/index.js",
        "vars": { "VERSION": version },
        "limits": { "cpu_ms": 60000 },
    });
    if let Some(id) = service {
        config["vpc_services"] = serde_json::json!([{ "binding": "API", "service_id": id }]);
    }
    std::fs::write(dir.join("warren.json"), config.to_string()).expect("config");
}

/// `warren deploy DIR` with `profile` (and `extra` flags); panics on failure.
pub fn deploy(profile: &Path, dir: &Path, extra: &[&str]) {
    let mut args = vec!["deploy", dir.to_str().expect("path")];
    args.extend_from_slice(extra);
    let out = warren(profile, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `warren serve --config` on `config` (written to `dir/name`; its log
/// to `dir/name.log`).
pub fn serve_node(dir: &Path, name: &str, config: &str, profile: &Path) -> Kill {
    let path = dir.join(name);
    std::fs::write(&path, config).expect("config");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
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

/// Prints the tail of every node log in its folder when the test fails.
pub struct ShowLogs(pub std::path::PathBuf);
impl Drop for ShowLogs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- {} (first and last 25 lines)", path.display());
                for l in lines.iter().take(25) {
                    eprintln!("{l}");
                }
                eprintln!("...");
                for l in &lines[lines.len().saturating_sub(25).max(25.min(lines.len()))..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GETs until `want(status, body)` holds or `limit` passes; the last answer
/// and how long it took.
pub async fn until(
    runtime: SocketAddr,
    host: &str,
    limit: Duration,
    want: impl Fn(u16, &str) -> bool,
) -> (u16, String, Duration) {
    let start = Instant::now();
    loop {
        let (s, b) = get(runtime, host, "/").await;
        let b = String::from_utf8_lossy(&b).into_owned();
        if want(s, &b) || start.elapsed() > limit {
            return (s, b, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The runtime's Rust test guest (a `wasi:http/proxy` component answering
/// `/hello`, `/env?NAME`, …): deploys without a JS build. Built once per
/// test process, into the guest's own target directory.
pub fn test_guest() -> &'static [u8] {
    static WASM: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    WASM.get_or_init(|| {
        let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/guest");
        let target = guest.join("target");
        let built = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(guest.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("cargo runs");
        assert!(built.success(), "building the test guest failed");
        std::fs::read(target.join("wasm32-wasip2/release/warren_test_guest.wasm"))
            .expect("the guest's wasm")
    })
}

/// What a listener did with a client: its answer, or how the connection ended.
#[derive(Debug)]
pub enum Answer {
    /// Bytes came back (an HTTP answer, or whatever was sent).
    Bytes(Vec<u8>),
    /// The server refused the TLS handshake with this alert.
    Alert(rustls::AlertDescription),
    /// The connection failed otherwise (the reason shows in failure messages).
    Failed(#[allow(dead_code)] String),
}

/// Connects to `addr` over TLS with `tls`, sends `request` and reads until
/// the server closes.
pub async fn over_tls(addr: SocketAddr, tls: rustls::ClientConfig, request: &[u8]) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let name = warren_iris::NodeIdentity::server_name();
    let io = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // TLS 1.3: the client's side of the handshake ends before the server
        // has judged its certificate, so a refusal shows on the first read.
        let mut s = connector.connect(name, tcp).await?;
        s.write_all(request).await?;
        let mut out = Vec::new();
        match s.read_to_end(&mut out).await {
            // (hyper closes after `connection: close` without close_notify.)
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        Ok::<_, std::io::Error>(out)
    };
    match tokio::time::timeout(Duration::from_secs(20), io).await {
        Ok(Ok(out)) => Answer::Bytes(out),
        Ok(Err(e)) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(a)) => Answer::Alert(*a),
            _ => Answer::Failed(e.to_string()),
        },
        Err(_) => Answer::Failed("no answer within 20 s".into()),
    }
}

/// The status, `warren-proxy-error` code and JSON `message` of an answer.
pub fn refusal(answer: &Answer) -> (u16, String, String) {
    let Answer::Bytes(bytes) = answer else {
        panic!("expected an HTTP answer, got {answer:?}");
    };
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let code = head
        .lines()
        .find_map(|l| l.strip_prefix("warren-proxy-error: "))
        .unwrap_or("")
        .to_owned();
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code, message)
}

/// The `/metrics` text of a node's metrics port.
pub async fn metrics_text(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics body")
}

/// The value of the sample `name{labels}` in Prometheus text, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok()).flatten()
    })
}

/// `warren tail WORKER --format json` with `profile`, once it said it is
/// connected: the process and its lines.
pub fn tail_json(
    profile: &Path,
    worker: &str,
) -> (
    Kill,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut tail = Kill(
        warren_command(profile, &["tail", worker, "--format", "json"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tail"),
    );
    let mut lines = std::io::BufReader::new(tail.0.stdout.take().expect("stdout")).lines();
    let hello = lines.next().expect("tail hello").expect("line");
    assert!(hello.contains("connected"), "{hello}");
    (tail, lines)
}
