//! The `rrproxy ctl` client itself: every command ends within a bound,
//! with an error that says what it last saw.

use std::io::{Read, Write};
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
