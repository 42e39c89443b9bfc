//! Failover between tunnel connections, with a real edge and the real
//! `warren-connector` over QUIC: a dead peer is noticed within 2 s on both
//! sides, and streams and DNS questions that picked a dead connection move to
//! a live one instead of failing. Needs root.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hyper::StatusCode;
use warren_testkit::dnsmasq::Dnsmasq;
use warren_testkit::origin;

/// A raw recursive A query for `name`.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
    m.to_vec().expect("encode")
}

/// A connector replica for `w`'s tunnel with its local port on `metrics_port`
/// (so several can run in one namespace), `ha` connections, its log not kept.
fn replica(w: &World, metrics_port: u16, ha: u8) -> Connector {
    let metrics = SocketAddr::new(IpAddr::V4(w.ns.inner_ip()), metrics_port);
    let child =
        w.ns.command(CONNECTOR)
            .args(["run", "--metrics", &metrics.to_string()])
            .args(["--ha-connections", &ha.to_string()])
            .env("WARREN_TUNNEL_TOKEN", w.token.encode())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("connector starts");
    Connector {
        child,
        log: Arc::new(Mutex::new(Vec::new())),
        metrics,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_dns_questions_leave_a_killed_replica_for_a_live_one() {
    let w = World::new().await;
    let origin = w.origin();
    let dns = Dnsmasq::start(
        &w.ns,
        "127.0.0.53".parse().expect("ip"),
        &[("origin.internal", origin.ip())],
    )
    .expect("dnsmasq");
    let mut victim = replica(&w, 20241, 2);
    let _survivor = replica(&w, 20242, 2);
    w.wait_registered(4).await;
    let (_, ready) = w_local(&victim, "/ready").await;
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("ready JSON");
    let victim_id = ready["connectorId"]
        .as_str()
        .expect("connector id")
        .to_owned();
    let of_victim = |w: &World| {
        w.connections()
            .iter()
            .filter(|c| c.record().connector_id == victim_id)
            .count()
    };
    assert_eq!(of_victim(&w), 2, "two replicas of two connections each");

    // SIGKILL: its connections stay in the edge's registry until their idle
    // timeout, and new work is still spread over them meanwhile.
    victim.child.kill().expect("kill");
    let _ = victim.child.wait();
    let killed = Instant::now();
    let mut work = tokio::task::JoinSet::new();
    for i in 0..12u16 {
        let tunnels = w.edge.tunnels.clone();
        let tunnel_id = w.tunnel_id.clone();
        let resolver = dns.addr();
        work.spawn(async move {
            let started = Instant::now();
            let outcome = if i % 2 == 0 {
                match tunnels
                    .open_tcp(&tunnel_id, origin, Duration::from_secs(5), "failover")
                    .await
                {
                    Ok(s) => origin::get(s, "origin.internal", "/hello")
                        .await
                        .map(|(status, body)| {
                            format!("{status} {}", String::from_utf8_lossy(&body))
                        })
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            } else {
                match tunnels
                    .dns_query(&tunnel_id, Some(resolver), query("origin.internal", i))
                    .await
                {
                    Ok(raw) => Message::from_vec(&raw)
                        .map(|m| format!("{:?} {}", m.response_code(), m.answers().len()))
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            };
            (i, outcome, started.elapsed())
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(done) = work.join_next().await {
        let (i, outcome, took) = done.expect("task");
        let want = if i % 2 == 0 {
            format!("{} hello from origin", StatusCode::OK)
        } else {
            format!("{:?} 1", ResponseCode::NoError)
        };
        assert_eq!(outcome, Ok(want), "operation {i} (after {took:?})");
        assert!(
            took <= Duration::from_secs(2),
            "operation {i} took {took:?}"
        );
        slowest = slowest.max(took);
    }
    eprintln!("12 streams and DNS questions right after the kill: slowest {slowest:?}");

    // The edge noticed the dead replica's connections within 2 s.
    while of_victim(&w) > 0 {
        assert!(
            killed.elapsed() <= Duration::from_secs(2),
            "the dead replica's connections are still registered {:?} after the kill",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "dead replica's connections dropped by the edge {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(w.get(origin, "/hello").await, Ok((StatusCode::OK, 17)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_is_noticed_within_2_s_on_both_sides() {
    let w = World::new().await;
    let c = w.connector(&["--ha-connections".into(), "2".into()]);
    w.wait_registered(2).await;

    // The host side of the namespace's link goes down: nothing passes either
    // way, and neither side is told (no close, no reset).
    let index =
        w.ns.name()
            .strip_prefix("wrn-t")
            .expect("namespace name")
            .to_owned();
    let host_if = format!("wrnh{index}");
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip");
        assert!(st.success(), "ip {args:?}");
    };
    ip(&["link", "set", &host_if, "down"]);
    let cut = Instant::now();
    let (mut edge_noticed, mut connector_noticed) = (None, None);
    while edge_noticed.is_none() || connector_noticed.is_none() {
        if edge_noticed.is_none() && w.connections().is_empty() {
            edge_noticed = Some(cut.elapsed());
        }
        if connector_noticed.is_none() && c.log_count("timed out") >= 2 {
            connector_noticed = Some(cut.elapsed());
        }
        assert!(
            cut.elapsed() < Duration::from_secs(10),
            "not noticed: edge {edge_noticed:?}, connector {connector_noticed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "link cut noticed by the edge after {edge_noticed:?}, by the connector after {connector_noticed:?}"
    );
    for (side, after) in [("edge", edge_noticed), ("connector", connector_noticed)] {
        let after = after.unwrap_or_default();
        assert!(
            after <= Duration::from_secs(2),
            "the {side} noticed the dead link after {after:?}"
        );
    }

    // Back up: the connector registers again.
    ip(&["link", "set", &host_if, "up"]);
    w.wait_registered(2).await;
}
