//! The preamble that opens every tunnel stream: magic, protocol version, stream kind.

use crate::DecodeError;

/// The four magic bytes at the start of every tunnel stream.
pub const MAGIC: [u8; 4] = *b"WRNT";
/// The tunnel protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes of an encoded preamble.
pub const PREAMBLE_LEN: usize = 6;

/// What a stream carries after its preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Edge → connector bidirectional stream: `ConnectRequest`, `ConnectResponse`, raw bytes.
    Connect,
    /// Connector → edge unidirectional stream: one `DnsAnswer` too large for a datagram.
    DnsAnswer,
    /// Node → node bidirectional stream: `PeerRequest`, `PeerResponse`, then raw bytes.
    Peer,
}

impl StreamKind {
    fn to_byte(self) -> u8 {
        match self {
            StreamKind::Connect => 1,
            StreamKind::DnsAnswer => 2,
            StreamKind::Peer => 3,
        }
    }
}

/// Encodes the preamble for a stream of `kind`.
pub fn encode(kind: StreamKind) -> [u8; PREAMBLE_LEN] {
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        VERSION,
        kind.to_byte(),
    ]
}

/// Decodes a preamble, refusing wrong magic, versions and kinds.
pub fn decode(bytes: [u8; PREAMBLE_LEN]) -> Result<StreamKind, DecodeError> {
    if bytes[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[4] != VERSION {
        return Err(DecodeError::UnsupportedVersion(bytes[4]));
    }
    match bytes[5] {
        1 => Ok(StreamKind::Connect),
        2 => Ok(StreamKind::DnsAnswer),
        3 => Ok(StreamKind::Peer),
        k => Err(DecodeError::UnknownKind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        for kind in [StreamKind::Connect, StreamKind::DnsAnswer, StreamKind::Peer] {
            assert_eq!(decode(encode(kind)), Ok(kind));
        }
        assert_eq!(decode(*b"GET / "), Err(DecodeError::BadMagic));
        assert_eq!(
            decode(*b"WRNT\x09\x01"),
            Err(DecodeError::UnsupportedVersion(9))
        );
        assert_eq!(decode(*b"WRNT\x01\x07"), Err(DecodeError::UnknownKind(7)));
    }
}
