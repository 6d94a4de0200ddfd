//! Several services in one proxy (`[[service]]` tables): each listener
//! reaches only its own pool under its own policy, `ctl` acts on one
//! service at a time, and a shared TLS listener routes by server name
//! (SNI) to real nginx HTTPS backends, including a ClientHello written in
//! pieces and records, one past 4 KiB, none with no SNI, plain text, and
//! a listener without a fallback. A reload adds and removes services
//! under a download through a third; an upgrade carries three under load.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use crate::peers::free_port;
use crate::support::*;
use crate::tls::{Delivery, big_hello_args, curl_https, nginx_tls, openssl_get, relay};
use crate::upgrade::{Stream, front_pid, wait_upgraded};

fn config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("rrproxy.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn start(body: &str) -> Proxy {
    let dir = temp_dir("services");
    let path = config(&dir, body);
    ProxyCmd::new(&[]).config(&path).workers(2).start()
}

fn name_via(addr: SocketAddr, from: std::net::Ipv4Addr) -> String {
    let mut s = connect_between(SocketAddr::from((from, 0)), addr);
    let name = read_name(&mut s);
    let _ = s.shutdown(Shutdown::Both);
    name
}

#[test]
fn two_services_on_two_ports_reach_only_their_own_pools_under_their_own_policies() {
    let (a1, a2) = (name_backend("a1"), name_backend("a2"));
    let (b1, b2) = (name_backend("b1"), name_backend("b2"));
    let (pa, pb) = (free_port(), free_port());
    let proxy = start(&format!(
        r#"
[[service]]
name = "alpha"
listen = "127.0.0.1:{pa}"
backends = ["{}", "{}"]

[[service]]
name = "beta"
listen = "127.0.0.1:{pb}"
backends = ["{}", "{}"]
policy = "sticky"
"#,
        a1.addr, a2.addr, b1.addr, b2.addr
    ));
    let (la, lb) = (
        SocketAddr::from(([127, 0, 0, 1], pa)),
        SocketAddr::from(([127, 0, 0, 1], pb)),
    );
    let mut seen_a = std::collections::BTreeSet::new();
    for i in 0..8u8 {
        let name = name_via(la, std::net::Ipv4Addr::new(127, 0, 0, 2 + i));
        assert!(name.starts_with('a'), "alpha reached {name}");
        seen_a.insert(name);
    }
    assert_eq!(seen_a.len(), 2, "round-robin over both of alpha's backends");
    let from = std::net::Ipv4Addr::new(127, 0, 0, 7);
    let first = name_via(lb, from);
    for _ in 0..6 {
        let name = name_via(lb, from);
        assert!(name.starts_with('b'), "beta reached {name}");
        assert_eq!(name, first, "sticky: one client, one backend");
    }
    // Operating them: one at a time, by name.
    let services = proxy.ctl("services");
    assert!(
        services.contains("alpha") && services.contains("beta"),
        "{services}"
    );
    let rows = proxy.ctl_json("services");
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    let err = proxy.ctl("policy least-conn");
    assert!(
        err.contains("several services") && err.contains("alpha") && err.contains("beta"),
        "{err}"
    );
    let ok = proxy.ctl("policy least-conn --service beta");
    assert!(ok.contains("sticky -> least-conn"), "{ok}");
    assert_eq!(proxy.ctl("policy --service alpha").trim(), "round-robin");
    let err = proxy.ctl("backend disable 1.2.3.4:5 --service gamma");
    assert!(err.contains("no service named 'gamma'"), "{err}");
    let ok = proxy.ctl(&format!("backend disable {} --service alpha", a1.addr));
    assert!(ok.contains("disabled"), "{ok}");
    for i in 0..4u8 {
        let name = name_via(la, std::net::Ipv4Addr::new(127, 0, 0, 20 + i));
        assert_eq!(name, "a2", "a1 is disabled in alpha");
    }
    // Metrics: the service label, and connections per service.
    let m = proxy.scrape();
    assert_eq!(
        m.get("rrproxy_service_connections_total", &[("service", "alpha")]),
        Some(12.0)
    );
    assert_eq!(
        m.get("rrproxy_service_connections_total", &[("service", "beta")]),
        Some(7.0)
    );
    let b1_conns = m.get(
        "rrproxy_backend_connections_total",
        &[("service", "beta"), ("backend", &b1.addr.to_string())],
    );
    assert!(b1_conns.is_some(), "per-backend series carry the service");
}

