//! A service's own connection limits (`max-conns`, `max-conns-per-ip` in
//! its `[[service]]` table): a service at its `max-conns` stops accepting
//! on its own listener (the client waits in the backlog and is served
//! when a connection ends) while another service serves; a client over
//! the service's per-IP limit is reset while other clients and services
//! are served; on a listener shared by SNI, a connection for the full
//! service is reset while the fallback serves, and the listener stops only
//! when all its services are full; a dead worker's connections
//! are uncounted; an upgrade carries the counts; a reload raises and
//! removes a limit at once; services on a port the kernel chose route
//! and hold like any other.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use crate::peers::free_port;
use crate::support::*;
use crate::upgrade::front_pid;

fn start(body: &str, workers: usize) -> Proxy {
    start_at(&config_file("service-limits", body), workers)
}

fn start_at(path: &std::path::Path, workers: usize) -> Proxy {
    ProxyCmd::new(&[])
        .config(path)
        .workers(workers)
        .args(["--health-interval", "off"])
        .start()
}

/// Two services on their own ports: `alpha` (to backend `a`, with the
/// `limits` lines) and `beta` (to `b`).
fn alpha_and_beta(pa: u16, a: SocketAddr, limits: &str, pb: u16, b: SocketAddr) -> String {
    format!(
        r#"
[[service]]
name = "alpha"
listen = "127.0.0.1:{pa}"
backends = ["{a}"]
{limits}

[[service]]
name = "beta"
listen = "127.0.0.1:{pb}"
backends = ["{b}"]
"#
    )
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    proxy.scrape().get(name, labels)
}

fn active(proxy: &Proxy, service: &str) -> Option<f64> {
    metric(
        proxy,
        "rrproxy_service_active_connections",
        &[("service", service)],
    )
}

fn refused(proxy: &Proxy, service: &str, reason: &str) -> f64 {
    metric(
        proxy,
        "rrproxy_service_refused_connections_total",
        &[("service", service), ("reason", reason)],
    )
    .unwrap_or(f64::NAN)
}

/// A connection from `from` to `to` that got its backend's name.
fn served(from: Ipv4Addr, to: SocketAddr) -> (TcpStream, String) {
    let mut s = connect_between(SocketAddr::from((from, 0)), to);
    let name = read_name(&mut s);
    (s, name)
}

