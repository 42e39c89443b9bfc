//! `warren dev [DIR]`: everything in one process for developing a worker — an
//! edge (runtime, binding-worker, iris, API; SQLite in a state folder outside
//! the project), a tunnel
//! and a local connector for it, the VPC services of `DIR/services.json`, the
//! worker of the folder's config deployed through the API, a profile the other
//! commands can use against this edge, and live logs until Ctrl-C. The folder
//! is watched: a save holds new requests, rebuilds and redeploys the worker,
//! and the held requests are then served by the new code.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use warren_api::from_value_at;
use warren_api::scripts::BindingSpec;
use warren_api::services::{Service, ServiceRequest};
use warren_connector::ConnectorConfig;
use warren_store::{Store, hash_secret};

use crate::client::Client;
use crate::profile::Profile;
use crate::{config, project, serve, workers};

/// Flags of `warren dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// The worker's folder (with its config, and services.json if it declares services).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Address workers are served on.
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: IpAddr,
    /// Port workers are served on.
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// The config's `[env.NAME]` environment to run (its `.dev.vars.NAME`
    /// is read instead of `.dev.vars` when there is one).
    #[arg(long, short = 'e')]
    pub env: Option<String>,
    /// A var for this session, `KEY:VALUE` (over the config's; repeatable).
    #[arg(long = "var", value_name = "KEY:VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Do not start a connector; print the command that runs one elsewhere.
    #[arg(long)]
    pub no_connector: bool,
    /// Do not watch the folder for changes.
    #[arg(long)]
    pub no_watch: bool,
    /// State folder (default: `$XDG_STATE_HOME/warren/dev/<folder>-<hash>`,
    /// never inside the project).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// `--var KEY:VALUE`, as wrangler takes it.
fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY:VALUE, got {text:?}")),
    }
}

fn edge_file(data_dir: &Path, ip: IpAddr, port: u16) -> anyhow::Result<config::EdgeFile> {
    let mut f = config::parse("")?;
    f.data_dir = data_dir.to_owned();
    f.api.listen = ([127, 0, 0, 1], 0).into();
    f.tunnel.listen = ([127, 0, 0, 1], 0).into();
    f.connect.listen = ([127, 0, 0, 1], 0).into();
    f.binding.listen = "127.0.0.1:0".into();
    f.runtime.listen = (ip, port).into();
    Ok(f)
}

/// Creates or updates the services of `services.json` (a JSON array of VPC
/// service bodies; a missing `tunnel_id` means the dev tunnel). An entry may
/// give the `service_id` it has on the real edge, so a config naming real
/// service ids runs unedited: the dev edge then keeps the service under that
/// id. Returns name → id.
async fn ensure_services(
    client: &Client,
    store: &dyn Store,
    account_id: &str,
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
    for (i, mut raw) in list.into_iter().enumerate() {
        let given_id = match raw.as_object_mut().and_then(|o| o.remove("service_id")) {
            None => None,
            Some(Value::String(id)) if uuid::Uuid::parse_str(&id).is_ok() => {
                Some(id.to_ascii_lowercase())
            }
            Some(other) => anyhow::bail!(
                "{}: /{i}/service_id: must be a service id (a UUID), not {other}",
                path.display()
            ),
        };
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
        let saved_id = match given_id {
            Some(id) => {
                // The dev edge's own store: the API has no way to choose an id.
                let now = warren_store::rfc3339(std::time::SystemTime::now());
                let stored = svc
                    .to_service(&id, account_id, &now, &now)
                    .map_err(|e| anyhow::anyhow!("service {name} in {}: {e}", path.display()))?;
                match store.get_service(&id).await? {
                    Some(old) if old.account_id == account_id => {
                        let mut stored = stored;
                        stored.created_at = old.created_at;
                        store.replace_service(&stored).await?;
                    }
                    Some(_) => anyhow::bail!("service id {id} is taken on this edge"),
                    None => store.create_service(&stored).await?,
                }
                id
            }
            None => {
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
                saved.service_id
            }
        };
        println!("VPC service {name} → {saved_id}");
        ids.insert(name, saved_id);
    }
    Ok(ids)
}

