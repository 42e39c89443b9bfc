//! Tenant isolation through the real API of a `warren serve` process: a JS
//! build that never finishes times out without holding up other deploys and
//! leaves no process behind; routes cannot reach into another account's hosts;
//! live logs stay with their account, end when the worker is deleted, and a
//! tail that does not read is dropped; `limits.cpu_ms` has a node maximum.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{Kill, WARREN, free_tcp, get, start_serve, test_guest as guest};

/// An account's way into the API.
#[derive(Clone)]
struct Account {
    api: SocketAddr,
    id: String,
    token: String,
}

/// A `warren serve` with every part, its runtime on a known port.
struct Node {
    child: Kill,
    dir: tempfile::TempDir,
    runtime: SocketAddr,
    a: Account,
}

impl Node {
    /// Starts a node with `runtime_extra` lines in its `[runtime]` section.
    fn start(runtime_extra: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
        let config = format!(
            "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\
             [connect]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"127.0.0.1:0\"\n\
             [runtime]\nlisten = \"{runtime}\"\n{runtime_extra}\n"
        );
        let served = start_serve(Command::new(WARREN), dir.path(), &config);
        let a = Account {
            api: served.api,
            id: served.account_id,
            token: served.token,
        };
        Node {
            child: served.node,
            dir,
            runtime,
            a,
        }
    }

    /// A second account (`warren account create`).
    fn account(&self, name: &str) -> Account {
        let out = Command::new(WARREN)
            .args(["account", "create", name, "--json", "--config"])
            .arg(self.dir.path().join("edge.toml"))
            .output()
            .expect("warren account create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        Account {
            api: self.a.api,
            id: v["account_id"].as_str().expect("id").to_owned(),
            token: v["token"].as_str().expect("token").to_owned(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// One API call; the status and the JSON envelope.
async fn call(
    who: &Account,
    method: &str,
    path: &str,
    body: Option<(String, Vec<u8>)>,
) -> (u16, Value) {
    let tcp = tokio::net::TcpStream::connect(who.api).await.expect("api");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("/client/v4/accounts/{}/{path}", who.id))
        .header("host", "api")
        .header("authorization", format!("Bearer {}", who.token));
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
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Uploads `name` with `metadata` and one module.
async fn upload(who: &Account, name: &str, metadata: Value, module: (&str, &[u8])) -> (u16, Value) {
    let boundary = "warren-test-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
             Content-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\n\
             Content-Disposition: form-data; name=\"{0}\"; filename=\"{0}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n",
            module.0
        )
        .as_bytes(),
    );
    body.extend_from_slice(module.1);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    call(
        who,
        "PUT",
        &format!("workers/scripts/{name}"),
        Some((format!("multipart/form-data; boundary={boundary}"), body)),
    )
    .await
}

/// Uploads the test guest as `name` with `VERSION=version` and `routes`.
async fn deploy_guest(who: &Account, name: &str, version: &str, routes: &[&str]) -> (u16, Value) {
    let metadata = json!({
        "main_module": "worker.wasm",
        "bindings": [{ "type": "plain_text", "name": "VERSION", "text": version }],
        "routes": routes,
    });
    upload(who, name, metadata, ("worker.wasm", guest())).await
}

fn error_message(v: &Value) -> &str {
    v["errors"][0]["message"].as_str().unwrap_or("")
}

/// Fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp…
fn stat(pid: &str) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Live (not zombie) processes whose process group is `pgrp`.
fn group_members(pgrp: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .filter(|p| stat(p).is_some_and(|f| f[2] == pgrp && f[0] != "Z"))
        .collect()
}

/// The child of `parent` named `comm`, once it exists.
fn child_named(parent: u32, comm: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let found = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|p| {
                stat(p).is_some_and(|f| f[1] == parent.to_string())
                    && std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == comm)
            });
        if let Some(p) = found {
            return p;
        }
        assert!(Instant::now() < deadline, "no {comm} child appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const BUILD_TIMEOUT_S: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_never_ends_times_out_and_holds_up_no_other_deploy() {
    let node = Node::start(&format!("build_timeout = \"{BUILD_TIMEOUT_S}s\""));
    let a = node.a.clone();
    guest();
    let looper =
        b"while (true) {}\nexport default { fetch() { return new Response('never'); } };\n";
    let started = Instant::now();
    let stuck = tokio::spawn({
        let a = a.clone();
        async move {
            let metadata = json!({ "main_module": "worker.js" });
            upload(&a, "looper", metadata, ("worker.js", looper)).await
        }
    });
    // The build runs in a process group of its own, led by node.
    let pid = node.pid();
    let node_pid =
        tokio::task::spawn_blocking(move || child_named(pid, "node", Duration::from_secs(30)))
            .await
            .expect("search");
    let group = stat(&node_pid).expect("node's stat")[2].clone();
    assert_eq!(group, node_pid, "node leads its own process group");

    // Meanwhile another worker deploys and serves.
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(60),
        deploy_guest(&a, "steady", "v1", &[]),
    )
    .await
    .expect("a deploy is not held up by another's build");
    assert_eq!(status, 200, "{body}");
    assert!(!stuck.is_finished(), "the looping build is still running");
    let (status, body) = get(node.runtime, "steady.workers.localhost", "/hello").await;
    assert_eq!(
        (status, body.as_ref()),
        (200, &b"hello from a wasm worker"[..])
    );

