//! rrproxy as PID 1, as in a container: the proxy runs as PID 1 of a PID
//! namespace of its own (`unshare --pid --fork --mount-proc`), so it is
//! its own init. Its front's death must not take the workers along, an
//! upgrade must be followed, and a stop must drain and exit 0.
//!
//! Pids: `ctl status` and `ctl workers` give pids as the proxy sees them
//! (inside its namespace); signals and `/proc` here need the host's, so
//! `host_pid` maps one to the other through `NSpid` in `/proc/PID/status`.
//! Needs root and unshare(1): ignored, with the reason, where `build.rs`
//! found that this cannot work; CI (`RRPROXY_REQUIRE_TOOLS=1`) runs them.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use crate::upgrade::{Stream, front_pid, wait_upgraded};

const UNSHARE: [&str; 6] = [
    "unshare",
    "--pid",
    "--fork",
    "--mount-proc",
    "--kill-child",
    "--",
];

/// Run the proxy as PID 1 of a new PID namespace.
fn as_pid1(cmd: ProxyCmd) -> ProxyCmd {
    let probe = rustix::process::geteuid().is_root()
        && Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--", "sh", "-c"])
            .arg("test $$ = 1")
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        probe,
        "the PID-1 tests need root and unshare(1) to run the proxy as PID 1 of a new PID namespace"
    );
    cmd.under(UNSHARE)
}

/// A listening address a restarted front can bind again: a port on a
/// loopback address of its own, which no other test binds or connects from.
fn fixed_listen(last: u8) -> String {
    let ip = Ipv4Addr::new(127, 0, 0, last);
    let port = TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    SocketAddr::from((ip, port)).to_string()
}

/// The proxy's init: `unshare`'s one child.
fn init_of(proxy: &Proxy) -> u32 {
    let init = wait_for(Duration::from_secs(10), "unshare's child", || {
        children(proxy.pid()).first().map(|(p, _)| *p)
    });
    assert_eq!(ns_pid(init), Some(1), "rrproxy is PID 1 of its namespace");
    init
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
}

/// `pid` (host) as its own namespace sees it.
fn ns_pid(pid: u32) -> Option<u32> {
    status_field(pid, "NSpid:")?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

fn parent(pid: u32) -> Option<u32> {
    status_field(pid, "PPid:")?.parse().ok()
}

/// The host pid of the process that is `ns` in the namespace of `init`.
fn host_pid(init: u32, ns: u32) -> u32 {
    let ours = std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if ns_pid(p) == Some(ns)
            && std::fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|l| l == ours)
        {
            return p;
        }
    }
    panic!("no process is pid {ns} in the namespace of {init}");
}

/// Gone from `/proc`: ended and reaped (a zombie would still be there).
fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn worker_host_pids(proxy: &Proxy, init: u32) -> Vec<u32> {
    proxy
        .worker_pids()
        .into_iter()
        .flatten()
        .map(|p| host_pid(init, p))
        .collect()
}

/// Wait until the front holds at least one connection (the stream left
/// the listen backlog for a worker).
fn wait_connection(proxy: &Proxy) {
    wait_until(
        Duration::from_secs(20),
        "the stream to reach a worker",
        || {
            proxy.ctl_json("status")["active_connections"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        },
    );
}

fn echo_once(addr: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"hello").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

#[test]
#[cfg_attr(
    not(has_pid_namespaces),
    ignore = "needs root and unshare(1) (util-linux) with PID namespaces"
)]
fn as_pid1_a_killed_front_is_replaced_at_once_and_its_workers_finish() {
    let echo = echo_backend();
    let listen = fixed_listen(91);
    let mut proxy = as_pid1(
        ProxyCmd::new(&[echo.addr])
            .listen_on(&listen)
            .workers(2)
            .no_metrics(),
    )
    .start();
    let init = init_of(&proxy);
    let front_ns = front_pid(&proxy);
    let front = host_pid(init, front_ns);
    assert_eq!(parent(front), Some(init), "the front is the init's child");
    let orphans = worker_host_pids(&proxy, init);
    let stream = Stream::start(&proxy, 11, 4 << 20, Duration::from_millis(10));
    wait_connection(&proxy);
    kill(front, "KILL");
    // The init starts a new front at once, on the same port.
    let new_ns = wait_for(Duration::from_secs(20), "a new front", || {
        let st: serde_json::Value =
            serde_json::from_str(&proxy.try_ctl("status --json").ok()?).ok()?;
        let pid = st["pid"].as_u64()? as u32;
        (pid != front_ns && st["workers_up"] == st["workers"]).then_some(pid)
    });
    assert_eq!(echo_once(proxy.listen), b"hello", "the new front serves");
    assert_eq!(parent(host_pid(init, new_ns)), Some(init));
    wait_until(
        Duration::from_secs(10),
        "the init to reap the dead front",
        || reaped(front),
    );
    stream.check("stream through an orphaned worker");
    wait_until(
        Duration::from_secs(30),
        "the orphaned workers to end and be reaped",
        || orphans.iter().all(|&p| reaped(p)),
    );
    assert!(alive(init));
    let log = proxy.stderr();
    assert!(
        log.contains(&format!(
            "init: the front (pid {front_ns}) was killed by signal 9"
        )) && log.contains("starting a new front now"),
        "{log}"
    );
    // The restarted front stops like the first would have (and the init
    // removes its notify socket on the way out).
    kill(init, "TERM");
    let status = proxy.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
}

