//! A prepared JS toolchain: what a node's first JS deploy would otherwise
//! make itself, and what is the same for every JS worker on one toolchain and
//! engine, made once when Warren is installed (`warren prepare-js`).
//!
//! A prepared folder (by default `<js_dir>/prepared`) holds
//! - `splice/`: ComponentizeJS's spliced engine and the results of its two
//!   steps after Wizer, as `build.mjs` keeps them in a node's splice cache
//!   (see [`crate::js`]);
//! - `compiled/`: the compiled template every JS worker shares
//!   (`<hash>-<fingerprint>.cwasm`, see [`crate::snapshot`]);
//! - `stamp`: what they were made from (the pinned tooling and the engine's
//!   fingerprint), so preparing again is a no-op until either changes.
//!
//! A node copies from it what its own caches lack when it needs it: a JS
//! build copies the splice entries into the node's splice cache
//! ([`crate::js::JsBuilder::with_prepared`]), and the engine copies a missing
//! compiled file of its own fingerprint before it would compile
//! ([`crate::EngineConfig::prepared`]). Copies, not links, so nothing a node
//! does to its caches reaches the prepared folder; each is put in place by
//! rename. A copied file that does not load is compiled again and replaced,
//! as any unusable cache entry is.
//!
//! Trust: compiled code in the folder is loaded as native code, so the folder
//! is part of the installation, trusted like the `warren` binary and
//! `node_modules`; a node only reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::engine::{EngineConfig, RuntimeEngine};
use crate::js::JsBuilder;

/// The prepared folder's name inside the JS toolchain folder (`runtime/js`).
pub const PREPARED_DIR: &str = "prepared";

/// The worker built to prepare: any JS worker gives the same template and
/// the same kept steps.
const WORKER: &str = "export default { fetch() { return new Response(\"prepared\"); } };\n";

/// What [`prepare`] did.
#[derive(Debug)]
pub enum Prepared {
    /// The folder was already prepared for this tooling and engine.
    Already,
    /// The folder was (re)made.
    Made {
        /// The compiled template's key (`<hash>-<fingerprint>`).
        template: String,
        /// Building the worker (ComponentizeJS, every step run).
        build: Duration,
        /// Compiling the template.
        compile: Duration,
    },
}

