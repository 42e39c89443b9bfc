//! Worker scripts (`/accounts/{account_id}/workers/scripts`): the upload's
//! `metadata` part and the script as the API shows it.

use serde::{Deserialize, Serialize};

use crate::FieldError;

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
    /// VPC service bindings, plain-text vars, JSON vars and secrets
    /// (`secret_text`: the edge takes them out of the metadata and keeps them
    /// sealed, as the secrets API does).
    #[serde(default)]
    pub bindings: Vec<BindingSpec>,
    /// Binding types the script keeps from its previous version when this
    /// upload does not name them (Workers' `keep_bindings`; wrangler sends
    /// `["secret_text", …]` so a deploy keeps the worker's secrets). Warren
    /// acts on `secret_text`; other types are accepted and ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_bindings: Vec<String>,
    /// Limits (`cpu_ms`).
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Route patterns the worker serves (Warren's addition: Workers keeps
    /// routes per zone; Warren has no zones, so they travel with the script).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

/// One binding of the metadata. `Debug` never shows a secret's value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `env.NAME` is a secret string: stored sealed, never shown by the API
    /// (an upload's secrets become the worker's secrets; see [`SecretRequest`]).
    SecretText {
        /// Secret name.
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
            | BindingSpec::SecretText { name, .. }
            | BindingSpec::Json { name, .. } => name,
        }
    }
}

impl std::fmt::Debug for BindingSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindingSpec::VpcService { name, service_id } => f
                .debug_struct("VpcService")
                .field("name", name)
                .field("service_id", service_id)
                .finish(),
            BindingSpec::PlainText { name, text } => f
                .debug_struct("PlainText")
                .field("name", name)
                .field("text", text)
                .finish(),
            BindingSpec::SecretText { name, .. } => f
                .debug_struct("SecretText")
                .field("name", name)
                .field("text", &"<redacted>")
                .finish(),
            BindingSpec::Json { name, json } => f
                .debug_struct("Json")
                .field("name", name)
                .field("json", json)
                .finish(),
        }
    }
}

/// Largest secret value, in bytes (Workers' limit: 5 KiB).
pub const MAX_SECRET_BYTES: usize = 5 * 1024;

/// Most secrets one worker may have (Workers' limit on a paid plan).
pub const MAX_SECRETS: usize = 128;

/// Longest secret name, in bytes.
pub const MAX_SECRET_NAME: usize = 255;

/// Names the runtime gives Wasm workers in their environment itself.
const RESERVED_NAMES: &[&str] = &["WARREN_BINDING_KEY"];

/// The kind of a secret (only Workers' `secret_text`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretType {
    /// A string, `env.NAME` in the worker.
    #[default]
    SecretText,
}

/// `PUT …/workers/scripts/{name}/secrets`: adds or replaces one secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    /// The binding name (`env.NAME`).
    pub name: String,
    /// The value (at most [`MAX_SECRET_BYTES`]).
    pub text: String,
    /// Always `secret_text`.
    #[serde(rename = "type", default)]
    pub kind: SecretType,
}

/// Never prints the value.
impl std::fmt::Debug for SecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRequest")
            .field("name", &self.name)
            .field("text", &"<redacted>")
            .field("kind", &self.kind)
            .finish()
    }
}

impl SecretRequest {
    /// Checks the name ([`check_secret_name`]) and the value's size; errors
    /// point at `/name` or `/text`.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_secret_name(&self.name).map_err(|m| FieldError::new("/name", m))?;
        check_secret_text(&self.text).map_err(|m| FieldError::new("/text", m))
    }
}

/// A secret's name must be a JS identifier of ASCII letters, digits and
/// underscores (`API_TOKEN`), 1 to [`MAX_SECRET_NAME`] bytes, and not a name
/// the runtime sets itself; the error says why not.
pub fn check_secret_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_SECRET_NAME {
        return Err(format!(
            "is {} bytes long; the most is {MAX_SECRET_NAME}",
            name.len()
        ));
    }
    let mut b = name.bytes();
    let identifier = matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if !identifier {
        return Err(format!(
            "{name:?} is not a valid secret name: use letters, digits and underscores, not starting with a digit"
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!("{name} is reserved for the runtime"));
    }
    Ok(())
}

/// A secret's value may be at most [`MAX_SECRET_BYTES`] bytes.
pub fn check_secret_text(text: &str) -> Result<(), String> {
    if text.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "the value is {} bytes; a secret may be at most {MAX_SECRET_BYTES} bytes (5 KiB)",
            text.len()
        ));
    }
    Ok(())
}

/// A secret as the API shows it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// The binding name.
    pub name: String,
    /// Always `secret_text`.
    #[serde(rename = "type")]
    pub kind: SecretType,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_and_values_are_checked() {
        let ok = |name: &str, text: &str| SecretRequest {
            name: name.into(),
            text: text.into(),
            kind: SecretType::SecretText,
        };
        assert_eq!(ok("API_TOKEN", "v").validate(), Ok(()));
        assert_eq!(ok("_x9", "").validate(), Ok(()));
        for (name, why) in [
            ("", "name: must not be empty"),
            ("9X", "name: \"9X\" is not a valid secret name"),
            ("a-b", "name: \"a-b\" is not a valid secret name"),
            ("A.B", "name: \"A.B\" is not a valid secret name"),
            ("WARREN_BINDING_KEY", "name: WARREN_BINDING_KEY is reserved"),
        ] {
            let e = ok(name, "v").validate().expect_err(name);
            assert_eq!(e.pointer, "/name");
            assert!(e.to_string().starts_with(why), "{name}: {e}");
        }
        let long = "A".repeat(MAX_SECRET_NAME + 1);
        assert!(ok(&long, "v").validate().is_err());
        assert_eq!(ok(&"A".repeat(MAX_SECRET_NAME), "v").validate(), Ok(()));
        assert_eq!(ok("X", &"v".repeat(MAX_SECRET_BYTES)).validate(), Ok(()));
        let e = ok("X", &"v".repeat(MAX_SECRET_BYTES + 1))
            .validate()
            .expect_err("too big");
        assert_eq!(e.pointer, "/text");
        assert_eq!(
            e.to_string(),
            "text: the value is 5121 bytes; a secret may be at most 5120 bytes (5 KiB)"
        );
    }

    #[test]
    fn a_secret_request_reads_cloudflares_body_and_hides_its_value() {
        let r: SecretRequest =
            serde_json::from_str(r#"{"name":"X","text":"hush","type":"secret_text"}"#).unwrap();
        assert_eq!(r.kind, SecretType::SecretText);
        assert!(!format!("{r:?}").contains("hush"));
        assert!(
            serde_json::from_str::<SecretRequest>(r#"{"name":"X","text":"v","type":"plain_text"}"#)
                .is_err()
        );
        let info = SecretInfo {
            name: "X".into(),
            kind: SecretType::SecretText,
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"name":"X","type":"secret_text"}"#
        );
    }
}

/// The answer to a delete: the worker's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedScript {
    /// Worker name.
    pub id: String,
}
