//! What every listening socket of a Warren node does to survive floods and
//! slow clients, in one place:
//!
//! - an accept error (out of file descriptors, out of memory) never ends the
//!   accept loop: the loop backs off (1 ms doubling to 100 ms) and carries on,
//!   so the listener serves again as soon as descriptors are free;
//! - open connections are capped, in all ([`ConnLimits::max_connections`])
//!   and per client address ([`ConnLimits::max_per_ip`]); a connection over a
//!   cap gets a short refusal (for HTTP listeners a `503`) and is closed at once;
//! - HTTP listeners ([`serve_http`], [`serve_https`]) close a connection that has not started a
//!   request within [`ConnLimits::header_timeout`] (whatever bytes it sends:
//!   a dribbled HTTP/2 preface counts for nothing), set hyper's header read
//!   timeout to the same, and close a connection that has had no request in
//!   flight for [`ConnLimits::idle_timeout`] (pings do not keep it open);
//! - other listeners close a connection that moves no byte for the idle
//!   timeout ([`ConnGuard::track`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Most connections open at once from one client address (default
    /// 1 000; 0 = no per-address cap, for a node behind a proxy).
    pub max_per_ip: usize,
    /// HTTP listeners: longest wait for a connection's first request and for
    /// any complete request head (default 20 s).
    pub header_timeout: Duration,
    /// HTTP listeners: a connection with no request in flight for this long is
    /// closed; others: one that moves no byte for this long (default 120 s,
    /// longer than any worker's wall-clock limit).
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 10_000,
            max_per_ip: 1_000,
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

