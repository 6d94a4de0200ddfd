//! The proxy's life as one state machine, from outside: a stop that lands
//! at any step of an upgrade stops everything (in-flight download intact,
//! no process left, port closed, control socket gone); an upgrade applies
//! the config file as it is then; no slot is ever lost (a worker stopped
//! before it was ready is replaced, waves of SIGTERM end with every slot
//! serving); a rolling restart drains the old workers together.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::upgrade::{Stream, all_worker_pids, front_pid, wait_upgraded};

/// Every live process running the file at `exe` (the proxy's own copy:
/// its fronts and their workers).
fn running(exe: &Path) -> Vec<u32> {
    let want = exe.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if exe_of(pid) == want && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Start an upgrade held at `step` by the test hook, send SIGTERM to the
/// front, and check that everything stops: the download in flight comes
/// back intact, no process of the proxy is left, the port is closed and
/// the control socket is gone.
fn stop_during_upgrade_at(step: &str, seed: u64) {
    let dir = temp_dir(&format!("stop-at-{step}"));
    let bin = binary_copy(&dir, "rrproxy");
    let echo = echo_backend();
    let mut proxy = ProxyCmd::new(&[echo.addr])
        .binary(&bin)
        .workers(2)
        .args(["--drain-timeout", "30s"])
        .env("RRPROXY_TEST_PAUSE_UPGRADE", step)
        .start();
    let listen = proxy.listen;
    let control = proxy.control.clone();
    let download = Stream::start(&proxy, seed, 3 << 20, Duration::from_millis(10));
    wait_until(Duration::from_secs(10), "the download in flight", || {
        proxy.ctl_json("status")["active_connections"].as_u64() >= Some(1)
    });
    let asked = control.clone();
    let upgrade = thread::spawn(move || ctl_at(&asked, "upgrade"));
    proxy.wait_log(&format!("step=\"{step}\""));
    if ["check", "spawn", "hello"].contains(&step) {
        // One upgrade at a time.
        let again = proxy.ctl("upgrade");
        assert!(again.contains("already in progress"), "{again}");
    }
    let before = running(&bin);
    assert!(before.len() >= 3, "front and workers: {before:?}");
    proxy.signal("TERM");
    download.check(&format!("download across a stop at {step}"));
    wait_until(
        Duration::from_secs(40),
        "every process of the proxy to end",
        || running(&bin).is_empty(),
    );
    assert!(
        proxy.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        proxy.stderr()
    );
    let refused = TcpStream::connect_timeout(&listen, Duration::from_secs(2));
    assert!(
        refused.is_err(),
        "the port still accepts after a stop at {step}"
    );
    assert!(!control.exists(), "the control socket is left at {step}");
    let reply = upgrade.join().unwrap().unwrap_or_default();
    if step == "committed" {
        assert!(reply.contains("front upgraded"), "{reply}");
        proxy.wait_log("passing it on to the new front");
    } else {
        assert!(
            reply.is_empty() || reply.contains("upgrade aborted"),
            "{step}: {reply}"
        );
        proxy.wait_log("upgrade aborted: the proxy was told to stop");
        if step != "check" {
            proxy.wait_log("upgrade: the new front was stopped");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stop_while_checking_the_new_binary_stops_everything() {
    stop_during_upgrade_at("check", 1);
}

#[test]
fn a_stop_before_the_new_front_says_hello_stops_everything() {
    stop_during_upgrade_at("spawn", 2);
}

#[test]
fn a_stop_after_the_hello_stops_everything() {
    stop_during_upgrade_at("hello", 3);
}

#[test]
fn a_stop_while_frozen_stops_everything() {
    stop_during_upgrade_at("frozen", 4);
}

#[test]
fn a_stop_after_the_state_is_sent_stops_everything() {
    stop_during_upgrade_at("sent", 5);
}

#[test]
fn a_stop_when_the_new_front_is_ready_stops_everything() {
    stop_during_upgrade_at("ready", 6);
}

#[test]
fn a_stop_after_the_commit_stops_the_new_front() {
    stop_during_upgrade_at("committed", 7);
}

/// `ctl upgrade` re-reads the config file as `config reload` does: new
/// backends and policy in force, the `ctl` change the file overrides
/// reported; a file that does not load refuses the upgrade.
#[test]
fn an_upgrade_applies_the_config_file_as_it_is_then() {
    let dir = temp_dir("upgrade-config");
    let old = name_backend("old");
    let new = name_backend("new");
    let config = dir.join("rrproxy.toml");
    std::fs::write(
        &config,
        format!("backends = [\"{}\"]\npolicy = \"round-robin\"\n", old.addr),
    )
    .unwrap();
    let proxy = ProxyCmd::new(&[])
        .args(["--config", config.to_str().unwrap()])
        .workers(2)
        .start();
    assert_eq!(fetch_name(&proxy), "old");
    proxy.ctl("policy sticky");
    std::fs::write(
        &config,
        format!("backends = [\"{}\"]\npolicy = \"least-conn\"\n", new.addr),
    )
    .unwrap();
    let front = front_pid(&proxy);
    let reply = proxy.ctl("upgrade");
    assert!(reply.contains("front upgraded"), "{reply}");
    assert!(reply.contains("configuration file applied"), "{reply}");
    assert!(
        reply.contains("policy sticky (set by ctl) -> least-conn (from the configuration)"),
        "{reply}"
    );
    wait_upgraded(&proxy, front, Duration::from_secs(60));
    let st = proxy.ctl_json("status");
    assert_eq!(st["policy"], "least-conn");
    for _ in 0..6 {
        assert_eq!(fetch_name(&proxy), "new");
    }
    let backends = proxy.ctl("backends");
    assert!(backends.contains(&new.addr.to_string()), "{backends}");
    // A file that no longer loads: refused, nothing changes.
    std::fs::write(&config, "backends = [\"nowhere\"]\n").unwrap();
    let front = front_pid(&proxy);
    let reply = proxy.ctl("upgrade");
    assert!(
        reply.starts_with("error:") && reply.contains("nowhere"),
        "{reply}"
    );
    assert_eq!(front_pid(&proxy), front);
    assert_eq!(fetch_name(&proxy), "new");
}

/// The children of `pid` whose command line says they are workers.
fn worker_children(pid: u32) -> Vec<u32> {
    children(pid)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|w| w == b"worker"))
        })
        .collect()
}

