//! The stream multiplexer: QUIC's streams, datagrams and liveness over one
//! reliable byte stream (TLS over TCP).
//!
//! Three tasks serve a connection: the reader decodes frames and updates the
//! shared state, the writer drains two queues (control frames first, then
//! stream data and half-closes in order), the liveness task sends pings and
//! declares the peer gone after the idle timeout. Stream halves and the
//! connection handle work on the shared state under one mutex.
//!
//! Memory is bounded by credit-based flow control, per stream and for the
//! whole connection: a sender may only send what the receiver granted, and the
//! receiver grants more as the application reads. A peer that sends beyond its
//! credit, or any frame that can never be valid, ends the connection with a
//! protocol error.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

use super::TcpConfig;
use super::frame::{CLOSE_APPLICATION, CLOSE_PROTOCOL, Frame, MAX_DATA, MAX_DATAGRAM};
use crate::{SendDatagramError, StreamClosed};

/// Credit each side may use on a new stream before the receiver's first grant.
const INITIAL_STREAM_WINDOW: u32 = 64 * 1024;
/// Credit each side may use on a new connection before the receiver's first grant.
const INITIAL_CONNECTION_WINDOW: u32 = 256 * 1024;
/// Bytes the writer hands to TLS at once.
const WRITE_BATCH: usize = 256 * 1024;
/// Bytes of one stream queued for the writer beyond which a copying write
/// to it ([`MuxSend`]'s `poll_write`) waits for the writer to take some: the
/// copy then reaches TLS while still in cache, not after the whole credit (up
/// to the stream window) was copied in. Other streams' bytes do not count, so
/// a short answer never waits behind another stream's download. Measured:
/// TLS/TCP uploads about 15% faster; holding back [`MuxSend::write_chunk`]
/// too slowed downloads, whose chunks come whole from a socket read, by
/// about 10%.
const SEND_QUEUE: usize = 512 * 1024;
/// Bytes the reader asks of TLS at once.
const READ_BUF: usize = 256 * 1024;
/// Time a closing connection has to send its CLOSE frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Control frames queued for the peer beyond which a peer that keeps
/// provoking answers without reading them is cut off.
const MAX_URGENT: usize = 4096;
/// Bytes of received datagrams waiting to be read; more are dropped (as UDP
/// would), whatever their count (QUIC's default buffer is about the same).
const MAX_DATAGRAM_BYTES: usize = 1024 * 1024;
/// Code with which a stream beyond the acceptor's limit is refused.
pub const STREAM_REFUSED: u32 = 0xffff_fff0;

/// Why a TCP tunnel connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TcpError {
    /// This side closed it.
    #[error("closed locally (code {code}): {reason}")]
    LocallyClosed {
        /// The code given to `close`.
        code: u32,
        /// The reason given to `close` (lossy UTF-8).
        reason: String,
    },
    /// The peer closed it.
    #[error("closed by peer (code {code}): {reason}")]
    ApplicationClosed {
        /// The peer's code.
        code: u32,
        /// The peer's reason (lossy UTF-8).
        reason: String,
    },
    /// Nothing was received for the idle timeout.
    #[error("timed out: nothing received for {0:?}")]
    TimedOut(Duration),
    /// The TCP connection broke or ended without a CLOSE frame.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The peer broke the multiplexing protocol (or said we did).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Which end of the TLS connection this is: the client opens odd stream ids,
/// the server even ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that dialled (the connector).
    Client,
    /// The side that accepted (the edge).
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    Open,
    /// The peer finished; buffered bytes may remain.
    Fin,
    /// End of stream delivered (or never readable: our own uni stream).
    Done,
    Reset(u32),
    /// We stopped reading.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    Open,
    Finished,
    Reset,
    /// The peer stopped reading.
    Stopped(u32),
}

struct Stream {
    buf: VecDeque<Bytes>,
    buffered: usize,
    recv: Recv,
    recv_total: u64,
    recv_limit: u64,
    released: u64,
    read_waker: Option<Waker>,
    send: Send,
    credit: u64,
    /// Bytes of this stream in the writer's queue.
    queued: usize,
    write_waker: Option<Waker>,
    /// Halves still held by the application (or waiting to be accepted).
    halves: u8,
}

