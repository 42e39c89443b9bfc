//! What the VPC router does through a tunnel: open a TCP stream to an address
//! inside the private network, or ask that network a DNS question.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;
use warren_protocol::io::{ReadError, read_message};
use warren_protocol::messages::{ConnectRequest, ConnectResponse, DnsQuery, WireMessage};
use warren_protocol::preamble::{self, StreamKind};
use warren_protocol::{ErrorCode, ProxyError};
use warren_transport::{RecvHalf, SendHalf};

use crate::peer::PeerLink;
use crate::registry::{LiveConnection, Registry, StreamGuard};

/// How long to wait for a DNS answer on one connection before trying another.
const DNS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// DNS attempts per query (datagrams can be lost).
const DNS_ATTEMPTS: usize = 3;
/// Extra time granted over the connect timeout for the connector's answer to travel.
const CONNECT_ANSWER_MARGIN: Duration = Duration::from_secs(2);

/// A TCP connection to a private address, carried by one tunnel stream
/// (QUIC, or the TCP fallback's multiplexer). Shutting down the write half
/// sends FIN to the origin (half-close).
pub struct TunnelStream {
    send: SendHalf,
    recv: RecvHalf,
    _guard: Option<StreamGuard>,
}

impl TunnelStream {
    /// A stream relayed over the node-to-node link (no local connection to track).
    pub(crate) fn relayed(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        TunnelStream {
            send: send.into(),
            recv: recv.into(),
            _guard: None,
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

/// Handle for working through the tunnels registered on this edge node. Cheap to clone.
#[derive(Clone)]
pub struct Tunnels {
    registry: Arc<Registry>,
    next_dns_id: Arc<AtomicU32>,
    /// The node-to-node link, for tunnels whose connections are on other nodes.
    peers: Arc<OnceLock<Weak<PeerLink>>>,
}

fn unavailable(tunnel_id: &str) -> ProxyError {
    ProxyError::new(
        ErrorCode::DestinationUnavailable,
        format!("tunnel {tunnel_id} has no live connection"),
    )
}

/// Outcome of trying one candidate.
enum Attempt<T> {
    Done(Result<T, ProxyError>),
    /// This candidate is gone (its connection closed, or the stream was reset
    /// before the connector answered): nothing reached the origin, another may work.
    TryNext,
}

/// Somewhere a data stream or a DNS question can be tried.
pub(crate) enum Candidate {
    /// A live connection of the tunnel on this node.
    Local(Arc<LiveConnection>),
}

/// The candidates of one operation, in the order they are tried: each at
/// most once. The registry is read again before each pick, so a connection
/// that closed meanwhile is skipped and one that registered meanwhile is
/// tried; closing and closed connections are never picked.
pub(crate) struct Candidates<'a> {
    registry: &'a Registry,
    tunnel_id: &'a str,
    tried: Vec<Arc<LiveConnection>>,
}

impl Iterator for Candidates<'_> {
    type Item = Candidate;

    /// The next candidate not tried yet; `None` when every one has been.
    fn next(&mut self) -> Option<Candidate> {
        let fresh = self
            .registry
            .candidates(self.tunnel_id)
            .into_iter()
            .find(|c| !self.tried.iter().any(|t| Arc::ptr_eq(t, c)))?;
        self.tried.push(fresh.clone());
        Some(Candidate::Local(fresh))
    }
}

impl Tunnels {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Tunnels {
            registry,
            next_dns_id: Arc::new(AtomicU32::new(1)),
            peers: Arc::new(OnceLock::new()),
        }
    }

    /// Relays to other nodes, through `link`, what this node's own
    /// connections cannot carry (set once).
    pub fn set_peers(&self, link: &Arc<PeerLink>) {
        let _ = self.peers.set(Arc::downgrade(link));
    }

    fn peers(&self) -> Option<Arc<PeerLink>> {
        self.peers.get().and_then(Weak::upgrade)
    }

