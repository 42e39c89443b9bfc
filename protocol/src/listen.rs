//! What every listening socket of a Warren node does to survive floods and
//! slow clients, in one place:
//!
//! - an accept error (out of file descriptors, out of memory) never ends the
//!   accept loop: the loop backs off (1 ms doubling to 100 ms) and carries on,
//!   so the listener serves again as soon as descriptors are free;
//! - open connections are capped ([`ConnLimits::max_connections`]); a
//!   connection over the cap gets a short refusal (for HTTP listeners a `503`)
//!   and is closed at once;
//! - a connection on which no byte moves for [`ConnLimits::idle_timeout`] is
//!   closed ([`ConnGuard::run`] with [`ConnGuard::track`]);
//! - HTTP listeners also set hyper's header read timeout to
//!   [`ConnLimits::header_timeout`] (a request head that does not arrive in
//!   time closes the connection; on HTTP/1.1 it also bounds how long an idle
//!   keep-alive connection waits for its next request).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Limits a listener applies to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once (default 10 000).
    pub max_connections: usize,
    /// Longest wait for a complete request head, HTTP listeners only
    /// (default 20 s).
    pub header_timeout: Duration,
    /// A connection with no traffic either way for this long is closed
    /// (default 120 s: longer than any worker's wall-clock limit).
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// What an HTTP listener answers a connection over its cap.
pub const HTTP_REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 42\r\nconnection: close\r\n\r\ntoo many open connections; try again later\n";

/// Backs an accept loop off after an error, so a full descriptor table
/// neither ends the loop nor spins it.
#[derive(Debug, Default)]
pub struct Backoff {
    delay: Duration,
    logged: bool,
}

/// The longest pause between two accepts after errors.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

impl Backoff {
    /// After a failed accept: waits (longer each time in a row) unless the
    /// error concerned only the one connection.
    pub async fn failed(&mut self, what: &str, e: &io::Error) {
        use io::ErrorKind::*;
        if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
            return;
        }
        if !self.logged {
            tracing::warn!(listener = what, error = %e, "accept failed; backing off");
            self.logged = true;
        }
        self.delay = (self.delay * 2).clamp(Duration::from_millis(1), MAX_BACKOFF);
        tokio::time::sleep(self.delay).await;
    }

    /// After a successful accept.
    pub fn succeeded(&mut self) {
        if self.logged {
            tracing::info!("accepting again");
        }
        self.delay = Duration::ZERO;
        self.logged = false;
    }
}

/// Counts a listener's open connections against its cap.
#[derive(Debug, Clone)]
pub struct ConnSlots {
    limits: ConnLimits,
    open: Arc<Semaphore>,
}

impl ConnSlots {
    /// Slots for `limits.max_connections` connections.
    pub fn new(limits: ConnLimits) -> Self {
        ConnSlots {
            limits,
            open: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        }
    }

    /// The limits these slots apply.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// A slot for one more connection, or `None` at the cap.
    pub fn try_take(&self) -> Option<ConnGuard> {
        let permit = self.open.clone().try_acquire_owned().ok()?;
        Some(ConnGuard {
            _permit: permit,
            activity: Arc::new(Activity::new()),
            idle: self.limits.idle_timeout,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limits.max_connections.max(1) - self.open.available_permits()
    }
}

/// One accepted connection's slot and idle clock; the slot is freed when the
/// guard is dropped.
#[derive(Debug)]
pub struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    idle: Duration,
}

impl ConnGuard {
    /// Wraps `io` so its reads and writes count as activity.
    pub fn track<T>(&self, io: T) -> Tracked<T> {
        Tracked {
            inner: io,
            activity: self.activity.clone(),
        }
    }