impl Stream {
    fn new(uni: bool, local: bool, recv_limit: u64) -> Self {
        Stream {
            buf: VecDeque::new(),
            buffered: 0,
            recv: if uni && local { Recv::Done } else { Recv::Open },
            recv_total: 0,
            recv_limit,
            released: 0,
            read_waker: None,
            send: if uni && !local {
                Send::Finished
            } else {
                Send::Open
            },
            credit: u64::from(INITIAL_STREAM_WINDOW),
            queued: 0,
            write_waker: None,
            halves: if uni { 1 } else { 2 },
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

struct State {
    streams: HashMap<u32, Stream>,
    next_local: u32,
    max_remote: u32,
    remote_open: usize,
    incoming_bi: VecDeque<u32>,
    incoming_uni: VecDeque<u32>,
    datagrams: VecDeque<Bytes>,
    /// Control frames and datagrams: written first.
    urgent: VecDeque<Frame>,
    /// Stream data, FIN and RESET, in order.
    data: VecDeque<Frame>,
    datagrams_queued: usize,
    /// Bytes of the datagrams received and not read yet.
    datagram_bytes: usize,
    ping_queued: bool,
    pong_queued: bool,
    send_credit: u64,
    credit_waiters: Vec<Waker>,
    recv_total: u64,
    recv_limit: u64,
    released: u64,
    error: Option<TcpError>,
}

struct Shared {
    state: Mutex<State>,
    cfg: TcpConfig,
    side: Side,
    remote: SocketAddr,
    epoch: Instant,
    last_recv: AtomicU64,
    last_sent: AtomicU64,
    wake_writer: Notify,
    wake_accept: Notify,
    wake_datagram: Notify,
    closed: watch::Sender<Option<TcpError>>,
    /// Stops the reader, writer and liveness tasks.
    stop: CancellationToken,
}

/// Closes the connection when the last handle (connection or stream half) is dropped.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close(0, b"");
    }
}

/// A TCP tunnel connection: the multiplexer over one TLS (or any byte)
/// stream. Cheap to clone; closed when every clone and stream half is dropped.
#[derive(Clone)]
pub struct TcpConn(Arc<Handle>);

impl fmt::Debug for TcpConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConn")
            .field("remote", &self.0.0.remote)
            .field("side", &self.0.0.side)
            .finish_non_exhaustive()
    }
}

fn io_err(kind: io::ErrorKind, msg: impl Into<String>) -> io::Error {
    io::Error::new(kind, msg.into())
}

