//! Version 1: one text line, `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or
//! `PROXY UNKNOWN...\r\n`, at most [`V1_MAX_LEN`] bytes.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Decoded, Header, HeaderError, Parsed, V1_MAX_LEN, Version};

const PREFIX: &[u8] = b"PROXY ";

/// Longest text form of an IPv4 / IPv6 address (`Ipv6Addr` also reads
/// `ffff:...:ffff:1.2.3.4`, 45 characters).
const V4_TEXT_MAX: usize = 15;
const V6_TEXT_MAX: usize = 45;

pub(super) fn encode(header: &Header, out: &mut [u8; V1_MAX_LEN]) -> usize {
    let mut w = &mut out[..];
    let written = match *header {
        Header::Local => w.write_all(b"PROXY UNKNOWN\r\n"),
        Header::Tcp {
            source,
            destination,
        } => {
            let (proto, src, dst) = match super::v2::same_family(source, destination) {
                (IpAddr::V4(s), IpAddr::V4(d)) => ("TCP4", IpAddr::V4(s), IpAddr::V4(d)),
                (s, d) => ("TCP6", s, d),
            };
            write!(
                w,
                "PROXY {proto} {src} {dst} {} {}\r\n",
                source.port(),
                destination.port()
            )
        }
    };
    // 104 bytes at most (two 39-character IPv6 addresses): always fits.
    debug_assert!(written.is_ok());
    V1_MAX_LEN - w.len()
}

/// `buf` starts with `P`.
pub(super) fn decode(buf: &[u8]) -> Result<Decoded, HeaderError> {
    let common = buf.len().min(PREFIX.len());
    if buf[..common] != PREFIX[..common] {
        return Err(HeaderError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let line = window[..nl]
                .strip_suffix(b"\r")
                .ok_or(HeaderError::Malformed("line ends without CR before LF"))?;
            let header = parse_fields(&line[PREFIX.len()..])?;
            Ok(Decoded::Complete(Parsed {
                header,
                version: Version::V1,
                len: nl + 1,
            }))
        }
        None => {
            // Judge what is here first, so that the verdict does not depend
            // on how the bytes were split into reads.
            if window.len() > PREFIX.len() {
                check_partial(&window[PREFIX.len()..])?;
            }
            if buf.len() >= V1_MAX_LEN {
                return Err(HeaderError::Oversized { limit: V1_MAX_LEN });
            }
            Ok(Decoded::NeedMore { total: None })
        }
    }
}

/// Is `rest` (after `PROXY `, no LF yet) the beginning of a valid line?
fn check_partial(rest: &[u8]) -> Result<(), HeaderError> {
    if let Some(body) = rest.strip_suffix(b"\r") {
        // Everything but the LF is here: judge the whole line now.
        return parse_fields(body).map(|_| ());
    }
    if rest.contains(&b'\r') {
        return Err(HeaderError::Malformed("CR not followed by LF"));
    }
    if rest.starts_with(b"UNKNOWN ") {
        return Ok(());
    }
    let count = rest.split(|&b| b == b' ').count();
    let mut family = None;
    for (i, field) in rest.split(|&b| b == b' ').enumerate() {
        if i + 1 < count {
            family = check_field(i, family, field)?.or(family);
        } else {
            check_partial_field(i, family, field)?;
        }
    }
    Ok(())
}

/// Parse a whole line after `PROXY `, without its CRLF.
fn parse_fields(rest: &[u8]) -> Result<Header, HeaderError> {
    if rest.contains(&b'\r') {
        return Err(HeaderError::Malformed("CR not followed by LF"));
    }
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        // The spec: ignore whatever follows UNKNOWN up to the CRLF.
        return Ok(Header::Local);
    }
    let mut fields = rest.split(|&b| b == b' ');
    let mut next = |i: usize| fields.next().ok_or(HeaderError::Malformed(MISSING[i]));
    let family = check_field(0, None, next(0)?)?;
    let source = parse_ip(family, next(1)?).ok_or(bad(1))?;
    let destination = parse_ip(family, next(2)?).ok_or(bad(2))?;
    let sport = parse_port(next(3)?).ok_or(bad(3))?;
    let dport = parse_port(next(4)?).ok_or(bad(4))?;
    if fields.next().is_some() {
        return Err(bad(5));
    }
    Ok(Header::Tcp {
        source: SocketAddr::new(source, sport),
        destination: SocketAddr::new(destination, dport),
    })
}

const MISSING: [&str; 5] = [
    "missing protocol",
    "missing source address",
    "missing destination address",
    "missing source port",
    "missing destination port",
];

/// What is wrong when field `i` (from 0) is not valid.
fn bad(i: usize) -> HeaderError {
    const BAD: [&str; 6] = [
        "unknown protocol (expected TCP4, TCP6 or UNKNOWN)",
        "bad source address",
        "bad destination address",
        "bad source port",
        "bad destination port",
        "extra field after the destination port",
    ];
    HeaderError::Malformed(BAD[i.min(BAD.len() - 1)])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Validate complete field `i`; field 0 returns the family it names.
fn check_field(
    i: usize,
    family: Option<Family>,
    field: &[u8],
) -> Result<Option<Family>, HeaderError> {
    let valid = match i {
        0 => match field {
            b"TCP4" => return Ok(Some(Family::V4)),
            b"TCP6" => return Ok(Some(Family::V6)),
            _ => false,
        },
        1 | 2 => parse_ip(family, field).is_some(),
        3 | 4 => parse_port(field).is_some(),
        _ => false,
    };
    if valid { Ok(None) } else { Err(bad(i)) }
}

/// Could `field`, still being received, become a valid field `i`?
fn check_partial_field(i: usize, family: Option<Family>, field: &[u8]) -> Result<(), HeaderError> {
    let valid = match i {
        0 => [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
            .iter()
            .any(|p| p.starts_with(field)),
        1 | 2 => match family {
            Some(Family::V4) => {
                field.len() <= V4_TEXT_MAX && field.iter().all(|b| b.is_ascii_digit() || *b == b'.')
            }
            _ => {
                field.len() <= V6_TEXT_MAX
                    && field
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
            }
        },
        // A prefix of a valid port is a valid port, but for the empty one.
        3 | 4 => field.is_empty() || parse_port(field).is_some(),
        _ => false,
    };
    if valid { Ok(()) } else { Err(bad(i)) }
}

/// An address of `family` (IPv6 unless IPv4) in its text form.
fn parse_ip(family: Option<Family>, field: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(field).ok()?;
    match family {
        Some(Family::V4) => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        _ => text.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
    }
}

/// A decimal port, 0..=65535, without sign or leading zeros.
fn parse_port(field: &[u8]) -> Option<u16> {
    let canonical = !field.is_empty()
        && field.len() <= 5
        && field.iter().all(u8::is_ascii_digit)
        && !(field.len() > 1 && field[0] == b'0');
    if !canonical {
        return None;
    }
    let value = field
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(value).ok()
}
