//! Live logs: each request's `console.*` output (stdout → `log`, stderr →
//! `error`), outcome, status and timing, published as one event per request to
//! the worker's subscribers (`warren tail`). Nothing is kept when nobody listens.
//!
//! Subscriptions are keyed by the worker's identity ([`WorkerKey`]: its
//! account and the tag minted when the worker was created), never by its bare
//! name: a worker deleted and re-created under the same name, by this account
//! or another, is a different worker, and deleting a worker ends every
//! subscription to it. Each subscriber has a bounded buffer; one that falls
//! [`SUBSCRIBER_BUFFER_BYTES`] behind is dropped rather than buffered further.
//!
//! Where other processes serve the workers (a node's runtime processes),
//! each is a [`Follower`]: it says up to which subscription it sends events
//! ([`Follower::follows`]), and a new subscription waits for all of them
//! ([`LogHub::relayed`]) before its client is told it is live, so no request
//! served after that is missed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Bytes of events (estimated by their size) one subscriber may have waiting
/// before it is dropped as too slow.
pub const SUBSCRIBER_BUFFER_BYTES: usize = 1 << 20;

/// One line a worker printed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LogLine {
    /// `log` (stdout) or `error` (stderr).
    pub level: &'static str,
    /// The line.
    pub message: String,
}

/// A [`LogLine`] as read back: any level but `error` is `log`.
#[derive(Deserialize)]
struct ReadLine {
    level: String,
    message: String,
}

impl<'de> Deserialize<'de> for LogLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let l = ReadLine::deserialize(d)?;
        Ok(LogLine {
            level: if l.level == "error" { "error" } else { "log" },
            message: l.message,
        })
    }
}

/// One request's trace, in the spirit of a Workers tail event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TailEvent {
    /// Worker name.
    pub script_name: String,
    /// `ok`, `exception`, `exceededCpu`, `exceededMemory`, `exceededWallClock`, `canceled`.
    pub outcome: String,
    /// Milliseconds since the Unix epoch when the request arrived.
    pub event_timestamp: u64,
    /// The request id (also in the `warren-request-id` response header).
    pub request_id: String,
    /// Method and URL of the request.
    pub request: RequestInfo,
    /// Status sent to the client.
    pub status: u16,
    /// Wall time from arrival until the worker finished (waitUntil included).
    pub wall_ms: u64,
    /// CPU time spent in the guest.
    pub cpu_ms: u64,
    /// What the worker printed.
    pub logs: Vec<LogLine>,
    /// Exceptions and limit errors, as messages.
    pub exceptions: Vec<String>,
}

impl TailEvent {
    /// Roughly the bytes the event holds (what a subscriber's buffer counts).
    fn weight(&self) -> usize {
        256 + self.script_name.len()
            + self.request.url.len()
            + self.request.method.len()
            + self
                .logs
                .iter()
                .map(|l| l.message.len() + 16)
                .sum::<usize>()
            + self.exceptions.iter().map(|e| e.len() + 8).sum::<usize>()
    }
}

/// The request part of a [`TailEvent`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestInfo {
    /// HTTP method.
    pub method: String,
    /// Full URL as received.
    pub url: String,
}

/// Splits captured output into lines of one level.
pub fn lines(level: &'static str, bytes: &[u8]) -> Vec<LogLine> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| LogLine {
            level,
            message: l.to_owned(),
        })
        .collect()
}

/// Which worker a subscription follows: its account and the tag minted when
/// it was created (kept by redeploys, new when the name is created again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerKey {
    /// Owning account.
    pub account_id: String,
    /// The worker's tag.
    pub tag: String,
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEnd {
    /// The worker was deleted.
    WorkerDeleted,
    /// The subscriber fell [`SUBSCRIBER_BUFFER_BYTES`] behind.
    TooSlow,
}

impl TailEnd {
    /// The reason as the tail stream's last line states it.
    pub fn as_str(self) -> &'static str {
        match self {
            TailEnd::WorkerDeleted => "worker_deleted",
            TailEnd::TooSlow => "too_slow",
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<TailEvent>,
    bytes: usize,
    ended: Option<TailEnd>,
}

#[derive(Debug, Default)]
struct Subscriber {
    queue: Mutex<Queue>,
    ready: Notify,
}

impl Subscriber {
    fn end(&self, why: TailEnd) {
        if let Ok(mut q) = self.queue.lock() {
            q.ended.get_or_insert(why);
            q.events.clear();
            q.bytes = 0;
        }
        self.ready.notify_one();
    }
}

/// Subscriptions one worker may have at once in a hub: live tails of a
/// worker per node. Each costs the node a queue and every runtime process a
/// follow message, so a tenant cannot open them without end; a closed tail
/// frees its place.
pub const MAX_TAILS_PER_WORKER: usize = 10;

/// Why [`LogHub::subscribe`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsubscribed {
    /// No such worker is open here.
    NoWorker,
    /// The worker already has [`MAX_TAILS_PER_WORKER`] subscriptions.
    Full,
}

