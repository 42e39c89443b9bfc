//! The mission end to end, with real processes: `warren serve` (runtime,
//! binding-worker, iris, API), a `warren-connector` inside a network namespace
//! of the test's own, dnsmasq answering `inventory.internal` there, and an
//! HTTP origin reachable only through the connector. A JS worker deployed with
//! `warren deploy` calls it through a VPC binding; failures reach JS as
//! `ProxyError: <code>`; `warren tail` sees its console.log.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use warren_protocol::ErrorCode;
use warren_runtime::BindingClient;
use warren_runtime::BindingContext;
use warren_runtime::binding_rpc::{Endpoint, RpcBindingClient};
use warren_testkit::dnsmasq::Dnsmasq;
use warren_testkit::netns::NetNs;
use warren_testkit::origin;

mod common;
use common::{
    WARREN, first_ok, free_tcp, get, service, start_serve, tunnel_with_connector, warren,
};

fn write_worker(dir: &Path, api: &str, down: &str, nodns: &str) {
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
            "{{\n  // test worker\n  \"name\": \"shop\",\n  \"main\": \"src/index.js\",\n  \"vars\": {{ \"GREETING\": \"via binding\" }},\n  \"limits\": {{ \"cpu_ms\": 60000 }},\n  \"vpc_services\": [\n    {{ \"binding\": \"API\", \"service_id\": \"{api}\" }},\n    {{ \"binding\": \"DOWN\", \"service_id\": \"{down}\" }},\n    {{ \"binding\": \"NODNS\", \"service_id\": \"{nodns}\" }},\n  ],\n}}\n"
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
    let rpc: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let tunnel_port = warren_testkit::free_port_on(ns.host_ip());
    let config = format!(
        "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n[tunnel]\nlisten = \"{}:{tunnel_port}\"\n\
         [connect]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"{rpc}\"\n[runtime]\nlisten = \"{runtime}\"\nmax_cpu_ms = 60000\n",
        ns.host_ip()
    );
    let node = start_serve(Command::new(WARREN), dir.path(), &config).node;

    // A tunnel, a connector inside the private network, two services.
    let (tunnel_id, mut connector) = tunnel_with_connector(&profile, &ns);
    let resolver = dns.addr().ip().to_string();
    let svc = |host: &str, port: &str| {
        service(
            &profile,
            &tunnel_id,
            host,
            &resolver,
            &["--http-port", port],
        )
    };
    let api = svc("inventory.internal", "8000");
    let down = svc("inventory.internal", "8001");
    let nodns = svc("nowhere.internal", "8000");

    // Deploy-time verification: an unknown service fails naming the binding.
    let bad = dir.path().join("bad");
    write_worker(&bad, &api, "00000000-0000-4000-8000-000000000000", &nodns);
    let out = warren(&profile, &["deploy", bad.to_str().expect("path")]);
    assert!(
        !out.status.success(),
        "deploy with an unknown service must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("binding DOWN"), "{err}");

    let good = dir.path().join("good");
    write_worker(&good, &api, &down, &nodns);
    let out = warren(&profile, &["deploy", good.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Follow the logs before sending requests.
    let (_tail, mut lines) = common::tail_json(&profile, "shop");

    let host = "shop.workers.localhost";
    let (status, body) = first_ok(runtime, host, "/hello").await;
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

    // A name the private network's DNS does not know.
    let (status, body) = get(runtime, host, "/nodns").await;
    assert_eq!((status, &body[..]), (502, &b"ProxyError: dns_error"[..]));

    // 200 concurrent binding calls all succeed.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        calls.spawn(get(runtime, host, "/hello"));
    }
    let mut ok = 0;
    while let Some(done) = calls.join_next().await {
        let (status, body) = done.expect("call task");
        assert_eq!(
            (status, &body[..]),
            (200, &b"via binding: hello from origin"[..])
        );
        ok += 1;
    }
    assert_eq!(ok, 200);

    // 100 MB uploaded through the worker to the origin (which counts it) and
    // 100 MB downloaded back, with the node's and the connector's memory
    // bounded meanwhile. (fetch() is half-duplex, as the Fetch standard's
    // `duplex: "half"`: the answer is read once the upload is sent.)
    const BODY: u64 = 100_000_000;
    let pids = vec![node.0.id(), connector.0.id()];
    let before: Vec<u64> = pids
        .iter()
        .map(|p| warren_testkit::rss_bytes(*p).expect("rss"))
        .collect();
    let sampler = warren_testkit::RssPeak::start(pids);
    let tcp = tokio::net::TcpStream::connect(runtime)
        .await
        .expect("runtime");
    let (status, counted) = origin::post(tcp, host, "/upload", BODY)
        .await
        .expect("upload");
    assert_eq!(
        (status.as_u16(), String::from_utf8_lossy(&counted).as_ref()),
        (200, BODY.to_string().as_str())
    );
    let tcp = tokio::net::TcpStream::connect(runtime)
        .await
        .expect("runtime");
    let (status, got) = origin::get_len(tcp, host, &format!("/bytes/{BODY}"))
        .await
        .expect("download");
    assert_eq!((status.as_u16(), got), (200, BODY));
    let peaks = sampler.peaks();
    for ((name, before), peak) in ["warren serve", "connector"]
        .iter()
        .zip(&before)
        .zip(&peaks)
    {
        let grew = peak.saturating_sub(*before);
        // A whole body buffered anywhere would show as 100 MB or more; the
        // worker instances' own heaps (kept by the pool) account for most
        // of what the node grows.
        assert!(
            grew < 48 << 20,
            "{name} grew by {} MiB while 100 MB went each way",
            grew >> 20
        );
    }

    // A binding context forged by a caller holding a node certificate still
    // cannot reach another account's service; a client of another cluster
    // does not get a TLS connection at all.
    let node = common::node_identity(&dir.path().join("data"), "forger").await;
    let forged = forged_call(rpc, &node.client_config(&[]), &api, "another-account").await;
    assert_eq!(forged, Err(ErrorCode::ServiceNotFound));
    let stranger = warren_iris::NodeIdentity::issue(
        &warren_iris::EdgeCa::generate().expect("another CA"),
        "stranger",
    )
    .expect("identity");
    let wrong = forged_call(rpc, &stranger.client_config(&[]), &api, "another-account").await;
    assert_eq!(wrong, Err(ErrorCode::DestinationUnavailable));

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

    // With the connector stopped, the service's network is unreachable.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(connector.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop the connector");
    // (It lets pooled tunnels finish for its 1 s grace period, then exits.)
    let exited = connector.0.wait().expect("connector exit");
    assert!(exited.success(), "the connector stops cleanly on SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let (s, b) = get(runtime, host, "/hello").await;
        if &b[..] != b"via binding: hello from origin" || Instant::now() > deadline {
            break (s, b);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (502, "ProxyError: destination_unavailable")
    );
}

/// Sends one binding call straight to the binding-worker's RPC endpoint over
/// TLS with `tls`, with a context claiming `account` owns `service`; the
/// error code it gets.
async fn forged_call(
    rpc: SocketAddr,
    tls: &rustls::ClientConfig,
    service: &str,
    account: &str,
) -> Result<u16, ErrorCode> {
    use http_body_util::BodyExt;
    let client = RpcBindingClient::new(Endpoint::Tcp(rpc), Some(tls), 1);
    let ctx = BindingContext {
        account_id: account.into(),
        worker: "shop".into(),
        binding: "API".into(),
        service_id: service.into(),
        request_id: "forged".into(),
    };
    let body = http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let req = hyper::Request::get("http://inventory.internal/hello")
        .body(body)
        .expect("request");
    client
        .fetch(ctx, req)
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.code)
}
