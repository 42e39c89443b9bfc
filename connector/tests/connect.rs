//! The CONNECT front door end to end: a client with a node certificate asks
//! iris for a VPC service by id on behalf of a worker that binds it, and
//! speaks HTTP to a private origin (in the test's namespace, reached only
//! through the connector), with DNS answered by dnsmasq inside.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use warren_iris::dns_cache::{DnsCache, DnsCacheConfig};
use warren_iris::origin_tls::OriginTls;
use warren_iris::{EdgeCa, FrontDoor, FrontDoorConfig, NodeIdentity};
use warren_store::{
    CertVerificationMode, ScriptRecord, ServiceHost, ServiceType, Store, VpcService, rfc3339,
};
use warren_testkit::dnsmasq::Dnsmasq;
use warren_testkit::origin;
use warren_testkit::tls::{TestCa, self_signed};

/// The worker every service of these tests is bound by (see [`add_service`]).
const WORKER: &str = "shop";

/// The front door's address and a node's TLS clients for it.
struct Door {
    addr: SocketAddr,
    /// ALPN http/1.1, as binding-workers dial.
    tls: TlsConnector,
    /// ALPN h2.
    h2: TlsConnector,
}

impl Door {
    /// A TLS connection to the front door with the node's certificate.
    async fn dial(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.expect("front door");
        self.tls
            .connect(NodeIdentity::server_name(), tcp)
            .await
            .expect("TLS to the front door")
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

/// A world with a connector, a front door trusting `origin_ca`, and the account id.
async fn setup(
    connector_args: &[String],
    origin_ca: &[rustls::pki_types::CertificateDer<'static>],
) -> (World, Connector, Door, String) {
    let w = World::new().await;
    let c = w.connector(connector_args);
    w.wait_registered(1).await;
    let account = w
        .store
        .get_tunnel(&w.tunnel_id)
        .await
        .expect("store")
        .expect("tunnel")
        .account_id;
    let dns = Arc::new(DnsCache::new(
        w.edge.tunnels.clone(),
        DnsCacheConfig::default(),
    ));
    let identity = Arc::new(
        NodeIdentity::issue(&EdgeCa::generate().expect("ca"), "test-node").expect("identity"),
    );
    let door = FrontDoor::new(
        warren_store::cache::ServiceCache::new(w.store.clone()),
        w.edge.tunnels.clone(),
        dns,
        OriginTls::new(origin_ca).expect("origin tls"),
        FrontDoorConfig {
            identity: identity.clone(),
            attempt_timeout: Duration::from_secs(2),
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(door.serve(listener, std::future::pending()));
    let tls = |alpn: &[u8]| TlsConnector::from(Arc::new(identity.client_config(&[alpn])));
    let door = Door {
        addr,
        tls: tls(b"http/1.1"),
        h2: tls(b"h2"),
    };
    (w, c, door, account)
}

/// Stores worker `name` of `account` binding `services` (replacing it).
async fn bind(w: &World, name: &str, account: &str, services: &[String]) {
    let old = w.store.get_script(name).await.expect("store");
    let now = rfc3339(SystemTime::now());
    let record = ScriptRecord {
        name: name.into(),
        account_id: account.into(),
        tag: uuid::Uuid::new_v4().to_string(),
        metadata: "{}".into(),
        services: services.to_vec(),
        routes: Vec::new(),
        bundle: "00".repeat(32),
        secrets: Default::default(),
        created_on: now.clone(),
        modified_on: now,
    };
    let written = w
        .store
        .put_script(&record, old.as_ref())
        .await
        .expect("put script");
    assert!(written, "worker {name} written");
}

async fn add_service(
    w: &World,
    account: &str,
    host: ServiceHost,
    http: Option<u16>,
    https: Option<u16>,
    mode: CertVerificationMode,
) -> VpcService {
    let now = rfc3339(SystemTime::now());
    let s = VpcService {
        id: uuid::Uuid::new_v4().to_string(),
        account_id: account.to_owned(),
        name: "svc".into(),
        service_type: ServiceType::Http,
        http_port: http,
        https_port: https,
        tcp_port: None,
        host,
        cert_verification_mode: mode,
        created_at: now.clone(),
        updated_at: now,
    };
    w.store.create_service(&s).await.expect("create service");
    // The test worker binds every service it creates.
    let mut bound = w
        .store
        .get_script(WORKER)
        .await
        .expect("store")
        .map(|r| r.services)
        .unwrap_or_default();
    bound.push(s.id.clone());
    bind(w, WORKER, account, &bound).await;
    s
}

fn hostname(name: &str, w: &World, resolvers: &[&str]) -> ServiceHost {
    ServiceHost::Hostname {
        hostname: name.into(),
        tunnel_id: w.tunnel_id.clone(),
        resolver_ips: resolvers.iter().map(|r| ip(r)).collect(),
    }
}

/// Sends CONNECT for `worker`; on 200 returns the tunnel, else the status
/// and the error code header.
async fn connect(
    front: &Door,
    service: &str,
    worker: &str,
    scheme: &str,
    host: &str,
) -> Result<TlsStream<TcpStream>, (StatusCode, Option<String>)> {
    let mut s = front.dial().await;
    let req = format!(
        "CONNECT {service}:443 HTTP/1.1\r\nHost: {service}:443\r\nwarren-script: {worker}\r\n\
         warren-binding: API\r\nwarren-scheme: {scheme}\r\nwarren-host: {host}\r\nwarren-request-id: t-1\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).await.expect("read");
        assert!(
            n == 1,
            "front door closed mid-answer: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let status = StatusCode::from_u16(status).expect("status");
    if status == StatusCode::OK {
        return Ok(s);
    }
    let code = head
        .lines()
        .find_map(|l| l.strip_prefix("warren-proxy-error: "))
        .map(str::to_owned);
    Err((status, code))
}

async fn fetch(s: TlsStream<TcpStream>, host: &str, path: &str) -> (StatusCode, String) {
    let (status, body) = origin::get(s, host, path)
        .await
        .expect("http through CONNECT");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn code(
    r: Result<TlsStream<TcpStream>, (StatusCode, Option<String>)>,
) -> (StatusCode, Option<String>) {
    r.expect_err("CONNECT must fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_by_hostname_ipv4_and_ipv6() {
    let (w, _c, front, account) = setup(&["--ha-connections".into(), "1".into()], &[]).await;
    let v4 = origin::serve(w.ns.bind_tcp("127.0.0.1:0").expect("listener")).expect("origin");
    let v6 = origin::serve(
        w.ns.bind_tcp(&format!("[::1]:{}", v4.port()))
            .expect("listener"),
    )
    .expect("origin");
    let dns = Dnsmasq::start(&w.ns, ip("127.0.0.53"), &[("inventory.internal", v4.ip())])
        .expect("dnsmasq");
    let by_name = add_service(
        &w,
        &account,
        hostname("inventory.internal", &w, &["127.0.0.53"]),
        Some(v4.port()),
        None,
        CertVerificationMode::VerifyFull,
    )
    .await;
    let s = connect(&front, &by_name.id, WORKER, "http", "inventory.internal")
        .await
        .expect("CONNECT");
    assert_eq!(
        fetch(s, "inventory.internal", "/hello").await,
        (StatusCode::OK, "hello from origin".into())
    );
    assert_eq!(dns.logged_queries("inventory.internal", 2).await, 2);

    let by_v4 = ServiceHost::Addresses {
        ipv4: Some("127.0.0.1".parse().expect("ip")),
        ipv6: None,
        tunnel_id: w.tunnel_id.clone(),
    };
    let svc = add_service(
        &w,
        &account,
        by_v4,
        Some(v4.port()),
        None,
        CertVerificationMode::VerifyFull,
    )
    .await;
    let s = connect(&front, &svc.id, WORKER, "http", "127.0.0.1")
        .await
        .expect("CONNECT");
    assert_eq!(
        fetch(s, "127.0.0.1", "/addr").await,
        (StatusCode::OK, v4.to_string())
    );

    let by_v6 = ServiceHost::Addresses {
        ipv4: None,
        ipv6: Some("::1".parse().expect("ip")),
        tunnel_id: w.tunnel_id.clone(),
    };
    let svc = add_service(
        &w,
        &account,
        by_v6,
        Some(v4.port()),
        None,
        CertVerificationMode::VerifyFull,
    )
    .await;
    let s = connect(&front, &svc.id, WORKER, "http", "[::1]")
        .await
        .expect("CONNECT");
    assert_eq!(
        fetch(s, "[::1]", "/addr").await,
        (StatusCode::OK, v6.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_ips_are_honoured_and_a_service_update_applies_at_once() {
    let (w, _c, front, account) = setup(&["--ha-connections".into(), "1".into()], &[]).await;
    let a = origin::serve(w.ns.bind_tcp("127.0.0.1:0").expect("listener")).expect("origin a");
    let b = origin::serve(
        w.ns.bind_tcp(&format!("127.0.0.2:{}", a.port()))
            .expect("listener"),
    )
    .expect("origin b");
    let _dns_a =
        Dnsmasq::start(&w.ns, ip("127.0.0.53"), &[("app.internal", a.ip())]).expect("dnsmasq a");
    let _dns_b =
        Dnsmasq::start(&w.ns, ip("127.0.0.54"), &[("app.internal", b.ip())]).expect("dnsmasq b");
    let mut svc = add_service(
        &w,
        &account,
        hostname("app.internal", &w, &["127.0.0.54"]),
        Some(a.port()),
        None,
        CertVerificationMode::VerifyFull,
    )
    .await;
    let s = connect(&front, &svc.id, WORKER, "http", "app.internal")
        .await
        .expect("CONNECT");
    assert_eq!(fetch(s, "app.internal", "/addr").await.1, b.to_string());

    svc.host = hostname("app.internal", &w, &["127.0.0.53"]);
    assert!(w.store.replace_service(&svc).await.expect("replace"));
    let s = connect(&front, &svc.id, WORKER, "http", "app.internal")
        .await
        .expect("CONNECT");
    assert_eq!(fetch(s, "app.internal", "/addr").await.1, a.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_follows_the_certificate_verification_mode() {
    let ca = TestCa::new().expect("ca");
    let (w, _c, front, account) =
        setup(&["--ha-connections".into(), "1".into()], &[ca.cert()]).await;
    // Signed by the trusted CA but for another name; and self-signed (untrusted).
    let wrong_name = origin::serve_tls(
        w.ns.bind_tcp("127.0.0.1:0").expect("l"),
        ca.server_config(&["other.name"]).expect("cfg"),
    )
    .expect("o");
    let right_name = origin::serve_tls(
        w.ns.bind_tcp("127.0.0.1:0").expect("l"),
        ca.server_config(&["secure.internal"]).expect("cfg"),
    )
    .expect("o");
    let untrusted = origin::serve_tls(
        w.ns.bind_tcp("127.0.0.1:0").expect("l"),
        self_signed(&["secure.internal"]).expect("cfg"),
    )
    .expect("o");
    let at = || ServiceHost::Addresses {
        ipv4: Some("127.0.0.1".parse().expect("ip")),
        ipv6: None,
        tunnel_id: w.tunnel_id.clone(),
    };
    for (origin, mode, ok) in [
        (right_name, CertVerificationMode::VerifyFull, true),
        (wrong_name, CertVerificationMode::VerifyFull, false),
        (wrong_name, CertVerificationMode::VerifyCa, true),
        (untrusted, CertVerificationMode::VerifyCa, false),
        (untrusted, CertVerificationMode::Disabled, true),
    ] {
        let svc = add_service(&w, &account, at(), None, Some(origin.port()), mode).await;
        let r = connect(&front, &svc.id, WORKER, "https", "secure.internal").await;
        let got = match r {
            Ok(s) => {
                fetch(s, "secure.internal", "/hello").await
                    == (StatusCode::OK, "hello from origin".into())
            }
            Err((status, code)) => {
                assert_eq!(
                    (status, code.as_deref()),
                    (StatusCode::BAD_GATEWAY, Some("tls_error")),
                    "{mode:?}"
                );
                false
            }
        };
        assert_eq!(got, ok, "{origin} with {mode:?}");
    }
    // http is not allowed on an https-only service.
    let svc = add_service(
        &w,
        &account,
        at(),
        None,
        Some(right_name.port()),
        CertVerificationMode::VerifyFull,
    )
    .await;
    let r = connect(&front, &svc.id, WORKER, "http", "secure.internal").await;
    assert_eq!(
        code(r),
        (StatusCode::FORBIDDEN, Some("destination_forbidden".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_answer_with_their_codes() {
    let (w, _c, front, account) = setup(&["--ha-connections".into(), "1".into()], &[]).await;
    let closed = {
        let l = w.ns.bind_tcp("127.0.0.1:0").expect("listener");
        l.local_addr().expect("addr").port()
    };
    let here = ServiceHost::Addresses {
        ipv4: Some("127.0.0.1".parse().expect("ip")),
        ipv6: None,
        tunnel_id: w.tunnel_id.clone(),
    };
    let svc = add_service(
        &w,
        &account,
        here,
        Some(closed),
        None,
        CertVerificationMode::VerifyFull,
    )
    .await;
    let r = connect(&front, &svc.id, WORKER, "http", "x").await;
    assert_eq!(
        code(r),
        (StatusCode::BAD_GATEWAY, Some("connection_refused".into()))
    );

    // The worker must bind the service: an unknown worker, or one that
    // binds something else, is binding_not_found.
    let r = connect(&front, &svc.id, "no-such-worker", "http", "x").await;
    assert_eq!(
        code(r),
        (StatusCode::NOT_FOUND, Some("binding_not_found".into()))
    );
    bind(&w, "other", &account, &["something-else".into()]).await;
    let r = connect(&front, &svc.id, "other", "http", "x").await;
    assert_eq!(
        code(r),
        (StatusCode::NOT_FOUND, Some("binding_not_found".into()))
    );
    // A service that does not exist, or is another account's, even when the
    // worker's record names it: service_not_found.
    bind(&w, "other", &account, &["no-such-service".into()]).await;
    let r = connect(&front, "no-such-service", "other", "http", "x").await;
    assert_eq!(
        code(r),
        (StatusCode::NOT_FOUND, Some("service_not_found".into()))
    );
    let stranger = w.store.create_account("stranger").await.expect("account");
    bind(&w, "thief", &stranger.id, std::slice::from_ref(&svc.id)).await;
    let r = connect(&front, &svc.id, "thief", "http", "x").await;
    assert_eq!(
        code(r),
        (StatusCode::NOT_FOUND, Some("service_not_found".into()))
    );

    let dns = Dnsmasq::start(&w.ns, ip("127.0.0.53"), &[]).expect("dnsmasq");
    let missing = add_service(
        &w,
        &account,
        hostname("missing.internal", &w, &["127.0.0.53"]),
        Some(80),
        None,
        CertVerificationMode::VerifyFull,
    )
    .await;
    let r = connect(&front, &missing.id, WORKER, "http", "missing.internal").await;
    assert_eq!(code(r), (StatusCode::BAD_GATEWAY, Some("dns_error".into())));
    drop(dns);

    // A tunnel with no live connection: destination_unavailable, at once.
    let (other, _) = warren_iris::tunnel_admin::create_tunnel(
        w.store.as_ref(),
        &account,
        "idle",
        vec![],
        "00".repeat(32),
    )
    .await
    .expect("tunnel");
    let idle = ServiceHost::Addresses {
        ipv4: Some("127.0.0.1".parse().expect("ip")),
        ipv6: None,
        tunnel_id: other.id,
    };
    let svc = add_service(
        &w,
        &account,
        idle,
        Some(80),
        None,
        CertVerificationMode::VerifyFull,
    )
    .await;
    let started = Instant::now();
    let r = connect(&front, &svc.id, WORKER, "http", "x").await;
    assert_eq!(
        code(r),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("destination_unavailable".into())
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "fails fast: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_carries_several_tunnels_on_one_connection() {
    let (w, _c, front, account) = setup(&["--ha-connections".into(), "1".into()], &[]).await;
    let a = origin::serve(w.ns.bind_tcp("127.0.0.1:0").expect("listener")).expect("origin");
    let b = origin::serve(w.ns.bind_tcp("127.0.0.1:0").expect("listener")).expect("origin");
    let at = || ServiceHost::Addresses {
        ipv4: Some("127.0.0.1".parse().expect("ip")),
        ipv6: None,
        tunnel_id: w.tunnel_id.clone(),
    };
    let sa = add_service(
        &w,
        &account,
        at(),
        Some(a.port()),
        None,
        CertVerificationMode::VerifyFull,
    )
    .await;
    let sb = add_service(
        &w,
        &account,
        at(),
        Some(b.port()),
        None,
        CertVerificationMode::VerifyFull,
    )
    .await;

    let tcp = TcpStream::connect(front.addr).await.expect("front door");
    let tls = front
        .h2
        .connect(NodeIdentity::server_name(), tcp)
        .await
        .expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let mut tunnels = Vec::new();
    for (svc, expect) in [(&sa, a), (&sb, b), (&sa, a)] {
        let mut sender = sender.clone();
        let req = hyper::Request::builder()
            .method(hyper::Method::CONNECT)
            .uri(format!("{}:443", svc.id))
            .header("warren-script", WORKER)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("CONNECT over h2");
        assert_eq!(resp.status(), StatusCode::OK);
        let upgraded = hyper::upgrade::on(resp).await.expect("tunnel");
        tunnels.push((hyper_util::rt::TokioIo::new(upgraded), expect));
    }
    // All three tunnels are open at once on one connection, each to its own origin.
    for (io, expect) in tunnels {
        let (status, body) = origin::get(io, "svc", "/addr")
            .await
            .expect("http inside h2 tunnel");
        assert_eq!(
            (status, String::from_utf8_lossy(&body).into_owned()),
            (StatusCode::OK, expect.to_string())
        );
    }
}