fn conn_io_err(e: &TcpError) -> io::Error {
    io_err(io::ErrorKind::NotConnected, e.to_string())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere under the lock leaves consistent-enough state to close.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn is_local(&self, id: u32) -> bool {
        (id % 2 == 1) == (self.side == Side::Client)
    }

    /// Whether `id` names a stream that existed and is gone (frames for it
    /// are stale, not a violation).
    fn was_open(&self, next_local: u32, max_remote: u32, id: u32) -> bool {
        if self.is_local(id) {
            id < next_local
        } else {
            id <= max_remote
        }
    }

    /// Returns `n` bytes of connection credit to the peer (in batches).
    fn release_conn(&self, st: &mut State, n: usize) {
        st.released += n as u64;
        if st.released >= u64::from(self.cfg.connection_window / 2) {
            // Several chunks read at once can release more than a u32:
            // the rest goes with the next grant.
            let increment = u32::try_from(st.released).unwrap_or(u32::MAX);
            st.urgent.push_back(Frame::Window { id: 0, increment });
            st.recv_limit += u64::from(increment);
            st.released -= u64::from(increment);
            self.wake_writer.notify_one();
        }
    }

    /// Drops what a stream has buffered, returning its connection credit.
    fn discard(&self, st: &mut State, id: u32) {
        let n = match st.streams.get_mut(&id) {
            Some(s) => {
                s.buf.clear();
                std::mem::take(&mut s.buffered)
            }
            None => 0,
        };
        if n > 0 {
            self.release_conn(st, n);
        }
    }

    /// Marks one half of `id` dropped, forgetting the stream when none is left.
    fn drop_half(&self, st: &mut State, id: u32) {
        let gone = match st.streams.get_mut(&id) {
            Some(s) => {
                s.halves = s.halves.saturating_sub(1);
                s.halves == 0
            }
            None => false,
        };
        if gone {
            self.discard(st, id);
            st.streams.remove(&id);
            if !self.is_local(id) {
                st.remote_open = st.remote_open.saturating_sub(1);
            }
        }
    }

    /// Ends the connection with `err`; `farewell` is sent to the peer first
    /// when given. Idempotent: the first reason stays.
    fn shut(&self, err: TcpError, farewell: Option<Frame>) {
        let mut st = self.lock();
        if st.error.is_some() {
            return;
        }
        debug!(remote = %self.remote, reason = %err, "tcp tunnel connection ends");
        st.error = Some(err.clone());
        st.urgent.clear();
        st.data.clear();
        st.datagrams_queued = 0;
        for s in st.streams.values_mut() {
            s.wake();
        }
        for w in st.credit_waiters.drain(..) {
            w.wake();
        }
        match farewell {
            Some(f) => {
                st.urgent.push_back(f);
                drop(st);
                self.wake_writer.notify_one();
                // The writer stops after the farewell; this bounds a peer
                // that does not read it.
                let stop = self.stop.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            tokio::time::sleep(CLOSE_LINGER).await;
                            stop.cancel();
                        });
                    }
                    Err(_) => stop.cancel(),
                }
            }
            None => {
                drop(st);
                self.stop.cancel();
            }
        }
        self.wake_accept.notify_waiters();
        self.wake_datagram.notify_waiters();
        self.closed.send_replace(Some(err));
    }

    fn close(&self, code: u32, reason: &[u8]) {
        let reason = Bytes::copy_from_slice(&reason[..reason.len().min(super::frame::MAX_REASON)]);
        let err = TcpError::LocallyClosed {
            code,
            reason: String::from_utf8_lossy(&reason).into_owned(),
        };
        let frame = Frame::Close {
            kind: CLOSE_APPLICATION,
            code,
            reason,
        };
        self.shut(err, Some(frame));
    }

    fn violation(&self, msg: String) {
        debug!(remote = %self.remote, %msg, "peer broke the tunnel protocol");
        let frame = Frame::Close {
            kind: CLOSE_PROTOCOL,
            code: 0,
            reason: Bytes::from(msg.clone()),
        };
        self.shut(TcpError::Protocol(msg), Some(frame));
    }

    /// Applies one frame from the peer; an error is a protocol violation.
    fn on_frame(&self, st: &mut State, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Open { id, uni } => {
                let expected = match (st.max_remote, self.side) {
                    (0, Side::Client) => 2,
                    (0, Side::Server) => 1,
                    (m, _) => m.checked_add(2).ok_or("stream ids exhausted")?,
                };
                if id != expected {
                    return Err(format!("stream {id} opened, expected {expected}"));
                }
                st.max_remote = id;
                if st.remote_open >= self.cfg.max_streams {
                    // Refusals are answered; a peer that keeps opening
                    // without reading the answers is not let grow the queue.
                    if st.urgent.len() >= MAX_URGENT {
                        return Err("too many frames queued for a peer that does not read".into());
                    }
                    debug!(id, "refusing a stream: too many open");
                    st.urgent.push_back(Frame::Stop {
                        id,
                        code: STREAM_REFUSED,
                    });
                    if !uni {
                        st.urgent.push_back(Frame::Reset {
                            id,
                            code: STREAM_REFUSED,
                        });
                    }
                    self.wake_writer.notify_one();
                    return Ok(());
                }
                let window = self.cfg.stream_window.max(INITIAL_STREAM_WINDOW);
                st.streams
                    .insert(id, Stream::new(uni, false, u64::from(window)));
                if window > INITIAL_STREAM_WINDOW {
                    st.urgent.push_back(Frame::Window {
                        id,
                        increment: window - INITIAL_STREAM_WINDOW,
                    });
                    self.wake_writer.notify_one();
                }
                st.remote_open += 1;
                if uni {
                    st.incoming_uni.push_back(id);
                } else {
                    st.incoming_bi.push_back(id);
                }
                self.wake_accept.notify_waiters();
            }
            Frame::Data { id, data } => {
                let len = data.len();
                st.recv_total += len as u64;
                if st.recv_total > st.recv_limit {
                    return Err("connection flow-control window exceeded".into());
                }
                let stale = match st.streams.get_mut(&id) {
                    Some(s) => match s.recv {
                        Recv::Open => {
                            s.recv_total += len as u64;
                            if s.recv_total > s.recv_limit {
                                return Err(format!("stream {id} flow-control window exceeded"));
                            }
                            s.buffered += len;
                            s.buf.push_back(data);
                            if let Some(w) = s.read_waker.take() {
                                w.wake();
                            }
                            false
                        }
                        Recv::Stopped => true,
                        _ => return Err(format!("data on stream {id} after its end")),
                    },
                    None if self.was_open(st.next_local, st.max_remote, id) => true,
                    None => return Err(format!("data on unopened stream {id}")),
                };
                if stale {
                    self.release_conn(st, len);
                }
            }
            Frame::Fin { id } => match st.streams.get_mut(&id) {
                Some(s) => match s.recv {
                    Recv::Open => {
                        s.recv = Recv::Fin;
                        if let Some(w) = s.read_waker.take() {
                            w.wake();
                        }
                    }
                    Recv::Stopped => {}
                    _ => return Err(format!("stream {id} finished twice")),
                },
                None if self.was_open(st.next_local, st.max_remote, id) => {}
                None => return Err(format!("fin on unopened stream {id}")),
            },
            Frame::Reset { id, code } => match st.streams.get_mut(&id) {
                Some(s) => {
                    if matches!(s.recv, Recv::Open | Recv::Fin) {
                        s.recv = Recv::Reset(code);
                        if let Some(w) = s.read_waker.take() {
                            w.wake();
                        }
                        self.discard(st, id);
                    }
                }
                None if self.was_open(st.next_local, st.max_remote, id) => {}
                None => return Err(format!("reset of unopened stream {id}")),
            },
            Frame::Stop { id, code } => match st.streams.get_mut(&id) {
                Some(s) => {
                    if s.send == Send::Open {
                        s.send = Send::Stopped(code);
                        if let Some(w) = s.write_waker.take() {
                            w.wake();
                        }
                        // Its writer may wait for connection credit instead.
                        for w in st.credit_waiters.drain(..) {
                            w.wake();
                        }
                    }
                }
                None if self.was_open(st.next_local, st.max_remote, id) => {}
                None => return Err(format!("stop of unopened stream {id}")),
            },
            Frame::Window { id: 0, increment } => {
                st.send_credit += u64::from(increment);
                if st.send_credit > 1 << 40 {
                    return Err("connection credit overflow".into());
                }
                for w in st.credit_waiters.drain(..) {
                    w.wake();
                }
            }
            Frame::Window { id, increment } => match st.streams.get_mut(&id) {
                Some(s) => {
                    s.credit += u64::from(increment);
                    if s.credit > 1 << 40 {
                        return Err(format!("stream {id} credit overflow"));
                    }
                    if let Some(w) = s.write_waker.take() {
                        w.wake();
                    }
                }
                None if self.was_open(st.next_local, st.max_remote, id) => {}
                None => return Err(format!("window of unopened stream {id}")),
            },
            Frame::Datagram(d) => {
                let bytes: usize = st.datagram_bytes + d.len();
                if st.datagrams.len() < self.cfg.datagram_queue && bytes <= MAX_DATAGRAM_BYTES {
                    st.datagram_bytes = bytes;
                    st.datagrams.push_back(d);
                    self.wake_datagram.notify_waiters();
                } else {
                    trace!("dropping a datagram: receive queue full");
                }
            }
            Frame::Ping => {
                if !st.pong_queued {
                    st.pong_queued = true;
                    st.urgent.push_back(Frame::Pong);
                    self.wake_writer.notify_one();
                }
            }
            Frame::Pong => {}
            // Handled by the reader.
            Frame::Close { .. } => {}
        }
        Ok(())
    }

    /// Takes frames off the queues, control first, into `batch`. Returns
    /// whether the connection is closing.
    fn gather(&self, batch: &mut Batch) -> bool {
        let mut st = self.lock();
        while batch.len < WRITE_BATCH {
            let Some(f) = st.urgent.pop_front().or_else(|| st.data.pop_front()) else {
                break;
            };
            match &f {
                Frame::Data { id, data } => {
                    if let Some(s) = st.streams.get_mut(id) {
                        let before = s.queued;
                        s.queued -= data.len();
                        if before >= SEND_QUEUE
                            && s.queued < SEND_QUEUE
                            && let Some(w) = s.write_waker.take()
                        {
                            w.wake();
                        }
                    }
                }
                Frame::Ping => st.ping_queued = false,
                Frame::Pong => st.pong_queued = false,
                Frame::Datagram(_) => st.datagrams_queued = st.datagrams_queued.saturating_sub(1),
                _ => {}
            }
            batch.push(&f);
        }
        st.error.is_some()
    }
}

