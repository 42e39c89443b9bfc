//! The processes a benchmark runs: `warren serve` nodes, `workerd`, the
//! connector; each is killed when its handle is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process killed (and reaped) on drop.
pub struct Kill(pub Child);

impl Kill {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback TCP port (free when asked; good enough on a quiet machine).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_port(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Resident memory of `pid` in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

/// `VmRSS` of node `pid` plus its runtime processes'.
pub fn node_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let mut total = rss_bytes(pid)?;
    for child in warren_testkit::procs::runtime_processes(pid) {
        total += rss_bytes(child).unwrap_or(0);
    }
    Ok(total)
}

/// What a process's memory is made of, in bytes (from `/proc/<pid>/status`
/// and its open memfds).
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: pages mapped now.
    pub rss: u64,
    /// `RssAnon`.
    pub anon: u64,
    /// `RssFile`.
    pub file: u64,
    /// `RssShmem` (mapped pages of memfds and other shared memory).
    pub shmem: u64,
    /// Total size of the process's memfds: memory in use whether mapped or
    /// not, which `VmRSS` misses for the unmapped part.
    pub memfds: u64,
    /// `Pss` from `smaps_rollup`: each page divided among its mappings, so a
    /// file page mapped several times (two workers with the same compiled
    /// code map one `.cwasm` twice) counts once.
    pub pss: u64,
    /// PSS of executable file mappings of compiled code (`.cwasm` files and
    /// the shared code files beside them): the workers' machine code.
    pub code_pss: u64,
}

impl Memory {
    /// Memory the process holds: its proportional set size plus the part of
    /// its memfds that is not mapped.
    pub fn footprint(&self) -> u64 {
        self.pss + self.memfds.saturating_sub(self.shmem)
    }
}

impl std::ops::Add for Memory {
    type Output = Memory;
    fn add(self, o: Memory) -> Memory {
        Memory {
            rss: self.rss + o.rss,
            anon: self.anon + o.anon,
            file: self.file + o.file,
            shmem: self.shmem + o.shmem,
            memfds: self.memfds + o.memfds,
            pss: self.pss + o.pss,
            code_pss: self.code_pss + o.code_pss,
        }
    }
}

/// The [`Memory`] of node `pid` with its runtime processes (`[runtime]
/// processes`), summed: each one's PSS already divides the pages they share.
pub fn node_memory(pid: u32) -> anyhow::Result<Memory> {
    let mut total = memory(pid)?;
    for child in warren_testkit::procs::runtime_processes(pid) {
        total = total + memory(child)?;
    }
    Ok(total)
}

/// CPU time (user and system, all threads) and minor page faults of a set of
/// processes, from `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User plus system time.
    pub cpu: Duration,
    /// Minor page faults.
    pub minor_faults: u64,
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, o: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(o.cpu),
            minor_faults: self.minor_faults.saturating_sub(o.minor_faults),
        }
    }
}

impl Usage {
    /// CPU milliseconds and minor page faults per request, over `requests`.
    pub fn per_request(&self, requests: usize) -> (f64, f64) {
        let n = requests.max(1) as f64;
        (
            self.cpu.as_secs_f64() * 1e3 / n,
            self.minor_faults as f64 / n,
        )
    }
}

/// Linux reports CPU times in `/proc` in units of `USER_HZ`, 100 per second.
const USER_HZ: u64 = 100;

/// The [`Usage`] of `pids`, summed.
pub fn usage(pids: &[u32]) -> anyhow::Result<Usage> {
    let mut total = Usage::default();
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses and may
        // hold spaces: state is field 3, minflt 10, utime 14, stime 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .with_context(|| format!("unexpected /proc/{pid}/stat"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> anyhow::Result<u64> {
            fields
                .get(n - 3)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no field {n} in /proc/{pid}/stat"))
        };
        total.minor_faults += field(10)?;
        total.cpu += Duration::from_millis((field(14)? + field(15)?) * 1000 / USER_HZ);
    }
    Ok(total)
}

/// Node `pid` and its runtime processes (`[runtime] processes`).
pub fn node_pids(pid: u32) -> Vec<u32> {
    std::iter::once(pid)
        .chain(warren_testkit::procs::runtime_processes(pid))
        .collect()
}

/// Reads `pid`'s [`Memory`].
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kib * 1024)
    };
    let mut memfds = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let is_memfd = std::fs::read_link(fd.path())
            .map(|t| t.to_string_lossy().starts_with("/memfd:"))
            .unwrap_or(false);
        if is_memfd && let Ok(m) = std::fs::metadata(fd.path()) {
            memfds += m.len();
        }
    }
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let pss = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no Pss in smaps_rollup")?
        * 1024;
    Ok(Memory {
        pss,
        code_pss: code_pss(pid)?,
        rss: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
        shmem: field("RssShmem:")?,
        memfds,
    })
}

/// The PSS of `pid`'s executable mappings of compiled worker code, from
/// `/proc/<pid>/smaps`.
fn code_pss(pid: u32) -> anyhow::Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut total = 0;
    let mut in_code = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range, perms, offset, dev, inode, path.
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            in_code = perms.contains('x')
                && (path.ends_with(".cwasm") || path.contains("/compiled/code/"));
        } else if in_code && first == "Pss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total += kib * 1024;
        }
    }
    Ok(total)
}

