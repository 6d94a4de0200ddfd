//! Balancing policies through the real proxy: round-robin, sticky,
//! least-conn, weights, and switching while traffic flows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use crate::support::*;

fn count(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}

/// Total handed to each worker slot so far.
fn slot_totals(proxy: &Proxy) -> Vec<u64> {
    proxy
        .ctl_json("workers")
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["total"].as_u64().unwrap())
        .collect()
}

/// Connect from `ip`, read the backend's name, and tell which worker slot
/// took the connection (from the slot totals before and after).
fn probe(proxy: &Proxy, ip: Ipv4Addr) -> (String, usize) {
    let before = slot_totals(proxy);
    let mut s = proxy.connect_from(ip);
    let name = read_name(&mut s);
    drop(s);
    let after = slot_totals(proxy);
    let slot = (0..before.len())
        .find(|&i| after[i] > before[i])
        .expect("some slot took the connection");
    (name, slot)
}

fn client_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + i)
}

#[test]
fn round_robin_gives_each_backend_a_third() {
    let backends = [name_backend("a"), name_backend("b"), name_backend("c")];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let proxy = ProxyCmd::new(&addrs)
        .workers(2)
        .args(["--policy", "round-robin"])
        .start();
    let names: Vec<String> = (0..300).map(|_| fetch_name(&proxy)).collect();
    let counts = count(&names);
    for (name, n) in &counts {
        assert!((*n as i64 - 100).abs() <= 1, "{name}: {n} ({counts:?})");
    }
    let m = proxy.scrape();
    for b in &backends {
        let n = m
            .get(
                "rrproxy_backend_connections_total",
                &[("service", "default"), ("backend", &b.addr.to_string())],
            )
            .unwrap();
        assert!((n - 100.0).abs() <= 1.0, "metrics for {}: {n}", b.addr);
    }
}

#[test]
fn sticky_keeps_each_client_ip_on_one_backend_and_worker() {
    let backends = [name_backend("a"), name_backend("b"), name_backend("c")];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let start = || {
        ProxyCmd::new(&addrs)
            .workers(2)
            .args(["--policy", "sticky", "--health-interval", "off"])
            .start()
    };
    let proxy = start();
    let mut placement: HashMap<Ipv4Addr, (String, usize)> = HashMap::new();
    for i in 0..30 {
        let ip = client_ip(i);
        let first = probe(&proxy, ip);
        for _ in 0..9 {
            assert_eq!(probe(&proxy, ip), first, "{ip} moved");
        }
        placement.insert(ip, first);
    }
    let used: HashSet<&String> = placement.values().map(|(n, _)| n).collect();
    assert_eq!(used.len(), 3, "30 clients spread over all backends");

    // A second, separate rrproxy with the same backends agrees on every IP.
    let other = start();
    for (ip, place) in &placement {
        assert_eq!(
            &probe(&other, *ip),
            place,
            "the two instances disagree on {ip}"
        );
    }

    // Remove one backend: only its clients move, and they are served.
    let removed = "b";
    proxy.ctl(&format!("backend remove {}", backends[1].addr));
    for (ip, (name, _)) in &placement {
        let (now, _) = probe(&proxy, *ip);
        if name == removed {
            assert_ne!(now, removed, "{ip} still sent to the removed backend");
        } else {
            assert_eq!(&now, name, "{ip} moved although its backend stayed");
        }
    }
}

#[test]
fn least_conn_sends_new_connections_to_the_least_loaded() {
    let a = name_backend("a");
    let b = name_backend("b");
    let proxy = ProxyCmd::new(&[a.addr, b.addr])
        .workers(2)
        .args(["--policy", "least-conn"])
        .start();
    // 20 long-lived connections, all on backend a (b out of rotation),
    // noting which worker slot took each.
    proxy.ctl(&format!("backend disable {}", b.addr));
    let mut held: Vec<(TcpStream, usize)> = Vec::new();
    for _ in 0..20 {
        let before = slot_totals(&proxy);
        let mut s = proxy.connect();
        assert_eq!(read_name(&mut s), "a");
        let after = slot_totals(&proxy);
        let slot = (0..2).find(|&i| after[i] > before[i]).unwrap();
        held.push((s, slot));
    }
    let on =
        |slot: usize, held: &[(TcpStream, usize)]| held.iter().filter(|(_, s)| *s == slot).count();
    assert_eq!(
        on(0, &held),
        10,
        "ties rotate: an idle start spreads evenly"
    );
    // Backend b comes back with nothing on it: the next connections go there.
    proxy.ctl(&format!("backend enable {}", b.addr));
    let mut fresh = Vec::new();
    for _ in 0..10 {
        let mut s = proxy.connect();
        assert_eq!(read_name(&mut s), "b", "least-loaded backend");
        fresh.push(s);
    }
    // Unload worker 0 by 6: the next 6 connections all go to it.
    let mut closed = 0;
    held.retain(|(_, slot)| {
        if *slot == 0 && closed < 6 {
            closed += 1;
            false
        } else {
            true
        }
    });
    wait_until(Duration::from_secs(5), "closes to be reported", || {
        proxy.ctl_json("workers")[0]["active"].as_u64() == Some(9)
    });
    let before = slot_totals(&proxy);
    for _ in 0..6 {
        let mut s = proxy.connect();
        read_name(&mut s);
        fresh.push(s);
    }
    let after = slot_totals(&proxy);
    assert_eq!(
        (after[0] - before[0], after[1] - before[1]),
        (6, 0),
        "least-loaded worker"
    );
}