impl std::fmt::Display for Unsubscribed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsubscribed::NoWorker => f.write_str("no such worker"),
            Unsubscribed::Full => write!(f, "the worker has {MAX_TAILS_PER_WORKER} live tails"),
        }
    }
}

/// One subscription to a worker's events; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    sub: Arc<Subscriber>,
    number: u64,
}

impl Subscription {
    /// Its place in the hub's subscriptions (the first is 1); a
    /// [`Follower`] that follows this number sends its events.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The next event, or why the subscription ended (the same reason on
    /// every later call).
    pub async fn recv(&mut self) -> Result<TailEvent, TailEnd> {
        loop {
            let notified = self.sub.ready.notified();
            {
                let Ok(mut q) = self.sub.queue.lock() else {
                    return Err(TailEnd::WorkerDeleted);
                };
                if let Some(ev) = q.events.pop_front() {
                    q.bytes = q.bytes.saturating_sub(ev.weight());
                    return Ok(ev);
                }
                if let Some(end) = q.ended {
                    return Err(end);
                }
            }
            notified.await;
        }
    }
}

/// Tail subscriptions of every live worker, by [`WorkerKey`].
#[derive(Debug)]
pub struct LogHub {
    workers: Mutex<HashMap<WorkerKey, Vec<Weak<Subscriber>>>>,
    buffer_bytes: usize,
    subscribed: Notify,
    /// Subscriptions made so far (changed only with `workers` locked).
    subscriptions: AtomicU64,
    /// Each follower's id and the last subscription it follows.
    followers: Mutex<HashMap<u64, u64>>,
    next_follower: AtomicU64,
    /// Woken when a follower follows more or goes away.
    followed_more: Notify,
}

impl Default for LogHub {
    fn default() -> Self {
        LogHub::with_buffer(SUBSCRIBER_BUFFER_BYTES)
    }
}

impl LogHub {
    /// A hub allowing each subscriber `bytes` of waiting events.
    pub fn with_buffer(bytes: usize) -> Self {
        LogHub {
            workers: Mutex::new(HashMap::new()),
            buffer_bytes: bytes,
            subscribed: Notify::new(),
            subscriptions: AtomicU64::new(0),
            followers: Mutex::new(HashMap::new()),
            next_follower: AtomicU64::new(0),
            followed_more: Notify::new(),
        }
    }

    /// Makes `key` followable (its worker was deployed or restored).
    pub fn open(&self, key: &WorkerKey) {
        if let Ok(mut w) = self.workers.lock() {
            w.entry(key.clone()).or_default();
        }
    }

    /// Ends every subscription to `key` (its worker was deleted); later
    /// subscriptions to it are refused.
    pub fn close(&self, key: &WorkerKey) {
        let subs = self
            .workers
            .lock()
            .ok()
            .and_then(|mut w| w.remove(key))
            .unwrap_or_default();
        for s in subs.iter().filter_map(Weak::upgrade) {
            s.end(TailEnd::WorkerDeleted);
        }
    }

    /// Follows `key`'s events from now on; refused when no such worker is
    /// open, or when it already has [`MAX_TAILS_PER_WORKER`] subscriptions.
    pub fn subscribe(&self, key: &WorkerKey) -> Result<Subscription, Unsubscribed> {
        self.add_subscriber(key, false)
    }

    /// Follows `key`'s events from now on, also when its worker is not open
    /// here yet (a runtime process told to follow a worker it has still to
    /// load captures its first request). `None` only if the hub's lock is
    /// poisoned.
    pub fn subscribe_ahead(&self, key: &WorkerKey) -> Option<Subscription> {
        self.add_subscriber(key, true).ok()
    }

