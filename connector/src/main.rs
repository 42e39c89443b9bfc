//! `warren-connector run`: parse flags, set up logging, run until SIGTERM/SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use warren_connector::policy::{AllowRule, Policy};
use warren_connector::tls::EdgeTrust;
use warren_connector::{ConnectorConfig, Protocol, run, shutdown_signal};
use warren_protocol::token::TunnelToken;

/// The static musl build's allocator: musl's own serves the tunnel's buffers
/// at about half the glibc build's throughput (transport/src/alloc.rs).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "warren-connector",
    version,
    about = "Carries a Warren tunnel into a private network (dials out; never listens)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the edge and serve the tunnel until stopped.
    Run(RunArgs),
}

/// `--protocol`: cloudflared's values, `http2` meaning the TCP fallback.
#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    /// QUIC, falling back to TCP when UDP is blocked, and back again.
    Auto,
    /// QUIC only.
    Quic,
    /// TCP only (TLS over TCP).
    #[value(alias = "http2")]
    Tcp,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Flags of `run`; each also reads an environment variable
/// (`WARREN_CONNECTOR_<FLAG>`, lists comma-separated), and the token also
/// cloudflared's `TUNNEL_TOKEN`.
#[derive(clap::Args)]
struct RunArgs {
    /// The tunnel token (from `warren tunnel create`); also TUNNEL_TOKEN.
    #[arg(
        long,
        env = "WARREN_TUNNEL_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// Read the token from a file.
    #[arg(long, env = "WARREN_CONNECTOR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Edge address host:port (repeatable; replaces the token's list).
    #[arg(long = "edge", env = "WARREN_CONNECTOR_EDGE", value_delimiter = ',')]
    edges: Vec<String>,
    /// Connections to keep, spread over the edge addresses.
    #[arg(long, env = "WARREN_CONNECTOR_HA_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
    ha_connections: u8,
    /// DNS resolver ip[:port] for the edge's questions (repeatable; default: this host's resolution, /etc/hosts included).
    #[arg(long = "dns-resolver", env = "WARREN_CONNECTOR_DNS_RESOLVER", value_delimiter = ',', value_parser = parse_resolver)]
    dns_resolvers: Vec<SocketAddr>,
    /// Allowed destination: CIDR[:port[-port]], [v6-CIDR]:port or hostname[:port] (repeatable; absent = allow all).
    #[arg(long = "allow", env = "WARREN_CONNECTOR_ALLOW", value_delimiter = ',')]
    allow: Vec<AllowRule>,
    /// Address for /ready, /healthcheck and /metrics (default: the first free of
    /// 127.0.0.1:20241–20245).
    #[arg(long, env = "WARREN_CONNECTOR_METRICS")]
    metrics: Option<SocketAddr>,
    /// Time in-flight streams get to finish after SIGTERM.
    #[arg(long, env = "WARREN_CONNECTOR_GRACE_PERIOD", default_value = "30s", value_parser = humantime::parse_duration)]
    grace_period: Duration,
    /// TCP connect timeout to origins.
    #[arg(long, env = "WARREN_CONNECTOR_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// QUIC keep-alive interval: a connection that sent nothing for this long sends a ping.
    #[arg(long, env = "WARREN_CONNECTOR_KEEP_ALIVE", default_value = "500ms", value_parser = humantime::parse_duration)]
    keep_alive: Duration,
    /// QUIC idle timeout: a connection that heard nothing from the edge for this long is
    /// lost and re-dialled (the smaller of this and the edge's own applies).
    #[arg(long, env = "WARREN_CONNECTOR_IDLE_TIMEOUT", default_value = "1200ms", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Transport: `auto` (QUIC, and TLS over TCP where UDP is blocked), `quic`, or `tcp`
    /// (cloudflared's `http2` is accepted for it).
    #[arg(
        long,
        env = "WARREN_CONNECTOR_PROTOCOL",
        value_enum,
        default_value = "auto"
    )]
    protocol: ProtocolArg,
    /// TCP port of the edge's fallback listener (default: the token's, else the edge port).
    #[arg(long, env = "WARREN_CONNECTOR_TCP_PORT")]
    tcp_port: Option<u16>,
    /// On the TCP fallback (`--protocol auto` only), how often to try QUIC again (0 = never).
    #[arg(long, env = "WARREN_CONNECTOR_QUIC_RETRY_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    quic_retry_interval: Duration,
    /// Trust this CA certificate (PEM) for the edge instead of the token's fingerprint.
    #[arg(long, env = "WARREN_CONNECTOR_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        env = "WARREN_CONNECTOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not ip or ip:port"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // quinn-udp warns on every datagram a firewall refuses; the connector
        // says what happens to the connection instead.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn_udp=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn config_from(args: RunArgs) -> anyhow::Result<ConnectorConfig> {
    let cloudflared_token = std::env::var("TUNNEL_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    let token_text = match (args.token, args.token_file, cloudflared_token) {
        (Some(t), _, _) => t,
        (None, Some(f), _) => std::fs::read_to_string(&f)
            .with_context(|| format!("cannot read token file {}", f.display()))?,
        (None, None, Some(t)) => t,
        (None, None, None) => anyhow::bail!(
            "no token: pass --token or --token-file, or set WARREN_TUNNEL_TOKEN or TUNNEL_TOKEN"
        ),
    };
    let token = TunnelToken::decode(&token_text).context("invalid tunnel token")?;
    let mut config = ConnectorConfig::from_token(&token)?;
    if !args.edges.is_empty() {
        config.edges = args.edges;
    }
    if let Some(path) = args.ca_cert {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let cert = CertificateDer::from_pem_file(&path)
            .with_context(|| format!("cannot read a PEM certificate from {}", path.display()))?;
        config.trust = EdgeTrust::CaCert(cert);
    }
    config.ha_connections = args.ha_connections;
    config.dns_resolvers = args.dns_resolvers;
    config.policy = Policy::new(args.allow);
    if let Some(addr) = args.metrics {
        config.metrics_addr = Some(addr);
        config.metrics_fallback = 0;
    }
    config.grace_period = args.grace_period;
    config.connect_timeout = args.connect_timeout;
    anyhow::ensure!(
        !args.keep_alive.is_zero() && args.keep_alive < args.idle_timeout,
        "--keep-alive ({}) must be more than 0 and less than --idle-timeout ({})",
        humantime::format_duration(args.keep_alive),
        humantime::format_duration(args.idle_timeout)
    );
    config.keep_alive = args.keep_alive;
    config.idle_timeout = args.idle_timeout;
    config.protocol = match args.protocol {
        ProtocolArg::Auto => Protocol::Auto,
        ProtocolArg::Quic => Protocol::Quic,
        ProtocolArg::Tcp => Protocol::Tcp,
    };
    if args.tcp_port.is_some() {
        config.tcp_port = args.tcp_port;
    }
    config.quic_retry_interval = args.quic_retry_interval;
    Ok(config)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Cli {
        command: Command::Run(args),
    } = Cli::parse();
    warren_transport::alloc::tune();
    init_logging(args.log_format);
    let config = match config_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