    let (status, body) = tokio::time::timeout(Duration::from_secs(60), stuck)
        .await
        .expect("the looping build is refused")
        .expect("upload task");
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        error_message(&body),
        format!(
            "build of worker looper timed out after {BUILD_TIMEOUT_S} s: its top-level code did not finish (a loop at module scope?)"
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(BUILD_TIMEOUT_S + 10),
        "refused after {:?}",
        started.elapsed()
    );
    assert_eq!(
        group_members(&group),
        Vec::<String>::new(),
        "the build's processes are gone"
    );
    let (status, _) = call(&a, "GET", "workers/scripts/looper", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_cannot_reach_into_another_accounts_hosts() {
    let node = Node::start("");
    let (a, b) = (node.a.clone(), node.account("other"));
    let (status, body) = deploy_guest(&a, "shop-a", "a", &["shop.example.com/*"]).await;
    assert_eq!(status, 200, "{body}");

    for pattern in [
        "SHOP.example.com./*",
        "shop.example.com/checkout*",
        "shop.example.com",
        "*.example.com/*",
        "*example.com/*",
    ] {
        let (status, body) = deploy_guest(&b, "thief", "b", &[pattern]).await;
        assert_eq!(status, 409, "{pattern}: {body}");
        assert_eq!(
            error_message(&body),
            format!("route {pattern} overlaps a host another account routes")
        );
        assert!(!body.to_string().contains("shop-a"), "{body}");
    }
    // Other hosts are free.
    let (status, body) = deploy_guest(&b, "blog-b", "b", &["blog.example.com/*"]).await;
    assert_eq!(status, 200, "{body}");
    // The workers domain belongs to the workers of those names, and a wildcard
    // cannot claim every host: both refused before anything is built.
    for pattern in [
        "shop-a.workers.localhost/*",
        "*.workers.localhost/*",
        "*/*",
        "*.com/*",
    ] {
        let (status, body) = deploy_guest(&b, "thief", "b", &[pattern]).await;
        assert_eq!(status, 400, "{pattern}: {body}");
    }
    let (status, body) = get(node.runtime, "shop-a.workers.localhost.", "/sleep?0").await;
    assert_eq!(
        (status, body.as_ref()),
        (200, &b"a"[..]),
        "a trailing dot still finds the worker"
    );

    let version = |host: &'static str, path: &'static str| get(node.runtime, host, path);
    // (`/sleep?0` answers with VERSION.)
    for host in [
        "shop.example.com",
        "SHOP.Example.COM.",
        "shop.example.com.:8080",
    ] {
        let (status, body) = version(host, "/sleep?0").await;
        assert_eq!((status, body.as_ref()), (200, &b"a"[..]), "{host}");
    }
    let (status, body) = version("blog.example.com", "/sleep?0").await;
    assert_eq!((status, body.as_ref()), (200, &b"b"[..]));

    // Within one account the most specific route still wins, a pattern is
    // served once, and a redeploy keeps the owner's routes.
    let (status, body) = deploy_guest(&a, "env-a", "env", &["shop.example.com/env"]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = version("shop.example.com", "/env?VERSION").await;
    assert_eq!((status, body.as_ref()), (200, &b"env"[..]));
    let (status, body) = version("shop.example.com", "/sleep?0").await;
    assert_eq!((status, body.as_ref()), (200, &b"a"[..]));
    let (status, body) = deploy_guest(&a, "dup-a", "dup", &["Shop.Example.com/*"]).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        error_message(&body),
        "route Shop.Example.com/* is already served by worker shop-a"
    );
    let (status, body) = deploy_guest(&a, "shop-a", "a2", &["shop.example.com/*"]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = version("shop.example.com", "/sleep?0").await;
    assert_eq!((status, body.as_ref()), (200, &b"a2"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_ms_over_the_node_maximum_is_refused() {
    let node = Node::start("max_cpu_ms = 100");
    let metadata = |cpu: u64| json!({ "main_module": "worker.wasm", "limits": { "cpu_ms": cpu } });
    let (status, body) = upload(&node.a, "greedy", metadata(101), ("worker.wasm", guest())).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        error_message(&body),
        "limits.cpu_ms: 101 is over this node's maximum of 100 ms"
    );
    assert_eq!(body["errors"][0]["source"]["pointer"], "/limits/cpu_ms");
    let (status, body) = upload(&node.a, "greedy", metadata(100), ("worker.wasm", guest())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["metadata"]["limits"]["cpu_ms"], 100);
}

/// Opens `who`'s tail of `name` (a raw HTTP/1.1 request, `Connection: close`).
async fn open_tail(who: &Account, name: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(who.api).await.expect("api");
    let req = format!(
        "GET /client/v4/accounts/{}/workers/scripts/{name}/tail HTTP/1.1\r\nhost: api\r\n\
         authorization: Bearer {}\r\nconnection: close\r\n\r\n",
        who.id, who.token
    );
    tcp.write_all(req.as_bytes()).await.expect("send");
    tcp
}

/// Reads from `tcp` until the answer has `want` in its body, or it ends.
async fn read_until(tcp: &mut tokio::net::TcpStream, seen: &mut Vec<u8>, want: &str) -> bool {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if String::from_utf8_lossy(seen).contains(want) {
            return true;
        }
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The body of a chunked answer `raw` (head included), and whether it was complete.
fn dechunk(raw: &[u8]) -> (String, bool) {
    let text = String::from_utf8_lossy(raw);
    let Some((head, mut rest)) = text.split_once("\r\n\r\n") else {
        return (String::new(), false);
    };
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut body = String::new();
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return (body, false);
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return (body, false);
        };
        if n == 0 {
            return (body, true);
        }
        if after.len() < n + 2 {
            return (body, false);
        }
        body.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_stay_in_their_account_and_end_with_their_worker() {
    let node = Node::start("");
    let (a, b) = (node.a.clone(), node.account("other"));
    let (status, body) = deploy_guest(&a, "logs", "a", &[]).await;
    assert_eq!(status, 200, "{body}");

    // B cannot follow A's worker, by its own account or by A's.
    let (status, body) = call(&b, "GET", "workers/scripts/logs/tail", None).await;
    assert_eq!((status, error_message(&body)), (404, "worker not found"));
    let forged = Account {
        id: a.id.clone(),
        ..b.clone()
    };
    let (status, _) = call(&forged, "GET", "workers/scripts/logs/tail", None).await;
    assert_eq!(status, 403);

    let mut tail = open_tail(&a, "logs").await;
    let mut seen = Vec::new();
    assert!(
        read_until(&mut tail, &mut seen, "\"connected\":true").await,
        "no hello"
    );
    let (status, _) = get(node.runtime, "logs.workers.localhost", "/hello?from-a").await;
    assert_eq!(status, 200);
    assert!(
        read_until(&mut tail, &mut seen, "/hello?from-a").await,
        "A's event"
    );

    // Deleting the worker ends the tail; the name's next owner is not followed.
    let (status, body) = call(&a, "DELETE", "workers/scripts/logs", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = deploy_guest(&b, "logs", "b", &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = get(node.runtime, "logs.workers.localhost", "/hello?from-b").await;
    assert_eq!(status, 200);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tail.read_to_end(&mut rest))
        .await
        .expect("the tail ends when its worker is deleted")
        .expect("read");
    seen.extend_from_slice(&rest);
    let (body, complete) = dechunk(&seen);
    assert!(complete, "{body}");
    assert_eq!(
        body.lines().last(),
        Some(r#"{"closed":"worker_deleted"}"#),
        "{body}"
    );
    assert!(!body.contains("from-b"), "{body}");
    let (status, _) = call(&a, "GET", "workers/scripts/logs/tail", None).await;
    assert_eq!(status, 404, "the name is B's now");
}

/// A tenant cannot open tails without end: a worker has at most ten live
/// tails on a node, the eleventh is refused with 429 and says why, another
/// worker is not affected, and a closed tail frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_has_at_most_ten_live_tails() {
    let node = Node::start("");
    let a = node.a.clone();
    for name in ["busy", "quiet"] {
        let (status, body) = deploy_guest(&a, name, "a", &[]).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut tails = Vec::new();
    for _ in 0..10 {
        tails.push(connected_tail(&a, "busy").await.expect("a tail"));
    }
    let answer = connected_tail(&a, "busy")
        .await
        .expect_err("an eleventh tail is refused");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 429"), "{answer}");
    let body: Value = serde_json::from_str(body).expect("a JSON error");
    assert_eq!(
        (error_message(&body), &body["errors"][0]["code"]),
        (
            "worker busy already has 10 live tails on this node; close one and try again",
            &Value::from(1429)
        ),
        "{body}"
    );
    connected_tail(&a, "quiet")
        .await
        .expect("another worker's tail");

    // The node sees the closed connection and drops its subscription.
    drop(tails.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(answer) = connected_tail(&a, "busy").await {
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        assert!(
            Instant::now() < deadline,
            "a closed tail still holds its place after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tail of `name` once its hello came, or the answer that came instead.
async fn connected_tail(who: &Account, name: &str) -> Result<tokio::net::TcpStream, String> {
    let mut tail = open_tail(who, name).await;
    let mut seen = Vec::new();
    if read_until(&mut tail, &mut seen, "\"connected\":true").await {
        Ok(tail)
    } else {
        Err(String::from_utf8_lossy(&seen).into_owned())
    }
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_that_never_reads_is_dropped_and_memory_stays_bounded() {
    let node = Node::start("");
    let a = node.a.clone();
    let (status, body) = deploy_guest(&a, "chatty", "a", &[]).await;
    assert_eq!(status, 200, "{body}");
    let mut tail = open_tail(&a, "chatty").await;
    let mut seen = Vec::new();
    assert!(
        read_until(&mut tail, &mut seen, "\"connected\":true").await,
        "no hello"
    );

    // Each request's event carries its 60 KB URL; the tail reads nothing.
    let path = format!("/hello?{}", "x".repeat(60_000));
    let hit = || async {
        let (status, body) = get(node.runtime, "chatty.workers.localhost", &path).await;
        assert_eq!(
            status,
            200,
            "the worker keeps serving: {}",
            String::from_utf8_lossy(&body)
        );
    };
    for _ in 0..20 {
        hit().await;
    }
    let before = rss_kib(node.pid());
    for _ in 0..800 {
        hit().await;
    }
    let grown = rss_kib(node.pid()).saturating_sub(before);
    assert!(
        grown < 24 << 10,
        "RSS grew {grown} KiB for 48 MB of unread events"
    );

    // Once the tail reads again it gets what the sockets held, then the end.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tail.read_to_end(&mut rest))
        .await
        .expect("the dropped tail ends")
        .expect("read");
    seen.extend_from_slice(&rest);
    let (body, complete) = dechunk(&seen);
    assert!(complete);
    assert_eq!(body.lines().last(), Some(r#"{"closed":"too_slow"}"#));
    assert!(body.lines().count() < 200, "{} lines", body.lines().count());
    hit().await;
}
