//! Connection limits and the backend queue (`maxconn=`, `maxqueue=`,
//! `--queue-timeout`), backup backends and `ctl backend maxconn`, with
//! real backends that count their own concurrency.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::protect::switch_backend;
use crate::support::*;

/// A backend that reads one line (the client's number), records it in
/// the order served and its own concurrency, then, once `release` is
/// set, answers `ok` and waits for the client's EOF. Its count of open
/// connections drops before it answers, so a slot the proxy frees (which
/// needs the answer first) is never counted twice here.
pub(crate) struct Counted {
    pub(crate) backend: Backend,
    open: Arc<AtomicU64>,
    pub(crate) peak: Arc<AtomicU64>,
    pub(crate) order: Arc<Mutex<Vec<u32>>>,
    pub(crate) release: Arc<AtomicBool>,
}

pub(crate) fn counted(hold: Duration) -> Counted {
    let open = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let order = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(AtomicBool::new(false));
    let (o, p, ord, rel) = (open.clone(), peak.clone(), order.clone(), release.clone());
    let backend = spawn_backend_on(listen_any(), move |conn| {
        let now = o.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        let mut line = String::new();
        let got = r.read_line(&mut line).is_ok_and(|n| n > 0);
        if got {
            if let Ok(n) = line.trim().parse::<u32>() {
                ord.lock().unwrap().push(n);
            }
        }
        // Bounded: 60 s at most.
        for _ in 0..60_000 {
            if rel.load(Ordering::SeqCst) {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(hold);
        o.fetch_sub(1, Ordering::SeqCst);
        if got && w.write_all(b"ok\n").is_ok() {
            let mut sink = [0u8; 64];
            while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    Counted {
        backend,
        open,
        peak,
        order,
        release,
    }
}

pub(crate) fn metric(proxy: &Proxy, name: &str, backend: SocketAddr) -> f64 {
    proxy
        .scrape()
        .get(
            name,
            &[("service", "default"), ("backend", &backend.to_string())],
        )
        .unwrap_or_else(|| panic!("no {name} for {backend}"))
}

pub(crate) fn wait_metric(proxy: &Proxy, name: &str, backend: SocketAddr, want: f64) {
    wait_until(
        Duration::from_secs(20),
        &format!("{name}{{backend={backend}}} = {want}"),
        || metric(proxy, name, backend) == want,
    );
}

/// Send `n` as a line and wait for the backend's `ok`.
fn ask(mut s: TcpStream, n: u32) -> bool {
    s.write_all(format!("{n}\n").as_bytes()).is_ok() && answered(s)
}

/// Whether the `counted` backend answered `ok` on `s` (within 60 s);
/// then close.
pub(crate) fn answered(s: TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut line = String::new();
    let ok = BufReader::new(&s)
        .read_line(&mut line)
        .is_ok_and(|_| line == "ok\n");
    let _ = s.shutdown(Shutdown::Both);
    ok
}

impl Counted {
    /// Let it answer every connection, and count the `clients` (threads
    /// giving [`answered`]) that got their answer.
    pub(crate) fn release_and_count(&self, clients: Vec<thread::JoinHandle<bool>>) -> usize {
        self.release.store(true, Ordering::SeqCst);
        clients
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&ok| ok)
            .count()
    }
}

/// A connection the proxy closed without an answer (reset or EOF).
fn refused(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let mut buf = [0u8; 8];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

/// 50 clients over two workers for a backend that takes 3: it never sees
/// a 4th, every client is answered, in the order they came (within the
/// slots served at once), and the queue is counted.
#[test]
fn a_limited_backend_never_sees_more_than_maxconn_and_serves_in_arrival_order() {
    const MAX: u64 = 3;
    const CLIENTS: u32 = 50;
    let b = counted(Duration::from_millis(5));
    let proxy = ProxyCmd::new(&[])
        .backend(format!("{},maxconn={MAX}", b.backend.addr))
        .args(["--health-interval", "off"])
        .workers(2)
        .start();
    let addr = b.backend.addr;
    // Clients connect one at a time, each sure to be queued (or holding
    // a slot) before the next: that is their arrival order.
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let s = proxy.connect();
        let mut w = s.try_clone().unwrap();
        w.write_all(format!("{n}\n").as_bytes()).unwrap();
        if u64::from(n) >= MAX {
            wait_metric(
                &proxy,
                "rrproxy_backend_queue_length",
                addr,
                f64::from(n + 1) - MAX as f64,
            );
        }
        clients.push(thread::spawn(move || answered(s)));
    }
    let m = proxy.scrape();
    let label = addr.to_string();
    let active = m
        .get(
            "rrproxy_backend_active_connections",
            &[("service", "default"), ("backend", &label)],
        )
        .unwrap();
    assert_eq!(active, MAX as f64, "{}", m.text);
    assert!(proxy.ctl("backends").contains(&format!("{MAX}/{MAX}")));
    let served = b.release_and_count(clients);
    assert_eq!(served, CLIENTS as usize, "every client answered");
    let peak = b.peak.load(Ordering::SeqCst);
    assert!(
        peak <= MAX,
        "the backend saw {peak} at once (maxconn {MAX})"
    );
    assert_eq!(peak, MAX, "the slots were used");
    let order = b.order.lock().unwrap().clone();
    assert_eq!(order.len(), CLIENTS as usize);
    // Served in arrival order: a client may pass at most the others that
    // got a slot at the same moment.
    for (pos, &n) in order.iter().enumerate() {
        assert!(
            (pos as i64 - i64::from(n)).unsigned_abs() < MAX,
            "client {n} served at {pos}: {order:?}"
        );
    }
    wait_metric(&proxy, "rrproxy_backend_queue_length", addr, 0.0);
    let m = proxy.scrape();
    let label = [("service", "default"), ("backend", label.as_str())];
    assert_eq!(
        m.get("rrproxy_backend_queued_total", &label),
        Some(f64::from(CLIENTS) - MAX as f64)
    );
    assert_eq!(
        m.get("rrproxy_backend_queue_wait_seconds_count", &label),
        Some(f64::from(CLIENTS) - MAX as f64),
        "{}",
        m.text
    );
    assert_eq!(m.get("rrproxy_backend_max_connections", &label), Some(3.0));
    assert_eq!(
        m.get("rrproxy_backend_queue_timeouts_total", &label),
        Some(0.0)
    );
    wait_metric(&proxy, "rrproxy_backend_active_connections", addr, 0.0);
    assert_eq!(b.open.load(Ordering::SeqCst), 0);
}

/// Many clients at once, from threads, against two limited backends with
/// round-robin: neither ever sees more than its limit and all are served.
#[test]
fn concurrent_clients_over_all_workers_stay_within_each_limit() {
    let a = counted(Duration::from_millis(2));
    let b = counted(Duration::from_millis(2));
    a.release.store(true, Ordering::SeqCst);
    b.release.store(true, Ordering::SeqCst);
    let proxy = ProxyCmd::new(&[])
        .backend(format!("{},maxconn=2", a.backend.addr))
        .backend(format!("{},maxconn=4", b.backend.addr))
        .args(["--health-interval", "off"])
        .workers(2)
        .start();
    let ok = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..50u32)
        .map(|i| {
            let listen = proxy.listen;
            let ok = ok.clone();
            thread::spawn(move || {
                for round in 0..4 {
                    let s = TcpStream::connect(listen).unwrap();
                    if ask(s, i * 10 + round) {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::SeqCst), 200, "every client answered");
    let (pa, pb) = (a.peak.load(Ordering::SeqCst), b.peak.load(Ordering::SeqCst));
    assert!(pa <= 2 && pb <= 4, "peaks {pa} (max 2), {pb} (max 4)");
    let m = proxy.scrape();
    let queued: f64 = [a.backend.addr, b.backend.addr]
        .iter()
        .map(|addr| {
            m.get(
                "rrproxy_backend_queued_total",
                &[("service", "default"), ("backend", &addr.to_string())],
            )
            .unwrap()
        })
        .sum();
    assert!(queued > 0.0, "50 at once must have queued some: {}", m.text);
}

/// `maxqueue=` refuses the one too many; a client that leaves frees its
/// place; `--queue-timeout` closes who waited too long; all counted.
#[test]
fn a_full_queue_refuses_a_leaver_frees_its_place_and_waits_time_out() {
    let b = counted(Duration::ZERO);
    let proxy = ProxyCmd::new(&[])
        .backend(format!("{},maxconn=1,maxqueue=2", b.backend.addr))
        .args(["--queue-timeout", "1500ms"])
        .args(["--health-interval", "off"])
        .workers(2)
        .start();
    let addr = b.backend.addr;
    let mut holder = proxy.connect();
    holder.write_all(b"0\n").unwrap();
    wait_metric(&proxy, "rrproxy_backend_active_connections", addr, 1.0);
    let first = proxy.connect();
    let leaver = proxy.connect();
    wait_metric(&proxy, "rrproxy_backend_queue_length", addr, 2.0);
    let mut extra = proxy.connect();
    assert!(refused(&mut extra), "the queue is full: closed");
    wait_metric(&proxy, "rrproxy_backend_queue_overflows_total", addr, 1.0);
    proxy.wait_log("backend queue full (maxqueue)");
    drop(leaver);
    wait_metric(&proxy, "rrproxy_backend_queue_abandoned_total", addr, 1.0);
    assert_eq!(metric(&proxy, "rrproxy_backend_queue_length", addr), 1.0);
    // Its place is free: one more waits.
    let mut second = proxy.connect();
    wait_metric(&proxy, "rrproxy_backend_queue_length", addr, 2.0);
    // Nothing frees the slot: both waits end after --queue-timeout.
    let mut first = first;
    assert!(refused(&mut first));
    assert!(refused(&mut second));
    wait_metric(&proxy, "rrproxy_backend_queue_timeouts_total", addr, 2.0);
    assert_eq!(metric(&proxy, "rrproxy_backend_queue_length", addr), 0.0);
    proxy.wait_log("waited --queue-timeout for a backend slot");
    assert_eq!(b.peak.load(Ordering::SeqCst), 1);
    // The holder is still served.
    b.release.store(true, Ordering::SeqCst);
    let mut line = String::new();
    holder
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    BufReader::new(&holder).read_line(&mut line).unwrap();
    assert_eq!(line, "ok\n");
}

/// `ctl backend maxconn`: raising the limit serves the queue at once; a
/// lowered one closes nothing (new clients wait); `off` lifts it; bad
/// values are refused with a clear line.
#[test]
fn ctl_backend_maxconn_changes_a_limit_at_run_time() {
    let b = counted(Duration::ZERO);
    let proxy = ProxyCmd::new(&[])
        .backend(format!("{},maxconn=1", b.backend.addr))
        .args(["--health-interval", "off"])
        .workers(2)
        .start();
    let addr = b.backend.addr;
    let name = addr.to_string();
    let mut held = Vec::new();
    for n in 0..3u32 {
        let mut s = proxy.connect();
        s.write_all(format!("{n}\n").as_bytes()).unwrap();
        held.push(s);
    }
    wait_metric(&proxy, "rrproxy_backend_queue_length", addr, 2.0);
    let reply = proxy.ctl(&format!("backend maxconn {name} 3"));
    assert_eq!(reply, format!("backend {name} maxconn 1 -> 3"));
    wait_metric(&proxy, "rrproxy_backend_active_connections", addr, 3.0);
    assert_eq!(metric(&proxy, "rrproxy_backend_queue_length", addr), 0.0);
    let reply = proxy.ctl(&format!("backend maxconn {name} 1"));
    assert!(reply.contains("maxconn 3 -> 1 (3 open stay"), "{reply}");
    let mut late = proxy.connect();
    late.write_all(b"3\n").unwrap();
    wait_metric(&proxy, "rrproxy_backend_queue_length", addr, 1.0);
    assert_eq!(
        metric(&proxy, "rrproxy_backend_active_connections", addr),
        3.0
    );
    let rows = proxy.ctl("backends");
    assert!(rows.contains("3/1"), "{rows}");
    let row = &proxy.ctl_json("backends")[0];
    assert_eq!(
        (row["maxconn"].as_u64(), row["queued"].as_u64()),
        (Some(1), Some(1))
    );
    let reply = proxy.ctl(&format!("backend maxconn {name} off"));
    assert_eq!(reply, format!("backend {name} maxconn 1 -> off"));
    wait_metric(&proxy, "rrproxy_backend_active_connections", addr, 4.0);
    assert_eq!(metric(&proxy, "rrproxy_backend_max_connections", addr), 0.0);
    for bad in ["0", "-1", "lots"] {
        let reply = proxy.ctl(&format!("backend maxconn {name} {bad}"));
        assert!(
            reply.starts_with(&format!("error: bad connection limit '{bad}'")),
            "{reply}"
        );
    }
    let reply = proxy.ctl("backend maxconn 127.0.0.1:1 5");
    assert!(reply.starts_with("error: no backend named"), "{reply}");
    b.release.store(true, Ordering::SeqCst);
    held.push(late);
    for s in held {
        let mut line = String::new();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert_eq!(line, "ok\n");
    }
}

/// A backup takes no connection while a primary is up, even a full one
/// (connections wait for the primary, as in HAProxy); it takes over when
/// every primary is down, and hands back when one returns.
#[test]
fn a_backup_takes_over_only_when_every_primary_is_down() {
    let primary = switch_backend("p");
    let backup = name_backend("b");
    let proxy = ProxyCmd::new(&[])
        .backend(format!("{},maxconn=1", primary.addr))
        .backend(format!("{},backup", backup.addr))
        .args(["--health-interval", "100ms", "--fall", "1", "--rise", "1"])
        .workers(2)
        .start();
    let rows = proxy.ctl("backends");
    assert!(rows.contains("standby"), "{rows}");
    for _ in 0..5 {
        assert_eq!(fetch_name(&proxy), "p");
    }
    // The primary full: the next client waits for it, not the backup.
    let mut first = proxy.connect();
    assert_eq!(read_name(&mut first), "p");
    let mut second = proxy.connect();
    wait_metric(&proxy, "rrproxy_backend_queue_length", primary.addr, 1.0);
    drop(first);
    assert_eq!(read_name(&mut second), "p");
    drop(second);
    // (Its health checks connect; no client did.)
    assert_eq!(
        metric(&proxy, "rrproxy_backend_connections_total", backup.addr),
        0.0
    );
    // Every primary down: the backup takes over.
    primary.open.store(false, Ordering::Relaxed);
    proxy.wait_log("every primary backend is down: the backup backends take over");
    let row = proxy.ctl("backends");
    assert!(row.contains("up (backup)"), "{row}");
    for _ in 0..5 {
        assert_eq!(fetch_name(&proxy), "b");
    }
    // Back: the primary takes over again.
    primary.open.store(true, Ordering::Relaxed);
    proxy.wait_log("a primary backend is up: the backup backends stand by");
    for _ in 0..5 {
        assert_eq!(fetch_name(&proxy), "p");
    }
}
