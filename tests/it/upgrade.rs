//! Upgrading the whole proxy (front, then workers) without refusing a
//! connection; one build at a time; stray signals; the front's own death.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::thread;
use std::time::Duration;

use crate::support::*;

/// A byte-checked stream through an echo backend: `len` bytes written in
/// paced chunks while they are read back.
pub(crate) struct Stream {
    writer: thread::JoinHandle<()>,
    reader: thread::JoinHandle<Vec<u8>>,
    data: Vec<u8>,
}

impl Stream {
    pub(crate) fn start(proxy: &Proxy, seed: u64, len: usize, pace: Duration) -> Stream {
        Stream::over(proxy.connect(), seed, len, pace)
    }

    /// The same through the listener at `addr` (a service's).
    pub(crate) fn start_at(addr: SocketAddr, seed: u64, len: usize, pace: Duration) -> Stream {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        Stream::over(s, seed, len, pace)
    }

    fn over(s: TcpStream, seed: u64, len: usize, pace: Duration) -> Stream {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let data = random_bytes(seed, len);
        let mut w = s.try_clone().unwrap();
        let sent = data.clone();
        let writer = thread::spawn(move || {
            for chunk in sent.chunks(16 * 1024) {
                w.write_all(chunk).unwrap();
                thread::sleep(pace);
            }
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut r = s;
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            let _ = r.read_to_end(&mut got);
            got
        });
        Stream {
            writer,
            reader,
            data,
        }
    }

    /// Wait for the end; the bytes must have come back intact.
    pub(crate) fn check(self, what: &str) {
        self.writer.join().unwrap();
        let got = self.reader.join().unwrap();
        assert!(
            got == self.data,
            "{what}: {} of {} bytes came back intact",
            got.iter()
                .zip(&self.data)
                .take_while(|(a, b)| a == b)
                .count(),
            self.data.len()
        );
    }
}

/// The front's pid now (it changes with every upgrade).
pub(crate) fn front_pid(proxy: &Proxy) -> u32 {
    proxy.ctl_json("status")["pid"].as_u64().unwrap() as u32
}

/// Wait until a front other than `old` serves and has replaced every
/// worker; return its pid.
pub(crate) fn wait_upgraded(proxy: &Proxy, old: u32, limit: Duration) -> u32 {
    wait_for(limit, "the upgrade (front and workers) to finish", || {
        let st: serde_json::Value =
            serde_json::from_str(&proxy.try_ctl("status --json").ok()?).ok()?;
        let pid = st["pid"].as_u64()? as u32;
        (pid != old && st["upgrading"] == false && st["rolling_restart"] == false).then_some(pid)
    })
}

/// Every pid of a worker process (serving or draining).
pub(crate) fn all_worker_pids(proxy: &Proxy) -> Vec<u32> {
    let w = proxy.ctl_json("workers");
    let mut pids = Vec::new();
    for row in w.as_array().unwrap() {
        if let Some(p) = row["pid"].as_u64() {
            pids.push(p as u32);
        }
        for d in row["draining_pids"].as_array().unwrap() {
            pids.push(d.as_u64().unwrap() as u32);
        }
    }
    pids
}