    /// The registry of live connections (for status and administration).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Opens a TCP connection to `dest` inside the tunnel's network, on one of
    /// this node's connections, else relayed through another node that holds
    /// some. Fails with `destination_unavailable` when no connection is live
    /// anywhere; otherwise with the connector's code (`connection_refused`,
    /// `connection_timeout`, `destination_forbidden`, …). A connection that
    /// closes, or whose stream is reset, before the connector answers is left
    /// for the next live one (here or, after those, on another node).
    pub async fn open_tcp(
        &self,
        tunnel_id: &str,
        dest: SocketAddr,
        timeout: Duration,
        flow_id: &str,
    ) -> Result<TunnelStream, ProxyError> {
        let local = self.open_tcp_local(tunnel_id, dest, timeout, flow_id).await;
        match (local, self.peers()) {
            (Err(e), Some(peers)) if e.code == ErrorCode::DestinationUnavailable => {
                let request = ConnectRequest {
                    destination: dest,
                    flow_id: flow_id.to_owned(),
                    timeout_ms: timeout_ms(timeout),
                };
                peers.open_tcp(tunnel_id, &request).await
            }
            (r, _) => r,
        }
    }

    /// [`Tunnels::open_tcp`] on this node's own connections only.
    pub async fn open_tcp_local(
        &self,
        tunnel_id: &str,
        dest: SocketAddr,
        timeout: Duration,
        flow_id: &str,
    ) -> Result<TunnelStream, ProxyError> {
        let request = ConnectRequest {
            destination: dest,
            flow_id: flow_id.to_owned(),
            timeout_ms: timeout_ms(timeout),
        };
        let mut header = preamble::encode(StreamKind::Connect).to_vec();
        header.extend_from_slice(&request.to_frame());
        for candidate in self.candidates(tunnel_id) {
            let attempt = match &candidate {
                Candidate::Local(conn) => {
                    open_on(conn, &header, timeout + CONNECT_ANSWER_MARGIN).await
                }
            };
            match attempt {
                Attempt::Done(r) => return r,
                Attempt::TryNext => debug!(tunnel = tunnel_id, "connection gone; trying the next"),
            }
        }
        Err(unavailable(tunnel_id))
    }

