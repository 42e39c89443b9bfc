//! `warren account create NAME --config edge.toml`: an operator command that
//! adds an account and an admin API token straight in the node's store (the
//! API has no account resource; Cloudflare's accounts are made elsewhere too).

use std::path::Path;

use serde_json::json;
use warren_store::hash_secret;

use crate::config;

/// Creates the account `name` in the store `config_path` names and prints its
/// id and a new admin API token (shown once), as text or JSON.
pub async fn create(config_path: &Path, name: &str, as_json: bool) -> anyhow::Result<()> {
    if name.trim().is_empty() || name.len() > 255 {
        anyhow::bail!("an account name is 1 to 255 characters");
    }
    let file = config::load(config_path)?;
    let store = config::open_store(&file).await?;
    let account = store.create_account(name).await?;
    let token = crate::serve::random_token("wrn_");
    store
        .create_api_token(&account.id, "admin", hash_secret(token.as_bytes()))
        .await?;
    if as_json {
        println!(
            "{}",
            json!({ "account_id": account.id, "name": account.name, "token": token })
        );
    } else {
        println!("Created account {} ({}).", account.id, account.name);
        println!("Its admin API token (shown once):\n  {token}");
        println!(
            "Use it with --account-id {} --api-token <token>, or WARREN_ACCOUNT_ID / WARREN_API_TOKEN.",
            account.id
        );
    }
    Ok(())
}