fn counter(m: &Metrics, name: &str) -> f64 {
    m.series
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn an_upgrade_to_another_build_under_load_fails_nothing_and_counters_go_on() {
    let dir = temp_dir("upgrade");
    let start = binary_copy(&dir, "rrproxy");
    let names = name_backend("n");
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[names.addr, echo.addr])
        .binary(&start)
        .workers(2)
        .args(["--policy", "least-conn"])
        .start();
    let old_front = front_pid(&proxy);
    let old_build = proxy.ctl_json("status")["build"]
        .as_str()
        .unwrap()
        .to_string();
    // Two long streams on the echo backend (least-conn puts the second
    // stream on it as well once the first holds the other).
    proxy.ctl(&format!("backend disable {}", names.addr));
    let s1 = Stream::start(&proxy, 1, 6 << 20, Duration::from_millis(15));
    let s2 = Stream::start(&proxy, 2, 6 << 20, Duration::from_millis(15));
    proxy.ctl(&format!("backend enable {}", names.addr));
    proxy.ctl(&format!("backend disable {}", echo.addr));
    let load = Load::start(&proxy, 50);
    wait_until(Duration::from_secs(30), "load to flow", || {
        load.counts().0 > 2000
    });
    let before = proxy.scrape();
    // The package manager puts another build at the start path.
    let next = other_build_copy(&dir, "rrproxy.new");
    replace_file(&start, &next);
    let reply = proxy.ctl("upgrade");
    assert!(reply.contains("front upgraded"), "{reply}");
    // While the workers roll (the streams hold the old ones), ctl status
    // shows both builds.
    let st = proxy.ctl_json("status");
    let new_build = st["build"].as_str().unwrap().to_string();
    assert_ne!(new_build, old_build, "the new front is the new build");
    wait_until(Duration::from_secs(20), "both builds at work", || {
        let st = proxy.ctl_json("status");
        let builds: Vec<String> = st["builds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_string())
            .collect();
        builds.len() == 2 && builds.contains(&old_build[..12].to_string())
    });
    assert!(proxy.ctl("status").contains("builds now:"));
    let new_front = wait_upgraded(&proxy, old_front, Duration::from_secs(90));
    wait_until(Duration::from_secs(60), "20,000 requests", || {
        load.counts().0 >= 20_000
    });
    let (ok, failed) = load.finish();
    s1.check("first stream");
    s2.check("second stream");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across the upgrade",
        ok + failed
    );
    // Every rrproxy process runs the new file.
    let start_path = start.display().to_string();
    wait_until(Duration::from_secs(30), "old workers to leave", || {
        all_worker_pids(&proxy).len() == 2
    });
    let mut pids = all_worker_pids(&proxy);
    pids.push(new_front);
    for pid in pids {
        assert_eq!(exe_of(pid), start_path, "process {pid} runs the new file");
    }
    assert!(!alive(old_front), "the old front is gone");
    let rows = proxy.ctl_json("workers");
    for row in rows.as_array().unwrap() {
        assert_eq!(row["build"].as_str().unwrap(), &new_build[..12]);
    }
    // Counters went on from their values.
    let after = proxy.scrape();
    for name in [
        "rrproxy_accepted_connections_total",
        "rrproxy_worker_connections_total",
        "rrproxy_backend_connections_total",
        "rrproxy_backend_received_bytes_total",
        "rrproxy_connection_duration_seconds_count",
        "rrproxy_backend_connect_seconds_count",
    ] {
        assert!(
            counter(&after, name) >= counter(&before, name) + 1.0,
            "{name} went from {} to {}",
            counter(&before, name),
            counter(&after, name)
        );
    }
    assert_eq!(
        after.sum_where("rrproxy_build_info", "build", &new_build),
        1.0,
        "build_info shows the new build"
    );
    assert_eq!(
        after.get("rrproxy_policy_info", &[("policy", "least-conn")]),
        Some(1.0),
        "the policy in force passed over"
    );
}

#[test]
fn ten_upgrades_back_to_back_under_load_fail_nothing() {
    let b = name_backend("t");
    let proxy = ProxyCmd::new(&[b.addr]).workers(2).start();
    let load = Load::start(&proxy, 50);
    wait_until(Duration::from_secs(30), "load to flow", || {
        load.counts().0 > 500
    });
    let mut front = front_pid(&proxy);
    for i in 0..10 {
        let reply = proxy.ctl("upgrade");
        assert!(reply.contains("front upgraded"), "upgrade {i}: {reply}");
        front = wait_upgraded(&proxy, front, Duration::from_secs(60));
    }
    let (ok, failed) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} failed over ten upgrades",
        ok + failed
    );
    let m = proxy.scrape();
    assert_eq!(
        m.get("rrproxy_worker_restarts_total", &[("worker", "0")]),
        Some(10.0)
    );
}

