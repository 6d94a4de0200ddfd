//! Parser tests: real ClientHellos captured from OpenSSL, curl, Python and
//! Chromium (`fuzz/seeds/sni/`), the same re-split into records of every
//! size, and built hellos for each boundary and each way to break one.
//! Name patterns are tested in `tests/names.rs`, the peek reader on real
//! sockets in `tests/peek.rs`, properties in `tests/props.rs`.

mod build;
mod names;
mod peek;
mod props;

use super::*;
use build::{Spec, hello, message, payload, records};

/// (seed file, what it decides) for every captured hello.
pub(super) const CAPTURED: [(&str, &[u8], Option<&str>); 6] = [
    (
        "openssl_tls13",
        include_bytes!("../../fuzz/seeds/sni/openssl_tls13"),
        Some("www.example.com"),
    ),
    (
        "openssl_tls12",
        include_bytes!("../../fuzz/seeds/sni/openssl_tls12"),
        Some("api.example.com"),
    ),
    (
        "openssl_no_sni",
        include_bytes!("../../fuzz/seeds/sni/openssl_no_sni"),
        None,
    ),
    (
        "curl",
        include_bytes!("../../fuzz/seeds/sni/curl"),
        Some("www.example.com"),
    ),
    (
        "chromium",
        include_bytes!("../../fuzz/seeds/sni/chromium"),
        Some("pq.example.com"),
    ),
    (
        "openssl_big_alpn",
        include_bytes!("../../fuzz/seeds/sni/openssl_big_alpn"),
        Some("big.example.com"),
    ),
];

fn found(host: &str) -> Parse {
    Parse::Done(Hello::Found(HostName::new(host.as_bytes()).unwrap()))
}

fn expected(host: Option<&str>) -> Parse {
    host.map_or(Parse::Done(Hello::NoSni), found)
}

fn bad(why: Malformed) -> Parse {
    Parse::Done(Hello::Malformed(why))
}

/// Every prefix of `wire`, checked against the promise of the one before:
/// `NeedMore(n)` means every prefix shorter than `n` gives the same, a
/// verdict never changes as bytes are added, and no `NeedMore` asks for
/// fewer bytes than it has or more than the cap. Returns the verdict on
/// the whole.
pub(super) fn check_prefixes(wire: &[u8]) -> Result<Parse, String> {
    let mut promise: Option<(Parse, usize)> = None;
    let mut last = parse(&[]);
    for k in 0..=wire.len() {
        let got = parse(&wire[..k]);
        if let Some((p, until)) = promise
            && k < until
            && got != p
        {
            return Err(format!(
                "{k} bytes: {got:?}, but a shorter prefix promised {p:?}"
            ));
        }
        promise = match got {
            Parse::NeedMore(n) if n <= k || n > MAX_HELLO_LEN => {
                return Err(format!("{k} bytes: NeedMore({n})"));
            }
            Parse::NeedMore(n) => Some((got, n)),
            Parse::Done(_) => Some((got, usize::MAX)),
        };
        last = got;
    }
    Ok(last)
}

#[test]
fn captured_hellos_give_their_names_from_every_split() {
    for (name, wire, host) in CAPTURED {
        assert_eq!(parse(wire), expected(host), "{name}");
        assert_eq!(check_prefixes(wire), Ok(expected(host)), "{name}");
        let msg = payload(wire);
        for size in [1, 2, 3, 4, 5, 7, 64, 100, 511, 1000, 4096] {
            let split = records(&msg, &[size]);
            assert_eq!(parse(&split), expected(host), "{name} in records of {size}");
        }
        // Records of growing sizes, every prefix checked.
        let split = records(&msg, &[1, 3, 9, 27, 81, 243, 729]);
        assert_eq!(check_prefixes(&split), Ok(expected(host)), "{name} split");
    }
}

#[test]
fn chromium_sends_a_post_quantum_key_share_before_its_name() {
    let (_, wire, _) = CAPTURED[4];
    // X25519MLKEM768 (group 0x11ec) with its 1216-byte key share.
    assert!(wire.windows(4).any(|w| w == [0x11, 0xec, 0x04, 0xc0]));
    let key_share = wire.windows(2).position(|w| w == [0x11, 0xec]).unwrap();
    let name = wire
        .windows(14)
        .position(|w| w == b"pq.example.com")
        .unwrap();
    assert!(key_share < name && wire.len() > 1800);
}

