//! Packaging, black box: the static `warren-connector` (built with musl, or
//! with glibc linked statically where the musl Rust target cannot be
//! installed, by `scripts/package.sh connector --debug`, which
//! scripts/test.sh runs before the tests) and the OCI image that
//! `scripts/package.sh image` builds FROM scratch around it, each run against
//! a live `warren serve`:
//!
//! - the binary is an x86_64 ELF that needs no dynamic loader and no shared
//!   library;
//! - started the way the systemd unit starts it (token from a file ending in a
//!   newline), and the image started the way the Kubernetes example starts it
//!   (`TUNNEL_TOKEN`, read-only root, no capabilities, a numeric non-root
//!   user), the connector registers its connections (`/ready` on its metrics
//!   port, the tunnel `healthy` in the API) and a worker's request through a
//!   VPC binding reaches an origin behind it;
//! - the image holds that one file and nothing else;
//! - the systemd units pass `systemd-analyze verify` (which does catch a bad
//!   value) and `systemd-analyze security` rates their exposure at most 2.0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use warren_testkit::origin;

mod common;
use common::{
    Kill, ShowLogs, WARREN, connector_bin, deploy, free_tcp, get, ok_json, serve_node, test_guest,
    wait_for_profile, wait_listening, warren,
};

/// The static connector scripts/package.sh built and copied to
/// `<target>/static/debug/` (or `WARREN_STATIC_CONNECTOR`).
fn static_connector() -> PathBuf {
    let path = std::env::var_os("WARREN_STATIC_CONNECTOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // WARREN is <target>/debug/warren.
            let target = Path::new(WARREN)
                .parent()
                .and_then(Path::parent)
                .expect("target directory");
            target.join("static/debug/warren-connector")
        });
    assert!(
        path.is_file(),
        "no static warren-connector at {}: build it with `scripts/package.sh connector --debug` \
         (scripts/test.sh does before the tests)",
        path.display()
    );
    path
}

/// Why the ELF image `elf` would need a dynamic loader or a shared library
/// to run, if it would; also refuses anything but a 64-bit little-endian
/// x86_64 ELF.
fn not_static(elf: &[u8]) -> Option<String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Some("not a 64-bit little-endian ELF file".into());
    }
    if u16_at(0x12) != Some(62) {
        return Some(format!(
            "not an x86_64 executable (e_machine {:?})",
            u16_at(0x12)
        ));
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Some("truncated ELF header".into());
    };
    for i in 0..usize::from(phnum) {
        let ph = phoff as usize + i * usize::from(phentsize);
        let (Some(kind), Some(offset), Some(size)) = (u32_at(ph), u64_at(ph + 8), u64_at(ph + 32))
        else {
            return Some("truncated program header".into());
        };
        const PT_DYNAMIC: u32 = 2;
        const PT_INTERP: u32 = 3;
        const DT_NEEDED: u64 = 1;
        match kind {
            PT_INTERP => {
                let interp = elf
                    .get(offset as usize..(offset + size) as usize)
                    .map(|b| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned());
                return Some(format!("asks for the dynamic loader {interp:?}"));
            }
            PT_DYNAMIC => {
                let needed = (offset..offset + size)
                    .step_by(16)
                    .filter(|&at| u64_at(at as usize) == Some(DT_NEEDED))
                    .count();
                if needed > 0 {
                    return Some(format!("needs {needed} shared libraries (DT_NEEDED)"));
                }
            }
            _ => {}
        }
    }
    None
}

#[test]
fn the_static_check_tells_a_dynamic_binary_from_a_static_one() {
    // The test's own reading of ELF must see what it claims to see: the
    // `warren` binary of this build is dynamic (glibc).
    let dynamic = std::fs::read(WARREN).expect("warren binary");
    let why = not_static(&dynamic).expect("warren is dynamically linked");
    assert!(why.contains("dynamic loader"), "{why}");
}

/// A `warren serve` on loopback, an HTTP origin, a tunnel, an http VPC
/// service for the origin through it, and the test guest deployed as worker
/// `pkg` with that service bound as `API`.
struct Edge {
    _node: Kill,
    _logs: ShowLogs,
    dir: tempfile::TempDir,
    profile: PathBuf,
    runtime: SocketAddr,
    origin: SocketAddr,
    tunnel_id: String,
    token: String,
}

