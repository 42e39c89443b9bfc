//! Secrets the store keeps but must not reveal — tunnel secrets (so their
//! tokens can be shown again) and worker secrets (`secret_text` bindings) —
//! sealed with a key that lives in the edge's data directory (AES-256-GCM),
//! never in the store. The store alone (a copied database, a backup, etcd)
//! does not reveal them.

use std::fs;
use std::io::Write;
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The sealing key's file in the data directory.
pub const KEY_FILE: &str = "sealing.key";

/// Seals and opens secrets with the node's sealing key.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    /// Loads the key from `dir`, creating it (mode 0600) on first use. A key
    /// file that cannot be read or is not 32 bytes (empty included) is an error
    /// naming the file, and is left as it is.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Sealer> {
        let path = dir.join(KEY_FILE);
        let rng = SystemRandom::new();
        let bytes = match fs::read(&path) {
            Ok(b) if b.len() == 32 => b,
            Ok(b) => {
                return Err(std::io::Error::other(format!(
                    "sealing key {} is not a 32-byte key ({} bytes): restore it from a backup",
                    path.display(),
                    b.len()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                rng.fill(&mut b)
                    .map_err(|_| std::io::Error::other("no randomness"))?;
                fs::create_dir_all(dir)?;
                let mut opts = fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                opts.open(&path)?.write_all(&b)?;
                b
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot read the sealing key {}: {e}", path.display()),
                ));
            }
        };
        let key =
            UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| std::io::Error::other("bad key"))?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            rng,
        })
    }

    /// Seals `secret`, bound to `context` (the tunnel id; for a worker secret,
    /// [`worker_secret_context`]): nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, context: &str, secret: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut buf = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Some(out)
    }

    /// Opens what [`Sealer::seal`] produced for the same `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, rest) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// The sealing context of worker secret `secret` of the worker with `tag` in
/// `account_id`: a sealed value opens only for that worker and name, so it
/// cannot be moved to another worker, account or name in the store.
pub fn worker_secret_context(account_id: &str, tag: &str, secret: &str) -> String {
    format!("worker-secret/{account_id}/{tag}/{secret}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_for_the_same_key_and_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Sealer::load_or_create(dir.path()).expect("key");
        let sealed = s
            .seal("tunnel-a", b"a secret of thirty-two bytes....")
            .expect("seal");
        let again = Sealer::load_or_create(dir.path()).expect("reload");
        assert_eq!(
            again.open("tunnel-a", &sealed).as_deref(),
            Some(&b"a secret of thirty-two bytes...."[..])
        );
        assert_eq!(again.open("tunnel-b", &sealed), None);
        let other = tempfile::tempdir().expect("tempdir");
        let stranger = Sealer::load_or_create(other.path()).expect("key");
        assert_eq!(stranger.open("tunnel-a", &sealed), None);
    }

    #[test]
    fn an_unreadable_or_empty_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(KEY_FILE);
        fs::create_dir(&path).expect("a directory where the key should be");
        let err = Sealer::load_or_create(dir.path()).err().expect("refused");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        fs::remove_dir(&path).expect("rmdir");
        fs::write(&path, "").expect("empty key");
        let err = Sealer::load_or_create(dir.path()).err().expect("refused");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read(&path).expect("read").len(), 0, "left as it was");
    }
}
