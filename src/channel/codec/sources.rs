//! The source address lists of a worker config frame: after the backend
//! entries, a count byte, then each list as a length byte and its
//! addresses. They are written only when some entry names a list (its
//! `HAS_SOURCE` flag and index), so a frame without sources ends where
//! the entries do, as before the lists existed, and no prefix of a frame
//! with them decodes (an entry's index would point past the lists).

use super::{FrameError, Reader, put_ip};
use crate::channel::MAX_SOURCES;
use crate::channel::{BackendEntry, WorkerConfig};

pub(super) fn put(out: &mut Vec<u8>, cfg: &WorkerConfig) -> Result<(), FrameError> {
    if cfg.backends.iter().all(|b| b.source.is_none()) {
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
