//! One binding call: check the context, shape the request for the origin
//! (`Host` from the URL, origin-form target, hop-by-hop headers removed), send
//! it through a pooled CONNECT tunnel, and follow redirects through the same
//! binding unless the worker asked for `redirect: "manual"`.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tracing::warn;
use warren_protocol::binding::{BindingContext, CallHead};
use warren_protocol::{ErrorCode, ProxyError};
use warren_store::cache::ServiceCache;

use crate::check::ServiceCheck;
use crate::pool::{FrontDoorConfig, PooledBody, ReqBody, TunnelKey, TunnelPool};

/// Most redirects followed for one call (as browsers and workerd do).
pub const MAX_REDIRECTS: usize = 20;

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The binding-worker's core: binding calls in, origin responses out.
pub struct BindingWorker {
    check: ServiceCheck,
    pool: TunnelPool,
}

fn bad_request(detail: impl Into<String>) -> ProxyError {
    // The taxonomy has no "bad request"; an unusable URL cannot name a reachable service.
    ProxyError::new(ErrorCode::ServiceNotFound, detail)
}

/// Removes hop-by-hop headers (and those `Connection` names).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

struct Target {
    key: TunnelKey,
    path: String,
    host: HeaderValue,
}

fn target(ctx: &BindingContext, url: &url::Url) -> Result<Target, ProxyError> {
    let scheme = url.scheme();
    if scheme != "http" && scheme != "https" {
        return Err(bad_request(format!(
            "a binding reaches http:// and https:// URLs, not {scheme}:"
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| bad_request("the URL has no host"))?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let mut path = url.path().to_owned();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    Ok(Target {
        host: HeaderValue::from_str(&authority)
            .map_err(|_| bad_request("the URL host is not a valid Host header"))?,
        key: TunnelKey {
            worker: ctx.worker.clone(),
            service_id: ctx.service_id.clone(),
            scheme: scheme.to_owned(),
            // The URL's port never routes (iris picks it by scheme): the host alone.
            authority: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        },
        path,
    })
}

impl BindingWorker {
    /// A binding-worker checking contexts against the node's service cache
    /// and reaching iris at `front_door`; its pooled tunnels are dropped when
    /// a service changes. Must be created inside a tokio runtime.
    pub fn new(services: Arc<ServiceCache>, front_door: FrontDoorConfig) -> Arc<Self> {
        let changes = services.store().watch();
        Arc::new(BindingWorker {
            check: ServiceCheck::new(services),
            pool: TunnelPool::with_changes(front_door, Some(changes)),
        })
    }

    /// The tunnel pool (for metrics and tests).
    pub fn pool(&self) -> &TunnelPool {
        &self.pool
    }

    /// Runs one binding call; failures carry the ProxyError code the worker sees.
    pub async fn fetch(
        &self,
        head: CallHead,
        body: ReqBody,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let ctx = head.context.clone();
        let result = self.fetch_inner(head, body).await;
        crate::metrics::metrics().call(&result);
        if let Err(e) = &result {
            warn!(
                request_id = %ctx.request_id,
                worker = %ctx.worker,
                binding = %ctx.binding,
                service_id = %ctx.service_id,
                code = %e.code,
                detail = %e.detail,
                "binding call failed"
            );
        }
        result
    }

    async fn fetch_inner(
        &self,
        head: CallHead,
        body: ReqBody,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let ctx: BindingContext = head.context;
        self.check.check(&ctx).await?;
        let mut url = url::Url::parse(&head.url)
            .map_err(|e| bad_request(format!("the binding URL {:?}: {e}", head.url)))?;
        let mut method = Method::from_bytes(head.method.as_bytes())
            .map_err(|_| bad_request(format!("bad method {:?}", head.method)))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &head.headers {
            let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) else {
                return Err(bad_request(format!("bad header {name:?}")));
            };
            headers.append(n, v);
        }
        strip_hop_by_hop(&mut headers);
        headers.remove(http::header::HOST);
        crate::trace::propagate(&mut headers, &ctx.request_id);
        let replayable = body.is_end_stream() || body.size_hint().exact() == Some(0);
        let mut body = Some(body);
        for hop in 0..=MAX_REDIRECTS {
            let t = target(&ctx, &url)?;
            let mut req =
                Request::new(body.take().unwrap_or_else(|| {
                    Empty::new().map_err(|never| match never {}).boxed_unsync()
                }));
            *req.method_mut() = method.clone();
            *req.uri_mut() = t
                .path
                .parse()
                .map_err(|_| bad_request(format!("bad path {:?}", t.path)))?;
            *req.headers_mut() = headers.clone();
            req.headers_mut().insert(http::header::HOST, t.host.clone());
            let mut resp = self.pool.send(&t.key, &ctx, req).await?;
            strip_hop_by_hop(resp.headers_mut());
            let status = resp.status();
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok());
            let (true, Some(next)) = (
                !head.redirect_manual && status.is_redirection() && hop < MAX_REDIRECTS,
                location,
            ) else {
                return Ok(resp);
            };
            let to_get = status == StatusCode::SEE_OTHER
                || (matches!(status.as_u16(), 301 | 302) && method == Method::POST);
            if to_get {
                if method != Method::HEAD {
                    method = Method::GET;
                }
                for h in [
                    "content-length",
                    "content-type",
                    "content-encoding",
                    "content-language",
                    "content-location",
                ] {
                    headers.remove(h);
                }
            } else if !matches!(status.as_u16(), 301 | 302 | 307 | 308) || !replayable {
                // A streamed body cannot be sent twice: hand the redirect to the worker.
                return Ok(resp);
            }
            if next.origin() != url.origin() {
                headers.remove(http::header::AUTHORIZATION);
            }
            url = next;
        }
        Err(ProxyError::new(
            ErrorCode::ConnectionTerminated,
            "too many redirects",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn target_takes_host_and_path_from_the_url() {
        let ctx = BindingContext {
            worker: "shop".into(),
            service_id: "svc".into(),
            ..BindingContext::default()
        };
        let u = url::Url::parse("https://inventory.internal:8443/items?x=1").unwrap();
        let t = target(&ctx, &u).unwrap();
        assert_eq!(
            (t.key.worker.as_str(), t.key.service_id.as_str()),
            ("shop", "svc")
        );
        assert_eq!(t.path, "/items?x=1");
        assert_eq!(t.host, "inventory.internal:8443");
        assert_eq!(t.key.scheme, "https");
        let u = url::Url::parse("ftp://x/").unwrap();
        assert_eq!(
            target(&ctx, &u).err().unwrap().code,
            ErrorCode::ServiceNotFound
        );
    }
}
