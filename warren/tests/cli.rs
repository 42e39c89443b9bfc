//! The `warren` client commands against a live `warren serve`: first start
//! writes the profile, then tunnels and VPC services are created, listed, read,
//! updated and deleted from the command line; errors print the API's words.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

struct Node {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n[connect]\nlisten = \"127.0.0.1:0\"\n[runtime]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"127.0.0.1:0\"\n";
        std::fs::write(dir.path().join("edge.toml"), config).expect("config");
        let child = Command::new(WARREN)
            .args(["serve", "--config"])
            .arg(dir.path().join("edge.toml"))
            .env("WARREN_PROFILE", dir.path().join("profile.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("warren serve starts");
        let node = Node { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !node.profile().exists() {
            assert!(
                Instant::now() < deadline,
                "no profile written by first start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    fn profile(&self) -> PathBuf {
        self.dir.path().join("profile.json")
    }

    fn warren(&self, args: &[&str]) -> Output {
        Command::new(WARREN)
            .args(args)
            .env("WARREN_PROFILE", self.profile())
            .env_remove("WARREN_API")
            .env_remove("WARREN_API_TOKEN")
            .env_remove("WARREN_ACCOUNT_ID")
            .output()
            .expect("warren runs")
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.warren(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn tunnels_and_services_from_the_command_line() {
    let node = Node::start();
    assert_eq!(mode(&node.profile()), 0o600);

    let t = node.json(&["tunnel", "create", "home-lab", "--json"]);
    let tunnel = t["id"].as_str().expect("id").to_owned();
    assert_eq!(t["status"], "inactive");
    let token_out = node.warren(&["tunnel", "token", &tunnel]);
    assert_eq!(
        String::from_utf8_lossy(&token_out.stdout).trim(),
        t["token"].as_str().expect("token")
    );
    let list = node.json(&["tunnel", "list", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1));

    let s = node.json(&[
        "vpc",
        "service",
        "create",
        "inventory",
        "--type",
        "http",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "inventory.internal",
        "--resolver-ips",
        "10.0.0.2,10.0.0.3",
        "--json",
    ]);
    let id = s["service_id"].as_str().expect("service id").to_owned();
    assert_eq!(
        s["host"]["resolver_network"]["resolver_ips"],
        serde_json::json!(["10.0.0.2", "10.0.0.3"])
    );
    assert_eq!(
        (s["http_port"].clone(), s["https_port"].clone()),
        (80.into(), 443.into())
    );

    let got = node.json(&["vpc", "service", "get", &id, "--json"]);
    assert_eq!(got, s);
    let updated = node.json(&[
        "vpc",
        "service",
        "update",
        &id,
        "--https-port",
        "8443",
        "--cert-verification-mode",
        "verify_ca",
        "--json",
    ]);
    assert_eq!(updated["https_port"], 8443);
    assert_eq!(
        updated["tls_settings"]["cert_verification_mode"],
        "verify_ca"
    );
    assert_eq!(
        updated["host"]["hostname"], "inventory.internal",
        "fields not given are kept"
    );

    // --from-json with the API's shape.
    let file = node.dir.path().join("svc.json");
    let body = serde_json::json!({ "type": "http", "name": "db-front", "host": { "ipv4": "10.1.0.5", "network": { "tunnel_id": tunnel } } });
    std::fs::write(&file, body.to_string()).expect("write");
    let from_file = node.json(&[
        "vpc",
        "service",
        "create",
        "--from-json",
        file.to_str().expect("path"),
        "--json",
    ]);
    assert_eq!(from_file["host"]["ipv4"], "10.1.0.5");
    let list = node.json(&["vpc", "service", "list", "--type", "http", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(2));

    // Errors print the API's message and field, not a stack trace.
    let bad = node.warren(&[
        "vpc",
        "service",
        "create",
        "x",
        "--tunnel-id",
        &tunnel,
        "--hostname",
        "http://bad",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("must not contain a scheme") && err.contains("/host/hostname"),
        "{err}"
    );
    let busy = node.warren(&["tunnel", "delete", &tunnel]);
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("used by 2 VPC service"));

    for sid in [id.as_str(), from_file["service_id"].as_str().expect("id")] {
        assert!(
            node.warren(&["vpc", "service", "delete", sid])
                .status
                .success()
        );
    }
    assert!(node.warren(&["tunnel", "delete", &tunnel]).status.success());
    assert_eq!(
        node.json(&["tunnel", "list", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn flags_and_environment_override_the_profile() {
    let node = Node::start();
    let out = Command::new(WARREN)
        .args(["tunnel", "list"])
        .env("WARREN_PROFILE", node.profile())
        .env("WARREN_API_TOKEN", "wrong-token")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Authentication error"));
    let out = Command::new(WARREN)
        .args(["tunnel", "list"])
        .env("WARREN_PROFILE", node.dir.path().join("none.json"))
        .env_remove("WARREN_API")
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API address"));
}

/// The words of each line of `out`'s stdout (which must be a success).
fn table(out: &Output) -> Vec<Vec<String>> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn tunnel_commands_take_a_name_and_lists_print_tables() {
    let node = Node::start();
    let t = node.json(&["tunnel", "create", "home-lab", "--json"]);
    let tunnel = t["id"].as_str().expect("id").to_owned();
    let created = t["created_at"].as_str().expect("created_at").to_owned();

    // A name stands for the id wherever a tunnel is named.
    let token_out = node.warren(&["tunnel", "token", "home-lab"]);
    assert_eq!(
        String::from_utf8_lossy(&token_out.stdout).trim(),
        t["token"].as_str().expect("token")
    );
    assert_eq!(
        node.json(&["tunnel", "get", "home-lab", "--json"])["id"],
        tunnel.as_str()
    );
    let s = node.json(&[
        "vpc",
        "service",
        "create",
        "inventory",
        "--tunnel-id",
        "home-lab",
        "--hostname",
        "inventory.internal",
        "--json",
    ]);
    assert_eq!(s["host"]["resolver_network"]["tunnel_id"], tunnel.as_str());
    let service = s["service_id"].as_str().expect("service id").to_owned();

    // Lists are tables with a header.
    assert_eq!(
        table(&node.warren(&["tunnel", "list"])),
        [
            vec!["ID", "NAME", "STATUS", "CONNECTIONS", "CREATED"],
            vec![
                tunnel.as_str(),
                "home-lab",
                "inactive",
                "0",
                created.as_str()
            ],
        ]
    );
    assert_eq!(
        table(&node.warren(&["vpc", "service", "list"])),
        [
            vec!["ID", "NAME", "TYPE", "HOST", "HTTP", "HTTPS", "TUNNEL"],
            vec![
                service.as_str(),
                "inventory",
                "http",
                "inventory.internal",
                "80",
                "443",
                tunnel.as_str()
            ],
        ]
    );

    // An unknown name is one clear line.
    let out = node.warren(&["tunnel", "get", "no-such-tunnel"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: no tunnel named \"no-such-tunnel\" in this account (nor is it a tunnel id)"
    );
    // Delete by name, once the service that uses it is gone.
    let out = node.warren(&["vpc", "service", "delete", &service]);
    assert!(out.status.success());
    let out = node.warren(&["tunnel", "delete", "home-lab"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("deleted tunnel {tunnel}")
    );
    assert_eq!(table(&node.warren(&["tunnel", "list"])).len(), 1);
}

#[test]
fn shell_completions_cover_the_commands() {
    let out = Command::new(WARREN)
        .args(["completions", "bash"])
        .output()
        .expect("warren runs");
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("_warren()"), "{script}");
    for command in ["login", "deploy", "tunnel", "completions"] {
        assert!(script.contains(command), "{command} missing");
    }
    let out = Command::new(WARREN)
        .args(["completions", "tcsh"])
        .output()
        .expect("warren runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid value 'tcsh'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_without_a_config_runs_on_the_defaults_and_tokens_name_a_dialable_edge() {
    // The defaults bind fixed ports (8787, UDP 7844, …): in a namespace of
    // its own the node collides with nothing on this machine.
    let ns = warren_testkit::netns::NetNs::create().expect("netns");
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("profile.json");
    let mut child = ns
        .command(WARREN)
        .arg("serve")
        .current_dir(dir.path())
        .env("WARREN_PROFILE", &profile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("warren serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !profile.exists() {
        assert!(Instant::now() < deadline, "no profile written");
        std::thread::sleep(Duration::from_millis(20));
    }
    let p: Value =
        serde_json::from_slice(&std::fs::read(&profile).expect("profile")).expect("JSON");
    assert_eq!(p["api"], "http://127.0.0.1:8787");
    assert!(dir.path().join("warren-data/warren.db").is_file());
    // The tunnel edge listens on 0.0.0.0:7844; the token names loopback.
    let out = ns
        .command(WARREN)
        .args(["tunnel", "create", "lab", "--json"])
        .env("WARREN_PROFILE", &profile)
        .env_remove("WARREN_API")
        .env_remove("WARREN_API_TOKEN")
        .env_remove("WARREN_ACCOUNT_ID")
        .output()
        .expect("warren runs");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let token = warren_protocol::token::TunnelToken::decode(t["token"].as_str().expect("token"))
        .expect("token decodes");
    assert_eq!(token.edges, ["127.0.0.1:7844"]);
}

#[test]
fn serve_writes_one_json_object_per_log_line_with_log_format_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "data_dir = \"data\"\n[parts]\ntunnel = false\nconnect = false\nbinding = false\nruntime = false\n[api]\nlisten = \"127.0.0.1:0\"\n";
    std::fs::write(dir.path().join("edge.toml"), config).expect("config");
    let log = dir.path().join("serve.log");
    let mut child = Command::new(WARREN)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(dir.path().join("edge.toml"))
        .env("WARREN_PROFILE", dir.path().join("profile.json"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("warren serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("API listening") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(!lines.is_empty(), "no log line");
    assert!(
        lines
            .iter()
            .all(|v| v["level"].is_string() && v["timestamp"].is_string()),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|v| v["level"] == "INFO" && v["fields"]["message"] == "API listening"),
        "{text}"
    );
}
