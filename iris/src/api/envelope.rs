//! The v4 envelope, errors with field pointers, and pagination.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use warren_store::StoreError;

/// An API failure: HTTP status, a numeric code, a message and the JSON pointer
/// of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Numeric error code (as Cloudflare's: 10000 auth, 1002 invalid input, 1003
    /// not found, 1004 conflict, 1500 internal).
    pub code: u32,
    /// What is wrong, in plain words.
    pub message: String,
    /// JSON pointer to the field, for invalid input.
    pub pointer: Option<String>,
}

impl ApiError {
    /// Invalid input at `pointer`.
    pub fn invalid(pointer: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let field = pointer.trim_start_matches('/').replace('/', ".");
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: 1002,
            message: if field.is_empty() {
                message
            } else {
                format!("{field}: {message}")
            },
            pointer: Some(pointer.to_owned()),
        }
    }
    /// Missing or unknown token (no hint of which accounts exist).
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: 10000,
            message: "Authentication error".into(),
            pointer: None,
        }
    }
    /// A valid token for another account.
    pub fn forbidden() -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: 10000,
            message: "this token is not allowed to act on this account".into(),
            pointer: None,
        }
    }
    /// The named resource does not exist in this account.
    pub fn not_found(what: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: 1003,
            message: format!("{what} not found"),
            pointer: None,
        }
    }
    /// The operation conflicts with other resources.
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            code: 1004,
            message: message.into(),
            pointer: None,
        }
    }
    /// The store failed.
    pub fn store(e: StoreError) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: 1500,
            message: format!("internal error: {e}"),
            pointer: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({ "code": self.code, "message": self.message });
        if let Some(p) = &self.pointer {
            err["source"] = json!({ "pointer": p });
        }
        let body = json!({ "success": false, "errors": [err], "messages": [], "result": null });
        (self.status, axum::Json(body)).into_response()
    }
}

/// A successful answer with `result`.
pub fn ok(result: Value) -> Response {
    axum::Json(json!({ "success": true, "errors": [], "messages": [], "result": result }))
        .into_response()
}

/// A page of a list, with `result_info`.
pub fn page(items: Vec<Value>, query: &HashMap<String, String>) -> Result<Response, ApiError> {
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
    let per_page = number("per_page", 20, 1000)?;
    let total = items.len();
    let start = (page - 1).saturating_mul(per_page).min(total);
    let slice: Vec<Value> = items.into_iter().skip(start).take(per_page).collect();
    let body = json!({
        "success": true, "errors": [], "messages": [],
        "result": slice,
        "result_info": { "page": page, "per_page": per_page, "count": slice.len(), "total_count": total },
    });
    Ok(axum::Json(body).into_response())
}

/// Parses a request body as a JSON object.
pub fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("", "the body must be a JSON object")),
        Err(e) => Err(ApiError::invalid(
            "",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// Refuses keys of `obj` not in `allowed`, naming the first with its pointer.
pub fn only_keys(
    obj: &serde_json::Map<String, Value>,
    at: &str,
    allowed: &[&str],
) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(&format!("{at}/{k}"), "unknown field")),
        None => Ok(()),
    }
}
