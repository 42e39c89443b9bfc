//! The HTTP API of iris's resources, shaped like Cloudflare's v4 API: the
//! token's account (`/client/v4/accounts`), tunnels
//! (`/client/v4/accounts/{account_id}/cfd_tunnel`), the node's health
//! (`/healthz`, no token) and VPC services
//! (`…/connectivity/directory/services`). Request and answer types are those
//! of `warren-api`; every answer is the v4 envelope; bearer API tokens are
//! checked per account (401 unknown, 403 another account).

mod accounts;
mod health;
mod services;
mod tunnels;

use std::sync::Arc;

use axum::Router;
use warren_store::Store;

pub use warren_api::server::ApiError;

use crate::tunnel_admin::TunnelAdmin;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Configuration storage (also the source of which workers bind a
    /// service: a bound service cannot be deleted).
    pub store: Arc<dyn Store>,
    /// Tunnel creation and tokens.
    pub admin: Arc<TunnelAdmin>,
}

/// The routes of tunnels and VPC services.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(accounts::routes())
        .merge(tunnels::routes())
        .merge(services::routes())
        .with_state(state)
}
