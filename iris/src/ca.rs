//! The cluster's certificate authority: kept in the store (one for every node
//! sharing it), pinned by fingerprint in every tunnel token, and the issuer of
//! each node's certificates (the tunnel edge's, and the node identity of
//! [`crate::identity`]). Nodes from before the store held it kept it in the
//! data directory (`edge-ca.crt`, `edge-ca.key`); [`EdgeCa::load`] reads
//! those files so the store can adopt them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use warren_store::CaRecord;

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
    /// The CA the store holds is not a usable CA.
    #[error("the cluster CA in the store is unusable: {0}")]
    InvalidRecord(String),
}

/// The edge CA: its certificate, its signing key and the fingerprint tokens carry.
pub struct EdgeCa {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
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
        if let Some(ca) = Self::load(dir)? {
            return Ok(ca);
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let ca = Self::generate()?;
        write_private(&dir.join(KEY_FILE), ca.key_pem.as_bytes())?;
        let cert_path = dir.join(CERT_FILE);
        fs::write(&cert_path, &ca.cert_pem).map_err(io_err(&cert_path))?;
        Ok(ca)
    }

    /// The CA kept in `dir` ([`CERT_FILE`], [`KEY_FILE`]), `None` when
    /// neither file exists. One file without the other, or a file that is
    /// empty or not a CA, is an error naming the file.
    pub fn load(dir: &Path) -> Result<Option<EdgeCa>, CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let exists = |p: &Path| p.try_exists().map_err(io_err(p));
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => {}
            (false, false) => return Ok(None),
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
        Self::parse(cert_pem, key_pem)
            .map(Some)
            .map_err(|(key, reason)| invalid(if key { &key_path } else { &cert_path }, reason))
    }

    /// A new CA (nothing is written anywhere).
    pub fn generate() -> Result<EdgeCa, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own, so two clusters' CAs are told apart (in logs
        // and by certificate path building).
        let mut tag = [0u8; 4];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut tag);
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Warren cluster CA {}", hex::encode(tag)),
        );
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(EdgeCa {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA a store record holds.
    pub fn from_record(record: &CaRecord) -> Result<EdgeCa, CaError> {
        Self::parse(record.cert_pem.clone(), record.key_pem.clone()).map_err(|(key, reason)| {
            CaError::InvalidRecord(format!(
                "{}: {reason}",
                if key { "the key" } else { "the certificate" }
            ))
        })
    }

    /// The record the store keeps of this CA.
    pub fn to_record(&self) -> CaRecord {
        CaRecord {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    /// A CA from its PEM halves; the error says whether the key (`true`) or
    /// the certificate is at fault, and why.
    fn parse(cert_pem: String, key_pem: String) -> Result<EdgeCa, (bool, String)> {
        let key = KeyPair::from_pem(&key_pem).map_err(|e| (true, e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| (false, e.to_string()))?;
        let der =
            pem_to_der(&cert_pem).ok_or_else(|| (false, "the certificate is not PEM".into()))?;
        Ok(EdgeCa {
            der,
            cert_pem,
            key_pem,
            issuer,
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
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
        self.issue(params)
    }

    /// Issues a TLS server certificate for the API, valid for `names` (DNS
    /// names, or IP addresses as text); the chain (leaf, CA) and the leaf key.
    pub fn issue_api_cert(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Warren API");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// Signs `params` with a fresh key pair; the chain (leaf, CA) and the key.
    pub(crate) fn issue(
        &self,
        params: CertificateParams,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
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
    fn a_stored_ca_round_trips_and_a_broken_one_is_refused() {
        let ca = EdgeCa::generate().expect("generate");
        let record = ca.to_record();
        let back = EdgeCa::from_record(&record).expect("from the store");
        assert_eq!(back.fingerprint(), ca.fingerprint());
        assert_eq!(back.cert_pem(), ca.cert_pem());
        let broken = CaRecord {
            key_pem: "junk".into(),
            ..record.clone()
        };
        let err = EdgeCa::from_record(&broken).err().expect("refused");
        assert!(
            err.to_string()
                .starts_with("the cluster CA in the store is unusable: the key"),
            "{err}"
        );
        let broken = CaRecord {
            cert_pem: "junk".into(),
            ..record
        };
        let err = EdgeCa::from_record(&broken).err().expect("refused");
        assert!(err.to_string().contains("the certificate"), "{err}");
        // Nothing is written by generating: the data directory stays empty.
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(EdgeCa::load(dir.path()).expect("load").is_none());
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
