//! The edge's certificate authority: generated on first start, kept in the data
//! directory, pinned by fingerprint in every tunnel token.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// Why the CA could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Reading or writing the CA files failed.
    #[error("CA file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The files exist but do not hold a usable CA.
    #[error("CA in {dir} is unusable: {reason}")]
    Invalid {
        /// The data directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One of the two CA files is there without the other: the node stops
    /// rather than make a new CA (which would cut off every connector whose
    /// token pins the old one).
    #[error(
        "edge CA file {missing} is missing while {present} exists: restore it from a backup \
         (a new CA would cut off every connector whose token pins this one)"
    )]
    HalfMissing {
        /// The file that is not there.
        missing: PathBuf,
        /// The file that is.
        present: PathBuf,
    },
    /// Generating a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The edge CA: its certificate, its signing key and the fingerprint tokens carry.
pub struct EdgeCa {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// The CA certificate's file in the data directory.
pub const CERT_FILE: &str = "edge-ca.crt";
/// The CA key's file in the data directory.
pub const KEY_FILE: &str = "edge-ca.key";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

impl EdgeCa {
    /// Loads the CA from `dir`, creating it (key file mode 0600) when neither
    /// file exists. One file without the other, or a file that is empty or not
    /// a CA, is an error naming the file; the files are then left as they are.
    pub fn load_or_create(dir: &Path) -> Result<EdgeCa, CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let exists = |p: &Path| p.try_exists().map_err(io_err(p));
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => {}
            (false, false) => return Self::create(dir, &cert_path, &key_path),
            (true, false) => {
                return Err(CaError::HalfMissing {
                    missing: key_path,
                    present: cert_path,
                });
            }
            (false, true) => {
                return Err(CaError::HalfMissing {
                    missing: cert_path,
                    present: key_path,
                });
            }
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let invalid = |path: &Path, reason: String| CaError::Invalid {
            dir: dir.to_owned(),
            reason: format!("{}: {reason}", path.display()),
        };
        for (path, text) in [(&cert_path, &cert_pem), (&key_path, &key_pem)] {
            if text.trim().is_empty() {
                return Err(invalid(path, "the file is empty".into()));
            }
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| invalid(&cert_path, e.to_string()))?;
        let der = pem_to_der(&cert_pem)
            .ok_or_else(|| invalid(&cert_path, "the certificate is not PEM".into()))?;
        Ok(EdgeCa { der, issuer })
    }

    /// A new CA written to `cert_path` and `key_path` (first start).
    fn create(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<EdgeCa, CaError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Warren edge CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write_private(key_path, key.serialize_pem().as_bytes())?;
        fs::write(cert_path, cert.pem()).map_err(io_err(cert_path))?;
        Ok(EdgeCa {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// SHA-256 of the CA certificate, lowercase hex: what tokens carry.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.der.as_ref()))
    }

    /// Issues a fresh edge certificate for [`warren_protocol::EDGE_SERVER_NAME`]
    /// plus `extra_names`; returns the chain (leaf, CA) and the leaf key.
    pub fn issue_edge_cert(
        &self,
        extra_names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let mut names = vec![warren_protocol::EDGE_SERVER_NAME.to_owned()];
        names.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Warren edge");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.der.clone()], key_der))
    }
}

fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_survives_a_restart_and_keeps_its_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = EdgeCa::load_or_create(dir.path()).expect("create");
        let second = EdgeCa::load_or_create(dir.path()).expect("load");
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(first.fingerprint().len(), 64);
        let (chain, _) = second.issue_edge_cert(&[]).expect("issue");
        assert_eq!(chain.len(), 2);
        assert_eq!(&chain[1], first.cert_der());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_corrupt_ca_is_reported_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(CERT_FILE), "junk").expect("write");
        fs::write(dir.path().join(KEY_FILE), "junk").expect("write");
        assert!(matches!(
            EdgeCa::load_or_create(dir.path()),
            Err(CaError::Invalid { .. })
        ));
        assert_eq!(
            fs::read_to_string(dir.path().join(CERT_FILE)).expect("read"),
            "junk"
        );
    }

    #[test]
    fn half_a_ca_or_an_empty_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        EdgeCa::load_or_create(dir.path()).expect("create");
        let (cert, key) = (dir.path().join(CERT_FILE), dir.path().join(KEY_FILE));
        let key_pem = fs::read(&key).expect("read");
        fs::remove_file(&key).expect("remove");
        let err = EdgeCa::load_or_create(dir.path()).err().expect("refused");
        assert!(
            err.to_string().contains(&key.display().to_string()),
            "{err}"
        );
        assert!(!key.exists(), "no new key may be written");
        fs::write(&key, &key_pem).expect("restore");
        let cert_pem = fs::read(&cert).expect("read");
        fs::remove_file(&cert).expect("remove");
        let err = EdgeCa::load_or_create(dir.path()).err().expect("refused");
        assert!(
            err.to_string().contains(&cert.display().to_string()),
            "{err}"
        );
        fs::write(&cert, "").expect("truncate");
        let err = EdgeCa::load_or_create(dir.path()).err().expect("refused");
        assert!(
            err.to_string()
                .contains(&format!("{}: the file is empty", cert.display())),
            "{err}"
        );
        fs::write(&cert, &cert_pem).expect("restore");
        EdgeCa::load_or_create(dir.path()).expect("loads again");
    }
}
