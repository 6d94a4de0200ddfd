//! Protecting backends: health checks that speak the protocol (a real
//! Redis, a server that answers `-LOADING`, servers that speak first),
//! connections and checks from chosen source addresses, and slow start.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::peers;
use crate::support::*;

/// The `ctl backends --json` row of `addr`.
fn row(proxy: &Proxy, addr: SocketAddr) -> serde_json::Value {
    proxy
        .ctl_json("backends")
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr}"))
}

/// Wait until `addr` is in `state` with a check result containing `check`.
fn wait_check(proxy: &Proxy, addr: SocketAddr, state: &str, check: &str) -> serde_json::Value {
    wait_for(
        Duration::from_secs(20),
        &format!("{addr} {state} with check {check:?}"),
        || {
            let r = row(proxy, addr);
            (r["state"] == state && r["check"].as_str().is_some_and(|c| c.contains(check)))
                .then_some(r)
        },
    )
}

/// A server that answers every request line with `reply` (and, with
/// `greeting`, says it first); counts the lines it was sent.
fn line_server(
    greeting: Option<&'static [u8]>,
    reply: &'static [u8],
) -> (Backend, Arc<Mutex<u64>>) {
    let lines = Arc::new(Mutex::new(0u64));
    let l = lines.clone();
    let backend = spawn_backend_on(listen_any(), move |conn| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let mut w = conn.try_clone().unwrap();
        if let Some(g) = greeting {
            if w.write_all(g).is_err() {
                return;
            }
        }
        let mut r = BufReader::new(conn);
        let mut line = String::new();
        while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
            *l.lock().unwrap() += 1;
            line.clear();
            if w.write_all(reply).is_err() {
                return;
            }
        }
    });
    (backend, lines)
}

/// `PING` through the proxy on a fresh connection; the reply line.
fn ping(proxy: &Proxy) -> String {
    let mut s = proxy.connect();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).unwrap();
    let _ = s.shutdown(Shutdown::Both);
    line
}

#[test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server: apt-get install redis-server"
)]
fn a_redis_check_takes_out_a_server_that_answers_loading() {
    let port = peers::free_port();
    let _redis = peers::redis(port);
    let redis: SocketAddr = ([127, 0, 0, 1], port).into();
    let (loading, lines) =
        line_server(None, b"-LOADING Redis is loading the dataset in memory\r\n");
    let proxy = ProxyCmd::new(&[redis, loading.addr])
        .workers(2)
        .args(["--health-interval", "100ms", "--health-timeout", "2s"])
        .args(["--fall", "1", "--rise", "1"])
        .args(["--health-send", "PING\\r\\n", "--health-expect", "+PONG"])
        .start();
    let r = wait_check(
        &proxy,
        loading.addr,
        "down",
        "expected '+PONG', got '-LOADING",
    );
    assert_eq!(
        r["check"],
        "expected '+PONG', got '-LOADING Redis is loading the dataset in memory\\r\\n'"
    );
    assert_eq!(row(&proxy, redis)["check"], "ok");
    assert_eq!(row(&proxy, redis)["state"], "up");
    proxy.wait_log("reason=\"expected '+PONG', got '-LOADING");
    let table = proxy.ctl("backends");
    assert!(table.lines().next().unwrap().ends_with("CHECK"), "{table}");
    assert!(
        table.contains("expected '+PONG', got '-LOADING Redis"),
        "{table}"
    );
    // Every client reaches the real Redis; the loading one gets none.
    let checked = *lines.lock().unwrap();
    for _ in 0..20 {
        assert_eq!(ping(&proxy), "+PONG\r\n");
    }
    let m = proxy.scrape();
    let to = |a: SocketAddr| {
        m.get(
            "rrproxy_backend_connections_total",
            &[("service", "default"), ("backend", &a.to_string())],
        )
    };
    assert_eq!(to(loading.addr), Some(0.0));
    assert_eq!(to(redis), Some(20.0));
    // The checks did speak: it was sent their PINGs.
    assert!(checked >= 1, "no PING reached the loading server");
}

