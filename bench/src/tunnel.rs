//! bench/tunnel: how the Warren tunnel compares with direct loopback TCP and with
//! rathole carrying the same traffic, measured in one run on this machine.
//!
//! 1. Bulk: one TCP download of BENCH_BYTES (default 1 GiB) from a local source,
//!    best of 3 runs each, interleaved. The Warren tunnel is measured on both of
//!    its transports: QUIC (what a connector uses unless UDP is blocked) and TLS
//!    over TCP with the stream multiplexer (`--protocol tcp`), each with its own
//!    edge and connector process.
//! 2. Upload: BENCH_BYTES sent the other way, to a sink that answers with the
//!    count it read once the sender's FIN reaches it (so the time includes the
//!    last byte's arrival), best of 3, interleaved.
//! 3. Short streams: connections opened, one byte echoed, closed, by 8 clients
//!    for 3 s each.
//!
//! The tunnel's edge runs in this process and the real `warren-connector` binary
//! in its own; rathole runs as two processes (server + client). All share the
//! same cores, and the bench's client runs in this process for every path.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren_bench::procs::free_port;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warren_iris::{EdgeConfig, TunnelEdge, Tunnels};
use warren_store::{SqliteStore, Store};

const RUNS: usize = 3;
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const CLIENTS: usize = 8;
const SHORT_FOR: Duration = Duration::from_secs(3);

/// The local servers every path reaches: a source to download from, an echo
/// server for short streams, a sink to upload to.
#[derive(Clone, Copy)]
struct Servers {
    source: SocketAddr,
    echo: SocketAddr,
    sink: SocketAddr,
}

/// Which of the [`Servers`] a stream goes to.
#[derive(Clone, Copy)]
enum Target {
    Source,
    Echo,
    Sink,
}

impl Servers {
    fn get(&self, target: Target) -> SocketAddr {
        match target {
            Target::Source => self.source,
            Target::Echo => self.echo,
            Target::Sink => self.sink,
        }
    }
}

