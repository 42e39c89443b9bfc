#![no_main]
//! Fuzzes the `DnsQuery` decoder (bytes from a peer).
use libfuzzer_sys::fuzz_target;
use warren_protocol::messages::DnsQuery;

fuzz_target!(|data: &[u8]| warren_protocol_fuzz::round_trip::<DnsQuery>(data));
