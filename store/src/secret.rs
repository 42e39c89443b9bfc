//! Tunnel secrets are stored as SHA-256 hashes and compared in constant time.
//!
//! Secrets are at least 32 random bytes, so a fast hash is enough: there is nothing
//! to brute-force that a slow hash would protect.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The hash stored in place of a secret.
pub fn hash_secret(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Whether `secret` hashes to `stored`, in time independent of where they differ.
pub fn secret_matches(stored: &[u8; 32], secret: &[u8]) -> bool {
    hash_secret(secret).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_same_secret() {
        let h = hash_secret(b"correct horse battery staple, 32+ bytes");
        assert!(secret_matches(
            &h,
            b"correct horse battery staple, 32+ bytes"
        ));
        assert!(!secret_matches(
            &h,
            b"correct horse battery staple, 32+ byteS"
        ));
        assert!(!secret_matches(&h, b""));
    }
}
