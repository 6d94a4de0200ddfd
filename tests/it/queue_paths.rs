//! The backend queue's less travelled paths, end to end: `ctl explain`
//! saying a client would wait (`queued`), `/status.json`'s `maxconn` and
//! `queued` and a backup on standby, waiting clients carried over by
//! `ctl upgrade`, a sticky client's wait that times out going to another
//! backend with room, and least-conn counting waiting connections as
//! load.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::queue::{answered, counted, metric, wait_metric};
use crate::status::status_json;
use crate::support::*;
use crate::upgrade::front_pid;

const QUEUE_LENGTH: &str = "rrproxy_backend_queue_length";
const ACTIVE: &str = "rrproxy_backend_active_connections";

/// A client already connected (and so queued or served): a thread that
/// reads the backend's name, then closes; it gives the name ("" if none
/// came within 60 s).
fn waiter(s: TcpStream) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        let mut line = String::new();
        let _ = BufReader::new(&s).read_line(&mut line);
        let _ = s.shutdown(Shutdown::Both);
        line.trim().to_string()
    })
}

/// The row of backend `name` in `ctl explain --json`'s ranking.
fn rank<'a>(e: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    e["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {e}"))
}

/// A full backend: `ctl explain` says a new client would wait in its
/// queue (text and JSON), and a client from that address does wait
/// there, then is served by it once a slot frees.
#[test]
fn explain_says_queued_when_every_backend_is_full() {
    let a = name_backend("a");
    let proxy = ProxyCmd::new(&[])
        .backend(format!("{},maxconn=2", a.addr))
        .args(["--health-interval", "off", "--queue-timeout", "10m"])
        .workers(2)
        .start();
    let name = a.addr.to_string();
    let ip = Ipv4Addr::new(127, 0, 7, 9);
    let e = proxy.ctl_json(&format!("explain {ip}"));
    assert_eq!(e["outcome"], "served", "{e}");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = proxy.connect();
        assert_eq!(read_name(&mut s), "a");
        held.push(s);
    }
    wait_metric(&proxy, ACTIVE, a.addr, 2.0);
    let e = proxy.ctl_json(&format!("explain {ip}"));
    assert_eq!(
        (&e["outcome"], &e["backend"]),
        (&"queued".into(), &name.clone().into()),
        "{e}"
    );
    assert!(e["worker"].is_u64(), "{e}");
    // The ranking shows the backend as full: its two open connections.
    assert_eq!(rank(&e, &name)["active"], 2, "{e}");
    assert_eq!(e["fallbacks"], serde_json::json!([]), "{e}");
    let text = proxy.ctl(&format!("explain {ip}"));
    let verdict = text.lines().nth(1).unwrap_or_default();
    assert!(
        verdict.starts_with("=> it waits in the queue of backend")
            && verdict.contains(&name)
            && !text.contains("stopping"),
        "{text}"
    );
    // What it said is what happens: the client waits for that backend.
    let queued = waiter(proxy.connect_from(ip));
    wait_metric(&proxy, QUEUE_LENGTH, a.addr, 1.0);
    drop(held.pop());
    assert_eq!(queued.join().unwrap(), "a");
    wait_metric(&proxy, QUEUE_LENGTH, a.addr, 0.0);
}

