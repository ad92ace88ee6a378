//! Frame decoder: arbitrary bytes, split at a fuzzer-chosen point, must never
//! panic, and every text message it yields must be valid UTF-8 within the limit.
#![no_main]

use gateway_core::codec::{Decoder, Event, Flow};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let max = 1 + usize::from(ctl & 0x7f) * 64;
    let split = if rest.is_empty() { 0 } else { usize::from(ctl) % (rest.len() + 1) };
    let mut d = Decoder::default();
    for piece in [&rest[..split], &rest[split..]] {
        let mut buf = piece.to_vec();
        let r = d.feed(&mut buf, max, &mut |ev| {
            match ev {
                Event::Text(t) => assert!(t.len() <= max),
                Event::Binary(b) => assert!(b.len() <= max),
                Event::Ping(p) => assert!(p.len() <= 125),
                Event::Pong | Event::Close(_) => {}
            }
            Flow::Continue
        });
        if let Err(e) = r {
            assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
            return;
        }
    }
});
