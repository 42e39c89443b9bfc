//! `warren-connector`: the daemon inside a private network. It dials the Warren
//! edge (QUIC, outbound only), registers each of its HA connections, and serves
//! what the edge asks through them: TCP connections to private addresses
//! ([`forward`]) and DNS questions ([`dns`]), within its local [`policy`].
//!
//! [`run`] is the whole daemon; the binary only parses flags into a [`ConnectorConfig`].

pub mod backoff;
pub mod dns;
pub mod forward;
pub mod metrics;
pub mod policy;
pub mod session;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use warren_protocol::token::TunnelToken;

use crate::backoff::Backoff;
use crate::dns::DnsForwarder;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::session::{SessionEnd, Transport};
use crate::tls::EdgeTrust;

/// A connection that stayed registered this long resets its backoff.
const STABLE_PERIOD: Duration = Duration::from_secs(60);
/// A registered connection lost after at least this long is re-dialled at
/// once; one lost sooner waits its backoff (so an edge that drops every
/// connection right after registering is not hammered).
const IMMEDIATE_REDIAL_AFTER: Duration = Duration::from_secs(1);
/// Default QUIC keep-alive interval.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_millis(500);
/// Default QUIC idle timeout: a silent edge is declared gone 1.2–1.7 s after
/// its last packet (the timer restarts on the first ping sent after a packet
/// received).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(1200);
/// Shortest wait after the edge refused our credentials.
const MIN_REFUSED_WAIT: Duration = Duration::from_secs(10);
/// Default interval at which a connection on the TCP fallback tries QUIC again.
pub const DEFAULT_QUIC_RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Which transports the connector uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// QUIC; a connection whose QUIC handshake fails moves to TCP at once,
    /// and back to QUIC when a handshake succeeds again (the default).
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TCP only (TLS over TCP with the stream multiplexer).
    Tcp,
}

/// Everything the connector runs with. [`ConnectorConfig::from_token`] fills the
/// documented defaults.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// Account owning the tunnel.
    pub account_id: String,
    /// Tunnel to serve.
    pub tunnel_id: String,
    /// Tunnel secret.
    pub secret: Vec<u8>,
    /// Edge addresses (`host:port`); connection `i` dials `edges[i % len]`.
    pub edges: Vec<String>,
    /// How the edge certificate is trusted.
    pub trust: EdgeTrust,
    /// HA connections to keep (default 4).
    pub ha_connections: u8,
    /// Resolvers for DNS questions (default none: the host's own resolution).
    pub dns_resolvers: Vec<SocketAddr>,
    /// Local destination policy (default: allow all).
    pub policy: Policy,
    /// Address of `/ready`, `/healthcheck`, `/metrics` (default `127.0.0.1:20241`; `None` disables).
    pub metrics_addr: Option<SocketAddr>,
    /// While the metrics port is taken, how many ports above it to try in
    /// turn (default 4: 20241–20245, as cloudflared; 0 for an address given
    /// explicitly).
    pub metrics_fallback: u16,
    /// Time in-flight streams get to finish on shutdown (default 30 s).
    pub grace_period: Duration,
    /// Default TCP connect timeout to origins (default 10 s).
    pub connect_timeout: Duration,
    /// This process's id, reported to the edge (default: a fresh UUID).
    pub connector_id: String,
    /// QUIC keep-alive interval: a connection that sent nothing for this long
    /// sends a ping (default 500 ms).
    pub keep_alive: Duration,
    /// QUIC idle timeout: a connection that received nothing for this long is
    /// lost (default 1.2 s). The connection uses the smaller of this and the
    /// edge's own.
    pub idle_timeout: Duration,
    /// Transports to use (default [`Protocol::Auto`]).
    pub protocol: Protocol,
    /// TCP port of the edge's fallback listener (default: the token's, else
    /// the edge address's port, as the edge listens on both by default).
    pub tcp_port: Option<u16>,
    /// On TCP under [`Protocol::Auto`], how often to try QUIC again (default
    /// 30 s; zero: never).
    pub quic_retry_interval: Duration,
}

