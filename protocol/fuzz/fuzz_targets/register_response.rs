#![no_main]
//! Fuzzes the `RegisterResponse` decoder (bytes from a peer).
use libfuzzer_sys::fuzz_target;
use warren_protocol::messages::RegisterResponse;

fuzz_target!(|data: &[u8]| warren_protocol_fuzz::round_trip::<RegisterResponse>(data));
