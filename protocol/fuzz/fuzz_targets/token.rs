#![no_main]
//! Fuzzes the tunnel token decoder (text users paste).
use libfuzzer_sys::fuzz_target;
use warren_protocol::token::TunnelToken;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = TunnelToken::decode(s) {
            assert_eq!(TunnelToken::decode(&t.encode()), Ok(t));
        }
    }
});
