//! bench/binding: a worker calling a private origin through its binding
//! (Warren: runtime → binding RPC → binding-worker → iris → QUIC tunnel → the
//! real connector → origin) against the same `worker.js` on workerd calling the
//! same origin through a plain service binding with no tunnel; and a bulk
//! download through the binding against `curl` straight to the origin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use warren_bench::load;
use warren_bench::procs::{self, WarrenNode};

const ROUNDS: usize = 3;
const RUN_FOR: Duration = Duration::from_secs(5);
const CHUNK: usize = 64 << 10;

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// The private origin: `/items` answers a short text; `/bytes?n=N` streams N
/// bytes in 64 KiB chunks.
async fn origin() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let chunk = Bytes::from(vec![b'w'; CHUNK]);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let chunk = chunk.clone();
                    async move {
                        let n: u64 = req
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("n="))
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        let body: Body = if req.uri().path() == "/bytes" {
                            let frames = futures_stream(chunk, n);
                            StreamBody::new(frames).boxed()
                        } else {
                            Full::new(Bytes::from_static(b"inventory: 42\n")).boxed()
                        };
                        let mut resp = Response::new(body);
                        if req.uri().path() == "/bytes" {
                            resp.headers_mut().insert("content-length", n.into());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// `n` bytes as a stream of frames of `chunk`.
fn futures_stream(
    chunk: Bytes,
    n: u64,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Send {
    futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(chunk.len() as u64);
            Some((Ok(Frame::data(chunk.slice(..take as usize))), left - take))
        }
    })
}

