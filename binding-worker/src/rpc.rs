//! The binding RPC server: the runtime's binding calls arrive as HTTP/2 streams
//! whose bodies start with a Cap'n Proto [`CallHead`]; each answer starts with
//! a [`ReplyHead`] and streams the origin's body after it.
//!
//! Who may call: on TCP ([`RpcServer::serve_tls`]) only a client presenting a
//! node certificate from the cluster CA (mutual TLS; anything else is refused
//! in the handshake); on a Unix socket, whoever the socket file's permissions
//! let in (the node makes it 0600); over in-process pipes, the runtime of this
//! process.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};
use warren_protocol::binding::{CallHead, RPC_PATH, ReplyHead};
use warren_protocol::body::{Prefixed, read_head};
use warren_protocol::listen::{Backoff, ConnLimits, ConnSlots, Idle};
use warren_protocol::messages::WireMessage;

use crate::fetch::BindingWorker;
use crate::pool::BoxError;

/// Body of RPC answers: the framed reply head, then the origin's body.
pub type ReplyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Serves the binding RPC for a [`BindingWorker`].
pub struct RpcServer {
    worker: Arc<BindingWorker>,
}

/// ALPN protocol of the binding RPC over TLS.
pub const RPC_ALPN: &[u8] = b"h2";

fn plain(status: StatusCode, msg: &str) -> Response<ReplyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.to_owned()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

fn reply(head: &ReplyHead, rest: ReplyBody) -> Response<ReplyBody> {
    Response::new(Prefixed::new(Bytes::from(head.to_frame()), rest).boxed_unsync())
}

/// The connection types served without TLS (Unix sockets and in-memory
/// streams); TCP is served by [`RpcServer::serve_tls`] only.
pub trait Accept {
    /// The stream type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts the next connection.
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

/// TCP, before its TLS handshake.
struct Tcp(TcpListener);

impl Accept for Tcp {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        let (s, _) = self.0.accept().await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// A served connection, whatever carries it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        Ok(tokio::net::UnixListener::accept(self).await?.0)
    }
}

/// A runtime in this process dials over in-memory pipes.
impl Accept for warren_protocol::pipe::PipeListener {
    type Io = tokio::io::DuplexStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        warren_protocol::pipe::PipeListener::accept(self).await
    }
}

impl RpcServer {
    /// A server for `worker`.
    pub fn new(worker: Arc<BindingWorker>) -> Arc<Self> {
        Arc::new(RpcServer { worker })
    }

    /// Serves connections from `listener` (no TLS: a Unix socket or
    /// in-process pipes) until `shutdown` completes, with the default
    /// connection limits.
    pub async fn serve<L: Accept>(
        self: Arc<Self>,
        listener: L,
        shutdown: impl Future<Output = ()>,
    ) {
        self.serve_with(listener, ConnLimits::default(), shutdown)
            .await
    }

    /// Serves connections from `listener` (no TLS: a Unix socket or
    /// in-process pipes) within `limits` (accept errors back off; a
    /// connection over the cap is closed at once; one that moves no byte for
    /// the idle timeout is closed) until `shutdown` completes.
    pub async fn serve_with<L: Accept>(
        self: Arc<Self>,
        listener: L,
        limits: ConnLimits,
        shutdown: impl Future<Output = ()>,
    ) {
        self.accept_loop(listener, limits, shutdown, |io| async move {
            Ok(Box::new(io) as Box<dyn Io>)
        })
        .await
    }

    /// Serves TLS connections from `listener` with `tls` (the node
    /// identity's server configuration: a client without a certificate from
    /// the cluster CA is refused in the handshake; ALPN `h2` is set here),
    /// within `limits` as [`RpcServer::serve_with`] (a handshake slower than
    /// the header timeout is cut), until `shutdown` completes.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: &rustls::ServerConfig,
        limits: ConnLimits,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![RPC_ALPN.to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let timeout = limits.header_timeout;
        self.accept_loop(Tcp(listener), limits, shutdown, move |io| {
            let acceptor = acceptor.clone();
            async move {
                match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => Ok(Box::new(tls) as Box<dyn Io>),
                    Ok(Err(e)) => {
                        warn!(error = %e, "binding RPC: TLS handshake refused");
                        Err(e)
                    }
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    )),
                }
            }
        })
        .await
    }

    /// The accept loop: each connection is taken within the caps, made
    /// ready by `upgrade` (a TLS handshake, or nothing), then served.
    async fn accept_loop<L, U, F>(
        self: Arc<Self>,
        listener: L,
        limits: ConnLimits,
        shutdown: impl Future<Output = ()>,
        upgrade: U,
    ) where
        L: Accept,
        U: Fn(warren_protocol::listen::Tracked<L::Io>) -> F + Clone + Send + 'static,
        F: Future<Output = std::io::Result<Box<dyn Io>>> + Send,
    {
        tokio::pin!(shutdown);
        let slots = ConnSlots::new(limits);
        let mut backoff = Backoff::default();
        loop {
            let io = tokio::select! {
                a = listener.accept() => match a {
                    Ok(io) => { backoff.succeeded(); io }
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return,
                    Err(e) => { backoff.failed("binding RPC", &e).await; continue; }
                },
                () = &mut shutdown => return,
            };
            let Some(guard) = slots.try_take(None) else {
                debug!("binding RPC connection over the cap; closed");
                continue;
            };
            let server = self.clone();
            let upgrade = upgrade.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, std::convert::Infallible>(server.call(req).await) }
                });
                let tracked = guard.track(io);
                // Boxed as a plain `Send` future: the connection's own type
                // trips the compiler's higher-ranked `Send` check here.
                let conn: std::pin::Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>> =
                    Box::pin(async move {
                        let Ok(io) = upgrade(tracked).await else {
                            return Ok(());
                        };
                        let mut builder =
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                        builder
                            .timer(TokioTimer::new())
                            .keep_alive_interval(Some(Duration::from_secs(30)));
                        builder.serve_connection(TokioIo::new(io), svc).await
                    });
                if let Some(Err(e)) = guard.run(Idle::Bytes, conn).await {
                    debug!(error = %e, "binding RPC connection ended");
                }
            });
        }
    }

    async fn call(&self, req: Request<Incoming>) -> Response<ReplyBody> {
        if req.uri().path() != RPC_PATH || req.method() != http::Method::POST {
            return plain(StatusCode::NOT_FOUND, "not a binding RPC path");
        }
        let (head, body) = match read_head::<CallHead, _>(req.into_body()).await {
            Ok(h) => h,
            Err(e) => return plain(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let body = body.map_err(BoxError::from).boxed_unsync();
        match self.worker.fetch(head, body).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let headers = parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                reply(
                    &ReplyHead::Response {
                        status: parts.status.as_u16(),
                        headers,
                    },
                    body.map_err(BoxError::from).boxed_unsync(),
                )
            }
            Err(e) => reply(
                &ReplyHead::Error {
                    code: e.code,
                    message: e.detail,
                },
                Empty::new().map_err(|never| match never {}).boxed_unsync(),
            ),
        }
    }
}
