//! Reading frames from a tokio stream (feature `tokio`). Decoding stays in the codecs.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::frame::{self, DecodeError, LEN_PREFIX};
use crate::messages::WireMessage;
use crate::preamble::{self, PREAMBLE_LEN, StreamKind};

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed or ended early.
    #[error("stream read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes were not a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Reads one length-prefixed message, refusing oversized frames before reading them.
pub async fn read_message<T: WireMessage, R: AsyncRead + Unpin>(r: &mut R) -> Result<T, ReadError> {
    let mut prefix = [0u8; LEN_PREFIX];
    r.read_exact(&mut prefix).await?;
    let len = frame::body_len(prefix, T::LIMIT)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(T::from_bytes(&body)?)
}

/// Reads and checks a stream preamble.
pub async fn read_preamble<R: AsyncRead + Unpin>(r: &mut R) -> Result<StreamKind, ReadError> {
    let mut p = [0u8; PREAMBLE_LEN];
    r.read_exact(&mut p).await?;
    Ok(preamble::decode(p)?)
}