#[test]
fn a_hello_larger_than_4_kib_is_read_whole() {
    let (_, wire, _) = CAPTURED[5];
    assert!(wire.len() > 4096);
    let name_end = wire
        .windows(15)
        .position(|w| w == b"big.example.com")
        .unwrap()
        + 15;
    assert_eq!(parse(&wire[..name_end - 1]), Parse::NeedMore(name_end));
    assert_eq!(parse(&wire[..name_end]), found("big.example.com"));
}

#[test]
fn the_first_bytes_tell_tls_from_anything_else() {
    assert_eq!(parse(b""), Parse::NeedMore(1));
    let not_tls = Parse::Done(Hello::NotTls(NotTls::RecordType));
    for text in [
        &b"G"[..],
        b"GET / HTTP/1.1\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\0",
        b"\x17\x03\x03",
    ] {
        assert_eq!(
            parse(text),
            not_tls,
            "{:?}",
            text.escape_ascii().to_string()
        );
    }
    assert_eq!(parse(b"\x16"), Parse::NeedMore(5));
    assert_eq!(parse(b"\x16\x03\x01\x00"), Parse::NeedMore(5));
    assert_eq!(parse(b"\x16\x03\x01\x00\x10"), Parse::NeedMore(6));
    assert_eq!(
        parse(b"\x16\x02\x00\x00\x10"),
        Parse::Done(Hello::NotTls(NotTls::RecordVersion))
    );
}

#[test]
fn sslv2_format_hellos_carry_no_name() {
    // SSLv2 record header (length 0x2e), CLIENT-HELLO asking for TLS 1.0.
    assert_eq!(parse(b"\x80\x2e\x01\x03\x01"), Parse::Done(Hello::NoSni));
    assert_eq!(parse(b"\x80\x2e\x01\x03"), Parse::NeedMore(5));
    // Asking for SSL 2.0 itself.
    assert_eq!(
        parse(b"\x80\x2e\x01\x00\x02"),
        Parse::Done(Hello::NotTls(NotTls::SslV2))
    );
    assert_eq!(
        parse(b"\x80\x2e\x02\x03\x01"),
        Parse::Done(Hello::NotTls(NotTls::RecordType))
    );
}

#[test]
fn names_are_lowercased_and_lose_one_trailing_dot() {
    for (sent, got) in [
        ("WWW.Example.COM", "www.example.com"),
        ("example.com.", "example.com"),
        ("a_b-c.example", "a_b-c.example"),
        ("localhost", "localhost"),
        ("192.0.2.1", "192.0.2.1"),
    ] {
        assert_eq!(parse(&hello(&Spec::named(sent))), found(got), "{sent}");
    }
    let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
    assert_eq!(longest.len(), MAX_NAME_LEN);
    assert_eq!(parse(&hello(&Spec::named(&longest))), found(&longest));
    assert_eq!(
        parse(&hello(&Spec::named(&format!("{longest}.")))),
        found(&longest)
    );
}

#[test]
fn invalid_names_are_malformed() {
    let label64 = format!("{}.com", "a".repeat(64));
    let too_long = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(62));
    for name in [
        &b"www.example.com\0.evil"[..],
        b"\0",
        b"with space.com",
        b"caf\xc3\xa9.fr",
        b"a..b",
        b".example.com",
        b"example.com..",
        b".",
        b"*.example.com",
        b"host:443",
        label64.as_bytes(),
        too_long.as_bytes(),
        &[b'a'; 300],
    ] {
        let spec = Spec {
            sni: Some(name.to_vec()),
            ..Spec::named("x")
        };
        assert_eq!(
            parse(&hello(&spec)),
            bad(Malformed::HostName),
            "{:?}",
            name.escape_ascii().to_string()
        );
    }
}

/// A hello whose `server_name` extension has exactly `data`.
fn with_server_name(data: Vec<u8>) -> Vec<u8> {
    let spec = Spec {
        sni: None,
        after: vec![(0, data), (43, vec![2, 3, 4])],
        ..Spec::named("x")
    };
    hello(&spec)
}

