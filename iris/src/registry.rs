//! The live connections of each tunnel on this edge node, and how work is spread
//! over them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};
use warren_protocol::ErrorCode;
use warren_protocol::messages::DnsAnswer;
use warren_store::ConnectionRecord;
use warren_transport::{Conn, ConnectionError, RecvHalf, SendHalf};

type DnsWaiter = oneshot::Sender<Result<Vec<u8>, ErrorCode>>;

/// One registered connector connection.
pub struct LiveConnection {
    record: ConnectionRecord,
    conn: Conn,
    draining: AtomicBool,
    dns_pending: Mutex<HashMap<u32, DnsWaiter>>,
    active_streams: Arc<AtomicUsize>,
}

/// Counts a data stream as in flight on its connection until dropped.
pub(crate) struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LiveConnection {
    pub(crate) fn new(record: ConnectionRecord, conn: Conn) -> Self {
        LiveConnection {
            record,
            conn,
            draining: AtomicBool::new(false),
            dns_pending: Mutex::new(HashMap::new()),
            active_streams: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// What the API shows about this connection.
    pub fn record(&self) -> &ConnectionRecord {
        &self.record
    }

    /// Whether new streams may be sent on it (registered, not draining, not closed).
    pub fn is_usable(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.conn.close_reason().is_none()
    }

    /// Closes the connection (the connector will reconnect).
    pub fn close(&self, reason: &str) {
        self.conn.close(1, reason.as_bytes());
    }

    /// The transport carrying the connection: `quic`, or `tcp` where the
    /// connector fell back because UDP is blocked.
    pub fn transport(&self) -> &'static str {
        self.conn.transport_name()
    }

    /// The path MTU a QUIC connection has discovered (bytes of UDP payload);
    /// `None` over TCP.
    pub fn path_mtu(&self) -> Option<u16> {
        self.conn.path_mtu()
    }

    /// Data streams in flight on this connection.
    pub fn active_streams(&self) -> usize {
        self.active_streams.load(Ordering::Acquire)
    }

    /// Takes the connection out of rotation, lets its in-flight streams finish
    /// (up to `max_wait`), then closes it. Used to move connectors off a node
    /// without failing requests.
    pub async fn drain_and_close(&self, reason: &str, max_wait: Duration) {
        self.set_draining();
        let deadline = Instant::now() + max_wait;
        while self.active_streams() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.close(reason);
    }

    /// Opens a raw bidirectional stream, bypassing the stream header: for
    /// diagnostics and protocol conformance tests only.
    pub async fn open_raw_stream(&self) -> Result<(SendHalf, RecvHalf), ConnectionError> {
        self.conn.open_bi().await
    }

    pub(crate) fn track_stream(&self) -> StreamGuard {
        self.active_streams.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.active_streams.clone())
    }

    pub(crate) fn conn(&self) -> &Conn {
        &self.conn
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub(crate) fn expect_dns(&self, id: u32) -> oneshot::Receiver<Result<Vec<u8>, ErrorCode>> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.dns_pending.lock() {
            p.insert(id, tx);
        }
        rx
    }

    pub(crate) fn forget_dns(&self, id: u32) {
        if let Ok(mut p) = self.dns_pending.lock() {
            p.remove(&id);
        }
    }

    /// Delivers an answer to whoever waits for it; answers nobody waits for are dropped.
    pub(crate) fn deliver_dns(&self, answer: DnsAnswer) {
        let waiter = self
            .dns_pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&answer.id));
        if let Some(w) = waiter {
            let _ = w.send(answer.result);
        }
    }
}

fn connections_gauge(c: &LiveConnection) -> prometheus_client::metrics::gauge::Gauge {
    crate::metrics::metrics()
        .tunnel_connections
        .get_or_create(&vec![("transport", c.transport())])
        .clone()
}

/// Live connections per tunnel.
#[derive(Default)]
pub struct Registry {
    tunnels: RwLock<HashMap<String, Vec<Arc<LiveConnection>>>>,
    cursor: AtomicUsize,
    changed: Notify,
}

impl Registry {
    pub(crate) fn insert(&self, conn: Arc<LiveConnection>) {
        if let Ok(mut t) = self.tunnels.write() {
            connections_gauge(&conn).inc();
            t.entry(conn.record.tunnel_id.clone())
                .or_default()
                .push(conn);
        }
        self.changed.notify_waiters();
    }

    pub(crate) fn remove(&self, tunnel_id: &str, connection_id: &str) {
        if let Ok(mut t) = self.tunnels.write()
            && let Some(list) = t.get_mut(tunnel_id)
        {
            list.retain(|c| {
                let keep = c.record.id != connection_id;
                if !keep {
                    connections_gauge(c).dec();
                }
                keep
            });
            if list.is_empty() {
                t.remove(tunnel_id);
            }
        }
        self.changed.notify_waiters();
    }

    /// Usable connections of a tunnel, rotated so successive calls start at
    /// different connections (spreading new streams over all of them).
    pub fn candidates(&self, tunnel_id: &str) -> Vec<Arc<LiveConnection>> {
        let Ok(t) = self.tunnels.read() else {
            return Vec::new();
        };
        let Some(list) = t.get(tunnel_id) else {
            return Vec::new();
        };
        let mut usable: Vec<_> = list.iter().filter(|c| c.is_usable()).cloned().collect();
        if !usable.is_empty() {
            let start = self.cursor.fetch_add(1, Ordering::Relaxed) % usable.len();
            usable.rotate_left(start);
        }
        usable
    }

    /// Every registered connection of every tunnel.
    pub fn all(&self) -> Vec<Arc<LiveConnection>> {
        self.tunnels
            .read()
            .map(|t| t.values().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Every registered connection of a tunnel (usable or draining).
    pub fn connections(&self, tunnel_id: &str) -> Vec<Arc<LiveConnection>> {
        self.tunnels
            .read()
            .ok()
            .and_then(|t| t.get(tunnel_id).cloned())
            .unwrap_or_default()
    }

    /// Waits until a connection is registered or removed anywhere.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}