/// Starts workerd serving `worker.js` (from `dir`) on `port`; with `origin`,
/// the worker gets a service binding `API` to that plain HTTP server.
pub fn workerd(
    bin: &Path,
    dir: &Path,
    port: u16,
    origin: Option<SocketAddr>,
) -> anyhow::Result<Kill> {
    let (service, binding) = match origin {
        Some(o) => (
            format!("    (name = \"origin\", external = (address = \"{o}\", http = ())),\n"),
            "  bindings = [ (name = \"API\", service = \"origin\") ],\n".to_owned(),
        ),
        None => (String::new(), String::new()),
    };
    let config = format!(
        "using Workerd = import \"/workerd/workerd.capnp\";\n\
         const config :Workerd.Config = (\n  services = [\n    (name = \"main\", worker = .main),\n{service}  ],\n  \
         sockets = [ (name = \"http\", address = \"127.0.0.1:{port}\", http = (), service = \"main\") ],\n);\n\
         const main :Workerd.Worker = (\n  modules = [ (name = \"worker.js\", esModule = embed \"worker.js\") ],\n  \
         compatibilityDate = \"2025-01-01\",\n{binding});\n"
    );
    std::fs::write(dir.join("workerd.capnp"), config)?;
    let log = std::fs::File::create(dir.join("workerd.log"))?;
    let child = Command::new(bin)
        .arg("serve")
        .arg(dir.join("workerd.capnp"))
        .current_dir(dir)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Kill(child))
}

/// The last lines of `dir/warren.log` (a node's log), for error messages:
/// the benchmarks' directories are removed when they end.
pub fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("warren.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    format!(
        "{}/warren.log ends:\n{}",
        dir.display(),
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
}

/// A `warren serve` node in its own directory, with its CLI profile.
pub struct WarrenNode {
    /// The `warren` binary.
    pub bin: PathBuf,
    /// The node's process.
    pub process: Kill,
    /// The CLI profile the node wrote at first start (none for a node that
    /// joined a store set up by another, see [`NodeOptions::joins`]).
    pub profile: PathBuf,
    /// Where workers are served (`<name>.workers.localhost`).
    pub runtime: SocketAddr,
}

/// How a [`WarrenNode`] differs from a lone node on SQLite with its data in
/// `dir/data` (the default).
#[derive(Debug, Default, Clone)]
pub struct NodeOptions {
    /// The data directory (default `dir/data`). Nodes given the same one
    /// share the sealing key and the bundle directory (nodes on one store
    /// share its cluster CA anyway).
    pub data_dir: Option<PathBuf>,
    /// `node_name` (default: the host name).
    pub node_name: Option<String>,
    /// Config tables appended to `edge.toml`, e.g. a `[store]` section.
    pub extra: String,
    /// The node joins a store another node has already set up: it writes no
    /// client profile at start, so only its runtime port is waited for, and
    /// [`WarrenNode::cli`] does not work on it.
    pub joins: bool,
    /// The tunnel edge's UDP address (default `127.0.0.1:0`).
    pub tunnel: Option<SocketAddr>,
    /// `[runtime] processes` (default: the node's default, 1).
    pub processes: Option<usize>,
}

