//! Worker scripts (`/accounts/{account_id}/workers/scripts`): the upload's
//! `metadata` part and the script as the API shows it.

use serde::{Deserialize, Serialize};

/// The `metadata` part of an upload (Workers field names, as Cloudflare's API has them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptMetadata {
    /// The entry module's part name (`worker.js`, or a `.wasm` component).
    pub main_module: String,
    /// Accepted and kept; Warren has one behaviour per version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility_date: Option<String>,
    /// Accepted and kept (`nodejs_compat` and others change nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compatibility_flags: Vec<String>,
    /// VPC service bindings, plain-text vars and JSON vars.
    #[serde(default)]
    pub bindings: Vec<BindingSpec>,
    /// Limits (`cpu_ms`).
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Route patterns the worker serves (Warren's addition: Workers keeps
    /// routes per zone; Warren has no zones, so they travel with the script).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

/// One binding of the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BindingSpec {
    /// `env.NAME.fetch()` reaches the VPC service.
    VpcService {
        /// Binding name.
        name: String,
        /// VPC service id (verified at deploy).
        service_id: String,
    },
    /// `env.NAME` is a string.
    PlainText {
        /// Var name.
        name: String,
        /// Its value.
        text: String,
    },
    /// `env.NAME` is a JSON value, parsed (a wrangler var that is not a string).
    Json {
        /// Var name.
        name: String,
        /// Its value.
        json: serde_json::Value,
    },
}

impl BindingSpec {
    /// The binding's name (`env.NAME`).
    pub fn name(&self) -> &str {
        match self {
            BindingSpec::VpcService { name, .. }
            | BindingSpec::PlainText { name, .. }
            | BindingSpec::Json { name, .. } => name,
        }
    }
}

/// `limits` of the metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// CPU milliseconds per request (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
}

/// A stored script as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptInfo {
    /// Worker name.
    pub id: String,
    /// Minted when the worker is created and kept by redeploys; a worker
    /// deleted and created again gets a new one (tail subscriptions follow it).
    #[serde(default)]
    pub tag: String,
    /// Owning account.
    pub account_id: String,
    /// The metadata it was uploaded with.
    pub metadata: ScriptMetadata,
    /// SHA-256 of the deployed component (changes with every different build).
    pub etag: String,
    /// RFC 3339 time of the first upload.
    pub created_on: String,
    /// RFC 3339 time of the last upload.
    pub modified_on: String,
}

/// The answer to a delete: the worker's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedScript {
    /// Worker name.
    pub id: String,
}
