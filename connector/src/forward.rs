//! Serves one edge-opened data stream: read the header, check the local policy,
//! dial the origin, answer, then carry bytes both ways honouring half-close.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tracing::{Instrument, debug, info, info_span};
use warren_protocol::ErrorCode;
use warren_protocol::io::{read_message, read_preamble};
use warren_protocol::messages::{ConnectRequest, ConnectResponse, WireMessage};
use warren_protocol::preamble::StreamKind;
use warren_transport::{RecvHalf, SendHalf};

use crate::Shared;

/// Time the edge has to send a complete stream header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest connect timeout the edge may ask for.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Read buffer for origin → edge.
const BUF: usize = 128 * 1024;
/// Reads of at least this many bytes hand their buffer to the transport;
/// smaller ones are copied out of it.
const HAND_OVER: usize = BUF / 4;
/// Most chunks written to the origin in one vectored write (Linux takes up to
/// 1024 slices; 64 QUIC packets' payloads are about 75 KB).
const CHUNKS: usize = 64;

/// Serves one data stream to completion.
pub async fn serve_stream(shared: Arc<Shared>, mut send: SendHalf, mut recv: RecvHalf) {
    let header = tokio::time::timeout(HEADER_TIMEOUT, async {
        match read_preamble(&mut recv).await? {
            StreamKind::Connect => read_message::<ConnectRequest, _>(&mut recv).await,
            other => Err(warren_protocol::io::ReadError::Io(io::Error::other(
                format!("unexpected {other:?} stream"),
            ))),
        }
    })
    .await;
    let req = match header {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!(error = %e, "closing malformed data stream");
            let _ = send.reset(1);
            let _ = recv.stop(1);
            return;
        }
        Err(_) => {
            debug!("data stream header timed out");
            let _ = send.reset(1);
            return;
        }
    };
    let span = info_span!("stream", request_id = %req.flow_id, dest = %req.destination);
    async move {
        shared.metrics.streams_total.inc();
        shared.metrics.streams_active.inc();
        let result = connect_and_splice(&shared, &req, &mut send, recv).await;
        shared.metrics.streams_active.dec();
        if let Err(code) = result {
            shared.metrics.error(code);
        }
    }
    .instrument(span)
    .await
}

async fn answer(send: &mut SendHalf, error: Option<ErrorCode>, message: String) -> io::Result<()> {
    let frame = ConnectResponse { error, message }.to_frame();
    send.write_all(&frame).await.map_err(io::Error::other)
}

/// Tells the edge why no connection was made, ends the stream, and returns the code.
async fn fail(send: &mut SendHalf, code: ErrorCode, message: String) -> Result<(), ErrorCode> {
    info!(%code, %message, "stream refused");
    let _ = answer(send, Some(code), message).await;
    let _ = send.finish();
    Err(code)
}

async fn connect_and_splice(
    shared: &Shared,
    req: &ConnectRequest,
    send: &mut SendHalf,
    recv: RecvHalf,
) -> Result<(), ErrorCode> {
    // An IPv4-mapped destination is checked and dialled as the IPv4 address it is.
    let dest = crate::policy::canonical(req.destination);
    if !shared.policy.allows(dest).await {
        let why = format!("{dest} is not allowed by the connector's policy");
        return fail(send, ErrorCode::DestinationForbidden, why).await;
    }
    let timeout = match req.timeout_ms {
        0 => shared.config.connect_timeout,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_CONNECT_TIMEOUT),
    };
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(dest)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let code = match e.kind() {
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    ErrorCode::ConnectionTimeout
                }
                _ => ErrorCode::ConnectionRefused,
            };
            return fail(send, code, format!("connect to {dest}: {e}")).await;
        }
        Err(_) => {
            let why = format!("connect to {dest}: no answer in {timeout:?}");
            return fail(send, ErrorCode::ConnectionTimeout, why).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    info!("stream connected");
    if answer(send, None, String::new()).await.is_err() {
        return Err(ErrorCode::ConnectionTerminated);
    }
    let (tcp_r, tcp_w) = tcp.into_split();
    let to_origin = shared
        .metrics
        .bytes
        .get_or_create(&vec![("direction", "to_origin")])
        .clone();
    let from_origin = shared
        .metrics
        .bytes
        .get_or_create(&vec![("direction", "from_origin")])
        .clone();
    let up = tunnel_to_tcp(recv, tcp_w, to_origin);
    let down = tcp_to_tunnel(tcp_r, send, from_origin);
    match tokio::try_join!(up, down) {
        Ok((up, down)) => {
            info!(up, down, "stream closed");
            Ok(())
        }
        Err(e) => {
            debug!(error = %e, "stream ended with an error");
            Err(ErrorCode::ConnectionTerminated)
        }
    }
}

/// Origin → edge until the origin's FIN, then finishes the tunnel stream, each
/// read handed to the transport by [`read_slice`].
async fn tcp_to_tunnel(
    mut tcp: OwnedReadHalf,
    send: &mut SendHalf,
    counter: Counter,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buf = BytesMut::new();
    loop {
        let chunk = read_slice(&mut tcp, &mut buf).await?;
        if chunk.is_empty() {
            send.finish().map_err(io::Error::other)?;
            return Ok(total);
        }
        let n = chunk.len() as u64;
        send.write_chunk(chunk).await?;
        counter.inc_by(n);
        total += n;
    }
}