/// A broken new binary, or one that rejects the config: the command fails
/// naming the cause, the running proxy serves on as if nothing happened.
#[test]
fn a_new_binary_that_cannot_take_over_changes_nothing() {
    let dir = temp_dir("badupgrade");
    let b = name_backend("keep");
    let config = dir.join("rrproxy.toml");
    std::fs::write(&config, format!("backends = [\"{}\"]\n", b.addr)).unwrap();
    let proxy = ProxyCmd::new(&[])
        .args(["--config", config.to_str().unwrap()])
        .workers(2)
        .start();
    let front = front_pid(&proxy);
    let workers = proxy.worker_pids();
    let load = Load::start(&proxy, 20);
    wait_until(Duration::from_secs(30), "load to flow", || {
        load.counts().0 > 200
    });
    let script = dir.join("exits1");
    std::fs::write(&script, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let plain = binary_copy(&dir, "not-executable");
    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let missing = dir.join("missing");
    let cases: Vec<(String, &str)> = vec![
        (script.display().to_string(), "is not rrproxy"),
        (plain.display().to_string(), "is not executable"),
        (dir.display().to_string(), "is a directory"),
        (missing.display().to_string(), "No such file"),
        ("/bin/true".into(), "is not rrproxy"),
    ];
    for (path, why) in &cases {
        let reply = proxy.ctl(&format!("upgrade {path}"));
        assert!(reply.starts_with("error:"), "{path}: {reply}");
        assert!(
            reply.contains(why) && reply.contains(path.as_str()),
            "{path}: {reply}"
        );
    }
    // The same binary, but the config file on disk became invalid: the new
    // front refuses to start and says why.
    std::fs::write(&config, "backends = [\"nowhere\"]\n").unwrap();
    let reply = proxy.ctl("upgrade");
    assert!(
        reply.starts_with("error:")
            && reply.contains("refused to start")
            && reply.contains("nowhere"),
        "{reply}"
    );
    thread::sleep(Duration::from_millis(300)); // load keeps going meanwhile
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {} failed", ok + failed);
    assert_eq!(front_pid(&proxy), front, "the same front serves");
    assert_eq!(proxy.worker_pids(), workers, "the same workers serve");
    assert_eq!(fetch_name(&proxy), "keep");
    proxy.wait_log("upgrade failed, nothing changed");
    proxy.wait_log("is not executable");
}

/// An upgrade asked for while the workers are still being replaced after
/// the last one goes ahead and supersedes that restart (the reply says
/// so): the newest front replaces every worker, and the stream held by the
/// oldest worker finishes intact.
#[test]
fn an_upgrade_during_a_restart_of_the_workers_supersedes_it() {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr])
        .workers(1)
        .args(["--drain-timeout", "30s"])
        .start();
    // A stream holds the old worker, so the restart after the upgrade waits.
    let stream = Stream::start(&proxy, 9, 4 << 20, Duration::from_millis(20));
    let front = front_pid(&proxy);
    assert!(proxy.ctl("upgrade").contains("front upgraded"));
    assert_eq!(proxy.ctl_json("status")["rolling_restart"], true);
    let again = proxy.ctl("upgrade");
    assert!(
        again.contains("front upgraded") && again.contains("superseded"),
        "{again}"
    );
    stream.check("stream across two upgrades");
    let newest = wait_upgraded(&proxy, front, Duration::from_secs(60));
    let build = proxy.ctl_json("status")["build"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(Duration::from_secs(30), "only the newest workers", || {
        all_worker_pids(&proxy).len() == 1
    });
    assert_eq!(
        proxy.ctl_json("workers")[0]["build"].as_str().unwrap(),
        &build[..12]
    );
    assert_ne!(newest, front);
}

/// SIGHUP, SIGUSR1, SIGUSR2 and SIGINT to every worker, then SIGHUP to the
/// whole process group, while a stream is in flight: nobody dies.
#[test]
fn stray_signals_never_kill_a_worker() {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr]).workers(2).start();
    let stream = Stream::start(&proxy, 5, 4 << 20, Duration::from_millis(10));
    let workers: Vec<u32> = proxy.worker_pids().into_iter().flatten().collect();
    for sig in [
        "HUP", "USR1", "USR2", "INT", "QUIT", "ALRM", "PIPE", "TSTP", "RTMIN",
    ] {
        for &w in &workers {
            kill(w, sig);
        }
    }
    let group = std::process::Command::new("kill")
        .args(["-HUP", "--", &format!("-{}", proxy.pid())])
        .status()
        .unwrap();
    assert!(group.success());
    stream.check("stream while signals flew");
    assert_eq!(
        proxy
            .worker_pids()
            .into_iter()
            .flatten()
            .collect::<Vec<_>>(),
        workers,
        "no worker died"
    );
    for &w in &workers {
        assert!(alive(w), "worker {w} is alive");
    }
    let m = proxy.scrape();
    assert_eq!(counter(&m, "rrproxy_worker_restarts_total"), 0.0);
    proxy.wait_log("ignoring a signal");
}

