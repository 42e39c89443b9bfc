//! The tunnel edge: the QUIC listener connectors dial, and next to it the TCP
//! fallback listener (TLS over TCP, on the same port number by default) for
//! connectors whose network blocks UDP; registration on each connection's
//! control stream, and the per-connection loops (DNS answers, unregister,
//! lease refresh) — the same over either transport.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quinn::crypto::rustls::QuicServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use warren_protocol::io::{ReadError, read_message, read_preamble};
use warren_protocol::messages::{
    ControlMessage, DnsAnswer, RefusalReason, RegisterRequest, RegisterResponse, WireMessage,
};
use warren_protocol::preamble::StreamKind;
use warren_store::{ConnectionRecord, Store, rfc3339, secret_matches};
use warren_transport::{Conn, RecvHalf, SendHalf, TcpConfig};

use crate::ca::{CaError, EdgeCa};
use crate::registry::{LiveConnection, Registry};
use crate::reset_key::ResetKey;
use crate::tunnels::Tunnels;

/// Default QUIC keep-alive interval of the edge (and of the connector).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_millis(500);
/// Default QUIC idle timeout of the edge (and of the connector). QUIC restarts
/// the idle timer on every packet received and on the first ping sent after
/// one, so a dead peer is noticed 1.2–1.7 s after its last packet.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(1200);

/// Where the edge takes tunnel connections over TCP (for connectors whose
/// network blocks UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpListen {
    /// TCP on the QUIC listener's address and port (the default, as
    /// cloudflared's edge uses 7844 for both). When another socket holds that
    /// TCP port the edge runs without the fallback and warns.
    SamePort,
    /// TCP on this address (e.g. port 443 where only HTTPS gets out).
    At(SocketAddr),
    /// No TCP fallback.
    Off,
}

/// Settings of the tunnel edge. Every field has a documented default from [`EdgeConfig::new`].
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// UDP address to listen on (default `0.0.0.0:7844`).
    pub listen: SocketAddr,
    /// The TCP fallback listener (default [`TcpListen::SamePort`]).
    pub tcp_listen: TcpListen,
    /// Directory holding the edge CA for [`TunnelEdge::bind`] (created if
    /// missing; [`TunnelEdge::bind_with_ca`] is given its CA instead).
    pub data_dir: PathBuf,
    /// This node's name, shown as `colo_name` (default: the host name).
    pub edge_name: String,
    /// Extra DNS names for the edge certificate (default none; connectors verify
    /// the fixed name `warren-edge` and the pinned CA).
    pub extra_cert_names: Vec<String>,
    /// Time a new connection has to register (default 10 s).
    pub registration_timeout: Duration,
    /// Lease of a connection's record in the store, refreshed at a third of it (default 30 s).
    pub lease: Duration,
    /// QUIC keep-alive interval: a connection that sent nothing for this long
    /// sends a ping (default 500 ms).
    pub keep_alive: Duration,
    /// QUIC idle timeout: a connection that received nothing for this long is
    /// declared dead, and its streams fail (default 1.2 s). The connection uses
    /// the smaller of this and the connector's own.
    pub idle_timeout: Duration,
}

impl EdgeConfig {
    /// Defaults for an edge listening on `listen` with its state in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        let edge_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "warren-edge".to_owned());
        EdgeConfig {
            listen,
            tcp_listen: TcpListen::SamePort,
            data_dir,
            edge_name,
            extra_cert_names: Vec::new(),
            registration_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            keep_alive: DEFAULT_KEEP_ALIVE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    /// The CA could not be loaded or created.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The QUIC stateless-reset key could not be loaded or created (the
    /// message names the file).
    #[error("{0}")]
    ResetKey(std::io::Error),
    /// TLS configuration failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
}

/// A running tunnel edge: accepts connector connections until shut down.
pub struct TunnelEdge {
    endpoint: quinn::Endpoint,
    tcp: Option<(tokio::net::TcpListener, Arc<rustls::ServerConfig>)>,
    ca: Arc<EdgeCa>,
    ctx: Arc<EdgeCtx>,
}

struct EdgeCtx {
    config: EdgeConfig,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
}

impl TunnelEdge {
    /// Loads (or creates) the CA in `config.data_dir` and binds the QUIC
    /// listener. Needs a tokio runtime.
    pub fn bind(config: EdgeConfig, store: Arc<dyn Store>) -> Result<TunnelEdge, EdgeError> {
        let ca = EdgeCa::load_or_create(&config.data_dir)?;
        Self::bind_with_ca(config, store, Arc::new(ca))
    }