/// `/status.json`: a limited backend shows its `maxconn` and how many
/// wait (a backend without a limit has neither field); a backup while a
/// primary is up is `standby` and counted in the summary's `up`, and the
/// clients waiting for the full primary do not go to it.
#[test]
fn status_json_shows_maxconn_and_queued_and_a_standby_backup_counts_as_up() {
    let a = name_backend("a");
    let b = name_backend("b");
    let proxy = ProxyCmd::new(&[])
        .backend(format!("{},maxconn=1", a.addr))
        .backend(format!("{},backup", b.addr))
        .args(["--health-interval", "off", "--queue-timeout", "10m"])
        .workers(2)
        .start();
    let mut holder = proxy.connect();
    assert_eq!(read_name(&mut holder), "a");
    let waiting: Vec<_> = (0..2).map(|_| waiter(proxy.connect())).collect();
    wait_metric(&proxy, QUEUE_LENGTH, a.addr, 2.0);
    let page = proxy.metrics.unwrap();
    let v = status_json(page, "");
    let rows = v["services"][0]["backends"].as_array().unwrap();
    let row = |addr: SocketAddr| {
        rows.iter()
            .find(|r| r["name"] == addr.to_string())
            .unwrap_or_else(|| panic!("no {addr} in {v}"))
    };
    let (ra, rb) = (row(a.addr), row(b.addr));
    assert_eq!(ra["state"], "up", "{ra}");
    assert_eq!(
        (&ra["maxconn"], &ra["queued"], &ra["active"]),
        (&1.into(), &2.into(), &1.into()),
        "{ra}"
    );
    assert_eq!(rb["state"], "standby", "{rb}");
    assert!(
        rb.get("maxconn").is_none() && rb.get("queued").is_none(),
        "{rb}"
    );
    let summary = &v["services"][0]["summary"];
    assert_eq!(
        (&summary["up"], &summary["down"], &summary["disabled"]),
        (&2.into(), &0.into(), &0.into()),
        "{summary}"
    );
    // The page's other route, filtered to the problems: a standby backup
    // is not one.
    let problems = status_json(page, "?state=problems");
    assert_eq!(problems["services"][0]["backends_matched"], 0, "{problems}");
    let up = status_json(page, "?state=up");
    assert_eq!(up["services"][0]["backends_matched"], 2, "{up}");
    drop(holder);
    for w in waiting {
        assert_eq!(w.join().unwrap(), "a", "a waiting client went elsewhere");
    }
    wait_metric(&proxy, QUEUE_LENGTH, a.addr, 0.0);
    let v = status_json(page, "");
    let ra = v["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == a.addr.to_string())
        .unwrap();
    assert_eq!(
        (&ra["maxconn"], &ra["queued"]),
        (&1.into(), &0.into()),
        "{ra}"
    );
    assert_eq!(
        metric(&proxy, "rrproxy_backend_connections_total", b.addr),
        0.0
    );
}

/// Clients waiting in a full backend's queue when `ctl upgrade` runs are
/// all served after it, in the order they came, with what they sent
/// before it, and the backend never sees more than its limit (the new
/// front counts the slot the old workers still hold).
#[test]
fn an_upgrade_hands_the_backend_queue_over_and_every_waiting_client_is_served() {
    let b = counted(Duration::ZERO);
    let proxy = ProxyCmd::new(&[])
        .backend(format!("{},maxconn=1", b.backend.addr))
        .args(["--health-interval", "off", "--queue-timeout", "10m"])
        .args(["--drain-timeout", "10m"])
        .workers(2)
        .start();
    let addr = b.backend.addr;
    let mut clients = Vec::new();
    for n in 0..4u32 {
        let s = proxy.connect();
        let mut w = s.try_clone().unwrap();
        w.write_all(format!("{n}\n").as_bytes()).unwrap();
        if n == 0 {
            wait_metric(&proxy, ACTIVE, addr, 1.0);
        } else {
            wait_metric(&proxy, QUEUE_LENGTH, addr, f64::from(n));
        }
        clients.push(thread::spawn(move || answered(s)));
    }
    let old = front_pid(&proxy);
    let reply = proxy.ctl("upgrade");
    assert!(reply.contains("front upgraded"), "{reply}");
    // The new front serves (the old workers drain behind it: one holds
    // the slot until the backend answers).
    wait_until(Duration::from_secs(60), "the new front", || {
        proxy
            .try_ctl("status --json")
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|st| {
                st["pid"].as_u64() != Some(u64::from(old)) && st["upgrading"] == false
            })
    });
    // The new front holds the three waiting, and knows the slot is taken.
    wait_metric(&proxy, QUEUE_LENGTH, addr, 3.0);
    let row = &proxy.ctl_json("backends")[0];
    assert_eq!(
        (row["maxconn"].as_u64(), row["queued"].as_u64()),
        (Some(1), Some(3)),
        "{row}"
    );
    wait_metric(&proxy, ACTIVE, addr, 1.0);
    let served = b.release_and_count(clients);
    assert_eq!(served, 4, "every client answered across the upgrade");
    assert_eq!(b.peak.load(Ordering::SeqCst), 1, "the limit held");
    assert_eq!(
        *b.order.lock().unwrap(),
        [0, 1, 2, 3],
        "first come, first served"
    );
    wait_metric(&proxy, QUEUE_LENGTH, addr, 0.0);
    assert_eq!(
        metric(&proxy, "rrproxy_backend_queue_timeouts_total", addr),
        0.0
    );
}

