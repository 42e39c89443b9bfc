//! Two accounts on a cluster of two `warren serve` nodes sharing one real
//! etcd: whichever node account B's token is sent to, B cannot bind, read,
//! list, edit, delete or tail account A's VPC service, tunnel or worker
//! (each refusal with its exact status, v4 error code and message, and A's
//! resources read back unchanged), and a CONNECT to either node's front door
//! (mutual TLS with a certificate from the cluster CA) naming B's worker and
//! A's service is refused whatever `warren-account` it asserts. Positive
//! controls (A through either node, B with its own service) show that the
//! refusals are about the account, not a blanket no.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_store::Store;
use warren_testkit::etcd::Etcd;

mod common;
use common::{
    Kill, ShowLogs, free_tcp, ok_json, over_tls, refusal as proxy_refusal, serve_node as serve,
    test_guest, wait_for_profile, wait_listening,
};

/// One node's listeners the test talks to.
#[derive(Clone, Copy)]
struct Node {
    name: &'static str,
    api: SocketAddr,
    connect: SocketAddr,
}

/// An account and its admin token.
struct Account {
    id: String,
    token: String,
}

/// A refused API call: HTTP status, v4 error code and message.
type Refusal = (u16, u64, String);

/// Another account's token on an account path.
fn forbidden() -> Refusal {
    (
        403,
        10000,
        "this token is not allowed to act on this account".into(),
    )
}

/// `what` is not in the account of the path.
fn not_found(what: &str) -> Refusal {
    (404, 1003, format!("{what} not found"))
}

/// `METHOD /client/v4/accounts/{path}` on `node` with `token` (and a body
/// with its content type); the status and the JSON envelope.
async fn call(
    node: Node,
    token: &str,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, Value) {
    let tcp = TcpStream::connect(node.api).await.expect("API");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("/client/v4/accounts/{path}"))
        .header("host", "api")
        .header("authorization", format!("Bearer {token}"));
    let body = match body {
        Some((ctype, bytes)) => {
            req = req.header("content-type", ctype);
            Full::new(Bytes::from(bytes))
        }
        None => Full::new(Bytes::new()),
    };
    let resp = tx
        .send_request(req.body(body).expect("request"))
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {bytes:?}"));
    (status, v)
}

/// The status, code and message of a failed answer.
fn refusal((status, v): &(u16, Value)) -> Refusal {
    assert_eq!(v["success"], false, "{v}");
    (
        *status,
        v["errors"][0]["code"].as_u64().unwrap_or(0),
        v["errors"][0]["message"].as_str().unwrap_or("").to_owned(),
    )
}

/// The `result` of a successful answer.
fn result(what: &str, (status, v): (u16, Value)) -> Value {
    assert_eq!((status, &v["success"]), (200, &json!(true)), "{what}: {v}");
    v["result"].clone()
}

/// The ids (`field`) of a list answer.
fn ids(what: &str, answer: (u16, Value), field: &str) -> Vec<String> {
    let items = result(what, answer);
    items
        .as_array()
        .unwrap_or_else(|| panic!("{what}: not a list: {items}"))
        .iter()
        .map(|i| i[field].as_str().unwrap_or("").to_owned())
        .collect()
}

/// A worker upload (`PUT …/workers/scripts/{name}`) on `account`'s path of
/// one module `(name, bytes)` with `metadata`.
async fn upload(
    node: Node,
    token: &str,
    account: &str,
    name: &str,
    metadata: Value,
    module: (&str, &[u8]),
) -> (u16, Value) {
    let boundary = "cluster-accounts-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
         Content-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"{0}\"; filename=\"{0}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n",
        module.0
    )
    .into_bytes();
    body.extend_from_slice(module.1);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ctype = format!("multipart/form-data; boundary={boundary}");
    call(
        node,
        token,
        "PUT",
        &format!("{account}/workers/scripts/{name}"),
        Some((&ctype, body)),
    )
    .await
}

/// The test guest's upload metadata, its `API` binding naming `service`.
fn binding(service: &str) -> Value {
    json!({
        "main_module": "worker.wasm",
        "bindings": [{ "type": "vpc_service", "name": "API", "service_id": service }],
    })
}

