//! Workers on nodes that share a store but not a data directory: a node
//! without a deployed worker's bundle fetches it from a peer (a
//! `PeerContent` reading the other node's directories stands in for the
//! network link), refuses bytes that do not hash to the bundle's name and
//! keeps asking until a peer sends the real ones, and takes the compiled code
//! from the peer instead of compiling; compiled code that does not load into
//! its engine is refused and the worker compiled locally.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hyper::StatusCode;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use warren_runtime::deploy::{BindingSpec, Module, ScriptMetadata, Scripts, ScriptsConfig};
use warren_runtime::js::JsBuilder;
use warren_runtime::logs::LogHub;
use warren_runtime::serve::Router;
use warren_runtime::{EngineConfig, RuntimeEngine};
use warren_store::SqliteStore;
use warren_store::blobs::{BlobDir, CompiledDir};
use warren_store::peers::{LocalContent, PeerContent, PeerError};
use warren_testkit::wait_for;

mod common;
use common::{get, guest};

struct Node {
    scripts: Arc<Scripts>,
    engine: Arc<RuntimeEngine>,
    addr: std::net::SocketAddr,
}

/// A node on the SQLite store `db` (shared by every node of a test) with its
/// own bundles and compiled code in `dir`, following the store.
async fn node(db: &Path, dir: &Path, peers: Option<Arc<dyn PeerContent>>) -> Node {
    let engine = RuntimeEngine::new(EngineConfig::new(dir.join("compiled"))).expect("engine");
    let router = Router::new("workers.test");
    let scripts = Scripts::new(
        engine.clone(),
        router.clone(),
        Arc::new(LogHub::default()),
        ScriptsConfig {
            store: Arc::new(SqliteStore::open(db).expect("store")),
            blobs: BlobDir::open(&dir.join("bundles")).expect("bundles"),
            legacy_dir: None,
            tidy_bundles: true,
            js: JsBuilder::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js")),
            client: None,
            max_cpu_ms: warren_runtime::deploy::DEFAULT_MAX_CPU_MS,
            peers,
            // The nodes share the store's directory, and with it one key.
            sealer: Arc::new(
                warren_store::sealing::Sealer::load_or_create(db.parent().expect("db dir"))
                    .expect("sealing key"),
            ),
        },
    );
    scripts.follow();
    scripts.restore().await.expect("restore");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(router.serve(listener));
    Node {
        scripts,
        engine,
        addr,
    }
}

/// What a node with data directory `dir` serves to its peers.
fn content_of(dir: &Path) -> LocalContent {
    LocalContent::new(
        BlobDir::open(&dir.join("bundles")).expect("bundles"),
        CompiledDir::open(&dir.join("compiled")).expect("compiled"),
    )
}

/// Deploys the test guest as `name` with `VERSION=version` through `node`;
/// returns its bundle hash.
async fn deploy(node: &Node, name: &str, version: &str) -> String {
    let metadata = ScriptMetadata {
        main_module: "worker.wasm".into(),
        compatibility_date: None,
        compatibility_flags: Vec::new(),
        bindings: vec![BindingSpec::PlainText {
            name: "VERSION".into(),
            text: version.into(),
        }],
        limits: Default::default(),
        routes: vec![],
        keep_bindings: vec![],
    };
    let modules = vec![Module {
        name: "worker.wasm".into(),
        bytes: guest().to_vec(),
    }];
    node.scripts
        .put("acct-a", name, metadata, modules)
        .await
        .expect("deploy")
        .etag
}

