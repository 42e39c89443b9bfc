//! Bulk throughput on loopback: the TCP multiplexer against a plain TLS
//! stream (its ceiling) and against QUIC. Ignored by default; run in release:
//! `cargo test --release -p warren-transport --test throughput -- --ignored --nocapture`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warren_transport::Conn;

const TOTAL: u64 = 1024 * 1024 * 1024;
const CHUNK: usize = 128 * 1024;

fn report(what: &str, bytes: u64, took: Duration) {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{what:<28} {mib:>6.0} MiB in {:>6.2} s = {:>7.1} MiB/s",
        took.as_secs_f64(),
        mib / took.as_secs_f64()
    );
}

/// `streams` streams from `a` to `b` carrying `TOTAL` bytes between them.
async fn over_conn(a: Conn, b: Conn, streams: usize) -> Duration {
    let per = TOTAL / streams as u64;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let a = a.clone();
        tasks.spawn(async move {
            let (mut s, _r) = a.open_bi().await.unwrap();
            let chunk = Bytes::from(vec![1u8; CHUNK]);
            let mut sent = 0;
            while sent < per {
                s.write_chunk(chunk.clone()).await.unwrap();
                sent += CHUNK as u64;
            }
            s.finish().unwrap();
            // Keep the stream until the peer has read it all.
            let _ = _r;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
    }
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let (_s, mut r) = b.accept_bi().await.unwrap();
        readers.spawn(async move {
            let mut got = 0u64;
            while let Some(c) = r.read_chunk(CHUNK * 2).await.unwrap() {
                got += c.len() as u64;
            }
            assert_eq!(got, per);
            drop(_s);
        });
    }
    readers.join_all().await;
    let took = start.elapsed();
    tasks.abort_all();
    took
}

async fn plain_tls() -> Duration {
    let pki = common::pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server.clone()));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut buf = vec![0u8; CHUNK * 2];
        let mut got = 0u64;
        loop {
            let n = tls.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        assert_eq!(got, TOTAL);
        Instant::now()
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(pki.client.clone()))
        .connect(ServerName::try_from(common::SERVER_NAME).unwrap(), tcp)
        .await
        .unwrap();
    let start = Instant::now();
    let chunk = vec![1u8; CHUNK];
    let mut sent = 0;
    while sent < TOTAL {
        tls.write_all(&chunk).await.unwrap();
        sent += CHUNK as u64;
    }
    tls.shutdown().await.unwrap();
    server.await.unwrap() - start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn throughput() {
    report("plain TLS over TCP", TOTAL, plain_tls().await);
    let (a, b) = common::tcp_pair().await;
    report("TCP mux, 1 stream", TOTAL, over_conn(a, b, 1).await);
    let (a, b) = common::tcp_pair().await;
    report("TCP mux, 8 streams", TOTAL, over_conn(a, b, 8).await);
    let (a, b, _c, _s) = common::quic_pair().await;
    report("QUIC, 1 stream", TOTAL, over_conn(a, b, 1).await);
    let (a, b, _c, _s) = common::quic_pair().await;
    report("QUIC, 8 streams", TOTAL, over_conn(a, b, 8).await);
}
