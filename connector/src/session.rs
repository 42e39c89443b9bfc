//! One tunnel connection's life: dial, register on the control stream, serve
//! data streams and DNS questions, unregister on shutdown.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use warren_protocol::io::read_message;
use warren_protocol::messages::{
    ControlMessage, DnsAnswer, DnsQuery, RegisterRequest, RegisterResponse, WireMessage,
};
use warren_protocol::preamble::{self, StreamKind};

use crate::{Shared, forward};

/// Time to finish the QUIC handshake with an edge.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the edge has to answer a registration or an unregister.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// DNS questions answered at once per connection.
const DNS_CONCURRENCY: usize = 256;

/// How a session ended.
pub enum SessionEnd {
    /// Shutdown requested: unregistered; the connection stays open for in-flight streams.
    Shutdown(quinn::Endpoint, quinn::Connection),
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
}

fn endpoint_for(addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    quinn::Endpoint::client(local)
}

/// Runs one connection to `edge` until it is lost, refused, or `cancel` fires.
pub async fn run(
    shared: &Arc<Shared>,
    index: u8,
    edge: &str,
    cancel: &CancellationToken,
) -> SessionEnd {
    let addr = match tokio::net::lookup_host(edge).await.map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) => return SessionEnd::Failed(format!("edge address {edge} resolved to nothing")),
        Err(e) => return SessionEnd::Failed(format!("cannot resolve edge address {edge}: {e}")),
    };
    let endpoint = match endpoint_for(addr) {
        Ok(e) => e,
        Err(e) => return SessionEnd::Failed(format!("cannot open a UDP socket: {e}")),
    };
    let connecting = match endpoint.connect_with(
        shared.client_config.clone(),
        addr,
        warren_protocol::EDGE_SERVER_NAME,
    ) {
        Ok(c) => c,
        Err(e) => return SessionEnd::Failed(format!("cannot dial {addr}: {e}")),
    };
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return SessionEnd::Failed(format!("handshake with {addr} failed: {e}")),
        Err(_) => return SessionEnd::Failed(format!("no answer from edge {addr}")),
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
            conn.close(0u32.into(), b"registration refused");
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
    info!(index, %addr, edge = %edge_name, connection = %connection_id, "registered tunnel connection");

    let dns = tokio::spawn(dns_loop(shared.clone(), conn.clone()));
    let end = loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((s, r)) => {
                    shared.tracker.spawn(forward::serve_stream(shared.clone(), s, r));
                }
                Err(e) => {
                    break SessionEnd::Lost { up_for: up_since.elapsed(), reason: e.to_string() };
                }
            },
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

async fn unregister(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
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

async fn dns_loop(shared: Arc<Shared>, conn: quinn::Connection) {
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
