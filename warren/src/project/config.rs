//! The worker's config file: `warren.json`, or wrangler's own `wrangler.json`,
//! `wrangler.jsonc` and `wrangler.toml`, with wrangler's field names, its
//! `[env.NAME]` environments and its inheritance rules.
//!
//! Every key wrangler knows is accepted. Keys Warren acts on are read
//! strictly; keys Warren does not act on (other platforms' bindings, build
//! settings of wrangler's own) are named in one warning; keys wrangler does
//! not know are errors naming their path (`env.staging.varz`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Config file names looked for, in order (Warren's own, then wrangler's in
/// wrangler's precedence).
pub const CONFIG_NAMES: [&str; 4] = [
    "warren.json",
    "wrangler.json",
    "wrangler.jsonc",
    "wrangler.toml",
];

/// How a key behaves in an `[env.NAME]` section (wrangler's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inherit {
    /// Taken from the top level unless the environment sets it.
    Yes,
    /// Never inherited: an environment has it only if it repeats it.
    No,
    /// Meaningful at the top level only.
    TopOnly,
}

/// What Warren does with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Read (strictly) and acted on.
    Acted,
    /// Accepted and not used; named in the one warning line.
    Ignored,
}

use Inherit::{No, TopOnly, Yes};
use Use::{Acted, Ignored};

/// Every top-level key wrangler knows, how it is inherited, and whether
/// Warren acts on it.
const KEYS: &[(&str, Inherit, Use)] = &[
    ("$schema", TopOnly, Acted),
    ("name", Yes, Acted),
    ("main", Yes, Acted),
    ("compatibility_date", Yes, Acted),
    ("compatibility_flags", Yes, Acted),
    ("route", Yes, Acted),
    ("routes", Yes, Acted),
    ("limits", Yes, Acted),
    ("workers_dev", Yes, Acted),
    ("observability", Yes, Acted),
    ("minify", Yes, Acted),
    ("keep_names", Yes, Acted),
    ("tsconfig", Yes, Acted),
    ("jsx_factory", Yes, Acted),
    ("jsx_fragment", Yes, Acted),
    ("vars", No, Acted),
    ("define", No, Acted),
    ("vpc_services", No, Acted),
    // Inherited, not used by Warren.
    ("account_id", Yes, Ignored),
    ("alias", Yes, Ignored),
    ("assets", Yes, Ignored),
    ("base_dir", Yes, Ignored),
    ("build", Yes, Ignored),
    ("compliance_region", Yes, Ignored),
    ("find_additional_modules", Yes, Ignored),
    ("first_party_worker", Yes, Ignored),
    ("logfwdr", Yes, Ignored),
    ("logpush", Yes, Ignored),
    ("migrations", Yes, Ignored),
    ("no_bundle", Yes, Ignored),
    ("node_compat", Yes, Ignored),
    ("placement", Yes, Ignored),
    ("preserve_file_names", Yes, Ignored),
    ("preview_urls", Yes, Ignored),
    ("python_modules", Yes, Ignored),
    ("rules", Yes, Ignored),
    ("site", Yes, Ignored),
    ("triggers", Yes, Ignored),
    ("upload_source_maps", Yes, Ignored),
    ("usage_model", Yes, Ignored),
    ("zone_id", Yes, Ignored),
    // Bindings and other per-environment keys Warren has no service for.
    ("ai", No, Ignored),
    ("analytics_engine_datasets", No, Ignored),
    ("browser", No, Ignored),
    ("cloudchamber", No, Ignored),
    ("containers", No, Ignored),
    ("d1_databases", No, Ignored),
    ("data_blobs", No, Ignored),
    ("dispatch_namespaces", No, Ignored),
    ("durable_objects", No, Ignored),
    ("hyperdrive", No, Ignored),
    ("images", No, Ignored),
    ("kv_namespaces", No, Ignored),
    ("media", No, Ignored),
    ("mtls_certificates", No, Ignored),
    ("pipelines", No, Ignored),
    ("queues", No, Ignored),
    ("r2_buckets", No, Ignored),
    ("ratelimits", No, Ignored),
    ("secrets", No, Ignored),
    ("secrets_store_secrets", No, Ignored),
    ("send_email", No, Ignored),
    ("services", No, Ignored),
    ("streaming_tail_consumers", No, Ignored),
    ("tail_consumers", No, Ignored),
    ("text_blobs", No, Ignored),
    ("unsafe", No, Ignored),
    ("vectorize", No, Ignored),
    ("version_metadata", No, Ignored),
    ("wasm_modules", No, Ignored),
    ("worker_loaders", No, Ignored),
    ("workflows", No, Ignored),
    // Top level only.
    ("dev", TopOnly, Ignored),
    ("keep_vars", TopOnly, Ignored),
    ("legacy_env", TopOnly, Ignored),
    ("send_metrics", TopOnly, Ignored),
];

