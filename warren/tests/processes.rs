//! A node with `[runtime] processes = 2`: two runtime processes of its own
//! share the runtime's port. Both serve a JS worker calling a private
//! service through its binding (a real connector in a network namespace); a
//! redeploy is served by both as soon as it has answered; `warren tail` and
//! `/metrics` see the requests of both; a runtime process killed is started
//! again; stopping the node stops them.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warren_testkit::dnsmasq::Dnsmasq;
use warren_testkit::netns::NetNs;
use warren_testkit::origin;
use warren_testkit::procs::{runtime_processes, state};

mod common;
use common::{
    Kill, ShowLogs, WARREN, deploy, free_tcp, get, metrics_text, sample, serve_node, service,
    tail_json, tunnel_with_connector, wait_for_profile, write_worker,
};

/// Whether a process has exited with all its threads (its files closed):
/// gone, or a zombie with no thread left but its first.
fn gone(pid: u32) -> bool {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    state(pid).is_none_or(|s| s == 'Z') && threads <= 1
}

/// CPU clock ticks (user + system) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the name: state is field 3 of stat(5), utime 14 and stime 15.
    let at = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    at(14).unwrap_or(0) + at(15).unwrap_or(0)
}

/// Sends `n` requests (each on a new connection, so the kernel spreads them
/// over the processes) and asserts each answers `want`.
async fn requests(runtime: SocketAddr, host: &str, n: usize, want: &str, what: &str) {
    for i in 0..n {
        let (status, body) = get(runtime, host, &format!("/{what}/{i}")).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!((status, body.as_ref()), (200, want), "{what}: request {i}");
    }
}

/// A JSON tail of `worker` (connected) and the URLs of its events, read
/// on a thread of their own.
fn tail_urls(profile: &Path, worker: &str) -> (Kill, std::sync::mpsc::Receiver<String>) {
    let (tail, lines) = tail_json(profile, worker);
    let (tx, urls) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let url = match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(event) => event["request"]["url"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                Err(e) => format!("a line that is not JSON ({e}): {line}"),
            };
            if tx.send(url).is_err() {
                return;
            }
        }
    });
    (tail, urls)
}

