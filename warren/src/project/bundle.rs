//! Bundling a worker with esbuild, as wrangler does: one ES module from the
//! entry (TypeScript or JavaScript) and everything it imports from the
//! project and `node_modules`, plus an external source map.
//!
//! esbuild is the pinned npm package of `runtime/js` (its native binary). Its
//! errors come back as `file:line:column: message` in the user's source
//! (columns 1-based); imports Warren does not provide (`node:*`,
//! `cloudflare:*`, `.wasm` modules) get an error of their own naming the
//! import.

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::config::Project;

/// Module rules, as wrangler's defaults: file extension → esbuild loader.
/// Text modules import as a string; `.bin` imports as bytes (esbuild's
/// `binary`: a `Uint8Array`, where wrangler gives an `ArrayBuffer`).
pub const MODULE_RULES: [(&str, &str); 4] = [
    (".txt", "text"),
    (".html", "text"),
    (".sql", "text"),
    (".bin", "binary"),
];

/// A bundled worker, ready to upload.
#[derive(Debug)]
pub struct Bundle {
    /// The entry module's name (`index.js`, or the `.wasm` component's file name).
    pub main_module: String,
    /// The modules to upload: the one bundle, or a `.wasm` component alone.
    pub modules: Vec<(String, Vec<u8>)>,
    /// The bundle's source map (JS workers).
    pub source_map: Option<SourceMap>,
    /// Files written to the output folder (bundle and map).
    pub files: Vec<PathBuf>,
    /// How long bundling took.
    pub elapsed: Duration,
}

/// The esbuild binary: the pinned npm package of `js_dir` (`runtime/js`,
/// found as the edge finds ComponentizeJS: `$WARREN_JS_DIR` or the source
/// checkout) — never the project's own, which would run whatever a checkout
/// put there. Of the package, the platform package's native binary, else its
/// launcher.
pub fn esbuild_path(js_dir: &Path) -> anyhow::Result<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    let native = format!("@esbuild/{}-{arch}/bin/esbuild", std::env::consts::OS);
    let modules = js_dir.join("node_modules");
    [modules.join(&native), modules.join("esbuild/bin/esbuild")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "esbuild is not installed in {}/node_modules (run scripts/setup.sh, or `npm ci` there; or set WARREN_JS_DIR)",
                js_dir.display()
            )
        })
}

/// Bundles `project` into `outdir` (created if missing). A `.wasm` entry is
/// a ready component and is taken as it is, alone.
pub fn bundle(project: &Project, outdir: &Path) -> anyhow::Result<Bundle> {
    if project.main.extension().is_some_and(|e| e == "wasm") {
        return bundle_with(Path::new("esbuild"), project, outdir);
    }
    let esbuild = esbuild_path(&crate::serve::js_dir(None))?;
    bundle_with(&esbuild, project, outdir)
}

