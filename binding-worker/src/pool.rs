//! CONNECT tunnels to iris, pooled per (worker, service, scheme, authority).
//! Each pooled tunnel carries an HTTP/1.1 connection to the origin (hyper);
//! after a response body ends its connection goes back to the pool, so a warm
//! path costs no handshakes. Idle tunnels are closed after the idle timeout.
//!
//! iris is reached over TLS with this node's certificate (mutual TLS: the
//! front door serves only clients with a certificate from the cluster CA), or
//! over in-memory pipes when it runs in this process. Each CONNECT names the
//! worker and binding it is for; iris opens it only when that worker binds
//! the service, so a tunnel is pooled for one worker only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;
use tracing::debug;
use warren_protocol::binding::BindingContext;
use warren_protocol::pipe::PipeDialer;
use warren_protocol::{ErrorCode, ProxyError};
use warren_store::Change;

/// Error type of streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of requests sent to origins.
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// Where iris's CONNECT front door is and how to talk to it.
#[derive(Debug, Clone)]
pub struct FrontDoorConfig {
    /// The front door's address.
    pub addr: SocketAddr,
    /// TLS to the front door: this node's identity as a client (its
    /// certificate, trusting only the cluster CA), ALPN `http/1.1`.
    pub tls: Arc<rustls::ClientConfig>,
    /// Timeout for reaching the front door and getting its answer (default 30 s:
    /// iris itself tries each origin address with its own timeout).
    pub connect_timeout: Duration,
    /// Idle tunnels are closed after this long (default 90 s).
    pub idle_timeout: Duration,
    /// Most idle tunnels kept per key (default 64).
    pub max_idle_per_key: usize,
    /// A front door in this process, reached over in-memory pipes instead
    /// of TCP to `addr` (default none).
    pub in_process: Option<PipeDialer>,
}

/// A connection to the front door: TCP, or an in-memory pipe.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl FrontDoorConfig {
    /// Defaults for a front door at `addr` reached with `tls`, the node
    /// identity's client configuration (its ALPN is set here).
    pub fn new(addr: SocketAddr, tls: &rustls::ClientConfig) -> Self {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        FrontDoorConfig {
            addr,
            tls: Arc::new(tls),
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_key: 64,
            in_process: None,
        }
    }
}

/// What a pooled tunnel reaches: a tunnel is reused only for the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TunnelKey {
    /// The worker the tunnel was opened for (iris checked its binding).
    pub worker: String,
    /// VPC service id.
    pub service_id: String,
    /// `http` or `https` (iris originates TLS for `https`).
    pub scheme: String,
    /// URL host (no port; the port never routes): SNI for `https`.
    pub authority: String,
}

struct Idle {
    sender: SendRequest<ReqBody>,
    since: Instant,
}

struct PoolInner {
    config: FrontDoorConfig,
    idle: Mutex<HashMap<TunnelKey, Vec<Idle>>>,
    /// The store's change feed, when the pool follows it: a changed service
    /// may have a new origin, which a tunnel iris opened earlier does not
    /// reach, so every pooled tunnel is dropped (edits are rare).
    changes: Option<Mutex<broadcast::Receiver<Change>>>,
    /// Bumped when pooled tunnels are dropped for a change; a tunnel opened
    /// before it is not pooled again.
    epoch: AtomicU64,
}