#[test]
fn the_server_name_extension_is_checked() {
    let entry = |kind: u8, name: &[u8]| {
        let mut e = vec![kind];
        e.extend_from_slice(&(name.len() as u16).to_be_bytes());
        e.extend_from_slice(name);
        e
    };
    let list = |entries: &[Vec<u8>]| {
        let body = entries.concat();
        let mut d = (body.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&body);
        d
    };
    // Other name types first (even empty): stepped over.
    let d = list(&[entry(7, b"opaque"), entry(8, b""), entry(0, b"b.example")]);
    assert_eq!(parse(&with_server_name(d)), found("b.example"));
    // The first host_name wins.
    let d = list(&[entry(0, b"first.example"), entry(0, b"second.example")]);
    assert_eq!(parse(&with_server_name(d)), found("first.example"));
    // No host_name entry.
    assert_eq!(
        parse(&with_server_name(list(&[entry(9, b"x")]))),
        Parse::Done(Hello::NoSni)
    );
    let broken = [
        vec![],                                   // empty (a server's form)
        vec![0],                                  // shorter than the list length
        vec![0, 0],                               // empty list
        vec![0, 9, 0, 0, 1, b'a'],                // list length past the data
        vec![0, 3, 0, 0, 1, b'a'],                // ... or short of it
        vec![0, 4, 0, 0, 2, b'a'],                // name past the list
        vec![0, 2, 0, 0],                         // entry header cut short
        list(&[entry(0, b"")]),                   // empty name
        list(&[entry(0, b"a.example"), vec![0]]), // trailing garbage after a name is not read
    ];
    for (i, d) in broken.into_iter().enumerate() {
        let want = if i == 8 {
            // The walk decides at the first name.
            found("a.example")
        } else {
            bad(Malformed::ServerName)
        };
        assert_eq!(parse(&with_server_name(d)), want, "case {i}");
    }
}

#[test]
fn hellos_without_a_name() {
    let mut spec = Spec::named("x");
    spec.sni = None;
    assert_eq!(parse(&hello(&spec)), Parse::Done(Hello::NoSni));
    assert_eq!(check_prefixes(&hello(&spec)), Ok(Parse::Done(Hello::NoSni)));
    spec.extensions = false;
    assert_eq!(parse(&hello(&spec)), Parse::Done(Hello::NoSni));
}

/// The message of `Spec::named("a.example")` with `edit` applied.
fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> Parse {
    let mut msg = message(&Spec::named("a.example"));
    edit(&mut msg);
    parse(&records(&msg, &[16384]))
}

#[test]
fn length_fields_must_agree_with_what_encloses_them() {
    // Offsets in the message: type 0, length 1..4, version 4..6, random
    // 6..38, session id length 38.
    let sid = 38;
    let suites = sid + 1 + 32;
    assert_eq!(edited(|m| m[sid] = 33), bad(Malformed::Length));
    assert_eq!(edited(|m| m[suites + 1] = 5), bad(Malformed::Length));
    assert_eq!(edited(|m| m[suites + 1] = 0), bad(Malformed::Length));
    let comp = suites + 2 + 6;
    assert_eq!(edited(|m| m[comp] = 0), bad(Malformed::Length));
    let exts = comp + 2;
    assert_eq!(edited(|m| m[exts + 1] ^= 1), bad(Malformed::Length));
    // One byte after the compression methods: no room for a block length.
    assert_eq!(
        edited(|m| {
            m.truncate(exts + 1);
            m[3] = (exts + 1 - 4) as u8;
        }),
        bad(Malformed::Length)
    );
    // An extension longer than the block.
    assert_eq!(edited(|m| m[exts + 4] = 0xff), bad(Malformed::Length));
    // A message length that ends inside a field.
    assert_eq!(edited(|m| m[3] = 20), bad(Malformed::Length));
    assert_eq!(
        edited(|m| m[0] = 2),
        bad(Malformed::NotClientHello),
        "a ServerHello"
    );
}

