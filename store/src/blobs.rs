//! Worker bundles by content: `<dir>/<sha256 hex>`, written atomically (a
//! temporary file, fsync, rename, fsync of the directory) and checked against
//! their name on every read, so a torn or altered file is never loaded.
//!
//! Bytes from another node arrive through a [`StagedWriter`]: written to a
//! temporary file while hashed, synced, compared with the SHA-256 they must
//! have, and only then renamed into place ([`BlobDir::writer`]). Compiled
//! components live in a [`CompiledDir`] under keys that name the bundle and
//! the engine they were compiled for. Both are opened for a peer by a
//! validated hash or key, never by a path ([`BlobDir::open_bundle`],
//! [`CompiledDir::open_artifact`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Largest bundle accepted from a peer (a built JS worker is about 12 MiB).
pub const MAX_BUNDLE_BYTES: u64 = 256 << 20;
/// Largest compiled component accepted from a peer.
pub const MAX_COMPILED_BYTES: u64 = 1 << 30;

/// Lowercase hex SHA-256 of `bytes`: a bundle's name.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn valid_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No bundle by that hash here.
    #[error("bundle {0} is not stored here")]
    Missing(String),
    /// The file's content does not hash to its name.
    #[error("bundle {0} is corrupt (its content has another hash)")]
    Corrupt(String),
    /// The name is not a SHA-256 in hex.
    #[error("{0:?} is not a bundle hash")]
    BadHash(String),
    /// Bytes written for a bundle hash to something else (a peer's bytes
    /// are untrusted input); nothing was stored.
    #[error("bytes sent for bundle {expected} hash to {actual}; discarded")]
    Mismatch {
        /// The hash the bytes were meant to have.
        expected: String,
        /// What they hash to.
        actual: String,
    },
    /// The name is not a compiled-artifact key (`<sha256 hex>-<fingerprint>`).
    #[error("{0:?} is not a compiled-code key")]
    BadKey(String),
    /// More bytes than a bundle or compiled artifact may have.
    #[error("more than {0} bytes; discarded")]
    TooLarge(u64),
    /// Reading or writing failed.
    #[error("bundle store: {0}")]
    Io(#[from] std::io::Error),
}

/// A stored file opened read-only for streaming to a peer.
#[derive(Debug)]
pub struct ContentFile {
    /// The open file, at its start.
    pub file: tokio::fs::File,
    /// Its length in bytes when opened.
    pub len: u64,
}

/// Opens `path` read-only; `None` when there is no such file.
async fn open_content(path: &Path) -> Result<Option<ContentFile>, BlobError> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata().await?;
    if !meta.is_file() {
        return Ok(None);
    }
    Ok(Some(ContentFile {
        file,
        len: meta.len(),
    }))
}

/// Fsyncs directory `dir` (a rename into it is then durable).
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

/// A directory of bundles named by their content hash.
#[derive(Debug, Clone)]
pub struct BlobDir {
    dir: PathBuf,
    /// How old an unused file must be before [`BlobDir::retain`] removes it.
    grace: std::time::Duration,
}

