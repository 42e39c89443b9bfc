//! bench/runtime: the same JS workers on Warren and on workerd (from npm), in
//! one run: requests/s, p50/p99, and CPU time and minor page faults per
//! request of a hello-world worker and of a CPU-heavy one (regex router,
//! ~100 KB JSON parsed and serialised), with the same load generator in
//! interleaved rounds; time from the deploy call to the first
//! response for a new JS worker with cold caches, warm caches (same code) and
//! an edited worker (warm tooling, new code); memory (PSS) of a node holding
//! many different JS workers left idle, then of one holding 1000 workers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use warren_bench::load;
use warren_bench::procs::{self, WarrenNode};

/// The prepared JS toolchain's folder in the JS toolchain folder (`warren
/// prepare-js`).
const PREPARED_DIR: &str = "prepared";

const ROUNDS: usize = 3;
const RUN_FOR: Duration = Duration::from_secs(5);
const CLIENTS: usize = 8;

struct Args {
    warren: PathBuf,
    workerd: PathBuf,
    js_dir: PathBuf,
    workers: usize,
    total: usize,
    load_only: bool,
    memory_only: bool,
    processes: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        warren: "target/release/warren".into(),
        workerd: "bench/workerd/node_modules/@cloudflare/workerd-linux-64/bin/workerd".into(),
        js_dir: "runtime/js".into(),
        workers: 100,
        total: 1000,
        load_only: false,
        memory_only: false,
        processes: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--warren" => a.warren = value()?.into(),
            "--workerd" => a.workerd = value()?.into(),
            "--js-dir" => a.js_dir = value()?.into(),
            "--workers" => a.workers = value()?.parse()?,
            "--total" => a.total = value()?.parse()?,
            "--load-only" => a.load_only = true,
            "--memory-only" => a.memory_only = true,
            "--processes" => a.processes = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    for p in [&mut a.js_dir, &mut a.warren, &mut a.workerd] {
        *p = std::fs::canonicalize(&*p)
            .with_context(|| format!("{} (run bench/runtime/run.sh)", p.display()))?;
    }
    Ok(a)
}

/// Deploys `source` as worker `name` and times the call up to its first 200.
async fn deploy_time(
    node: &WarrenNode,
    root: &Path,
    name: &str,
    source: &str,
) -> anyhow::Result<Duration> {
    let dir = root.join(name);
    procs::worker_dir(&dir, name, source, "")?;
    let t = Instant::now();
    node.deploy(&dir)?;
    node.first_ok(name, Duration::from_secs(120)).await?;
    Ok(t.elapsed())
}

