//! Calling a Warren VPC binding from a Rust `wasi:http/proxy` worker.
//!
//! A Wasm worker reaches a binding the way a JS worker's `env.API.fetch()` does:
//! an outgoing `wasi:http` request carrying the `warren-binding: <NAME>` header
//! and this request's binding key (`warren-binding-key`, from the
//! `WARREN_BINDING_KEY` environment variable the runtime sets afresh for every
//! request; a marker without it is refused, so a client's header can never
//! select a binding). The runtime strips both, checks that the worker has that
//! binding, and
//! sends the request through the tunnel to the VPC service. As on Workers, the
//! URL's host sets `Host` (and SNI) and its scheme picks the service's
//! `http_port` / `https_port`; the URL's port is ignored. A failure on the way
//! (origin down, DNS, TLS, no connector) comes back as a 502 carrying
//! `warren-proxy-error: <code>`, which this crate turns into
//! [`BindingError::Proxy`]; an HTTP error status from the origin is a normal
//! response.
//!
//! ```ignore
//! let api = warren_binding::Binding::new("INVENTORY");
//! let (status, body) = api.get_bytes("http://inventory.internal/items", 1 << 20)?;
//! ```

use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme,
};

/// The header that names the binding of an outgoing request.
pub const MARKER: &str = "warren-binding";
/// The header carrying this request's binding key.
pub const KEY_HEADER: &str = "warren-binding-key";
/// The environment variable the runtime puts the request's binding key in.
pub const KEY_ENV: &str = "WARREN_BINDING_KEY";
/// The header the runtime answers a failed binding call with.
pub const PROXY_ERROR: &str = "warren-proxy-error";

/// One VPC binding of this worker, by its name in the worker's config.
#[derive(Debug, Clone)]
pub struct Binding {
    name: String,
}

/// Why a binding call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingError {
    /// The path to the service failed: `connection_refused`, `dns_error`,
    /// `tls_error`, `destination_unavailable`, `binding_not_found`, … (the
    /// codes JS sees as `Error("ProxyError: <code>")`).
    Proxy(String),
    /// The URL is not absolute `http://` or `https://`.
    BadUrl(String),
    /// The runtime refused the request itself (a `wasi:http` error code).
    Http(String),
    /// The answer's body was longer than the caller's limit.
    TooLarge(usize),
}

impl std::fmt::Display for BindingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindingError::Proxy(code) => write!(f, "ProxyError: {code}"),
            BindingError::BadUrl(u) => write!(f, "not an absolute http(s) URL: {u}"),
            BindingError::Http(e) => write!(f, "request refused: {e}"),
            BindingError::TooLarge(n) => write!(f, "answer longer than {n} bytes"),
        }
    }
}

impl std::error::Error for BindingError {}

fn http_error(e: ErrorCode) -> BindingError {
    BindingError::Http(format!("{e:?}"))
}

/// `http(s)://authority/path?query` split into its parts.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), BindingError> {
    let bad = || BindingError::BadUrl(url.to_owned());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(bad()),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    Ok((scheme, authority, path))
}

impl Binding {
    /// The binding `name` (as in `vpc_services[].binding`).
    pub fn new(name: &str) -> Binding {
        Binding {
            name: name.to_owned(),
        }
    }

    /// Sends a request without a body and returns the response head as soon
    /// as it arrives; its body streams from `consume()`.
    pub fn fetch(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<IncomingResponse, BindingError> {
        let (scheme, authority, path) = split_url(url)?;
        let fields = Fields::new();
        for (k, v) in headers {
            fields
                .append(&k.to_string(), &v.as_bytes().to_vec())
                .map_err(|e| BindingError::Http(format!("header {k}: {e:?}")))?;
        }
        fields
            .append(&MARKER.to_string(), &self.name.as_bytes().to_vec())
            .map_err(|e| BindingError::Http(format!("{e:?}")))?;
        let key = std::env::var(KEY_ENV).unwrap_or_default();
        fields
            .append(&KEY_HEADER.to_string(), &key.into_bytes())
            .map_err(|e| BindingError::Http(format!("{e:?}")))?;
        let req = OutgoingRequest::new(fields);
        let bad = |_| BindingError::BadUrl(url.to_owned());
        req.set_method(&method).map_err(bad)?;
        req.set_scheme(Some(&scheme)).map_err(bad)?;
        req.set_authority(Some(authority)).map_err(bad)?;
        req.set_path_with_query(Some(path)).map_err(bad)?;
        let body = req.body().map_err(|_| BindingError::Http("no body".into()))?;
        let pending = outgoing_handler::handle(req, None).map_err(http_error)?;
        OutgoingBody::finish(body, None).map_err(http_error)?;
        pending.subscribe().block();
        let resp = pending
            .get()
            .ok_or_else(|| BindingError::Http("no response".into()))?
            .map_err(|()| BindingError::Http("response taken twice".into()))?
            .map_err(http_error)?;
        if let Some(code) = resp.headers().get(&PROXY_ERROR.to_string()).first() {
            return Err(BindingError::Proxy(String::from_utf8_lossy(code).into_owned()));
        }
        Ok(resp)
    }

    /// GETs `url` and reads the whole answer, refusing one over `limit` bytes.
    pub fn get_bytes(&self, url: &str, limit: usize) -> Result<(u16, Vec<u8>), BindingError> {
        let resp = self.fetch(Method::Get, url, &[])?;
        let status = resp.status();
        let body = resp
            .consume()
            .map_err(|()| BindingError::Http("body taken twice".into()))?;
        let stream = body
            .stream()
            .map_err(|()| BindingError::Http("body stream taken twice".into()))?;
        let mut data = Vec::new();
        // Reading ends at the end of the body (a closed stream).
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            if data.len() + chunk.len() > limit {
                return Err(BindingError::TooLarge(limit));
            }
            data.extend_from_slice(&chunk);
        }
        Ok((status, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let (s, a, p) = split_url("http://inventory.internal/items?x=1").unwrap();
        assert!(matches!(s, Scheme::Http));
        assert_eq!((a, p), ("inventory.internal", "/items?x=1"));
        let (s, a, p) = split_url("HTTPS://db.internal:8443?q").unwrap();
        assert!(matches!(s, Scheme::Https));
        assert_eq!((a, p), ("db.internal:8443", "?q"));
        assert_eq!(split_url("http://h").unwrap().2, "/");
        assert!(split_url("/relative").is_err());
        assert!(split_url("ftp://h/x").is_err());
        assert!(split_url("http:///x").is_err());
    }
}
