//! A connection limit inside a named `[[service]]`: two services, one
//! with a limited backend. Its queue fills and is counted under its
//! service's label while the other service serves at once; `ctl backend
//! maxconn` needs `--service` when there are several and raises the
//! limit of that service's backend; every waiting client is answered.
//! Each service's waits end at its own queue timeout.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use crate::peers::free_port;
use crate::queue::{answered, counted};
use crate::support::*;

/// A per-backend series of `service`'s backend (NaN when absent).
fn queue_metric(proxy: &Proxy, name: &str, service: &str, backend: SocketAddr) -> f64 {
    proxy
        .scrape()
        .get(
            name,
            &[("service", service), ("backend", &backend.to_string())],
        )
        .unwrap_or(f64::NAN)
}

fn queue_length(proxy: &Proxy, backend: SocketAddr) -> f64 {
    queue_metric(proxy, "rrproxy_backend_queue_length", "alpha", backend)
}

fn start(tag: &str, body: &str) -> Proxy {
    ProxyCmd::new(&[])
        .config(&config_file(tag, body))
        .workers(2)
        .args(["--health-interval", "off"])
        .start()
}

#[test]
fn a_maxconn_queue_works_inside_one_of_two_services() {
    let limited = counted(Duration::from_millis(1));
    let free = name_backend("b");
    let (pa, pb) = (free_port(), free_port());
    let proxy = start(
        "queue-services",
        &format!(
            r#"
[[service]]
name = "alpha"
listen = "127.0.0.1:{pa}"
backends = ["{},maxconn=2"]

[[service]]
name = "beta"
listen = "127.0.0.1:{pb}"
backends = ["{}"]
"#,
            limited.backend.addr, free.addr
        ),
    );
    let (la, lb) = (
        SocketAddr::from(([127, 0, 0, 1], pa)),
        SocketAddr::from(([127, 0, 0, 1], pb)),
    );
    let addr = limited.backend.addr;
    // Six clients for alpha: two hold its slots, four wait.
    let mut clients = Vec::new();
    for n in 0..6u32 {
        let s = TcpStream::connect_timeout(&la, Duration::from_secs(5)).unwrap();
        s.try_clone()
            .unwrap()
            .write_all(format!("{n}\n").as_bytes())
            .unwrap();
        clients.push(thread::spawn(move || answered(s)));
    }
    wait_until(Duration::from_secs(20), "alpha's queue to hold 4", || {
        queue_length(&proxy, addr) == 4.0
    });
    // Beta is not limited by alpha's queue: it answers at once.
    for _ in 0..5 {
        let mut s = TcpStream::connect_timeout(&lb, Duration::from_secs(5)).unwrap();
        assert_eq!(read_name(&mut s), "b");
    }
    let rows = proxy.ctl("backends --service alpha");
    assert!(rows.contains("2/2"), "{rows}");
    // Several services: the limit is set on one service's backend.
    let err = proxy.ctl(&format!("backend maxconn {addr} 3"));
    assert!(err.contains("several services"), "{err}");
    let err = proxy.ctl(&format!("backend maxconn {addr} 3 --service beta"));
    assert!(err.starts_with("error"), "{err}");
    let ok = proxy.ctl(&format!("backend maxconn {addr} 3 --service alpha"));
    assert!(ok.contains("maxconn 2 -> 3"), "{ok}");
    wait_until(Duration::from_secs(20), "a third slot to take one", || {
        queue_length(&proxy, addr) == 3.0
    });
    let served = limited.release_and_count(clients);
    assert_eq!(served, 6, "every waiting client of alpha answered");
    let peak = limited.peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "the limited backend saw {peak} at once");
    let queued = queue_metric(&proxy, "rrproxy_backend_queued_total", "alpha", addr);
    assert_eq!(queued, 4.0);
}

/// Each service's waits end at its own queue timeout: `queue-timeout` in
/// its table, else the top level's, else its connect timeout (here the
/// top level's 30 s).
#[test]
fn each_service_waits_its_own_queue_timeout() {
    let fast = name_backend("f");
    let slow = name_backend("s");
    let (pf, ps) = (free_port(), free_port());
    let proxy = start(
        "queue-timeouts",
        &format!(
            r#"
connect-timeout = "30s"

[[service]]
name = "fast"
listen = "127.0.0.1:{pf}"
backends = ["{},maxconn=1"]
queue-timeout = "500ms"

[[service]]
name = "slow"
listen = "127.0.0.1:{ps}"
backends = ["{},maxconn=1"]
"#,
            fast.addr, slow.addr
        ),
    );
    let (lf, ls) = (
        SocketAddr::from(([127, 0, 0, 1], pf)),
        SocketAddr::from(([127, 0, 0, 1], ps)),
    );
    // Each backend's one slot taken, then one client waits for each.
    let mut holders = Vec::new();
    for l in [lf, ls] {
        let mut s = TcpStream::connect_timeout(&l, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        read_name(&mut s);
        holders.push(s);
    }
    let waiters: Vec<TcpStream> = [lf, ls]
        .iter()
        .map(|l| TcpStream::connect_timeout(l, Duration::from_secs(5)).unwrap())
        .collect();
    let qlen = "rrproxy_backend_queue_length";
    wait_until(Duration::from_secs(10), "one waiting in each queue", || {
        queue_metric(&proxy, qlen, "fast", fast.addr) == 1.0
            && queue_metric(&proxy, qlen, "slow", slow.addr) == 1.0
    });
    let timeouts = "rrproxy_backend_queue_timeouts_total";
    wait_until(Duration::from_secs(10), "fast's wait to time out", || {
        queue_metric(&proxy, timeouts, "fast", fast.addr) == 1.0
    });
    // slow's (30 s, its connect timeout inherited) still waits.
    assert_eq!(queue_metric(&proxy, qlen, "slow", slow.addr), 1.0);
    assert_eq!(queue_metric(&proxy, timeouts, "slow", slow.addr), 0.0);
    // Its slot frees: the waiter is served.
    drop(holders.pop());
    let mut w = waiters.into_iter().nth(1).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(read_name(&mut w), "s");
}
