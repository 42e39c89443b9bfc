//! The worker-scripts API (Cloudflare's `workers/scripts` shape): multipart `PUT` with a `metadata` part and
//! one part per module, `GET`, `DELETE`, a list, and a live tail stream
//! (newline-delimited JSON tail events). Same envelope and per-account tokens
//! as the rest of the API; the work is done by the runtime's [`Scripts`].
//!
//! A tail follows one worker of the caller's account (by its identity, not its
//! name) and ends with a `{"closed": …}` line when the worker is deleted
//! (`worker_deleted`) or when the client reads too slowly (`too_slow`: its
//! bounded buffer filled up).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use iris::api::envelope::{ApiError, ok, page};
use iris::api::{ApiState, authorize};
use serde_json::{Value, json};
use warren_iris as iris;
use warren_runtime::deploy::{DeployError, Module, ScriptMetadata, Scripts};

/// Largest upload accepted (a prebuilt JS component is ~13 MB).
const MAX_UPLOAD: usize = 64 << 20;

#[derive(Clone)]
struct ScriptsState {
    api: ApiState,
    scripts: Arc<Scripts>,
}

/// The worker-script routes.
pub fn routes(api: ApiState, scripts: Arc<Scripts>) -> Router {
    Router::new()
        .route("/client/v4/accounts/{account}/workers/scripts", get(list))
        .route(
            "/client/v4/accounts/{account}/workers/scripts/{name}",
            get(show).put(upload).delete(remove),
        )
        .route(
            "/client/v4/accounts/{account}/workers/scripts/{name}/tail",
            get(tail),
        )
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(ScriptsState { api, scripts })
}

fn deploy_error(e: DeployError) -> ApiError {
    use axum::http::StatusCode;
    let (status, code, pointer) = match &e {
        DeployError::Invalid { pointer, message } => return ApiError::invalid(pointer, message),
        DeployError::Conflict(m) => return ApiError::conflict(m),
        DeployError::Binding { .. } => (StatusCode::BAD_REQUEST, 1002, Some("/metadata/bindings")),
        // Workers' "script failed to validate".
        DeployError::Script(_) => (StatusCode::BAD_REQUEST, 10021, Some("/modules")),
        DeployError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 1500, None),
    };
    ApiError {
        status,
        code,
        message: e.to_string(),
        pointer: pointer.map(str::to_owned),
    }
}

async fn list(
    State(s): State<ScriptsState>,
    Path(account): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&s.api, &headers, &account).await?;
    let items = s
        .scripts
        .list(&account)
        .into_iter()
        .map(|i| serde_json::to_value(i).unwrap_or(Value::Null))
        .collect();
    page(items, &q)
}

async fn show(
    State(s): State<ScriptsState>,
    Path((account, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&s.api, &headers, &account).await?;
    let info = s
        .scripts
        .get(&account, &name)
        .ok_or_else(|| ApiError::not_found("worker"))?;
    Ok(ok(serde_json::to_value(info).unwrap_or(Value::Null)))
}

async fn remove(
    State(s): State<ScriptsState>,
    Path((account, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&s.api, &headers, &account).await?;
    if !s
        .scripts
        .delete(&account, &name)
        .await
        .map_err(deploy_error)?
    {
        return Err(ApiError::not_found("worker"));
    }
    Ok(ok(json!({ "id": name })))
}

async fn upload(
    State(s): State<ScriptsState>,
    Path((account, name)): Path<(String, String)>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<Response, ApiError> {
    authorize(&s.api, &headers, &account).await?;
    let mut metadata: Option<ScriptMetadata> = None;
    let mut modules = Vec::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(ApiError::invalid("", format!("bad multipart body: {e}"))),
        };
        let part = field.name().unwrap_or("").to_owned();
        let file = field.file_name().map(str::to_owned);
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::invalid(&format!("/{part}"), format!("unreadable part: {e}")))?;
        if part == "metadata" {
            let de = &mut serde_json::Deserializer::from_slice(&bytes);
            let m: ScriptMetadata = serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let pointer = if path == "." {
                    "/metadata".to_owned()
                } else {
                    format!("/metadata/{}", path.replace('.', "/"))
                };
                ApiError::invalid(&pointer, e.into_inner().to_string())
            })?;
            metadata = Some(m);
        } else {
            modules.push(Module {
                name: file.unwrap_or(part),
                bytes: bytes.to_vec(),
            });
        }
    }
    let metadata =
        metadata.ok_or_else(|| ApiError::invalid("/metadata", "the metadata part is missing"))?;
    let info = s
        .scripts
        .put(&account, &name, metadata, modules)
        .await
        .map_err(deploy_error)?;
    Ok(ok(serde_json::to_value(info).unwrap_or(Value::Null)))
}

async fn tail(
    State(s): State<ScriptsState>,
    Path((account, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&s.api, &headers, &account).await?;
    let rx = s
        .scripts
        .tail(&account, &name)
        .ok_or_else(|| ApiError::not_found("worker"))?;
    // First line: a hello, so the client knows the subscription is live.
    let hello = json!({ "tail": name, "connected": true }).to_string() + "\n";
    let events = futures_util::stream::unfold(Some((Some(hello), rx)), |state| async move {
        let (hello, mut rx) = state?;
        if let Some(h) = hello {
            return Some((Ok::<_, std::convert::Infallible>(h), Some((None, rx))));
        }
        Some(match rx.recv().await {
            Ok(ev) => (
                Ok(serde_json::to_string(&ev).unwrap_or_default() + "\n"),
                Some((None, rx)),
            ),
            // The last line says why; then the stream ends.
            Err(end) => (
                Ok(json!({ "closed": end.as_str() }).to_string() + "\n"),
                None,
            ),
        })
    });
    Ok((
        [("content-type", "application/x-ndjson")],
        axum::body::Body::from_stream(events),
    )
        .into_response())
}