/// Nothing arrives on `s` within `d` (it waits, unserved).
fn silent_for(s: &mut TcpStream, d: Duration) -> bool {
    s.set_read_timeout(Some(d)).unwrap();
    let mut b = [0u8; 1];
    let quiet = matches!(s.read(&mut b), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    quiet
}

/// `s` was reset or closed without a byte.
fn turned_away(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn a_service_at_its_max_conns_holds_its_listener_while_another_service_serves() {
    let a = name_backend("a");
    let b = name_backend("b");
    let (pa, pb) = (free_port(), free_port());
    let proxy = start(&alpha_and_beta(pa, a.addr, "max-conns = 3", pb, b.addr), 1);
    let (la, lb) = (local(pa), local(pb));
    assert_eq!(
        metric(
            &proxy,
            "rrproxy_service_max_connections",
            &[("service", "alpha")]
        ),
        Some(3.0)
    );
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let (s, name) = served(Ipv4Addr::LOCALHOST, la);
            assert_eq!(name, "a");
            s
        })
        .collect();
    wait_until(Duration::from_secs(10), "alpha to count 3", || {
        active(&proxy, "alpha") == Some(3.0)
    });
    // `ctl services` and the status page say so.
    let table = proxy.ctl("services");
    let row = table.lines().find(|l| l.starts_with("alpha")).unwrap_or("");
    assert!(row.contains("3/3"), "{table}");
    let status = crate::status::status_json(proxy.metrics.expect("metrics"), "");
    let alpha = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "alpha")
        .unwrap()
        .clone();
    assert_eq!(alpha["max_connections"], 3, "{alpha}");
    assert_eq!(alpha["limited_connections"], 3, "{alpha}");
    let page = http_get(proxy.metrics.expect("metrics"), "/status");
    assert!(page.contains("3 of max-conns 3"), "the page's alpha line");
    // `ctl explain` says what a new client of alpha would get.
    let e = proxy.ctl_json("explain 127.0.0.9 --service alpha");
    assert_eq!(e["outcome"], "full", "{e}");
    assert_eq!(e["service_limits"]["open"], 3, "{e}");
    let text = proxy.ctl("explain 127.0.0.9 --service alpha");
    assert!(
        text.contains("service limits: 3 of max-conns 3 open (full)"),
        "{text}"
    );
    // The fourth waits in alpha's backlog, unserved and not refused.
    let mut fourth = connect_between(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), la);
    assert!(
        silent_for(&mut fourth, Duration::from_millis(1500)),
        "a fourth connection of alpha was served past its max-conns"
    );
    // beta serves meanwhile.
    for _ in 0..5 {
        let (s, name) = served(Ipv4Addr::LOCALHOST, lb);
        assert_eq!(name, "b");
        drop(s);
    }
    assert_eq!(refused(&proxy, "alpha", "max_conns"), 0.0);
    // One of alpha's ends: the fourth is served.
    let gone = held.pop().unwrap();
    gone.shutdown(Shutdown::Both).unwrap();
    drop(gone);
    assert_eq!(read_name(&mut fourth), "a");
    held.push(fourth);
    wait_until(Duration::from_secs(10), "alpha to count 3 again", || {
        active(&proxy, "alpha") == Some(3.0)
    });
    // The worker holding them dies: they are uncounted, and alpha serves
    // again (the next client is not held behind connections that are gone).
    let pid = proxy.worker_pids()[0].expect("a worker");
    let mut fifth = connect_between(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), la);
    kill(pid, "KILL");
    assert_eq!(
        read_name(&mut fifth),
        "a",
        "alpha serves after its worker died"
    );
    wait_until(
        Duration::from_secs(10),
        "alpha to count only the new one",
        || active(&proxy, "alpha") == Some(1.0),
    );
    for s in held {
        assert!(turned_away(&mut { s }), "a connection of the dead worker");
    }
}

#[test]
fn a_client_over_its_services_per_ip_limit_is_reset_while_others_are_served() {
    let a = name_backend("a");
    let b = name_backend("b");
    let (pa, pb) = (free_port(), free_port());
    let proxy = start(
        &alpha_and_beta(pa, a.addr, "max-conns-per-ip = 2", pb, b.addr),
        2,
    );
    let (la, lb) = (local(pa), local(pb));
    let (one, two) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let mut from_one: Vec<TcpStream> = (0..2).map(|_| served(one, la).0).collect();
    // The third from the same client is reset, and counted.
    let mut third = connect_between(SocketAddr::from((one, 0)), la);
    assert!(turned_away(&mut third), "a third connection from {one}");
    assert_eq!(refused(&proxy, "alpha", "max_conns_per_ip"), 1.0);
    let e = proxy.ctl_json(&format!("explain {one} --service alpha"));
    assert_eq!(e["outcome"], "refused", "{e}");
    assert_eq!(e["service_limits"]["reached"], "max_conns_per_ip", "{e}");
    assert_eq!(e["service_limits"]["client_open"], 2, "{e}");
    let e = proxy.ctl_json(&format!("explain {two} --service alpha"));
    assert_eq!(e["outcome"], "served", "{e}");
    // Another client, and the same client on another service, are served.
    let from_two: Vec<TcpStream> = (0..2)
        .map(|_| {
            let (s, name) = served(two, la);
            assert_eq!(name, "a");
            s
        })
        .collect();
    let others: Vec<TcpStream> = (0..3)
        .map(|_| {
            let (s, name) = served(one, lb);
            assert_eq!(name, "b");
            s
        })
        .collect();
    // One of its connections ends: the client may open one more.
    let gone = from_one.pop().unwrap();
    gone.shutdown(Shutdown::Both).unwrap();
    drop(gone);
    let again = wait_for(Duration::from_secs(10), "a place for 127.0.0.2", || {
        let mut s = connect_between(SocketAddr::from((one, 0)), la);
        let mut line = [0u8; 2];
        s.read_exact(&mut line).ok().map(|_| s)
    });
    from_one.push(again);
    assert_eq!(
        proxy
            .scrape()
            .get("rrproxy_refused_connections_total", &[])
            .unwrap_or(0.0),
        0.0,
        "the proxy-wide per-IP limit refused nobody"
    );
    drop((from_one, from_two, others));
}