/// Frames on their way out, in order: headers and small payloads copied
/// together, larger payloads by reference, so stream bytes reach TLS (which
/// copies them into its records) without a copy of their own.
struct Batch {
    /// What is written, in order; none empty.
    parts: Vec<Bytes>,
    /// Headers and small frames not yet in `parts`.
    small: BytesMut,
    /// Bytes in `parts` and `small`.
    len: usize,
}

impl Batch {
    /// Payloads of at least this many bytes are sent by reference (at least
    /// one, so that no part is empty).
    const BY_REF: usize = 2048;
    /// Slices handed to one vectored write.
    const SLICES: usize = 64;

    fn new() -> Batch {
        Batch {
            parts: Vec::new(),
            small: BytesMut::with_capacity(16 * 1024),
            len: 0,
        }
    }

    fn push(&mut self, f: &Frame) {
        let before = self.small.len();
        if let Some(payload) = f.encode_head(&mut self.small, Self::BY_REF) {
            self.len += self.small.len() - before + payload.len();
            self.parts.push(self.small.split().freeze());
            self.parts.push(payload);
        } else {
            self.len += self.small.len() - before;
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes everything gathered, then empties the batch.
    async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
        let mut i = 0;
        while i < self.parts.len() {
            let mut slices = [io::IoSlice::new(&[]); Self::SLICES];
            let mut k = 0;
            for (slot, part) in slices.iter_mut().zip(&self.parts[i..]) {
                *slot = io::IoSlice::new(part);
                k += 1;
            }
            let mut n = w.write_vectored(&slices[..k]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            // Drop what went out; a part written in part keeps its rest.
            while n > 0 {
                let part = &mut self.parts[i];
                let took = n.min(part.len());
                part.advance(took);
                n -= took;
                if part.is_empty() {
                    i += 1;
                }
            }
        }
        self.parts.clear();
        self.len = 0;
        Ok(())
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut w: W) {
    let mut batch = Batch::new();
    loop {
        let notified = shared.wake_writer.notified();
        let closing = shared.gather(&mut batch);
        if batch.is_empty() {
            if closing {
                let _ = tokio::time::timeout(CLOSE_LINGER, w.shutdown()).await;
                break;
            }
            tokio::select! {
                () = notified => continue,
                () = shared.stop.cancelled() => break,
            }
        }
        let write = async {
            batch.write_to(&mut w).await?;
            w.flush().await
        };
        tokio::select! {
            r = write => {
                if let Err(e) = r {
                    shared.shut(TcpError::Lost(e.to_string()), None);
                    break;
                }
            }
            () = shared.stop.cancelled() => break,
        }
        shared.last_sent.store(shared.now_ms(), Ordering::Relaxed);
    }
    shared.stop.cancel();
}

async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut r: R) {
    let mut buf = BytesMut::with_capacity(READ_BUF);
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_BUF);
        }
        let read = tokio::select! {
            r = r.read_buf(&mut buf) => r,
            () = shared.stop.cancelled() => return,
        };
        match read {
            Ok(0) => {
                let why = "the peer ended the TCP connection without closing the tunnel";
                shared.shut(TcpError::Lost(why.into()), None);
                return;
            }
            Ok(_) => shared.last_recv.store(shared.now_ms(), Ordering::Relaxed),
            Err(e) => {
                shared.shut(TcpError::Lost(e.to_string()), None);
                return;
            }
        }
        let mut st = shared.lock();
        loop {
            if st.error.is_some() {
                // Closing: what the peer sends now no longer matters.
                return;
            }
            match Frame::decode(&mut buf) {
                Ok(Some(Frame::Close { kind, code, reason })) => {
                    drop(st);
                    let reason = String::from_utf8_lossy(&reason).into_owned();
                    let err = if kind == CLOSE_PROTOCOL {
                        TcpError::Protocol(format!("the peer says: {reason}"))
                    } else {
                        TcpError::ApplicationClosed { code, reason }
                    };
                    shared.shut(err, None);
                    return;
                }
                Ok(Some(frame)) => {
                    if let Err(msg) = shared.on_frame(&mut st, frame) {
                        drop(st);
                        shared.violation(msg);
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    drop(st);
                    shared.violation(e.0);
                    return;
                }
            }
        }
    }
}