fn key_info(key: &str) -> Option<(Inherit, Use)> {
    KEYS.iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, i, u)| (*i, *u))
}

/// `routes[]` (and `route`): a pattern, or wrangler's object form. Warren has
/// no zones, so `zone_name` / `zone_id` are accepted and not used;
/// `custom_domain: true` serves every path of a bare hostname.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RouteEntry {
    /// `"shop.example.com/*"`.
    Pattern(String),
    /// `{ "pattern": "…", "zone_name": "…", "custom_domain": true }`.
    Object(RouteObject),
}

/// The object form of a route.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteObject {
    /// Host/path pattern.
    pub pattern: String,
    /// Accepted for wrangler compatibility; not used.
    #[serde(default)]
    pub zone_name: Option<String>,
    /// Accepted for wrangler compatibility; not used.
    #[serde(default)]
    pub zone_id: Option<String>,
    /// A whole hostname (no path).
    #[serde(default)]
    pub custom_domain: bool,
}

/// `vpc_services[]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VpcBinding {
    /// Binding name (`env.<binding>`).
    pub binding: String,
    /// VPC service id.
    pub service_id: String,
    /// wrangler's "use the remote service in `wrangler dev`"; Warren's
    /// bindings always reach the real service, so it is accepted and not used.
    #[serde(default)]
    pub remote: Option<bool>,
}

/// `limits`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// CPU milliseconds per request.
    pub cpu_ms: Option<u64>,
}

/// The keys of one section (the top level or an `[env.NAME]`) Warren acts
/// on; every one optional, so a section may leave it to the top level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(rename = "$schema", default)]
    _schema: Option<serde::de::IgnoredAny>,
    name: Option<String>,
    main: Option<PathBuf>,
    compatibility_date: Option<String>,
    compatibility_flags: Option<Vec<String>>,
    route: Option<RouteEntry>,
    routes: Option<Vec<RouteEntry>>,
    limits: Option<FileLimits>,
    workers_dev: Option<bool>,
    observability: Option<Value>,
    minify: Option<bool>,
    keep_names: Option<bool>,
    tsconfig: Option<PathBuf>,
    jsx_factory: Option<String>,
    jsx_fragment: Option<String>,
    vars: Option<BTreeMap<String, Value>>,
    define: Option<BTreeMap<String, String>>,
    vpc_services: Option<Vec<VpcBinding>>,
}

/// A worker project: its config resolved for one environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    /// The config file it was read from.
    pub config_path: PathBuf,
    /// The environment chosen (`--env`), if any.
    pub env: Option<String>,
    /// Worker name (`<name>-<env>` in an environment that sets none).
    pub name: String,
    /// Entry module, relative to the config file's folder.
    pub main: PathBuf,
    /// Kept with the script.
    pub compatibility_date: Option<String>,
    /// Kept with the script (`nodejs_compat` and others change nothing:
    /// Warren provides no node built-in modules).
    pub compatibility_flags: Vec<String>,
    /// Vars: a string is a `plain_text` binding, any other JSON value a
    /// `json` binding (`env.X` is then the parsed value).
    pub vars: BTreeMap<String, Value>,
    /// VPC service bindings.
    pub vpc_services: Vec<VpcBinding>,
    /// Route patterns of `route` and `routes`.
    pub routes: Vec<String>,
    /// Limits.
    pub limits: Option<FileLimits>,
    /// esbuild `define`s: identifier → JS expression.
    pub define: BTreeMap<String, String>,
    /// Minify the bundle.
    pub minify: bool,
    /// Keep function and class names through bundling (wrangler's default).
    pub keep_names: bool,
    /// A tsconfig for esbuild, relative to the config file's folder.
    pub tsconfig: Option<PathBuf>,
    /// JSX factory function.
    pub jsx_factory: Option<String>,
    /// JSX fragment.
    pub jsx_fragment: Option<String>,
    /// Warning lines for the user (keys ignored, keys not inherited).
    pub warnings: Vec<String>,
}

