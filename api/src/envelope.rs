//! The v4 envelope: `{ "success", "errors", "messages", "result" }`, plus
//! `result_info` on lists.

use serde::{Deserialize, Serialize};

use crate::field::FieldError;

/// Every answer of the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Whether the request did what it asked.
    pub success: bool,
    /// Why not (one entry per failure; Warren sends at most one).
    #[serde(default)]
    pub errors: Vec<ApiMessage>,
    /// Notices (Warren sends none).
    #[serde(default)]
    pub messages: Vec<ApiMessage>,
    /// The resource, list or value asked for; `null` on failure and for
    /// deletes that return nothing.
    pub result: Option<T>,
    /// Paging of a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_info: Option<ResultInfo>,
}

/// One entry of `errors` or `messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiMessage {
    /// Numeric code: 10000 auth, 1002 invalid input, 1003 not found, 1004
    /// conflict, 1500 internal, 1503 storage unavailable (and 10021 for a
    /// worker script that failed to build).
    pub code: u32,
    /// What happened, in plain words.
    pub message: String,
    /// The offending field, for invalid input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ErrorSource>,
}

/// `source` of an error: where in the request it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorSource {
    /// JSON pointer of the field.
    pub pointer: String,
}

/// Paging of a list answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultInfo {
    /// This page's number (from 1).
    pub page: usize,
    /// Items per page asked for.
    pub per_page: usize,
    /// Items on this page.
    pub count: usize,
    /// Items on all pages.
    pub total_count: usize,
}

/// Invalid input (code 1002 with the field's pointer).
pub const CODE_INVALID: u32 = 1002;

impl<T> Envelope<T> {
    /// A successful answer.
    pub fn ok(result: T) -> Self {
        Envelope {
            success: true,
            errors: vec![],
            messages: vec![],
            result: Some(result),
            result_info: None,
        }
    }

    /// A successful answer with no result (`"result": null`).
    pub fn empty() -> Self {
        Envelope {
            success: true,
            errors: vec![],
            messages: vec![],
            result: None,
            result_info: None,
        }
    }

    /// A failed answer with one error.
    pub fn failure(error: ApiMessage) -> Self {
        Envelope {
            success: false,
            errors: vec![error],
            messages: vec![],
            result: None,
            result_info: None,
        }
    }

    /// The first error of a failed answer (a placeholder when it names none).
    pub fn first_error(&self) -> ApiMessage {
        self.errors.first().cloned().unwrap_or_else(|| ApiMessage {
            code: 0,
            message: "request failed".into(),
            source: None,
        })
    }
}

impl<T> Envelope<Vec<T>> {
    /// Page `page` (from 1) of `per_page` items of `items`, with its `result_info`.
    pub fn page(items: Vec<T>, page: usize, per_page: usize) -> Self {
        let total = items.len();
        let start = page.saturating_sub(1).saturating_mul(per_page).min(total);
        let slice: Vec<T> = items.into_iter().skip(start).take(per_page).collect();
        Envelope {
            result_info: Some(ResultInfo {
                page,
                per_page,
                count: slice.len(),
                total_count: total,
            }),
            ..Envelope::ok(slice)
        }
    }
}

impl From<&FieldError> for ApiMessage {
    fn from(e: &FieldError) -> Self {
        ApiMessage {
            code: CODE_INVALID,
            message: e.to_string(),
            source: Some(ErrorSource {
                pointer: e.pointer.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_wire_shape_is_the_v4_envelope() {
        let ok = serde_json::to_value(Envelope::ok("x")).unwrap();
        assert_eq!(
            ok,
            json!({ "success": true, "errors": [], "messages": [], "result": "x" })
        );
        let empty = serde_json::to_value(Envelope::<()>::empty()).unwrap();
        assert_eq!(empty["result"], serde_json::Value::Null);
        let bad = Envelope::<()>::failure((&FieldError::new("/host/ipv4", "bad")).into());
        assert_eq!(
            serde_json::to_value(&bad).unwrap(),
            json!({ "success": false, "messages": [], "result": null, "errors": [
                { "code": 1002, "message": "host.ipv4: bad", "source": { "pointer": "/host/ipv4" } }
            ] })
        );
        let page = Envelope::page(vec![1, 2, 3], 2, 2);
        assert_eq!(
            serde_json::to_value(&page).unwrap()["result_info"],
            json!({ "page": 2, "per_page": 2, "count": 1, "total_count": 3 })
        );
        assert_eq!(page.result, Some(vec![3]));
        let back: Envelope<Vec<u32>> =
            serde_json::from_value(serde_json::to_value(&page).unwrap()).unwrap();
        assert_eq!(back, page);
    }
}
