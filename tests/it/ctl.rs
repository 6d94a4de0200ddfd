//! The `rrproxy ctl` client itself: every command ends within a bound,
//! with an error that says what it last saw.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Promise: `rrproxy ctl upgrade` follows the restart of the workers, but
/// when the proxy dies during it (its whole process group killed), the
/// client gives up once the control socket has been unreachable for
/// `UNREACHABLE_LIMIT` (15 s), exits with failure and says what it last
/// saw, instead of retrying forever.
#[test]
fn ctl_upgrade_gives_up_when_the_proxy_is_killed_mid_way() {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr])
        .workers(1)
        .args(["--drain-timeout", "60s", "--health-interval", "off"])
        .start();
    // A long connection keeps the old worker draining: the restart of the
    // workers lasts up to the drain timeout.
    let mut held = proxy.connect();
    held.write_all(b"ping\n").unwrap();
    let mut buf = [0u8; 5];
    held.read_exact(&mut buf).unwrap();
    let old = proxy.ctl_json("status")["pid"].as_u64().unwrap();

    let mut ctl = Command::new(BIN)
        .args(["ctl", "--control"])
        .arg(&proxy.control)
        .arg("upgrade")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the new front to replace the workers",
        || {
            proxy.try_ctl("status --json").ok().is_some_and(|s| {
                let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
                v["pid"].as_u64().is_some_and(|p| p != old) && v["rolling_restart"] == true
            })
        },
    );
    // Killed mid-way, the old front, the new one and every worker.
    let killed = Instant::now();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", proxy.child.id())])
        .status();
    let limit = Duration::from_secs(60);
    let status = loop {
        if let Some(st) = ctl.try_wait().unwrap() {
            break st;
        }
        if killed.elapsed() > limit {
            let _ = ctl.kill();
            let _ = ctl.wait();
            panic!("ctl upgrade still running {limit:?} after the proxy was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = killed.elapsed();
    let mut err = String::new();
    ctl.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success(), "{status}: {err}");
    assert!(
        took >= Duration::from_secs(14) && took < Duration::from_secs(40),
        "gave up after {took:?}: {err}"
    );
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("lost the proxy during the upgrade")
            && line.contains(&proxy.control.display().to_string())
            && line.contains("unreachable for")
            // (A status poll, or the upgrade's reply if the proxy died
            // before the first poll.)
            && (line.contains("last seen: front pid") || line.contains("last seen: the upgrade reply"))
            && (line.contains("workers being replaced")
                || line.contains("the workers are being replaced")),
        "{line}"
    );
}

/// A pseudo-terminal: the test holds the master, a program gets the
/// slave as its terminal.
struct Pty {
    master: std::os::fd::OwnedFd,
    slave: std::fs::File,
    seen: Vec<u8>,
}

impl Pty {
    fn open() -> Pty {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(name.to_str().unwrap())
            .unwrap();
        Pty {
            master,
            slave,
            seen: Vec::new(),
        }
    }

    fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().unwrap())
    }

    /// Read what the program wrote, for up to `d`.
    fn drain(&mut self, d: Duration) {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let timeout = Timespec::try_from(d).unwrap();
        let mut fds = [PollFd::new(&self.master, PollFlags::IN)];
        if poll(&mut fds, Some(&timeout)).unwrap_or(0) > 0 {
            let mut buf = [0u8; 4096];
            if let Ok(n) = rustix::io::read(&self.master, &mut buf) {
                self.seen.extend_from_slice(&buf[..n]);
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Keys one at a time (not a line at a time), as `top` sets them.
    fn keys_mode(&self) -> bool {
        let t = rustix::termios::tcgetattr(&self.slave).unwrap();
        !t.local_modes.contains(rustix::termios::LocalModes::ICANON)
    }

    fn line_mode_with_echo(&self) -> bool {
        use rustix::termios::LocalModes;
        let t = rustix::termios::tcgetattr(&self.slave).unwrap();
        t.local_modes
            .contains(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG)
    }
}

/// Promise: `ctl top` in a terminal says how to quit, takes keys one at a
/// time while it runs, ends at once on `q` (or Ctrl-C, which it reads as
/// a key) with success, and leaves the terminal as it found it.
#[test]
fn ctl_top_quits_on_q_and_puts_the_terminal_back() {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr]).workers(1).start();
    for key in [&b"q"[..], b"\x03"] {
        let mut pty = Pty::open();
        assert!(pty.line_mode_with_echo());
        let mut top = Command::new(BIN)
            .args(["ctl", "--control"])
            .arg(&proxy.control)
            .arg("top")
            .stdin(pty.stdio())
            .stdout(pty.stdio())
            .stderr(pty.stdio())
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(pty.text().contains("q to quit") && pty.keys_mode()) {
            assert!(
                Instant::now() < deadline,
                "no frame with the hint: {}",
                pty.text()
            );
            assert!(top.try_wait().unwrap().is_none(), "{}", pty.text());
            pty.drain(Duration::from_millis(50));
        }
        rustix::io::write(&pty.master, key).unwrap();
        let pressed = Instant::now();
        let status = loop {
            if let Some(st) = top.try_wait().unwrap() {
                break st;
            }
            if pressed.elapsed() > Duration::from_secs(10) {
                let _ = top.kill();
                let _ = top.wait();
                panic!("ctl top still running 10 s after {key:?}");
            }
            pty.drain(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}: {}", pty.text());
        assert!(
            pressed.elapsed() < Duration::from_secs(3),
            "{:?}",
            pressed.elapsed()
        );
        assert!(pty.line_mode_with_echo(), "terminal left in keys mode");
    }
}

/// Promise: a mistyped control command or argument gets a one-line error
/// with the name probably meant (as flags and config keys do), from the
/// socket and through `rrproxy ctl` (exit 1).
#[test]
fn mistyped_ctl_commands_and_arguments_say_what_was_meant() {
    let a = echo_backend();
    let b = echo_backend();
    let proxy = ProxyCmd::new(&[a.addr, b.addr]).workers(1).start();
    let b_typo = {
        let s = b.addr.to_string();
        format!(
            "{}{}",
            &s[..s.len() - 1],
            if s.ends_with('9') { '8' } else { '9' }
        )
    };
    let cases = [
        (
            "policy lest-conn".to_string(),
            "unknown policy 'lest-conn': expected round-robin, least-conn or sticky (did you mean 'least-conn'?)".to_string(),
        ),
        (
            "statsu".to_string(),
            "unknown command 'statsu' (did you mean 'status'?) (try help)".to_string(),
        ),
        (
            format!("backend enabel {}", a.addr),
            "(did you mean 'backend enable'?)".to_string(),
        ),
        (
            format!("backend disable {b_typo}"),
            format!("no backend named '{b_typo}' (see `backends`) (did you mean '{}'?)", b.addr),
        ),
    ];
    for (line, want) in &cases {
        let reply = proxy.ctl(line);
        assert!(
            reply.starts_with("error: ") && reply.ends_with(want.as_str()),
            "{line}: {reply}"
        );
        assert_eq!(reply.lines().count(), 1, "{reply}");
        let out = Command::new(BIN)
            .args(["ctl", "--control"])
            .arg(&proxy.control)
            .args(line.split(' '))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{line}: {err}");
        assert!(
            err.trim_end().starts_with("rrproxy ctl: error: ")
                && err.trim_end().ends_with(want.as_str()),
            "{line}: {err}"
        );
    }
    assert_eq!(proxy.ctl("policy"), "round-robin", "nothing changed");
}

/// Promise: `ctl backends` counts a backend's failed health checks (in
/// all, and how many in a row now) apart from its failed connects, so a
/// backend failing every check never shows zero failures.
#[test]
fn ctl_backends_shows_failed_health_checks() {
    let good = echo_backend();
    let dead = refused_addr();
    let proxy = ProxyCmd::new(&[good.addr, dead])
        .workers(1)
        .args(["--health-interval", "100ms", "--fall", "2"])
        .start();
    let dead_name = dead.to_string();
    let row = wait_for(Duration::from_secs(20), "three failed checks", || {
        let rows = proxy.ctl_json("backends");
        let row = rows
            .as_array()?
            .iter()
            .find(|r| r["address"] == dead_name.as_str())?
            .clone();
        (row["check_failures"].as_u64()? >= 3).then_some(row)
    });
    assert_eq!(row["state"], "down", "{row}");
    assert_eq!(row["failures"], 0, "no connect was tried: {row}");
    assert!(
        row["check_failures_in_a_row"].as_u64().unwrap() >= 3,
        "{row}"
    );
    let text = proxy.ctl("backends");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "BACKEND",
            "STATE",
            "WEIGHT",
            "ACTIVE",
            "QUEUE",
            "TOTAL",
            "CONNECT-FAILS",
            "CHECK-FAILS",
            "CHECK"
        ]
    );
    let dead_line = lines.clone().find(|l| l.starts_with(&dead_name)).unwrap();
    assert!(dead_line.contains(" in a row)"), "{text}");
    let good_line = lines
        .find(|l| l.starts_with(&good.addr.to_string()))
        .unwrap();
    let cells: Vec<&str> = good_line.split_whitespace().collect();
    // (QUEUE is `-`: no maxconn.)
    assert_eq!(
        cells[1..],
        ["up", "1", "0", "-", "0", "0", "0", "ok"],
        "{text}"
    );
}
