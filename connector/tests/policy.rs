//! The connector's `--allow` policy covers everything the edge can ask: data
//! streams (IPv4-mapped IPv6 destinations checked as IPv4) and DNS (which
//! resolvers, which port, which questions). A real edge and the real
//! `warren-connector` over QUIC; resolvers are dnsmasq or bare UDP sockets inside
//! the test's network namespace. Needs root.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hyper::StatusCode;
use warren_iris::resolve::resolve;
use warren_protocol::ErrorCode;
use warren_testkit::dnsmasq::Dnsmasq;
use warren_testkit::netns::NetNs;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A raw recursive query for `name`/`rtype`.
fn query(name: &str, rtype: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    m.to_vec().expect("encode")
}

/// A UDP socket inside the namespace that only listens: a resolver that must
/// never be asked.
fn trap(ns: &NetNs, addr: &str) -> std::net::UdpSocket {
    let addr = addr.to_owned();
    let s = ns
        .run_inside(move || std::net::UdpSocket::bind(addr))
        .expect("namespace")
        .expect("udp bind");
    s.set_nonblocking(true).expect("nonblocking");
    s
}

/// Whether anything arrived on `trap`.
fn received_anything(trap: &std::net::UdpSocket) -> bool {
    let mut buf = [0u8; 512];
    match trap.recv(&mut buf) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("trap socket: {e}"),
    }
}

async fn ask(
    w: &World,
    resolver: Option<SocketAddr>,
    name: &str,
    rtype: RecordType,
) -> Result<Message, ErrorCode> {
    let raw = w
        .edge
        .tunnels
        .dns_query(&w.tunnel_id, resolver, query(name, rtype, 7))
        .await
        .map_err(|e| e.code)?;
    Ok(Message::from_vec(&raw).expect("a DNS answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_goes_only_to_resolvers_the_policy_allows_on_port_53() {
    let w = World::new().await;
    let origin = w.origin();
    let configured = Dnsmasq::start(&w.ns, ip("127.0.0.53"), &[("origin.internal", origin.ip())])
        .expect("dnsmasq");
    let allowed = Dnsmasq::start(&w.ns, ip("127.0.0.88"), &[("other.internal", origin.ip())])
        .expect("dnsmasq");
    let outside = trap(&w.ns, "127.0.0.77:53");
    let wrong_port = trap(&w.ns, "127.0.0.88:5353");
    let c = w.connector(&[
        "--ha-connections".into(),
        "1".into(),
        "--dns-resolver".into(),
        configured.addr().to_string(),
        "--allow".into(),
        format!("127.0.0.1:{}", origin.port()),
        "--allow".into(),
        "127.0.0.88".into(),
    ]);
    w.wait_registered(1).await;
    let t = &w.edge.tunnels;

    // The configured resolver, by default or named (the policy need not list it).
    for resolver in [None, Some(configured.addr())] {
        let r = resolve(t, &w.tunnel_id, resolver, "origin.internal")
            .await
            .expect("resolves through the configured resolver");
        assert_eq!(r.addrs, vec![origin.ip()]);
    }
    // A resolver whose address the policy allows, on port 53.
    let r = resolve(t, &w.tunnel_id, Some(allowed.addr()), "other.internal")
        .await
        .expect("resolves through a resolver the policy allows");
    assert_eq!(r.addrs, vec![origin.ip()]);

    // Anything else is refused by the connector and never sent.
    for resolver in ["127.0.0.77:53", "[::ffff:127.0.0.77]:53", "127.0.0.88:5353"] {
        let resolver: SocketAddr = resolver.parse().expect("addr");
        assert_eq!(
            ask(&w, Some(resolver), "origin.internal", RecordType::A)
                .await
                .map(|m| m.response_code()),
            Err(ErrorCode::DestinationForbidden),
            "{resolver}"
        );
    }
    assert!(!received_anything(&outside), "127.0.0.77:53 was asked");
    assert!(!received_anything(&wrong_port), "127.0.0.88:5353 was asked");
    let (_, metrics) = w_local(&c, "/metrics").await;
    assert!(
        metrics.contains(r#"warren_connector_errors_total{code="destination_forbidden"} 3"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_and_aaaa_questions_leave_the_connector() {
    let w = World::new().await;
    let dns = Dnsmasq::start(
        &w.ns,
        ip("127.0.0.53"),
        &[("origin.internal", ip("10.1.2.3"))],
    )
    .expect("dnsmasq");
    let _c = w.connector(&[
        "--ha-connections".into(),
        "1".into(),
        "--dns-resolver".into(),
        dns.addr().to_string(),
    ]);
    w.wait_registered(1).await;

    for rtype in [RecordType::TXT, RecordType::ANY, RecordType::PTR] {
        for resolver in [None, Some(dns.addr())] {
            let answer = ask(&w, resolver, "origin.internal", rtype)
                .await
                .expect("an answer from the connector");
            assert_eq!(answer.id(), 7);
            assert_eq!(answer.response_code(), ResponseCode::Refused, "{rtype}");
            assert!(answer.answers().is_empty());
        }
    }
    // An A question is forwarded; dnsmasq saw that one question and none of the
    // six before it (given time for all seven to be logged).
    let answer = ask(&w, None, "origin.internal", RecordType::A)
        .await
        .expect("answer");
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    assert_eq!(answer.answers().len(), 1);
    assert_eq!(
        dns.logged_queries("origin.internal", 7).await,
        1,
        "{:?}",
        dns.log_lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_mapped_destination_is_checked_as_its_ipv4_address() {
    let w = World::new().await;
    let origin = w.origin();
    // Every IPv6 address and 10.0.0.0/8: the namespace's loopback is not allowed,
    // whichever way it is written.
    let _c = w.connector(&[
        "--ha-connections".into(),
        "1".into(),
        "--allow".into(),
        "10.0.0.0/8".into(),
        "--allow".into(),
        "[::/0]".into(),
    ]);
    w.wait_registered(1).await;
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", origin.port())
        .parse()
        .expect("addr");
    assert_eq!(
        w.get(mapped, "/hello").await,
        Err(ErrorCode::DestinationForbidden)
    );
    assert_eq!(
        w.get(origin, "/hello").await,
        Err(ErrorCode::DestinationForbidden)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_mapped_destination_reaches_an_allowed_ipv4_origin() {
    let w = World::new().await;
    let origin = w.origin();
    let _c = w.connector(&[
        "--ha-connections".into(),
        "1".into(),
        "--allow".into(),
        format!("127.0.0.1:{}", origin.port()),
    ]);
    w.wait_registered(1).await;
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", origin.port())
        .parse()
        .expect("addr");
    assert_eq!(w.get(mapped, "/hello").await, Ok((StatusCode::OK, 17)));
}
