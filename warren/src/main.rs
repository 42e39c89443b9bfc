//! `warren`: run an edge node (`serve`), watch the tunnel work in one process
//! (`demo`), log in to an edge (`login`), and manage workers, tunnels and
//! VPC services through its API.

mod accounts;
mod client;
mod commands;
mod config;
mod demo;
mod dev;
mod login;
mod processes;
mod profile;
mod project;
mod secrets;
mod serve;
mod workers;

use std::path::PathBuf;

use anyhow::Context;
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
        /// The node's configuration (strict TOML; see docs/edge.md). Default:
        /// ./edge.toml when there is one, else the documented defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log lines as text, or as one JSON object each (for log collectors).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Run as one of a node's runtime processes (started by the node
        /// itself, with `[runtime] processes` over 1).
        #[arg(long, hide = true)]
        runtime_process: bool,
    },
    /// Compile a worker's component (the component on standard input) into
    /// `--out`, with the incremental cache under `--cache-dir`: run by the node
    /// for each compile, so Cranelift's working memory ends with this process.
    #[command(hide = true)]
    CompileComponent {
        /// The node's compiled-code directory.
        #[arg(long)]
        cache_dir: PathBuf,
        /// Where to write the compiled component.
        #[arg(long)]
        out: PathBuf,
    },
    /// Prepare the JS toolchain once per installation: build a JS worker and
    /// compile the JS engine every JS worker shares into `<js_dir>/prepared`,
    /// so a node's first JS deploy does neither. Does nothing when it is
    /// already prepared for this toolchain and this `warren`.
    PrepareJs {
        /// The JS toolchain folder, `runtime/js` (default: the one `warren
        /// serve --config` would use: the config's `[runtime] js_dir`, else
        /// `$WARREN_JS_DIR`, else the source checkout's).
        #[arg(long)]
        js_dir: Option<PathBuf>,
        /// The node's configuration whose `[runtime] js_dir` to prepare
        /// (default: ./edge.toml when there is one).
        #[arg(long, conflicts_with = "js_dir")]
        config: Option<PathBuf>,
        /// Where to put it (default: `<js_dir>/prepared`, where nodes look).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Develop a worker: an edge, a tunnel, a local connector, the folder's VPC
    /// services and worker, its URL and live logs — in one process.
    Dev(dev::DevArgs),
    /// Log in to an edge's API (`--api URL`, the token on stdin; `--ca-cert`
    /// for an edge whose certificate its own CA issued) and write the profile.
    Login,
    /// Bundle a worker (esbuild) and deploy it, from warren.json /
    /// wrangler.json / wrangler.jsonc / wrangler.toml.
    Deploy {
        /// The config file, or its folder (default: the current folder).
        config: Option<PathBuf>,
        /// The config's `[env.NAME]` environment to deploy.
        #[arg(long, short = 'e')]
        env: Option<String>,
        /// Bundle only: write the bundle (and its source map) to `--outdir`
        /// and upload nothing.
        #[arg(long)]
        dry_run: bool,
        /// Folder for the bundle and its source map (default: a temporary one).
        #[arg(long)]
        outdir: Option<PathBuf>,
    },
    /// Follow a worker's live logs.
    Tail {
        /// Worker name.
        worker: String,
        /// `pretty` or `json` (one tail event per line).
        #[arg(long, default_value = "pretty", value_parser = ["pretty", "json"])]
        format: String,
    },
    /// A worker's secrets (`env.NAME`, stored sealed; values never shown).
    Secret {
        #[command(subcommand)]
        command: secrets::SecretCommand,
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
    /// Print a shell completion script: `warren completions bash >
    /// /etc/bash_completion.d/warren` (or zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Accounts of a node (operator command: works on the node's store).
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account and print its id and an admin API token (shown once).
    Create {
        /// Display name.
        name: String,
        /// The node's configuration, naming its store.
        #[arg(long, default_value = "edge.toml")]
        config: PathBuf,
        /// Print JSON: `{ "account_id", "name", "token" }`.
        #[arg(long)]
        json: bool,
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

/// `warren deploy`: the project for `env`, bundled into `outdir` (or a
/// temporary folder), uploaded unless `dry_run`.
async fn deploy(
    flags: &client::ApiFlags,
    config: Option<PathBuf>,
    env: Option<String>,
    dry_run: bool,
    outdir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let path = project::find_config(config.as_deref())?;
    let project = project::load_project(&path, env.as_deref())?;
    workers::print_warnings(&project);
    // The client (profile, token) first, so a deploy that cannot upload
    // fails before bundling.
    let client = if dry_run {
        None
    } else {
        Some(client::Client::new(flags)?)
    };
    let temp;
    let out = match &outdir {
        Some(d) => d.as_path(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path()
        }
    };
    let built = workers::build(&project, out)?;
    match client {
        Some(c) => {
            workers::upload(&c, &project, &built).await?;
        }
        None => {
            let files: Vec<String> = built
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            match outdir {
                Some(_) if !files.is_empty() => {
                    println!("dry run: wrote {}; nothing uploaded", files.join(", "))
                }
                _ => println!("dry run: nothing uploaded"),
            }
        }
    }
    Ok(())
}

/// How `warren serve` writes its log.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `warren compile-component`: the component from standard input, compiled
/// into `out`.
fn compile_component(cache_dir: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Read;
    let mut wasm = Vec::new();
    std::io::stdin()
        .read_to_end(&mut wasm)
        .context("reading the component from standard input")?;
    warren_runtime::engine::compile_component(cache_dir, &wasm, out)
}

/// `warren prepare-js`.
fn prepare_js(
    js_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    use warren_runtime::prepared::{Prepared, prepare, prepared_dir};
    let js = match js_dir {
        Some(dir) => dir,
        None => serve::js_dir(
            config::load_or_default(config.as_deref())?
                .runtime
                .js_dir
                .as_deref(),
        ),
    };
    let js = std::fs::canonicalize(&js).unwrap_or(js);
    let out = out.unwrap_or_else(|| prepared_dir(&js));
    let mut config = warren_runtime::EngineConfig::new(PathBuf::new());
    // As a node compiles: in a process of its own.
    config.compiler = Some(PathBuf::from("/proc/self/exe"));
    match prepare(&warren_runtime::js::JsBuilder::new(js), config, &out)? {
        Prepared::Already => println!("the JS toolchain is already prepared in {}", out.display()),
        Prepared::Made {
            template,
            build,
            compile,
        } => println!(
            "prepared the JS toolchain in {}: built a JS worker in {:.1} s, compiled the JS engine ({template}) in {:.1} s",
            out.display(),
            build.as_secs_f64(),
            compile.as_secs_f64()
        ),
    }
    Ok(())
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Long-running processes only: a compile process ends right after.
    if matches!(cli.command, Command::Serve { .. } | Command::Dev(_)) {
        warren_transport::alloc::tune();
    }
    let result = match cli.command {
        Command::Demo => demo::run().await,
        Command::Serve {
            log_format,
            runtime_process: true,
            ..
        } => {
            init_logging("info", log_format);
            processes::run_child_process().await
        }
        Command::Serve {
            config, log_format, ..
        } => {
            init_logging("info", log_format);
            serve::run(config.as_deref()).await
        }
        Command::Dev(args) => {
            init_logging("warn", LogFormat::Text);
            dev::run(args).await
        }
        Command::CompileComponent { cache_dir, out } => compile_component(&cache_dir, &out),
        Command::PrepareJs {
            js_dir,
            config,
            out,
        } => prepare_js(js_dir, config, out),
        Command::Login => login::run(&cli.api).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "warren", &mut std::io::stdout());
            Ok(())
        }
        Command::Deploy {
            config,
            env,
            dry_run,
            outdir,
        } => deploy(&cli.api, config, env, dry_run, outdir).await,
        Command::Tail { worker, format } => match client::Client::new(&cli.api) {
            Ok(c) => workers::tail(&c, &worker, format == "json").await,
            Err(e) => Err(e),
        },
        Command::Secret { command } => secrets::run(&cli.api, command).await,
        Command::Tunnel { command } => commands::tunnel(&cli.api, command).await,
        Command::Vpc {
            command: VpcCommand::Service { command },
        } => commands::service(&cli.api, command).await,
        Command::Account {
            command: AccountCommand::Create { name, config, json },
        } => accounts::create(&config, &name, json).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
