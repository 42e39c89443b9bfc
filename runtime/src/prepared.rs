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
//! - `stamp` ([`Stamp`]): what they were made from (the pinned tooling and the
//!   engine's fingerprint) and each file's size and SHA-256.
//!
//! A node copies from it what its own caches lack when it needs it, and only
//! what the stamp lists for the node's own tooling and fingerprint: a JS build
//! copies the splice entries into the node's splice cache
//! ([`crate::js::JsBuilder::with_prepared`]), and the engine copies a missing
//! compiled file before it would compile it ([`crate::EngineConfig::prepared`]).
//! Each copy is hashed on the way and renamed into place only when it matches
//! the stamp; copies, not links, so nothing a node does to its caches reaches
//! the prepared folder. A copied file that does not load is compiled again and
//! replaced, as any unusable cache entry is.
//!
//! Trust: compiled code in the folder is loaded as native code, so the folder
//! is part of the installation, trusted like the `warren` binary and
//! `node_modules` (owned by root, not writable by the node's user); a node
//! only reads it. The stamp's hashes catch a damaged or half-copied file, not
//! a forged one.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::engine::{EngineConfig, RuntimeEngine};
use crate::js::JsBuilder;

/// The prepared folder's name inside the JS toolchain folder (`runtime/js`).
pub const PREPARED_DIR: &str = "prepared";

/// The worker built to prepare: any JS worker gives the same template and
/// the same kept steps.
const WORKER: &str = "export default { fetch() { return new Response(\"prepared\"); } };\n";

/// The first line of a stamp.
const STAMP_VERSION: &str = "warren-prepared v1";

/// A prepared folder's `stamp`: what it was made from and what it holds.
/// One `key value…` line each: `tooling <hash>`, `engine <fingerprint>`, then
/// `file <path> <bytes> <sha256>` per file (paths relative to the folder,
/// `splice/…` or `compiled/…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// [`JsBuilder::tooling_key`] of the toolchain it was prepared with.
    pub tooling: String,
    /// The engine fingerprint its compiled code is for.
    pub engine: String,
    /// Each file: its size and SHA-256 (hex).
    pub files: BTreeMap<String, (u64, String)>,
}

impl Stamp {
    /// The stamp's text.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{STAMP_VERSION}\ntooling {}\nengine {}\n",
            self.tooling, self.engine
        );
        for (path, (len, sha)) in &self.files {
            s.push_str(&format!("file {path} {len} {sha}\n"));
        }
        s
    }

    /// Parses a stamp; `None` for anything else (another version, a
    /// truncated or edited file, a path leaving the folder).
    pub fn parse(text: &str) -> Option<Stamp> {
        let mut lines = text.lines();
        if lines.next()? != STAMP_VERSION {
            return None;
        }
        let tooling = lines.next()?.strip_prefix("tooling ")?.to_owned();
        let engine = lines.next()?.strip_prefix("engine ")?.to_owned();
        let mut files = BTreeMap::new();
        for line in lines {
            let mut f = line.strip_prefix("file ")?.split(' ');
            let (path, len, sha) = (f.next()?, f.next()?.parse().ok()?, f.next()?);
            let (dir, name) = path.split_once('/')?;
            let plain =
                |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\\', '\0']);
            if f.next().is_some()
                || !matches!(dir, "splice" | "compiled")
                || !plain(name)
                || sha.len() != 64
                || !sha.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return None;
            }
            files.insert(path.to_owned(), (len, sha.to_owned()));
        }
        Some(Stamp {
            tooling,
            engine,
            files,
        })
    }

    /// The stamp of the prepared folder `dir`; `Ok(None)` when it has none
    /// (not prepared), an error when it cannot be read or parsed.
    pub fn read(dir: &Path) -> std::io::Result<Option<Stamp>> {
        match std::fs::read_to_string(dir.join("stamp")) {
            Ok(text) => Stamp::parse(&text).map(Some).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not a prepared stamp")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The stamp's files under `dir/` (`splice` or `compiled`): name, size,
    /// hash.
    pub fn files_in<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, u64, &'a str)> {
        self.files.iter().filter_map(move |(path, (len, sha))| {
            let name = path.strip_prefix(dir)?.strip_prefix('/')?;
            Some((name, *len, sha.as_str()))
        })
    }
}

