//! Edge nodes as a cluster, end to end: a node that holds none of a tunnel's
//! connections relays the binding's stream and its DNS question, over the
//! node-to-node link, to the node that does.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use warren_testkit::dnsmasq::Dnsmasq;
use warren_testkit::etcd::Etcd;
use warren_testkit::netns::NetNs;
use warren_testkit::origin;

mod common;
use common::{
    Kill, ShowLogs, connector_bin, deploy, free_tcp, get, ok_json, serve_node, service, until,
    wait_listening, warren, write_worker,
};

/// Config of node `name` on `etcd` with its data in `data`: its API and
/// runtime addresses; the tunnel edge on a UDP port of `ns`'s host side.
fn node_config(
    name: &str,
    data: &str,
    etcd: &[String],
    ns: &NetNs,
) -> (String, SocketAddr, SocketAddr) {
    let udp = std::net::UdpSocket::bind((ns.host_ip(), 0))
        .and_then(|s| s.local_addr())
        .expect("udp port");
    let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let api: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let endpoints = etcd
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "data_dir = \"{data}\"\nnode_name = \"{name}\"\n[store]\nbackend = \"etcd\"\nendpoints = [{endpoints}]\n\
         [api]\nlisten = \"{api}\"\n[tunnel]\nlisten = \"{udp}\"\n[connect]\nlisten = \"127.0.0.1:0\"\n\
         [binding]\nlisten = \"127.0.0.1:0\"\n[runtime]\nlisten = \"{runtime}\"\nmax_cpu_ms = 60000\n"
    );
    (config, api, runtime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_tunnel_relays_the_stream_and_its_dns_to_the_node_holding_it() {
    let etcd = Etcd::start().expect("etcd");
    let ns = NetNs::create().expect("netns");
    let inner: IpAddr = ns.inner_ip().into();
    origin::serve(ns.bind_tcp(&format!("{inner}:8000")).expect("bind")).expect("origin");
    let dns = Dnsmasq::start(&ns, inner, &[("inventory.internal", inner)]).expect("dnsmasq");

    let dir = tempfile::tempdir().expect("tempdir");
    let _logs = ShowLogs(dir.path().to_owned());
    let profile = dir.path().join("profile.json");
    let endpoints = vec![etcd.endpoint()];
    let (config_a, _, runtime_a) = node_config("a", "data", &endpoints, &ns);
    let (config_b, api_b, _) = node_config("b", "data", &endpoints, &ns);
    let mut node_a = serve_node(dir.path(), "a.toml", &config_a, &profile);
    common::wait_for_profile(&profile);
    let mut node_b = serve_node(
        dir.path(),
        "b.toml",
        &config_b,
        &dir.path().join("unused.json"),
    );
    wait_listening(api_b, "node b's API");

    // The connector dials B only (the token from B's API names B's edge).
    let tunnel = ok_json(&profile, &["tunnel", "create", "lab", "--json"]);
    let tunnel_id = tunnel["id"].as_str().expect("tunnel id").to_owned();
    let b_flag = format!("http://{api_b}");
    let out = warren(&profile, &["tunnel", "token", &tunnel_id, "--api", &b_flag]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let _connector = Kill(
        ns.command(&connector_bin())
            .args(["run", "--token", &token, "--ha-connections", "2"])
            .args(["--grace-period", "1s", "--metrics", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("connector"),
    );
    let resolver = dns.addr().ip().to_string();
    let service_id = service(
        &profile,
        &tunnel_id,
        "inventory.internal",
        &resolver,
        &["--http-port", "8000"],
    );

    let worker = dir.path().join("shop");
    write_worker(&worker, "shop", "v1", Some(&service_id));
    deploy(&profile, &worker, &[]);
    let host = "shop.workers.localhost";
    let want = |s: u16, b: &str| s == 200 && b == "v1: hello from origin";
    let (s, b, _) = until(runtime_a, host, Duration::from_secs(60), want).await;
    assert_eq!(
        (s, b.as_str()),
        (200, "v1: hello from origin"),
        "on A, by relay"
    );

    // Every connection of the tunnel is on B: A served it by relay.
    let info = ok_json(&profile, &["tunnel", "get", &tunnel_id, "--json"]);
    let colos: Vec<&str> = info["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .filter_map(|c| c["colo_name"].as_str())
        .collect();
    assert!(
        !colos.is_empty() && colos.iter().all(|c| *c == "b"),
        "connections on {colos:?}"
    );

    // B gone: A says the service's network is unreachable, and says so fast.
    let _ = node_b.0.kill();
    let _ = node_b.0.wait();
    let start = Instant::now();
    let (s, b, _) = until(runtime_a, host, Duration::from_secs(30), |_, b| {
        b == "ProxyError: destination_unavailable"
    })
    .await;
    assert_eq!(
        (s, b.as_str()),
        (502, "ProxyError: destination_unavailable"),
        "on A with B gone"
    );
    let elapsed = start.elapsed();
    let (s, _) = get(runtime_a, host, "/").await;
    assert_eq!(s, 502);
    eprintln!("B killed -> A answers 502 after {elapsed:?}");
    let _ = node_a.0.kill();
}

/// One answer seen by the load: which node, status, latency.
struct Answer {
    node: &'static str,
    ok: bool,
    took: Duration,
    what: String,
}

/// Closed-loop GETs on `runtime` (fresh connection each) until `stop` is set.
fn load(
    node: &'static str,
    runtime: SocketAddr,
    host: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    out: std::sync::Arc<std::sync::Mutex<Vec<Answer>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let start = Instant::now();
            let answer = match tokio::net::TcpStream::connect(runtime).await {
                Ok(tcp) => origin::get(tcp, host, "/")
                    .await
                    .map(|(s, b)| (s.as_u16(), String::from_utf8_lossy(&b).into_owned()))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let took = start.elapsed();
            let (ok, what) = match answer {
                Ok((200, b)) if b == "v1: hello from origin" => (true, String::new()),
                Ok((s, b)) => (false, format!("{s} {b}")),
                Err(e) => (false, e),
            };
            if let Ok(mut v) = out.lock() {
                v.push(Answer {
                    node,
                    ok,
                    took,
                    what,
                });
            }
        }
    })
}

/// Waits until the node's runtime answers the worker with 200; how long.
async fn serving_again(runtime: SocketAddr, host: &str) -> Duration {
    let (s, b, took) = until(runtime, host, Duration::from_secs(30), |s, b| {
        s == 200 && b == "v1: hello from origin"
    })
    .await;
    assert_eq!((s, b.as_str()), (200, "v1: hello from origin"));
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_everywhere_and_ride_out_kills_under_load() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use warren_testkit::etcd::EtcdCluster;

    let mut etcd = EtcdCluster::start(3).expect("etcd cluster");
    let ns = NetNs::create().expect("netns");
    let inner: IpAddr = ns.inner_ip().into();
    origin::serve(ns.bind_tcp(&format!("{inner}:8000")).expect("bind")).expect("origin");

    let dir = tempfile::tempdir().expect("tempdir");
    let _logs = ShowLogs(dir.path().to_owned());
    let profile = dir.path().join("profile.json");
    let endpoints = etcd.endpoints();
    // Three nodes, each its own data directory: they share only etcd.
    let (config_a, _, runtime_a) = node_config("a", "data-a", &endpoints, &ns);
    let (config_b, api_b, runtime_b) = node_config("b", "data-b", &endpoints, &ns);
    let (config_c, api_c, runtime_c) = node_config("c", "data-c", &endpoints, &ns);
    let edge = |config: &str| -> String {
        let line = config
            .lines()
            .skip_while(|l| *l != "[tunnel]")
            .nth(1)
            .expect("tunnel listen");
        line.trim_start_matches("listen = \"")
            .trim_end_matches('"')
            .to_owned()
    };
    let (edge_b, edge_c) = (edge(&config_b), edge(&config_c));
    let _a = serve_node(dir.path(), "a.toml", &config_a, &profile);
    common::wait_for_profile(&profile);
    let mut node_b = serve_node(dir.path(), "b.toml", &config_b, &dir.path().join("b.json"));
    let _c = serve_node(dir.path(), "c.toml", &config_c, &dir.path().join("c.json"));
    wait_listening(api_b, "node b's API");
    wait_listening(api_c, "node c's API");

    // Two connector replicas of one tunnel, each dialling B and C only.
    let tunnel = ok_json(&profile, &["tunnel", "create", "lab", "--json"]);
    let tunnel_id = tunnel["id"].as_str().expect("tunnel id").to_owned();
    let out = warren(&profile, &["tunnel", "token", &tunnel_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let replica = || {
        Kill(
            ns.command(&connector_bin())
                .args(["run", "--token", &token, "--ha-connections", "2"])
                .args(["--edge", &edge_b, "--edge", &edge_c])
                .args(["--grace-period", "1s", "--metrics", "127.0.0.1:0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("connector"),
        )
    };
    let mut replica_1 = replica();
    let _replica_2 = replica();
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
    let service_id = svc["service_id"].as_str().expect("service id").to_owned();

    // Deployed through A's API: served by A (by relay), B and C.
    let worker = dir.path().join("shop");
    write_worker(&worker, "shop", "v1", Some(&service_id));
    deploy(&profile, &worker, &[]);
    let deployed = Instant::now();
    let host = "shop.workers.localhost";
    for (name, runtime) in [("A", runtime_a), ("B", runtime_b), ("C", runtime_c)] {
        serving_again(runtime, host).await;
        let after = deployed.elapsed();
        // B and C fetch the bundle and the compiled code from a peer; how
        // fast that is is bench/cluster's measure (release build), not this test's.
        eprintln!("deploy through A -> first 200 on {name} after {after:?}");
    }
    let colos: Vec<String> =
        ok_json(&profile, &["tunnel", "get", &tunnel_id, "--json"])["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .filter_map(|c| c["colo_name"].as_str().map(str::to_owned))
            .collect();
    assert!(
        colos.iter().all(|c| c == "b" || c == "c") && colos.len() == 4,
        "the replicas hold 2 connections each, on B and C: {colos:?}"
    );

    // Load through the binding on A (relayed) and C (its own connections).
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = [
        ("A", runtime_a),
        ("A", runtime_a),
        ("C", runtime_c),
        ("C", runtime_c),
    ]
    .into_iter()
    .map(|(n, r)| load(n, r, host, stop.clone(), answers.clone()))
    .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // kill -9 node B, then start it again: it serves again within 2 s of listening.
    let _ = node_b.0.kill();
    let _ = node_b.0.wait();
    tokio::time::sleep(Duration::from_secs(2)).await;
    node_b = serve_node(dir.path(), "b.toml", &config_b, &dir.path().join("b.json"));
    wait_listening(runtime_b, "node b's runtime");
    let back = serving_again(runtime_b, host).await;
    eprintln!("node B restarted: first 200 {back:?} after it listens");
    assert!(
        back <= Duration::from_secs(2),
        "B served again only after {back:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // kill -9 one etcd member, then bring it back.
    etcd.kill(0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    etcd.restart(0).expect("etcd member restarts");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // kill -9 one of the two connector replicas.
    let _ = replica_1.0.kill();
    let _ = replica_1.0.wait();
    tokio::time::sleep(Duration::from_secs(4)).await;

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let answers = std::mem::take(&mut *answers.lock().expect("answers"));
    let total = answers.len();
    let failed: Vec<&Answer> = answers.iter().filter(|a| !a.ok).collect();
    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    let slow: Vec<String> = answers
        .iter()
        .filter(|a| a.took > Duration::from_secs(2))
        .map(|a| format!("{} {:?} {}", a.node, a.took, a.what))
        .collect();
    eprintln!(
        "under load: {total} requests, {} failed, slowest {slowest:?}; failures: {:?}",
        failed.len(),
        failed
            .iter()
            .map(|a| format!("{} {}", a.node, a.what))
            .collect::<Vec<_>>()
    );
    assert!(total >= 1000, "only {total} requests under load");
    assert!(
        failed.len() * 1000 <= total,
        "{} of {total} requests failed (more than 0.1%)",
        failed.len()
    );
    assert!(slow.is_empty(), "requests over 2 s: {slow:?}");
    drop(node_b);
}
