//! W3C Trace Context on the way to the origin: every binding call carries a
//! `traceparent`. A valid one from the worker's request continues its trace
//! with a new parent id (this hop); otherwise a new trace starts whose trace
//! id is the request id (32 hex digits), so an origin's log line names the
//! same id as `warren tail` and the connector's log.

use http::{HeaderMap, HeaderValue};

/// The header's name.
pub const TRACEPARENT: &str = "traceparent";

/// The fields of a version-00 `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero.
    pub parent_id: String,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

fn hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|b| b != b'0')
}

impl TraceParent {
    /// Parses a `traceparent` value as the W3C recommendation says: a known
    /// version-00 shape, or a later version's first four fields; `None` for
    /// anything invalid (which then starts a new trace).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let (trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let rest = parts.next();
        let version_ok = version.len() == 2
            && version
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && version != "ff";
        if !version_ok || (version == "00" && rest.is_some()) {
            return None;
        }
        if !hex_id(trace_id, 32) || !hex_id(parent_id, 16) || flags.len() != 2 {
            return None;
        }
        Some(TraceParent {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// The header value (always written as version 00).
    pub fn to_header(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.parent_id, self.flags)
    }
}

/// A fresh, non-zero 64-bit span id as 16 hex digits.
fn span_id() -> String {
    loop {
        let (a, _) = uuid::Uuid::new_v4().as_u64_pair();
        if a != 0 {
            return format!("{a:016x}");
        }
    }
}

/// The `traceparent` this hop sends for `request_id`, given the worker's headers.
pub fn next_hop(headers: &HeaderMap, request_id: &str) -> TraceParent {
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    match incoming {
        Some(parent) => TraceParent {
            parent_id: span_id(),
            ..parent
        },
        None => {
            let lower = request_id.to_ascii_lowercase();
            let trace_id = if hex_id(&lower, 32) {
                lower
            } else {
                uuid::Uuid::new_v4().simple().to_string()
            };
            TraceParent {
                trace_id,
                parent_id: span_id(),
                flags: 1,
            }
        }
    }
}

/// Sets `traceparent` on `headers` for this hop.
pub fn propagate(headers: &mut HeaderMap, request_id: &str) {
    let next = next_hop(headers, request_id);
    if let Ok(v) = HeaderValue::from_str(&next.to_header()) {
        headers.insert(TRACEPARENT, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn a_new_trace_takes_the_request_id() {
        let t = next_hop(&HeaderMap::new(), RID);
        assert_eq!(t.trace_id, RID);
        assert_eq!(t.flags, 1);
        assert!(hex_id(&t.parent_id, 16));
        let header = t.to_header();
        assert_eq!(TraceParent::parse(&header), Some(t));
    }

    #[test]
    fn a_valid_incoming_trace_continues_with_a_new_parent() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
        );
        let t = next_hop(&h, RID);
        assert_eq!(t.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_ne!(t.parent_id, "b7ad6b7169203331");
        assert_eq!(t.flags, 0);
    }

    #[test]
    fn invalid_incoming_traces_start_a_new_one() {
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, HeaderValue::from_static(bad));
            assert_eq!(next_hop(&h, RID).trace_id, RID, "{bad}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let t = TraceParent::parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more")
            .map(|t| t.trace_id);
        assert_eq!(t.as_deref(), Some("0af7651916cd43dd8448eb211c80319c"));
    }
}
