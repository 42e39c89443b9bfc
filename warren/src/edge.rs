//! `warren edge` and `warren tunnel create`: an edge node's state lives in a data
//! directory (SQLite + the edge CA) that both commands share.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use warren_iris::{EdgeCa, EdgeConfig, TunnelEdge};
use warren_store::{Account, SqliteStore, Store};

/// Opens the store in `data_dir`, creating the directory.
pub fn open_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    Ok(SqliteStore::open(&data_dir.join("warren.db"))?)
}

/// The first account, created on first use.
pub async fn default_account(store: &dyn Store) -> anyhow::Result<Account> {
    if let Some(a) = store.list_accounts().await?.into_iter().next() {
        return Ok(a);
    }
    let a = store.create_account("default").await?;
    eprintln!("created account {}", a.id);
    Ok(a)
}

/// Runs the tunnel edge until Ctrl-C.
pub async fn run(data_dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let store = Arc::new(open_store(data_dir)?);
    default_account(store.as_ref()).await?;
    let edge = TunnelEdge::bind(EdgeConfig::new(listen, data_dir.to_owned()), store)?;
    tracing::info!(
        addr = %edge.local_addr()?,
        ca_sha256 = %edge.ca().fingerprint(),
        "tunnel edge listening; create a tunnel with `warren tunnel create NAME --data-dir {}`",
        data_dir.display()
    );
    edge.run(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}

/// Creates a tunnel and prints its token on stdout.
pub async fn create_tunnel(data_dir: &Path, name: &str, edges: Vec<String>) -> anyhow::Result<()> {
    let store = open_store(data_dir)?;
    let account = default_account(&store).await?;
    let ca = EdgeCa::load_or_create(data_dir)?;
    let (tunnel, token) = warren_iris::tunnel_admin::create_tunnel(
        &store,
        &account.id,
        name,
        edges,
        ca.fingerprint(),
    )
    .await?;
    eprintln!(
        "created tunnel {} ({}); its token (shown once):",
        tunnel.name, tunnel.id
    );
    println!("{}", token.encode());
    Ok(())
}
