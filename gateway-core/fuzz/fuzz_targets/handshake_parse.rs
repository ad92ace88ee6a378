//! Upgrade request parser: arbitrary bytes must never panic; an accepted
//! request never claims more bytes than it was given.
#![no_main]

use gateway_core::handshake::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(up)) = parse(data, "/ws") {
        assert!(up.consumed <= data.len());
        assert_eq!(up.path, "/ws");
    }
});
