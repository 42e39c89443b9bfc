//! Shared by the runtime's integration tests: the Rust test guest (built for
//! wasm32-wasip2 once per test process) and a plain HTTP/1.1 GET.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;

/// Builds the test guest once per test process and returns its bytes.
pub fn guest() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/guest");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the guest failed (is the wasm32-wasip2 target installed? scripts/setup.sh adds it)");
        std::fs::read(dir.join("target/wasm32-wasip2/release/warren_test_guest.wasm")).expect("guest wasm")
    })
}

/// Serves `router` on a fresh loopback port; its address.
pub async fn serve(router: std::sync::Arc<warren_runtime::serve::Router>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(router.serve(listener));
    addr
}

/// GET `path` from `addr` with `Host: host`; the status and the body as text.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    get_headers(addr, host, path, &[]).await
}

/// GET like [`get`], with extra request headers (sent as spelled).
pub async fn get_headers(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
