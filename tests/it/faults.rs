//! Fault injection: the real binary with things broken around it, all on
//! loopback, each scenario bounded in time. Every test's doc comment says
//! what is promised: who may fail, who must not, how fast the proxy
//! recovers. The shims that break things are in `shims`.

mod backends;
mod clients;
mod worker_frames;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// `n` requests against a `name_backend` from `threads` threads; each
/// connects, reads the name line, closes. Returns (ok, failed, slowest).
pub(crate) fn requests(
    addr: SocketAddr,
    threads: usize,
    n: usize,
    limit: Duration,
) -> (u64, u64, Duration) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + limit;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (ok, failed, slowest) = (ok.clone(), failed.clone(), slowest.clone());
            let mine = n / threads + usize::from(t < n % threads);
            thread::spawn(move || {
                for _ in 0..mine {
                    if Instant::now() >= deadline {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let began = Instant::now();
                    let served = (|| {
                        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
                        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                        let mut line = String::new();
                        BufReader::new(s).read_line(&mut line).ok()?;
                        (!line.is_empty()).then_some(())
                    })();
                    let took = began.elapsed().as_micros() as u64;
                    slowest.fetch_max(took, Ordering::Relaxed);
                    match served {
                        Some(()) => ok.fetch_add(1, Ordering::Relaxed),
                        None => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        Duration::from_micros(slowest.load(Ordering::Relaxed)),
    )
}

/// Promise: logging never blocks proxying. With trace logging (several
/// lines per connection from every process) and stderr a pipe nobody
/// reads, the pipe fills within the first connections; every one of
/// 2,000 requests is still served (none fails), the metrics endpoint still
/// answers, and the front counts the lines it had to drop in
/// `rrproxy_log_lines_dropped_total`, a count an upgrade carries on.
#[test]
fn a_stalled_log_pipe_never_stalls_proxying() {
    let b = name_backend("n");
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(2)
        .arg("-vv")
        .env("RUST_LOG", "trace")
        .stderr_unread()
        .start();
    let (ok, failed, _) = requests(proxy.listen, 4, 2000, Duration::from_secs(90));
    assert_eq!((ok, failed), (2000, 0), "requests served / failed");
    // Make the front itself log more than its queue holds: every policy
    // switch is a line.
    let mut ctl = std::os::unix::net::UnixStream::connect(&proxy.control).unwrap();
    ctl.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut replies = BufReader::new(ctl.try_clone().unwrap());
    for i in 0..2 * 8192 {
        let policy = ["least-conn", "round-robin"][i % 2];
        writeln!(ctl, "policy {policy}").unwrap();
        let mut line = String::new();
        while line != "\n" {
            line.clear();
            assert!(replies.read_line(&mut line).unwrap() > 0);
        }
    }
    let m = proxy.scrape();
    let dropped = m.get("rrproxy_log_lines_dropped_total", &[]).unwrap();
    assert!(dropped > 0.0, "{dropped}");
    let (ok, failed, _) = requests(proxy.listen, 2, 100, Duration::from_secs(30));
    assert_eq!((ok, failed), (100, 0), "still serving after the drops");
    // An upgrade (stderr still stalled) carries the count on: the new
    // front starts from the old one's.
    let reply = proxy.ctl("upgrade");
    assert!(reply.contains("front upgraded"), "{reply}");
    let after = proxy
        .scrape()
        .get("rrproxy_log_lines_dropped_total", &[])
        .unwrap();
    assert!(after >= dropped, "{after} < {dropped} after the upgrade");
    let (ok, failed, _) = requests(proxy.listen, 2, 100, Duration::from_secs(30));
    assert_eq!((ok, failed), (100, 0), "serving after the upgrade");
}

/// Promise: a worker's dropped log lines are counted too, in the same
/// `rrproxy_log_lines_dropped_total`, and survive the worker's death. Only
/// the worker logs per connection here (`RUST_LOG` at debug for the
/// worker's modules, warnings elsewhere), to a pipe nobody reads: once its
/// queue of 8,192 lines and the pipe are full, its lines are dropped, and
/// every request is still served.
#[test]
fn a_workers_dropped_log_lines_are_counted_and_kept_when_it_dies() {
    let b = name_backend("n");
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(1)
        .env("RUST_LOG", "warn,rrproxy::worker=debug")
        .stderr_unread()
        .start();
    let dropped = |p: &Proxy| {
        p.scrape()
            .get("rrproxy_log_lines_dropped_total", &[])
            .unwrap()
    };
    assert_eq!(dropped(&proxy), 0.0);
    // A few lines per connection: at most 20 rounds of 1,000 requests.
    let mut served = 0;
    for _ in 0..20 {
        let (ok, failed, _) = requests(proxy.listen, 4, 1000, Duration::from_secs(60));
        assert_eq!((ok, failed), (1000, 0), "requests served / failed");
        served += ok;
        if dropped(&proxy) > 0.0 {
            break;
        }
    }
    let before = dropped(&proxy);
    assert!(before > 0.0, "no drop counted after {served} requests");
    // The slot's next worker starts from zero; the count does not.
    let victim = proxy.worker_pids()[0].unwrap();
    kill(victim, "KILL");
    wait_until(Duration::from_secs(10), "a new worker in slot 0", || {
        proxy.worker_pids()[0].is_some_and(|p| p != victim)
    });
    assert!(dropped(&proxy) >= before, "{} < {before}", dropped(&proxy));
    let (ok, failed, _) = requests(proxy.listen, 2, 100, Duration::from_secs(30));
    assert_eq!((ok, failed), (100, 0), "still serving");
}

/// Promise: the metrics endpoint (in the front) holds at most 32
/// connections at once; one more is closed at once instead of waiting,
/// proxying is unaffected, and scrapes work again as soon as the hogs
/// leave. (Silent hogs are also cut after the 10 s header timeout.)
#[test]
fn the_metrics_endpoint_caps_its_connections() {
    let b = name_backend("n");
    let proxy = ProxyCmd::new(&[b.addr]).workers(1).start();
    let m = proxy.metrics.unwrap();
    let hogs: Vec<TcpStream> = (0..32)
        .map(|_| TcpStream::connect_timeout(&m, Duration::from_secs(5)).unwrap())
        .collect();
    // Accepted after the hogs (the accept queue is in order): over the cap.
    let mut extra = TcpStream::connect_timeout(&m, Duration::from_secs(5)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let began = Instant::now();
    let mut buf = [0u8; 16];
    let got = extra.read(&mut buf);
    assert!(
        matches!(got, Ok(0))
            || got
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection over the cap was not closed: {got:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(fetch_name(&proxy), "n", "proxying is unaffected");
    drop(hogs);
    wait_until(Duration::from_secs(5), "scrapes to work again", || {
        healthz(m).is_some_and(|r| r.ends_with("\r\n\r\nok\n"))
    });
}

/// `GET /healthz`, or `None` if the connection was refused or cut.
fn healthz(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    Some(resp)
}

/// One echo round trip through `addr`: send a line, half-close, read it
/// back. Returns how long it took, or `None` if it failed.
pub(crate) fn echo_once(addr: SocketAddr) -> Option<Duration> {
    let began = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"ping\n").ok()?;
    s.shutdown(Shutdown::Write).ok()?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).ok()?;
    (got == b"ping\n").then(|| began.elapsed())
}

/// `ctl status`'s count of connections the proxy holds.
pub(crate) fn active(proxy: &Proxy) -> u64 {
    proxy.ctl_json("status")["active_connections"]
        .as_u64()
        .unwrap()
}

/// Promise: `--drain-timeout 1000000000y` (or any duration over 24h) is
/// refused at start with one line naming the setting and the cap; nothing
/// runs, nothing panics. (Before: accepted, and a large enough one
/// panicked in `Instant` arithmetic at shutdown.)
#[test]
fn an_absurd_duration_is_one_clear_line_not_a_panic() {
    for (flag, value) in [
        ("--drain-timeout", "1000000000y"),
        ("--drain-timeout", "300000000000y"),
        ("--idle-timeout", "25h"),
        ("--health-interval", "1000000000y"),
    ] {
        let (st, err) = run_bin(&[
            "--backend",
            "127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "off",
            "--control",
            "off",
            flag,
            value,
        ]);
        assert!(!st.success(), "{flag} {value} was accepted");
        assert_eq!(err.trim_end().lines().count(), 1, "{flag} {value}: {err}");
        assert!(
            err.contains(&flag[2..]) && err.contains("at most 24h"),
            "{flag} {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Promise: a worker that stops (SIGSTOP: alive, not reading its channel)
/// costs at most the connections it was already proxying. New clients are
/// all served within 6 s (the watchdog replaces it after 5 s; connections
/// queued to it are recovered and served by another worker), and its slot
/// gets a new process. (Before the watchdog, half of the new clients
/// waited for ever.)
#[test]
fn a_stopped_worker_is_replaced_and_its_clients_are_served() {
    let b = name_backend("n");
    let proxy = ProxyCmd::new(&[b.addr]).workers(2).start();
    let stopped = proxy.worker_pids()[0].unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-STOP", &stopped.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let addr = proxy.listen;
            thread::spawn(move || {
                let began = Instant::now();
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(8))).ok()?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line).ok()?;
                (line == "n\n").then(|| began.elapsed())
            })
        })
        .collect();
    for c in clients {
        let took = c.join().unwrap().expect("a client was not served");
        assert!(took < Duration::from_secs(6), "{took:?}");
    }
    wait_until(
        Duration::from_secs(10),
        "slot 0 to get a new process",
        || proxy.worker_pids()[0].is_some_and(|p| p != stopped),
    );
}

/// A listening socket that fails under the front (here: shut down by the
/// service manager that passed it, so every accept fails with EINVAL while
/// the socket stays readable) does not make the accept loop spin: it
/// backs off and says so, at most a line a second.
#[test]
fn a_listening_socket_that_fails_does_not_make_the_front_spin() {
    use std::process::{Command, Stdio};
    let b = name_backend("l");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sock = socket2::SockRef::from(&listener);
    sock.set_cloexec(false).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let dir = temp_dir("accept-fails");
    let log = dir.join("stderr.log");
    let script = format!(
        "exec 3<&{fd}; exec {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec {BIN} --backend {} --workers 1 --metrics off --control off",
        b.addr
    );
    let mut child = std::os::unix::process::CommandExt::process_group(
        Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
        0,
    )
    .spawn()
    .unwrap();
    let front = child.id();
    wait_until(
        Duration::from_secs(10),
        "service on the inherited socket",
        || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .ok()
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                    let mut line = String::new();
                    BufReader::new(&mut s).read_line(&mut line).ok()?;
                    (line.trim() == "l").then_some(())
                })
                .is_some()
        },
    );
    // The "service manager" shuts its socket down: accept now fails, at
    // once and forever, on a socket that polls readable.
    sock.shutdown(Shutdown::Read).unwrap();
    thread::sleep(Duration::from_millis(200));
    let before = cpu_seconds(front);
    let watched = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let spent = cpu_seconds(front) - before;
    let wall = watched.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{front}")])
        .status();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        spent < 0.1 * wall,
        "the front used {spent:.2}s of CPU in {wall:.2}s with a failing listener:\n{stderr}"
    );
    assert!(
        stderr.contains("the listening socket fails; backing off"),
        "{stderr}"
    );
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}