/// What [`prepare`] did.
#[derive(Debug)]
pub enum Prepared {
    /// The folder was already prepared for this tooling and engine, with
    /// every file its stamp lists.
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
/// and swaps a new folder with the splice cache, the template and the stamp in
/// for `out` in one exchange (a node never finds half a folder). Folders and
/// files are made readable by all (0755, 0644), whatever the umask.
pub fn prepare(builder: &JsBuilder, config: EngineConfig, out: &Path) -> anyhow::Result<Prepared> {
    let work = tempfile::tempdir().context("creating a scratch folder")?;
    let engine = RuntimeEngine::new(EngineConfig {
        cache_dir: work.path().join("compiled"),
        prepared: None,
        ..config
    })?;
    let (tooling, fingerprint) = (builder.tooling_key(), engine.fingerprint().to_owned());
    if let Ok(Some(stamp)) = Stamp::read(out)
        && stamp.tooling == tooling
        && stamp.engine == fingerprint
        && stamp.files_in("compiled").next().is_some()
        && stamp.files.iter().all(|(path, (len, _))| {
            std::fs::metadata(out.join(path)).is_ok_and(|m| m.is_file() && m.len() == *len)
        })
    {
        return Ok(Prepared::Already);
    }
    // The new folder first: a folder we cannot write fails now, not after
    // the build and the compile.
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    remove_stale_folders(parent);
    let next = tempfile::Builder::new()
        .prefix(".prepared-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a folder in {}", parent.display()))?;

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

    let mut stamp = Stamp {
        tooling,
        engine: fingerprint,
        files: BTreeMap::new(),
    };
    let mut put = |from: &Path, dir: &str, name: &str| -> anyhow::Result<()> {
        let folder = next.path().join(dir);
        std::fs::create_dir_all(&folder)
            .and_then(|()| {
                std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755))
            })
            .with_context(|| format!("creating {}", folder.display()))?;
        let to = folder.join(name);
        let (len, sha) = copy_hashing(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
        stamp.files.insert(format!("{dir}/{name}"), (len, sha));
        Ok(())
    };
    for entry in std::fs::read_dir(built.join("splice")).context("reading the splice cache")? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && !name.starts_with('.') && !name.ends_with(".tmp") {
            put(&entry.path(), "splice", &name)?;
        }
    }
    put(&compiled, "compiled", &format!("{}.cwasm", template.key))?;
    let stamp_path = next.path().join("stamp");
    std::fs::write(&stamp_path, stamp.render())
        .and_then(|()| {
            std::fs::set_permissions(&stamp_path, std::fs::Permissions::from_mode(0o644))
        })
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    std::fs::set_permissions(next.path(), std::fs::Permissions::from_mode(0o755))?;
    swap_in(next.path(), out).with_context(|| format!("putting {} in place", out.display()))?;
    // `next` now names the old folder (or nothing): removed on drop.
    drop(next);
    Ok(Prepared::Made {
        template: template.key,
        build,
        compile,
    })
}

/// Puts folder `next` at `out`: exchanged with the folder there (so `next`
/// then names the old one), else renamed.
fn swap_in(next: &Path, out: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, next, AT_FDCWD, out, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ENOENT) => std::fs::rename(next, out),
        Err(e) => Err(e.into()),
    }
}

/// Removes `.prepared-*` folders in `parent` older than an hour: left by a
/// `prepare` that was killed.
fn remove_stale_folders(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_string_lossy()
            .starts_with(".prepared-")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(3600)));
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Copies `from` to the new file `to`: its size and SHA-256 (hex).
fn copy_hashing(from: &Path, to: &Path) -> std::io::Result<(u64, String)> {
    let mut input = std::fs::File::open(from)?;
    let mut output = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(to)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        output.write_all(&buf[..n])?;
        len += n as u64;
    }
    output.sync_all()?;
    Ok((len, hex::encode(h.finalize())))
}

