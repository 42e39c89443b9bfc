//! Change-driven caches of store records, one per node and kind, shared by
//! the parts on the request path, so the hot path does not touch the store:
//! [`ServiceCache`] (VPC services: iris's front door, the binding-worker's
//! checks) and [`ScriptCache`] (worker scripts: the front door's check that
//! a worker binds the service it asks for).
//!
//! Entries have no expiry: the store's change feed ([`Store::watch`]) drops a
//! changed record before the next lookup, so an edit is seen by the next
//! request once this process has heard of it (at once for writes made through
//! this process; within the backend's propagation for others). When changes
//! may have been missed ([`Change::All`], or a lagging feed), every entry is
//! marked stale: the next lookup asks the store again, and keeps serving the
//! stale answer while the store cannot be reached.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::TryRecvError;

use crate::{Change, ScriptRecord, Store, StoreResult, VpcService};

/// A future reading one record from the store.
type Load<'a, T> = Pin<Box<dyn Future<Output = StoreResult<Option<T>>> + Send + 'a>>;

/// What a [`Cache`] holds: the record type, how to read one, and which
/// change drops it.
pub trait CacheKind: Send + Sync + 'static {
    /// The record.
    type Value: Clone + Send + Sync + 'static;
    /// Reads the record `key` from the store.
    fn load<'a>(store: &'a dyn Store, key: &'a str) -> Load<'a, Self::Value>;
    /// The key a change is about, when it is about this kind.
    fn changed(change: &Change) -> Option<&str>;
}

/// [`VpcService`]s by id.
pub struct Services;

impl CacheKind for Services {
    type Value = VpcService;
    fn load<'a>(store: &'a dyn Store, key: &'a str) -> Load<'a, VpcService> {
        store.get_service(key)
    }
    fn changed(change: &Change) -> Option<&str> {
        match change {
            Change::Service(id) => Some(id),
            _ => None,
        }
    }
}

/// [`ScriptRecord`]s by worker name.
pub struct Scripts;

impl CacheKind for Scripts {
    type Value = ScriptRecord;
    fn load<'a>(store: &'a dyn Store, key: &'a str) -> Load<'a, ScriptRecord> {
        store.get_script(key)
    }
    fn changed(change: &Change) -> Option<&str> {
        match change {
            Change::Script(name) => Some(name),
            _ => None,
        }
    }
}

/// VPC services by id, kept current by the store's change feed.
pub type ServiceCache = Cache<Services>;
/// Worker scripts by name, kept current by the store's change feed.
pub type ScriptCache = Cache<Scripts>;

struct Entry<T> {
    value: Option<T>,
    stale: bool,
}

struct Inner<K: CacheKind> {
    entries: HashMap<String, Entry<K::Value>>,
    changes: Receiver<Change>,
    /// Bumped by every change applied: a lookup that started before a change
    /// does not cache what it read.
    generation: u64,
}

