//! One tunnel connection's life: dial (QUIC, or the TCP fallback), register
//! on the control stream, serve data streams and DNS questions, unregister
//! on shutdown — or, on `auto`'s TCP fallback, when QUIC gets through again.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warren_protocol::io::read_message;
use warren_protocol::messages::{
    ControlMessage, DnsAnswer, DnsQuery, RegisterRequest, RegisterResponse, WireMessage,
};
use warren_protocol::preamble::{self, StreamKind};
use warren_transport::{Conn, RecvHalf, SendHalf};

use crate::{Shared, forward};

/// Time to finish the QUIC handshake with an edge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the edge has to answer a registration or an unregister.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// DNS questions answered at once per connection.
const DNS_CONCURRENCY: usize = 256;

/// The transport a connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC over UDP (the edge's port).
    Quic,
    /// TLS over TCP with the stream multiplexer, where UDP is blocked.
    Tcp,
}

impl Transport {
    /// `quic` or `tcp`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

/// How a session ended.
pub enum SessionEnd {
    /// Shutdown requested: unregistered; the connection stays open for
    /// in-flight streams (with its QUIC endpoint, when QUIC).
    Shutdown(Option<quinn::Endpoint>, Conn),
    /// Registered, then lost after `up_for`.
    Lost {
        /// How long it was registered.
        up_for: Duration,
        /// Why it ended.
        reason: String,
    },
    /// The edge refused the credentials.
    Refused {
        /// The edge's words.
        message: String,
        /// How long the edge asked us to wait.
        retry_after: Duration,
    },
    /// Could not connect or register.
    Failed(String),
    /// A TCP session saw a QUIC handshake succeed: it unregistered (its
    /// in-flight streams finish on it) so the connection moves back to QUIC.
    QuicAgain,
}

fn endpoint_for(addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    warren_transport::quic::endpoint(local, quinn::EndpointConfig::default(), None)
}

/// A QUIC handshake with `addr`: the connection and its endpoint, or why not.
async fn dial_quic(
    shared: &Shared,
    addr: SocketAddr,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let endpoint = endpoint_for(addr).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let connecting = endpoint
        .connect_with(
            shared.client_config.clone(),
            addr,
            warren_protocol::EDGE_SERVER_NAME,
        )
        .map_err(|e| format!("cannot dial {addr}: {e}"))?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Ok((endpoint, c)),
        Ok(Err(e)) => Err(format!("QUIC handshake with {addr} failed: {e}")),
        Err(_) => Err(format!(
            "no QUIC answer from edge {addr} within {HANDSHAKE_TIMEOUT:?} (is UDP blocked?)"
        )),
    }
}

/// The TCP fallback's address for edge `addr`: its host, and the configured
/// TCP port (by default the same port number).
fn tcp_addr(shared: &Shared, addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip(), shared.config.tcp_port.unwrap_or(addr.port()))
}

