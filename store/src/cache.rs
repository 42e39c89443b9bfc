//! One change-driven cache of VPC services per node, shared by the parts on
//! the request path (iris's front door, the binding-worker's checks), so the
//! hot path does not touch the store.
//!
//! Entries have no expiry: the store's change feed ([`Store::watch`]) drops a
//! changed service before the next lookup, so an edit is seen by the next
//! request once this process has heard of it (at once for writes made through
//! this process; within the backend's propagation for others). When changes
//! may have been missed ([`Change::All`], or a lagging feed), every entry is
//! marked stale: the next lookup asks the store again, and keeps serving the
//! stale answer while the store cannot be reached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::TryRecvError;

use crate::{Change, Store, StoreResult, VpcService};

struct Entry {
    service: Option<VpcService>,
    stale: bool,
}

struct Inner {
    entries: HashMap<String, Entry>,
    changes: Receiver<Change>,
    /// Bumped by every change applied: a lookup that started before a change
    /// does not cache what it read.
    generation: u64,
}

impl Inner {
    fn apply_changes(&mut self) {
        loop {
            match self.changes.try_recv() {
                Ok(Change::Service(id)) => {
                    self.entries.remove(&id);
                    self.generation += 1;
                }
                Ok(Change::All) | Err(TryRecvError::Lagged(_)) => {
                    for e in self.entries.values_mut() {
                        e.stale = true;
                    }
                    self.generation += 1;
                }
                Ok(_) => {}
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }
}

/// Largest number of services kept (a flood of lookups for random ids must not
/// grow the cache without bound; past it, the cache starts over).
const MAX_ENTRIES: usize = 100_000;

/// VPC services by id, kept current by the store's change feed.
pub struct ServiceCache {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
}

impl ServiceCache {
    /// A cache over `store`, subscribed to its changes from now on.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        let changes = store.watch();
        Arc::new(ServiceCache {
            store,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                changes,
                generation: 0,
            }),
        })
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The service `id` (`None`: there is none). Reads the store only when
    /// the answer is not cached or may be stale; a stale answer is served
    /// while the store fails.
    pub async fn get(&self, id: &str) -> StoreResult<Option<VpcService>> {
        let (stale, generation) = {
            let Ok(mut inner) = self.inner.lock() else {
                return self.store.get_service(id).await;
            };
            inner.apply_changes();
            match inner.entries.get(id) {
                Some(e) if !e.stale => return Ok(e.service.clone()),
                Some(e) => (Some(e.service.clone()), inner.generation),
                None => (None, inner.generation),
            }
        };
        let found = match self.store.get_service(id).await {
            Ok(found) => found,
            Err(e) => {
                return match stale {
                    Some(s) => {
                        tracing::warn!(service = id, error = %e, "store unreachable; serving the cached service");
                        Ok(s)
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
                    id.to_owned(),
                    Entry {
                        service: found.clone(),
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
}
