//! `/client/v4/accounts/{account_id}/cfd_tunnel`: create, list, get, token,
//! connections, delete.

use std::collections::HashMap;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use warren_protocol::token::MIN_SECRET_LEN;
use warren_store::{ConnectionRecord, Tunnel, rfc3339};

use super::envelope::{ApiError, object, ok, only_keys, page};
use super::{ApiState, authorize};

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

fn connection_json(c: &ConnectionRecord) -> Value {
    json!({
        "id": c.id, "client_id": c.connector_id, "client_version": c.client_version,
        "colo_name": c.edge_name, "opened_at": c.opened_at, "origin_ip": c.origin_ip,
    })
}

/// `inactive` (never connected), `down` (none live), `degraded` (fewer than the
/// connector asked for), `healthy`.
fn status(t: &Tunnel, live: &[ConnectionRecord]) -> &'static str {
    if live.is_empty() {
        return if t.first_connected_at.is_some() {
            "down"
        } else {
            "inactive"
        };
    }
    let wanted = live
        .iter()
        .map(|c| usize::from(c.ha_connections))
        .max()
        .unwrap_or(1);
    if live.len() < wanted {
        "degraded"
    } else {
        "healthy"
    }
}

async fn tunnel_json(state: &ApiState, t: &Tunnel) -> Result<Value, ApiError> {
    let live = state
        .store
        .list_connections(&t.id)
        .await
        .map_err(ApiError::store)?;
    Ok(json!({
        "id": t.id, "account_tag": t.account_id, "name": t.name,
        "created_at": t.created_at, "deleted_at": null,
        "status": status(t, &live),
        "connections": live.iter().map(connection_json).collect::<Vec<_>>(),
    }))
}

/// Authorizes the caller for `account`, then loads the resource of that account.
async fn find(
    state: &ApiState,
    headers: &HeaderMap,
    account: &str,
    id: &str,
) -> Result<Tunnel, ApiError> {
    authorize(state, headers, account).await?;
    match state.store.get_tunnel(id).await.map_err(ApiError::store)? {
        Some(t) if t.account_id == account => Ok(t),
        _ => Err(ApiError::not_found("tunnel")),
    }
}

async fn create(
    State(state): State<ApiState>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let obj = object(&body)?;
    only_keys(&obj, "", &["name", "tunnel_secret", "config_src"])?;
    let name = match obj.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() && n.len() <= 255 => n.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "/name",
                "must be a non-empty string of at most 255 characters",
            ));
        }
        None => return Err(ApiError::invalid("/name", "is required")),
    };
    let secret = match obj.get("tunnel_secret") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match STANDARD.decode(s) {
            Ok(b) if b.len() >= MIN_SECRET_LEN => Some(b),
            _ => {
                return Err(ApiError::invalid(
                    "/tunnel_secret",
                    "must be base64 of at least 32 bytes",
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "/tunnel_secret",
                "must be a base64 string",
            ));
        }
    };
    let (tunnel, token) = state
        .admin
        .create(state.store.as_ref(), &account, &name, secret)
        .await
        .map_err(ApiError::store)?;
    let mut result = tunnel_json(&state, &tunnel).await?;
    result["token"] = json!(token.encode());
    Ok(ok(result))
}

async fn list(
    State(state): State<ApiState>,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let mut items = Vec::new();
    for t in state
        .store
        .list_tunnels(&account)
        .await
        .map_err(ApiError::store)?
    {
        if query.get("name").is_some_and(|n| *n != t.name) {
            continue;
        }
        items.push(tunnel_json(&state, &t).await?);
    }
    page(items, &query)
}

async fn show(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let t = find(&state, &headers, &account, &id).await?;
    Ok(ok(tunnel_json(&state, &t).await?))
}

async fn token(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let t = find(&state, &headers, &account, &id).await?;
    let token = state.admin.token(&t).ok_or_else(|| {
        ApiError::conflict(
            "this tunnel's secret was not kept (created outside the API); create a new tunnel",
        )
    })?;
    Ok(ok(json!(token.encode())))
}

async fn connections(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let t = find(&state, &headers, &account, &id).await?;
    let live = state
        .store
        .list_connections(&t.id)
        .await
        .map_err(ApiError::store)?;
    Ok(ok(json!(
        live.iter().map(connection_json).collect::<Vec<_>>()
    )))
}

async fn remove(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let t = find(&state, &headers, &account, &id).await?;
    let users = state
        .store
        .services_using_tunnel(&t.id)
        .await
        .map_err(ApiError::store)?;
    if users > 0 {
        return Err(ApiError::conflict(format!(
            "tunnel {} is used by {users} VPC service(s); delete or move them first",
            t.id
        )));
    }
    let mut result = tunnel_json(&state, &t).await?;
    state
        .store
        .delete_tunnel(&account, &t.id)
        .await
        .map_err(ApiError::store)?;
    result["deleted_at"] = json!(rfc3339(SystemTime::now()));
    Ok(ok(result))
}