/// A worker that never reports ready (stopped with SIGSTOP right after it
/// was started) is killed after the ready bound and its slot gets a new
/// one, outside any rollout.
#[test]
fn a_worker_stopped_before_it_was_ready_is_replaced() {
    let b = name_backend("r");
    let proxy = ProxyCmd::new(&[b.addr]).workers(2).start();
    let front = proxy.pid();
    // Catch slot 0's replacement between its exec and its ready (a few
    // milliseconds); try again if it was quicker than us.
    let mut caught = None;
    for _ in 0..20 {
        let old = proxy.worker_pids()[0].unwrap();
        let known = worker_children(front);
        kill(old, "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        let fresh = loop {
            let now: Vec<u32> = worker_children(front)
                .into_iter()
                .filter(|p| !known.contains(p))
                .collect();
            if let Some(&p) = now.first() {
                break Some(p);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::hint::spin_loop();
        };
        let Some(fresh) = fresh else { continue };
        kill(fresh, "STOP");
        let row = &proxy.ctl_json("workers")[0];
        if row["state"] == "starting" && row["pid"].as_u64() == Some(u64::from(fresh)) {
            caught = Some(fresh);
            break;
        }
        kill(fresh, "CONT");
        wait_until(Duration::from_secs(20), "slot 0 up again", || {
            proxy.ctl_json("workers")[0]["state"] == "up"
        });
    }
    let stopped = caught.expect("a worker caught before it was ready");
    // Still served meanwhile by the other slot.
    assert_eq!(fetch_name(&proxy), "r");
    let started = Instant::now();
    let replacement = wait_for(Duration::from_secs(30), "slot 0 replaced", || {
        let row = &proxy.ctl_json("workers")[0];
        let pid = row["pid"].as_u64()? as u32;
        (pid != stopped && row["state"] == "up").then_some(pid)
    });
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "replaced after {:?}",
        started.elapsed()
    );
    wait_until(
        Duration::from_secs(10),
        "the stopped worker to be gone",
        || !alive(stopped),
    );
    assert_ne!(replacement, stopped);
    proxy.wait_log("worker not ready in time");
    assert_eq!(fetch_name(&proxy), "r");
}

