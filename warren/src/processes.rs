//! Runtime processes: with `[runtime] processes = N` (N > 1) a node serves
//! workers from N child processes of its own binary, each single-threaded
//! and each running every worker, instead of from its own threads. Instance
//! memory is reset between requests; in one multi-threaded process every
//! page that reset unmaps costs a TLB-shootdown interrupt on the other
//! cores, which separate processes do not share (measured in
//! docs/workers.md).
//!
//! The parent reserves the runtime's address (bound with `SO_REUSEPORT`,
//! never listening) and starts the children; each binds the same address
//! with `SO_REUSEPORT`, so the kernel spreads connections over them. A child
//! gets the node's config as the node read it at start, opens its store like
//! any runtime-only node, follows it for deploys made anywhere (and catches
//! up at once on those the parent's API commits), shares the parent's data
//! directory (bundles and compiled code: nothing is built or compiled twice)
//! and calls bindings through the parent's binding-worker (its RPC listener,
//! authenticated by node certificates).
//!
//! Parent and child talk over the child's stdin and stdout, one JSON message
//! per line ([`ToChild`], [`ToParent`]): the parent names the workers someone
//! tails and the child sends their events; the child reports its metrics'
//! totals, which the parent adds to its own. A child whose stdin closes (its
//! parent stopped or died) stops; a child that exits is started again.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, watch};
use warren_runtime::deploy::{Replicas, Scripts};
use warren_runtime::logs::{LogHub, TailEvent, WorkerKey};
use warren_runtime::metrics::{Series, metrics};

use crate::config;

/// What a parent tells its runtime process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToChild {
    /// The first message: the node's config as the node read it, where to
    /// serve and where the binding RPC is.
    Start {
        /// The config file's path (relative paths in it resolve against
        /// its folder).
        config_path: PathBuf,
        /// Its text, as the node read it at start.
        config: String,
        /// The runtime's address (the parent's, shared with `SO_REUSEPORT`).
        listen: SocketAddr,
        /// The binding-worker's RPC: `host:port` or `unix:/path`.
        binding_rpc: String,
    },
    /// The workers someone tails now (all of them; replaces the last list).
    Follow {
        /// Followed workers.
        workers: Vec<WorkerKey>,
        /// The parent's subscriptions made before the list was read; the
        /// answer is [`ToParent::Following`] with it.
        upto: u64,
    },
    /// Serve what the store holds for worker `name` now, then say
    /// [`ToParent::Synced`] (a change was committed through the parent).
    Sync {
        /// Matches the answer.
        id: u64,
        /// The worker.
        name: String,
    },
}

/// What a runtime process tells its parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToParent {
    /// Listening, with every stored worker loaded.
    Ready {
        /// The address it serves on.
        addr: SocketAddr,
    },
    /// One request's tail event of a followed worker.
    Tail {
        /// The worker.
        worker: WorkerKey,
        /// Its event.
        event: Box<TailEvent>,
    },
    /// Totals of the process's metric series that changed since its last
    /// report.
    Totals {
        /// Each series and its total.
        totals: Vec<(Series, u64)>,
    },
    /// Sends the events of the workers of [`ToChild::Follow`] `upto`.
    Following {
        /// As in that message.
        upto: u64,
    },
    /// Done with [`ToChild::Sync`] `id`.
    Synced {
        /// The request's id.
        id: u64,
    },
}

/// Longest line either side accepts; a longer one is skipped (a tail event
/// carries at most what one request printed).
const MAX_LINE: u64 = 16 << 20;

/// Messages a child may have queued for its parent (each at most a tail
/// event's 1 MiB); more are dropped, as a slow tail drops events.
const CHILD_QUEUE: usize = 64;

/// How long a change committed through the parent waits for its runtime
/// processes to serve it.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a child may take from start to [`ToParent::Ready`].
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// How often the followed workers are re-read (a tail that ended is seen
/// this late; a new one at once) and a child's totals sent.
const TICK: Duration = Duration::from_secs(1);