/// Runs one connection to `edge` over `transport` until it is lost, refused,
/// `cancel` fires, or (`auto`'s TCP fallback with a QUIC retry interval) QUIC
/// works again.
pub async fn run(
    shared: &Arc<Shared>,
    index: u8,
    edge: &str,
    transport: Transport,
    cancel: &CancellationToken,
) -> SessionEnd {
    let addr = match tokio::net::lookup_host(edge).await.map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) => return SessionEnd::Failed(format!("edge address {edge} resolved to nothing")),
        Err(e) => return SessionEnd::Failed(format!("cannot resolve edge address {edge}: {e}")),
    };
    let (endpoint, conn, peer) = match transport {
        Transport::Quic => match dial_quic(shared, addr).await {
            Ok((endpoint, c)) => (Some(endpoint), Conn::Quic(c), addr),
            Err(e) => return SessionEnd::Failed(e),
        },
        Transport::Tcp => {
            let to = tcp_addr(shared, addr);
            match warren_transport::tcp::connect(
                to,
                shared.tcp_tls.clone(),
                warren_protocol::EDGE_SERVER_NAME,
                &shared.tcp_config,
            )
            .await
            {
                Ok(c) => (None, c, to),
                Err(e) => return SessionEnd::Failed(e.to_string()),
            }
        }
    };
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return SessionEnd::Failed("connection closed before registering".into());
    };
    let request = RegisterRequest {
        account_id: shared.config.account_id.clone(),
        tunnel_id: shared.config.tunnel_id.clone(),
        secret: shared.config.secret.clone(),
        conn_index: index,
        connector_id: shared.config.connector_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        features: vec!["dns-datagrams".to_owned()],
        ha_connections: shared.config.ha_connections,
    };
    if send.write_all(&request.to_frame()).await.is_err() {
        return SessionEnd::Failed("connection closed while registering".into());
    }
    let response = tokio::time::timeout(
        CONTROL_TIMEOUT,
        read_message::<RegisterResponse, _>(&mut recv),
    )
    .await;
    let (connection_id, edge_name) = match response {
        Ok(Ok(RegisterResponse::Ok {
            connection_id,
            edge_name,
        })) => (connection_id, edge_name),
        Ok(Ok(RegisterResponse::Refused {
            message,
            retry_after_ms,
            ..
        })) => {
            conn.close(0, b"registration refused");
            return SessionEnd::Refused {
                message,
                retry_after: Duration::from_millis(u64::from(retry_after_ms)),
            };
        }
        Ok(Err(e)) => return SessionEnd::Failed(format!("registration failed: {e}")),
        Err(_) => return SessionEnd::Failed("the edge did not answer the registration".into()),
    };
    let up_since = Instant::now();
    shared
        .metrics
        .conn_state(Some("connecting"), Some("registered"));
    info!(index, addr = %peer, transport = transport.name(), edge = %edge_name, connection = %connection_id, "registered tunnel connection");

    // On the TCP fallback (`auto`), keep trying QUIC: the connection goes back
    // as soon as UDP gets through. TCP chosen outright stays TCP.
    let quic_again = async {
        let retry = shared.config.quic_retry_interval;
        if transport == Transport::Quic
            || shared.config.protocol != crate::Protocol::Auto
            || retry.is_zero()
        {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(retry).await;
            match dial_quic(shared, addr).await {
                Ok((endpoint, c)) => {
                    c.close(0u32.into(), b"probe");
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
                    return;
                }
                Err(e) => debug!(index, error = %e, "QUIC still unreachable"),
            }
        }
    };
    tokio::pin!(quic_again);

    let dns = tokio::spawn(dns_loop(shared.clone(), conn.clone()));
    // This connection's streams (also in the connector-wide tracker).
    let streams = tokio_util::task::TaskTracker::new();
    let end = loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((s, r)) => {
                    let stream = forward::serve_stream(shared.clone(), s, r);
                    shared.tracker.spawn(streams.track_future(stream));
                }
                Err(e) => {
                    break SessionEnd::Lost { up_for: up_since.elapsed(), reason: e.to_string() };
                }
            },
            () = &mut quic_again => {
                info!(index, "QUIC gets through again: moving this connection back from TCP");
                unregister(&mut send, &mut recv).await;
                // Its streams in flight finish (within the grace period), then it closes.
                let (conn, grace) = (conn.clone(), shared.config.grace_period);
                streams.close();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(grace, streams.wait()).await;
                    conn.close(0, b"moved to QUIC");
                });
                break SessionEnd::QuicAgain;
            }
            () = cancel.cancelled() => {
                unregister(&mut send, &mut recv).await;
                break SessionEnd::Shutdown(endpoint.clone(), conn.clone());
            }
        }
    };
    dns.abort();
    shared
        .metrics
        .conn_state(Some("registered"), Some("connecting"));
    end
}

async fn unregister(send: &mut SendHalf, recv: &mut RecvHalf) {
    if send
        .write_all(&ControlMessage::Unregister.to_frame())
        .await
        .is_err()
    {
        return;
    }
    match tokio::time::timeout(CONTROL_TIMEOUT, read_message::<ControlMessage, _>(recv)).await {
        Ok(Ok(ControlMessage::UnregisterAck)) => debug!("unregistered"),
        other => warn!(
            ok = other.is_ok(),
            "the edge did not acknowledge the unregister"
        ),
    }
}

async fn dns_loop(shared: Arc<Shared>, conn: Conn) {
    let limit = Arc::new(Semaphore::new(DNS_CONCURRENCY));
    while let Ok(d) = conn.read_datagram().await {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!("dropping dns query: too many in flight");
            continue;
        };
        let (shared, conn) = (shared.clone(), conn.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let query = match DnsQuery::from_bytes(&d) {
                Ok(q) => q,
                Err(e) => {
                    debug!(error = %e, "dropping malformed dns query");
                    return;
                }
            };
            let result = shared.dns.answer(query.resolver, &query.message).await;
            let label = if result.is_ok() { "ok" } else { "error" };
            shared
                .metrics
                .dns_queries
                .get_or_create(&vec![("result", label)])
                .inc();
            if let Err(code) = result {
                shared.metrics.error(code);
            }
            let bytes = DnsAnswer {
                id: query.id,
                result,
            }
            .to_bytes();
            if conn
                .max_datagram_size()
                .is_some_and(|max| bytes.len() <= max)
            {
                let _ = conn.send_datagram(Bytes::from(bytes));
                return;
            }
            // Too large for a datagram: one unidirectional stream carries it.
            if let Ok(mut s) = conn.open_uni().await {
                let mut out = preamble::encode(StreamKind::DnsAnswer).to_vec();
                out.extend_from_slice(&warren_protocol::frame::frame(&bytes));
                if s.write_all(&out).await.is_ok() {
                    let _ = s.finish();
                }
            }
        });
    }
}
