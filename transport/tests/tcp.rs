//! The TCP fallback specifically: flow control, large transfers, liveness,
//! TLS refusal, and hostile peers.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{SERVER_NAME, pki, tcp_pair_with, tcp_server};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use warren_transport::tcp::{self, ConnectError, STREAM_REFUSED, TCP_ALPN};
use warren_transport::{ConnectionError, TcpConfig, TcpError};

const T: Duration = Duration::from_secs(10);

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A writer to a reader that does not read stops after the stream window.
#[tokio::test]
async fn flow_control_bounds_a_stream() {
    let cfg = TcpConfig {
        stream_window: 1024 * 1024,
        ..TcpConfig::default()
    };
    let (a, b) = tcp_pair_with(cfg).await;
    let (mut s, _r) = a.open_bi().await.unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; 16 * 1024]);
        loop {
            if s.write_chunk(chunk.clone()).await.is_err() {
                return;
            }
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    let (_bs, mut br) = timeout(T, b.accept_bi()).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stalled = sent.load(Ordering::Relaxed);
    assert!(
        stalled <= 1024 * 1024,
        "sent {stalled} bytes past a 1 MiB window"
    );
    assert!(stalled >= 512 * 1024, "sent only {stalled} bytes");
    // Reading frees credit: the writer goes on.
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    while read < 4 * 1024 * 1024 {
        read += br.read(&mut buf).await.unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > stalled);
    writer.abort();
}

/// 256 MiB through one stream, read as it comes: completes, and the
/// process's peak memory grows by far less than the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_bounded_memory() {
    const TOTAL: u64 = 256 * 1024 * 1024;
    let (a, b) = common::tcp_pair().await;
    let before = peak_rss_kib();
    let (mut s, _r) = a.open_bi().await.unwrap();
    let writer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![0xa5u8; 128 * 1024]);
        let mut sent = 0;
        while sent < TOTAL {
            s.write_chunk(chunk.clone()).await.unwrap();
            sent += chunk.len() as u64;
        }
        s.finish().unwrap();
    });
    let (_bs, mut br) = timeout(T, b.accept_bi()).await.unwrap().unwrap();
    let start = Instant::now();
    let mut got = 0u64;
    while let Some(c) = timeout(T, br.read_chunk(256 * 1024))
        .await
        .unwrap()
        .unwrap()
    {
        assert!(c.iter().all(|&x| x == 0xa5));
        got += c.len() as u64;
    }
    writer.await.unwrap();
    assert_eq!(got, TOTAL);
    let grew = peak_rss_kib().saturating_sub(before) / 1024;
    eprintln!(
        "256 MiB in {:?}; peak RSS grew by {grew} MiB",
        start.elapsed()
    );
    assert!(grew < 96, "peak RSS grew by {grew} MiB");
}

/// `read_chunks` hands over every chunk already received in one call, in
/// order and uncopied, so a splice writes them out with one vectored write.
#[tokio::test]
async fn read_chunks_takes_every_buffered_chunk() {
    let (a, b) = common::tcp_pair().await;
    let (mut s1, _r1) = a.open_bi().await.unwrap();
    for fill in [1u8, 2, 3] {
        s1.write_chunk(Bytes::from(vec![fill; 1000])).await.unwrap();
    }
    s1.finish().unwrap();
    let (_b1, mut r1) = timeout(T, b.accept_bi()).await.unwrap().unwrap();
    // Frames arrive in order: once a later stream's byte is readable, all of
    // stream 1 has been received.
    let (mut s2, _r2) = a.open_bi().await.unwrap();
    s2.write_chunk(Bytes::from_static(b"!")).await.unwrap();
    let (_b2, mut r2) = timeout(T, b.accept_bi()).await.unwrap().unwrap();
    let marker = timeout(T, r2.read_chunk(16)).await.unwrap().unwrap();
    assert_eq!(marker.as_deref(), Some(&b"!"[..]));

    let mut chunks: [Bytes; 8] = std::array::from_fn(|_| Bytes::new());
    let got = timeout(T, r1.read_chunks(&mut chunks)).await.unwrap();
    assert_eq!(got.unwrap(), Some(3));
    for (chunk, fill) in chunks.iter().zip([1u8, 2, 3]) {
        assert_eq!(chunk.as_ref(), &[fill; 1000][..]);
    }
    let end = timeout(T, r1.read_chunks(&mut chunks)).await.unwrap();
    assert_eq!(end.unwrap(), None);
}

