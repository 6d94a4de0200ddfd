//! Property tests of [`parse`]: any hello split any way into records (and
//! so, prefix by prefix, into any TCP segments) gives the answer of the
//! whole; arbitrary and damaged bytes never panic, never break a promise
//! a shorter prefix made, and never ask for more than the cap.

use proptest::prelude::*;

use super::super::*;
use super::build::{Spec, message, records};
use super::check_prefixes;

/// A valid host name of 1 to 4 labels, in mixed case.
fn host() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9][a-zA-Z0-9_-]{0,20}", 1..5)
        .prop_map(|labels| labels.join("."))
}

fn extensions() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    let kind = prop_oneof![
        Just(10u16),
        Just(13),
        Just(16),
        Just(43),
        Just(51),
        1u16..0xffff
    ];
    prop::collection::vec((kind, prop::collection::vec(any::<u8>(), 0..300)), 0..4)
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::option::weighted(0.85, host()),
        extensions(),
        extensions(),
        0usize..=32,
        1usize..40,
        prop::bool::weighted(0.95),
        prop_oneof![3 => Just(0usize), 1 => 0usize..6000],
    )
        .prop_map(
            |(sni, before, after, session_id, suites, extensions, pad)| {
                let spec = Spec {
                    sni: sni.map(String::into_bytes).filter(|_| extensions),
                    before,
                    after,
                    session_id,
                    suites,
                    extensions,
                };
                if extensions {
                    spec.padded_to(pad)
                } else {
                    spec
                }
            },
        )
}

/// Record payload sizes: tiny, small or whole.
fn sizes() -> impl Strategy<Value = Vec<usize>> {
    let size = prop_oneof![1 => 1usize..8, 3 => 8usize..300, 2 => 300usize..=16384];
    prop::collection::vec(size, 1..12)
}

fn answer(spec: &Spec) -> Parse {
    match &spec.sni {
        Some(host) => Parse::Done(Hello::Found(HostName::new(host).unwrap())),
        None => Parse::Done(Hello::NoSni),
    }
}

/// Bytes that begin like a hello, then go on at random.
fn hello_like() -> impl Strategy<Value = Vec<u8>> {
    let starts: Vec<Vec<u8>> = vec![
        vec![],
        vec![22],
        vec![22, 3, 1],
        vec![22, 3, 1, 0, 200, 1, 0, 0, 196],
        vec![22, 3, 3, 0, 3, 1, 0],
        vec![0x80, 0x2e, 1, 3],
        records(&message(&Spec::named("a.example"))[..60], &[16384]),
    ];
    (
        prop::sample::select(starts),
        prop::collection::vec(any::<u8>(), 0..400),
    )
        .prop_map(|(start, rest)| [start, rest].concat())
}

proptest! {
    #[test]
    fn any_split_into_records_gives_the_answer_of_the_whole(spec in spec(), sizes in sizes()) {
        let msg = message(&spec);
        // Keep the quadratic prefix check quick: tiny records only for
        // small hellos.
        prop_assume!(sizes.iter().all(|&s| s >= 8) || msg.len() < 1500);
        let whole = records(&msg, &[16384]);
        prop_assert_eq!(parse(&whole), answer(&spec));
        let split = records(&msg, &sizes);
        prop_assume!(split.len() <= MAX_HELLO_LEN);
        prop_assert_eq!(check_prefixes(&split), Ok(answer(&spec)));
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_break_a_promise(wire in hello_like()) {
        check_prefixes(&wire).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn damaged_hellos_never_panic_nor_break_a_promise(
        spec in spec(),
        sizes in sizes(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let msg = message(&spec);
        prop_assume!(sizes.iter().all(|&s| s >= 8) || msg.len() < 1500);
        let mut wire = records(&msg, &sizes);
        let i = at.index(wire.len());
        wire[i] ^= xor;
        check_prefixes(&wire).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn oversized_hellos_are_refused_without_asking_past_the_cap(
        spec in spec(),
        size in 1000usize..=16384,
        extra in 0usize..20000,
    ) {
        let spec = Spec { extensions: true, ..spec }.padded_to(MAX_HELLO_LEN + extra);
        let wire = records(&message(&spec), &[size]);
        // The message's length field alone decides, and nothing before it.
        prop_assert_eq!(parse(&wire[..8]), Parse::NeedMore(9));
        for k in (9..=wire.len()).step_by(97) {
            prop_assert_eq!(parse(&wire[..k]), Parse::Done(Hello::TooLarge));
        }
    }
}
