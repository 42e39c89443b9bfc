//! The node-to-node link: edge nodes of one cluster reach each other over QUIC
//! (mutual TLS with certificates from the cluster CA) to relay a tunnel stream
//! or a DNS question to the node that holds the tunnel's connections, and to
//! fetch worker bundles and compiled components a node lacks.
//!
//! Every node registers itself in the store ([`NodeRecord`], under a lease)
//! with the address of its link, so nodes find each other through the store
//! and nothing is configured per pair. Which node holds tunnel T is read from
//! the live-connection registry (`edge_name` of T's connections).
//!
//! A stream on the link opens with the preamble (kind `Peer`), then one
//! [`PeerRequest`]; the answer is one [`PeerResponse`], then raw bytes. A
//! relayed request is served only from the receiving node's own connections,
//! so a relay never loops.

use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};
use warren_protocol::io::{ReadError, read_message, read_preamble};
use warren_protocol::messages::{ConnectRequest, PeerRequest, PeerResponse, WireMessage};
use warren_protocol::preamble::{self, StreamKind};
use warren_protocol::{ErrorCode, NODE_SERVER_NAME, ProxyError};
use warren_store::blobs::{BlobError, ContentFile};
use warren_store::peers::{LocalContent, PeerContent, PeerError};
use warren_store::{Change, NodeRecord, Store, rfc3339};

use crate::identity::NodeIdentity;
use crate::tunnels::{TunnelStream, Tunnels};

/// ALPN of the node-to-node link.
pub const ALPN: &[u8] = b"warren-peer/1";
/// How long a node's record lives in the store unless refreshed.
const NODE_LEASE: Duration = Duration::from_secs(10);
/// How often a node refreshes its record.
const NODE_REFRESH: Duration = Duration::from_secs(3);
/// Longest wait for a QUIC handshake with a peer.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// A peer that failed is tried after the others for this long.
const SUSPECT_FOR: Duration = Duration::from_secs(5);
/// Longest wait for a request's first message on an accepted stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a peer's answer to a DNS question.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time granted over the connect timeout for a relayed answer.
const CONNECT_ANSWER_MARGIN: Duration = Duration::from_secs(2);
/// Keep-alive on the link: a dead peer is noticed within the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_millis(400);
/// Idle timeout of the link.
const IDLE_TIMEOUT: Duration = Duration::from_millis(1200);

/// Settings of the node-to-node link.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// This node's name: unique in the cluster, the `edge_name` of its
    /// tunnel connections.
    pub node_name: String,
    /// `host:port` written into the node record; default: the bound address
    /// (which then must not be unspecified).
    pub advertise: Option<String>,
}

/// Which nodes hold a tunnel's connections, cached until the store says the
/// tunnel's connections changed.
#[derive(Default)]
struct Directory {
    holders: HashMap<String, Vec<String>>,
    nodes: HashMap<String, String>,
    /// Peer addresses that failed recently, until when they are tried last.
    suspects: HashMap<String, Instant>,
    /// Rotates the first holder asked, spreading relayed streams.
    turn: usize,
}

/// The node-to-node link of this node: serves peers and asks them.
pub struct PeerLink {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    store: Arc<dyn Store>,
    config: PeerConfig,
    advertise: String,
    directory: Mutex<Directory>,
    conns: Mutex<HashMap<String, quinn::Connection>>,
    tunnels: OnceLock<Tunnels>,
    content: OnceLock<LocalContent>,
}

/// The link's QUIC transport: quick to notice a dead peer, room for bulk.
pub fn transport() -> quinn::TransportConfig {
    let mut t = warren_transport::quic::transport_config();
    t.keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok())
        .max_concurrent_bidi_streams(4096u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((8u32 * 1024 * 1024).into())
        .receive_window((32u32 * 1024 * 1024).into())
        .send_window(32 * 1024 * 1024);
    t
}

/// The link's QUIC configurations from this node's identity: the server
/// requires a client certificate from the cluster CA, the client presents the
/// node certificate and trusts only the cluster CA; both with [`ALPN`] and
/// the link's [`transport`].
pub fn quic_configs(
    identity: &NodeIdentity,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), crate::identity::IdentityError> {
    let transport = Arc::new(transport());
    let mut server = identity.quic_server_config(&[ALPN])?;
    server.transport_config(transport.clone());
    let mut client = identity.quic_client_config(&[ALPN])?;
    client.transport_config(transport);
    Ok((server, client))
}

fn unavailable(detail: String) -> ProxyError {
    ProxyError::new(ErrorCode::DestinationUnavailable, detail)
}

