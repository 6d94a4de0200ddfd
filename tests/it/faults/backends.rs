//! Backends that misbehave: never read, reset mid-stream, half-close,
//! answer slowly, black-hole SYNs, flap by the thousand.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::{active, echo_once, requests};
use crate::shims;
use crate::support::*;

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
        let began = Instant::now();
        // The reset can be that fast: it may already be there when the
        // client's connect completes.
        let mut s =
            match std::net::TcpStream::connect_timeout(&proxy.listen, Duration::from_secs(5)) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
                Err(e) => panic!("connect: {e}"),
            };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
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

/// Promise: while one backend answers, black-holed backends (a full
/// accept queue: SYNs dropped) cost a client at most 1 + --retries (2)
/// connect attempts (here 3 × 500 ms, plus slack) before it is served or
/// closed. (Before: a client planned for the first of six holes tried all
/// six in turn, 3 s.) Once health checks mark the holes down, every
/// client is served at once.
#[test]
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

/// Promise: a backend set that flaps 1,000 times within a minute, with 8
/// workers of which 4 are stopped, costs the front bounded memory (at
/// most one config frame waits per worker: under 8 MiB of growth with
/// 400 backends, 399 of them down), and no client fails while a backend is
/// up. (Before the
/// broadcasts were coalesced, every change queued a whole backend table
/// per stopped worker: ~45 MB here.)
#[test]
fn a_thousand_backend_flaps_cost_the_front_bounded_memory() {
    let good = name_backend("good");
    let mut addrs = vec![good.addr];
    // 399 distinct addresses nothing listens on (connects are refused).
    addrs.extend(
        (0..399u16)
            .map(|i| SocketAddr::from(([127, 0, 1 + (i / 200) as u8, 1 + (i % 200) as u8], 9))),
    );
    let flapper = addrs[1].to_string();
    // The dead ones are checked out of rotation first: with at most
    // 1 + --retries connect attempts per client, a client planned for a
    // dead backend could otherwise meet three in a row.
    let proxy = ProxyCmd::new(&addrs)
        .workers(8)
        .args([
            "--health-interval",
            "200ms",
            "--health-timeout",
            "100ms",
            "--fall",
            "1",
        ])
        .start();
    wait_until(
        Duration::from_secs(20),
        "the dead backends to be down",
        || {
            proxy
                .ctl_json("backends")
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["state"] == "down")
                .count()
                == 399
        },
    );
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

/// Promise: passive health counts failed connects between successes, not
/// in total: a backend that fails now and then but also serves is not
/// taken out (a successful connect starts the count again). (Before, three
/// failures between two checks took a healthy backend down under load.)
#[test]
fn a_backend_that_fails_now_and_then_but_serves_stays_in() {
    let good = name_backend("good");
    let flaky_addr = listen_any().local_addr().unwrap();
    let proxy = ProxyCmd::new(&[good.addr, flaky_addr])
        .workers(1)
        .args(["--health-interval", "60s", "--fall", "3"])
        .start();
    let label = flaky_addr.to_string();
    let fails = |p: &Proxy| {
        p.scrape()
            .get(
                "rrproxy_backend_connect_failures_total",
                &[
                    ("service", "default"),
                    ("backend", &label),
                    ("reason", "refused"),
                ],
            )
            .unwrap_or(0.0)
    };
    // Round-robin alternates the two: every other request is planned for
    // the flaky one. Down for one of its turns, up for the next, six times.
    let mut served_by_flaky = 0;
    for round in 0..6 {
        let before = fails(&proxy);
        for _ in 0..2 {
            assert_eq!(fetch_name(&proxy), "good", "round {round}: retried on good");
        }
        wait_until(Duration::from_secs(5), "the failure counted", || {
            fails(&proxy) > before
        });
        let up = std::net::TcpListener::bind(flaky_addr).unwrap();
        let flaky = name_backend_on(up, "flaky");
        for _ in 0..2 {
            if fetch_name(&proxy) == "flaky" {
                served_by_flaky += 1;
            }
        }
        drop(flaky);
        // Make sure the port is closed again before the next round.
        wait_until(Duration::from_secs(5), "the flaky one down", || {
            std::net::TcpStream::connect_timeout(&flaky_addr, Duration::from_millis(200)).is_err()
        });
    }
    assert_eq!(served_by_flaky, 6, "it served between its failures");
    assert!(fails(&proxy) >= 6.0);
    assert_eq!(
        proxy.scrape().get(
            "rrproxy_backend_up",
            &[("service", "default"), ("backend", &label)]
        ),
        Some(1.0),
        "six failures, each after a success: still in"
    );
}

/// Promise: with active checks off, traffic still takes a dead backend out
/// (`--fall` failed connects within 10 s, none succeeding), so clients stop
/// paying a connect attempt for it; it is tried again 10 s later.
#[test]
fn without_health_checks_traffic_takes_a_dead_backend_out_for_a_while() {
    let good = name_backend("good");
    let dead = refused_addr();
    let proxy = ProxyCmd::new(&[good.addr, dead])
        .workers(1)
        .args(["--health-interval", "off", "--fall", "3"])
        .start();
    let label = dead.to_string();
    let up = |p: &Proxy| {
        p.scrape().get(
            "rrproxy_backend_up",
            &[("service", "default"), ("backend", &label)],
        )
    };
    for _ in 0..8 {
        assert_eq!(fetch_name(&proxy), "good");
    }
    wait_until(Duration::from_secs(5), "the dead one marked down", || {
        up(&proxy) == Some(0.0)
    });
    let fails = |p: &Proxy| {
        p.scrape()
            .get(
                "rrproxy_backend_connect_failures_total",
                &[
                    ("service", "default"),
                    ("backend", &label),
                    ("reason", "refused"),
                ],
            )
            .unwrap()
    };
    let after = fails(&proxy);
    assert!(after >= 3.0, "{after}");
    for _ in 0..10 {
        assert_eq!(fetch_name(&proxy), "good");
    }
    assert_eq!(fails(&proxy), after, "no connect attempts on it while out");
    proxy.wait_log("backend down");
    wait_until(
        Duration::from_secs(20),
        "tried again after the cooldown",
        || up(&proxy) == Some(1.0),
    );
}
