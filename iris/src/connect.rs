//! The CONNECT front door (HTTP/1.1, and HTTP/2 over h2c): binding-workers ask for a tunnel to a VPC service by
//! id; iris loads the service, picks the port by scheme, resolves the host
//! through the service's tunnel, opens the stream (and TLS for `https`), answers
//! 200 and splices bytes both ways. Every failure is a non-2xx answer with a
//! `warren-proxy-error: <code>` header and a JSON body.
//!
//! Request: `CONNECT <service-id>:<any port> HTTP/1.1` with
//! `Proxy-Authorization: Bearer <internal secret>`, `warren-account`,
//! `warren-scheme` (`http` default, or `https`), `warren-host` (the URL's host:
//! SNI for https) and optionally `warren-request-id`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{Instrument, debug, info_span, warn};
use warren_protocol::listen::{Backoff, ConnLimits, HTTP_REFUSAL, Idle, TcpAcceptor};
use warren_protocol::pipe::PipeListener;
use warren_protocol::{ErrorCode, ProxyError};
use warren_store::cache::ServiceCache;
use warren_store::{ServiceHost, VpcService};

use crate::dns_cache::DnsCache;
use crate::origin_tls::OriginTls;
use crate::tunnels::Tunnels;

/// Header carrying the ProxyError code of a refused CONNECT.
pub use warren_protocol::PROXY_ERROR_HEADER;
/// Buffer per direction while splicing.
const SPLICE_BUF: usize = 64 * 1024;

/// Settings of the front door.
#[derive(Debug, Clone)]
pub struct FrontDoorConfig {
    /// Shared secret binding-workers present as `Proxy-Authorization: Bearer …`.
    pub secret: String,
    /// Connect timeout of each resolved address tried in turn (default 5 s).
    pub attempt_timeout: Duration,
}