impl PeerLink {
    /// Binds the link on `listen` (UDP). `server` must require a client
    /// certificate from the cluster CA and `client` must present this node's
    /// certificate, both with [`ALPN`].
    pub fn bind(
        listen: SocketAddr,
        server: quinn::ServerConfig,
        client: quinn::ClientConfig,
        store: Arc<dyn Store>,
        config: PeerConfig,
    ) -> anyhow::Result<Arc<PeerLink>> {
        let endpoint = warren_transport::quic::endpoint(
            listen,
            quinn::EndpointConfig::default(),
            Some(server),
        )
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (UDP, node link): {e}"))?;
        let bound = endpoint.local_addr()?;
        let advertise = match &config.advertise {
            Some(a) => a.clone(),
            None if bound.ip().is_unspecified() => anyhow::bail!(
                "the node link listens on {bound}: set [peer] advertise to the address other nodes reach it at"
            ),
            None => bound.to_string(),
        };
        Ok(Arc::new(PeerLink {
            endpoint,
            client,
            store,
            config,
            advertise,
            directory: Mutex::new(Directory::default()),
            conns: Mutex::new(HashMap::new()),
            tunnels: OnceLock::new(),
            content: OnceLock::new(),
        }))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.config.node_name
    }

    /// Serves relayed streams and DNS questions from this node's own
    /// connections (set once, on a node with the tunnel edge).
    pub fn set_tunnels(&self, tunnels: Tunnels) {
        let _ = self.tunnels.set(tunnels);
    }

    /// Serves this node's bundles and compiled components to peers (set once).
    pub fn set_content(&self, content: LocalContent) {
        let _ = self.content.set(content);
    }

