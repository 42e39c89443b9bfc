//! The tunnel edge's QUIC stateless-reset key, kept in the data directory so a
//! restarted node recognises its predecessor's connections.
//!
//! A QUIC endpoint that receives a packet for a connection it does not know
//! answers with a *stateless reset*: a packet carrying a token derived from
//! the connection id with the endpoint's reset key, which the peer learnt when
//! the connection was made. With the key persisted, a node killed and started
//! again on the same address answers the connectors' next packet (a
//! keep-alive at the latest) with a reset they accept, so they reconnect at
//! once instead of waiting for their idle timeout. The connection ids the
//! edge issues are keyed from the same file, so the restarted node can tell
//! its predecessor's ids from stray packets (it resets only those).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The reset key's file in the data directory.
pub const KEY_FILE: &str = "quic-reset.key";

/// Length of the key file, in bytes.
pub const KEY_LEN: usize = 32;

/// The persisted key material, from which the reset key and the connection-id
/// key are derived (each with its own label).
pub struct ResetKey([u8; KEY_LEN]);

impl ResetKey {
    /// Loads the key from `dir`, creating it (32 random bytes, mode 0600) when
    /// the file is missing. A file that cannot be read or is not 32 bytes is
    /// an error naming the file, and is left as it is.
    pub fn load_or_create(dir: &Path) -> std::io::Result<ResetKey> {
        let path = dir.join(KEY_FILE);
        match fs::read(&path) {
            Ok(b) => match <[u8; KEY_LEN]>::try_from(b.as_slice()) {
                Ok(key) => Ok(ResetKey(key)),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "QUIC reset key {} is not a {KEY_LEN}-byte key ({} bytes): delete it \
                         (a new one is made at start) or restore it from a backup",
                        path.display(),
                        b.len()
                    ),
                )),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| std::io::Error::other("no randomness for the QUIC reset key"))?;
                fs::create_dir_all(dir)?;
                let mut opts = fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                opts.open(&path)
                    .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()))
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("cannot write the QUIC reset key {}: {e}", path.display()),
                        )
                    })?;
                Ok(ResetKey(key))
            }
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("cannot read the QUIC reset key {}: {e}", path.display()),
            )),
        }
    }

    fn derive(&self, label: &[u8]) -> hmac::Tag {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.0), label)
    }

    /// The HMAC key quinn signs stateless-reset tokens with.
    fn reset_hmac(&self) -> hmac::Key {
        hmac::Key::new(
            hmac::HMAC_SHA256,
            self.derive(b"warren quic stateless reset").as_ref(),
        )
    }

    /// The key of the connection ids the endpoint issues.
    fn cid_key(&self) -> u64 {
        let tag = self.derive(b"warren quic connection ids");
        let mut k = [0u8; 8];
        k.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_le_bytes(k)
    }

    /// An endpoint configuration whose stateless resets and connection ids
    /// come from this key (the rest as quinn's defaults).
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::new(Arc::new(self.reset_hmac()));
        let cid_key = self.cid_key();
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use quinn::crypto::HmacKey;

    use super::*;

    #[test]
    fn a_missing_key_is_created_0600_and_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ResetKey::load_or_create(dir.path()).expect("created");
        let path = dir.path().join(KEY_FILE);
        let meta = fs::metadata(&path).expect("key file");
        assert_eq!(meta.len(), KEY_LEN as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let on_disk = fs::read(&path).expect("read");
        assert_eq!(on_disk, first.0);

        let again = ResetKey::load_or_create(dir.path()).expect("reused");
        assert_eq!(again.0, first.0, "the file's key is reused, not replaced");
        assert_eq!(fs::read(&path).expect("read"), on_disk);

        // The same file gives the same reset tokens and connection-id key; another
        // directory's key gives others.
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        first.reset_hmac().sign(b"some connection id", &mut a);
        again.reset_hmac().sign(b"some connection id", &mut b);
        assert_eq!(a, b);
        assert_eq!(first.cid_key(), again.cid_key());
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = ResetKey::load_or_create(other_dir.path()).expect("created");
        other.reset_hmac().sign(b"some connection id", &mut b);
        assert_ne!(a, b);
        assert_ne!(first.cid_key(), other.cid_key());
    }

    #[test]
    fn a_key_file_of_the_wrong_size_is_refused_naming_it_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(KEY_FILE);
        for bad in [&b""[..], &[7u8; 31][..], &[7u8; 33][..]] {
            fs::write(&path, bad).expect("write");
            let err = ResetKey::load_or_create(dir.path())
                .err()
                .expect("a wrong-sized key is refused");
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("({} bytes)", bad.len())), "{msg}");
            assert_eq!(fs::read(&path).expect("read"), bad, "left as it was");
        }
    }

    #[test]
    fn an_unreadable_key_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(KEY_FILE);
        // A directory in the key's place cannot be read as a file, even by root.
        fs::create_dir(&path).expect("dir");
        let err = ResetKey::load_or_create(dir.path())
            .err()
            .expect("an unreadable key is refused");
        let msg = err.to_string();
        assert!(msg.starts_with("cannot read the QUIC reset key"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(path.is_dir(), "left as it was");
    }
}