#[test]
fn records_must_be_non_empty_handshake_records() {
    let msg = message(&Spec::named("a.example"));
    let mut two = records(&msg, &[10]);
    assert_eq!(parse(&two), found("a.example"));
    // The second record's header starts at 15.
    two[15] = 21; // an alert in the middle of the hello
    assert_eq!(parse(&two), bad(Malformed::Record));
    let mut two = records(&msg, &[10]);
    two[16] = 2;
    assert_eq!(parse(&two), bad(Malformed::Record));
    let empty = [&[22, 3, 1, 0, 0][..], &records(&msg, &[16384])].concat();
    assert_eq!(parse(&empty), bad(Malformed::Record));
    assert_eq!(parse(&[22, 3, 1, 0x40, 1]), bad(Malformed::Record));
    // An empty record after the first.
    let mid = [
        &records(&msg[..10], &[10])[..],
        &[22, 3, 3, 0, 0],
        &records(&msg[10..], &[16384]),
    ]
    .concat();
    assert_eq!(parse(&mid), bad(Malformed::Record));
}

#[test]
fn a_record_header_inside_a_length_field_is_stepped_over() {
    let msg = message(&Spec::named("split.example"));
    let name_at = msg.windows(13).position(|w| w == b"split.example").unwrap();
    // Split at every offset around the name and its length fields.
    for cut in 1..name_at + 13 {
        let wire = [
            &records(&msg[..cut], &[16384])[..],
            &records(&msg[cut..], &[16384]),
        ]
        .concat();
        assert_eq!(parse(&wire), found("split.example"), "cut at {cut}");
    }
}

#[test]
fn the_cap_counts_every_wire_byte() {
    // A message that cannot fit: decided by its length field alone.
    assert_eq!(
        parse(&[22, 3, 1, 0x40, 0, 1, 0, 0x40, 0]),
        Parse::Done(Hello::TooLarge)
    );
    // The largest hello that fits in one record: exactly the cap.
    let spec = Spec::named("edge.example").padded_to(MAX_HELLO_LEN - 5);
    let wire = hello(&spec);
    assert_eq!(wire.len(), MAX_HELLO_LEN);
    assert_eq!(check_prefixes(&wire), Ok(found("edge.example")));
    // One byte more.
    let spec = Spec::named("edge.example").padded_to(MAX_HELLO_LEN - 4);
    let wire = records(&message(&spec), &[16383]);
    assert_eq!(parse(&wire[..9]), Parse::Done(Hello::TooLarge));
    // Fits as one record, but split in two the second header pushes the
    // name past the cap.
    let spec = Spec::named("edge.example").padded_to(MAX_HELLO_LEN - 6);
    let msg = message(&spec);
    assert_eq!(parse(&records(&msg, &[16384])), found("edge.example"));
    assert_eq!(parse(&records(&msg, &[8000])), Parse::Done(Hello::TooLarge));
    // Whatever lies past the cap is not looked at.
    let mut long = records(&msg, &[8000]);
    long.extend_from_slice(&[0; 100]);
    assert_eq!(parse(&long), Parse::Done(Hello::TooLarge));
}

#[test]
fn the_walk_decides_at_the_name_and_reads_no_further() {
    let mut spec = Spec::named("early.example");
    spec.after = vec![(21, vec![0; 3000])];
    let wire = hello(&spec);
    let end = wire
        .windows(13)
        .position(|w| w == b"early.example")
        .unwrap()
        + 13;
    assert_eq!(parse(&wire[..end]), found("early.example"));
    assert!(end < wire.len() - 3000);
}

#[test]
fn reasons_are_stable_labels() {
    let all: Vec<&str> = [
        Hello::Found(HostName::new(b"a").unwrap()),
        Hello::NoSni,
        Hello::NotTls(NotTls::SslV2),
        Hello::Malformed(Malformed::Length),
        Hello::TooLarge,
    ]
    .iter()
    .map(Hello::reason)
    .collect();
    assert_eq!(all, Hello::REASONS);
    let labels: Vec<&str> = NotTls::ALL.iter().map(NotTls::label).collect();
    assert_eq!(labels, ["record_type", "record_version", "sslv2"]);
    let labels: Vec<&str> = Malformed::ALL.iter().map(Malformed::label).collect();
    assert_eq!(
        labels,
        [
            "record",
            "not_client_hello",
            "length",
            "server_name",
            "host_name"
        ]
    );
    assert_eq!(Hello::Malformed(Malformed::HostName).detail(), "host_name");
    assert_eq!(Hello::NoSni.detail(), "no_sni");
}