impl PoolInner {
    /// Applies pending service changes (before any pooled tunnel is used).
    fn apply_changes(&self, idle: &mut HashMap<TunnelKey, Vec<Idle>>) {
        let Some(changes) = &self.changes else { return };
        let Ok(mut changes) = changes.lock() else {
            return;
        };
        let mut changed = false;
        loop {
            match changes.try_recv() {
                Ok(Change::Service(_) | Change::All) | Err(TryRecvError::Lagged(_)) => {
                    changed = true
                }
                Ok(_) => {}
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if changed {
            idle.clear();
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn checkin(&self, key: TunnelKey, sender: SendRequest<ReqBody>, epoch: u64) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            self.apply_changes(&mut idle);
            if self.epoch.load(Ordering::SeqCst) != epoch {
                return;
            }
            let list = idle.entry(key).or_default();
            if list.len() < self.config.max_idle_per_key {
                list.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }

    /// A pooled tunnel for `key`, and the epoch to return it under.
    fn take_idle(&self, key: &TunnelKey) -> (Option<SendRequest<ReqBody>>, u64) {
        let Ok(mut idle) = self.idle.lock() else {
            return (None, 0);
        };
        self.apply_changes(&mut idle);
        let epoch = self.epoch.load(Ordering::SeqCst);
        (
            Self::pop_live(&mut idle, key, self.config.idle_timeout),
            epoch,
        )
    }

    fn pop_live(
        idle: &mut HashMap<TunnelKey, Vec<Idle>>,
        key: &TunnelKey,
        timeout: Duration,
    ) -> Option<SendRequest<ReqBody>> {
        let list = idle.get_mut(key)?;
        while let Some(i) = list.pop() {
            if !i.sender.is_closed() && i.since.elapsed() < timeout {
                return Some(i.sender);
            }
        }
        None
    }

    fn sweep(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            let timeout = self.config.idle_timeout;
            idle.retain(|_, list| {
                list.retain(|i| !i.sender.is_closed() && i.since.elapsed() < timeout);
                !list.is_empty()
            });
        }
    }
}

/// The pool of CONNECT tunnels.
#[derive(Clone)]
pub struct TunnelPool {
    inner: Arc<PoolInner>,
}

fn terminated(detail: impl std::fmt::Display) -> ProxyError {
    ProxyError::new(ErrorCode::ConnectionTerminated, detail.to_string())
}

fn header(v: &str, what: &str) -> Result<HeaderValue, ProxyError> {
    HeaderValue::from_str(v).map_err(|_| {
        ProxyError::new(
            ErrorCode::ServiceNotFound,
            format!("{what} is not a valid header value"),
        )
    })
}

impl TunnelPool {
    /// A pool (a task closes idle tunnels; must be created inside a tokio
    /// runtime) that drops its pooled tunnels when `changes` reports a
    /// changed VPC service, so the next request reaches the service as edited.
    pub fn with_changes(
        config: FrontDoorConfig,
        changes: Option<broadcast::Receiver<Change>>,
    ) -> Self {
        let inner = Arc::new(PoolInner {
            config,
            idle: Mutex::new(HashMap::new()),
            changes: changes.map(Mutex::new),
            epoch: AtomicU64::new(0),
        });
        let weak: Weak<PoolInner> = Arc::downgrade(&inner);
        let every = (inner.config.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(p) => p.sweep(),
                    None => return,
                }
            }
        });
        TunnelPool { inner }
    }

    /// Idle tunnels currently pooled (all keys).
    pub fn idle_count(&self) -> usize {
        self.inner
            .idle
            .lock()
            .map(|i| i.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Sends `req` (origin-form URI, `Host` set) over a pooled tunnel for `key`,
    /// or a new one.
    ///
    /// A pooled tunnel can have died while it sat in the pool (its tunnel
    /// connection was lost, the connector went away). Two cases are retried:
    ///
    /// - the request was never written to it (hyper hands it back): on the
    ///   next pooled tunnel or a new one, whatever the request — nothing of it
    ///   reached the origin;
    /// - it was written, and the tunnel broke (closed, reset) before any of the
    ///   response arrived: once, on a new tunnel, only when the request can be
    ///   replayed safely — an idempotent method (`GET`, `HEAD`, `OPTIONS`,
    ///   `TRACE`, `PUT`, `DELETE`, RFC 9110 §9.2.2) with an empty body. The
    ///   origin may have received it, which an idempotent request allows; a
    ///   `POST`, or any request with a body (streamed, so not kept for a
    ///   second send), fails with `connection_terminated` instead.
    ///
    /// A failure on a new tunnel is not retried: it is the origin's (or the
    /// tunnel's) answer, not a stale pooled connection.
    pub async fn send(
        &self,
        key: &TunnelKey,
        ctx: &BindingContext,
        mut req: Request<ReqBody>,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let epoch = loop {
            let (sender, epoch) = self.inner.take_idle(key);
            let Some(mut sender) = sender else {
                break epoch;
            };
            if sender.ready().await.is_err() {
                continue;
            }
            let replay = Replay::of(&req);
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(key, sender, resp, epoch)),
                Err(mut e) => match (e.take_message(), replay) {
                    (Some(r), _) => {
                        debug!(error = %e.into_error(), "pooled tunnel was dead; retrying");
                        req = r;
                    }
                    (None, Some(replay)) if broke_before_response(e.error()) => {
                        debug!(
                            error = %e.into_error(),
                            "pooled tunnel broke before the response; replaying on a new tunnel"
                        );
                        req = replay.request();
                        // A new tunnel, not another pooled one: those may
                        // have died the same way.
                        break self.inner.epoch.load(Ordering::SeqCst);
                    }
                    (None, _) => return Err(terminated(e.into_error())),
                },
            }
        };
        let mut sender = self.open(key, ctx).await?;
        let resp = sender.send_request(req).await.map_err(terminated)?;
        Ok(self.wrap(key, sender, resp, epoch))
    }

    fn wrap(
        &self,
        key: &TunnelKey,
        sender: SendRequest<ReqBody>,
        resp: Response<Incoming>,
        epoch: u64,
    ) -> Response<PooledBody> {
        let ret = Returner {
            pool: Arc::downgrade(&self.inner),
            key: key.clone(),
            sender,
            epoch,
        };
        resp.map(|inner| {
            let mut b = PooledBody {
                inner,
                ret: Some(ret),
            };
            b.finish_if_done();
            b
        })
    }