    /// Registers this node in the store (refreshing its lease), follows the
    /// store's changes, and answers peers, until `shutdown`; then removes the
    /// node record and closes the link.
    pub async fn serve(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let record = NodeRecord {
            name: self.config.node_name.clone(),
            peer_addr: self.advertise.clone(),
            started_at: rfc3339(SystemTime::now()),
        };
        let registrar = {
            let link = self.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = link.store.put_node(&record, NODE_LEASE).await {
                        warn!(error = %e, "cannot refresh this node's record in the store");
                    }
                    tokio::time::sleep(NODE_REFRESH).await;
                }
            })
        };
        let follower = {
            let link = Arc::downgrade(&self);
            let changes = self.store.watch();
            tokio::spawn(follow(link, changes))
        };
        info!(addr = %self.advertise, node = %self.config.node_name, "node link listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let link = self.clone();
                    tokio::spawn(async move { link.serve_connection(incoming).await });
                }
            }
        }
        registrar.abort();
        follower.abort();
        if let Err(e) = self.store.remove_node(&self.config.node_name).await {
            debug!(error = %e, "could not remove this node's record; its lease will lapse");
        }
        self.endpoint.close(0u32.into(), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    async fn serve_connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "node link handshake failed");
                return;
            }
        };
        loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let link = self.clone();
                    tokio::spawn(async move { link.serve_stream(send, recv).await });
                }
                Err(e) => {
                    debug!(peer = %conn.remote_address(), error = %e, "node link connection ended");
                    return;
                }
            }
        }
    }

    async fn serve_stream(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
            match read_preamble(&mut recv).await? {
                StreamKind::Peer => read_message::<PeerRequest, _>(&mut recv).await,
                other => Err(ReadError::Io(std::io::Error::other(format!(
                    "unexpected {other:?} stream on the node link"
                )))),
            }
        })
        .await;
        let request = match head {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                debug!(error = %e, "closing a malformed node link stream");
                let _ = send.reset(1u32.into());
                let _ = recv.stop(1u32.into());
                return;
            }
            Err(_) => {
                let _ = send.reset(1u32.into());
                return;
            }
        };
        match request {
            PeerRequest::Connect { tunnel_id, request } => {
                self.serve_connect(&tunnel_id, request, send, recv).await
            }
            PeerRequest::Dns {
                tunnel_id,
                resolver,
                message,
            } => {
                let response = match self.tunnels.get() {
                    Some(t) => match t.dns_query_local(&tunnel_id, resolver, message).await {
                        Ok(data) => PeerResponse {
                            data,
                            ..PeerResponse::ok()
                        },
                        Err(e) => PeerResponse::failed(e.code, e.detail),
                    },
                    None => no_tunnel_edge(&self.config.node_name),
                };
                answer(&mut send, response).await;
            }
            PeerRequest::Bundle(sha) => self.serve_content(&sha, true, send).await,
            PeerRequest::Compiled(key) => self.serve_content(&key, false, send).await,
        }
    }

    async fn serve_connect(
        &self,
        tunnel_id: &str,
        request: ConnectRequest,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let Some(tunnels) = self.tunnels.get() else {
            answer(&mut send, no_tunnel_edge(&self.config.node_name)).await;
            return;
        };
        let timeout = Duration::from_millis(u64::from(request.timeout_ms));
        let opened = tunnels
            .open_tcp_local(tunnel_id, request.destination, timeout, &request.flow_id)
            .await;
        let mut tunnel = match opened {
            Ok(s) => s,
            Err(e) => {
                answer(&mut send, PeerResponse::failed(e.code, e.detail)).await;
                return;
            }
        };
        if send
            .write_all(&PeerResponse::ok().to_frame())
            .await
            .is_err()
        {
            return;
        }
        let mut peer = TunnelStream::relayed(send, recv);
        // The front door's splice buffers: tokio's default of 8 KiB per
        // direction costs a write per 8 KiB on a bulk transfer.
        let buf = crate::connect::SPLICE_BUF;
        if let Err(e) =
            tokio::io::copy_bidirectional_with_sizes(&mut peer, &mut tunnel, buf, buf).await
        {
            debug!(flow = %request.flow_id, error = %e, "relayed stream ended");
        }
    }

    async fn serve_content(&self, key: &str, bundle: bool, mut send: quinn::SendStream) {
        let opened: Result<Option<ContentFile>, BlobError> = match self.content.get() {
            Some(c) if bundle => c.open_bundle(key).await,
            Some(c) => c.open_compiled(key).await,
            None => Ok(None),
        };
        let mut reader = match opened {
            Ok(Some(r)) => r.file,
            Ok(None) => {
                answer(
                    &mut send,
                    PeerResponse::failed(
                        ErrorCode::DestinationUnavailable,
                        format!("node {} does not have {key}", self.config.node_name),
                    ),
                )
                .await;
                return;
            }
            Err(e) => {
                warn!(key, error = %e, "cannot open content a peer asked for");
                answer(
                    &mut send,
                    PeerResponse::failed(ErrorCode::DestinationUnavailable, e.to_string()),
                )
                .await;
                return;
            }
        };
        if send
            .write_all(&PeerResponse::ok().to_frame())
            .await
            .is_err()
        {
            return;
        }
        match tokio::io::copy(&mut reader, &mut send).await {
            Ok(_) => {
                let _ = send.finish();
            }
            Err(e) => {
                debug!(key, error = %e, "sending content to a peer failed");
                let _ = send.reset(1u32.into());
            }
        }
    }

    /// The other nodes holding connections of `tunnel_id`, as (name, address).
    async fn holders(&self, tunnel_id: &str, fresh: bool) -> Vec<(String, String)> {
        let cached = match self.directory.lock() {
            Ok(d) if !fresh => d.holders.get(tunnel_id).cloned(),
            _ => None,
        };
        let names = match cached {
            Some(n) => n,
            None => {
                let mut names: Vec<String> = match self.store.list_connections(tunnel_id).await {
                    Ok(conns) => conns
                        .into_iter()
                        .map(|c| c.edge_name)
                        .filter(|n| n != &self.config.node_name)
                        .collect(),
                    Err(e) => {
                        warn!(tunnel = tunnel_id, error = %e, "cannot read the tunnel's connections");
                        return Vec::new();
                    }
                };
                names.sort();
                names.dedup();
                if let Ok(mut d) = self.directory.lock() {
                    d.holders.insert(tunnel_id.to_owned(), names.clone());
                }
                names
            }
        };
        let mut out = Vec::new();
        for name in names {
            if let Some(addr) = self.node_addr(&name, fresh).await {
                out.push((name, addr));
            }
        }
        // Spread streams over the holders, and ask recently failed ones last.
        if let Ok(mut d) = self.directory.lock() {
            if !out.is_empty() {
                d.turn = d.turn.wrapping_add(1);
                let k = d.turn % out.len();
                out.rotate_left(k);
            }
            let now = Instant::now();
            d.suspects.retain(|_, until| *until > now);
            out.sort_by_key(|(_, addr)| d.suspects.contains_key(addr));
        }
        out
    }

    /// Asks the peer at `addr` last for a while.
    fn suspect(&self, addr: &str) {
        if let Ok(mut d) = self.directory.lock() {
            d.suspects
                .insert(addr.to_owned(), Instant::now() + SUSPECT_FOR);
        }
    }

    async fn node_addr(&self, name: &str, fresh: bool) -> Option<String> {
        if !fresh
            && let Some(a) = self
                .directory
                .lock()
                .ok()
                .and_then(|d| d.nodes.get(name).cloned())
        {
            return Some(a);
        }
        let nodes = match self.store.list_nodes().await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "cannot list the cluster's nodes");
                return None;
            }
        };
        let map: HashMap<String, String> =
            nodes.into_iter().map(|n| (n.name, n.peer_addr)).collect();
        let found = map.get(name).cloned();
        if let Ok(mut d) = self.directory.lock() {
            d.nodes = map;
        }
        found
    }

    fn forget(&self, tunnel_id: Option<&str>) {
        if let Ok(mut d) = self.directory.lock() {
            match tunnel_id {
                Some(t) => {
                    d.holders.remove(t);
                }
                None => {
                    d.holders.clear();
                    d.nodes.clear();
                }
            }
        }
    }

    /// A live QUIC connection to the peer at `addr`, dialled if needed.
    async fn connection(&self, addr: &str) -> Result<quinn::Connection, String> {
        if let Some(c) = self.conns.lock().ok().and_then(|m| m.get(addr).cloned())
            && c.close_reason().is_none()
        {
            return Ok(c);
        }
        let sock: SocketAddr = match tokio::net::lookup_host(addr).await {
            Ok(mut a) => a.next().ok_or_else(|| format!("{addr} has no address"))?,
            Err(e) => return Err(format!("cannot resolve {addr}: {e}")),
        };
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), sock, NODE_SERVER_NAME)
            .map_err(|e| format!("cannot dial {addr}: {e}"))?;
        let conn = match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("handshake with {addr} failed: {e}")),
            Err(_) => return Err(format!("no handshake with {addr} within {DIAL_TIMEOUT:?}")),
        };
        if let Ok(mut m) = self.conns.lock() {
            m.insert(addr.to_owned(), conn.clone());
        }
        Ok(conn)
    }

    /// Opens a stream on the link to `addr` and sends `request`.
    async fn ask(
        &self,
        addr: &str,
        request: &PeerRequest,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
        let conn = self.connection(addr).await?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("node link to {addr}: {e}"))?;
        let mut head = preamble::encode(StreamKind::Peer).to_vec();
        head.extend_from_slice(&request.to_frame());
        send.write_all(&head)
            .await
            .map_err(|e| format!("node link to {addr}: {e}"))?;
        Ok((send, recv))
    }

    /// Opens a TCP stream to `request.destination` through another node that
    /// holds connections of the tunnel. A node that cannot (its link or its
    /// connections are gone before the connector answered) is skipped for the
    /// next; the connector's own refusal is returned as is.
    pub async fn open_tcp(
        &self,
        tunnel_id: &str,
        request: &ConnectRequest,
    ) -> Result<TunnelStream, ProxyError> {
        let answer_timeout =
            Duration::from_millis(u64::from(request.timeout_ms)) + CONNECT_ANSWER_MARGIN;
        let msg = PeerRequest::Connect {
            tunnel_id: tunnel_id.to_owned(),
            request: request.clone(),
        };
        let mut last = format!("tunnel {tunnel_id} has no live connection on any node");
        let mut tried = HashSet::new();
        for fresh in [false, true] {
            let holders = self.holders(tunnel_id, fresh).await;
            for (name, addr) in holders {
                if !tried.insert(addr.clone()) {
                    continue;
                }
                let (send, mut recv) = match self.ask(&addr, &msg).await {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(node = %name, error = %e, "relay: node unreachable");
                        self.suspect(&addr);
                        last = e;
                        continue;
                    }
                };
                let answer = tokio::time::timeout(
                    answer_timeout,
                    read_message::<PeerResponse, _>(&mut recv),
                )
                .await;
                match answer {
                    Ok(Ok(PeerResponse { error: None, .. })) => {
                        return Ok(TunnelStream::relayed(send, recv));
                    }
                    Ok(Ok(PeerResponse {
                        error: Some(ErrorCode::DestinationUnavailable),
                        message,
                        ..
                    })) => {
                        debug!(node = %name, %message, "relay: node has no live connection");
                        last = message;
                    }
                    Ok(Ok(PeerResponse {
                        error: Some(code),
                        message,
                        ..
                    })) => return Err(ProxyError::new(code, message)),
                    Ok(Err(e)) => {
                        debug!(node = %name, error = %e, "relay: stream broke before the answer");
                        self.suspect(&addr);
                        last = format!("node {name}: {e}");
                    }
                    Err(_) => {
                        return Err(ProxyError::new(
                            ErrorCode::ConnectionTimeout,
                            format!("the connector did not answer in time (through node {name})"),
                        ));
                    }
                }
            }
            self.forget(Some(tunnel_id));
        }
        Err(unavailable(last))
    }

    /// Asks a DNS question through another node holding connections of the tunnel.
    pub async fn dns_query(
        &self,
        tunnel_id: &str,
        resolver: Option<SocketAddr>,
        message: Vec<u8>,
    ) -> Result<Vec<u8>, ProxyError> {
        let msg = PeerRequest::Dns {
            tunnel_id: tunnel_id.to_owned(),
            resolver,
            message,
        };
        let mut last = format!("tunnel {tunnel_id} has no live connection on any node");
        let mut tried = HashSet::new();
        for fresh in [false, true] {
            for (name, addr) in self.holders(tunnel_id, fresh).await {
                if !tried.insert(addr.clone()) {
                    continue;
                }
                let (_send, mut recv) = match self.ask(&addr, &msg).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.suspect(&addr);
                        last = e;
                        continue;
                    }
                };
                match tokio::time::timeout(DNS_TIMEOUT, read_message::<PeerResponse, _>(&mut recv))
                    .await
                {
                    Ok(Ok(PeerResponse {
                        error: None, data, ..
                    })) => return Ok(data),
                    Ok(Ok(PeerResponse {
                        error: Some(ErrorCode::DestinationUnavailable),
                        message,
                        ..
                    })) => last = message,
                    Ok(Ok(PeerResponse {
                        error: Some(code),
                        message,
                        ..
                    })) => return Err(ProxyError::new(code, message)),
                    Ok(Err(e)) => {
                        self.suspect(&addr);
                        last = format!("node {name}: {e}");
                    }
                    Err(_) => last = format!("node {name} did not answer the DNS question in time"),
                }
            }
            self.forget(Some(tunnel_id));
        }
        Err(unavailable(last))
    }

    /// Streams content (`PeerRequest::Bundle` or `PeerRequest::Compiled`)
    /// from the first node that has it into `dest`; `Ok(false)` when none has
    /// it. The caller verifies what arrives.
    pub async fn fetch(
        &self,
        request: &PeerRequest,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<bool, PeerError> {
        let nodes = self
            .store
            .list_nodes()
            .await
            .map_err(|e| PeerError::Link(format!("cannot list the cluster's nodes: {e}")))?;
        for node in nodes {
            if node.name == self.config.node_name {
                continue;
            }
            let (_send, mut recv) = match self.ask(&node.peer_addr, request).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(node = %node.name, error = %e, "fetch: node unreachable");
                    continue;
                }
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, read_message::<PeerResponse, _>(&mut recv))
                .await
            {
                Ok(Ok(PeerResponse { error: None, .. })) => {}
                Ok(Ok(r)) => {
                    debug!(node = %node.name, message = %r.message, "fetch: not there");
                    continue;
                }
                Ok(Err(e)) => {
                    debug!(node = %node.name, error = %e, "fetch: bad answer");
                    continue;
                }
                Err(_) => continue,
            }
            // A broken transfer is an error, never a fall-through to the
            // next node: part of this node's bytes may be in `dest` already.
            tokio::io::copy(&mut recv, dest)
                .await
                .map_err(|e| PeerError::Link(format!("transfer from node {}: {e}", node.name)))?;
            dest.flush().await?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// Writes the one answer of a request that ends here.
async fn answer(send: &mut quinn::SendStream, response: PeerResponse) {
    let _ = send.write_all(&response.to_frame()).await;
    let _ = send.finish();
}

fn no_tunnel_edge(node: &str) -> PeerResponse {
    PeerResponse::failed(
        ErrorCode::DestinationUnavailable,
        format!("node {node} runs no tunnel edge"),
    )
}

/// Drops cached holders when the store says a tunnel's connections changed.
async fn follow(link: Weak<PeerLink>, mut changes: tokio::sync::broadcast::Receiver<Change>) {
    loop {
        let change = changes.recv().await;
        let Some(link) = link.upgrade() else { return };
        match change {
            Ok(Change::Connections(t)) => link.forget(Some(&t)),
            Ok(Change::All) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                link.forget(None)
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[async_trait]
impl PeerContent for PeerLink {
    async fn fetch_bundle(
        &self,
        sha256: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<bool, PeerError> {
        self.fetch(&PeerRequest::Bundle(sha256.to_owned()), dest)
            .await
    }

    async fn fetch_compiled(
        &self,
        key: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<bool, PeerError> {
        self.fetch(&PeerRequest::Compiled(key.to_owned()), dest)
            .await
    }
}
