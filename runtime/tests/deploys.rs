//! Deploys through `Scripts` (what the worker-scripts API calls): a prebuilt
//! Wasm component uploaded with plain-text vars and routes, served by the real
//! router over HTTP; routes pick workers by host and path; a redeploy under
//! load drops no request and in-flight requests finish on the old version.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use warren_runtime::deploy::{
    BindingSpec, DeployError, Module, ScriptMetadata, Scripts, ScriptsConfig,
};
use warren_runtime::js::JsBuilder;
use warren_runtime::logs::LogHub;
use warren_runtime::serve::Router;
use warren_runtime::{EngineConfig, RuntimeEngine};
use warren_store::SqliteStore;
use warren_store::blobs::BlobDir;

mod common;
use common::{get, guest};

struct Node {
    scripts: Arc<Scripts>,
    addr: std::net::SocketAddr,
}

/// A router serving on loopback with scripts stored in a SQLite store and a
/// bundle directory in `dir`, restored from them.
async fn node(dir: &std::path::Path) -> Node {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("warren-engine-cache");
    let engine = RuntimeEngine::new(EngineConfig::new(cache)).expect("engine");
    let router = Router::new("workers.test");
    let scripts = Scripts::new(
        engine,
        router.clone(),
        Arc::new(LogHub::default()),
        ScriptsConfig {
            store: Arc::new(SqliteStore::open(&dir.join("warren.db")).expect("store")),
            blobs: BlobDir::open(&dir.join("bundles")).expect("bundles"),
            legacy_dir: None,
            tidy_bundles: true,
            js: JsBuilder::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js")),
            client: None,
            max_cpu_ms: warren_runtime::deploy::DEFAULT_MAX_CPU_MS,
            peers: None,
            sealer: Arc::new(
                warren_store::sealing::Sealer::load_or_create(dir).expect("sealing key"),
            ),
        },
    );
    scripts.restore().await.expect("restore");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(router.serve(listener));
    Node { scripts, addr }
}

