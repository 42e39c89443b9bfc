//! `warren dev [DIR]`: everything in one process for developing a worker — an
//! edge (runtime, binding-worker, iris, API; SQLite in `DIR/.warren`), a tunnel
//! and a local connector for it, the VPC services of `DIR/services.json`, the
//! worker of `DIR/warren.json` deployed through the API, its URL, and its live
//! logs until Ctrl-C.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use warren_api::from_value_at;
use warren_api::services::{Service, ServiceRequest};
use warren_connector::ConnectorConfig;
use warren_store::hash_secret;

use crate::client::Client;
use crate::{config, serve, workers};

/// Flags of `warren dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// The worker's folder (with warren.json, and services.json if it declares services).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Port workers are served on.
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// Do not start a connector; print the command that runs one elsewhere.
    #[arg(long)]
    pub no_connector: bool,
    /// State folder (default DIR/.warren).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

fn edge_file(data_dir: &Path, port: u16) -> anyhow::Result<config::EdgeFile> {
    let mut f = config::parse("")?;
    f.data_dir = data_dir.to_owned();
    f.api.listen = ([127, 0, 0, 1], 0).into();
    f.tunnel.listen = ([127, 0, 0, 1], 0).into();
    f.connect.listen = ([127, 0, 0, 1], 0).into();
    f.binding.listen = "127.0.0.1:0".into();
    f.runtime.listen = ([127, 0, 0, 1], port).into();
    Ok(f)
}

/// Creates or updates the services of `services.json` (a JSON array of VPC
/// service bodies; a missing `tunnel_id` means the dev tunnel). Returns name → id.
async fn ensure_services(
    client: &Client,
    path: &Path,
    tunnel_id: &str,
) -> anyhow::Result<HashMap<String, String>> {
    let mut ids = HashMap::new();
    if !path.is_file() {
        return Ok(ids);
    }
    let text = std::fs::read_to_string(path)?;
    let list: Vec<Value> = serde_json::from_str(&text)
        .with_context(|| format!("{} must be a JSON array of services", path.display()))?;
    let existing: Vec<Service> = client
        .get("connectivity/directory/services?per_page=1000")
        .await?;
    for (i, raw) in list.into_iter().enumerate() {
        let mut svc: ServiceRequest = from_value_at(raw, &format!("/{i}"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let name = svc
            .name
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{}: every service needs a name", path.display()))?;
        // A service without a tunnel goes through the dev tunnel.
        if let Some(host) = svc.host.as_mut() {
            if let Some(n) = host.resolver_network.as_mut()
                && n.tunnel_id.is_none()
            {
                n.tunnel_id = Some(tunnel_id.to_owned());
            }
            if let Some(n) = host.network.as_mut()
                && n.tunnel_id.is_none()
            {
                n.tunnel_id = Some(tunnel_id.to_owned());
            }
        }
        svc.validate()
            .map_err(|e| anyhow::anyhow!("service {name} in {}: {e}", path.display()))?;
        let found = existing
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.service_id.clone());
        let saved: Service = match &found {
            Some(id) => {
                client
                    .put(&format!("connectivity/directory/services/{id}"), &svc)
                    .await
            }
            None => client.post("connectivity/directory/services", &svc).await,
        }
        .with_context(|| format!("service {name} in {}", path.display()))?;
        println!("VPC service {name} → {}", saved.service_id);
        ids.insert(name, saved.service_id);
    }
    Ok(ids)
}

/// Runs `warren dev`.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let cfg_path = workers::find_config(Some(&args.dir))?;
    let mut file = workers::read_config(&cfg_path)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| args.dir.join(".warren"));
    let node = serve::start(&edge_file(&data_dir, args.port)?, false).await?;
    let result = session(&node, &args, &cfg_path, &mut file).await;
    node.stop().await;
    result
}

async fn session(
    node: &serve::Running,
    args: &DevArgs,
    cfg_path: &Path,
    file: &mut workers::WorkerFile,
) -> anyhow::Result<()> {
    let store = node.store.clone();
    let account = store
        .list_accounts()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the dev edge has no account"))?;
    let token = serve::random_token("wrn_dev_");
    store
        .create_api_token(&account.id, "warren dev", hash_secret(token.as_bytes()))
        .await?;
    let api = node.api_url.clone().unwrap_or_default();
    let client = Client::with(&api, &account.id, &token)?;
    let tunnel_addr = node
        .tunnel_addr
        .ok_or_else(|| anyhow::anyhow!("the dev edge runs no tunnel edge"))?;
    println!(
        "edge API at {api} (account {}); tunnel edge on udp://{tunnel_addr}",
        account.id
    );
    if let Some(m) = node.metrics_addr {
        println!("metrics at http://{m}/metrics");
    }

    let tunnel = match store
        .list_tunnels(&account.id)
        .await?
        .into_iter()
        .find(|t| t.name == "warren-dev")
    {
        Some(t) => t,
        None => {
            node.admin
                .create(store.as_ref(), &account.id, "warren-dev", None)
                .await?
                .0
        }
    };
    let tunnel_token = node
        .admin
        .token(&tunnel)
        .ok_or_else(|| anyhow::anyhow!("cannot recover the dev tunnel's token"))?;
    let (stop_connector, connector_stopped) = tokio::sync::oneshot::channel::<()>();
    let connector = if args.no_connector {
        println!(
            "tunnel {}: run a connector where the private services are:\n  warren-connector run --token {}",
            tunnel.id,
            tunnel_token.encode()
        );
        None
    } else {
        let mut cc = ConnectorConfig::from_token(&tunnel_token)?;
        cc.ha_connections = 2;
        cc.metrics_addr = None;
        cc.grace_period = Duration::from_secs(2);
        println!("tunnel {}: local connector started", tunnel.id);
        Some(tokio::spawn(warren_connector::run(cc, async {
            let _ = connector_stopped.await;
        })))
    };

    let services_path = cfg_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("services.json");
    let ids = ensure_services(&client, &services_path, &tunnel.id).await?;
    for b in &mut file.vpc_services {
        if let Some(id) = ids.get(&b.service_id) {
            b.service_id = id.clone();
        }
    }
    workers::deploy(&client, cfg_path, file).await?;
    if let Some(s) = &node.scripts {
        s.router().set_fallback(Some(file.name.clone()));
    }
    let port = node.runtime_addr.map_or(args.port, |a| a.port());
    println!(
        "\n{} is live at http://{}.{}:{port}/ (and http://localhost:{port}/)\nlogs follow; Ctrl-C stops everything\n",
        file.name, file.name, node.workers_domain
    );
    let mut logs = node
        .scripts
        .as_ref()
        .and_then(|s| s.tail(&account.id, &file.name))
        .ok_or_else(|| anyhow::anyhow!("this edge runs no workers"))?;
    let stop = warren_connector::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            ev = logs.recv() => match ev {
                Ok(ev) => workers::print_event(&serde_json::to_string(&ev).unwrap_or_default(), false),
                Err(end) => {
                    println!("logs stopped ({})", end.as_str());
                    break;
                }
            },
            () = &mut stop => break,
        }
    }
    println!("stopping");
    let _ = stop_connector.send(());
    if let Some(c) = connector {
        let _ = c.await;
    }
    Ok(())
}
