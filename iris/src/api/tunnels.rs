//! `/client/v4/accounts/{account_id}/cfd_tunnel`: create, list, get, token,
//! connections, delete.

use std::collections::HashMap;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use warren_api::server::{ApiError, ApiResult, StrictJson, authorize, ok, page};
use warren_api::tunnels::{Connection, CreateTunnel, CreatedTunnel, Tunnel};
use warren_store::rfc3339;

use super::ApiState;

const BASE: &str = "/client/v4/accounts/{account_id}/cfd_tunnel";

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route(BASE, get(list).post(create))
        .route(&format!("{BASE}/{{tunnel_id}}"), get(show).delete(remove))
        .route(&format!("{BASE}/{{tunnel_id}}/token"), get(token))
        .route(
            &format!("{BASE}/{{tunnel_id}}/connections"),
            get(connections),
        )
}

/// The API view of a stored tunnel, with its live connections.
async fn view(state: &ApiState, t: &warren_store::Tunnel) -> Result<Tunnel, ApiError> {
    let live = state.store.list_connections(&t.id).await?;
    Ok(Tunnel::new(t, &live))
}

/// Authorizes the caller for `account`, then loads the tunnel of that account.
async fn find(
    state: &ApiState,
    headers: &HeaderMap,
    account: &str,
    id: &str,
) -> Result<warren_store::Tunnel, ApiError> {
    authorize(state.store.as_ref(), headers, account).await?;
    match state.store.get_tunnel(id).await? {
        Some(t) if t.account_id == account => Ok(t),
        _ => Err(ApiError::not_found("tunnel")),
    }
}

async fn create(
    State(state): State<ApiState>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Result<StrictJson<CreateTunnel>, ApiError>,
) -> ApiResult<CreatedTunnel> {
    authorize(state.store.as_ref(), &headers, &account).await?;
    let StrictJson(req) = body?;
    let secret = req.validate()?;
    let (tunnel, token) = state
        .admin
        .create(state.store.as_ref(), &account, &req.name, secret)
        .await?;
    Ok(ok(CreatedTunnel {
        tunnel: view(&state, &tunnel).await?,
        token: token.encode(),
    }))
}

async fn list(
    State(state): State<ApiState>,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Vec<Tunnel>> {
    authorize(state.store.as_ref(), &headers, &account).await?;
    let mut items = Vec::new();
    for t in state.store.list_tunnels(&account).await? {
        if query.get("name").is_some_and(|n| *n != t.name) {
            continue;
        }
        items.push(view(&state, &t).await?);
    }
    page(items, &query)
}

async fn show(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Tunnel> {
    let t = find(&state, &headers, &account, &id).await?;
    Ok(ok(view(&state, &t).await?))
}

async fn token(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<String> {
    let t = find(&state, &headers, &account, &id).await?;
    let token = state.admin.token(&t).ok_or_else(|| {
        ApiError::conflict(
            "this tunnel's secret was not kept (created outside the API); create a new tunnel",
        )
    })?;
    Ok(ok(token.encode()))
}

async fn connections(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Vec<Connection>> {
    let t = find(&state, &headers, &account, &id).await?;
    let live = state.store.list_connections(&t.id).await?;
    Ok(ok(live.iter().map(Connection::from).collect()))
}

async fn remove(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Tunnel> {
    let t = find(&state, &headers, &account, &id).await?;
    let users = state.store.services_using_tunnel(&t.id).await?;
    if users > 0 {
        return Err(ApiError::conflict(format!(
            "tunnel {} is used by {users} VPC service(s); delete or move them first",
            t.id
        )));
    }
    let mut result = view(&state, &t).await?;
    state.store.delete_tunnel(&account, &t.id).await?;
    result.deleted_at = Some(rfc3339(SystemTime::now()));
    Ok(ok(result))
}
