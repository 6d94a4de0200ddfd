//! `--user` / `--group`: the front binds as root, then it and every worker
//! (respawned, or started by an upgraded front) run as that user with no
//! supplementary group and no capability; a user that does not exist, or
//! a switch asked of a process that is not root, is refused in one line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::support::*;

const NOBODY: u32 = 65534;

/// `/proc/PID/status` says `uid`/`gid` for every id, no supplementary
/// group, and an empty permitted, effective, ambient and bounding set.
fn assert_unprivileged(pid: u32, what: &str) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{what} ({pid}): no {name}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let ids = vec![NOBODY.to_string(); 4];
    assert_eq!(field("Uid:"), ids, "{what} ({pid}) uid:\n{status}");
    assert_eq!(field("Gid:"), ids, "{what} ({pid}) gid:\n{status}");
    assert!(
        field("Groups:").is_empty(),
        "{what} ({pid}) groups:\n{status}"
    );
    for cap in ["CapPrm:", "CapEff:", "CapAmb:", "CapBnd:"] {
        assert_eq!(
            field(cap),
            ["0000000000000000"],
            "{what} ({pid}) {cap}\n{status}"
        );
    }
    assert_eq!(field("NoNewPrivs:"), ["1"], "{what} ({pid})\n{status}");
}

/// Every thread of `pid` (the front has a log writer and a metrics
/// thread, started before it dropped root).
fn assert_every_thread_unprivileged(pid: u32, what: &str) {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid: u32 = task.file_name().to_string_lossy().parse().unwrap();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if status.is_empty() {
            continue; // gone meanwhile
        }
        for line in status.lines() {
            if line.starts_with("Uid:") || line.starts_with("Gid:") {
                assert!(
                    line.split_whitespace().skip(1).all(|v| v == "65534"),
                    "{what} thread {tid}: {line}"
                );
            }
            for cap in ["CapPrm:", "CapEff:", "CapAmb:"] {
                if let Some(v) = line.strip_prefix(cap) {
                    assert_eq!(v.trim(), "0000000000000000", "{what} thread {tid}: {line}");
                }
            }
        }
    }
}

/// The access log once it has `n` lines.
fn access_lines(path: &Path, n: usize) -> String {
    wait_for(
        Duration::from_secs(10),
        &format!("{n} access log lines"),
        || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            (text.lines().count() >= n).then_some(text)
        },
    )
}

fn front_pid(proxy: &Proxy) -> u32 {
    proxy.ctl_json("status")["pid"].as_u64().unwrap() as u32
}

fn serving_pids(proxy: &Proxy) -> Vec<u32> {
    proxy.worker_pids().into_iter().flatten().collect()
}

fn check_all(proxy: &Proxy, when: &str) {
    let front = front_pid(proxy);
    assert_unprivileged(front, &format!("front {when}"));
    assert_every_thread_unprivileged(front, &format!("front {when}"));
    let workers = serving_pids(proxy);
    assert_eq!(workers.len(), 2, "{when}: {workers:?}");
    for w in workers {
        assert_unprivileged(w, &format!("worker {when}"));
        assert_every_thread_unprivileged(w, &format!("worker {when}"));
    }
}

