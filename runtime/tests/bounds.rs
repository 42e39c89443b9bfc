//! A request is bounded after its answer's head: a worker's guest stops when
//! its client goes away, `waitUntil`-style work is cut after the limit, CPU is
//! counted after the answer too, and one worker's concurrent requests are
//! capped below the node's instance pool, so the others keep answering.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{get, guest};

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_runtime::serve::Router;
use warren_runtime::{EngineConfig, Limits, RuntimeEngine, Worker, WorkerConfig};

/// A router on loopback serving the test guest as `shop` (with `tweak`
/// applied to its config) and as `other`, from an engine whose pool holds
/// `pool` instances.
async fn serve(pool: u32, tweak: impl FnOnce(&mut WorkerConfig)) -> SocketAddr {
    let engine = engine(pool);
    let router = Router::new("workers.test");
    let mut shop = WorkerConfig {
        name: "shop".into(),
        account_id: "acct-1".into(),
        ..Default::default()
    };
    tweak(&mut shop);
    router.deploy(Worker::new(engine.clone(), shop, guest(), None).expect("shop"));
    let other = WorkerConfig {
        name: "other".into(),
        account_id: "acct-2".into(),
        ..Default::default()
    };
    router.deploy(Worker::new(engine, other, guest(), None).expect("other"));
    common::serve(router).await
}

/// An engine (sharing the tests' compiled-code cache) with a pool of `pool`.
fn engine(pool: u32) -> Arc<RuntimeEngine> {
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("warren-engine-cache");
    let mut ec = EngineConfig::new(shared);
    ec.max_instances = pool;
    RuntimeEngine::new(ec).expect("engine")
}

/// GETs `path` on `shop` until it answers 200, or `limit` passes; how long it took.
async fn until_ok(addr: SocketAddr, path: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = get(addr, "shop.workers.test", path).await;
        if status == StatusCode::OK {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{path} still answers {status} after {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const AT_LIMIT: &str = "worker shop is at its limit of 1 concurrent requests; try again later\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_after_the_answer_is_cut_at_the_wait_until_limit() {
    let addr = serve(16, |c| {
        c.max_concurrent = 1;
        c.wait_until = Duration::from_secs(2);
    })
    .await;
    let (status, body) = get(addr, "shop.workers.test", "/linger").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "answered; lingering")
    );
    // The lingering guest still holds the worker's only slot…
    let (status, body) = get(addr, "shop.workers.test", "/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, AT_LIMIT)
    );
    // …until the limit cancels it.
    let waited = until_ok(addr, "/hello", Duration::from_secs(10)).await;
    assert!(
        waited >= Duration::from_secs(1),
        "cut too early: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_after_the_answer_counts_against_the_cpu_limit() {
    let addr = serve(16, |c| {
        c.max_concurrent = 1;
        c.limits = Limits {
            cpu_ms: 50,
            ..Limits::default()
        };
    })
    .await;
    let (status, body) = get(addr, "shop.workers.test", "/spin-after").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "answered; spinning")
    );
    // Spinning after the answer hits cpu_ms long before the 30 s waitUntil
    // limit, which frees the slot.
    until_ok(addr, "/hello", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_the_guest() {
    let addr = serve(16, |c| c.max_concurrent = 1).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /drip HTTP/1.1\r\nhost: shop.workers.test\r\n\r\n")
        .await
        .expect("send");
    let mut buf = [0u8; 512];
    let n = tcp.read(&mut buf).await.expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let (status, body) = get(addr, "shop.workers.test", "/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, AT_LIMIT)
    );
    drop(tcp);
    // The endless body's guest is cancelled with its client: the slot frees
    // well within the 30 s waitUntil limit.
    until_ok(addr, "/hello", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_busy_worker_cannot_take_the_pool_from_the_others() {
    // A pool of 6 instances; `shop` may hold 3 of them.
    let addr = serve(6, |c| c.max_concurrent = 3).await;
    let busy: Vec<_> = (0..8)
        .map(|_| tokio::spawn(get(addr, "shop.workers.test", "/sleep?1500")))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let (status, body) = get(addr, "other.workers.test", "/hello").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "hello from a wasm worker")
        );
    }
    let mut ok = 0;
    let mut refused = 0;
    for b in busy {
        let (status, body) = b.await.expect("request");
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(
                    body,
                    "worker shop is at its limit of 3 concurrent requests; try again later\n"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, refused), (3, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_before_the_answer_cancels_the_guest() {
    let addr = serve(16, |c| c.max_concurrent = 1).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /sleep?20000 HTTP/1.1\r\nhost: shop.workers.test\r\n\r\n")
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = get(addr, "shop.workers.test", "/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, AT_LIMIT)
    );
    drop(tcp);
    // The sleeping guest goes with its client, long before its 20 s.
    until_ok(addr, "/hello", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_does_not_reset_the_concurrency_cap() {
    let engine = engine(1000);
    let router = Router::new("workers.test");
    let version = || {
        let config = WorkerConfig {
            name: "shop".into(),
            account_id: "acct-1".into(),
            max_concurrent: 1,
            wait_until: Duration::from_secs(3),
            ..Default::default()
        };
        Worker::new(engine.clone(), config, guest(), None).expect("worker")
    };
    router.deploy(version());
    let addr = common::serve(router.clone()).await;
    let (status, _) = get(addr, "shop.workers.test", "/linger").await;
    assert_eq!(status, StatusCode::OK);
    // The lingering request of the old version still counts.
    router.deploy(version());
    let (status, body) = get(addr, "shop.workers.test", "/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, AT_LIMIT)
    );
    until_ok(addr, "/hello", Duration::from_secs(10)).await;
}
