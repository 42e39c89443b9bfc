//! A remote edge: `warren serve` with its API over HTTPS, and the CLI
//! reaching it as an operator on another machine would — `warren login` with
//! the token on stdin, then ordinary commands through the written profile.
//! The certificate is either issued by the edge from its cluster CA (clients
//! trust that CA) or read from files; an untrusted certificate, a bad token
//! and a plain-HTTP client each get one clear answer. The CLI also goes
//! through a real HTTPS proxy (tinyproxy), and names it when it fails.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use warren_testkit::tls::TestCa;

mod common;
use common::{WARREN, free_tcp, ok_json, start_serve, warren, warren_command};

/// `warren ARGS` with profile `profile`, `stdin` on its standard input.
fn warren_with_stdin(profile: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = warren_command(profile, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warren runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("warren ends")
}

/// The one `error: …` line a failed command printed.
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "the command succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    lines[0].to_owned()
}

fn profile_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("profile")).expect("profile JSON")
}

/// A node with only the API (and its store), `api_extra` lines in `[api]`.
fn api_config(port: u16, api_extra: &str) -> String {
    format!(
        "data_dir = \"data\"\n[parts]\ntunnel = false\nconnect = false\nbinding = false\nruntime = false\n\
         [api]\nlisten = \"127.0.0.1:{port}\"\n{api_extra}\n"
    )
}

/// An API-only node in `dir` serving HTTPS with a certificate it issued: the
/// node, its port and its URL.
fn https_api(dir: &Path) -> (common::Served, u16, String) {
    let port = free_tcp();
    let served = start_serve(Command::new(WARREN), dir, &api_config(port, "tls = true"));
    (served, port, format!("https://127.0.0.1:{port}"))
}

#[test]
fn an_edge_issued_api_certificate_serves_a_cli_that_logged_in_with_its_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (served, port, url) = https_api(dir.path());
    // The first-start profile names the HTTPS URL and carries the CA, which
    // is also left for other clients in the data directory.
    let first = profile_json(&served.profile);
    assert_eq!(first["api"], url.as_str());
    let ca_file = dir.path().join("data/api-ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_file).expect("api-ca.pem");
    assert!(
        ca_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{ca_pem}"
    );
    assert_eq!(first["ca_cert"], ca_pem.as_str());
    // The admin profile works as it is.
    let tunnel = ok_json(&served.profile, &["tunnel", "create", "lab", "--json"]);
    let tunnel_id = tunnel["id"].as_str().expect("tunnel id").to_owned();

    // An operator elsewhere: no profile yet, the token on stdin.
    let operator = dir.path().join("operator.json");
    let ca_arg = ca_file.to_str().expect("path");
    let out = warren_with_stdin(
        &operator,
        &["login", "--api", &url, "--ca-cert", ca_arg],
        &format!("{}\n", served.token),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&format!(
            "Logged in to {url} as account {} (default); profile written to {}",
            served.account_id,
            operator.display()
        )),
        "{said}"
    );
    let written = profile_json(&operator);
    assert_eq!(written["api"], url.as_str());
    assert_eq!(written["account_id"], served.account_id.as_str());
    assert_eq!(written["token"], served.token.as_str());
    assert_eq!(written["ca_cert"], ca_pem.as_str());
    // Ordinary commands through that profile, over HTTPS.
    let listed = ok_json(&operator, &["tunnel", "list", "--json"]);
    let ids: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, [tunnel_id.as_str()]);

    // Without the CA the certificate is not trusted: one line saying what to do.
    let stranger = dir.path().join("stranger.json");
    let out = warren_with_stdin(
        &stranger,
        &["login", "--api", &url],
        &format!("{}\n", served.token),
    );
    let line = error_line(&out);
    assert!(
        line.starts_with(&format!(
            "error: the API at {url} presented a certificate this client does not trust"
        )) && line.ends_with(
            "pass its CA with --ca-cert FILE (an edge that issued its own certificate keeps its CA in <data_dir>/api-ca.pem)"
        ),
        "{line}"
    );
    assert!(!stranger.exists(), "a failed login writes no profile");
    // A CA that is not the edge's: the same refusal.
    let other = TestCa::new().expect("ca");
    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_file, other.cert_pem()).expect("write");
    let out = warren(
        &operator,
        &[
            "tunnel",
            "list",
            "--ca-cert",
            other_file.to_str().expect("path"),
        ],
    );
    // (The profile's CA is replaced by the flag's, not added to it.)
    let line = error_line(&out);
    assert!(
        line.contains("presented a certificate this client does not trust"),
        "{line}"
    );

    // A token the edge does not know.
    let out = warren_with_stdin(
        &stranger,
        &["login", "--api", &url, "--ca-cert", ca_arg],
        "wrn_not-a-token\n",
    );
    assert_eq!(
        error_line(&out),
        format!("error: the API at {url} does not accept this token (Authentication error)")
    );
    // No token at all.
    let out = warren_with_stdin(
        &stranger,
        &["login", "--api", &url, "--ca-cert", ca_arg],
        "",
    );
    assert_eq!(
        error_line(&out),
        "error: no API token on stdin: pipe it in, e.g. `warren login --api URL < token.txt`"
    );
    // An account the token does not act for.
    let out = warren_with_stdin(
        &stranger,
        &[
            "login",
            "--api",
            &url,
            "--ca-cert",
            ca_arg,
            "--account-id",
            "0123456789abcdef0123456789abcdef",
        ],
        &format!("{}\n", served.token),
    );
    assert_eq!(
        error_line(&out),
        "error: this token does not act for account 0123456789abcdef0123456789abcdef"
    );
    // A plain-HTTP client on the HTTPS port is told to use https://.
    let out = warren(
        &stranger,
        &[
            "tunnel",
            "list",
            "--api",
            &format!("http://127.0.0.1:{port}"),
            "--api-token",
            &served.token,
            "--account-id",
            &served.account_id,
        ],
    );
    let line = error_line(&out);
    assert!(
        line.starts_with(&format!(
            "error: the API at http://127.0.0.1:{port} did not answer HTTP"
        )) && line.ends_with("if the edge serves HTTPS ([api] tls), use an https:// address"),
        "{line}"
    );
    assert!(!stranger.exists(), "a failed login writes no profile");
}

