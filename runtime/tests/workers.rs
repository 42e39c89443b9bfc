//! Wasm workers end to end: a real Rust component (built for wasm32-wasip2 here)
//! served over HTTP by the runtime, against its limits and its outbound gate.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

mod common;
use common::{get, get_headers, guest};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use warren_protocol::ProxyError;
use warren_runtime::js::{JsBuildError, JsBuilder};
use warren_runtime::serve::Router;
use warren_runtime::{
    BindingClient, BindingContext, EngineConfig, Limits, OutboundPolicy, RuntimeEngine, Worker,
    WorkerConfig,
};
use wasmtime_wasi_http::WasiBody;

/// A binding call as the client saw it: its context and the request headers.
type Call = (BindingContext, Vec<(String, String)>);

#[derive(Default)]
struct RecordingClient {
    calls: Mutex<Vec<Call>>,
}

#[async_trait]
impl BindingClient for RecordingClient {
    async fn fetch(
        &self,
        ctx: BindingContext,
        req: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, ProxyError> {
        let mut headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        headers.push((":uri".into(), req.uri().to_string()));
        if req.uri().path() == "/fail" {
            return Err(ProxyError::new(
                warren_protocol::ErrorCode::ConnectionRefused,
                "test origin down",
            ));
        }
        let body = format!(
            "from binding {} to service {} for {}",
            ctx.binding,
            ctx.service_id,
            req.uri()
        );
        self.calls.lock().expect("lock").push((ctx, headers));
        let body = Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync();
        Ok(http::Response::new(body))
    }
}

struct Host {
    addr: SocketAddr,
    client: Arc<RecordingClient>,
    _cache: tempfile::TempDir,
}

async fn host(limits: Limits, outbound: OutboundPolicy) -> Host {
    host_for(guest(), false, limits, outbound).await
}

/// Built JS components shared by the test processes.
fn js_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("warren-js-cache")
}

/// Builds the JS test worker once per test process (ComponentizeJS).
fn js_guest() -> &'static [u8] {
    // (Each test process builds it once; the compiled code is shared through
    // the engine cache in the target's temporary directory.)
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| js_guest_greeting("hi"))
}

