//! `rrproxy ctl top`: a live terminal view of a running proxy, refreshed
//! every second: per-worker and per-backend active connections as bars,
//! connection rates, health, policy. `rrproxy ctl top N` draws N frames and
//! exits (for scripts); without N it runs until `q` (or Ctrl-C).
//!
//! Keys: when stdin is a terminal it is put in a mode that hands over each
//! key at once, without echo and with Ctrl-C as a key rather than a signal
//! (so the terminal is always put back: on `q`, Ctrl-C, an error, or a
//! reader that left), and restored on the way out.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{CtlError, run as ctl};

const BAR_WIDTH: usize = 30;

pub fn run(path: &Path, args: &[String]) -> Result<(), CtlError> {
    let frames: Option<u64> = match args {
        [] => None,
        [n] => Some(
            n.parse()
                .map_err(|_| CtlError::Refused(format!("top: '{n}' is not a frame count")))?,
        ),
        _ => return Err(CtlError::Refused("usage: rrproxy ctl top [FRAMES]".into())),
    };
    let tty = std::io::stdout().is_terminal();
    let keys = Keys::take();
    let hint = match (&keys, tty) {
        (Some(_), true) => "\nq to quit\n",
        (None, true) => "\nCtrl-C to quit\n",
        (_, false) => "",
    };
    let mut prev: Option<(Instant, HashMap<String, u64>)> = None;
    let mut drawn = 0u64;
    loop {
        let started = Instant::now();
        let status = fetch(path, "status")?;
        let workers = fetch(path, "workers")?;
        let backends = fetch(path, "backends")?;
        let totals = totals(&workers, &backends);
        let rates = prev.as_ref().map(|(t, old)| {
            let secs = started.duration_since(*t).as_secs_f64().max(0.001);
            totals
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.saturating_sub(*old.get(k).unwrap_or(v)) as f64 / secs,
                    )
                })
                .collect::<HashMap<_, _>>()
        });
        let frame = render(&status, &workers, &backends, rates.as_ref());
        let mut out = std::io::stdout().lock();
        let result = if tty {
            write!(out, "\x1b[H\x1b[2J{frame}{hint}")
        } else {
            writeln!(out, "{frame}")
        };
        if result.and_then(|()| out.flush()).is_err() {
            return Ok(()); // output closed
        }
        drop(out);
        prev = Some((started, totals));
        drawn += 1;
        if frames.is_some_and(|n| drawn >= n) {
            return Ok(());
        }
        let rest = Duration::from_secs(1).saturating_sub(started.elapsed());
        match &keys {
            Some(keys) if keys.quit_within(rest) => return Ok(()),
            Some(_) => {}
            None => std::thread::sleep(rest),
        }
    }
}

/// Stdin, a terminal, in a mode that hands over each key at once; its
/// old mode comes back when this is dropped.
struct Keys {
    saved: rustix::termios::Termios,
}

impl Keys {
    /// `None` when stdin is not a terminal (or its mode cannot be set).
    fn take() -> Option<Keys> {
        use rustix::termios::{
            LocalModes, OptionalActions, SpecialCodeIndex, tcgetattr, tcsetattr,
        };
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = tcgetattr(&stdin).ok()?;
        let mut keys = saved.clone();
        // Keys one at a time, not echoed; Ctrl-C a key (read below), so
        // no signal can end the process before the mode is put back.
        keys.local_modes -= LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG;
        keys.special_codes[SpecialCodeIndex::VMIN] = 0;
        keys.special_codes[SpecialCodeIndex::VTIME] = 0;
        tcsetattr(&stdin, OptionalActions::Now, &keys).ok()?;
        Some(Keys { saved })
    }