#[test]
fn weights_one_to_three_split_one_to_three() {
    let light = name_backend("light");
    let heavy = name_backend("heavy");
    let proxy = ProxyCmd::new(&[])
        .args(["--backend", &light.addr.to_string()])
        .args(["--backend", &format!("{},weight=3", heavy.addr)])
        .workers(2)
        .start();
    let rr = count(&(0..400).map(|_| fetch_name(&proxy)).collect::<Vec<_>>());
    assert_eq!(rr["light"], 100, "round-robin: {rr:?}");
    assert_eq!(rr["heavy"], 300, "round-robin: {rr:?}");

    // Sticky honours weights too: 400 distinct clients.
    proxy.ctl("policy sticky");
    let mut names = Vec::new();
    for i in 0..400u32 {
        let ip = Ipv4Addr::new(127, 1, (i / 200) as u8, (i % 200 + 1) as u8);
        let mut s = proxy.connect_from(ip);
        names.push(read_name(&mut s));
    }
    let sticky = count(&names);
    let share = sticky["heavy"] as f64 / 400.0;
    assert!(
        (share - 0.75).abs() < 0.06,
        "sticky share {share}: {sticky:?}"
    );

    // Least-conn weighs what is open: with 40 connections held open at
    // once, the heavy backend (weight 3) holds three for each of the
    // light one's. (One at a time, every pick is a tie at zero, which
    // says nothing about weights.)
    proxy.ctl("policy least-conn");
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..40 {
        let mut s = proxy.connect();
        names.push(read_name(&mut s));
        held.push(s);
    }
    let lc = count(&names);
    assert!(
        (27..=33).contains(&lc["heavy"]),
        "least-conn with 40 open: {lc:?}"
    );
}

/// Distinct backends 9 sequential connections from `ip` reach.
fn spread_from(proxy: &Proxy, ip: Ipv4Addr) -> usize {
    (0..9)
        .map(|_| read_name(&mut proxy.connect_from(ip)))
        .collect::<HashSet<_>>()
        .len()
}

