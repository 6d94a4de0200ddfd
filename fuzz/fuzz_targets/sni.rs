//! The ClientHello parser: never panics, never asks for fewer bytes than
//! it has or more than the cap, keeps every promise a prefix made (a
//! `NeedMore(n)` holds for every shorter prefix; a verdict never changes),
//! gives the same verdict when the hello is re-split into other records,
//! and a name it finds is a valid, lowercase pattern that matches itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rrproxy::sni::names::Pattern;
use rrproxy::sni::{Hello, MAX_HELLO_LEN, Parse, parse};

/// The handshake bytes of a run of TLS records (a partial last one
/// included).
fn payload(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= wire.len() {
        let n = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        out.extend_from_slice(&wire[at + 5..(at + 5 + n).min(wire.len())]);
        at += 5 + n;
    }
    out
}

/// `payload` as handshake records of `size` bytes each.
fn records(payload: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in payload.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Every prefix checked against the promise of the one before (short
/// inputs: the check is quadratic).
fn every_prefix(wire: &[u8]) -> Parse {
    let mut promise: Option<(Parse, usize)> = None;
    let mut last = parse(&[]);
    for k in 0..=wire.len() {
        let got = parse(&wire[..k]);
        if let Some((p, until)) = promise {
            if k < until {
                assert_eq!(got, p, "prefix of {k}");
            }
        }
        promise = match got {
            Parse::NeedMore(n) => {
                assert!(n > k && n <= MAX_HELLO_LEN, "prefix of {k}: NeedMore({n})");
                Some((got, n))
            }
            Parse::Done(_) => Some((got, usize::MAX)),
        };
        last = got;
    }
    last
}

/// The chain of promises: from each `NeedMore(n)`, the prefix one byte
/// short of `n` still gives it, and the next look is at `n`.
fn promise_chain(wire: &[u8]) -> Parse {
    let mut k = 0;
    loop {
        let got = parse(&wire[..k]);
        match got {
            Parse::NeedMore(n) => {
                assert!(n > k && n <= MAX_HELLO_LEN, "prefix of {k}: NeedMore({n})");
                let edge = (n - 1).min(wire.len());
                assert_eq!(parse(&wire[..edge]), got, "prefix of {edge}");
                if n > wire.len() {
                    return got;
                }
                k = n;
            }
            Parse::Done(_) => {
                assert_eq!(parse(wire), got, "a verdict at {k} changed");
                return got;
            }
        }
    }
}

fuzz_target!(|wire: &[u8]| {
    let whole = promise_chain(wire);
    if wire.len() <= 512 {
        assert_eq!(every_prefix(wire), whole);
    }
    if let Parse::Done(Hello::Found(host)) = whole {
        assert!(!host.is_empty() && host.len() <= 253);
        assert_eq!(host.to_ascii_lowercase(), host.as_str());
        // An IPv4 literal is a well-formed name no pattern may claim.
        if host.parse::<std::net::IpAddr>().is_err() {
            let pattern = Pattern::parse(&host).expect("a found name is a valid pattern");
            assert!(pattern.matches(&host));
        }
    }
    if wire.first() == Some(&22) && matches!(whole, Parse::Done(Hello::Found(_) | Hello::NoSni)) {
        let size = 1 + wire.len() % 200;
        let again = parse(&records(&payload(wire), size));
        if again != Parse::Done(Hello::TooLarge) {
            assert_eq!(again, whole, "re-split into records of {size}");
        }
    }
});