/// A TLS ClientHello asking for `host` (enough of one for the front's
/// peek: the backends here are plain and answer with their names).
fn client_hello(host: &str) -> Vec<u8> {
    let name = host.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // no compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

fn hello_to(to: SocketAddr, host: &str) -> TcpStream {
    let mut s = connect_between(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), to);
    s.write_all(&client_hello(host)).unwrap();
    s
}

#[test]
fn on_a_shared_sni_listener_a_full_service_resets_and_all_full_holds_the_listener() {
    let w = name_backend("w");
    let o = name_backend("o");
    let port = free_port();
    let proxy = start(
        &format!(
            r#"
[[service]]
name = "web"
listen = "127.0.0.1:{port}"
backends = ["{}"]
sni = ["www.example.com"]
max-conns = 1

[[service]]
name = "other"
listen = "127.0.0.1:{port}"
backends = ["{}"]
max-conns = 1
"#,
            w.addr, o.addr
        ),
        2,
    );
    let l = local(port);
    let mut first = hello_to(l, "www.example.com");
    assert_eq!(read_name(&mut first), "w");
    wait_until(Duration::from_secs(10), "web to count 1", || {
        active(&proxy, "web") == Some(1.0)
    });
    let mut second = hello_to(l, "www.example.com");
    assert!(turned_away(&mut second), "a second connection for web");
    assert_eq!(refused(&proxy, "web", "max_conns"), 1.0);
    // The listener still accepts: the fallback serves.
    let mut other = hello_to(l, "api.example.com");
    assert_eq!(read_name(&mut other), "o");
    // Now every service on the listener is full: it stops accepting, and
    // the next client waits in the backlog instead of being reset.
    wait_until(Duration::from_secs(10), "other to count 1", || {
        active(&proxy, "other") == Some(1.0)
    });
    let mut third = hello_to(l, "www.example.com");
    assert!(
        silent_for(&mut third, Duration::from_millis(1500)),
        "a connection to a listener whose services are all full"
    );
    assert_eq!(refused(&proxy, "web", "max_conns"), 1.0, "not reset");
    first.shutdown(Shutdown::Both).unwrap();
    drop(first);
    assert_eq!(read_name(&mut third), "w", "served once web had room");
    drop(other);
}

#[test]
fn an_upgrade_carries_a_services_count_and_its_held_listener() {
    let a = name_backend("a");
    let pa = free_port();
    let proxy = start(
        &format!(
            r#"
[[service]]
name = "alpha"
listen = "127.0.0.1:{pa}"
backends = ["{}"]
max-conns = 2
"#,
            a.addr
        ),
        2,
    );
    let la = local(pa);
    let mut held: Vec<TcpStream> = (0..2).map(|_| served(Ipv4Addr::LOCALHOST, la).0).collect();
    wait_until(Duration::from_secs(10), "alpha to count 2", || {
        active(&proxy, "alpha") == Some(2.0)
    });
    let before = front_pid(&proxy);
    let reply = proxy.ctl("upgrade");
    assert!(reply.contains("front upgraded"), "{reply}");
    // (The old workers drain with the held connections: the new front
    // serves already.)
    wait_until(Duration::from_secs(30), "the new front to serve", || {
        proxy
            .try_ctl("status --json")
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|st| {
                st["pid"].as_u64() != Some(u64::from(before)) && st["upgrading"] == false
            })
    });
    assert_eq!(active(&proxy, "alpha"), Some(2.0), "the new front's count");
    // Still full: a third waits.
    let mut third = connect_between(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), la);
    assert!(
        silent_for(&mut third, Duration::from_millis(1500)),
        "served past max-conns after the upgrade"
    );
    // An old connection ends (its worker, from before the upgrade, tells
    // the new front): the third is served.
    let gone = held.pop().unwrap();
    gone.shutdown(Shutdown::Both).unwrap();
    drop(gone);
    assert_eq!(read_name(&mut third), "a");
    drop((held, third));
    wait_until(Duration::from_secs(10), "alpha to count 0", || {
        active(&proxy, "alpha") == Some(0.0)
    });
}

