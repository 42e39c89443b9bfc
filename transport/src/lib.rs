//! `warren-transport`: the tunnel's transports behind one connection type.
//!
//! A tunnel connection is QUIC when UDP gets through, else TLS over TCP with
//! the [`tcp`] multiplexer. [`Conn`] offers what the tunnel protocol uses of
//! either — bidirectional streams either side opens (the control stream, data
//! streams), unidirectional streams, datagrams (DNS), close with a code and
//! reason, liveness — and [`SendHalf`] / [`RecvHalf`] are its streams, tokio
//! `AsyncWrite` / `AsyncRead` with QUIC's finish, reset and stop.

#![warn(missing_docs)]

pub mod alloc;
pub mod pq;
pub mod quic;
pub mod tcp;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use tcp::{MuxRecv, MuxSend, TcpConfig, TcpConn, TcpError};

/// A tunnel connection over either transport. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Conn {
    /// QUIC (UDP).
    Quic(quinn::Connection),
    /// The TCP fallback (TLS over TCP with the stream multiplexer).
    Tcp(TcpConn),
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The QUIC connection ended.
    #[error(transparent)]
    Quic(#[from] quinn::ConnectionError),
    /// The TCP connection ended.
    #[error(transparent)]
    Tcp(#[from] TcpError),
}

/// Why a datagram could not be sent (a datagram dropped for congestion is
/// not an error, as with UDP).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendDatagramError {
    /// QUIC refused it (too large, unsupported by the peer, connection lost).
    #[error(transparent)]
    Quic(#[from] quinn::SendDatagramError),
    /// Larger than [`Conn::max_datagram_size`].
    #[error("datagram too large")]
    TooLarge,
    /// The connection has ended.
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
}

/// The stream was already finished, reset or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream already finished, reset or stopped")]
pub struct StreamClosed;

impl From<quinn::ClosedStream> for StreamClosed {
    fn from(_: quinn::ClosedStream) -> Self {
        StreamClosed
    }
}

impl From<quinn::Connection> for Conn {
    fn from(c: quinn::Connection) -> Self {
        Conn::Quic(c)
    }
}

impl From<TcpConn> for Conn {
    fn from(c: TcpConn) -> Self {
        Conn::Tcp(c)
    }
}

impl Conn {
    /// Opens a bidirectional stream. On QUIC the peer learns of it with the
    /// first byte written; on TCP at once.
    pub async fn open_bi(&self) -> Result<(SendHalf, RecvHalf), ConnectionError> {
        match self {
            Conn::Quic(c) => {
                let (s, r) = c.open_bi().await?;
                Ok((s.into(), r.into()))
            }
            Conn::Tcp(c) => {
                let (s, r) = c.open_bi()?;
                Ok((s.into(), r.into()))
            }
        }
    }

    /// Waits for the peer to open a bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(SendHalf, RecvHalf), ConnectionError> {
        match self {
            Conn::Quic(c) => {
                let (s, r) = c.accept_bi().await?;
                Ok((s.into(), r.into()))
            }
            Conn::Tcp(c) => {
                let (s, r) = c.accept_bi().await?;
                Ok((s.into(), r.into()))
            }
        }
    }

    /// Opens a unidirectional stream (only this side sends).
    pub async fn open_uni(&self) -> Result<SendHalf, ConnectionError> {
        match self {
            Conn::Quic(c) => Ok(c.open_uni().await?.into()),
            Conn::Tcp(c) => Ok(c.open_uni()?.into()),
        }
    }

    /// Waits for the peer to open a unidirectional stream.
    pub async fn accept_uni(&self) -> Result<RecvHalf, ConnectionError> {
        match self {
            Conn::Quic(c) => Ok(c.accept_uni().await?.into()),
            Conn::Tcp(c) => Ok(c.accept_uni().await?.into()),
        }
    }

    /// Sends an unreliable datagram of at most [`Conn::max_datagram_size`] bytes.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), SendDatagramError> {
        match self {
            Conn::Quic(c) => Ok(c.send_datagram(data)?),
            Conn::Tcp(c) => c.send_datagram(data),
        }
    }

    /// Waits for the next datagram from the peer.
    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        match self {
            Conn::Quic(c) => Ok(c.read_datagram().await?),
            Conn::Tcp(c) => Ok(c.read_datagram().await?),
        }
    }

    /// Largest datagram that can be sent now: QUIC's depends on the path MTU
    /// (`None` when the peer takes none); TCP's is fixed at 96 KiB, more than
    /// any DNS message, so large answers need no stream there.
    pub fn max_datagram_size(&self) -> Option<usize> {
        match self {
            Conn::Quic(c) => c.max_datagram_size(),
            Conn::Tcp(c) => Some(c.max_datagram_size()),
        }
    }

    /// Closes the connection at once with `code` and `reason` for the peer;
    /// streams in flight fail.
    pub fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Conn::Quic(c) => c.close(code.into(), reason),
            Conn::Tcp(c) => c.close(code, reason),
        }
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        match self {
            Conn::Quic(c) => c.close_reason().map(Into::into),
            Conn::Tcp(c) => c.close_reason().map(Into::into),
        }
    }

    /// Waits until the connection ends, and says why.
    pub async fn closed(&self) -> ConnectionError {
        match self {
            Conn::Quic(c) => c.closed().await.into(),
            Conn::Tcp(c) => c.closed().await.into(),
        }
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Conn::Quic(c) => c.remote_address(),
            Conn::Tcp(c) => c.remote_address(),
        }
    }

    /// The path MTU QUIC has discovered (bytes of UDP payload); `None` on TCP.
    pub fn path_mtu(&self) -> Option<u16> {
        match self {
            Conn::Quic(c) => Some(c.stats().path.current_mtu),
            Conn::Tcp(_) => None,
        }
    }

    /// `"quic"` or `"tcp"`, for logs, metrics and the API.
    pub fn transport_name(&self) -> &'static str {
        match self {
            Conn::Quic(_) => "quic",
            Conn::Tcp(_) => "tcp",
        }
    }

    /// The QUIC connection, when this is one.
    pub fn as_quic(&self) -> Option<&quinn::Connection> {
        match self {
            Conn::Quic(c) => Some(c),
            Conn::Tcp(_) => None,
        }
    }
}