/// Runs `warren dev`.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // The config is read (and checked) before anything starts.
    let project =
        project::load_project(&project::find_config(Some(&args.dir))?, args.env.as_deref())?;
    workers::print_warnings(&project);
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => default_data_dir(&args.dir)?,
    };
    let node = serve::start(&edge_file(&data_dir, args.ip, args.port)?, false).await?;
    let result = session(&node, &args, &data_dir).await;
    node.stop().await;
    result
}

/// The dev edge's state folder for the project in `dir`:
/// `$XDG_STATE_HOME/warren/dev/<folder name>-<hash of its path>` (default
/// `~/.local/state`), mode 0700. Never inside the project: a state folder that
/// came with a checkout could hold compiled code (which is loaded, not
/// checked) or symlinks for the edge to write through.
fn default_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::DirBuilderExt;
    let project = std::fs::canonicalize(dir)
        .with_context(|| format!("cannot read the project folder {}", dir.display()))?;
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .ok_or_else(|| {
            anyhow::anyhow!("neither XDG_STATE_HOME nor HOME is set: pass --data-dir")
        })?;
    let name: String = project
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("project")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = Sha256::digest(project.as_os_str().as_encoded_bytes());
    let dir = base
        .join("warren/dev")
        .join(format!("{name}-{}", hex::encode(&hash[..8])));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// What the last deploy was built from: an unchanged project is not uploaded again.
#[derive(Default)]
struct Deployed {
    name: String,
    upload_hash: Option<[u8; 32]>,
}

