#![no_main]
//! Fuzzes the binding RPC's `CallHead` decoder (bytes from the runtime).
use libfuzzer_sys::fuzz_target;
use warren_protocol::binding::CallHead;

fuzz_target!(|data: &[u8]| warren_protocol_fuzz::round_trip::<CallHead>(data));
