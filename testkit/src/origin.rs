//! A real HTTP/1.1 origin (hyper) with a few routes tests use:
//! `GET /hello` → `hello from origin`; `GET /headers` → the request's headers
//! as a JSON object (name → value); `GET /items` → the JSON inventory of
//! `examples/private-api`; `GET /bytes/N` → N bytes, streamed;
//! `GET /slow/N` → N chunks of 64 KiB, 50 ms apart; `POST /echo` → the body back, streamed;
//! `POST /count` → the number of body bytes received (read as they stream).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, std::io::Error>;

fn full(s: &'static str) -> Body {
    Full::new(Bytes::from_static(s.as_bytes()))
        .map_err(|e| match e {})
        .boxed()
}

fn chunks(count: u64, chunk: usize, delay: Duration, total: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let block = Bytes::from(vec![b'x'; chunk]);
        let mut left = total;
        for _ in 0..count {
            if left == 0 {
                break;
            }
            let n = left.min(chunk as u64) as usize;
            if tx.send(Ok(Frame::data(block.slice(..n)))).await.is_err() {
                return;
            }
            left -= n as u64;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    });
    StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
}

async fn handle(local: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resp = match (req.method().as_str(), parts.as_slice()) {
        ("GET", ["hello"]) => Response::new(full("hello from origin")),
        ("GET", ["items"]) => {
            let mut r = Response::new(full(ITEMS));
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        ("GET", ["headers"]) => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(n, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_owned(), serde_json::Value::String(v))
                })
                .collect();
            let mut r = Response::new(
                Full::new(Bytes::from(serde_json::Value::Object(headers).to_string()))
                    .map_err(|e| match e {})
                    .boxed(),
            );
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        ("GET", ["addr"]) => Response::new(
            Full::new(Bytes::from(local.to_string()))
                .map_err(|e| match e {})
                .boxed(),
        ),
        ("GET", ["bytes", n]) => match n.parse::<u64>() {
            Ok(n) => Response::new(chunks(u64::MAX, 64 * 1024, Duration::ZERO, n)),
            Err(_) => bad(),
        },
        ("GET", ["slow", n]) => match n.parse::<u64>() {
            Ok(n) => Response::new(chunks(
                n,
                64 * 1024,
                Duration::from_millis(50),
                n * 64 * 1024,
            )),
            Err(_) => bad(),
        },
        ("POST", ["count"]) => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => return Ok(bad()),
                }
            }
            Response::new(
                Full::new(Bytes::from(n.to_string()))
                    .map_err(|e| match e {})
                    .boxed(),
            )
        }
        ("POST", ["echo"]) => Response::new(req.into_body().map_err(std::io::Error::other).boxed()),
        _ => {
            let mut r = Response::new(full("not found"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    Ok(resp)
}

/// The inventory `examples/private-api/inventory/server.mjs` serves.
pub const ITEMS: &str = r#"[{"name":"bolts","stock":120},{"name":"nuts","stock":3},{"name":"washers","stock":48},{"name":"springs","stock":1}]"#;

fn bad() -> Response<Body> {
    let mut r = Response::new(full("bad request"));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

/// Serves the test routes on `listener` (in a background task) and returns its
/// address. `GET /addr` answers with that address, to tell origins apart.
pub fn serve(listener: TcpListener) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(move |r| handle(addr, r)))
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Like [`serve`], over TLS with `config` (see [`crate::tls`]).
pub fn serve_tls(
    listener: TcpListener,
    config: std::sync::Arc<rustls::ServerConfig>,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service_fn(move |r| handle(addr, r)))
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn send_get<S>(io: S, host: &str, path: &str) -> anyhow::Result<Response<Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))?;
    Ok(sender.send_request(req).await?)
}

/// Sends `GET path` with `Host: host` over `io` (any byte stream, e.g. a tunnel
/// stream) and returns the status and the body's length, reading it as it streams.
pub async fn get_len<S>(io: S, host: &str, path: &str) -> anyhow::Result<(StatusCode, u64)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let resp = send_get(io, host, path).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
        }
    }
    Ok((status, len))
}

async fn send_post<S>(io: S, host: &str, path: &str, len: u64) -> anyhow::Result<Response<Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = Request::post(path)
        .header("host", host)
        .header("content-length", len)
        .body(chunks(u64::MAX, 64 * 1024, Duration::ZERO, len))?;
    Ok(sender.send_request(req).await?)
}

/// Sends `POST path` with a generated body of `len` bytes (streamed in 64 KiB
/// chunks) and returns the status and the answer's length, read as it streams.
pub async fn post_len<S>(
    io: S,
    host: &str,
    path: &str,
    len: u64,
) -> anyhow::Result<(StatusCode, u64)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let resp = send_post(io, host, path, len).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            got += data.len() as u64;
        }
    }
    Ok((status, got))
}

/// Like [`post_len`] but returns the answer's body (for small answers).
pub async fn post<S>(io: S, host: &str, path: &str, len: u64) -> anyhow::Result<(StatusCode, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let resp = send_post(io, host, path, len).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// Like [`get_len`] but returns the body (for small responses).
pub async fn get<S>(io: S, host: &str, path: &str) -> anyhow::Result<(StatusCode, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let resp = send_get(io, host, path).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}
