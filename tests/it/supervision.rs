//! Supervision and availability: respawn, recovery of queued connections,
//! crash loops, rolling restarts, health checks, limits, idle timeout.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn killed_worker_is_replaced_in_its_slot_and_new_connections_succeed() {
    let b = name_backend("r");
    let proxy = ProxyCmd::new(&[b.addr]).workers(2).start();
    let before = proxy.worker_pids();
    let victim = before[1].unwrap();
    kill(victim, "KILL");
    // Right after the kill: every connection succeeds.
    for _ in 0..20 {
        assert_eq!(fetch_name(&proxy), "r");
    }
    let started = Instant::now();
    let after = wait_for(Duration::from_secs(3), "slot 1 to get a new worker", || {
        let pids = proxy.worker_pids();
        (pids[1].is_some() && pids[1] != Some(victim)).then_some(pids)
    });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "respawn took {:?}",
        started.elapsed()
    );
    assert_eq!(after[0], before[0], "the other slot is untouched");
    let m = proxy.scrape();
    assert_eq!(
        m.get("rrproxy_worker_restarts_total", &[("worker", "1")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("rrproxy_worker_restarts_total", &[("worker", "0")]),
        Some(0.0)
    );
}

#[test]
fn connections_queued_for_a_dead_worker_are_served_by_another() {
    let b = name_backend("q");
    let proxy = ProxyCmd::new(&[b.addr]).workers(2).start();
    let stalled = proxy.worker_pids()[0].unwrap();
    // The worker stops picking anything up...
    kill(stalled, "STOP");
    // ...while round-robin keeps handing it every other connection.
    let clients: Vec<TcpStream> = (0..10).map(|_| proxy.connect()).collect();
    wait_until(Duration::from_secs(5), "handoffs to both slots", || {
        let m = proxy.scrape();
        m.get("rrproxy_worker_connections_total", &[("worker", "0")]) == Some(5.0)
    });
    kill(stalled, "KILL");
    for mut c in clients {
        assert_eq!(read_name(&mut c), "q", "every client is served");
    }
    let m = proxy.scrape();
    assert!(
        m.get("rrproxy_redispatched_connections_total", &[])
            .unwrap()
            >= 5.0
    );
}

#[test]
fn killing_workers_under_load_loses_at_most_their_connections() {
    let b = name_backend("load");
    let proxy = ProxyCmd::new(&[b.addr]).workers(2).start();
    let load = Load::start(&proxy, 6);
    wait_until(Duration::from_secs(10), "load to flow", || {
        load.counts().0 > 200
    });
    let mut in_flight = 0;
    for round in 0..3 {
        let t = Instant::now();
        let rows = proxy.ctl_json("workers");
        let slot = round % 2;
        let row = &rows[slot];
        in_flight += row["active"].as_u64().unwrap();
        kill(row["pid"].as_u64().unwrap() as u32, "KILL");
        wait_until(Duration::from_secs(3), "respawn", || {
            proxy.ctl_json("workers")[slot]["pid"] != row["pid"]
                && proxy.ctl_json("workers")[slot]["state"] == "up"
        });
        wait_until(Duration::from_secs(3), "a second to pass", || {
            t.elapsed() >= Duration::from_secs(1)
        });
    }
    let (ok, failed) = load.finish();
    eprintln!(
        "kill under load: {ok} served, {failed} failed, {in_flight} in flight on the killed workers"
    );
    assert!(ok > 500, "load too light: {ok}");
    // Each failure is a connection a killed worker was proxying; allow for
    // the ones handed to it between the snapshot and the kill.
    assert!(
        failed <= in_flight + 6 * 3,
        "{failed} failed, {in_flight} were in flight"
    );
}

/// Kill whatever process serves `slot` until it has been killed `n`
/// times (each kill of a new pid counts once).
fn kill_slot_repeatedly(proxy: &Proxy, slot: usize, n: usize) {
    let mut killed = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "the slot to crash often enough",
        || {
            // With every slot parked the front exits: nothing left to ask.
            let Ok(reply) = proxy.try_ctl("workers --json") else {
                return killed.len() >= n;
            };
            let w: serde_json::Value = serde_json::from_str(&reply).unwrap();
            if w[slot]["state"] == "parked" {
                return true;
            }
            if let Some(pid) = w[slot]["pid"].as_u64().map(|p| p as u32) {
                if !killed.contains(&pid) {
                    kill(pid, "KILL");
                    killed.push(pid);
                }
            }
            killed.len() >= n && w[slot]["state"] == "parked"
        },
    );
}

