//! `warren`: run an edge, create tunnels, or watch the whole tunnel work in one
//! process (`warren demo`). The API-backed client commands arrive with the VPC
//! router issue.

mod demo;
mod edge;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "Warren: an open edge runtime with private-network bindings."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start an edge, a tunnel and a connector in this process and send a request
    /// through the tunnel to a private service, step by step.
    Demo,
    /// Run the tunnel edge (iris's QUIC listener) with its state in a data directory.
    Edge {
        /// State directory (SQLite database, edge CA).
        #[arg(long, default_value = "warren-data")]
        data_dir: PathBuf,
        /// UDP address for connectors.
        #[arg(long, default_value = "0.0.0.0:7844")]
        listen: SocketAddr,
    },
    /// Tunnels.
    Tunnel {
        #[command(subcommand)]
        command: TunnelCommand,
    },
}

#[derive(Subcommand)]
enum TunnelCommand {
    /// Create a tunnel in the edge's data directory and print its token (shown once).
    Create {
        /// Tunnel name.
        name: String,
        /// State directory of the edge.
        #[arg(long, default_value = "warren-data")]
        data_dir: PathBuf,
        /// Edge address(es) the connector should dial, host:port (repeatable).
        #[arg(long = "edge", default_value = "127.0.0.1:7844")]
        edges: Vec<String>,
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
        Command::Edge { data_dir, listen } => {
            init_logging();
            edge::run(&data_dir, listen).await
        }
        Command::Tunnel {
            command:
                TunnelCommand::Create {
                    name,
                    data_dir,
                    edges,
                },
        } => edge::create_tunnel(&data_dir, &name, edges).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