#[test]
#[cfg_attr(
    not(all(has_nginx, has_openssl, has_curl)),
    ignore = "needs nginx, openssl and curl"
)]
fn one_tls_listener_routes_by_server_name_to_three_nginx_pools() {
    let www = nginx_tls("www", &["www.a.test"]);
    let star = nginx_tls("star", &["*.b.test"]);
    let other = nginx_tls("other", &["other.test"]);
    let (port, strict) = (free_port(), free_port());
    let proxy = start(&format!(
        r#"
[[service]]
name = "www"
listen = ["127.0.0.1:{port}", "127.0.0.1:{strict}"]
backends = ["{}"]
sni = ["www.a.test"]

[[service]]
name = "star"
listen = ["127.0.0.1:{port}", "127.0.0.1:{strict}"]
backends = ["{}"]
sni = ["*.b.test"]

[[service]]
name = "other"
listen = "127.0.0.1:{port}"
backends = ["{}"]
"#,
        www.addr, star.addr, other.addr
    ));
    let at = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(curl_https(at, "www.a.test").unwrap().trim(), "www");
    assert_eq!(curl_https(at, "WWW.A.TEST").unwrap().trim(), "www");
    assert_eq!(curl_https(at, "x.b.test").unwrap().trim(), "star");
    assert_eq!(curl_https(at, "nowhere.test").unwrap().trim(), "other");
    assert_eq!(openssl_get(at, None, &[]).unwrap().trim(), "other");
    // More than 4 KiB of hello (a long ALPN list): still routed by name.
    let big = big_hello_args();
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    assert_eq!(
        openssl_get(at, Some("www.a.test"), &big).unwrap().trim(),
        "www"
    );
    // Written in pieces, in small records, slowly: the wait is off the
    // accept loop (defer-accept lets the first piece through).
    let pieces = relay(
        at,
        Delivery {
            record: Some(100),
            piece: 150,
            pause: Duration::from_millis(20),
        },
    );
    assert_eq!(curl_https(pieces.addr, "y.b.test").unwrap().trim(), "star");
    assert!(pieces.hellos.lock().unwrap()[0] > 150);
    // The backends got every byte: the names they saw are the asked ones.
    assert!(star.server_names().iter().any(|n| n == "y.b.test"));
    // Plain text: to the fallback (nginx says it is not TLS).
    let mut s = TcpStream::connect(at).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("400"), "{reply}");
    // No fallback on the second listener: closed, counted.
    let strict_at = SocketAddr::from(([127, 0, 0, 1], strict));
    assert_eq!(curl_https(strict_at, "www.a.test").unwrap().trim(), "www");
    let mut s = TcpStream::connect(strict_at).unwrap();
    s.write_all(b"hello, plain text\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        !matches!(s.read(&mut buf), Ok(n) if n > 0),
        "a connection no service takes is closed"
    );
    assert!(curl_https(strict_at, "nowhere.test").is_err());
    let m = proxy.scrape();
    let sni = |service: &str, reason: &str| {
        m.get(
            "rrproxy_sni_connections_total",
            &[("service", service), ("reason", reason)],
        )
        .unwrap_or(-1.0)
    };
    assert_eq!(sni("www", "found"), 4.0);
    assert_eq!(sni("star", "found"), 2.0);
    assert_eq!(sni("other", "no_match"), 1.0);
    assert_eq!(sni("other", "no_sni"), 1.0);
    assert_eq!(sni("other", "not_tls"), 1.0);
    assert_eq!(sni("", "not_tls"), 1.0);
    assert_eq!(sni("", "no_match"), 1.0);
    assert_eq!(sni("www", "timeout"), 0.0, "present at 0");
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One line written and read back through an echo service.
fn echo_once(s: &mut TcpStream, line: &[u8]) {
    s.write_all(line).unwrap();
    let mut got = vec![0u8; line.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, line, "the echo came back");
}

#[test]
fn a_reload_adds_and_removes_services_while_a_download_runs_through_a_third() {
    let (keep, gone) = (echo_backend(), echo_backend());
    let fresh = name_backend("new");
    let (pk, pg, pn) = (free_port(), free_port(), free_port());
    let dir = temp_dir("services-reload");
    let keep_table = format!(
        "[[service]]\nname = \"keep\"\nlisten = \"127.0.0.1:{pk}\"\nbackends = [\"{}\"]\n",
        keep.addr
    );
    let path = config(
        &dir,
        &format!(
            "{keep_table}\n[[service]]\nname = \"gone\"\nlisten = \"127.0.0.1:{pg}\"\nbackends = [\"{}\"]\n",
            gone.addr
        ),
    );
    let proxy = ProxyCmd::new(&[]).config(&path).workers(2).start();
    let download = Stream::start_at(local(pk), 19, 4 << 20, Duration::from_millis(10));
    let mut held = connect_between(SocketAddr::from(([127, 0, 0, 3], 0)), local(pg));
    held.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    echo_once(&mut held, b"before\n");
    // `gone` leaves, `new` arrives on a port nothing listens on yet.
    assert!(try_connect_between(SocketAddr::from(([127, 0, 0, 4], 0)), local(pn)).is_err());
    config(
        &dir,
        &format!(
            "{keep_table}\n[[service]]\nname = \"new\"\nlisten = \"127.0.0.1:{pn}\"\nbackends = [\"{}\"]\n",
            fresh.addr
        ),
    );
    let reply = proxy.ctl("config reload");
    assert!(reply.contains("reloaded"), "{reply}");
    // The new listener was bound before the reply.
    assert_eq!(
        name_via(local(pn), std::net::Ipv4Addr::new(127, 0, 0, 5)),
        "new"
    );
    // The removed service's listener is closed; its connection drains.
    wait_until(Duration::from_secs(20), "gone's listener to close", || {
        try_connect_between(SocketAddr::from(([127, 0, 0, 6], 0)), local(pg)).is_err()
    });
    echo_once(&mut held, b"after the reload\n");
    let services = proxy.ctl("services");
    assert!(
        services.contains("keep")
            && services.contains("new")
            && services.contains("gone (removed, draining)"),
        "{services}"
    );
    // Once its last connection ends, the removed service is gone.
    drop(held);
    wait_until(Duration::from_secs(30), "gone to finish draining", || {
        !proxy.ctl("services").contains("gone")
    });
    download.check("the download through the untouched service");
}