/// Copies `from` to `to` when `to` is missing, keeping the copy only when it
/// has `len` bytes and SHA-256 `sha`; whether it copied. A missing `from`
/// is an error (the stamp lists it). The copy is written under a temporary
/// name and renamed in.
pub(crate) fn copy_checked(from: &Path, to: &Path, len: u64, sha: &str) -> std::io::Result<bool> {
    if to.exists() {
        return Ok(false);
    }
    let tmp = to.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    let copied = copy_hashing(from, &tmp).and_then(|got| {
        if got != (len, sha.to_owned()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is not what the prepared stamp lists ({} bytes, SHA-256 {})",
                    from.display(),
                    got.0,
                    got.1
                ),
            ));
        }
        std::fs::rename(&tmp, to)
    });
    if copied.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    copied.map(|()| true)
}

/// Copies each `splice/` file the stamp of prepared folder `prepared` lists
/// into `to` where `to` lacks it, when the stamp is for `tooling`; how many.
/// A folder with no stamp copies nothing; a file that cannot be copied or
/// does not match the stamp is logged and left out (the build then makes
/// that entry itself).
pub(crate) fn copy_splices(prepared: &Path, tooling: &str, to: &Path) -> std::io::Result<usize> {
    let Some(stamp) = Stamp::read(prepared)? else {
        return Ok(0);
    };
    if stamp.tooling != tooling {
        return Ok(0);
    }
    let mut copied = 0;
    for (name, len, sha) in stamp.files_in("splice") {
        std::fs::create_dir_all(to)?;
        match copy_checked(
            &prepared.join("splice").join(name),
            &to.join(name),
            len,
            sha,
        ) {
            Ok(true) => copied += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "a prepared build step not taken"),
        }
    }
    Ok(copied)
}

/// The size and SHA-256 the stamp of prepared folder `prepared` lists for
/// compiled file `key` (`<hash>-<fingerprint>`), when it is for engine
/// `fingerprint`. `Ok(None)`: not prepared there.
pub(crate) fn compiled_entry(
    prepared: &Path,
    fingerprint: &str,
    key: &str,
) -> std::io::Result<Option<(PathBuf, u64, String)>> {
    let Some(stamp) = Stamp::read(prepared)? else {
        return Ok(None);
    };
    if stamp.engine != fingerprint {
        return Ok(None);
    }
    let name = format!("{key}.cwasm");
    Ok(stamp
        .files_in("compiled")
        .find(|(n, _, _)| *n == name)
        .map(|(n, len, sha)| (prepared.join("compiled").join(n), len, sha.to_owned())))
}