/// `curl` download of `url` (with `host`): bytes and MiB/s.
fn curl(url: &str, host: &str) -> anyhow::Result<(u64, f64)> {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-H", &format!("host: {host}")])
        .args(["-w", "%{http_code} %{size_download} %{speed_download}"])
        .arg(url)
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut f = text.split_whitespace();
    let (code, size, speed) = (f.next(), f.next(), f.next());
    if code != Some("200") {
        bail!(
            "curl {url}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let size: u64 = size.and_then(|s| s.parse().ok()).context("curl size")?;
    let speed: f64 = speed.and_then(|s| s.parse().ok()).context("curl speed")?;
    Ok((size, speed / 1048576.0))
}

/// Peak RSS of node `pid` (with its runtime processes) while `f` runs
/// (sampled every 50 ms).
fn peak_rss_during<T>(pid: u32, f: impl FnOnce() -> T) -> (T, u64) {
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(r) = procs::node_rss_bytes(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let out = f();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    (out, peak.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut warren_bin = PathBuf::from("target/release/warren");
    let mut connector = PathBuf::from("target/release/warren-connector");
    let mut workerd_bin =
        PathBuf::from("bench/workerd/node_modules/@cloudflare/workerd-linux-64/bin/workerd");
    let mut js_dir = PathBuf::from("runtime/js");
    let mut processes = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut bulk_only = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--warren" => warren_bin = value()?.into(),
            "--connector" => connector = value()?.into(),
            "--workerd" => workerd_bin = value()?.into(),
            "--js-dir" => js_dir = value()?.into(),
            "--processes" => processes = value()?.parse()?,
            "--bulk-only" => bulk_only = true,
            other => bail!("unknown argument {other}"),
        }
    }
    for p in [
        &mut js_dir,
        &mut warren_bin,
        &mut workerd_bin,
        &mut connector,
    ] {
        *p = std::fs::canonicalize(&*p)
            .with_context(|| format!("{} (run bench/binding/run.sh)", p.display()))?;
    }
    let bulk: u64 = std::env::var("BENCH_BYTES")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1 << 30);
    let source = include_str!("../binding/worker.js");
    let origin = origin().await?;
    let work = tempfile::tempdir()?;

    // Warren: a node, a tunnel with the real connector, a VPC service for the origin.
    let node_dir = work.path().join("warren");
    std::fs::create_dir_all(&node_dir)?;
    let options = procs::NodeOptions {
        processes: Some(processes),
        ..Default::default()
    };
    let node = WarrenNode::start_with(&warren_bin, &node_dir, &js_dir, &options).await?;
    println!(
        "Warren: one node, [runtime] processes = {processes} (--processes; default one per core)"
    );
    let (connector_process, service_id) = node.private_origin(&connector, origin)?;
    let wdir = work.path().join("shop");
    procs::worker_dir(
        &wdir,
        "shop",
        source,
        &format!(
            "\"vpc_services\": [{{ \"binding\": \"API\", \"service_id\": \"{service_id}\" }}], \"limits\": {{ \"cpu_ms\": 600000 }}"
        ),
    )?;
    node.deploy(&wdir)?;
    node.first_ok("shop", Duration::from_secs(60)).await?;

    // workerd: the same worker.js, `API` a service binding straight to the origin.
    let wd_dir = work.path().join("workerd");
    std::fs::create_dir_all(&wd_dir)?;
    std::fs::write(wd_dir.join("worker.js"), source)?;
    let wd: SocketAddr = ([127, 0, 0, 1], procs::free_port()?).into();
    let workerd = procs::workerd(&workerd_bin, &wd_dir, wd.port(), Some(origin))?;
    procs::wait_port(wd, Duration::from_secs(30)).await?;

    let host = "shop.workers.localhost";
    let (ws, wb) = load::get(node.runtime, host, "/items").await?;
    let (ds, db) = load::get(wd, "localhost", "/items").await?;
    if ws != 200 || ds != 200 || wb != db {
        bail!("Warren {ws} {wb:?} vs workerd {ds} {db:?}");
    }
    println!(
        "bench/binding: worker → private origin; Warren through the tunnel, workerd through a plain service binding"
    );
    println!(
        "same worker.js, same answer on both: {:?}",
        String::from_utf8_lossy(&wb)
    );
    println!();
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "clients / runtime", "req/s", "p50", "p99"
    );
    // Warren's side of a call: the node, its runtime processes and the
    // connector (the origin, in this process, serves both).
    let mut warren_pids = procs::node_pids(node.process.pid());
    warren_pids.push(connector_process.pid());
    for clients in [1usize, 8].into_iter().filter(|_| !bulk_only) {
        let before = [procs::usage(&warren_pids)?, procs::usage(&[workerd.pid()])?];
        let [w, d] = load::interleaved(
            ROUNDS,
            clients,
            RUN_FOR,
            [(node.runtime, host), (wd, "localhost")],
            "/items",
        )
        .await?;
        let after = [procs::usage(&warren_pids)?, procs::usage(&[workerd.pid()])?];
        load::row(&format!("{clients} warren"), &w);
        load::row(&format!("{clients} workerd"), &d);
        let (wc, _) = (after[0] - before[0]).per_request(w.requests);
        let (dc, _) = (after[1] - before[1]).per_request(d.requests);
        println!(
            "{clients} CPU per request {wc:.3} ms on Warren (node, runtime processes, connector) vs {dc:.3} ms on workerd ({:.2}x)",
            wc / dc.max(f64::EPSILON)
        );
        println!(
            "{clients} ratio {:.2}x workerd's requests/s{}",
            w.rps / d.rps,
            if clients == 8 {
                if w.rps >= d.rps {
                    " (goal ≥ 1.0x: met)"
                } else {
                    " (goal ≥ 1.0x: NOT met)"
                }
            } else {
                ""
            }
        );
    }

    println!();
    let path = format!("/bytes?n={bulk}");
    let (direct, direct_speed) = curl(&format!("http://{origin}{path}"), "inventory.internal")?;
    println!("bulk download of {} MiB (curl)", bulk >> 20);
    println!("  direct to the origin                      {direct_speed:>8.0} MiB/s");
    for (how, prefix) in [
        ("new Response(upstream.body, upstream)", ""),
        ("return upstream", "/pass"),
    ] {
        let path = format!("{prefix}{path}");
        let ((through, speed), peak) = {
            let url = format!("http://{}{path}", node.runtime);
            let (r, peak) = peak_rss_during(node.process.pid(), || curl(&url, host));
            (r?, peak)
        };
        let (wd_size, wd_speed) = curl(&format!("http://{wd}{path}"), "localhost")?;
        if through != bulk || direct != bulk || wd_size != bulk {
            let log = std::fs::read_to_string(node_dir.join("warren.log")).unwrap_or_default();
            bail!(
                "short download: direct {direct}, warren {through}, workerd {wd_size} of {bulk}\n{log}"
            );
        }
        println!("  worker does `{how}`:");
        println!(
            "    through the Warren binding              {speed:>8.0} MiB/s  ({:.2}x direct; goal ≥ 0.5x: {}), node peak RSS {:.0} MiB",
            speed / direct_speed,
            if speed >= direct_speed / 2.0 {
                "met"
            } else {
                "NOT met"
            },
            peak as f64 / 1048576.0
        );
        println!(
            "    workerd service binding                 {wd_speed:>8.0} MiB/s  ({:.2}x direct)",
            wd_speed / direct_speed
        );
    }
    drop(workerd);
    Ok(())
}