async fn liveness(shared: Arc<Shared>) {
    let keep_alive = shared.cfg.keep_alive.as_millis() as u64;
    let idle = shared.cfg.idle_timeout;
    let tick = (shared.cfg.keep_alive.min(idle) / 4).max(Duration::from_millis(5));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shared.stop.cancelled() => return,
        }
        let now = shared.now_ms();
        if now.saturating_sub(shared.last_recv.load(Ordering::Relaxed)) >= idle.as_millis() as u64 {
            shared.shut(TcpError::TimedOut(idle), None);
            return;
        }
        if now.saturating_sub(shared.last_sent.load(Ordering::Relaxed)) >= keep_alive {
            let mut st = shared.lock();
            if !st.ping_queued && st.error.is_none() {
                st.ping_queued = true;
                st.urgent.push_back(Frame::Ping);
                drop(st);
                shared.wake_writer.notify_one();
            }
        }
    }
}

impl TcpConn {
    /// Runs the multiplexer over `io` (an established TLS stream, or any
    /// reliable byte stream), as `side`. Needs a tokio runtime: spawns the
    /// connection's reader, writer and liveness tasks.
    pub fn new<S>(io: S, side: Side, remote: SocketAddr, cfg: &TcpConfig) -> TcpConn
    where
        S: AsyncRead + AsyncWrite + std::marker::Send + 'static,
    {
        let conn_window = cfg.connection_window.max(INITIAL_CONNECTION_WINDOW);
        let mut urgent = VecDeque::new();
        if conn_window > INITIAL_CONNECTION_WINDOW {
            urgent.push_back(Frame::Window {
                id: 0,
                increment: conn_window - INITIAL_CONNECTION_WINDOW,
            });
        }
        let state = State {
            streams: HashMap::new(),
            next_local: if side == Side::Client { 1 } else { 2 },
            max_remote: 0,
            remote_open: 0,
            incoming_bi: VecDeque::new(),
            incoming_uni: VecDeque::new(),
            datagrams: VecDeque::new(),
            urgent,
            data: VecDeque::new(),
            datagrams_queued: 0,
            datagram_bytes: 0,
            ping_queued: false,
            pong_queued: false,
            send_credit: u64::from(INITIAL_CONNECTION_WINDOW),
            credit_waiters: Vec::new(),
            recv_total: 0,
            recv_limit: u64::from(conn_window),
            released: 0,
            error: None,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            cfg: TcpConfig {
                connection_window: conn_window,
                ..cfg.clone()
            },
            side,
            remote,
            epoch: Instant::now(),
            last_recv: AtomicU64::new(0),
            last_sent: AtomicU64::new(0),
            wake_writer: Notify::new(),
            wake_accept: Notify::new(),
            wake_datagram: Notify::new(),
            closed: watch::Sender::new(None),
            stop: CancellationToken::new(),
        });
        let (r, w) = tokio::io::split(io);
        tokio::spawn(read_loop(shared.clone(), r));
        tokio::spawn(write_loop(shared.clone(), w));
        tokio::spawn(liveness(shared.clone()));
        shared.wake_writer.notify_one();
        TcpConn(Arc::new(Handle(shared)))
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.0.0
    }

    fn open(&self, uni: bool) -> Result<u32, TcpError> {
        let shared = self.shared();
        let mut st = shared.lock();
        if let Some(e) = &st.error {
            return Err(e.clone());
        }
        let id = st.next_local;
        st.next_local = id
            .checked_add(2)
            .ok_or_else(|| TcpError::Protocol("stream ids exhausted".into()))?;
        let window = if uni {
            0
        } else {
            shared.cfg.stream_window.max(INITIAL_STREAM_WINDOW)
        };
        st.streams
            .insert(id, Stream::new(uni, true, u64::from(window)));
        st.urgent.push_back(Frame::Open { id, uni });
        if !uni && window > INITIAL_STREAM_WINDOW {
            st.urgent.push_back(Frame::Window {
                id,
                increment: window - INITIAL_STREAM_WINDOW,
            });
        }
        drop(st);
        shared.wake_writer.notify_one();
        Ok(id)
    }

    async fn accept(&self, uni: bool) -> Result<u32, TcpError> {
        let shared = self.shared();
        loop {
            let notified = shared.wake_accept.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = shared.lock();
                let queue = if uni {
                    &mut st.incoming_uni
                } else {
                    &mut st.incoming_bi
                };
                if let Some(id) = queue.pop_front() {
                    return Ok(id);
                }
                if let Some(e) = &st.error {
                    return Err(e.clone());
                }
            }
            notified.await;
        }
    }

    fn send_half(&self, id: u32) -> MuxSend {
        MuxSend {
            conn: self.0.clone(),
            id,
        }
    }

    fn recv_half(&self, id: u32) -> MuxRecv {
        MuxRecv {
            conn: self.0.clone(),
            id,
        }
    }

    /// Opens a bidirectional stream. The peer sees it at once (no data needed);
    /// a peer over its stream limit refuses it with [`STREAM_REFUSED`].
    pub fn open_bi(&self) -> Result<(MuxSend, MuxRecv), TcpError> {
        let id = self.open(false)?;
        Ok((self.send_half(id), self.recv_half(id)))
    }

    /// Waits for the peer to open a bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(MuxSend, MuxRecv), TcpError> {
        let id = self.accept(false).await?;
        Ok((self.send_half(id), self.recv_half(id)))
    }

    /// Opens a unidirectional stream (only this side sends).
    pub fn open_uni(&self) -> Result<MuxSend, TcpError> {
        let id = self.open(true)?;
        Ok(self.send_half(id))
    }

    /// Waits for the peer to open a unidirectional stream.
    pub async fn accept_uni(&self) -> Result<MuxRecv, TcpError> {
        let id = self.accept(true).await?;
        Ok(self.recv_half(id))
    }

    /// Queues a datagram. Like UDP, it is dropped silently when too many are
    /// queued already; fails only when too large or the connection is gone.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), SendDatagramError> {
        if data.len() > MAX_DATAGRAM {
            return Err(SendDatagramError::TooLarge);
        }
        let shared = self.shared();
        let mut st = shared.lock();
        if let Some(e) = &st.error {
            return Err(SendDatagramError::ConnectionLost(e.clone().into()));
        }
        if st.datagrams_queued >= shared.cfg.datagram_queue {
            trace!("dropping a datagram: send queue full");
            return Ok(());
        }
        st.datagrams_queued += 1;
        st.urgent.push_back(Frame::Datagram(data));
        drop(st);
        shared.wake_writer.notify_one();
        Ok(())
    }

    /// Waits for the next datagram from the peer.
    pub async fn read_datagram(&self) -> Result<Bytes, TcpError> {
        let shared = self.shared();
        loop {
            let notified = shared.wake_datagram.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = shared.lock();
                if let Some(d) = st.datagrams.pop_front() {
                    st.datagram_bytes = st.datagram_bytes.saturating_sub(d.len());
                    return Ok(d);
                }
                if let Some(e) = &st.error {
                    return Err(e.clone());
                }
            }
            notified.await;
        }
    }

    /// Largest datagram [`TcpConn::send_datagram`] accepts.
    pub fn max_datagram_size(&self) -> usize {
        MAX_DATAGRAM
    }

    /// Closes the connection: every stream fails at once (unsent data is
    /// dropped, as with QUIC), and the peer is told `code` and `reason`.
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.shared().close(code, reason);
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<TcpError> {
        self.shared().lock().error.clone()
    }

    /// Waits until the connection ends, and says why.
    pub async fn closed(&self) -> TcpError {
        let mut rx = self.shared().closed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(e) => e.clone().unwrap_or_else(|| TcpError::Lost("closed".into())),
            Err(_) => TcpError::Lost("closed".into()),
        }
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.shared().remote
    }

    /// Which end of the connection this is.
    pub fn side(&self) -> Side {
        self.shared().side
    }
}

