//! The HAProxy PROXY protocol, versions 1 (text) and 2 (binary), for TCP:
//! the header a proxy puts before the first byte of a connection to tell
//! the next hop who the client really is.
//!
//! This module owns the wire format and nothing else:
//! - [`Header::encode`] writes a v1 or v2 header for a TCP connection (or
//!   the "no address" form a health check sends) into a small value on the
//!   stack, for the worker to write before any client byte.
//! - [`decode`] looks at the bytes received so far and says whether they
//!   hold a whole header ([`Decoded::Complete`], with its exact length),
//!   need more ([`Decoded::NeedMore`]) or can never become one
//!   ([`HeaderError`]). It never claims a byte past the header: what follows
//!   belongs to the application.
//! - [`read_header`] reads one header off a tokio `TcpStream` without
//!   blocking and without taking any application byte out of the socket.
//!
//! Specification: HAProxy's `proxy-protocol.txt` (2.9). Choices this
//! implementation makes where the spec leaves room:
//! - v1 is parsed strictly: single spaces, `TCP4` with IPv4 and `TCP6` with
//!   IPv6 text addresses, decimal ports without leading zeros, `\r\n` at
//!   most [`V1_MAX_LEN`] bytes from the start. `PROXY UNKNOWN` (with or
//!   without addresses after it) keeps the connection's own address.
//! - v2 headers, TLVs included, are capped at [`MAX_HEADER_LEN`] bytes;
//!   a longer one is [`HeaderError::Oversized`] as soon as its length field
//!   arrives. TLVs are checked to fit the header exactly, then ignored (no
//!   CRC32C check). `LOCAL`, `AF_UNSPEC` and `AF_UNIX` keep the
//!   connection's own address; UDP (`DGRAM`) is unsupported.
//! - Decoded addresses are returned as sent (an IPv4-mapped IPv6 address
//!   stays IPv6; consumers such as [`crate::acl`] treat it as IPv4).
//! - Encoding with a client and a destination of different families writes
//!   both as IPv6 (IPv4-mapped), as HAProxy does; IPv4-mapped IPv6
//!   addresses on both sides are written as IPv4.

mod reader;
mod v1;
mod v2;

use std::net::SocketAddr;

pub use reader::read_header;

/// The longest v1 header, `\r\n` included (the spec's limit).
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 header accepted, fixed part, addresses and TLVs
/// included. The format allows 65,551 bytes; real senders (HAProxy, cloud
/// load balancers) send well under 1 KiB, and a pending connection should
/// not hold more than this.
pub const MAX_HEADER_LEN: usize = 4096;
/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Which PROXY protocol version a header uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

impl std::str::FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Version, String> {
        match s.trim() {
            "v1" | "1" => Ok(Version::V1),
            "v2" | "2" => Ok(Version::V2),
            other => Err(format!(
                "'{other}' is not a PROXY protocol version (v1 or v2)"
            )),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Header {
    /// A proxied TCP connection: `source` is the real client, `destination`
    /// the address it connected to.
    Tcp {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// No address to take over: keep the connection's own (v2 `LOCAL`, v1
    /// `UNKNOWN`, v2 `AF_UNSPEC` or `AF_UNIX`). Health checks send this.
    Local,
}

impl Header {
    /// The real client's address, if the header carries one.
    pub fn source(&self) -> Option<SocketAddr> {
        match self {
            Header::Tcp { source, .. } => Some(*source),
            Header::Local => None,
        }
    }

    /// This header in `version`'s wire format. No heap allocation.
    pub fn encode(&self, version: Version) -> Encoded {
        let mut out = Encoded {
            bytes: [0; ENCODED_MAX],
            len: 0,
        };
        let len = match version {
            Version::V1 => v1::encode(self, &mut out.bytes),
            Version::V2 => v2::encode(self, &mut out.bytes),
        };
        out.len = len as u8;
        out
    }
}

/// The most bytes [`Header::encode`] writes (a v1 line of two IPv6
/// addresses; v2 needs at most 52).
const ENCODED_MAX: usize = V1_MAX_LEN;

/// An encoded header, held on the stack: deref to its bytes.
#[derive(Clone, Copy)]
pub struct Encoded {
    bytes: [u8; ENCODED_MAX],
    len: u8,
}

impl std::ops::Deref for Encoded {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl AsRef<[u8]> for Encoded {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({:?})", self.as_ref().escape_ascii().to_string())
    }
}

/// A complete header found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub header: Header,
    pub version: Version,
    /// How many bytes the header takes: exactly these belong to it, the
    /// rest to the application.
    pub len: usize,
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    Complete(Parsed),
    /// A valid beginning; more bytes are needed. `total` is the header's
    /// whole length once known (v2, after its 16-byte fixed part).
    NeedMore {
        total: Option<usize>,
    },
}

/// Why a connection did not yield a header. [`HeaderError::reason`] is the
/// `reason` label of `rrproxy_proxy_header_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The connection began with bytes that are not a PROXY header.
    #[error("no PROXY header: the connection began with other bytes")]
    NotProxy,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("PROXY header longer than {limit} bytes")]
    Oversized { limit: usize },
    /// The peer closed the connection before the header was complete.
    #[error("connection closed before the PROXY header was complete")]
    Truncated,
    #[error("no complete PROXY header within the timeout")]
    Timeout,
    /// A well-formed header this proxy does not take (UDP, an unknown
    /// version, command, family or transport).
    #[error("unsupported PROXY header: {0}")]
    Unsupported(&'static str),
    /// Reading from the socket failed (a reset, for example).
    #[error("reading the PROXY header failed: {0}")]
    Io(std::io::ErrorKind),
}

impl HeaderError {
    /// Every value [`HeaderError::reason`] returns, for creating the metric
    /// series at zero.
    pub const REASONS: [&'static str; 7] = [
        "not_proxy",
        "malformed",
        "oversized",
        "truncated",
        "timeout",
        "unsupported",
        "io",
    ];

    /// A stable snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            HeaderError::NotProxy => "not_proxy",
            HeaderError::Malformed(_) => "malformed",
            HeaderError::Oversized { .. } => "oversized",
            HeaderError::Truncated => "truncated",
            HeaderError::Timeout => "timeout",
            HeaderError::Unsupported(_) => "unsupported",
            HeaderError::Io(_) => "io",
        }
    }
}

/// Look at the first bytes of a connection. Never reads past the header,
/// never panics, and gives an error as soon as the bytes cannot begin a
/// valid header (without waiting for more).
pub fn decode(buf: &[u8]) -> Result<Decoded, HeaderError> {
    match buf.first() {
        None => Ok(Decoded::NeedMore { total: None }),
        Some(b'P') => v1::decode(buf),
        Some(&b) if b == V2_SIGNATURE[0] => v2::decode(buf),
        Some(_) => Err(HeaderError::NotProxy),
    }
}

#[cfg(test)]
mod tests;
