//! Parser and encoder tests: exact bytes, every prefix, every value of the
//! v2 version and family bytes, and a table of bad v1 lines. Socket tests
//! of the reader are in `tests/reader.rs`, property tests in
//! `tests/props.rs`.

mod props;
mod reader;

use std::net::SocketAddr;

use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tcp(source: &str, destination: &str) -> Header {
    Header::Tcp {
        source: sa(source),
        destination: sa(destination),
    }
}

fn complete(buf: &[u8]) -> Parsed {
    match decode(buf) {
        Ok(Decoded::Complete(p)) => p,
        other => panic!("{:?}: {other:?}", buf.escape_ascii().to_string()),
    }
}

fn error(buf: &[u8]) -> HeaderError {
    match decode(buf) {
        Err(e) => e,
        other => panic!("{:?}: {other:?}", buf.escape_ascii().to_string()),
    }
}

/// The v2 fixed part with the given version/command and family bytes and
/// length field.
fn v2_fixed(ver_cmd: u8, fam: u8, len: u16) -> Vec<u8> {
    let mut v = V2_SIGNATURE.to_vec();
    v.extend_from_slice(&[ver_cmd, fam]);
    v.extend_from_slice(&len.to_be_bytes());
    v
}

#[test]
fn v1_encodes_as_the_spec_writes_it() {
    let cases = [
        (
            tcp("192.0.2.1:56324", "198.51.100.2:443"),
            "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
        ),
        (
            tcp("[2001:db8::1]:1", "[::1]:65535"),
            "PROXY TCP6 2001:db8::1 ::1 1 65535\r\n",
        ),
        // Mixed families: both as IPv6, the IPv4 one mapped.
        (
            tcp("10.0.0.1:5", "[::1]:80"),
            "PROXY TCP6 ::ffff:10.0.0.1 ::1 5 80\r\n",
        ),
        // IPv4-mapped on both sides: plain IPv4.
        (
            tcp("[::ffff:10.0.0.1]:5", "[::ffff:10.0.0.2]:80"),
            "PROXY TCP4 10.0.0.1 10.0.0.2 5 80\r\n",
        ),
        (Header::Local, "PROXY UNKNOWN\r\n"),
    ];
    for (header, text) in cases {
        assert_eq!(&*header.encode(Version::V1), text.as_bytes(), "{header:?}");
    }
}

#[test]
fn v2_encodes_as_the_spec_writes_it() {
    let mut want = v2_fixed(0x21, 0x11, 12);
    want.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb]);
    let h = tcp("192.0.2.1:56324", "198.51.100.2:443");
    assert_eq!(&*h.encode(Version::V2), &want[..]);

    let mut want = v2_fixed(0x21, 0x21, 36);
    want.extend_from_slice(
        &"::ffff:10.0.0.1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    want.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    want.extend_from_slice(&[0, 5, 0, 80]);
    assert_eq!(
        &*tcp("10.0.0.1:5", "[::1]:80").encode(Version::V2),
        &want[..]
    );

    assert_eq!(
        &*Header::Local.encode(Version::V2),
        &v2_fixed(0x20, 0x00, 0)[..]
    );
}

#[test]
fn decoding_takes_exactly_the_header_and_leaves_the_rest() {
    let headers = [
        tcp("192.0.2.1:56324", "198.51.100.2:443"),
        tcp("[2001:db8::1]:1", "[::1]:65535"),
        tcp("[::ffff:10.0.0.1]:5", "[::1]:80"),
        tcp("0.0.0.0:0", "255.255.255.255:65535"),
        Header::Local,
    ];
    for header in headers {
        for version in [Version::V1, Version::V2] {
            let encoded = header.encode(version);
            let mut wire = encoded.to_vec();
            wire.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let p = complete(&wire);
            assert_eq!(
                (p.header, p.version, p.len),
                (header, version, encoded.len())
            );
        }
    }
}

#[test]
fn every_prefix_of_a_header_needs_more() {
    let headers = [
        tcp("192.0.2.1:56324", "198.51.100.2:443"),
        tcp("[2001:db8::1]:1", "[::1]:65535"),
        Header::Local,
    ];
    for header in headers {
        for version in [Version::V1, Version::V2] {
            let wire = header.encode(version);
            for len in 0..wire.len() {
                let got = decode(&wire[..len]);
                assert!(
                    matches!(got, Ok(Decoded::NeedMore { .. })),
                    "{version} prefix {len}: {got:?}"
                );
            }
        }
    }
    // v2 knows its total once the fixed part is in.
    let wire = tcp("[2001:db8::1]:1", "[::1]:2").encode(Version::V2);
    assert_eq!(
        decode(&wire[..16]),
        Ok(Decoded::NeedMore { total: Some(52) })
    );
}