/// [`bundle`] with the esbuild binary `esbuild`.
pub fn bundle_with(esbuild: &Path, project: &Project, outdir: &Path) -> anyhow::Result<Bundle> {
    let started = Instant::now();
    let dir = project.dir();
    let main = dir.join(&project.main);
    let main_name = project
        .main
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("main: bad entry path {}", project.main.display()))?
        .to_owned();
    if main_name.ends_with(".wasm") {
        let bytes = std::fs::read(&main).with_context(|| {
            format!(
                "cannot read the component {} (built it yet?)",
                main.display()
            )
        })?;
        return Ok(Bundle {
            main_module: main_name.clone(),
            modules: vec![(main_name, bytes)],
            source_map: None,
            files: Vec::new(),
            elapsed: started.elapsed(),
        });
    }
    if !main.is_file() {
        anyhow::bail!(
            "{}: main: the entry {} does not exist",
            project.config_path.display(),
            main.display()
        );
    }
    std::fs::create_dir_all(outdir)
        .with_context(|| format!("cannot create {}", outdir.display()))?;
    let outdir = outdir
        .canonicalize()
        .with_context(|| format!("cannot read {}", outdir.display()))?;
    let stem = Path::new(&main_name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("index");
    let out_name = format!("{stem}.js");
    let out_file = outdir.join(&out_name);
    let map_file = outdir.join(format!("{out_name}.map"));

    let mut cmd = Command::new(esbuild);
    // `./` first: a `main` that begins with `-` is a file, never a flag.
    cmd.current_dir(dir)
        .arg(Path::new(".").join(&project.main))
        .args([
            "--bundle",
            "--format=esm",
            "--platform=neutral",
            "--target=es2022",
            "--conditions=workerd,worker,browser",
            "--main-fields=browser,module,main",
            "--sourcemap",
            "--charset=utf8",
            "--color=false",
            "--log-level=warning",
            "--log-limit=0",
        ])
        .arg(format!("--outfile={}", out_file.display()));
    for (ext, loader) in MODULE_RULES {
        cmd.arg(format!("--loader:{ext}={loader}"));
    }
    if project.keep_names {
        cmd.arg("--keep-names");
    }
    if project.minify {
        cmd.arg("--minify");
    }
    if !project.define.contains_key("process.env.NODE_ENV") {
        cmd.arg("--define:process.env.NODE_ENV=\"production\"");
    }
    for (k, v) in &project.define {
        cmd.arg(format!("--define:{k}={v}"));
    }
    if let Some(t) = &project.tsconfig {
        cmd.arg(format!("--tsconfig={}", t.display()));
    }
    if let Some(f) = &project.jsx_factory {
        cmd.arg(format!("--jsx-factory={f}"));
    }
    if let Some(f) = &project.jsx_fragment {
        cmd.arg(format!("--jsx-fragment={f}"));
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", esbuild.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let messages = parse_log(&log);
    for m in messages.iter().filter(|m| !m.error) {
        eprintln!("warning: {}", m.render());
    }
    if !out.status.success() {
        let errors: Vec<String> = messages
            .iter()
            .filter(|m| m.error)
            .map(Message::render)
            .collect();
        if errors.is_empty() {
            anyhow::bail!("esbuild failed ({}): {}", out.status, log.trim());
        }
        anyhow::bail!(
            "bundling {} failed:\n{}",
            project.main.display(),
            errors.join("\n")
        );
    }
    let code = std::fs::read(&out_file)
        .with_context(|| format!("cannot read the bundle {}", out_file.display()))?;
    let map_text = std::fs::read_to_string(&map_file)
        .with_context(|| format!("cannot read the source map {}", map_file.display()))?;
    let base = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let source_map = SourceMap::parse(&map_text, &outdir, &base)?;
    Ok(Bundle {
        main_module: out_name.clone(),
        modules: vec![(out_name, code)],
        source_map: Some(source_map),
        files: vec![out_file, map_file],
        elapsed: started.elapsed(),
    })
}

/// One message of esbuild's log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    error: bool,
    text: String,
    /// `file:line:column` (column 1-based) of the first location.
    at: Option<String>,
    /// The source line(s) esbuild quotes.
    frame: Vec<String>,
}

impl Message {
    fn render(&self) -> String {
        let text = explain(&self.text);
        let mut s = match &self.at {
            Some(at) => format!("{at}: {text}"),
            None => text,
        };
        for l in &self.frame {
            s.push('\n');
            s.push_str(l);
        }
        s
    }
}

