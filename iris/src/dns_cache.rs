//! The VPC router's DNS cache: answers from inside a tunnel's network are kept
//! for their TTL (clamped to a floor and a ceiling), "no such name" answers by
//! the SOA rule, and concurrent lookups of one name share one query.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use warren_protocol::ProxyError;

use crate::resolve::{Unresolved, lookup};
use crate::tunnels::Tunnels;

/// Bounds of the cache. Defaults from [`DnsCacheConfig::default`].
#[derive(Debug, Clone)]
pub struct DnsCacheConfig {
    /// Shortest time an answer is kept, whatever its TTL (default 5 s).
    pub min_ttl: Duration,
    /// Longest time a positive answer is kept (default 300 s).
    pub max_ttl: Duration,
    /// Longest time a "no such name / no address" answer is kept (default 60 s).
    pub max_negative_ttl: Duration,
    /// Most names kept; the oldest-expiring entries go first (default 10 000).
    pub max_entries: usize,
}

impl Default for DnsCacheConfig {
    fn default() -> Self {
        DnsCacheConfig {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
            max_negative_ttl: Duration::from_secs(60),
            max_entries: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tunnel: String,
    resolver: Option<SocketAddr>,
    host: String,
}

type Outcome = Result<Arc<[IpAddr]>, ProxyError>;

struct Entry {
    outcome: Outcome,
    expires: Instant,
}

/// Resolves names through tunnels, remembering answers. Share it (`Arc`).
pub struct DnsCache {
    tunnels: Tunnels,
    config: DnsCacheConfig,
    entries: Mutex<HashMap<Key, Entry>>,
    flights: Mutex<HashMap<Key, Arc<OnceCell<Outcome>>>>,
    lookups: AtomicU64,
}

impl DnsCache {
    /// A cache resolving through `tunnels`.
    pub fn new(tunnels: Tunnels, config: DnsCacheConfig) -> Self {
        DnsCache {
            tunnels,
            config,
            entries: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            lookups: AtomicU64::new(0),
        }
    }

    /// Addresses of `host` in the tunnel's network (IPv4 first), from the cache when
    /// fresh; otherwise one lookup through the tunnel, shared by concurrent callers.
    pub async fn resolve(
        &self,
        tunnel_id: &str,
        resolver: Option<SocketAddr>,
        host: &str,
    ) -> Result<Vec<IpAddr>, ProxyError> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let key = Key {
            tunnel: tunnel_id.to_owned(),
            resolver,
            host: host.trim_end_matches('.').to_ascii_lowercase(),
        };
        let counted = |result| {
            crate::metrics::metrics()
                .dns_cache
                .get_or_create(&vec![("result", result)])
                .inc();
        };
        if let Some(outcome) = self.fresh(&key) {
            counted("hit");
            return outcome.map(|a| a.to_vec());
        }
        counted("miss");
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            flights.entry(key.clone()).or_default().clone()
        };
        let outcome = flight.get_or_init(|| self.fetch(&key)).await.clone();
        {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            if flights.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(&key);
            }
        }
        outcome.map(|a| a.to_vec())
    }

    /// Forgets every answer for `host` (after a service's hostname changes).
    pub fn invalidate_host(&self, host: &str) {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|k, _| k.host != host);
    }

    /// Lookups sent through tunnels so far (cache misses).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    fn fresh(&self, key: &Key) -> Option<Outcome> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.outcome.clone())
    }

    async fn fetch(&self, key: &Key) -> Outcome {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let c = &self.config;
        match lookup(&self.tunnels, &key.tunnel, key.resolver, &key.host).await {
            Ok(r) => {
                let addrs: Arc<[IpAddr]> = r.addrs.into();
                let ttl = r.ttl.clamp(c.min_ttl, c.max_ttl.max(c.min_ttl));
                self.store(key, Ok(addrs.clone()), ttl);
                Ok(addrs)
            }
            Err(Unresolved {
                error,
                negative_ttl: Some(ttl),
            }) => {
                let ttl = ttl.clamp(c.min_ttl, c.max_negative_ttl.max(c.min_ttl));
                self.store(key, Err(error.clone()), ttl);
                Err(error)
            }
            Err(Unresolved { error, .. }) => Err(error),
        }
    }

    fn store(&self, key: &Key, outcome: Outcome, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.config.max_entries {
            entries.retain(|_, e| e.expires > now);
        }
        while entries.len() >= self.config.max_entries.max(1) {
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            entries.remove(&oldest);
        }
        entries.insert(
            key.clone(),
            Entry {
                outcome,
                expires: now + ttl,
            },
        );
    }
}