#[test]
fn v1_longest_line_is_accepted_and_one_more_byte_is_not() {
    let addr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = format!("PROXY UNKNOWN {addr} {addr} 65535 65535\r\n");
    assert_eq!(line.len(), V1_MAX_LEN);
    assert_eq!(complete(line.as_bytes()).header, Header::Local);
    let line = format!("PROXY TCP6 {addr} {addr} 65535 65535\r\n");
    assert_eq!(complete(line.as_bytes()).len, 104);

    let long = format!("PROXY UNKNOWN {addr} {addr} 65535 655350\r\n");
    assert_eq!(
        error(long.as_bytes()),
        HeaderError::Oversized { limit: V1_MAX_LEN }
    );
    // Without the line end, decided at the limit, not before.
    assert!(matches!(
        decode(&long.as_bytes()[..V1_MAX_LEN - 1]),
        Ok(Decoded::NeedMore { .. })
    ));
    assert_eq!(
        error(&long.as_bytes()[..V1_MAX_LEN]),
        HeaderError::Oversized { limit: V1_MAX_LEN }
    );
}

#[test]
fn v1_unknown_ignores_what_follows_it() {
    for line in [
        "PROXY UNKNOWN\r\n",
        "PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY UNKNOWN anything at all\r\n",
    ] {
        assert_eq!(complete(line.as_bytes()).header, Header::Local, "{line}");
    }
}

#[test]
fn v1_bad_lines_are_malformed_each_with_its_reason() {
    let cases = [
        ("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        ("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        ("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        ("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        ("PROXY UNKNOWNX\r\n", "unknown protocol"),
        ("PROXY \r\n", "unknown protocol"),
        ("PROXY TCP4\r\n", "missing source address"),
        ("PROXY TCP4 1.2.3.4\r\n", "missing destination address"),
        ("PROXY TCP4 1.2.3.4 5.6.7.8\r\n", "missing source port"),
        (
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            "missing destination port",
        ),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "extra field"),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "extra field"),
        (
            "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            "bad destination address",
        ),
        ("PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "bad source address"),
        ("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad source address"),
        ("PROXY TCP4 010.0.0.1 5.6.7.8 1 2\r\n", "bad source address"),
        ("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad source address"),
        ("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad source address"),
        ("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad source address"),
        (
            "PROXY TCP6 ::1 localhost 1 2\r\n",
            "bad destination address",
        ),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "bad source port"),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad source port"),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad source port"),
        (
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n",
            "bad destination port",
        ),
        (
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            "bad destination port",
        ),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CR before LF"),
        (
            "PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
            "CR not followed by LF",
        ),
        (
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
            "CR not followed by LF",
        ),
        (
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\t\r\n",
            "bad destination port",
        ),
        (
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 \u{e9}\r\n",
            "bad destination port",
        ),
    ];
    for (line, want) in cases {
        match decode(line.as_bytes()) {
            Err(HeaderError::Malformed(why)) => {
                assert!(why.contains(want), "{line:?}: {why:?}, wanted {want:?}")
            }
            other => panic!("{line:?}: {other:?}"),
        }
    }
}

#[test]
fn v1_garbage_is_rejected_before_its_line_ends() {
    // A peer that will never send CRLF must not hold the connection until
    // the timeout when its first bytes already cannot be a header.
    for partial in [
        "PROXY X",
        "PROXY TCP44",
        "PROXY TCP4 1.2.3.4x",
        "PROXY TCP4 1.2.3.4.5.6.7.8.9.10",
        "PROXY TCP6 ::1 g",
        "PROXY TCP4 1.2.3.4 5.6.7.8 01",
        "PROXY TCP4 1.2.3.4 5.6.7.8 70000",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        "PROXY TCP4 ::1 ",
    ] {
        assert!(
            matches!(decode(partial.as_bytes()), Err(HeaderError::Malformed(_))),
            "{partial:?}: {:?}",
            decode(partial.as_bytes())
        );
    }
}

#[test]
fn bytes_that_are_not_a_header_say_so() {
    for wire in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x16\x03\x01\x02\x00",
        b"PROXZ",
        b"PROXYTCP4",
        b"proxy TCP4",
        b"\r\n\r\n\0\r\nQUIX",
        b"\r\r",
        b"\0",
    ] {
        assert_eq!(error(wire), HeaderError::NotProxy, "{wire:?}");
    }
    assert_eq!(decode(b""), Ok(Decoded::NeedMore { total: None }));
}

#[test]
fn v2_takes_only_version_2_with_local_or_proxy() {
    for ver_cmd in 0..=255u8 {
        let mut wire = v2_fixed(ver_cmd, 0x11, 12);
        wire.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        let got = decode(&wire);
        match ver_cmd {
            0x20 => assert_eq!(complete(&wire).header, Header::Local),
            0x21 => assert_eq!(complete(&wire).header, tcp("1.2.3.4:1", "5.6.7.8:2")),
            _ => assert!(
                matches!(got, Err(HeaderError::Unsupported(_))),
                "{ver_cmd:#x}: {got:?}"
            ),
        }
        // Decided as soon as that byte is in.
        assert_eq!(decode(&wire[..13]).is_err(), got.is_err(), "{ver_cmd:#x}");
    }
}

