//! `warren serve --config edge.toml`: an edge node with the parts its config
//! names — the API, the tunnel edge, the CONNECT front door — sharing one store.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use tokio::sync::watch;
use warren_iris::api::{ApiState, router};
use warren_iris::dns_cache::{DnsCache, DnsCacheConfig};
use warren_iris::origin_tls::OriginTls;
use warren_iris::sealing::Sealer;
use warren_iris::tunnel_admin::TunnelAdmin;
use warren_iris::{EdgeConfig, FrontDoor, FrontDoorConfig, TunnelEdge};
use warren_store::{SqliteStore, Store, hash_secret};

use crate::config::{self, EdgeFile, StoreBackend};
use crate::profile::{self, Profile};

fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

/// The internal secret: from the config, else kept in the data directory.
fn internal_secret(file: &EdgeFile) -> anyhow::Result<String> {
    if let Some(s) = &file.internal_secret {
        return Ok(s.clone());
    }
    let p = file.data_dir.join("internal-secret");
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = random_token("");
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            std::io::Write::write_all(&mut opts.open(&p)?, s.as_bytes())?;
            Ok(s)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// On an empty store: an account, an admin API token (printed once), a profile.
async fn first_start(store: &dyn Store, api_url: &str) -> anyhow::Result<()> {
    if !store.list_accounts().await?.is_empty() {
        return Ok(());
    }
    let account = store.create_account("default").await?;
    let token = random_token("wrn_");
    store
        .create_api_token(&account.id, "admin", hash_secret(token.as_bytes()))
        .await?;
    let path = profile::write(&Profile {
        api: api_url.to_owned(),
        account_id: account.id.clone(),
        token: token.clone(),
    })?;
    println!(
        "First start: created account {} and an admin API token (shown once):",
        account.id
    );
    println!("  {token}");
    println!("Client profile written to {} (mode 0600).", path.display());
    Ok(())
}

fn origin_roots(
    file: &EdgeFile,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = Vec::new();
    for f in &file.connect.origin_ca_files {
        for cert in CertificateDer::pem_file_iter(f)
            .with_context(|| format!("cannot read {}", f.display()))?
        {
            roots.push(cert.with_context(|| format!("bad certificate in {}", f.display()))?);
        }
    }
    Ok(roots)
}

/// Runs the node until Ctrl-C or SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let file = config::load(config_path)?;
    std::fs::create_dir_all(&file.data_dir)
        .with_context(|| format!("cannot create {}", file.data_dir.display()))?;
    let store: Arc<dyn Store> = match file.store.backend {
        StoreBackend::Sqlite => Arc::new(SqliteStore::open(&file.data_dir.join("warren.db"))?),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();

    let mut edge_config = EdgeConfig::new(file.tunnel.listen, file.data_dir.clone());
    if let Some(n) = &file.node_name {
        edge_config.edge_name = n.clone();
    }
    let edge = TunnelEdge::bind(edge_config, store.clone())?;
    let tunnels = edge.tunnels();
    let edges = if file.tunnel.public_addresses.is_empty() {
        vec![edge.local_addr()?.to_string()]
    } else {
        file.tunnel.public_addresses.clone()
    };
    let admin = Arc::new(TunnelAdmin {
        edges,
        ca_sha256: edge.ca().fingerprint(),
        sealer: Sealer::load_or_create(&file.data_dir)?,
    });
    if file.parts.tunnel {
        tracing::info!(addr = %edge.local_addr()?, "tunnel edge listening");
        tasks.spawn(edge.run(stopped()));
    }
    if file.parts.connect {
        let dns = Arc::new(DnsCache::new(
            tunnels.clone(),
            DnsCacheConfig {
                min_ttl: file.dns_cache.min_ttl,
                max_ttl: file.dns_cache.max_ttl,
                max_negative_ttl: file.dns_cache.max_negative_ttl,
                max_entries: file.dns_cache.max_entries,
            },
        ));
        let door = FrontDoor::new(
            store.clone(),
            tunnels.clone(),
            dns,
            OriginTls::new(&origin_roots(&file)?).map_err(|e| anyhow::anyhow!("{e}"))?,
            FrontDoorConfig {
                secret: internal_secret(&file)?,
                attempt_timeout: file.connect.attempt_timeout,
            },
        );
        let listener = tokio::net::TcpListener::bind(file.connect.listen)
            .await
            .with_context(|| format!("cannot listen on {}", file.connect.listen))?;
        tracing::info!(addr = %listener.local_addr()?, "CONNECT front door listening");
        tasks.spawn(door.serve(listener, stopped()));
    }
    if file.parts.api {
        let listener = tokio::net::TcpListener::bind(file.api.listen)
            .await
            .with_context(|| format!("cannot listen on {}", file.api.listen))?;
        let addr = listener.local_addr()?;
        let url = file
            .api
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        first_start(store.as_ref(), &url).await?;
        tracing::info!(%addr, "API listening");
        let app = router(ApiState {
            store: store.clone(),
            admin,
        });
        let stop = stopped();
        tasks.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await;
        });
    }
    warren_connector::shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}
