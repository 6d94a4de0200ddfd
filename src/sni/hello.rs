//! The walk through a ClientHello: TLS records (RFC 8446 §5.1, RFC 5246
//! §6.2) carrying one handshake message (§4.1.2 / §7.4.1.2) whose
//! `server_name` extension (RFC 6066 §3) is the answer.
//!
//! The walk reads the fields in wire order through [`Records`], a cursor
//! over the handshake bytes that steps over record headers wherever they
//! fall (a header may even split a length field), and stops at the first
//! field that decides: an error, the host name, or the end of the
//! extensions. Any step that lacks bytes stops with the exact wire length
//! at which the walk can take its next step ([`Parse::NeedMore`]), which
//! is also the first length at which the verdict can change.

use super::{Hello, HostName, MAX_HELLO_LEN, Malformed, NotTls, Parse};

/// Why the walk stopped before a name: it needs more bytes, or it has
/// decided without one. (Small, unlike [`Parse`], which holds a name.)
#[derive(Clone, Copy)]
enum Stop {
    NeedMore(usize),
    NoSni,
    NotTls(NotTls),
    Malformed(Malformed),
    TooLarge,
}

impl From<Stop> for Parse {
    fn from(stop: Stop) -> Parse {
        Parse::Done(match stop {
            Stop::NeedMore(n) => return Parse::NeedMore(n),
            Stop::NoSni => Hello::NoSni,
            Stop::NotTls(why) => Hello::NotTls(why),
            Stop::Malformed(why) => Hello::Malformed(why),
            Stop::TooLarge => Hello::TooLarge,
        })
    }
}

type Step<T> = Result<T, Stop>;

/// The TLS record content type of handshake messages.
const HANDSHAKE: u8 = 22;
/// The handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The largest record payload a TLS plaintext record may carry (2^14).
const MAX_RECORD: usize = 1 << 14;
/// The `server_name` extension's type, and its `host_name` entry's.
const SERVER_NAME: usize = 0;
const HOST_NAME: u8 = 0;

/// Stop until the wire holds `n` bytes; past the cap, the hello is too
/// large.
fn need(n: usize) -> Stop {
    if n > MAX_HELLO_LEN {
        Stop::TooLarge
    } else {
        Stop::NeedMore(n)
    }
}

pub(super) fn parse(wire: &[u8]) -> Parse {
    // What lies past the cap is never looked at: a field there is missing,
    // whatever the caller peeked.
    let wire = &wire[..wire.len().min(MAX_HELLO_LEN)];
    match walk(wire) {
        Ok(host) => Parse::Done(Hello::Found(host)),
        Err(stop) => stop.into(),
    }
}

fn walk(wire: &[u8]) -> Step<HostName> {
    let mut r = Records::start(wire)?;
    if r.byte()? != CLIENT_HELLO {
        return Err(Stop::Malformed(Malformed::NotClientHello));
    }
    let len = r.u24()?;
    // Where the message would end if no more record header came: already
    // past the cap, it can never fit.
    if r.pos.saturating_add(len) > MAX_HELLO_LEN {
        return Err(Stop::TooLarge);
    }
    let mut body = Limited { r, left: len };
    body.skip(2 + 32)?; // legacy_version, random
    let session_id = body.u8()?;
    if session_id > 32 {
        return Err(Stop::Malformed(Malformed::Length));
    }
    body.skip(session_id)?;
    let suites = body.u16()?;
    if suites < 2 || suites % 2 != 0 {
        return Err(Stop::Malformed(Malformed::Length));
    }
    body.skip(suites)?;
    let compressions = body.u8()?;
    if compressions < 1 {
        return Err(Stop::Malformed(Malformed::Length));
    }
    body.skip(compressions)?;
    if body.left == 0 {
        // A TLS 1.0-1.2 hello without extensions.
        return Err(Stop::NoSni);
    }
    let ext_len = body.u16()?;
    if ext_len != body.left {
        return Err(Stop::Malformed(Malformed::Length));
    }
    let mut exts = body;
    while exts.left > 0 {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        if len > exts.left {
            return Err(Stop::Malformed(Malformed::Length));
        }
        if kind == SERVER_NAME {
            return server_name(Limited {
                r: exts.r,
                left: len,
            });
        }
        exts.skip(len)?;
    }
    Err(Stop::NoSni)
}

/// The `server_name` extension's data: a list of (type, name) entries.
/// The first `host_name` entry decides; entries of other types (none is
/// defined) are stepped over, assuming the 16-bit length every entry of
/// RFC 6066's structure has.
fn server_name(mut ext: Limited) -> Step<HostName> {
    const BAD: Stop = Stop::Malformed(Malformed::ServerName);
    if ext.left < 2 {
        return Err(BAD);
    }
    let list = ext.r.u16()?;
    ext.left -= 2;
    if list != ext.left || list == 0 {
        return Err(BAD);
    }
    while ext.left > 0 {
        if ext.left < 3 {
            return Err(BAD);
        }
        let kind = ext.r.byte()?;
        let len = ext.r.u16()?;
        ext.left -= 3;
        if len > ext.left {
            return Err(BAD);
        }
        if kind != HOST_NAME {
            ext.skip(len)?;
            continue;
        }
        // HostName is opaque<1..2^16-1>.
        if len == 0 {
            return Err(BAD);
        }
        // A name, its trailing dot included, fits this buffer or is
        // invalid whatever its bytes.
        let mut name = [0u8; super::MAX_NAME_LEN + 1];
        let Some(name) = name.get_mut(..len) else {
            return Err(Stop::Malformed(Malformed::HostName));
        };
        for b in name.iter_mut() {
            *b = ext.r.byte()?;
        }
        return match HostName::new(name) {
            Ok(host) => Ok(host),
            Err(_) => Err(Stop::Malformed(Malformed::HostName)),
        };
    }
    Err(Stop::NoSni)
}

