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
