//! What an operator who knows cloudflared expects of the connector binary:
//! the token in `TUNNEL_TOKEN`, an environment variable for every flag, the
//! metrics port falling back over 20241–20245 when taken, `/ready` with a
//! `status`, and `build_info` and `process_*` metrics. Each runs the real
//! binary in a network namespace of its own (the default port is fixed).

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use warren_protocol::token::TunnelToken;
use warren_testkit::netns::NetNs;

const CONNECTOR: &str = env!("CARGO_BIN_EXE_warren-connector");

/// A well-formed token whose edge nobody answers (the connector keeps
/// retrying, never ready).
fn token() -> String {
    TunnelToken {
        account_id: "0123456789abcdef0123456789abcdef".into(),
        tunnel_id: "01234567-89ab-cdef-0123-456789abcdef".into(),
        secret: base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        edges: vec!["127.0.0.1:9".into()],
        ca_sha256: "00".repeat(32),
        tcp_port: None,
    }
    .encode()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on 127.0.0.1:`port` inside `ns`: the raw answer, once
/// something listens there (within 20 s).
fn get_inside(ns: &NetNs, port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    loop {
        let request = request.clone();
        let answer = ns
            .run_inside(move || -> std::io::Result<String> {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(request.as_bytes())?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })
            .expect("namespace thread");
        match answer {
            Ok(a) if !a.is_empty() => return a,
            _ if Instant::now() > deadline => panic!("nothing answered on port {port}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn the_cloudflared_token_variable_and_the_metrics_port_fallback() {
    let ns = NetNs::create().expect("netns");
    // 20241 and 20242 are taken inside the namespace.
    let held = ns
        .run_inside(|| {
            (
                std::net::TcpListener::bind("127.0.0.1:20241"),
                std::net::TcpListener::bind("127.0.0.1:20242"),
            )
        })
        .expect("namespace thread");
    let _held = (held.0.expect("bind 20241"), held.1.expect("bind 20242"));
    let _c = Killed(
        ns.command(CONNECTOR)
            .arg("run")
            .env("TUNNEL_TOKEN", token())
            .env_remove("WARREN_TUNNEL_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("connector"),
    );
    let ready = get_inside(&ns, 20243, "/ready");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    let body = ready.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(v["status"], 503);
    assert_eq!(v["readyConnections"], 0);
    assert!(
        v["connectorId"].as_str().is_some_and(|id| id.len() == 36),
        "{v}"
    );

    let metrics = get_inside(&ns, 20243, "/metrics");
    assert!(
        metrics.contains(&format!(
            "build_info{{version=\"{}\",type=\"warren-connector\",arch=\"{}\",os=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH,
            std::env::consts::OS
        )),
        "{metrics}"
    );
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_threads") >= 1.0);
    assert!(value("process_start_time_seconds") > 1.7e9);
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(
        metrics.contains("warren_connector_connections"),
        "{metrics}"
    );
}

#[test]
fn an_explicit_metrics_address_from_the_environment_gets_no_fallback() {
    let ns = NetNs::create().expect("netns");
    let held = ns
        .run_inside(|| std::net::TcpListener::bind("127.0.0.1:20250"))
        .expect("namespace thread")
        .expect("bind");
    let mut child = Killed(
        ns.command(CONNECTOR)
            .arg("run")
            .env("WARREN_TUNNEL_TOKEN", token())
            .env("WARREN_CONNECTOR_METRICS", "127.0.0.1:20250")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("connector"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the connector did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(held);
    assert!(!status.success());
    let mut stderr = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        stderr.contains("cannot listen on the metrics address 127.0.0.1:20250"),
        "{stderr}"
    );
}

#[test]
fn every_flag_of_run_reads_an_environment_variable() {
    let out = Command::new(CONNECTOR)
        .args(["run", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    // Each option's block, from its `--flag` line to the next.
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(flag) = t.strip_prefix("--") {
            let name = flag.split([' ', '<']).next().unwrap_or_default().to_owned();
            blocks.push((name, String::new()));
        }
        if let Some((_, text)) = blocks.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    let flags: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        flags.contains(&"token") && flags.contains(&"metrics"),
        "{help}"
    );
    for (name, text) in &blocks {
        if name == "help" {
            continue;
        }
        assert!(
            text.contains("[env: "),
            "--{name} has no environment variable:\n{text}"
        );
    }
    assert!(help.contains("[env: WARREN_CONNECTOR_EDGE="), "{help}");
    assert!(help.contains("TUNNEL_TOKEN"), "{help}");
}