/// How to reach the [`Servers`] through one transport.
#[derive(Clone)]
enum Path {
    /// Straight to the servers, or to rathole's server ports for them.
    Tcp(Servers),
    /// Through the Warren tunnel `tunnel` to the servers.
    Tunnel {
        tunnels: Tunnels,
        tunnel: String,
        servers: Servers,
    },
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Path {
    async fn open(&self, target: Target) -> anyhow::Result<Box<dyn Io>> {
        Ok(match self {
            Path::Tcp(servers) => {
                let s = TcpStream::connect(servers.get(target)).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Path::Tunnel {
                tunnels,
                tunnel,
                servers,
            } => Box::new(
                tunnels
                    .open_tcp(tunnel, servers.get(target), Duration::from_secs(5), "bench")
                    .await?,
            ),
        })
    }
}

async fn source_server(bytes: u64) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        let block = Arc::new(vec![0x5au8; 1 << 20]);
        while let Ok((mut s, _)) = l.accept().await {
            let block = block.clone();
            tokio::spawn(async move {
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    if s.write_all(&block[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

async fn echo_server() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
            });
        }
    });
    Ok(addr)
}

/// Reads each connection to its end, then answers with the count read (8 bytes,
/// big-endian) and closes.
async fn sink_server() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => got += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(&got.to_be_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Downloads everything from the source; returns bytes per second.
async fn bulk(path: &Path, expect: u64) -> anyhow::Result<f64> {
    let mut s = path.open(Target::Source).await?;
    let start = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    if got != expect {
        bail!("received {got} of {expect} bytes");
    }
    Ok(got as f64 / secs)
}

/// Sends `bytes` to the sink and waits for its count; returns bytes per second.
async fn upload(path: &Path, bytes: u64) -> anyhow::Result<f64> {
    let mut s = path.open(Target::Sink).await?;
    let block = vec![0xa5u8; 256 * 1024];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        s.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .await
        .context("reading the sink's count")?;
    let secs = start.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    if got != bytes {
        bail!("the sink received {got} of {bytes} bytes");
    }
    Ok(bytes as f64 / secs)
}

/// Short echo streams by CLIENTS concurrent clients for SHORT_FOR; returns streams per second.
async fn short_streams(path: &Path) -> anyhow::Result<f64> {
    let deadline = Instant::now() + SHORT_FOR;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let mut s = path.open(Target::Echo).await?;
                s.write_all(b"x").await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Child processes killed on drop (rathole's server and client, the connector).
struct Rathole {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Rathole {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rathole_keys(bin: &PathBuf) -> anyhow::Result<(String, String)> {
    let out = Command::new(bin)
        .arg("--genkey")
        .output()
        .context("rathole --genkey")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let after = |label: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(label))
            .and_then(|i| lines.get(i + 1))
            .map(|s| s.to_string())
    };
    match (after("Private Key"), after("Public Key")) {
        (Some(private), Some(public)) => Ok((private, public)),
        _ => bail!("unexpected rathole --genkey output: {text}"),
    }
}

async fn start_rathole(
    bin: &PathBuf,
    noise: bool,
    servers: Servers,
) -> anyhow::Result<(Rathole, Path)> {
    let dir = tempfile::tempdir()?;
    let (control, src_port, echo_port, sink_port) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let Servers { source, echo, sink } = servers;
    let (server_transport, client_transport) = if noise {
        let (private, public) = rathole_keys(bin)?;
        (
            format!(
                "[server.transport]\ntype = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"
            ),
            format!(
                "[client.transport]\ntype = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public}\"\n"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let server = format!(
        "[server]\nbind_addr = \"127.0.0.1:{control}\"\n{server_transport}\
         [server.services.src]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{src_port}\"\nnodelay = true\n\
         [server.services.echo]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{echo_port}\"\nnodelay = true\n\
         [server.services.sink]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{sink_port}\"\nnodelay = true\n"
    );
    let client = format!(
        "[client]\nremote_addr = \"127.0.0.1:{control}\"\n{client_transport}\
         [client.services.src]\ntoken = \"bench\"\nlocal_addr = \"{source}\"\nnodelay = true\n\
         [client.services.echo]\ntoken = \"bench\"\nlocal_addr = \"{echo}\"\nnodelay = true\n\
         [client.services.sink]\ntoken = \"bench\"\nlocal_addr = \"{sink}\"\nnodelay = true\n"
    );
    std::fs::write(dir.path().join("server.toml"), server)?;
    std::fs::write(dir.path().join("client.toml"), client)?;
    let spawn = |mode: &str, file: &str| {
        Command::new(bin)
            .arg(mode)
            .arg(dir.path().join(file))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let children = vec![
        spawn("--server", "server.toml")?,
        spawn("--client", "client.toml")?,
    ];
    let rathole = Rathole {
        children,
        _dir: dir,
    };
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let path = Path::Tcp(Servers {
        source: local(src_port),
        echo: local(echo_port),
        sink: local(sink_port),
    });
    // Ready when an echo goes through.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = async {
            let mut s = path.open(Target::Echo).await?;
            s.write_all(b"x").await?;
            let mut b = [0u8; 1];
            tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut b)).await??;
            anyhow::Ok(())
        }
        .await;
        if ok.is_ok() {
            return Ok((rathole, path));
        }
        if Instant::now() > deadline {
            bail!("rathole did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An edge in this process and the real connector binary dialling it with
/// `protocol` (`quic` or `tcp`).
async fn start_tunnel(
    connector_bin: &PathBuf,
    protocol: &str,
    servers: Servers,
) -> anyhow::Result<(tempfile::TempDir, Rathole, Path)> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open_in_memory()?);
    let account = store.create_account("bench").await?;
    let edge = TunnelEdge::bind(
        // A port free on TCP too: the TLS/TCP connector needs the fallback
        // listener, which the edge skips when the port is taken on TCP.
        EdgeConfig::new(
            SocketAddr::from((LOCALHOST, warren_testkit::free_port_on(LOCALHOST))),
            dir.path().to_owned(),
        ),
        store.clone(),
    )?;
    let tunnels = edge.tunnels();
    let (tunnel, token) = warren_iris::tunnel_admin::create_tunnel(
        store.as_ref(),
        &account.id,
        "bench",
        vec![edge.local_addr()?.to_string()],
        edge.ca().fingerprint(),
    )
    .await?;
    tokio::spawn(edge.run(std::future::pending()));
    // The real connector binary, in its own process (as rathole's client is).
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let child = Command::new(connector_bin)
        .args(["run", "--metrics", &metrics, "--protocol", protocol])
        .env("WARREN_TUNNEL_TOKEN", token.encode())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", connector_bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while tunnels.registry().candidates(&tunnel.id).len() < 4 {
        if Instant::now() > deadline {
            bail!("connector did not register");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let guard = Rathole {
        children: vec![child],
        _dir: tempfile::tempdir()?,
    };
    Ok((
        dir,
        guard,
        Path::Tunnel {
            tunnels,
            tunnel: tunnel.id,
            servers,
        },
    ))
}

fn mib(bps: f64) -> String {
    format!("{:.0} MiB/s", bps / (1024.0 * 1024.0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The edge runs in this process: the allocator settings of a node's.
    warren_transport::alloc::tune();
    let mut args = std::env::args().skip(1);
    let mut rathole_bin = None;
    let mut connector_bin = PathBuf::from("target/release/warren-connector");
    // For profiling one path: (over TLS/TCP, uploads, count).
    let mut repeat: Option<(bool, bool, u32)> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quic-downloads" => {
                let n = args.next().context("--quic-downloads N")?;
                repeat = Some((
                    false,
                    false,
                    n.parse().context("--quic-downloads N: a count")?,
                ));
            }
            "--repeat" => {
                let usage = "--repeat quic|tcp download|upload N";
                let (t, d, n) = (args.next(), args.next(), args.next());
                let tcp = match t.as_deref() {
                    Some("quic") => false,
                    Some("tcp") => true,
                    _ => bail!("{usage}"),
                };
                let up = match d.as_deref() {
                    Some("download") => false,
                    Some("upload") => true,
                    _ => bail!("{usage}"),
                };
                let n = n
                    .context(usage)?
                    .parse()
                    .context("--repeat: N is a count")?;
                repeat = Some((tcp, up, n));
            }
            "--rathole" => rathole_bin = args.next().map(PathBuf::from),
            "--connector" => {
                connector_bin = args.next().map(PathBuf::from).context("--connector PATH")?
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let rathole_bin =
        rathole_bin.context("--rathole PATH is required (bench/tunnel/run.sh installs it)")?;
    let bytes: u64 = std::env::var("BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);

    let servers = Servers {
        source: source_server(bytes).await?,
        echo: echo_server().await?,
        sink: sink_server().await?,
    };
    let direct = Path::Tcp(servers);
    let (_tdir, _connector, tunnel) = start_tunnel(&connector_bin, "quic", servers).await?;
    let (_tcp_dir, _tcp_connector, tunnel_tcp) =
        start_tunnel(&connector_bin, "tcp", servers).await?;
    let (_rt, rathole_tcp) = start_rathole(&rathole_bin, false, servers).await?;
    let (_rn, rathole_noise) = start_rathole(&rathole_bin, true, servers).await?;
    let paths = [
        ("direct TCP", &direct),
        ("warren tunnel (QUIC)", &tunnel),
        ("warren tunnel (TLS/TCP)", &tunnel_tcp),
        ("rathole (TCP, plaintext)", &rathole_tcp),
        ("rathole (Noise, encrypted)", &rathole_noise),
    ];
    const QUIC: usize = 1;
    const TCP: usize = 2;
    const RATHOLE_TCP: usize = 3;
    const RATHOLE_NOISE: usize = 4;

    println!(
        "bench/tunnel: {} MiB download and upload, best of {RUNS} (interleaved); {CLIENTS} clients × {SHORT_FOR:?} of short echo streams",
        bytes >> 20
    );
    if let Some((tcp, up, n)) = repeat {
        // For profiling one path: no peers, no ratios.
        let (path, name) = if tcp {
            (&tunnel_tcp, "TLS/TCP")
        } else {
            (&tunnel, "QUIC")
        };
        for i in 1..=n {
            let (what, rate) = if up {
                ("upload", upload(path, bytes).await?)
            } else {
                ("download", bulk(path, bytes).await?)
            };
            println!("{name} {what} {i}: {}", mib(rate));
        }
        return Ok(());
    }
    let mut down = [0f64; 5];
    let mut up = [0f64; 5];
    for _ in 0..RUNS {
        for (i, (_, p)) in paths.iter().enumerate() {
            down[i] = down[i].max(bulk(p, bytes).await?);
        }
        for (i, (_, p)) in paths.iter().enumerate() {
            up[i] = up[i].max(upload(p, bytes).await?);
        }
    }
    if let Path::Tunnel {
        tunnels, tunnel, ..
    } = &tunnel
    {
        let mtus: Vec<u16> = tunnels
            .registry()
            .connections(tunnel)
            .iter()
            .filter_map(|c| c.path_mtu())
            .collect();
        println!("tunnel connections' path MTU: {mtus:?}");
    }
    let mut rate = [0f64; 5];
    for (i, (_, p)) in paths.iter().enumerate() {
        rate[i] = short_streams(p).await?;
    }
    println!(
        "{:<28} {:>12} {:>12} {:>16}",
        "path", "download", "upload", "short streams/s"
    );
    for (i, (name, _)) in paths.iter().enumerate() {
        println!(
            "{:<28} {:>12} {:>12} {:>16.0}",
            name,
            mib(down[i]),
            mib(up[i]),
            rate[i]
        );
    }
    for (w, wname) in [(QUIC, "QUIC"), (TCP, "TLS/TCP")] {
        println!("ratios (warren tunnel over {wname} / peer):");
        for (i, (name, _)) in paths.iter().enumerate() {
            if i == QUIC || i == TCP {
                continue;
            }
            println!(
                "  vs {:<26} download {:.2}x   upload {:.2}x   short streams {:.2}x",
                name,
                down[w] / down[i],
                up[w] / up[i],
                rate[w] / rate[i]
            );
        }
    }
    // Bulk both ways against rathole's faster transport.
    for (dir, rates) in [("download", &down), ("upload", &up)] {
        let rathole = rates[RATHOLE_TCP].max(rates[RATHOLE_NOISE]);
        for (w, wname) in [(QUIC, "QUIC"), (TCP, "TLS/TCP")] {
            println!(
                "goal (tunnel bulk {dir} >= rathole's), over {wname}: {} ({:.2}x)",
                if rates[w] >= rathole {
                    "met"
                } else {
                    "NOT met"
                },
                rates[w] / rathole
            );
        }
    }
    Ok(())
}
