//! The worker-scripts API (Cloudflare's `workers/scripts` shape): multipart
//! `PUT` with a `metadata` part and one part per module, `GET`, `DELETE`, a
//! list, a script's secrets (`…/{name}/secrets`: put, list, show, delete;
//! never a value), and a live tail stream (newline-delimited JSON tail lines). Same
//! envelope and per-account tokens as the rest of the API (`warren-api`); the
//! work is done by [`Scripts`].
//!
//! A tail follows one worker of the caller's account (by its identity, not its
//! name) and ends with a `{"closed": …}` line when the worker is deleted
//! (`worker_deleted`) or when the client reads too slowly (`too_slow`: its
//! bounded buffer filled up).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use warren_api::scripts::{DeletedScript, ScriptInfo, ScriptMetadata, SecretInfo, SecretRequest};
use warren_api::server::{ApiError, ApiResult, authorize, json_line, ok, page};
use warren_api::tail::{TailClosed, TailHello};
use warren_api::{FieldError, from_slice_at};
use warren_store::Store;

use crate::deploy::{DeployError, Module, Scripts, SecretDeleted};
use crate::logs::{MAX_TAILS_PER_WORKER, Unsubscribed};

/// Largest upload accepted (a prebuilt JS component is ~13 MB).
pub const MAX_UPLOAD: usize = 64 << 20;

#[derive(Clone)]
struct ScriptsState {
    store: Arc<dyn Store>,
    scripts: Arc<Scripts>,
}

/// The worker-script routes (under `/client/v4/accounts/{account}/workers/scripts`),
/// checking tokens against `store`.
pub fn routes(store: Arc<dyn Store>, scripts: Arc<Scripts>) -> Router {
    const BASE: &str = "/client/v4/accounts/{account}/workers/scripts";
    Router::new()
        .route(BASE, get(list))
        .route(
            &format!("{BASE}/{{name}}"),
            get(show).put(upload).delete(remove),
        )
        .route(&format!("{BASE}/{{name}}/tail"), get(tail))
        .route(
            &format!("{BASE}/{{name}}/secrets"),
            get(list_secrets).put(put_secret),
        )
        .route(
            &format!("{BASE}/{{name}}/secrets/{{secret}}"),
            get(show_secret).delete(delete_secret),
        )
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(ScriptsState { store, scripts })
}

/// A refused deploy as an API error.
fn deploy_error(e: DeployError) -> ApiError {
    let (status, code, pointer) = match &e {
        DeployError::Invalid { pointer, message } => {
            return FieldError::new(pointer.as_str(), message.as_str()).into();
        }
        DeployError::Conflict(m) => return ApiError::conflict(m),
        DeployError::Binding { .. } => (StatusCode::BAD_REQUEST, 1002, Some("/metadata/bindings")),
        // Workers' "script failed to validate".
        DeployError::Script(_) => (StatusCode::BAD_REQUEST, 10021, Some("/modules")),
        DeployError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            warren_api::server::CODE_UNAVAILABLE,
            None,
        ),
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
) -> ApiResult<Vec<ScriptInfo>> {
    authorize(s.store.as_ref(), &headers, &account).await?;
    page(s.scripts.list(&account), &q)
}

