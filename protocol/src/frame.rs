//! Length-prefixed frames: a big-endian `u32` length, then one Cap'n Proto message.
//!
//! Every decoder checks the length against the message type's limit before it reads
//! the body, and reads Cap'n Proto with traversal and nesting limits, so a peer
//! cannot make us allocate or recurse without bound.

use capnp::message::{Reader, ReaderOptions};
use capnp::serialize::OwnedSegments;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Why bytes from a peer could not be decoded. The stream or datagram they came on
/// is dropped; nothing else is affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A frame announced more bytes than this message type may have.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit for this message type.
        limit: usize,
    },
    /// The input ended before the frame did.
    #[error("truncated input")]
    Truncated,
    /// The body is not a valid Cap'n Proto message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A field holds a value outside its allowed range.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// Field name as in the schema.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A stream did not start with the Warren magic.
    #[error("bad stream magic")]
    BadMagic,
    /// A stream announced a protocol version we do not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A stream announced a kind we do not know.
    #[error("unknown stream kind {0}")]
    UnknownKind(u8),
}

impl From<capnp::Error> for DecodeError {
    fn from(e: capnp::Error) -> Self {
        DecodeError::Malformed(e.to_string())
    }
}

impl From<capnp::NotInSchema> for DecodeError {
    fn from(e: capnp::NotInSchema) -> Self {
        DecodeError::Malformed(e.to_string())
    }
}

impl From<std::str::Utf8Error> for DecodeError {
    fn from(_: std::str::Utf8Error) -> Self {
        DecodeError::Malformed("text field is not UTF-8".into())
    }
}

/// Reads the length prefix and checks it against `limit`.
pub fn body_len(prefix: [u8; LEN_PREFIX], limit: usize) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit {
        return Err(DecodeError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Prepends the length prefix to an encoded body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN_PREFIX + body.len());
    // Bodies are produced by our own encoders and stay far below u32::MAX.
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits one frame off the front of `buf`: `Ok(Some((body, consumed)))`, or
/// `Ok(None)` when more bytes are needed.
pub fn split_frame(buf: &[u8], limit: usize) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let mut p = [0u8; LEN_PREFIX];
    p.copy_from_slice(prefix);
    let len = body_len(p, limit)?;
    match buf.get(LEN_PREFIX..LEN_PREFIX + len) {
        Some(body) => Ok(Some((body, LEN_PREFIX + len))),
        None => Ok(None),
    }
}

/// Parses a Cap'n Proto message body with limits proportional to its size.
pub(crate) fn read_capnp(body: &[u8]) -> Result<Reader<OwnedSegments>, DecodeError> {
    let mut opts = ReaderOptions::new();
    // A message may traverse each of its words a few times, and nest only shallowly.
    opts.traversal_limit_in_words(Some(body.len() / 8 * 4 + 64));
    opts.nesting_limit(8);
    let mut slice = body;
    let reader = capnp::serialize::read_message(&mut slice, opts)?;
    if !slice.is_empty() {
        return Err(DecodeError::Malformed(
            "trailing bytes after message".into(),
        ));
    }
    Ok(reader)
}

/// Encodes a Cap'n Proto message to bytes.
pub(crate) fn write_capnp<A: capnp::message::Allocator>(
    msg: &capnp::message::Builder<A>,
) -> Vec<u8> {
    capnp::serialize::write_message_to_words(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_waits_for_whole_frame() {
        let f = frame(b"abcdef");
        assert_eq!(split_frame(&f[..3], 100), Ok(None));
        assert_eq!(split_frame(&f[..7], 100), Ok(None));
        assert_eq!(split_frame(&f, 100), Ok(Some((&b"abcdef"[..], 10))));
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        let prefix = (1u32 << 30).to_be_bytes();
        assert_eq!(
            body_len(prefix, 4096),
            Err(DecodeError::TooLarge {
                len: 1 << 30,
                limit: 4096
            })
        );
    }

    #[test]
    fn garbage_body_is_malformed() {
        assert!(matches!(
            read_capnp(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            Err(DecodeError::Malformed(_))
        ));
    }
}