/// One idle connection held open on every serving worker (so each one
/// told to stop keeps draining, holding its statistics cell).
fn hold_one_per_worker(proxy: &Proxy, workers: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..workers {
        let mut s = proxy.connect();
        s.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        held.push(s);
    }
    wait_until(
        Duration::from_secs(10),
        "a connection on every worker",
        || {
            proxy
                .ctl_json("workers")
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["active"].as_u64() >= Some(1))
        },
    );
    held
}

/// Send SIGTERM to every serving worker, `waves` times, each wave after
/// the last one's replacements serve, while every stopped worker keeps
/// draining a connection; every slot must serve at the end.
fn sigterm_waves(workers: usize, waves: usize) -> Proxy {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr])
        .workers(workers)
        .args(["--drain-timeout", "60s", "--policy", "round-robin"])
        .start();
    let mut held = Vec::new();
    for wave in 0..waves {
        held.extend(hold_one_per_worker(&proxy, workers));
        let pids: Vec<u32> = proxy.worker_pids().into_iter().flatten().collect();
        assert_eq!(pids.len(), workers, "wave {wave}");
        for &p in &pids {
            kill(p, "TERM");
        }
        wait_until(Duration::from_secs(30), "every slot replaced", || {
            let rows = proxy.ctl_json("workers");
            rows.as_array().unwrap().iter().all(|w| {
                w["state"] == "up"
                    && w["pid"]
                        .as_u64()
                        .is_some_and(|p| !pids.contains(&(p as u32)))
            })
        });
    }
    let st = proxy.ctl_json("status");
    assert_eq!(st["workers_up"].as_u64(), Some(workers as u64));
    let load = Load::start_echo(&proxy, 4);
    wait_until(
        Duration::from_secs(20),
        "requests through the new workers",
        || load.counts().0 >= 100,
    );
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {} failed", ok + failed);
    drop(held);
    proxy
}

#[test]
fn three_waves_of_sigterm_to_every_worker_end_with_every_slot_serving() {
    let proxy = sigterm_waves(2, 3);
    // Nothing had to be cut: the table holds three generations draining.
    assert!(!proxy.stderr().contains("cutting the oldest"));
}

/// More waves than the statistics table has cells for draining workers
/// (4W+4 cells; each wave leaves W draining): the oldest draining worker
/// is cut so a slot without a worker gets one, every time.
#[test]
fn any_number_of_sigterm_waves_ends_with_every_slot_serving() {
    let proxy = sigterm_waves(1, 10);
    proxy.wait_log("cutting the oldest");
}

/// A rolling restart (after an upgrade) of 4 workers that each hold a
/// long connection and have a 10 s drain takes about one drain, not four:
/// the replacements start at once and the old workers drain together.
/// Under load, nothing fails.
#[test]
fn a_rolling_restart_drains_the_old_workers_together() {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr])
        .workers(4)
        .args(["--drain-timeout", "10s", "--policy", "round-robin"])
        .start();
    let held = hold_one_per_worker(&proxy, 4);
    let load = Load::start_echo(&proxy, 8);
    wait_until(Duration::from_secs(20), "load to flow", || {
        load.counts().0 > 200
    });
    let front = front_pid(&proxy);
    let started = Instant::now();
    let reply = proxy.ctl("upgrade");
    assert!(reply.contains("front upgraded"), "{reply}");
    // Every replacement serves while the old workers drain.
    wait_until(
        Duration::from_secs(20),
        "four new workers and four draining",
        || {
            let rows = proxy.ctl_json("workers");
            rows.as_array().unwrap().iter().all(|w| {
                w["state"] == "up" && w["draining_pids"].as_array().is_some_and(|d| d.len() == 1)
            })
        },
    );
    wait_upgraded(&proxy, front, Duration::from_secs(60));
    let took = started.elapsed();
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(
        took < Duration::from_secs(18),
        "the restart took {took:?}: more than about one 10 s drain"
    );
    assert!(
        took >= Duration::from_secs(9),
        "took {took:?}: did the drains wait?"
    );
    assert_eq!(all_worker_pids(&proxy).len(), 4);
    let last = proxy.ctl_json("status")["last_restart"].to_string();
    assert!(last.contains("4 replaced"), "{last}");
    drop(held);
}
