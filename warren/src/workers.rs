//! `warren deploy` and `warren tail`: the worker config file (`warren.json`,
//! `wrangler.json`, `wrangler.jsonc`; strict), the multipart upload of its
//! modules, and following a worker's live logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use reqwest::Method;
use serde::Deserialize;
use serde::de::IgnoredAny;
use warren_api::Envelope;
use warren_api::scripts::{BindingSpec, LimitsSpec, ScriptInfo, ScriptMetadata};
use warren_api::tail::TailLine;

use crate::client::Client;

/// Config file names looked for, in order.
pub const CONFIG_NAMES: [&str; 3] = ["warren.json", "wrangler.json", "wrangler.jsonc"];

/// The worker config file (Workers field names).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    /// Editor schema hint; accepted and ignored.
    #[allow(dead_code)]
    #[serde(rename = "$schema", default)]
    pub schema: Option<String>,
    /// Worker name.
    pub name: String,
    /// Entry module, relative to the config file.
    pub main: PathBuf,
    /// Kept with the script.
    #[serde(default)]
    pub compatibility_date: Option<String>,
    /// Plain-text vars.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// VPC service bindings.
    #[serde(default)]
    pub vpc_services: Vec<VpcBinding>,
    /// Limits.
    #[serde(default)]
    pub limits: Option<FileLimits>,
    /// One route pattern (wrangler's `route`).
    #[serde(default)]
    pub route: Option<String>,
    /// Route patterns (wrangler's `routes`).
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
}

/// `routes[]`: a pattern, or wrangler's object form. Warren has no zones, so
/// `zone_name` / `zone_id` are accepted and not used; `custom_domain: true`
/// takes a bare hostname, which serves every path of that host.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RouteEntry {
    /// `"shop.example.com/*"`.
    Pattern(String),
    /// `{ "pattern": "shop.example.com/*", "zone_name": "example.com" }`.
    Object(RouteObject),
}

/// The object form of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteObject {
    /// The pattern.
    pub pattern: String,
    /// Accepted for wrangler compatibility; not used.
    #[allow(dead_code)]
    #[serde(default)]
    pub zone_name: Option<String>,
    /// Accepted for wrangler compatibility; not used.
    #[allow(dead_code)]
    #[serde(default)]
    pub zone_id: Option<String>,
    /// A whole hostname (no path).
    #[serde(default)]
    pub custom_domain: bool,
}

impl WorkerFile {
    /// Every route pattern of `route` and `routes`, checked for the
    /// custom-domain rule (a bare hostname).
    pub fn route_patterns(&self) -> anyhow::Result<Vec<String>> {
        let mut out: Vec<String> = self.route.iter().cloned().collect();
        for (i, r) in self.routes.iter().enumerate() {
            match r {
                RouteEntry::Pattern(p) => out.push(p.clone()),
                RouteEntry::Object(o) => {
                    if o.custom_domain && o.pattern.contains(['/', '*']) {
                        anyhow::bail!(
                            "routes[{i}]: a custom domain is a bare hostname, not {:?}",
                            o.pattern
                        );
                    }
                    out.push(o.pattern.clone());
                }
            }
        }
        Ok(out)
    }
}

/// `vpc_services[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcBinding {
    /// Binding name (`env.<binding>`).
    pub binding: String,
    /// VPC service id.
    pub service_id: String,
}

/// `limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// CPU milliseconds per request.
    pub cpu_ms: Option<u64>,
}

/// Finds the config: `path` itself, or the first of [`CONFIG_NAMES`] in `path`
/// (a folder) or the current folder.
pub fn find_config(path: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match path {
        Some(p) if p.is_file() => return Ok(p.to_owned()),
        Some(p) if p.is_dir() => p.to_owned(),
        Some(p) => anyhow::bail!("{} does not exist", p.display()),
        None => PathBuf::from("."),
    };
    CONFIG_NAMES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("no {} in {}", CONFIG_NAMES.join(" / "), dir.display()))
}