impl Project {
    /// The folder of the config file, which `main` and `tsconfig` are relative to.
    pub fn dir(&self) -> &Path {
        match self.config_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }
}

/// Finds the config: `path` itself, or the first of [`CONFIG_NAMES`] in `path`
/// (a folder) or the current folder.
pub fn find_config(path: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match path {
        Some(p) if p.is_file() => return Ok(p.to_owned()),
        Some(p) if p.is_dir() => p.to_owned(),
        Some(p) => anyhow::bail!("{} does not exist", p.display()),
        None => PathBuf::from("."),
    };
    CONFIG_NAMES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("no {} in {}", CONFIG_NAMES.join(" / "), dir.display()))
}

/// Parses a config file's text: TOML for `.toml`, else JSON with comments and
/// trailing commas (JSONC).
fn parse_text(label: &str, path: &Path, text: &str) -> anyhow::Result<Map<String, Value>> {
    let value: Value = if path.extension().is_some_and(|e| e == "toml") {
        let v: Value = toml::from_str(text).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
        toml_dates_to_strings(v)
    } else {
        json5::from_str(text).map_err(|e| anyhow::anyhow!("{label}: {e}"))?
    };
    match value {
        Value::Object(m) => Ok(m),
        _ => anyhow::bail!("{label}: the config must be a table/object"),
    }
}

/// The TOML crate hands dates (`compatibility_date = 2025-01-01`, unquoted)
/// to serde as a one-key map; wrangler takes them as the date's text.
fn toml_dates_to_strings(v: Value) -> Value {
    const DATE_KEY: &str = "$__toml_private_datetime";
    match v {
        Value::Object(m) => {
            if m.len() == 1
                && let Some(Value::String(s)) = m.get(DATE_KEY)
            {
                return Value::String(s.clone());
            }
            Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k, toml_dates_to_strings(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(toml_dates_to_strings).collect()),
        other => other,
    }
}

/// Checks the keys of one section: unknown keys are errors naming their
/// path; keys Warren ignores are taken out (and returned). `prefix` is
/// `""` for the top level, `"env.NAME."` for an environment.
fn split_section(
    label: &str,
    prefix: &str,
    mut map: Map<String, Value>,
) -> anyhow::Result<(Map<String, Value>, Vec<String>)> {
    let mut ignored = Vec::new();
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        if prefix.is_empty() && key == "env" {
            continue;
        }
        match key_info(&key) {
            None => anyhow::bail!(
                "{label}: {prefix}{key}: unknown field `{key}` (not a wrangler configuration key)"
            ),
            // A top-level-only key in an environment does nothing there.
            Some((TopOnly, Acted)) if !prefix.is_empty() => {
                map.remove(&key);
                ignored.push(key);
            }
            Some((_, Ignored)) => {
                map.remove(&key);
                ignored.push(key);
            }
            Some((_, Acted)) => {}
        }
    }
    Ok((map, ignored))
}

fn section(label: &str, prefix: &str, map: Map<String, Value>) -> anyhow::Result<Section> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let at = e.path().to_string();
        anyhow::anyhow!("{label}: {prefix}{at}: {}", e.into_inner())
    })
}

/// A worker name as the edge takes it: 1 to 63 lowercase letters, digits
/// and dashes, not starting with a dash (it goes into API paths as it is).
pub fn check_worker_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a worker name: use 1 to 63 lowercase letters, digits and dashes, not starting with a dash"
        ))
    }
}

