//! The runtime's side of the binding RPC: a [`BindingClient`] that sends each
//! binding call to the binding-worker as one HTTP/2 stream — a Cap'n Proto
//! [`CallHead`] then the request body out, a [`ReplyHead`] then the response
//! body back — multiplexed over a few long-lived connections: TLS over TCP
//! with the node's certificate (the binding-worker serves only clients with a
//! certificate from the cluster CA, and is trusted only with one), a Unix
//! socket, or in-memory pipes to a binding-worker in this process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;
use warren_protocol::binding::{CallHead, REDIRECT_HEADER, RPC_PATH, ReplyHead};
use warren_protocol::body::{Prefixed, read_head};
use warren_protocol::messages::WireMessage;
use warren_protocol::pipe::PipeDialer;
use warren_protocol::{ErrorCode, ProxyError};
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

use crate::outbound::{BindingClient, BindingContext};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type CallBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Where the binding-worker listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// TCP, with TLS (the client needs a node identity).
    Tcp(SocketAddr),
    /// A Unix socket.
    Unix(PathBuf),
    /// A binding-worker in this process, over in-memory pipes.
    Memory(PipeDialer),
}

/// Binding calls to a binding-worker over the binding RPC.
pub struct RpcBindingClient {
    endpoint: Endpoint,
    /// TLS for [`Endpoint::Tcp`]: the node identity as a client, ALPN `h2`.
    tls: Option<tokio_rustls::TlsConnector>,
    connections: Vec<Mutex<Option<SendRequest<CallBody>>>>,
    next: AtomicUsize,
}

/// ALPN protocol of the binding RPC over TLS.
const RPC_ALPN: &[u8] = b"h2";

fn terminated(detail: impl std::fmt::Display) -> ProxyError {
    ProxyError::new(
        ErrorCode::ConnectionTerminated,
        format!("binding RPC: {detail}"),
    )
}

impl RpcBindingClient {
    /// A client spreading calls over `connections` (at least 1) connections,
    /// opened on first use and reopened when they fail. `tls` — the node
    /// identity's client configuration (its ALPN is set here) — is required
    /// for [`Endpoint::Tcp`] and unused otherwise.
    pub fn new(endpoint: Endpoint, tls: Option<&rustls::ClientConfig>, connections: usize) -> Self {
        let tls = tls.map(|c| {
            let mut c = c.clone();
            c.alpn_protocols = vec![RPC_ALPN.to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(c))
        });
        RpcBindingClient {
            endpoint,
            tls,
            connections: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    async fn dial(&self) -> Result<SendRequest<CallBody>, ProxyError> {
        let unavailable = |e: std::io::Error| {
            ProxyError::new(
                ErrorCode::DestinationUnavailable,
                format!("binding-worker {:?} unreachable: {e}", self.endpoint),
            )
        };
        let mut builder = http2::Builder::new(TokioExecutor::new());
        // Pings keep a pooled connection from looking idle to the server
        // (which closes connections that move no byte for its idle timeout).
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
            .keep_alive_while_idle(true);
        macro_rules! handshake {
            ($io:expr) => {{
                let (sender, conn) = builder
                    .handshake(TokioIo::new($io))
                    .await
                    .map_err(terminated)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "binding RPC connection ended");
                    }
                });
                sender
            }};
        }
        Ok(match &self.endpoint {
            Endpoint::Tcp(a) => {
                let tls = self.tls.as_ref().ok_or_else(|| {
                    terminated("a TCP endpoint needs TLS with the node's certificate")
                })?;
                let s = tokio::net::TcpStream::connect(a)
                    .await
                    .map_err(unavailable)?;
                let _ = s.set_nodelay(true);
                let name =
                    rustls::pki_types::ServerName::try_from(warren_protocol::NODE_SERVER_NAME)
                        .map_err(terminated)?;
                let s = tls.connect(name, s).await.map_err(|e| {
                    ProxyError::new(
                        ErrorCode::DestinationUnavailable,
                        format!("TLS to binding-worker {a} failed: {e}"),
                    )
                })?;
                handshake!(s)
            }
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(unavailable)?;
                handshake!(s)
            }
            Endpoint::Memory(pipes) => handshake!(pipes.dial().await.map_err(unavailable)?),
        })
    }

    async fn sender(&self) -> Result<SendRequest<CallBody>, ProxyError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut slot = self.connections[i].lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let s = self.dial().await?;
        *slot = Some(s.clone());
        Ok(s)
    }
}

#[async_trait]
impl BindingClient for RpcBindingClient {
    async fn fetch(
        &self,
        ctx: BindingContext,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, ProxyError> {
        let (mut parts, body) = request.into_parts();
        let redirect_manual = parts
            .headers
            .remove(REDIRECT_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"manual"));
        let head = CallHead {
            context: ctx,
            method: parts.method.as_str().to_owned(),
            url: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            redirect_manual,
        };
        let body: CallBody = Prefixed::new(
            Bytes::from(head.to_frame()),
            body.map_err(|e| BoxError::from(format!("{e:?}"))),
        )
        .boxed_unsync();
        let mut call = http::Request::new(body);
        *call.method_mut() = http::Method::POST;
        *call.uri_mut() = http::Uri::from_static(RPC_PATH);
        let mut sender = self.sender().await?;
        sender.ready().await.map_err(terminated)?;
        let resp = sender.send_request(call).await.map_err(terminated)?;
        if resp.status() != http::StatusCode::OK {
            return Err(terminated(format!(
                "the binding-worker refused the call with {}",
                resp.status()
            )));
        }
        let (reply, rest) = read_head::<ReplyHead, _>(resp.into_body())
            .await
            .map_err(terminated)?;
        match reply {
            ReplyHead::Error { code, message } => Err(ProxyError::new(code, message)),
            ReplyHead::Response { status, headers } => {
                let mut r = http::Response::new(
                    rest.map_err(|_| HttpError::ConnectionTerminated)
                        .boxed_unsync(),
                );
                *r.status_mut() = http::StatusCode::from_u16(status)
                    .map_err(|_| terminated(format!("bad status {status}")))?;
                for (n, v) in headers {
                    if let (Ok(n), Ok(v)) = (
                        http::HeaderName::from_bytes(n.as_bytes()),
                        http::HeaderValue::from_bytes(&v),
                    ) {
                        r.headers_mut().append(n, v);
                    }
                }
                Ok(r)
            }
        }
    }
}
