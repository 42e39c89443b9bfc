//! bench/store: Warren's control plane on SQLite against etcd, measured in
//! one run.
//!
//! Part 1, the hot path: two nodes, one per store, each with its own tunnel,
//! the real connector, a VPC service for the same local origin and the same
//! `worker.js` calling it through its binding; interleaved load against both.
//! The hot path reads the store only through change-driven caches, so the
//! ratio should sit near 1.
//!
//! Part 2, deploy propagation: nodes A and B on one etcd (same prefix, so one
//! cluster CA; one shared data directory, so one sealing key and bundle
//! directory); `warren deploy` through A's API, then B's runtime is polled
//! until it answers the new version.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use warren_bench::load;
use warren_bench::procs::{self, Bins, Kill, NodeOptions, WarrenNode, median, ms};
use warren_testkit::etcd::Etcd;

/// Load rounds and run length: the same as bench/binding.
const ROUNDS: usize = 3;
const RUN_FOR: Duration = Duration::from_secs(5);
/// Deploys measured in part 2 (vars `VERSION=1..DEPLOYS`).
const DEPLOYS: usize = 5;
/// Longest wait for node B to serve a new version.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(120);
/// The hot path's goal: etcd's requests/s over SQLite's.
const GOAL: f64 = 0.95;

/// A Wasm-free JS worker answering the version its vars name.
const VERSION_WORKER: &str = "export default {\n  async fetch(request, env) {\n    return new Response(`version ${env.VERSION}`);\n  },\n};\n";

/// A node serving worker `shop`, which calls the origin through its VPC
/// binding (tunnel and real connector of its own).
struct BindingNode {
    node: WarrenNode,
    _connector: Kill,
}

/// Starts a node in `dir` with `options`, a tunnel with the real connector,
/// a VPC service `inventory` for `origin`, and `shop` (bench/binding's
/// worker) bound to it; returns once `shop` answers.
async fn binding_node(
    bins: &Bins,
    dir: &Path,
    options: &NodeOptions,
    origin: SocketAddr,
) -> anyhow::Result<BindingNode> {
    std::fs::create_dir_all(dir)?;
    let node = WarrenNode::start_with(&bins.warren, dir, &bins.js_dir, options).await?;
    let (mut connector, service_id) = node.private_origin(&bins.connector, origin)?;
    let wdir = dir.join("shop");
    procs::worker_dir(
        &wdir,
        "shop",
        include_str!("../binding/worker.js"),
        &format!(
            "\"vpc_services\": [{{ \"binding\": \"API\", \"service_id\": \"{service_id}\" }}]"
        ),
    )?;
    node.deploy(&wdir)?;
    if let Err(e) = node.first_ok("shop", Duration::from_secs(60)).await {
        let connector_exit = match connector.0.try_wait() {
            Ok(Some(status)) => format!("the connector exited with {status}; "),
            _ => String::new(),
        };
        bail!("{e}: {connector_exit}{}", procs::log_tail(dir));
    }
    Ok(BindingNode {
        node,
        _connector: connector,
    })
}

/// The `[store]` section for etcd at `endpoint` under `prefix`.
fn etcd_store(endpoint: &str, prefix: &str) -> String {
    format!("[store]\nbackend = \"etcd\"\nendpoints = [{endpoint:?}]\nprefix = {prefix:?}\n")
}

/// Part 1: requests/s and latency of the binding hot path, SQLite vs etcd.
async fn hot_path(bins: &Bins, etcd: &Etcd, work: &Path) -> anyhow::Result<()> {
    let origin = procs::short_origin().await?;
    let sqlite = binding_node(bins, &work.join("sqlite"), &NodeOptions::default(), origin).await?;
    let on_etcd = binding_node(
        bins,
        &work.join("etcd"),
        &NodeOptions {
            extra: etcd_store(&etcd.endpoint(), "/bench-hot/"),
            ..NodeOptions::default()
        },
        origin,
    )
    .await?;
    let host = "shop.workers.localhost";
    let (ss, sb) = load::get(sqlite.node.runtime, host, "/items").await?;
    let (es, eb) = load::get(on_etcd.node.runtime, host, "/items").await?;
    if ss != 200 || es != 200 || sb != eb {
        bail!("SQLite node {ss} {sb:?} vs etcd node {es} {eb:?}");
    }
    println!(
        "part 1 — hot path: worker → VPC binding → tunnel → connector → origin, one node per store"
    );
    println!(
        "same worker.js, same answer from both nodes ({} bytes)",
        sb.len()
    );
    println!();
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "clients / store", "req/s", "p50", "p99"
    );
    for clients in [1usize, 8] {
        let [s, e] = load::interleaved(
            ROUNDS,
            clients,
            RUN_FOR,
            [(sqlite.node.runtime, host), (on_etcd.node.runtime, host)],
            "/items",
        )
        .await?;
        load::row(&format!("{clients} sqlite"), &s);
        load::row(&format!("{clients} etcd"), &e);
        let ratio = e.rps / s.rps;
        println!(
            "{clients} ratio etcd/sqlite {ratio:.2}x requests/s, p50 {:.2}x (goal ≥ {GOAL}: {})",
            e.p50.as_secs_f64() / s.p50.as_secs_f64().max(f64::EPSILON),
            if ratio >= GOAL { "met" } else { "NOT met" }
        );
    }
    Ok(())
}

