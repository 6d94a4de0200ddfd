//! Byte layout of channel frames. Little-endian, fixed-width fields, every
//! read bounds-checked: a malformed frame is a [`FrameError`], never a panic.

use std::time::Duration;

use super::Splice;
use super::{
    AccessLog, BackendEntry, Down, Event, FailReason, Fallbacks, Handoff, MAX_FALLBACKS, MAX_FDS,
    MAX_FRAME, Up, VERSION, WorkerConfig,
};
use crate::proxy_protocol::Version;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unsupported protocol version {0} (expected {VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0:#04x}")]
    Kind(u8),
    #[error("frame truncated while reading {0}")]
    Truncated(&'static str),
    #[error("{0} trailing bytes after the frame")]
    Trailing(usize),
    #[error("invalid {what}: {value}")]
    Invalid { what: &'static str, value: u64 },
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
}

const DOWN_CONFIG: u8 = 0x01;
const DOWN_CONNS: u8 = 0x02;
const DOWN_DRAIN: u8 = 0x03;
const DOWN_HELLO: u8 = 0x04;
const DOWN_ACCESS_LOG: u8 = 0x05;
const UP_READY: u8 = 0x81;
const UP_EVENTS: u8 = 0x82;
const UP_RETURNED: u8 = 0x83;

/// In a backend entry's flags byte: may be used as a fallback.
const ROUTABLE: u8 = 0x01;
/// In a backend entry's flags byte: the `send-proxy` version, shifted
/// (0 none, 1 v1, 2 v2). A table without `send-proxy` encodes as before
/// the field existed.
const SEND_PROXY_SHIFT: u8 = 1;
/// In a backend entry's flags byte: the index of its source list (u16)
/// follows. A table without sources encodes as before the field existed;
/// the lists themselves follow the last entry.
const HAS_SOURCE: u8 = 0x08;
/// In a backend entry's flags byte: the index of its service's settings
/// (u16) follows (after the source index). A table of one service encodes
/// as before the field existed; the settings follow the source lists.
const HAS_SERVICE: u8 = 0x10;
/// In a backend entry's flags byte: it has a connection limit. A table
/// without limits encodes as before the field existed.
const LIMITED: u8 = 0x20;
/// In a backend entry's flags byte: its service counts its connections
/// (limits of its own). A table without such services encodes as before
/// the field existed.
const COUNTED: u8 = 0x40;
/// In a backend entry's flags byte: every bit that has a meaning.
const KNOWN_FLAGS: u8 =
    ROUTABLE | (0x03 << SEND_PROXY_SHIFT) | HAS_SOURCE | HAS_SERVICE | LIMITED | COUNTED;
/// In a handoff's fallback count byte: a destination address follows the
/// client's. A handoff without one encodes as before the field existed.
const HAS_DESTINATION: u8 = 0x80;

mod sources;
mod wire;

use wire::{
    Reader, check_size, open, put_addr, put_count, put_duration, put_ip, put_path, put_str,
};

const EV_FAILED: u8 = 2;
const EV_CLOSED: u8 = 3;
const EV_DRAINING: u8 = 6;
const EV_WAKE: u8 = 7;
const EV_RELEASED: u8 = 8;
const EV_ENDED: u8 = 9;

pub(super) fn is_config(frame: &[u8]) -> bool {
    frame.len() >= 2 && frame[0] == VERSION && frame[1] == DOWN_CONFIG
}

pub(super) fn encode_down(msg: &Down, out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.clear();
    out.push(VERSION);
    match msg {
        Down::Hello { cell, build } => {
            out.push(DOWN_HELLO);
            out.extend_from_slice(&cell.to_le_bytes());
            put_str(out, build, "build id")?;
        }
        Down::Config(cfg) => {
            out.push(DOWN_CONFIG);
            out.extend_from_slice(&cfg.seq.to_le_bytes());
            put_duration(out, cfg.connect_timeout);
            put_duration(out, cfg.idle_timeout);
            put_duration(out, cfg.drain_timeout);
            // Zero: off.
            put_duration(out, cfg.first_byte_timeout.unwrap_or(Duration::ZERO));
            out.push(match cfg.splice {
                Splice::Off => 0,
                Splice::On => 1,
                Splice::Auto => 2,
            });
            out.push(u8::from(cfg.report_closes));
            put_count(out, cfg.backends.len(), "backend count")?;
            for b in &cfg.backends {
                out.extend_from_slice(&b.id.to_le_bytes());
                out.extend_from_slice(&b.column.to_le_bytes());
                put_addr(out, b.addr);
                let send_proxy = match b.send_proxy {
                    None => 0,
                    Some(Version::V1) => 1,
                    Some(Version::V2) => 2,
                };
                let has_source = if b.source.is_some() { HAS_SOURCE } else { 0 };
                let has_service = if b.service.is_some() { HAS_SERVICE } else { 0 };
                out.push(
                    (u8::from(b.routable) * ROUTABLE)
                        | (send_proxy << SEND_PROXY_SHIFT)
                        | has_source
                        | has_service
                        | (u8::from(b.limited) * LIMITED)
                        | (u8::from(b.counted) * COUNTED),
                );
                if let Some(i) = b.source {
                    out.extend_from_slice(&i.to_le_bytes());
                }
                if let Some(i) = b.service {
                    out.extend_from_slice(&i.to_le_bytes());
                }
            }
            sources::put(out, cfg)?;
            sources::put_services(out, cfg)?;
        }
        Down::Conns(conns) => return encode_conns(conns, out),
        Down::Drain { timeout } => {
            out.push(DOWN_DRAIN);
            put_duration(out, *timeout);
        }
        Down::AccessLog { target, json } => {
            out.push(DOWN_ACCESS_LOG);
            out.push(u8::from(*json));
            match target {
                AccessLog::Off => out.push(0),
                AccessLog::Stderr => out.push(1),
                AccessLog::File(path) => {
                    out.push(2);
                    put_path(out, path)?;
                }
            }
        }
    }
    check_size(out)
}

/// Encode a `Down::Conns` frame straight from a slice (the front's hot path).
pub(super) fn encode_conns(conns: &[Handoff], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if conns.len() > MAX_FDS {
        return Err(FrameError::Invalid {
            what: "handoff count",
            value: conns.len() as u64,
        });
    }
    out.clear();
    out.push(VERSION);
    out.push(DOWN_CONNS);
    put_count(out, conns.len(), "handoff count")?;
    for h in conns {
        put_handoff(out, h);
    }
    Ok(())
}

/// One handoff (in a `Down::Conns` frame, or an `Up::Returned`).
fn put_handoff(out: &mut Vec<u8>, h: &Handoff) {
    out.extend_from_slice(&h.conn.to_le_bytes());
    out.extend_from_slice(&h.backend.to_le_bytes());
    let fallbacks = h.fallbacks.as_slice();
    let has_destination = if h.destination.is_some() {
        HAS_DESTINATION
    } else {
        0
    };
    out.push(fallbacks.len() as u8 | has_destination);
    for id in fallbacks {
        out.extend_from_slice(&id.to_le_bytes());
    }
    put_addr(out, h.client);
    if let Some(d) = h.destination {
        put_addr(out, d);
    }
}

pub(super) fn decode_down(frame: &[u8]) -> Result<Down, FrameError> {
    let (kind, mut r) = open(frame)?;
    let msg = match kind {
        DOWN_HELLO => Down::Hello {
            cell: r.u32("statistics cell")?,
            build: r.string("build id")?,
        },
        DOWN_CONFIG => {
            let seq = r.u64("config sequence")?;
            let connect_timeout = r.duration("connect timeout")?;
            let idle_timeout = r.duration("idle timeout")?;
            let drain_timeout = r.duration("drain timeout")?;
            let first_byte_timeout =
                Some(r.duration("first byte timeout")?).filter(|d| !d.is_zero());
            let splice = match r.u8("splice mode")? {
                0 => Splice::Off,
                1 => Splice::On,
                2 => Splice::Auto,
                v => {
                    return Err(FrameError::Invalid {
                        what: "splice mode",
                        value: v.into(),
                    });
                }
            };
            let report_closes = r.flag("report-closes flag")?;
            let n = r.u16("backend count")? as usize;
            let mut backends = Vec::with_capacity(n.min(r.remaining() / 8));
            for _ in 0..n {
                let id = r.u32("backend id")?;
                let column = r.u16("backend column")?;
                let addr = r.addr()?;
                let flags = r.u8("backend flags")?;
                let bad_flags = FrameError::Invalid {
                    what: "backend flags",
                    value: flags.into(),
                };
                if flags & !KNOWN_FLAGS != 0 {
                    return Err(bad_flags);
                }
                let send_proxy = match (flags >> SEND_PROXY_SHIFT) & 0x03 {
                    0 => None,
                    1 => Some(Version::V1),
                    2 => Some(Version::V2),
                    _ => return Err(bad_flags),
                };
                let source = if flags & HAS_SOURCE != 0 {
                    Some(r.u16("source list index")?)
                } else {
                    None
                };
                let service = if flags & HAS_SERVICE != 0 {
                    Some(r.u16("service index")?)
                } else {
                    None
                };
                backends.push(BackendEntry {
                    id,
                    column,
                    addr,
                    routable: flags & ROUTABLE != 0,
                    send_proxy,
                    source,
                    service,
                    limited: flags & LIMITED != 0,
                    counted: flags & COUNTED != 0,
                });
            }
            let sources = sources::read(&mut r, &backends)?;
            let services = sources::read_services(&mut r, &backends)?;
            Down::Config(WorkerConfig {
                seq,
                connect_timeout,
                idle_timeout,
                drain_timeout,
                first_byte_timeout,
                splice,
                report_closes,
                backends,
                sources,
                services,
            })
        }
        DOWN_CONNS => {
            let n = r.u16("handoff count")? as usize;
            if n > MAX_FDS {
                return Err(FrameError::Invalid {
                    what: "handoff count",
                    value: n as u64,
                });
            }
            let mut conns = Vec::with_capacity(n);
            for _ in 0..n {
                conns.push(r.handoff()?);
            }
            Down::Conns(conns)
        }
        DOWN_DRAIN => Down::Drain {
            timeout: r.duration("drain timeout")?,
        },
        DOWN_ACCESS_LOG => {
            let json = r.flag("access log format")?;
            let target = match r.u8("access log target")? {
                0 => AccessLog::Off,
                1 => AccessLog::Stderr,
                2 => AccessLog::File(r.path()?),
                v => {
                    return Err(FrameError::Invalid {
                        what: "access log target",
                        value: v.into(),
                    });
                }
            };
            Down::AccessLog { target, json }
        }
        other => return Err(FrameError::Kind(other)),
    };
    r.finish()?;
    Ok(msg)
}

pub(super) fn encode_up(msg: &Up, out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.clear();
    out.push(VERSION);
    match msg {
        Up::Ready { pid, build } => {
            out.push(UP_READY);
            out.extend_from_slice(&pid.to_le_bytes());
            put_str(out, build, "build id")?;
        }
        Up::Events(events) => {
            out.push(UP_EVENTS);
            put_count(out, events.len(), "event count")?;
            for ev in events {
                put_event(out, ev);
            }
        }
        Up::Returned(h) => {
            out.push(UP_RETURNED);
            put_handoff(out, h);
        }
    }
    check_size(out)
}

pub(super) fn decode_up(frame: &[u8]) -> Result<Up, FrameError> {
    let (kind, mut r) = open(frame)?;
    let msg = match kind {
        UP_READY => Up::Ready {
            pid: r.u32("pid")?,
            build: r.string("build id")?,
        },
        UP_EVENTS => {
            let n = r.u16("event count")? as usize;
            let mut events = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                events.push(r.event()?);
            }
            Up::Events(events)
        }
        UP_RETURNED => Up::Returned(r.handoff()?),
        other => return Err(FrameError::Kind(other)),
    };
    r.finish()?;
    Ok(msg)
}

fn put_event(out: &mut Vec<u8>, ev: &Event) {
    match *ev {
        Event::ConnectFailed { backend, reason } => {
            out.push(EV_FAILED);
            out.extend_from_slice(&backend.to_le_bytes());
            out.push(match reason {
                FailReason::Refused => 0,
                FailReason::Timeout => 1,
                FailReason::Other => 2,
            });
        }
        Event::Closed { client } => {
            out.push(EV_CLOSED);
            put_ip(out, client);
        }
        Event::Draining => out.push(EV_DRAINING),
        Event::Wake => out.push(EV_WAKE),
        Event::Released { backend } => {
            out.push(EV_RELEASED);
            out.extend_from_slice(&backend.to_le_bytes());
        }
        Event::Ended { conn } => {
            out.push(EV_ENDED);
            out.extend_from_slice(&conn.to_le_bytes());
        }
    }
}

impl Reader<'_> {
    /// One handoff as `put_handoff` writes it.
    fn handoff(&mut self) -> Result<Handoff, FrameError> {
        let conn = self.u64("connection id")?;
        let backend = self.u32("backend id")?;
        let count = self.u8("fallback count")?;
        let has_destination = count & HAS_DESTINATION != 0;
        let n = usize::from(count & !HAS_DESTINATION);
        if n > MAX_FALLBACKS {
            return Err(FrameError::Invalid {
                what: "fallback count",
                value: n as u64,
            });
        }
        let mut ids = [0u32; MAX_FALLBACKS];
        for id in ids.iter_mut().take(n) {
            *id = self.u32("fallback backend id")?;
        }
        let client = self.addr()?;
        let destination = if has_destination {
            Some(self.addr()?)
        } else {
            None
        };
        Ok(Handoff {
            conn,
            backend,
            fallbacks: Fallbacks::new(&ids[..n]),
            client,
            destination,
        })
    }

    fn event(&mut self) -> Result<Event, FrameError> {
        match self.u8("event kind")? {
            EV_FAILED => {
                let backend = self.u32("backend id")?;
                let reason = match self.u8("failure reason")? {
                    0 => FailReason::Refused,
                    1 => FailReason::Timeout,
                    2 => FailReason::Other,
                    v => {
                        return Err(FrameError::Invalid {
                            what: "failure reason",
                            value: v.into(),
                        });
                    }
                };
                Ok(Event::ConnectFailed { backend, reason })
            }
            EV_CLOSED => Ok(Event::Closed { client: self.ip()? }),
            EV_DRAINING => Ok(Event::Draining),
            EV_WAKE => Ok(Event::Wake),
            EV_RELEASED => Ok(Event::Released {
                backend: self.u32("backend id")?,
            }),
            EV_ENDED => Ok(Event::Ended {
                conn: self.u64("connection id")?,
            }),
            v => Err(FrameError::Invalid {
                what: "event kind",
                value: v.into(),
            }),
        }
    }
}
