//! The tunnel end to end with real parts: iris's edge on the host, the
//! `warren-connector` binary, dnsmasq and HTTP origins inside a network
//! namespace of the test's own (reachable only through the tunnel).
//! Needs root (network namespaces); `scripts/setup.sh` installs dnsmasq.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use warren_iris::resolve::resolve;
use warren_protocol::ErrorCode;
use warren_store::Store;
use warren_testkit::dnsmasq::Dnsmasq;
use warren_testkit::{origin, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_the_tunnel_with_private_dns() {
    let w = World::new().await;
    let origin = w.origin();
    let dns_ip: IpAddr = "127.0.0.53".parse().expect("ip");
    let dns = Dnsmasq::start(&w.ns, dns_ip, &[("origin.internal", origin.ip())]).expect("dnsmasq");
    let _c = w.connector(&[
        "--dns-resolver".into(),
        dns.addr().to_string(),
        "--ha-connections".into(),
        "2".into(),
    ]);
    w.wait_registered(2).await;

    // The origin is private: the host cannot reach it except through the tunnel.
    assert!(
        tokio::net::TcpStream::connect(origin).await.is_err(),
        "origin must not be reachable from the host"
    );

    // DNS is answered inside the namespace (connector default resolver, then an explicit one).
    let resolved = resolve(&w.edge.tunnels, &w.tunnel_id, None, "origin.internal")
        .await
        .expect("resolves");
    assert_eq!(resolved.addrs, vec![origin.ip()]);
    assert_eq!(resolved.ttl, Duration::from_secs(30));
    let explicit = resolve(
        &w.edge.tunnels,
        &w.tunnel_id,
        Some(dns.addr()),
        "origin.internal",
    )
    .await
    .expect("resolves with an explicit resolver");
    assert_eq!(explicit.addrs, vec![origin.ip()]);
    assert!(
        dns.queries_for("origin.internal") >= 2,
        "dnsmasq saw the queries"
    );

    let dest = SocketAddr::new(resolved.addrs[0], origin.port());
    let s = w.open(dest, "req-1").await.expect("stream");
    let (status, body) = origin::get(s, "origin.internal", "/hello")
        .await
        .expect("response");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello from origin");
    // A streamed body arrives whole.
    assert_eq!(
        w.get(dest, "/bytes/5000000").await,
        Ok((StatusCode::OK, 5_000_000))
    );

    // NXDOMAIN inside the private network is a dns_error.
    let missing = resolve(&w.edge.tunnels, &w.tunnel_id, None, "missing.internal").await;
    assert_eq!(missing.map_err(|e| e.code), Err(ErrorCode::DnsError));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_resolution_by_default_reads_etc_hosts() {
    let w = World::new().await;
    let _c = w.connector(&["--ha-connections".into(), "1".into()]);
    w.wait_registered(1).await;
    // No --dns-resolver: the connector host's own resolution, /etc/hosts included.
    let r = resolve(&w.edge.tunnels, &w.tunnel_id, None, "localhost")
        .await
        .expect("localhost resolves");
    assert!(
        r.addrs
            .contains(&"127.0.0.1".parse::<IpAddr>().expect("ip")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_carry_the_right_codes() {
    let w = World::new().await;
    let origin = w.origin();
    let closed = {
        let l = w.ns.bind_tcp("127.0.0.1:0").expect("listener");
        let a = l.local_addr().expect("addr");
        drop(l);
        a
    };
    let _c = w.connector(&["--ha-connections".into(), "1".into()]);
    w.wait_registered(1).await;
    let t = &w.edge.tunnels;
    let code =
        |r: Result<warren_iris::TunnelStream, warren_protocol::ProxyError>| r.err().map(|e| e.code);

    assert_eq!(
        code(
            t.open_tcp(&w.tunnel_id, closed, Duration::from_secs(5), "refused")
                .await
        ),
        Some(ErrorCode::ConnectionRefused)
    );
    let silent = SocketAddr::new(IpAddr::V4(w.ns.silent_ip()), 80);
    assert_eq!(
        code(
            t.open_tcp(&w.tunnel_id, silent, Duration::from_millis(500), "timeout")
                .await
        ),
        Some(ErrorCode::ConnectionTimeout)
    );
    assert_eq!(
        code(
            t.open_tcp(
                "00000000-0000-0000-0000-000000000000",
                origin,
                Duration::from_secs(5),
                "x"
            )
            .await
        ),
        Some(ErrorCode::DestinationUnavailable)
    );
    assert_eq!(w.get(origin, "/hello").await, Ok((StatusCode::OK, 17)));

    let (status, metrics) = w_local(&_c, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains(r#"warren_connector_errors_total{code="connection_refused"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"warren_connector_errors_total{code="connection_timeout"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"warren_connector_connections{state="registered"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_policy_forbids_what_it_does_not_allow() {
    let w = World::new().await;
    let allowed = w.origin();
    let other = w.origin();
    let _c = w.connector(&[
        "--ha-connections".into(),
        "1".into(),
        "--allow".into(),
        format!("127.0.0.1:{}", allowed.port()),
    ]);
    w.wait_registered(1).await;
    assert_eq!(w.get(allowed, "/hello").await, Ok((StatusCode::OK, 17)));
    assert_eq!(
        w.get(other, "/hello").await,
        Err(ErrorCode::DestinationForbidden)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_and_not_ready() {
    let w = World::new().await;
    let mut bad = w.token.clone();
    bad.secret = base64_of(&[0x55; 32]);
    let c = Connector::spawn(
        &w.ns,
        &bad.encode(),
        &["--ha-connections".into(), "2".into()],
    );
    wait_for("the refusal in the connector log", LONG, || async {
        c.log_contains("the edge refused this connector")
            .then_some(())
    })
    .await;
    assert!(
        c.log_contains("unknown tunnel or wrong secret"),
        "the log says why in plain words"
    );
    let (status, body) = w_local(&c, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains(r#""readyConnections":0"#), "{body}");
    assert!(w.connections().is_empty());
    // Retried slowly, not in a hot loop: one refusal per connection in the next seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.log_count("the edge refused this connector"), 2);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reports_registered_connections() {
    let w = World::new().await;
    let c = w.connector(&["--ha-connections".into(), "3".into()]);
    w.wait_registered(3).await;
    let (status, body) = wait_for("ready with 3 connections", LONG, || async {
        let r = c.local("/ready").await;
        r.filter(|(_, b)| b.contains(r#""readyConnections":3"#))
    })
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("connectorId"), "{body}");
    assert!(body.contains(r#""status":200"#), "{body}");
    assert_eq!(w_local(&c, "/healthcheck").await.0, StatusCode::OK);
    let records = w
        .store
        .list_connections(&w.tunnel_id)
        .await
        .expect("records");
    assert_eq!(records.len(), 3);
    assert!(
        records
            .iter()
            .all(|r| r.edge_name == "test-edge" && r.ha_connections == 3)
    );
}

/// `--protocol tcp` (cloudflared's `--protocol http2`) is a choice, not a
/// fallback: its connections stay on TCP, and carry streams, even though QUIC
/// gets through (only `auto` moves a TCP connection back to QUIC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_told_to_use_tcp_stays_on_tcp_where_quic_gets_through() {
    let w = World::new().await;
    let dest = w.origin();
    let c = w.connector(&[
        "--protocol".into(),
        "tcp".into(),
        "--ha-connections".into(),
        "2".into(),
        "--quic-retry-interval".into(),
        "100ms".into(),
    ]);
    w.wait_registered(2).await;
    // The live connections' ids, sorted, and their transports.
    let live = || {
        let mut v: Vec<_> = w
            .connections()
            .iter()
            .map(|c| (c.record().id.clone(), c.transport()))
            .collect();
        v.sort();
        v
    };
    let first = live();
    assert!(first.iter().all(|(_, t)| *t == "tcp"), "{first:?}");
    // Many retry intervals later (QUIC reaches this edge: every other test
    // here registers over it): the same connections, still on TCP.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(live(), first);
    assert!(!c.log_contains("QUIC gets through again"));
    assert_eq!(
        w.get(dest, "/bytes/100000").await,
        Ok((StatusCode::OK, 100_000))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_survives_losing_three_of_four_connections() {
    let w = World::new().await;
    let origin = w.origin();
    let _c = w.connector(&[]);
    w.wait_registered(4).await;

    // Requests run continuously while the edge takes three connections away.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (tunnels, id, stop) = (w.edge.tunnels.clone(), w.tunnel_id.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = match tunnels
                    .open_tcp(&id, origin, Duration::from_secs(5), "ha")
                    .await
                {
                    Ok(s) => origin::get_len(s, "origin.internal", "/bytes/20000")
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match r {
                    Ok((StatusCode::OK, 20000)) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victims: Vec<_> = w.connections().into_iter().take(3).collect();
    let dropped: Vec<String> = victims.iter().map(|c| c.record().id.clone()).collect();
    for v in &victims {
        v.drain_and_close("test drops this connection", Duration::from_secs(5))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One connection carries everything meanwhile, then the connector restores all four.
    w.wait_registered(4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for worker in workers {
        let (ok, failed) = worker.await.expect("worker");
        assert!(failed.is_empty(), "requests failed: {failed:?}");
        total += ok;
    }
    assert!(total > 0, "requests ran");
    let now: Vec<String> = w
        .connections()
        .iter()
        .map(|c| c.record().id.clone())
        .collect();
    assert!(
        dropped.iter().all(|d| !now.contains(d)),
        "dropped connections were replaced by new ones"
    );

    // An abrupt loss (no draining) is survived too: the next requests use what is left.
    for v in w.connections().into_iter().take(3) {
        v.close("abrupt");
    }
    for _ in 0..10 {
        assert_eq!(w.get(origin, "/hello").await, Ok((StatusCode::OK, 17)));
    }
    w.wait_registered(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_restart_fails_fast_then_reregisters() {
    let mut w = World::new().await;
    let origin = w.origin();
    let _c = w.connector(&["--ha-connections".into(), "2".into()]);
    w.wait_registered(2).await;
    let addr = w.edge.addr;
    let old_tunnels = w.edge.tunnels.clone();
    let placeholder = Edge::start(
        w.store.clone(),
        SocketAddr::new(addr.ip(), 0),
        w.data.path(),
    );
    std::mem::replace(&mut w.edge, placeholder).stop().await;

    // While the edge is down, asking it for a stream fails at once, with the right code.
    let started = Instant::now();
    let r = old_tunnels
        .open_tcp(&w.tunnel_id, origin, Duration::from_secs(5), "down")
        .await;
    assert_eq!(
        r.err().map(|e| e.code),
        Some(ErrorCode::DestinationUnavailable)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no hang: {:?}",
        started.elapsed()
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let placeholder = Edge::start(w.store.clone(), addr, w.data.path());
    std::mem::replace(&mut w.edge, placeholder).stop().await;
    w.wait_registered(2).await;
    assert_eq!(w.get(origin, "/hello").await, Ok((StatusCode::OK, 17)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transfer_finish_then_exits_zero() {
    let w = World::new().await;
    let origin = w.origin();
    let mut c = w.connector(&["--ha-connections".into(), "2".into()]);
    w.wait_registered(2).await;
    // 30 chunks of 64 KiB, 50 ms apart: about 1.5 s of transfer.
    let s = w.open(origin, "slow").await.expect("stream");
    let transfer = tokio::spawn(origin::get_len(s, "origin.internal", "/slow/30"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.terminate();
    // Unregistered: the edge stops sending new streams to it.
    wait_for("connections to drain", LONG, || {
        let n = w.edge.tunnels.registry().candidates(&w.tunnel_id).len();
        async move { (n == 0).then_some(()) }
    })
    .await;
    let r = w
        .edge
        .tunnels
        .open_tcp(&w.tunnel_id, origin, Duration::from_secs(5), "after")
        .await;
    assert_eq!(
        r.err().map(|e| e.code),
        Some(ErrorCode::DestinationUnavailable)
    );
    let (status, len) = transfer.await.expect("task").expect("transfer completes");
    assert_eq!((status, len), (StatusCode::OK, 30 * 64 * 1024));
    let exit = tokio::task::spawn_blocking(move || c.wait_exit(Duration::from_secs(30)))
        .await
        .expect("wait");
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_streams_are_closed_and_the_connection_carries_on() {
    let w = World::new().await;
    let origin = w.origin();
    let _c = w.connector(&["--ha-connections".into(), "1".into()]);
    w.wait_registered(1).await;
    let conn = w.connections().remove(0);

    let mut oversized =
        warren_protocol::preamble::encode(warren_protocol::preamble::StreamKind::Connect).to_vec();
    oversized.extend_from_slice(&(1u32 << 30).to_be_bytes());
    let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let mut bad_body =
        warren_protocol::preamble::encode(warren_protocol::preamble::StreamKind::Connect).to_vec();
    bad_body.extend_from_slice(&16u32.to_be_bytes());
    bad_body.extend_from_slice(&[0xff; 16]);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for bytes in [garbage, oversized, bad_body] {
        let (mut send, mut recv) = conn.open_raw_stream().await.expect("raw stream");
        send.write_all(&bytes).await.expect("write");
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let mut got = Vec::new();
            recv.read_to_end(&mut got).await.map(|_| got)
        })
        .await
        .expect("closed promptly");
        assert!(
            answer.is_err() || answer.as_ref().is_ok_and(|b| b.is_empty()),
            "no answer to garbage: {answer:?}"
        );
    }
    // Same connection, same process: still serving.
    assert!(conn.is_usable());
    assert_eq!(w.get(origin, "/hello").await, Ok((StatusCode::OK, 17)));
    assert_eq!(w.connections().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_edge_ca_is_refused_by_the_connector() {
    let w = World::new().await;
    let mut other = w.token.clone();
    other.ca_sha256 = "0f".repeat(32);
    let c = Connector::spawn(
        &w.ns,
        &other.encode(),
        &["--ha-connections".into(), "1".into()],
    );
    wait_for("the certificate refusal in the log", LONG, || async {
        c.log_contains("not issued by the CA pinned in the token")
            .then_some(())
    })
    .await;
    assert!(
        w.connections().is_empty(),
        "nothing registered with an unverified edge"
    );
    assert_eq!(
        w_local(&c, "/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_reaches_the_origin_and_the_answer_comes_back() {
    let w = World::new().await;
    // An origin that reads until EOF, then answers with the byte count and closes.
    let listener = w.ns.bind_tcp("127.0.0.1:0").expect("listener");
    let origin = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                if s.read_to_end(&mut all).await.is_ok() {
                    let _ = s
                        .write_all(format!("got {} bytes", all.len()).as_bytes())
                        .await;
                }
            });
        }
    });
    let _c = w.connector(&["--ha-connections".into(), "1".into()]);
    w.wait_registered(1).await;
    let mut s = w.open(origin, "half-close").await.expect("stream");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&vec![7u8; 300_000]).await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .expect("answer arrives")
        .expect("read");
    assert_eq!(answer, "got 300000 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_answer_too_large_for_a_datagram_arrives_whole() {
    let w = World::new().await;
    let ips: Vec<IpAddr> = (1..=120u8).map(|i| IpAddr::from([10, 77, 0, i])).collect();
    let records: Vec<(&str, IpAddr)> = ips.iter().map(|ip| ("big.internal", *ip)).collect();
    let dns = Dnsmasq::start(&w.ns, "127.0.0.53".parse().expect("ip"), &records).expect("dnsmasq");
    let _c = w.connector(&[
        "--ha-connections".into(),
        "1".into(),
        "--dns-resolver".into(),
        dns.addr().to_string(),
    ]);
    w.wait_registered(1).await;
    // 120 A records: truncated over UDP (retried over TCP by the connector) and
    // larger than a QUIC datagram (carried back on a stream).
    let r = resolve(&w.edge.tunnels, &w.tunnel_id, None, "big.internal")
        .await
        .expect("resolves");
    let mut got = r.addrs.clone();
    got.sort();
    assert_eq!(got, ips);
}

/// The path MTU of the test's one connection, as the edge sees it.
fn path_mtu(w: &World) -> Option<u16> {
    w.connections().first().and_then(|c| c.path_mtu())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_grow_to_what_the_link_carries_and_shrink_when_it_stops() {
    use warren_transport::quic::MAX_UDP_PAYLOAD;
    let w = World::new().await;
    let origin = w.origin();
    // Jumbo frames: 8972 bytes of UDP payload fit, more than discovery seeks.
    w.ns.set_mtu(9000).expect("a 9000-byte MTU on the link");
    let _c = w.connector(&["--ha-connections".into(), "1".into()]);
    w.wait_registered(1).await;
    wait_for("path MTU discovery to reach its bound", LONG, || {
        let mtu = path_mtu(&w);
        async move { (mtu == Some(MAX_UDP_PAYLOAD)).then_some(()) }
    })
    .await;
    let body = 4u64 << 20;
    let upload = || async {
        let s = w.open(origin, "upload").await.expect("stream");
        let (status, count) = origin::post(s, "origin.internal", "/count", body)
            .await
            .expect("upload");
        (status, String::from_utf8_lossy(&count).into_owned())
    };
    let download = format!("/bytes/{body}");
    assert_eq!(upload().await, (StatusCode::OK, body.to_string()));
    assert_eq!(w.get(origin, &download).await, Ok((StatusCode::OK, body)));
    // Bulk went in datagrams of that size (a size whose batched sends failed
    // would have dropped the connection back to 1200 bytes).
    assert_eq!(path_mtu(&w), Some(MAX_UDP_PAYLOAD));
    let before = w.connections().first().cloned().expect("a connection");
    // The link narrows to Ethernet's 1500: 6000-byte datagrams no longer
    // leave either side. Each side's connection notices (quinn's black-hole
    // detection drops it to 1200 bytes, to search again a minute later) and
    // carries bodies whole both ways; the edge's side is seen here, as it
    // sends the upload.
    w.ns.set_mtu(1500).expect("a 1500-byte MTU on the link");
    assert_eq!(upload().await, (StatusCode::OK, body.to_string()));
    assert_eq!(w.get(origin, &download).await, Ok((StatusCode::OK, body)));
    let mtu = path_mtu(&w).expect("a QUIC connection");
    assert!(
        mtu <= 1472,
        "path MTU {mtu} after the link narrowed to 1500"
    );
    let after = w.connections();
    assert!(
        after.len() == 1 && Arc::ptr_eq(&after[0], &before),
        "the same connection carried on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_ethernet_datagrams_grow_to_exactly_what_the_link_carries() {
    let w = World::new().await;
    let origin = w.origin();
    // The veth link's default 1500-byte MTU: 1472 bytes of UDP over IPv4.
    let _c = w.connector(&["--ha-connections".into(), "1".into()]);
    w.wait_registered(1).await;
    wait_for("path MTU discovery to find 1472", LONG, || {
        let mtu = path_mtu(&w);
        async move { (mtu == Some(1472)).then_some(()) }
    })
    .await;
    let body = 4u64 << 20;
    assert_eq!(
        w.get(origin, &format!("/bytes/{body}")).await,
        Ok((StatusCode::OK, body))
    );
    assert_eq!(path_mtu(&w), Some(1472));
}
