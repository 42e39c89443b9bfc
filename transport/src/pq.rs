//! Post-quantum key agreement for the tunnel's TLS: the hybrid group
//! X25519MLKEM768 (TLS code point 0x11EC, as cloudflared and the major
//! browsers offer it), made of ML-KEM-768 (the RustCrypto `ml-kem` crate,
//! FIPS 203) and X25519 (ring, through rustls' own group), and a crypto
//! provider that offers it first.
//!
//! The shares and secret are laid out as the IETF hybrid design for this
//! group specifies, ML-KEM first: the client sends its ML-KEM encapsulation
//! key (1184 bytes) then its X25519 share (32); the server answers the
//! ciphertext (1088) then its X25519 share (32); both derive the ML-KEM shared
//! secret (32) followed by the X25519 one (32). A peer that offers only
//! classical groups still gets X25519.

use std::sync::Arc;

use ml_kem::kem::{Decapsulate, Encapsulate, Kem, KeyExport, TryKeyInit};
use ml_kem::{MlKem768, ml_kem_768};
use rustls::crypto::{
    ActiveKeyExchange, CompletedKeyExchange, CryptoProvider, SharedSecret, SupportedKxGroup,
};
use rustls::{Error, NamedGroup, PeerMisbehaved, ProtocolVersion};

const EK_LEN: usize = 1184;
const CT_LEN: usize = 1088;
const X25519_LEN: usize = 32;

/// The X25519MLKEM768 group.
#[derive(Debug)]
pub struct X25519MlKem768;

/// [`X25519MlKem768`] as rustls takes it.
pub static X25519MLKEM768: &dyn SupportedKxGroup = &X25519MlKem768;

fn x25519() -> &'static dyn SupportedKxGroup {
    rustls::crypto::ring::kx_group::X25519
}

fn invalid_share() -> Error {
    Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare)
}

impl SupportedKxGroup for X25519MlKem768 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let classical = x25519().start()?;
        let (dk, ek) = MlKem768::generate_keypair();
        let mut pub_key = Vec::with_capacity(EK_LEN + X25519_LEN);
        pub_key.extend_from_slice(&ek.to_bytes());
        pub_key.extend_from_slice(classical.pub_key());
        Ok(Box::new(Active {
            dk,
            classical,
            pub_key,
        }))
    }

    /// The server side: encapsulate to the client's key and complete X25519.
    fn start_and_complete(&self, client_share: &[u8]) -> Result<CompletedKeyExchange, Error> {
        if client_share.len() != EK_LEN + X25519_LEN {
            return Err(invalid_share());
        }
        let (ek_bytes, x_share) = client_share.split_at(EK_LEN);
        let key = ml_kem::kem::Key::<ml_kem_768::EncapsulationKey>::try_from(ek_bytes)
            .map_err(|_| invalid_share())?;
        let ek =
            <ml_kem_768::EncapsulationKey as TryKeyInit>::new(&key).map_err(|_| invalid_share())?;
        let (ct, kem_secret) = ek.encapsulate();
        let classical = x25519().start_and_complete(x_share)?;
        let mut pub_key = Vec::with_capacity(CT_LEN + X25519_LEN);
        pub_key.extend_from_slice(&ct);
        pub_key.extend_from_slice(&classical.pub_key);
        let mut secret = Vec::with_capacity(64);
        secret.extend_from_slice(&kem_secret);
        secret.extend_from_slice(classical.secret.secret_bytes());
        Ok(CompletedKeyExchange {
            group: NamedGroup::X25519MLKEM768,
            pub_key,
            secret: SharedSecret::from(secret),
        })
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_3
    }
}

/// A client's key exchange in progress.
struct Active {
    dk: ml_kem_768::DecapsulationKey,
    classical: Box<dyn ActiveKeyExchange>,
    pub_key: Vec<u8>,
}

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, server_share: &[u8]) -> Result<SharedSecret, Error> {
        if server_share.len() != CT_LEN + X25519_LEN {
            return Err(invalid_share());
        }
        let (ct_bytes, x_share) = server_share.split_at(CT_LEN);
        let ct =
            ml_kem::kem::Ciphertext::<MlKem768>::try_from(ct_bytes).map_err(|_| invalid_share())?;
        let kem_secret = self.dk.decapsulate(&ct);
        let classical = self.classical.complete(x_share)?;
        let mut secret = Vec::with_capacity(64);
        secret.extend_from_slice(&kem_secret);
        secret.extend_from_slice(classical.secret_bytes());
        Ok(SharedSecret::from(secret))
    }

    fn pub_key(&self) -> &[u8] {
        &self.pub_key
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }
}

/// rustls' ring provider with [`X25519MLKEM768`] preferred over its own
/// groups (X25519, P-256, P-384): what the tunnel's TLS uses on both sides
/// and both transports.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups.insert(0, X25519MLKEM768);
    Arc::new(provider)
}