#[test]
fn an_upgrade_carries_three_services_under_load_and_fails_nothing() {
    let backends = [name_backend("x"), name_backend("y"), name_backend("z")];
    let ports = [free_port(), free_port(), free_port()];
    let mut body = String::new();
    for (i, (b, p)) in backends.iter().zip(ports).enumerate() {
        let policy = ["round-robin", "least-conn", "sticky"][i];
        body += &format!(
            "[[service]]\nname = \"s{i}\"\nlisten = \"127.0.0.1:{p}\"\nbackends = [\"{}\"]\npolicy = \"{policy}\"\n\n",
            b.addr
        );
    }
    let proxy = start(&body);
    let loads: Vec<Load> = ports.iter().map(|&p| Load::start_at(local(p), 8)).collect();
    wait_until(
        Duration::from_secs(60),
        "load to flow through all three",
        || loads.iter().all(|l| l.counts().0 > 200),
    );
    let old = front_pid(&proxy);
    let reply = proxy.ctl("upgrade");
    assert!(reply.contains("front upgraded"), "{reply}");
    wait_upgraded(&proxy, old, Duration::from_secs(90));
    let marks: Vec<u64> = loads.iter().map(|l| l.counts().0).collect();
    wait_until(
        Duration::from_secs(60),
        "load to go on after the upgrade",
        || {
            loads
                .iter()
                .zip(&marks)
                .all(|(l, m)| l.counts().0 > m + 200)
        },
    );
    for (i, load) in loads.into_iter().enumerate() {
        let (ok, failed) = load.finish();
        assert_eq!(
            failed,
            0,
            "service s{i}: {failed} of {} failed",
            ok + failed
        );
    }
    // Each service kept its listener, pool and policy.
    for (i, p) in ports.iter().enumerate() {
        let name = name_via(local(*p), std::net::Ipv4Addr::new(127, 0, 0, 9));
        assert_eq!(name, ["x", "y", "z"][i]);
        let policy = proxy.ctl(&format!("policy --service s{i}"));
        assert_eq!(policy.trim(), ["round-robin", "least-conn", "sticky"][i]);
    }
    let m = proxy.scrape();
    for i in 0..3 {
        let n = m
            .get(
                "rrproxy_service_connections_total",
                &[("service", &format!("s{i}"))],
            )
            .unwrap_or(0.0);
        assert!(n > 400.0, "s{i}'s count went on across the upgrade: {n}");
    }
}

/// A reload that edits one named service says what it changed in that
/// service, prefixed with its name, once each; the other service is not
/// mentioned.
#[test]
fn a_reload_lists_what_changed_in_each_named_service() {
    let (a, b, c, d) = (
        name_backend("a"),
        name_backend("b"),
        name_backend("c"),
        name_backend("d"),
    );
    let (pw, po) = (free_port(), free_port());
    let dir = temp_dir("services-notes");
    let other = format!(
        "[[service]]\nname = \"other\"\nlisten = \"127.0.0.1:{po}\"\nbackends = [\"{}\"]\n",
        d.addr
    );
    let path = config(
        &dir,
        &format!(
            "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:{pw}\"\nbackends = [\"{}\", \"{}\"]\n\n{other}",
            a.addr, b.addr
        ),
    );
    let proxy = ProxyCmd::new(&[]).config(&path).workers(1).start();
    config(
        &dir,
        &format!(
            "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:{pw}\"\npolicy = \"sticky\"\nconnect-timeout = \"2s\"\nbackends = [\"{},weight=2\", \"{}\"]\n\n{other}",
            a.addr, c.addr
        ),
    );
    let reply = proxy.ctl("config reload");
    assert!(reply.starts_with("configuration reloaded"), "{reply}");
    for line in [
        "service web: policy round-robin -> sticky".to_string(),
        format!("service web: backend {} weight 1 -> 2", a.addr),
        format!("service web: backend {} added", c.addr),
        format!(
            "service web: backend {} removed (its connections drain)",
            b.addr
        ),
        "service web: connect-timeout 5s -> 2s".to_string(),
    ] {
        assert_eq!(
            reply.matches(&line).count(),
            1,
            "{line:?} once in:\n{reply}"
        );
    }
    assert!(!reply.contains("service other"), "{reply}");
}
