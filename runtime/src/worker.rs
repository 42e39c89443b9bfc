//! One deployed worker: its pre-instantiated template and how a request runs —
//! a fresh instance per request, within the worker's limits, with a 5xx naming
//! the limit (or the exception) when the guest cannot answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::engine::RuntimeEngine;
use crate::limits::{CpuMeter, LimitHit, Limits, MemoryLimiter, Metered};
use crate::logs::{LogHub, RequestInfo, TailEvent, WorkerKey, lines};
use crate::outbound::{
    BINDING_KEY_ENV, BINDING_KEY_HEADER, BindingClient, Outbound, OutboundPolicy, new_binding_key,
};
use crate::routes::RoutePattern;

/// Requests of one worker running at once, by default: a quarter of the
/// engine's default pool (1000 instances), so one busy worker cannot take
/// every instance from the others.
pub const DEFAULT_MAX_CONCURRENT: usize = 250;

/// How long a request's guest may keep running after its answer has been
/// sent (`ctx.waitUntil` work), as on Workers.
pub const DEFAULT_WAIT_UNTIL: Duration = Duration::from_secs(30);

/// Prefix of the environment variables that carry a JS worker's secrets
/// (`warren:secret:NAME`): the generated entry reads them in each request.
/// A `:` is in no binding name, so no var (nor the binding key) looks like one.
pub const SECRET_ENV_PREFIX: &str = "warren:secret:";

/// A worker's secrets, opened (held in memory only): given to each request
/// in its environment, never built into the component. `Debug` shows names only.
#[derive(Clone, Default)]
pub struct Secrets(Vec<(String, String)>);

impl Secrets {
    /// Secrets from `(name, value)` pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Secrets(pairs)
    }

    /// The `(name, value)` pairs.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.0
    }

    /// The secrets' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// What a deployment says about a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker name (its host is `<name>.<workers domain>`).
    pub name: String,
    /// Owning account.
    pub account_id: String,
    /// Binding name → VPC service id.
    pub bindings: HashMap<String, String>,
    /// Plain-text vars, given to Wasm workers as environment variables (JS
    /// workers get them in `env`, built in).
    pub env: Vec<(String, String)>,
    /// Secrets (`secret_text`): environment variables of each request — by
    /// name for Wasm workers, as [`SECRET_ENV_PREFIX`]`NAME` for JS workers,
    /// whose generated entry puts them in `env`.
    pub secrets: Secrets,
    /// Limits.
    pub limits: Limits,
    /// Global outbound policy.
    pub outbound: OutboundPolicy,
    /// Route patterns this worker serves besides `<name>.<workers domain>`.
    pub routes: Vec<RoutePattern>,
    /// The tag minted when the worker was created (kept by redeploys): with
    /// the account, the key of its tail subscriptions.
    pub tag: String,
    /// A JS worker built by Warren: when it has bindings, its generated entry
    /// takes the request's binding key from the incoming request's
    /// `warren-binding-key` header (and removes it before the worker's code
    /// runs). Other Wasm workers get
    /// the key only in the `WARREN_BINDING_KEY` environment variable.
    pub js: bool,
    /// Requests of this worker running at once (an instance each, from its
    /// answer's start until its guest ends); one more gets a `503` at once
    /// (default [`DEFAULT_MAX_CONCURRENT`]).
    pub max_concurrent: usize,
    /// How long the guest may run on once its answer has been sent
    /// (`waitUntil`); then it is cancelled (default [`DEFAULT_WAIT_UNTIL`]).
    /// A client that goes away before the answer's body is complete cancels
    /// the guest at once.
    pub wait_until: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            name: String::new(),
            account_id: String::new(),
            bindings: HashMap::new(),
            env: Vec::new(),
            secrets: Secrets::default(),
            limits: Limits::default(),
            outbound: OutboundPolicy::default(),
            routes: Vec::new(),
            tag: String::new(),
            js: false,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            wait_until: DEFAULT_WAIT_UNTIL,
        }
    }
}

/// Per-request store state.
pub struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: Outbound,
    limiter: MemoryLimiter,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// A deployed worker version.
