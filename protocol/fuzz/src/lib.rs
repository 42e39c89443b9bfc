//! Shared checks for the protocol fuzz targets.

use warren_protocol::messages::WireMessage;

/// Decoding arbitrary bytes must not panic; whatever decodes must re-encode to
/// bytes that decode to the same value (decode → encode → decode).
pub fn round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(first) = T::from_bytes(data) {
        let again = T::from_bytes(&first.to_bytes());
        assert_eq!(again.as_ref(), Ok(&first), "re-encoding changed the message");
    }
}
