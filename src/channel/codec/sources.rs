//! The source address lists of a worker config frame: after the backend
//! entries, a count byte, then each list as a length byte and its
//! addresses. They are written only when some entry names a list (its
//! `HAS_SOURCE` flag and index), so a frame without sources ends where
//! the entries do, as before the lists existed, and no prefix of a frame
//! with them decodes (an entry's index would point past the lists).
//!
//! Then, only when some entry names a service (its `HAS_SERVICE` flag and
//! index), the services' settings: a u16 count, then each service's
//! connect, idle and first-byte timeouts (zero: off). The source lists
//! are then written even when empty (a count of 0), so the settings are
//! never taken for them.

use super::{FrameError, Reader, put_ip};
use crate::channel::MAX_SOURCES;
use crate::channel::{BackendEntry, MAX_SERVICES, ServiceConns, WorkerConfig};

fn any_service(cfg: &WorkerConfig) -> bool {
    cfg.backends.iter().any(|b| b.service.is_some())
}

pub(super) fn put(out: &mut Vec<u8>, cfg: &WorkerConfig) -> Result<(), FrameError> {
    if cfg.backends.iter().all(|b| b.source.is_none()) && !any_service(cfg) {
        return Ok(());
    }
    let n = u8::try_from(cfg.sources.len()).map_err(|_| FrameError::Invalid {
        what: "source list count",
        value: cfg.sources.len() as u64,
    })?;
    out.push(n);
    for list in &cfg.sources {
        if list.is_empty() || list.len() > MAX_SOURCES {
            return Err(FrameError::Invalid {
                what: "source list length",
                value: list.len() as u64,
            });
        }
        out.push(list.len() as u8);
        for &ip in list {
            put_ip(out, ip);
        }
    }
    Ok(())
}

/// The lists, if any follow, checked against the indices `backends` name.
pub(super) fn read(
    r: &mut Reader<'_>,
    backends: &[BackendEntry],
) -> Result<Vec<Vec<std::net::IpAddr>>, FrameError> {
    let mut sources = Vec::new();
    if r.remaining() > 0 {
        let n = r.u8("source list count")?;
        for _ in 0..n {
            let len = usize::from(r.u8("source list length")?);
            if len == 0 || len > MAX_SOURCES {
                return Err(FrameError::Invalid {
                    what: "source list length",
                    value: len as u64,
                });
            }
            let mut list = Vec::with_capacity(len);
            for _ in 0..len {
                list.push(r.ip()?);
            }
            sources.push(list);
        }
    }
    if let Some(i) = backends
        .iter()
        .filter_map(|b| b.source)
        .find(|&i| usize::from(i) >= sources.len())
    {
        return Err(FrameError::Invalid {
            what: "source list index",
            value: i.into(),
        });
    }
    Ok(sources)
}

/// The services' settings, when some entry names one.
pub(super) fn put_services(out: &mut Vec<u8>, cfg: &WorkerConfig) -> Result<(), FrameError> {
    if !any_service(cfg) {
        return Ok(());
    }
    if cfg.services.len() > MAX_SERVICES {
        return Err(FrameError::Invalid {
            what: "service count",
            value: cfg.services.len() as u64,
        });
    }
    out.extend_from_slice(&(cfg.services.len() as u16).to_le_bytes());
    for s in &cfg.services {
        super::put_duration(out, s.connect_timeout);
        super::put_duration(out, s.idle_timeout);
        super::put_duration(out, s.first_byte_timeout.unwrap_or_default());
    }
    Ok(())
}

/// The services' settings, if they follow, checked against the indices
/// `backends` name.
pub(super) fn read_services(
    r: &mut Reader<'_>,
    backends: &[BackendEntry],
) -> Result<Vec<ServiceConns>, FrameError> {
    let mut services = Vec::new();
    if r.remaining() > 0 {
        let n = usize::from(r.u16("service count")?);
        if n > MAX_SERVICES {
            return Err(FrameError::Invalid {
                what: "service count",
                value: n as u64,
            });
        }
        for _ in 0..n {
            services.push(ServiceConns {
                connect_timeout: r.duration("service connect timeout")?,
                idle_timeout: r.duration("service idle timeout")?,
                first_byte_timeout: Some(r.duration("service first byte timeout")?)
                    .filter(|d| !d.is_zero()),
            });
        }
    }
    if let Some(i) = backends
        .iter()
        .filter_map(|b| b.service)
        .find(|&i| usize::from(i) >= services.len())
    {
        return Err(FrameError::Invalid {
            what: "service index",
            value: i.into(),
        });
    }
    Ok(services)
}
