//! The HTTP API of iris's resources, shaped like Cloudflare's v4 API:
//! tunnels (`/client/v4/accounts/{account_id}/cfd_tunnel`) and VPC services
//! (`…/connectivity/directory/services`). Every answer is the v4 envelope;
//! bearer API tokens are checked per account (401 unknown, 403 another account).

pub mod envelope;
mod services;
mod tunnels;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use warren_store::{Store, hash_secret};

pub use envelope::ApiError;

use crate::tunnel_admin::TunnelAdmin;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Configuration storage.
    pub store: Arc<dyn Store>,
    /// Tunnel creation and tokens.
    pub admin: Arc<TunnelAdmin>,
    /// Names the deployed workers binding a service (a bound service cannot be
    /// deleted); `None` when this node runs no workers.
    pub service_users: Option<ServiceUsers>,
}

/// Given a VPC service id, the names of the workers that bind it.
pub type ServiceUsers = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// The routes of tunnels and VPC services.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(tunnels::routes())
        .merge(services::routes())
        .with_state(state)
}

/// Checks the bearer token against `account_id`.
pub async fn authorize(
    state: &ApiState,
    headers: &HeaderMap,
    account_id: &str,
) -> Result<(), ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    let owner = state
        .store
        .account_for_token(hash_secret(token.trim().as_bytes()))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(ApiError::unauthorized)?;
    if owner != account_id {
        return Err(ApiError::forbidden());
    }
    Ok(())
}
