//! bench/cluster: three `warren serve` nodes on one etcd, each with its own
//! data directory, measured in one run.
//!
//! Part 1, relay: one tunnel whose real connector dials node B only; the same
//! worker (bench/binding's, calling a loopback origin through its VPC binding)
//! is served by B (the tunnel's streams are B's own) and by A (which relays
//! each stream to B over the node-to-node link). Interleaved load against B
//! and A; the ratio and the latency the relay adds: the difference of the
//! two p50s within each round (both saw the same machine state), and its
//! median over the rounds, which the goal is judged on.
//!
//! Part 2, deploys: `warren deploy` through A's API, then every node's
//! runtime is polled until it answers the new version (nodes B and C fetch
//! the bundle, and the compiled component, from a peer).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use warren_bench::load;
use warren_bench::procs::{self, Bins, NodeOptions, WarrenNode, median, ms};
use warren_testkit::etcd::Etcd;

/// Load rounds (bench/binding runs 3; the relay's added latency is taken
/// per round, so more rounds steady its median) and run length.
const ROUNDS: usize = 5;
const RUN_FOR: Duration = Duration::from_secs(5);
/// Deploys measured in part 2.
const DEPLOYS: usize = 5;
/// Longest wait for a node to serve a new version.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(120);
/// The relay's goal: added p50 latency on loopback.
const RELAY_GOAL: Duration = Duration::from_micros(300);
/// A JS worker without bindings answering the version its vars name.
const VERSION_WORKER: &str = "export default {\n  async fetch(request, env) {\n    return new Response(`version ${env.VERSION}`);\n  },\n};\n";

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