#[test]
fn a_crash_looping_slot_is_parked_and_the_others_keep_serving() {
    let b = name_backend("c");
    let mut proxy = ProxyCmd::new(&[b.addr]).workers(2).start();
    kill_slot_repeatedly(&proxy, 1, 5);
    proxy.wait_log("crash-looping");
    let m = proxy.scrape();
    assert_eq!(m.get("rrproxy_worker_up", &[("worker", "1")]), Some(0.0));
    assert_eq!(m.get("rrproxy_worker_up", &[("worker", "0")]), Some(1.0));
    for _ in 0..10 {
        assert_eq!(fetch_name(&proxy), "c", "slot 0 keeps serving");
    }
    // When no worker can run at all, the front gives up (exit non-zero) so
    // a service manager can restart it.
    kill_slot_repeatedly(&proxy, 0, 5);
    let st = proxy.wait_exit(Duration::from_secs(30));
    assert!(!st.success(), "front must exit non-zero, got {st}");
}

fn rolling_restart_under_load(trigger: impl FnOnce(&Proxy)) {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr]).workers(2).start();
    let before: Vec<u32> = proxy.worker_pids().into_iter().flatten().collect();
    // A long transfer that starts before the restart.
    let mut long = proxy.connect();
    let data = random_bytes(11, 4 << 20);
    let mut w = long.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        for chunk in sent.chunks(32 * 1024) {
            w.write_all(chunk).unwrap();
            thread::sleep(Duration::from_millis(3));
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        long.read_to_end(&mut got).unwrap();
        got
    });
    let load = Load::start_echo(&proxy, 4);
    wait_until(Duration::from_secs(10), "load to flow", || {
        load.counts().0 > 100
    });
    trigger(&proxy);
    wait_until(
        Duration::from_secs(30),
        "every worker pid to change",
        || {
            let now: Vec<u32> = proxy.worker_pids().into_iter().flatten().collect();
            now.len() == 2
                && now.iter().all(|p| !before.contains(p))
                && proxy.ctl_json("status")["rolling_restart"] == false
        },
    );
    let (ok, failed) = load.finish();
    writer.join().unwrap();
    let got = reader.join().unwrap();
    eprintln!("rolling restart under load: {ok} served, {failed} failed");
    assert_eq!(
        failed, 0,
        "no connection may fail during a rolling restart ({ok} ok)"
    );
    assert!(
        got == data,
        "the long transfer completed intact ({} bytes)",
        got.len()
    );
    let m = proxy.scrape();
    assert_eq!(
        m.get("rrproxy_worker_restarts_total", &[("worker", "0")]),
        Some(1.0)
    );
}

#[test]
fn an_upgrade_by_sigusr2_fails_nothing() {
    rolling_restart_under_load(|p| p.signal("USR2"));
}

#[test]
fn ctl_reload_is_the_old_name_of_upgrade_and_says_so() {
    rolling_restart_under_load(|p| {
        let reply = p.ctl("reload");
        assert!(reply.contains("front upgraded"), "{reply}");
        assert!(reply.contains("now called `upgrade`"), "{reply}");
    });
}