/// A TCP relay that can be frozen or killed. Frozen, it stops moving bytes either way but
/// keeps both sockets open, as a dead host or a black-holing middlebox would.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    kill: CancellationToken,
    /// When bytes were last handed to the client's socket, and to the server's.
    last_to_client: Arc<Mutex<Instant>>,
    last_to_server: Arc<Mutex<Instant>>,
}

async fn relay(target: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let kill = CancellationToken::new();
    let last_to_client = Arc::new(Mutex::new(Instant::now()));
    let last_to_server = Arc::new(Mutex::new(Instant::now()));
    let (f, k) = (frozen.clone(), kill.clone());
    let (to_client, to_server) = (last_to_client.clone(), last_to_server.clone());
    tokio::spawn(async move {
        let (inbound, _) = listener.accept().await.unwrap();
        let outbound = TcpStream::connect(target).await.unwrap();
        let (ir, iw) = inbound.into_split();
        let (or, ow) = outbound.into_split();
        async fn pump(
            mut r: tokio::net::tcp::OwnedReadHalf,
            mut w: tokio::net::tcp::OwnedWriteHalf,
            frozen: Arc<AtomicBool>,
            last: Arc<Mutex<Instant>>,
        ) {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if frozen.load(Ordering::Relaxed) {
                    // Hold the sockets, move nothing.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if frozen.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                *last.lock().unwrap() = Instant::now();
            }
        }
        tokio::select! {
            _ = async { tokio::join!(pump(ir, ow, f.clone(), to_server), pump(or, iw, f, to_client)) } => {}
            () = k.cancelled() => {}
        }
    });
    Relay {
        addr,
        frozen,
        kill,
        last_to_client,
        last_to_server,
    }
}

/// A peer gone silent is declared lost about the idle timeout after its
/// last bytes, on both sides; an idle but live connection stays up.
#[tokio::test]
async fn silent_peer_is_detected() {
    let pki = pki();
    let cfg = TcpConfig::default();
    let (server_addr, mut rx, _shutdown) = tcp_server(&pki, cfg.clone()).await;
    let relay = relay(server_addr).await;
    let a = tcp::connect(relay.addr, tcp::client_tls(&pki.client), SERVER_NAME, &cfg)
        .await
        .unwrap();
    let b = rx.recv().await.unwrap();
    // Idle for three idle timeouts: keep-alives hold it up.
    tokio::time::sleep(cfg.idle_timeout * 3).await;
    assert!(a.close_reason().is_none() && b.close_reason().is_none());

    relay.frozen.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let ((ea, at_a), (eb, at_b)) =
        tokio::join!(async { (a.closed().await, Instant::now()) }, async {
            (b.closed().await, Instant::now())
        });
    for e in [&ea, &eb] {
        assert!(
            matches!(e, ConnectionError::Tcp(TcpError::TimedOut(_))),
            "{e}"
        );
    }
    // Each side gives up no sooner than the idle timeout after the last bytes
    // that reached it (the timer counts whole milliseconds), and not long after
    // the freeze: live, a keep-alive arrived at least every keep-alive interval.
    let quiet_a = at_a - *relay.last_to_client.lock().unwrap();
    let quiet_b = at_b - *relay.last_to_server.lock().unwrap();
    for quiet in [quiet_a, quiet_b] {
        assert!(
            quiet + Duration::from_millis(2) >= cfg.idle_timeout,
            "declared lost {quiet:?} after its last bytes"
        );
    }
    let took = at_a.max(at_b) - start;
    assert!(
        took <= cfg.idle_timeout + Duration::from_millis(800),
        "{took:?}"
    );
    eprintln!("silent peer detected after {took:?} (quiet {quiet_a:?} / {quiet_b:?})");
}

/// A socket that dies (the peer's process or host went away and the kernel
/// ends the TCP connection) is seen at once.
#[tokio::test]
async fn killed_socket_is_detected() {
    let pki = pki();
    let cfg = TcpConfig::default();
    let (server_addr, mut rx, _shutdown) = tcp_server(&pki, cfg.clone()).await;
    let relay = relay(server_addr).await;
    let a = tcp::connect(relay.addr, tcp::client_tls(&pki.client), SERVER_NAME, &cfg)
        .await
        .unwrap();
    let b = rx.recv().await.unwrap();
    relay.kill.cancel();
    let start = Instant::now();
    let (ea, eb) = tokio::join!(a.closed(), b.closed());
    assert!(start.elapsed() < Duration::from_millis(500));
    for e in [&ea, &eb] {
        assert!(matches!(e, ConnectionError::Tcp(TcpError::Lost(_))), "{e}");
    }
}

