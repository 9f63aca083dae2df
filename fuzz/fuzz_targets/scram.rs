//! The SCRAM-SHA-256 client-first and client-final messages. Asserts: no panic; a parsed
//! client-first's nonce is printable and comma-free, its header one of the two plain ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsidecar::session::auth::{ClientFinal, ClientFirst};

fuzz_target!(|data: &[u8]| {
    if let Ok(first) = ClientFirst::parse(data) {
        assert!(first.gs2_header == "n,," || first.gs2_header == "y,,");
        assert!(first
            .nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b','));
    }
    if let Ok(last) = ClientFinal::parse(data) {
        assert_eq!(last.proof.len(), 32);
    }
});
