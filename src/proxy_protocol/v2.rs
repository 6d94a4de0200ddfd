//! Version 2: a 16-byte fixed part (signature, version and command,
//! family and transport, big-endian length of the rest), the addresses,
//! then type-length-value extensions (TLVs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    Decoded, Header, HeaderError, MAX_HEADER_LEN, Parsed, V1_MAX_LEN, V2_SIGNATURE, Version,
};

/// Length of the fixed part.
const FIXED_LEN: usize = 16;

const VERSION_2: u8 = 0x2;
const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;

const AF_UNSPEC: u8 = 0x0;
const AF_INET: u8 = 0x1;
const AF_INET6: u8 = 0x2;
const AF_UNIX: u8 = 0x3;

const TRANSPORT_UNSPEC: u8 = 0x0;
const TRANSPORT_STREAM: u8 = 0x1;
const TRANSPORT_DGRAM: u8 = 0x2;

/// Address block lengths: two addresses and, but for UNIX, two ports.
const INET_LEN: usize = 12;
const INET6_LEN: usize = 36;
const UNIX_LEN: usize = 216;

/// Both addresses in one family: IPv4 when both are IPv4 (an IPv4-mapped
/// IPv6 address counts as IPv4), otherwise both IPv6 (IPv4 ones mapped).
pub(super) fn same_family(source: SocketAddr, destination: SocketAddr) -> (IpAddr, IpAddr) {
    let unmap = |ip: IpAddr| ip.to_canonical();
    match (unmap(source.ip()), unmap(destination.ip())) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(to_v6(s)), IpAddr::V6(to_v6(d))),
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

pub(super) fn encode(header: &Header, out: &mut [u8; V1_MAX_LEN]) -> usize {
    out[..12].copy_from_slice(&V2_SIGNATURE);
    let Header::Tcp {
        source,
        destination,
    } = *header
    else {
        out[12] = VERSION_2 << 4 | CMD_LOCAL;
        out[13] = AF_UNSPEC << 4 | TRANSPORT_UNSPEC;
        out[14..16].copy_from_slice(&0u16.to_be_bytes());
        return FIXED_LEN;
    };
    out[12] = VERSION_2 << 4 | CMD_PROXY;
    let ports = |out: &mut [u8]| {
        out[..2].copy_from_slice(&source.port().to_be_bytes());
        out[2..4].copy_from_slice(&destination.port().to_be_bytes());
    };
    let len = match same_family(source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out[13] = AF_INET << 4 | TRANSPORT_STREAM;
            out[16..20].copy_from_slice(&s.octets());
            out[20..24].copy_from_slice(&d.octets());
            ports(&mut out[24..28]);
            INET_LEN
        }
        (s, d) => {
            out[13] = AF_INET6 << 4 | TRANSPORT_STREAM;
            out[16..32].copy_from_slice(&to_v6(s).octets());
            out[32..48].copy_from_slice(&to_v6(d).octets());
            ports(&mut out[48..52]);
            INET6_LEN
        }
    };
    out[14..16].copy_from_slice(&(len as u16).to_be_bytes());
    FIXED_LEN + len
}

/// `buf` starts with the signature's first byte.
pub(super) fn decode(buf: &[u8]) -> Result<Decoded, HeaderError> {
    let common = buf.len().min(V2_SIGNATURE.len());
    if buf[..common] != V2_SIGNATURE[..common] {
        return Err(HeaderError::NotProxy);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Decoded::NeedMore { total: None });
    };
    if ver_cmd >> 4 != VERSION_2 {
        return Err(HeaderError::Unsupported("protocol version other than 2"));
    }
    let command = ver_cmd & 0x0f;
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(HeaderError::Unsupported(
            "command other than LOCAL or PROXY",
        ));
    }
    let Some(&fam) = buf.get(13) else {
        return Ok(Decoded::NeedMore { total: None });
    };
    // LOCAL: the receiver ignores the family and the address block.
    let family = (command == CMD_PROXY)
        .then(|| check_family(fam))
        .transpose()?;
    let Some(len_bytes) = buf.get(14..FIXED_LEN) else {
        return Ok(Decoded::NeedMore { total: None });
    };
    let total = FIXED_LEN + usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    if total > MAX_HEADER_LEN {
        return Err(HeaderError::Oversized {
            limit: MAX_HEADER_LEN,
        });
    }
    let Some(body) = buf.get(FIXED_LEN..total) else {
        return Ok(Decoded::NeedMore { total: Some(total) });
    };
    let header = match family {
        None | Some(AF_UNSPEC) => Header::Local,
        Some(AF_INET) => {
            let (a, tlvs) = split(body, INET_LEN, "address block too short for IPv4")?;
            check_tlvs(tlvs)?;
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            tcp(ip(0), ip(4), &a[8..12])
        }
        Some(AF_INET6) => {
            let (a, tlvs) = split(body, INET6_LEN, "address block too short for IPv6")?;
            check_tlvs(tlvs)?;
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            tcp(ip(0), ip(16), &a[32..36])
        }
        Some(_) => {
            // AF_UNIX: no IP address to take over.
            let (_, tlvs) = split(body, UNIX_LEN, "address block too short for UNIX")?;
            check_tlvs(tlvs)?;
            Header::Local
        }
    };
    Ok(Decoded::Complete(Parsed {
        header,
        version: Version::V2,
        len: total,
    }))
}

/// The address family of a PROXY command, if this proxy takes it.
fn check_family(fam: u8) -> Result<u8, HeaderError> {
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > AF_UNIX {
        return Err(HeaderError::Unsupported("unknown address family"));
    }
    match transport {
        TRANSPORT_STREAM => Ok(family),
        TRANSPORT_UNSPEC if family == AF_UNSPEC => Ok(family),
        TRANSPORT_UNSPEC => Err(HeaderError::Unsupported("unspecified transport")),
        TRANSPORT_DGRAM => Err(HeaderError::Unsupported("UDP (DGRAM) transport")),
        _ => Err(HeaderError::Unsupported("unknown transport")),
    }
}

fn split<'a>(
    body: &'a [u8],
    len: usize,
    short: &'static str,
) -> Result<(&'a [u8], &'a [u8]), HeaderError> {
    body.split_at_checked(len)
        .ok_or(HeaderError::Malformed(short))
}

fn tcp(source: IpAddr, destination: IpAddr, ports: &[u8]) -> Header {
    Header::Tcp {
        source: SocketAddr::new(source, u16::from_be_bytes([ports[0], ports[1]])),
        destination: SocketAddr::new(destination, u16::from_be_bytes([ports[2], ports[3]])),
    }
}

/// Every TLV (type: 1 byte, length: 2 bytes big-endian, value) must fit
/// the header exactly.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), HeaderError> {
    while !tlvs.is_empty() {
        let Some(&[_, hi, lo]) = tlvs.first_chunk::<3>() else {
            return Err(HeaderError::Malformed("truncated TLV"));
        };
        let end = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        tlvs = tlvs
            .get(end..)
            .ok_or(HeaderError::Malformed("TLV longer than the header"))?;
    }
    Ok(())
}
