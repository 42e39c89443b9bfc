//! Worker secrets through a real `warren serve`: `warren secret put` puts a
//! secret in a JS worker's `env` (and an upload's `secret_text` binding in a
//! Wasm worker's environment); its value is in no file under the node's
//! directory (the SQLite database with its WAL, the bundles, the JS build
//! and compiled-code caches) nor in the node's log; it survives a restart and
//! a redeploy; after `warren secret delete` the worker no longer has it; the
//! API never shows a value and another account is refused.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::{
    ShowLogs, WARREN, deploy, free_tcp, get, serve_node, test_guest, wait_for_profile,
    wait_listening, warren, warren_command,
};

/// Distinctive values, searched for as bytes everywhere the node writes.
const JS_SECRET: &str = "js-secret-9c41e07d5b";
const WASM_SECRET: &str = "wasm-secret-3f8a62c1e4";

/// The node's config: fixed API and runtime ports, so the profile written at
/// the first start still reaches it after a restart.
fn config(api: SocketAddr, runtime: SocketAddr) -> String {
    format!(
        "data_dir = \"data\"\n[api]\nlisten = \"{api}\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\
         [connect]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"127.0.0.1:0\"\n\
         [runtime]\nlisten = \"{runtime}\"\n"
    )
}

/// A JS worker answering `token=<env.TOKEN> version=<env.VERSION>`, and on
/// `/keys` the names `env` lists and whether `"TOKEN" in env` (secrets are
/// read when first looked for: listing and `in` must see them too); on
/// `/frozen`, `env.TOKEN` after `Object.freeze(env)`; on `/assigned`,
/// `env.TOKEN` after the worker defined it and then looked for a name env
/// lacks (reading the secrets then must not overwrite it).
fn write_js_worker(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir.join("src")).expect("dir");
    std::fs::write(
        dir.join("src/index.js"),
        "export default { async fetch(request, env) {\n\
           if (new URL(request.url).pathname === \"/keys\") {\n\
             return new Response(`${Object.keys(env).sort().join(\",\")} in=${\"TOKEN\" in env}`);\n\
           }\n\
           if (new URL(request.url).pathname === \"/frozen\") {\n\
             Object.freeze(env);\n\
             return new Response(`frozen=${env.TOKEN ?? \"none\"}`);\n\
           }\n\
           if (new URL(request.url).pathname === \"/assigned\") {\n\
             Object.defineProperty(env, \"TOKEN\", { value: \"mine\", enumerable: true, configurable: true });\n\
             return new Response(`assigned=${env.TOKEN} ${env.NOT_SET ?? \"-\"} ${env.TOKEN}`);\n\
           }\n\
           return new Response(`token=${env.TOKEN ?? \"none\"} version=${env.VERSION}`);\n\
         } };\n",
    )
    .expect("worker");
    std::fs::write(
        dir.join("warren.json"),
        json!({ "name": "vault", "main": "src/index.js", "vars": { "VERSION": version } })
            .to_string(),
    )
    .expect("config");
}