async fn show(
    State(s): State<ScriptsState>,
    Path((account, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<ScriptInfo> {
    authorize(s.store.as_ref(), &headers, &account).await?;
    let info = s
        .scripts
        .get(&account, &name)
        .ok_or_else(|| ApiError::not_found("worker"))?;
    Ok(ok(info))
}

async fn remove(
    State(s): State<ScriptsState>,
    Path((account, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<DeletedScript> {
    authorize(s.store.as_ref(), &headers, &account).await?;
    if !s
        .scripts
        .delete(&account, &name)
        .await
        .map_err(deploy_error)?
    {
        return Err(ApiError::not_found("worker"));
    }
    Ok(ok(DeletedScript { id: name }))
}

async fn upload(
    State(s): State<ScriptsState>,
    Path((account, name)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<ScriptInfo> {
    authorize(s.store.as_ref(), &headers, &account).await?;
    let mut form = form.map_err(|e| ApiError::invalid("", format!("bad multipart body: {e}")))?;
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
            metadata = Some(from_slice_at(&bytes, "/metadata")?);
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
    Ok(ok(info))
}

async fn list_secrets(
    State(s): State<ScriptsState>,
    Path((account, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Vec<SecretInfo>> {
    authorize(s.store.as_ref(), &headers, &account).await?;
    let secrets = s
        .scripts
        .secrets(&account, &name)
        .await
        .map_err(deploy_error)?
        .ok_or_else(|| ApiError::not_found("worker"))?;
    page(secrets, &q)
}

async fn show_secret(
    State(s): State<ScriptsState>,
    Path((account, name, secret)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<SecretInfo> {
    authorize(s.store.as_ref(), &headers, &account).await?;
    let found = s
        .scripts
        .secrets(&account, &name)
        .await
        .map_err(deploy_error)?
        .ok_or_else(|| ApiError::not_found("worker"))?
        .into_iter()
        .find(|i| i.name == secret)
        .ok_or_else(|| ApiError::not_found("secret"))?;
    Ok(ok(found))
}

async fn put_secret(
    State(s): State<ScriptsState>,
    Path((account, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<SecretInfo> {
    authorize(s.store.as_ref(), &headers, &account).await?;
    let request: SecretRequest = from_slice_at(&body, "")?;
    let info = s
        .scripts
        .put_secret(&account, &name, &request)
        .await
        .map_err(deploy_error)?
        .ok_or_else(|| ApiError::not_found("worker"))?;
    Ok(ok(info))
}

async fn delete_secret(
    State(s): State<ScriptsState>,
    Path((account, name, secret)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Option<SecretInfo>> {
    authorize(s.store.as_ref(), &headers, &account).await?;
    match s
        .scripts
        .delete_secret(&account, &name, &secret)
        .await
        .map_err(deploy_error)?
    {
        SecretDeleted::Deleted => Ok(ok(None)),
        SecretDeleted::NoScript => Err(ApiError::not_found("worker")),
        SecretDeleted::NoSecret => Err(ApiError::not_found("secret")),
    }
}

async fn tail(
    State(s): State<ScriptsState>,
    Path((account, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(s.store.as_ref(), &headers, &account).await?;
    let rx = s.scripts.tail(&account, &name).await.map_err(|e| match e {
        Unsubscribed::NoWorker => ApiError::not_found("worker"),
        Unsubscribed::Full => ApiError::limit(format!(
            "worker {name} already has {MAX_TAILS_PER_WORKER} live tails on this node; close one and try again"
        )),
    })?;
    // First line: a hello, so the client knows the subscription is live.
    let hello = json_line(&TailHello {
        tail: name,
        connected: true,
    });
    let events = futures_util::stream::unfold(Some((Some(hello), rx)), |state| async move {
        let (hello, mut rx) = state?;
        if let Some(h) = hello {
            return Some((Ok::<_, std::convert::Infallible>(h), Some((None, rx))));
        }
        Some(match rx.recv().await {
            Ok(ev) => (Ok(json_line(&ev)), Some((None, rx))),
            // The last line says why; then the stream ends.
            Err(end) => (
                Ok(json_line(&TailClosed {
                    closed: end.as_str().to_owned(),
                })),
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

#[cfg(test)]
mod tests {
    use warren_api::tail::TailLine;

    use crate::logs::{LogLine, RequestInfo, TailEvent};

    /// The runtime's events are read by the CLI as `warren-api`'s tail lines.
    #[test]
    fn tail_events_read_as_the_api_model() {
        let ev = TailEvent {
            script_name: "w".into(),
            outcome: "ok".into(),
            event_timestamp: 7,
            request_id: "r".repeat(32),
            request: RequestInfo {
                method: "GET".into(),
                url: "http://w.example/".into(),
            },
            status: 200,
            wall_ms: 3,
            cpu_ms: 1,
            logs: vec![LogLine {
                level: "log",
                message: "hi".into(),
            }],
            exceptions: vec!["boom".into()],
        };
        let line = serde_json::to_string(&ev).unwrap();
        let TailLine::Event(read) = serde_json::from_str(&line).unwrap() else {
            panic!("{line} is not read as an event");
        };
        assert_eq!(
            (read.script_name.as_str(), read.status, read.cpu_ms),
            ("w", 200, 1)
        );
        assert_eq!(read.logs[0].message, "hi");
        assert_eq!(read.exceptions, ["boom"]);
        assert_eq!(serde_json::to_string(&read).unwrap(), line);
    }
}
