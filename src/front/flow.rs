//! Flow control toward a worker whose channel refused a handoff batch or
//! a control frame: wait until it has room (or a transient kernel
//! shortage has had time to pass), send what its outbox holds, and make
//! it routable again. One watcher per process at a time (the process
//! says whether one runs: `WorkerProc::watch`).

use std::io;
use std::rc::{Rc, Weak};
use std::time::Duration;

use super::Front;
use crate::channel::fdpass::Channel;

pub(super) const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// When to retry a worker whose channel refused a handoff.
#[derive(Debug, Clone, Copy)]
pub(super) enum Retry {
    /// The socket buffer is full: when it drains.
    Writable,
    /// Kernel memory or in-flight descriptor limit: after a pause that
    /// doubles while it lasts (writability would report ready at once and
    /// spin).
    After(Duration),
}

/// `None` means the channel is broken (the worker is going away).
pub(super) fn retry_wait(err: &io::Error) -> Option<Retry> {
    if err.kind() == io::ErrorKind::WouldBlock {
        return Some(Retry::Writable);
    }
    crate::channel::fdpass::is_transient(err).then_some(Retry::After(RETRY_MIN))
}

/// Wait (as `wait` says) until process `id` of `slot` can take frames
/// again, then let the front send what waits (`Front::channel_writable`).
pub(super) fn watch_writable(
    front: &Weak<std::cell::RefCell<Front>>,
    slot: usize,
    id: u64,
    channel: Rc<Channel>,
    wait: Retry,
) {
    let me = front.clone();
    tokio::task::spawn_local(async move {
        let mut wait = wait;
        loop {
            let ok = match wait {
                Retry::Writable => channel.writable().await.is_ok(),
                Retry::After(delay) => {
                    tokio::time::sleep(delay).await;
                    true
                }
            };
            let Some(front) = me.upgrade() else { return };
            if front.borrow_mut().channel_writable(slot, id, ok) {
                return;
            }
            // Control frames filled it again (or the kernel is still short
            // of memory): keep waiting, backing off.
            wait = match wait {
                Retry::After(d) => Retry::After((d * 2).min(RETRY_MAX)),
                Retry::Writable => Retry::Writable,
            };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    fn os(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.raw_os_error())
    }

    /// A full channel waits for room; a kernel that is short of memory or
    /// of in-flight descriptors is retried after a pause (the worker is
    /// not given up on); anything else means the channel is gone. (The
    /// kernel errors cannot be caused on purpose as root, which is exempt
    /// from the in-flight limit, so the classification is tested here.)
    #[test]
    fn a_refused_handoff_is_retried_unless_the_channel_is_gone() {
        assert!(matches!(
            retry_wait(&io::Error::from(io::ErrorKind::WouldBlock)),
            Some(Retry::Writable)
        ));
        assert!(matches!(
            retry_wait(&os(Errno::AGAIN)),
            Some(Retry::Writable)
        ));
        for e in [Errno::NOBUFS, Errno::NOMEM, Errno::TOOMANYREFS] {
            assert!(
                matches!(retry_wait(&os(e)), Some(Retry::After(d)) if d == RETRY_MIN),
                "{e:?}"
            );
        }
        for e in [Errno::PIPE, Errno::CONNRESET, Errno::BADF] {
            assert!(retry_wait(&os(e)).is_none(), "{e:?}");
        }
    }
}
