//! Worker bundles by content: `<dir>/<sha256 hex>`, written atomically (a
//! temporary file, fsync, rename, fsync of the directory) and checked against
//! their name on every read, so a torn or altered file is never loaded.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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
    /// Reading or writing failed.
    #[error("bundle store: {0}")]
    Io(#[from] std::io::Error),
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

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
}
