//! The server side of the model (cargo feature `server`): [`ApiError`] as an
//! HTTP answer in the envelope, the strict JSON body extractor
//! [`StrictJson`], pagination ([`page`]) and the per-account token check
//! ([`authorize`]).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use warren_store::{Store, StoreError, hash_secret};

use crate::envelope::{ApiMessage, CODE_INVALID, Envelope, ErrorSource};
use crate::field::{FieldError, from_slice_at};

/// Authentication failed or the token may not act on the account.
pub const CODE_AUTH: u32 = 10000;
/// The resource does not exist in the account.
pub const CODE_NOT_FOUND: u32 = 1003;
/// The request conflicts with other resources.
pub const CODE_CONFLICT: u32 = 1004;
/// A per-resource limit is reached; try again once something is released.
pub const CODE_LIMIT: u32 = 1429;
/// Something failed inside the server.
pub const CODE_INTERNAL: u32 = 1500;
/// The configuration store cannot be reached right now; try again.
pub const CODE_UNAVAILABLE: u32 = 1503;

/// An API failure: HTTP status, a numeric code, a message and the JSON pointer
/// of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Numeric error code (see [`ApiMessage::code`]).
    pub code: u32,
    /// What is wrong, in plain words.
    pub message: String,
    /// JSON pointer to the field, for invalid input.
    pub pointer: Option<String>,
}

/// What a handler returns: the envelope around `T`, or an error.
pub type ApiResult<T> = Result<Json<Envelope<T>>, ApiError>;

/// A successful answer with `result`.
pub fn ok<T>(result: T) -> Json<Envelope<T>> {
    Json(Envelope::ok(result))
}

impl ApiError {
    /// Invalid input at `pointer` (400, code 1002); the message names the field.
    pub fn invalid(pointer: &str, message: impl Into<String>) -> Self {
        FieldError::new(pointer, message).into()
    }
    /// Missing or unknown token (no hint of which accounts exist).
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: CODE_AUTH,
            message: "Authentication error".into(),
            pointer: None,
        }
    }
    /// A valid token for another account.
    pub fn forbidden() -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: CODE_AUTH,
            message: "this token is not allowed to act on this account".into(),
            pointer: None,
        }
    }
    /// The named resource does not exist in this account.
    pub fn not_found(what: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: CODE_NOT_FOUND,
            message: format!("{what} not found"),
            pointer: None,
        }
    }
    /// The operation conflicts with other resources.
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            code: CODE_CONFLICT,
            message: message.into(),
            pointer: None,
        }
    }
    /// A limit on concurrent use is reached (429, code 1429); the message
    /// says which and what frees it.
    pub fn limit(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: CODE_LIMIT,
            message: message.into(),
            pointer: None,
        }
    }
    /// Something failed inside the server (500, code 1500).
    pub fn internal(message: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: CODE_INTERNAL,
            message: format!("internal error: {message}"),
            pointer: None,
        }
    }
    /// The store failed: 503 (code 1503) when it cannot be reached right now
    /// (the request may succeed if tried again), else 500 (code 1500).
    pub fn store(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: CODE_UNAVAILABLE,
                message: format!("{e}; nothing was changed, try again"),
                pointer: None,
            },
            e => ApiError::internal(e),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: CODE_INVALID,
            message: e.to_string(),
            pointer: Some(e.pointer),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::store(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Envelope::<()>::failure(ApiMessage {
            code: self.code,
            message: self.message,
            source: self.pointer.map(|pointer| ErrorSource { pointer }),
        });
        (self.status, Json(body)).into_response()
    }
}

/// A JSON request body parsed strictly into `T` (see
/// [`from_slice_at`]): any failure is a 400 naming the field. The
/// content type is not checked.
#[derive(Debug, Clone)]
pub struct StrictJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError {
                status: e.status(),
                code: CODE_INVALID,
                message: format!("unreadable body: {}", e.body_text()),
                pointer: Some(String::new()),
            })?;
        Ok(StrictJson(from_slice_at(&bytes, "")?))
    }
}

/// Default items per page.
pub const DEFAULT_PER_PAGE: usize = 20;
/// Most items per page.
pub const MAX_PER_PAGE: usize = 1000;

/// Page `?page=` (from 1, default 1) of `?per_page=` (1–1000, default 20)
/// items of `items`, with its `result_info`.
pub fn page<T>(items: Vec<T>, query: &HashMap<String, String>) -> ApiResult<Vec<T>> {
    let number = |key: &str, default: usize, max: usize| -> Result<usize, ApiError> {
        match query.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(
                    &format!("/{key}"),
                    format!("must be an integer from 1 to {max}"),
                )),
            },
        }
    };
    let page = number("page", 1, usize::MAX)?;
    let per_page = number("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)?;
    Ok(Json(Envelope::page(items, page, per_page)))
}

/// The account whose bearer token `headers` carry: 401 when it is missing
/// or unknown.
pub async fn account_of(store: &dyn Store, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    store
        .account_for_token(hash_secret(token.trim().as_bytes()))
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// Checks the bearer token of `headers` against `account_id`: 401 when it is
/// missing or unknown (the same answer whether the account exists or not),
/// 403 when it belongs to another account.
pub async fn authorize(
    store: &dyn Store,
    headers: &HeaderMap,
    account_id: &str,
) -> Result<(), ApiError> {
    if account_of(store, headers).await? != account_id {
        return Err(ApiError::forbidden());
    }
    Ok(())
}

/// Serializes a value for a streamed line (the tail), never failing: a value
/// that cannot be serialized becomes `null`.
pub fn json_line<T: Serialize>(value: &T) -> String {
    let mut line = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    async fn answer(e: ApiError) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let body = to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn store_errors_say_whether_to_try_again() {
        let (status, v) = answer(StoreError::Unavailable("no quorum".into()).into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["errors"][0]["code"], 1503);
        assert_eq!(
            v["errors"][0]["message"],
            "storage backend unavailable: no quorum; nothing was changed, try again"
        );
        assert_eq!(v["success"], false);
        let (status, v) = answer(StoreError::Backend("disk full".into()).into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v["errors"][0]["code"], 1500);
    }

    #[tokio::test]
    async fn invalid_input_carries_the_pointer() {
        let (status, v) = answer(ApiError::invalid("/host/ipv4", "must be an IPv4 address")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            v["errors"][0],
            serde_json::json!({ "code": 1002, "message": "host.ipv4: must be an IPv4 address", "source": { "pointer": "/host/ipv4" } })
        );
    }
}
