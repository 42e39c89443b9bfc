//! The TCP fallback transport: TLS over TCP (ALPN [`TCP_ALPN`]) carrying a
//! stream multiplexer ([`TcpConn`]) with QUIC's semantics — streams either
//! side opens, half-close, reset and stop with codes, unreliable datagrams,
//! keep-alive pings and an idle timeout — for networks that block UDP.
//!
//! The TLS configurations are the QUIC ones with another ALPN
//! ([`client_tls`], [`server_tls`]): same certificates, same verification.

mod frame;
mod mux;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use mux::{MuxRecv, MuxSend, STREAM_REFUSED, Side, TcpConn, TcpError};

use crate::Conn;

/// ALPN protocol id of tunnel connections over TCP.
pub const TCP_ALPN: &[u8] = b"warren-tunnel-tcp/1";

/// TLS handshakes the listener of [`serve`] runs at once; connections beyond are dropped.
const MAX_HANDSHAKES: usize = 1024;
/// TLS handshakes [`serve`] runs at once from one address.
const MAX_HANDSHAKES_PER_IP: usize = 32;

/// Settings of a TCP tunnel connection; [`TcpConfig::default`] matches the
/// QUIC transport's defaults.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// A connection that sent nothing for this long sends a ping (default 500 ms).
    pub keep_alive: Duration,
    /// A connection that received nothing for this long is lost (default 1.2 s).
    /// Pings are answered, so the peer's keep-alive need not be set.
    pub idle_timeout: Duration,
    /// Time to connect and finish the TLS handshake (default 10 s).
    pub handshake_timeout: Duration,
    /// Bytes a stream may have received and not yet read (default 4 MiB; at least 64 KiB).
    pub stream_window: u32,
    /// Bytes all streams together may have received and not yet read
    /// (default 16 MiB; at least 256 KiB): the bound on receive buffering.
    pub connection_window: u32,
    /// Streams opened by the peer and not yet dropped here; more are refused
    /// with [`STREAM_REFUSED`] (default 4096).
    pub max_streams: usize,
    /// Datagrams queued each way; more are dropped, as UDP would (default 256).
    pub datagram_queue: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(1200),
            handshake_timeout: Duration::from_secs(10),
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_streams: 4096,
            datagram_queue: 256,
        }
    }
}

/// Why a TCP tunnel connection could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TCP connection failed.
    #[error("TCP connection to {addr} failed: {source}")]
    Tcp {
        /// The address dialled.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong certificate, no common ALPN, …).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The peer.
        addr: SocketAddr,
        /// The failure, with rustls' reason.
        source: std::io::Error,
    },
    /// The handshake completed without agreeing on [`TCP_ALPN`].
    #[error("{addr} did not negotiate ALPN {}: got {:?}", String::from_utf8_lossy(TCP_ALPN), .got.as_deref().map(String::from_utf8_lossy))]
    Alpn {
        /// The peer.
        addr: SocketAddr,
        /// The protocol agreed, if any.
        got: Option<Vec<u8>>,
    },
    /// Connecting and the handshake took longer than [`TcpConfig::handshake_timeout`].
    #[error("no TLS handshake with {addr} within {timeout:?}")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// The time allowed.
        timeout: Duration,
    },
    /// The configuration cannot work (e.g. a TLS config without [`TCP_ALPN`]).
    #[error("bad tunnel TCP configuration: {0}")]
    Config(String),
}

/// Bytes read from the socket at once under TLS. rustls asks for a few KiB at
/// a time (about one record); reading ahead here takes one `recv` where it
/// would take four or five (measured: TLS/TCP uploads about 7% faster).
const READ_AHEAD: usize = 64 * 1024;

/// `tcp` read through a [`READ_AHEAD`] buffer; writes pass straight through.
fn read_ahead(tcp: TcpStream) -> BufReader<TcpStream> {
    BufReader::with_capacity(READ_AHEAD, tcp)
}

/// The QUIC client TLS configuration `base`, offering [`TCP_ALPN`] instead:
/// same roots or pinned-CA verifier, same provider.
pub fn client_tls(base: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut tls = base.clone();
    tls.alpn_protocols = vec![TCP_ALPN.to_vec()];
    Arc::new(tls)
}

/// The QUIC server TLS configuration `base`, accepting only [`TCP_ALPN`]:
/// same certificate, same client verification.
pub fn server_tls(base: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut tls = base.clone();
    tls.alpn_protocols = vec![TCP_ALPN.to_vec()];
    // Early data is a QUIC setting; TLS over TCP here never uses it.
    tls.max_early_data_size = 0;
    Arc::new(tls)
}