/// The addresses the proxy logged it listens on (`listening listen=ADDR`).
fn logged_listeners(proxy: &Proxy) -> Vec<SocketAddr> {
    wait_for(
        Duration::from_secs(10),
        "the listeners to be logged",
        || {
            let found: Vec<SocketAddr> = proxy
                .stderr()
                .lines()
                .filter_map(|l| l.split("listening listen=").nth(1))
                .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
                .collect();
            (!found.is_empty()).then_some(found)
        },
    )
}

/// Services on a port the kernel chose (`listen = "127.0.0.1:0"`) route by
/// what the config asked for: the shared SNI listener reaches both
/// services (it reset every connection before: no route matched the bound
/// port), and a full service's own `:0` listener is held like any other.
#[test]
fn services_on_a_port_the_kernel_chose_route_and_hold() {
    let w = name_backend("w");
    let o = name_backend("o");
    let x = name_backend("x");
    let proxy = start(
        &format!(
            r#"
[[service]]
name = "web"
listen = "127.0.0.1:0"
backends = ["{}"]
sni = ["www.example.com"]

[[service]]
name = "other"
listen = "127.0.0.1:0"
backends = ["{}"]

[[service]]
name = "solo"
listen = "[::1]:0"
backends = ["{}"]
max-conns = 1
"#,
            w.addr, o.addr, x.addr
        ),
        2,
    );
    let all = logged_listeners(&proxy);
    let shared = *all.iter().find(|a| a.is_ipv4()).expect("the v4 listener");
    let solo = *all.iter().find(|a| a.is_ipv6()).expect("the v6 listener");
    let mut s = hello_to(shared, "www.example.com");
    assert_eq!(read_name(&mut s), "w");
    let mut plain = connect_between(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), shared);
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        read_name(&mut plain),
        "o",
        "plain text goes to the fallback"
    );
    let any6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
    let mut first = connect_between(any6, solo);
    assert_eq!(read_name(&mut first), "x");
    wait_until(Duration::from_secs(10), "solo to count 1", || {
        active(&proxy, "solo") == Some(1.0)
    });
    let mut second = connect_between(any6, solo);
    assert!(
        silent_for(&mut second, Duration::from_millis(1500)),
        "a second connection of solo was served past its max-conns"
    );
    first.shutdown(Shutdown::Both).unwrap();
    drop(first);
    assert_eq!(read_name(&mut second), "x");
    assert_eq!(refused(&proxy, "solo", "max_conns"), 0.0);
}

/// A reload changes a service's own limit at once: raised, the client
/// waiting in the backlog is served; removed, nothing is held or counted
/// any more (the connections counted before end without a trace).
#[test]
fn a_reload_raises_and_removes_a_services_max_conns() {
    let a = name_backend("a");
    let (pa, pb) = (free_port(), free_port());
    let body = |limits: &str| alpha_and_beta(pa, a.addr, limits, pb, a.addr);
    let path = config_file("service-limits-reload", &body("max-conns = 1"));
    let proxy = start_at(&path, 2);
    let la = local(pa);
    let (first, _) = served(Ipv4Addr::LOCALHOST, la);
    wait_until(Duration::from_secs(10), "alpha to count 1", || {
        active(&proxy, "alpha") == Some(1.0)
    });
    let mut second = connect_between(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), la);
    assert!(silent_for(&mut second, Duration::from_millis(1000)));
    std::fs::write(&path, body("max-conns = 2")).unwrap();
    let reply = proxy.ctl("config reload");
    assert!(
        reply.contains("service alpha: own max-conns 1 -> 2"),
        "{reply}"
    );
    assert_eq!(read_name(&mut second), "a", "served once the limit rose");
    wait_until(Duration::from_secs(10), "alpha to count 2", || {
        active(&proxy, "alpha") == Some(2.0)
    });
    std::fs::write(&path, body("")).unwrap();
    let reply = proxy.ctl("config reload");
    assert!(
        reply.contains("service alpha: own max-conns 2 -> off"),
        "{reply}"
    );
    assert_eq!(active(&proxy, "alpha"), None, "no gauge without a limit");
    let more: Vec<TcpStream> = (0..4).map(|_| served(Ipv4Addr::LOCALHOST, la).0).collect();
    drop((first, second, more));
}