#[test]
fn health_checks_take_a_dead_backend_out_and_bring_it_back() {
    let stays = name_backend("stays");
    let flappy_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let flappy_addr = flappy_listener.local_addr().unwrap();
    let flappy = spawn_backend_on(flappy_listener, |mut c| {
        let _ = c.write_all(b"flappy\n");
    });
    let proxy = ProxyCmd::new(&[stays.addr, flappy_addr])
        .workers(1)
        .args([
            "--health-interval",
            "100ms",
            "--health-timeout",
            "200ms",
            "--rise",
            "2",
            "--fall",
            "3",
        ])
        .start();
    let label = flappy_addr.to_string();
    assert_eq!(
        proxy.scrape().get(
            "rrproxy_backend_up",
            &[("service", "default"), ("backend", &label)]
        ),
        Some(1.0)
    );
    drop(flappy); // stops listening
    // fall × interval = 300 ms, plus a check timeout and scheduling slack
    // (a loaded 2-core machine: the bound is generous, not a speed target).
    wait_until(Duration::from_secs(5), "backend marked down", || {
        proxy.scrape().get(
            "rrproxy_backend_up",
            &[("service", "default"), ("backend", &label)],
        ) == Some(0.0)
    });
    let refused_before = proxy.scrape().get(
        "rrproxy_backend_connect_failures_total",
        &[
            ("service", "default"),
            ("backend", &label),
            ("reason", "refused"),
        ],
    );
    for _ in 0..20 {
        assert_eq!(fetch_name(&proxy), "stays");
    }
    let refused_after = proxy.scrape().get(
        "rrproxy_backend_connect_failures_total",
        &[
            ("service", "default"),
            ("backend", &label),
            ("reason", "refused"),
        ],
    );
    assert_eq!(
        refused_before, refused_after,
        "a down backend gets no connections"
    );
    proxy.wait_log("backend down");
    // It comes back after `rise` good checks.
    let back = std::net::TcpListener::bind(flappy_addr).unwrap();
    let _flappy = spawn_backend_on(back, |mut c| {
        let _ = c.write_all(b"flappy\n");
    });
    wait_until(Duration::from_secs(3), "backend back up", || {
        proxy.scrape().get(
            "rrproxy_backend_up",
            &[("service", "default"), ("backend", &label)],
        ) == Some(1.0)
    });
    let names: Vec<String> = (0..10).map(|_| fetch_name(&proxy)).collect();
    assert!(names.iter().any(|n| n == "flappy"), "{names:?}");
}

#[test]
fn at_max_conns_new_clients_wait_and_proceed_when_a_slot_frees() {
    let b = name_backend("lim");
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(2)
        .args(["--max-conns", "3"])
        .start();
    // (Three clients from three addresses; see also
    // `max_conns_alone_refuses_nobody` for one address.)
    let mut held: Vec<TcpStream> = (2..5)
        .map(|i| proxy.connect_from(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    for s in &mut held {
        assert_eq!(read_name(s), "lim");
    }
    // The fourth connects (kernel backlog) but is not served yet...
    let mut waiting = proxy.connect_from(Ipv4Addr::new(127, 0, 0, 5));
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 8];
    let r = waiting.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "4th client must wait, got {r:?}"
    );
    assert_eq!(proxy.scrape().get("rrproxy_accept_paused", &[]), Some(1.0));
    // ...and proceeds as soon as one of the others leaves.
    held.pop();
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(read_name(&mut waiting), "lim");
}

#[test]
fn max_conns_per_ip_refuses_only_that_client() {
    let b = name_backend("ip");
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(2)
        .args(["--max-conns-per-ip", "2"])
        .start();
    let noisy = Ipv4Addr::new(127, 0, 0, 2);
    let mut held: Vec<TcpStream> = (0..2).map(|_| proxy.connect_from(noisy)).collect();
    for s in &mut held {
        assert_eq!(read_name(s), "ip");
    }
    let mut buf = [0u8; 8];
    if let Ok(mut third) = proxy.try_connect_from(noisy) {
        let r = third.read(&mut buf);
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "third from the same IP is refused: {r:?}"
        );
    }
    let mut other = proxy.connect_from(Ipv4Addr::new(127, 0, 0, 3));
    assert_eq!(read_name(&mut other), "ip", "another client is unaffected");
    assert_eq!(
        proxy.scrape().get("rrproxy_refused_connections_total", &[]),
        Some(1.0)
    );
    // Said in the log, like an access list denial (a line a second at
    // most: ten more refusals at once add at most one line).
    proxy.wait_log("client refused: at --max-conns-per-ip");
    for _ in 0..10 {
        if let Ok(mut more) = proxy.try_connect_from(noisy) {
            let _ = more.read(&mut buf);
        }
    }
    wait_until(Duration::from_secs(5), "ten more refusals counted", || {
        proxy.scrape().get("rrproxy_refused_connections_total", &[]) == Some(11.0)
    });
    let log = proxy.stderr();
    let lines = log.matches("client refused: at --max-conns-per-ip").count();
    assert!((1..=3).contains(&lines), "{log}");
    assert!(
        log.contains("client.addr=127.0.0.2") && log.contains("limit=2"),
        "{log}"
    );
    // Once one closes, the noisy client may connect again.
    drop(held.pop());
    wait_until(Duration::from_secs(5), "the slot to free", || {
        let Ok(mut s) = proxy.try_connect_from(noisy) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        matches!(s.read(&mut buf), Ok(n) if n > 0)
    });
}

