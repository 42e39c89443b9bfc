//! `warren deploy` and `warren tail`: the upload of a bundled project (its
//! metadata and multipart body; the config and bundling are in
//! [`crate::project`]), and following a worker's live logs.

use std::path::Path;

use bytes::Bytes;
use reqwest::Method;
use serde::de::IgnoredAny;
use serde_json::Value;
use warren_api::Envelope;
use warren_api::scripts::{BindingSpec, LimitsSpec, ScriptInfo, ScriptMetadata};
use warren_api::tail::TailLine;

use crate::client::Client;
pub use crate::project::find_config;
use crate::project::{Bundle, Project, load_project};

/// Reads the config at `path` for no environment and prints its warnings
/// (`warren dev`; `warren deploy` chooses an environment with
/// [`crate::project::load_project`]).
pub fn read_config(path: &Path) -> anyhow::Result<Project> {
    let p = load_project(path, None)?;
    print_warnings(&p);
    Ok(p)
}

/// Prints the project's config warnings to stderr.
pub fn print_warnings(project: &Project) {
    for w in &project.warnings {
        eprintln!("warning: {w}");
    }
}

/// The upload's `metadata` part.
pub fn metadata(project: &Project, main_module: &str) -> ScriptMetadata {
    let mut bindings: Vec<BindingSpec> = project
        .vpc_services
        .iter()
        .map(|b| BindingSpec::VpcService {
            name: b.binding.clone(),
            service_id: b.service_id.clone(),
        })
        .collect();
    for (name, value) in &project.vars {
        bindings.push(match value {
            Value::String(text) => BindingSpec::PlainText {
                name: name.clone(),
                text: text.clone(),
            },
            json => BindingSpec::Json {
                name: name.clone(),
                json: json.clone(),
            },
        });
    }
    ScriptMetadata {
        main_module: main_module.to_owned(),
        compatibility_date: project.compatibility_date.clone(),
        compatibility_flags: project.compatibility_flags.clone(),
        bindings,
        limits: LimitsSpec {
            cpu_ms: project.limits.as_ref().and_then(|l| l.cpu_ms),
        },
        routes: project.routes.clone(),
        // As wrangler does: a deploy keeps the worker's secrets.
        keep_bindings: vec!["secret_text".to_owned()],
    }
}