/// Polls until `cond` holds or 60 s pass.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtime_processes_serve_every_change_and_report_every_request() {
    // The private network: an origin and its DNS.
    let ns = NetNs::create().expect("netns");
    let inner: IpAddr = ns.inner_ip().into();
    origin::serve(ns.bind_tcp(&format!("{inner}:8000")).expect("bind")).expect("origin");
    let dns = Dnsmasq::start(&ns, inner, &[("inventory.internal", inner)]).expect("dnsmasq");

    let dir = tempfile::tempdir().expect("tempdir");
    let _logs = ShowLogs(dir.path().to_owned());
    let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let tunnel_port = warren_testkit::free_port_on(ns.host_ip());
    let config = format!(
        "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n[tunnel]\nlisten = \"{}:{tunnel_port}\"\n\
         [connect]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"127.0.0.1:0\"\n\
         [metrics]\nlisten = \"{metrics}\"\n\
         [runtime]\nlisten = \"{runtime}\"\nmax_cpu_ms = 60000\nprocesses = 2\n",
        ns.host_ip()
    );
    let profile = dir.path().join("profile.json");
    let node = serve_node(dir.path(), "edge.toml", &config, &profile);
    wait_for_profile(&profile);
    let node_pid = node.0.id();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&profile).expect("profile")).expect("profile JSON");
    let account = written["account_id"].as_str().expect("account").to_owned();
    let children = runtime_processes(node_pid);
    assert_eq!(children.len(), 2, "two runtime processes: {children:?}");

    // A worker calling the private service through its binding.
    let (tunnel_id, _connector) = tunnel_with_connector(&profile, &ns);
    let svc = service(
        &profile,
        &tunnel_id,
        "inventory.internal",
        &dns.addr().ip().to_string(),
        &["--http-port", "8000"],
    );
    let worker = dir.path().join("twin");
    write_worker(&worker, "twin", "1", Some(&svc));
    deploy(&profile, &worker, &[]);
    let host = "twin.workers.localhost";
    // The connector may still be registering.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(runtime, host, "/warm").await.0 != 200 {
        assert!(Instant::now() < deadline, "the binding never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Both processes serve: each spends CPU on a share of 60 requests.
    let before: Vec<u64> = children.iter().map(|p| cpu_ticks(*p)).collect();
    requests(runtime, host, 60, "1: hello from origin", "first").await;
    let after: Vec<u64> = children.iter().map(|p| cpu_ticks(*p)).collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a - b >= 5,
            "runtime process {i} served none of 60 requests (CPU ticks {b} -> {a})"
        );
    }

    // A redeploy is served by both as soon as it has answered.
    write_worker(&worker, "twin", "2", Some(&svc));
    deploy(&profile, &worker, &[]);
    requests(runtime, host, 20, "2: hello from origin", "second").await;

    // A tail sees the requests of both processes.
    let (_tail, events) = tail_urls(&profile, "twin");
    requests(runtime, host, 20, "2: hello from origin", "tailed").await;
    let mut seen = BTreeSet::new();
    while seen.len() < 20 {
        let url = events
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the tail showed only {seen:?}"));
        assert!(url.starts_with("/tailed/"), "{url}");
        seen.insert(url);
    }
    let want: BTreeSet<String> = (0..20).map(|i| format!("/tailed/{i}")).collect();
    assert_eq!(seen, want);
    // A tail is live only once both processes follow it: the request
    // right after its hello is in it, whichever process served it.
    for round in 0..10 {
        let (_tail, events) = tail_urls(&profile, "twin");
        requests(
            runtime,
            host,
            1,
            "2: hello from origin",
            &format!("at-once-{round}"),
        )
        .await;
        let url = events
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!("round {round}: the tail missed the request after its hello")
            });
        assert_eq!(url, format!("/at-once-{round}/0"));
    }

    // /metrics counts the requests of both (61+ with the warm-up ones).
    let series = format!(
        "warren_worker_requests_total{{account=\"{account}\",worker=\"twin\",outcome=\"ok\"}}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counted = sample(&metrics_text(metrics).await, &series).unwrap_or(0.0);
        if counted >= 101.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics counted {counted} of at least 101 requests"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A runtime process killed: the other serves on, and it is started again
    // (and follows the tail opened before).
    let (_across, across) = tail_urls(&profile, "twin");
    let killed = *children.first().expect("a process");
    let status = Command::new("kill")
        .args(["-KILL", &killed.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // Connections the kernel queued on its socket before it closed are
    // reset, as with any listener that dies; it closes with the last thread.
    eventually("the killed process to exit", || gone(killed)).await;
    requests(runtime, host, 20, "2: hello from origin", "one-left").await;
    eventually("a new runtime process", || {
        let now = runtime_processes(node_pid);
        now.len() == 2 && !now.contains(&killed)
    })
    .await;
    let restarted = runtime_processes(node_pid);
    let fresh = *restarted
        .iter()
        .find(|p| !children.contains(p))
        .expect("new");
    let before = cpu_ticks(fresh);
    requests(runtime, host, 60, "2: hello from origin", "restarted").await;
    assert!(
        cpu_ticks(fresh) - before >= 5,
        "the restarted runtime process serves"
    );
    let mut seen = BTreeSet::new();
    while seen.len() < 60 {
        let url = across
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the tail across the restart showed only {seen:?}"));
        if url.starts_with("/restarted/") {
            seen.insert(url);
        }
    }

    // Stopping the node stops its runtime processes.
    let status = Command::new("kill")
        .args(["-TERM", &node_pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    eventually("the node and its runtime processes to stop", || {
        std::iter::once(node_pid)
            .chain(restarted.iter().copied())
            .all(gone)
    })
    .await;
}

#[test]
fn a_runtime_process_started_by_hand_says_what_it_is_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(WARREN)
        .args(["serve", "--runtime-process"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("warren serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "error: no start message on stdin: this mode is for a node's own runtime processes"
        ),
        "{err}"
    );
}