#[test]
fn idle_timeout_closes_silent_connections_but_never_active_ones() {
    let b = echo_backend();
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(1)
        .args(["--idle-timeout", "400ms"])
        .start();
    let mut silent = proxy.connect();
    let mut active = proxy.connect();
    let t = Instant::now();
    let mut buf = [0u8; 8];
    // The active one pings every 100 ms for 1.5 s and always gets its echo.
    while t.elapsed() < Duration::from_millis(1500) {
        active.write_all(b"x").unwrap();
        active.read_exact(&mut buf[..1]).unwrap();
        thread::sleep(Duration::from_millis(100));
    }
    let r = silent.read(&mut buf);
    assert!(
        matches!(r, Ok(0)),
        "the silent connection was closed: {r:?}"
    );
}

#[test]
fn a_stalled_worker_never_stalls_the_front_and_catches_up_when_it_resumes() {
    let a = name_backend("a");
    let b = name_backend("b");
    let proxy = ProxyCmd::new(&[a.addr]).workers(2).start();
    let stalled = proxy.worker_pids()[0].unwrap();
    kill(stalled, "STOP");
    // Round-robin keeps handing the stalled worker every other connection
    // until 512 wait unread in its channel (or the oldest has waited 500
    // ms); from then on the other worker takes all.
    let totals = |p: &Proxy| {
        let w = p.ctl_json("workers");
        (
            w[0]["total"].as_u64().unwrap(),
            w[1]["total"].as_u64().unwrap(),
        )
    };
    let mut clients: Vec<TcpStream> = (0..1300).map(|_| proxy.connect()).collect();
    wait_until(
        Duration::from_secs(20),
        "the front to hand out all 1300",
        || totals(&proxy).0 + totals(&proxy).1 == 1300,
    );
    // Skipped after 512 unread handoffs, or sooner: after their oldest
    // waited 500 ms unread.
    let (stalled_total, other) = totals(&proxy);
    assert!(
        stalled_total <= 512 && other >= 788,
        "the stalled worker is skipped: {stalled_total} / {other}"
    );
    // The front is not stalled: new clients are served at once.
    for _ in 0..20 {
        let mut s = proxy.connect();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_name(&mut s), "a");
    }
    // A config change while the channel is full is queued for it...
    proxy.ctl(&format!("backend add {}", b.addr));
    proxy.ctl(&format!("backend disable {}", a.addr));
    kill(stalled, "CONT");
    // ...and when it resumes, it serves its backlog and gets the change.
    for c in &mut clients {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let name = read_name(c);
        assert!(name == "a" || name == "b", "{name:?}");
    }
    drop(clients);
    expect_slot0_takes_connections_again(&proxy, "b");
}