/// Warren's wording for errors about imports it does not provide.
fn explain(text: &str) -> String {
    if let Some(rest) = text.strip_prefix("Could not resolve \"")
        && let Some(spec) = rest.strip_suffix('"')
    {
        if spec.starts_with("node:") || NODE_BUILTINS.contains(&spec) {
            return format!(
                "import {spec:?}: Warren provides no node built-in modules (nodejs_compat is accepted, not implemented)"
            );
        }
        if spec.starts_with("cloudflare:") {
            return format!("import {spec:?}: Warren does not provide this Cloudflare module");
        }
        return format!(
            "import {spec:?}: not found (a missing package? run npm install; a relative path needs ./)"
        );
    }
    if text.starts_with("No loader is configured for \".wasm\" files") {
        return format!(
            "{text}: Warren's JS workers cannot import Wasm modules (no WebAssembly in StarlingMonkey); make a Wasm component the worker's main instead"
        );
    }
    text.to_owned()
}

/// Node's built-in modules, imported without `node:`.
const NODE_BUILTINS: &[&str] = &[
    "assert",
    "async_hooks",
    "buffer",
    "child_process",
    "crypto",
    "dns",
    "events",
    "fs",
    "fs/promises",
    "http",
    "https",
    "net",
    "os",
    "path",
    "process",
    "querystring",
    "stream",
    "string_decoder",
    "timers",
    "tls",
    "url",
    "util",
    "worker_threads",
    "zlib",
];

/// Parses esbuild's text log (`--color=false`): `✘ [ERROR] text`, a blank
/// line, `    file:line:col:`, the quoted source, notes.
fn parse_log(log: &str) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    let mut in_frame = false;
    for line in log.lines() {
        let head = line
            .strip_prefix("✘ [ERROR] ")
            .map(|t| (true, t))
            .or_else(|| line.strip_prefix("▲ [WARNING] ").map(|t| (false, t)));
        if let Some((error, text)) = head {
            // esbuild appends the warning's kind: "… [unsupported-jsx-comment]".
            out.push(Message {
                error,
                text: text.trim_end().to_owned(),
                at: None,
                frame: Vec::new(),
            });
            in_frame = false;
            continue;
        }
        let Some(m) = out.last_mut() else { continue };
        if m.at.is_none()
            && let Some(loc) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))
            && let Some(at) = location(loc)
        {
            m.at = Some(at);
            in_frame = true;
            continue;
        }
        if in_frame {
            if line.starts_with("      ") && (line.contains('│') || line.contains('╵')) {
                m.frame.push(line.to_owned());
                continue;
            }
            in_frame = false;
        }
    }
    out
}

/// `file:line:col` with esbuild's 0-based column made 1-based.
fn location(loc: &str) -> Option<String> {
    let mut parts = loc.rsplitn(3, ':');
    let col: u64 = parts.next()?.parse().ok()?;
    let line: u64 = parts.next()?.parse().ok()?;
    let file = parts.next()?;
    Some(format!("{file}:{line}:{}", col + 1))
}

/// A bundle's source map (v3, decoded by the `sourcemap` crate), with its
/// sources shown relative to the project's folder.
#[derive(Debug, Clone)]
pub struct SourceMap {
    sources: Vec<String>,
    map: sourcemap::SourceMap,
}