/// Nothing a service counts leaks, whatever way its connections end:
/// served, queued for a full backend, given back by a worker whose connect
/// failed (a refusing backend first, a limited one next), refused by the
/// service's own limits, or lost with a worker killed in the middle. Once
/// the clients are gone the service counts 0 and every client is admitted.
#[test]
fn a_services_counts_return_to_zero_after_churn_and_a_killed_worker() {
    let echo = echo_backend();
    let dead = refused_addr();
    let port = free_port();
    let proxy = start(
        &format!(
            r#"
retries = 1

[[service]]
name = "alpha"
listen = "127.0.0.1:{port}"
backends = ["{},maxconn=2", "{}"]
max-conns = 3
max-conns-per-ip = 1
"#,
            echo.addr, dead
        ),
        2,
    );
    let l = local(port);
    let kill_at = std::sync::Arc::new(std::sync::Barrier::new(7));
    let clients: Vec<_> = (0..6u8)
        .map(|t| {
            let kill_at = kill_at.clone();
            std::thread::spawn(move || {
                let from = Ipv4Addr::new(127, 0, 0, 2 + t % 3);
                for n in 0..40 {
                    if n == 20 {
                        kill_at.wait();
                    }
                    let Ok(mut s) = try_connect_between(SocketAddr::from((from, 0)), l) else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = s.write_all(b"ping\n");
                    let mut b = [0u8; 5];
                    let _ = s.read_exact(&mut b);
                }
            })
        })
        .collect();
    kill_at.wait();
    if let Some(pid) = proxy.worker_pids()[0] {
        kill(pid, "KILL");
    }
    for c in clients {
        c.join().unwrap();
    }
    wait_until(Duration::from_secs(20), "alpha to count 0", || {
        active(&proxy, "alpha") == Some(0.0)
    });
    // Every way was taken.
    let m = proxy.scrape();
    let echo_label = [("service", "alpha"), ("backend", &*echo.addr.to_string())];
    let queued = m
        .get("rrproxy_backend_queued_total", &echo_label)
        .unwrap_or(0.0);
    let given_back = m
        .get("rrproxy_redispatched_connections_total", &[])
        .unwrap_or(0.0);
    let per_ip = refused(&proxy, "alpha", "max_conns_per_ip");
    assert!(
        queued > 0.0 && given_back > 0.0 && per_ip > 0.0,
        "queued {queued}, given back {given_back}, refused per IP {per_ip}"
    );
    for from in 2..5u8 {
        let ip = Ipv4Addr::new(127, 0, 0, from);
        let e = proxy.ctl_json(&format!("explain {ip} --service alpha"));
        assert_eq!(e["service_limits"]["client_open"], 0, "{e}");
    }
    // And they are served again (two: the echo backend's slots).
    wait_until(Duration::from_secs(20), "a worker in each slot", || {
        proxy.worker_pids().iter().all(|p| p.is_some())
    });
    let mut held = Vec::new();
    for from in 2..4u8 {
        let ip = Ipv4Addr::new(127, 0, 0, from);
        let mut s = connect_between(SocketAddr::from((ip, 0)), l);
        s.write_all(b"ping\n").unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping\n");
        held.push(s);
    }
    wait_until(Duration::from_secs(10), "alpha to count 2", || {
        active(&proxy, "alpha") == Some(2.0)
    });
}