/// The sending half of a multiplexed stream. Dropping it finishes the stream
/// (as quinn's `SendStream` does).
pub struct MuxSend {
    conn: Arc<Handle>,
    id: u32,
}

/// The receiving half of a multiplexed stream. Dropping it before the end
/// stops the stream with code 0 (as quinn's `RecvStream` does).
pub struct MuxRecv {
    conn: Arc<Handle>,
    id: u32,
}

impl fmt::Debug for MuxSend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxSend").field("id", &self.id).finish()
    }
}

impl fmt::Debug for MuxRecv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxRecv").field("id", &self.id).finish()
    }
}

impl MuxSend {
    /// The stream's id (odd: opened by the client side; even: by the server side).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends up to `len` bytes made by `take(n)` as credit allows; when
    /// `copies` (`take` copies them), also only while the writer's queue has
    /// room.
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        len: usize,
        copies: bool,
        take: impl FnOnce(usize) -> Bytes,
    ) -> Poll<io::Result<usize>> {
        let shared = &self.conn.0;
        let mut guard = shared.lock();
        let st = &mut *guard;
        if let Some(e) = &st.error {
            return Poll::Ready(Err(conn_io_err(e)));
        }
        let conn_credit = st.send_credit;
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(io_err(io::ErrorKind::BrokenPipe, "stream is gone")));
        };
        match s.send {
            Send::Open => {}
            Send::Finished | Send::Reset => {
                let msg = "write on a finished or reset stream";
                return Poll::Ready(Err(io_err(io::ErrorKind::BrokenPipe, msg)));
            }
            Send::Stopped(code) => {
                let msg = format!("stream stopped by peer (code {code})");
                return Poll::Ready(Err(io_err(io::ErrorKind::ConnectionReset, msg)));
            }
        }
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let n = (len as u64)
            .min(s.credit)
            .min(conn_credit)
            .min(MAX_DATA as u64) as usize;
        if n > 0 && copies && s.queued >= SEND_QUEUE {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if n == 0 {
            if s.credit == 0 {
                s.write_waker = Some(cx.waker().clone());
            } else if !st.credit_waiters.iter().any(|w| w.will_wake(cx.waker())) {
                // One entry per waiting task, however often it polls.
                st.credit_waiters.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        s.credit -= n as u64;
        st.send_credit -= n as u64;
        s.queued += n;
        st.data.push_back(Frame::Data {
            id: self.id,
            data: take(n),
        });
        drop(guard);
        shared.wake_writer.notify_one();
        Poll::Ready(Ok(n))
    }

    /// Sends `data` whole, without copying it.
    pub async fn write_chunk(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            std::future::poll_fn(|cx| self.poll_send(cx, data.len(), false, |n| data.split_to(n)))
                .await?;
        }
        Ok(())
    }

    /// Half-closes the stream: the peer reads the end after the data sent.
    pub fn finish(&mut self) -> Result<(), StreamClosed> {
        self.end(None)
    }

    /// Abandons the stream: the peer's reads fail with `code`; unsent data may be lost.
    pub fn reset(&mut self, code: u32) -> Result<(), StreamClosed> {
        self.end(Some(code))
    }

    fn end(&mut self, reset: Option<u32>) -> Result<(), StreamClosed> {
        let shared = &self.conn.0;
        let mut st = shared.lock();
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Err(StreamClosed);
        };
        if s.send != Send::Open {
            return Err(StreamClosed);
        }
        let frame = match reset {
            None => {
                s.send = Send::Finished;
                Frame::Fin { id: self.id }
            }
            Some(code) => {
                s.send = Send::Reset;
                Frame::Reset { id: self.id, code }
            }
        };
        if st.error.is_none() {
            st.data.push_back(frame);
            drop(st);
            shared.wake_writer.notify_one();
        }
        Ok(())
    }
}