/// Dropping every handle closes the connection (code 0), as with quinn.
#[tokio::test]
async fn dropping_every_handle_closes() {
    let (a, b) = common::tcp_pair().await;
    let (s, r) = a.open_bi().await.unwrap();
    drop(a);
    // Stream halves keep it open.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(b.close_reason().is_none());
    drop((s, r));
    let why = timeout(T, b.closed()).await.unwrap();
    assert!(
        matches!(
            why,
            ConnectionError::Tcp(TcpError::ApplicationClosed { code: 0, .. })
        ),
        "{why}"
    );
}

#[tokio::test]
async fn wrong_certificate_is_refused() {
    let edge = pki();
    let other = pki();
    let (addr, _rx, _shutdown) = tcp_server(&edge, TcpConfig::default()).await;
    let err = tcp::connect(
        addr,
        tcp::client_tls(&other.client),
        SERVER_NAME,
        &TcpConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::Tls { .. }), "{err}");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    eprintln!("{err}");
}

#[tokio::test]
async fn wrong_alpn_is_refused() {
    let pki = pki();
    let (addr, _rx, _shutdown) = tcp_server(&pki, TcpConfig::default()).await;
    // The QUIC config as it is (QUIC's ALPN): refused before dialling.
    let err = tcp::connect(
        addr,
        Arc::new(pki.client.clone()),
        SERVER_NAME,
        &TcpConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::Config(_)), "{err}");
    // A client offering another protocol: the edge refuses the handshake.
    let mut other = pki.client.clone();
    other.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = tokio_rustls::TlsConnector::from(Arc::new(other))
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");
}