/// The next read from `r` (into `buf`, [`BUF`] of room); empty at the end of
/// the stream. quinn keeps what it is handed until the edge acknowledges it,
/// and a slice keeps its whole buffer alive: a large read hands over the
/// buffer itself (no copy; at most 4x the bytes pinned), a small one is copied
/// out and the buffer reused, so an origin that trickles a byte at a time does
/// not pin 128 KiB per byte in flight.
async fn read_slice<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> io::Result<Bytes> {
    buf.clear();
    if buf.capacity() < BUF {
        buf.reserve(BUF);
    }
    let n = r.read_buf(buf).await?;
    if n >= HAND_OVER {
        Ok(buf.split().freeze())
    } else {
        Ok(Bytes::copy_from_slice(&buf[..n]))
    }
}

/// Edge → origin until the edge finishes its stream, then sends FIN to the origin.
/// Each round takes every chunk the stream already holds (up to [`CHUNKS`]) and
/// writes them to the origin in one vectored write, without copying.
async fn tunnel_to_tcp(
    mut recv: RecvHalf,
    mut tcp: OwnedWriteHalf,
    counter: Counter,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut chunks: [Bytes; CHUNKS] = std::array::from_fn(|_| Bytes::new());
    while let Some(n) = recv.read_chunks(&mut chunks).await? {
        total += write_all_chunks(&mut tcp, &mut chunks[..n], &counter).await?;
    }
    tcp.shutdown().await?;
    Ok(total)
}

/// Writes all of `chunks` with vectored writes, counting each write in
/// `counter`; returns the bytes written. Each chunk is emptied as it goes out,
/// so none keeps its received packet's buffer alive while the stream idles.
async fn write_all_chunks(
    tcp: &mut OwnedWriteHalf,
    chunks: &mut [Bytes],
    counter: &Counter,
) -> io::Result<u64> {
    let mut written = 0u64;
    let mut first = 0;
    loop {
        while chunks.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
        if first == chunks.len() {
            return Ok(written);
        }
        let slices: Vec<IoSlice<'_>> = chunks[first..].iter().map(|c| IoSlice::new(c)).collect();
        let mut n = tcp.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n as u64;
        counter.inc_by(n as u64);
        // The write took whole chunks and perhaps the start of the next
        // (`writev` never reports more than it was given).
        while n > 0 {
            let Some(chunk) = chunks.get_mut(first) else {
                break;
            };
            let take = n.min(chunk.len());
            chunk.advance(take);
            n -= take;
            if chunk.is_empty() {
                *chunk = Bytes::new();
                first += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Chunks larger than the socket buffers force partial vectored writes,
    /// some ending inside a chunk; empty chunks (in the middle and at the end)
    /// are skipped. The reader must see every byte in order.
    #[tokio::test]
    async fn write_all_chunks_survives_partial_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut chunks: Vec<Bytes> = (0..40u8)
            .map(|i| {
                let len = if i % 7 == 3 {
                    0
                } else {
                    100_003 + usize::from(i)
                };
                Bytes::from(vec![i; len])
            })
            .collect();
        chunks.push(Bytes::new());
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            // Not reading at first: the buffers fill and writes come back short.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            got
        });
        // A small send buffer makes the kernel take part of a write.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_send_buffer_size(16 * 1024).expect("sndbuf");
        let (_, mut w) = socket.connect(addr).await.expect("connect").into_split();
        let counter = Counter::default();
        let written = write_all_chunks(&mut w, &mut chunks, &counter)
            .await
            .expect("write");
        w.shutdown().await.expect("shutdown");
        drop(w);
        assert_eq!(written, expected.len() as u64);
        assert_eq!(counter.get(), written, "every write counted");
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes arrived out of order or changed");
        assert!(chunks.iter().all(Bytes::is_empty), "every chunk consumed");
    }

    /// Small reads are copied out and the buffer kept, so a trickling origin
    /// does not pin a buffer per byte; a large read hands the buffer over
    /// (no copy) and the next read gets a new one.
    #[tokio::test]
    async fn small_reads_are_copied_large_ones_hand_over_the_buffer() {
        let (mut origin, mut r) = tokio::io::duplex(1 << 20);
        let mut buf = BytesMut::new();
        let within = |chunk: &Bytes, buf: &BytesMut| {
            let start = buf.as_ptr() as usize;
            (start..start + buf.capacity()).contains(&(chunk.as_ptr() as usize))
        };
        origin.write_all(b"a").await.expect("write");
        let small = read_slice(&mut r, &mut buf).await.expect("read");
        assert_eq!(&small[..], b"a");
        assert!(!within(&small, &buf), "a small read is copied out");
        assert!(buf.capacity() >= BUF, "and the buffer kept");
        let kept = buf.as_ptr();

        let large = vec![b'x'; HAND_OVER];
        origin.write_all(&large).await.expect("write");
        let mut got = read_slice(&mut r, &mut buf).await.expect("read");
        assert_eq!(got.as_ptr(), kept, "a large read is the buffer itself");
        while got.len() < HAND_OVER {
            let more = read_slice(&mut r, &mut buf).await.expect("read");
            got = [&got[..], &more[..]].concat().into();
        }
        assert_eq!(&got[..], &large[..]);
        origin.write_all(b"b").await.expect("write");
        let next = read_slice(&mut r, &mut buf).await.expect("read");
        assert_eq!(&next[..], b"b");
        assert_ne!(buf.as_ptr(), kept, "the next read has a buffer of its own");

        drop(origin);
        assert!(read_slice(&mut r, &mut buf).await.expect("eof").is_empty());
    }
}