/// Prepares `out` for the JS toolchain of `builder` and engines with
/// `config`'s settings (its `cache_dir` is not used): builds a JS worker
/// with empty caches, compiles its template (in `config.compiler` when set),
/// and replaces `out` with the splice cache and the template, then a stamp.
pub fn prepare(builder: &JsBuilder, config: EngineConfig, out: &Path) -> anyhow::Result<Prepared> {
    let work = tempfile::tempdir().context("creating a scratch folder")?;
    let engine = RuntimeEngine::new(EngineConfig {
        cache_dir: work.path().join("compiled"),
        prepared: None,
        ..config
    })?;
    let stamp = format!(
        "tooling {}\nengine {}\n",
        builder.tooling_key(),
        engine.fingerprint()
    );
    let has_template = || {
        let suffix = format!("-{}.cwasm", engine.fingerprint());
        std::fs::read_dir(out.join("compiled")).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        })
    };
    if std::fs::read_to_string(out.join("stamp")).is_ok_and(|s| s == stamp) && has_template() {
        return Ok(Prepared::Already);
    }
    let src = work.path().join("src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("index.js"), WORKER)?;
    let built = work.path().join("built");
    let mut builder = builder.clone().with_cache(built.clone());
    builder.prepared = None;
    let started = Instant::now();
    let wasm = builder
        .build(&src, "index.js", &BTreeMap::new(), &[])
        .map_err(|e| anyhow::anyhow!("building a JS worker: {e}"))?;
    let build = started.elapsed();
    let [template, _] = engine
        .js_compiled_parts(&wasm)
        .context("the built JS worker does not split into a template and a snapshot")?;
    let started = Instant::now();
    engine.js_component(&wasm)?;
    let compile = started.elapsed();
    let compiled = engine.compiled_dir().path(&template.key)?;
    anyhow::ensure!(
        compiled.is_file(),
        "the template was not compiled into {}",
        compiled.display()
    );

    // Made beside `out`, then swapped in: a node copying from `out`
    // meanwhile finds a file or none, never half of one.
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let next = tempfile::Builder::new()
        .prefix(".prepared-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a folder in {}", parent.display()))?;
    let copy_all = |from: &Path, to: &Path| -> anyhow::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let name = entry.file_name();
            if entry.file_type()?.is_file() && !name.to_string_lossy().ends_with(".tmp") {
                std::fs::copy(entry.path(), to.join(&name))?;
            }
        }
        Ok(())
    };
    copy_all(&built.join("splice"), &next.path().join("splice"))
        .context("copying the splice cache")?;
    let compiled_out = next.path().join("compiled");
    std::fs::create_dir_all(&compiled_out)?;
    std::fs::copy(
        &compiled,
        compiled_out.join(format!("{}.cwasm", template.key)),
    )
    .context("copying the compiled template")?;
    std::fs::write(next.path().join("stamp"), &stamp)?;
    let old = parent.join(format!(".prepared-old-{}", uuid::Uuid::new_v4().simple()));
    if out.exists() {
        std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
    }
    let next = next.keep();
    std::fs::rename(&next, out).with_context(|| format!("writing {}", out.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(Prepared::Made {
        template: template.key,
        build,
        compile,
    })
}

/// Copies `from` to `to` when `to` is missing and `from` is a file; whether
/// it did. The copy is written under a temporary name and renamed in.
pub(crate) fn copy_in(from: &Path, to: &Path) -> std::io::Result<bool> {
    if to.exists() || !from.is_file() {
        return Ok(false);
    }
    let tmp = to.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    let copied = std::fs::copy(from, &tmp).and_then(|_| std::fs::rename(&tmp, to));
    if copied.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    copied.map(|()| true)
}

/// Copies each file of `from` that `to` lacks into `to` (created if
/// needed); how many. A missing `from` copies nothing.
pub(crate) fn copy_missing(from: &Path, to: &Path) -> std::io::Result<usize> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(0);
    };
    let mut copied = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if text.starts_with('.') || text.ends_with(".tmp") {
            continue;
        }
        if copied == 0 {
            std::fs::create_dir_all(to)?;
        }
        if copy_in(&entry.path(), &to.join(&name))? {
            copied += 1;
        }
    }
    Ok(copied)
}

/// The prepared folder of the JS toolchain in `js_dir`.
pub fn prepared_dir(js_dir: &Path) -> PathBuf {
    js_dir.join(PREPARED_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_files_are_copied_and_never_linked() {
        use std::os::unix::fs::MetadataExt;
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::write(from.path().join("a.wasm"), b"prepared a").unwrap();
        std::fs::write(from.path().join("b.wasm"), b"prepared b").unwrap();
        std::fs::write(from.path().join("c.1234.tmp"), b"half").unwrap();
        std::fs::write(to.path().join("b.wasm"), b"the node's own b").unwrap();
        assert_eq!(copy_missing(from.path(), to.path()).unwrap(), 1);
        assert_eq!(
            std::fs::read(to.path().join("a.wasm")).unwrap(),
            b"prepared a"
        );
        assert_eq!(
            std::fs::read(to.path().join("b.wasm")).unwrap(),
            b"the node's own b",
            "an entry the node has is kept"
        );
        assert!(!to.path().join("c.1234.tmp").exists());
        let ino = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
        assert_ne!(
            ino(to.path().join("a.wasm")),
            ino(from.path().join("a.wasm"))
        );
        // Writing the node's copy in place leaves the prepared file alone.
        std::fs::write(to.path().join("a.wasm"), b"damaged").unwrap();
        assert_eq!(
            std::fs::read(from.path().join("a.wasm")).unwrap(),
            b"prepared a"
        );
        assert_eq!(
            copy_missing(&from.path().join("none"), to.path()).unwrap(),
            0
        );
    }
}