/// Completes when `stop` turns true.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Reads one line of at most [`MAX_LINE`] bytes (with its newline, if it
/// had one); `None` at the end. A longer line is skipped to its end and
/// reported as an error.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> anyhow::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let n = (&mut *r).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && n as u64 == MAX_LINE {
        let mut rest = Vec::new();
        while r.read_until(b'\n', &mut rest).await? > 0 && rest.last() != Some(&b'\n') {
            rest.clear();
        }
        anyhow::bail!("a line of more than {MAX_LINE} bytes (skipped)");
    }
    Ok(Some(buf))
}

/// Reads `r` line by line in a task of its own (so no line is torn by a
/// `select!` that drops a read half done); the receiver ends with the input.
fn lines<R: AsyncRead + Unpin + Send + 'static>(
    r: R,
    what: &'static str,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut r = BufReader::new(r);
        loop {
            match read_line(&mut r).await {
                Ok(Some(l)) => {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(from = what, error = %format!("{e:#}"), "unreadable line");
                    if e.downcast_ref::<std::io::Error>().is_some() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// One message as a line.
fn line<T: Serialize>(msg: &T) -> anyhow::Result<Vec<u8>> {
    let mut l = serde_json::to_vec(msg)?;
    l.push(b'\n');
    Ok(l)
}

/// What the parent needs to run its runtime processes.
pub struct Children {
    /// The node's config file and its text, as the node read it.
    pub config: (PathBuf, String),
    /// How many.
    pub count: usize,
    /// The reserved runtime address.
    pub listen: SocketAddr,
    /// Their binding RPC.
    pub binding_rpc: String,
    /// The parent's tail subscriptions, which children's events join.
    pub logs: Arc<LogHub>,
}

/// A request to one child to serve what the store holds for a worker.
struct SyncRequest {
    name: String,
    done: oneshot::Sender<()>,
}

/// The runtime processes as [`Replicas`] of the parent's scripts.
pub struct ProcessSync {
    children: Vec<mpsc::Sender<SyncRequest>>,
}

#[async_trait::async_trait]
impl Replicas for ProcessSync {
    async fn sync(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        let mut waiting = Vec::with_capacity(self.children.len());
        for (i, child) in self.children.iter().enumerate() {
            let (done, rx) = oneshot::channel();
            let req = SyncRequest {
                name: name.to_owned(),
                done,
            };
            match tokio::time::timeout_at(deadline, child.send(req)).await {
                Ok(Ok(())) => waiting.push((i + 1, rx)),
                _ => tracing::warn!(
                    process = i + 1,
                    worker = name,
                    "a runtime process was not told of a change"
                ),
            }
        }
        // A request to a child that is down or starting is answered at
        // once: a new child serves what the store holds before it is ready.
        for (index, rx) in waiting {
            if tokio::time::timeout_at(deadline, rx).await.is_err() {
                tracing::warn!(
                    process = index,
                    worker = name,
                    "a runtime process did not take a change within {SYNC_TIMEOUT:?}"
                );
            }
        }
    }
}

/// Starts the runtime processes and keeps them running (each started again
/// after it exits) until `stop`; returns once each is ready (with the
/// [`Replicas`] that changes committed in this process wait for), or the
/// first one's failure to start.
pub async fn start(
    children: Children,
    stop: watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<Arc<ProcessSync>> {
    let exe = std::env::current_exe()
        .context("cannot find this program to start its runtime processes")?;
    let children = Arc::new(children);
    let mut ready = Vec::new();
    let mut syncs = Vec::new();
    for index in 1..=children.count {
        let (tx, rx) = oneshot::channel();
        ready.push((index, rx));
        let (sync_tx, sync_rx) = mpsc::channel(256);
        syncs.push(sync_tx);
        tasks.spawn(supervise(
            exe.clone(),
            children.clone(),
            index,
            tx,
            sync_rx,
            stop.clone(),
        ));
    }
    for (index, rx) in ready {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.context(format!("runtime process {index}"))),
            Err(_) => anyhow::bail!("runtime process {index} was not started"),
        }
    }
    tracing::info!(processes = children.count, addr = %children.listen, "runtime processes serving workers");
    Ok(Arc::new(ProcessSync { children: syncs }))
}

/// Runs child `index`, starting it again after it exits (waiting longer
/// after each quick exit), until `stop`. `ready` gets the first start's
/// outcome.
async fn supervise(
    exe: PathBuf,
    children: Arc<Children>,
    index: usize,
    ready: oneshot::Sender<anyhow::Result<()>>,
    mut syncs: mpsc::Receiver<SyncRequest>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = tokio::time::Instant::now();
        let outcome = run_child(&exe, &children, index, &mut ready, &mut syncs, &mut stop).await;
        if let Some(tx) = ready.take() {
            let _ = tx.send(Err(outcome
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("stopped before it was ready"))));
            return;
        }
        if *stop.borrow() {
            return;
        }
        backoff = match started.elapsed() > Duration::from_secs(60) {
            true => Duration::from_millis(500),
            false => (backoff * 2).min(Duration::from_secs(30)),
        };
        match outcome {
            Ok(status) => {
                tracing::error!(process = index, %status, retry_in = ?backoff, "runtime process exited; starting it again")
            }
            Err(e) => {
                tracing::error!(process = index, error = %format!("{e:#}"), retry_in = ?backoff, "runtime process failed; starting it again")
            }
        }
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                Some(req) = syncs.recv() => {
                    let _ = req.done.send(());
                }
                () = stopped(&mut stop) => return,
            }
        }
    }
}