impl BlobDir {
    /// Bundles in `dir` (created if needed).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(BlobDir {
            dir: dir.to_owned(),
            grace: std::time::Duration::from_secs(3600),
        })
    }

    /// Stores `bytes` and returns their hash; a bundle already stored is not
    /// written again.
    pub fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let hash = content_hash(bytes);
        let path = self.dir.join(&hash);
        if self.get(&hash).is_ok() {
            return Ok(hash);
        }
        let tmp = self
            .dir
            .join(format!(".{hash}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        Ok(hash)
    }

    /// Whether a file named `hash` is here (not verified: [`BlobDir::get`]
    /// checks the content).
    pub fn contains(&self, hash: &str) -> bool {
        valid_hash(hash) && self.dir.join(hash).is_file()
    }

    /// A writer for the bundle `hash` arriving from elsewhere: the bytes go to
    /// a temporary file and are hashed on the way; [`StagedWriter::commit`]
    /// stores them under `hash` only when they hash to it. Dropped without a
    /// commit, it leaves nothing behind.
    pub async fn writer(&self, hash: &str) -> Result<StagedWriter, BlobError> {
        if !valid_hash(hash) {
            return Err(BlobError::BadHash(hash.to_owned()));
        }
        StagedWriter::create(&self.dir, hash, Some(hash.to_owned()), MAX_BUNDLE_BYTES).await
    }

    /// The bundle `hash` opened read-only for streaming to a peer; `None` when
    /// it is not here. The receiver verifies it against `hash`.
    pub async fn open_bundle(&self, hash: &str) -> Result<Option<ContentFile>, BlobError> {
        if !valid_hash(hash) {
            return Err(BlobError::BadHash(hash.to_owned()));
        }
        open_content(&self.dir.join(hash)).await
    }

    /// The bundle `hash`, verified.
    pub fn get(&self, hash: &str) -> Result<Vec<u8>, BlobError> {
        if !valid_hash(hash) {
            return Err(BlobError::BadHash(hash.to_owned()));
        }
        let bytes = match std::fs::read(self.dir.join(hash)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::Missing(hash.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        if content_hash(&bytes) != hash {
            return Err(BlobError::Corrupt(hash.to_owned()));
        }
        Ok(bytes)
    }

    /// Removes bundles no name in `keep` refers to and leftover temporary
    /// files, once they are an hour old (a deploy in progress writes its
    /// bundle before the record naming it); returns how many files went.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) -> std::io::Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let unused = (valid_hash(name) && !keep.contains(name)) || name.ends_with(".tmp");
            let old = || {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|a| a >= self.grace))
            };
            if unused && old() {
                std::fs::remove_file(entry.path())?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Bytes being written to a temporary file in a directory, to be renamed to
/// their final name once complete (and, for a bundle, once they hash to it).
/// Dropped before [`StagedWriter::finish`] or [`StagedFile::persist`], the
/// temporary file is removed.
pub struct StagedWriter {
    file: Option<tokio::fs::File>,
    staged: StagedFile,
    expected: Option<String>,
    hasher: Sha256,
    written: u64,
    limit: u64,
}

impl StagedWriter {
    async fn create(
        dir: &Path,
        name: &str,
        expected: Option<String>,
        limit: u64,
    ) -> Result<Self, BlobError> {
        let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await?;
        Ok(StagedWriter {
            file: Some(file),
            staged: StagedFile {
                dir: dir.to_owned(),
                tmp,
                target: dir.join(name),
                persisted: false,
            },
            expected,
            hasher: Sha256::new(),
            written: 0,
            limit,
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and fsyncs the temporary file and checks the bytes against the
    /// hash they must have (a mismatch removes the file); the result is not
    /// yet under its final name.
    pub async fn finish(mut self) -> Result<StagedFile, BlobError> {
        let Some(mut file) = self.file.take() else {
            return Err(std::io::Error::other("staged file already closed").into());
        };
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        if let Some(expected) = self.expected.take() {
            let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
            if actual != expected {
                // Dropping `self` removes the temporary file.
                return Err(BlobError::Mismatch { expected, actual });
            }
        }
        let target = self.staged.target.clone();
        Ok(std::mem::replace(
            &mut self.staged,
            StagedFile {
                dir: PathBuf::new(),
                tmp: PathBuf::new(),
                target,
                persisted: true,
            },
        ))
    }

    /// [`StagedWriter::finish`], then [`StagedFile::persist`].
    pub async fn commit(self) -> Result<(), BlobError> {
        self.finish().await?.persist().await
    }
}

impl AsyncWrite for StagedWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.written.saturating_add(buf.len() as u64) > this.limit {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                BlobError::TooLarge(this.limit),
            )));
        }
        let Some(file) = this.file.as_mut() else {
            return Poll::Ready(Err(std::io::Error::other("staged file already closed")));
        };
        match Pin::new(file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                let accepted = buf.get(..n).unwrap_or(buf);
                if this.expected.is_some() {
                    this.hasher.update(accepted);
                }
                this.written += accepted.len() as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().file.as_mut() {
            Some(f) => Pin::new(f).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().file.as_mut() {
            Some(f) => Pin::new(f).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// A complete, synced temporary file ([`StagedWriter::finish`]) waiting to be
/// renamed to its final name; dropped without [`StagedFile::persist`], it is
/// removed.
#[derive(Debug)]
pub struct StagedFile {
    dir: PathBuf,
    tmp: PathBuf,
    /// The final name.
    target: PathBuf,
    persisted: bool,
}

impl StagedFile {
    /// Where the bytes are now (to check them before they are kept).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the file to its final name, durably.
    pub async fn persist(mut self) -> Result<(), BlobError> {
        tokio::fs::rename(&self.tmp, &self.target).await?;
        self.persisted = true;
        sync_dir(&self.dir).await?;
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Whether `key` is a compiled-artifact key: a bundle's SHA-256 and an
/// engine fingerprint (32 hex digits), joined by `-`.
pub fn valid_compiled_key(key: &str) -> bool {
    let Some((hash, fingerprint)) = key.split_once('-') else {
        return false;
    };
    valid_hash(hash)
        && fingerprint.len() == 32
        && fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The key of the compiled form of bundle `bundle_hash` made by an engine
/// whose compatibility fingerprint is `fingerprint` (see
/// [`valid_compiled_key`]).
pub fn compiled_key(bundle_hash: &str, fingerprint: &str) -> String {
    format!("{bundle_hash}-{fingerprint}")
}

/// A directory of compiled components, `<key>.cwasm` (see
/// [`valid_compiled_key`]); other files in it (caches, temporary files) are
/// never reachable through a key.
#[derive(Debug, Clone)]
pub struct CompiledDir {
    dir: PathBuf,
}

/// How old a temporary file must be before a process that starts takes it
/// for one a crashed process left (a write in progress is younger).
pub const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the `*.tmp` files in `dir` whose inode last changed over
/// [`STALE_TEMPORARY`] ago: writes a crashed or killed process never renamed
/// into place. (The change time, not the modification time: a temporary
/// hard link to an old file has the old file's modification time, but
/// linking changed it.)
pub fn remove_stale_temporaries(dir: &Path) {
    if let Some(cutoff) = std::time::SystemTime::now().checked_sub(STALE_TEMPORARY) {
        remove_temporaries_changed_before(dir, cutoff);
    }
}

fn remove_temporaries_changed_before(dir: &Path, cutoff: std::time::SystemTime) {
    use std::os::unix::fs::MetadataExt;
    let Ok(cutoff) = cutoff.duration_since(std::time::UNIX_EPOCH) else {
        return;
    };
    let cut = (
        i64::try_from(cutoff.as_secs()).unwrap_or(i64::MAX),
        i64::from(cutoff.subsec_nanos()),
    );
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().ends_with(".tmp")
            && entry
                .metadata()
                .is_ok_and(|m| (m.ctime(), m.ctime_nsec()) < cut);
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl CompiledDir {
    /// Compiled components in `dir` (created if needed), without the
    /// temporary files of compiles that never finished.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        remove_stale_temporaries(dir);
        Ok(CompiledDir {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of artifact `key`.
    pub fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        if !valid_compiled_key(key) {
            return Err(BlobError::BadKey(key.to_owned()));
        }
        Ok(self.dir.join(format!("{key}.cwasm")))
    }

    /// Artifact `key` opened read-only for streaming to a peer; `None` when it
    /// is not here.
    pub async fn open_artifact(&self, key: &str) -> Result<Option<ContentFile>, BlobError> {
        open_content(&self.path(key)?).await
    }

    /// A writer for artifact `key` arriving from a peer. Its content cannot
    /// be checked against a hash: check it ([`StagedFile::path`]) before
    /// [`StagedFile::persist`].
    pub async fn writer(&self, key: &str) -> Result<StagedWriter, BlobError> {
        if !valid_compiled_key(key) {
            return Err(BlobError::BadKey(key.to_owned()));
        }
        StagedWriter::create(&self.dir, &format!("{key}.cwasm"), None, MAX_COMPILED_BYTES).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn only_temporaries_unchanged_since_the_cutoff_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("k.cwasm");
        std::fs::write(&old, b"compiled").expect("write");
        let long_ago = std::time::SystemTime::now() - 2 * STALE_TEMPORARY;
        let f = std::fs::File::options()
            .write(true)
            .open(&old)
            .expect("open");
        f.set_modified(long_ago).expect("mtime");
        // A fresh link to an old file: old modification time, new change time.
        std::fs::hard_link(&old, dir.path().join(".k.link.tmp")).expect("link");
        std::fs::write(dir.path().join("k.1234.tmp"), b"part").expect("write");
        let left = || warren_testkit::file_names(dir.path());
        CompiledDir::open(dir.path()).expect("open");
        assert_eq!(
            left(),
            [".k.link.tmp", "k.1234.tmp", "k.cwasm"],
            "all changed just now"
        );
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        remove_temporaries_changed_before(dir.path(), later);
        assert_eq!(left(), ["k.cwasm"], "only temporaries go");
    }

    #[test]
    fn bundles_round_trip_and_a_changed_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::open(dir.path()).unwrap();
        let hash = blobs.put(b"component bytes").unwrap();
        assert_eq!(hash, content_hash(b"component bytes"));
        assert_eq!(blobs.get(&hash).unwrap(), b"component bytes");
        std::fs::write(dir.path().join(&hash), b"component bytez").unwrap();
        assert!(matches!(blobs.get(&hash), Err(BlobError::Corrupt(h)) if h == hash));
        // Putting it again repairs it.
        blobs.put(b"component bytes").unwrap();
        assert_eq!(blobs.get(&hash).unwrap(), b"component bytes");
        assert!(matches!(
            blobs.get("../etc/passwd"),
            Err(BlobError::BadHash(_))
        ));
        let other = content_hash(b"other");
        assert!(matches!(blobs.get(&other), Err(BlobError::Missing(_))));
    }

    #[test]
    fn retain_removes_what_nothing_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut blobs = BlobDir::open(dir.path()).unwrap();
        let a = blobs.put(b"a").unwrap();
        assert_eq!(blobs.retain(&HashSet::new()).unwrap(), 0, "too young to go");
        blobs.grace = std::time::Duration::ZERO;
        let b = blobs.put(b"b").unwrap();
        let keep = [a.clone()].into_iter().collect();
        assert_eq!(blobs.retain(&keep).unwrap(), 1);
        assert!(blobs.get(&a).is_ok());
        assert!(matches!(blobs.get(&b), Err(BlobError::Missing(_))));
    }

    /// The names of the files in `dir`.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn streamed_bytes_are_stored_only_when_they_hash_to_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::open(dir.path()).unwrap();
        let good = b"component bytes".repeat(10_000);
        let hash = content_hash(&good);

        // Good bytes, written in pieces: stored under their hash.
        let mut w = blobs.writer(&hash).await.unwrap();
        for piece in good.chunks(4096) {
            w.write_all(piece).await.unwrap();
        }
        assert_eq!(w.written(), good.len() as u64);
        w.commit().await.unwrap();
        assert_eq!(blobs.get(&hash).unwrap(), good);
        assert_eq!(names(dir.path()), vec![hash.clone()]);

        // Wrong bytes for another hash: refused, naming both hashes, and
        // nothing is left behind.
        let wanted = content_hash(b"the real bundle");
        let mut w = blobs.writer(&wanted).await.unwrap();
        w.write_all(b"a peer's lie").await.unwrap();
        match w.commit().await {
            Err(BlobError::Mismatch { expected, actual }) => {
                assert_eq!(expected, wanted);
                assert_eq!(actual, content_hash(b"a peer's lie"));
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert!(!blobs.contains(&wanted));
        assert_eq!(names(dir.path()), vec![hash.clone()]);

        // A transfer abandoned half way leaves nothing either.
        let mut w = blobs.writer(&wanted).await.unwrap();
        w.write_all(b"the real").await.unwrap();
        drop(w);
        assert_eq!(names(dir.path()), vec![hash.clone()]);

        // Names that are not hashes never reach the file system.
        for bad in [
            "../etc/passwd",
            "",
            &hash[..63],
            &hash.to_uppercase(),
            "/tmp/x",
        ] {
            assert!(
                matches!(blobs.writer(bad).await, Err(BlobError::BadHash(_))),
                "{bad}"
            );
            assert!(
                matches!(blobs.open_bundle(bad).await, Err(BlobError::BadHash(_))),
                "{bad}"
            );
        }

        // Serving: the stored bundle opens read-only with its length; a
        // missing one is None.
        let opened = blobs.open_bundle(&hash).await.unwrap().unwrap();
        assert_eq!(opened.len, good.len() as u64);
        assert!(blobs.open_bundle(&wanted).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_stream_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::open(dir.path()).unwrap();
        let hash = content_hash(b"x");
        let mut w = StagedWriter::create(dir.path(), &hash, Some(hash.clone()), 8)
            .await
            .unwrap();
        w.write_all(b"12345678").await.unwrap();
        let e = w.write_all(b"9").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        drop(w);
        assert!(names(dir.path()).is_empty());
        assert!(!blobs.contains(&hash));
    }

    #[tokio::test]
    async fn compiled_artifacts_are_reached_only_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let compiled = CompiledDir::open(dir.path()).unwrap();
        let key = compiled_key(&content_hash(b"bundle"), &"0f".repeat(16));
        assert!(valid_compiled_key(&key));
        let mut w = compiled.writer(&key).await.unwrap();
        w.write_all(b"native code").await.unwrap();
        let staged = w.finish().await.unwrap();
        assert_eq!(std::fs::read(staged.path()).unwrap(), b"native code");
        staged.persist().await.unwrap();
        assert_eq!(names(dir.path()), vec![format!("{key}.cwasm")]);
        let opened = compiled.open_artifact(&key).await.unwrap().unwrap();
        assert_eq!(opened.len, 11);

        // Checked and refused before persisting: nothing stays.
        let other = compiled_key(&content_hash(b"other"), &"0f".repeat(16));
        let mut w = compiled.writer(&other).await.unwrap();
        w.write_all(b"garbage").await.unwrap();
        drop(w.finish().await.unwrap());
        assert_eq!(names(dir.path()), vec![format!("{key}.cwasm")]);
        assert!(compiled.open_artifact(&other).await.unwrap().is_none());

        std::fs::create_dir(dir.path().join("functions")).unwrap();
        for bad in [
            "functions",
            "../compiled",
            &content_hash(b"bundle"),
            &format!("{key}.cwasm"),
            &format!("{key}/x"),
            &compiled_key(&content_hash(b"bundle"), "0f"),
            &compiled_key("..", &"0f".repeat(16)),
        ] {
            assert!(
                matches!(compiled.open_artifact(bad).await, Err(BlobError::BadKey(_))),
                "{bad}"
            );
            assert!(
                matches!(compiled.writer(bad).await, Err(BlobError::BadKey(_))),
                "{bad}"
            );
        }
    }
}
