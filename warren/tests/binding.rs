//! The mission end to end, with real processes: `warren serve` (runtime,
//! binding-worker, iris, API), a `warren-connector` inside a network namespace
//! of the test's own, dnsmasq answering `inventory.internal` there, and an
//! HTTP origin reachable only through the connector. A JS worker deployed with
//! `warren deploy` calls it through a VPC binding; failures reach JS as
//! `ProxyError: <code>`; `warren tail` sees its console.log.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use warren_testkit::dnsmasq::Dnsmasq;
use warren_testkit::netns::NetNs;
use warren_testkit::origin;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// The `warren-connector` binary next to `warren` (built here if the run has not).
fn connector_bin() -> String {
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

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn warren(profile: &Path, args: &[&str]) -> Output {
    Command::new(WARREN)
        .args(args)
        .env("WARREN_PROFILE", profile)
        .env_remove("WARREN_API")
        .env_remove("WARREN_API_TOKEN")
        .env_remove("WARREN_ACCOUNT_ID")
        .output()
        .expect("warren runs")
}

fn ok_json(profile: &Path, args: &[&str]) -> Value {
    let out = warren(profile, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// GET through the runtime with the worker's Host; (status, body).
async fn get(runtime: SocketAddr, host: &str, path: &str) -> (u16, bytes::Bytes) {
    let tcp = tokio::net::TcpStream::connect(runtime)
        .await
        .expect("runtime");
    let (status, body) = origin::get(tcp, host, path).await.expect("request");
    (status.as_u16(), body)
}

fn write_worker(dir: &Path, api: &str, down: &str) {
    std::fs::create_dir_all(dir.join("src")).expect("dir");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/binding-worker/src/index.js"
        ),
        dir.join("src/index.js"),
    )
    .expect("copy worker");
    std::fs::write(
        dir.join("wrangler.jsonc"),
        format!(
            "{{\n  // test worker\n  \"name\": \"shop\",\n  \"main\": \"src/index.js\",\n  \"vars\": {{ \"GREETING\": \"via binding\" }},\n  \"limits\": {{ \"cpu_ms\": 5000 }},\n  \"vpc_services\": [\n    {{ \"binding\": \"API\", \"service_id\": \"{api}\" }},\n    {{ \"binding\": \"DOWN\", \"service_id\": \"{down}\" }},\n  ],\n}}\n"
        ),
    )
    .expect("config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_worker_reaches_a_private_service_through_its_binding() {
    let ns = NetNs::create().expect("netns");
    let inner: IpAddr = ns.inner_ip().into();
    let listener = ns
        .bind_tcp(&format!("{inner}:8000"))
        .expect("origin listener");
    origin::serve(listener).expect("origin");
    let dns = Dnsmasq::start(&ns, inner, &[("inventory.internal", inner)]).expect("dnsmasq");

    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("profile.json");
    let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let tunnel_port = std::net::UdpSocket::bind((ns.host_ip(), 0))
        .and_then(|s| s.local_addr())
        .expect("udp port")
        .port();
    let config = format!(
        "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n[tunnel]\nlisten = \"{}:{tunnel_port}\"\n\
         [connect]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"127.0.0.1:0\"\n[runtime]\nlisten = \"{runtime}\"\n",
        ns.host_ip()
    );
    std::fs::write(dir.path().join("edge.toml"), config).expect("config");
    let _node = Kill(
        Command::new(WARREN)
            .args(["serve", "--config"])
            .arg(dir.path().join("edge.toml"))
            .env("WARREN_PROFILE", &profile)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("warren serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !profile.exists() {
        assert!(Instant::now() < deadline, "the edge did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A tunnel, a connector inside the private network, two services.
    let tunnel = ok_json(&profile, &["tunnel", "create", "lab", "--json"]);
    let tunnel_id = tunnel["id"].as_str().expect("tunnel id").to_owned();
    let token = warren(&profile, &["tunnel", "token", &tunnel_id]);
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let _connector = Kill(
        ns.command(&connector_bin())
            .args(["run", "--token", &token, "--ha-connections", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("connector"),
    );
    let resolver = dns.addr().ip().to_string();
    let svc = |port: &str| {
        ok_json(
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
                "--hostname",
                "inventory.internal",
                "--resolver-ips",
                &resolver,
                "--http-port",
                port,
                "--json",
            ],
        )["service_id"]
            .as_str()
            .expect("service id")
            .to_owned()
    };
    let api = svc("8000");
    let down = svc("8001");

    // Deploy-time verification: an unknown service fails naming the binding.
    let bad = dir.path().join("bad");
    write_worker(&bad, &api, "00000000-0000-4000-8000-000000000000");
    let out = warren(&profile, &["deploy", bad.to_str().expect("path")]);
    assert!(
        !out.status.success(),
        "deploy with an unknown service must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("binding DOWN"), "{err}");

    let good = dir.path().join("good");
    write_worker(&good, &api, &down);
    let out = warren(&profile, &["deploy", good.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Follow the logs before sending requests.
    let mut tail = Kill(
        Command::new(WARREN)
            .args(["tail", "shop", "--format", "json"])
            .env("WARREN_PROFILE", &profile)
            .stdout(Stdio::piped())
            .spawn()
            .expect("tail"),
    );
    let mut lines = BufReader::new(tail.0.stdout.take().expect("stdout")).lines();
    let hello = lines.next().expect("tail hello").expect("line");
    assert!(hello.contains("connected"), "{hello}");

    let host = "shop.workers.localhost";
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (s, b) = get(runtime, host, "/hello").await;
        if s == 200 || Instant::now() > deadline {
            break (s, b);
        }
        // The connector may still be registering.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"via binding: hello from origin");

    // A 20 MB body streams back through every hop.
    let (status, body) = get(runtime, host, "/bytes/20000000").await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 20_000_000);

    // Failures are catchable errors with the right code.
    let (status, body) = get(runtime, host, "/refused").await;
    assert_eq!(
        (status, &body[..]),
        (502, &b"ProxyError: connection_refused"[..])
    );

    // The tail saw the first successful request's console.log.
    let found = tokio::task::spawn_blocking(move || {
        for line in lines.by_ref() {
            let line = line.ok()?;
            if line.contains("binding answered 200: hello from origin") {
                return Some(line);
            }
        }
        None
    })
    .await
    .expect("tail reader")
    .expect("the tail shows the worker's console.log");
    let ev: Value = serde_json::from_str(&found).expect("tail JSON");
    assert_eq!(ev["scriptName"], "shop");
    assert_eq!(ev["status"], 200);
    assert!(ev["requestId"].as_str().is_some_and(|r| r.len() == 32));

    // A service a worker binds cannot be deleted.
    let out = warren(&profile, &["vpc", "service", "delete", &api]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bound by worker(s) shop"));
}