impl Edge {
    async fn start() -> Edge {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("profile.json");
        let api: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
        let runtime: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
        let config = format!(
            "data_dir = \"data\"\n[api]\nlisten = \"{api}\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\
             [connect]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"127.0.0.1:0\"\n\
             [runtime]\nlisten = \"{runtime}\"\n"
        );
        let node = serve_node(dir.path(), "node.toml", &config, &profile);
        let logs = ShowLogs(dir.path().to_owned());
        wait_for_profile(&profile);
        wait_listening(api, "the API");
        wait_listening(runtime, "the runtime");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("origin listener");
        let origin = origin::serve(listener).expect("origin");

        let tunnel = ok_json(&profile, &["tunnel", "create", "pkg", "--json"]);
        let tunnel_id = tunnel["id"].as_str().expect("tunnel id").to_owned();
        let token = warren(&profile, &["tunnel", "token", &tunnel_id]);
        assert!(token.status.success(), "tunnel token");
        let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
        let port = origin.port().to_string();
        let service = ok_json(
            &profile,
            &[
                "vpc",
                "service",
                "create",
                "origin",
                "--type",
                "http",
                "--tunnel-id",
                &tunnel_id,
                "--ipv4",
                "127.0.0.1",
                "--http-port",
                &port,
                "--json",
            ],
        );
        let service_id = service["service_id"].as_str().expect("service id");

        let worker = dir.path().join("worker");
        std::fs::create_dir_all(&worker).expect("worker dir");
        std::fs::write(worker.join("worker.wasm"), test_guest()).expect("guest");
        let config = serde_json::json!({
            "name": "pkg",
            "main": "worker.wasm",
            "vpc_services": [{ "binding": "API", "service_id": service_id }],
        });
        std::fs::write(worker.join("warren.json"), config.to_string()).expect("warren.json");
        deploy(&profile, &worker, &[]);

        Edge {
            _node: node,
            _logs: logs,
            dir,
            profile,
            runtime,
            origin,
            tunnel_id,
            token,
        }
    }

    /// Waits until the connector's `/ready` at `metrics` answers 200, the
    /// tunnel is `healthy` with `ha` connections in the API, and a request of
    /// worker `pkg` through its binding comes back from the origin.
    async fn assert_connector_serves(&self, metrics: SocketAddr, ha: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready = loop {
            let ready = http_get(metrics, "/ready");
            if ready.as_ref().is_some_and(|(s, _)| *s == 200) || Instant::now() > deadline {
                break ready;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let Some((200, body)) = ready else {
            panic!("the connector's /ready at {metrics} never answered 200: {ready:?}");
        };
        let ready: Value = serde_json::from_str(&body).expect("/ready JSON");
        assert!(
            ready["readyConnections"].as_u64().is_some_and(|n| n >= 1),
            "{ready}"
        );

        let tunnel = loop {
            let t = ok_json(&self.profile, &["tunnel", "get", &self.tunnel_id, "--json"]);
            let live = t["connections"].as_array().map_or(0, Vec::len);
            if (t["status"] == "healthy" && live == ha) || Instant::now() > deadline {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(tunnel["status"], "healthy", "{tunnel}");
        assert_eq!(
            tunnel["connections"].as_array().map(Vec::len),
            Some(ha),
            "{tunnel}"
        );
        for c in tunnel["connections"].as_array().into_iter().flatten() {
            assert_eq!(c["client_version"], env!("CARGO_PKG_VERSION"), "{c}");
        }

        let (status, body) = loop {
            let (status, body) = get(
                self.runtime,
                "pkg.workers.localhost",
                "/bind?API&http://origin.internal/addr",
            )
            .await;
            if status == 200 || Instant::now() > deadline {
                break (status, body);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            (status, String::from_utf8_lossy(&body).into_owned()),
            (200, self.origin.to_string()),
            "the worker's request through its binding reaches the origin"
        );
    }
}

/// `GET path` on `addr` over HTTP/1.1: status and body, or None when nothing
/// answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_connector_needs_no_library_and_carries_a_binding_request() {
    let bin = static_connector();
    let elf = std::fs::read(&bin).expect("read the static connector");
    if let Some(why) = not_static(&elf) {
        panic!("{} is not a static binary: {why}", bin.display());
    }

    let edge = Edge::start().await;
    // As packaging/systemd/warren-connector.service runs it: the token from
    // a file (a credential), written the way `warren tunnel token > FILE`
    // writes it.
    let token_file = edge.dir.path().join("tunnel-token");
    std::fs::write(&token_file, format!("{}\n", edge.token)).expect("token file");
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let log = std::fs::File::create(edge.dir.path().join("connector.log")).expect("log");
    let _connector = Kill(
        Command::new(&bin)
            .args(["run", "--ha-connections", "2", "--grace-period", "1s"])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--metrics")
            .arg(metrics.to_string())
            .env_remove("TUNNEL_TOKEN")
            .env_remove("WARREN_TUNNEL_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the static connector starts"),
    );
    edge.assert_connector_serves(metrics, 2).await;
}

/// Runs `podman ARGS`; its output.
fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("podman {args:?} cannot run ({e}): run scripts/setup.sh"))
}

/// Runs `podman ARGS`, which must succeed; its standard output.
fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes an image (by its name) when dropped.
struct Image(String);
impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "--force", &self.0]);
    }
}

/// Removes a container (by its name) when dropped.
struct Container(String);
impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.0]);
    }
}