impl Drop for MuxSend {
    fn drop(&mut self) {
        let _ = self.end(None);
        let shared = &self.conn.0;
        let mut st = shared.lock();
        shared.drop_half(&mut st, self.id);
    }
}

impl AsyncWrite for MuxSend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, buf.len(), true, |n| Bytes::copy_from_slice(&buf[..n]))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.end(None) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => {
                // Already finished: fine; reset or stopped: say so.
                let st = this.conn.0.lock();
                match st.streams.get(&this.id).map(|s| s.send) {
                    Some(Send::Finished) => Poll::Ready(Ok(())),
                    Some(Send::Stopped(code)) => Poll::Ready(Err(io_err(
                        io::ErrorKind::ConnectionReset,
                        format!("stream stopped by peer (code {code})"),
                    ))),
                    _ => Poll::Ready(Err(io_err(io::ErrorKind::BrokenPipe, "stream was reset"))),
                }
            }
        }
    }
}

impl MuxRecv {
    /// The stream's id (odd: opened by the client side; even: by the server side).
    pub fn id(&self) -> u32 {
        self.id
    }

    fn poll_chunk(&self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        let mut out = [Bytes::new()];
        self.poll_chunks(cx, max, &mut out)
            .map_ok(|got| got.map(|_| std::mem::take(&mut out[0])))
    }

    /// Fills `out` with the chunks buffered, each of at most `max` bytes,
    /// waiting only when there is none: how many, or `None` at the end.
    fn poll_chunks(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut [Bytes],
    ) -> Poll<io::Result<Option<usize>>> {
        let shared = &self.conn.0;
        let mut guard = shared.lock();
        let st = &mut *guard;
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(io_err(io::ErrorKind::BrokenPipe, "stream is gone")));
        };
        if !s.buf.is_empty() && !out.is_empty() {
            let (mut k, mut n) = (0, 0);
            while let (Some(slot), Some(front)) = (out.get_mut(k), s.buf.front_mut()) {
                let chunk = if front.len() <= max {
                    s.buf.pop_front().unwrap_or_default()
                } else {
                    front.split_to(max)
                };
                n += chunk.len();
                *slot = chunk;
                k += 1;
            }
            s.buffered -= n;
            if s.recv == Recv::Open {
                s.released += n as u64;
                let threshold = u64::from(shared.cfg.stream_window.max(INITIAL_STREAM_WINDOW) / 2);
                if s.released >= threshold {
                    let increment = u32::try_from(s.released).unwrap_or(u32::MAX);
                    s.recv_limit += u64::from(increment);
                    s.released -= u64::from(increment);
                    st.urgent.push_back(Frame::Window {
                        id: self.id,
                        increment,
                    });
                    shared.wake_writer.notify_one();
                }
            }
            shared.release_conn(st, n);
            return Poll::Ready(Ok(Some(k)));
        }
        match s.recv {
            Recv::Fin | Recv::Done => {
                s.recv = Recv::Done;
                Poll::Ready(Ok(None))
            }
            Recv::Reset(code) => Poll::Ready(Err(io_err(
                io::ErrorKind::ConnectionReset,
                format!("stream reset by peer (code {code})"),
            ))),
            Recv::Stopped => Poll::Ready(Err(io_err(
                io::ErrorKind::BrokenPipe,
                "read on a stopped stream",
            ))),
            Recv::Open => match &st.error {
                Some(e) => Poll::Ready(Err(conn_io_err(e))),
                None => {
                    s.read_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
        }
    }

    /// The next chunk of at most `max` bytes, without copying; `None` at
    /// the end of the stream.
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx, max.max(1))).await
    }

    /// The chunks already received, up to `bufs.len()` of them (waiting
    /// only for the first), without copying: how many were filled, or
    /// `None` at the end of the stream.
    pub async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> io::Result<Option<usize>> {
        if bufs.is_empty() {
            return Ok(Some(0));
        }
        std::future::poll_fn(|cx| self.poll_chunks(cx, usize::MAX, bufs)).await
    }

    /// Asks the peer to stop sending (its writes fail with `code`) and drops
    /// what is buffered.
    pub fn stop(&mut self, code: u32) -> Result<(), StreamClosed> {
        let shared = &self.conn.0;
        let mut st = shared.lock();
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Err(StreamClosed);
        };
        let was = s.recv;
        match was {
            Recv::Open | Recv::Fin => s.recv = Recv::Stopped,
            _ => return Err(StreamClosed),
        }
        shared.discard(&mut st, self.id);
        if was == Recv::Open && st.error.is_none() {
            st.urgent.push_back(Frame::Stop { id: self.id, code });
            drop(st);
            shared.wake_writer.notify_one();
        }
        Ok(())
    }
}