    /// Wait up to `d` for keys; true if one of them means quit (`q`, `Q`,
    /// Ctrl-C, Ctrl-\\, Ctrl-D) or stdin is gone.
    fn quit_within(&self, d: Duration) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let stdin = std::io::stdin();
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let timeout = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            });
            let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) => return false,
                Ok(_) if fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR) => {
                    return true;
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return true,
            }
            let mut buf = [0u8; 64];
            match rustix::io::read(&stdin, &mut buf) {
                Ok(n) => {
                    if buf[..n]
                        .iter()
                        .any(|b| matches!(b, b'q' | b'Q' | 0x03 | 0x1c | 0x04))
                    {
                        return true;
                    }
                }
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(_) => return true,
            }
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        use rustix::termios::{OptionalActions, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

fn fetch(path: &Path, cmd: &str) -> Result<Value, CtlError> {
    let text = ctl(path, &[cmd.to_string()], true)?;
    serde_json::from_str(&text).map_err(|e| CtlError::Refused(format!("bad reply to {cmd}: {e}")))
}

fn totals(workers: &Value, backends: &Value) -> HashMap<String, u64> {
    let mut t = HashMap::new();
    for w in workers.as_array().into_iter().flatten() {
        t.insert(format!("w{}", w["slot"]), w["total"].as_u64().unwrap_or(0));
    }
    for b in backends.as_array().into_iter().flatten() {
        t.insert(
            format!("b{}", b["address"]),
            b["total"].as_u64().unwrap_or(0),
        );
    }
    t
}

fn bar(value: u64, max: u64) -> String {
    let filled = if max == 0 {
        0
    } else {
        (value as usize * BAR_WIDTH).div_ceil(max as usize)
    };
    format!(
        "{}{}",
        "█".repeat(filled.min(BAR_WIDTH)),
        "·".repeat(BAR_WIDTH - filled.min(BAR_WIDTH))
    )
}

fn rate(rates: Option<&HashMap<String, f64>>, key: &str) -> String {
    rates
        .and_then(|r| r.get(key))
        .map_or("-".into(), |r| format!("{r:.0}/s"))
}

fn render(
    status: &Value,
    workers: &Value,
    backends: &Value,
    rates: Option<&HashMap<String, f64>>,
) -> String {
    let mut out = format!(
        "rrproxy {}  policy {}  workers {}/{} up  backends {}/{} up  active {}  total {}  {}\n\n",
        status["version"].as_str().unwrap_or("?"),
        status["policy"].as_str().unwrap_or("?"),
        status["workers_up"],
        status["workers"],
        status["backends_up"],
        status["backends"],
        status["active_connections"],
        status["total_connections"],
        if status["accepting"] == true {
            "accepting"
        } else {
            "PAUSED"
        },
    );
    let ws = workers.as_array().cloned().unwrap_or_default();
    let wmax = ws
        .iter()
        .filter_map(|w| w["active"].as_u64())
        .max()
        .unwrap_or(0);
    out.push_str(&format!(
        "{:<6} {:<8} {:<10} {:<w$}  {:>7} {:>9}\n",
        "WORKER",
        "PID",
        "STATE",
        "ACTIVE",
        "",
        "RATE",
        w = BAR_WIDTH
    ));
    for w in &ws {
        let active = w["active"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{:<6} {:<8} {:<10} {} {:>7} {:>9}\n",
            w["slot"].to_string(),
            w["pid"].as_u64().map_or("-".into(), |p| p.to_string()),
            w["state"].as_str().unwrap_or("?"),
            bar(active, wmax),
            active,
            rate(rates, &format!("w{}", w["slot"])),
        ));
    }
    let bs = backends.as_array().cloned().unwrap_or_default();
    let bmax = bs
        .iter()
        .filter_map(|b| b["active"].as_u64())
        .max()
        .unwrap_or(0);
    out.push_str(&format!(
        "\n{:<24} {:<9} {:<w$}  {:>7} {:>9} {:>13}  {}\n",
        "BACKEND",
        "STATE",
        "ACTIVE",
        "",
        "RATE",
        "CONNECT-FAILS",
        "CHECK-FAILS",
        w = BAR_WIDTH
    ));
    for b in &bs {
        let active = b["active"].as_u64().unwrap_or(0);
        let address = b["address"].as_str().unwrap_or("?");
        out.push_str(&format!(
            "{:<24} {:<9} {} {:>7} {:>9} {:>13}  {}\n",
            address,
            b["state"].as_str().unwrap_or("?"),
            bar(active, bmax),
            active,
            rate(rates, &format!("b{}", b["address"])),
            b["failures"].to_string(),
            super::client::check_failures(
                b["check_failures"].as_u64().unwrap_or(0),
                b["check_failures_in_a_row"]
                    .as_u64()
                    .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest() {
        assert_eq!(bar(0, 0).chars().filter(|&c| c == '█').count(), 0);
        assert_eq!(bar(10, 10).chars().filter(|&c| c == '█').count(), BAR_WIDTH);
        assert_eq!(
            bar(5, 10).chars().filter(|&c| c == '█').count(),
            BAR_WIDTH / 2
        );
        assert_eq!(bar(5, 10).chars().count(), BAR_WIDTH);
    }
}
