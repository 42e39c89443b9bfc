//! Content other nodes of the cluster hold: worker bundles (by SHA-256) and
//! compiled components (by [`crate::blobs::compiled_key`]).
//!
//! [`PeerContent`] is the fetching side, independent of the transport: the
//! node-to-node link implements it, and the runtime calls it for a bundle or
//! compiled component it does not have. [`LocalContent`] is the serving side:
//! this node's bundles and compiled components, opened read-only by a
//! validated hash or key, never by a path.
//!
//! Trust: a bundle from a peer is checked against its SHA-256 before it is
//! stored ([`crate::blobs::BlobDir::writer`]), so a peer cannot change what a
//! worker runs. A compiled component is native code that cannot be checked
//! that way: it is accepted only from peers, which are authenticated nodes of
//! the cluster trusted like the store itself, never from a client, and
//! wasmtime still refuses one made by an incompatible engine.

use async_trait::async_trait;
use tokio::io::AsyncWrite;

use crate::blobs::{BlobDir, BlobError, CompiledDir, ContentFile};

/// Why fetching from peers failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No peer could be asked, or the link broke (a transfer may have
    /// written part of the content: the caller discards it).
    #[error("peer link: {0}")]
    Link(String),
    /// A peer answered with an error.
    #[error("peer refused: {0}")]
    Refused(String),
    /// Writing what arrived failed here (disk, or more bytes than allowed).
    #[error("storing what a peer sent: {0}")]
    Write(#[from] std::io::Error),
}

/// Fetches content from the cluster's other nodes.
///
/// `Ok(true)` means one peer's complete copy was written to `dest`;
/// `Ok(false)` that no peer has it. An implementation that tries several peers
/// must not write a second peer's bytes after a first one's partial stream:
/// it returns an error instead and the caller, which discards partial
/// writes, asks again. Implementations bound their own waits.
#[async_trait]
pub trait PeerContent: Send + Sync {
    /// Streams the bundle with this SHA-256 (lowercase hex) from some peer
    /// into `dest`; `Ok(false)` when no peer has it.
    async fn fetch_bundle(
        &self,
        sha256: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<bool, PeerError>;

    /// Streams the compiled component under `key` (`<bundle sha256>-<engine
    /// fingerprint>`) from some peer into `dest`; `Ok(false)` when no peer
    /// has it.
    async fn fetch_compiled(
        &self,
        key: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<bool, PeerError>;
}

/// What this node serves to its peers: its bundle directory and its
/// compiled-code directory, read-only.
#[derive(Debug, Clone)]
pub struct LocalContent {
    blobs: BlobDir,
    compiled: CompiledDir,
}

impl LocalContent {
    /// Serves `blobs` (`<data_dir>/bundles`) and `compiled`
    /// (`<data_dir>/compiled`).
    pub fn new(blobs: BlobDir, compiled: CompiledDir) -> Self {
        LocalContent { blobs, compiled }
    }

    /// Bundle `sha256` opened for streaming; `None` when it is not here,
    /// [`BlobError::BadHash`] for a name that is not a SHA-256 in hex.
    pub async fn open_bundle(&self, sha256: &str) -> Result<Option<ContentFile>, BlobError> {
        self.blobs.open_bundle(sha256).await
    }

    /// Compiled component `key` opened for streaming; `None` when it is not
    /// here, [`BlobError::BadKey`] for a malformed key.
    pub async fn open_compiled(&self, key: &str) -> Result<Option<ContentFile>, BlobError> {
        self.compiled.open_artifact(key).await
    }
}

/// Copies an opened file into `dest`; `false` when there was none.
async fn send(
    opened: Result<Option<ContentFile>, BlobError>,
    dest: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<bool, PeerError> {
    use tokio::io::AsyncWriteExt;
    let Some(mut content) = opened.map_err(|e| PeerError::Refused(e.to_string()))? else {
        return Ok(false);
    };
    tokio::io::copy(&mut content.file, dest).await?;
    dest.flush().await?;
    Ok(true)
}

/// Another node's directories on this machine as a peer (processes sharing a
/// host, and tests standing in for the network link).
#[async_trait]
impl PeerContent for LocalContent {
    async fn fetch_bundle(
        &self,
        sha256: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<bool, PeerError> {
        send(self.open_bundle(sha256).await, dest).await
    }

    async fn fetch_compiled(
        &self,
        key: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<bool, PeerError> {
        send(self.open_compiled(key).await, dest).await
    }
}
