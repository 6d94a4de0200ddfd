//! TLS passthrough routing by server name (SNI): reading the name a TLS
//! client asks for from its ClientHello without terminating TLS and
//! without consuming a byte, and matching it against configured names.
//!
//! This module owns the wire format, the name rules and the peek, and
//! nothing about services or dispatch:
//! - [`parse`] looks at the bytes a connection has sent so far and says
//!   whether they need more ([`Parse::NeedMore`], with the wire length at
//!   which the verdict can next change) or decide ([`Parse::Done`] with a
//!   [`Hello`]: the name, no name, not TLS, malformed, too large). It
//!   never panics, never allocates and never looks past
//!   [`MAX_HELLO_LEN`] bytes.
//! - [`peek_client_hello`] waits for a connection's ClientHello with
//!   `recv(MSG_PEEK)`, without blocking the event loop and without taking
//!   a byte out of the socket: the backend receives every byte;
//!   [`try_peek_client_hello`] is one look without waiting, on any socket.
//! - [`names`]: the config's `sni = [...]` patterns (`www.example.com`,
//!   `*.example.com`), their validation, the most-specific-first lookup
//!   and the overlap check.
//!
//! Choices where the specifications leave room (RFC 8446, RFC 5246,
//! RFC 6066; nginx `ssl_preread`, HAProxy `req.ssl_sni` and Envoy's
//! `tls_inspector` read the same bytes):
//! - The ClientHello may span any number of TLS records (a record header
//!   may fall anywhere, even inside a length field) and TCP segments.
//!   Every record must be a non-empty handshake record of at most 2^14
//!   bytes with version 3.x.
//! - The cap counts wire bytes, record headers included: a hello whose
//!   bytes up to the deciding field do not fit in [`MAX_HELLO_LEN`] is
//!   [`Hello::TooLarge`], decided as soon as a length field says so.
//! - The walk stops at the first field that decides: the first `host_name`
//!   entry of the `server_name` extension is the answer, and what follows
//!   it is not checked (the backend validates the whole hello). A hello
//!   whose extensions end without `server_name` is [`Hello::NoSni`], as is
//!   one without extensions (TLS 1.0-1.2) and an SSLv2-format hello
//!   asking for SSL 3.0 or TLS (it cannot carry extensions); an SSLv2-format
//!   hello asking for SSL 2.0 is [`NotTls::SslV2`].
//! - Host names are checked and lowercased as [`host`] describes: one
//!   trailing dot is dropped, an embedded NUL or any byte other than
//!   letters, digits, `-`, `_` and `.` is [`Malformed::HostName`].
//! - The first byte alone tells TLS from anything else (an HTTP request,
//!   an SSH banner): [`Hello::NotTls`] needs one byte, whatever follows.

mod hello;
pub mod host;
pub mod names;
mod peek;

pub use host::{HostName, MAX_NAME_LEN};
pub use peek::{DEFAULT_TIMEOUT, PeekError, Peeked, peek_client_hello, try_peek_client_hello};

/// The most wire bytes looked at (16 KiB, record headers included). Real
/// ClientHellos are 200 bytes to 2 KiB (post-quantum key shares: about
/// 1.8 KiB); a hello that needs more is [`Hello::TooLarge`].
pub const MAX_HELLO_LEN: usize = 16 * 1024;

/// What the bytes received so far amount to.
// The name is held inline (256 bytes) so that parsing never allocates.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// Not decided: nothing can change until the wire holds at least this
    /// many bytes (always more than were given, never more than
    /// [`MAX_HELLO_LEN`]).
    NeedMore(usize),
    Done(Hello),
}

/// What a connection's first bytes say, once decided.
// The name is held inline (254 bytes) so that parsing never allocates.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello asking for this server name.
    Found(HostName),
    /// A valid ClientHello without a server name.
    NoSni,
    /// The connection does not begin with a TLS ClientHello.
    NotTls(NotTls),
    /// It begins like one, but breaks the format.
    Malformed(Malformed),
    /// The hello does not fit in [`MAX_HELLO_LEN`] bytes.
    TooLarge,
}

impl Hello {
    /// Every value [`Hello::reason`] returns.
    pub const REASONS: [&'static str; 5] = ["found", "no_sni", "not_tls", "malformed", "too_large"];

    /// A stable snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Hello::Found(_) => "found",
            Hello::NoSni => "no_sni",
            Hello::NotTls(_) => "not_tls",
            Hello::Malformed(_) => "malformed",
            Hello::TooLarge => "too_large",
        }
    }

    /// The finer label: [`NotTls::label`] or [`Malformed::label`], else
    /// [`Hello::reason`].
    pub fn detail(&self) -> &'static str {
        match self {
            Hello::NotTls(why) => why.label(),
            Hello::Malformed(why) => why.label(),
            other => other.reason(),
        }
    }

    /// The server name, if the hello carries one.
    pub fn host(&self) -> Option<&HostName> {
        match self {
            Hello::Found(host) => Some(host),
            _ => None,
        }
    }
}

/// Why a connection is not TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotTls {
    /// The first byte is not a handshake record's (22), nor an SSLv2-format
    /// hello's: plain text, another protocol.
    RecordType,
    /// A handshake record type, but not version 3.x.
    RecordVersion,
    /// An SSL 2.0 ClientHello.
    SslV2,
}

impl NotTls {
    pub const ALL: [NotTls; 3] = [NotTls::RecordType, NotTls::RecordVersion, NotTls::SslV2];

    /// A stable snake_case label.
    pub fn label(&self) -> &'static str {
        match self {
            NotTls::RecordType => "record_type",
            NotTls::RecordVersion => "record_version",
            NotTls::SslV2 => "sslv2",
        }
    }
}

/// How a TLS-looking connection breaks the ClientHello format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// A later record is empty, longer than 2^14 bytes, of another type,
    /// or not version 3.x; or the first one is empty or too long.
    Record,
    /// The first handshake message is not a ClientHello.
    NotClientHello,
    /// A length field disagrees with what encloses it.
    Length,
    /// The `server_name` extension's structure is broken.
    ServerName,
    /// The host name is not a valid name (see [`host`]).
    HostName,
}

impl Malformed {
    pub const ALL: [Malformed; 5] = [
        Malformed::Record,
        Malformed::NotClientHello,
        Malformed::Length,
        Malformed::ServerName,
        Malformed::HostName,
    ];

    /// A stable snake_case label.
    pub fn label(&self) -> &'static str {
        match self {
            Malformed::Record => "record",
            Malformed::NotClientHello => "not_client_hello",
            Malformed::Length => "length",
            Malformed::ServerName => "server_name",
            Malformed::HostName => "host_name",
        }
    }
}

/// Look at the first bytes of a connection (all of them so far, from the
/// first). Never panics, never allocates, never reads past
/// [`MAX_HELLO_LEN`]; the verdict on a prefix that decides is the verdict
/// on every longer one.
pub fn parse(wire: &[u8]) -> Parse {
    hello::parse(wire)
}

#[cfg(test)]
mod tests;