/// A cursor over the handshake bytes of a run of TLS records.
#[derive(Clone, Copy)]
struct Records<'a> {
    wire: &'a [u8],
    /// Wire offset of the next handshake byte (inside the current record,
    /// or equal to `end` when that record is used up).
    pos: usize,
    /// Wire offset where the current record's payload ends.
    end: usize,
}

impl<'a> Records<'a> {
    /// Check the first record's header. Its first byte alone tells a TLS
    /// handshake from anything else.
    fn start(wire: &'a [u8]) -> Step<Records<'a>> {
        let Some(&first) = wire.first() else {
            return Err(need(1));
        };
        if first != HANDSHAKE {
            return Err(not_handshake(wire));
        }
        let mut r = Records {
            wire,
            pos: 0,
            end: 0,
        };
        r.enter_record()?;
        Ok(r)
    }

    /// Read the record header at `end` (the previous record is used up)
    /// once all 5 of its bytes are here. A bad version in the first header
    /// means the connection is not TLS; in a later one, a broken hello.
    fn enter_record(&mut self) -> Step<()> {
        let at = self.end;
        let Some(h) = self.wire.get(at..at + 5) else {
            return Err(need(at + 5));
        };
        if h[0] != HANDSHAKE {
            // Another record type inside the hello (RFC 8446 §5.1 forbids
            // interleaving).
            return Err(Stop::Malformed(Malformed::Record));
        }
        if h[1] != 3 {
            return Err(if at == 0 {
                Stop::NotTls(NotTls::RecordVersion)
            } else {
                Stop::Malformed(Malformed::Record)
            });
        }
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        // Handshake records are never empty (RFC 8446 §5.1, RFC 5246
        // §6.2.1) and never above 2^14 bytes.
        if len == 0 || len > MAX_RECORD {
            return Err(Stop::Malformed(Malformed::Record));
        }
        self.pos = at + 5;
        self.end = self.pos + len;
        Ok(())
    }

    fn byte(&mut self) -> Step<u8> {
        if self.pos == self.end {
            self.enter_record()?;
        }
        let Some(&b) = self.wire.get(self.pos) else {
            return Err(need(self.pos + 1));
        };
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Step<usize> {
        Ok((usize::from(self.byte()?) << 8) | usize::from(self.byte()?))
    }

    fn u24(&mut self) -> Step<usize> {
        Ok((usize::from(self.byte()?) << 16) | self.u16()?)
    }

    /// Step over `n` handshake bytes, which must all be here.
    fn skip(&mut self, mut n: usize) -> Step<()> {
        while n > 0 {
            if self.pos == self.end {
                self.enter_record()?;
            }
            let take = n.min(self.end - self.pos);
            if self.pos + take > self.wire.len() {
                return Err(need(self.pos + take));
            }
            self.pos += take;
            n -= take;
        }
        Ok(())
    }
}

/// A [`Records`] cursor that may read `left` more bytes of an enclosing
/// length-prefixed structure (the message, the extension block, an
/// extension): reading past it is a length error.
struct Limited<'a> {
    r: Records<'a>,
    left: usize,
}

impl Limited<'_> {
    fn take(&mut self, n: usize) -> Step<()> {
        if n > self.left {
            return Err(Stop::Malformed(Malformed::Length));
        }
        self.left -= n;
        Ok(())
    }

    fn u8(&mut self) -> Step<usize> {
        self.take(1)?;
        Ok(usize::from(self.r.byte()?))
    }

    fn u16(&mut self) -> Step<usize> {
        self.take(2)?;
        self.r.u16()
    }

    fn skip(&mut self, n: usize) -> Step<()> {
        self.take(n)?;
        self.r.skip(n)
    }
}

/// The first byte is not a TLS handshake record's. An SSLv2-format
/// ClientHello (a 2-byte header with the top bit set, message type 1,
/// then the version) asking for SSL 3.0 or TLS is a TLS client that can
/// carry no extension: no SNI. Asking for SSL 2.0 itself, or anything
/// else: not TLS.
fn not_handshake(wire: &[u8]) -> Stop {
    if wire[0] & 0x80 == 0 {
        return Stop::NotTls(NotTls::RecordType);
    }
    let Some(h) = wire.get(..5) else {
        return need(5);
    };
    match (h[2], h[3], h[4]) {
        (CLIENT_HELLO, 3, _) => Stop::NoSni,
        (CLIENT_HELLO, 0, 2) => Stop::NotTls(NotTls::SslV2),
        _ => Stop::NotTls(NotTls::RecordType),
    }
}