    /// Runs `serve` (the connection) until it ends, or until the tracked I/O
    /// has been idle for the idle timeout; `None` when it was cut for idling.
    pub async fn run<F: Future>(self, serve: F) -> Option<F::Output> {
        let idle = self.idle;
        let activity = self.activity.clone();
        let watchdog = async move {
            loop {
                let quiet = activity.quiet_for();
                if quiet >= idle {
                    return;
                }
                tokio::time::sleep(idle - quiet).await;
            }
        };
        tokio::select! {
            out = serve => Some(out),
            () = watchdog => None,
        }
    }
}

/// When a connection last moved a byte.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn quiet_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// I/O whose traffic keeps its connection's idle clock running.
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP listener with the backoff and the cap applied.
#[derive(Debug)]
pub struct TcpAcceptor {
    listener: TcpListener,
    slots: ConnSlots,
    refusal: &'static [u8],
    name: &'static str,
}

impl TcpAcceptor {
    /// Accepts on `listener` (named `name` in logs) within `limits`; a
    /// connection over the cap is sent `refusal` (may be empty) and closed.
    pub fn new(
        name: &'static str,
        listener: TcpListener,
        limits: ConnLimits,
        refusal: &'static [u8],
    ) -> Self {
        TcpAcceptor {
            listener,
            slots: ConnSlots::new(limits),
            refusal,
            name,
        }
    }

    /// The limits applied.
    pub fn limits(&self) -> &ConnLimits {
        self.slots.limits()
    }

    /// The address listened on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection within the cap. Never fails: errors back off,
    /// connections over the cap are refused here. Cancel-safe.
    pub async fn accept(&self, backoff: &mut Backoff) -> (TcpStream, SocketAddr, ConnGuard) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    backoff.succeeded();
                    match self.slots.try_take() {
                        Some(guard) => return (stream, peer, guard),
                        None => {
                            tracing::debug!(listener = self.name, %peer, "over the connection cap; refused");
                            // Best effort, without waiting on the peer.
                            let _ = stream.try_write(self.refusal);
                        }
                    }
                }
                Err(e) => backoff.failed(self.name, &e).await,
            }
        }
    }
}

/// Serves HTTP/1.1 and h2c with `service` on `listener` within `limits`
/// (the backoff, the cap with a 503, the header and idle timeouts) until
/// `shutdown` completes. Connections already open are left to finish.
#[cfg(feature = "http-server")]
pub async fn serve_http<S, B>(
    name: &'static str,
    listener: TcpListener,
    limits: ConnLimits,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    tokio::pin!(shutdown);
    let acceptor = TcpAcceptor::new(name, listener, limits, HTTP_REFUSAL);
    let mut backoff = Backoff::default();
    loop {
        let (stream, _, guard) = tokio::select! {
            a = acceptor.accept(&mut backoff) => a,
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            builder.http2().timer(TokioTimer::new());
            let io = TokioIo::new(guard.track(stream));
            let _ = guard.run(builder.serve_connection(io, service)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_over_the_cap_are_refused_and_slots_come_back() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let limits = ConnLimits {
            max_connections: 1,
            ..ConnLimits::default()
        };
        let acceptor = Arc::new(TcpAcceptor::new("test", l, limits, HTTP_REFUSAL));
        let a2 = acceptor.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut b = Backoff::default();
            loop {
                let conn = a2.accept(&mut b).await;
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
        });
        let _first = TcpStream::connect(addr).await.expect("first");
        let held = rx.recv().await.expect("accepted");
        let mut second = TcpStream::connect(addr).await.expect("second");
        let mut answer = Vec::new();
        second.read_to_end(&mut answer).await.expect("read");
        assert!(answer.starts_with(b"HTTP/1.1 503"), "{answer:?}");
        drop(held);
        let mut third = TcpStream::connect(addr).await.expect("third");
        third.write_all(b"x").await.expect("write");
        let (_, _, _guard) = rx.recv().await.expect("accepted after a slot freed");
    }

    #[tokio::test]
    async fn an_idle_connection_is_cut_and_a_busy_one_is_not() {
        let slots = ConnSlots::new(ConnLimits {
            idle_timeout: Duration::from_millis(300),
            ..ConnLimits::default()
        });
        // Busy: a byte every 100 ms for a second outlives the idle timeout.
        let guard = slots.try_take().expect("slot");
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = guard.track(a);
        let busy = async move {
            for _ in 0..10 {
                a.write_all(b"x").await.expect("write");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = b.read_to_end(&mut sink).await;
        });
        assert!(
            guard.run(busy).await.is_some(),
            "a busy connection runs to its end"
        );
        reader.abort();
        // Idle: cut once nothing moves for the timeout.
        let guard = slots.try_take().expect("slot");
        let started = Instant::now();
        let cut = guard.run(std::future::pending::<()>()).await;
        assert!(cut.is_none(), "an idle connection is cut");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(slots.open(), 0, "its slot is freed");
    }
}
