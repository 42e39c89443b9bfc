//! bench/iris: HTTP requests through pooled CONNECT tunnels (front door → QUIC
//! tunnel → the real connector binary → origin) against the same requests sent
//! straight to the origin, in one run: requests/s and p50/p99 latency, with 1
//! client (latency) and 8 clients (throughput), each client on one keep-alive
//! connection (its own CONNECT tunnel on the tunnel path, opened over TLS with
//! a node certificate, as a binding-worker does).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use warren_bench::load::{self, Samples};
use warren_bench::procs::Kill;
use warren_iris::dns_cache::{DnsCache, DnsCacheConfig};
use warren_iris::origin_tls::OriginTls;
use warren_iris::{EdgeConfig, FrontDoor, FrontDoorConfig, NodeIdentity, TunnelEdge};
use warren_store::{
    CertVerificationMode, ScriptRecord, ServiceHost, ServiceType, SqliteStore, Store, VpcService,
    rfc3339,
};

/// The worker the bench's service is bound by.
const WORKER: &str = "bench";

/// A connection the load generator drives: TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
const RUN_FOR: Duration = Duration::from_secs(3);
const ROUNDS: usize = 2;

/// Opens a CONNECT tunnel to `service` through the front door, for the
/// bench's worker.
async fn connect(
    front: SocketAddr,
    tls: TlsConnector,
    service: &str,
) -> anyhow::Result<impl Io + use<>> {
    let tcp = TcpStream::connect(front).await?;
    tcp.set_nodelay(true)?;
    let mut s = tls.connect(NodeIdentity::server_name(), tcp).await?;
    let req = format!(
        "CONNECT {service}:80 HTTP/1.1\r\nHost: {service}:80\r\nwarren-script: {WORKER}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            bail!("front door closed");
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!("CONNECT refused: {}", String::from_utf8_lossy(&head));
    }
    Ok(s)
}

/// Opens one client connection: straight to the origin, or a CONNECT tunnel.
#[derive(Clone)]
enum Target {
    Direct(SocketAddr),
    Tunnel {
        front: SocketAddr,
        tls: TlsConnector,
        service: String,
    },
}

impl Target {
    async fn open(self) -> anyhow::Result<Box<dyn Io>> {
        match self {
            Target::Direct(a) => {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Ok(Box::new(s))
            }
            Target::Tunnel {
                front,
                tls,
                service,
            } => Ok(Box::new(connect(front, tls, &service).await?)),
        }
    }
}

/// `clients` keep-alive clients for RUN_FOR: latencies and elapsed time.
async fn load(target: &Target, clients: usize) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let target = target.clone();
    load::run(
        clients,
        RUN_FOR,
        move || target.clone().open(),
        "inventory.internal",
        "/items",
    )
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut connector_bin = std::path::PathBuf::from("target/release/warren-connector");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--connector" => {
                connector_bin = args.next().map(Into::into).context("--connector PATH")?
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let origin = warren_bench::procs::short_origin().await?;
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open_in_memory()?);
    let account = store.create_account("bench").await?.id;
    let edge = TunnelEdge::bind(
        EdgeConfig::new("127.0.0.1:0".parse()?, dir.path().to_owned()),
        store.clone(),
    )?;
    let tunnels = edge.tunnels();
    let identity = Arc::new(NodeIdentity::issue(edge.ca(), "bench")?);
    let (tunnel, token) = warren_iris::tunnel_admin::create_tunnel(
        store.as_ref(),
        &account,
        "bench",
        vec![edge.local_addr()?.to_string()],
        edge.ca().fingerprint(),
    )
    .await?;
    tokio::spawn(edge.run(std::future::pending()));
    let metrics = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    );
    let _connector = Kill(
        Command::new(&connector_bin)
            .args(["run", "--metrics", &metrics])
            .env("WARREN_TUNNEL_TOKEN", token.encode())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", connector_bin.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while tunnels.registry().candidates(&tunnel.id).len() < 4 {
        if Instant::now() > deadline {
            bail!("connector did not register");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let now = rfc3339(SystemTime::now());
    let service = VpcService {
        id: "bench-service".into(),
        account_id: account.clone(),
        name: "inventory".into(),
        service_type: ServiceType::Http,
        http_port: Some(origin.port()),
        https_port: None,
        tcp_port: None,
        host: ServiceHost::Addresses {
            ipv4: Some("127.0.0.1".parse()?),
            ipv6: None,
            tunnel_id: tunnel.id.clone(),
        },
        cert_verification_mode: CertVerificationMode::VerifyFull,
        created_at: now.clone(),
        updated_at: now,
    };
    store.create_service(&service).await?;
    store
        .put_script(
            &ScriptRecord {
                name: WORKER.into(),
                account_id: account.clone(),
                tag: "bench".into(),
                metadata: "{}".into(),
                services: vec![service.id.clone()],
                routes: Vec::new(),
                bundle: "00".repeat(32),
                secrets: Default::default(),
                created_on: rfc3339(SystemTime::now()),
                modified_on: rfc3339(SystemTime::now()),
            },
            None,
        )
        .await?;
    let door = FrontDoor::new(
        warren_store::cache::ServiceCache::new(store.clone()),
        tunnels.clone(),
        Arc::new(DnsCache::new(tunnels.clone(), DnsCacheConfig::default())),
        OriginTls::new(&[]).map_err(|e| anyhow::anyhow!("{e}"))?,
        FrontDoorConfig {
            identity: identity.clone(),
            attempt_timeout: Duration::from_secs(5),
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let front = listener.local_addr()?;
    tokio::spawn(door.serve(listener, std::future::pending()));

    let direct = Target::Direct(origin);
    let through = Target::Tunnel {
        front,
        tls: TlsConnector::from(Arc::new(identity.client_config(&[b"http/1.1"]))),
        service: service.id.clone(),
    };
    println!(
        "bench/iris: GET through pooled CONNECT tunnels vs straight to the origin; {ROUNDS} interleaved rounds of {RUN_FOR:?}"
    );
    println!(
        "{:<10} {:<8} {:>10} {:>10} {:>10}",
        "clients", "path", "req/s", "p50", "p99"
    );
    for clients in [1usize, 8] {
        let (mut d, mut t) = (Samples::default(), Samples::default());
        for _ in 0..ROUNDS {
            d.add(load(&direct, clients).await?);
            t.add(load(&through, clients).await?);
        }
        let (d, t) = (d.stats(), t.stats());
        for (name, s) in [("direct", &d), ("tunnel", &t)] {
            println!(
                "{:<10} {:<8} {:>10.0} {:>8}µs {:>8}µs",
                clients,
                name,
                s.rps,
                s.p50.as_micros(),
                s.p99.as_micros()
            );
        }
        let added = t.p50.saturating_sub(d.p50);
        println!(
            "{:<10} ratio    {:>9.2}x  added p50 {}µs, p99 {}µs",
            clients,
            t.rps / d.rps,
            added.as_micros(),
            t.p99.saturating_sub(d.p99).as_micros()
        );
        if clients == 1 {
            println!(
                "goal (added p50 on the warm path <= 250µs): {}",
                if added <= Duration::from_micros(250) {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
    }
    Ok(())
}
