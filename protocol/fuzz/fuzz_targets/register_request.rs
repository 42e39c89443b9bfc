#![no_main]
//! Fuzzes the `RegisterRequest` decoder (bytes from a peer).
use libfuzzer_sys::fuzz_target;
use warren_protocol::messages::RegisterRequest;

fuzz_target!(|data: &[u8]| warren_protocol_fuzz::round_trip::<RegisterRequest>(data));