/// The files (not directories) under `root`, relative to it.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(root).expect("under root").to_owned());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_from_scratch_runs_the_connector_as_non_root_and_carries_a_binding_request() {
    let bin = static_connector();
    let tag = format!("localhost/warren-connector-test:{}", std::process::id());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/package.sh");
    let built = Command::new(&script)
        .args(["image", "--tag", &tag, "--binary"])
        .arg(&bin)
        .stdin(Stdio::null())
        .output()
        .expect("scripts/package.sh runs");
    let image = Image(tag.clone());
    assert!(
        built.status.success(),
        "scripts/package.sh image: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    // What the image says about itself and what it holds.
    let inspect: Value =
        serde_json::from_str(&podman_ok(&["image", "inspect", &image.0])).expect("inspect JSON");
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/warren-connector"]),
        "{config}"
    );
    assert_eq!(config["Cmd"], serde_json::json!(["run"]), "{config}");
    let root = PathBuf::from(podman_ok(&["image", "mount", &image.0]));
    let files = files_under(&root);
    let packed = std::fs::read(root.join("warren-connector"));
    podman_ok(&["image", "unmount", &image.0]);
    assert_eq!(files, vec![PathBuf::from("warren-connector")]);
    let packed = packed.expect("the image's binary");
    if let Some(why) = not_static(&packed) {
        panic!("the image's /warren-connector is not a static binary: {why}");
    }

    let edge = Edge::start().await;
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
    let name = format!("warren-connector-test-{}", std::process::id());
    let container = Container(name.clone());
    let log = std::fs::File::create(edge.dir.path().join("container.log")).expect("log");
    let token_env = format!("TUNNEL_TOKEN={}", edge.token);
    let _client = Kill(
        Command::new("podman")
            .args(["run", "--rm", "--name", &name, "--pull", "never"])
            // The edge listens on this machine's loopback.
            .args(["--network", "host"])
            // What the Kubernetes example asks of the pod.
            .args(["--read-only", "--read-only-tmpfs=false"])
            .args(["--cap-drop", "all", "--security-opt", "no-new-privileges"])
            // This sandbox: crun refuses its hybrid cgroup layout, and
            // podman's default open-files limit (1048576) is above the
            // hard limit here; runc with explicit limits runs anywhere.
            .args(["--runtime", "runc"])
            .args([
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .args(["--env", &token_env, "--env", "RUST_LOG=info"])
            .arg(&image.0)
            .args(["run", "--ha-connections", "2", "--grace-period", "1s"])
            .arg("--metrics")
            .arg(metrics.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("podman run"),
    );
    edge.assert_connector_serves(metrics, 2).await;

    // The connector in the container runs as the image's user.
    let pid = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &container.0]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|ids| ids.split_whitespace().collect::<Vec<_>>());
    assert_eq!(
        uid,
        Some(vec!["65532"; 4]),
        "real, effective, saved and fs uid"
    );
}

/// A root for `systemd-analyze --root`: the system's own unit files, the
/// binaries where the units expect them, and `units` (name, text).
fn systemd_root(units: &[(&str, String)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let system = root.path().join("etc/systemd/system");
    let bin = root.path().join("usr/local/bin");
    for d in [&system, &bin, &root.path().join("usr/lib/systemd")] {
        std::fs::create_dir_all(d).expect("dir");
    }
    let copied = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(root.path().join("usr/lib/systemd/"))
        .status()
        .expect("cp");
    assert!(copied.success(), "copying the system's unit files");
    std::fs::copy(WARREN, bin.join("warren")).expect("warren");
    std::fs::copy(connector_bin(), bin.join("warren-connector")).expect("connector");
    for (name, text) in units {
        std::fs::write(system.join(name), text).expect("unit");
    }
    root
}

/// `systemd-analyze verify` of `names` in `root`: whether it succeeded and
/// its complaints about them.
fn verify(root: &Path, names: &[&str]) -> (bool, Vec<String>) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(
            names
                .iter()
                .map(|n| root.join("etc/systemd/system").join(n)),
        )
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    let complaints = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("warren"))
        .map(str::to_owned)
        .collect();
    (out.status.success(), complaints)
}

#[test]
fn the_systemd_units_verify_clean_and_are_rated_hardened() {
    let unit = |name: &str| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../packaging/systemd")
                .join(name),
        )
        .expect("unit file")
    };
    let names = ["warren.service", "warren-connector.service"];
    let root = systemd_root(&names.map(|n| (n, unit(n))));
    let (ok, complaints) = verify(root.path(), &names);
    assert!(ok && complaints.is_empty(), "{complaints:?}");
    for name in names {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(format!("--root={}", root.path().display()))
            .arg(root.path().join("etc/systemd/system").join(name))
            .output()
            .expect("systemd-analyze security");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let level: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {name}: {text}"));
        assert!(level <= 2.0, "{name} is rated {level}: {text}");
    }

    // The check can fail: a unit with a value systemd cannot parse.
    let broken = unit("warren.service").replace("ProtectSystem=strict", "ProtectSystem=bogus");
    let root = systemd_root(&[("warren.service", broken)]);
    let (_, complaints) = verify(root.path(), &["warren.service"]);
    assert!(
        complaints.iter().any(|l| l.contains("bogus")),
        "{complaints:?}"
    );
}