#[test]
fn switching_policy_under_load_fails_nothing_and_takes_effect_at_once() {
    let backends = [name_backend("a"), name_backend("b"), name_backend("c")];
    let dir = temp_dir("switch");
    let config = dir.join("rrproxy.toml");
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let write = |policy: &str| {
        std::fs::write(
            &config,
            format!("backends = [{}]\npolicy = \"{policy}\"\n", list.join(", ")),
        )
        .unwrap();
    };
    write("round-robin");
    let proxy = ProxyCmd::new(&[])
        .args(["--config", config.to_str().unwrap()])
        .workers(2)
        .start();
    let load = Load::start(&proxy, 4);
    wait_until(Duration::from_secs(10), "load to flow", || {
        load.counts().0 > 100
    });
    let me = Ipv4Addr::new(127, 0, 0, 77);
    assert!(spread_from(&proxy, me) >= 2, "round-robin spreads");

    for (how, policy) in [
        ("ctl", "sticky"),
        ("ctl", "least-conn"),
        ("ctl", "sticky"),
        ("hup", "round-robin"),
    ] {
        if how == "ctl" {
            let reply = proxy.ctl(&format!("policy {policy}"));
            assert!(reply.ends_with(policy), "{reply}");
        } else {
            write(policy);
            proxy.signal("HUP");
            wait_until(Duration::from_secs(5), "reload", || {
                proxy.ctl("policy") == policy
            });
        }
        // The very next connections follow the new policy.
        let spread = spread_from(&proxy, me);
        match policy {
            "sticky" => assert_eq!(spread, 1, "sticky right after the switch"),
            _ => assert!(spread >= 2, "{policy} spreads right after the switch"),
        }
        let m = proxy.scrape();
        assert_eq!(
            m.get("rrproxy_policy_info", &[("policy", policy)]),
            Some(1.0)
        );
    }
    let (ok, failed) = load.finish();
    eprintln!("policy switches under load: {ok} served, {failed} failed");
    assert_eq!(failed, 0);
    assert_eq!(
        proxy.scrape().get("rrproxy_policy_changes_total", &[]),
        Some(4.0)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A sticky client whose backend refuses connections is served by its own
/// next choice, the very backend it is sent to once that one is taken out
/// of rotation: it moves once, not twice; and the failing backend's
/// clients spread over the others, not onto its list neighbour.
#[test]
fn a_sticky_client_of_a_failing_backend_moves_once() {
    let good = [name_backend("a"), name_backend("b"), name_backend("c")];
    let dead = refused_addr();
    let mut addrs: Vec<_> = good.iter().map(|b| b.addr).collect();
    addrs.insert(1, dead);
    // No health checks and a high --fall: the dead one stays in rotation.
    let proxy = ProxyCmd::new(&addrs)
        .workers(2)
        .args([
            "--policy",
            "sticky",
            "--health-interval",
            "off",
            "--fall",
            "1000",
        ])
        .start();
    let mut while_failing = HashMap::new();
    for i in 0..40 {
        let ip = client_ip(i);
        while_failing.insert(ip, probe(&proxy, ip).0);
    }
    let redispatched = proxy
        .scrape()
        .get(
            "rrproxy_backend_redispatches_total",
            &[("service", "default"), ("backend", &dead.to_string())],
        )
        .unwrap();
    assert!(redispatched > 0.0, "some clients had the dead one first");
    proxy.ctl(&format!("backend disable {dead}"));
    let mut landed = HashSet::new();
    for (ip, before) in &while_failing {
        assert_eq!(&probe(&proxy, *ip).0, before, "{ip} moved a second time");
        landed.insert(before.clone());
    }
    assert_eq!(landed.len(), 3, "clients spread over every good backend");
}

/// Least-conn reads the live counts workers keep in the statistics table:
/// under churn (connections opening and closing one after another) it
/// still sends every new connection to the least loaded backend, so the
/// backend holding ten long connections gets none of thirty short ones.
#[test]
fn least_conn_follows_the_live_counts_under_churn() {
    let (a, b, proxy, mut held) = least_conn_with_a_holding(10);
    for i in 0..30 {
        let mut s = proxy.connect();
        assert_eq!(read_name(&mut s), "b", "short connection {i}");
        drop(s);
        // Wait for the close to be counted: the next pick must see it.
        wait_until(Duration::from_secs(5), "the close to be counted", || {
            backend_active(&proxy, &b.addr.to_string()) == 0
        });
    }
    // And the other way: with a's connections gone, a is the lighter one.
    held.clear();
    wait_until(Duration::from_secs(5), "a's connections to end", || {
        backend_active(&proxy, &a.addr.to_string()) == 0
    });
    let mut one = proxy.connect();
    let first = read_name(&mut one);
    let mut two = proxy.connect();
    assert_ne!(read_name(&mut two), first, "the other one is lighter now");
}

/// Backends `a` and `b` under least-conn, `a` holding `n` long
/// connections (opened while `b` was out of rotation), `b` none.
fn least_conn_with_a_holding(n: usize) -> (Backend, Backend, Proxy, Vec<TcpStream>) {
    let a = name_backend("a");
    let b = name_backend("b");
    let proxy = ProxyCmd::new(&[a.addr, b.addr])
        .workers(2)
        .args(["--policy", "least-conn"])
        .start();
    proxy.ctl(&format!("backend disable {}", b.addr));
    let held: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut s = proxy.connect();
            assert_eq!(read_name(&mut s), "a");
            s
        })
        .collect();
    proxy.ctl(&format!("backend enable {}", b.addr));
    (a, b, proxy, held)
}

fn backend_active(proxy: &Proxy, addr: &str) -> u64 {
    proxy
        .ctl_json("backends")
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == addr)
        .map(|r| r["active"].as_u64().unwrap())
        .unwrap()
}

/// Least-conn in a burst: connections that arrive together (accepted in
/// the same rounds, while workers take the earlier ones) are still spread
/// by what each backend holds. A connection a worker has taken is counted
/// on its backend until the next look at the workers' counts, not dropped
/// from it the moment the worker reads it (which sent a whole burst to
/// the backend that started lower).
#[test]
fn least_conn_spreads_a_burst_by_what_each_backend_holds() {
    let (a, _b, proxy, mut on_a) = least_conn_with_a_holding(20);
    wait_until(Duration::from_secs(10), "a to hold 20", || {
        backend_active(&proxy, &a.addr.to_string()) == 20
    });
    // A burst of 40, all opened before any is read: 30 to b, 10 to a
    // makes 30/30.
    let mut burst: Vec<TcpStream> = (0..40).map(|_| proxy.connect()).collect();
    let names: Vec<String> = burst.iter_mut().map(read_name).collect();
    let c = count(&names);
    let (na, nb) = (
        20 + c.get("a").copied().unwrap_or(0),
        c.get("b").copied().unwrap_or(0),
    );
    assert!(
        na.abs_diff(nb) <= 4,
        "after a burst of 40 onto 20/0, a holds {na} and b {nb}"
    );
    on_a.clear();
}