    /// Sends a raw DNS query to `resolver` (or the connector's default) inside the
    /// tunnel's network and returns the raw response. A question whose
    /// connection closes before the answer is asked again on another
    /// connection at once; one left unanswered (datagrams can be lost) is
    /// asked again, on the next connection when there is one, up to
    /// [`DNS_ATTEMPTS`] times. A tunnel with no connection on this node is
    /// asked through another node that holds some.
    pub async fn dns_query(
        &self,
        tunnel_id: &str,
        resolver: Option<SocketAddr>,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, ProxyError> {
        if let Some(p) = self.peers()
            && self.registry.candidates(tunnel_id).is_empty()
        {
            return p.dns_query(tunnel_id, resolver, message).await;
        }
        self.dns_query_local(tunnel_id, resolver, message).await
    }

    /// [`Tunnels::dns_query`] on this node's own connections only.
    pub async fn dns_query_local(
        &self,
        tunnel_id: &str,
        resolver: Option<SocketAddr>,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, ProxyError> {
        let mut candidates = self.candidates(tunnel_id);
        let mut current = candidates.next();
        let mut unanswered = 0;
        while unanswered < DNS_ATTEMPTS {
            let Some(Candidate::Local(conn)) = &current else {
                break;
            };
            let id = self.next_dns_id.fetch_add(1, Ordering::Relaxed);
            match ask_on(conn, id, resolver, &message).await {
                DnsAttempt::Done(r) => return r,
                DnsAttempt::TryNext => current = candidates.next(),
                // Unanswered: the next connection if there is one, else this one again.
                DnsAttempt::Unanswered => {
                    unanswered += 1;
                    debug!(attempt = unanswered, "no dns answer; retrying");
                    if let Some(next) = candidates.next() {
                        current = Some(next);
                    }
                }
            }
        }
        // Unanswered on a live connection: the resolver's fault; otherwise every
        // connection died under the question.
        if unanswered > 0 {
            Err(ProxyError::new(
                ErrorCode::DnsError,
                "no answer from the tunnel's resolver",
            ))
        } else {
            Err(unavailable(tunnel_id))
        }
    }

    /// The candidates for one operation on `tunnel_id`, tried in turn.
    pub(crate) fn candidates<'a>(&'a self, tunnel_id: &'a str) -> Candidates<'a> {
        Candidates {
            registry: &self.registry,
            tunnel_id,
            tried: Vec::new(),
        }
    }
}

fn timeout_ms(timeout: Duration) -> u32 {
    timeout.as_millis().min(u32::MAX as u128) as u32
}

/// Outcome of one DNS question on one connection.
enum DnsAttempt {
    Done(Result<Vec<u8>, ProxyError>),
    /// The connection closed (or could not send): ask elsewhere.
    TryNext,
    /// No answer in time on a live connection.
    Unanswered,
}

async fn ask_on(
    conn: &LiveConnection,
    id: u32,
    resolver: Option<SocketAddr>,
    message: &[u8],
) -> DnsAttempt {
    let query = DnsQuery {
        id,
        resolver,
        message: message.to_vec(),
    };
    let answer = conn.expect_dns(id);
    if let Err(e) = conn.conn().send_datagram(Bytes::from(query.to_bytes())) {
        conn.forget_dns(id);
        debug!(error = %e, "dns datagram not sent");
        return DnsAttempt::TryNext;
    }
    let outcome = tokio::select! {
        answer = tokio::time::timeout(DNS_ATTEMPT_TIMEOUT, answer) => match answer {
            Ok(Ok(Ok(msg))) => DnsAttempt::Done(Ok(msg)),
            Ok(Ok(Err(code))) => {
                DnsAttempt::Done(Err(ProxyError::new(code, "the connector could not resolve")))
            }
            Ok(Err(_)) | Err(_) => DnsAttempt::Unanswered,
        },
        _ = conn.conn().closed() => DnsAttempt::TryNext,
    };
    conn.forget_dns(id);
    outcome
}

/// Opens a data stream on `conn`, sends its header and waits for the
/// connector's answer. Every failure before that answer (the stream could
/// not be opened or written, the connection closed, the stream was reset)
/// is [`Attempt::TryNext`].
async fn open_on(
    conn: &LiveConnection,
    header: &[u8],
    answer_timeout: Duration,
) -> Attempt<TunnelStream> {
    let guard = conn.track_stream();
    let Ok((mut send, mut recv)) = conn.conn().open_bi().await else {
        return Attempt::TryNext;
    };
    if send.write_all(header).await.is_err() {
        return Attempt::TryNext;
    }
    let response = tokio::time::timeout(
        answer_timeout,
        read_message::<ConnectResponse, _>(&mut recv),
    )
    .await;
    match response {
        Ok(Ok(ConnectResponse { error: None, .. })) => Attempt::Done(Ok(TunnelStream {
            send,
            recv,
            _guard: Some(guard),
        })),
        Ok(Ok(ConnectResponse {
            error: Some(code),
            message,
        })) => Attempt::Done(Err(ProxyError::new(code, message))),
        Ok(Err(ReadError::Decode(e))) => Attempt::Done(Err(ProxyError::new(
            ErrorCode::ConnectionTerminated,
            format!("malformed answer from the connector: {e}"),
        ))),
        // The connection died, or the stream was reset or ended, before the
        // answer: the origin got no byte (at most a TCP connect), so another
        // connection may carry it.
        Ok(Err(ReadError::Io(e))) => {
            debug!(error = %e, "tunnel stream broke before the connector answered");
            Attempt::TryNext
        }
        Err(_) => Attempt::Done(Err(ProxyError::new(
            ErrorCode::ConnectionTimeout,
            "the connector did not answer in time",
        ))),
    }
}
