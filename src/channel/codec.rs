//! Byte layout of channel frames. Little-endian, fixed-width fields, every
//! read bounds-checked: a malformed frame is a [`FrameError`], never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use super::Splice;
use super::{
    BackendEntry, Down, Event, FailReason, Handoff, MAX_FDS, MAX_FRAME, Up, VERSION, WorkerConfig,
};

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
const UP_READY: u8 = 0x81;
const UP_EVENTS: u8 = 0x82;

const EV_OPENED: u8 = 1;
const EV_FAILED: u8 = 2;
const EV_CLOSED: u8 = 3;
const EV_BYTES: u8 = 4;
const EV_RECEIVED: u8 = 5;
const EV_FIRST_BYTE: u8 = 6;

pub(super) fn encode_down(msg: &Down, out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.clear();
    out.push(VERSION);
    match msg {
        Down::Config(cfg) => {
            out.push(DOWN_CONFIG);
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
            put_count(out, cfg.backends.len(), "backend count")?;
            for b in &cfg.backends {
                out.extend_from_slice(&b.id.to_le_bytes());
                put_addr(out, b.addr);
                out.push(u8::from(b.routable));
            }
        }
        Down::Conns(conns) => return encode_conns(conns, out),
        Down::Drain { timeout } => {
            out.push(DOWN_DRAIN);
            put_duration(out, *timeout);
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
        out.extend_from_slice(&h.conn.to_le_bytes());
        out.extend_from_slice(&h.backend.to_le_bytes());
        put_addr(out, h.client);
    }
    Ok(())
}

pub(super) fn decode_down(frame: &[u8]) -> Result<Down, FrameError> {
    let (kind, mut r) = open(frame)?;
    let msg = match kind {
        DOWN_CONFIG => {
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
            let n = r.u16("backend count")? as usize;
            let mut backends = Vec::with_capacity(n.min(r.remaining() / 8));
            for _ in 0..n {
                let id = r.u32("backend id")?;
                let addr = r.addr()?;
                let routable = r.flag("routable flag")?;
                backends.push(BackendEntry { id, addr, routable });
            }
            Down::Config(WorkerConfig {
                connect_timeout,
                idle_timeout,
                drain_timeout,
                first_byte_timeout,
                splice,
                backends,
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
                let conn = r.u64("connection id")?;
                let backend = r.u32("backend id")?;
                let client = r.addr()?;
                conns.push(Handoff {
                    conn,
                    backend,
                    client,
                });
            }
            Down::Conns(conns)
        }
        DOWN_DRAIN => Down::Drain {
            timeout: r.duration("drain timeout")?,
        },
        other => return Err(FrameError::Kind(other)),
    };
    r.finish()?;
    Ok(msg)
}

pub(super) fn encode_up(msg: &Up, out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.clear();
    out.push(VERSION);
    match msg {
        Up::Ready { pid } => {
            out.push(UP_READY);
            out.extend_from_slice(&pid.to_le_bytes());
        }
        Up::Events(events) => {
            out.push(UP_EVENTS);
            put_count(out, events.len(), "event count")?;
            for ev in events {
                put_event(out, ev);
            }
        }
    }
    check_size(out)
}

pub(super) fn decode_up(frame: &[u8]) -> Result<Up, FrameError> {
    let (kind, mut r) = open(frame)?;
    let msg = match kind {
        UP_READY => Up::Ready { pid: r.u32("pid")? },
        UP_EVENTS => {
            let n = r.u16("event count")? as usize;
            let mut events = Vec::with_capacity(n.min(r.remaining() / 6));
            for _ in 0..n {
                events.push(r.event()?);
            }
            Up::Events(events)
        }
        other => return Err(FrameError::Kind(other)),
    };
    r.finish()?;
    Ok(msg)
}

fn put_event(out: &mut Vec<u8>, ev: &Event) {
    match *ev {
        Event::Opened {
            planned,
            backend,
            connect_time,
        } => {
            out.push(EV_OPENED);
            out.extend_from_slice(&planned.to_le_bytes());
            out.extend_from_slice(&backend.to_le_bytes());
            let micros = u32::try_from(connect_time.as_micros()).unwrap_or(u32::MAX);
            out.extend_from_slice(&micros.to_le_bytes());
        }
        Event::ConnectFailed { backend, reason } => {
            out.push(EV_FAILED);
            out.extend_from_slice(&backend.to_le_bytes());
            out.push(match reason {
                FailReason::Refused => 0,
                FailReason::Timeout => 1,
                FailReason::Other => 2,
            });
        }
        Event::Closed {
            backend,
            opened,
            client,
            duration,
        } => {
            out.push(EV_CLOSED);
            out.extend_from_slice(&backend.to_le_bytes());
            out.push(u8::from(opened));
            put_ip(out, client);
            put_duration(out, duration);
        }
        Event::Bytes { backend, up, down } => {
            out.push(EV_BYTES);
            out.extend_from_slice(&backend.to_le_bytes());
            out.extend_from_slice(&up.to_le_bytes());
            out.extend_from_slice(&down.to_le_bytes());
        }
        Event::Received { count } => {
            out.push(EV_RECEIVED);
            out.extend_from_slice(&count.to_le_bytes());
        }
        Event::FirstByteTimeout { backend } => {
            out.push(EV_FIRST_BYTE);
            out.extend_from_slice(&backend.to_le_bytes());
        }
    }
}

fn put_count(out: &mut Vec<u8>, n: usize, what: &'static str) -> Result<(), FrameError> {
    let n16 = u16::try_from(n).map_err(|_| FrameError::Invalid {
        what,
        value: n as u64,
    })?;
    out.extend_from_slice(&n16.to_le_bytes());
    Ok(())
}

fn put_duration(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    out.extend_from_slice(&micros.to_le_bytes());
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    put_ip(out, addr.ip());
    out.extend_from_slice(&addr.port().to_le_bytes());
    let scope = match addr {
        SocketAddr::V6(v6) => v6.scope_id(),
        SocketAddr::V4(_) => 0,
    };
    out.extend_from_slice(&scope.to_le_bytes());
}

fn check_size(out: &[u8]) -> Result<(), FrameError> {
    if out.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(out.len()));
    }
    Ok(())
}

