//! `warren secret put|list|delete`: a worker's secrets through the API
//! (`…/workers/scripts/{name}/secrets`). Values are read from stdin and never
//! printed; the API never shows them back.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;

use clap::Subcommand;
use warren_api::scripts::{SecretInfo, SecretRequest, SecretType};

use crate::client::{ApiFlags, Client, refused};

/// `warren secret …`.
#[derive(Subcommand)]
pub enum SecretCommand {
    /// Add or replace a secret; the value is read from stdin (prompted for,
    /// without echo, on a terminal; one trailing newline is dropped).
    Put {
        /// The secret's name (`env.NAME` in the worker).
        secret: String,
        #[command(flatten)]
        worker: WorkerArg,
    },
    /// List a worker's secrets (names only).
    List {
        #[command(flatten)]
        worker: WorkerArg,
        /// Print JSON: `[{ "name", "type" }]`.
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret.
    Delete {
        /// The secret's name.
        secret: String,
        #[command(flatten)]
        worker: WorkerArg,
    },
}

/// Which worker: `--name`, else the `name` of the config in the current folder.
#[derive(clap::Args)]
pub struct WorkerArg {
    /// The worker (default: `name` in the config here: warren.json, wrangler.json(c) or wrangler.toml).
    #[arg(long = "name")]
    worker: Option<String>,
}

impl WorkerArg {
    fn resolve(&self) -> anyhow::Result<String> {
        match &self.worker {
            Some(w) => {
                crate::project::config::check_worker_name(w)
                    .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
                Ok(w.clone())
            }
            None => worker_from_config(None),
        }
    }
}

/// The worker named by the config file found from `dir` (default: the
/// current folder). The one place this module reads a config.
fn worker_from_config(dir: Option<&Path>) -> anyhow::Result<String> {
    let path = crate::workers::find_config(dir)
        .map_err(|e| anyhow::anyhow!("{e}: name the worker with --name"))?;
    Ok(crate::workers::read_config(&path)?.name)
}

fn path(worker: &str) -> String {
    format!("workers/scripts/{worker}/secrets")
}

/// Adds or replaces secret `name` of `worker` with `value` (for `warren
/// secret put`, and for `warren dev` with `.dev.vars`). The request is
/// checked before it is sent, with the API's words.
pub async fn put(
    client: &Client,
    worker: &str,
    name: &str,
    value: &str,
) -> anyhow::Result<SecretInfo> {
    let req = SecretRequest {
        name: name.to_owned(),
        text: value.to_owned(),
        kind: SecretType::SecretText,
    };
    req.validate().map_err(refused)?;
    client.put(&path(worker), &req).await
}

/// The value from stdin: prompted for without echo on a terminal; one
/// trailing newline (`\n` or `\r\n`) is dropped, as wrangler does.
fn read_value(name: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut value = String::new();
    if stdin.is_terminal() {
        eprint!("Enter a secret value for {name}: ");
        let _ = std::io::stderr().flush();
        let echo = no_echo(&stdin);
        let read = stdin.lock().read_line(&mut value);
        drop(echo);
        eprintln!();
        read.map_err(|e| anyhow::anyhow!("cannot read the secret from the terminal: {e}"))?;
    } else {
        stdin
            .lock()
            .read_to_string(&mut value)
            .map_err(|e| anyhow::anyhow!("cannot read the secret from stdin: {e}"))?;
    }
    if let Some(v) = value.strip_suffix('\n') {
        value = v.strip_suffix('\r').unwrap_or(v).to_owned();
    }
    Ok(value)
}

/// Turns the terminal's echo off until the guard is dropped.
fn no_echo(stdin: &std::io::Stdin) -> Option<impl Drop> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    struct Restore(std::io::Stdin, nix::sys::termios::Termios);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = tcsetattr(&self.0, SetArg::TCSANOW, &self.1);
        }
    }
    let saved = tcgetattr(stdin).ok()?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(stdin, SetArg::TCSANOW, &quiet).ok()?;
    Some(Restore(std::io::stdin(), saved))
}

/// Runs `warren secret …`.
pub async fn run(api: &ApiFlags, cmd: SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Put { secret, worker } => {
            let worker = worker.resolve()?;
            // Checked before the value is asked for.
            warren_api::scripts::check_secret_name(&secret)
                .map_err(|m| refused(warren_api::FieldError::new("/name", m)))?;
            let client = Client::new(api)?;
            let value = read_value(&secret)?;
            put(&client, &worker, &secret, &value).await?;
            println!("secret {secret} of worker {worker} stored");
        }
        SecretCommand::List { worker, json } => {
            let worker = worker.resolve()?;
            let client = Client::new(api)?;
            let list: Vec<SecretInfo> = client
                .get(&format!("{}?per_page=1000", path(&worker)))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("worker {worker} has no secrets");
            } else {
                for s in list {
                    println!("{}", s.name);
                }
            }
        }
        SecretCommand::Delete { secret, worker } => {
            let worker = worker.resolve()?;
            let client = Client::new(api)?;
            client
                .delete(&format!("{}/{secret}", path(&worker)))
                .await?;
            println!("secret {secret} of worker {worker} deleted");
        }
    }
    Ok(())
}
