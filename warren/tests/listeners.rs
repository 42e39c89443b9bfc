//! Listeners survive floods and slow clients: a node whose file descriptors
//! run out under a burst of half-written requests serves again as soon as the
//! burst is gone, and a request head that never completes is closed after the
//! header timeout.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{Served, WARREN, free_tcp, get, start_serve};

/// The node's descriptor limit in this test.
const NOFILE: usize = 256;

/// Starts `warren serve` under the descriptor limit, with a 2 s header timeout.
fn start_node(dir: &Path, runtime: SocketAddr) -> Served {
    let config = format!(
        "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\
         [connect]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"127.0.0.1:0\"\n\
         [runtime]\nlisten = \"{runtime}\"\n[connections]\nheader_timeout = \"2s\"\n"
    );
    let mut prlimit = Command::new("prlimit");
    prlimit
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg(WARREN);
    start_serve(prlimit, dir, &config)
}

/// GET `path` on the API with the bearer token; the status.
async fn api_status(api: SocketAddr, token: &str, path: &str) -> Option<u16> {
    let mut tcp = TcpStream::connect(api).await.ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: api\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out);
    text.get(9..12)?.parse().ok()
}

/// Opens `n` connections to `addr`, each with a request head that never ends.
async fn half_heads(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
        else {
            continue;
        };
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ").await;
        held.push(s);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_out_of_descriptors_serves_again_once_the_flood_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let node = start_node(dir.path(), runtime);
    let (api, token) = (node.api, node.token.clone());
    let tunnels = format!("/client/v4/accounts/{}/cfd_tunnel", node.account_id);
    assert_eq!(api_status(api, &token, &tunnels).await, Some(200));

    // More half-written requests than the node has descriptors, on both
    // the workers port and the API.
    let mut flood = half_heads(runtime, NOFILE).await;
    flood.extend(half_heads(api, NOFILE).await);
    assert!(
        flood.len() > NOFILE,
        "the flood opened {} sockets",
        flood.len()
    );
    drop(flood);

    let gone = Instant::now();
    let deadline = gone + Duration::from_secs(1);
    loop {
        let (status, body) = get(runtime, "nobody.workers.localhost", "/").await;
        let api_ok = api_status(api, &token, &tunnels).await;
        if status == 404 && body.starts_with(b"no worker serves") && api_ok == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving 1 s after the flood: workers {status}, API {api_ok:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_completes_a_request_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let node = start_node(dir.path(), runtime);
    let api = node.api;
    for (addr, opening) in [
        (runtime, &b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: "[..]),
        (api, b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: "),
        // A dribbled HTTP/2 preface, and nothing at all: no request ever starts.
        (runtime, b"PRI * HTTP/2.0\r\n"),
        (api, b""),
    ] {
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(opening).await.expect("write");
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
            .await
            .expect("closed within 10 s")
            .unwrap_or(0);
        let took = start.elapsed();
        assert_eq!(n, 0, "closed without an answer: {:?}", &buf[..n]);
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
            "{addr} {opening:?}: closed after {took:?}, the header timeout is 2 s"
        );
    }
}