/// The sending half of a stream on either transport. Dropping it finishes
/// the stream.
#[derive(Debug)]
pub enum SendHalf {
    /// A QUIC stream.
    Quic(quinn::SendStream),
    /// A multiplexed TCP stream.
    Tcp(MuxSend),
}

/// The receiving half of a stream on either transport. Dropping it before
/// the end stops the stream with code 0.
#[derive(Debug)]
pub enum RecvHalf {
    /// A QUIC stream.
    Quic(quinn::RecvStream),
    /// A multiplexed TCP stream.
    Tcp(MuxRecv),
}

impl From<quinn::SendStream> for SendHalf {
    fn from(s: quinn::SendStream) -> Self {
        SendHalf::Quic(s)
    }
}

impl From<MuxSend> for SendHalf {
    fn from(s: MuxSend) -> Self {
        SendHalf::Tcp(s)
    }
}

impl From<quinn::RecvStream> for RecvHalf {
    fn from(r: quinn::RecvStream) -> Self {
        RecvHalf::Quic(r)
    }
}

impl From<MuxRecv> for RecvHalf {
    fn from(r: MuxRecv) -> Self {
        RecvHalf::Tcp(r)
    }
}

impl SendHalf {
    /// Sends `data` whole, without copying it.
    pub async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            SendHalf::Quic(s) => s.write_chunk(data).await.map_err(io::Error::from),
            SendHalf::Tcp(s) => s.write_chunk(data).await,
        }
    }

    /// Half-closes the stream: the peer reads its end after the data sent.
    pub fn finish(&mut self) -> Result<(), StreamClosed> {
        match self {
            SendHalf::Quic(s) => Ok(s.finish()?),
            SendHalf::Tcp(s) => s.finish(),
        }
    }

    /// Abandons the stream: the peer's reads fail with `code`.
    pub fn reset(&mut self, code: u32) -> Result<(), StreamClosed> {
        match self {
            SendHalf::Quic(s) => Ok(s.reset(code.into())?),
            SendHalf::Tcp(s) => s.reset(code),
        }
    }
}

impl RecvHalf {
    /// The next chunk of at most `max` bytes, without copying; `None` at the
    /// end of the stream.
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        match self {
            RecvHalf::Quic(r) => match r.read_chunk(max, true).await {
                Ok(c) => Ok(c.map(|c| c.bytes)),
                Err(e) => Err(e.into()),
            },
            RecvHalf::Tcp(r) => r.read_chunk(max).await,
        }
    }

    /// Chunks already received, up to `bufs.len()` of them (waiting only for
    /// the first), without copying: how many were filled, or `None` at the end
    /// of the stream. QUIC gives a packet's payload per chunk (the TCP
    /// fallback a frame's, at most 64 KiB), so a reader that writes each chunk
    /// out alone makes a system call per ~1.2 KB (per frame).
    pub async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> io::Result<Option<usize>> {
        match self {
            RecvHalf::Quic(r) => r.read_chunks(bufs).await.map_err(io::Error::from),
            RecvHalf::Tcp(r) => r.read_chunks(bufs).await,
        }
    }

    /// Asks the peer to stop sending: its writes fail with `code`.
    pub fn stop(&mut self, code: u32) -> Result<(), StreamClosed> {
        match self {
            RecvHalf::Quic(r) => Ok(r.stop(code.into())?),
            RecvHalf::Tcp(r) => r.stop(code),
        }
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SendHalf::Quic(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
            SendHalf::Tcp(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendHalf::Quic(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
            SendHalf::Tcp(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendHalf::Quic(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
            SendHalf::Tcp(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
        }
    }
}

impl AsyncRead for RecvHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RecvHalf::Quic(r) => AsyncRead::poll_read(Pin::new(r), cx, buf),
            RecvHalf::Tcp(r) => AsyncRead::poll_read(Pin::new(r), cx, buf),
        }
    }
}
