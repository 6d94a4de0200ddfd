//! The foundation: process model, byte integrity, half-close, distribution,
//! backend failure, shutdown, bad input, descriptor exhaustion.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// Inodes of the listening TCP sockets on `port` (from /proc/net/tcp*).
fn listen_inodes(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if f[3] == "0A" && local_port == Some(port) {
                out.push(f[9].to_string());
            }
        }
    }
    out
}

fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().to_string();
                    l.strip_prefix("socket:[")
                        .map(|s| s.trim_end_matches(']').to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_workers_are_children_and_only_the_front_listens() {
    let b = echo_backend();
    let proxy = ProxyCmd::new(&[b.addr]).workers(3).start();
    let kids = children(proxy.pid());
    assert_eq!(kids.len(), 3, "children: {kids:?}");
    assert!(kids.iter().all(|(_, comm)| comm == "rrproxy"), "{kids:?}");
    let mut pids: Vec<u32> = proxy.worker_pids().into_iter().flatten().collect();
    let mut kid_pids: Vec<u32> = kids.iter().map(|k| k.0).collect();
    pids.sort();
    kid_pids.sort();
    assert_eq!(pids, kid_pids, "ctl workers reports the children");

    let listening = listen_inodes(proxy.listen.port());
    assert_eq!(listening.len(), 1, "one listening socket on the port");
    assert!(
        socket_inodes(proxy.pid()).contains(&listening[0]),
        "front holds it"
    );
    for (pid, _) in &kids {
        assert!(
            !socket_inodes(*pid).contains(&listening[0]),
            "worker {pid} must not hold the listener"
        );
    }
}

fn integrity(splice: &str) {
    const PER_CONN: usize = 12 << 20;
    let b = echo_backend();
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(2)
        .args(["--splice", splice])
        .start();
    let handles: Vec<_> = (0..4u64)
        .map(|seed| {
            let data = random_bytes(seed + 1, PER_CONN);
            let mut s = proxy.connect();
            thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let to_send = data.clone();
                let writer = thread::spawn(move || {
                    for chunk in to_send.chunks(100_003) {
                        w.write_all(chunk).unwrap();
                    }
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut got = Vec::with_capacity(PER_CONN);
                s.read_to_end(&mut got).unwrap();
                writer.join().unwrap();
                assert_eq!(got.len(), data.len(), "length on connection {seed}");
                assert!(got == data, "bytes differ on connection {seed}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn bytes_arrive_intact_with_splice() {
    integrity("on");
}

#[test]
fn bytes_arrive_intact_with_buffered_copy() {
    integrity("off");
}

#[test]
fn bytes_arrive_intact_with_auto_splice() {
    integrity("auto");
}

fn half_close(splice: &str) {
    let b = echo_backend();
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(1)
        .args(["--splice", splice])
        .start();
    let mut s = proxy.connect();
    let data = random_bytes(7, 300_000);
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap(); // returns at EOF
    assert!(got == data, "echoed {} of {} bytes", got.len(), data.len());
}

#[test]
fn half_close_keeps_the_other_direction_flowing_with_splice() {
    half_close("on");
}

#[test]
fn half_close_keeps_the_other_direction_flowing_with_buffered_copy() {
    half_close("off");
}

fn resets(splice: &str) {
    // A backend that sends a little, then resets.
    let rst = spawn_backend_on(TcpListener::bind("127.0.0.1:0").unwrap(), |mut c| {
        let _ = c.write_all(b"bye\n");
        let mut buf = [0u8; 4];
        let _ = c.read(&mut buf); // wait for the client's poke
        let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
    });
    let proxy = ProxyCmd::new(&[rst.addr])
        .workers(1)
        .args(["--splice", splice])
        .start();
    let mut s = proxy.connect();
    assert_eq!(read_name(&mut s), "bye");
    s.write_all(b"poke").unwrap();
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "backend reset reaches the client: {r:?}"
    );

    // A client reset reaches the backend.
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let watcher = spawn_backend_on(TcpListener::bind("127.0.0.1:0").unwrap(), move |mut c| {
        let _ = c.write_all(b"hi\n");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        let r = c.read(&mut buf).map_err(|e| e.kind());
        let _ = tx.lock().unwrap().send(r);
    });
    // No health checks: their connections would reach this backend too.
    let proxy = ProxyCmd::new(&[watcher.addr])
        .workers(1)
        .args(["--splice", splice, "--health-interval", "off"])
        .start();
    let mut s = proxy.connect();
    assert_eq!(read_name(&mut s), "hi");
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let seen = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        seen,
        Err(std::io::ErrorKind::ConnectionReset),
        "client reset reaches the backend"
    );
}

#[test]
fn resets_are_propagated_with_splice() {
    resets("on");
}

#[test]
fn resets_are_propagated_with_buffered_copy() {
    resets("off");
}

/// Pipes a process holds open.
fn pipes_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("pipe:"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn splice_mode_moves_bytes_through_pipes_and_buffered_mode_does_not() {
    // A backend that pours bytes at a client that reads slowly, so data is
    // always in flight inside the worker.
    let pour = spawn_backend_on(TcpListener::bind("127.0.0.1:0").unwrap(), |mut c| {
        let chunk = vec![7u8; 64 * 1024];
        while c.write_all(&chunk).is_ok() {}
    });
    for (mode, expect_pipes) in [("on", true), ("off", false), ("auto", true)] {
        let proxy = ProxyCmd::new(&[pour.addr])
            .workers(1)
            .args(["--splice", mode])
            .start();
        let worker = proxy.worker_pids()[0].unwrap();
        let idle_pipes = pipes_of(worker);
        let mut s = proxy.connect();
        let mut buf = vec![0u8; 4096];
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            s.read_exact(&mut buf).unwrap();
            seen = seen.max(pipes_of(worker));
            if expect_pipes && seen > idle_pipes {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        if expect_pipes {
            assert!(
                seen > idle_pipes,
                "splice mode holds a pipe while data is in flight"
            );
        } else {
            assert_eq!(seen, idle_pipes, "buffered mode opens no pipe");
        }
    }
}

#[test]
fn sequential_connections_spread_evenly_over_workers() {
    let b = name_backend("solo");
    let proxy = ProxyCmd::new(&[b.addr]).workers(3).start();
    for _ in 0..300 {
        assert_eq!(fetch_name(&proxy), "solo");
    }
    let counts = proxy
        .scrape()
        .per_worker("rrproxy_worker_connections_total", 3);
    for (slot, c) in counts.iter().enumerate() {
        assert!((c - 100.0).abs() <= 1.0, "slot {slot} got {c}: {counts:?}");
    }
}

#[test]
fn a_refusing_backend_is_skipped_and_all_refusing_closes_promptly() {
    let live = name_backend("live");
    let dead = refused_addr();
    let proxy = ProxyCmd::new(&[dead, live.addr])
        .workers(2)
        .args(["--health-interval", "off"])
        .start();
    for _ in 0..40 {
        assert_eq!(fetch_name(&proxy), "live");
    }
    let m = proxy.scrape();
    assert!(
        m.sum_where(
            "rrproxy_backend_connect_failures_total",
            "backend",
            &dead.to_string()
        ) >= 1.0,
        "the refusals are counted"
    );

    let proxy = ProxyCmd::new(&[refused_addr(), refused_addr()])
        .workers(1)
        .start();
    for _ in 0..5 {
        let started = Instant::now();
        // The reset may even beat the end of connect(): also a prompt close.
        if let Ok(mut s) = TcpStream::connect_timeout(&proxy.listen, Duration::from_secs(5)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 16];
            let r = s.read(&mut buf);
            assert!(matches!(r, Ok(0) | Err(_)), "client is closed: {r:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "closed promptly"
        );
    }
    wait_until(Duration::from_secs(5), "failures to be counted", || {
        proxy.scrape().get("rrproxy_failed_connections_total", &[]) == Some(5.0)
    });
}

#[test]
fn sigterm_finishes_transfers_refuses_new_and_leaves_no_worker() {
    graceful_stop(|p| p.signal("TERM"));
}

#[test]
fn ctrl_c_to_the_process_group_also_drains_gracefully() {
    // Ctrl-C in a terminal signals every process of the foreground group:
    // the workers must leave the stopping to the front.
    graceful_stop(|p| {
        let ok = std::process::Command::new("kill")
            .args(["-INT", "--", &format!("-{}", p.pid())])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    });
}

fn graceful_stop(stop: impl FnOnce(&Proxy)) {
    let b = echo_backend();
    let mut proxy = ProxyCmd::new(&[b.addr]).workers(2).start();
    let workers: Vec<u32> = proxy.worker_pids().into_iter().flatten().collect();
    let mut s = proxy.connect();
    let data = random_bytes(3, 2 << 20);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = thread::spawn(move || {
        // First half, then wait for the signal to be sent, then the rest.
        let (a, rest) = sent.split_at(sent.len() / 2);
        w.write_all(a).unwrap();
        rx.recv().unwrap();
        for chunk in rest.chunks(64 * 1024) {
            w.write_all(chunk).unwrap();
            thread::sleep(Duration::from_millis(5));
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    // The transfer is under way.
    wait_until(Duration::from_secs(10), "transfer to start", || {
        let active = proxy
            .scrape()
            .per_worker("rrproxy_worker_active_connections", 2);
        active.iter().sum::<f64>() >= 1.0
    });
    stop(&proxy);
    tx.send(()).unwrap();
    // New connections are refused once the listener is closed.
    wait_until(
        Duration::from_secs(5),
        "new connections to be refused",
        || TcpStream::connect_timeout(&proxy.listen, Duration::from_millis(200)).is_err(),
    );
    writer.join().unwrap();
    let got = reader.join().unwrap();
    assert!(
        got == data,
        "in-flight transfer completed intact ({} bytes)",
        got.len()
    );
    let st = proxy.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "front exit status {st}");
    for pid in workers {
        wait_until(Duration::from_secs(5), "worker to be gone", || !alive(pid));
    }
}

#[test]
fn bad_input_fails_fast_with_one_clear_line_and_the_documented_status() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    // (arguments, start of the message after `rrproxy: error: `, exit status)
    let cases: Vec<(Vec<&str>, &str, i32)> = vec![
        (
            vec!["--backend", "127.0.0.1:80", "--policy", "fastest"],
            "invalid value 'fastest' for '--policy <NAME>': expected round-robin, least-conn or sticky",
            2,
        ),
        (
            vec!["--backend", "127.0.0.1:80", "--listen", "not-an-address"],
            "invalid value 'not-an-address' for '--listen <ADDR>'",
            2,
        ),
        (
            vec!["--backend", "10.0.0.1"],
            "invalid value '10.0.0.1' for '--backend <ADDR>': expected HOST:PORT",
            2,
        ),
        (vec!["--listen", "127.0.0.1:0"], "no backend given", 2),
        (vec![], "no backend given", 2),
        (
            vec![
                "--backend",
                "127.0.0.1:80",
                "--listen",
                &taken_addr,
                "--metrics",
                "off",
                "--control",
                "off",
            ],
            "cannot listen on",
            1,
        ),
        (
            vec!["--backend", "127.0.0.1:80", "--workers", "0"],
            "invalid value '0' for '--workers <N|auto>': expected a number 1..=256 or auto",
            2,
        ),
        (
            vec!["--backend", "127.0.0.1:80", "-w", "atuo"],
            "invalid value 'atuo' for '-w <N|auto>'",
            2,
        ),
        (
            vec!["--backend", "127.0.0.1:80", "--connect-timeout", "soon"],
            "invalid value 'soon' for '--connect-timeout <DURATION>': expected a duration",
            2,
        ),
        (
            vec!["--backend", "no-such-host.invalid:80"],
            "invalid value 'no-such-host.invalid:80' for '--backend <ADDR>': cannot resolve host",
            1,
        ),
        (
            vec!["--wrokers", "2"],
            "unexpected argument '--wrokers' found",
            2,
        ),
    ];
    for (args, needle, status) in cases {
        let started = Instant::now();
        let (st, err) = run_bin(&args);
        assert_eq!(st.code(), Some(status), "{args:?}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} took too long"
        );
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("rrproxy: error: {needle}")),
            "{args:?}: first line {first:?} is not {needle:?}\n{err}"
        );
        // One line, and at most a `tip:` after it.
        let rest: Vec<&str> = err.trim_end().lines().skip(1).collect();
        assert!(
            rest.iter().all(|l| l.starts_with("  tip: ")) && rest.len() <= 1,
            "{args:?}: {err}"
        );
    }
    drop(taken);
}

#[test]
fn running_out_of_descriptors_backs_off_and_recovers() {
    let b = name_backend("fd");
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(2)
        .under(["prlimit", "--nofile=64:64", "--"])
        .start();
    // Far more clients than the proxy has descriptors for, all held open.
    let mut clients = Vec::new();
    for _ in 0..120 {
        match TcpStream::connect_timeout(&proxy.listen, Duration::from_secs(2)) {
            Ok(s) => clients.push(s),
            Err(_) => break, // the backlog is full: also fine
        }
    }
    assert!(
        clients.len() >= 60,
        "only {} clients connected",
        clients.len()
    );
    // Some are served, the rest wait; meanwhile the front stays responsive
    // and does not spin.
    wait_until(Duration::from_secs(10), "proxy to be saturated", || {
        let m = proxy.scrape();
        m.get("rrproxy_accept_paused", &[]) == Some(1.0)
            || m.get("rrproxy_accept_errors_total", &[("reason", "emfile")])
                .unwrap_or(0.0)
                > 0.0
    });
    let cpu_before = cpu_seconds(proxy.pid());
    let t0 = Instant::now();
    wait_until(Duration::from_secs(5), "a second to pass", || {
        t0.elapsed() >= Duration::from_millis(1500)
    });
    let cpu = cpu_seconds(proxy.pid()) - cpu_before;
    assert!(
        cpu < 0.5,
        "front burned {cpu:.2}s of CPU in 1.5s while saturated"
    );
    assert!(
        proxy.ctl("status").contains("rrproxy"),
        "control still answers"
    );
    // When the clients leave, new ones are served again.
    drop(clients);
    wait_until(Duration::from_secs(20), "service to recover", || {
        let Ok(mut s) = TcpStream::connect_timeout(&proxy.listen, Duration::from_secs(2)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        read_name_opt(&mut s).as_deref() == Some("fd")
    });
}

fn read_name_opt(s: &mut TcpStream) -> Option<String> {
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

fn cpus_allowed(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn cpu_affinity_pins_the_front_and_each_worker() {
    let b = name_backend("pin");
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(2)
        .arg("--cpu-affinity")
        .start();
    let allowed: Vec<String> = {
        // What this test process may use, e.g. "0-1".
        let me = cpus_allowed(std::process::id());
        let mut v = Vec::new();
        for part in me.split(',') {
            match part.split_once('-') {
                Some((a, z)) => (a.parse::<u32>().unwrap()..=z.parse().unwrap())
                    .for_each(|c| v.push(c.to_string())),
                None => v.push(part.to_string()),
            }
        }
        v
    };
    assert_eq!(
        cpus_allowed(proxy.pid()),
        allowed[0],
        "the front on the first CPU"
    );
    let pids = proxy.worker_pids();
    for (slot, pid) in pids.iter().enumerate() {
        let want = &allowed[(1 + slot) % allowed.len()];
        assert_eq!(&cpus_allowed(pid.unwrap()), want, "worker {slot}");
    }
    assert_eq!(fetch_name(&proxy), "pin");
}

#[test]
fn the_demo_serves_three_backends_and_stops_on_ctrl_c() {
    let dir = temp_dir("demo");
    let control = dir.join("demo.sock");
    let mut child = std::process::Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--workers",
            "2",
        ])
        .args(["--control", control.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // The banner names the address to try.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: std::net::SocketAddr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo banner");
        if let Some(rest) = line.split("curl -s http://").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let body = http_get(addr, "/");
        seen.insert(body.trim().to_string());
    }
    let want: std::collections::BTreeSet<String> = ["alpha", "bravo", "charlie"]
        .iter()
        .map(|n| format!("hello from backend {n}"))
        .collect();
    assert_eq!(seen, want);
    let workers = children(child.id());
    assert_eq!(workers.len(), 2);
    // Ctrl-C: SIGINT to the whole group, as a terminal sends it.
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", "--", &format!("-{}", child.id())])
            .status()
            .unwrap()
            .success()
    );
    let st = wait_for(Duration::from_secs(20), "demo to exit", || {
        child.try_wait().unwrap()
    });
    assert!(st.success(), "demo exit status {st}");
    for (pid, _) in workers {
        wait_until(Duration::from_secs(5), "worker gone", || !alive(pid));
    }
    assert!(!control.exists(), "control socket removed");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Stopping with a connection open says once how many are still open and
/// until when it waits; a second Ctrl-C stops at once.
#[test]
fn a_stop_with_open_connections_says_so_and_a_second_ctrl_c_stops_at_once() {
    let b = name_backend("idle");
    let mut proxy = ProxyCmd::new(&[b.addr])
        .workers(1)
        .args(["--drain-timeout", "60s"])
        .start();
    let mut idle = proxy.connect();
    assert_eq!(read_name(&mut idle), "idle");
    proxy.signal("INT");
    proxy.wait_log("draining: waiting for open connections to finish");
    let log = proxy.stderr();
    assert!(
        log.contains("open_connections=1") && log.contains("deadline=60s"),
        "{log}"
    );
    assert!(log.contains("again to stop now"), "{log}");
    let began = std::time::Instant::now();
    proxy.signal("INT");
    let st = proxy.wait_exit(Duration::from_secs(10));
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "the second Ctrl-C stops at once"
    );
    assert!(st.success(), "{st}");
    let mut buf = [0u8; 1];
    assert!(
        !matches!(idle.read(&mut buf), Ok(n) if n > 0),
        "the open connection was closed"
    );
}
