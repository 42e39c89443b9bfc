//! Defence in depth: a binding context is honoured only when its VPC service
//! exists and belongs to the calling worker's account. Answers are cached
//! briefly and dropped when the store reports a change to the service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren_protocol::binding::BindingContext;
use warren_protocol::{ErrorCode, ProxyError};
use warren_store::{Change, Store};

/// How long a looked-up service owner is trusted without a store change.
const TTL: Duration = Duration::from_secs(10);

/// service id → (owning account, or `None` when absent; when looked up).
type Owners = Arc<Mutex<HashMap<String, (Option<String>, Instant)>>>;

/// Checks binding contexts against the store.
pub struct ServiceCheck {
    store: Arc<dyn Store>,
    owners: Owners,
}

impl ServiceCheck {
    /// A checker over `store`; must be created inside a tokio runtime (it
    /// follows the store's change feed to drop stale answers).
    pub fn new(store: Arc<dyn Store>) -> Self {
        let owners: Owners = Arc::default();
        let mut changes = store.watch();
        let weak = Arc::downgrade(&owners);
        tokio::spawn(async move {
            loop {
                let change = changes.recv().await;
                let Some(owners) = weak.upgrade() else { return };
                let Ok(mut owners) = owners.lock() else {
                    return;
                };
                match change {
                    Ok(Change::Service(id)) => {
                        owners.remove(&id);
                    }
                    Ok(_) => {}
                    // Missed changes: forget everything.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => owners.clear(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        ServiceCheck { store, owners }
    }

    /// `Ok` when `ctx.service_id` exists in `ctx.account_id`; otherwise
    /// `service_not_found` (a foreign service is indistinguishable from none).
    pub async fn check(&self, ctx: &BindingContext) -> Result<(), ProxyError> {
        let cached = self.owners.lock().ok().and_then(|o| {
            o.get(&ctx.service_id)
                .filter(|(_, at)| at.elapsed() < TTL)
                .map(|(owner, _)| owner.clone())
        });
        let owner = match cached {
            Some(owner) => owner,
            None => {
                let service = self.store.get_service(&ctx.service_id).await.map_err(|e| {
                    ProxyError::new(ErrorCode::ServiceNotFound, format!("store: {e}"))
                })?;
                let owner = service.map(|s| s.account_id);
                if let Ok(mut o) = self.owners.lock() {
                    o.insert(ctx.service_id.clone(), (owner.clone(), Instant::now()));
                }
                owner
            }
        };
        match owner {
            Some(a) if a == ctx.account_id => Ok(()),
            Some(_) => Err(ProxyError::new(
                ErrorCode::ServiceNotFound,
                format!(
                    "service {} does not belong to account {}",
                    ctx.service_id, ctx.account_id
                ),
            )),
            None => Err(ProxyError::new(
                ErrorCode::ServiceNotFound,
                format!("no service {}", ctx.service_id),
            )),
        }
    }
}
