//! `GET /healthz`: whether this node's API can serve, for load balancers and
//! orchestrators. No token: the answer names no account or resource. 200
//! `{"status":"ok"}` when the store answers within 2 s, else 503
//! `{"status":"unavailable","store":"<why>"}`.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiState;

/// How long the store gets to answer a health check.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz(State(state): State<ApiState>) -> Response {
    let why = match tokio::time::timeout(STORE_TIMEOUT, state.store.list_accounts()).await {
        Ok(Ok(_)) => return Json(serde_json::json!({ "status": "ok" })).into_response(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {STORE_TIMEOUT:?}"),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "status": "unavailable", "store": why })),
    )
        .into_response()
}