#[test]
#[cfg_attr(
    not(has_pid_namespaces),
    ignore = "needs root and unshare(1) (util-linux) with PID namespaces"
)]
fn as_pid1_an_upgrade_is_followed_and_a_later_sigterm_reaches_the_new_front() {
    let echo = echo_backend();
    let mut proxy = as_pid1(ProxyCmd::new(&[echo.addr]).workers(2)).start();
    let init = init_of(&proxy);
    let old_ns = front_pid(&proxy);
    let old = host_pid(init, old_ns);
    let stream = Stream::start(&proxy, 12, 4 << 20, Duration::from_millis(10));
    wait_connection(&proxy);
    let reply = proxy.ctl("upgrade");
    assert!(reply.contains("front upgraded"), "{reply}");
    let new_ns = wait_upgraded(&proxy, old_ns, Duration::from_secs(60));
    let new = host_pid(init, new_ns);
    // The old front exited 0 once it had handed over, and the init reaped
    // it; had the init not followed MAINPID it would have taken that exit
    // for a stop and ended the namespace.
    wait_until(
        Duration::from_secs(10),
        "the old front to be reaped",
        || reaped(old),
    );
    assert!(alive(init), "the init runs on after the old front's exit");
    assert_eq!(parent(new), Some(init), "the new front is the init's now");
    assert_eq!(echo_once(proxy.listen), b"hello");
    stream.check("stream across the upgrade");
    let log = proxy.stderr();
    assert!(
        log.contains(&format!("init: the front handed over to pid {new_ns}")),
        "{log}"
    );
    // SIGTERM to PID 1 reaches the new front: it drains and everything
    // exits 0.
    let workers = worker_host_pids(&proxy, init);
    kill(init, "TERM");
    let status = proxy.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    for p in workers.into_iter().chain([new, init]) {
        assert!(reaped(p), "process {p} is gone");
    }
    let log = proxy.stderr();
    assert!(
        log.contains(&format!("passing it to the front (pid {new_ns})"))
            && log.contains(&format!(
                "init: the front (pid {new_ns}) exited with status 0"
            )),
        "{log}"
    );
}

#[test]
#[cfg_attr(
    not(has_pid_namespaces),
    ignore = "needs root and unshare(1) (util-linux) with PID namespaces"
)]
fn as_pid1_sigterm_drains_and_exits_0_and_the_outside_hears_ready_and_stopping() {
    let dir = temp_dir("pid1-notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut next = {
        let mut buf = [0u8; 512];
        move || {
            let n = sock.recv(&mut buf).expect("a notification");
            String::from_utf8_lossy(&buf[..n]).to_string()
        }
    };
    let echo = echo_backend();
    let mut proxy = as_pid1(
        ProxyCmd::new(&[echo.addr])
            .workers(2)
            .env("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
    )
    .start();
    let ready = next();
    assert!(ready.contains("READY=1"), "{ready}");
    let init = init_of(&proxy);
    let front = host_pid(init, front_pid(&proxy));
    let workers = worker_host_pids(&proxy, init);
    let stream = Stream::start(&proxy, 13, 4 << 20, Duration::from_millis(10));
    wait_connection(&proxy);
    kill(init, "TERM");
    let stopping = next();
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    stream.check("stream through the drain");
    let status = proxy.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    for p in workers.into_iter().chain([front, init]) {
        assert!(reaped(p), "process {p} is gone");
    }
    assert!(proxy.stderr().contains("SIGTERM received"));
}

#[test]
#[cfg_attr(
    not(has_pid_namespaces),
    ignore = "needs root and unshare(1) (util-linux) with PID namespaces"
)]
fn as_pid1_a_front_that_cannot_start_is_not_retried() {
    let _ = as_pid1(ProxyCmd::new(&[]));
    // Past the limit the init kept running after its front could not start.
    let mut cmd = Command::new(UNSHARE[0]);
    cmd.args(&UNSHARE[1..])
        .arg(BIN)
        .args(["--listen", "127.0.0.1:0", "--backend", "nowhere"])
        .args(["--control", "off", "--metrics", "off"]);
    let (status, err) = run_to_exit(cmd, Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "the front's own status: {err}");
    assert!(err.contains("nowhere"), "{err}");
    assert!(
        err.contains("init: the front never got ready; giving up"),
        "{err}"
    );
    assert_eq!(err.matches("init: started the front").count(), 1, "{err}");
}