impl ConnectorConfig {
    /// A configuration from a decoded token, with defaults for the rest.
    pub fn from_token(token: &TunnelToken) -> anyhow::Result<Self> {
        let fp = hex::decode(&token.ca_sha256).context("token CA fingerprint")?;
        let fingerprint: [u8; 32] = fp
            .try_into()
            .map_err(|_| anyhow::anyhow!("the token's CA fingerprint is not 32 bytes"))?;
        Ok(ConnectorConfig {
            account_id: token.account_id.clone(),
            tunnel_id: token.tunnel_id.clone(),
            secret: token.secret_bytes()?,
            edges: token.edges.clone(),
            trust: EdgeTrust::Fingerprint(fingerprint),
            ha_connections: 4,
            dns_resolvers: Vec::new(),
            policy: Policy::default(),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 20241))),
            metrics_fallback: 4,
            grace_period: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            connector_id: uuid::Uuid::new_v4().to_string(),
            keep_alive: DEFAULT_KEEP_ALIVE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            protocol: Protocol::Auto,
            tcp_port: token.tcp_port,
            quic_retry_interval: DEFAULT_QUIC_RETRY_INTERVAL,
        })
    }
}

/// State shared by every connection of the connector.
pub struct Shared {
    /// The configuration.
    pub config: ConnectorConfig,
    /// Exported metrics (and readiness).
    pub metrics: Arc<Metrics>,
    /// The local policy.
    pub policy: Policy,
    /// DNS forwarding.
    pub dns: DnsForwarder,
    /// Tracks in-flight data streams for graceful shutdown.
    pub tracker: TaskTracker,
    client_config: quinn::ClientConfig,
    tcp_tls: Arc<rustls::ClientConfig>,
    tcp_config: warren_transport::TcpConfig,
}

fn transport(config: &ConnectorConfig) -> anyhow::Result<quinn::TransportConfig> {
    anyhow::ensure!(
        !config.keep_alive.is_zero() && config.keep_alive < config.idle_timeout,
        "the keep-alive interval ({:?}) must be more than 0 and less than the idle timeout ({:?})",
        config.keep_alive,
        config.idle_timeout
    );
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| anyhow::anyhow!("idle timeout {:?} is too long", config.idle_timeout))?;
    let mut t = warren_transport::quic::transport_config();
    t.keep_alive_interval(Some(config.keep_alive))
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(4096u32.into())
        .max_concurrent_uni_streams(16u32.into());
    Ok(t)
}