/// Tells a child the followed workers and the subscriptions they cover,
/// unless `sent` says it knows them already.
async fn send_follow(
    stdin: &mut ChildStdin,
    logs: &LogHub,
    sent: &mut Option<(Vec<WorkerKey>, u64)>,
) -> anyhow::Result<()> {
    // Read first: every subscription up to it is in the list.
    let upto = logs.subscriptions();
    let now = (logs.followed(), upto);
    if sent.as_ref() != Some(&now) {
        stdin
            .write_all(&line(&ToChild::Follow {
                workers: now.0.clone(),
                upto,
            })?)
            .await?;
        *sent = Some(now);
    }
    Ok(())
}

/// Starts child `index` and serves it until it exits (its status) or
/// `stop` (then it is told to stop, and killed if it has not within 10 s).
async fn run_child(
    exe: &Path,
    children: &Children,
    index: usize,
    ready: &mut Option<oneshot::Sender<anyhow::Result<()>>>,
    syncs: &mut mpsc::Receiver<SyncRequest>,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<std::process::ExitStatus> {
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--runtime-process"])
        .env("TOKIO_WORKER_THREADS", "1")
        .env("WARREN_RUNTIME_PROCESS", index.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("cannot start")?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        anyhow::bail!("started without pipes");
    };
    stdin
        .write_all(&line(&ToChild::Start {
            config_path: children.config.0.clone(),
            config: children.config.1.clone(),
            listen: children.listen,
            binding_rpc: children.binding_rpc.clone(),
        })?)
        .await?;
    // Tails wait until this process follows them (and not once it is gone),
    // from its start: it may serve requests before it says it is ready.
    let follower = children.logs.follower();
    let mut followed = None;
    send_follow(&mut stdin, &children.logs, &mut followed).await?;
    let mut out = lines(stdout, "a runtime process");
    // Until ready: its first message, or its exit. Changes committed
    // meanwhile need no answer from it: it loads the store as it starts.
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let first = loop {
        tokio::select! {
            l = out.recv() => break l,
            Some(req) = syncs.recv() => {
                let _ = req.done.send(());
            }
            () = tokio::time::sleep_until(deadline) => anyhow::bail!("not ready within {READY_TIMEOUT:?}"),
            () = stopped(stop) => return finish(child, stdin).await,
        }
    };
    match first {
        Some(l) if matches!(serde_json::from_slice(&l), Ok(ToParent::Ready { .. })) => {
            if let Some(tx) = ready.take() {
                let _ = tx.send(Ok(()));
            }
        }
        Some(_) => anyhow::bail!("its first message was not `ready`"),
        None => {
            let status = child.wait().await?;
            anyhow::bail!("exited before it was ready ({status}); its log says why")
        }
    }
    let mut totals: HashMap<Series, u64> = HashMap::new();
    let mut pending: HashMap<u64, oneshot::Sender<()>> = HashMap::new();
    let mut next_id = 0u64;
    let mut check = true;
    let mut tick = tokio::time::interval(TICK);
    loop {
        // Armed before the list is read, so no new tail slips between.
        let subscribed = children.logs.subscribed();
        tokio::pin!(subscribed);
        subscribed.as_mut().enable();
        if std::mem::take(&mut check) {
            send_follow(&mut stdin, &children.logs, &mut followed).await?;
        }
        tokio::select! {
            l = out.recv() => match l {
                Some(l) => match serde_json::from_slice::<ToParent>(&l) {
                    Ok(ToParent::Tail { worker, event }) => children.logs.publish(&worker, *event),
                    Ok(ToParent::Following { upto }) => follower.follows(upto),
                    Ok(ToParent::Totals { totals: now }) => add_totals(&mut totals, now),
                    Ok(ToParent::Synced { id }) => {
                        if let Some(done) = pending.remove(&id) {
                            let _ = done.send(());
                        }
                    }
                    Ok(ToParent::Ready { .. }) => {}
                    Err(e) => tracing::warn!(process = index, error = %e, "unreadable message from a runtime process"),
                },
                None => return Ok(child.wait().await?),
            },
            Some(req) = syncs.recv() => {
                next_id += 1;
                stdin.write_all(&line(&ToChild::Sync { id: next_id, name: req.name })?).await?;
                pending.insert(next_id, req.done);
            }
            _ = tick.tick() => check = true,
            () = &mut subscribed => check = true,
            () = stopped(stop) => return finish(child, stdin).await,
        }
    }
}

/// Adds what a child counted since its last report to this process's
/// metrics (a total lower than the last one is a restarted child's).
fn add_totals(last: &mut HashMap<Series, u64>, now: Vec<(Series, u64)>) {
    for (series, total) in now {
        let before = last.insert(series.clone(), total).unwrap_or(0);
        let delta = match total >= before {
            true => total - before,
            false => total,
        };
        if delta > 0 {
            metrics().add(&series, delta);
        }
    }
}

/// Tells a child to stop (its stdin closes) and waits for it, killing it
/// after 10 s.
async fn finish(mut child: Child, stdin: ChildStdin) -> anyhow::Result<std::process::ExitStatus> {
    drop(stdin);
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            child.kill().await?;
            Ok(child.wait().await?)
        }
    }
}

