//! The binding RPC server: the runtime's binding calls arrive as HTTP/2 streams
//! (over TCP or a Unix socket) whose bodies start with a Cap'n Proto
//! [`CallHead`]; each answer starts with a [`ReplyHead`] and streams the origin's
//! body after it. Every stream must present the shared secret.

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
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
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
    secret: String,
}

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

/// The connection types the server accepts (TCP, Unix and in-memory streams).
pub trait Accept {
    /// The stream type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts the next connection.
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

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
    /// A server for `worker` that requires `secret` on every call.
    pub fn new(worker: Arc<BindingWorker>, secret: impl Into<String>) -> Arc<Self> {
        Arc::new(RpcServer {
            worker,
            secret: secret.into(),
        })
    }

    /// Serves connections from `listener` until `shutdown` completes, with
    /// the default connection limits.
    pub async fn serve<L: Accept>(
        self: Arc<Self>,
        listener: L,
        shutdown: impl Future<Output = ()>,
    ) {
        self.serve_with(listener, ConnLimits::default(), shutdown)
            .await
    }

    /// Serves connections from `listener` within `limits` (accept errors back
    /// off; a connection over the cap is closed at once; one that moves no
    /// byte for the idle timeout is closed) until `shutdown` completes.
    pub async fn serve_with<L: Accept>(
        self: Arc<Self>,
        listener: L,
        limits: ConnLimits,
        shutdown: impl Future<Output = ()>,
    ) {
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
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, std::convert::Infallible>(server.call(req).await) }
                });
                let io = TokioIo::new(guard.track(io));
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Some(Duration::from_secs(30)));
                // Boxed as a plain `Send` future: the connection's own type
                // trips the compiler's higher-ranked `Send` check here.
                let conn: std::pin::Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>> =
                    Box::pin(builder.serve_connection(io, svc));
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
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if !bool::from(presented.ct_eq(self.secret.as_bytes())) {
            warn!("binding RPC call without the shared secret refused");
            return plain(
                StatusCode::UNAUTHORIZED,
                "the binding RPC secret is missing or wrong",
            );
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
