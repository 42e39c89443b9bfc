//! A wrangler project, unchanged (`wrangler-project/`: wrangler.toml,
//! TypeScript, hono from npm, `[env.staging]`), deployed with `warren deploy`
//! to a real `warren serve`, and run by `warren dev`: bundled by esbuild, built by ComponentizeJS,
//! answering exactly as the same bundle does under workerd (the answers
//! below were recorded from workerd 2026-11-17, the version wrangler 4.164
//! runs). Bad projects fail on the deploying machine naming file:line:column
//! or the import.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{Kill, ShowLogs, WARREN, free_tcp, start_serve, warren};

/// The test project, with its `node_modules` (`npm ci`, which
/// scripts/setup.sh runs).
fn project() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wrangler-project");
    assert!(
        dir.join("node_modules/hono/package.json").is_file(),
        "run scripts/setup.sh (npm ci in {})",
        dir.display()
    );
    dir
}

/// A copy of the test project in `to` (sharing its `node_modules`) with
/// `src/index.ts` replaced by `index`.
fn variant(to: &Path, index: &str) -> PathBuf {
    let from = project();
    std::fs::create_dir_all(to.join("src")).expect("dir");
    for f in ["wrangler.toml", "package.json", "tsconfig.json"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
    std::os::unix::fs::symlink(from.join("node_modules"), to.join("node_modules"))
        .expect("symlink");
    std::fs::write(to.join("src/index.ts"), index).expect("index.ts");
    to.to_owned()
}

/// One HTTP/1.1 exchange with the runtime: (status, headers lowercased, body).
fn http(
    runtime: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = std::net::TcpStream::connect(runtime).expect("runtime");
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("request");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("answer");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        unchunk(body)
    } else {
        body.to_owned()
    };
    (status, headers, body)
}

fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `warren deploy ARGS` with `profile`: (success, stdout, stderr).
fn deploy(profile: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    let out = warren(profile, &all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_wrangler_project_deploys_unchanged_and_answers_as_under_workerd() {
    let project = project();
    let dir = tempfile::tempdir().expect("tempdir");
    let _logs = ShowLogs(dir.path().to_owned());
    let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let api: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let served = start_serve(
        Command::new(WARREN),
        dir.path(),
        &format!(
            "data_dir = \"data\"\n[parts]\ntunnel = false\nconnect = false\nbinding = false\n\
             [api]\nlisten = \"{api}\"\n[runtime]\nlisten = \"{runtime}\"\n"
        ),
    );
    let profile = served.profile.clone();

    let (ok, out, err) = deploy(&profile, &[project.to_str().expect("path")]);
    assert!(ok, "{out}\n{err}");
    // observability is accepted without a warning; nodejs_compat too.
    assert!(!err.contains("warning"), "{err}");
    assert!(
        out.contains("worker wrangler-project, bundled src/index.ts into index.js ("),
        "{out}"
    );
    assert!(out.contains(" ms\n"), "the bundle time: {out}");

    let host = "wrangler-project.workers.localhost";
    let get = |path: &str| http(runtime, "GET", host, path, &[], "");
    let (s, h, b) = get("/");
    assert_eq!((s, b.as_str()), (200, "hello from production"));
    assert_eq!(header(&h, "content-type"), Some("text/plain;charset=UTF-8"));
    let (s, h, b) = get("/api/items");
    assert_eq!(
        (s, b.as_str()),
        (
            200,
            r#"{"items":[{"id":1,"name":"widget"},{"id":2,"name":"gadget"}]}"#
        )
    );
    assert_eq!(header(&h, "content-type"), Some("application/json"));
    assert_eq!(header(&h, "vary"), Some("Origin"));
    assert_eq!(get("/api/items/2").2, r#"{"id":2,"name":"gadget"}"#);
    let (s, h, b) = get("/api/items/9");
    assert_eq!((s, b.as_str()), (404, r#"{"error":"no item 9"}"#));
    assert_eq!(header(&h, "content-type"), Some("application/json"));
    let (s, h, b) = get("/nope");
    assert_eq!((s, b.as_str()), (404, "404 Not Found"));
    assert_eq!(
        header(&h, "content-type"),
        Some("text/plain; charset=UTF-8")
    );
    // A JSON var is the parsed value in env. (workerd keeps the config's key
    // order, {"search":true,"max_items":3}; Warren's keys come sorted.)
    assert_eq!(
        get("/api/env").2,
        r#"{"greeting":"hello from production","features":{"max_items":3,"search":true}}"#
    );
    // CORS: the preflight answers 204 with hono/cors's headers.
    let (s, h, b) = http(
        runtime,
        "OPTIONS",
        host,
        "/api/items",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        "",
    );
    assert_eq!((s, b.as_str()), (204, ""));
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(header(&h, "access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(
        header(&h, "access-control-allow-headers"),
        Some("content-type")
    );
    assert_eq!(
        header(&h, "vary"),
        Some("Origin, Access-Control-Request-Headers")
    );
    let (_, h, _) = http(
        runtime,
        "GET",
        host,
        "/api/items",
        &[("origin", "https://app.example.com")],
        "",
    );
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let (s, _, b) = http(
        runtime,
        "POST",
        host,
        "/api/echo",
        &[("content-type", "application/json")],
        r#"{"a":1}"#,
    );
    assert_eq!((s, b.as_str()), (201, r#"{"got":{"a":1}}"#));

    // --env staging: that env's name and vars, not the top level's.
    let (ok, out, err) = deploy(
        &profile,
        &[project.to_str().expect("path"), "--env", "staging"],
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("(env staging): worker wrangler-project-stg,"),
        "{out}"
    );
    let stg = "wrangler-project-stg.workers.localhost";
    assert_eq!(
        http(runtime, "GET", stg, "/", &[], "").2,
        "hello from staging"
    );
    assert_eq!(
        http(runtime, "GET", stg, "/api/env", &[], "").2,
        r#"{"greeting":"hello from staging","features":null}"#
    );
    // The production worker is untouched.
    assert_eq!(get("/").2, "hello from production");
    let (ok, _, err) = deploy(
        &profile,
        &[project.to_str().expect("path"), "--env", "prod"],
    );
    assert!(!ok);
    assert!(
        err.contains("wrangler.toml: no environment \"prod\" (--env prod); it has: staging"),
        "{err}"
    );

    // A type error is not an error (esbuild strips types, as wrangler).
    let typed = variant(
        &dir.path().join("typed"),
        "const n: number = \"not a number\";\nexport default { fetch: () => new Response(`typed ${n}`) };\n",
    );
    let (ok, out, err) = deploy(&profile, &[typed.to_str().expect("path")]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(get("/").2, "typed not a number");

    // Top-level code that throws: the edge's build error names the bundle's
    // line, and the deploy shows the source line it came from.
    let throws = variant(
        &dir.path().join("throws"),
        "const a = 1;\n\nthrow new Error(\"boom at load\");\nexport default { fetch: () => new Response(String(a)) };\n",
    );
    let (ok, out, err) = deploy(&profile, &[throws.to_str().expect("path")]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("index.js:6:7 (src/index.ts:3:7) Error: boom at load"),
        "{err}"
    );
}

#[test]
fn bad_projects_fail_on_the_deploying_machine_naming_the_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No edge at all: these fail while bundling, before any upload.
    let profile = dir.path().join("no-profile.json");
    let cases: &[(&str, &str, &str)] = &[
        (
            "syntax",
            "export default {\n  fetch() { return new Response(\"x\" }\n};\n",
            "src/index.ts:2:37: Expected \")\" but found \"}\"",
        ),
        (
            "nodefs",
            "import { readFileSync } from \"node:fs\";\nexport default { fetch: () => new Response(String(readFileSync)) };\n",
            "src/index.ts:1:30: import \"node:fs\": Warren provides no node built-in modules (nodejs_compat is accepted, not implemented)",
        ),
        (
            "sockets",
            "import { connect } from \"cloudflare:sockets\";\nexport default { fetch: () => new Response(String(connect)) };\n",
            "src/index.ts:1:25: import \"cloudflare:sockets\": Warren does not provide this Cloudflare module",
        ),
        (
            "missing",
            "import pad from \"left-pad\";\nexport default { fetch: () => new Response(pad(\"x\", 3)) };\n",
            "src/index.ts:1:17: import \"left-pad\": not found (a missing package? run npm install; a relative path needs ./)",
        ),
    ];
    for (name, index, want) in cases {
        let p = variant(&dir.path().join(name), index);
        let (ok, out, err) = deploy(&profile, &[p.to_str().expect("path"), "--dry-run"]);
        assert!(!ok, "{name}: {out}");
        assert!(err.contains(want), "{name}: {err}");
        assert!(
            err.contains("bundling src/index.ts failed:"),
            "{name}: {err}"
        );
    }
    // An unknown key of the config is an error naming its path.
    let p = variant(&dir.path().join("badkey"), "export default {};\n");
    let toml = std::fs::read_to_string(p.join("wrangler.toml")).expect("toml");
    std::fs::write(
        p.join("wrangler.toml"),
        toml.replace("[env.staging.vars]", "[env.staging.varz]"),
    )
    .expect("toml");
    let (ok, _, err) = deploy(&profile, &[p.to_str().expect("path"), "--dry-run"]);
    assert!(!ok);
    assert!(
        err.contains("wrangler.toml: env.staging.varz: unknown field `varz` (not a wrangler configuration key)"),
        "{err}"
    );
}

#[test]
fn a_dry_run_writes_the_bundle_and_its_source_map_and_uploads_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("dist");
    // A profile that does not exist: a dry run needs no edge.
    let profile = dir.path().join("no-profile.json");
    let (ok, out, err) = deploy(
        &profile,
        &[
            project().to_str().expect("path"),
            "--dry-run",
            "--outdir",
            out_dir.to_str().expect("path"),
        ],
    );
    assert!(ok, "{out}\n{err}");
    let js = std::fs::read_to_string(out_dir.join("index.js")).expect("the bundle");
    let map: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("index.js.map")).expect("the map"))
            .expect("a JSON source map");
    // One ES module with hono inside, and no import left to resolve.
    assert!(
        js.contains("// node_modules/hono/dist/hono.js"),
        "hono bundled"
    );
    assert!(
        js.contains("export {\n  index_default as default\n};"),
        "{js}"
    );
    assert!(!js.contains("from \"hono"), "no bare import left");
    assert!(js.ends_with("//# sourceMappingURL=index.js.map\n"));
    let sources: Vec<&str> = map["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        sources
            .iter()
            .any(|s| s.ends_with("wrangler-project/src/index.ts")),
        "{sources:?}"
    );
    assert!(
        out.contains(&format!(
            "dry run: wrote {}, {}; nothing uploaded",
            out_dir
                .canonicalize()
                .expect("dir")
                .join("index.js")
                .display(),
            out_dir
                .canonicalize()
                .expect("dir")
                .join("index.js.map")
                .display()
        )),
        "{out}"
    );
}

#[test]
fn warren_dev_serves_the_project_as_deploy_does() {
    let from = project();
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = variant(
        &dir.path().join("project"),
        &std::fs::read_to_string(from.join("src/index.ts")).expect("index.ts"),
    );
    let port = free_tcp();
    let mut child = Command::new(WARREN)
        .args(["dev", copy.to_str().expect("path")])
        .args([
            "--port",
            &port.to_string(),
            "--no-watch",
            "--env",
            "staging",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("warren dev");
    let stdout = child.stdout.take().expect("stdout");
    let _dev = Kill(child);
    let mut live = false;
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        eprintln!("dev| {line}");
        if line.contains("wrangler-project-stg is live at") {
            live = true;
            break;
        }
        seen.push(line);
    }
    assert!(
        live,
        "warren dev ended before the worker was live: {seen:?}"
    );

    // The same answers as the deployed worker, for the staging environment.
    let runtime: SocketAddr = ([127, 0, 0, 1], port).into();
    let host = "wrangler-project-stg.workers.localhost";
    let get = |path: &str| http(runtime, "GET", host, path, &[], "");
    assert_eq!(get("/").2, "hello from staging");
    assert_eq!(get("/api/items/2").2, r#"{"id":2,"name":"gadget"}"#);
    let (s, _, b) = get("/nope");
    assert_eq!((s, b.as_str()), (404, "404 Not Found"));
    let (s, h, _) = http(
        runtime,
        "OPTIONS",
        host,
        "/api/items",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ],
        "",
    );
    assert_eq!(s, 204);
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
}