/// `warren serve --runtime-process`: a runtime process, started by its
/// parent node with [`ToChild::Start`] on stdin. It stops when its stdin
/// closes, and only then: Ctrl-C or a service manager's SIGTERM reach the
/// whole process group, and the node stops its runtime processes itself.
pub async fn run_child_process() -> anyhow::Result<()> {
    let mut input = lines(tokio::io::stdin(), "the parent node");
    ignore_stop_signals()?;
    let start = input
        .recv()
        .await
        .context("no start message on stdin: this mode is for a node's own runtime processes")?;
    let ToChild::Start {
        config_path,
        config,
        listen,
        binding_rpc,
    } = serde_json::from_slice(&start).context("the start message is unreadable")?
    else {
        anyhow::bail!("the first message was not `start`");
    };
    let mut file = config::from_text(&config_path, config)?;
    file.parts = config::Parts {
        api: false,
        tunnel: false,
        connect: false,
        binding: false,
        runtime: true,
    };
    file.runtime.listen = listen;
    file.runtime.binding_rpc = Some(binding_rpc);
    file.metrics.enabled = false;
    // Starting (loading every worker) may take a while: a parent gone
    // meanwhile stops it.
    let mut early = Vec::new();
    let started = crate::serve::start_runtime_process(&file);
    tokio::pin!(started);
    let node = loop {
        tokio::select! {
            node = &mut started => break node?,
            l = input.recv() => match l {
                Some(l) => early.push(l),
                None => anyhow::bail!("the parent node stopped while this process started"),
            },
        }
    };
    let (tx, rx) = mpsc::channel::<ToParent>(CHILD_QUEUE);
    let writer = tokio::spawn(write_messages(rx));
    let (Some(addr), Some(logs), Some(scripts)) =
        (node.runtime_addr, node.logs.clone(), node.scripts.clone())
    else {
        anyhow::bail!("the runtime did not start");
    };
    tx.send(ToParent::Ready { addr }).await?;
    let mut child = ChildSide {
        logs,
        scripts,
        tx,
        want: BTreeSet::new(),
        following: HashMap::new(),
        sent: HashMap::new(),
    };
    for l in early {
        child.message(&l);
    }
    child.serve(&mut input).await;
    drop(child);
    node.stop().await;
    let _ = writer.await;
    Ok(())
}