/// A `multipart/form-data` body: the metadata part, then one part per module.
pub fn multipart(
    metadata: &ScriptMetadata,
    modules: &[(String, Vec<u8>)],
) -> anyhow::Result<(String, Bytes)> {
    let metadata = serde_json::to_vec(metadata)?;
    let boundary = crate::serve::random_token("warren-");
    let mut body = Vec::new();
    let mut part = |name: &str, filename: Option<&str>, ctype: &str, bytes: &[u8]| {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let file = filename
            .map(|f| format!("; filename=\"{f}\""))
            .unwrap_or_default();
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{name}\"{file}\r\nContent-Type: {ctype}\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    };
    part("metadata", None, "application/json", &metadata);
    for (name, bytes) in modules {
        let ctype = if name.ends_with(".wasm") {
            "application/wasm"
        } else {
            "application/javascript+module"
        };
        part(name, Some(name), ctype, bytes);
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Ok((
        format!("multipart/form-data; boundary={boundary}"),
        Bytes::from(body),
    ))
}

/// Bundles `project` into `outdir` and prints what it made and how long it took.
pub fn build(project: &Project, outdir: &Path) -> anyhow::Result<Bundle> {
    let built = crate::project::bundle(project, outdir)?;
    let size: usize = built.modules.iter().map(|(_, b)| b.len()).sum();
    println!(
        "[1/3] {}{}: worker {}, bundled {} into {} ({} bytes) in {} ms",
        project.config_path.display(),
        project
            .env
            .as_ref()
            .map(|e| format!(" (env {e})"))
            .unwrap_or_default(),
        project.name,
        project.main.display(),
        built.main_module,
        size,
        built.elapsed.as_millis()
    );
    Ok(built)
}

/// SHA-256 over everything an upload sends (`metadata` and the modules of
/// `built`): equal hashes deploy the same worker.
pub fn upload_hash(metadata: &ScriptMetadata, built: &Bundle) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let meta = serde_json::to_vec(metadata).unwrap_or_default();
    h.update((meta.len() as u64).to_le_bytes());
    h.update(&meta);
    for (name, bytes) in &built.modules {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().into()
}

/// Uploads `built` as worker `name` with `metadata` (the edge builds it
/// before it answers); a build error the edge reports against a line of the
/// bundle is shown with its source position too.
pub async fn upload_quiet(
    client: &Client,
    name: &str,
    metadata: &ScriptMetadata,
    built: &Bundle,
) -> anyhow::Result<ScriptInfo> {
    let (ctype, body) = multipart(metadata, &built.modules)?;
    let path = format!("workers/scripts/{name}");
    client
        .request(Method::PUT, &path, Some((&ctype, body)))
        .await
        .map_err(|e| match &built.source_map {
            Some(map) => anyhow::anyhow!("{}", map.annotate(&format!("{e:#}"), &built.main_module)),
            None => e,
        })?
        .result
        .ok_or_else(|| anyhow::anyhow!("the API answered {path} without a result"))
}

/// [`upload_quiet`], printing a line per step.
pub async fn upload(
    client: &Client,
    project: &Project,
    built: &Bundle,
) -> anyhow::Result<ScriptInfo> {
    println!(
        "[2/3] uploading; the edge verifies {} binding(s) and builds the component",
        project.vpc_services.len()
    );
    let started = std::time::Instant::now();
    let meta = metadata(project, &built.main_module);
    let info = upload_quiet(client, &project.name, &meta, built).await?;
    println!(
        "[3/3] deployed {} (etag {}) in {:.1?}",
        project.name,
        info.etag.get(..12).unwrap_or("?"),
        started.elapsed()
    );
    Ok(info)
}

/// Prints one tail line (`pretty`) or the line as it came (`json`).
pub fn print_event(line: &str, json_format: bool) {
    if json_format {
        println!("{line}");
        return;
    }
    let Ok(line) = serde_json::from_str::<TailLine>(line) else {
        return;
    };
    let ev = match line {
        TailLine::Hello(_) => {
            println!("connected; waiting for requests (Ctrl-C to stop)");
            return;
        }
        TailLine::Closed(c) => {
            println!("tail closed: {}", c.closed.replace('_', " "));
            return;
        }
        TailLine::Event(ev) => ev,
    };
    println!(
        "{} {} → {} {} ({} ms, cpu {} ms) rid={}",
        ev.request.method,
        ev.request.url,
        ev.status,
        ev.outcome,
        ev.wall_ms,
        ev.cpu_ms,
        ev.request_id,
    );
    for l in &ev.logs {
        println!("  ({}) {}", l.level, l.message);
    }
    for e in &ev.exceptions {
        println!("  (exception) {e}");
    }
}

/// Follows `worker`'s live logs until the stream ends.
pub async fn tail(client: &Client, worker: &str, json_format: bool) -> anyhow::Result<()> {
    let resp = client
        .send(Method::GET, &format!("workers/scripts/{worker}/tail"), None)
        .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<Envelope<IgnoredAny>>(&body)
            .ok()
            .and_then(|e| e.errors.into_iter().next())
            .map_or_else(|| "tail refused".to_owned(), |e| e.message);
        anyhow::bail!("{message} ({status})");
    }
    let mut resp = resp;
    let mut buf = Vec::new();
    while let Some(data) = resp
        .chunk()
        .await
        .map_err(|e| anyhow::anyhow!("the tail broke off: {e}"))?
    {
        buf.extend_from_slice(&data);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            print_event(String::from_utf8_lossy(&line).trim(), json_format);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::config::{FileLimits, VpcBinding};

    #[test]
    fn metadata_carries_bindings_vars_json_vars_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wrangler.toml");
        std::fs::write(
            &p,
            "name = \"w\"\nmain = \"index.js\"\ncompatibility_date = \"2026-11-01\"\n\
             compatibility_flags = [\"nodejs_compat\"]\nroute = \"a.example.com/*\"\n\
             routes = [{ pattern = \"b.example.com\", custom_domain = true }]\n\
             limits = { cpu_ms = 20 }\n[vars]\nG = \"hi\"\nJ = { a = [1, true] }\n\
             [[vpc_services]]\nbinding = \"API\"\nservice_id = \"s\"\n",
        )
        .unwrap();
        let project = load_project(&p, None).unwrap();
        assert_eq!(
            project.vpc_services,
            [VpcBinding {
                binding: "API".into(),
                service_id: "s".into(),
                remote: None
            }]
        );
        assert_eq!(project.limits, Some(FileLimits { cpu_ms: Some(20) }));
        let m = metadata(&project, "index.js");
        assert_eq!(
            m.bindings,
            [
                BindingSpec::VpcService {
                    name: "API".into(),
                    service_id: "s".into()
                },
                BindingSpec::PlainText {
                    name: "G".into(),
                    text: "hi".into()
                },
                BindingSpec::Json {
                    name: "J".into(),
                    json: serde_json::json!({ "a": [1, true] })
                }
            ]
        );
        assert_eq!(m.limits.cpu_ms, Some(20));
        assert_eq!(m.routes, ["a.example.com/*", "b.example.com"]);
        assert_eq!(m.compatibility_date.as_deref(), Some("2026-11-01"));
        assert_eq!(m.compatibility_flags, ["nodejs_compat"]);
        // The wire shape is Cloudflare's, the one the runtime reads.
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["bindings"][0]["type"], "vpc_service");
        assert_eq!(v["bindings"][1]["text"], "hi");
        assert_eq!(
            v["bindings"][2],
            serde_json::json!({ "type": "json", "name": "J", "json": { "a": [1, true] } })
        );
        let (ctype, body) = multipart(&m, &[("index.js".into(), b"x".to_vec())]).unwrap();
        let boundary = ctype.split("boundary=").nth(1).unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.starts_with(&format!("--{boundary}\r\n")), "{body}");
        assert!(body.contains(&serde_json::to_string(&m).unwrap()), "{body}");
    }
}