/// Counts a listener's open connections against its caps.
#[derive(Debug, Clone)]
pub struct ConnSlots {
    limits: ConnLimits,
    open: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnSlots {
    /// Slots for `limits`.
    pub fn new(limits: ConnLimits) -> Self {
        ConnSlots {
            limits,
            open: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The limits these slots apply.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// A slot for one more connection (from `peer`, when known), or `None`
    /// at a cap.
    pub fn try_take(&self, peer: Option<IpAddr>) -> Option<ConnGuard> {
        let permit = self.open.clone().try_acquire_owned().ok()?;
        let ip_slot = match peer {
            Some(ip) if self.limits.max_per_ip > 0 => {
                let mut map = self.per_ip.lock().ok()?;
                let n = map.entry(ip).or_insert(0);
                if *n >= self.limits.max_per_ip {
                    return None;
                }
                *n += 1;
                Some(IpSlot {
                    ip,
                    map: self.per_ip.clone(),
                })
            }
            _ => None,
        };
        Some(ConnGuard {
            _permit: permit,
            _ip_slot: ip_slot,
            state: Arc::new(ConnState::new()),
            limits: self.limits,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limits.max_connections.max(1) - self.open.available_permits()
    }
}

/// One client address's share of the per-address cap.
#[derive(Debug)]
struct IpSlot {
    ip: IpAddr,
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock()
            && let Some(n) = map.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// One accepted connection's slots and clocks; the slots are freed when the
/// guard (and every [`RequestToken`] of it) is dropped.
#[derive(Debug)]
pub struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    _ip_slot: Option<IpSlot>,
    state: Arc<ConnState>,
    limits: ConnLimits,
}

/// How an idle connection is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// No byte moved (tracked I/O) for the idle timeout.
    Bytes,
    /// No request started within the header timeout, or none in flight for
    /// the idle timeout (HTTP: bytes such as pings do not count).
    Requests,
}

impl ConnGuard {
    /// Wraps `io` so its reads and writes count as activity ([`Idle::Bytes`]).
    pub fn track<T>(&self, io: T) -> Tracked<T> {
        Tracked {
            inner: io,
            state: self.state.clone(),
        }
    }

    /// A handle that marks requests started on this connection
    /// ([`Idle::Requests`]).
    pub fn requests(&self) -> Requests {
        Requests(self.state.clone())
    }

    /// Runs `serve` (the connection) until it ends, or until the connection
    /// is idle by `idle`; `None` when it was cut.
    pub async fn run<F: Future>(self, idle: Idle, serve: F) -> Option<F::Output> {
        let limits = self.limits;
        let state = self.state.clone();
        let watchdog = async move {
            loop {
                let in_flight = state.in_flight.load(Ordering::Relaxed);
                if idle == Idle::Requests
                    && state.requests.load(Ordering::Relaxed) == 0
                    && state.start.elapsed() >= limits.header_timeout
                {
                    return;
                }
                let quiet = state.quiet_for();
                if in_flight == 0 && quiet >= limits.idle_timeout {
                    return;
                }
                let mut next = limits.idle_timeout.saturating_sub(quiet);
                if idle == Idle::Requests && state.requests.load(Ordering::Relaxed) == 0 {
                    next = next.min(limits.header_timeout.saturating_sub(state.start.elapsed()));
                }
                tokio::time::sleep(next.max(Duration::from_millis(10))).await;
            }
        };
        tokio::select! {
            out = serve => Some(out),
            () = watchdog => None,
        }
    }
}

/// Starts requests on a connection (see [`ConnGuard::request`]).
#[derive(Debug, Clone)]
pub struct Requests(Arc<ConnState>);

impl Requests {
    /// Marks a request started; in flight until the token is dropped.
    pub fn start(&self) -> RequestToken {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        self.0.touch();
        RequestToken(self.0.clone())
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct RequestToken(Arc<ConnState>);

impl Drop for RequestToken {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A connection's clocks.
#[derive(Debug)]
struct ConnState {
    start: Instant,
    last_ms: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicUsize,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
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
    state: Arc<ConnState>,
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
            self.state.touch();
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
            self.state.touch();
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
            self.state.touch();
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
                    match self.slots.try_take(Some(peer.ip())) {
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

/// How an HTTP listener tunes hyper beyond the shared limits (head size,
/// header count); `|_| {}` for hyper's defaults.
#[cfg(feature = "http-server")]
pub type HttpTuning =
    fn(&mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>);

/// A hyper service an HTTP listener can serve, answering with bodies `B`.
#[cfg(feature = "http-server")]
pub trait HttpService<B>:
    hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<B>,
        Future: Send + 'static,
        Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

#[cfg(feature = "http-server")]
impl<S, B> HttpService<B> for S where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Future: Send + 'static,
            Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A response body an HTTP listener can stream.
#[cfg(feature = "http-server")]
pub trait ResponseBody:
    http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

#[cfg(feature = "http-server")]
impl<B> ResponseBody for B where
    B: http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

/// Serves HTTP/1.1 and h2c with `service` on `listener` within `limits`
/// (the backoff, the caps with a 503, a first request and every request head
/// within the header timeout, no request in flight for the idle timeout
/// closes the connection) until `shutdown` completes. Connections already
/// open are left to finish.
#[cfg(feature = "http-server")]
pub async fn serve_http<S, B>(
    name: &'static str,
    listener: TcpListener,
    limits: ConnLimits,
    tuning: HttpTuning,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    serve(name, listener, limits, tuning, None, service, shutdown).await
}

/// As [`serve_http`], over TLS with `tls` (HTTP/1.1, and HTTP/2 when `tls`
/// offers `h2` by ALPN). The handshake counts against the header timeout, so
/// a client that stalls it is cut like one that never sends a request.
#[cfg(feature = "http-server")]
pub async fn serve_https<S, B>(
    name: &'static str,
    listener: TcpListener,
    limits: ConnLimits,
    tuning: HttpTuning,
    tls: std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve(
        name,
        listener,
        limits,
        tuning,
        Some(acceptor),
        service,
        shutdown,
    )
    .await
}

#[cfg(feature = "http-server")]
async fn serve<S, B>(
    name: &'static str,
    listener: TcpListener,
    limits: ConnLimits,
    tuning: HttpTuning,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    tokio::pin!(shutdown);
    let acceptor = TcpAcceptor::new(name, listener, limits, HTTP_REFUSAL);
    let mut backoff = Backoff::default();
    loop {
        let (stream, peer, guard) = tokio::select! {
            a = acceptor.accept(&mut backoff) => a,
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let requests = guard.requests();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let token = requests.start();
                let call = hyper::service::Service::call(&service, req);
                async move {
                    let resp = call.await?;
                    Ok::<_, S::Error>(resp.map(|body| InFlightBody {
                        inner: body,
                        _token: token,
                    }))
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            builder.http2().timer(TokioTimer::new());
            tuning(&mut builder);
            let connection = async move {
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Err(e) => {
                            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                        }
                    },
                }
            };
            let _ = guard.run(Idle::Requests, connection).await;
        });
    }
}

/// A response body that keeps its request in flight until it is done with.
#[cfg(feature = "http-server")]
#[derive(Debug)]
pub struct InFlightBody<B> {
    inner: B,
    _token: RequestToken,
}

#[cfg(feature = "http-server")]
impl<B: http_body::Body + Unpin> http_body::Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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

    #[test]
    fn one_address_cannot_take_every_slot() {
        let slots = ConnSlots::new(ConnLimits {
            max_per_ip: 2,
            ..ConnLimits::default()
        });
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = slots.try_take(Some(a)).expect("first");
        let _second = slots.try_take(Some(a)).expect("second");
        assert!(
            slots.try_take(Some(a)).is_none(),
            "a third from one address"
        );
        let _other = slots.try_take(Some(b)).expect("another address");
        drop(first);
        assert!(slots.try_take(Some(a)).is_some(), "a slot comes back");
    }

    #[tokio::test]
    async fn a_connection_without_requests_is_cut_and_one_in_flight_is_not() {
        let slots = ConnSlots::new(ConnLimits {
            header_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(300),
            ..ConnLimits::default()
        });
        // No request ever starts: cut at the header timeout.
        let guard = slots.try_take(None).expect("slot");
        let started = Instant::now();
        assert!(
            guard
                .run(Idle::Requests, std::future::pending::<()>())
                .await
                .is_none()
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        // A request in flight for longer than the idle timeout is not cut.
        let guard = slots.try_take(None).expect("slot");
        let requests = guard.requests();
        let long = async move {
            let _token = requests.start();
            tokio::time::sleep(Duration::from_millis(800)).await;
        };
        assert!(guard.run(Idle::Requests, long).await.is_some());
        assert_eq!(slots.open(), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_is_cut_and_a_busy_one_is_not() {
        let slots = ConnSlots::new(ConnLimits {
            idle_timeout: Duration::from_millis(300),
            ..ConnLimits::default()
        });
        // Busy: a byte every 100 ms for a second outlives the idle timeout.
        let guard = slots.try_take(None).expect("slot");
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
            guard.run(Idle::Bytes, busy).await.is_some(),
            "a busy connection runs to its end"
        );
        reader.abort();
        // Idle: cut once nothing moves for the timeout.
        let guard = slots.try_take(None).expect("slot");
        let started = Instant::now();
        let cut = guard.run(Idle::Bytes, std::future::pending::<()>()).await;
        assert!(cut.is_none(), "an idle connection is cut");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(slots.open(), 0, "its slot is freed");
    }
}