/// The first line of `account`'s tail of worker `name` through `node`, once
/// the stream has sent it.
async fn tail_hello(node: Node, who: &Account, name: &str) -> String {
    let mut tcp = TcpStream::connect(node.api).await.expect("API");
    let req = format!(
        "GET /client/v4/accounts/{}/workers/scripts/{name}/tail HTTP/1.1\r\nhost: api\r\n\
         authorization: Bearer {}\r\nconnection: close\r\n\r\n",
        who.id, who.token
    );
    tcp.write_all(req.as_bytes()).await.expect("send");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !String::from_utf8_lossy(&seen).contains("\"connected\":true}") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    text.lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default()
        .to_owned()
}

/// A certificate from the cluster CA that node a stored in etcd, as every
/// node of the cluster issues itself (whoever reads the store can).
async fn node_identity(etcd: &Etcd) -> warren_iris::NodeIdentity {
    let store =
        warren_store::EtcdStore::connect(warren_store::EtcdConfig::new(vec![etcd.endpoint()]))
            .await
            .expect("etcd store");
    let record = store
        .cluster_ca()
        .await
        .expect("store read")
        .expect("the store holds a cluster CA");
    let ca = warren_iris::EdgeCa::from_record(&record).expect("a usable CA");
    warren_iris::NodeIdentity::issue(&ca, "test-client").expect("node identity")
}

/// Sends a CONNECT for `service` on behalf of worker `script`, asserting
/// account `account`, to `node`'s front door over mutual TLS as `identity`;
/// the answer's status, `warren-proxy-error` code and JSON `message`.
async fn front_door(
    node: Node,
    identity: &warren_iris::NodeIdentity,
    service: &str,
    script: &str,
    account: &str,
) -> (u16, String, String) {
    let request = format!(
        "CONNECT {service}:80 HTTP/1.1\r\nhost: {service}:80\r\nwarren-script: {script}\r\n\
         warren-binding: API\r\nwarren-account: {account}\r\nwarren-scheme: http\r\n\
         connection: close\r\n\r\n"
    );
    let answer = over_tls(
        node.connect,
        identity.client_config(&[b"http/1.1"]),
        request.as_bytes(),
    )
    .await;
    proxy_refusal(&answer)
}

/// The `warren` CLI as `who` against `node` (flags override the profile).
fn cli(profile: &Path, node: Node, who: &Account, args: &[&str]) -> Value {
    let api = format!("http://{}", node.api);
    let mut v = args.to_vec();
    v.extend_from_slice(&["--api", &api, "--api-token", &who.token]);
    v.extend_from_slice(&["--account-id", &who.id]);
    ok_json(profile, &v)
}

/// A tunnel `lab` and an http service `inv` behind it (10.0.0.2:80, no
/// connector) made by `who` through `node`; their ids.
fn tunnel_and_service(profile: &Path, node: Node, who: &Account) -> (String, String) {
    let tunnel = cli(profile, node, who, &["tunnel", "create", "lab", "--json"]);
    let tunnel = tunnel["id"].as_str().expect("tunnel id").to_owned();
    let svc = cli(
        profile,
        node,
        who,
        &[
            "vpc",
            "service",
            "create",
            "inv",
            "--type",
            "http",
            "--tunnel-id",
            &tunnel,
            "--ipv4",
            "10.0.0.2",
            "--http-port",
            "80",
            "--json",
        ],
    );
    let svc = svc["service_id"].as_str().expect("service id").to_owned();
    (tunnel, svc)
}

