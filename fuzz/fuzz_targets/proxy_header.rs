//! The PROXY header decoder: never panics, never claims a byte it was not
//! given, gives the same verdict however the bytes are split, and what it
//! decodes re-encodes to the same addresses.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use rrproxy::proxy_protocol::{Decoded, Header, decode};

fn canonical(h: Header) -> Header {
    let c = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    match h {
        Header::Tcp {
            source,
            destination,
        } => Header::Tcp {
            source: c(source),
            destination: c(destination),
        },
        Header::Local => Header::Local,
    }
}

fuzz_target!(|wire: &[u8]| {
    let whole = decode(wire);
    for n in 0..wire.len() {
        match decode(&wire[..n]) {
            Ok(Decoded::NeedMore { total }) => assert!(total.is_none_or(|t| t > n)),
            Ok(complete) => assert_eq!(Ok(complete), whole, "prefix of {n}"),
            Err(e) => assert_eq!(
                whole.map_err(|e| e.reason()),
                Err(e.reason()),
                "prefix of {n}"
            ),
        }
    }
    if let Ok(Decoded::Complete(p)) = whole {
        assert!(p.len > 0 && p.len <= wire.len());
        let again = p.header.encode(p.version);
        match decode(&again) {
            Ok(Decoded::Complete(q)) => {
                assert_eq!(q.len, again.len());
                assert_eq!(canonical(q.header), canonical(p.header));
            }
            other => panic!("re-encoded header does not decode: {other:?}"),
        }
    }
});