/// Makes SIGINT and SIGTERM do nothing in this process (see
/// [`run_child_process`]).
fn ignore_stop_signals() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
        let mut s = signal(kind).context("cannot handle stop signals")?;
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                tracing::debug!("stop signal ignored: the node stops its runtime processes");
            }
        });
    }
    Ok(())
}

/// Writes messages to stdout, one per line, until every sender is gone.
async fn write_messages(mut rx: mpsc::Receiver<ToParent>) {
    let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
    while let Some(msg) = rx.recv().await {
        let Ok(l) = line(&msg) else { continue };
        if out.write_all(&l).await.is_err() {
            return;
        }
        if rx.is_empty() && out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
}

/// A child's side of the conversation with its parent.
struct ChildSide {
    logs: Arc<LogHub>,
    scripts: Arc<Scripts>,
    tx: mpsc::Sender<ToParent>,
    /// The workers the parent wants events of.
    want: BTreeSet<WorkerKey>,
    /// A task per followed worker, sending its events.
    following: HashMap<WorkerKey, tokio::task::JoinHandle<()>>,
    /// The totals last reported.
    sent: HashMap<Series, u64>,
}

impl Drop for ChildSide {
    fn drop(&mut self) {
        for task in self.following.values() {
            task.abort();
        }
    }
}

impl ChildSide {
    /// Follows the workers the parent names (sending their events) and
    /// reports totals, until the parent's messages end.
    async fn serve(&mut self, input: &mut mpsc::Receiver<Vec<u8>>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                l = input.recv() => match l {
                    Some(l) => self.message(&l),
                    None => return,
                },
                _ = tick.tick() => {
                    ticks += 1;
                    if ticks.is_multiple_of(4) {
                        self.report_totals();
                    }
                }
            }
            self.follow();
        }
    }

    /// Acts on one message from the parent.
    fn message(&mut self, l: &[u8]) {
        match serde_json::from_slice::<ToChild>(l) {
            Ok(ToChild::Follow { workers, upto }) => {
                self.want = workers.into_iter().collect();
                self.follow();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(ToParent::Following { upto }).await;
                });
            }
            Ok(ToChild::Sync { id, name }) => {
                let (scripts, tx) = (self.scripts.clone(), self.tx.clone());
                tokio::spawn(async move {
                    scripts.sync(&name).await;
                    let _ = tx.send(ToParent::Synced { id }).await;
                });
            }
            Ok(ToChild::Start { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "unreadable message from the parent node"),
        }
    }

    /// Sends the series whose totals changed since the last report.
    fn report_totals(&mut self) {
        let changed: Vec<(Series, u64)> = metrics()
            .totals()
            .into_iter()
            .filter(|(s, v)| self.sent.get(s) != Some(v))
            .collect();
        if changed.is_empty() {
            return;
        }
        if self
            .tx
            .try_send(ToParent::Totals {
                totals: changed.clone(),
            })
            .is_ok()
        {
            self.sent.extend(changed);
        }
    }

    /// Subscribes to the wanted workers not followed yet (also those not
    /// loaded here yet) and drops the rest.
    fn follow(&mut self) {
        let want = &self.want;
        self.following.retain(|k, task| {
            let keep = want.contains(k) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for key in &self.want {
            if self.following.contains_key(key) {
                continue;
            }
            // Also a worker not loaded here yet: its first request counts.
            let Some(mut sub) = self.logs.subscribe_ahead(key) else {
                continue;
            };
            let (tx, worker) = (self.tx.clone(), key.clone());
            self.following.insert(
                key.clone(),
                tokio::spawn(async move {
                    while let Ok(event) = sub.recv().await {
                        // A parent that falls behind loses events, as a
                        // slow tail does.
                        let _ = tx.try_send(ToParent::Tail {
                            worker: worker.clone(),
                            event: Box::new(event),
                        });
                    }
                }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(worker: &str, outcome: Option<&str>) -> Series {
        Series {
            account: "acct".into(),
            worker: worker.into(),
            outcome: outcome.map(str::to_owned),
        }
    }

    fn counted(s: &Series) -> u64 {
        metrics()
            .totals()
            .into_iter()
            .find(|(k, _)| k == s)
            .map_or(0, |(_, v)| v)
    }

    #[test]
    fn a_childs_totals_add_what_is_new_even_after_it_restarted() {
        // The parent's own totals: a series it counted in is reported.
        let ok = series("totals-test", Some("ok"));
        let _counters = metrics().worker("acct", "totals-test");
        let mut last = HashMap::new();
        add_totals(&mut last, vec![(ok.clone(), 5)]);
        assert_eq!(counted(&ok), 5);
        add_totals(&mut last, vec![(ok.clone(), 8)]);
        assert_eq!(counted(&ok), 8, "only the 3 new ones added");
        // A restarted child counts from 0 again.
        add_totals(&mut last, vec![(ok.clone(), 2)]);
        assert_eq!(counted(&ok), 10);
    }

    #[tokio::test]
    async fn lines_longer_than_the_limit_are_refused() {
        let mut long = vec![b'x'; MAX_LINE as usize + 10];
        long.extend_from_slice(b"\n{\"next\":1}\n");
        let mut r = BufReader::new(&long[..]);
        let e = read_line(&mut r).await.expect_err("too long");
        assert!(e.to_string().starts_with("a line of more than"), "{e}");
        assert_eq!(
            read_line(&mut r).await.expect("line"),
            Some(b"{\"next\":1}\n".to_vec()),
            "the long line skipped to its end"
        );
        let mut r = BufReader::new(&b"{}\nrest"[..]);
        assert_eq!(
            read_line(&mut r).await.expect("line"),
            Some(b"{}\n".to_vec())
        );
        assert_eq!(
            read_line(&mut r).await.expect("end"),
            Some(b"rest".to_vec())
        );
        assert_eq!(read_line(&mut r).await.expect("end"), None);
    }

    #[test]
    fn messages_read_back_as_written() {
        let l = line(&ToChild::Sync {
            id: 7,
            name: "w".into(),
        })
        .expect("encodes");
        assert_eq!(l, b"{\"sync\":{\"id\":7,\"name\":\"w\"}}\n");
        match serde_json::from_slice(&l) {
            Ok(ToChild::Sync { id: 7, name }) => assert_eq!(name, "w"),
            other => panic!("{other:?}"),
        }
    }
}