fn open(frame: &[u8]) -> Result<(u8, Reader<'_>), FrameError> {
    if frame.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(frame.len()));
    }
    let mut r = Reader { buf: frame };
    let version = r.u8("version").map_err(|_| FrameError::Empty)?;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let kind = r.u8("frame kind")?;
    Ok((kind, r))
}

/// A bounds-checked cursor over a frame.
struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(FrameError::Truncated(what))?;
        self.buf = rest;
        Ok(*head)
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        self.take(what).map(u16::from_le_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        self.take(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        self.take(what).map(u64::from_le_bytes)
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, FrameError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(FrameError::Invalid {
                what,
                value: v.into(),
            }),
        }
    }

    fn duration(&mut self, what: &'static str) -> Result<Duration, FrameError> {
        self.u64(what).map(Duration::from_micros)
    }

    fn ip(&mut self) -> Result<IpAddr, FrameError> {
        match self.u8("address family")? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.take::<4>("IPv4 address")?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.take::<16>("IPv6 address")?))),
            v => Err(FrameError::Invalid {
                what: "address family",
                value: v.into(),
            }),
        }
    }

    fn addr(&mut self) -> Result<SocketAddr, FrameError> {
        let ip = self.ip()?;
        let port = self.u16("port")?;
        let scope = self.u32("scope id")?;
        Ok(match ip {
            IpAddr::V4(v4) => SocketAddr::new(v4.into(), port),
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope)),
        })
    }

    fn event(&mut self) -> Result<Event, FrameError> {
        match self.u8("event kind")? {
            EV_OPENED => Ok(Event::Opened {
                planned: self.u32("planned backend")?,
                backend: self.u32("backend id")?,
                connect_time: Duration::from_micros(self.u32("connect time")?.into()),
            }),
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
            EV_CLOSED => Ok(Event::Closed {
                backend: self.u32("backend id")?,
                opened: self.flag("opened flag")?,
                client: self.ip()?,
                duration: self.duration("duration")?,
            }),
            EV_BYTES => Ok(Event::Bytes {
                backend: self.u32("backend id")?,
                up: self.u64("bytes up")?,
                down: self.u64("bytes down")?,
            }),
            EV_RECEIVED => Ok(Event::Received {
                count: self.u32("received count")?,
            }),
            EV_FIRST_BYTE => Ok(Event::FirstByteTimeout {
                backend: self.u32("backend id")?,
            }),
            v => Err(FrameError::Invalid {
                what: "event kind",
                value: v.into(),
            }),
        }
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Trailing(self.buf.len()))
        }
    }
}
