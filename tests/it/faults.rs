//! Fault injection: the real binary with things broken around it, all on
//! loopback, each scenario bounded in time. Every test's doc comment says
//! what is promised: who may fail, who must not, how fast the proxy
//! recovers. The shims that break things are in `shims`.

mod worker_frames;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::shims;
use crate::support::*;

/// `n` requests against a `name_backend` from `threads` threads; each
/// connects, reads the name line, closes. Returns (ok, failed, slowest).
fn requests(addr: SocketAddr, threads: usize, n: usize, limit: Duration) -> (u64, u64, Duration) {
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
/// `rrproxy_log_lines_dropped_total`.
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
fn echo_once(addr: SocketAddr) -> Option<Duration> {
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
fn active(proxy: &Proxy) -> u64 {
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

/// Promise: a backend that accepts and never reads costs only its own
/// clients. Each of them stalls once the buffers between fill (the proxy
/// buffers at most a chunk per direction, never without bound) and is
/// closed after `--idle-timeout` (2 s) without progress, its backend
/// connection with it; meanwhile every other client of the same worker is
/// served at once, and afterwards the proxy holds nothing.
#[test]
fn a_backend_that_never_reads_stalls_only_its_own_clients() {
    let (silent, silent_closed) = shims::never_reads_backend();
    let good = name_backend("good");
    let proxy = ProxyCmd::new(&[silent.addr, good.addr])
        .workers(1)
        .args(["--idle-timeout", "2s", "--health-interval", "off"])
        .start();
    let mut writers = Vec::new();
    for _ in 0..20 {
        if writers.len() == 4 {
            break;
        }
        let mut s = proxy.connect();
        if read_name(&mut s) != "silent" {
            continue;
        }
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        writers.push(thread::spawn(move || {
            let chunk = vec![7u8; 64 * 1024];
            let began = Instant::now();
            let mut written = 0usize;
            while written < 64 << 20 {
                match s.write(&chunk) {
                    Ok(n) => written += n,
                    Err(_) => return (written, began.elapsed(), true),
                }
            }
            (written, began.elapsed(), false)
        }));
    }
    assert_eq!(writers.len(), 4, "clients on the silent backend");
    let (ok, failed, slowest) = requests(proxy.listen, 4, 100, Duration::from_secs(30));
    assert_eq!((ok, failed), (100, 0));
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
    for w in writers {
        let (written, took, cut) = w.join().unwrap();
        assert!(cut, "a stalled client was never closed ({written} bytes)");
        assert!(written < 64 << 20);
        assert!(took < Duration::from_secs(20), "closed after {took:?}");
    }
    // Every connection the silent backend took (the stalled ones and the
    // requests that landed there) was closed.
    wait_until(
        Duration::from_secs(10),
        "backend connections closed",
        || silent_closed.load(Ordering::Relaxed) == silent.accepted.load(Ordering::Relaxed),
    );
    wait_until(Duration::from_secs(5), "nothing held", || {
        active(&proxy) == 0
    });
}

/// Promise: when a backend resets mid-stream, its client gets a prefix of
/// what was sent and then a reset, at once: never a clean EOF that would
/// pass a cut response off as whole. Other clients are unaffected and the
/// proxy holds nothing afterwards.
#[test]
fn a_backend_reset_mid_stream_reaches_its_client_as_a_reset() {
    let data = random_bytes(11, 256 * 1024);
    let rst = shims::reset_backend(data.clone());
    let proxy = ProxyCmd::new(&[rst.addr])
        .workers(1)
        .args(["--health-interval", "off"])
        .start();
    for _ in 0..5 {
        let mut s = proxy.connect();
        let began = Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        let err = end.expect_err("a reset backend must not look like a clean EOF");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        assert!(got.len() <= data.len() && data.starts_with(&got));
        assert!(began.elapsed() < Duration::from_secs(2));
    }
    wait_until(Duration::from_secs(5), "nothing held", || {
        active(&proxy) == 0
    });
}

/// Promise: a backend that half-closes (answers, then shuts its write
/// side) still receives everything its client sends afterwards, intact,
/// and the client sees the answer and an EOF.
#[test]
fn a_backend_that_half_closes_still_gets_the_whole_upload() {
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hc = shims::half_close_backend(got.clone());
    let proxy = ProxyCmd::new(&[hc.addr])
        .workers(1)
        .args(["--health-interval", "off"])
        .start();
    let mut s = proxy.connect();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"hello\n", "answer, then EOF");
    let upload = random_bytes(5, 1 << 20);
    s.write_all(&upload).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    wait_until(Duration::from_secs(10), "the upload to arrive", || {
        got.lock().unwrap().len() == upload.len()
    });
    assert!(*got.lock().unwrap() == upload, "upload intact");
}

/// Promise: a slow backend (50 ms latency per chunk, 128 KiB/s each way,
/// 1 s to pass on a close) costs its clients time, nothing else: bytes
/// arrive intact, a transfer longer than `--idle-timeout` is not cut
/// while bytes keep moving, the slow close is waited for, and other
/// clients of the same backend meanwhile are all served.
#[test]
fn a_slow_backend_costs_time_not_bytes() {
    let echo = echo_backend();
    let slow = shims::Relay::start(
        echo.addr,
        shims::Impair {
            delay: Duration::from_millis(50),
            rate: Some(128 * 1024),
            close_delay: Duration::from_secs(1),
            chunk: 16 * 1024,
        },
    );
    let proxy = ProxyCmd::new(&[slow.addr])
        .workers(1)
        .args(["--idle-timeout", "3s", "--health-interval", "off"])
        .start();
    let mut s = proxy.connect();
    let data = random_bytes(3, 512 * 1024);
    let began = Instant::now();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        thread::spawn(move || {
            w.write_all(&data).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        })
    };
    let others = thread::spawn({
        let addr = proxy.listen;
        move || (0..10).filter(|_| echo_once(addr).is_some()).count()
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let took = began.elapsed();
    writer.join().unwrap();
    assert!(
        got == data,
        "bytes intact ({} of {})",
        got.len(),
        data.len()
    );
    assert!(
        took > Duration::from_secs(4),
        "the shim slowed it: {took:?}"
    );
    assert_eq!(others.join().unwrap(), 10, "other clients served");
}

/// Promise (needs connect retries with an overall deadline, the lead's
/// part of issue 11): while one backend answers, black-holed backends (a
/// full accept queue: SYNs dropped) cost a client at most 3 connect
/// attempts (here 3 × 500 ms, plus slack) before it is served or closed;
/// today a client planned for the first of six holes tries all six in
/// turn (3 s). Once health checks mark the holes down, every client is
/// served at once.
#[test]
#[ignore = "needs connect retries with an overall deadline: lead's part of issue 11"]
fn black_holed_backends_cost_a_client_a_bounded_wait() {
    let holes: Vec<shims::BlackHole> = (0..6).map(|_| shims::BlackHole::start()).collect();
    let good = name_backend("good");
    let mut addrs: Vec<SocketAddr> = holes.iter().map(|h| h.addr).collect();
    addrs.push(good.addr);
    let proxy = ProxyCmd::new(&addrs)
        .workers(1)
        .args(["--connect-timeout", "500ms"])
        .args(["--health-interval", "1s", "--health-timeout", "300ms"])
        .args(["--fall", "2"])
        .start();
    for _ in 0..addrs.len() {
        let began = Instant::now();
        let mut s = proxy.connect();
        let mut line = String::new();
        let _ = BufReader::new(&mut s).read_line(&mut line);
        let took = began.elapsed();
        assert!(
            took < Duration::from_millis(2200),
            "a client waited {took:?}"
        );
    }
    wait_until(
        Duration::from_secs(10),
        "health checks to take the holes out",
        || {
            proxy
                .ctl_json("backends")
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["state"] == "down")
                .count()
                == holes.len()
        },
    );
    let (ok, failed, slowest) = requests(proxy.listen, 2, 20, Duration::from_secs(20));
    assert_eq!((ok, failed), (20, 0));
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
}

/// Promise: clients that connect and send nothing cost only themselves:
/// 200 of them at once slow nobody (50 other requests each served within
/// 1 s). With `--client-first-byte-timeout 1s` each silent one is closed
/// within 1 s plus slack, its backend connection with it, and counted in
/// `rrproxy_client_first_byte_timeouts_total`; the proxy holds nothing
/// afterwards. (Without the option they would hold their backend
/// connection for the whole `--idle-timeout`.)
#[test]
fn silent_clients_are_closed_at_the_first_byte_timeout_and_slow_nobody() {
    let (echo, echo_closed) = shims::counting_echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr])
        .workers(2)
        .args(["--client-first-byte-timeout", "1s", "--idle-timeout", "60s"])
        .args(["--health-interval", "off"])
        .start();
    let began = Instant::now();
    let mut silent: Vec<TcpStream> = (0..200).map(|_| proxy.connect()).collect();
    let slowest = (0..50)
        .map(|_| echo_once(proxy.listen).expect("served"))
        .max()
        .unwrap();
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    for s in &mut silent {
        let mut b = [0u8; 1];
        let n = s.read(&mut b).expect("closed, not timed out");
        assert_eq!(n, 0);
    }
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "{:?}",
        began.elapsed()
    );
    wait_until(Duration::from_secs(5), "backend connections closed", || {
        echo_closed.load(Ordering::Relaxed) >= 250
    });
    wait_until(Duration::from_secs(5), "timeouts counted", || {
        proxy
            .scrape()
            .get("rrproxy_client_first_byte_timeouts_total", &[])
            == Some(200.0)
    });
    wait_until(Duration::from_secs(5), "nothing held", || {
        active(&proxy) == 0
    });
}