#[test]
fn config_changes_that_fill_a_stalled_workers_channel_are_delivered_when_it_resumes() {
    let a = name_backend("a");
    let b = name_backend("b");
    let proxy = ProxyCmd::new(&[a.addr])
        .workers(2)
        .args(["--health-interval", "off"])
        .start();
    let stalled = proxy.worker_pids()[0].unwrap();
    kill(stalled, "STOP");
    // Every change sends the whole backend table to every worker: with a
    // few hundred backends the stalled worker's channel fills up and the
    // front queues the rest for it.
    // 300 distinct ports nobody listens on (held together while chosen).
    let held: Vec<std::net::TcpListener> = (0..300).map(|_| listen_any()).collect();
    let dead: Vec<String> = held
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    drop(held);
    for d in &dead {
        assert!(proxy.ctl(&format!("backend add {d}")).contains("added"));
    }
    for d in &dead {
        proxy.ctl(&format!("backend disable {d}"));
    }
    proxy.ctl(&format!("backend add {}", b.addr));
    proxy.ctl(&format!("backend disable {}", a.addr));
    // The other worker kept serving throughout, with the latest table.
    assert_eq!(fetch_name(&proxy), "b");
    kill(stalled, "CONT");
    // Once it drains, the resumed worker gets every queued change and
    // takes connections again.
    expect_slot0_takes_connections_again(&proxy, "b");
}

/// Wait until worker slot 0 (resumed after a stop) takes new connections
/// again, while every connection meanwhile reaches backend `name`: every
/// worker has the latest backend table.
fn expect_slot0_takes_connections_again(proxy: &Proxy, name: &str) {
    let before = proxy.ctl_json("workers")[0]["total"].as_u64().unwrap();
    wait_until(
        Duration::from_secs(10),
        "the resumed worker to take new connections",
        || {
            assert_eq!(
                fetch_name(proxy),
                name,
                "every worker has the latest backend table"
            );
            proxy.ctl_json("workers")[0]["total"].as_u64().unwrap() > before
        },
    );
}

/// With --max-conns and no per-IP limit, no per-IP limit applies (none is
/// derived behind the user's back): three clients from one address under
/// `--max-conns 2` are two served and one waiting, never refused, and the
/// third is served when one ends. (It was once reset by a hidden per-IP
/// limit of half of --max-conns, and nothing said so.)
#[test]
fn max_conns_alone_refuses_nobody() {
    let b = name_backend("fair");
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(2)
        .args(["--max-conns", "2"])
        .start();
    let one = Ipv4Addr::new(127, 0, 0, 4);
    let mut held: Vec<TcpStream> = (0..2).map(|_| proxy.connect_from(one)).collect();
    for s in &mut held {
        assert_eq!(read_name(s), "fair");
    }
    let mut third = proxy.connect_from(one);
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 8];
    let r = third.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "the third waits (neither served nor refused): {r:?}"
    );
    drop(held.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(read_name(&mut third), "fair");
    assert_eq!(
        proxy.scrape().get("rrproxy_refused_connections_total", &[]),
        Some(0.0)
    );
    assert!(
        !proxy.stderr().contains("client refused"),
        "{}",
        proxy.stderr()
    );
}

/// The scheduling policy of a process (field 41 of /proc/PID/stat):
/// 0 normal, 3 batch.
fn sched_policy(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(38).unwrap().parse().unwrap()
}

#[test]
fn the_front_runs_sched_batch_and_its_workers_the_normal_policy() {
    let b = name_backend("s");
    let proxy = ProxyCmd::new(&[b.addr]).workers(2).start();
    assert_eq!(fetch_name(&proxy), "s");
    assert_eq!(sched_policy(proxy.pid()), 3, "the front is SCHED_BATCH");
    for pid in proxy.worker_pids().into_iter().flatten() {
        assert_eq!(sched_policy(pid), 0, "worker {pid} has the normal policy");
    }
    // A respawned worker too (SCHED_RESET_ON_FORK, not inheritance).
    let victim = proxy.worker_pids()[0].unwrap();
    kill(victim, "KILL");
    let fresh = wait_for(Duration::from_secs(5), "slot 0 to get a new worker", || {
        proxy.worker_pids()[0].filter(|&p| p != victim)
    });
    // (It sets its policy as it starts, right after the front spawned it.)
    wait_until(
        Duration::from_secs(5),
        "the respawned worker to have the normal policy",
        || sched_policy(fresh) == 0,
    );
}