pub struct Worker {
    config: WorkerConfig,
    max_concurrent: usize,
    running: Arc<tokio::sync::Semaphore>,
    bindings: Arc<HashMap<String, String>>,
    pre: ProxyPre<State>,
    /// Keeps the component shared with other workers of the same bundle.
    _component: crate::engine::SharedComponent,
    engine: Arc<RuntimeEngine>,
    client: Option<Arc<dyn BindingClient>>,
    logs: Option<Arc<LogHub>>,
    counters: crate::metrics::WorkerCounters,
}

/// Most bytes of stdout (and of stderr) kept per request for tail events.
const CAPTURE_BYTES: usize = 256 * 1024;

/// The answer body type of workers.
pub type Body = HyperOutgoingBody;

/// A plain-text answer (for errors the runtime produces itself).
pub fn text(status: u16, msg: &str) -> hyper::Response<Body> {
    let body = Full::new(Bytes::from(format!("{msg}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut r = hyper::Response::new(body);
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

impl Worker {
    /// Compiles (or loads from the cache) `wasm` and pre-instantiates it.
    pub fn new(
        engine: Arc<RuntimeEngine>,
        config: WorkerConfig,
        wasm: &[u8],
        client: Option<Arc<dyn BindingClient>>,
    ) -> anyhow::Result<Worker> {
        let link = |component: &crate::engine::SharedComponent| -> anyhow::Result<ProxyPre<State>> {
            let mut linker = Linker::<State>::new(engine.engine());
            if let Some(snapshot) = component.snapshot() {
                linker
                    .root()
                    .module(crate::snapshot::SNAPSHOT_IMPORT, snapshot)?;
            }
            wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
            Ok(ProxyPre::new(linker.instantiate_pre(component)?)?)
        };
        let component = if config.js {
            engine.js_component(wasm)?
        } else {
            engine.component(wasm)?
        };
        let (component, pre) = match link(&component) {
            Ok(pre) => (component, pre),
            // A split JS worker whose parts do not link (a damaged cached
            // file under their key) is loaded whole.
            Err(e) if component.snapshot().is_some() => {
                tracing::warn!(error = %format!("{e:#}"), worker = %config.name, "the JS worker's split parts do not link; loading it whole");
                let whole = engine.component(wasm)?;
                let pre = link(&whole)?;
                (whole, pre)
            }
            Err(e) => return Err(e),
        };
        // Never more than half the engine's pool, so other workers always
        // have instances.
        let max_concurrent = config
            .max_concurrent
            .min(engine.max_instances() as usize / 2)
            .max(1);
        let counters = crate::metrics::metrics().worker(&config.account_id, &config.name);
        Ok(Worker {
            counters,
            max_concurrent,
            running: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
            bindings: Arc::new(config.bindings.clone()),
            config,
            pre,
            _component: component,
            engine,
            client,
            logs: None,
        })
    }

    /// Publishes this worker's tail events to `hub`.
    pub fn with_logs(mut self, hub: Arc<LogHub>) -> Self {
        self.logs = Some(hub);
        self
    }

    /// The same worker with `secrets` in each request's environment.
    pub fn with_secrets(mut self, secrets: Secrets) -> Self {
        self.config.secrets = secrets;
        self
    }

    /// The worker's configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Shares `previous`'s concurrency slots (a redeploy of the same worker):
    /// requests still running on the old version count against the new one's
    /// cap, so redeploying never multiplies a worker's share of the pool.
    pub fn inherit_slots(&mut self, previous: &Worker) {
        if previous.config.account_id == self.config.account_id
            && previous.max_concurrent == self.max_concurrent
        {
            self.running = previous.running.clone();
        }
    }

    fn log_key(&self) -> WorkerKey {
        WorkerKey {
            account_id: self.config.account_id.clone(),
            tag: self.config.tag.clone(),
        }
    }

    /// Runs one request in a fresh instance; when someone tails the worker, its
    /// output, outcome and timing are published once the guest is done.
    pub async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        request_id: &str,
    ) -> hyper::Response<Body> {
        let started = std::time::Instant::now();
        let Ok(slot) = self.running.clone().try_acquire_owned() else {
            let n = self.max_concurrent;
            tracing::warn!(worker = %self.config.name, request_id, "worker at its concurrency limit");
            return text(
                503,
                &format!(
                    "worker {} is at its limit of {n} concurrent requests; try again later",
                    self.config.name
                ),
            );
        };
        let hub = self
            .logs
            .clone()
            .filter(|h| h.has_subscribers(&self.log_key()));
        let info = hub.as_ref().map(|_| RequestInfo {
            method: req.method().to_string(),
            url: req.uri().to_string(),
        });
        let capture = hub.as_ref().map(|_| {
            (
                MemoryOutputPipe::new(CAPTURE_BYTES),
                MemoryOutputPipe::new(CAPTURE_BYTES),
            )
        });
        let head_only = req.method() == hyper::Method::HEAD;
        let limits = self.config.limits.clone();
        let meter = CpuMeter::new();
        // A fresh key per request lets the worker's own binding objects (and
        // nothing a client sends) select a binding; see `outbound`.
        let binding_key = new_binding_key();
        let mut req = req;
        // (A JS worker without bindings needs no key, and its entry then
        // skips copying the request to hide it.)
        if self.config.js
            && !self.bindings.is_empty()
            && let Ok(v) = hyper::header::HeaderValue::from_str(&binding_key)
        {
            req.headers_mut().insert(BINDING_KEY_HEADER, v);
        }
        let mut wasi = WasiCtx::builder();
        wasi.envs(&self.config.env);
        wasi.env(BINDING_KEY_ENV, &binding_key);
        for (name, value) in &self.config.secrets.0 {
            if self.config.js {
                wasi.env(format!("{SECRET_ENV_PREFIX}{name}"), value);
            } else {
                wasi.env(name, value);
            }
        }
        if let Some((out, err)) = &capture {
            wasi.stdout(out.clone()).stderr(err.clone());
        }
        let state = State {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: Outbound {
                bindings: self.bindings.clone(),
                client: self.client.clone(),
                policy: self.config.outbound,
                account_id: self.config.account_id.clone(),
                worker: self.config.name.clone(),
                request_id: request_id.to_owned(),
                binding_key,
                remaining: Arc::new(AtomicU32::new(limits.subrequests)),
            },
            limiter: MemoryLimiter::new(limits.memory_bytes),
        };
        let (resp, outcome, pending) = self
            .run(state, req, request_id, &limits, &meter, slot)
            .await;
        // The guest may run on after the answer's head (streaming its body,
        // waitUntil), but not for ever: it is cancelled when the client goes
        // away before the body is complete, or `wait_until` after the body
        // was sent.
        let (delivered_tx, delivered) = tokio::sync::oneshot::channel();
        // An answer with no body, or whose declared length has been written,
        // is delivered even when hyper drops it without reading its end.
        let no_body = head_only || matches!(resp.status().as_u16(), 204 | 304);
        let length = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let resp = resp.map(|b| Watched::new(b, delivered_tx, no_body, length).boxed_unsync());
        let wait_until = self.config.wait_until;
        // A guest still running after its answer's head (streaming the body,
        // waitUntil) can still fail: watch it so the failure is logged and
        // the tail event tells the real outcome.
        let worker = self.config.name.clone();
        let rid = request_id.to_owned();
        let watch_meter = meter.clone();
        let ended = async move {
            let mut task = pending?;
            let bound = async {
                if let Ok(true) = delivered.await {
                    tokio::time::sleep(wait_until).await;
                }
            };
            let joined = tokio::select! {
                r = &mut task => r,
                () = bound => {
                    task.abort();
                    let complete = task.await.is_ok();
                    if !complete {
                        tracing::info!(worker, request_id = rid, "worker cancelled: its client went away or its waitUntil work ran past the limit");
                        return Some(Outcome::Canceled);
                    }
                    return None;
                }
            };
            let (result, memory_hit) = joined.ok()?;
            let e = result.err()?;
            let outcome = if watch_meter.exceeded() {
                Outcome::Limit(LimitHit::Cpu)
            } else if memory_hit {
                Outcome::Limit(LimitHit::Memory)
            } else {
                Outcome::Exception(format!("{e:#}"))
            };
            let what = match &outcome {
                Outcome::Limit(l) => format!("exceeded its {} limit", l.name()),
                _ => format!("failed: {e:#}"),
            };
            tracing::warn!(
                worker,
                request_id = rid,
                "worker {what} after its answer began"
            );
            Some(outcome)
        };
        let (counters, metered) = (self.counters.clone(), meter.clone());
        let record = move |outcome: &str| {
            counters.request(outcome, metered.used().as_millis() as u64);
        };
        if let (Some(hub), Some(info), Some((out, err))) = (hub, info, capture) {
            let event_timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
                .saturating_sub(started.elapsed().as_millis() as u64);
            let status = resp.status().as_u16();
            let script_name = self.config.name.clone();
            let key = self.log_key();
            let request_id = request_id.to_owned();
            tokio::spawn(async move {
                let outcome = ended.await.unwrap_or(outcome);
                let mut logs = lines("log", &out.contents());
                logs.extend(lines("error", &err.contents()));
                let (outcome, exceptions) = outcome.parts();
                record(&outcome);
                hub.publish(
                    &key,
                    TailEvent {
                        script_name,
                        outcome,
                        event_timestamp,
                        request_id,
                        request: info,
                        status,
                        wall_ms: started.elapsed().as_millis() as u64,
                        cpu_ms: meter.used().as_millis() as u64,
                        logs,
                        exceptions,
                    },
                );
            });
        } else {
            tokio::spawn(async move {
                let (outcome, _) = ended.await.unwrap_or(outcome).parts();
                record(&outcome);
            });
        }
        resp
    }

    /// Instantiates and runs the guest; returns the answer, how it went, and
    /// the guest task when it is still running (streaming a body, waitUntil).
    async fn run(
        &self,
        state: State,
        req: hyper::Request<hyper::body::Incoming>,
        request_id: &str,
        limits: &Limits,
        meter: &Arc<CpuMeter>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> (hyper::Response<Body>, Outcome, Option<GuestTask>) {
        let mut store = Store::new(self.engine.engine(), state);
        // StarlingMonkey keeps a few component handles alive per body chunk it
        // pipes (about 8 per 64 KiB), so wasmtime's default of 100 000 live
        // handles cuts a streamed body near 800 MB. Handles are small host
        // entries and die with the request's store.
        store.set_max_component_handles(MAX_HANDLES);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        let cpu = Duration::from_millis(limits.cpu_ms);
        let m = meter.clone();
        store.epoch_deadline_callback(move |_| {
            if m.used() > cpu {
                m.set_exceeded();
                wasmtime::bail!("CPU limit of {} ms exceeded", cpu.as_millis());
            }
            Ok(UpdateDeadline::Yield(1))
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let prepared = (|| -> wasmtime::Result<_> {
            let wreq = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, req)?;
            let out = store.data_mut().http().new_response_outparam(tx)?;
            Ok((wreq, out))
        })();
        let (wreq, out) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("bad request: {e}");
                return (text(400, &msg), Outcome::Exception(msg), None);
            }
        };
        let pre = self.pre.clone();
        // Until the guest task is handed on with the answer, dropping this
        // future (the client went away before the head) cancels the guest.
        let mut task = AbortOnDrop(Some(tokio::spawn(Metered::new(
            async move {
                // The worker's concurrency slot is held while the guest runs.
                let _slot = slot;
                let run = async {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, wreq, out)
                        .await
                };
                let result = run.await;
                (result, store.data().limiter.hit)
            },
            meter.clone(),
        ))));
        let worker = &self.config.name;
        match tokio::time::timeout(limits.wall_clock, rx).await {
            Ok(Ok(Ok(resp))) => (resp, Outcome::Ok, task.disarm()),
            Ok(Ok(Err(code))) => {
                tracing::warn!(worker, request_id, error = ?code, "worker answered with an error");
                let msg = format!("worker error: {code:?}");
                (text(500, &msg), Outcome::Exception(msg), task.disarm())
            }
            Ok(Err(_)) => {
                let (result, memory_hit) = match task.join().await {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => (Err(wasmtime::format_err!("worker task failed: {e}")), false),
                    None => (Err(wasmtime::format_err!("worker task lost")), false),
                };
                let hit = if meter.exceeded() {
                    Some(LimitHit::Cpu)
                } else if memory_hit {
                    Some(LimitHit::Memory)
                } else {
                    None
                };
                match (hit, result) {
                    (Some(limit), _) => {
                        tracing::error!(
                            worker,
                            request_id,
                            limit = limit.name(),
                            "worker exceeded its {} limit",
                            limit.name()
                        );
                        (
                            text(503, &format!("worker exceeded its {} limit", limit.name())),
                            Outcome::Limit(limit),
                            None,
                        )
                    }
                    (None, Err(e)) => {
                        let msg = format!("{e:#}");
                        tracing::error!(worker, request_id, error = %msg, "worker threw an exception");
                        (
                            text(500, "worker threw an exception"),
                            Outcome::Exception(msg),
                            None,
                        )
                    }
                    (None, Ok(())) => {
                        let msg = "worker returned without a response";
                        tracing::error!(worker, request_id, "{msg}");
                        (text(500, msg), Outcome::Exception(msg.into()), None)
                    }
                }
            }
            Err(_) => {
                drop(task);
                tracing::error!(
                    worker,
                    request_id,
                    limit = "wall_clock",
                    "worker exceeded its wall_clock limit"
                );
                (
                    text(503, "worker exceeded its wall_clock limit"),
                    Outcome::Limit(LimitHit::WallClock),
                    None,
                )
            }
        }
    }
}

/// Live component handles a request's store may hold (see `run`).
const MAX_HANDLES: usize = 4 << 20;

/// The guest's task: its result and whether it hit the memory limit.
type GuestTask = tokio::task::JoinHandle<(wasmtime::Result<()>, bool)>;

/// A guest task that is cancelled when dropped, unless handed on.
struct AbortOnDrop(Option<GuestTask>);

impl AbortOnDrop {
    /// Hands the task on: it is no longer cancelled on drop.
    fn disarm(mut self) -> Option<GuestTask> {
        self.0.take()
    }

    /// Waits for the task to end.
    async fn join(
        &mut self,
    ) -> Option<Result<(wasmtime::Result<()>, bool), tokio::task::JoinError>> {
        match self.0.as_mut() {
            Some(task) => Some(task.await),
            None => None,
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// How a request ended, for tail events.
enum Outcome {
    Ok,
    Canceled,
    Exception(String),
    Limit(LimitHit),
}

impl Outcome {
    fn parts(self) -> (String, Vec<String>) {
        match self {
            Outcome::Ok => ("ok".into(), vec![]),
            Outcome::Canceled => ("canceled".into(), vec![]),
            Outcome::Exception(m) => ("exception".into(), vec![m]),
            Outcome::Limit(l) => {
                let name = match l {
                    LimitHit::Cpu => "exceededCpu",
                    LimitHit::Memory => "exceededMemory",
                    LimitHit::WallClock => "exceededWallClock",
                };
                (
                    name.into(),
                    vec![format!("worker exceeded its {} limit", l.name())],
                )
            }
        }
    }
}

/// An answer body that reports, when it is done with, whether it was sent
/// whole (`true`) or dropped early by a client that went away (`false`).
struct Watched {
    inner: Body,
    done: Option<tokio::sync::oneshot::Sender<bool>>,
    no_body: bool,
    length: Option<u64>,
    sent: u64,
}

impl Watched {
    fn new(
        inner: Body,
        done: tokio::sync::oneshot::Sender<bool>,
        no_body: bool,
        length: Option<u64>,
    ) -> Self {
        Watched {
            inner,
            done: Some(done),
            no_body,
            length,
            sent: 0,
        }
    }

    fn complete(&self) -> bool {
        self.no_body
            || self.length.is_some_and(|n| self.sent >= n)
            || hyper::body::Body::is_end_stream(&self.inner)
    }
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(done) = self.done.take() {
                    let _ = done.send(true);
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let complete = self.complete();
        if let Some(done) = self.done.take() {
            let _ = done.send(complete);
        }
    }
}