/// Promise: a client that sends one byte a second is slow but alive: it
/// is cut by neither the first-byte timeout (1.5 s) nor the idle timeout
/// (2 s) while it keeps sending within them, every byte is echoed, and it
/// slows nobody else. (What bounds how many such clients one address may
/// hold is `--max-conns-per-ip`.)
#[test]
fn a_client_sending_a_byte_a_second_is_served_and_slows_nobody() {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr])
        .workers(1)
        .args([
            "--client-first-byte-timeout",
            "1500ms",
            "--idle-timeout",
            "2s",
        ])
        .args(["--health-interval", "off"])
        .start();
    let mut s = proxy.connect();
    let drip = thread::spawn({
        let mut w = s.try_clone().unwrap();
        move || {
            for b in b"drip" {
                thread::sleep(Duration::from_secs(1));
                w.write_all(&[*b]).unwrap();
            }
            w.shutdown(Shutdown::Write).unwrap();
        }
    });
    let others: Vec<Option<Duration>> = (0..40).map(|_| echo_once(proxy.listen)).collect();
    drip.join().unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"drip");
    assert!(others.iter().all(Option::is_some), "{others:?}");
    let slowest = others.into_iter().flatten().max().unwrap();
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
}

/// Promise: a client that vanishes without a FIN (here: a relay that
/// stops forwarding and silently holds its socket) is closed by the proxy
/// after `--idle-timeout` (2 s) without progress, and its backend
/// connection with it; other clients are unaffected, and the proxy holds
/// nothing afterwards.
#[test]
fn a_client_that_vanishes_without_fin_is_closed_at_the_idle_timeout() {
    let (echo, echo_closed) = shims::counting_echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr])
        .workers(1)
        .args(["--idle-timeout", "2s", "--health-interval", "off"])
        .start();
    let relay = shims::Relay::start(
        proxy.listen,
        shims::Impair {
            chunk: 64 * 1024,
            ..shims::Impair::default()
        },
    );
    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hi\n").unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi\n");
    relay.vanish();
    let vanished = Instant::now();
    assert!(echo_once(proxy.listen).is_some(), "others unaffected");
    wait_until(
        Duration::from_secs(6),
        "the backend connection to close",
        || echo_closed.load(Ordering::Relaxed) >= 2,
    );
    let took = vanished.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "closed before the idle timeout: {took:?}"
    );
    wait_until(Duration::from_secs(5), "nothing held", || {
        active(&proxy) == 0
    });
}