/// `warren secret ARGS` with `stdin` piped in; (success, stdout, stderr).
fn secret_cmd(profile: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut all = vec!["secret"];
    all.extend_from_slice(args);
    let mut child = warren_command(profile, &all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warren secret");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("warren secret ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An account's way into the API.
struct Who {
    api: String,
    id: String,
    token: String,
}

impl Who {
    fn from_profile(profile: &Path) -> Who {
        let p: Value =
            serde_json::from_slice(&std::fs::read(profile).expect("profile")).expect("JSON");
        Who {
            api: p["api"]
                .as_str()
                .expect("api")
                .trim_end_matches('/')
                .to_owned(),
            id: p["account_id"].as_str().expect("account").to_owned(),
            token: p["token"].as_str().expect("token").to_owned(),
        }
    }

    /// `METHOD /client/v4/accounts/{account}/{path}` with `body`; (status, JSON).
    async fn call(
        &self,
        method: reqwest::Method,
        account: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(
                method,
                format!("{}/client/v4/accounts/{account}/{path}", self.api),
            )
            .bearer_auth(&self.token);
        if let Some((ctype, bytes)) = body {
            req = req.header("content-type", ctype).body(bytes);
        }
        let resp = req.send().await.expect("API answers");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// Every file under `dir` holding `needle`, by path.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = e.path();
            let kind = e.file_type().expect("file type");
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

/// The Wasm test guest uploaded as `name` with a `secret_text` binding.
async fn upload_guest(who: &Who, name: &str, secret: &str) -> (u16, Value) {
    let metadata = json!({
        "main_module": "worker.wasm",
        "bindings": [
            { "type": "plain_text", "name": "VERSION", "text": "1" },
            { "type": "secret_text", "name": "WASM_TOKEN", "text": secret },
        ],
    });
    let boundary = "warren-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
         Content-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"worker.wasm\"; filename=\"worker.wasm\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(test_guest());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    who.call(
        reqwest::Method::PUT,
        &who.id,
        &format!("workers/scripts/{name}"),
        Some((&format!("multipart/form-data; boundary={boundary}"), body)),
    )
    .await
}

/// GETs `host` `path` until it answers 200 `want` (a change reaches the
/// node through the store's change feed) or 30 s pass.
async fn answer(runtime: SocketAddr, host: &str, path: &str, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(runtime, host, path).await;
        let body = String::from_utf8_lossy(&body).into_owned();
        if (status, body.as_str()) == (200, want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{host}{path}: {status} {body:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_env_never_rests_in_plain_and_survives_restarts_and_redeploys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _logs = ShowLogs(dir.path().to_owned());
    let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let api: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let profile = dir.path().join("profile.json");
    let node = serve_node(dir.path(), "edge.toml", &config(api, runtime), &profile);
    wait_for_profile(&profile);
    let a = Who::from_profile(&profile);
    let host = "vault.workers.localhost";
    let worker = dir.path().join("worker");
    write_js_worker(&worker, "1");
    deploy(&profile, &worker, &[]);
    answer(runtime, host, "/", "token=none version=1").await;

    // Put: the value from stdin, one trailing newline dropped.
    let (ok, stdout, stderr) = secret_cmd(
        &profile,
        &["put", "TOKEN", "--name", "vault"],
        &format!("{JS_SECRET}\n"),
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "secret TOKEN of worker vault stored");
    answer(runtime, host, "/", &format!("token={JS_SECRET} version=1")).await;
    answer(runtime, host, "/keys", "TOKEN,VERSION in=true").await;
    answer(runtime, host, "/frozen", &format!("frozen={JS_SECRET}")).await;
    answer(runtime, host, "/assigned", "assigned=mine - mine").await;

    // The API lists names and types, never a value.
    let (ok, stdout, stderr) = secret_cmd(&profile, &["list", "--name", "vault", "--json"], "");
    assert!(ok, "{stderr}");
    let listed: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(listed, json!([{ "name": "TOKEN", "type": "secret_text" }]));
    let (status, shown) = a
        .call(
            reqwest::Method::GET,
            &a.id,
            "workers/scripts/vault/secrets/TOKEN",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        shown["result"],
        json!({ "name": "TOKEN", "type": "secret_text" })
    );
    let (_, script) = a
        .call(reqwest::Method::GET, &a.id, "workers/scripts/vault", None)
        .await;
    assert!(!script.to_string().contains(JS_SECRET), "{script}");

    // A Wasm worker gets an upload's secret_text binding in its environment,
    // and the script as the API shows it has no such binding.
    let (status, uploaded) = upload_guest(&a, "guest", WASM_SECRET).await;
    assert_eq!(status, 200, "{uploaded}");
    assert_eq!(
        uploaded["result"]["metadata"]["bindings"],
        json!([{ "type": "plain_text", "name": "VERSION", "text": "1" }])
    );
    answer(
        runtime,
        "guest.workers.localhost",
        "/env?WASM_TOKEN",
        WASM_SECRET,
    )
    .await;

    // A redeploy (wrangler's keep_bindings, as `warren deploy` sends it)
    // keeps the secret.
    write_js_worker(&worker, "2");
    deploy(&profile, &worker, &[]);
    answer(runtime, host, "/", &format!("token={JS_SECRET} version=2")).await;

    // Bad input names its field.
    let (ok, _, stderr) = secret_cmd(&profile, &["put", "9X", "--name", "vault"], "v");
    assert!(!ok);
    assert!(
        stderr.contains("name: \"9X\" is not a valid secret name"),
        "{stderr}"
    );
    let (ok, _, stderr) = secret_cmd(&profile, &["put", "VERSION", "--name", "vault"], "v");
    assert!(!ok);
    assert!(
        stderr.contains("name: VERSION is already a binding of worker vault (plain_text)"),
        "{stderr}"
    );
    let (status, big) = a
        .call(
            reqwest::Method::PUT,
            &a.id,
            "workers/scripts/vault/secrets",
            Some((
                "application/json",
                json!({ "name": "BIG", "text": "x".repeat(5121), "type": "secret_text" })
                    .to_string()
                    .into_bytes(),
            )),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(big["errors"][0]["source"]["pointer"], "/text");
    let (status, missing) = a
        .call(
            reqwest::Method::PUT,
            &a.id,
            "workers/scripts/nope/secrets",
            Some((
                "application/json",
                json!({ "name": "X", "text": "v", "type": "secret_text" })
                    .to_string()
                    .into_bytes(),
            )),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(missing["errors"][0]["message"], "worker not found");

    // Another account can neither read, put nor delete them: 403 on the
    // account's paths, and its own paths do not find the worker.
    let out = Command::new(WARREN)
        .args(["account", "create", "b", "--json", "--config"])
        .arg(dir.path().join("edge.toml"))
        .output()
        .expect("warren account create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let b = Who {
        api: a.api.clone(),
        id: v["account_id"].as_str().expect("id").to_owned(),
        token: v["token"].as_str().expect("token").to_owned(),
    };
    let put_body = || {
        Some((
            "application/json",
            json!({ "name": "TOKEN", "text": "stolen", "type": "secret_text" })
                .to_string()
                .into_bytes(),
        ))
    };
    for account in [a.id.as_str(), b.id.as_str()] {
        let want = if account == a.id { 403 } else { 404 };
        let (s, _) = b
            .call(
                reqwest::Method::GET,
                account,
                "workers/scripts/vault/secrets",
                None,
            )
            .await;
        assert_eq!(s, want, "B lists A's secrets through account {account}");
        let (s, _) = b
            .call(
                reqwest::Method::PUT,
                account,
                "workers/scripts/vault/secrets",
                put_body(),
            )
            .await;
        assert_eq!(s, want, "B puts a secret through account {account}");
        let (s, _) = b
            .call(
                reqwest::Method::DELETE,
                account,
                "workers/scripts/vault/secrets/TOKEN",
                None,
            )
            .await;
        assert_eq!(s, want, "B deletes A's secret through account {account}");
    }
    answer(runtime, host, "/", &format!("token={JS_SECRET} version=2")).await;

    // A restart opens them again from the store.
    drop(node);
    let node = serve_node(dir.path(), "edge.toml", &config(api, runtime), &profile);
    wait_listening(runtime, "the restarted runtime");
    answer(runtime, host, "/", &format!("token={JS_SECRET} version=2")).await;
    answer(
        runtime,
        "guest.workers.localhost",
        "/env?WASM_TOKEN",
        WASM_SECRET,
    )
    .await;

    // No file the node wrote holds a value: database, WAL, bundles, build
    // and compiled-code caches, logs.
    drop(node);
    for value in [JS_SECRET, WASM_SECRET] {
        assert_eq!(
            files_holding(dir.path(), value.as_bytes()),
            Vec::<String>::new(),
            "files holding {value}"
        );
    }

    // Deleted: the worker no longer has it, and the list is empty.
    let _node = serve_node(dir.path(), "edge.toml", &config(api, runtime), &profile);
    wait_listening(runtime, "the restarted runtime");
    answer(runtime, host, "/", &format!("token={JS_SECRET} version=2")).await;
    let (ok, stdout, stderr) = secret_cmd(&profile, &["delete", "TOKEN", "--name", "vault"], "");
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "secret TOKEN of worker vault deleted");
    answer(runtime, host, "/", "token=none version=2").await;
    answer(runtime, host, "/keys", "VERSION in=false").await;
    let (ok, stdout, _) = secret_cmd(&profile, &["list", "--name", "vault"], "");
    assert!(ok);
    assert_eq!(stdout.trim(), "worker vault has no secrets");
    let out = warren(&profile, &["secret", "delete", "TOKEN", "--name", "vault"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("secret not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