/// Deploy → first response of a JS worker on a fresh node whose JS
/// toolchain is `a.js_dir` without its prepared folder (every other entry
/// linked in).
async fn unprepared_cold(
    a: &Args,
    root: &Path,
    options: &procs::NodeOptions,
    source: &str,
) -> anyhow::Result<Duration> {
    let js = root.join("js-unprepared");
    std::fs::create_dir_all(&js)?;
    for entry in std::fs::read_dir(&a.js_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != PREPARED_DIR && !name.starts_with(".prepared") {
            std::os::unix::fs::symlink(entry.path(), js.join(entry.file_name()))?;
        }
    }
    let dir = root.join("warren-unprepared");
    std::fs::create_dir_all(&dir)?;
    let node = WarrenNode::start_with(&a.warren, &dir, &js, options).await?;
    deploy_time(&node, root, "hello-unprepared", source).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let source = include_str!("../runtime/worker.js");
    let work = tempfile::tempdir()?;

    // workerd: time from start to its first response, then keep it serving.
    let wd_dir = work.path().join("workerd");
    std::fs::create_dir_all(&wd_dir)?;
    std::fs::write(wd_dir.join("worker.js"), source)?;
    let wd_addr: std::net::SocketAddr = ([127, 0, 0, 1], procs::free_port()?).into();
    let t = Instant::now();
    let workerd = procs::workerd(&a.workerd, &wd_dir, wd_addr.port(), None)?;
    procs::wait_port(wd_addr, Duration::from_secs(30)).await?;
    let (_, wd_body) = load::get(wd_addr, "localhost", "/").await?;
    let wd_start = t.elapsed();

    let node_dir = work.path().join("warren");
    std::fs::create_dir_all(&node_dir)?;
    let options = procs::NodeOptions {
        processes: Some(a.processes),
        ..Default::default()
    };
    // The JS toolchain prepared as an installation would be (a no-op when
    // it already is, for this toolchain and this `warren`).
    let status = std::process::Command::new(&a.warren)
        .arg("prepare-js")
        .arg("--js-dir")
        .arg(&a.js_dir)
        .status()
        .context("running warren prepare-js")?;
    if !status.success() {
        bail!("warren prepare-js failed ({status})");
    }
    let node = WarrenNode::start_with(&a.warren, &node_dir, &a.js_dir, &options).await?;
    let base_rss = procs::node_memory(node.process.pid())?.footprint();

    println!(
        "bench/runtime: the same worker.js on Warren and workerd ({})",
        a.workerd.display()
    );
    println!(
        "Warren: one node, [runtime] processes = {} (--processes; default one per core); workerd: one process",
        a.processes
    );
    if a.load_only {
        deploy_time(&node, work.path(), "hello", source).await?;
    } else {
        println!();
        println!("deploy call → first response (new JS worker)");
        let cold = deploy_time(&node, work.path(), "hello", source).await?;
        println!(
            "  cold caches, prepared JS toolchain (JS build)    {:>8.2} s",
            cold.as_secs_f64()
        );
        let bare = unprepared_cold(&a, work.path(), &options, source).await?;
        println!(
            "  cold caches, JS toolchain not prepared          {:>8.2} s   (JS build + compiling the JS engine)",
            bare.as_secs_f64()
        );
        let warm = deploy_time(&node, work.path(), "hello-again", source).await?;
        println!(
            "  warm caches, same code under a new name           {:>8.3} s",
            warm.as_secs_f64()
        );
        let edited = source.replace("Hello, world!", "Hello, edited world!");
        let edit = deploy_time(&node, work.path(), "hello-edited", &edited).await?;
        println!(
            "  warm caches, edited code (JS rebuild, incremental) {:>7.2} s",
            edit.as_secs_f64()
        );
        println!(
            "  peer: workerd process start → first response      {:>8.3} s",
            wd_start.as_secs_f64()
        );
        println!(
            "  goals: edited ≤ 1 s {}; cold ≤ 5 s {} with a prepared toolchain, {} without",
            met(edit <= Duration::from_secs(1)),
            met(cold <= Duration::from_secs(5)),
            met(bare <= Duration::from_secs(5))
        );
    }
    let (status, body) = load::get(node.runtime, "hello.workers.localhost", "/").await?;
    if status != 200 || body != wd_body {
        bail!("Warren answered {status} {body:?}, workerd {wd_body:?}");
    }
    println!(
        "  same worker.js, same answer on both: {:?}",
        String::from_utf8_lossy(&body)
    );

    if !a.memory_only {
        println!();
        println!(
            "hello world, {CLIENTS} keep-alive clients, {ROUNDS} interleaved rounds of {RUN_FOR:?}"
        );
        let [w, d] = compare(
            (node.runtime, &procs::node_pids(node.process.pid())),
            "hello.workers.localhost",
            (wd_addr, workerd.pid()),
            "/",
        )
        .await?;
        println!(
            "ratio {:.2}x workerd's requests/s (goal ≥ 1.0x: {}); p99 {:.2}x (goal ≤ 1.0x: {})",
            w.rps / d.rps,
            met(w.rps >= d.rps),
            w.p99.as_secs_f64() / d.p99.as_secs_f64().max(f64::EPSILON),
            met(w.p99 <= d.p99)
        );
    }
    drop(workerd);

    // The CPU-heavy worker, on a fresh workerd.
    let heavy = include_str!("../runtime/heavy.js");
    let wd_dir = work.path().join("workerd-heavy");
    std::fs::create_dir_all(&wd_dir)?;
    std::fs::write(wd_dir.join("worker.js"), heavy)?;
    let wd_addr: std::net::SocketAddr = ([127, 0, 0, 1], procs::free_port()?).into();
    let workerd = procs::workerd(&a.workerd, &wd_dir, wd_addr.port(), None)?;
    procs::wait_port(wd_addr, Duration::from_secs(30)).await?;
    deploy_time(&node, work.path(), "heavy", heavy).await?;
    let (_, wd_body) = load::get(wd_addr, "localhost", HEAVY_PATH).await?;
    let (status, body) = load::get(node.runtime, "heavy.workers.localhost", HEAVY_PATH).await?;
    if status != 200 || body != wd_body {
        bail!("heavy.js: Warren answered {status} {body:?}, workerd {wd_body:?}");
    }
    println!();
    println!(
        "CPU-heavy worker (regex router, ~100 KB JSON parse + walk + stringify per request), {CLIENTS} clients"
    );
    println!(
        "  same heavy.js, same answer on both: {:?}",
        String::from_utf8_lossy(&body)
    );
    if !a.memory_only {
        let [w, d] = compare(
            (node.runtime, &procs::node_pids(node.process.pid())),
            "heavy.workers.localhost",
            (wd_addr, workerd.pid()),
            HEAVY_PATH,
        )
        .await?;
        println!(
            "ratio {:.2}x workerd's requests/s (goal ≥ 0.5x: {}); p99 {:.2}x",
            w.rps / d.rps,
            met(w.rps >= 0.5 * d.rps),
            w.p99.as_secs_f64() / d.p99.as_secs_f64().max(f64::EPSILON)
        );
    }
    drop(workerd);
    if a.load_only {
        return Ok(());
    }

    // Different workers: each has its own code, so its own build, compiled
    // file and memory image. Four are deployed above: hello, hello-edited and
    // heavy differ, hello-again is a copy of hello.
    println!();
    let distinct = a.workers.max(3);
    let t = Instant::now();
    for i in 3..distinct {
        let code = source.replace("Hello, world!", &format!("Hello from worker {i}!"));
        deploy_time(&node, work.path(), &format!("idle-{i}"), &code).await?;
    }
    let per = t.elapsed() / (distinct - 3).max(1) as u32;
    let m = settled_memory(&node).await?;
    let footprint = m.footprint();
    let per_worker = (footprint - base_rss.min(footprint)) as f64 / distinct as f64;
    println!(
        "{distinct} different JS workers (+1 copy), each answered once, then idle: PSS {:.0} MiB (node alone {:.0} MiB; {:.1} MiB per worker); deploy+first response {:.2} s each",
        mib(footprint),
        mib(base_rss),
        mib(per_worker as u64),
        per.as_secs_f64()
    );
    println!(
        "  VmRSS {:.0} MiB = anonymous {:.0} + file {:.0} + shmem {:.0}; compiled machine code {:.0} MiB of the PSS",
        mib(m.rss),
        mib(m.anon),
        mib(m.file),
        mib(m.shmem),
        mib(m.code_pss)
    );
    let node_only = procs::memory(node.process.pid())?;
    println!(
        "  of which the node process (deploys, compiles; serves nothing with runtime processes) {:.0} MiB PSS, anonymous {:.0} MiB",
        mib(node_only.footprint()),
        mib(node_only.anon)
    );
    println!(
        "goal (≤ 1 GiB for 100 different idle JS workers): {}",
        if distinct >= 100 {
            met(footprint <= 1 << 30)
        } else {
            "not measured (fewer than 100 workers)"
        }
    );

    // Up to `total` workers: the rest are copies of hello (same code, so one
    // compiled file and image); a copy costs only its own state.
    let before = footprint;
    let copies = a.total.saturating_sub(distinct + 1);
    let all = distinct + 1 + copies;
    let t = Instant::now();
    for i in 0..copies {
        deploy_time(&node, work.path(), &format!("copy-{i}"), source).await?;
    }
    let per = t.elapsed() / (copies.max(1) as u32);
    let m = settled_memory(&node).await?;
    let footprint = m.footprint();
    let per_copy = footprint.saturating_sub(before) as f64 / copies.max(1) as f64;
    println!(
        "{all} JS workers ({distinct} different, the rest copies), all idle: PSS {:.0} MiB; a copy adds {:.2} MiB (deploy+first response {:.0} ms each)",
        mib(footprint),
        mib(per_copy as u64),
        per.as_secs_f64() * 1000.0
    );
    println!(
        "  {} different workers would take about {:.1} GiB at {:.1} MiB each",
        a.total,
        (base_rss as f64 + per_worker * a.total as f64) / (1u64 << 30) as f64,
        mib(per_worker as u64)
    );
    Ok(())
}

