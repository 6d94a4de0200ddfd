//! Signals a process has no use for must never kill it.
//!
//! The default action of most signals is to terminate, so a stray
//! `kill -HUP` at a worker, a `pkill -USR1 rrproxy`, or `systemctl kill`
//! of the whole service would drop every connection a process holds. Each
//! role therefore catches every catchable terminating signal it does not
//! use and logs it (rate-limited) instead. Synchronous fault signals
//! (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS) keep their
//! default: they mean this process is broken. glibc's two internal
//! real-time signals (32, 33) are left alone.

use std::future::poll_fn;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{debug, info};

/// Catchable signals whose default action terminates the process.
fn terminating() -> Vec<(i32, String)> {
    use rustix::process::Signal as S;
    let named = [
        (S::HUP, "SIGHUP"),
        (S::INT, "SIGINT"),
        (S::QUIT, "SIGQUIT"),
        (S::USR1, "SIGUSR1"),
        (S::USR2, "SIGUSR2"),
        (S::PIPE, "SIGPIPE"),
        (S::ALARM, "SIGALRM"),
        (S::TERM, "SIGTERM"),
        (S::STKFLT, "SIGSTKFLT"),
        (S::TSTP, "SIGTSTP"),
        (S::TTIN, "SIGTTIN"),
        (S::TTOU, "SIGTTOU"),
        (S::XCPU, "SIGXCPU"),
        (S::XFSZ, "SIGXFSZ"),
        (S::VTALARM, "SIGVTALRM"),
        (S::PROF, "SIGPROF"),
        (S::IO, "SIGIO"),
        (S::POWER, "SIGPWR"),
    ];
    let mut out: Vec<(i32, String)> = named
        .iter()
        .map(|(s, n)| (s.as_raw(), (*n).to_string()))
        .collect();
    // Real-time signals above glibc's reserved pair.
    out.extend((34..=64).map(|n| (n, format!("SIGRT{n}"))));
    out
}

/// Catch every terminating signal except those in `used` (which the caller
/// handles itself) and log them, on the current `LocalSet`. `role` names
/// the process in the log ("worker", "front").
pub fn ignore_unused(used: &[i32], role: &'static str) {
    let mut caught: Vec<(Signal, String)> = Vec::new();
    for (num, name) in terminating() {
        if used.contains(&num) {
            continue;
        }
        match signal(SignalKind::from_raw(num)) {
            Ok(s) => caught.push((s, name)),
            // A signal this platform does not have: nothing to catch.
            Err(err) => debug!(signal = %name, cause = %err, "cannot catch signal"),
        }
    }
    tokio::task::spawn_local(async move {
        let mut last_log: Option<Instant> = None;
        let mut suppressed = 0u64;
        loop {
            let i = poll_fn(|cx| {
                for (i, (s, _)) in caught.iter_mut().enumerate() {
                    if let Poll::Ready(Some(())) = s.poll_recv(cx) {
                        return Poll::Ready(Some(i));
                    }
                }
                Poll::Pending
            })
            .await;
            let Some(i) = i else { return };
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                info!(
                    signal = %caught[i].1,
                    role,
                    suppressed,
                    "ignoring a signal this process has no use for"
                );
                last_log = Some(Instant::now());
                suppressed = 0;
            } else {
                suppressed += 1;
            }
        }
    });
}
