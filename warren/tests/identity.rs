//! Node identity with a real `warren serve`: the internal TCP hops (the
//! CONNECT front door, the binding RPC) complete a TLS handshake only with a
//! client presenting a certificate from the cluster CA in the store; the front
//! door opens a tunnel only for a worker whose stored record binds the
//! service, in the worker's own account; and nodes sharing a store share the
//! CA, so a connector holding one node's token is accepted by another.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_protocol::ErrorCode;
use warren_runtime::binding_rpc::{Endpoint, RpcBindingClient};
use warren_runtime::{BindingClient, BindingContext};
use warren_store::{ScriptRecord, SqliteStore, Store, rfc3339};
use warren_testkit::etcd::Etcd;
use warren_testkit::tls::{TestCa, anonymous_client};

mod common;
use common::{
    Answer, Kill, WARREN, free_tcp, ok_json, over_tls, refusal, service, start_serve, warren,
};

/// A CONNECT for `service` on behalf of `script` (none: the old form with
/// only an asserted account).
fn connect_request(service: &str, script: Option<&str>, account: &str) -> Vec<u8> {
    let script = script
        .map(|s| format!("warren-script: {s}\r\nwarren-binding: API\r\n"))
        .unwrap_or_default();
    format!(
        "CONNECT {service}:443 HTTP/1.1\r\nhost: {service}:443\r\n{script}warren-account: {account}\r\n\
         warren-scheme: http\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// A worker record as the runtime stores it, binding `services`.
fn script(name: &str, account: &str, services: &[&str]) -> ScriptRecord {
    let now = rfc3339(SystemTime::now());
    ScriptRecord {
        name: name.into(),
        account_id: account.into(),
        tag: format!("tag-{name}"),
        metadata: "{}".into(),
        services: services.iter().map(|s| s.to_string()).collect(),
        routes: Vec::new(),
        bundle: "00".repeat(32),
        secrets: Default::default(),
        created_on: now.clone(),
        modified_on: now,
    }
}

/// One binding call with `ctx` straight to the binding RPC over TLS with
/// `tls`; the code it fails with.
async fn rpc_call(rpc: SocketAddr, tls: &rustls::ClientConfig, ctx: BindingContext) -> ErrorCode {
    use http_body_util::BodyExt;
    let client = RpcBindingClient::new(Endpoint::Tcp(rpc), Some(tls), 1);
    let body = http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let req = hyper::Request::get("http://inventory.internal/")
        .body(body)
        .expect("request");
    match client.fetch(ctx, req).await {
        Ok(r) => panic!("the call was answered {}", r.status()),
        Err(e) => e.code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_hops_serve_only_node_certificates_and_workers_that_bind_the_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let connect: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let rpc: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let config = format!(
        "data_dir = \"data\"\n[parts]\napi = true\ntunnel = true\nconnect = true\nbinding = true\n\
         runtime = false\n[api]\nlisten = \"127.0.0.1:0\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\
         [connect]\nlisten = \"{connect}\"\n[binding]\nlisten = \"{rpc}\"\n"
    );
    let served = start_serve(Command::new(WARREN), dir.path(), &config);
    let (profile, account) = (&served.profile, served.account_id.clone());

    // A tunnel with no connector and a service behind it, in account A.
    let tunnel = ok_json(profile, &["tunnel", "create", "lab", "--json"]);
    let tunnel_id = tunnel["id"].as_str().expect("tunnel id");
    let svc = service(
        profile,
        tunnel_id,
        "inventory.internal",
        "10.0.0.2",
        &["--http-port", "80"],
    );
    // Worker records as deploys store them: `binds` binds the service,
    // `other` binds nothing, and `thief` of account B claims A's service.
    let data = dir.path().join("data");
    let store = SqliteStore::open(&data.join("warren.db")).expect("store");
    let b = store.create_account("b").await.expect("account b");
    for record in [
        script("binds", &account, &[&svc]),
        script("other", &account, &[]),
        script("thief", &b.id, &[&svc]),
    ] {
        assert!(store.put_script(&record, None).await.expect("put"));
    }

    let node = common::node_identity(&data, "test-client").await;
    let cluster = [node.ca_cert().clone()];
    let foreign = TestCa::new().expect("another CA");
    let http1: &[&[u8]] = &[b"http/1.1"];

    // The front door: TLS only, node certificates only.
    let req = connect_request(&svc, Some("binds"), &account);
    let tcp = async {
        let mut s = TcpStream::connect(connect).await?;
        s.write_all(&req).await?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        Ok::<_, std::io::Error>(out)
    };
    let plain = tcp.await.expect("plain TCP");
    assert!(
        !plain.starts_with(b"HTTP/"),
        "plain TCP got an HTTP answer: {}",
        String::from_utf8_lossy(&plain)
    );
    let anonymous = anonymous_client(&cluster, http1).expect("client");
    match over_tls(connect, anonymous, &req).await {
        Answer::Alert(a) => assert_eq!(a, rustls::AlertDescription::CertificateRequired),
        other => panic!("a client without a certificate got {other:?}"),
    }
    let stranger = foreign.client_config(&cluster, http1).expect("client");
    match over_tls(connect, stranger, &req).await {
        Answer::Alert(a) => assert_eq!(a, rustls::AlertDescription::UnknownCA),
        other => panic!("a client with another CA's certificate got {other:?}"),
    }

    // With a node certificate, the CONNECT must name a worker that binds the
    // service, in the service's account; an asserted account counts for nothing.
    let ask = |script: Option<&'static str>, account: String| {
        let tls = node.client_config(http1);
        let req = connect_request(&svc, script, &account);
        async move { refusal(&over_tls(connect, tls, &req).await) }
    };
    assert_eq!(
        ask(None, account.clone()).await,
        (
            404,
            "binding_not_found".into(),
            format!("the CONNECT to service {svc} names no worker (warren-script)")
        )
    );
    assert_eq!(
        ask(Some("nope"), account.clone()).await,
        (
            404,
            "binding_not_found".into(),
            format!("no worker nope to bind service {svc}")
        )
    );
    assert_eq!(
        ask(Some("other"), account.clone()).await,
        (
            404,
            "binding_not_found".into(),
            format!("worker other has no binding to service {svc}")
        )
    );
    assert_eq!(
        ask(Some("thief"), account.clone()).await,
        (
            404,
            "service_not_found".into(),
            format!("service {svc} is not in the account of worker thief")
        )
    );
    // (A forged account header does not help the thief either.)
    assert_eq!(
        ask(Some("thief"), b.id.clone()).await.1,
        "service_not_found"
    );
    // The worker that binds it gets past every check: to the tunnel, which
    // has no connector.
    let (status, code, _) = ask(Some("binds"), "anything".into()).await;
    assert_eq!((status, code.as_str()), (503, "destination_unavailable"));

    // The binding RPC: TLS only, node certificates only.
    let h2: &[&[u8]] = &[b"h2"];
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let anonymous = anonymous_client(&cluster, h2).expect("client");
    match over_tls(rpc, anonymous, preface).await {
        Answer::Alert(a) => assert_eq!(a, rustls::AlertDescription::CertificateRequired),
        other => panic!("a client without a certificate got {other:?}"),
    }
    let stranger = foreign.client_config(&cluster, h2).expect("client");
    match over_tls(rpc, stranger, preface).await {
        Answer::Alert(a) => assert_eq!(a, rustls::AlertDescription::UnknownCA),
        other => panic!("a client with another CA's certificate got {other:?}"),
    }
    // With a node certificate, a forged context is still checked: B's worker
    // claiming A's service, A's worker that does not bind it (refused by the
    // front door behind the binding-worker), and the one that binds it.
    let tls = node.client_config(&[]);
    let ctx = |account: &str, worker: &str| BindingContext {
        account_id: account.into(),
        worker: worker.into(),
        binding: "API".into(),
        service_id: svc.clone(),
        request_id: "forged".into(),
    };
    assert_eq!(
        rpc_call(rpc, &tls, ctx(&b.id, "thief")).await,
        ErrorCode::ServiceNotFound
    );
    assert_eq!(
        rpc_call(rpc, &tls, ctx(&account, "other")).await,
        ErrorCode::BindingNotFound
    );
    assert_eq!(
        rpc_call(rpc, &tls, ctx(&account, "binds")).await,
        ErrorCode::DestinationUnavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_one_store_share_the_cluster_ca_so_any_node_serves_a_token() {
    let etcd = Etcd::shared().expect("etcd");
    let prefix = format!("/identity-{:016x}/", rand::random::<u64>());
    let dir = tempfile::tempdir().expect("tempdir");
    // Two nodes with data directories of their own: nothing shared but etcd.
    let node = |name: &str| {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).expect("dir");
        let api: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("udp port");
        let config = format!(
            "data_dir = \"data\"\nnode_name = \"{name}\"\n[parts]\napi = true\ntunnel = true\n\
             connect = false\nbinding = false\nruntime = false\n[api]\nlisten = \"{api}\"\n\
             [tunnel]\nlisten = \"{udp}\"\n[store]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\n\
             prefix = \"{prefix}\"\n",
            etcd.endpoint()
        );
        (home, config, api, udp)
    };
    let (home_a, config_a, _, _) = node("a");
    let a = start_serve(Command::new(WARREN), &home_a, &config_a);
    let (home_b, config_b, api_b, udp_b) = node("b");
    std::fs::write(home_b.join("edge.toml"), config_b).expect("config");
    let _b = Kill(
        Command::new(WARREN)
            .args(["serve", "--config"])
            .arg(home_b.join("edge.toml"))
            .env("WARREN_PROFILE", home_b.join("profile.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("warren serve b"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(api_b).is_err() {
        assert!(Instant::now() < deadline, "node b did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    for home in [&home_a, &home_b] {
        assert!(
            !home.join("data/edge-ca.key").exists(),
            "the CA key stays in the store"
        );
    }

    // A tunnel and its token from node A; the token names A's edge, but a
    // connector sent to B's edge is accepted there: B's edge certificate
    // comes from the CA the token pins.
    let tunnel = ok_json(&a.profile, &["tunnel", "create", "lab", "--json"]);
    let tunnel_id = tunnel["id"].as_str().expect("tunnel id").to_owned();
    let token = warren(&a.profile, &["tunnel", "token", &tunnel_id]);
    assert!(token.status.success());
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let _connector = Kill(
        Command::new(common::connector_bin())
            .args(["run", "--token", &token, "--ha-connections", "1"])
            .args([
                "--edge",
                &udp_b.to_string(),
                "--metrics",
                &metrics.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("connector"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let colos = loop {
        let t = ok_json(&a.profile, &["tunnel", "get", &tunnel_id, "--json"]);
        let colos: Vec<String> = t["connections"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c["colo_name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if !colos.is_empty() || Instant::now() > deadline {
            break colos;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        colos,
        vec!["b".to_string()],
        "the connector registers at node b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_binding_rpc_is_plain_and_private_to_the_nodes_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let sockets = dir.path().join("run");
    std::fs::create_dir(&sockets).expect("socket dir");
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o700)).expect("0700");
    let socket = sockets.join("binding.sock");
    let config = format!(
        "data_dir = \"data\"\n[parts]\napi = true\ntunnel = false\nconnect = false\nbinding = true\n\
         runtime = false\n[api]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"unix:{}\"\n",
        socket.display()
    );
    let _served = start_serve(Command::new(WARREN), dir.path(), &config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "no socket at {}",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is the node user's only");

    // No TLS on it: a call goes through to the binding-worker's own checks.
    use http_body_util::BodyExt;
    let client = RpcBindingClient::new(Endpoint::Unix(socket), None, 1);
    let body = http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let req = hyper::Request::get("http://inventory.internal/")
        .body(body)
        .expect("request");
    let ctx = BindingContext {
        account_id: "a".into(),
        worker: "w".into(),
        binding: "API".into(),
        service_id: "no-such-service".into(),
        request_id: "unix".into(),
    };
    let code = client
        .fetch(ctx, req)
        .await
        .map(|r| r.status())
        .err()
        .map(|e| e.code);
    assert_eq!(code, Some(ErrorCode::ServiceNotFound));
}
