//! The CONNECT front door (HTTP/1.1 or HTTP/2): binding-workers ask for a
//! tunnel to a VPC service by id on behalf of one worker's binding; iris
//! checks that the worker binds the service, loads the service, picks the
//! port by scheme, resolves the host through the service's tunnel, opens the
//! stream (and TLS for `https`), answers 200 and splices bytes both ways.
//! Every failure is a non-2xx answer with a `warren-proxy-error: <code>`
//! header and a JSON body.
//!
//! Who may ask: on TCP, only a client presenting a node certificate from the
//! cluster CA (mutual TLS with the node's [`NodeIdentity`]; anything else is
//! refused in the handshake); over in-process pipes, the binding-worker of
//! this process.
//!
//! Request: `CONNECT <service-id>:<any port> HTTP/1.1` with `warren-script`
//! (the worker whose binding calls), optionally `warren-binding` (its binding
//! name, for logs), `warren-scheme` (`http` default, or `https`),
//! `warren-host` (the URL's host: SNI for https) and `warren-request-id`. The
//! account is the worker's, from its record in the store: the tunnel is
//! opened only when that record lists the service and the worker's account
//! owns it.

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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span, warn};
use warren_protocol::listen::{Backoff, ConnLimits, Idle, TcpAcceptor};
use warren_protocol::pipe::PipeListener;
use warren_protocol::{ErrorCode, ProxyError};
use warren_store::cache::{ScriptCache, ServiceCache};
use warren_store::{ScriptRecord, ServiceHost, VpcService};

use crate::dns_cache::DnsCache;
use crate::identity::NodeIdentity;
use crate::origin_tls::OriginTls;
use crate::tunnels::Tunnels;

/// Header carrying the ProxyError code of a refused CONNECT.
pub use warren_protocol::PROXY_ERROR_HEADER;
/// Buffer per direction while splicing.
pub(crate) const SPLICE_BUF: usize = 64 * 1024;

/// ALPN protocols the front door offers on TCP.
pub const FRONT_DOOR_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Header naming the worker a CONNECT is made for.
pub const SCRIPT_HEADER: &str = "warren-script";
/// Header naming the worker's binding a CONNECT is made for (logs only).
pub const BINDING_HEADER: &str = "warren-binding";

/// Settings of the front door.
#[derive(Debug, Clone)]
pub struct FrontDoorConfig {
    /// This node's identity: the TCP listener serves TLS with its
    /// certificate and accepts only clients with a certificate from the
    /// cluster CA.
    pub identity: Arc<NodeIdentity>,
    /// Connect timeout of each resolved address tried in turn (default 5 s).
    pub attempt_timeout: Duration,
}

/// The CONNECT front door. Share it (`Arc`) and call [`FrontDoor::serve`].
pub struct FrontDoor {
    services: Arc<ServiceCache>,
    scripts: Arc<ScriptCache>,
    tunnels: Tunnels,
    dns: Arc<DnsCache>,
    tls: OriginTls,
    acceptor: TlsAcceptor,
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
    /// A front door reading services from the node's change-driven cache
    /// (and worker scripts from a cache of its own over the same store),
    /// resolving through `dns` and dialling through `tunnels`.
    pub fn new(
        services: Arc<ServiceCache>,
        tunnels: Tunnels,
        dns: Arc<DnsCache>,
        tls: OriginTls,
        config: FrontDoorConfig,
    ) -> Arc<Self> {
        let acceptor = TlsAcceptor::from(Arc::new(config.identity.server_config(FRONT_DOOR_ALPN)));
        Arc::new(FrontDoor {
            scripts: ScriptCache::new(services.store().clone()),
            services,
            tunnels,
            dns,
            tls,
            acceptor,
            config,
        })
    }

