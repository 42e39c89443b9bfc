//! The same stream, datagram and close semantics over QUIC and over the TCP
//! multiplexer: what the tunnel protocol relies on.

mod common;

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::timeout;
use warren_transport::Conn;

const T: Duration = Duration::from_secs(10);

async fn read_all(r: &mut warren_transport::RecvHalf) -> Vec<u8> {
    let mut got = Vec::new();
    timeout(T, r.read_to_end(&mut got)).await.unwrap().unwrap();
    got
}

/// Either side opens and accepts; half-close is seen as EOF while the other
/// direction goes on.
async fn bidi_both_ways(a: Conn, b: Conn) {
    // The connector's control stream.
    let (mut s, mut r) = a.open_bi().await.unwrap();
    s.write_all(b"register").await.unwrap();
    s.finish().unwrap();
    let (mut bs, mut br) = timeout(T, b.accept_bi()).await.unwrap().unwrap();
    assert_eq!(read_all(&mut br).await, b"register");
    bs.write_all(b"ok").await.unwrap();
    bs.finish().unwrap();
    assert_eq!(read_all(&mut r).await, b"ok");

    // The edge's data stream.
    let (mut s, mut r) = b.open_bi().await.unwrap();
    s.write_all(b"connect").await.unwrap();
    let (mut as_, mut ar) = timeout(T, a.accept_bi()).await.unwrap().unwrap();
    let mut buf = [0u8; 7];
    ar.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"connect");
    s.finish().unwrap();
    assert_eq!(timeout(T, ar.read_chunk(100)).await.unwrap().unwrap(), None);
    as_.write_chunk(Bytes::from_static(b"after half-close"))
        .await
        .unwrap();
    as_.shutdown().await.unwrap();
    assert_eq!(read_all(&mut r).await, b"after half-close");
}

/// A reset is an error for the reader; a stop is an error for the writer.
async fn reset_and_stop(a: Conn, b: Conn) {
    let (mut s, _r) = a.open_bi().await.unwrap();
    s.write_all(b"partial").await.unwrap();
    let (_bs, mut br) = timeout(T, b.accept_bi()).await.unwrap().unwrap();
    let mut buf = [0u8; 7];
    br.read_exact(&mut buf).await.unwrap();
    s.reset(7).unwrap();
    let err = timeout(T, br.read_chunk(100)).await.unwrap().unwrap_err();
    assert!(err.to_string().contains('7'), "{err}");

    let (mut s, _r) = a.open_bi().await.unwrap();
    s.write_all(b"x").await.unwrap();
    let (_bs, mut br) = timeout(T, b.accept_bi()).await.unwrap().unwrap();
    br.read_exact(&mut [0u8; 1]).await.unwrap();
    br.stop(9).unwrap();
    let err = timeout(T, async {
        loop {
            if let Err(e) = s.write_all(&[0u8; 1024]).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert!(err.to_string().contains('9'), "{err}");
}

/// Many streams at once, each echoed.
async fn many_streams(a: Conn, b: Conn) {
    const STREAMS: usize = 200;
    const LEN: usize = 64 * 1024;
    let server = tokio::spawn(async move {
        let mut echoes = JoinSet::new();
        for _ in 0..STREAMS {
            let (mut s, mut r) = b.accept_bi().await.unwrap();
            echoes.spawn(async move {
                tokio::io::copy(&mut r, &mut s).await.unwrap();
                s.finish().unwrap();
            });
        }
        echoes.join_all().await;
        b
    });
    let mut clients = JoinSet::new();
    for i in 0..STREAMS {
        let a = a.clone();
        clients.spawn(async move {
            let (mut s, mut r) = a.open_bi().await.unwrap();
            let data: Vec<u8> = (0..LEN).map(|j| (i * 7 + j) as u8).collect();
            let expect = data.clone();
            let write = async {
                s.write_all(&data).await.unwrap();
                s.finish().unwrap();
            };
            let (_, got) = tokio::join!(write, read_all(&mut r));
            assert_eq!(got, expect, "stream {i}");
        });
    }
    timeout(Duration::from_secs(60), clients.join_all())
        .await
        .unwrap();
    let _b = server.await.unwrap();
}

/// Datagrams both ways; unidirectional streams both ways.
async fn datagrams_and_uni(a: Conn, b: Conn) {
    a.send_datagram(Bytes::from_static(b"question")).unwrap();
    let d = timeout(T, b.read_datagram()).await.unwrap().unwrap();
    assert_eq!(&d[..], b"question");
    b.send_datagram(Bytes::from_static(b"answer")).unwrap();
    let d = timeout(T, a.read_datagram()).await.unwrap().unwrap();
    assert_eq!(&d[..], b"answer");
    assert!(a.max_datagram_size().is_some());

    for (x, y) in [(&a, &b), (&b, &a)] {
        let mut s = x.open_uni().await.unwrap();
        s.write_all(b"large dns answer").await.unwrap();
        s.finish().unwrap();
        let mut r = timeout(T, y.accept_uni()).await.unwrap().unwrap();
        assert_eq!(read_all(&mut r).await, b"large dns answer");
    }
}

/// Close with a code and reason: both sides see why.
async fn close_reason(a: Conn, b: Conn) {
    assert!(a.close_reason().is_none());
    a.close(3, b"bye");
    let why = timeout(T, b.closed()).await.unwrap();
    assert!(why.to_string().contains("bye"), "{why}");
    assert!(a.close_reason().is_some());
    assert!(b.open_bi().await.is_err());
    assert!(b.read_datagram().await.is_err());
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn tcp() {
                let (a, b) = common::tcp_pair().await;
                assert_eq!(a.transport_name(), "tcp");
                assert_eq!(a.path_mtu(), None);
                super::$name(a, b).await;
            }

            #[tokio::test]
            async fn quic() {
                let (a, b, _ce, _se) = common::quic_pair().await;
                assert_eq!(a.transport_name(), "quic");
                assert!(a.path_mtu().is_some());
                super::$name(a, b).await;
            }
        }
    };
}

both!(bidi_both_ways);
both!(reset_and_stop);
both!(many_streams);
both!(datagrams_and_uni);
both!(close_reason);