impl SourceMap {
    /// Parses a v3 source map written to `map_dir`; sources are shown
    /// relative to `base` (the project's folder) where they are inside it.
    pub fn parse(text: &str, map_dir: &Path, base: &Path) -> anyhow::Result<SourceMap> {
        let map = sourcemap::SourceMap::from_slice(text.as_bytes()).context("bad source map")?;
        let root = map.get_source_root().unwrap_or_default().to_owned();
        let sources = map
            .sources()
            .map(|s| {
                let full = normalize(&map_dir.join(&root).join(s));
                full.strip_prefix(base)
                    .map_or(full.clone(), Path::to_path_buf)
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        Ok(SourceMap { sources, map })
    }

    /// The source position of the bundle's `line:column` (both 1-based), as
    /// `file:line:column` (1-based).
    pub fn lookup(&self, line: u32, column: u32) -> Option<String> {
        let line = line.checked_sub(1)?;
        let token = self.map.lookup_token(line, column.saturating_sub(1))?;
        // The nearest mapping before the position may be on an earlier line.
        if token.get_dst_line() != line {
            return None;
        }
        let src = self.sources.get(token.get_src_id() as usize)?;
        Some(format!(
            "{src}:{}:{}",
            token.get_src_line() + 1,
            token.get_src_col() + 1
        ))
    }

    /// `text` with every `NAME:line:column` of the bundle `bundle_name`
    /// followed by its source position: `index.js:12:5 (src/index.ts:3:9)`.
    pub fn annotate(&self, text: &str, bundle_name: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find(bundle_name) {
            let (before, from) = rest.split_at(i);
            out.push_str(before);
            let after = &from[bundle_name.len()..];
            let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).count();
            let mapped = after.strip_prefix(':').and_then(|a| {
                let n = digits(a);
                let line: u32 = a[..n].parse().ok()?;
                let b = a[n..].strip_prefix(':')?;
                let m = digits(b);
                let col: u32 = b[..m].parse().ok()?;
                let used = bundle_name.len() + 1 + n + 1 + m;
                Some((used, self.lookup(line, col)?))
            });
            match mapped {
                Some((used, at)) => {
                    out.push_str(&from[..used]);
                    out.push_str(&format!(" ({at})"));
                    rest = &from[used..];
                }
                None => {
                    out.push_str(bundle_name);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// Removes `.` and resolves `..` without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esbuild_errors_become_file_line_column_messages() {
        let log = "✘ [ERROR] Could not resolve \"node:fs\"\n\n    src/index.ts:1:15:\n      1 │ import fs from \"node:fs\";\n        ╵                ~~~~~~~~~\n\n  The package \"node:fs\" wasn't found on the file system but is built into node.\n\n✘ [ERROR] Expected \"}\" but found \"1\"\n\n    src/syn.ts:2:33:\n      2 │ export default { fetch( { return 1 } };\n        │                                  ^\n        ╵                                  }\n\n▲ [WARNING] Comparison using the \"===\" operator here is always false [equals-negative-zero]\n\n    src/a.ts:4:6:\n\n2 errors\n";
        let m = parse_log(log);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0].render(),
            "src/index.ts:1:16: import \"node:fs\": Warren provides no node built-in modules (nodejs_compat is accepted, not implemented)\n      1 │ import fs from \"node:fs\";\n        ╵                ~~~~~~~~~"
        );
        assert!(
            m[1].render()
                .starts_with("src/syn.ts:2:34: Expected \"}\" but found \"1\"\n")
        );
        assert!(!m[2].error);
        assert_eq!(m[2].at.as_deref(), Some("src/a.ts:4:7"));
        assert_eq!(
            explain("Could not resolve \"cloudflare:sockets\""),
            "import \"cloudflare:sockets\": Warren does not provide this Cloudflare module"
        );
        assert!(explain("Could not resolve \"left-pad\"").contains("missing package"));
    }

    #[test]
    fn source_maps_decode_and_annotate_positions() {
        // "AAAA;AACA,IAAI": line 1 col 0 → a.ts 1:1; line 2 col 0 → a.ts 2:1,
        // line 2 col 4 → a.ts 2:5.
        let map = r#"{"version":3,"sources":["../src/a.ts"],"mappings":"AAAA;AACA,IAAI"}"#;
        let m = SourceMap::parse(map, Path::new("/p/out"), Path::new("/p")).unwrap();
        assert_eq!(m.lookup(1, 1).as_deref(), Some("src/a.ts:1:1"));
        assert_eq!(m.lookup(2, 3).as_deref(), Some("src/a.ts:2:1"));
        assert_eq!(m.lookup(2, 9).as_deref(), Some("src/a.ts:2:5"));
        assert_eq!(m.lookup(9, 1), None);
        assert_eq!(
            m.annotate("Error: boom at index.js:2:7 and index.js:x", "index.js"),
            "Error: boom at index.js:2:7 (src/a.ts:2:5) and index.js:x"
        );
    }
}