impl WarrenNode {
    /// Starts `warren serve` with its data in `dir/data`, JS tooling from
    /// `js_dir`, every listener on loopback.
    pub async fn start(bin: &Path, dir: &Path, js_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin, dir, js_dir, &NodeOptions::default()).await
    }

    /// Like [`WarrenNode::start`], changed by `options`.
    pub async fn start_with(
        bin: &Path,
        dir: &Path,
        js_dir: &Path,
        options: &NodeOptions,
    ) -> anyhow::Result<Self> {
        let runtime: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data"));
        let node_name = options
            .node_name
            .as_ref()
            .map(|n| format!("node_name = {n:?}\n"))
            .unwrap_or_default();
        let tunnel = options
            .tunnel
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let processes = options
            .processes
            .map(|n| format!("processes = {n}\n"))
            .unwrap_or_default();
        let config = format!(
            "data_dir = {:?}\n{node_name}[api]\nlisten = \"127.0.0.1:0\"\n[tunnel]\nlisten = \"{tunnel}\"\n\
             [connect]\nlisten = \"127.0.0.1:0\"\n[binding]\nlisten = \"127.0.0.1:0\"\n\
             [runtime]\nlisten = \"{runtime}\"\njs_dir = {:?}\nmax_cpu_ms = 600000\n{processes}{}",
            data_dir.display().to_string(),
            js_dir.display().to_string(),
            options.extra
        );
        std::fs::write(dir.join("edge.toml"), config)?;
        let profile = dir.join("profile.json");
        let log = std::fs::File::create(dir.join("warren.log"))?;
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(dir.join("edge.toml"))
            .env("WARREN_PROFILE", &profile)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut process = Kill(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = process.0.try_wait() {
                bail!("warren serve exited with {status}; {}", log_tail(dir));
            }
            let profiled = options.joins || profile.exists();
            if profiled && tokio::net::TcpStream::connect(runtime).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("warren serve did not start within 60 s; {}", log_tail(dir));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(WarrenNode {
            bin: bin.to_owned(),
            process,
            profile,
            runtime,
        })
    }

    /// Creates a tunnel, starts the real connector for it (with its own
    /// metrics port, so several can run side by side) and an http VPC
    /// service for `origin` (on loopback) through it; the connector and the
    /// service's id.
    pub fn private_origin(
        &self,
        connector: &Path,
        origin: SocketAddr,
    ) -> anyhow::Result<(Kill, String)> {
        self.private_origin_via(connector, origin, None)
    }

    /// Like [`WarrenNode::private_origin`], with the connector dialling only
    /// `edge` (another node's tunnel edge) when given.
    pub fn private_origin_via(
        &self,
        connector: &Path,
        origin: SocketAddr,
        edge: Option<SocketAddr>,
    ) -> anyhow::Result<(Kill, String)> {
        let tunnel: serde_json::Value =
            serde_json::from_slice(&self.cli(&["tunnel", "create", "bench", "--json"])?.stdout)?;
        let tunnel_id = tunnel["id"].as_str().context("tunnel id")?.to_owned();
        let token = String::from_utf8(self.cli(&["tunnel", "token", &tunnel_id])?.stdout)?;
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(connector);
        cmd.args(["run", "--token", token.trim(), "--metrics", &metrics]);
        if let Some(edge) = edge {
            cmd.args(["--edge", &edge.to_string()]);
        }
        let running = Kill(
            cmd.env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", connector.display()))?,
        );
        let port = origin.port().to_string();
        let ip = origin.ip().to_string();
        let service: serde_json::Value = serde_json::from_slice(
            &self
                .cli(&[
                    "vpc",
                    "service",
                    "create",
                    "inventory",
                    "--type",
                    "http",
                    "--tunnel-id",
                    &tunnel_id,
                    "--ipv4",
                    &ip,
                    "--http-port",
                    &port,
                    "--json",
                ])?
                .stdout,
        )?;
        let id = service["service_id"].as_str().context("service id")?;
        Ok((running, id.to_owned()))
    }

    /// Runs a `warren` CLI command against this node; fails with its stderr.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("WARREN_PROFILE", &self.profile)
            .env_remove("WARREN_API")
            .env_remove("WARREN_API_TOKEN")
            .env_remove("WARREN_ACCOUNT_ID")
            .output()?;
        if !out.status.success() {
            bail!("warren {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out)
    }

    /// `warren deploy DIR`.
    pub fn deploy(&self, worker_dir: &Path) -> anyhow::Result<()> {
        let dir = worker_dir.to_str().context("non-UTF-8 path")?;
        self.cli(&["deploy", dir]).map(drop)
    }

    /// Waits for the first 200 from worker `name` (within `within`).
    pub async fn first_ok(&self, name: &str, within: Duration) -> anyhow::Result<()> {
        let host = format!("{name}.workers.localhost");
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) = crate::load::get(self.runtime, &host, "/").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("worker {name} did not answer 200 within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Writes a worker folder: `warren.json` naming `name` with `extra` config
/// keys (a JSON object body, may be empty) and `worker.js` with `source`.
pub fn worker_dir(dir: &Path, name: &str, source: &str, extra: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("worker.js"), source)?;
    let sep = if extra.is_empty() { "" } else { ", " };
    std::fs::write(
        dir.join("warren.json"),
        format!("{{ \"name\": \"{name}\", \"main\": \"worker.js\"{sep}{extra} }}"),
    )?;
    Ok(())
}

/// A private origin on loopback: every path answers `inventory: 42`.
pub async fn short_origin() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"inventory: 42\n")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The median (the mean of the two middle values of an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    let n = v.len();
    match n {
        0 => Duration::ZERO,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// Milliseconds of `d`.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The binaries and JS tooling a multi-node bench runs: release builds by
/// default, `--warren`, `--connector`, `--js-dir` to override.
pub struct Bins {
    /// The `warren` binary.
    pub warren: PathBuf,
    /// The `warren-connector` binary.
    pub connector: PathBuf,
    /// `runtime/js` with ComponentizeJS.
    pub js_dir: PathBuf,
}

impl Bins {
    /// Reads the command line; each path must exist (else the error names
    /// `run_script`, which builds them).
    pub fn from_args(run_script: &str) -> anyhow::Result<Bins> {
        let mut bins = Bins {
            warren: PathBuf::from("target/release/warren"),
            connector: PathBuf::from("target/release/warren-connector"),
            js_dir: PathBuf::from("runtime/js"),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--warren" => bins.warren = value()?.into(),
                "--connector" => bins.connector = value()?.into(),
                "--js-dir" => bins.js_dir = value()?.into(),
                other => bail!("unknown argument {other}"),
            }
        }
        for p in [&mut bins.warren, &mut bins.connector, &mut bins.js_dir] {
            *p = std::fs::canonicalize(&*p)
                .with_context(|| format!("{} (run {run_script})", p.display()))?;
        }
        Ok(bins)
    }
}
