//! Which requests the tunnel pool sends again when a pooled CONNECT tunnel
//! breaks before the response: against a front door over the in-process
//! pipe (the transport a binding-worker beside iris uses) that accepts every CONNECT and then plays the origin, closing the
//! connection without an answer the first time it sees a `/flaky…` path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty, Full};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use warren_binding_worker::FrontDoorConfig;
use warren_binding_worker::pool::{BoxError, ReqBody, TunnelKey, TunnelPool};
use warren_protocol::ErrorCode;
use warren_protocol::binding::BindingContext;
use warren_protocol::pipe::{PipeListener, pipe_pair};

/// What the front door saw: CONNECTs accepted, and each request (method, path).
#[derive(Default)]
struct Seen {
    tunnels: usize,
    requests: Vec<(String, String)>,
}

impl Seen {
    fn times(&self, method: &str, path: &str) -> usize {
        self.requests
            .iter()
            .filter(|(m, p)| m == method && p == path)
            .count()
    }
}

/// Reads one HTTP head (up to the blank line); its lines, or `None` at EOF.
async fn head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            return Some(lines);
        }
        lines.push(line);
    }
}

async fn serve(listener: PipeListener, seen: Arc<Mutex<Seen>>) {
    while let Ok(tcp) = listener.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(tcp);
            match head(&mut r).await {
                Some(h) if h.first().is_some_and(|l| l.starts_with("CONNECT ")) => {}
                _ => return,
            }
            seen.lock().expect("lock").tunnels += 1;
            if r.get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            // Inside the tunnel: the origin.
            while let Some(h) = head(&mut r).await {
                let mut first = h[0].split(' ');
                let method = first.next().unwrap_or_default().to_owned();
                let path = first.next().unwrap_or_default().to_owned();
                let len: usize = h
                    .iter()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).await.is_err() {
                    return;
                }
                let first_time = {
                    let mut s = seen.lock().expect("lock");
                    s.requests.push((method.clone(), path.clone()));
                    s.times(&method, &path) == 1
                };
                if path.starts_with("/flaky") && first_time {
                    // The tunnel dies with the request in it, before any answer.
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
                    path.len()
                );
                if r.get_mut().write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn request(method: Method, path: &str, body: &'static str) -> Request<ReqBody> {
    let body: ReqBody = if body.is_empty() {
        Empty::new()
            .map_err(|never: Infallible| -> BoxError { match never {} })
            .boxed_unsync()
    } else {
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never: Infallible| -> BoxError { match never {} })
            .boxed_unsync()
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().expect("path");
    req.headers_mut().insert(
        http::header::HOST,
        http::HeaderValue::from_static("inv.internal"),
    );
    req
}

/// Sends `method path` through the pool; the response body, or the error code.
async fn send(
    pool: &TunnelPool,
    method: Method,
    path: &str,
    body: &'static str,
) -> Result<String, ErrorCode> {
    let key = TunnelKey {
        worker: "w".into(),
        service_id: "svc".into(),
        scheme: "http".into(),
        authority: "inv.internal".into(),
    };
    let ctx = BindingContext {
        account_id: "acct".into(),
        worker: "w".into(),
        binding: "API".into(),
        service_id: "svc".into(),
        request_id: "r".into(),
    };
    let resp = pool
        .send(&key, &ctx, request(method, path, body))
        .await
        .map_err(|e| e.code)?;
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_pooled_tunnel_broken_before_the_response_is_replayed_only_when_safe() {
    let (dialer, listener) = pipe_pair();
    let seen = Arc::new(Mutex::new(Seen::default()));
    tokio::spawn(serve(listener, seen.clone()));
    // Never dialled: the pipe is used instead of TCP + TLS.
    let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut door = FrontDoorConfig::new(addr, &tls);
    door.in_process = Some(dialer);
    let pool = TunnelPool::with_changes(door, None);
    let tunnels = || seen.lock().expect("lock").tunnels;
    let times = |m: &str, p: &str| seen.lock().expect("lock").times(m, p);

    // A tunnel, pooled once its response is read.
    assert_eq!(
        send(&pool, Method::GET, "/warm", "").await,
        Ok("/warm".into())
    );
    assert_eq!((tunnels(), pool.idle_count()), (1, 1));

    // GET without a body on the pooled tunnel, which breaks with the request
    // in it: replayed once, on a new tunnel.
    assert_eq!(
        send(&pool, Method::GET, "/flaky-get", "").await,
        Ok("/flaky-get".into())
    );
    assert_eq!(times("GET", "/flaky-get"), 2, "sent, then replayed once");
    assert_eq!(tunnels(), 2, "the replay went to a new tunnel");

    // DELETE is idempotent too.
    assert_eq!(
        send(&pool, Method::DELETE, "/flaky-delete", "").await,
        Ok("/flaky-delete".into())
    );
    assert_eq!((times("DELETE", "/flaky-delete"), tunnels()), (2, 3));

    // POST may have been applied by the origin: not sent again.
    assert_eq!(
        send(&pool, Method::POST, "/flaky-post", "").await,
        Err(ErrorCode::ConnectionTerminated)
    );
    assert_eq!(times("POST", "/flaky-post"), 1);

    // PUT with a body: the streamed body is gone, so not sent again either.
    assert_eq!(
        send(&pool, Method::GET, "/warm", "").await,
        Ok("/warm".into())
    );
    assert_eq!(pool.idle_count(), 1);
    assert_eq!(
        send(&pool, Method::PUT, "/flaky-put", "x").await,
        Err(ErrorCode::ConnectionTerminated)
    );
    assert_eq!(times("PUT", "/flaky-put"), 1);

    // A new (not pooled) tunnel that breaks is the answer: no retry.
    assert_eq!(pool.idle_count(), 0);
    let before = tunnels();
    assert_eq!(
        send(&pool, Method::GET, "/flaky-fresh", "").await,
        Err(ErrorCode::ConnectionTerminated)
    );
    assert_eq!((times("GET", "/flaky-fresh"), tunnels()), (1, before + 1));
}
