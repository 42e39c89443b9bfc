//! The laptop-debug path end to end, as examples/laptop-debug tells it: an
//! edge whose API is reached over HTTPS; a "laptop" (its own network
//! namespace) running a dev server on its `localhost:3000` and a connector
//! that only dials out; an operator elsewhere who logs in, creates the tunnel
//! and services, deploys a worker and follows `warren tail`. One request's id
//! is followed through every hop: the runtime's `warren-request-id` answer
//! header, the tail event, the connector's log line, and the `traceparent`
//! the dev server receives. The edge's `/metrics` count what happened.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use warren_testkit::netns::NetNs;
use warren_testkit::origin;

mod common;
use common::{
    Kill, ShowLogs, WARREN, connector_bin, free_tcp, metrics_text, ok_json, sample, start_serve,
};
use warren_testkit::wait_for;

const WORKER: &str = r#"
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const binding = url.pathname === "/down" ? env.DOWN : env.LAPTOP;
    try {
      const r = await binding.fetch(`http://localhost:3000/headers`);
      console.log(`laptop answered ${r.status}`);
      return new Response(await r.text(), { status: r.status });
    } catch (err) {
      console.error(err.message);
      return new Response(err.message, { status: 502 });
    }
  },
};
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployed_worker_debugs_the_laptops_localhost_with_one_request_id_through_every_hop() {
    // The laptop: a dev server on its own loopback, nothing else listening.
    let laptop = NetNs::create().expect("netns");
    let dev_server = laptop.bind_tcp("127.0.0.1:3000").expect("dev server");
    origin::serve(dev_server).expect("dev server");

    // The edge: HTTPS API, the tunnel port reachable from the laptop's network.
    let dir = tempfile::tempdir().expect("tempdir");
    let _logs = ShowLogs(dir.path().to_path_buf());
    let (api_port, runtime_port, metrics_port) = (free_tcp(), free_tcp(), free_tcp());
    let tunnel_port = warren_testkit::free_port_on(laptop.host_ip());
    let config = format!(
        "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\ntls = true\n\
         [tunnel]\nlisten = \"{}:{tunnel_port}\"\n[connect]\nlisten = \"127.0.0.1:0\"\n\
         [binding]\nlisten = \"127.0.0.1:0\"\n[runtime]\nlisten = \"127.0.0.1:{runtime_port}\"\nmax_cpu_ms = 60000\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        laptop.host_ip()
    );
    let edge = start_serve(Command::new(WARREN), dir.path(), &config);
    let api = format!("https://127.0.0.1:{api_port}");

    // The operator, elsewhere: logs in over HTTPS with the edge's CA.
    let desk = dir.path().join("desk");
    std::fs::create_dir_all(&desk).expect("desk");
    let profile = desk.join("profile.json");
    let ca = dir.path().join("data/api-ca.pem");
    let mut login = common::warren_command(
        &profile,
        &[
            "login",
            "--api",
            &api,
            "--ca-cert",
            ca.to_str().expect("path"),
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("login");
    login
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{}\n", edge.token).as_bytes())
        .expect("token");
    let out = login.wait_with_output().expect("login ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tunnel = ok_json(&profile, &["tunnel", "create", "laptop", "--json"]);
    let tunnel_id = tunnel["id"].as_str().expect("tunnel id").to_owned();
    let token = common::warren(&profile, &["tunnel", "token", "laptop"]);
    assert!(token.status.success(), "tunnel token by name");
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let service = |name: &str, port: &str| {
        ok_json(
            &profile,
            &[
                "vpc",
                "service",
                "create",
                name,
                "--type",
                "http",
                "--tunnel-id",
                &tunnel_id,
                "--hostname",
                "localhost",
                "--http-port",
                port,
                "--json",
            ],
        )["service_id"]
            .as_str()
            .expect("service id")
            .to_owned()
    };
    let dev = service("laptop-dev", "3000");
    let other_port = service("laptop-other", "3001");

    // On the laptop: the connector, started the cloudflared way, kept to the
    // dev server's port.
    let log_path = dir.path().join("connector.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let _connector = Kill(
        laptop
            .command(&connector_bin())
            .args(["run", "--ha-connections", "2", "--allow", "127.0.0.1:3000"])
            .env("TUNNEL_TOKEN", &token)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("connector"),
    );

    // The worker, deployed from the operator's desk.
    let project = desk.join("laptop-debug");
    std::fs::create_dir_all(&project).expect("project");
    std::fs::write(project.join("worker.js"), WORKER).expect("worker");
    let config = serde_json::json!({
        "name": "laptop-debug",
        "main": "worker.js",
        "limits": { "cpu_ms": 60000 },
        "vpc_services": [
            { "binding": "LAPTOP", "service_id": dev },
            { "binding": "DOWN", "service_id": other_port },
        ],
    });
    std::fs::write(project.join("warren.json"), config.to_string()).expect("config");
    common::deploy(&profile, &project, &[]);

    let (_tail, mut lines) = common::tail_json(&profile, "laptop-debug");

    // Both HA connections registered before the first call.
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    wait_for(
        "two tunnel connections",
        Duration::from_secs(30),
        || async {
            let live = sample(
                &metrics_text(metrics).await,
                "warren_tunnel_connections{transport=\"quic\"}",
            );
            (live == Some(2.0)).then_some(())
        },
    )
    .await;

    // One request through the worker to the laptop's localhost.
    let client = reqwest::Client::new();
    let call = |path: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{runtime_port}{path}"))
                .header("host", "laptop-debug.workers.localhost")
                .send()
                .await
                .expect("worker answers")
        }
    };
    let resp = call("/").await;
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("warren-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("warren-request-id")
        .to_owned();
    let body = resp.text().await.expect("body");
    assert_eq!(status, 200, "{body}");
    assert_eq!(request_id.len(), 32, "{request_id}");
    let seen: Value = serde_json::from_str(&body).expect("the dev server's JSON");
    // The dev server saw the URL's host and a W3C trace whose id is the request id.
    assert_eq!(seen["host"], "localhost:3000");
    let traceparent = seen["traceparent"].as_str().expect("traceparent");
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00");
    assert_eq!(fields[1], request_id, "trace id = request id");
    assert_eq!(fields[2].len(), 16);
    assert_eq!(fields[3], "01");

    // warren tail shows that request, with the worker's console.log.
    let rid = request_id.clone();
    let event = tokio::task::spawn_blocking(move || {
        for line in lines.by_ref() {
            let line = line.ok()?;
            let ev: Value = serde_json::from_str(&line).ok()?;
            if ev["requestId"] == rid.as_str() {
                return Some((ev, lines));
            }
        }
        None
    })
    .await
    .expect("tail reader");
    let (event, mut lines) = event.expect("the tail shows the request");
    assert_eq!(event["scriptName"], "laptop-debug");
    assert_eq!(event["status"], 200);
    assert_eq!(event["outcome"], "ok");
    assert_eq!(event["logs"][0]["message"], "laptop answered 200");

    // The connector logged the stream it opened for it, under the same id.
    wait_for("the connector's log line", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let id = request_id.clone();
        async move {
            text.lines()
                .any(|l| l.contains(&format!("request_id={id}")) && l.contains("stream connected"))
                .then_some(())
        }
    })
    .await;

    // A binding to a port the laptop's connector does not allow: the worker
    // sees the ProxyError, the connector logs the refusal under that request's id.
    let resp = call("/down").await;
    let down_id = resp
        .headers()
        .get("warren-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("warren-request-id")
        .to_owned();
    assert_eq!(resp.status().as_u16(), 502);
    let said = resp.text().await.expect("body");
    assert!(said.contains("destination_forbidden"), "{said}");
    let rid = down_id.clone();
    let event = tokio::task::spawn_blocking(move || {
        lines.by_ref().find_map(|line| {
            let ev: Value = serde_json::from_str(&line.ok()?).ok()?;
            (ev["requestId"] == rid.as_str()).then_some(ev)
        })
    })
    .await
    .expect("tail reader")
    .expect("the tail shows the refused call");
    assert_eq!(event["status"], 502);
    wait_for(
        "the connector's refusal line",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let id = down_id.clone();
            async move {
                text.lines()
                    .any(|l| {
                        l.contains(&format!("request_id={id}"))
                            && l.contains("stream refused")
                            && l.contains("destination_forbidden")
                    })
                    .then_some(())
            }
        },
    )
    .await;

    // The edge's metrics counted both requests, their binding calls by
    // outcome, the DNS lookup of `localhost` through the tunnel (once, then
    // from the cache) and the live connections.
    let account = &edge.account_id;
    let text = wait_for("the metrics", Duration::from_secs(10), || async {
        let text = metrics_text(metrics).await;
        let done = sample(
            &text,
            &format!(
                "warren_worker_requests_total{{account=\"{account}\",worker=\"laptop-debug\",outcome=\"ok\"}}"
            ),
        ) == Some(2.0);
        done.then_some(text)
    })
    .await;
    assert_eq!(
        sample(&text, "warren_binding_calls_total{code=\"ok\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "warren_binding_calls_total{code=\"destination_forbidden\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "warren_dns_cache_lookups_total{result=\"miss\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "warren_dns_cache_lookups_total{result=\"hit\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "warren_tunnel_connections{transport=\"quic\"}"),
        Some(2.0),
        "{text}"
    );
    let cpu = sample(
        &text,
        &format!(
            "warren_worker_cpu_milliseconds_total{{account=\"{account}\",worker=\"laptop-debug\"}}"
        ),
    )
    .expect("cpu ms");
    assert!(cpu >= 1.0, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("build_info{")
            && l.contains("type=\"warren\"")
            && l.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))),
        "{text}"
    );
    assert!(
        sample(&text, "process_cpu_seconds_total").is_some_and(|v| v > 0.0),
        "{text}"
    );
}