/// A directory `nobody` may use (the binary copy, the access log).
fn shared_dir(tag: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
#[cfg_attr(not(is_root), ignore = "needs root: run the tests as root (CI does)")]
fn user_nobody_runs_front_and_workers_without_privileges_through_upgrade_and_respawn() {
    let backend = name_backend("a");
    let dir = shared_dir("nobody");
    // The binary where `nobody` can run it again (upgrade re-executes it).
    let bin = binary_copy(&dir, "rrproxy");
    let logs = dir.join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::os::unix::fs::chown(&logs, Some(NOBODY), Some(NOBODY)).unwrap();
    let access = logs.join("access.log");
    let runtime = dir.join("run");
    std::fs::create_dir(&runtime).unwrap();
    let proxy = ProxyCmd::new(&[backend.addr])
        .binary(&bin)
        .workers(2)
        .args(["--user", "nobody", "--access-log"])
        .arg(access.display().to_string())
        .default_control(&runtime)
        .start();
    check_all(&proxy, "at start");
    proxy.wait_log("running unprivileged");
    // The socket and its directory belong to nobody; root's ctl works.
    let sock = runtime.join("rrproxy").join("ctl.sock");
    let owner = |p: &Path| std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(p).unwrap());
    assert_eq!(owner(&sock), NOBODY);
    assert_eq!(owner(sock.parent().unwrap()), NOBODY);
    for _ in 0..4 {
        assert_eq!(fetch_name(&proxy), "a");
    }
    assert_eq!(owner(&access), NOBODY, "the workers created the access log");
    // (Written within a pause of the writer; a killed worker loses what
    // it had not written yet.)
    access_lines(&access, 4);

    // A worker crash: the respawned one is nobody too.
    let old = serving_pids(&proxy);
    kill(old[0], "KILL");
    wait_until(Duration::from_secs(20), "the slot to be respawned", || {
        let now = serving_pids(&proxy);
        now.len() == 2 && !now.contains(&old[0])
    });
    check_all(&proxy, "after a respawn");
    assert_eq!(fetch_name(&proxy), "a");

    // An upgrade: the new front (started by the unprivileged one) and its
    // new workers are nobody too.
    let old_front = front_pid(&proxy);
    let old_workers = serving_pids(&proxy);
    let reply = proxy.ctl("upgrade");
    assert!(reply.contains("front upgraded"), "{reply}");
    wait_until(
        Duration::from_secs(60),
        "front and workers replaced",
        || {
            let Ok(s) = proxy.try_ctl("status --json") else {
                return false;
            };
            let Ok(st) = serde_json::from_str::<serde_json::Value>(&s) else {
                return false;
            };
            let pids = serving_pids(&proxy);
            st["pid"].as_u64() != Some(u64::from(old_front))
                && st["rolling_restart"] == false
                && st["upgrading"] == false
                && pids.len() == 2
                && pids.iter().all(|p| !old_workers.contains(p))
        },
    );
    check_all(&proxy, "after an upgrade");
    for _ in 0..4 {
        assert_eq!(fetch_name(&proxy), "a");
    }
    let lines = access_lines(&access, 9);
    assert!(
        lines.lines().all(|l| l.contains("end=client_closed")),
        "{lines}"
    );

    // Stop: the unprivileged front still removes its socket.
    let front = front_pid(&proxy);
    kill(front, "TERM");
    wait_until(Duration::from_secs(20), "the front to exit", || {
        !alive(front)
    });
    assert!(!sock.exists(), "the control socket is removed on exit");
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_user_or_group_that_does_not_exist_is_one_line_and_exit_2() {
    for (flags, line) in [
        (
            &["--user", "no-such-user-rrproxy"][..],
            "rrproxy: error: invalid value 'no-such-user-rrproxy' for '--user <NAME>': no such user",
        ),
        (
            &["--user", "root", "--group", "no-such-group-rrproxy"][..],
            "rrproxy: error: invalid value 'no-such-group-rrproxy' for '--group <NAME>': no such group",
        ),
        (
            &["--group", "root"][..],
            "rrproxy: error: invalid value 'root' for '--group <NAME>': needs --user (the user to run as)",
        ),
    ] {
        let mut args = vec!["-b", "127.0.0.1:9", "--metrics", "off", "--control", "off"];
        args.extend_from_slice(flags);
        let (st, err) = run_bin(&args);
        assert_eq!(st.code(), Some(2), "{flags:?}: {err}");
        assert_eq!(err, format!("{line}\n"), "{flags:?}");
    }
}

#[test]
#[cfg_attr(not(is_root), ignore = "needs root: run the tests as root (CI does)")]
fn switching_user_when_not_root_is_refused_before_binding() {
    let dir = shared_dir("notroot");
    let bin = binary_copy(&dir, "rrproxy");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["-b", "127.0.0.1:9", "--metrics", "off", "--control", "off"])
        .args(["--listen", "127.0.0.1:0", "--user", "daemon"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end().lines().last().unwrap(),
        "rrproxy: error: cannot switch to --user daemon: only root can, and this process runs as uid 65534"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