impl Drop for MuxRecv {
    fn drop(&mut self) {
        let _ = self.stop(0);
        let shared = &self.conn.0;
        let mut st = shared.lock();
        shared.drop_half(&mut st, self.id);
    }
}

impl AsyncRead for MuxRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match self.poll_chunk(cx, buf.remaining()) {
            Poll::Ready(Ok(Some(chunk))) => {
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a connection over an in-memory pipe whose far end the test
    /// holds raw: it opens streams 1, 3 and 5 with `credit` bytes each, then
    /// reads nothing until told, so the connection's writer blocks once the
    /// pipe is full.
    async fn stalled(credit: u32) -> (TcpConn, tokio::io::DuplexStream) {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let cfg = TcpConfig {
            // The far end never answers a ping.
            keep_alive: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            ..TcpConfig::default()
        };
        let conn = TcpConn::new(
            near,
            Side::Server,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            &cfg,
        );
        let mut frames = BytesMut::new();
        let increment = 4 * credit;
        Frame::Window { id: 0, increment }.encode(&mut frames);
        for id in [1, 3, 5] {
            Frame::Open { id, uni: false }.encode(&mut frames);
            let increment = credit - INITIAL_STREAM_WINDOW;
            Frame::Window { id, increment }.encode(&mut frames);
        }
        far.write_all(&frames).await.unwrap();
        (conn, far)
    }

    /// Runs `write` with a counter of the bytes it got accepted.
    fn counted<F, Fut>(write: F) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(Arc<AtomicU64>) -> Fut,
        Fut: std::future::Future<Output = ()> + std::marker::Send + 'static,
    {
        let sent = Arc::new(AtomicU64::new(0));
        (sent.clone(), tokio::spawn(write(sent)))
    }

    /// A copying writer (`AsyncWrite`, as a splice from a socket uses) stops
    /// once SEND_QUEUE of its bytes are queued, far below its credit, and
    /// goes on when the writer takes them; a writer handing over whole
    /// chunks is bounded by its credit alone; and another stream's short
    /// copying write does not wait behind either.
    #[tokio::test]
    async fn copying_writes_wait_for_room_in_their_streams_queue() {
        let credit = 8 * 1024 * 1024;
        let (conn, mut far) = stalled(credit).await;
        let (mut copying, _r1) = conn.accept_bi().await.unwrap();
        let (mut chunks, _r3) = conn.accept_bi().await.unwrap();
        let (mut answer, _r5) = conn.accept_bi().await.unwrap();
        let settle = Duration::from_millis(300);

        let (copied, copier) = counted(|sent| async move {
            let block = vec![7u8; 64 * 1024];
            while let Ok(n) = copying.write(&block).await {
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        tokio::time::sleep(settle).await;
        let stalled_at = copied.load(Ordering::Relaxed);
        // Its queue, plus what the writer took before the pipe filled.
        let most = (SEND_QUEUE + WRITE_BATCH + 2 * MAX_DATA + 64 * 1024) as u64;
        assert!(
            stalled_at >= SEND_QUEUE as u64,
            "accepted only {stalled_at} bytes"
        );
        assert!(
            stalled_at <= most,
            "accepted {stalled_at} bytes, more than {most}"
        );

        let (handed, chunker) = counted(|sent| async move {
            let chunk = Bytes::from(vec![9u8; 64 * 1024]);
            while chunks.write_chunk(chunk.clone()).await.is_ok() {
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        tokio::time::sleep(settle).await;
        let handed = handed.load(Ordering::Relaxed);
        assert_eq!(handed, u64::from(credit), "whole chunks up to the credit");

        tokio::time::timeout(Duration::from_secs(5), answer.write_all(b"200 OK"))
            .await
            .expect("a short answer waited behind other streams' bytes")
            .unwrap();

        // The far end reads again: the copying writer goes on.
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while far.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while copied.load(Ordering::Relaxed) < 2 * most && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let resumed = copied.load(Ordering::Relaxed);
        assert!(
            resumed >= 2 * most,
            "stuck at {resumed} bytes once the pipe drained"
        );
        for t in [copier, chunker, drain] {
            t.abort();
        }
    }
}