/// The prepared folder of the JS toolchain in `js_dir`.
pub fn prepared_dir(js_dir: &Path) -> PathBuf {
    js_dir.join(PREPARED_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn a_stamp_round_trips_and_anything_else_is_refused() {
        let stamp = Stamp {
            tooling: "t".repeat(64),
            engine: "e".repeat(32),
            files: BTreeMap::from([
                ("splice/a.wasm".to_string(), (3, sha(b"abc"))),
                ("compiled/k-f.cwasm".to_string(), (0, sha(b""))),
            ]),
        };
        assert_eq!(Stamp::parse(&stamp.render()), Some(stamp.clone()));
        let text = stamp.render();
        for bad in [
            text.replace(STAMP_VERSION, "warren-prepared v0"),
            text.replace("splice/a.wasm", "splice/../a.wasm"),
            text.replace("splice/a.wasm", "splice/.hidden"),
            text.replace("splice/a.wasm", "other/a.wasm"),
            text.replace("splice/a.wasm 3", "splice/a.wasm three"),
            text.replace(&sha(b"abc"), "xyz"),
            format!("{text}file splice/b.wasm 1 {} extra\n", sha(b"b")),
            text.lines().take(2).collect::<Vec<_>>().join("\n"),
        ] {
            assert_eq!(Stamp::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn only_missing_files_matching_the_stamp_are_copied_and_never_linked() {
        use std::os::unix::fs::MetadataExt;
        let prepared = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let splice = prepared.path().join("splice");
        std::fs::create_dir_all(&splice).unwrap();
        std::fs::write(splice.join("a.wasm"), b"prepared a").unwrap();
        std::fs::write(splice.join("b.wasm"), b"prepared b").unwrap();
        std::fs::write(splice.join("c.wasm"), b"damaged c").unwrap();
        std::fs::write(splice.join("unlisted.wasm"), b"x").unwrap();
        std::fs::write(to.path().join("b.wasm"), b"the node's own b").unwrap();
        let stamp = Stamp {
            tooling: "tools".into(),
            engine: "engine".into(),
            files: BTreeMap::from([
                ("splice/a.wasm".to_string(), (10, sha(b"prepared a"))),
                ("splice/b.wasm".to_string(), (10, sha(b"prepared b"))),
                ("splice/c.wasm".to_string(), (9, sha(b"intact c!"))),
            ]),
        };
        std::fs::write(prepared.path().join("stamp"), stamp.render()).unwrap();
        // Another toolchain's folder: nothing.
        assert_eq!(
            copy_splices(prepared.path(), "other", to.path()).unwrap(),
            0
        );
        // A file that does not match the stamp is left out, with no file
        // behind; the others are copied.
        assert_eq!(
            copy_splices(prepared.path(), "tools", to.path()).unwrap(),
            1
        );
        let err = copy_checked(
            &splice.join("c.wasm"),
            &to.path().join("c.wasm"),
            9,
            &sha(b"intact c!"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("c.wasm is not what the prepared stamp lists (9 bytes"),
            "{err}"
        );
        assert_eq!(
            warren_testkit::file_names(to.path()),
            ["a.wasm", "b.wasm"],
            "a copied, b kept, c refused, unlisted left"
        );
        assert_eq!(
            std::fs::read(to.path().join("a.wasm")).unwrap(),
            b"prepared a"
        );
        assert_eq!(
            std::fs::read(to.path().join("b.wasm")).unwrap(),
            b"the node's own b",
            "an entry the node has is kept"
        );
        let ino = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
        assert_ne!(ino(to.path().join("a.wasm")), ino(splice.join("a.wasm")));
        // Writing the node's copy in place leaves the prepared file alone.
        std::fs::write(to.path().join("a.wasm"), b"damaged").unwrap();
        assert_eq!(std::fs::read(splice.join("a.wasm")).unwrap(), b"prepared a");
        // No stamp: not prepared, nothing copied.
        let bare = tempfile::tempdir().unwrap();
        assert_eq!(copy_splices(bare.path(), "tools", to.path()).unwrap(), 0);
    }

    #[test]
    fn a_compiled_file_is_found_only_for_its_engine() {
        let prepared = tempfile::tempdir().unwrap();
        let stamp = Stamp {
            tooling: "tools".into(),
            engine: "fp".into(),
            files: BTreeMap::from([("compiled/h-fp.cwasm".to_string(), (1, sha(b"c")))]),
        };
        std::fs::write(prepared.path().join("stamp"), stamp.render()).unwrap();
        let found = compiled_entry(prepared.path(), "fp", "h-fp").unwrap();
        assert_eq!(
            found,
            Some((prepared.path().join("compiled/h-fp.cwasm"), 1, sha(b"c")))
        );
        assert_eq!(
            compiled_entry(prepared.path(), "other", "h-fp").unwrap(),
            None
        );
        assert_eq!(compiled_entry(prepared.path(), "fp", "g-fp").unwrap(), None);
        std::fs::write(prepared.path().join("stamp"), "garbage").unwrap();
        assert!(compiled_entry(prepared.path(), "fp", "h-fp").is_err());
    }
}