#[test]
fn a_greeting_check_needs_no_request() {
    let (ready, ready_lines) = line_server(Some(b"220 ready ESMTP\r\n"), b"250 ok\r\n");
    let (busy, _) = line_server(Some(b"554 too busy\r\n"), b"250 ok\r\n");
    // Accepts, then says nothing.
    let silent = spawn_backend_on(listen_any(), |mut conn| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let mut sink = [0u8; 64];
        while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
    });
    let proxy = ProxyCmd::new(&[ready.addr, busy.addr, silent.addr])
        .workers(1)
        .args(["--health-interval", "100ms", "--health-timeout", "300ms"])
        .args(["--fall", "1", "--rise", "1", "--health-expect", "220 "])
        .start();
    wait_check(&proxy, ready.addr, "up", "ok");
    wait_check(
        &proxy,
        busy.addr,
        "down",
        "expected '220 ', got '554 too busy\\r\\n'",
    );
    wait_check(
        &proxy,
        silent.addr,
        "down",
        "timeout while waiting for the reply (300ms)",
    );
    // The checks sent nothing: a greeting check never writes.
    assert_eq!(*ready_lines.lock().unwrap(), 0);
    // A refused connect says so too.
    let gone = refused_addr();
    proxy.ctl(&format!("backend add {gone}"));
    wait_check(&proxy, gone, "down", "connection refused");
}

/// A backend that records, for each connection, its peer address and
/// whether it was a client (sent bytes, which it echoes) or a check
/// (closed without a byte).
struct Recorder {
    backend: Backend,
    clients: Arc<Mutex<Vec<IpAddr>>>,
    checks: Arc<Mutex<Vec<IpAddr>>>,
}

fn recorder() -> Recorder {
    let clients = Arc::new(Mutex::new(Vec::new()));
    let checks = Arc::new(Mutex::new(Vec::new()));
    let (c, k) = (clients.clone(), checks.clone());
    let backend = spawn_backend_on(listen_any(), move |mut conn| {
        let peer = conn.peer_addr().unwrap().ip();
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let mut first = [0u8; 1];
        match conn.read(&mut first) {
            Ok(1) => {
                c.lock().unwrap().push(peer);
                let _ = conn.write_all(&first);
                echo_until_eof(&mut conn);
            }
            _ => k.lock().unwrap().push(peer),
        }
    });
    Recorder {
        backend,
        clients,
        checks,
    }
}

fn count(ips: &[IpAddr], ip: &str) -> usize {
    ips.iter().filter(|i| i.to_string() == ip).count()
}

#[test]
fn connections_and_checks_leave_from_the_chosen_addresses() {
    let shared = recorder();
    let own = recorder();
    let proxy = ProxyCmd::new(&[])
        .args(["--backend".to_string(), shared.backend.addr.to_string()])
        .args([
            "--backend".to_string(),
            format!("{},source=127.0.0.4", own.backend.addr),
        ])
        .args(["--source", "127.0.0.2;127.0.0.3"])
        .args(["--health-interval", "100ms"])
        .workers(2)
        .start();
    for i in 0..40u8 {
        let mut s = proxy.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&[i]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, [i]);
    }
    wait_until(
        Duration::from_secs(20),
        "four checks of each backend",
        || shared.checks.lock().unwrap().len() >= 4 && own.checks.lock().unwrap().len() >= 4,
    );
    let clients = shared.clients.lock().unwrap().clone();
    assert_eq!(clients.len(), 20, "{clients:?}");
    let (two, three) = (count(&clients, "127.0.0.2"), count(&clients, "127.0.0.3"));
    assert_eq!(two + three, 20, "only the chosen addresses: {clients:?}");
    // In turn, per worker and backend: 5 each at least.
    assert!(two >= 5 && three >= 5, "spread: {two} and {three}");
    let checks = shared.checks.lock().unwrap().clone();
    assert!(
        count(&checks, "127.0.0.2") >= 1 && count(&checks, "127.0.0.3") >= 1,
        "checks take the addresses in turn: {checks:?}"
    );
    assert_eq!(
        count(&checks, "127.0.0.2") + count(&checks, "127.0.0.3"),
        checks.len()
    );
    let own_all: Vec<IpAddr> = [
        own.clients.lock().unwrap().clone(),
        own.checks.lock().unwrap().clone(),
    ]
    .concat();
    assert_eq!(own_all.len(), count(&own_all, "127.0.0.4"), "{own_all:?}");
    assert_eq!(own.clients.lock().unwrap().len(), 20);
    // An address that is not this host's is refused where it is given.
    let reply = proxy
        .try_ctl("backend add 127.0.0.1:9,source=192.0.2.77")
        .unwrap();
    assert!(
        reply.contains("source address 192.0.2.77 is not an address of this host"),
        "{reply}"
    );
}