#[test]
fn an_api_certificate_from_files_is_served_and_trusted_through_its_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new().expect("ca");
    let (chain, key) = ca.leaf_pem(&["edge.test", "127.0.0.1"]).expect("leaf");
    std::fs::write(dir.path().join("api.pem"), chain).expect("write");
    std::fs::write(dir.path().join("api.key"), key).expect("write");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("write");
    let port = free_tcp();
    let served = start_serve(
        Command::new(WARREN),
        dir.path(),
        &api_config(
            port,
            "tls = true\ntls_cert = \"api.pem\"\ntls_key = \"api.key\"",
        ),
    );
    let url = format!("https://127.0.0.1:{port}");
    let first = profile_json(&served.profile);
    assert_eq!(first["api"], url.as_str());
    // The node did not issue this certificate: no CA goes into the profile.
    assert!(first.get("ca_cert").is_none(), "{first}");
    assert!(!dir.path().join("data/api-ca.pem").exists());
    // The system does not trust the test CA; naming it (flag or environment) does.
    let line = error_line(&warren(&served.profile, &["tunnel", "list", "--json"]));
    assert!(
        line.contains("presented a certificate this client does not trust"),
        "{line}"
    );
    let ca_arg = ca_file.to_str().expect("path");
    let listed = ok_json(
        &served.profile,
        &["tunnel", "list", "--json", "--ca-cert", ca_arg],
    );
    assert_eq!(listed, Value::Array(Vec::new()));
    let out = Command::new(WARREN)
        .args(["tunnel", "create", "lab", "--json"])
        .env("WARREN_PROFILE", &served.profile)
        .env("WARREN_CA_CERT", ca_arg)
        .output()
        .expect("warren runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(created["name"], "lab");
}