/// Reads a config file; unknown keys are errors naming their path. JSONC
/// (comments, trailing commas) is accepted.
pub fn read_config(path: &Path) -> anyhow::Result<WorkerFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut de = json5::Deserializer::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        anyhow::anyhow!("{}: {at}: {}", path.display(), e.into_inner())
    })
}

/// The upload's `metadata` part.
pub fn metadata(file: &WorkerFile, main_module: &str) -> anyhow::Result<ScriptMetadata> {
    let mut bindings: Vec<BindingSpec> = file
        .vpc_services
        .iter()
        .map(|b| BindingSpec::VpcService {
            name: b.binding.clone(),
            service_id: b.service_id.clone(),
        })
        .collect();
    for (name, text) in &file.vars {
        bindings.push(BindingSpec::PlainText {
            name: name.clone(),
            text: text.clone(),
        });
    }
    Ok(ScriptMetadata {
        main_module: main_module.to_owned(),
        compatibility_date: file.compatibility_date.clone(),
        bindings,
        limits: LimitsSpec {
            cpu_ms: file.limits.as_ref().and_then(|l| l.cpu_ms),
        },
        routes: file.route_patterns()?,
        // As wrangler does: a deploy keeps the worker's secrets.
        keep_bindings: vec!["secret_text".to_owned()],
    })
}

/// Uploaded module files: (name relative to the entry's folder, bytes).
pub type Modules = Vec<(String, Vec<u8>)>;

/// The modules next to the entry: every `.js`/`.mjs`/`.wasm` file in the
/// entry's folder and below (not `node_modules`), named relative to it. A
/// `.wasm` entry is a whole component and goes alone (its folder is often a
/// build directory full of other artifacts).
pub fn collect_modules(main: &Path) -> anyhow::Result<(String, Modules)> {
    let root = main.parent().unwrap_or(Path::new("."));
    let main_name = main
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("bad entry path {}", main.display()))?
        .to_owned();
    if main_name.ends_with(".wasm") {
        let bytes = std::fs::read(main).with_context(|| {
            format!(
                "cannot read the component {} (built it yet?)",
                main.display()
            )
        })?;
        return Ok((main_name.clone(), vec![(main_name, bytes)]));
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let entry = entry?;
            let p = entry.path();
            let name = entry.file_name();
            if name == "node_modules" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if entry.file_type()?.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("js" | "mjs" | "wasm")
            ) {
                let rel = p
                    .strip_prefix(root)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, std::fs::read(&p)?));
            }
        }
    }
    if !out.iter().any(|(n, _)| *n == main_name) {
        anyhow::bail!("the entry {} does not exist", main.display());
    }
    out.sort();
    Ok((main_name, out))
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

/// A worker ready to upload: its metadata and module files.
pub struct Upload {
    /// The upload's `metadata` part.
    pub metadata: ScriptMetadata,
    /// The module files.
    pub modules: Modules,
}