/// The project's local secrets, as `wrangler dev` reads them: `.dev.vars.ENV`
/// for `--env ENV` when it exists, else `.dev.vars` (dotenv lines). They go
/// up as `secret_text` bindings, sealed by the dev edge like any secret.
fn dev_vars(dir: &Path, env: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
    let path = env
        .map(|e| dir.join(format!(".dev.vars.{e}")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| dir.join(".dev.vars"));
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    project::dotenv::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads and bundles the project as it is now and deploys it unless its
/// upload is the one already deployed. Prints the build's elapsed time while
/// the edge builds it.
async fn deploy_project(
    client: &Client,
    args: &DevArgs,
    data_dir: &Path,
    ids: &HashMap<String, String>,
    last: &mut Deployed,
) -> anyhow::Result<bool> {
    let cfg_path = project::find_config(Some(&args.dir))?;
    let mut project = project::load_project(&cfg_path, args.env.as_deref())?;
    for (k, v) in &args.vars {
        project.vars.insert(k.clone(), Value::String(v.clone()));
    }
    for b in &mut project.vpc_services {
        if let Some(id) = ids.get(&b.service_id) {
            b.service_id = id.clone();
        }
    }
    let built = project::bundle(&project, &data_dir.join("bundle"))?;
    let mut metadata = workers::metadata(&project, &built.main_module);
    // As under `wrangler dev`, the secrets are those of `.dev.vars`, over
    // vars of the same name; none is kept from an earlier version.
    metadata.keep_bindings.clear();
    for (name, text) in dev_vars(project.dir(), args.env.as_deref())? {
        metadata.bindings.retain(|b| {
            !matches!(b, BindingSpec::PlainText { .. } | BindingSpec::Json { .. })
                || b.name() != name
        });
        metadata
            .bindings
            .push(BindingSpec::SecretText { name, text });
    }
    let hash = workers::upload_hash(&metadata, &built);
    if last.name == project.name && last.upload_hash == Some(hash) {
        return Ok(false);
    }
    let progress = elapsed_indicator(&format!(
        "bundled in {} ms; building {}",
        built.elapsed.as_millis(),
        project.name
    ));
    let result = workers::upload_quiet(client, &project.name, &metadata, &built).await;
    progress.finish_and_clear();
    result?;
    *last = Deployed {
        name: project.name,
        upload_hash: Some(hash),
    };
    Ok(true)
}

/// A spinner with the elapsed time on a terminal (nothing otherwise).
fn elapsed_indicator(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Whether a change at `path` can change the worker (not the state folder,
/// dependencies' caches, VCS data or editor scratch files).
fn watched(path: &Path, data_dir: &Path) -> bool {
    if path.starts_with(data_dir) {
        return false;
    }
    let skipped_dir = path.components().any(|c| {
        matches!(
            c.as_os_str().to_str(),
            Some(".git" | ".warren" | ".wrangler" | "target" | "node_modules")
        )
    });
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let scratch = name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.starts_with(".#")
        || name == "4913";
    !skipped_dir && !scratch
}

/// File changes in the project folder, as a channel.
fn watch(
    dir: &Path,
    data_dir: &Path,
) -> anyhow::Result<(
    notify::RecommendedWatcher,
    tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
)> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if matches!(ev.kind, EventKind::Access(_) | EventKind::Other) {
            return;
        }
        for p in ev.paths {
            if watched(&p, &data_dir) {
                let _ = tx.send(p);
            }
        }
    })?;
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    Ok((watcher, rx))
}

/// Writes the dev profile (mode 0600) that points the other commands at this edge.
fn write_profile(data_dir: &Path, profile: &Profile) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("profile.json");
    // A new file (never through a symlink that is there), then renamed over.
    let tmp = data_dir.join(format!(".profile.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(profile)?.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

async fn session(node: &serve::Running, args: &DevArgs, data_dir: &Path) -> anyhow::Result<()> {
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
    let profile_path = write_profile(
        data_dir,
        &Profile {
            api: api.clone(),
            account_id: account.id.clone(),
            token: token.clone(),
            ca_cert: None,
        },
    )?;
    println!(
        "edge API at {api} (account {}); tunnel edge on udp://{tunnel_addr}",
        account.id
    );
    println!(
        "other commands reach this edge with its profile, e.g.\n  export WARREN_PROFILE={}\n  warren vpc service list; warren tail <worker>; warren deploy",
        profile_path.display()
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
    let result = watch_and_serve(node, args, data_dir, &client, &account.id, &tunnel.id).await;
    println!("stopping");
    let _ = stop_connector.send(());
    if let Some(c) = connector {
        let _ = c.await;
    }
    result
}

/// Deploys the project, then follows its logs and redeploys it on every save
/// until Ctrl-C.
async fn watch_and_serve(
    node: &serve::Running,
    args: &DevArgs,
    data_dir: &Path,
    client: &Client,
    account_id: &str,
    tunnel_id: &str,
) -> anyhow::Result<()> {
    let scripts = node
        .scripts
        .clone()
        .ok_or_else(|| anyhow::anyhow!("this edge runs no workers"))?;
    let services_path = args.dir.join("services.json");
    let ids = ensure_services(
        client,
        node.store.as_ref(),
        account_id,
        &services_path,
        tunnel_id,
    )
    .await?;
    let mut last = Deployed::default();
    deploy_project(client, args, data_dir, &ids, &mut last).await?;
    let port = node.runtime_addr.map_or(args.port, |a| a.port());
    let live = |name: &str| {
        println!(
            "\n{name} is live at http://{name}.{}:{port}/ (and http://{}:{port}/)\nlogs follow; Ctrl-C stops everything\n",
            node.workers_domain,
            if args.ip.is_unspecified() || args.ip.is_loopback() {
                "localhost".to_owned()
            } else {
                args.ip.to_string()
            }
        )
    };
    scripts.router().set_fallback(Some(last.name.clone()));
    let (_watcher, mut changes) = if args.no_watch {
        (None, tokio::sync::mpsc::unbounded_channel().1)
    } else {
        let (w, rx) = watch(&args.dir, data_dir)?;
        (Some(w), rx)
    };
    let mut logs = scripts
        .tail(account_id, &last.name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot follow the worker's logs: {e}"))?;
    live(&last.name);
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
            Some(first) = changes.recv() => {
                // Requests from now on wait for the new code.
                let hold = scripts.router().hold();
                let saved = Instant::now();
                // Editors write a file in several steps: wait for a quiet 50 ms.
                while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), changes.recv()).await {}
                let name = last.name.clone();
                match deploy_project(client, args, data_dir, &ids, &mut last).await {
                    Ok(false) => {}
                    Ok(true) => {
                        scripts.router().set_fallback(Some(last.name.clone()));
                        if last.name != name
                            && let Ok(l) = scripts.tail(account_id, &last.name).await
                        {
                            logs = l;
                        }
                        println!(
                            "{} changed: redeployed in {:.2?}",
                            first.display(),
                            saved.elapsed()
                        );
                        live(&last.name);
                    }
                    Err(e) => println!(
                        "{} changed, and the worker did not build: {e:#}\nthe previous version keeps serving; fix and save again",
                        first.display()
                    ),
                }
                drop(hold);
            }
            () = &mut stop => break,
        }
    }
    Ok(())
}
