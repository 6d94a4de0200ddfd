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

/// A signal the front acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caught {
    Term,
    Int,
    Hup,
    Usr1,
    Usr2,
}

impl Caught {
    pub fn name(self) -> &'static str {
        match self {
            Caught::Term => "SIGTERM",
            Caught::Int => "SIGINT",
            Caught::Hup => "SIGHUP",
            Caught::Usr1 => "SIGUSR1",
            Caught::Usr2 => "SIGUSR2",
        }
    }
}

/// The front's signals, caught from the moment this is made (a signal that
/// arrives before anyone waits is kept), every other terminating one
/// ignored. A new front makes it before it says hello in an upgrade, so
/// a stop passed to it at any moment of the take-over is never lost and
/// never kills it by default.
pub struct FrontSignals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl FrontSignals {
    pub fn catch() -> std::io::Result<FrontSignals> {
        use rustix::process::Signal as S;
        let signals = FrontSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        };
        ignore_unused(
            &[S::TERM, S::INT, S::HUP, S::USR2, S::USR1].map(|s| s.as_raw()),
            "front",
        );
        Ok(signals)
    }

    /// The next signal.
    pub async fn next(&mut self) -> Caught {
        tokio::select! {
            _ = self.term.recv() => Caught::Term,
            _ = self.int.recv() => Caught::Int,
            _ = self.hup.recv() => Caught::Hup,
            _ = self.usr1.recv() => Caught::Usr1,
            _ = self.usr2.recv() => Caught::Usr2,
        }
    }

    /// The next stop signal (SIGTERM, SIGINT); others meanwhile are
    /// logged and dropped (a front taking over acts on nothing else).
    pub async fn stop(&mut self) {
        loop {
            let caught = self.next().await;
            if matches!(caught, Caught::Term | Caught::Int) {
                return;
            }
            info!(
                signal = caught.name(),
                "ignored while taking over from the previous front"
            );
        }
    }
}