/// Runs the connector until `shutdown` completes, then unregisters every
/// connection, lets in-flight streams finish within the grace period, and returns.
pub async fn run(
    config: ConnectorConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.edges.is_empty() {
        anyhow::bail!("no edge address: pass --edge or use a token that names one");
    }
    let metrics = Arc::new(Metrics::new(config.connector_id.clone()));
    if let Some(addr) = config.metrics_addr {
        let listener = metrics::bind(addr, config.metrics_fallback)
            .await
            .with_context(|| format!("cannot listen on the metrics address {addr}"))?;
        info!(addr = %listener.local_addr()?, "serving /ready, /healthcheck and /metrics");
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }
    let (client_config, tcp_tls) = tls::client_config(&config.trust, transport(&config)?)?;
    let tcp_config = warren_transport::TcpConfig {
        keep_alive: config.keep_alive,
        idle_timeout: config.idle_timeout,
        ..Default::default()
    };
    let shared = Arc::new(Shared {
        tcp_tls,
        tcp_config,
        policy: config.policy.clone(),
        dns: DnsForwarder::new(config.dns_resolvers.clone()).with_policy(config.policy.clone()),
        metrics,
        tracker: TaskTracker::new(),
        client_config,
        config,
    });
    let cancel = CancellationToken::new();
    let mut sessions = Vec::new();
    for i in 0..shared.config.ha_connections {
        let edge = shared.config.edges[usize::from(i) % shared.config.edges.len()].clone();
        sessions.push(tokio::spawn(supervise(
            shared.clone(),
            i,
            edge,
            cancel.clone(),
        )));
    }
    shutdown.await;
    info!("shutting down: unregistering connections");
    cancel.cancel();
    let mut open = Vec::new();
    for s in sessions {
        if let Ok(Some(pair)) = s.await {
            open.push(pair);
        }
    }
    shared.tracker.close();
    let in_flight = shared.tracker.len();
    if in_flight > 0 {
        info!(in_flight, grace = ?shared.config.grace_period, "waiting for in-flight streams");
    }
    if tokio::time::timeout(shared.config.grace_period, shared.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            left = shared.tracker.len(),
            "grace period over; closing streams still open"
        );
    }
    for (endpoint, conn) in open {
        conn.close(0, b"connector shutting down");
        if let Some(endpoint) = endpoint {
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
    }
    info!("connector stopped");
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT): the shutdown signal of Warren's daemons.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Keeps connection `index` up forever. A registered connection that is lost
/// (reset by a restarted edge, closed, timed out) after
/// [`IMMEDIATE_REDIAL_AFTER`] is re-dialled at once; every other attempt waits
/// a full-jitter backoff. Under [`Protocol::Auto`] a failed QUIC dial is
/// followed at once by a TCP dial; a failed TCP dial waits its backoff and
/// starts over with QUIC; a TCP connection moves back to QUIC when QUIC gets
/// through again.
async fn supervise(
    shared: Arc<Shared>,
    index: u8,
    edge: String,
    cancel: CancellationToken,
) -> Option<(Option<quinn::Endpoint>, warren_transport::Conn)> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(32));
    let metrics = shared.metrics.clone();
    let protocol = shared.config.protocol;
    let mut transport = match protocol {
        Protocol::Tcp => Transport::Tcp,
        Protocol::Auto | Protocol::Quic => Transport::Quic,
    };
    metrics.conn_state(None, Some("connecting"));
    loop {
        if cancel.is_cancelled() {
            metrics.conn_state(Some("connecting"), None);
            return None;
        }
        let delay = match session::run(&shared, index, &edge, transport, &cancel).await {
            SessionEnd::Shutdown(endpoint, conn) => {
                metrics.conn_state(Some("connecting"), None);
                return Some((endpoint, conn));
            }
            SessionEnd::QuicAgain => {
                transport = Transport::Quic;
                backoff.reset();
                Duration::ZERO
            }
            SessionEnd::Lost { up_for, reason } => {
                if up_for >= STABLE_PERIOD {
                    backoff.reset();
                }
                let d = if up_for >= IMMEDIATE_REDIAL_AFTER {
                    Duration::ZERO
                } else {
                    backoff.next_delay()
                };
                warn!(index, %edge, transport = transport.name(), %reason, up_for = ?up_for, retry_in = ?d, "tunnel connection lost");
                d
            }
            SessionEnd::Refused {
                message,
                retry_after,
            } => {
                let base = retry_after.max(MIN_REFUSED_WAIT);
                let d = base + Backoff::new(base / 2, base / 2).next_delay();
                error!(
                    index, %edge, retry_in = ?d,
                    "the edge refused this connector: {message}. The token is wrong, revoked, or for another edge."
                );
                d
            }
            SessionEnd::Failed(reason)
                if protocol == Protocol::Auto && transport == Transport::Quic =>
            {
                warn!(index, %edge, %reason, "QUIC failed; trying the TCP fallback");
                transport = Transport::Tcp;
                Duration::ZERO
            }
            SessionEnd::Failed(reason) => {
                let d = backoff.next_delay();
                if protocol == Protocol::Auto {
                    transport = Transport::Quic;
                    error!(index, %edge, %reason, retry_in = ?d, "could not connect to the edge over QUIC (UDP) nor TCP: check that the edge address is right and that outbound UDP or TCP to its port is allowed");
                } else {
                    warn!(index, %edge, transport = transport.name(), %reason, retry_in = ?d, "could not connect to the edge");
                }
                d
            }
        };
        if delay.is_zero() {
            continue;
        }
        metrics.conn_state(Some("connecting"), Some("backoff"));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => {}
        }
        metrics.conn_state(Some("backoff"), Some("connecting"));
    }
}