#[test]
fn an_api_key_that_does_not_match_its_certificate_stops_the_node_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new().expect("ca");
    let (chain, _) = ca.leaf_pem(&["127.0.0.1"]).expect("leaf");
    let (_, other_key) = ca.leaf_pem(&["127.0.0.1"]).expect("leaf");
    std::fs::write(dir.path().join("api.pem"), chain).expect("write");
    std::fs::write(dir.path().join("api.key"), other_key).expect("write");
    std::fs::write(
        dir.path().join("edge.toml"),
        api_config(
            free_tcp(),
            "tls = true\ntls_cert = \"api.pem\"\ntls_key = \"api.key\"",
        ),
    )
    .expect("config");
    let out = Command::new(WARREN)
        .args(["serve", "--config"])
        .arg(dir.path().join("edge.toml"))
        .env("WARREN_PROFILE", dir.path().join("profile.json"))
        .output()
        .expect("warren serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("error: api.tls_cert / api.tls_key: the key does not match the certificate"),
        "{stderr}"
    );
}

/// `GET /healthz` on `api` (plain HTTP): the status and the JSON body.
fn healthz(api: std::net::SocketAddr) -> (u16, Value) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(api).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, serde_json::from_str(body).expect("JSON body"))
}

#[test]
fn healthz_answers_without_a_token_and_says_when_the_store_is_gone() {
    let mut etcd = warren_testkit::etcd::Etcd::start().expect("etcd");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_tcp();
    let config = format!(
        "{}[store]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\n",
        api_config(port, ""),
        etcd.endpoint()
    );
    let served = start_serve(Command::new(WARREN), dir.path(), &config);
    assert_eq!(
        healthz(served.api),
        (200, serde_json::json!({ "status": "ok" }))
    );
    etcd.stop();
    let (status, body) = healthz(served.api);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["store"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
}

/// Runs tinyproxy (Debian's) on `port` in the foreground, logging to `dir`;
/// `extra` config lines.
fn tinyproxy(dir: &Path, port: u16, extra: &str) -> common::Kill {
    let conf = dir.join(format!("tinyproxy-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 30\nLogLevel Connect\n\
             LogFile \"{}\"\n{extra}\n",
            dir.join(format!("tinyproxy-{port}.log")).display()
        ),
    )
    .expect("tinyproxy config");
    let proxy = common::Kill(
        Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy runs (scripts/setup.sh installs it)"),
    );
    common::wait_listening(([127, 0, 0, 1], port).into(), "tinyproxy");
    proxy
}

#[test]
fn the_cli_reaches_an_https_edge_through_a_real_proxy_and_names_it_when_it_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (served, port, url) = https_api(dir.path());
    let through = |proxy: &str| {
        warren_command(&served.profile, &["tunnel", "list", "--json"])
            .env("HTTPS_PROXY", proxy)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .expect("warren runs")
    };

    // Through the proxy: the answer, and the proxy's log shows the CONNECT.
    let proxy_port = free_tcp();
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    let proxy = tinyproxy(dir.path(), proxy_port, "");
    let out = through(&proxy_url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(listed, serde_json::json!([]));
    let log = std::fs::read_to_string(dir.path().join(format!("tinyproxy-{proxy_port}.log")))
        .expect("proxy log");
    assert!(
        log.contains(&format!("CONNECT 127.0.0.1:{port} ")),
        "the request went through the proxy: {log}"
    );

    // A proxy that refuses the port: one line naming the proxy.
    let strict_port = free_tcp();
    let strict_url = format!("http://127.0.0.1:{strict_port}");
    let _strict = tinyproxy(dir.path(), strict_port, "ConnectPort 443");
    let line = error_line(&through(&strict_url));
    assert!(
        line.starts_with(&format!(
            "error: cannot reach the API at {url} through the proxy {strict_url} ("
        )) && line.ends_with("); check the proxy, or list the API's host in NO_PROXY to go direct"),
        "{line}"
    );

    // The proxy gone: the same line, with the connection's failure.
    drop(proxy);
    let line = error_line(&through(&proxy_url));
    assert!(
        line.starts_with(&format!(
            "error: cannot reach the API at {url} through the proxy {proxy_url} ("
        )) && line.contains("refused"),
        "{line}"
    );
    // NO_PROXY naming the host: straight to the edge, proxy or not.
    let out = warren_command(&served.profile, &["tunnel", "list", "--json"])
        .env("HTTPS_PROXY", &proxy_url)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .expect("warren runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