    /// Opens a CONNECT tunnel for `key` and an HTTP/1.1 connection inside it.
    async fn open(
        &self,
        key: &TunnelKey,
        ctx: &BindingContext,
    ) -> Result<SendRequest<ReqBody>, ProxyError> {
        let cfg = &self.inner.config;
        let connect = async {
            let io: Box<dyn Io> = match &cfg.in_process {
                Some(pipes) => Box::new(pipes.dial().await.map_err(|e| {
                    ProxyError::new(
                        ErrorCode::DestinationUnavailable,
                        format!("in-process front door unreachable: {e}"),
                    )
                })?),
                None => Box::new(dial_tls(cfg).await?),
            };
            let (mut s, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                .await
                .map_err(terminated)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            let target = format!("{}:443", key.service_id);
            let req = Request::builder()
                .method(Method::CONNECT)
                .uri(&target)
                .header(http::header::HOST, header(&target, "service id")?)
                .header("warren-script", header(&ctx.worker, "worker name")?)
                .header("warren-binding", header(&ctx.binding, "binding name")?)
                .header("warren-scheme", header(&key.scheme, "scheme")?)
                .header("warren-host", header(&key.authority, "URL host")?)
                .header("warren-request-id", header(&ctx.request_id, "request id")?)
                .body(Empty::new())
                .map_err(|e| ProxyError::new(ErrorCode::ServiceNotFound, e.to_string()))?;
            let resp = s.send_request(req).await.map_err(terminated)?;
            if !resp.status().is_success() {
                return Err(refusal(resp).await);
            }
            let upgraded = hyper::upgrade::on(resp).await.map_err(terminated)?;
            let (sender, conn) = http1::handshake::<_, ReqBody>(upgraded)
                .await
                .map_err(terminated)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "origin connection ended");
                }
            });
            Ok(sender)
        };
        tokio::time::timeout(cfg.connect_timeout, connect)
            .await
            .map_err(|_| {
                ProxyError::new(
                    ErrorCode::ConnectionTimeout,
                    format!("no tunnel within {:?}", cfg.connect_timeout),
                )
            })?
    }
}

/// What is needed to send a request again: kept only for requests that are
/// safe to replay (an idempotent method and an empty body).
struct Replay {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Replay {
    fn of(req: &Request<ReqBody>) -> Option<Replay> {
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let body = req.body();
        let empty = body.is_end_stream() || body.size_hint().exact() == Some(0);
        (idempotent && empty).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn request(self) -> Request<ReqBody> {
        let mut req = Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// Whether `e` says the connection closed or broke while the response was
/// awaited (rather than, say, a malformed response).
fn broke_before_response(e: &hyper::Error) -> bool {
    e.is_incomplete_message()
        || e.is_closed()
        || e.is_canceled()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// Most of a refusal's body read for its message.
const REFUSAL_BODY: usize = 8 * 1024;

/// The error a refused CONNECT carries: the code of its
/// `warren-proxy-error` header and the message of its JSON body.
async fn refusal(resp: Response<Incoming>) -> ProxyError {
    use http_body_util::BodyExt;
    let status = resp.status();
    let code = resp
        .headers()
        .get(warren_protocol::PROXY_ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<ErrorCode>().ok())
        .unwrap_or(ErrorCode::ConnectionTerminated);
    let body = http_body_util::Limited::new(resp.into_body(), REFUSAL_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned));
    ProxyError::new(
        code,
        match message {
            Some(m) => format!("iris refused the tunnel with {status}: {m}"),
            None => format!("iris refused the tunnel with {status}"),
        },
    )
}

/// TCP to the front door, then TLS with this node's certificate.
async fn dial_tls(
    cfg: &FrontDoorConfig,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
    let unreachable = |e: std::io::Error| {
        ProxyError::new(
            ErrorCode::DestinationUnavailable,
            format!("iris front door {} unreachable: {e}", cfg.addr),
        )
    };
    let tcp = TcpStream::connect(cfg.addr).await.map_err(unreachable)?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(warren_protocol::NODE_SERVER_NAME)
        .map_err(|e| terminated(format!("the node server name: {e}")))?;
    tokio_rustls::TlsConnector::from(cfg.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            ProxyError::new(
                ErrorCode::DestinationUnavailable,
                format!("TLS to iris front door {} failed: {e}", cfg.addr),
            )
        })
}

struct Returner {
    pool: Weak<PoolInner>,
    key: TunnelKey,
    sender: SendRequest<ReqBody>,
    epoch: u64,
}

/// An origin's response body; when it ends, its tunnel returns to the pool
/// (dropped early, the tunnel closes).
pub struct PooledBody {
    inner: Incoming,
    ret: Option<Returner>,
}

impl PooledBody {
    fn finish_if_done(&mut self) {
        if self.inner.is_end_stream()
            && let Some(r) = self.ret.take()
            && let Some(pool) = r.pool.upgrade()
        {
            pool.checkin(r.key, r.sender, r.epoch);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(r) = self.ret.take()
                    && let Some(pool) = r.pool.upgrade()
                {
                    pool.checkin(r.key, r.sender, r.epoch);
                }
            }
            Poll::Ready(Some(Ok(_))) => self.finish_if_done(),
            Poll::Ready(Some(Err(_))) => self.ret = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
