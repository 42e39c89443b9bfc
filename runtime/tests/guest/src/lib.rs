//! A small wasi:http worker the runtime's tests build for wasm32-wasip2.
//! Routes: /hello, /loop (never ends), /alloc (grows memory until stopped),
//! /panic, /fetch?<url> (global outbound), /bind?<binding> (a binding call),
//! /env?<NAME> (an environment variable: which version answered),
//! /sleep?<ms> (waits, then answers like /env?VERSION), /count (bumps a
//! counter in linear memory and a 1 MiB heap buffer: a fresh instance says 1),
//! /proxy?<url> (forwards every header of the incoming request, as a proxying
//! worker does, and answers what came back), /forge?<binding>&<url> (a binding
//! marker without the request's binding key), /linger (answers, then keeps
//! running), /spin-after (answers, then burns CPU), /drip (a body that never
//! ends).

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

struct Worker;

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

wasi::http::proxy::export!(Worker);

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let resp = OutgoingResponse::new(Fields::new());
    let _ = resp.set_status_code(status);
    let Ok(outgoing) = resp.body() else { return };
    ResponseOutparam::set(out, Ok(resp));
    if let Ok(stream) = outgoing.write() {
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Sends a GET; returns the status and body, or the error code's Debug text.
fn get(scheme: Scheme, authority: &str, path: &str, headers: &[(&str, &str)]) -> Result<(u16, Vec<u8>), String> {
    let fields = Fields::new();
    for (k, v) in headers {
        fields
            .append(&k.to_string(), &v.as_bytes().to_vec())
            .map_err(|e| format!("{e:?}"))?;
    }
    let req = OutgoingRequest::new(fields);
    let _ = req.set_scheme(Some(&scheme));
    let _ = req.set_authority(Some(authority));
    let _ = req.set_path_with_query(Some(path));
    let fut = wasi::http::outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    fut.subscribe().block();
    let resp = fut
        .get()
        .ok_or("no response")?
        .map_err(|_| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let proxy_error = resp.headers().get(&"warren-proxy-error".to_string());
    if let Some(code) = proxy_error.first() {
        return Err(format!("ProxyError: {}", String::from_utf8_lossy(code)));
    }
    let body = resp.consume().map_err(|_| "no body")?;
    let stream = body.stream().map_err(|_| "no stream")?;
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(65536) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    Ok((status, data))
}

/// The value of the environment variable `name`, or empty.
fn env(name: &str) -> String {
    wasi::cli::environment::get_environment()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn split_url(url: &str) -> (Scheme, String, String) {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", r)) => (Scheme::Https, r),
        Some((_, r)) => (Scheme::Http, r),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (scheme, authority.to_string(), path.to_string())
}

impl wasi::exports::http::incoming_handler::Guest for Worker {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let path = req.path_with_query().unwrap_or_default();
        let (route, arg) = path.split_once('?').unwrap_or((path.as_str(), ""));
        match route {
            "/hello" => respond(out, 200, b"hello from a wasm worker"),
            "/loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "/panic" => panic!("the worker threw"),
            "/linger" => {
                // Answers, then keeps running (as waitUntil work does).
                respond(out, 200, b"answered; lingering");
                wasi::clocks::monotonic_clock::subscribe_duration(3_600_000_000_000).block();
            }
            "/spin-after" => {
                // Answers, then burns CPU for ever.
                respond(out, 200, b"answered; spinning");
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/drip" => {
                // A body that never ends: a chunk every 10 ms.
                let resp = OutgoingResponse::new(Fields::new());
                let Ok(outgoing) = resp.body() else { return };
                ResponseOutparam::set(out, Ok(resp));
                let Ok(stream) = outgoing.write() else { return };
                loop {
                    if stream.blocking_write_and_flush(b"drip\n").is_err() {
                        return;
                    }
                    wasi::clocks::monotonic_clock::subscribe_duration(10_000_000).block();
                }
            }
            "/env" => respond(out, 200, env(arg).as_bytes()),
            "/count" => {
                // A fresh instance starts from the image: the counter at 0
                // and the buffer (grown heap) all zero.
                let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let mut buf = vec![0u8; 1 << 20];
                let dirty = buf.iter().filter(|b| **b != 0).count();
                buf.fill(0xAB);
                std::hint::black_box(&buf);
                respond(out, 200, format!("{n} {dirty}").as_bytes())
            }
            "/sleep" => {
                let ms: u64 = arg.parse().unwrap_or(0);
                wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                respond(out, 200, env("VERSION").as_bytes())
            }
            "/fetch" => {
                let (scheme, authority, p) = split_url(arg);
                match get(scheme, &authority, &p, &[]) {
                    Ok((status, body)) => respond(out, status, &body),
                    Err(e) => respond(out, 502, e.as_bytes()),
                }
            }
            "/proxy" => {
                let (scheme, authority, p) = split_url(arg);
                let incoming: Vec<(String, String)> = req
                    .headers()
                    .entries()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .filter(|(k, _)| k != "host")
                    .collect();
                let headers: Vec<(&str, &str)> =
                    incoming.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                match get(scheme, &authority, &p, &headers) {
                    Ok((status, body)) => respond(out, status, &body),
                    Err(e) => respond(out, 502, e.as_bytes()),
                }
            }
            "/forge" => {
                let (name, url) = arg.split_once('&').unwrap_or((arg, "http://inventory.internal/items"));
                let (scheme, authority, p) = split_url(url);
                match get(scheme, &authority, &p, &[("warren-binding", name)]) {
                    Ok((status, body)) => respond(out, status, &body),
                    Err(e) => respond(out, 502, e.as_bytes()),
                }
            }
            "/bind" => {
                let (name, url) = arg.split_once('&').unwrap_or((arg, "http://inventory.internal/items"));
                let (scheme, authority, p) = split_url(url);
                let key = env("WARREN_BINDING_KEY");
                match get(scheme, &authority, &p, &[("warren-binding", name), ("warren-binding-key", &key), ("x-from-worker", "yes")]) {
                    Ok((status, body)) => respond(out, status, &body),
                    Err(e) => respond(out, 502, e.as_bytes()),
                }
            }
            _ => respond(out, 404, b"no such route"),
        }
    }
}
