//! `--pid-file`: the front's pid, written when it serves, rewritten by the
//! new front after an upgrade, removed at stop only if it is still ours.

use std::time::Duration;

use crate::support::*;
use crate::upgrade::{front_pid, wait_upgraded};

fn holds(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Promise: the file holds the serving front's pid from start, the new
/// front's after an upgrade, and is gone once the proxy stopped.
#[test]
fn the_pid_file_follows_the_front_through_an_upgrade_and_goes_at_stop() {
    let echo = echo_backend();
    let dir = temp_dir("pidfile");
    let path = dir.join("run/rrproxy.pid");
    std::fs::create_dir(dir.join("run")).unwrap();
    let proxy = ProxyCmd::new(&[echo.addr])
        .workers(1)
        .args(["--pid-file", path.to_str().unwrap()])
        .start();
    let first = front_pid(&proxy);
    wait_until(Duration::from_secs(10), "the pid file", || {
        holds(&path) == Some(first)
    });
    assert!(proxy.ctl("upgrade").contains("front upgraded"));
    let second = wait_upgraded(&proxy, first, Duration::from_secs(60));
    wait_until(Duration::from_secs(10), "the new front's pid", || {
        holds(&path) == Some(second)
    });
    // Only the file itself: no temporary left beside it.
    assert_eq!(std::fs::read_dir(dir.join("run")).unwrap().count(), 1);
    kill(second, "TERM");
    wait_until(Duration::from_secs(30), "the front to stop", || {
        !alive(second)
    });
    assert!(!path.exists(), "pid file left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Promise: a pid file someone else replaced is never deleted.
#[test]
fn a_pid_file_that_is_not_ours_any_more_is_left_alone() {
    let echo = echo_backend();
    let dir = temp_dir("pidfile-theirs");
    let path = dir.join("rrproxy.pid");
    let mut proxy = ProxyCmd::new(&[echo.addr])
        .workers(1)
        .args(["--pid-file", path.to_str().unwrap()])
        .start();
    let pid = front_pid(&proxy);
    wait_until(Duration::from_secs(10), "the pid file", || {
        holds(&path) == Some(pid)
    });
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "4242\n").unwrap();
    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242\n");
    std::fs::remove_dir_all(&dir).unwrap();
}
