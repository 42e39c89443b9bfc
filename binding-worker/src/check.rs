//! Defence in depth: a binding context is honoured only when its VPC service
//! exists and belongs to the calling worker's account. Answers come from the
//! node's change-driven [`ServiceCache`], so the hot path does not touch the
//! store and an edit is seen by the next call.

use std::sync::Arc;

use warren_protocol::binding::BindingContext;
use warren_protocol::{ErrorCode, ProxyError};
use warren_store::cache::ServiceCache;

/// Checks binding contexts against the store.
pub struct ServiceCheck {
    services: Arc<ServiceCache>,
}

impl ServiceCheck {
    /// A checker reading `services`.
    pub fn new(services: Arc<ServiceCache>) -> Self {
        ServiceCheck { services }
    }

    /// `Ok` when `ctx.service_id` exists in `ctx.account_id`; otherwise
    /// `service_not_found` (a foreign service is indistinguishable from none).
    pub async fn check(&self, ctx: &BindingContext) -> Result<(), ProxyError> {
        let service = self
            .services
            .get(&ctx.service_id)
            .await
            .map_err(|e| ProxyError::new(ErrorCode::ServiceNotFound, format!("store: {e}")))?;
        match service.map(|s| s.account_id) {
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
