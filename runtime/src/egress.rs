//! The global outbound dialer: how a worker's plain `fetch()` (one that names
//! no binding) reaches the public internet.
//!
//! The name is resolved **once** (hickory-resolver, asynchronously, from the
//! host's resolver configuration), every address is checked with
//! [`is_public`], and the connection is made to exactly a checked
//! [`SocketAddr`] — there is no second lookup a DNS server could answer
//! differently (no rebinding). The connected peer address is checked again;
//! TLS uses the URL's host for SNI and verification (webpki roots).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

use crate::outbound::is_public;

/// Used when the guest sets no connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Used when the guest sets no first-byte timeout.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Resolves, checks and dials public destinations. One per process.
pub struct PublicDialer {
    resolver: Option<TokioResolver>,
    tls: Arc<rustls::ClientConfig>,
}

impl PublicDialer {
    /// The process's dialer (the host's resolver configuration is read once).
    pub fn global() -> Arc<PublicDialer> {
        static DIALER: OnceLock<Arc<PublicDialer>> = OnceLock::new();
        DIALER
            .get_or_init(|| Arc::new(PublicDialer::from_system()))
            .clone()
    }

    fn from_system() -> PublicDialer {
        let resolver = match TokioResolver::builder_tokio() {
            Ok(b) => Some(b.build()),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver configuration; workers' global fetch() can reach IP literals only");
                None
            }
        };
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                // The ring provider supports the default versions; this
                // branch is unreachable in practice but must not panic.
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        PublicDialer {
            resolver,
            tls: Arc::new(tls),
        }
    }

    /// The public addresses of `host`; refused when any address it names is
    /// not public (a name that mixes public and private answers is not
    /// trusted with either).
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, HttpError> {
        let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let Some(resolver) = &self.resolver else {
                    return Err(dns_error());
                };
                // A fully qualified query: no search-domain expansion.
                let fqdn = format!("{}.", host.trim_end_matches('.'));
                resolver
                    .lookup_ip(fqdn)
                    .await
                    .map_err(|_| dns_error())?
                    .iter()
                    .collect()
            }
        };
        if ips.is_empty() {
            return Err(dns_error());
        }
        if !ips.iter().all(|ip| is_public(*ip)) {
            return Err(HttpError::DestinationIpProhibited);
        }
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// Connects to the first reachable checked address of `host:port`.
    async fn dial(&self, host: &str, port: u16, timeout: Duration) -> Result<TcpStream, HttpError> {
        let addrs = self.resolve(host, port).await?;
        let mut last = HttpError::ConnectionRefused;
        for addr in addrs {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Err(_) => last = HttpError::ConnectionTimeout,
                Ok(Err(e)) => last = connect_error(e),
                Ok(Ok(tcp)) => {
                    // The socket must be connected where it was told to go.
                    match tcp.peer_addr() {
                        Ok(peer) if peer == addr && is_public(peer.ip()) => {
                            let _ = tcp.set_nodelay(true);
                            return Ok(tcp);
                        }
                        _ => return Err(HttpError::DestinationIpProhibited),
                    }
                }
            }
        }
        Err(last)
    }

    /// Sends `request` to its (public) destination over HTTP/1.1; the answer
    /// and the connection's driver, as `WasiHttpHooks::send_request` wants.
    pub async fn send(
        self: Arc<Self>,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<
        (
            http::Response<WasiBody>,
            Box<dyn Future<Output = Result<(), HttpError>> + Send>,
        ),
        HttpError,
    > {
        let uri = request.uri().clone();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") | None => false,
            Some(_) => return Err(HttpError::HttpProtocolError),
        };
        let Some(authority) = uri.authority() else {
            return Err(HttpError::HttpRequestUriInvalid);
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(CONNECT_TIMEOUT);
        let first_byte = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(FIRST_BYTE_TIMEOUT);

        let tcp = self.dial(&host, port, connect_timeout).await?;
        let io: Box<dyn Stream> = if https {
            let name = match host.parse::<IpAddr>() {
                Ok(ip) => rustls::pki_types::ServerName::from(ip),
                Err(_) => rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| HttpError::HttpRequestUriInvalid)?,
            };
            let tls = tokio::time::timeout(
                connect_timeout,
                tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp),
            )
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(tls_error)?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, WasiBody>(TokioIo::new(io))
            .await
            .map_err(HttpError::from)?;
        // Origin-form on the wire: the authority travels in `Host`.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() = path.parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
        if !request.headers().contains_key(http::header::HOST)
            && let Ok(v) = http::HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(http::header::HOST, v);
        }
        let mut conn = Box::pin(conn);
        let send = tokio::time::timeout(first_byte, sender.send_request(request));
        tokio::pin!(send);
        // Drive the connection while waiting for the answer's head.
        let mut conn_done = false;
        let resp = tokio::select! {
            biased;
            r = &mut send => r.map_err(|_| HttpError::ConnectionReadTimeout)?.map_err(HttpError::from)?,
            r = &mut conn => {
                // The connection ended first (say `Connection: close` with
                // an answer already read): the answer may still be there.
                r.map_err(HttpError::from)?;
                conn_done = true;
                send.await
                    .map_err(|_| HttpError::ConnectionReadTimeout)?
                    .map_err(HttpError::from)?
            }
        };
        let driver: Pin<Box<dyn Future<Output = Result<(), HttpError>> + Send>> = if conn_done {
            Box::pin(async { Ok(()) })
        } else {
            Box::pin(async move { conn.await.map_err(HttpError::from) })
        };
        let resp = resp.map(|b| {
            b.map_err(HttpError::from)
                .map_frame(|f| f.map_data(Bytes::from))
                .boxed_unsync()
        });
        Ok((resp, Box::new(driver)))
    }
}

fn dns_error() -> HttpError {
    HttpError::DnsError {
        rcode: None,
        info_code: None,
    }
}

fn connect_error(e: std::io::Error) -> HttpError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
        ErrorKind::TimedOut => HttpError::ConnectionTimeout,
        ErrorKind::NetworkUnreachable | ErrorKind::HostUnreachable => {
            HttpError::DestinationIpUnroutable
        }
        _ => HttpError::Connect(e),
    }
}

fn tls_error(e: std::io::Error) -> HttpError {
    HttpError::Tls(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_literals_are_refused_before_any_connection() {
        let d = PublicDialer::from_system();
        for host in ["127.0.0.1", "10.1.2.3", "::1", "169.254.169.254"] {
            let r = d.resolve(host, 80).await;
            assert!(
                matches!(r, Err(HttpError::DestinationIpProhibited)),
                "{host}: {r:?}"
            );
        }
        let ok = d.resolve("1.1.1.1", 443).await.expect("public literal");
        assert_eq!(ok, vec![SocketAddr::from(([1, 1, 1, 1], 443))]);
    }
}
