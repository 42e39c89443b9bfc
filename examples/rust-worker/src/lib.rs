//! examples/private-api's worker in Rust: asks the private inventory service
//! for its items through the `INVENTORY` VPC binding and answers a summary —
//! `{ "title": GREETING, "items": N, "total": N, "low_stock": [names] }`.
//! Vars arrive as environment variables; the binding call goes through
//! [`warren_binding`].

use serde::{Deserialize, Serialize};
use warren_binding::Binding;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Worker;

wasi::http::proxy::export!(Worker);

/// One item of the inventory's answer.
#[derive(Deserialize)]
struct Item {
    name: String,
    stock: u64,
}

/// The worker's answer.
#[derive(Serialize)]
struct Summary {
    title: String,
    items: usize,
    total: u64,
    low_stock: Vec<String>,
}

fn summarize(title: String, items: Vec<Item>) -> Summary {
    Summary {
        title,
        items: items.len(),
        total: items.iter().map(|i| i.stock).sum(),
        low_stock: items
            .into_iter()
            .filter(|i| i.stock < 5)
            .map(|i| i.name)
            .collect(),
    }
}

fn var(name: &str) -> String {
    wasi::cli::environment::get_environment()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.append(&"content-type".to_string(), &content_type.as_bytes().to_vec());
    let resp = OutgoingResponse::new(headers);
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

/// The answer: (status, content type, body).
fn answer(query: &str) -> (u16, &'static str, Vec<u8>) {
    let inventory = Binding::new("INVENTORY");
    let url = format!("http://inventory.internal/items{query}");
    let text = |status, msg: String| (status, "text/plain", format!("{msg}\n").into_bytes());
    match inventory.get_bytes(&url, 1 << 20) {
        Err(e) => {
            eprintln!("{e}");
            text(502, e.to_string())
        }
        Ok((status, _)) if !(200..300).contains(&status) => {
            text(502, format!("inventory answered {status}"))
        }
        Ok((_, body)) => match serde_json::from_slice::<Vec<Item>>(&body) {
            Err(e) => text(502, format!("inventory sent bad JSON: {e}")),
            Ok(items) => {
                println!("fetched {} items", items.len());
                let summary = summarize(var("GREETING"), items);
                match serde_json::to_vec(&summary) {
                    Ok(json) => (200, "application/json", json),
                    Err(e) => text(500, e.to_string()),
                }
            }
        },
    }
}

impl wasi::exports::http::incoming_handler::Guest for Worker {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let path = req.path_with_query().unwrap_or_default();
        let query = path.find('?').map_or("", |i| &path[i..]);
        let (status, content_type, body) = answer(query);
        respond(out, status, content_type, &body);
    }
}