/// A peer that answers every bundle request with bytes that are not the
/// bundle until it turns honest, then with another node's real content.
struct Liar {
    honest: AtomicBool,
    asked: AtomicUsize,
    real: LocalContent,
    /// The compiled-code keys asked for and served.
    served: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl PeerContent for Liar {
    async fn fetch_bundle(
        &self,
        sha256: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<bool, PeerError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if !self.honest.load(Ordering::SeqCst) {
            dest.write_all(b"\0asm not the bundle you asked for")
                .await?;
            return Ok(true);
        }
        self.real.fetch_bundle(sha256, dest).await
    }

    async fn fetch_compiled(
        &self,
        key: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<bool, PeerError> {
        let served = self.real.fetch_compiled(key, dest).await?;
        if served && let Ok(mut s) = self.served.lock() {
            s.push(key.to_owned());
        }
        Ok(served)
    }
}

/// A peer with the real bundles whose compiled code is garbage.
struct BadCompiler {
    real: LocalContent,
}

#[async_trait]
impl PeerContent for BadCompiler {
    async fn fetch_bundle(
        &self,
        sha256: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<bool, PeerError> {
        self.real.fetch_bundle(sha256, dest).await
    }

    async fn fetch_compiled(
        &self,
        _key: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<bool, PeerError> {
        dest.write_all(b"\x7fELF but not code this engine made")
            .await?;
        Ok(true)
    }
}

/// The names of the files directly in `dir` (not its subdirectories).
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_bundle_gets_it_and_its_compiled_code_from_a_peer() {
    let root = tempfile::tempdir().expect("tempdir");
    let db = root.path().join("warren.db");
    let (dir_a, dir_b) = (root.path().join("a"), root.path().join("b"));
    let a = node(&db, &dir_a, None).await;
    let liar = Arc::new(Liar {
        honest: AtomicBool::new(false),
        asked: AtomicUsize::new(0),
        real: content_of(&dir_a),
        served: Default::default(),
    });
    let b = node(&db, &dir_b, Some(liar.clone())).await;

    let hash = deploy(&a, "shop", "1").await;
    assert_eq!(
        get(a.addr, "shop.workers.test", "/env?VERSION").await,
        (StatusCode::OK, "1".into())
    );
    assert_eq!(a.engine.compiles(), 1, "A compiled the worker");

    // B hears of the deploy and asks its peer, which lies: the bytes are
    // refused every time, B keeps asking, and serves nothing meanwhile.
    wait_for(
        "B to ask its peer three times",
        Duration::from_secs(20),
        || {
            let asked = liar.asked.load(Ordering::SeqCst);
            async move { (asked >= 3).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        get(b.addr, "shop.workers.test", "/env?VERSION").await.0,
        StatusCode::NOT_FOUND
    );
    let b_bundles = BlobDir::open(&dir_b.join("bundles")).expect("bundles");
    assert!(!b_bundles.contains(&hash), "a refused bundle is not stored");
    assert!(b.scripts.get("acct-a", "shop").is_none());

    // The peer tells the truth: B stores the bundle, takes the compiled code
    // and serves the worker without compiling it.
    liar.honest.store(true, Ordering::SeqCst);
    wait_for("B to serve the worker", Duration::from_secs(20), || async {
        let answer = get(b.addr, "shop.workers.test", "/env?VERSION").await;
        (answer == (StatusCode::OK, "1".to_owned())).then_some(())
    })
    .await;
    assert_eq!(b.engine.compiles(), 0, "B compiled nothing");
    assert_eq!(
        b_bundles.get(&hash).expect("B's copy of the bundle"),
        guest(),
        "B stored the real bundle"
    );
    assert_eq!(
        files(&dir_b.join("bundles")),
        vec![hash.clone()],
        "nothing but the bundle"
    );
    assert_eq!(
        files(&dir_b.join("compiled")),
        vec![format!("{}.cwasm", b.engine.compiled_key(&hash))],
        "the compiled code under this engine's key, no leftovers"
    );
    assert_eq!(a.engine.fingerprint(), b.engine.fingerprint());

    // A redeploy of the same bundle needs nothing from the peer.
    let asked = liar.asked.load(Ordering::SeqCst);
    deploy(&a, "shop", "2").await;
    wait_for("B to serve version 2", Duration::from_secs(10), || async {
        let answer = get(b.addr, "shop.workers.test", "/env?VERSION").await;
        (answer == (StatusCode::OK, "2".to_owned())).then_some(())
    })
    .await;
    assert_eq!(liar.asked.load(Ordering::SeqCst), asked);
    assert_eq!(b.engine.compiles(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_that_does_not_load_is_refused_and_the_worker_compiled_here() {
    let root = tempfile::tempdir().expect("tempdir");
    let db = root.path().join("warren.db");
    let (dir_a, dir_c) = (root.path().join("a"), root.path().join("c"));
    let a = node(&db, &dir_a, None).await;
    let hash = deploy(&a, "inventory", "1").await;

    // C starts after the deploy: the worker is restored from the store, its
    // bundle fetched; the garbage offered as compiled code is refused.
    let c = node(
        &db,
        &dir_c,
        Some(Arc::new(BadCompiler {
            real: content_of(&dir_a),
        })),
    )
    .await;
    wait_for("C to serve the worker", Duration::from_secs(20), || async {
        let answer = get(c.addr, "inventory.workers.test", "/env?VERSION").await;
        (answer == (StatusCode::OK, "1".to_owned())).then_some(())
    })
    .await;
    assert_eq!(c.engine.compiles(), 1, "C compiled the worker itself");
    assert_eq!(
        files(&dir_c.join("compiled")),
        vec![format!("{}.cwasm", c.engine.compiled_key(&hash))],
        "only C's own compiled code is kept"
    );
    let own = std::fs::read(
        dir_c
            .join("compiled")
            .join(format!("{}.cwasm", c.engine.compiled_key(&hash))),
    )
    .expect("compiled code");
    assert!(
        !own.starts_with(b"\x7fELF but not"),
        "the garbage was not kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_a_js_workers_shared_engine_and_snapshot_from_a_peer() {
    let root = tempfile::tempdir().expect("tempdir");
    let db = root.path().join("warren.db");
    let (dir_a, dir_b) = (root.path().join("a"), root.path().join("b"));
    let a = node(&db, &dir_a, None).await;
    let peer = Arc::new(Liar {
        honest: AtomicBool::new(true),
        asked: AtomicUsize::new(0),
        real: content_of(&dir_a),
        served: Default::default(),
    });
    let b = node(&db, &dir_b, Some(peer.clone())).await;

    let metadata = ScriptMetadata {
        main_module: "worker.js".into(),
        compatibility_date: None,
        compatibility_flags: Vec::new(),
        bindings: vec![BindingSpec::PlainText {
            name: "VERSION".into(),
            text: "js-1".into(),
        }],
        limits: Default::default(),
        routes: vec![],
        keep_bindings: vec![],
    };
    let modules = vec![Module {
        name: "worker.js".into(),
        bytes: b"export default { fetch(req, env) { return new Response(env.VERSION); } };"
            .to_vec(),
    }];
    let hash = a
        .scripts
        .put("acct-a", "js", metadata, modules)
        .await
        .expect("deploy")
        .etag;
    assert_eq!(
        get(a.addr, "js.workers.test", "/").await,
        (StatusCode::OK, "js-1".into())
    );
    assert_eq!(a.engine.compiles(), 1, "A compiled the JS engine");

    // B takes the bundle, then the engine all JS workers share and this
    // worker's snapshot: it serves without compiling.
    wait_for(
        "B to serve the JS worker",
        Duration::from_secs(60),
        || async {
            let answer = get(b.addr, "js.workers.test", "/").await;
            (answer == (StatusCode::OK, "js-1".to_owned())).then_some(())
        },
    )
    .await;
    assert_eq!(b.engine.compiles(), 0, "B compiled nothing");
    let bundle = BlobDir::open(&dir_b.join("bundles"))
        .expect("bundles")
        .get(&hash)
        .expect("B's copy of the bundle");
    let parts = b
        .engine
        .js_compiled_parts(&bundle)
        .expect("a JS worker splits");
    let keys: Vec<String> = parts.iter().map(|p| p.key.clone()).collect();
    assert_eq!(
        *peer.served.lock().expect("served"),
        keys,
        "the peer served the engine, then the snapshot"
    );
    let mut want: Vec<String> = keys.iter().map(|k| format!("{k}.cwasm")).collect();
    want.sort();
    assert_eq!(
        files(&dir_b.join("compiled")),
        want,
        "the shared engine and the snapshot, nothing else"
    );
}
