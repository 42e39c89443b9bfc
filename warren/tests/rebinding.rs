//! DNS rebinding cannot carry a worker's global `fetch()` to loopback: the
//! runtime resolves a name once, checks every address, and dials exactly the
//! address it checked.
//!
//! The node runs inside a network namespace of the test's own whose
//! `resolv.conf` points at a hostile DNS server answering, with TTL 0, a
//! public address and `127.0.0.1` in turn. An origin listens on the
//! namespace's loopback: it must never see a connection. (The namespace has no
//! route to the internet, so the public answers fail at once: nothing leaves
//! the machine.)

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use warren_testkit::netns::NetNs;
use warren_testkit::rebind_dns::RebindDns;

mod common;
use common::{WARREN, get, start_serve, warren};

const WORKER: &str = r#"export default {
  async fetch() {
    const seen = [];
    for (let i = 0; i < 20; i++) {
      try {
        const r = await fetch("http://rebind.test:8000/secret");
        seen.push(`status ${r.status}`);
      } catch (e) {
        seen.push("refused");
      }
    }
    return new Response(seen.join(","));
  },
};
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebinding_name_never_reaches_loopback() {
    let ns = NetNs::create().expect("netns");
    ns.set_resolv_conf("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        .expect("resolv.conf");
    let dns_socket = ns
        .run_inside(|| std::net::UdpSocket::bind("127.0.0.1:53"))
        .expect("namespace")
        .expect("DNS socket");
    let dns = RebindDns::serve(
        dns_socket,
        Ipv4Addr::new(93, 184, 216, 34),
        Ipv4Addr::LOCALHOST,
    )
    .expect("DNS server");

    // The loopback origin the attacker is after, counting every connection.
    let origin = ns
        .run_inside(|| std::net::TcpListener::bind("127.0.0.1:8000"))
        .expect("namespace")
        .expect("origin");
    let reached = Arc::new(AtomicUsize::new(0));
    let r = reached.clone();
    std::thread::spawn(move || {
        for conn in origin.incoming() {
            if conn.is_ok() {
                r.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let inner = ns.inner_ip();
    let runtime: SocketAddr = (inner, 8080).into();
    let config = format!(
        "data_dir = \"data\"\n[api]\nlisten = \"{inner}:8787\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\
         [connect]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"127.0.0.1:0\"\n[runtime]\nlisten = \"{runtime}\"\n"
    );
    let node = start_serve(ns.command(WARREN), dir.path(), &config);
    let profile = node.profile.clone();

    let project = dir.path().join("rebind");
    std::fs::create_dir_all(&project).expect("dir");
    std::fs::write(project.join("worker.js"), WORKER).expect("worker");
    std::fs::write(
        project.join("warren.json"),
        r#"{ "name": "rebind", "main": "worker.js", "limits": { "cpu_ms": 30000 } }"#,
    )
    .expect("config");
    let out = warren(&profile, &["deploy", project.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (status, body) = get(runtime, "rebind.workers.localhost", "/").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(seen, vec!["refused"; 20].join(","), "every fetch refused");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "a rebinding answer reached the loopback origin"
    );
    // The name really was looked up (once per fetch), with answers in turn.
    assert!(dns.a_queries() >= 20, "{} A queries", dns.a_queries());
}