    /// Binds the QUIC listener with an edge certificate issued by `ca` (a
    /// node uses the cluster CA, so connectors accept every node), and the
    /// QUIC stateless-reset key kept in `<data_dir>/quic-reset.key`. Needs a
    /// tokio runtime.
    pub fn bind_with_ca(
        config: EdgeConfig,
        store: Arc<dyn Store>,
        ca: Arc<EdgeCa>,
    ) -> Result<TunnelEdge, EdgeError> {
        let reset_key = ResetKey::load_or_create(&config.data_dir).map_err(EdgeError::ResetKey)?;
        let (chain, key) = ca.issue_edge_cert(&config.extra_cert_names)?;
        // X25519MLKEM768 preferred, classical groups for older connectors.
        let provider = warren_transport::pq::crypto_provider();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| EdgeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| EdgeError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![warren_protocol::TUNNEL_ALPN.to_vec()];
        let tcp_tls = warren_transport::tcp::server_tls(&tls);
        let quic_tls =
            QuicServerConfig::try_from(tls).map_err(|e| EdgeError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
        let mut transport = warren_transport::quic::transport_config();
        transport
            .keep_alive_interval(Some(config.keep_alive))
            .max_idle_timeout(Some(
                // Longer than QUIC can say (2^62 ms): the longest it can.
                quinn::IdleTimeout::try_from(config.idle_timeout)
                    .unwrap_or_else(|_| quinn::VarInt::MAX.into()),
            ))
            // The connector opens only its control stream and DNS answer streams.
            .max_concurrent_bidi_streams(4u32.into())
            .max_concurrent_uni_streams(256u32.into())
            // Windows sized for fast links: a stream may have 8 MiB in flight.
            .stream_receive_window((8u32 * 1024 * 1024).into())
            .receive_window((32u32 * 1024 * 1024).into())
            .send_window(32 * 1024 * 1024);
        server.transport_config(Arc::new(transport));
        let bind_error = |source| EdgeError::Bind {
            addr: config.listen,
            source,
        };
        let endpoint = warren_transport::quic::endpoint(
            config.listen,
            reset_key.endpoint_config(),
            Some(server),
        )
        .map_err(bind_error)?;
        let tcp_addr = match config.tcp_listen {
            TcpListen::SamePort => Some(endpoint.local_addr().map_err(bind_error)?),
            TcpListen::At(addr) => Some(addr),
            TcpListen::Off => None,
        };
        let bind_tcp = |addr: SocketAddr| {
            let std = std::net::TcpListener::bind(addr)?;
            std.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std)
        };
        let tcp = match tcp_addr.map(|addr| (addr, bind_tcp(addr))) {
            Some((_, Ok(listener))) => Some((listener, tcp_tls)),
            // The default place is taken (by another program's TCP socket on
            // the QUIC port number): QUIC still serves; say how to get the
            // fallback back. A place configured explicitly must be free.
            Some((addr, Err(e)))
                if config.tcp_listen == TcpListen::SamePort
                    && e.kind() == std::io::ErrorKind::AddrInUse =>
            {
                warn!(
                    %addr,
                    "TCP {addr} is taken: no TCP fallback for connectors whose UDP is blocked; \
                     free it or set [tunnel] tcp_listen to another address"
                );
                None
            }
            Some((addr, Err(source))) => return Err(EdgeError::Bind { addr, source }),
            None => None,
        };
        Ok(TunnelEdge {
            endpoint,
            tcp,
            ca,
            ctx: Arc::new(EdgeCtx {
                config,
                store,
                registry: Arc::new(Registry::default()),
            }),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The TCP fallback listener's address, unless it is off.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The edge CA (its fingerprint goes into tokens).
    pub fn ca(&self) -> &EdgeCa {
        &self.ca
    }

    /// Handle for opening streams and asking DNS through registered tunnels.
    pub fn tunnels(&self) -> Tunnels {
        Tunnels::new(self.ctx.registry.clone())
    }

    /// Accepts connections (QUIC, and TCP unless off) until `shutdown`
    /// completes, then closes every connection (connectors reconnect
    /// elsewhere or later) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut conns = JoinSet::new();
        let stop_tcp = CancellationToken::new();
        let (tcp_conns_tx, mut tcp_conns) = tokio::sync::mpsc::unbounded_channel::<Conn>();
        if let Some((listener, tls)) = self.tcp {
            let cfg = TcpConfig {
                keep_alive: self.ctx.config.keep_alive,
                idle_timeout: self.ctx.config.idle_timeout,
                // A connector opens its control stream and DNS answer streams
                // (as QUIC's 4 + 256 limits); a TLS handshake gets 5 s.
                max_streams: 260,
                handshake_timeout: Duration::from_secs(5),
                ..TcpConfig::default()
            };
            tokio::spawn(warren_transport::tcp::serve(
                listener,
                tls,
                cfg,
                move |conn| {
                    let _ = tcp_conns_tx.send(conn);
                },
                stop_tcp.clone(),
            ));
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let ctx = self.ctx.clone();
                    conns.spawn(async move {
                        let remote = incoming.remote_address();
                        match incoming.await {
                            Ok(c) => serve_connection(Conn::Quic(c), ctx).await,
                            Err(e) => debug!(%remote, error = %e, "handshake failed"),
                        }
                    });
                }
                Some(conn) = tcp_conns.recv() => {
                    conns.spawn(serve_connection(conn, self.ctx.clone()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        info!("tunnel edge shutting down");
        stop_tcp.cancel();
        for live in self.ctx.registry.all() {
            live.conn().close(0, b"edge shutting down");
        }
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"edge shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Serves one connection, either transport, from registration to its end.
async fn serve_connection(conn: Conn, ctx: Arc<EdgeCtx>) {
    let remote = conn.remote_address();
    let transport = conn.transport_name();
    let span = info_span!("tunnel_conn", %remote, transport, conn = tracing::field::Empty);
    async move {
        let registered =
            tokio::time::timeout(ctx.config.registration_timeout, register(&conn, &ctx)).await;
        let Ok(Some((live, control_send, control_recv))) = registered else {
            conn.close(2, b"not registered");
            return;
        };
        let record = live.record().clone();
        tracing::Span::current().record("conn", record.id.as_str());
        info!(tunnel = %record.tunnel_id, index = record.conn_index, "connection registered");
        ctx.registry.insert(live.clone());

        let mut tasks = JoinSet::new();
        tasks.spawn(dns_datagrams(live.clone()));
        tasks.spawn(dns_streams(live.clone()));
        tasks.spawn(refresh_lease(ctx.clone(), record.clone()));
        tasks.spawn(control_loop(live.clone(), control_send, control_recv));
        let reason = conn.closed().await;
        tasks.abort_all();
        ctx.registry.remove(&record.tunnel_id, &record.id);
        if let Err(e) = ctx.store.remove_connection(&record.id).await {
            warn!(error = %e, "could not remove the connection record; its lease will expire");
        }
        info!(%reason, "connection closed");
    }
    .instrument(span)
    .await
}

type ControlStreams = (Arc<LiveConnection>, SendHalf, RecvHalf);

async fn register(conn: &Conn, ctx: &EdgeCtx) -> Option<ControlStreams> {
    let (mut send, mut recv) = conn.accept_bi().await.ok()?;
    let req = match read_message::<RegisterRequest, _>(&mut recv).await {
        Ok(r) => r,
        Err(ReadError::Decode(e)) => {
            debug!(error = %e, "malformed registration");
            let refusal = (RefusalReason::Malformed, "malformed registration", 5_000);
            refuse(conn, &mut send, refusal).await;
            return None;
        }
        Err(ReadError::Io(_)) => return None,
    };
    let record = match admit(conn, ctx, req).await {
        Ok(r) => r,
        Err(refusal) => {
            refuse(conn, &mut send, refusal).await;
            return None;
        }
    };
    let ok = RegisterResponse::Ok {
        connection_id: record.id.clone(),
        edge_name: record.edge_name.clone(),
    };
    if send.write_all(&ok.to_frame()).await.is_err() {
        let _ = ctx.store.remove_connection(&record.id).await;
        return None;
    }
    Some((
        Arc::new(LiveConnection::new(record, conn.clone())),
        send,
        recv,
    ))
}

/// Why a registration is refused: reason, plain words, retry-after in ms.
type Refusal = (RefusalReason, &'static str, u32);

const STORE_DOWN: Refusal = (RefusalReason::Overloaded, "edge storage unavailable", 5_000);

/// Checks the credentials and records the connection.
async fn admit(
    conn: &Conn,
    ctx: &EdgeCtx,
    req: RegisterRequest,
) -> Result<ConnectionRecord, Refusal> {
    let tunnel = ctx.store.get_tunnel(&req.tunnel_id).await.map_err(|e| {
        warn!(error = %e, "store unavailable during registration");
        STORE_DOWN
    })?;
    let valid = tunnel.as_ref().is_some_and(|t| {
        t.account_id == req.account_id && secret_matches(&t.secret_hash, &req.secret)
    });
    if !valid {
        info!(tunnel = %req.tunnel_id, "registration refused: unknown tunnel or wrong secret");
        return Err((
            RefusalReason::BadCredentials,
            "unknown tunnel or wrong secret: check the token",
            30_000,
        ));
    }
    let record = ConnectionRecord {
        id: uuid::Uuid::new_v4().to_string(),
        tunnel_id: req.tunnel_id,
        connector_id: req.connector_id,
        client_version: req.version,
        edge_name: ctx.config.edge_name.clone(),
        origin_ip: conn.remote_address().ip().to_string(),
        opened_at: rfc3339(SystemTime::now()),
        conn_index: req.conn_index,
        ha_connections: req.ha_connections,
    };
    ctx.store
        .put_connection(&record, ctx.config.lease)
        .await
        .map_err(|e| {
            warn!(error = %e, "could not record the connection");
            STORE_DOWN
        })?;
    Ok(record)
}

async fn refuse(conn: &Conn, send: &mut SendHalf, refusal: Refusal) {
    let (reason, message, retry_after_ms) = refusal;
    let msg = RegisterResponse::Refused {
        reason,
        message: message.to_owned(),
        retry_after_ms,
    };
    if send.write_all(&msg.to_frame()).await.is_ok() {
        let _ = send.finish();
        // Let the connector read the refusal and close first.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    }
}

async fn dns_datagrams(live: Arc<LiveConnection>) {
    while let Ok(d) = live.conn().read_datagram().await {
        match DnsAnswer::from_bytes(&d) {
            Ok(answer) => live.deliver_dns(answer),
            Err(e) => debug!(error = %e, "dropping malformed dns datagram"),
        }
    }
}

async fn dns_streams(live: Arc<LiveConnection>) {
    while let Ok(mut recv) = live.conn().accept_uni().await {
        let live = live.clone();
        tokio::spawn(async move {
            let read = async {
                match read_preamble(&mut recv).await? {
                    StreamKind::DnsAnswer => Ok(read_message::<DnsAnswer, _>(&mut recv).await?),
                    other => Err(ReadError::Io(std::io::Error::other(format!(
                        "unexpected {other:?} stream from connector"
                    )))),
                }
            };
            match tokio::time::timeout(Duration::from_secs(5), read).await {
                Ok(Ok(answer)) => live.deliver_dns(answer),
                Ok(Err(e)) => debug!(error = %e, "dropping malformed dns stream"),
                Err(_) => debug!("dns answer stream too slow"),
            }
        });
    }
}

async fn refresh_lease(ctx: Arc<EdgeCtx>, record: ConnectionRecord) {
    let mut tick = tokio::time::interval(ctx.config.lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = ctx.store.put_connection(&record, ctx.config.lease).await {
            warn!(error = %e, "could not refresh the connection lease");
        }
    }
}

async fn control_loop(live: Arc<LiveConnection>, mut send: SendHalf, mut recv: RecvHalf) {
    loop {
        match read_message::<ControlMessage, _>(&mut recv).await {
            Ok(ControlMessage::Unregister) => {
                info!("connector unregistered; draining");
                live.set_draining();
                if send
                    .write_all(&ControlMessage::UnregisterAck.to_frame())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(ControlMessage::UnregisterAck) => debug!("ignoring unexpected unregister ack"),
            Err(ReadError::Decode(e)) => {
                debug!(error = %e, "malformed control message; closing connection");
                live.close("malformed control message");
                return;
            }
            Err(ReadError::Io(_)) => return,
        }
    }
}
