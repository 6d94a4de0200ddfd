//! The primitives every frame is built from: writing fixed-width
//! little-endian fields, strings, paths, addresses and durations, and the
//! bounds-checked [`Reader`] that reads them back (a short frame is a
//! [`FrameError`], never a panic).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use super::FrameError;
use crate::channel::{MAX_BUILD_LEN, MAX_FRAME, MAX_PATH_LEN, VERSION};

/// A short string: one length byte, then UTF-8.
pub(super) fn put_str(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), FrameError> {
    let len = u8::try_from(s.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_BUILD_LEN)
        .ok_or(FrameError::Invalid {
            what,
            value: s.len() as u64,
        })?;
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// An absolute path without NUL bytes: a two-byte length, then the bytes.
pub(super) fn put_path(out: &mut Vec<u8>, path: &std::path::Path) -> Result<(), FrameError> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_PATH_LEN || bytes[0] != b'/' || bytes.contains(&0) {
        return Err(FrameError::Invalid {
            what: "access log path",
            value: bytes.len() as u64,
        });
    }
    put_count(out, bytes.len(), "access log path length")?;
    out.extend_from_slice(bytes);
    Ok(())
}

pub(super) fn put_count(out: &mut Vec<u8>, n: usize, what: &'static str) -> Result<(), FrameError> {
    let n16 = u16::try_from(n).map_err(|_| FrameError::Invalid {
        what,
        value: n as u64,
    })?;
    out.extend_from_slice(&n16.to_le_bytes());
    Ok(())
}

pub(super) fn put_duration(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    out.extend_from_slice(&micros.to_le_bytes());
}

pub(super) fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
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

pub(super) fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    put_ip(out, addr.ip());
    out.extend_from_slice(&addr.port().to_le_bytes());
    let scope = match addr {
        SocketAddr::V6(v6) => v6.scope_id(),
        SocketAddr::V4(_) => 0,
    };
    out.extend_from_slice(&scope.to_le_bytes());
}

pub(super) fn check_size(out: &[u8]) -> Result<(), FrameError> {
    if out.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(out.len()));
    }
    Ok(())
}

pub(super) fn open(frame: &[u8]) -> Result<(u8, Reader<'_>), FrameError> {
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
pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
}

impl Reader<'_> {
    pub(super) fn take<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], FrameError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(FrameError::Truncated(what))?;
        self.buf = rest;
        Ok(*head)
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take::<1>(what)?[0])
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        self.take(what).map(u16::from_le_bytes)
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        self.take(what).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        self.take(what).map(u64::from_le_bytes)
    }

    pub(super) fn flag(&mut self, what: &'static str) -> Result<bool, FrameError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(FrameError::Invalid {
                what,
                value: v.into(),
            }),
        }
    }

    pub(super) fn duration(&mut self, what: &'static str) -> Result<Duration, FrameError> {
        self.u64(what).map(Duration::from_micros)
    }

    pub(super) fn ip(&mut self) -> Result<IpAddr, FrameError> {
        match self.u8("address family")? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.take::<4>("IPv4 address")?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.take::<16>("IPv6 address")?))),
            v => Err(FrameError::Invalid {
                what: "address family",
                value: v.into(),
            }),
        }
    }

    pub(super) fn addr(&mut self) -> Result<SocketAddr, FrameError> {
        let ip = self.ip()?;
        let port = self.u16("port")?;
        let scope = self.u32("scope id")?;
        Ok(match ip {
            IpAddr::V4(v4) => SocketAddr::new(v4.into(), port),
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope)),
        })
    }

    pub(super) fn string(&mut self, what: &'static str) -> Result<String, FrameError> {
        let n = usize::from(self.u8(what)?);
        if n > MAX_BUILD_LEN {
            return Err(FrameError::Invalid {
                what,
                value: n as u64,
            });
        }
        let bytes = self
            .buf
            .get(..n)
            .ok_or(FrameError::Truncated(what))?
            .to_vec();
        self.buf = &self.buf[n..];
        String::from_utf8(bytes).map_err(|_| FrameError::Invalid { what, value: 0 })
    }

    /// A path as `put_path` writes it.
    pub(super) fn path(&mut self) -> Result<std::path::PathBuf, FrameError> {
        use std::os::unix::ffi::OsStrExt;
        let what = "access log path";
        let n = usize::from(self.u16("access log path length")?);
        let bytes = self.buf.get(..n).ok_or(FrameError::Truncated(what))?;
        if n == 0 || n > MAX_PATH_LEN || bytes[0] != b'/' || bytes.contains(&0) {
            return Err(FrameError::Invalid {
                what,
                value: n as u64,
            });
        }
        self.buf = &self.buf[n..];
        Ok(std::ffi::OsStr::from_bytes(bytes).into())
    }

    pub(super) fn finish(self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Trailing(self.buf.len()))
        }
    }
}