async fn relay(
    bins: &Bins,
    nodes: &[WarrenNode; 3],
    b_edge: SocketAddr,
    work: &Path,
) -> anyhow::Result<()> {
    let [a, b, _] = nodes;
    let origin = procs::short_origin().await?;
    let (_connector, service_id) = a.private_origin_via(&bins.connector, origin, Some(b_edge))?;
    let wdir = work.join("shop");
    procs::worker_dir(
        &wdir,
        "shop",
        include_str!("../binding/worker.js"),
        &format!(
            "\"vpc_services\": [{{ \"binding\": \"API\", \"service_id\": \"{service_id}\" }}]"
        ),
    )?;
    a.deploy(&wdir)?;
    for n in [a, b] {
        n.first_ok("shop", Duration::from_secs(60)).await?;
    }
    let host = "shop.workers.localhost";
    let (sb, bb) = load::get(b.runtime, host, "/items").await?;
    let (sa, ba) = load::get(a.runtime, host, "/items").await?;
    if sb != 200 || sa != 200 || bb != ba {
        bail!("B answers {sb} {bb:?}, A answers {sa} {ba:?}");
    }
    println!(
        "part 1 — relay: worker → VPC binding → tunnel → connector → origin; the connector dials B only"
    );
    println!(
        "B holds the tunnel's connections; A relays every stream to B over the node-to-node link (QUIC, mTLS)"
    );
    println!();
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "clients / node", "req/s", "p50", "p99"
    );
    for clients in [1usize, 8] {
        let ([on_b, on_a], rounds) = load::interleaved_by_round(
            ROUNDS,
            clients,
            RUN_FOR,
            [(b.runtime, host), (a.runtime, host)],
            "/items",
        )
        .await?;
        load::row(&format!("{clients} B (holds the tunnel)"), &on_b);
        load::row(&format!("{clients} A (relays to B)"), &on_a);
        let overall = on_a.p50.saturating_sub(on_b.p50);
        let per_round: Vec<Duration> = rounds
            .iter()
            .map(|[b, a]| a.p50.saturating_sub(b.p50))
            .collect();
        let spread = per_round
            .iter()
            .map(|d| d.as_micros().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let added = median(per_round);
        println!(
            "{clients} relay/direct {:.2}x requests/s, p99 {:.2}x; p50 added +{}µs over all requests, per round [{spread}] µs, median +{}µs{}",
            on_a.rps / on_b.rps,
            on_a.p99.as_secs_f64() / on_b.p99.as_secs_f64().max(f64::EPSILON),
            overall.as_micros(),
            added.as_micros(),
            if clients == 1 {
                format!(
                    " (goal: relay adds ≤ {}µs p50, per-round median: {})",
                    RELAY_GOAL.as_micros(),
                    if added <= RELAY_GOAL {
                        "met"
                    } else {
                        "NOT met"
                    }
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

async fn deploys(nodes: &[WarrenNode; 3], work: &Path) -> anyhow::Result<()> {
    println!();
    println!(
        "part 2 — deploy through A's API → first 200 of the new version on each node (polled every 1 ms)"
    );
    println!(
        "worker: JS without bindings; each deploy a new VERSION var (B and C fetch bundle and compiled code from a peer)"
    );
    println!();
    println!(
        "{:<8} {:>14} {:>16} {:>16} {:>16}",
        "deploy", "deploy on A", "exit → A", "exit → B", "exit → C"
    );
    let wdir = work.join("version");
    let mut per_node: [Vec<Duration>; 3] = Default::default();
    let mut calls = Vec::new();
    for v in 1..=DEPLOYS {
        procs::worker_dir(
            &wdir,
            "version",
            VERSION_WORKER,
            &format!("\"vars\": {{ \"VERSION\": \"{v}\" }}"),
        )?;
        let want = format!("version {v}");
        let t = Instant::now();
        nodes[0].deploy(&wdir)?;
        let call = t.elapsed();
        let mut seen = [Duration::ZERO; 3];
        let waits = nodes.iter().map(|n| until_answers(n, "version", &want));
        for (i, r) in futures_util::future::join_all(waits)
            .await
            .into_iter()
            .enumerate()
        {
            seen[i] = r?;
        }
        println!(
            "{v:<8} {:>11.0} ms {:>13.1} ms {:>13.1} ms {:>13.1} ms",
            ms(call),
            ms(seen[0]),
            ms(seen[1]),
            ms(seen[2])
        );
        calls.push(call);
        for i in 0..3 {
            per_node[i].push(seen[i]);
        }
    }
    let [ma, mb, mc] = per_node.map(median);
    println!(
        "{:<8} {:>11.0} ms {:>13.1} ms {:>13.1} ms {:>13.1} ms",
        "median",
        ms(median(calls)),
        ms(ma),
        ms(mb),
        ms(mc)
    );
    let worst = ma.max(mb).max(mc);
    println!(
        "deploy answered → served on every node: median of the slowest node {:.1} ms (goal ≤ 2000 ms: {})",
        ms(worst),
        if worst <= Duration::from_secs(2) {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bins = Bins::from_args("bench/cluster/run.sh")?;
    let etcd = tokio::task::spawn_blocking(Etcd::start).await??;
    println!(
        "bench/cluster: three warren serve nodes on one etcd ({}), each its own data directory",
        etcd.endpoint()
    );
    println!();
    let work = tempfile::tempdir()?;
    let store = format!(
        "[store]\nbackend = \"etcd\"\nendpoints = [{:?}]\nprefix = \"/bench-cluster/\"\n",
        etcd.endpoint()
    );
    let b_edge: SocketAddr = ([127, 0, 0, 1], {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.local_addr()?.port()
    })
        .into();
    let mut started = Vec::new();
    for (name, joins) in [("a", false), ("b", true), ("c", true)] {
        let dir = work.path().join(format!("node-{name}"));
        std::fs::create_dir_all(&dir)?;
        let options = NodeOptions {
            node_name: Some(name.into()),
            extra: store.clone(),
            joins,
            tunnel: (name == "b").then_some(b_edge),
            ..NodeOptions::default()
        };
        started.push(WarrenNode::start_with(&bins.warren, &dir, &bins.js_dir, &options).await?);
    }
    let nodes: [WarrenNode; 3] = started
        .try_into()
        .map_err(|_| anyhow::anyhow!("three nodes"))?;
    relay(&bins, &nodes, b_edge, work.path()).await?;
    deploys(&nodes, work.path()).await?;
    Ok(())
}