    fn add_subscriber(&self, key: &WorkerKey, ahead: bool) -> Result<Subscription, Unsubscribed> {
        let mut w = self.workers.lock().map_err(|_| Unsubscribed::NoWorker)?;
        let subs = if ahead {
            w.entry(key.clone()).or_default()
        } else {
            w.get_mut(key).ok_or(Unsubscribed::NoWorker)?
        };
        subs.retain(|s| s.strong_count() > 0);
        // A runtime process's subscriptions mirror the node's, which are
        // capped there.
        if !ahead && subs.len() >= MAX_TAILS_PER_WORKER {
            return Err(Unsubscribed::Full);
        }
        let sub = Arc::new(Subscriber::default());
        subs.push(Arc::downgrade(&sub));
        let number = self.subscriptions.fetch_add(1, Ordering::SeqCst) + 1;
        drop(w);
        self.subscribed.notify_waiters();
        Ok(Subscription { sub, number })
    }

    /// Subscriptions made so far. Read before [`LogHub::followed`], every
    /// subscription up to it is in that list (or has ended).
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions.load(Ordering::SeqCst)
    }

    /// Registers another process sending events of the followed workers;
    /// until it [`Follower::follows`] a subscription, [`LogHub::relayed`]
    /// waits for it. Dropping it unregisters it.
    pub fn follower(self: &Arc<Self>) -> Follower {
        let id = self.next_follower.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.followers.lock() {
            f.insert(id, 0);
        }
        Follower {
            hub: self.clone(),
            id,
        }
    }

    /// Completes when every follower follows subscription `number` (at once
    /// without followers; a follower that goes away stops counting).
    pub async fn relayed(&self, number: u64) {
        loop {
            let more = self.followed_more.notified();
            tokio::pin!(more);
            more.as_mut().enable();
            let behind = match self.followers.lock() {
                Ok(f) => f.values().any(|&n| n < number),
                Err(_) => false,
            };
            if !behind {
                return;
            }
            more.await;
        }
    }

    /// The workers someone follows now, in order (a node's other runtime
    /// processes send events of these only).
    pub fn followed(&self) -> Vec<WorkerKey> {
        let Ok(w) = self.workers.lock() else {
            return Vec::new();
        };
        let mut keys: Vec<WorkerKey> = w
            .iter()
            .filter(|(_, subs)| subs.iter().any(|s| s.strong_count() > 0))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Completes at the next new subscription (an ended one is seen only by
    /// asking [`LogHub::followed`] again).
    pub fn subscribed(&self) -> tokio::sync::futures::Notified<'_> {
        self.subscribed.notified()
    }

    /// Whether anyone follows `key` (capture is skipped otherwise).
    pub fn has_subscribers(&self, key: &WorkerKey) -> bool {
        self.workers
            .lock()
            .ok()
            .and_then(|w| w.get(key).map(|s| s.iter().any(|s| s.strong_count() > 0)))
            .unwrap_or(false)
    }

    /// Sends an event to `key`'s subscribers; one whose buffer would go over
    /// the limit is ended as [`TailEnd::TooSlow`] and forgotten.
    pub fn publish(&self, key: &WorkerKey, event: TailEvent) {
        let Ok(mut w) = self.workers.lock() else {
            return;
        };
        let Some(subs) = w.get_mut(key) else {
            return;
        };
        let weight = event.weight();
        subs.retain(|s| {
            let Some(s) = s.upgrade() else {
                return false;
            };
            let Ok(mut q) = s.queue.lock() else {
                return false;
            };
            if q.ended.is_some() {
                return false;
            }
            if q.bytes + weight > self.buffer_bytes {
                drop(q);
                s.end(TailEnd::TooSlow);
                return false;
            }
            q.bytes += weight;
            q.events.push_back(event.clone());
            drop(q);
            s.ready.notify_one();
            true
        });
    }
}

/// A process sending events of the followed workers to a [`LogHub`]
/// (see [`LogHub::follower`]).
#[derive(Debug)]
pub struct Follower {
    hub: Arc<LogHub>,
    id: u64,
}

