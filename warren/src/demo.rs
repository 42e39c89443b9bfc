//! `warren demo`: the tunnel, start to finish, in one process. An edge listens
//! on loopback, a tunnel is created, a connector dials out and registers, and a
//! request reaches a "private" HTTP service through the tunnel, its host name
//! resolved by the connector's side (`localhost` from /etc/hosts).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use warren_connector::ConnectorConfig;
use warren_iris::{EdgeConfig, TunnelEdge};
use warren_store::{SqliteStore, Store};

fn step(n: u32, text: &str) {
    println!("[{n}] {text}");
}

async fn private_service() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let body = format!(
                        "hello from the private service: {} {} (peer {peer})\n",
                        req.method(),
                        req.uri()
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Runs the demo and prints each step.
pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("warren.db"))?);
    let account = store.create_account("demo").await?;

    let service = private_service().await?;
    step(
        1,
        &format!("a private HTTP service listens on {service} (the edge never dials it)"),
    );

    let edge = TunnelEdge::bind(
        EdgeConfig::new("127.0.0.1:0".parse()?, dir.path().to_owned()),
        store.clone(),
    )?;
    let edge_addr = edge.local_addr()?;
    let tunnels = edge.tunnels();
    let fingerprint = edge.ca().fingerprint();
    let (stop_edge, edge_stopped) = oneshot::channel::<()>();
    let edge_task = tokio::spawn(edge.run(async {
        let _ = edge_stopped.await;
    }));
    step(
        2,
        &format!(
            "edge (iris) listens for connectors on udp://{edge_addr}, CA sha256 {}…",
            &fingerprint[..16]
        ),
    );

    let (tunnel, token) = warren_iris::tunnel_admin::create_tunnel(
        store.as_ref(),
        &account.id,
        "demo",
        vec![edge_addr.to_string()],
        fingerprint,
    )
    .await?;
    step(
        3,
        &format!(
            "tunnel {} created; token {}…",
            tunnel.id,
            &token.encode()[..24]
        ),
    );

    let mut config = ConnectorConfig::from_token(&token)?;
    config.ha_connections = 2;
    config.metrics_addr = None;
    config.grace_period = Duration::from_secs(2);
    let (stop_connector, connector_stopped) = oneshot::channel::<()>();
    let connector = tokio::spawn(warren_connector::run(config, async {
        let _ = connector_stopped.await;
    }));
    let started = Instant::now();
    while tunnels.registry().candidates(&tunnel.id).len() < 2 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the connector did not register"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    step(
        4,
        &format!(
            "connector dialled out and registered 2 connections in {:?}",
            started.elapsed()
        ),
    );
    for c in store.list_connections(&tunnel.id).await? {
        println!(
            "      connection {} from {} on edge {}",
            c.id, c.origin_ip, c.edge_name
        );
    }

    let t = Instant::now();
    let resolved = warren_iris::resolve::resolve(&tunnels, &tunnel.id, None, "localhost").await?;
    step(
        5,
        &format!(
            "`localhost` resolved through the tunnel, on the connector's side: {:?} in {:?}",
            resolved.addrs,
            t.elapsed()
        ),
    );

    let ip = resolved
        .addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .context("localhost has no IPv4 address on this machine")?;
    let t = Instant::now();
    let stream = tunnels
        .open_tcp(
            &tunnel.id,
            SocketAddr::new(ip, service.port()),
            Duration::from_secs(5),
            "demo-1",
        )
        .await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/inventory")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))?,
        )
        .await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    step(
        6,
        &format!(
            "GET http://localhost:{}/inventory through the tunnel → {status} in {:?}",
            service.port(),
            t.elapsed()
        ),
    );
    print!("      {}", String::from_utf8_lossy(&body));

    let _ = stop_connector.send(());
    connector.await??;
    step(7, "connector unregistered and stopped cleanly");
    let _ = stop_edge.send(());
    let _ = edge_task.await;
    Ok(())
}