/// Waits until `who` reads worker `name` through `node` (it was deployed
/// through the other node).
async fn wait_for_worker(node: Node, who: &Account, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let path = format!("{}/workers/scripts/{name}", who.id);
    loop {
        let (status, v) = call(node, &who.token, "GET", &path, None).await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} never showed worker {name}: {status} {v}",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two nodes on one etcd, each with an API, a front door and a runtime (and
/// a log in `dir`): their processes, the nodes and the profile node a wrote
/// at its first start (account A's).
fn cluster(etcd: &Etcd, dir: &Path) -> ([Kill; 2], Node, Node, PathBuf) {
    let profile = dir.join("profile.json");
    let config = |name: &'static str| {
        let api: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
        let connect: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
        let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
        let text = format!(
            "data_dir = \"data\"\nnode_name = \"{name}\"\n[store]\nbackend = \"etcd\"\n\
             endpoints = [\"{}\"]\n[api]\nlisten = \"{api}\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\
             [connect]\nlisten = \"{connect}\"\n[binding]\nlisten = \"127.0.0.1:0\"\n\
             [runtime]\nlisten = \"{runtime}\"\nmax_cpu_ms = 60000\n",
            etcd.endpoint()
        );
        (Node { name, api, connect }, text)
    };
    let (a, config_a) = config("a");
    let (b, config_b) = config("b");
    // Node a first: it creates the first account (A) and the cluster CA.
    let node_a = serve(dir, "a.toml", &config_a, &profile);
    wait_for_profile(&profile);
    let node_b = serve(dir, "b.toml", &config_b, &dir.join("unused.json"));
    for n in [a, b] {
        wait_listening(n.api, "the API");
        wait_listening(n.connect, "the front door");
    }
    ([node_a, node_b], a, b, profile)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_b_cannot_bind_read_edit_or_tail_account_as_resources_through_any_node() {
    let started = Instant::now();
    let etcd = Etcd::start().expect("etcd");
    let dir = tempfile::tempdir().expect("tempdir");
    let _logs = ShowLogs(dir.path().to_owned());
    let (_nodes, node_a, node_b, profile) = cluster(&etcd, dir.path());
    let written: Value =
        serde_json::from_slice(&std::fs::read(&profile).expect("profile")).expect("profile JSON");
    let acc_a = Account {
        id: written["account_id"].as_str().expect("account").to_owned(),
        token: written["token"].as_str().expect("token").to_owned(),
    };
    let out = std::process::Command::new(common::WARREN)
        .args(["account", "create", "other", "--json", "--config"])
        .arg(dir.path().join("a.toml"))
        .output()
        .expect("warren account create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let acc_b = Account {
        id: created["account_id"].as_str().expect("id").to_owned(),
        token: created["token"].as_str().expect("token").to_owned(),
    };
    assert_ne!(acc_a.id, acc_b.id);

    // A's tunnel, service and worker (bound to it) made through node a; B's
    // through node b. The worker is the runtime's test guest (no JS build).
    let (tunnel_a, svc_a) = tunnel_and_service(&profile, node_a, &acc_a);
    let (tunnel_b, svc_b) = tunnel_and_service(&profile, node_b, &acc_b);
    let guest = ("worker.wasm", test_guest());
    for (node, who, name, service) in [
        (node_a, &acc_a, "shop-a", &svc_a),
        (node_b, &acc_b, "shop-b", &svc_b),
    ] {
        let answer = upload(node, &who.token, &who.id, name, binding(service), guest).await;
        result(name, answer);
    }
    wait_for_worker(node_b, &acc_a, "shop-a").await;
    wait_for_worker(node_a, &acc_b, "shop-b").await;
    let setup = started.elapsed();

    // What A's resources look like to A, before B tries anything.
    let service_path = format!("connectivity/directory/services/{svc_a}");
    let tunnel_path = format!("cfd_tunnel/{tunnel_a}");
    let worker_path = "workers/scripts/shop-a".to_owned();
    let mut before = Vec::new();
    for rest in [&service_path, &tunnel_path, &worker_path] {
        let path = format!("{}/{rest}", acc_a.id);
        before.push(result(
            &path,
            call(node_a, &acc_a.token, "GET", &path, None).await,
        ));
    }
    let identity = node_identity(&etcd).await;
    let reads = [
        ("service", service_path.clone()),
        ("tunnel", tunnel_path.clone()),
        ("tunnel", format!("{tunnel_path}/token")),
        ("tunnel", format!("{tunnel_path}/connections")),
        ("worker", worker_path.clone()),
    ];
    let lists = [
        ("connectivity/directory/services", "service_id"),
        ("cfd_tunnel", "id"),
        ("workers/scripts", "id"),
    ];
    // (B's, A's) of each list.
    let owned = [
        (svc_b.clone(), svc_a.clone()),
        (tunnel_b.clone(), tunnel_a.clone()),
        ("shop-b".to_owned(), "shop-a".to_owned()),
    ];
    let unknown = "00000000-0000-4000-8000-000000000000";
    // A's service on another port: the edit B tries (and A makes at the end).
    let mut edited = before[0].clone();
    edited["http_port"] = json!(8080);

    for node in [node_a, node_b] {
        let n = node.name;
        let on_a = |rest: &str| format!("{}/{rest}", acc_a.id);
        let on_b = |rest: &str| format!("{}/{rest}", acc_b.id);
        let as_b = |method: &'static str, path: String, body: Option<(&'static str, Vec<u8>)>| {
            let token = acc_b.token.clone();
            async move { refusal(&call(node, &token, method, &path, body).await) }
        };

        // 1. Binding: B's upload naming A's service is refused exactly like
        // one naming no service at all (nothing says A's exists), and by A's
        // path with a 403; B binding its own service was its deploy above.
        for service in [svc_a.as_str(), unknown] {
            let answer = upload(
                node,
                &acc_b.token,
                &acc_b.id,
                "thief",
                binding(service),
                guest,
            )
            .await;
            assert_eq!(
                refusal(&answer),
                (
                    400,
                    1002,
                    format!("binding API: VPC service {service} does not exist in this account")
                ),
                "node {n}: {}",
                answer.1
            );
            assert_eq!(
                answer.1["errors"][0]["source"]["pointer"], "/metadata/bindings",
                "node {n}"
            );
        }
        let answer = upload(
            node,
            &acc_b.token,
            &acc_a.id,
            "thief",
            binding(&svc_a),
            guest,
        )
        .await;
        assert_eq!(refusal(&answer), forbidden(), "node {n}: bind on A's path");

        // 2. Reading: A's service, tunnel (its token and connections too) and
        // worker are not found on B's path and forbidden on A's; A reads
        // them through this node as they are.
        for (what, rest) in &reads {
            let refused = as_b("GET", on_b(rest), None).await;
            assert_eq!(refused, not_found(what), "node {n}: B's path, {rest}");
            let refused = as_b("GET", on_a(rest), None).await;
            assert_eq!(refused, forbidden(), "node {n}: A's path, {rest}");
            let own = result(
                rest,
                call(node, &acc_a.token, "GET", &on_a(rest), None).await,
            );
            assert!(!own.is_null(), "node {n}: A reads {rest}");
        }
        for (rest, seen) in [&service_path, &tunnel_path, &worker_path]
            .into_iter()
            .zip(&before)
        {
            let own = result(
                rest,
                call(node, &acc_a.token, "GET", &on_a(rest), None).await,
            );
            assert_eq!(&own, seen, "node {n}: A's view of {rest}");
        }
        // Listing: each account sees exactly its own; B cannot list A's.
        for ((rest, field), (mine, theirs)) in lists.iter().zip(&owned) {
            let got = ids(
                rest,
                call(node, &acc_b.token, "GET", &on_b(rest), None).await,
                field,
            );
            assert_eq!(got, vec![mine.clone()], "node {n}: B lists {rest}");
            let got = ids(
                rest,
                call(node, &acc_a.token, "GET", &on_a(rest), None).await,
                field,
            );
            assert_eq!(got, vec![theirs.clone()], "node {n}: A lists {rest}");
            let refused = as_b("GET", on_a(rest), None).await;
            assert_eq!(refused, forbidden(), "node {n}: B lists A's {rest}");
        }

        // 3. Tail: B cannot follow A's worker by either path; A can, here.
        let tail = format!("{worker_path}/tail");
        assert_eq!(
            as_b("GET", on_b(&tail), None).await,
            not_found("worker"),
            "node {n}: B's path, tail"
        );
        assert_eq!(
            as_b("GET", on_a(&tail), None).await,
            forbidden(),
            "node {n}: A's path, tail"
        );
        assert_eq!(
            tail_hello(node, &acc_a, "shop-a").await,
            r#"{"tail":"shop-a","connected":true}"#,
            "node {n}: A's tail"
        );

        // 4. Editing and deleting: refused the same way; a worker of B's
        // under A's worker's name is a conflict (worker names are global:
        // they are hosts of the workers domain).
        let edit = || Some(("application/json", edited.to_string().into_bytes()));
        assert_eq!(
            as_b("PUT", on_b(&service_path), edit()).await,
            not_found("service"),
            "node {n}: B edits A's service on B's path"
        );
        assert_eq!(
            as_b("PUT", on_a(&service_path), edit()).await,
            forbidden(),
            "node {n}: B edits A's service on A's path"
        );
        for (what, rest) in [
            ("service", &service_path),
            ("tunnel", &tunnel_path),
            ("worker", &worker_path),
        ] {
            let refused = as_b("DELETE", on_b(rest), None).await;
            assert_eq!(refused, not_found(what), "node {n}: B deletes {rest}");
            let refused = as_b("DELETE", on_a(rest), None).await;
            assert_eq!(refused, forbidden(), "node {n}: B deletes A's {rest}");
        }
        let plain = json!({ "main_module": "worker.wasm" });
        let answer = upload(
            node,
            &acc_b.token,
            &acc_b.id,
            "shop-a",
            plain.clone(),
            guest,
        )
        .await;
        assert_eq!(
            refusal(&answer),
            (409, 1004, "the worker name shop-a is taken".into()),
            "node {n}: B uploads over A's worker"
        );
        let answer = upload(node, &acc_b.token, &acc_a.id, "shop-a", plain, guest).await;
        assert_eq!(
            refusal(&answer),
            forbidden(),
            "node {n}: B uploads on A's path"
        );

        // 5. The front door: B's worker does not bind A's service, and an
        // asserted `warren-account` (A's, or B's own) counts for nothing.
        for asserted in [&acc_a.id, &acc_b.id] {
            assert_eq!(
                front_door(node, &identity, &svc_a, "shop-b", asserted).await,
                (
                    404,
                    "binding_not_found".to_owned(),
                    format!("worker shop-b has no binding to service {svc_a}")
                ),
                "node {n}: CONNECT as shop-b asserting account {asserted}"
            );
        }
        // Controls: the workers that bind a service get past every check, to
        // its tunnel (which has no connector), whatever account is asserted.
        for (service, script, tunnel) in
            [(&svc_a, "shop-a", &tunnel_a), (&svc_b, "shop-b", &tunnel_b)]
        {
            assert_eq!(
                front_door(node, &identity, service, script, &acc_a.id).await,
                (
                    503,
                    "destination_unavailable".to_owned(),
                    format!("tunnel {tunnel} has no live connection on any node")
                ),
                "node {n}: CONNECT as {script}"
            );
        }
    }

    // Nothing of A's changed, and B's refused upload stored nothing.
    for node in [node_a, node_b] {
        for (rest, seen) in [&service_path, &tunnel_path, &worker_path]
            .into_iter()
            .zip(&before)
        {
            let path = format!("{}/{rest}", acc_a.id);
            let now = result(&path, call(node, &acc_a.token, "GET", &path, None).await);
            assert_eq!(&now, seen, "node {}: {rest} after B's attempts", node.name);
        }
        for who in [&acc_a, &acc_b] {
            let path = format!("{}/workers/scripts/thief", who.id);
            let answer = call(node, &who.token, "GET", &path, None).await;
            assert_eq!(refusal(&answer), not_found("worker"), "node {}", node.name);
        }
    }
    // Controls: A's own edit and delete through node b are accepted.
    let path = format!("{}/{service_path}", acc_a.id);
    let body = Some(("application/json", edited.to_string().into_bytes()));
    let now = result(&path, call(node_b, &acc_a.token, "PUT", &path, body).await);
    assert_eq!(now["http_port"], 8080, "{now}");
    let path = format!("{}/{worker_path}", acc_a.id);
    let gone = result(
        &path,
        call(node_b, &acc_a.token, "DELETE", &path, None).await,
    );
    assert_eq!(gone, json!({ "id": "shop-a" }));
    eprintln!("setup {setup:?}, whole test {:?}", started.elapsed());
}