    /// Serves CONNECT requests on `listener` (TLS, node certificates only)
    /// until `shutdown` completes.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.serve_with(listener, ConnLimits::default(), shutdown)
            .await
    }

    /// Serves CONNECT requests on `listener` within `limits` (accept errors
    /// back off, connections over the cap are closed, TLS handshakes and
    /// request heads slower than the header timeout and idle connections are
    /// closed) until `shutdown` completes. Every connection is TLS; a client
    /// without a certificate from the cluster CA is refused in the handshake.
    pub async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        limits: ConnLimits,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        // Over the cap a connection is just closed: it speaks TLS, not HTTP.
        let acceptor = TcpAcceptor::new("CONNECT front door", listener, limits, b"");
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
                let serve = async {
                    let handshake = door.acceptor.accept(io);
                    match tokio::time::timeout(limits.header_timeout, handshake).await {
                        Ok(Ok(tls)) => {
                            door.serve_connection(tls, peer.to_string(), Some(limits))
                                .await
                        }
                        Ok(Err(e)) => {
                            warn!(%peer, error = %e, "front door: TLS handshake refused")
                        }
                        Err(_) => debug!(%peer, "front door: TLS handshake timed out"),
                    }
                };
                guard.run(Idle::Bytes, serve).await;
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
        // The id reaches log lines here and on the connector: only a short
        // token of id characters is kept, anything else gets a fresh id.
        let request_id = header(&req, "warren-request-id")
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        if req.method() != Method::CONNECT {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": "only CONNECT is served here" }),
            );
        }
        let span = info_span!(
            "connect",
            request_id = %request_id,
            script = header(&req, SCRIPT_HEADER).unwrap_or(""),
            binding = header(&req, BINDING_HEADER).unwrap_or(""),
        );
        let prepared = self
            .prepare(&req, &request_id)
            .instrument(span.clone())
            .await;
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
    async fn prepare(
        &self,
        req: &Request<Incoming>,
        request_id: &str,
    ) -> Result<Box<dyn Io>, ProxyError> {
        let not_found = |detail: String| ProxyError::new(ErrorCode::ServiceNotFound, detail);
        let service_id = req
            .uri()
            .authority()
            .map(|a| a.host().to_owned())
            .ok_or_else(|| not_found("CONNECT target names no service".into()))?;
        let script = header(req, SCRIPT_HEADER).ok_or_else(|| {
            ProxyError::new(
                ErrorCode::BindingNotFound,
                format!("the CONNECT to service {service_id} names no worker ({SCRIPT_HEADER})"),
            )
        })?;
        let service = self.authorize(script, &service_id).await?;
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
        let stream = self.dial(&tunnel, &addrs, port, request_id).await?;
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

    /// The service `service_id`, when worker `script` binds it and the
    /// worker's account owns it; otherwise `binding_not_found` (no such
    /// worker, or it does not bind the service) or `service_not_found` (no
    /// such service, or another account's), naming worker and service.
    async fn authorize(&self, script: &str, service_id: &str) -> Result<VpcService, ProxyError> {
        let binds = |r: &ScriptRecord| r.services.iter().any(|s| s == service_id);
        let mut record = self.script(script, false).await?;
        if !record.as_ref().is_some_and(binds) {
            // The cached record may predate a deploy this process has not
            // heard of yet: ask the store before refusing.
            record = self.script(script, true).await?;
        }
        let Some(record) = record else {
            return Err(ProxyError::new(
                ErrorCode::BindingNotFound,
                format!("no worker {script} to bind service {service_id}"),
            ));
        };
        if !binds(&record) {
            return Err(ProxyError::new(
                ErrorCode::BindingNotFound,
                format!("worker {script} has no binding to service {service_id}"),
            ));
        }
        match self.service(service_id).await? {
            Some(s) if s.account_id == record.account_id => Ok(s),
            Some(_) => Err(ProxyError::new(
                ErrorCode::ServiceNotFound,
                format!("service {service_id} is not in the account of worker {script}"),
            )),
            None => Err(ProxyError::new(
                ErrorCode::ServiceNotFound,
                format!("no service {service_id} (bound by worker {script})"),
            )),
        }
    }

    async fn script(&self, name: &str, fresh: bool) -> Result<Option<ScriptRecord>, ProxyError> {
        let found = match fresh {
            true => self.scripts.get_fresh(name).await,
            false => self.scripts.get(name).await,
        };
        found.map_err(|e| {
            ProxyError::new(
                ErrorCode::BindingNotFound,
                format!("script store unavailable: {e}"),
            )
        })
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
    /// `request_id` travels as the stream's flow id into the connector's log.
    async fn dial(
        &self,
        tunnel: &str,
        addrs: &[IpAddr],
        port: u16,
        request_id: &str,
    ) -> Result<crate::TunnelStream, ProxyError> {
        let mut last = ProxyError::new(ErrorCode::DnsError, "no address to connect to");
        for ip in addrs {
            let dest = SocketAddr::new(*ip, port);
            match self
                .tunnels
                .open_tcp(tunnel, dest, self.config.attempt_timeout, request_id)
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
