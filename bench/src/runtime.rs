//! bench/runtime: the same hello-world `worker.js` on Warren and on workerd
//! (from npm), in one run: requests/s and p50/p99 with the same load
//! generator in interleaved rounds; time from the deploy call to the first
//! response for a new JS worker with a cold cache, a warm cache (same code)
//! and an edited worker (warm tooling, new code); RSS of a node with many
//! deployed JS workers left idle.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use warren_bench::load;
use warren_bench::procs::{self, WarrenNode};

const ROUNDS: usize = 3;
const RUN_FOR: Duration = Duration::from_secs(5);
const CLIENTS: usize = 8;

struct Args {
    warren: PathBuf,
    workerd: PathBuf,
    js_dir: PathBuf,
    workers: usize,
    load_only: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        warren: "target/release/warren".into(),
        workerd: "bench/workerd/node_modules/@cloudflare/workerd-linux-64/bin/workerd".into(),
        js_dir: "runtime/js".into(),
        workers: 100,
        load_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--warren" => a.warren = value()?.into(),
            "--workerd" => a.workerd = value()?.into(),
            "--js-dir" => a.js_dir = value()?.into(),
            "--workers" => a.workers = value()?.parse()?,
            "--load-only" => a.load_only = true,
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
    let node = WarrenNode::start(&a.warren, &node_dir, &a.js_dir).await?;
    let base_rss = procs::memory(node.process.pid())?.footprint();

    println!(
        "bench/runtime: the same worker.js on Warren and workerd ({})",
        a.workerd.display()
    );
    if a.load_only {
        deploy_time(&node, work.path(), "hello", source).await?;
    } else {
        println!();
        println!("deploy call → first response (new JS worker)");
        let cold = deploy_time(&node, work.path(), "hello", source).await?;
        println!(
            "  cold caches (ComponentizeJS build + Cranelift)   {:>8.2} s",
            cold.as_secs_f64()
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
            "  goal (≤ 1 s with a warm cache): {}",
            if warm <= Duration::from_secs(1) {
                "met (same code)"
            } else {
                "NOT met"
            }
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

    println!();
    println!(
        "hello world, {CLIENTS} keep-alive clients, {ROUNDS} interleaved rounds of {RUN_FOR:?}"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "runtime", "req/s", "p50", "p99"
    );
    let [w, d] = load::interleaved(
        ROUNDS,
        CLIENTS,
        RUN_FOR,
        [
            (node.runtime, "hello.workers.localhost"),
            (wd_addr, "localhost"),
        ],
        "/",
    )
    .await?;
    load::row("warren", &w);
    load::row("workerd", &d);
    println!(
        "ratio {:.2}x workerd's requests/s (goal ≥ 1.0x: {}); p99 {:.2}x",
        w.rps / d.rps,
        if w.rps >= d.rps { "met" } else { "NOT met" },
        w.p99.as_secs_f64() / d.p99.as_secs_f64().max(f64::EPSILON)
    );
    drop(workerd);
    if a.load_only {
        return Ok(());
    }

    println!();
    let extra = a.workers.saturating_sub(3);
    let t = Instant::now();
    for i in 0..extra {
        let name = format!("idle-{i}");
        let dir = work.path().join(&name);
        procs::worker_dir(&dir, &name, source, "")?;
        node.deploy(&dir)?;
        node.first_ok(&name, Duration::from_secs(60)).await?;
    }
    let per = t.elapsed() / extra.max(1) as u32;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = procs::memory(node.process.pid())?;
    let mib = |b: u64| b as f64 / 1048576.0;
    let footprint = m.footprint();
    println!(
        "{} JS workers deployed (each answered once, then idle): memory (PSS) {:.0} MiB (node alone {:.0} MiB; {:.1} MiB per worker); deploy+first response {:.0} ms each",
        a.workers,
        mib(footprint),
        mib(base_rss),
        mib(footprint - base_rss.min(footprint)) / a.workers as f64,
        per.as_secs_f64() * 1000.0
    );
    println!(
        "  VmRSS {:.0} MiB = anonymous {:.0} + file {:.0} + shmem {:.0} (VmRSS counts a file page once per mapping: identical workers map one compiled file many times)",
        mib(m.rss),
        mib(m.anon),
        mib(m.file),
        mib(m.shmem)
    );
    println!(
        "goal (≤ 2 GB for 100 idle workers): PSS {}, VmRSS {}",
        if footprint <= 2 << 30 {
            "met"
        } else {
            "NOT met"
        },
        if m.rss <= 2 << 30 { "met" } else { "NOT met" }
    );
    Ok(())
}
