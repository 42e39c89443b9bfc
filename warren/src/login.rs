//! `warren login`: checks an API token against a (remote) edge and writes
//! the client profile, so the other commands need no flags.

use std::io::{BufRead, IsTerminal, Write};

use crate::client::{self, ApiFailure, ApiFlags, Client};
use crate::profile::{self, Profile};

/// The token: `--api-token`, else the first line of stdin (prompted for on
/// a terminal).
fn read_token(flags: &ApiFlags) -> anyhow::Result<String> {
    if let Some(t) = &flags.api_token {
        return Ok(t.trim().to_owned());
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("API token: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| anyhow::anyhow!("cannot read the token from stdin: {e}"))?;
    let token = line.trim().to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "no API token on stdin: pipe it in, e.g. `warren login --api URL < token.txt`"
    );
    Ok(token)
}

/// Logs in: finds the token's account at `--api`, checks `--account-id`
/// when given, and writes the profile (with `--ca-cert`'s CA, if any).
pub async fn run(flags: &ApiFlags) -> anyhow::Result<()> {
    let api = flags
        .api
        .clone()
        .or_else(|| std::env::var("WARREN_API").ok().filter(|v| !v.is_empty()))
        .ok_or_else(|| anyhow::anyhow!("warren login needs the edge's API: --api URL"))?;
    let api = client::api_url(&api)?;
    let ca_file = flags.ca_cert.clone().or_else(|| {
        std::env::var_os("WARREN_CA_CERT")
            .filter(|v| !v.is_empty())
            .map(Into::into)
    });
    let ca = ca_file.as_deref().map(client::read_ca_file).transpose()?;
    let token = read_token(flags)?;
    let accounts = match Client::accounts(&api, &token, ca.as_deref()).await {
        Ok(a) => a,
        Err(e) => match e.downcast_ref::<ApiFailure>() {
            Some(f) if f.status == 401 => {
                anyhow::bail!(
                    "the API at {api} does not accept this token ({})",
                    f.message
                )
            }
            _ => return Err(e),
        },
    };
    let account = match &flags.account_id {
        Some(id) => accounts
            .into_iter()
            .find(|a| &a.id == id)
            .ok_or_else(|| anyhow::anyhow!("this token does not act for account {id}"))?,
        None => {
            let mut accounts = accounts;
            match accounts.len() {
                1 => accounts.remove(0),
                0 => anyhow::bail!("the API at {api} lists no account for this token"),
                _ => anyhow::bail!(
                    "this token acts for several accounts ({}): pick one with --account-id",
                    accounts
                        .iter()
                        .map(|a| a.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let path = profile::write(&Profile {
        api: api.clone(),
        account_id: account.id.clone(),
        token,
        ca_cert: ca,
    })?;
    println!(
        "Logged in to {api} as account {} ({}); profile written to {} (mode 0600).",
        account.id,
        account.name,
        path.display()
    );
    Ok(())
}
