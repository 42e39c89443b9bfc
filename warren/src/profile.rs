//! The client profile: where the API is and how to authenticate, written on an
//! edge's first start (mode 0600) and read by the client commands.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What the client commands need to reach the API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// API base URL, e.g. `http://127.0.0.1:8787`.
    pub api: String,
    /// Account id.
    pub account_id: String,
    /// API token.
    pub token: String,
    /// A CA certificate (PEM) trusted for the API's HTTPS besides the
    /// system's roots: the cluster CA when the edge issued its own API
    /// certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
}

/// `$WARREN_PROFILE`, else `$XDG_CONFIG_HOME/warren/profile.json`, else
/// `~/.config/warren/profile.json`.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("WARREN_PROFILE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("warren").join("profile.json")
}

/// Reads the profile, if there is one.
pub fn read() -> anyhow::Result<Option<Profile>> {
    let p = path();
    match std::fs::read(&p) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not a Warren profile", p.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// Writes the profile with mode 0600, replacing any previous one.
pub fn write(profile: &Profile) -> anyhow::Result<PathBuf> {
    let p = path();
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = p.with_extension("json.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(profile)?.as_bytes())?;
    std::fs::rename(&tmp, &p)?;
    Ok(p)
}
