//! The outbound gate. A request carrying the binding marker header goes to the
//! [`BindingClient`] with its binding context (the marker stripped); a binding
//! the worker does not have is `binding_not_found`. Any other request goes to
//! the global outbound policy: public internet only by default — loopback,
//! private, link-local, CGNAT, ULA and metadata addresses are refused after DNS
//! resolution — or nothing at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use http_body_util::BodyExt;
use warren_protocol::ProxyError;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// The header a guest sets to call a binding: `warren-binding: <NAME>`.
pub const BINDING_HEADER: &str = "warren-binding";

/// The header that must accompany [`BINDING_HEADER`]: this request's binding
/// key. The runtime hands a fresh random key to each request (in this header
/// of the incoming request, which the generated JS entry removes before the
/// worker's code sees it, and in the [`BINDING_KEY_ENV`] environment
/// variable); a marker without the right key is refused, so nothing a client
/// sends can select a binding.
pub const BINDING_KEY_HEADER: &str = "warren-binding-key";

/// The environment variable carrying the request's binding key (for Wasm
/// workers; see [`BINDING_KEY_HEADER`]).
pub const BINDING_KEY_ENV: &str = "WARREN_BINDING_KEY";

/// Whether `name` is a header of Warren's own (`warren-…`), which clients may
/// not send and public origins never receive.
pub fn is_warren_header(name: &http::HeaderName) -> bool {
    // Header names are lowercase once parsed, whatever the client sent.
    let n = name.as_str();
    n.starts_with("warren-") || n.starts_with("warren_")
}

/// Removes every Warren header from `headers`.
pub fn strip_warren_headers(headers: &mut http::HeaderMap) {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| is_warren_header(n))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// A fresh binding key (128 random bits, hex).
pub fn new_binding_key() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// On a failed binding call the guest gets a `502` carrying this header with the
/// ProxyError code (JS runtimes report fetch failures without detail, so the
/// code travels in a response; the generated JS entry turns it into
/// `Error("ProxyError: <code>")`). Stripped from every real response, so an
/// origin cannot forge it.
pub const PROXY_ERROR_HEADER: &str = warren_protocol::PROXY_ERROR_HEADER;

pub use warren_protocol::binding::BindingContext;

/// Carries binding calls onward (the binding-worker, over Cap'n Proto).
#[async_trait]
pub trait BindingClient: Send + Sync + 'static {
    /// Sends `request` (marker removed) for `ctx`; failures are ProxyErrors the
    /// worker sees.
    async fn fetch(
        &self,
        ctx: BindingContext,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, ProxyError>;
}

/// Where requests without a binding may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboundPolicy {
    /// Public addresses only (the default).
    #[default]
    PublicInternet,
    /// Nothing.
    None,
}

/// Whether `ip` is an address a worker may reach on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [o0, o1, ..] = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || o0 == 0
                || (o0 == 100 && (64..=127).contains(&o1)) // CGNAT 100.64/10
                || (o0 == 192 && o1 == 0 && a.octets()[2] == 0) // IETF 192.0.0/24
                || (o0 == 198 && (o1 & 0xfe) == 18) // benchmarking 198.18/15
                || (o0 == 192 && o1 == 88 && a.octets()[2] == 99) // 6to4 relay 192.88.99/24
                || o0 >= 240)
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || s[..6] == [0; 6] // IPv4-compatible ::/96
                || (s[0] & 0xfe00) == 0xfc00 // ULA fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 can reach private v4
                || s[0] == 0x2002 // 6to4 2002::/16 embeds any v4
                || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32 embeds any v4
                || s[..4] == [0x100, 0, 0, 0] // discard 100::/64
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

/// The per-request outbound state: the worker's bindings and policy.
pub struct Outbound {
    /// Binding name → VPC service id.
    pub bindings: Arc<HashMap<String, String>>,
    /// Where binding calls go.
    pub client: Option<Arc<dyn BindingClient>>,
    /// Global outbound policy.
    pub policy: OutboundPolicy,
    /// Context fields shared by every binding call of this request.
    pub account_id: String,
    /// Worker name.
    pub worker: String,
    /// Incoming request id.
    pub request_id: String,
    /// This request's binding key (see [`BINDING_KEY_HEADER`]).
    pub binding_key: String,
    /// Subrequests left.
    pub remaining: Arc<AtomicU32>,
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

/// The response a guest gets for a failed binding call.
fn proxy_error_response(code: warren_protocol::ErrorCode) -> http::Response<WasiBody> {
    let body = http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut r = http::Response::new(body);
    *r.status_mut() = http::StatusCode::BAD_GATEWAY;
    r.headers_mut().insert(
        PROXY_ERROR_HEADER,
        http::HeaderValue::from_static(code.as_str()),
    );
    r
}

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let left = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if left.is_err() {
            return Box::new(async {
                Err(HttpError::InternalError(Some(
                    "Too many subrequests".into(),
                )))
            });
        }
        let marker = request.headers_mut().remove(BINDING_HEADER);
        let key = request.headers_mut().remove(BINDING_KEY_HEADER);
        if let Some(name) = marker {
            let genuine = key.is_some_and(|k| {
                subtle::ConstantTimeEq::ct_eq(k.as_bytes(), self.binding_key.as_bytes()).into()
            });
            if !genuine {
                // A marker without this request's key did not come from the
                // worker's binding object (a client's header forwarded by a
                // proxying worker, say): it selects nothing and goes nowhere.
                tracing::debug!(request_id = %self.request_id, "binding marker without the request's key refused");
                return Box::new(async { Err(HttpError::HttpRequestDenied) });
            }
            let name = name.to_str().unwrap_or("").to_owned();
            let ctx = self.bindings.get(&name).map(|service_id| BindingContext {
                account_id: self.account_id.clone(),
                worker: self.worker.clone(),
                binding: name.clone(),
                service_id: service_id.clone(),
                request_id: self.request_id.clone(),
            });
            let client = self.client.clone();
            return Box::new(async move {
                let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                    Box::new(async { Ok(()) });
                let (Some(ctx), Some(client)) = (ctx, client) else {
                    let code = warren_protocol::ErrorCode::BindingNotFound;
                    return Ok((proxy_error_response(code), done));
                };
                let resp = match client.fetch(ctx, request).await {
                    Ok(mut r) => {
                        r.headers_mut().remove(PROXY_ERROR_HEADER);
                        r
                    }
                    Err(e) => {
                        tracing::debug!(code = %e.code, detail = %e.detail, "binding call failed");
                        proxy_error_response(e.code)
                    }
                };
                Ok((resp, done))
            });
        }
        let policy = self.policy;
        Box::new(async move {
            if policy == OutboundPolicy::None {
                return Err(HttpError::HttpRequestDenied);
            }
            strip_warren_headers(request.headers_mut());
            crate::egress::PublicDialer::global()
                .send(request, options)
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "::",
            "198.18.0.1",
            "198.19.255.255",
            "192.88.99.1",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
            "::7f00:1",
            "::a00:1",
            "fec0::1",
            "feff::1",
            "100::1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip} must be refused");
        }
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "198.20.0.1",
            "192.88.98.1",
            "2001:4860:4860::8888",
            "100:0:0:1::1",
        ] {
            assert!(is_public(ip.parse().expect("ip")), "{ip} is public");
        }
    }
}
