//! Closed-loop HTTP load: `clients` keep-alive connections, each sending the
//! next request as soon as the previous answer's body has been read.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Requests/s and latency percentiles of one or more load runs.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Completed requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th-percentile latency.
    pub p99: Duration,
    /// Requests completed.
    pub requests: usize,
}

/// Latencies gathered over several runs, reduced to [`Stats`].
#[derive(Debug, Default)]
pub struct Samples {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Samples {
    /// Adds one run's latencies and its duration.
    pub fn add(&mut self, (latencies, elapsed): (Vec<Duration>, Duration)) {
        self.latencies.extend(latencies);
        self.elapsed += elapsed;
    }

    /// Requests/s over all runs, p50 and p99 over all requests.
    pub fn stats(mut self) -> Stats {
        self.latencies.sort();
        let n = self.latencies.len();
        let at = |q: f64| {
            self.latencies
                .get(((n as f64 * q) as usize).min(n.saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Stats {
            rps: n as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON),
            p50: at(0.50),
            p99: at(0.99),
            requests: n,
        }
    }
}

/// Runs `clients` connections for `run_for`, each opened by `connect` (TCP
/// without Nagle's delay, or anything over it) and sending `GET path` with
/// `host`; every answer must be 200. Returns each request's latency and the
/// run's duration.
pub async fn run<C, F, S>(
    clients: usize,
    run_for: Duration,
    connect: C,
    host: &str,
    path: &str,
) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    C: Fn() -> F + Clone + Send + 'static,
    F: Future<Output = anyhow::Result<S>> + Send,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let connect = connect.clone();
        let (host, path) = (host.to_owned(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let io = connect().await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await?;
            tokio::spawn(conn);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let req = Request::get(path.as_str())
                    .header("host", host.as_str())
                    .body(Empty::new())?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                if status != 200 {
                    bail!("{status}: {}", String::from_utf8_lossy(&body));
                }
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, start.elapsed()))
}

/// Alternates `rounds` runs of `GET path` against each `(address, host)`
/// target (plain TCP), so both see the same machine state; their [`Stats`].
pub async fn interleaved(
    rounds: usize,
    clients: usize,
    run_for: Duration,
    targets: [(std::net::SocketAddr, &str); 2],
    path: &str,
) -> anyhow::Result<[Stats; 2]> {
    Ok(
        interleaved_by_round(rounds, clients, run_for, targets, path)
            .await?
            .0,
    )
}

/// As [`interleaved`], also giving each round's pair of [`Stats`] (for a
/// difference taken within a round, where both targets saw the same machine
/// state, then its median over rounds).
pub async fn interleaved_by_round(
    rounds: usize,
    clients: usize,
    run_for: Duration,
    targets: [(std::net::SocketAddr, &str); 2],
    path: &str,
) -> anyhow::Result<([Stats; 2], Vec<[Stats; 2]>)> {
    let mut samples = [Samples::default(), Samples::default()];
    let mut by_round = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut round = [Samples::default(), Samples::default()];
        for ((s, r), (addr, host)) in samples.iter_mut().zip(round.iter_mut()).zip(targets) {
            let (latencies, elapsed) = run(
                clients,
                run_for,
                move || async move {
                    let s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    Ok(s)
                },
                host,
                path,
            )
            .await?;
            r.add((latencies.clone(), elapsed));
            s.add((latencies, elapsed));
        }
        let [a, b] = round;
        by_round.push([a.stats(), b.stats()]);
    }
    let [a, b] = samples;
    Ok(([a.stats(), b.stats()], by_round))
}

/// One GET on a fresh connection: (status, body).
pub async fn get(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<(u16, Bytes)> {
    let io = TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(Request::get(path).header("host", host).body(Empty::new())?)
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// Prints one result row.
pub fn row(label: &str, s: &Stats) {
    println!(
        "{:<28} {:>10.0} {:>8}µs {:>8}µs",
        label,
        s.rps,
        s.p50.as_micros(),
        s.p99.as_micros()
    );
}