impl Follower {
    /// It sends the events of every subscription up to `number`.
    pub fn follows(&self, number: u64) {
        if let Ok(mut f) = self.hub.followers.lock()
            && let Some(n) = f.get_mut(&self.id)
        {
            *n = (*n).max(number);
        }
        self.hub.followed_more.notify_waiters();
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Ok(mut f) = self.hub.followers.lock() {
            f.remove(&self.id);
        }
        self.hub.followed_more.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_splits_into_lines_by_level() {
        let l = lines("log", b"a\n\nb\r\nc");
        let m: Vec<&str> = l.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(m, ["a", "b", "c"]);
        assert!(l.iter().all(|l| l.level == "log"));
    }

    fn event(url: &str) -> TailEvent {
        TailEvent {
            script_name: "w".into(),
            outcome: "ok".into(),
            event_timestamp: 0,
            request_id: "r".into(),
            request: RequestInfo {
                method: "GET".into(),
                url: url.into(),
            },
            status: 200,
            wall_ms: 0,
            cpu_ms: 0,
            logs: vec![],
            exceptions: vec![],
        }
    }

    fn key(account: &str, tag: &str) -> WorkerKey {
        WorkerKey {
            account_id: account.into(),
            tag: tag.into(),
        }
    }

    #[tokio::test]
    async fn events_reach_only_their_workers_subscribers() {
        let hub = LogHub::default();
        let (a, b) = (key("acct-a", "t1"), key("acct-b", "t1"));
        assert_eq!(
            hub.subscribe(&a).err(),
            Some(Unsubscribed::NoWorker),
            "no such worker yet"
        );
        hub.open(&a);
        hub.open(&b);
        let mut sa = hub.subscribe(&a).expect("open");
        assert!(hub.has_subscribers(&a) && !hub.has_subscribers(&b));
        hub.publish(&b, event("/b"));
        hub.publish(&a, event("/a"));
        assert_eq!(sa.recv().await.expect("event").request.url, "/a");
        hub.close(&a);
        assert_eq!(sa.recv().await.unwrap_err(), TailEnd::WorkerDeleted);
        assert_eq!(
            hub.subscribe(&a).err(),
            Some(Unsubscribed::NoWorker),
            "a deleted worker"
        );
        drop(sa);
    }

    #[tokio::test]
    async fn a_subscription_ahead_gets_the_events_of_a_worker_opened_later() {
        let hub = LogHub::default();
        let k = key("acct", "later");
        assert_eq!(
            hub.subscribe(&k).err(),
            Some(Unsubscribed::NoWorker),
            "not open yet"
        );
        let mut ahead = hub.subscribe_ahead(&k).expect("hub");
        hub.open(&k);
        hub.publish(&k, event("/first"));
        assert_eq!(ahead.recv().await.expect("event").request.url, "/first");
    }

    #[tokio::test]
    async fn followed_lists_the_workers_with_a_live_subscriber() {
        let hub = LogHub::default();
        let (a, b) = (key("acct", "a"), key("acct", "b"));
        hub.open(&a);
        hub.open(&b);
        assert!(hub.followed().is_empty());
        let announced = hub.subscribed();
        tokio::pin!(announced);
        announced.as_mut().enable();
        let sub = hub.subscribe(&b).expect("open");
        announced.await;
        assert_eq!(hub.followed(), std::slice::from_ref(&b));
        drop(sub);
        assert!(hub.followed().is_empty(), "a dropped subscription");
    }

    #[tokio::test]
    async fn a_subscription_is_relayed_once_every_follower_follows_it() {
        let hub = Arc::new(LogHub::default());
        let k = key("acct", "t");
        hub.open(&k);
        let (one, two) = (hub.follower(), hub.follower());
        let sub = hub.subscribe(&k).expect("open");
        assert_eq!(sub.number(), 1);
        let relayed = hub.relayed(sub.number());
        tokio::pin!(relayed);
        fn pending<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
            futures_util::FutureExt::now_or_never(f).is_none()
        }
        assert!(pending(relayed.as_mut()), "no follower follows it yet");
        one.follows(1);
        assert!(pending(relayed.as_mut()), "one of two followers follows it");
        drop(two);
        assert!(!pending(relayed.as_mut()), "the other went away");
        let later = hub.subscribe(&k).expect("open");
        let relayed = hub.relayed(later.number());
        tokio::pin!(relayed);
        one.follows(1);
        assert!(pending(relayed.as_mut()), "it follows an earlier one only");
        one.follows(2);
        assert!(!pending(relayed.as_mut()));
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_dropped() {
        let hub = LogHub::with_buffer(4096);
        let k = key("acct", "t");
        hub.open(&k);
        let mut slow = hub.subscribe(&k).expect("open");
        for _ in 0..100 {
            hub.publish(&k, event(&"x".repeat(1000)));
        }
        assert!(!hub.has_subscribers(&k), "dropped from the hub");
        assert_eq!(slow.recv().await.unwrap_err(), TailEnd::TooSlow);
        assert_eq!(slow.recv().await.unwrap_err(), TailEnd::TooSlow);
    }
}
