//! `ctl explain ADDR`: what it says a client gets is what the client
//! gets. For each policy, 100 client addresses each ask, then connect;
//! the backend that answers and the worker slot the access log names must
//! be the ones explained. Plus an address the access list denies, and one
//! at its per-IP limit.

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

/// A running proxy for these tests, with what they need to check it.
struct Rig {
    proxy: Proxy,
    _backends: Vec<Backend>,
    /// Backend name (what it answers) -> its address (as configured).
    names: HashMap<String, String>,
    access_log: PathBuf,
}

/// One connection: what `explain` said, and what happened.
struct Conn {
    client: String,
    explained: (u64, String),
    backend: String,
}

fn client(i: usize) -> Ipv4Addr {
    // 100 addresses across two /24s: 127.0.1.2.. and 127.0.2.2..
    Ipv4Addr::new(127, 0, 1 + (i / 50) as u8, 2 + (i % 50) as u8)
}

/// A proxy with three named backends of weights 1, 2 and 3 under
/// `policy`, two workers, and an access log (JSON) that says which slot
/// served each connection.
fn start(policy: &str, extra: &[&str]) -> Rig {
    let backends = vec![name_backend("a"), name_backend("b"), name_backend("c")];
    let names = backends
        .iter()
        .zip(["a", "b", "c"])
        .map(|(b, n)| (n.to_string(), b.addr.to_string()))
        .collect();
    let access_log = temp_dir("explain").join("access.log");
    let mut cmd = ProxyCmd::new(&[])
        .workers(2)
        .args(["--policy", policy, "--log-format", "json", "--access-log"])
        .arg(access_log.display().to_string());
    for (b, w) in backends.iter().zip([1, 2, 3]) {
        cmd = cmd.args(["--backend".to_string(), format!("{},weight={w}", b.addr)]);
    }
    Rig {
        proxy: cmd.args(extra.iter().copied()).start(),
        _backends: backends,
        names,
        access_log,
    }
}

/// Ask, then connect, from each of 100 addresses in turn; `hold` keeps
/// every connection open until the end (least-conn's counts then differ
/// from one connection to the next).
fn ask_and_connect(rig: &Rig, hold: bool) -> Vec<Conn> {
    let mut held = Vec::new();
    let mut out = Vec::new();
    for i in 0..100 {
        let ip = client(i);
        let e = rig.proxy.ctl_json(&format!("explain {ip}"));
        assert_eq!(e["outcome"], "served", "{e}");
        let explained = (
            e["worker"].as_u64().unwrap(),
            e["backend"].as_str().unwrap().to_string(),
        );
        let mut s = rig.proxy.connect_from(ip);
        let name = read_name(&mut s);
        out.push(Conn {
            client: s.local_addr().unwrap().to_string(),
            explained,
            backend: rig.names[&name].clone(),
        });
        if hold {
            held.push(s);
        }
    }
    out
}

/// Each client's worker slot, from the access log (a line per finished
/// connection, written by the worker that served it).
fn slots(rig: &Rig, conns: &[Conn]) -> HashMap<String, u64> {
    wait_for(
        Duration::from_secs(30),
        "an access log line per connection",
        || {
            let text = std::fs::read_to_string(&rig.access_log).ok()?;
            let lines: HashMap<String, u64> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| Some((v["client"].as_str()?.to_string(), v["worker"].as_u64()?)))
                .collect();
            conns
                .iter()
                .all(|c| lines.contains_key(&c.client))
                .then_some(lines)
        },
    )
}

fn every_client_gets_what_explain_says(policy: &str, hold: bool) {
    let rig = start(policy, &[]);
    let conns = ask_and_connect(&rig, hold);
    let slots = slots(&rig, &conns);
    let mut used = std::collections::BTreeSet::new();
    for c in &conns {
        let got = (slots[&c.client], c.backend.clone());
        assert_eq!(
            got, c.explained,
            "{policy}: client {} got slot {} and backend {}, explained {:?}",
            c.client, got.0, got.1, c.explained
        );
        used.insert(got);
    }
    // Not a degenerate run: both slots and all three backends served.
    assert_eq!(
        used.iter()
            .map(|u| u.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2
    );
    assert_eq!(
        used.iter()
            .map(|u| &u.1)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
}

#[test]
fn explain_agrees_with_round_robin() {
    every_client_gets_what_explain_says("round-robin", false);
}

#[test]
fn explain_agrees_with_least_conn_while_connections_stay_open() {
    every_client_gets_what_explain_says("least-conn", true);
}

#[test]
fn explain_agrees_with_sticky() {
    every_client_gets_what_explain_says("sticky", false);
}

/// Whether the proxy reset the connection (read gives an error or EOF
/// without a byte).
fn refused(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Err(_) | Ok(0))
}

#[test]
fn explain_names_the_deny_entry_and_the_per_ip_limit() {
    let rig = start(
        "sticky",
        &["--deny", "127.0.3.0/24", "--max-conns-per-ip", "2"],
    );
    let p = &rig.proxy;
    // Denied: the entry that matches, and a reset for a real connection.
    let e = p.ctl_json("explain 127.0.3.9");
    assert_eq!(e["outcome"], "denied", "{e}");
    assert_eq!(e["access"]["admitted"], false);
    assert_eq!(e["access"]["matches"][0], "deny 127.0.3.0/24");
    let text = p.ctl("explain 127.0.3.9");
    assert!(
        text.contains("refused with a reset: the access list denies it")
            && text.contains("deny 127.0.3.0/24"),
        "{text}"
    );
    let denied = |p: &Proxy| p.ctl_json("status")["total_connections"].as_u64();
    let before = denied(p);
    let r = p.try_connect_from(Ipv4Addr::new(127, 0, 3, 9));
    assert!(r.map(refused).unwrap_or(true), "a denied client was served");
    wait_until(Duration::from_secs(10), "the denial counted", || {
        p.scrape().get("rrproxy_denied_connections_total", &[]) == Some(1.0)
    });
    assert_eq!(denied(p), before, "a denied client reached a worker");
    // Per-IP: two open of two, then the third is refused, as explained.
    let ip = Ipv4Addr::new(127, 0, 4, 2);
    let e = p.ctl_json(&format!("explain {ip}"));
    assert_eq!(
        (&e["outcome"], &e["per_ip"]["open"], &e["per_ip"]["limit"]),
        (&"served".into(), &0.into(), &2.into()),
        "{e}"
    );
    let explained = e["backend"].as_str().unwrap().to_string();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = p.connect_from(ip);
        assert_eq!(rig.names[&read_name(&mut s)], explained);
        held.push(s);
    }
    let e = p.ctl_json(&format!("explain {ip}"));
    assert_eq!(e["outcome"], "refused", "{e}");
    assert_eq!(
        (&e["per_ip"]["open"], &e["per_ip"]["admitted"]),
        (&2.into(), &false.into())
    );
    assert!(
        p.ctl(&format!("explain {ip}"))
            .contains("2 of 2 connections open as client 127.0.4.2 (full: refused)")
    );
    let r = p.try_connect_from(ip);
    assert!(
        r.map(refused).unwrap_or(true),
        "a client over its limit was served"
    );
    wait_until(Duration::from_secs(10), "the refusal counted", || {
        p.scrape().get("rrproxy_refused_connections_total", &[]) == Some(1.0)
    });
    drop(held);
    // Bad input: one line naming it.
    let err = p.ctl("explain web01");
    assert!(
        err.starts_with("error: invalid client address 'web01'"),
        "{err}"
    );
    let err = p.ctl("explain 127.0.0.1 --service web");
    assert_eq!(err, "error: no service named 'web' (services: default)");
}