/// A name backend (`name\n` on connect) whose listener can be closed and
/// opened again on the same port, as a restarted server would.
pub(crate) struct Switch {
    pub(crate) addr: SocketAddr,
    pub(crate) open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub(crate) fn switch_backend(name: &'static str) -> Switch {
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = first.local_addr().unwrap();
    let open = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let (o, s) = (open.clone(), stop.clone());
    thread::spawn(move || {
        let mut listener = Some(first);
        while !s.load(Ordering::Relaxed) {
            let want = o.load(Ordering::Relaxed);
            if want && listener.is_none() {
                // (std sets SO_REUSEADDR: the port is ours again at once.)
                listener = TcpListener::bind(addr).ok();
            } else if !want {
                listener = None;
            }
            let Some(l) = &listener else {
                thread::sleep(Duration::from_millis(2));
                continue;
            };
            l.set_nonblocking(true).unwrap();
            match l.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    thread::spawn(move || {
                        if conn.write_all(format!("{name}\n").as_bytes()).is_ok() {
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                            let mut sink = [0u8; 64];
                            while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    Switch { addr, open, stop }
}

#[test]
fn a_backend_back_up_gets_a_rising_share_over_its_slow_start() {
    const RAMP: Duration = Duration::from_secs(6);
    let a = name_backend("a");
    let b = switch_backend("b");
    let proxy = ProxyCmd::new(&[a.addr, b.addr])
        .workers(2)
        .args(["--slow-start", "6s", "--health-interval", "100ms"])
        .args(["--fall", "1", "--rise", "1"])
        .start();
    // Up at start: no slow start then.
    assert!(row(&proxy, b.addr).get("slow_start_percent").is_none());
    b.open.store(false, Ordering::Relaxed);
    wait_check(&proxy, b.addr, "down", "connection refused");
    b.open.store(true, Ordering::Relaxed);
    wait_check(&proxy, b.addr, "up", "ok");
    let began = Instant::now();
    let first = row(&proxy, b.addr)["slow_start_percent"].as_u64();
    assert!(first.is_some_and(|p| p < 30), "{first:?}");
    // Clients one after another; B's share in each third of the ramp,
    // and after it.
    let mut windows = [(0u32, 0u32); 4];
    let mut percents = Vec::new();
    while began.elapsed() < RAMP + RAMP / 3 {
        let w = ((began.elapsed().as_secs_f64() / (RAMP.as_secs_f64() / 3.0)) as usize).min(3);
        let name = fetch_name(&proxy);
        windows[w].0 += 1;
        windows[w].1 += u32::from(name == "b");
        if windows[w].0 % 50 == 0 {
            if let Some(p) = row(&proxy, b.addr)["slow_start_percent"].as_u64() {
                percents.push(p);
            }
        }
    }
    let share: Vec<f64> = windows
        .iter()
        .map(|&(n, b)| f64::from(b) / f64::from(n.max(1)))
        .collect();
    let report =
        format!("windows (clients, to b) {windows:?}, shares {share:?}, percents {percents:?}");
    eprintln!("{report}");
    assert!(
        windows.iter().all(|&(n, _)| n >= 20),
        "too few clients to tell: {report}"
    );
    assert!(windows[0].1 > 0, "the floor lets some through: {report}");
    assert!(
        share[0] < share[1] && share[1] < share[2],
        "rising: {report}"
    );
    assert!(share[0] < 0.3 && share[3] > 0.42, "{report}");
    assert!(percents.windows(2).all(|p| p[0] <= p[1]), "{report}");
    wait_until(Duration::from_secs(10), "the ramp to end", || {
        row(&proxy, b.addr).get("slow_start_percent").is_none()
    });
    proxy.wait_log("backend at its full weight after slow start");
}