/// Sticky: a client whose backend is full waits for it (pinned, as
/// `ctl explain` says), and when `--queue-timeout` ends the wait it goes
/// to the other backend, which has room, rather than being closed.
#[test]
fn a_sticky_wait_that_times_out_goes_to_another_backend_with_room() {
    let a = name_backend("a");
    let b = name_backend("b");
    let proxy = ProxyCmd::new(&[])
        .backend(format!("{},maxconn=1", a.addr))
        .backend(b.addr.to_string())
        .args(["--policy", "sticky", "--health-interval", "off"])
        .args(["--queue-timeout", "1s"])
        .workers(2)
        .start();
    let name = a.addr.to_string();
    // Two client addresses whose backend is `a`.
    let mut for_a = (2..200u8)
        .map(|x| Ipv4Addr::new(127, 0, 8, x))
        .filter(|ip| proxy.ctl_json(&format!("explain {ip}"))["backend"] == name.as_str());
    let (first, second) = (for_a.next().unwrap(), for_a.next().unwrap());
    let mut holder = proxy.connect_from(first);
    assert_eq!(read_name(&mut holder), "a");
    wait_metric(&proxy, ACTIVE, a.addr, 1.0);
    let e = proxy.ctl_json(&format!("explain {second}"));
    assert_eq!(
        (&e["outcome"], &e["backend"]),
        (&"queued".into(), &name.clone().into()),
        "b has room, yet a sticky client waits for its own backend: {e}"
    );
    let began = Instant::now();
    let waiting = waiter(proxy.connect_from(second));
    assert_eq!(
        waiting.join().unwrap(),
        "b",
        "the timed-out wait was closed"
    );
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "served by b after {waited:?}: before --queue-timeout"
    );
    assert_eq!(
        metric(&proxy, "rrproxy_backend_queue_timeouts_total", a.addr),
        1.0
    );
    assert_eq!(metric(&proxy, "rrproxy_backend_queued_total", a.addr), 1.0);
    assert_eq!(metric(&proxy, QUEUE_LENGTH, a.addr), 0.0);
    // Nothing was closed for it, and the holder still has its slot.
    assert_eq!(
        proxy.scrape().get("rrproxy_failed_connections_total", &[]),
        Some(0.0)
    );
    holder.write_all(b"still here\n").unwrap();
    assert_eq!(metric(&proxy, ACTIVE, a.addr), 1.0);
}

/// Least-conn counts waiting connections as load: two full backends
/// holding 1 and 3, six more clients queue 4 for the first and 2 for the
/// second (without the queued count, all six would go to the first: it
/// holds fewer). `ctl explain` shows both at 5.
#[test]
fn least_conn_counts_waiting_connections_so_the_queues_stay_even() {
    let a = name_backend("a");
    let b = name_backend("b");
    let proxy = ProxyCmd::new(&[])
        .backend(format!("{},maxconn=1", a.addr))
        .backend(format!("{},maxconn=3", b.addr))
        .args(["--policy", "least-conn", "--health-interval", "off"])
        .args(["--queue-timeout", "10m"])
        .workers(2)
        .start();
    let mut held = Vec::new();
    let mut served = Vec::new();
    for _ in 0..4 {
        let mut s = proxy.connect();
        served.push(read_name(&mut s));
        held.push(s);
    }
    served.sort();
    assert_eq!(served, ["a", "b", "b", "b"]);
    wait_metric(&proxy, ACTIVE, a.addr, 1.0);
    wait_metric(&proxy, ACTIVE, b.addr, 3.0);
    let queue = |p: &Proxy| {
        (
            metric(p, QUEUE_LENGTH, a.addr),
            metric(p, QUEUE_LENGTH, b.addr),
        )
    };
    let mut waiting = Vec::new();
    for n in 1..=6 {
        waiting.push(waiter(proxy.connect()));
        wait_until(Duration::from_secs(20), &format!("{n} queued"), || {
            let (qa, qb) = queue(&proxy);
            qa + qb == f64::from(n)
        });
    }
    assert_eq!(queue(&proxy), (4.0, 2.0), "queued for a, for b");
    let e = proxy.ctl_json("explain 127.0.0.1");
    assert_eq!(e["outcome"], "queued", "{e}");
    let loads = (
        &rank(&e, &a.addr.to_string())["active"],
        &rank(&e, &b.addr.to_string())["active"],
    );
    assert_eq!(loads, (&5.into(), &5.into()), "{e}");
    drop(held);
    for w in waiting {
        let got = w.join().unwrap();
        assert!(got == "a" || got == "b", "a waiting client got {got:?}");
    }
    wait_metric(&proxy, QUEUE_LENGTH, a.addr, 0.0);
    wait_metric(&proxy, QUEUE_LENGTH, b.addr, 0.0);
}