/// The CPU-heavy worker's request path (its router's last route family).
const HEAVY_PATH: &str = "/api/v1/orders/42/items";

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// Interleaved load on Warren's worker (`host`) and on workerd, both at
/// `path`; prints a row for each.
async fn compare(
    (warren, warren_pids): (std::net::SocketAddr, &[u32]),
    host: &str,
    (workerd, workerd_pid): (std::net::SocketAddr, u32),
    path: &str,
) -> anyhow::Result<[load::Stats; 2]> {
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "runtime", "req/s", "p50", "p99"
    );
    let before = [procs::usage(warren_pids)?, procs::usage(&[workerd_pid])?];
    let [w, d] = load::interleaved(
        ROUNDS,
        CLIENTS,
        RUN_FOR,
        [(warren, host), (workerd, "localhost")],
        path,
    )
    .await?;
    let after = [procs::usage(warren_pids)?, procs::usage(&[workerd_pid])?];
    load::row("warren", &w);
    load::row("workerd", &d);
    // Each runtime is idle while the other's rounds run, so what its
    // processes used over all rounds is what its own requests cost.
    let (wc, wf) = (after[0] - before[0]).per_request(w.requests);
    let (dc, df) = (after[1] - before[1]).per_request(d.requests);
    println!(
        "per request: CPU {wc:.3} ms on Warren (node and runtime processes) vs {dc:.3} ms on workerd ({:.2}x); minor page faults {wf:.1} vs {df:.1}",
        wc / dc.max(f64::EPSILON)
    );
    Ok([w, d])
}

/// The node's memory once deploys have settled.
async fn settled_memory(node: &WarrenNode) -> anyhow::Result<procs::Memory> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    procs::node_memory(node.process.pid())
}