/// Reads the config at `config_path` for the environment `env` (wrangler's
/// `--env`): environments inherit the top level's inheritable keys and not
/// its vars and bindings; an environment without its own `name` is
/// `<name>-<env>`. Unknown keys anywhere are errors naming their path.
pub fn load_project(config_path: &Path, env: Option<&str>) -> anyhow::Result<Project> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    resolve(config_path, &text, env)
}

/// [`load_project`] on the text of the config file.
fn resolve(config_path: &Path, text: &str, env: Option<&str>) -> anyhow::Result<Project> {
    let label = config_path.display().to_string();
    let mut top = parse_text(&label, config_path, text)?;
    let envs = match top.remove("env") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => anyhow::bail!("{label}: env: a table of environments ([env.NAME])"),
    };
    let (top, top_ignored) = split_section(&label, "", top)?;
    // Every environment is checked, as wrangler does, so a typo in one
    // another deploy uses is found now.
    let mut sections = BTreeMap::new();
    for (name, body) in envs {
        let prefix = format!("env.{name}.");
        let Value::Object(body) = body else {
            anyhow::bail!("{label}: env.{name}: an environment is a table");
        };
        if body.contains_key("env") {
            anyhow::bail!("{label}: env.{name}.env: environments do not nest");
        }
        let (body, ignored) = split_section(&label, &prefix, body)?;
        let keys: Vec<String> = body.keys().cloned().collect();
        sections.insert(name, (section(&label, &prefix, body)?, keys, ignored));
    }
    let top_keys: Vec<String> = top.keys().cloned().collect();
    let top = section(&label, "", top)?;

    let mut warnings = Vec::new();
    let (s, mut ignored, env_name) = match env {
        None => (top.clone(), top_ignored.clone(), None),
        Some(e) => {
            let Some((env_section, env_keys, env_ignored)) = sections.remove(e) else {
                let known: Vec<&String> = sections.keys().collect();
                anyhow::bail!(
                    "{label}: no environment {e:?} (--env {e}); {}",
                    if known.is_empty() {
                        "the config has no [env.NAME] sections".to_owned()
                    } else {
                        format!(
                            "it has: {}",
                            known
                                .iter()
                                .map(|k| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
            };
            let not_inherited: Vec<&str> = top_keys
                .iter()
                .filter(|k| key_info(k) == Some((No, Acted)) && !env_keys.contains(k))
                .map(String::as_str)
                .collect();
            if !not_inherited.is_empty() {
                warnings.push(format!(
                    "{label}: env.{e} does not inherit these top-level keys (repeat them in [env.{e}] if it needs them): {}",
                    not_inherited.join(", ")
                ));
            }
            // Ignored keys in effect: the environment's, and the top
            // level's inheritable ones.
            let mut ignored = env_ignored;
            for k in &top_ignored {
                if key_info(k).is_some_and(|(i, _)| i == Yes) && !ignored.contains(k) {
                    ignored.push(k.clone());
                }
            }
            (inherit(&top, env_section, e), ignored, Some(e.to_owned()))
        }
    };
    if s.workers_dev == Some(false) {
        // Warren always serves a worker at <name>.<workers domain>.
        ignored.push("workers_dev".into());
    }
    ignored.sort();
    ignored.dedup();
    if !ignored.is_empty() {
        warnings.insert(
            0,
            format!("{label}: Warren ignores these keys: {}", ignored.join(", ")),
        );
    }

    let at = |key: &str| match &env_name {
        Some(e) => format!("{label}: env.{e}.{key}"),
        None => format!("{label}: {key}"),
    };
    let name = s
        .name
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{}: missing (the worker's name)", at("name")))?;
    check_worker_name(&name).map_err(|e| anyhow::anyhow!("{}: {e}", at("name")))?;
    let main = s.main.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: missing (the entry module, e.g. \"src/index.ts\")",
            at("main")
        )
    })?;
    let mut routes: Vec<String> = Vec::new();
    let entries = s.route.iter().map(|r| ("route".to_owned(), r)).chain(
        s.routes
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| (format!("routes[{i}]"), r)),
    );
    for (key, r) in entries {
        match r {
            RouteEntry::Pattern(p) => routes.push(p.clone()),
            RouteEntry::Object(o) => {
                if o.custom_domain && o.pattern.contains(['/', '*']) {
                    anyhow::bail!(
                        "{}: a custom domain is a bare hostname, not {:?}",
                        at(&key),
                        o.pattern
                    );
                }
                routes.push(o.pattern.clone());
            }
        }
    }
    Ok(Project {
        config_path: config_path.to_owned(),
        env: env_name,
        name,
        main,
        compatibility_date: s.compatibility_date,
        compatibility_flags: s.compatibility_flags.unwrap_or_default(),
        vars: s.vars.unwrap_or_default(),
        vpc_services: s.vpc_services.unwrap_or_default(),
        routes,
        limits: s.limits,
        define: s.define.unwrap_or_default(),
        minify: s.minify.unwrap_or(false),
        keep_names: s.keep_names.unwrap_or(true),
        tsconfig: s.tsconfig,
        jsx_factory: s.jsx_factory,
        jsx_fragment: s.jsx_fragment,
        warnings,
    })
}

/// wrangler's inheritance: the environment's inheritable keys over the top
/// level's; its non-inheritable keys (vars, bindings, define) alone; `name`
/// `<top name>-<env>` unless the environment names itself.
fn inherit(top: &Section, env: Section, env_name: &str) -> Section {
    // route and routes travel together: an environment with either
    // replaces both of the top level's.
    let own_routes = env.route.is_some() || env.routes.is_some();
    Section {
        _schema: None,
        name: env
            .name
            .or_else(|| top.name.as_ref().map(|n| format!("{n}-{env_name}"))),
        main: env.main.or_else(|| top.main.clone()),
        compatibility_date: env
            .compatibility_date
            .or_else(|| top.compatibility_date.clone()),
        compatibility_flags: env
            .compatibility_flags
            .or_else(|| top.compatibility_flags.clone()),
        route: if own_routes {
            env.route
        } else {
            top.route.clone()
        },
        routes: if own_routes {
            env.routes
        } else {
            top.routes.clone()
        },
        limits: env.limits.or_else(|| top.limits.clone()),
        workers_dev: env.workers_dev.or(top.workers_dev),
        observability: env.observability.or_else(|| top.observability.clone()),
        minify: env.minify.or(top.minify),
        keep_names: env.keep_names.or(top.keep_names),
        tsconfig: env.tsconfig.or_else(|| top.tsconfig.clone()),
        jsx_factory: env.jsx_factory.or_else(|| top.jsx_factory.clone()),
        jsx_fragment: env.jsx_fragment.or_else(|| top.jsx_fragment.clone()),
        vars: env.vars,
        define: env.define,
        vpc_services: env.vpc_services,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str, env: Option<&str>) -> anyhow::Result<Project> {
        resolve(Path::new("wrangler.toml"), text, env)
    }

    const INIT: &str = r#"
name = "my-app"
main = "src/index.ts"
compatibility_date = "2026-11-01"
compatibility_flags = ["nodejs_compat"]

[observability]
enabled = true

[vars]
GREETING = "hello"
LIMITS = { max = 3, tags = ["a", "b"] }
DEBUG = true

[[vpc_services]]
binding = "API"
service_id = "svc-prod"
remote = true

[env.staging]
name = "my-app-stg"
vars = { GREETING = "hi from staging" }

[env.preview]
route = "preview.example.com/*"
"#;

    #[test]
    fn wrangler_toml_as_wrangler_init_writes_it() {
        let p = toml(INIT, None).unwrap();
        assert_eq!(p.name, "my-app");
        assert_eq!(p.main, Path::new("src/index.ts"));
        assert_eq!(p.compatibility_date.as_deref(), Some("2026-11-01"));
        assert_eq!(p.compatibility_flags, ["nodejs_compat"]);
        assert_eq!(p.vars["GREETING"], Value::String("hello".into()));
        assert_eq!(
            p.vars["LIMITS"],
            serde_json::json!({ "max": 3, "tags": ["a", "b"] })
        );
        assert_eq!(p.vars["DEBUG"], Value::Bool(true));
        assert_eq!(p.vpc_services[0].service_id, "svc-prod");
        assert!(p.keep_names && !p.minify);
        // observability is accepted without a word: `warren tail` is always on.
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn an_env_inherits_inheritable_keys_only_and_names_itself() {
        let p = toml(INIT, Some("staging")).unwrap();
        assert_eq!(p.env.as_deref(), Some("staging"));
        assert_eq!(p.name, "my-app-stg");
        assert_eq!(p.main, Path::new("src/index.ts"));
        assert_eq!(p.compatibility_flags, ["nodejs_compat"]);
        assert_eq!(
            p.vars,
            BTreeMap::from([("GREETING".into(), "hi from staging".into())])
        );
        // vpc_services is a binding: not inherited, and the user is told.
        assert!(p.vpc_services.is_empty());
        assert_eq!(
            p.warnings,
            [
                "wrangler.toml: env.staging does not inherit these top-level keys (repeat them in [env.staging] if it needs them): vpc_services"
            ]
        );
        // No name of its own: <name>-<env>; neither vars nor bindings.
        let p = toml(INIT, Some("preview")).unwrap();
        assert_eq!(p.name, "my-app-preview");
        assert!(p.vars.is_empty() && p.vpc_services.is_empty());
        assert_eq!(p.routes, ["preview.example.com/*"]);
        assert!(
            p.warnings[0].contains(": vars, vpc_services"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn an_unknown_env_is_an_error_listing_the_known_ones() {
        let e = toml(INIT, Some("prod")).unwrap_err().to_string();
        assert_eq!(
            e,
            "wrangler.toml: no environment \"prod\" (--env prod); it has: preview, staging"
        );
        let e = toml("name = \"a\"\nmain = \"i.js\"\n", Some("prod"))
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("the config has no [env.NAME] sections"), "{e}");
    }

    #[test]
    fn routes_are_inherited_together_and_take_both_forms() {
        let text = r#"
name = "w"
main = "i.js"
route = { pattern = "a.test/*", zone_name = "a.test" }
routes = ["b.test/*", { pattern = "c.test", custom_domain = true }]
[env.x]
routes = ["x.test/*"]
[env.y]
"#;
        let p = toml(text, None).unwrap();
        assert_eq!(p.routes, ["a.test/*", "b.test/*", "c.test"]);
        assert_eq!(toml(text, Some("x")).unwrap().routes, ["x.test/*"]);
        assert_eq!(
            toml(text, Some("y")).unwrap().routes,
            ["a.test/*", "b.test/*", "c.test"]
        );
        let e = toml(
            "name = \"w\"\nmain = \"i.js\"\nroutes = [{ pattern = \"c.test/*\", custom_domain = true }]",
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "wrangler.toml: routes[0]: a custom domain is a bare hostname, not \"c.test/*\""
        );
    }

    #[test]
    fn keys_warren_ignores_get_one_warning_line() {
        let text = r#"
name = "w"
main = "i.js"
account_id = "abc"
workers_dev = false
upload_source_maps = true
placement = { mode = "smart" }
kv_namespaces = [{ binding = "KV", id = "x" }]
[triggers]
crons = ["* * * * *"]
[env.e]
r2_buckets = [{ binding = "B", bucket_name = "b" }]
keep_vars = true
"#;
        let p = toml(text, None).unwrap();
        assert_eq!(
            p.warnings,
            [
                "wrangler.toml: Warren ignores these keys: account_id, kv_namespaces, placement, triggers, upload_source_maps, workers_dev"
            ]
        );
        // In an env: its own ignored keys and the inherited ones, not the
        // top level's bindings (those are not inherited).
        let p = toml(text, Some("e")).unwrap();
        assert_eq!(
            p.warnings,
            [
                "wrangler.toml: Warren ignores these keys: account_id, keep_vars, placement, r2_buckets, triggers, upload_source_maps, workers_dev"
            ]
        );
        // workers_dev = true is what Warren does anyway.
        let p = toml("name = \"w\"\nmain = \"i.js\"\nworkers_dev = true", None).unwrap();
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors_naming_their_path() {
        let e = toml("name = \"w\"\nmain = \"i.js\"\nvarz = {}", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "wrangler.toml: varz: unknown field `varz` (not a wrangler configuration key)"
        );
        // In any environment, chosen or not.
        let e = toml(
            "name = \"w\"\nmain = \"i.js\"\n[env.staging]\nvarz = { A = \"b\" }",
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "wrangler.toml: env.staging.varz: unknown field `varz` (not a wrangler configuration key)"
        );
        // Inside a key Warren reads.
        let e = toml(
            "name = \"w\"\nmain = \"i.js\"\n[env.s]\nvpc_services = [{ binding = \"A\", service = \"s\" }]",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("wrangler.toml: env.s.vpc_services[0].service: unknown field `service`"),
            "{e}"
        );
        let e = toml("name = \"w\"\nmain = \"i.js\"\nlimits = { cpu = 5 }", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("wrangler.toml: limits.cpu: unknown field `cpu`"),
            "{e}"
        );
        let e = toml("name = 5\nmain = \"i.js\"", None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("wrangler.toml: name: invalid type"), "{e}");
    }

    #[test]
    fn missing_name_or_main_and_bad_toml_are_clear() {
        let e = toml("main = \"i.js\"", None).unwrap_err().to_string();
        assert_eq!(e, "wrangler.toml: name: missing (the worker's name)");
        let e = toml("name = \"w\"\n[env.s]\nname = \"t\"", Some("s"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "wrangler.toml: env.s.main: missing (the entry module, e.g. \"src/index.ts\")"
        );
        let e = toml("name = \"w\"\nmain = ", None).unwrap_err().to_string();
        assert!(
            e.starts_with("wrangler.toml: TOML parse error at line 2"),
            "{e}"
        );
        // An unquoted TOML date is the date's text.
        let p = toml(
            "name = \"w\"\nmain = \"i.js\"\ncompatibility_date = 2026-01-02",
            None,
        )
        .unwrap();
        assert_eq!(p.compatibility_date.as_deref(), Some("2026-01-02"));
        // A name goes into API paths: only what the edge accepts passes.
        let e = toml("name = \"../tokens?x\"\nmain = \"i.js\"", None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "wrangler.toml: name: \"../tokens?x\" is not a worker name: use 1 to 63 lowercase letters, digits and dashes, not starting with a dash"
        );
    }

    #[test]
    fn jsonc_configs_follow_the_same_rules() {
        let text = r#"{
  // wrangler.jsonc as `wrangler init` writes it
  "$schema": "node_modules/wrangler/config-schema.json",
  "name": "w", "main": "src/index.ts",
  "compatibility_date": "2026-11-01",
  "observability": { "enabled": true },
  "vars": { "N": 42 },
  "define": { "BUILD": "\"x\"" },
  "env": { "staging": { "vars": { "N": 7 }, "define": {}, "minify": true, } },
}"#;
        let p = resolve(Path::new("wrangler.jsonc"), text, None).unwrap();
        assert_eq!(p.vars["N"], serde_json::json!(42));
        assert_eq!(p.define["BUILD"], "\"x\"");
        assert!(p.warnings.is_empty());
        let p = resolve(Path::new("wrangler.jsonc"), text, Some("staging")).unwrap();
        assert_eq!(p.name, "w-staging");
        assert_eq!(p.vars["N"], serde_json::json!(7));
        assert!(p.define.is_empty() && p.minify);
        let e = resolve(Path::new("wrangler.jsonc"), "{\"env\": {\"a\": 1}}", None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "wrangler.jsonc: env.a: an environment is a table");
    }

    #[test]
    fn find_config_follows_wranglers_precedence() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wrangler.toml"), "").unwrap();
        assert_eq!(
            find_config(Some(dir.path())).unwrap(),
            dir.path().join("wrangler.toml")
        );
        std::fs::write(dir.path().join("wrangler.jsonc"), "").unwrap();
        assert_eq!(
            find_config(Some(dir.path())).unwrap(),
            dir.path().join("wrangler.jsonc")
        );
        std::fs::write(dir.path().join("wrangler.json"), "").unwrap();
        assert_eq!(
            find_config(Some(dir.path())).unwrap(),
            dir.path().join("wrangler.json")
        );
        std::fs::write(dir.path().join("warren.json"), "").unwrap();
        assert_eq!(
            find_config(Some(dir.path())).unwrap(),
            dir.path().join("warren.json")
        );
    }
}