/// A TLS client speaking raw bytes to the edge: (its stream, the edge's conn).
async fn raw_client() -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    warren_transport::Conn,
) {
    let pki = pki();
    let (addr, mut rx, _shutdown) = tcp_server(&pki, TcpConfig::default()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(tcp::client_tls(&pki.client))
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .unwrap();
    let conn = timeout(T, rx.recv()).await.unwrap().unwrap();
    (tls, conn)
}

async fn expect_protocol_close(
    mut raw: tokio_rustls::client::TlsStream<TcpStream>,
    conn: warren_transport::Conn,
) {
    let why = timeout(T, conn.closed()).await.unwrap();
    assert!(
        matches!(why, ConnectionError::Tcp(TcpError::Protocol(_))),
        "{why}"
    );
    eprintln!("{why}");
    // The hostile peer is told, then the connection ends.
    let mut rest = Vec::new();
    let _ = timeout(T, raw.read_to_end(&mut rest)).await.unwrap();
    let mut kinds = Vec::new();
    let mut at = 0;
    while at + 9 <= rest.len() {
        kinds.push(rest[at]);
        let len = u32::from_be_bytes([rest[at + 5], rest[at + 6], rest[at + 7], rest[at + 8]]);
        at += 9 + len as usize;
    }
    assert_eq!(
        kinds.last(),
        Some(&9),
        "frames {kinds:?} do not end with CLOSE"
    );
}

#[tokio::test]
async fn garbage_closes_the_connection() {
    let (mut raw, conn) = raw_client().await;
    raw.write_all(&[0xff; 64]).await.unwrap();
    raw.flush().await.unwrap();
    expect_protocol_close(raw, conn).await;
}

#[tokio::test]
async fn oversized_frame_closes_the_connection() {
    let (mut raw, conn) = raw_client().await;
    // A DATA frame claiming 4 GiB.
    raw.write_all(&[1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    raw.flush().await.unwrap();
    expect_protocol_close(raw, conn).await;
}

#[tokio::test]
async fn data_beyond_credit_closes_the_connection() {
    let (mut raw, conn) = raw_client().await;
    // OPEN stream 1, then 5 MiB on it: past the 4 MiB stream window.
    raw.write_all(&[0, 0, 0, 0, 1, 0, 0, 0, 1, 0])
        .await
        .unwrap();
    let mut frame = vec![1, 0, 0, 0, 1, 0, 1, 0, 0];
    frame.extend_from_slice(&[0u8; 65536]);
    let hostile = async {
        for _ in 0..80 {
            if raw.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = raw.flush().await;
        raw
    };
    let (raw, why) = tokio::join!(hostile, timeout(T, conn.closed()));
    let why = why.unwrap();
    assert!(why.to_string().contains("window exceeded"), "{why}");
    drop(raw);
}

#[tokio::test]
async fn data_on_unopened_stream_closes_the_connection() {
    let (mut raw, conn) = raw_client().await;
    raw.write_all(&[1, 0, 0, 0, 5, 0, 0, 0, 1, 42])
        .await
        .unwrap();
    raw.flush().await.unwrap();
    expect_protocol_close(raw, conn).await;
}

/// Streams past the acceptor's limit are refused, not queued without bound.
#[tokio::test]
async fn streams_over_the_limit_are_refused() {
    let cfg = TcpConfig {
        max_streams: 2,
        ..TcpConfig::default()
    };
    let (a, b) = tcp_pair_with(cfg).await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let (mut s, r) = a.open_bi().await.unwrap();
        s.write_all(b"x").await.unwrap();
        kept.push((s, r));
    }
    let (mut s, _r) = a.open_bi().await.unwrap();
    let err = timeout(T, async {
        loop {
            if let Err(e) = s.write_all(b"y").await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert!(
        err.to_string().contains(&STREAM_REFUSED.to_string()),
        "{err}"
    );
    // Accepted streams still work; dropping them makes room again.
    let (_bs, mut br) = b.accept_bi().await.unwrap();
    let mut one = [0u8; 1];
    br.read_exact(&mut one).await.unwrap();
    let _ = TCP_ALPN;
}

/// An empty DATA frame carries nothing; a peer flooding them is cut off
/// before they cost a queue entry each.
#[tokio::test]
async fn empty_data_frames_close_the_connection() {
    let (mut raw, conn) = raw_client().await;
    // OPEN stream 1, then DATA of length 0 on it.
    raw.write_all(&[0, 0, 0, 0, 1, 0, 0, 0, 1, 0])
        .await
        .unwrap();
    raw.write_all(&[1, 0, 0, 0, 1, 0, 0, 0, 0]).await.unwrap();
    raw.flush().await.unwrap();
    let why = timeout(T, conn.closed()).await.unwrap();
    assert!(why.to_string().contains("empty data frame"), "{why}");
}

/// A peer that opens stream after stream past the limit and never reads the
/// refusals is cut off instead of growing the edge's queue.
#[tokio::test]
async fn a_peer_provoking_refusals_without_reading_is_cut_off() {
    let pki = pki();
    let cfg = TcpConfig {
        max_streams: 1,
        ..TcpConfig::default()
    };
    let (addr, mut rx, _shutdown) = tcp_server(&pki, cfg).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut raw = tokio_rustls::TlsConnector::from(tcp::client_tls(&pki.client))
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .unwrap();
    let conn = timeout(T, rx.recv()).await.unwrap().unwrap();
    // Stream ids 1, 3, 5, …: all but the first refused; never read.
    let hostile = async {
        let mut batch = Vec::with_capacity(10 * 4096);
        for n in 0u32..400_000 {
            let id = 2 * n + 1;
            batch.extend_from_slice(&[0]);
            batch.extend_from_slice(&id.to_be_bytes());
            batch.extend_from_slice(&[0, 0, 0, 1, 0]);
            if batch.len() >= 10 * 4096 {
                if raw.write_all(&batch).await.is_err() {
                    break;
                }
                batch.clear();
            }
        }
        raw
    };
    let (raw, why) = tokio::join!(hostile, timeout(Duration::from_secs(60), conn.closed()));
    let why = why.expect("cut off");
    assert!(why.to_string().contains("does not read"), "{why}");
    drop(raw);
}

/// Idle connections from one address (a slowloris on the TLS handshake) take
/// at most 32 handshake slots: more from it are dropped, and a connector at
/// another address still gets through.
#[tokio::test]
async fn one_address_cannot_take_every_handshake_slot() {
    let pki = pki();
    let (addr, mut rx, _shutdown) = tcp_server(&pki, TcpConfig::default()).await;
    let mut idle = Vec::new();
    for _ in 0..32 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the listener count them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let n = timeout(Duration::from_secs(5), extra.read(&mut byte))
        .await
        .expect("dropped at once, not left to time out")
        .unwrap_or(0);
    assert_eq!(n, 0, "the 33rd idle connection from one address is closed");

    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = other.connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(tcp::client_tls(&pki.client))
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await;
    assert!(tls.is_ok(), "{:?}", tls.err());
    assert!(timeout(T, rx.recv()).await.unwrap().is_some());
    drop(idle);
}
