//! `warren tunnel …` and `warren vpc service …`: the API from the command line,
//! with wrangler's flag names.

use std::path::PathBuf;

use anyhow::Context;
use hyper::Method;
use serde_json::{Map, Value, json};

use crate::client::{ApiFlags, Client};

/// `warren tunnel`.
#[derive(clap::Subcommand, Debug)]
pub enum TunnelCommand {
    /// Create a tunnel; prints its token.
    Create {
        /// Tunnel name.
        name: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tunnels.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one tunnel with its status and connections.
    Get {
        /// Tunnel id.
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a tunnel's token.
    Token {
        /// Tunnel id.
        id: String,
    },
    /// Delete a tunnel (refused while VPC services use it).
    Delete {
        /// Tunnel id.
        id: String,
    },
}

/// Flags describing a VPC service.
#[derive(clap::Args, Debug, Default)]
pub struct ServiceFlags {
    /// `http` (or `tcp`).
    #[arg(long = "type")]
    pub service_type: Option<String>,
    /// Tunnel the service is reached through.
    #[arg(long)]
    pub tunnel_id: Option<String>,
    /// Host name resolved inside the private network.
    #[arg(long, conflicts_with_all = ["ipv4", "ipv6"])]
    pub hostname: Option<String>,
    /// Resolvers inside the network, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub resolver_ips: Option<Vec<String>>,
    /// IPv4 address.
    #[arg(long)]
    pub ipv4: Option<String>,
    /// IPv6 address.
    #[arg(long)]
    pub ipv6: Option<String>,
    /// Port for http:// requests.
    #[arg(long)]
    pub http_port: Option<u16>,
    /// Port for https:// requests.
    #[arg(long)]
    pub https_port: Option<u16>,
    /// verify_full, verify_ca or disabled.
    #[arg(long)]
    pub cert_verification_mode: Option<String>,
    /// Start from a JSON file in the API's shape (flags override its fields).
    #[arg(long)]
    pub from_json: Option<PathBuf>,
}

/// `warren vpc service`.
#[derive(clap::Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create a VPC service.
    Create {
        /// Service name.
        name: Option<String>,
        #[command(flatten)]
        flags: ServiceFlags,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List VPC services.
    List {
        /// Only this type.
        #[arg(long = "type")]
        service_type: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one service.
    Get {
        /// Service id.
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a service: the flags given replace those fields.
    Update {
        /// Service id.
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        flags: ServiceFlags,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a service.
    Delete {
        /// Service id.
        id: String,
    },
}

fn print_tunnel(t: &Value) {
    println!(
        "{}  {}  {}  {} connection(s)",
        t["id"].as_str().unwrap_or(""),
        t["name"].as_str().unwrap_or(""),
        t["status"].as_str().unwrap_or(""),
        t["connections"].as_array().map(Vec::len).unwrap_or(0)
    );
}

fn print_service(s: &Value) {
    let h = &s["host"];
    let host = h["hostname"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| {
            [h["ipv4"].as_str(), h["ipv6"].as_str()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(",")
        });
    println!(
        "{}  {}  {}  {}  http:{} https:{}",
        s["service_id"].as_str().unwrap_or(""),
        s["name"].as_str().unwrap_or(""),
        s["type"].as_str().unwrap_or(""),
        host,
        s["http_port"],
        s["https_port"]
    );
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Runs a tunnel command.
pub async fn tunnel(api: &ApiFlags, cmd: TunnelCommand) -> anyhow::Result<()> {
    let c = Client::new(api)?;
    match cmd {
        TunnelCommand::Create { name, json } => {
            let (t, _) = c
                .call(Method::POST, "cfd_tunnel", Some(&json!({ "name": name })))
                .await?;
            if json {
                print_json(&t);
            } else {
                print_tunnel(&t);
                println!(
                    "token (run `warren-connector run --token <token>` in the private network):"
                );
                println!("{}", t["token"].as_str().unwrap_or(""));
            }
        }
        TunnelCommand::List { json } => {
            let (list, _) = c
                .call(Method::GET, "cfd_tunnel?per_page=1000", None)
                .await?;
            if json {
                print_json(&list);
            } else {
                list.as_array().into_iter().flatten().for_each(print_tunnel);
            }
        }
        TunnelCommand::Get { id, json } => {
            let (t, _) = c
                .call(Method::GET, &format!("cfd_tunnel/{id}"), None)
                .await?;
            if json {
                print_json(&t);
            } else {
                print_tunnel(&t);
                for conn in t["connections"].as_array().into_iter().flatten() {
                    println!(
                        "  {} from {} on {}",
                        conn["id"], conn["origin_ip"], conn["colo_name"]
                    );
                }
            }
        }
        TunnelCommand::Token { id } => {
            let (t, _) = c
                .call(Method::GET, &format!("cfd_tunnel/{id}/token"), None)
                .await?;
            println!("{}", t.as_str().unwrap_or(""));
        }
        TunnelCommand::Delete { id } => {
            c.call(Method::DELETE, &format!("cfd_tunnel/{id}"), None)
                .await?;
            println!("deleted tunnel {id}");
        }
    }
    Ok(())
}

/// Applies flags onto a service body in the API's shape.
fn apply(
    mut body: Map<String, Value>,
    name: Option<String>,
    f: &ServiceFlags,
) -> anyhow::Result<Value> {
    for ro in ["service_id", "created_at", "updated_at"] {
        body.remove(ro);
    }
    if let Some(n) = name {
        body.insert("name".into(), json!(n));
    }
    if let Some(t) = &f.service_type {
        body.insert("type".into(), json!(t));
    }
    body.entry("type").or_insert(json!("http"));
    if let Some(p) = f.http_port {
        body.insert("http_port".into(), json!(p));
    }
    if let Some(p) = f.https_port {
        body.insert("https_port".into(), json!(p));
    }
    if let Some(m) = &f.cert_verification_mode {
        body.insert(
            "tls_settings".into(),
            json!({ "cert_verification_mode": m }),
        );
    }
    let old_host = body.get("host").cloned().unwrap_or(Value::Null);
    let old_tunnel = old_host["resolver_network"]["tunnel_id"]
        .as_str()
        .or(old_host["network"]["tunnel_id"].as_str())
        .map(str::to_owned);
    let tunnel = f.tunnel_id.clone().or(old_tunnel);
    let mut host = old_host;
    if let Some(h) = &f.hostname {
        host = json!({ "hostname": h, "resolver_network": {} });
    } else if f.ipv4.is_some() || f.ipv6.is_some() {
        host = json!({ "network": {} });
        if let Some(a) = &f.ipv4 {
            host["ipv4"] = json!(a);
        }
        if let Some(a) = &f.ipv6 {
            host["ipv6"] = json!(a);
        }
    }
    if host.is_null() {
        anyhow::bail!("say where the service is: --hostname, or --ipv4/--ipv6 (with --tunnel-id)");
    }
    let net = if host.get("hostname").is_some() {
        "resolver_network"
    } else {
        "network"
    };
    if let Some(t) = tunnel {
        host[net]["tunnel_id"] = json!(t);
    }
    if let Some(ips) = &f.resolver_ips {
        host[net]["resolver_ips"] = json!(ips);
    }
    body.insert("host".into(), host);
    Ok(Value::Object(body))
}

fn from_json(f: &ServiceFlags) -> anyhow::Result<Map<String, Value>> {
    let Some(path) = &f.from_json else {
        return Ok(Map::new());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))? {
        Value::Object(m) => Ok(m),
        _ => anyhow::bail!("{} must hold a JSON object", path.display()),
    }
}

/// Runs a VPC service command.
pub async fn service(api: &ApiFlags, cmd: ServiceCommand) -> anyhow::Result<()> {
    let c = Client::new(api)?;
    const PATH: &str = "connectivity/directory/services";
    let (result, json) = match cmd {
        ServiceCommand::Create { name, flags, json } => {
            let body = apply(from_json(&flags)?, name, &flags)?;
            (c.call(Method::POST, PATH, Some(&body)).await?.0, json)
        }
        ServiceCommand::List { service_type, json } => {
            let filter = service_type
                .map(|t| format!("&type={t}"))
                .unwrap_or_default();
            let (list, _) = c
                .call(Method::GET, &format!("{PATH}?per_page=1000{filter}"), None)
                .await?;
            if json {
                print_json(&list);
            } else {
                list.as_array()
                    .into_iter()
                    .flatten()
                    .for_each(print_service);
            }
            return Ok(());
        }
        ServiceCommand::Get { id, json } => (
            c.call(Method::GET, &format!("{PATH}/{id}"), None).await?.0,
            json,
        ),
        ServiceCommand::Update {
            id,
            name,
            flags,
            json,
        } => {
            let base = if flags.from_json.is_some() {
                from_json(&flags)?
            } else {
                match c.call(Method::GET, &format!("{PATH}/{id}"), None).await?.0 {
                    Value::Object(m) => m,
                    _ => Map::new(),
                }
            };
            let body = apply(base, name, &flags)?;
            (
                c.call(Method::PUT, &format!("{PATH}/{id}"), Some(&body))
                    .await?
                    .0,
                json,
            )
        }
        ServiceCommand::Delete { id } => {
            c.call(Method::DELETE, &format!("{PATH}/{id}"), None)
                .await?;
            println!("deleted service {id}");
            return Ok(());
        }
    };
    if json {
        print_json(&result);
    } else {
        print_service(&result);
    }
    Ok(())
}