async fn host_for(wasm: &[u8], js: bool, limits: Limits, outbound: OutboundPolicy) -> Host {
    let cache = tempfile::tempdir().expect("tempdir");
    // Compiled code is shared by the test processes (compiling the 13 MB JS
    // engine once, not per test); the restart test uses a cache of its own.
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("warren-engine-cache");
    let engine = RuntimeEngine::new(EngineConfig::new(shared)).expect("engine");
    let client = Arc::new(RecordingClient::default());
    let config = WorkerConfig {
        name: "shop".into(),
        account_id: "acct-1".into(),
        bindings: HashMap::from([("API".to_string(), "svc-123".to_string())]),
        env: vec![],
        limits,
        outbound,
        routes: vec![],
        js,
        ..Default::default()
    };
    let worker = Worker::new(
        engine.clone(),
        config,
        wasm,
        Some(client.clone() as Arc<dyn BindingClient>),
    )
    .expect("worker");
    let router = Router::new("workers.test");
    router.deploy(worker);
    let addr = common::serve(router).await;
    Host {
        addr,
        client,
        _cache: cache,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_answers_by_host() {
    let h = host(Limits::default(), OutboundPolicy::PublicInternet).await;
    assert_eq!(
        get(h.addr, "shop.workers.test", "/hello").await,
        (StatusCode::OK, "hello from a wasm worker".into())
    );
    let (status, body) = get(h.addr, "other.workers.test", "/hello").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_ends_at_the_cpu_limit_while_others_are_served() {
    let h = host(
        Limits {
            cpu_ms: 200,
            ..Limits::default()
        },
        OutboundPolicy::PublicInternet,
    )
    .await;
    let looping = tokio::spawn(get(h.addr, "shop.workers.test", "/loop"));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    for _ in 0..5 {
        assert_eq!(
            get(h.addr, "shop.workers.test", "/hello").await.0,
            StatusCode::OK,
            "served while another request loops"
        );
    }
    let (status, body) = looping.await.expect("task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("cpu_ms"), "{body}");
    assert_eq!(
        get(h.addr, "shop.workers.test", "/hello").await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_ends_at_the_memory_limit_and_an_exception_is_a_500() {
    let h = host(
        Limits {
            memory_bytes: 32 << 20,
            ..Limits::default()
        },
        OutboundPolicy::PublicInternet,
    )
    .await;
    let (status, body) = get(h.addr, "shop.workers.test", "/alloc").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("memory"), "{body}");
    let (status, body) = get(h.addr, "shop.workers.test", "/panic").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("exception"), "{body}");
    assert_eq!(
        get(h.addr, "shop.workers.test", "/hello").await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_fetch_to_private_addresses_is_refused() {
    let h = host(Limits::default(), OutboundPolicy::PublicInternet).await;
    // A real local server the worker must not reach.
    let secret = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = secret.local_addr().expect("addr").port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        "http://10.0.0.1/".to_string(),
        "http://169.254.169.254/latest/meta-data".to_string(),
        format!("http://[::1]:{port}/"),
    ] {
        let (status, body) = get(h.addr, "shop.workers.test", &format!("/fetch?{url}")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{url}: {body}");
        assert!(body.contains("DestinationIpProhibited"), "{url}: {body}");
    }
    let none = host(Limits::default(), OutboundPolicy::None).await;
    let (_, body) = get(
        none.addr,
        "shop.workers.test",
        "/fetch?http://93.184.216.34/",
    )
    .await;
    assert!(body.contains("HttpRequestDenied"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_call_reaches_the_client_with_its_context_and_no_marker() {
    let h = host(Limits::default(), OutboundPolicy::PublicInternet).await;
    let (status, body) = get(
        h.addr,
        "shop.workers.test",
        "/bind?API&http://inventory.internal/items",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        "from binding API to service svc-123 for http://inventory.internal/items"
    );
    let calls = h.client.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1);
    let (ctx, headers) = &calls[0];
    assert_eq!(
        (
            ctx.account_id.as_str(),
            ctx.worker.as_str(),
            ctx.binding.as_str(),
            ctx.service_id.as_str()
        ),
        ("acct-1", "shop", "API", "svc-123")
    );
    assert_eq!(ctx.request_id.len(), 32);
    assert!(
        headers.iter().all(|(k, _)| k != "warren-binding"),
        "marker stripped: {headers:?}"
    );
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-from-worker" && v == "yes"),
        "{headers:?}"
    );

    let (status, body) = get(h.addr, "shop.workers.test", "/bind?NOPE").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("ProxyError: binding_not_found"), "{body}");
    assert_eq!(
        h.client.calls.lock().expect("lock").len(),
        1,
        "an unknown binding never reaches the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_compiled_code_instead_of_compiling() {
    let cache = tempfile::tempdir().expect("tempdir");
    let first = RuntimeEngine::new(EngineConfig::new(cache.path().to_owned())).expect("engine");
    Worker::new(first.clone(), WorkerConfig::default(), guest(), None).expect("worker");
    assert_eq!(first.compiles(), 1);
    let second = RuntimeEngine::new(EngineConfig::new(cache.path().to_owned())).expect("engine");
    Worker::new(second.clone(), WorkerConfig::default(), guest(), None).expect("worker");
    assert_eq!(
        second.compiles(),
        0,
        "the restarted engine loaded the cached code"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_the_same_bundle_share_one_loaded_component() {
    let cache = tempfile::tempdir().expect("tempdir");
    let engine = RuntimeEngine::new(EngineConfig::new(cache.path().to_owned())).expect("engine");
    let worker = |name: &str| {
        let config = WorkerConfig {
            name: name.into(),
            account_id: format!("acct-{name}"),
            ..Default::default()
        };
        Worker::new(engine.clone(), config, guest(), None).expect("worker")
    };
    let router = Router::new("workers.test");
    router.deploy(worker("a"));
    router.deploy(worker("b"));
    assert_eq!(engine.components_loaded(), 1, "one component for both");
    assert_eq!(engine.compiles(), 1);
    let addr = common::serve(router.clone()).await;
    // Each runs in instances of its own.
    for host in ["a.workers.test", "b.workers.test"] {
        assert_eq!(
            get(addr, host, "/hello").await,
            (StatusCode::OK, "hello from a wasm worker".into()),
            "{host}"
        );
    }
    router.remove("a");
    assert_eq!(engine.components_loaded(), 1, "b still holds it");
    router.remove("b");
    // (A request's instance may still hold the worker for a moment.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.components_loaded() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the component outlived its last worker"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Loaded again from the cached file, not compiled again.
    let _c = worker("c");
    assert_eq!((engine.components_loaded(), engine.compiles()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freshly_compiled_worker_runs_from_its_cached_file() {
    let cache = tempfile::tempdir().expect("tempdir");
    let engine = RuntimeEngine::new(EngineConfig::new(cache.path().to_owned())).expect("engine");
    let component = engine.component(guest()).expect("compile");
    assert_eq!(engine.compiles(), 1, "compiled here, not loaded");
    // The mapping that holds the component's code: a file under the cache,
    // not anonymous memory of this process.
    let (_, file) = mapping_of(component.image_range().start as usize);
    assert!(
        file.starts_with(&*cache.path().to_string_lossy()) && file.ends_with(".cwasm"),
        "code mapped from {file:?}, not from the cached file"
    );
}

/// The line of `/proc/self/maps` whose range holds `addr`, as (device and
/// inode, path).
fn mapping_of(addr: usize) -> (String, String) {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let line = maps
        .lines()
        .find(|l| {
            let range = l.split_whitespace().next().unwrap_or("");
            let (lo, hi) = range.split_once('-').unwrap_or(("", ""));
            let lo = usize::from_str_radix(lo, 16).unwrap_or(usize::MAX);
            let hi = usize::from_str_radix(hi, 16).unwrap_or(0);
            (lo..hi).contains(&addr)
        })
        .expect("the address is mapped");
    let f: Vec<&str> = line.split_whitespace().collect();
    assert!(f.len() >= 6, "a file mapping: {line}");
    (format!("{} {}", f[3], f[4]), f[5].to_owned())
}

/// The JS test worker built with another greeting: other JS, same engine.
fn js_guest_greeting(greeting: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let vars = BTreeMap::from([("GREETING".to_string(), serde_json::Value::from(greeting))]);
    JsBuilder::new(dir.join("js"))
        .with_cache(js_cache())
        .build(
            &dir.join("tests/js-worker"),
            "worker.js",
            &vars,
            &["API".to_string()],
        )
        .expect("the JS worker builds (scripts/setup.sh installs ComponentizeJS)")
}

/// Serves JS workers `(name, component)`, each in an account of its own, at
/// `<name>.workers.test`.
async fn serve_js_workers(engine: &Arc<RuntimeEngine>, workers: &[(&str, &[u8])]) -> SocketAddr {
    let router = Router::new("workers.test");
    for (name, wasm) in workers {
        let config = WorkerConfig {
            name: (*name).into(),
            account_id: format!("acct-{name}"),
            js: true,
            ..Default::default()
        };
        router.deploy(Worker::new(engine.clone(), config, wasm, None).expect("worker"));
    }
    common::serve(router).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_js_workers_share_one_compiled_engine_and_run_their_own_js() {
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("warren-engine-cache");
    let engine = RuntimeEngine::new(EngineConfig::new(shared)).expect("engine");
    let other = js_guest_greeting("hey");
    assert!(other != js_guest(), "two different components");
    // The first JS worker may compile the engine (unless an earlier test
    // process did); the second, different one compiles nothing.
    let one = engine.js_component(js_guest()).expect("loads");
    let compiled = engine.compiles();
    let two = engine.js_component(&other).expect("loads");
    assert_eq!(
        engine.compiles(),
        compiled,
        "the second JS worker compiled nothing"
    );
    assert_eq!(engine.components_loaded(), 1, "one loaded engine");
    assert_eq!(one.text().as_ptr(), two.text().as_ptr());
    let (s1, s2) = (
        one.snapshot().expect("split"),
        two.snapshot().expect("split"),
    );
    assert!(!wasmtime::Module::same(s1, s2), "each its own snapshot");
    let again = engine.js_component(js_guest()).expect("loads");
    let s3 = again.snapshot().expect("split");
    assert!(
        wasmtime::Module::same(s1, s3),
        "copies of one worker share theirs"
    );

    // Each serves its own JS: its top-level code's heap is its own.
    let addr = serve_js_workers(&engine, &[("one", js_guest()), ("two", &other)]).await;
    assert_eq!(
        get(addr, "one.workers.test", "/hello").await,
        (StatusCode::OK, "hi from a JS worker".into())
    );
    assert_eq!(
        get(addr, "two.workers.test", "/hello").await,
        (StatusCode::OK, "hey from a JS worker".into())
    );
    assert_eq!(engine.compiles(), compiled);
}

#[test]
fn a_js_worker_splits_into_a_template_shared_by_all_and_its_own_snapshot() {
    let other = js_guest_greeting("hey");
    let one = warren_runtime::snapshot::split(js_guest())
        .expect("parses")
        .expect("splits");
    let two = warren_runtime::snapshot::split(&other)
        .expect("parses")
        .expect("splits");
    assert!(one.template == two.template, "the same template");
    assert!(one.snapshot != two.snapshot, "their own heaps");
    // The snapshot holds the heap only: no code.
    let mut functions = 0;
    for payload in wasmparser::Parser::new(0).parse_all(&one.snapshot) {
        if let wasmparser::Payload::CodeSectionStart { count, .. } = payload.expect("parses") {
            functions += count;
        }
    }
    assert_eq!(functions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_with_equal_machine_code_map_it_from_one_file() {
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("warren-engine-cache");
    let engine = RuntimeEngine::new(EngineConfig::new(shared.clone())).expect("engine");
    // Two JS workers loaded whole (as when a component does not split):
    // their code is at two addresses, and both are pages of one file under
    // the cache's `code/`.
    let other = js_guest_greeting("hey");
    let one = engine.component(js_guest()).expect("loaded");
    let two = engine.component(&other).expect("loaded");
    assert_eq!(engine.components_loaded(), 2);
    assert_ne!(one.text().as_ptr(), two.text().as_ptr());
    assert!(one.text() == two.text(), "the same machine code");
    let (inode_one, file_one) = mapping_of(one.text().as_ptr() as usize);
    let (inode_two, file_two) = mapping_of(two.text().as_ptr() as usize);
    assert_eq!(
        inode_one, inode_two,
        "one file backs both: {file_one} and {file_two}"
    );
    assert!(
        file_one.starts_with(&*shared.join("code").to_string_lossy()),
        "code mapped from {file_one}"
    );
    // The last page of the code is past the shared part only when the code
    // does not end on a page; the first and middle ones are shared.
    let middle = one.text().as_ptr() as usize + one.text().len() / 2;
    assert_eq!(mapping_of(middle).0, inode_two);
}

/// The entries of ComponentizeJS's per-engine steps kept in `cache`'s
/// `splice/` folder: `(step, path)`, sorted.
fn kept_steps(cache: &std::path::Path) -> Vec<(String, PathBuf)> {
    let mut kept: Vec<(String, PathBuf)> = std::fs::read_dir(cache.join("splice"))
        .expect("splice cache")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            let (step, _) = name.split_once('-')?;
            matches!(step, "stubWasi" | "componentNew").then(|| (step.to_owned(), p))
        })
        .collect();
    kept.sort();
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_build_steps_give_each_js_worker_its_own_snapshot() {
    use std::os::unix::fs::MetadataExt;
    let cache = tempfile::tempdir().expect("tempdir");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let build = |greeting: &str| {
        let vars = BTreeMap::from([("GREETING".to_string(), serde_json::Value::from(greeting))]);
        JsBuilder::new(dir.join("js"))
            .with_cache(cache.path().to_owned())
            .build(
                &dir.join("tests/js-worker"),
                "worker.js",
                &vars,
                &["API".to_string()],
            )
            .expect("the JS worker builds")
    };
    let first = build("hi");
    let kept = kept_steps(cache.path());
    let steps: Vec<&str> = kept.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(steps, ["componentNew", "stubWasi"], "{kept:?}");
    let inode = |p: &PathBuf| std::fs::metadata(p).expect("entry").ino();
    let before: Vec<u64> = kept.iter().map(|(_, p)| inode(p)).collect();
    // Other JS on the same engine is answered from the kept entries…
    let second = build("hey");
    assert_eq!(
        kept_steps(cache.path())
            .iter()
            .map(|(_, p)| inode(p))
            .collect::<Vec<_>>(),
        before,
        "the second build ran the steps again instead of using the kept ones"
    );
    // …and a damaged entry is run again and replaced, not trusted.
    let sizes: Vec<u64> = kept
        .iter()
        .map(|(_, p)| std::fs::metadata(p).expect("entry").len())
        .collect();
    for (_, p) in &kept {
        std::fs::write(p, b"\0asm\x01\0\0\0\x0b\xff\xff").expect("damage");
    }
    let third = build("yo");
    for ((_, p), size) in kept.iter().zip(&sizes) {
        let now = std::fs::metadata(p).expect("entry").len();
        assert!(
            now > *size / 2,
            "{} was not replaced ({now} bytes)",
            p.display()
        );
    }
    // Each worker runs its own top-level state, not the first one's.
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("warren-engine-cache");
    let engine = RuntimeEngine::new(EngineConfig::new(shared)).expect("engine");
    let addr = serve_js_workers(
        &engine,
        &[("one", &first), ("two", &second), ("three", &third)],
    )
    .await;
    for (host, greeting) in [
        ("one.workers.test", "hi"),
        ("two.workers.test", "hey"),
        ("three.workers.test", "yo"),
    ] {
        assert_eq!(
            get(addr, host, "/hello").await,
            (StatusCode::OK, format!("{greeting} from a JS worker"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_code_file_that_does_not_hold_the_code_is_replaced_not_run() {
    let cache = tempfile::tempdir().expect("tempdir");
    let engine = RuntimeEngine::new(EngineConfig::new(cache.path().to_owned())).expect("engine");
    let first = engine.component(guest()).expect("compile");
    let text = first.text().to_vec();
    drop(first);
    drop(engine);
    // Someone puts other bytes under the shared file's name (a rename, so
    // the cached component itself is untouched; a second name, so the file is
    // not taken for a link left behind by a removed component).
    let code = cache.path().join("code");
    let names: Vec<PathBuf> = std::fs::read_dir(&code)
        .expect("code dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(names.len(), 1, "one shared file: {names:?}");
    let forged = cache.path().join("forged");
    std::fs::write(&forged, vec![0xcc; text.len() + 8192]).expect("write");
    std::fs::hard_link(&forged, cache.path().join("forged-too")).expect("link");
    std::fs::rename(&forged, &names[0]).expect("rename");
    // A new engine (as after a restart) loading a component with that code
    // maps a correct file, and its worker answers.
    let engine = RuntimeEngine::new(EngineConfig::new(cache.path().to_owned())).expect("engine");
    let router = Router::new("workers.test");
    let config = WorkerConfig {
        name: "shop".into(),
        account_id: "acct-1".into(),
        ..Default::default()
    };
    router.deploy(Worker::new(engine.clone(), config, guest(), None).expect("worker"));
    // Read through the mapping: the shared file's pages.
    let loaded = engine.component(guest()).expect("loaded");
    assert!(
        loaded.text() == &text[..],
        "the code read through the mapping is right"
    );
    let (_, file) = mapping_of(loaded.text().as_ptr() as usize);
    assert_eq!(
        PathBuf::from(&file),
        names[0],
        "mapped from the shared name"
    );
    let addr = common::serve(router).await;
    assert_eq!(
        get(addr, "shop.workers.test", "/hello").await,
        (StatusCode::OK, "hello from a wasm worker".into())
    );
}

#[test]
fn an_unchanged_js_worker_is_not_rebuilt() {
    let first = js_guest().to_vec();
    let builds = JsBuilder::builds();
    let again = js_guest_greeting("hi");
    assert_eq!(JsBuilder::builds(), builds, "served from the build cache");
    assert!(again == first, "the same component");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_component_reuses_the_functions_compiled_before() {
    let cache = tempfile::tempdir().expect("tempdir");
    let engine = RuntimeEngine::new(EngineConfig::new(cache.path().to_owned())).expect("engine");
    Worker::new(engine.clone(), WorkerConfig::default(), guest(), None).expect("worker");
    // (Identical functions inside one component already hit the cache.)
    let before = engine.reused_functions();
    // The same code with a custom section appended: a new component (new hash,
    // so no whole-component cache hit) whose functions are all known.
    let mut changed = guest().to_vec();
    let name = b"warren-test";
    let payload = b"v2";
    changed.push(0); // custom section id
    changed.push((1 + name.len() + payload.len()) as u8); // section size (LEB128, < 128)
    changed.push(name.len() as u8);
    changed.extend_from_slice(name);
    changed.extend_from_slice(payload);
    let w = Worker::new(engine.clone(), WorkerConfig::default(), &changed, None);
    assert!(w.is_ok(), "the changed component loads");
    assert_eq!(engine.compiles(), 2, "the changed component was compiled");
    assert!(
        engine.reused_functions() > before,
        "its functions came from the incremental cache ({before} before)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_worker_serves_with_env_modules_and_bindings() {
    let h = host_for(
        js_guest(),
        true,
        Limits::default(),
        OutboundPolicy::PublicInternet,
    )
    .await;
    let at = "shop.workers.test";
    assert_eq!(
        get(h.addr, at, "/hello").await,
        (StatusCode::OK, "hi from a JS worker".into())
    );
    let (status, body) = get(h.addr, at, "/bind").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        "binding said: from binding API to service svc-123 for http://inventory.internal/items"
    );
    {
        let calls = h.client.calls.lock().expect("lock");
        let (ctx, headers) = &calls[0];
        assert_eq!(
            (ctx.worker.as_str(), ctx.service_id.as_str()),
            ("shop", "svc-123")
        );
        assert!(
            headers.iter().all(|(k, _)| k != "warren-binding"),
            "{headers:?}"
        );
        assert!(
            headers.iter().any(|(k, v)| k == "x-from-js" && v == "1"),
            "{headers:?}"
        );
    }
    // A binding failure is a catchable Error("ProxyError: <code>").
    assert_eq!(
        get(h.addr, at, "/bindfail").await,
        (
            StatusCode::BAD_GATEWAY,
            "caught: ProxyError: connection_refused".into()
        )
    );
    // An uncaught exception is a 500 for that request only.
    let (status, _) = get(h.addr, at, "/throw").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(h.addr, at, "/hello").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_work_completes_after_the_response() {
    let h = host_for(
        js_guest(),
        true,
        Limits::default(),
        OutboundPolicy::PublicInternet,
    )
    .await;
    assert_eq!(
        get(h.addr, "shop.workers.test", "/later").await,
        (StatusCode::OK, "sent".into())
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let done = h
            .client
            .calls
            .lock()
            .expect("lock")
            .iter()
            .any(|(_, _)| true);
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the waitUntil work never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[test]
fn a_syntax_error_names_the_file_and_line() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let err = JsBuilder::new(dir.join("js"))
        .build(
            &dir.join("tests/js-bad"),
            "worker.js",
            &BTreeMap::new(),
            &[],
        )
        .expect_err("a syntax error must fail the build");
    match err {
        JsBuildError::Script(msg) => {
            assert!(
                msg.contains("worker.js:4") && msg.contains("SyntaxError"),
                "{msg}"
            );
        }
        other => panic!("expected a script error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_binding_call_gives_the_guest_the_proxy_error() {
    let h = host(Limits::default(), OutboundPolicy::PublicInternet).await;
    let (status, body) = get(
        h.addr,
        "shop.workers.test",
        "/bind?API&http://inventory.internal/fail",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("ProxyError: connection_refused"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_worker_streams_a_50_mb_body_back_with_bounded_memory() {
    use futures_util::StreamExt;
    const CHUNK: usize = 64 << 10;
    const CHUNKS: usize = 800; // 50 MiB (52 MB)
    let h = host_for(
        js_guest(),
        true,
        Limits {
            cpu_ms: 60_000,
            ..Limits::default()
        },
        OutboundPolicy::PublicInternet,
    )
    .await;
    // Warm up (instantiation, first-request allocations) before measuring.
    assert_eq!(
        get(h.addr, "shop.workers.test", "/hello").await.0,
        StatusCode::OK
    );
    let pid = std::process::id();
    let before = warren_testkit::rss_bytes(pid).expect("rss");
    let sampler = warren_testkit::RssPeak::start(vec![pid]);

    // Chunk i is filled with byte i % 251, so order and content are checked.
    let frames = futures_util::stream::iter(0..CHUNKS).map(|i| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![
            (i % 251)
                as u8;
            CHUNK
        ])))
    });
    let tcp = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::put("/stream")
        .header("host", "shop.workers.test")
        .header("x-test", "streamed")
        .header("content-length", CHUNK * CHUNKS)
        .body(http_body_util::StreamBody::new(frames))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-method"], "PUT");
    assert_eq!(resp.headers()["x-test"], "streamed");
    let mut body = resp.into_body();
    let mut at = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("body frame").into_data() else {
            continue;
        };
        for (k, b) in data.iter().enumerate() {
            let want = (((at + k) / CHUNK) % 251) as u8;
            assert_eq!(*b, want, "byte {} of the echo", at + k);
        }
        at += data.len();
    }
    let peak = sampler.peaks()[0];
    assert_eq!(at, CHUNK * CHUNKS, "the whole body came back");
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 32 << 20,
        "the runtime grew by {} MiB while echoing 50 MiB",
        grew >> 20
    );
}

/// GET `/hello` with `headers`; the status.
async fn get_with(addr: SocketAddr, headers: &[(String, String)]) -> StatusCode {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::get("/hello").header("host", "shop.workers.test");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    sender.send_request(req).await.expect("response").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_128_kib_are_refused_before_the_worker_runs() {
    let h = host(Limits::default(), OutboundPolicy::PublicInternet).await;
    let big = |kib: usize| vec![("x-big".to_string(), "a".repeat(kib << 10))];
    assert_eq!(get_with(h.addr, &big(100)).await, StatusCode::OK);
    assert_eq!(
        get_with(h.addr, &big(200)).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    // Many fields are fine (hyper's own default would refuse over 100).
    let many: Vec<(String, String)> = (0..300)
        .map(|i| (format!("x-field-{i}"), "v".to_string()))
        .collect();
    assert_eq!(get_with(h.addr, &many).await, StatusCode::OK);
    // The server carries on.
    assert_eq!(get_with(h.addr, &[]).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_survives_from_one_request_to_the_next() {
    // Instance slots are reused and their memory is reset in place (only the
    // written pages are copied back): nothing a request wrote may show.
    let wasm = host(Limits::default(), OutboundPolicy::PublicInternet).await;
    let js = host_for(
        js_guest(),
        true,
        Limits::default(),
        OutboundPolicy::PublicInternet,
    )
    .await;
    for _ in 0..30 {
        assert_eq!(
            get(wasm.addr, "shop.workers.test", "/count").await,
            (StatusCode::OK, "1 0".into())
        );
        assert_eq!(
            get(js.addr, "shop.workers.test", "/count").await,
            (StatusCode::OK, "1".into())
        );
    }
    // Concurrent requests use several slots; each still starts clean.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        calls.spawn(get(wasm.addr, "shop.workers.test", "/count"));
        calls.spawn(get(js.addr, "shop.workers.test", "/count"));
    }
    while let Some(r) = calls.join_next().await {
        let (status, body) = r.expect("task");
        assert_eq!(status, StatusCode::OK);
        assert!(body == "1 0" || body == "1", "{body}");
    }
}

/// Every spelling a client might try for Warren's binding marker and key.
const FORGED: &[(&str, &str)] = &[
    ("warren-binding", "API"),
    ("Warren-Binding", "API"),
    ("WARREN-BINDING", "API"),
    ("warren-binding-key", "0123456789abcdef0123456789abcdef"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_select_a_binding_through_a_proxying_wasm_worker() {
    let h = host(Limits::default(), OutboundPolicy::PublicInternet).await;
    for (k, v) in FORGED {
        let (status, body) = get_headers(
            h.addr,
            "shop.workers.test",
            "/proxy?http://127.0.0.1:9/items",
            &[(k, v)],
        )
        .await;
        // The forwarded request is a plain fetch: refused by the public-only
        // gate, never a binding call.
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{k}: {body}");
        assert!(body.contains("DestinationIpProhibited"), "{k}: {body}");
    }
    assert!(
        h.client.calls.lock().expect("lock").is_empty(),
        "a client's marker reached the binding"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_marker_without_the_request_key_is_refused() {
    let h = host(Limits::default(), OutboundPolicy::PublicInternet).await;
    let (status, body) = get(h.addr, "shop.workers.test", "/forge?API").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    assert!(h.client.calls.lock().expect("lock").is_empty());
    // The worker's own call, with the key the runtime gave this request, works.
    let (status, body) = get(h.addr, "shop.workers.test", "/bind?API").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.client.calls.lock().expect("lock").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_select_a_binding_through_a_proxying_js_worker() {
    // (A roomy CPU limit: this test is not about it, and a loaded test
    // machine makes a fresh process's first JS request slow.)
    let h = host_for(
        js_guest(),
        true,
        Limits {
            cpu_ms: 2000,
            ..Limits::default()
        },
        OutboundPolicy::PublicInternet,
    )
    .await;
    for (k, v) in FORGED {
        let (status, body) = get_headers(h.addr, "shop.workers.test", "/proxy", &[(k, v)]).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{k}: {body}");
        assert!(body.starts_with("proxy failed:"), "{k}: {body}");
    }
    assert!(
        h.client.calls.lock().expect("lock").is_empty(),
        "a client's marker reached the binding"
    );
    // The worker's code never sees the request's binding key (nor a client's
    // Warren headers).
    let (status, body) = get_headers(h.addr, "shop.workers.test", "/headers", FORGED).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.contains("warren"), "{body}");
    // Its own binding object still works.
    let (status, body) = get(h.addr, "shop.workers.test", "/bind").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Builds the web-platform test worker (no bindings: its incoming request is
/// the engine's own, with immutable headers) once per test process.
fn js_webplat_guest() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        JsBuilder::new(dir.join("js"))
            .with_cache(js_cache())
            .build(
                &dir.join("tests/js-webplat"),
                "worker.js",
                &BTreeMap::new(),
                &[],
            )
            .expect("the web-platform JS worker builds")
    })
}

/// Sends `method path` with `body` and `headers`; the status, headers and body.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> (StatusCode, http::HeaderMap, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.workers.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

// The answers below are workerd's (the test worker runs unchanged on it).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_and_bodies_answer_as_on_workerd() {
    let h = host_for(
        js_webplat_guest(),
        true,
        Limits::default(),
        OutboundPolicy::PublicInternet,
    )
    .await;
    let (status, body) = get(h.addr, "shop.workers.test", "/bodies").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let want = [
        r#"response clone: ["abc","abc",201,"Made","1",true]"#,
        r#"clone of a stream body: ["xyz","xyz"]"#,
        r#"bodyUsed around a clone: [false,false,false,true,true]"#,
        r#"clone of clones: ["k","k","k","k"]"#,
        r#"clone without body: [204,null]"#,
        r#"clone json and formData: [{"x":1},{"x":1},"1","1"]"#,
        r#"clone after use: TypeError: This ReadableStream is currently locked to a reader,"#,
        r#"request clone after use: TypeError: This ReadableStream is currently locked to a reader,"#,
        r#"read twice: TypeError: Body has already been used. It can only be used once. Use tee() first if you need to read it twice."#,
        r#"new Request from a cloned request: ["q","q"]"#,
        r#"new Response from a cloned body: ["p","p"]"#,
    ];
    assert_eq!(body.lines().collect::<Vec<_>>(), want);

    // The incoming request (immutable headers) clones too; both read the bytes.
    let (status, _, body) = send(
        h.addr,
        "POST",
        "/clone-incoming",
        &[("x-test", "t")],
        "hello",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::OK,
            r#"["hello","hello",[false,false,false,true],"POST","t"]"#
        )
    );

    // The original, answered after its clone was read, keeps its body and
    // the header set after the clone.
    let (status, headers, body) = send(h.addr, "GET", "/return-original", &[], "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "original body"));
    assert_eq!(
        (&headers["x-o"], &headers["x-late"]),
        (&"1".parse().expect("value"), &"2".parse().expect("value"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn navigator_forms_and_text_streams_answer_as_on_workerd() {
    let h = host_for(
        js_webplat_guest(),
        true,
        Limits::default(),
        OutboundPolicy::PublicInternet,
    )
    .await;
    let (status, body) = get(h.addr, "shop.workers.test", "/platform").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let want = [
        r#"navigator: ["Cloudflare-Workers",1,"en","[object Navigator]"]"#,
        r#"multipart file: ["1","f.bin",[0,255,13,10]]"#,
        r#"multipart without boundary: TypeError: No boundary string in Content-Type header. The multipart/form-data MIME type requires a boundary parameter, e.g. 'Content-Type: multipart/form-data; boundary="abcd"'. See RFC 7578, section 4."#,
        r#"multipart without a name: TypeError: Content-Disposition header in FormData part is missing a name."#,
        r#"formData of text: TypeError: Unrecognized Content-Type header value. FormData can only parse the following MIME types: multipart/form-data, application/x-www-form-urlencoded"#,
        r#"TextDecoderStream across chunks: ["é"]"#,
        r#"TextEncoderStream: [240,159,152,128]"#,
        r#"break out of for await: [true,false]"#,
        r#"scheduler.wait: [null,"[object Scheduler]"]"#,
        r#"ReadableStream.from: ["a","b",1,2]"#,
    ];
    assert_eq!(body.lines().collect::<Vec<_>>(), want);
}

/// Opens a `/stream` request to `host` whose body stays open: its instance
/// lives until the body ends. Returns the connection once the answer's head
/// has arrived, with what was read so far.
async fn open_stream(addr: SocketAddr, host: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /stream HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "closed before the head: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "answer: {text}");
    (tcp, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_of_js_instances_all_run() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A pool of 4 instances; each of the two workers may hold 2. A JS
    // instance is several core instances (its snapshot among them): the
    // pool holds 4 of them at once.
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("warren-engine-cache");
    let engine = RuntimeEngine::new(EngineConfig {
        max_instances: 4,
        ..EngineConfig::new(shared)
    })
    .expect("engine");
    let other = js_guest_greeting("hey");
    for wasm in [js_guest(), &other] {
        let loaded = engine.js_component(wasm).expect("loads");
        assert!(loaded.snapshot().is_some(), "split: its own core instance");
    }
    let addr = serve_js_workers(&engine, &[("one", js_guest()), ("two", &other)]).await;
    let mut open = Vec::new();
    for host in ["one", "one", "two", "two"] {
        open.push(open_stream(addr, &format!("{host}.workers.test")).await);
    }
    for (mut tcp, mut all) in open {
        tcp.write_all(b"0\r\n\r\n").await.expect("end the body");
        tcp.read_to_end(&mut all).await.expect("read");
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.contains("hello"),
            "the streamed body came back: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_loads_a_js_workers_parts_without_compiling_them() {
    use std::os::unix::fs::MetadataExt;
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("warren-engine-cache");
    let first = RuntimeEngine::new(EngineConfig::new(shared.clone())).expect("engine");
    let other = js_guest_greeting("restart");
    drop(first.js_component(&other).expect("loads"));
    let parts = first.js_compiled_parts(&other).expect("splits");
    let inode = |key: &str| {
        std::fs::metadata(shared.join(format!("{key}.cwasm")))
            .expect("compiled file")
            .ino()
    };
    // The snapshot's file (the template's is the shared cache's, which other
    // tests may write; `compiles()` below covers it).
    let snapshot = &parts[1].key;
    let before = inode(snapshot);
    drop(first);

    // A new engine on the same directory (a restart) compiles neither part:
    // the same files, not rewritten, and it serves.
    let second = RuntimeEngine::new(EngineConfig::new(shared.clone())).expect("engine");
    let addr = serve_js_workers(&second, &[("again", &other)]).await;
    assert_eq!(
        get(addr, "again.workers.test", "/hello").await,
        (StatusCode::OK, "restart from a JS worker".into())
    );
    assert_eq!(second.compiles(), 0);
    assert_eq!(
        before,
        inode(snapshot),
        "the snapshot was not compiled again"
    );
}

#[test]
fn js_workers_loading_at_once_on_a_fresh_node_compile_the_engine_once() {
    // A cache of its own: neither worker finds the template compiled.
    let cache = tempfile::tempdir().expect("tempdir");
    let engine = RuntimeEngine::new(EngineConfig::new(cache.path().to_owned())).expect("engine");
    let other = js_guest_greeting("at once");
    let texts: Vec<usize> = std::thread::scope(|s| {
        let a = s.spawn(|| engine.js_component(js_guest()));
        let b = s.spawn(|| engine.js_component(&other));
        [a, b]
            .into_iter()
            .map(|load| {
                let loaded = load.join().expect("no panic").expect("both load");
                loaded.text().as_ptr() as usize
            })
            .collect()
    });
    assert_eq!(engine.compiles(), 1, "the second waited for the first");
    assert_eq!(texts[0], texts[1], "and took what it loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_with_a_prepared_toolchain_serves_its_first_js_worker_without_compiling() {
    use std::os::unix::fs::MetadataExt;
    use warren_runtime::prepared::{Prepared, Stamp, prepare};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let js = JsBuilder::new(dir.join("js"));
    let prep = tempfile::tempdir().expect("tempdir");
    let prepared = prep.path().join("prepared");
    let config = || EngineConfig::new(PathBuf::from("unused"));
    let made = tokio::task::block_in_place(|| prepare(&js, config(), &prepared)).expect("prepare");
    let Prepared::Made { template, .. } = made else {
        panic!("a new folder is prepared, not found prepared: {made:?}");
    };
    let file = |p: PathBuf| std::fs::read(p).expect("prepared file");
    let mut stamp = Stamp::read(&prepared).expect("readable").expect("stamped");
    let listed: Vec<&String> = stamp.files.keys().collect();
    assert_eq!(
        listed.len(),
        5,
        "the spliced engine (wasm and json), the two kept steps, the template: {listed:?}"
    );
    assert!(
        stamp
            .files
            .contains_key(&format!("compiled/{template}.cwasm"))
    );
    // Preparing again for the same tooling and engine leaves it as it is.
    let ino = |p: &std::path::Path| std::fs::metadata(p).expect("file").ino();
    let stamp_ino = ino(&prepared.join("stamp"));
    let again = tokio::task::block_in_place(|| prepare(&js, config(), &prepared)).expect("prepare");
    assert!(matches!(again, Prepared::Already), "{again:?}");
    assert_eq!(ino(&prepared.join("stamp")), stamp_ino);

    // A marker the build would never make, listed in the stamp: seen in the
    // node's cache only if the node copied what the stamp lists.
    let marker = b"{\"copied\": true}";
    std::fs::write(prepared.join("splice/marker.json"), marker).expect("marker");
    stamp.files.insert(
        "splice/marker.json".into(),
        (
            marker.len() as u64,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(marker)),
        ),
    );
    std::fs::write(prepared.join("stamp"), stamp.render()).expect("stamp");

    // A node with empty caches: a JS worker other than the one prepared with
    // builds from the prepared steps and loads the prepared engine.
    let node = tempfile::tempdir().expect("tempdir");
    let builder = JsBuilder::new(dir.join("js"))
        .with_cache(node.path().join("built"))
        .with_prepared(prepared.clone());
    let vars = BTreeMap::from([("GREETING".to_string(), serde_json::Value::from("prepared"))]);
    let wasm = tokio::task::block_in_place(|| {
        builder.build(
            &dir.join("tests/js-worker"),
            "worker.js",
            &vars,
            &["API".to_string()],
        )
    })
    .expect("builds");
    let splice = node.path().join("built/splice");
    assert_eq!(
        file(splice.join("marker.json")),
        marker,
        "the prepared steps were copied"
    );
    let engine = RuntimeEngine::new(EngineConfig {
        prepared: Some(prepared.clone()),
        ..EngineConfig::new(node.path().join("compiled"))
    })
    .expect("engine");
    let [part, _] = engine.js_compiled_parts(&wasm).expect("splits");
    assert_eq!(
        part.key, template,
        "every JS worker has the prepared template"
    );
    let addr = serve_js_workers(&engine, &[("fresh", &wasm)]).await;
    assert_eq!(
        get(addr, "fresh.workers.test", "/hello").await,
        (StatusCode::OK, "prepared from a JS worker".to_string())
    );
    assert_eq!(
        engine.compiles(),
        0,
        "the engine came from the prepared folder"
    );
    // The node's caches hold copies of the prepared files, not links to them.
    let copy = engine.compiled_dir().path(&template).expect("key");
    let template_file = prepared.join("compiled").join(format!("{template}.cwasm"));
    assert_eq!(file(copy.clone()), file(template_file.clone()));
    assert_ne!(ino(&copy), ino(&template_file));
    for (name, _, _) in stamp.files_in("splice") {
        let kept = splice.join(name);
        assert_eq!(
            file(kept.clone()),
            file(prepared.join("splice").join(name)),
            "{name}"
        );
        assert_ne!(ino(&kept), ino(&prepared.join("splice").join(name)));
    }
}

#[test]
fn prepared_compiled_code_that_does_not_match_its_stamp_or_load_is_compiled_again() {
    use warren_runtime::prepared::Stamp;
    let garbage: &[u8] = b"\x7fELF not compiled code";
    let sha = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
    // `stamped`: the SHA-256 the stamp lists for the file.
    for stamped in [sha(b"what was prepared"), sha(garbage)] {
        let prepared = tempfile::tempdir().expect("tempdir");
        let cache = tempfile::tempdir().expect("tempdir");
        let engine = RuntimeEngine::new(EngineConfig {
            prepared: Some(prepared.path().to_owned()),
            ..EngineConfig::new(cache.path().to_owned())
        })
        .expect("engine");
        let key = engine.compiled_key(&warren_runtime::engine::content_hash(guest()));
        assert!(!engine.has_compiled_key(&key), "not prepared yet");
        let bad = prepared
            .path()
            .join("compiled")
            .join(format!("{key}.cwasm"));
        std::fs::create_dir_all(bad.parent().expect("dir")).expect("mkdir");
        std::fs::write(&bad, garbage).expect("write");
        assert!(
            !engine.has_compiled_key(&key),
            "a file the stamp does not list is not taken"
        );
        let stamp = Stamp {
            tooling: "any".into(),
            engine: engine.fingerprint().to_owned(),
            files: BTreeMap::from([(
                format!("compiled/{key}.cwasm"),
                (garbage.len() as u64, stamped.clone()),
            )]),
        };
        std::fs::write(prepared.path().join("stamp"), stamp.render()).expect("stamp");
        assert!(
            engine.has_compiled_key(&key),
            "listed: no need to ask a peer"
        );
        let loaded = engine.component(guest()).expect("compiled instead");
        assert!(!loaded.text().is_empty());
        assert_eq!(engine.compiles(), 1, "compiled again ({stamped})");
        assert_eq!(
            std::fs::read(&bad).expect("prepared file"),
            garbage,
            "the node never writes the prepared folder"
        );
    }
}