/// Uploads the test guest as `name` with `VERSION=version` and `routes`.
async fn put(
    node: &Node,
    account: &str,
    name: &str,
    version: &str,
    routes: &[&str],
) -> Result<(), DeployError> {
    let metadata = ScriptMetadata {
        main_module: "worker.wasm".into(),
        compatibility_date: None,
        compatibility_flags: Vec::new(),
        bindings: vec![BindingSpec::PlainText {
            name: "VERSION".into(),
            text: version.into(),
        }],
        limits: Default::default(),
        routes: routes.iter().map(|r| r.to_string()).collect(),
        keep_bindings: vec![],
    };
    let modules = vec![Module {
        name: "worker.wasm".into(),
        bytes: guest().to_vec(),
    }];
    node.scripts
        .put(account, name, metadata, modules)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_pick_the_worker_by_host_and_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = node(dir.path()).await;
    put(&n, "acct-a", "wild", "wild", &["*.example.com/*"])
        .await
        .expect("deploy wild");
    put(
        &n,
        "acct-a",
        "shop",
        "shop",
        &["shop.example.com/*", "example.net/env"],
    )
    .await
    .expect("deploy shop");

    let who = |host: &'static str, path: &'static str| get(n.addr, host, path);
    assert_eq!(
        who("shop.example.com", "/env?VERSION").await,
        (StatusCode::OK, "shop".into())
    );
    assert_eq!(
        who("a.example.com:8080", "/env?VERSION").await,
        (StatusCode::OK, "wild".into())
    );
    assert_eq!(
        who("example.net", "/env?VERSION").await,
        (StatusCode::OK, "shop".into())
    );
    // The workers.dev-style name still works.
    assert_eq!(
        who("wild.workers.test", "/env?VERSION").await,
        (StatusCode::OK, "wild".into())
    );
    let (status, body) = who("example.net", "/hello").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("no worker serves example.net"), "{body}");

    // A pattern another worker serves is refused, naming it within the
    // account and giving nothing away across accounts.
    let e = put(&n, "acct-a", "dup", "dup", &["shop.example.com/*"])
        .await
        .expect_err("a taken route");
    assert_eq!(
        e.to_string(),
        "route shop.example.com/* is already served by worker shop"
    );
    let e = put(&n, "acct-b", "other", "x", &["shop.example.com/*"])
        .await
        .expect_err("a route of another account");
    assert_eq!(
        e.to_string(),
        "route shop.example.com/* overlaps a host another account routes"
    );
    let e = put(&n, "acct-a", "bad", "x", &["ok.test/*", "https://x.test/*"])
        .await
        .expect_err("a bad pattern");
    assert!(
        matches!(&e, DeployError::Invalid { pointer, message }
            if pointer == "/routes/1" && message.contains("omit the scheme")),
        "{e:?}"
    );

    // Routes survive a restart.
    let again = node(dir.path()).await;
    assert_eq!(
        get(again.addr, "shop.example.com", "/env?VERSION").await,
        (StatusCode::OK, "shop".into())
    );

    // Deleting a worker frees its routes: the wildcard takes its host.
    assert!(n.scripts.delete("acct-a", "shop").await.expect("delete"));
    assert_eq!(
        who("shop.example.com", "/env?VERSION").await,
        (StatusCode::OK, "wild".into())
    );
    assert_eq!(
        who("example.net", "/env?VERSION").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_under_load_drops_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = node(dir.path()).await;
    put(&n, "acct-a", "shop", "1", &[]).await.expect("v1");
    let host = "shop.workers.test";

    // A slow request that starts on version 1.
    let slow = tokio::spawn(get(n.addr, host, "/sleep?1500"));
    // Clients that keep asking which version answers.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let stop = stop.clone();
        let addr = n.addr;
        clients.spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) && seen.len() < 5000 {
                seen.push(get(addr, host, "/env?VERSION").await);
            }
            seen
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    put(&n, "acct-a", "shop", "2", &[]).await.expect("v2");
    // Every request that starts after the swap meets version 2.
    assert_eq!(
        get(n.addr, host, "/env?VERSION").await,
        (StatusCode::OK, "2".into())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut answers = Vec::new();
    while let Some(done) = clients.join_next().await {
        answers.extend(done.expect("client task"));
    }
    let failed: Vec<_> = answers
        .iter()
        .filter(|(s, b)| *s != StatusCode::OK || (b != "1" && b != "2"))
        .collect();
    assert!(failed.is_empty(), "failed during the redeploy: {failed:?}");
    assert!(answers.iter().any(|(_, b)| b == "1"), "version 1 served");
    assert!(answers.iter().any(|(_, b)| b == "2"), "version 2 served");
    // The request in flight during the swap finished on the version it began on.
    assert_eq!(
        slow.await.expect("slow request"),
        (StatusCode::OK, "1".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_bundle_fails_to_load_keeps_its_name_and_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = node(dir.path()).await;
    put(&n, "acct-a", "keep", "1", &["keep.example.com/*"])
        .await
        .expect("deploy");
    let etag = n.scripts.get("acct-a", "keep").expect("deployed").etag;
    // The bundle is damaged on disk; a node starting now cannot load it.
    std::fs::write(dir.path().join("bundles").join(&etag), b"not a component").expect("damage");
    let again = node(dir.path()).await;
    assert_eq!(
        get(again.addr, "keep.workers.test", "/env?VERSION").await.0,
        StatusCode::NOT_FOUND
    );
    assert!(again.scripts.get("acct-a", "keep").is_none());
    // The store still says whose it is: its name and host stay taken.
    let e = put(&again, "acct-b", "keep", "x", &[])
        .await
        .expect_err("a taken name");
    assert_eq!(e.to_string(), "the worker name keep is taken");
    let e = put(&again, "acct-b", "other", "x", &["keep.example.com/*"])
        .await
        .expect_err("a taken host");
    assert_eq!(
        e.to_string(),
        "route keep.example.com/* overlaps a host another account routes"
    );
    // Its owner redeploys, which writes the bundle again.
    put(&again, "acct-a", "keep", "2", &["keep.example.com/*"])
        .await
        .expect("redeploy");
    assert_eq!(
        get(again.addr, "keep.example.com", "/env?VERSION").await,
        (StatusCode::OK, "2".into())
    );
}
