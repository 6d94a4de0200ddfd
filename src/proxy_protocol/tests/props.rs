//! Property tests of [`decode`] and [`Header::encode`]: round trips for any
//! addresses, the same verdict however the bytes are split, and arbitrary
//! bytes that never panic nor claim a byte past what was given.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};

use proptest::prelude::*;

use super::super::*;

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(o, p)| SocketAddr::new(IpAddr::from(o), p)),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
            |(o, p, flow, scope)| SocketAddr::V6(SocketAddrV6::new(o.into(), p, flow, scope))
        ),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(o, p)| {
            SocketAddr::new(IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped()), p)
        }),
        // Short forms and zero runs, which text encodings compress.
        (0u8..4, any::<u16>()).prop_map(|(i, p)| {
            let ip: IpAddr = ["::", "::1", "1::", "0.0.0.0"][usize::from(i)]
                .parse()
                .unwrap();
            SocketAddr::new(ip, p)
        }),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    prop_oneof![
        1 => Just(Header::Local),
        6 => (socket_addr(), socket_addr()).prop_map(|(source, destination)| Header::Tcp {
            source,
            destination
        }),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V1), Just(Version::V2)]
}

/// What `header` reads back as: both addresses IPv4 when both are (or are
/// IPv4-mapped), else both IPv6; no flow label or scope id.
fn as_sent(header: Header) -> Header {
    let Header::Tcp {
        source,
        destination,
    } = header
    else {
        return Header::Local;
    };
    let v4 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let (s, d): (IpAddr, IpAddr) = match (v4(source), v4(destination)) {
        (Some(s), Some(d)) => (s.into(), d.into()),
        _ => (v6(source).into(), v6(destination).into()),
    };
    Header::Tcp {
        source: SocketAddr::new(s, source.port()),
        destination: SocketAddr::new(d, destination.port()),
    }
}

/// Bytes that often begin like a header and go on with characters a
/// header is made of, so decoding gets past its first checks.
fn header_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let starts: Vec<Vec<u8>> = vec![
        vec![],
        b"PROXY ".to_vec(),
        b"PROXY TCP4 ".to_vec(),
        b"PROXY TCP6 ".to_vec(),
        b"PROXY UNKNOWN".to_vec(),
        V2_SIGNATURE.to_vec(),
        [&V2_SIGNATURE[..], &[0x21, 0x11]].concat(),
        [&V2_SIGNATURE[..], &[0x21, 0x21, 0x00]].concat(),
        [&V2_SIGNATURE[..], &[0x20]].concat(),
    ];
    let byte = prop_oneof![
        4 => prop::sample::select(b"0123456789abcdef.: \r\nPROXYTCPUNKW".to_vec()),
        1 => any::<u8>(),
    ];
    (
        prop::sample::select(starts),
        prop::collection::vec(byte, 0..160),
    )
        .prop_map(|(start, rest)| [start, rest].concat())
}

/// Checks every prefix of `wire` against the verdict on the whole: an
/// error or a complete header, once reached, never changes as bytes are
/// added, and a header never claims a byte it was not given.
fn check_prefixes(wire: &[u8]) -> Result<(), TestCaseError> {
    let whole = decode(wire);
    if let Ok(Decoded::Complete(p)) = whole {
        prop_assert!(p.len <= wire.len() && p.len > 0);
        prop_assert_eq!(decode(&wire[..p.len]), whole);
    }
    for n in 0..wire.len() {
        match decode(&wire[..n]) {
            Ok(Decoded::NeedMore { total }) => {
                prop_assert!(total.is_none_or(|t| t > n && t <= MAX_HEADER_LEN));
            }
            Ok(Decoded::Complete(p)) => prop_assert_eq!(whole, Ok(Decoded::Complete(p))),
            Err(e) => prop_assert_eq!(
                whole.map_err(|e| e.reason()),
                Err(e.reason()),
                "prefix of {} bytes",
                n
            ),
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_header_round_trips(h in header(), v in version(), tail in prop::collection::vec(any::<u8>(), 0..40)) {
        let encoded = h.encode(v);
        prop_assert!(encoded.len() <= V1_MAX_LEN);
        let mut wire = encoded.to_vec();
        wire.extend_from_slice(&tail);
        prop_assert_eq!(
            decode(&wire),
            Ok(Decoded::Complete(Parsed { header: as_sent(h), version: v, len: encoded.len() }))
        );
    }

    #[test]
    fn any_split_of_a_header_gives_the_same_result(h in header(), v in version(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut wire = h.encode(v).to_vec();
        let len = wire.len();
        wire.extend_from_slice(&tail);
        for n in 0..=wire.len() {
            let got = decode(&wire[..n]);
            if n < len {
                prop_assert!(matches!(got, Ok(Decoded::NeedMore { .. })), "{} bytes: {:?}", n, got);
            } else {
                prop_assert_eq!(got, Ok(Decoded::Complete(Parsed { header: as_sent(h), version: v, len })));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_overreach(wire in header_like_bytes()) {
        check_prefixes(&wire)?;
    }

    #[test]
    fn damaged_headers_never_panic_nor_overreach(
        h in header(),
        v in version(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        tail in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut wire = h.encode(v).to_vec();
        let i = at.index(wire.len());
        wire[i] ^= xor;
        wire.extend_from_slice(&tail);
        check_prefixes(&wire)?;
    }
}
