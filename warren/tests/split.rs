//! The binding path across three processes, as on separate machines: iris
//! (API, tunnel edge, CONNECT front door), the binding-worker, and the runtime
//! (with the worker-scripts API), each a `warren serve` with only its parts,
//! sharing one store. A JS worker reaches private http and https origins (one
//! per `cert_verification_mode` outcome) through a real connector in a network
//! namespace, and so does `examples/rust-worker` (a Rust component); a second
//! account cannot bind the first one's service.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use warren_testkit::dnsmasq::Dnsmasq;
use warren_testkit::netns::NetNs;
use warren_testkit::origin;
use warren_testkit::tls::{TestCa, self_signed};

mod common;
use common::{
    Kill, WARREN, first_ok, free_tcp, get, service, tunnel_with_connector, wait_for_profile, warren,
};

/// Starts `warren serve --config DIR/NAME` with `config` written there.
fn serve(dir: &Path, name: &str, config: &str, profile: &Path) -> Kill {
    let path = dir.join(name);
    std::fs::write(&path, config).expect("config");
    Kill(
        Command::new(WARREN)
            .args(["serve", "--config"])
            .arg(&path)
            .env("WARREN_PROFILE", profile)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("warren serve"),
    )
}

/// Waits until something accepts TCP connections on `addr`.
fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The PEM text of a DER certificate.
fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_binding_worker_and_iris_as_three_processes() {
    // The private network: an http origin, three https origins, and its DNS.
    let ns = NetNs::create().expect("netns");
    let inner: IpAddr = ns.inner_ip().into();
    origin::serve(ns.bind_tcp(&format!("{inner}:8000")).expect("bind")).expect("origin");
    let ca = TestCa::new().expect("ca");
    let tls_origin = |port: u16, config| {
        let l = ns.bind_tcp(&format!("{inner}:{port}")).expect("bind");
        origin::serve_tls(l, config).expect("tls origin");
    };
    tls_origin(
        8443,
        ca.server_config(&["inventory.internal"]).expect("cert"),
    );
    tls_origin(8444, ca.server_config(&["other.internal"]).expect("cert"));
    tls_origin(8445, self_signed(&["inventory.internal"]).expect("cert"));
    let dns = Dnsmasq::start(&ns, inner, &[("inventory.internal", inner)]).expect("dnsmasq");

    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("profile.json");
    std::fs::write(dir.path().join("origin-ca.pem"), pem(&ca.cert())).expect("ca file");
    let connect: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let rpc: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let runtime_api: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let tunnel_port = warren_testkit::free_port_on(ns.host_ip());
    let tunnel = format!("{}:{tunnel_port}", ns.host_ip());
    let off = |parts: &[&str]| {
        let all = ["api", "tunnel", "connect", "runtime", "binding"];
        let lines: Vec<String> = all
            .iter()
            .map(|p| format!("{p} = {}", parts.contains(p)))
            .collect();
        format!("[parts]\n{}\n", lines.join("\n"))
    };

    // iris first: it creates the account and the cluster CA in the store
    // (each process issues itself a node certificate from it) and the
    // sealing key the others share through the data directory.
    let _iris = serve(
        dir.path(),
        "iris.toml",
        &format!(
            "data_dir = \"data\"\n{}[api]\nlisten = \"127.0.0.1:0\"\n[tunnel]\nlisten = \"{tunnel}\"\n\
             [connect]\nlisten = \"{connect}\"\norigin_ca_files = [\"origin-ca.pem\"]\n",
            off(&["api", "tunnel", "connect"])
        ),
        &profile,
    );
    wait_for_profile(&profile);
    wait_listening(connect, "the CONNECT front door");
    let _binding = serve(
        dir.path(),
        "binding.toml",
        &format!(
            "data_dir = \"data\"\n{}[tunnel]\nlisten = \"127.0.0.1:0\"\n\
             [binding]\nlisten = \"{rpc}\"\nfront_door = \"{connect}\"\n",
            off(&["binding"])
        ),
        &profile,
    );
    let _runtime = serve(
        dir.path(),
        "runtime.toml",
        &format!(
            "data_dir = \"data\"\n{}[api]\nlisten = \"{runtime_api}\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\
             [runtime]\nlisten = \"{runtime}\"\nbinding_rpc = \"{rpc}\"\nmax_cpu_ms = 60000\n",
            off(&["api", "runtime"])
        ),
        &profile,
    );
    wait_listening(rpc, "the binding-worker");
    wait_listening(runtime_api, "the runtime's API");

    // A tunnel with a connector inside the private network, and services.
    let (tunnel_id, _connector) = tunnel_with_connector(&profile, &ns);
    let resolver = dns.addr().ip().to_string();
    let svc = |port_flag: &str, port: &str, mode: &str| {
        service(
            &profile,
            &tunnel_id,
            "inventory.internal",
            &resolver,
            &[port_flag, port, "--cert-verification-mode", mode],
        )
    };
    let bindings = [
        ("API", svc("--http-port", "8000", "verify_full")),
        ("DOWN", svc("--http-port", "8001", "verify_full")),
        ("FULL_OK", svc("--https-port", "8443", "verify_full")),
        (
            "FULL_WRONG_NAME",
            svc("--https-port", "8444", "verify_full"),
        ),
        ("CA_WRONG_NAME", svc("--https-port", "8444", "verify_ca")),
        ("CA_SELF_SIGNED", svc("--https-port", "8445", "verify_ca")),
        ("OFF_SELF_SIGNED", svc("--https-port", "8445", "disabled")),
    ];

    // The worker, deployed to the runtime's own API.
    let worker_dir = dir.path().join("worker");
    let write_worker = |dir: &Path, bindings: &[(&str, String)]| {
        std::fs::create_dir_all(dir.join("src")).expect("dir");
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/split-worker/src/index.js"
            ),
            dir.join("src/index.js"),
        )
        .expect("copy worker");
        let vpc: Vec<String> = bindings
            .iter()
            .map(|(b, id)| format!("{{ \"binding\": \"{b}\", \"service_id\": \"{id}\" }}"))
            .collect();
        std::fs::write(
            dir.join("warren.json"),
            format!(
                "{{ \"name\": \"split\", \"main\": \"src/index.js\", \"limits\": {{ \"cpu_ms\": 60000 }},\n  \"vpc_services\": [{}] }}\n",
                vpc.join(", ")
            ),
        )
        .expect("config");
    };
    write_worker(&worker_dir, &bindings);
    let api_flag = format!("http://{runtime_api}");
    let out = warren(
        &profile,
        &[
            "deploy",
            worker_dir.to_str().expect("path"),
            "--api",
            &api_flag,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let host = "split.workers.localhost";
    let (status, body) = first_ok(runtime, host, "/hello").await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "200: hello from origin")
    );
    let (status, body) = get(runtime, host, "/refused").await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (502, "ProxyError: connection_refused")
    );

    // https through the binding, per the service's cert_verification_mode.
    for (binding, want_status, want_body) in [
        ("FULL_OK", 200, "200: hello from origin"),
        ("FULL_WRONG_NAME", 502, "ProxyError: tls_error"),
        ("CA_WRONG_NAME", 200, "200: hello from origin"),
        ("CA_SELF_SIGNED", 502, "ProxyError: tls_error"),
        ("OFF_SELF_SIGNED", 200, "200: hello from origin"),
    ] {
        let (status, body) = get(runtime, host, &format!("/tls/{binding}")).await;
        assert_eq!(
            (status, String::from_utf8_lossy(&body).as_ref()),
            (want_status, want_body),
            "{binding}"
        );
    }

    // examples/rust-worker, built for wasm32-wasip2 and uploaded as a
    // component, calls the same service through its binding helper.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rust-worker");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(example.join("Cargo.toml"))
        .status()
        .expect("cargo runs");
    assert!(built.success(), "building examples/rust-worker failed");
    let wasm = example.join("target/wasm32-wasip2/release/inventory_worker.wasm");
    for (name, service) in [
        ("stock-rs", &bindings[0].1),
        ("stock-rs-down", &bindings[1].1),
    ] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(
            d.join("warren.json"),
            serde_json::json!({
                "name": name,
                "main": wasm,
                "vars": { "GREETING": "Stock report" },
                "vpc_services": [{ "binding": "INVENTORY", "service_id": service }],
            })
            .to_string(),
        )
        .expect("config");
        let out = warren(
            &profile,
            &["deploy", d.to_str().expect("path"), "--api", &api_flag],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (status, body) = get(runtime, "stock-rs.workers.localhost", "/").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let summary: serde_json::Value = serde_json::from_slice(&body).expect("JSON summary");
    assert_eq!(
        summary,
        serde_json::json!({ "title": "Stock report", "items": 4, "total": 172, "low_stock": ["nuts", "springs"] })
    );
    let (status, body) = get(runtime, "stock-rs-down.workers.localhost", "/").await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (502, "ProxyError: connection_refused\n")
    );

    // A second account cannot bind the first one's service.
    let other = warren(
        &profile,
        &[
            "account",
            "create",
            "other",
            "--json",
            "--config",
            dir.path().join("iris.toml").to_str().expect("path"),
        ],
    );
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let other: serde_json::Value = serde_json::from_slice(&other.stdout).expect("JSON");
    let (other_id, other_token) = (
        other["account_id"].as_str().expect("account id"),
        other["token"].as_str().expect("token"),
    );
    let thief = dir.path().join("thief");
    write_worker(&thief, &bindings[..1]);
    let out = warren(
        &profile,
        &[
            "deploy",
            thief.to_str().expect("path"),
            "--api",
            &api_flag,
            "--account-id",
            other_id,
            "--api-token",
            other_token,
        ],
    );
    assert!(!out.status.success(), "a foreign service must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("binding API") && err.contains("does not exist in this account"),
        "{err}"
    );
    // (The name `split` is account A's, so B's refusal came from the binding
    // check, which runs first; A's worker still serves.)
    assert_eq!(get(runtime, host, "/hello").await.0, 200);

    // The store is the one source of truth across the processes: iris's API
    // (a process running no worker) refuses to delete a bound service...
    let out = warren(&profile, &["vpc", "service", "delete", &bindings[0].1]);
    assert!(!out.status.success(), "a bound service must not be deleted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bound by worker(s) split, stock-rs"), "{err}");
    // ...and an edit made there reaches the binding-worker's and the front
    // door's caches (other processes follow the store's change log).
    let out = warren(
        &profile,
        &[
            "vpc",
            "service",
            "update",
            &bindings[0].1,
            "--http-port",
            "8001",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let edited = Instant::now();
    let (status, body) = loop {
        let (status, body) = get(runtime, host, "/hello").await;
        if status != 200 || edited.elapsed() > Duration::from_secs(2) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (502, "ProxyError: connection_refused"),
        "the edited port is used within 2 s"
    );
    // Deleting the worker through the runtime's API frees the name on every
    // process: the runtime stops serving it.
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&profile).expect("profile")).expect("JSON");
    let (account, token) = (
        p["account_id"].as_str().expect("account"),
        p["token"].as_str().expect("token"),
    );
    let status = common::api_request(
        runtime_api,
        "DELETE",
        &format!("/client/v4/accounts/{account}/workers/scripts/split"),
        token,
    );
    assert_eq!(status, 200);
    assert_eq!(get(runtime, host, "/hello").await.0, 404);
}
