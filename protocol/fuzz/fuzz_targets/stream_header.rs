#![no_main]
//! Fuzzes what a data stream starts with: preamble, then a framed ConnectRequest,
//! read the way the connector reads it (limits checked before the body is read).
use libfuzzer_sys::fuzz_target;
use warren_protocol::frame::split_frame;
use warren_protocol::messages::{ConnectRequest, WireMessage};
use warren_protocol::preamble::{self, PREAMBLE_LEN};

fuzz_target!(|data: &[u8]| {
    let Some(head) = data.get(..PREAMBLE_LEN) else { return };
    let mut p = [0u8; PREAMBLE_LEN];
    p.copy_from_slice(head);
    if preamble::decode(p).is_err() {
        return;
    }
    if let Ok(Some((body, used))) = split_frame(&data[PREAMBLE_LEN..], ConnectRequest::LIMIT) {
        assert!(used <= data.len() - PREAMBLE_LEN);
        warren_protocol_fuzz::round_trip::<ConnectRequest>(body);
    }
});
