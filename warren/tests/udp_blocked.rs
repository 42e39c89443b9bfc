//! A connector whose network blocks UDP (a real nftables rule in its network
//! namespace): it falls back to TLS over TCP on the edge's port number with no
//! flag, and everything works through it — DNS through the tunnel, a binding
//! call, a streamed body. With TCP blocked too, the log says what to do. When
//! UDP gets through again, its connections move back to QUIC.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use warren_testkit::dnsmasq::Dnsmasq;
use warren_testkit::netns::NetNs;
use warren_testkit::{origin, wait_for};

mod common;
use common::{
    Kill, ShowLogs, WARREN, connector_bin, free_tcp, get, metrics_text, ok_json, sample, service,
    start_serve, warren,
};

const WORKER: &str = r#"
export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    try {
      const r = await env.API.fetch("http://inventory.internal" + path);
      return new Response(r.body, { status: r.status });
    } catch (err) {
      return new Response(err.message, { status: 502 });
    }
  },
};
"#;

/// Runs `nft` inside `ns` (the rules die with the namespace).
fn nft(ns: &NetNs, args: &str) {
    let out = ns
        .command("nft")
        .args(args.split(' '))
        .output()
        .expect("nft runs");
    assert!(
        out.status.success(),
        "nft {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `warren_tunnel_connections{transport=T}` on the edge (0 when absent).
async fn connections(addr: SocketAddr, transport: &str) -> f64 {
    let series = format!("warren_tunnel_connections{{transport=\"{transport}\"}}");
    sample(&metrics_text(addr).await, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_behind_a_udp_block_falls_back_to_tcp_and_returns_to_quic() {
    let ns = NetNs::create().expect("netns");
    let inner: IpAddr = ns.inner_ip().into();
    let listener = ns.bind_tcp(&format!("{inner}:8000")).expect("origin");
    origin::serve(listener).expect("origin");
    let dns = Dnsmasq::start(&ns, inner, &[("inventory.internal", inner)]).expect("dnsmasq");

    let dir = tempfile::tempdir().expect("tempdir");
    let _logs = ShowLogs(dir.path().to_path_buf());
    let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let metrics_addr: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let tunnel_port = warren_testkit::free_port_on(ns.host_ip());
    let config = format!(
        "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n[tunnel]\nlisten = \"{}:{tunnel_port}\"\n\
         [connect]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"127.0.0.1:0\"\n\
         [runtime]\nlisten = \"{runtime}\"\nmax_cpu_ms = 60000\n[metrics]\nlisten = \"{metrics_addr}\"\n",
        ns.host_ip()
    );
    let edge = start_serve(Command::new(WARREN), dir.path(), &config);
    let profile = edge.profile.clone();

    // The private network's firewall: nothing to the edge's port, UDP or TCP.
    nft(&ns, "add table inet egress");
    nft(
        &ns,
        "add chain inet egress out { type filter hook output priority 0 ; }",
    );
    nft(
        &ns,
        &format!("add rule inet egress out udp dport {tunnel_port} drop"),
    );
    nft(
        &ns,
        &format!("add rule inet egress out tcp dport {tunnel_port} reject with tcp reset"),
    );

    let tunnel = ok_json(&profile, &["tunnel", "create", "lab", "--json"]);
    let tunnel_id = tunnel["id"].as_str().expect("tunnel id").to_owned();
    let token = warren(&profile, &["tunnel", "token", &tunnel_id]);
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let log_path = dir.path().join("connector.log");
    let _connector = Kill(
        ns.command(&connector_bin())
            // A connection moving back to QUIC waits up to the grace period
            // for its streams; the binding-worker's pooled tunnels stay open.
            .args(["run", "--ha-connections", "2", "--grace-period", "3s"])
            .env("TUNNEL_TOKEN", &token)
            // Only how soon a TCP connection tries QUIC again (default 30 s).
            .env("WARREN_CONNECTOR_QUIC_RETRY_INTERVAL", "1s")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).expect("log"))
            .spawn()
            .expect("connector"),
    );

    // Both blocked: one line that says what to do.
    let advice = wait_for("the connector's advice", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        async move {
            text.lines()
                .find(|l| l.contains("could not connect to the edge over QUIC (UDP) nor TCP"))
                .map(str::to_owned)
        }
    })
    .await;
    assert!(
        advice.contains("check that the edge address is right and that outbound UDP or TCP to its port is allowed"),
        "{advice}"
    );
    assert_eq!(connections(metrics_addr, "tcp").await, 0.0);

    // TCP allowed, UDP still dropped: the connections come up over TCP.
    nft(&ns, "flush chain inet egress out");
    nft(
        &ns,
        &format!("add rule inet egress out udp dport {tunnel_port} drop"),
    );
    wait_for("two TCP connections", Duration::from_secs(60), || async {
        (connections(metrics_addr, "tcp").await == 2.0).then_some(())
    })
    .await;
    assert_eq!(connections(metrics_addr, "quic").await, 0.0);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("QUIC failed; trying the TCP fallback")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(
                |l| l.contains("registered tunnel connection") && l.contains("transport=\"tcp\"")
                    || l.contains("registered tunnel connection") && l.contains("transport=tcp")
            ),
        "{log}"
    );

    // Everything through TCP: DNS inside the private network, a binding call,
    // a streamed body.
    let svc = service(
        &profile,
        &tunnel_id,
        "inventory.internal",
        &dns.addr().ip().to_string(),
        &["--http-port", "8000"],
    );
    let project = dir.path().join("worker");
    std::fs::create_dir_all(&project).expect("project");
    std::fs::write(project.join("worker.js"), WORKER).expect("worker");
    let config = serde_json::json!({
        "name": "behind-firewall",
        "main": "worker.js",
        "limits": { "cpu_ms": 60000 },
        "vpc_services": [{ "binding": "API", "service_id": svc }],
    });
    std::fs::write(project.join("warren.json"), config.to_string()).expect("config");
    common::deploy(&profile, &project, &[]);
    let host = "behind-firewall.workers.localhost";
    let (status, body) = common::first_ok(runtime, host, "/hello").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"hello from origin");
    assert!(dns.logged_queries("inventory.internal", 1).await >= 1);
    let (status, body) = get(runtime, host, "/bytes/8000000").await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 8_000_000);
    assert_eq!(connections(metrics_addr, "tcp").await, 2.0);

    // UDP unblocked: both connections move back to QUIC, and requests go on.
    nft(&ns, "flush chain inet egress out");
    wait_for("two QUIC connections", Duration::from_secs(30), || async {
        let quic = connections(metrics_addr, "quic").await;
        let tcp = connections(metrics_addr, "tcp").await;
        (quic == 2.0 && tcp == 0.0).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("QUIC gets through again")),
        "{log}"
    );
    let (status, body) = get(runtime, host, "/hello").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"hello from origin");
}
