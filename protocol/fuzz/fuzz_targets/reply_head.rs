#![no_main]
//! Fuzzes the binding RPC's `ReplyHead` decoder (bytes from the binding-worker).
use libfuzzer_sys::fuzz_target;
use warren_protocol::binding::ReplyHead;

fuzz_target!(|data: &[u8]| warren_protocol_fuzz::round_trip::<ReplyHead>(data));
