//! Compiling in a process of its own: the node runs `warren compile-component`
//! for each compile (`EngineConfig::compiler`), so Cranelift's working memory
//! ends with that process. These tests drive a runtime engine configured as
//! the node configures it, with the real `warren` binary as its compiler.

mod common;

use std::path::{Path, PathBuf};

use warren_runtime::serve::Router;
use warren_runtime::{EngineConfig, RuntimeEngine, Worker, WorkerConfig};

/// A compiler program that notes each run in `runs`, then is `warren`.
fn recording_compiler(dir: &Path, runs: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("compiler.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nexec '{}' \"$@\"\n",
            runs.display(),
            env!("CARGO_BIN_EXE_warren")
        ),
    )
    .expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_compiled_by_the_compile_process_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    let cache = dir.path().join("compiled");
    let mut config = EngineConfig::new(cache.clone());
    config.compiler = Some(recording_compiler(dir.path(), &runs));
    let engine = RuntimeEngine::new(config).expect("engine");
    let worker = WorkerConfig {
        name: "shop".into(),
        account_id: "acct-1".into(),
        ..Default::default()
    };
    let worker = Worker::new(engine.clone(), worker, common::test_guest(), None).expect("worker");
    let ran = std::fs::read_to_string(&runs).expect("the compile process ran");
    assert_eq!(ran.lines().count(), 1, "{ran}");
    assert!(
        ran.starts_with(&format!(
            "compile-component --cache-dir {}",
            cache.display()
        )),
        "{ran}"
    );
    assert_eq!(engine.compiles(), 1);
    let router = Router::new("workers.test");
    router.deploy(worker);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(router.serve(listener));
    let (status, body) = common::get(addr, "shop.workers.test", "/hello").await;
    assert_eq!((status, &body[..]), (200, &b"hello from a wasm worker"[..]));
    // Loaded again by a new engine (a restart): from the file, no compile.
    let mut again = EngineConfig::new(cache.clone());
    again.compiler = Some(recording_compiler(dir.path(), &runs));
    let again = RuntimeEngine::new(again).expect("engine");
    again.component(common::test_guest()).expect("loads");
    assert_eq!(again.compiles(), 0);
    let ran = std::fs::read_to_string(&runs).expect("runs");
    assert_eq!(ran.lines().count(), 1, "no second compile: {ran}");
}

#[test]
fn a_component_that_does_not_compile_gets_the_same_error_as_compiled_in_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A component header followed by a section that is not one.
    let bad: &[u8] = b"\0asm\x0d\0\x01\0\x7f\x05hello";
    let mut config = EngineConfig::new(dir.path().join("out-of-process"));
    config.compiler = Some(PathBuf::from(env!("CARGO_BIN_EXE_warren")));
    let out = RuntimeEngine::new(config).expect("engine");
    let here =
        RuntimeEngine::new(EngineConfig::new(dir.path().join("in-process"))).expect("engine");
    let refused = |engine: &RuntimeEngine| match engine.component(bad) {
        Ok(_) => panic!("a broken component compiled"),
        Err(e) => format!("{e:#}"),
    };
    let (out_error, here_error) = (refused(&out), refused(&here));
    assert!(
        out_error.starts_with("compiling the worker: "),
        "{out_error}"
    );
    assert_eq!(out_error, here_error);
    assert_eq!(out.compiles(), 0);
    // Nothing is left in the compiled-code directory but its own folders.
    let left: Vec<String> = std::fs::read_dir(dir.path().join("out-of-process"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "functions" && n != "code")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
