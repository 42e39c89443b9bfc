//! `/client/v4/accounts/{account_id}/connectivity/directory/services`: VPC
//! services. The request is `warren-api`'s [`ServiceRequest`], validated by
//! its own rules (each failure names its field); this module adds what needs
//! the store: the tunnel must be the account's, and a service a worker binds
//! cannot be deleted.

use std::collections::HashMap;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use warren_api::from_name;
use warren_api::server::{ApiError, ApiResult, StrictJson, authorize, ok, page};
use warren_api::services::{Service, ServiceRequest, ServiceType, tunnel_pointer};
use warren_store::{VpcService, rfc3339};

use super::ApiState;

const BASE: &str = "/client/v4/accounts/{account_id}/connectivity/directory/services";

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route(BASE, get(list).post(create)).route(
        &format!("{BASE}/{{service_id}}"),
        get(show).put(replace).delete(remove),
    )
}

/// Validates the request into a service of `account` and checks that its
/// tunnel is one of the account's.
async fn validate(
    state: &ApiState,
    account: &str,
    req: &ServiceRequest,
    id: &str,
    created_at: &str,
) -> Result<VpcService, ApiError> {
    let now = rfc3339(SystemTime::now());
    let service = req.to_service(id, account, created_at, &now)?;
    let tunnel_id = service.host.tunnel_id();
    let owned = state
        .store
        .get_tunnel(tunnel_id)
        .await?
        .is_some_and(|t| t.account_id == account);
    if !owned {
        return Err(ApiError::invalid(
            tunnel_pointer(&service.host),
            format!("no tunnel {tunnel_id} in this account"),
        ));
    }
    Ok(service)
}

/// Authorizes the caller for `account`, then loads the service of that account.
async fn find(
    state: &ApiState,
    headers: &HeaderMap,
    account: &str,
    id: &str,
) -> Result<VpcService, ApiError> {
    authorize(state.store.as_ref(), headers, account).await?;
    match state.store.get_service(id).await? {
        Some(s) if s.account_id == account => Ok(s),
        _ => Err(ApiError::not_found("service")),
    }
}

async fn create(
    State(state): State<ApiState>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Result<StrictJson<ServiceRequest>, ApiError>,
) -> ApiResult<Service> {
    authorize(state.store.as_ref(), &headers, &account).await?;
    let StrictJson(req) = body?;
    let id = uuid::Uuid::new_v4().to_string();
    let service = validate(&state, &account, &req, &id, &rfc3339(SystemTime::now())).await?;
    state.store.create_service(&service).await?;
    Ok(ok(Service::from(&service)))
}

async fn list(
    State(state): State<ApiState>,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Vec<Service>> {
    authorize(state.store.as_ref(), &headers, &account).await?;
    let wanted = match query.get("type") {
        None => None,
        Some(t) => Some(from_name::<ServiceType>(t, "/type")?),
    };
    let items = state
        .store
        .list_services(&account)
        .await?
        .iter()
        .filter(|s| wanted.is_none_or(|t| t == s.service_type))
        .map(Service::from)
        .collect();
    page(items, &query)
}

async fn show(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Service> {
    Ok(ok(Service::from(
        &find(&state, &headers, &account, &id).await?,
    )))
}

async fn replace(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<StrictJson<ServiceRequest>, ApiError>,
) -> ApiResult<Service> {
    let old = find(&state, &headers, &account, &id).await?;
    let StrictJson(req) = body?;
    let service = validate(&state, &account, &req, &old.id, &old.created_at).await?;
    if !state.store.replace_service(&service).await? {
        return Err(ApiError::not_found("service"));
    }
    Ok(ok(Service::from(&service)))
}

async fn remove(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<()> {
    let s = find(&state, &headers, &account, &id).await?;
    let workers = state.store.scripts_binding(&s.id).await?;
    if !workers.is_empty() {
        return Err(ApiError::conflict(format!(
            "service {} is bound by worker(s) {}; remove the bindings first",
            s.id,
            workers.join(", ")
        )));
    }
    state.store.delete_service(&account, &s.id).await?;
    Ok(axum::Json(warren_api::Envelope::empty()))
}