#[test]
fn v2_takes_tcp_families_and_keeps_the_own_address_for_unspec_and_unix() {
    for fam in 0..=255u8 {
        let len = match fam >> 4 {
            1 => 12,
            2 => 36,
            3 => 216,
            _ => 0,
        };
        let mut wire = v2_fixed(0x21, fam, len);
        wire.extend(std::iter::repeat_n(7u8, usize::from(len)));
        let got = decode(&wire);
        match fam {
            0x00 | 0x01 | 0x31 => assert_eq!(complete(&wire).header, Header::Local, "{fam:#x}"),
            0x11 => assert_eq!(complete(&wire).header, tcp("7.7.7.7:1799", "7.7.7.7:1799")),
            0x21 => assert!(complete(&wire).header.source().unwrap().is_ipv6()),
            _ => assert!(
                matches!(got, Err(HeaderError::Unsupported(_))),
                "{fam:#x}: {got:?}"
            ),
        }
        assert_eq!(decode(&wire[..14]).is_err(), got.is_err(), "{fam:#x}");
        // LOCAL ignores the family byte altogether.
        wire[12] = 0x20;
        assert_eq!(complete(&wire).header, Header::Local, "LOCAL {fam:#x}");
    }
    let mut dgram = v2_fixed(0x21, 0x12, 12);
    dgram.extend_from_slice(&[0; 12]);
    assert_eq!(
        error(&dgram),
        HeaderError::Unsupported("UDP (DGRAM) transport")
    );
}

#[test]
fn v2_address_blocks_and_tlvs_must_fit() {
    // Address block shorter than the family needs.
    for (fam, len) in [(0x11u8, 11u16), (0x21, 35), (0x31, 215), (0x11, 0)] {
        let mut wire = v2_fixed(0x21, fam, len);
        wire.extend(std::iter::repeat_n(0u8, usize::from(len)));
        assert!(
            matches!(error(&wire), HeaderError::Malformed(_)),
            "{fam:#x}/{len}"
        );
    }
    let v4 = |tlvs: &[u8]| {
        let mut wire = v2_fixed(0x21, 0x11, 12 + tlvs.len() as u16);
        wire.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        wire.extend_from_slice(tlvs);
        wire
    };
    // An authority TLV, then NOOP padding of zero and of three bytes.
    let good = v4(b"\x02\x00\x0bexample.com\x04\x00\x00\x04\x00\x03abc");
    assert_eq!(complete(&good).len, good.len());
    for bad in [
        &b"\x02"[..],
        b"\x02\x00",
        b"\x02\x00\x05abcd",
        b"\x04\x00\x00\x01",
    ] {
        assert_eq!(
            error(&v4(bad)),
            HeaderError::Malformed(if bad.len() < 3 || bad.len() == 4 {
                "truncated TLV"
            } else {
                "TLV longer than the header"
            }),
            "{bad:?}"
        );
    }
}

#[test]
fn v2_size_is_capped_as_soon_as_the_length_is_known() {
    let body = MAX_HEADER_LEN - 16;
    let mut wire = v2_fixed(0x21, 0x11, body as u16);
    wire.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
    // One TLV filling the rest: exactly the cap is fine.
    let tlv = body - 12 - 3;
    wire.push(0xe0);
    wire.extend_from_slice(&(tlv as u16).to_be_bytes());
    wire.extend(std::iter::repeat_n(b'x', tlv));
    assert_eq!(complete(&wire).len, MAX_HEADER_LEN);

    let over = v2_fixed(0x21, 0x11, body as u16 + 1);
    let e = error(&over);
    assert_eq!(
        e,
        HeaderError::Oversized {
            limit: MAX_HEADER_LEN
        }
    );
    assert_eq!(e.reason(), "oversized");
    assert_eq!(error(&v2_fixed(0x20, 0, u16::MAX)), e, "LOCAL too");
}

#[test]
fn error_reasons_are_stable_distinct_labels() {
    let errors = [
        HeaderError::NotProxy,
        HeaderError::Malformed("x"),
        HeaderError::Oversized { limit: 1 },
        HeaderError::Truncated,
        HeaderError::Timeout,
        HeaderError::Unsupported("x"),
        HeaderError::Io(std::io::ErrorKind::ConnectionReset),
    ];
    let labels: Vec<_> = errors.iter().map(HeaderError::reason).collect();
    assert_eq!(labels, HeaderError::REASONS);
    for e in errors {
        let text = e.to_string();
        assert!(text.contains("PROXY header"), "{text}");
        assert!(!text.contains('\n'));
    }
}

#[test]
fn versions_parse_from_config_text() {
    assert_eq!("v1".parse::<Version>(), Ok(Version::V1));
    assert_eq!("v2".parse::<Version>(), Ok(Version::V2));
    let e = "v3".parse::<Version>().unwrap_err();
    assert!(e.contains("'v3'"), "{e}");
    assert_eq!(Version::V2.to_string(), "v2");
}
