#![no_main]
//! Fuzzes the `ConnectResponse` decoder (bytes from a peer).
use libfuzzer_sys::fuzz_target;
use warren_protocol::messages::ConnectResponse;

fuzz_target!(|data: &[u8]| warren_protocol_fuzz::round_trip::<ConnectResponse>(data));
