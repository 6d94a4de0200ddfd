//! How processes end, as the init sees and reports it, and how long it
//! waits before starting another front.

use std::time::Duration;

use rustix::process::WaitStatus;

use super::MAX_DELAY;

/// The wait before starting a front after `fails` fronts died in a row:
/// none the first time, then 1 s, 2 s, 4 s ... up to [`MAX_DELAY`].
pub fn backoff(fails: u32) -> Duration {
    match fails {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 2).min(16)).min(MAX_DELAY),
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Exited with this status.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Stopped or continued (not an end; not asked for).
    Other,
}

impl From<WaitStatus> for End {
    fn from(status: WaitStatus) -> End {
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => End::Code(code),
            (None, Some(sig)) => End::Signal(sig),
            _ => End::Other,
        }
    }
}

impl End {
    /// As an exit status: the code, or 128 + the signal.
    pub fn exit_code(self) -> u8 {
        match self {
            End::Code(code) => code as u8,
            End::Signal(sig) => 128u8.saturating_add(sig as u8),
            End::Other => 1,
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            End::Code(code) => write!(f, "exited with status {code}"),
            End::Signal(sig) => write!(f, "was killed by signal {sig}{}", signal_name(sig)),
            End::Other => write!(f, "ended"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    use rustix::process::Signal as S;
    let named = [
        (S::KILL, " (SIGKILL)"),
        (S::TERM, " (SIGTERM)"),
        (S::INT, " (SIGINT)"),
        (S::ABORT, " (SIGABRT)"),
        (S::SEGV, " (SIGSEGV)"),
        (S::BUS, " (SIGBUS)"),
    ];
    named
        .iter()
        .find(|(s, _)| s.as_raw() == sig)
        .map_or("", |(_, n)| n)
}

/// The parent of `pid`, from `/proc`.
pub(super) fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may hold anything: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// Processes of this namespace other than the init (for a log line).
pub(super) fn descendants() -> usize {
    std::fs::read_dir("/proc").map_or(0, |dir| {
        dir.flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|p| p > 1)
            })
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_front_that_keeps_dying_waits_longer_each_time() {
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [0, 1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn the_exit_status_is_the_fronts() {
        assert_eq!(End::Code(0).exit_code(), 0);
        assert_eq!(End::Code(2).exit_code(), 2);
        assert_eq!(End::Signal(9).exit_code(), 137);
        assert_eq!(
            End::Signal(9).to_string(),
            "was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(End::Code(1).to_string(), "exited with status 1");
    }

    #[test]
    fn the_parent_of_a_process_is_read_from_proc() {
        let me = std::process::id() as i32;
        let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        assert_eq!(parent_of(me), Some(parent));
        assert_eq!(parent_of(i32::MAX), None);
    }
}
