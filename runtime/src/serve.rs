//! Serving workers over HTTP: `<worker>.<workers domain>` in `Host` picks the
//! worker, else the most specific of the workers' routes (see [`crate::routes`]);
//! deploying swaps a worker's version atomically (requests in flight finish on
//! the version they started with).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use warren_protocol::listen::{ConnLimits, serve_http};

use crate::routes::RouteTable;
use crate::worker::{Body, Worker, text};

/// Largest request head (request line and headers) a worker is handed:
/// 128 KiB, Workers' limit on request headers.
pub const MAX_REQUEST_HEAD_BYTES: usize = 128 << 10;

/// Most header fields in one HTTP/1.1 request (hyper's default is 100).
pub const MAX_REQUEST_HEADERS: usize = 500;

/// The deployed workers, by name.
pub struct Router {
    domain: String,
    workers: RwLock<HashMap<String, Arc<Worker>>>,
    routes: RwLock<RouteTable>,
    fallback: RwLock<Option<String>>,
    holds: AtomicUsize,
    released: tokio::sync::Notify,
}

/// Longest a request waits for a [`Hold`] to end before it is served by
/// whatever is deployed.
pub const MAX_HOLD: Duration = Duration::from_secs(120);

/// While alive, new requests wait (up to [`MAX_HOLD`]) before a worker is
/// picked: `warren dev` holds them from a save until the rebuilt worker is
/// deployed, so the first request after a save sees the new code.
pub struct Hold(Arc<Router>);

impl Drop for Hold {
    fn drop(&mut self) {
        if self.0.holds.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.released.notify_waiters();
        }
    }
}

impl Router {
    /// Routes `<name>.<domain>` hosts.
    pub fn new(domain: &str) -> Arc<Router> {
        Arc::new(Router {
            domain: domain.trim_matches('.').to_ascii_lowercase(),
            workers: RwLock::new(HashMap::new()),
            routes: RwLock::new(RouteTable::default()),
            fallback: RwLock::new(None),
            holds: AtomicUsize::new(0),
            released: tokio::sync::Notify::new(),
        })
    }

    /// Deploys (or replaces) a worker, with its routes.
    pub fn deploy(&self, mut worker: Worker) {
        let name = worker.config().name.clone();
        // Workers first, so a new route never points at a missing worker.
        let routes = worker.config().routes.clone();
        if let Ok(mut w) = self.workers.write() {
            if let Some(previous) = w.get(&name) {
                worker.inherit_slots(previous);
            }
            w.insert(name.clone(), Arc::new(worker));
        }
        if let Ok(mut r) = self.routes.write() {
            r.set(&name, &routes);
        }
    }

    /// Stops serving a worker and its routes (requests in flight finish).
    pub fn remove(&self, name: &str) {
        if let Ok(mut r) = self.routes.write() {
            r.set(name, &[]);
        }
        if let Ok(mut w) = self.workers.write() {
            w.remove(name);
        }
    }

    /// Whether `pattern`'s host could match a host of the workers domain
    /// (`<name>.<domain>` belongs to the worker of that name: no route may
    /// claim it).
    pub fn in_workers_domain(&self, pattern: &crate::routes::RoutePattern) -> bool {
        pattern.matches_host_within(&self.domain)
    }

    /// The worker serving exactly the route `pattern`, if any.
    pub fn route_owner(&self, pattern: &str) -> Option<String> {
        let r = self.routes.read().ok()?;
        r.owner_of(pattern).map(str::to_owned)
    }

    /// Serves `name` for hosts no worker matches (`warren dev`: plain
    /// `localhost:8787` reaches the worker being developed).
    pub fn set_fallback(&self, name: Option<String>) {
        if let Ok(mut f) = self.fallback.write() {
            *f = name;
        }
    }

    /// Holds new requests until the returned [`Hold`] is dropped.
    pub fn hold(self: &Arc<Self>) -> Hold {
        self.holds.fetch_add(1, Ordering::AcqRel);
        Hold(self.clone())
    }

    /// Returns once no [`Hold`] is alive (at once in the common case).
    async fn unheld(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.holds.load(Ordering::Acquire) == 0 {
                return;
            }
            released.await;
        }
    }

    fn worker_for(&self, host: &str, path: &str) -> Option<Arc<Worker>> {
        let bare = crate::routes::canonical_host(host);
        let workers = self.workers.read().ok()?;
        if let Some(w) = bare
            .strip_suffix(&format!(".{}", self.domain))
            .and_then(|name| workers.get(name))
        {
            return Some(w.clone());
        }
        let routed = self
            .routes
            .read()
            .ok()
            .and_then(|r| r.lookup(host, path).map(str::to_owned));
        let name = match routed {
            Some(n) => n,
            None => self.fallback.read().ok()?.clone()?,
        };
        workers.get(&name).cloned()
    }

    /// Handles one request.
    pub async fn handle(
        &self,
        mut req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Body> {
        // Warren's own headers are never a client's to send (a proxying
        // worker would forward them).
        crate::outbound::strip_warren_headers(req.headers_mut());
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .unwrap_or("")
            .to_owned();
        let path = req.uri().path().to_owned();
        if self.holds.load(Ordering::Acquire) != 0 {
            let _ = tokio::time::timeout(MAX_HOLD, self.unheld()).await;
        }
        let mut resp = match self.worker_for(&host, &path) {
            Some(w) => w.handle(req, &request_id).await,
            None => text(404, &format!("no worker serves {host}")),
        };
        if let Ok(v) = hyper::header::HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("warren-request-id", v);
        }
        resp
    }

    /// Serves HTTP/1.1 and h2c on `listener` with the default connection
    /// limits, until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        self.serve_with(listener, ConnLimits::default()).await
    }

    /// Serves HTTP/1.1 and h2c on `listener` within `limits` (accept errors
    /// back off, connections over the caps get a 503, slow heads and idle
    /// connections are closed), until the task is dropped.
    pub async fn serve_with(self: Arc<Self>, listener: TcpListener, limits: ConnLimits) {
        let svc = service_fn(move |req| {
            let router = self.clone();
            async move { Ok::<_, std::convert::Infallible>(router.handle(req).await) }
        });
        serve_http(
            "workers",
            listener,
            limits,
            tune,
            svc,
            std::future::pending(),
        )
        .await
    }
}

/// A request head over the limit gets 431 (HTTP/1.1) or a stream reset
/// (HTTP/2) before any worker runs.
fn tune(builder: &mut hyper_util::server::conn::auto::Builder<TokioExecutor>) {
    builder
        .http1()
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .max_headers(MAX_REQUEST_HEADERS);
    builder
        .http2()
        .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32);
}