impl<K: CacheKind> Inner<K> {
    fn apply_changes(&mut self) {
        loop {
            match self.changes.try_recv() {
                Ok(Change::All) | Err(TryRecvError::Lagged(_)) => {
                    for e in self.entries.values_mut() {
                        e.stale = true;
                    }
                    self.generation += 1;
                }
                Ok(change) => {
                    if let Some(key) = K::changed(&change) {
                        self.entries.remove(key);
                        self.generation += 1;
                    }
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }
}

/// Largest number of records kept (a flood of lookups for random keys must
/// not grow the cache without bound; past it, the cache starts over).
const MAX_ENTRIES: usize = 100_000;

/// Records of kind `K` by key, kept current by the store's change feed.
pub struct Cache<K: CacheKind> {
    store: Arc<dyn Store>,
    inner: Mutex<Inner<K>>,
    _kind: PhantomData<K>,
}

impl<K: CacheKind> Cache<K> {
    /// A cache over `store`, subscribed to its changes from now on.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        let changes = store.watch();
        Arc::new(Cache {
            store,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                changes,
                generation: 0,
            }),
            _kind: PhantomData,
        })
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The record `key` (`None`: there is none). Reads the store only when
    /// the answer is not cached or may be stale; a stale answer is served
    /// while the store fails.
    pub async fn get(&self, key: &str) -> StoreResult<Option<K::Value>> {
        let (stale, generation) = {
            let Ok(mut inner) = self.inner.lock() else {
                return K::load(self.store.as_ref(), key).await;
            };
            inner.apply_changes();
            match inner.entries.get(key) {
                Some(e) if !e.stale => return Ok(e.value.clone()),
                Some(e) => (Some(e.value.clone()), inner.generation),
                None => (None, inner.generation),
            }
        };
        self.read(key, stale, generation).await
    }

    /// The record `key` as the store holds it now, whatever is cached (for
    /// a caller about to refuse on a cached answer that a change not heard
    /// yet may have made wrong); the answer is cached. The cached answer is
    /// served while the store fails.
    pub async fn get_fresh(&self, key: &str) -> StoreResult<Option<K::Value>> {
        let (cached, generation) = {
            let Ok(mut inner) = self.inner.lock() else {
                return K::load(self.store.as_ref(), key).await;
            };
            inner.apply_changes();
            let cached = inner.entries.get(key).map(|e| e.value.clone());
            (cached, inner.generation)
        };
        self.read(key, cached, generation).await
    }

    /// Reads `key` from the store and caches it unless a change came in
    /// meanwhile; on failure serves `fallback` (when there is one).
    async fn read(
        &self,
        key: &str,
        fallback: Option<Option<K::Value>>,
        generation: u64,
    ) -> StoreResult<Option<K::Value>> {
        let found = match K::load(self.store.as_ref(), key).await {
            Ok(found) => found,
            Err(e) => {
                return match fallback {
                    Some(v) => {
                        tracing::warn!(key, error = %e, "store unreachable; serving the cached record");
                        Ok(v)
                    }
                    None => Err(e),
                };
            }
        };
        if let Ok(mut inner) = self.inner.lock() {
            inner.apply_changes();
            if inner.generation == generation {
                if inner.entries.len() >= MAX_ENTRIES {
                    inner.entries.clear();
                }
                inner.entries.insert(
                    key.to_owned(),
                    Entry {
                        value: found.clone(),
                        stale: false,
                    },
                );
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertVerificationMode, ServiceHost, ServiceType, SqliteStore};

    fn service(id: &str, account: &str, port: u16) -> VpcService {
        VpcService {
            id: id.into(),
            account_id: account.into(),
            name: "svc".into(),
            service_type: ServiceType::Http,
            http_port: Some(port),
            https_port: None,
            tcp_port: None,
            host: ServiceHost::Addresses {
                ipv4: Some("10.0.0.1".parse().unwrap()),
                ipv6: None,
                tunnel_id: "t".into(),
            },
            cert_verification_mode: CertVerificationMode::VerifyFull,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn an_edit_through_the_store_is_seen_by_the_next_lookup() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let account = store.create_account("a").await.unwrap();
        let cache = ServiceCache::new(store.clone());
        assert_eq!(cache.get("s1").await.unwrap(), None);
        let s = service("s1", &account.id, 80);
        store.create_service(&s).await.unwrap();
        assert_eq!(cache.get("s1").await.unwrap(), Some(s.clone()));
        let edited = service("s1", &account.id, 8080);
        store.replace_service(&edited).await.unwrap();
        assert_eq!(cache.get("s1").await.unwrap(), Some(edited));
        store.delete_service(&account.id, "s1").await.unwrap();
        assert_eq!(cache.get("s1").await.unwrap(), None);
    }

    fn script(name: &str, account: &str, services: &[&str]) -> ScriptRecord {
        ScriptRecord {
            name: name.into(),
            account_id: account.into(),
            tag: "t".into(),
            metadata: "{}".into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            routes: Vec::new(),
            bundle: "ab".repeat(32),
            secrets: Default::default(),
            created_on: "2026-01-01T00:00:00Z".into(),
            modified_on: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn a_redeploy_is_seen_by_the_next_script_lookup() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let cache = ScriptCache::new(store.clone());
        assert_eq!(cache.get("w").await.unwrap(), None);
        let first = script("w", "a", &["s1"]);
        assert!(store.put_script(&first, None).await.unwrap());
        assert_eq!(cache.get("w").await.unwrap(), Some(first.clone()));
        let second = script("w", "a", &["s1", "s2"]);
        assert!(store.put_script(&second, Some(&first)).await.unwrap());
        assert_eq!(cache.get("w").await.unwrap(), Some(second));
        assert!(store.delete_script("a", "w").await.unwrap());
        assert_eq!(cache.get("w").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_fresh_lookup_reads_what_another_process_wrote_before_it_is_heard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.db");
        let here = Arc::new(SqliteStore::open(&path).unwrap());
        let there = SqliteStore::open(&path).unwrap();
        let cache = ScriptCache::new(here);
        let first = script("w", "a", &["s1"]);
        assert!(there.put_script(&first, None).await.unwrap());
        assert_eq!(cache.get_fresh("w").await.unwrap(), Some(first.clone()));
        let second = script("w", "a", &["s1", "s2"]);
        assert!(there.put_script(&second, Some(&first)).await.unwrap());
        // Read through at once, whatever the change log has told this process.
        assert_eq!(cache.get_fresh("w").await.unwrap(), Some(second));
    }
}