/// Promise (needs a watchdog for a hung worker, the lead's part of issue
/// 11): a worker that stops (SIGSTOP: alive, not reading its channel)
/// costs at most the connections it was already proxying. New clients are
/// all served within 6 s (connections queued to it are recovered and
/// served by another worker), and its slot gets a new process. Today half
/// of the new clients wait for ever.
#[test]
#[ignore = "needs a watchdog for a hung worker: lead's part of issue 11"]
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

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Promise (needs coalesced config broadcasts, the lead's part of issue
/// 11): a backend set that flaps 1,000 times within a minute, with 8
/// workers of which 4 are stopped, costs the front bounded memory (at
/// most one config frame waits per worker: under 8 MiB of growth with
/// 400 backends), and no client fails while a backend is up. Today every
/// change queues a whole backend table per stopped worker (~45 MB here).
#[test]
#[ignore = "needs coalesced config broadcasts: lead's part of issue 11"]
fn a_thousand_backend_flaps_cost_the_front_bounded_memory() {
    let good = name_backend("good");
    let mut addrs = vec![good.addr];
    // 399 distinct addresses nothing listens on (connects are refused).
    addrs.extend(
        (0..399u16)
            .map(|i| SocketAddr::from(([127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8], 9))),
    );
    let flapper = addrs[1].to_string();
    let proxy = ProxyCmd::new(&addrs)
        .workers(8)
        .args(["--health-interval", "off"])
        .start();
    let pids: Vec<u32> = proxy.worker_pids().into_iter().flatten().collect();
    for pid in &pids[..4] {
        assert!(
            std::process::Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    }
    let front = proxy.pid();
    let before = rss(front);
    let load = Load::start(&proxy, 2);
    let mut ctl = std::os::unix::net::UnixStream::connect(&proxy.control).unwrap();
    ctl.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut replies = BufReader::new(ctl.try_clone().unwrap());
    let began = Instant::now();
    for i in 0..1000 {
        let verb = ["disable", "enable"][i % 2];
        writeln!(ctl, "backend {verb} {flapper}").unwrap();
        let mut line = String::new();
        while line != "\n" {
            line.clear();
            assert!(replies.read_line(&mut line).unwrap() > 0);
        }
    }
    assert!(began.elapsed() < Duration::from_secs(60));
    let grew = rss(front).saturating_sub(before);
    for pid in &pids[..4] {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status();
    }
    let (ok, failed) = load.finish();
    assert!(ok > 0);
    assert_eq!(failed, 0, "clients failed during the flaps");
    assert!(grew < 8 << 20, "the front grew by {} MiB", grew >> 20);
}
