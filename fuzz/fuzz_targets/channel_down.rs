//! Front -> worker frames: decoding arbitrary bytes never panics, and a
//! frame that decodes re-encodes to a frame that decodes to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rrproxy::channel::Down;

fuzz_target!(|frame: &[u8]| {
    let Ok(msg) = Down::decode(frame) else {
        return;
    };
    let mut again = Vec::new();
    msg.encode(&mut again).expect("a decoded message encodes");
    assert!(again.len() <= frame.len());
    assert_eq!(Down::decode(&again).as_ref(), Ok(&msg));
});