fn check_alpn(alpn: &[Vec<u8>]) -> Result<(), ConnectError> {
    if alpn.iter().any(|p| p == TCP_ALPN) {
        Ok(())
    } else {
        Err(ConnectError::Config(format!(
            "the TLS configuration does not offer ALPN {} (make it with tcp::client_tls / tcp::server_tls)",
            String::from_utf8_lossy(TCP_ALPN)
        )))
    }
}

fn agreed(addr: SocketAddr, got: Option<&[u8]>) -> Result<(), ConnectError> {
    if got == Some(TCP_ALPN) {
        Ok(())
    } else {
        Err(ConnectError::Alpn {
            addr,
            got: got.map(<[u8]>::to_vec),
        })
    }
}

/// Dials `addr` over TCP, verifies the edge as `server_name` with `tls`
/// (from [`client_tls`]) and starts the multiplexer: the connector's side.
pub async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    server_name: &str,
    cfg: &TcpConfig,
) -> Result<Conn, ConnectError> {
    check_alpn(&tls.alpn_protocols)?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| ConnectError::Config(format!("server name {server_name:?}: {e}")))?;
    let dial = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let stream = TlsConnector::from(tls)
            .connect(name, read_ahead(tcp))
            .await
            .map_err(|source| ConnectError::Tls { addr, source })?;
        agreed(addr, stream.get_ref().1.alpn_protocol())?;
        Ok(TcpConn::new(stream, Side::Client, addr, cfg))
    };
    match tokio::time::timeout(cfg.handshake_timeout, dial).await {
        Ok(r) => r.map(Conn::Tcp),
        Err(_) => Err(ConnectError::Timeout {
            addr,
            timeout: cfg.handshake_timeout,
        }),
    }
}

/// Runs the TLS handshake on an accepted TCP connection with `tls` (from
/// [`server_tls`]) and starts the multiplexer: the edge's side.
pub async fn accept(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    cfg: &TcpConfig,
) -> Result<Conn, ConnectError> {
    check_alpn(&tls.alpn_protocols)?;
    let addr = tcp.peer_addr().map_err(|source| ConnectError::Tcp {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let _ = tcp.set_nodelay(true);
    let handshake = async {
        let stream = TlsAcceptor::from(tls)
            .accept(read_ahead(tcp))
            .await
            .map_err(|source| ConnectError::Tls { addr, source })?;
        agreed(addr, stream.get_ref().1.alpn_protocol())?;
        Ok(TcpConn::new(stream, Side::Server, addr, cfg))
    };
    match tokio::time::timeout(cfg.handshake_timeout, handshake).await {
        Ok(r) => r.map(Conn::Tcp),
        Err(_) => Err(ConnectError::Timeout {
            addr,
            timeout: cfg.handshake_timeout,
        }),
    }
}

/// A handshake under way from one address, counted until dropped.
struct PerIp {
    counts: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerIp {
    /// Counts one more handshake from `ip`, unless it has [`MAX_HANDSHAKES_PER_IP`].
    fn enter(counts: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<PerIp> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_IP {
            return None;
        }
        *n += 1;
        Some(PerIp {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PerIp {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accepts TCP tunnel connections on `listener` until `shutdown` is
/// cancelled, handing each one that completes its handshake to `on_conn`
/// (which should spawn whatever serves it). Failed handshakes are logged at
/// debug level. Connections already handed over are the caller's to close.
pub async fn serve<F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cfg: TcpConfig,
    on_conn: F,
    shutdown: CancellationToken,
) where
    F: Fn(Conn) + Send + Sync + 'static,
{
    let on_conn = Arc::new(on_conn);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_ip = Arc::new(std::sync::Mutex::new(HashMap::new()));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!(error = %e, "tunnel TCP listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            debug!(%peer, "too many tunnel TLS handshakes under way; dropping a connection");
            continue;
        };
        // One address cannot hold every handshake slot (a slowloris would
        // shut every UDP-blocked connector out).
        let Some(per_ip) = PerIp::enter(&per_ip, peer.ip()) else {
            debug!(%peer, "too many tunnel TLS handshakes from one address; dropping a connection");
            continue;
        };
        let (tls, cfg, on_conn, shutdown) =
            (tls.clone(), cfg.clone(), on_conn.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = (permit, per_ip);
            tokio::select! {
                r = accept(tcp, tls, &cfg) => match r {
                    Ok(conn) => on_conn(conn),
                    Err(e) => debug!(%peer, error = %e, "tunnel TCP handshake failed"),
                },
                () = shutdown.cancelled() => {}
            }
        });
    }
}