/// The CONNECT front door. Share it (`Arc`) and call [`FrontDoor::serve`].
pub struct FrontDoor {
    services: Arc<ServiceCache>,
    tunnels: Tunnels,
    dns: Arc<DnsCache>,
    tls: OriginTls,
    config: FrontDoorConfig,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::ServiceNotFound | ErrorCode::BindingNotFound => StatusCode::NOT_FOUND,
        ErrorCode::DestinationForbidden => StatusCode::FORBIDDEN,
        ErrorCode::DestinationUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ConnectionTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::ConnectionLimitReached => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ProxyError, request_id: &str) -> Response<Full<Bytes>> {
    let mut r = json_response(
        status_for(e.code),
        serde_json::json!({ "error": e.code.as_str(), "message": e.detail, "request_id": request_id }),
    );
    r.headers_mut().insert(
        PROXY_ERROR_HEADER,
        HeaderValue::from_static(e.code.as_str()),
    );
    r
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

impl FrontDoor {
    /// A front door reading services from the node's change-driven cache,
    /// resolving through `dns` and dialling through `tunnels`.
    pub fn new(
        services: Arc<ServiceCache>,
        tunnels: Tunnels,
        dns: Arc<DnsCache>,
        tls: OriginTls,
        config: FrontDoorConfig,
    ) -> Arc<Self> {
        Arc::new(FrontDoor {
            services,
            tunnels,
            dns,
            tls,
            config,
        })
    }

    /// Serves CONNECT requests on `listener` until `shutdown` completes.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.serve_with(listener, ConnLimits::default(), shutdown)
            .await
    }

    /// Serves CONNECT requests on `listener` within `limits` (accept errors
    /// back off, connections over the cap get a 503, slow heads and idle
    /// connections are closed) until `shutdown` completes.
    pub async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        limits: ConnLimits,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let acceptor = TcpAcceptor::new("CONNECT front door", listener, limits, HTTP_REFUSAL);
        let mut backoff = Backoff::default();
        loop {
            let (stream, peer, guard) = tokio::select! {
                a = acceptor.accept(&mut backoff) => a,
                () = &mut shutdown => return,
            };
            // Tunnelled bytes go out as they come: no Nagle delay on small writes.
            let _ = stream.set_nodelay(true);
            let door = self.clone();
            tokio::spawn(async move {
                let io = guard.track(stream);
                guard
                    .run(
                        Idle::Bytes,
                        door.serve_connection(io, peer.to_string(), Some(limits)),
                    )
                    .await;
            });
        }
    }

    /// Serves connections from a binding-worker in this process, over
    /// in-memory pipes.
    pub async fn serve_in_process(
        self: Arc<Self>,
        pipes: PipeListener,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let pipe = tokio::select! {
                p = pipes.accept() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = &mut shutdown => return,
            };
            tokio::spawn(
                self.clone()
                    .serve_connection(pipe, "in-process".to_owned(), None),
            );
        }
    }

    /// Serves one connection: HTTP/1.1, or HTTP/2 with prior knowledge (h2c),
    /// many tunnels on one connection; `limits` set the header timeout
    /// (none for in-process pipes).
    async fn serve_connection<I>(self: Arc<Self>, io: I, peer: String, limits: Option<ConnLimits>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let svc = service_fn(move |req| {
            let door = self.clone();
            async move { Ok::<_, std::convert::Infallible>(door.handle(req).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if let Some(limits) = limits {
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            builder.http2().timer(TokioTimer::new());
        }
        if let Err(e) = builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .await
        {
            debug!(%peer, error = %e, "front door connection ended");
        }
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let request_id = header(&req, "warren-request-id")
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if req.method() != Method::CONNECT {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": "only CONNECT is served here" }),
            );
        }
        let presented = header(&req, "proxy-authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(self.config.secret.as_bytes())) {
            warn!(
                request_id,
                "CONNECT refused: missing or wrong internal secret"
            );
            return json_response(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                serde_json::json!({ "error": "unauthorized" }),
            );
        }
        let span = info_span!("connect", request_id = %request_id);
        let prepared = self.prepare(&req).instrument(span.clone()).await;
        match prepared {
            Ok(origin) => {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(
                    async move {
                        match upgrade.await {
                            Ok(upgraded) => splice(TokioIo::new(upgraded), origin).await,
                            Err(e) => debug!(error = %e, "client went away before the upgrade"),
                        }
                    }
                    .instrument(span),
                );
                Response::new(Full::new(Bytes::new()))
            }
            Err(e) => {
                span.in_scope(|| warn!(code = %e.code, detail = %e.detail, "CONNECT failed"));
                error_response(&e, &request_id)
            }
        }
    }

    /// Everything before the 200: service, port, address, stream, TLS.
    async fn prepare(&self, req: &Request<Incoming>) -> Result<Box<dyn Io>, ProxyError> {
        let not_found = |detail: String| ProxyError::new(ErrorCode::ServiceNotFound, detail);
        let service_id = req
            .uri()
            .authority()
            .map(|a| a.host().to_owned())
            .ok_or_else(|| not_found("CONNECT target names no service".into()))?;
        let account = header(req, "warren-account").unwrap_or("");
        let service = self
            .service(&service_id)
            .await?
            .filter(|s| s.account_id == account)
            .ok_or_else(|| not_found(format!("no service {service_id} in account {account}")))?;
        let https = match header(req, "warren-scheme").unwrap_or("http") {
            "http" => false,
            "https" => true,
            other => return Err(not_found(format!("unknown scheme {other:?}"))),
        };
        let port = if https {
            service.https_port
        } else {
            service.http_port
        };
        let port = port.ok_or_else(|| {
            ProxyError::new(
                ErrorCode::DestinationForbidden,
                format!(
                    "service {} does not allow {}",
                    service.id,
                    if https { "https" } else { "http" }
                ),
            )
        })?;
        let (tunnel, addrs, default_host) = self.addresses(&service).await?;
        let stream = self.dial(&tunnel, &addrs, port).await?;
        if !https {
            return Ok(Box::new(stream));
        }
        let sni = header(req, "warren-host")
            .unwrap_or(&default_host)
            .to_owned();
        let tls = self
            .tls
            .connect(service.cert_verification_mode, &sni, stream)
            .await?;
        Ok(Box::new(tls))
    }

    async fn service(&self, id: &str) -> Result<Option<VpcService>, ProxyError> {
        self.services.get(id).await.map_err(|e| {
            ProxyError::new(
                ErrorCode::ServiceNotFound,
                format!("service store unavailable: {e}"),
            )
        })
    }

    /// The tunnel, the candidate addresses and the default host name of a service.
    async fn addresses(&self, s: &VpcService) -> Result<(String, Vec<IpAddr>, String), ProxyError> {
        match &s.host {
            ServiceHost::Addresses {
                ipv4,
                ipv6,
                tunnel_id,
            } => {
                let addrs: Vec<IpAddr> = ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(ipv6.map(IpAddr::V6))
                    .collect();
                let host = addrs.first().map(|a| a.to_string()).unwrap_or_default();
                Ok((tunnel_id.clone(), addrs, host))
            }
            ServiceHost::Hostname {
                hostname,
                tunnel_id,
                resolver_ips,
            } => {
                let resolvers: Vec<Option<SocketAddr>> = if resolver_ips.is_empty() {
                    vec![None]
                } else {
                    resolver_ips
                        .iter()
                        .map(|ip| Some(SocketAddr::new(*ip, 53)))
                        .collect()
                };
                let mut last = None;
                for resolver in resolvers {
                    match self.dns.resolve(tunnel_id, resolver, hostname).await {
                        Ok(addrs) => return Ok((tunnel_id.clone(), addrs, hostname.clone())),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| ProxyError::new(ErrorCode::DnsError, "no resolver")))
            }
        }
    }

    /// Tries each address in turn; returns the first stream or the last error.
    async fn dial(
        &self,
        tunnel: &str,
        addrs: &[IpAddr],
        port: u16,
    ) -> Result<crate::TunnelStream, ProxyError> {
        let mut last = ProxyError::new(ErrorCode::DnsError, "no address to connect to");
        for ip in addrs {
            let dest = SocketAddr::new(*ip, port);
            match self
                .tunnels
                .open_tcp(tunnel, dest, self.config.attempt_timeout, "connect")
                .await
            {
                Ok(s) => return Ok(s),
                Err(e) if e.code == ErrorCode::DestinationUnavailable => return Err(e),
                Err(e) => {
                    debug!(%dest, code = %e.code, "address failed; trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }
}

async fn splice(mut client: TokioIo<hyper::upgrade::Upgraded>, mut origin: Box<dyn Io>) {
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut origin, SPLICE_BUF, SPLICE_BUF)
        .await
    {
        Ok((up, down)) => debug!(up, down, "tunnel closed"),
        Err(e) => debug!(error = %e, "tunnel ended with an error"),
    }
}