impl Upload {
    /// SHA-256 over everything uploaded: equal hashes deploy the same worker.
    pub fn hash(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let meta = serde_json::to_vec(&self.metadata).unwrap_or_default();
        h.update((meta.len() as u64).to_le_bytes());
        h.update(&meta);
        for (name, bytes) in &self.modules {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        h.finalize().into()
    }
}

/// Reads the worker `file` (from `config_path`): its modules and metadata.
pub fn prepare(config_path: &Path, file: &WorkerFile) -> anyhow::Result<Upload> {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let (main, modules) = collect_modules(&base.join(&file.main))?;
    Ok(Upload {
        metadata: metadata(file, &main)?,
        modules,
    })
}

/// Uploads a prepared worker; the edge builds it before it answers.
pub async fn upload(
    client: &Client,
    file: &WorkerFile,
    upload: Upload,
) -> anyhow::Result<ScriptInfo> {
    let (ctype, body) = multipart(&upload.metadata, &upload.modules)?;
    let path = format!("workers/scripts/{}", file.name);
    client
        .request(Method::PUT, &path, Some((&ctype, body)))
        .await?
        .result
        .ok_or_else(|| anyhow::anyhow!("the API answered {path} without a result"))
}

/// Uploads the worker `file` (read from `config_path`) and prints a line per step.
pub async fn deploy(
    client: &Client,
    config_path: &Path,
    file: &WorkerFile,
) -> anyhow::Result<ScriptInfo> {
    let prepared = prepare(config_path, file)?;
    let size: usize = prepared.modules.iter().map(|(_, b)| b.len()).sum();
    println!(
        "[1/3] read {}: worker {}, {} module(s), {} bytes",
        config_path.display(),
        file.name,
        prepared.modules.len(),
        size
    );
    println!(
        "[2/3] uploading; the edge verifies {} binding(s) and builds the component",
        file.vpc_services.len()
    );
    let started = std::time::Instant::now();
    let info = upload(client, file, prepared).await?;
    println!(
        "[3/3] deployed {} (etag {}) in {:.1?}",
        file.name,
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

    #[test]
    fn jsonc_is_read_and_unknown_keys_name_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wrangler.jsonc");
        std::fs::write(
            &p,
            "{ // comment\n \"name\": \"w\", \"main\": \"src/index.js\",\n \"vpc_services\": [{\"binding\": \"API\", \"service_id\": \"s\",}],\n}",
        )
        .unwrap();
        let f = read_config(&p).unwrap();
        assert_eq!(f.vpc_services[0].binding, "API");
        std::fs::write(&p, "{\"name\": \"w\", \"main\": \"x.js\", \"vpc_services\": [{\"binding\": \"A\", \"service\": \"s\"}]}").unwrap();
        let e = read_config(&p).unwrap_err().to_string();
        assert!(e.contains("vpc_services[0]"), "{e}");
        assert!(e.contains("service"), "{e}");
    }

    #[test]
    fn metadata_carries_bindings_vars_and_limits() {
        let f = WorkerFile {
            schema: None,
            name: "w".into(),
            main: "index.js".into(),
            compatibility_date: Some("2026-11-01".into()),
            vars: BTreeMap::from([("G".into(), "hi".into())]),
            vpc_services: vec![VpcBinding {
                binding: "API".into(),
                service_id: "s".into(),
            }],
            limits: Some(FileLimits { cpu_ms: Some(20) }),
            route: Some("a.example.com/*".into()),
            routes: vec![RouteEntry::Object(RouteObject {
                pattern: "b.example.com".into(),
                zone_name: None,
                zone_id: None,
                custom_domain: true,
            })],
        };
        let m = metadata(&f, "index.js").unwrap();
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
                }
            ]
        );
        assert_eq!(m.limits.cpu_ms, Some(20));
        assert_eq!(m.routes, ["a.example.com/*", "b.example.com"]);
        assert_eq!(m.compatibility_date.as_deref(), Some("2026-11-01"));
        // The wire shape is the one the runtime reads.
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["bindings"][0]["type"], "vpc_service");
        assert_eq!(v["bindings"][1]["text"], "hi");
        let (ctype, body) = multipart(&m, &[("index.js".into(), b"x".to_vec())]).unwrap();
        let boundary = ctype.split("boundary=").nth(1).unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.starts_with(&format!("--{boundary}\r\n")), "{body}");
        assert!(body.contains(&serde_json::to_string(&m).unwrap()), "{body}");
    }

    #[test]
    fn routes_take_both_wrangler_forms() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wrangler.jsonc");
        std::fs::write(
            &p,
            r#"{ "name": "w", "main": "i.js", "routes": ["a.test/*", { "pattern": "b.test/api/*", "zone_name": "b.test" }] }"#,
        )
        .unwrap();
        let f = read_config(&p).unwrap();
        assert_eq!(f.route_patterns().unwrap(), ["a.test/*", "b.test/api/*"]);
        std::fs::write(
            &p,
            r#"{ "name": "w", "main": "i.js", "routes": [{ "pattern": "c.test/*", "custom_domain": true }] }"#,
        )
        .unwrap();
        let e = read_config(&p).unwrap().route_patterns().unwrap_err();
        assert!(e.to_string().contains("routes[0]: a custom domain"), "{e}");
    }
}
