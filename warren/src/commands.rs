//! `warren tunnel …` and `warren vpc service …`: the API from the command line,
//! with wrangler's flag names.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use warren_api::services::{
    Host, HostRequest, NetworkRequest, Port, Ports, ResolverNetworkRequest, Service,
    ServiceRequest, ServiceType, TlsSettingsRequest,
};
use warren_api::tunnels::{CreateTunnel, CreatedTunnel, Tunnel};
use warren_api::{from_name, from_value_at};

use crate::client::{ApiFlags, Client, refused};

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
        /// Tunnel id or name.
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a tunnel's token.
    Token {
        /// Tunnel id or name.
        id: String,
    },
    /// Delete a tunnel (refused while VPC services use it).
    Delete {
        /// Tunnel id or name.
        id: String,
    },
}

/// Flags describing a VPC service.
#[derive(clap::Args, Debug, Default)]
pub struct ServiceFlags {
    /// `http` (or `tcp`).
    #[arg(long = "type")]
    pub service_type: Option<String>,
    /// Tunnel the service is reached through (its id or its name).
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

/// Prints `rows` under `header`, each column as wide as its widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

const TUNNEL_HEADER: [&str; 5] = ["ID", "NAME", "STATUS", "CONNECTIONS", "CREATED"];

fn tunnel_row(t: &Tunnel) -> Vec<String> {
    vec![
        t.id.clone(),
        t.name.clone(),
        t.status.as_str().to_owned(),
        t.connections.len().to_string(),
        t.created_at.clone(),
    ]
}

fn print_tunnel(t: &Tunnel) {
    print_table(&TUNNEL_HEADER, &[tunnel_row(t)]);
}

/// A tunnel id from `arg`: an id as it is, else the id of the account's
/// tunnel named `arg`.
async fn tunnel_id(c: &Client, arg: &str) -> anyhow::Result<String> {
    let is_id = arg.len() == 36 && arg.chars().all(|ch| ch.is_ascii_hexdigit() || ch == '-');
    if is_id {
        return Ok(arg.to_owned());
    }
    let list: Vec<Tunnel> = c.get("cfd_tunnel?per_page=1000").await?;
    let named: Vec<&Tunnel> = list.iter().filter(|t| t.name == arg).collect();
    match named.as_slice() {
        [t] => Ok(t.id.clone()),
        [] => anyhow::bail!("no tunnel named {arg:?} in this account (nor is it a tunnel id)"),
        many => anyhow::bail!(
            "{} tunnels are named {arg:?}: give the id ({})",
            many.len(),
            many.iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A string as JSON (quoted), as the connection lines have always shown them.
fn quoted(s: &str) -> String {
    Value::from(s).to_string()
}

const SERVICE_HEADER: [&str; 7] = ["ID", "NAME", "TYPE", "HOST", "HTTP", "HTTPS", "TUNNEL"];

fn service_row(s: &Service) -> Vec<String> {
    let host = match &s.host {
        Host::Hostname { hostname, .. } => hostname.clone(),
        Host::Addresses { ipv4, ipv6, .. } => {
            [ipv4.map(|a| a.to_string()), ipv6.map(|a| a.to_string())]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let port = |p: Option<u16>| p.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let (http, https) = match s.ports {
        Ports::Http {
            http_port,
            https_port,
        } => (http_port, https_port),
        Ports::Tcp { .. } => (None, None),
    };
    let service_type = match s.ports.service_type() {
        ServiceType::Http => "http",
        ServiceType::Tcp => "tcp",
    };
    vec![
        s.service_id.clone(),
        s.name.clone(),
        service_type.to_owned(),
        host,
        port(http),
        port(https),
        match &s.host {
            Host::Hostname {
                resolver_network, ..
            } => resolver_network.tunnel_id.clone(),
            Host::Addresses { network, .. } => network.tunnel_id.clone(),
        },
    ]
}

fn print_service(s: &Service) {
    print_table(&SERVICE_HEADER, &[service_row(s)]);
}

fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Runs a tunnel command.
pub async fn tunnel(api: &ApiFlags, cmd: TunnelCommand) -> anyhow::Result<()> {
    let c = Client::new(api)?;
    match cmd {
        TunnelCommand::Create { name, json } => {
            let req = CreateTunnel {
                name,
                tunnel_secret: None,
                config_src: None,
            };
            req.validate().map_err(refused)?;
            let t: CreatedTunnel = c.post("cfd_tunnel", &req).await?;
            if json {
                print_json(&t);
            } else {
                print_tunnel(&t.tunnel);
                println!(
                    "token (run `warren-connector run --token <token>` in the private network):"
                );
                println!("{}", t.token);
            }
        }
        TunnelCommand::List { json } => {
            let list: Vec<Tunnel> = c.get("cfd_tunnel?per_page=1000").await?;
            if json {
                print_json(&list);
            } else {
                print_table(
                    &TUNNEL_HEADER,
                    &list.iter().map(tunnel_row).collect::<Vec<_>>(),
                );
            }
        }
        TunnelCommand::Get { id, json } => {
            let id = tunnel_id(&c, &id).await?;
            let t: Tunnel = c.get(&format!("cfd_tunnel/{id}")).await?;
            if json {
                print_json(&t);
            } else {
                print_tunnel(&t);
                for conn in &t.connections {
                    println!(
                        "  {} from {} on {}",
                        quoted(&conn.id),
                        quoted(&conn.origin_ip),
                        quoted(&conn.colo_name)
                    );
                }
            }
        }
        TunnelCommand::Token { id } => {
            let id = tunnel_id(&c, &id).await?;
            let token: String = c.get(&format!("cfd_tunnel/{id}/token")).await?;
            println!("{token}");
        }
        TunnelCommand::Delete { id } => {
            let id = tunnel_id(&c, &id).await?;
            c.delete(&format!("cfd_tunnel/{id}")).await?;
            println!("deleted tunnel {id}");
        }
    }
    Ok(())
}

/// `flag`'s value as `T`, or an error naming the flag.
fn flag<T: std::str::FromStr>(flag: &str, value: &str, what: &str) -> anyhow::Result<T> {
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("--{flag}: {value:?} is not {what}"))
}

fn port(name: &str, p: u16) -> anyhow::Result<Port> {
    Port::new(p).ok_or_else(|| anyhow::anyhow!("--{name}: must be an integer from 1 to 65535"))
}

/// Applies flags onto a service request (a file's, the service as it is, or
/// an empty one).
fn apply(
    mut body: ServiceRequest,
    name: Option<String>,
    f: &ServiceFlags,
) -> anyhow::Result<ServiceRequest> {
    if let Some(n) = name {
        body.name = Some(n);
    }
    if let Some(t) = &f.service_type {
        body.service_type =
            Some(from_name(t, "/type").map_err(|e| anyhow::anyhow!("--type: {}", e.message))?);
    }
    body.service_type.get_or_insert(ServiceType::Http);
    if let Some(p) = f.http_port {
        body.http_port = Some(port("http-port", p)?);
    }
    if let Some(p) = f.https_port {
        body.https_port = Some(port("https-port", p)?);
    }
    if let Some(m) = &f.cert_verification_mode {
        let mode = from_name(m, "/tls_settings/cert_verification_mode")
            .map_err(|e| anyhow::anyhow!("--cert-verification-mode: {}", e.message))?;
        body.tls_settings = Some(TlsSettingsRequest {
            cert_verification_mode: Some(mode),
        });
    }
    let tunnel = f.tunnel_id.clone().or_else(|| {
        body.host
            .as_ref()
            .and_then(|h| h.tunnel_id())
            .map(str::to_owned)
    });
    if let Some(h) = &f.hostname {
        body.host = Some(HostRequest {
            hostname: Some(h.clone()),
            resolver_network: Some(ResolverNetworkRequest::default()),
            ..HostRequest::default()
        });
    } else if f.ipv4.is_some() || f.ipv6.is_some() {
        body.host = Some(HostRequest {
            ipv4: f
                .ipv4
                .as_deref()
                .map(|a| flag("ipv4", a, "an IPv4 address"))
                .transpose()?,
            ipv6: f
                .ipv6
                .as_deref()
                .map(|a| flag("ipv6", a, "an IPv6 address"))
                .transpose()?,
            network: Some(NetworkRequest::default()),
            ..HostRequest::default()
        });
    }
    let Some(host) = body.host.as_mut() else {
        anyhow::bail!("say where the service is: --hostname, or --ipv4/--ipv6 (with --tunnel-id)");
    };
    let resolver_ips = f
        .resolver_ips
        .iter()
        .flatten()
        .map(|ip| flag::<IpAddr>("resolver-ips", ip, "an IP address"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if host.hostname.is_some() {
        let net = host.resolver_network.get_or_insert_with(Default::default);
        if tunnel.is_some() {
            net.tunnel_id = tunnel;
        }
        if f.resolver_ips.is_some() {
            net.resolver_ips = Some(resolver_ips);
        }
    } else {
        if f.resolver_ips.is_some() {
            anyhow::bail!("--resolver-ips go with --hostname (addresses need no resolver)");
        }
        if tunnel.is_some() {
            host.network.get_or_insert_with(Default::default).tunnel_id = tunnel;
        }
    }
    Ok(body)
}

/// The service of `--from-json` (the API's shape; read-only fields are
/// ignored), or an empty one.
fn from_json(f: &ServiceFlags) -> anyhow::Result<ServiceRequest> {
    let Some(path) = &f.from_json else {
        return Ok(ServiceRequest::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if !value.is_object() {
        anyhow::bail!("{} must hold a JSON object", path.display());
    }
    from_value_at(value, "").map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Runs a VPC service command.
pub async fn service(api: &ApiFlags, mut cmd: ServiceCommand) -> anyhow::Result<()> {
    let c = Client::new(api)?;
    if let ServiceCommand::Create { flags, .. } | ServiceCommand::Update { flags, .. } = &mut cmd
        && let Some(t) = &flags.tunnel_id
    {
        flags.tunnel_id = Some(tunnel_id(&c, t).await?);
    }
    const PATH: &str = "connectivity/directory/services";
    let (result, json): (Service, bool) = match cmd {
        ServiceCommand::Create { name, flags, json } => {
            let body = apply(from_json(&flags)?, name, &flags)?;
            body.validate().map_err(refused)?;
            (c.post(PATH, &body).await?, json)
        }
        ServiceCommand::List { service_type, json } => {
            let filter = service_type
                .map(|t| format!("&type={t}"))
                .unwrap_or_default();
            let list: Vec<Service> = c.get(&format!("{PATH}?per_page=1000{filter}")).await?;
            if json {
                print_json(&list);
            } else {
                print_table(
                    &SERVICE_HEADER,
                    &list.iter().map(service_row).collect::<Vec<_>>(),
                );
            }
            return Ok(());
        }
        ServiceCommand::Get { id, json } => (c.get(&format!("{PATH}/{id}")).await?, json),
        ServiceCommand::Update {
            id,
            name,
            flags,
            json,
        } => {
            let base = if flags.from_json.is_some() {
                from_json(&flags)?
            } else {
                ServiceRequest::from(&c.get::<Service>(&format!("{PATH}/{id}")).await?)
            };
            let body = apply(base, name, &flags)?;
            body.validate().map_err(refused)?;
            (c.put(&format!("{PATH}/{id}"), &body).await?, json)
        }
        ServiceCommand::Delete { id } => {
            c.delete(&format!("{PATH}/{id}")).await?;
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