#[test]
fn a_worker_respawned_after_the_file_changed_runs_the_fronts_build() {
    let dir = temp_dir("samebuild");
    let start = binary_copy(&dir, "rrproxy");
    let b = name_backend("same");
    let proxy = ProxyCmd::new(&[b.addr]).binary(&start).workers(2).start();
    let front = proxy.pid();
    let front_exe = exe_of(front);
    replace_file(&start, &other_build_copy(&dir, "rrproxy.next"));
    let victim = proxy.worker_pids()[1].unwrap();
    kill(victim, "KILL");
    let fresh = wait_for(Duration::from_secs(20), "slot 1 to be respawned", || {
        let row = &proxy.ctl_json("workers")[1];
        let pid = row["pid"].as_u64()? as u32;
        (pid != victim && row["state"] == "up").then_some(pid)
    });
    assert_eq!(
        exe_of(fresh),
        exe_of(front),
        "the respawned worker runs the front's image, not the new file"
    );
    assert!(
        exe_of(front).ends_with("(deleted)"),
        "{front_exe} was replaced"
    );
    let build = proxy.ctl_json("status")["build"]
        .as_str()
        .unwrap()
        .to_string();
    let rows = proxy.ctl_json("workers");
    assert_eq!(rows[1]["build"].as_str().unwrap(), &build[..12]);
    assert_eq!(fetch_name(&proxy), "same");
}

#[test]
fn a_killed_front_leaves_its_workers_to_finish_and_a_new_front_starts_at_once() {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr]).workers(2).start();
    let port = proxy.listen.port();
    let stream = Stream::start(&proxy, 3, 4 << 20, Duration::from_millis(10));
    let orphans: Vec<u32> = proxy.worker_pids().into_iter().flatten().collect();
    kill(proxy.pid(), "KILL");
    // A new front on the same port at once, while the orphans drain.
    let second = ProxyCmd::new(&[echo.addr])
        .listen_on(&format!("127.0.0.1:{port}"))
        .workers(1)
        .start();
    let mut s = second.connect();
    s.write_all(b"hello").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello", "the new front serves");
    stream.check("stream through an orphaned worker");
    wait_until(Duration::from_secs(30), "the orphans to exit", || {
        orphans.iter().all(|&p| !alive(p))
    });
}

#[test]
fn systemd_hears_reloading_the_new_main_pid_and_ready_on_an_upgrade() {
    let dir = temp_dir("notify-upgrade");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let b = name_backend("n");
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(1)
        .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .start();
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(next().contains("READY=1"));
    let old = proxy.pid();
    proxy.signal("USR2");
    let reloading = next();
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    let main = next();
    let new_pid = wait_upgraded(&proxy, old, Duration::from_secs(30));
    assert!(main.contains(&format!("MAINPID={new_pid}")), "{main}");
    let ready = next();
    assert!(ready.contains("READY=1"), "{ready}");
    assert_eq!(fetch_name(&proxy), "n");
}

/// SIGTERM sent to one worker (by hand, or by a tool that signals the
/// whole cgroup): it finishes its connections and exits, having told the
/// front, which takes it out of rotation at once, starts a replacement in
/// its slot, and does not count the exit as a crash.
#[test]
fn a_worker_given_sigterm_drains_and_is_replaced() {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr]).workers(2).start();
    let stream = Stream::start(&proxy, 8, 2 << 20, Duration::from_millis(10));
    let victim = proxy.worker_pids()[0].unwrap();
    let other = proxy.worker_pids()[1].unwrap();
    let load = Load::start_echo(&proxy, 4);
    wait_until(Duration::from_secs(10), "load to flow", || {
        load.counts().0 > 100
    });
    kill(victim, "TERM");
    let fresh = wait_for(Duration::from_secs(20), "slot 0 replaced", || {
        let row = &proxy.ctl_json("workers")[0];
        let pid = row["pid"].as_u64()? as u32;
        (pid != victim && row["state"] != "starting").then_some(pid)
    });
    assert_ne!(fresh, other);
    stream.check("a stream on the worker told to stop");
    wait_until(Duration::from_secs(20), "the old worker to exit", || {
        !alive(victim)
    });
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {} failed", ok + failed);
    proxy.wait_log("worker was told to stop by a signal");
    let m = proxy.scrape();
    assert_eq!(
        m.get("rrproxy_worker_restarts_total", &[("worker", "0")]),
        Some(1.0)
    );
    assert!(
        !proxy.stderr().contains("worker died"),
        "not counted as a crash"
    );
}