/// Polls `node`'s worker `name` until it answers `want`; the time taken.
async fn until_answers(node: &WarrenNode, name: &str, want: &str) -> anyhow::Result<Duration> {
    let host = format!("{name}.workers.localhost");
    let start = Instant::now();
    loop {
        if let Ok((200, body)) = load::get(node.runtime, &host, "/").await
            && body == want.as_bytes()
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > PROPAGATION_LIMIT {
            bail!("{host} did not answer {want:?} within {PROPAGATION_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Part 2: `warren deploy` through node A, time until node B serves it.
async fn propagation(bins: &Bins, etcd: &Etcd, work: &Path) -> anyhow::Result<()> {
    let data = work.join("shared-data");
    std::fs::create_dir_all(&data)?;
    let prefix = "/bench-deploy/";
    let options = |name: &str, joins: bool| NodeOptions {
        data_dir: Some(data.clone()),
        node_name: Some(name.into()),
        extra: etcd_store(&etcd.endpoint(), prefix),
        joins,
        ..NodeOptions::default()
    };
    let (dir_a, dir_b) = (work.join("node-a"), work.join("node-b"));
    std::fs::create_dir_all(&dir_a)?;
    std::fs::create_dir_all(&dir_b)?;
    // A first: it makes the account, the trust roots and the profile; B joins.
    let a =
        WarrenNode::start_with(&bins.warren, &dir_a, &bins.js_dir, &options("a", false)).await?;
    let b = WarrenNode::start_with(&bins.warren, &dir_b, &bins.js_dir, &options("b", true)).await?;

    println!();
    println!(
        "part 2 — deploy propagation: nodes A and B on one etcd (prefix {prefix}, one data_dir); \
         `warren deploy` through A's API, B's runtime polled every 1 ms"
    );
    println!(
        "worker: JS without bindings answering `version ${{env.VERSION}}`; each deploy a new VERSION"
    );
    println!();
    println!(
        "{:<8} {:<12} {:>18} {:>26}",
        "deploy", "vars", "deploy on A", "deploy exit → B serves it"
    );
    let wdir = work.join("version");
    let (mut deploys, mut propagations) = (Vec::new(), Vec::new());
    for v in 1..=DEPLOYS {
        procs::worker_dir(
            &wdir,
            "version",
            VERSION_WORKER,
            &format!("\"vars\": {{ \"VERSION\": \"{v}\" }}"),
        )?;
        let want = format!("version {v}");
        let t = Instant::now();
        a.deploy(&wdir)?;
        let deploy = t.elapsed();
        let seen = until_answers(&b, "version", &want).await?;
        // A serves what it deployed (it installs before its API answers).
        let (status, body) = load::get(a.runtime, "version.workers.localhost", "/").await?;
        if status != 200 || body != want.as_bytes() {
            bail!("node A answers {status} {body:?} after deploying {want:?}");
        }
        println!(
            "{v:<8} {:<12} {:>15.0} ms {:>23.1} ms",
            format!("VERSION={v}"),
            ms(deploy),
            ms(seen)
        );
        deploys.push(deploy);
        propagations.push(seen);
    }
    println!(
        "{:<8} {:<12} {:>15.0} ms {:>23.1} ms",
        "median",
        "",
        ms(median(deploys.clone())),
        ms(median(propagations))
    );
    println!(
        "median of deploys 2–{DEPLOYS} (same source, new vars) on A: {:.0} ms; first deploy: {:.0} ms",
        ms(median(deploys[1..].to_vec())),
        ms(deploys[0])
    );
    drop(b);
    drop(a);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bins = Bins::from_args("bench/store/run.sh")?;
    let etcd = tokio::task::spawn_blocking(Etcd::start).await??;
    let version = std::env::var("WARREN_ETCD")
        .ok()
        .or_else(|| Some("/usr/bin/etcd".into()))
        .and_then(|bin| Command::new(bin).arg("--version").output().ok())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let data = match Path::new("/dev/shm").is_dir() {
        true => "data in /dev/shm",
        false => "data on disk",
    };
    println!(
        "bench/store: Warren's control plane on SQLite vs etcd ({version}, one member at {}, {data})",
        etcd.endpoint()
    );
    println!();
    let work = tempfile::tempdir()?;
    hot_path(&bins, &etcd, work.path()).await?;
    propagation(&bins, &etcd, work.path()).await?;
    Ok(())
}
