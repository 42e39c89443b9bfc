//! `warren`: run an edge node (`serve`), watch the tunnel work in one process
//! (`demo`), and manage tunnels and VPC services through the API.

mod client;
mod commands;
mod config;
mod demo;
mod profile;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "Warren: an open edge runtime with private-network bindings."
)]
struct Cli {
    #[command(flatten)]
    api: client::ApiFlags,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start an edge, a tunnel and a connector in this process and send a request
    /// through the tunnel to a private service, step by step.
    Demo,
    /// Run an edge node: API, tunnel edge and CONNECT front door, per edge.toml.
    Serve {
        /// The node's configuration (strict TOML; see docs/edge.md).
        #[arg(long, default_value = "edge.toml")]
        config: PathBuf,
    },
    /// Tunnels (Cloudflare's cfd_tunnel resources).
    Tunnel {
        #[command(subcommand)]
        command: commands::TunnelCommand,
    },
    /// VPC networking.
    Vpc {
        #[command(subcommand)]
        command: VpcCommand,
    },
}

#[derive(Subcommand)]
enum VpcCommand {
    /// VPC services.
    Service {
        #[command(subcommand)]
        command: commands::ServiceCommand,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => demo::run().await,
        Command::Serve { config } => {
            init_logging();
            serve::run(&config).await
        }
        Command::Tunnel { command } => commands::tunnel(&cli.api, command).await,
        Command::Vpc {
            command: VpcCommand::Service { command },
        } => commands::service(&cli.api, command).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
