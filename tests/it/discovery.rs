//! DNS service discovery (`--backend NAME:PORT,resolve`) through the real
//! system resolver: the proxy runs in a private mount namespace whose
//! `/etc/hosts` is a file this test rewrites (glibc reads it on every
//! look-up), so the name's addresses change under it like a headless
//! Service's do when pods come and go.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// The command that runs the proxy with `hosts` bind-mounted over
/// `/etc/hosts` in a mount namespace of its own (`unshare` then `exec`, so
/// the proxy keeps the pid the test started). Needs root: the tests are
/// ignored when `build.rs` found that this cannot work here; CI
/// (`RRPROXY_REQUIRE_TOOLS=1`) runs them as root.
fn private_hosts(hosts: &Path) -> Vec<String> {
    let root = rustix::process::geteuid().is_root();
    let probe = root
        && std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/hosts")
            .arg(hosts)
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        probe,
        "DNS discovery test needs root and unshare(1) to give the proxy its own /etc/hosts"
    );
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([hosts.display().to_string()])
    .collect()
}

/// Rewrite the hosts file in place (same inode: the bind mount follows)
/// with these addresses for `rr-app.test`.
fn write_hosts(path: &Path, ips: &[&str]) {
    let lines: Vec<(&str, &str)> = ips.iter().map(|ip| (*ip, "rr-app.test")).collect();
    write_hosts_lines(path, &lines);
}

fn write_hosts_lines(path: &Path, lines: &[(&str, &str)]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for (ip, name) in lines {
        text.push_str(&format!("{ip} {name}\n"));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Three name backends on 127.0.0.11, .12 and .13, all on one port (a
/// name gives addresses, the port comes with the name).
fn three_backends() -> (u16, [Backend; 3]) {
    for _ in 0..20 {
        let first = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 11), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let (Ok(second), Ok(third)) = (
            TcpListener::bind((Ipv4Addr::new(127, 0, 0, 12), port)),
            TcpListener::bind((Ipv4Addr::new(127, 0, 0, 13), port)),
        ) else {
            continue;
        };
        return (
            port,
            [
                name_backend_on(first, "a"),
                name_backend_on(second, "b"),
                name_backend_on(third, "c"),
            ],
        );
    }
    panic!("no port free on 127.0.0.11-13 after 20 tries");
}

/// The backends the proxy lists: address → state, for those from the name.
fn listed(proxy: &Proxy, port: u16) -> Vec<(String, String)> {
    let name = format!("rr-app.test:{port}");
    proxy
        .ctl_json("backends")
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["from"] == name.as_str())
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn names_seen(proxy: &Proxy, n: usize) -> BTreeSet<String> {
    (0..n).map(|_| fetch_name(proxy)).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// What both tests start from: a hosts file the proxy will see as
/// `/etc/hosts` (rr-app.test = .11 and .12), the command prefix that does
/// it, and the three backends on one port.
struct Fixture {
    dir: std::path::PathBuf,
    hosts: std::path::PathBuf,
    prefix: Vec<String>,
    port: u16,
    _backends: [Backend; 3],
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = temp_dir(tag);
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, "").unwrap();
        let prefix = private_hosts(&hosts);
        let (port, backends) = three_backends();
        write_hosts(&hosts, &["127.0.0.11", "127.0.0.12"]);
        Fixture {
            dir,
            hosts,
            prefix,
            port,
            _backends: backends,
        }
    }

    /// `127.0.0.LAST:port`, as the proxy names a discovered backend.
    fn addr(&self, last: u8) -> String {
        SocketAddr::from(([127, 0, 0, last], self.port)).to_string()
    }
}

fn up(addr: &str) -> (String, String) {
    (addr.to_string(), "up".to_string())
}

#[test]
#[cfg_attr(
    not(has_private_mounts),
    ignore = "needs root and unshare(1), to give the proxy its own /etc/hosts"
)]
fn a_resolve_name_follows_its_addresses() {
    let fx = Fixture::new("dns");
    let (hosts, port) = (&fx.hosts, fx.port);
    let addr = |last| fx.addr(last);
    let name = format!("rr-app.test:{port}");
    let proxy = ProxyCmd::new(&[])
        .args(["--backend", &format!("{name},resolve")])
        .args(["--resolve-interval", "100ms", "--policy", "round-robin"])
        .workers(2)
        .under(fx.prefix.clone())
        .start();

    // At start: every address of the name is a backend, named by address.
    assert_eq!(listed(&proxy, port), vec![up(&addr(11)), up(&addr(12))]);
    assert_eq!(names_seen(&proxy, 6), set(&["a", "b"]));

    // .11 goes, .13 comes: discovered and drained without a restart.
    write_hosts(hosts, &["127.0.0.12", "127.0.0.13"]);
    wait_until(Duration::from_secs(10), "the new address set", || {
        listed(&proxy, port) == vec![up(&addr(12)), up(&addr(13))]
    });
    assert_eq!(names_seen(&proxy, 6), set(&["b", "c"]));
    let log = proxy.stderr();
    assert!(log.contains("backend discovered"), "{log}");
    assert!(
        log.contains("backend gone from the name; draining"),
        "{log}"
    );

    // A connection in flight on an address that goes away is not cut: the
    // backend drains, and leaves once the connection ends.
    let mut held = None;
    for _ in 0..10 {
        let mut s = proxy.connect();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if read_name(&mut s) == "c" {
            held = Some(s);
            break;
        }
    }
    let mut held = held.expect("round-robin reaches c within 10 connections");
    write_hosts(hosts, &["127.0.0.12"]);
    wait_until(Duration::from_secs(10), ".13 draining", || {
        listed(&proxy, port).contains(&(addr(13), "draining".to_string()))
    });
    assert_eq!(names_seen(&proxy, 4), set(&["b"]));
    held.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let still_open = matches!(held.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut);
    assert!(still_open, "the draining backend's connection stays open");
    drop(held);
    wait_until(Duration::from_secs(10), ".13 removed once idle", || {
        listed(&proxy, port) == vec![up(&addr(12))]
    });

    // The name stops resolving: nothing changes, the failure is counted
    // and logged once.
    write_hosts(hosts, &[]);
    let key = format!("rrproxy_resolve_failures_total{{name=\"{name}\"}}");
    wait_until(Duration::from_secs(10), "failed look-ups counted", || {
        proxy.scrape().series.get(&key).copied().unwrap_or(0.0) >= 3.0
    });
    assert_eq!(listed(&proxy, port), vec![up(&addr(12))]);
    assert_eq!(names_seen(&proxy, 3), set(&["b"]));
    let log = proxy.stderr();
    assert_eq!(
        log.matches("backend name does not resolve").count(),
        1,
        "{log}"
    );

    // And back.
    write_hosts(hosts, &["127.0.0.11", "127.0.0.12"]);
    wait_until(Duration::from_secs(10), "the name resolves again", || {
        listed(&proxy, port) == vec![up(&addr(12)), up(&addr(11))]
    });
    proxy.wait_log("backend name resolves again");
    assert_eq!(names_seen(&proxy, 6), set(&["a", "b"]));
}

#[test]
#[cfg_attr(
    not(has_private_mounts),
    ignore = "needs root and unshare(1), to give the proxy its own /etc/hosts"
)]
fn a_reload_takes_up_and_drops_resolve_names() {
    let fx = Fixture::new("dns-reload");
    let (hosts, port) = (&fx.hosts, fx.port);
    let addr = |last| fx.addr(last);
    let config = fx.dir.join("rrproxy.toml");
    let write_config = |body: &str| std::fs::write(&config, body).unwrap();
    // Start with one address given by itself, no discovery.
    write_config(&format!(
        "backends = [\"{}\"]\nresolve-interval = \"100ms\"\n",
        addr(13)
    ));
    let proxy = ProxyCmd::new(&[])
        .args(["--config", config.to_str().unwrap()])
        .workers(1)
        .under(fx.prefix.clone())
        .start();
    assert_eq!(names_seen(&proxy, 3), set(&["c"]));

    // A reload adds a resolve name: its addresses join, and are followed.
    write_config(&format!(
        "backends = [\"{}\", {{ address = \"rr-app.test:{port}\", resolve = true }}]\nresolve-interval = \"100ms\"\n",
        addr(13)
    ));
    proxy.signal("HUP");
    wait_until(Duration::from_secs(10), "the name's addresses", || {
        listed(&proxy, port) == vec![up(&addr(11)), up(&addr(12))]
    });
    assert_eq!(names_seen(&proxy, 6), set(&["a", "b", "c"]));
    write_hosts(hosts, &["127.0.0.11"]);
    wait_until(Duration::from_secs(10), ".12 gone", || {
        listed(&proxy, port) == vec![up(&addr(11))]
    });
    // An address the name shares with a backend listed by itself (.13)
    // stays that backend; .12, in the same answer, shows it was applied.
    write_hosts(hosts, &["127.0.0.11", "127.0.0.13", "127.0.0.12"]);
    wait_until(Duration::from_secs(10), ".12 back", || {
        listed(&proxy, port) == vec![up(&addr(11)), up(&addr(12))]
    });
    let all = proxy.ctl_json("backends");
    let thirteen: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["resolved"] == addr(13).as_str())
        .collect();
    assert_eq!(thirteen.len(), 1, "{all}");
    assert!(thirteen[0].get("from").is_none(), "{all}");

    // A reload without it drains what it found, and stops following it.
    // (Another name, rr-other.test, stays, and stops resolving: its
    // failure count shows the look-ups going on.)
    write_hosts_lines(
        hosts,
        &[
            ("127.0.0.11", "rr-app.test"),
            ("127.0.0.13", "rr-other.test"),
        ],
    );
    write_config(&format!(
        "backends = [\"{}\", \"rr-other.test:{port},resolve\"]\nresolve-interval = \"100ms\"\n",
        addr(13)
    ));
    proxy.signal("HUP");
    wait_until(Duration::from_secs(10), "the name's backends gone", || {
        listed(&proxy, port).is_empty()
    });
    write_hosts(hosts, &["127.0.0.11", "127.0.0.12"]);
    let key = format!("rrproxy_resolve_failures_total{{name=\"rr-other.test:{port}\"}}");
    wait_until(Duration::from_secs(10), "three more look-ups", || {
        proxy.scrape().series.get(&key).copied().unwrap_or(0.0) >= 3.0
    });
    assert!(
        listed(&proxy, port).is_empty(),
        "a dropped name is not followed"
    );
    assert_eq!(names_seen(&proxy, 3), set(&["c"]));
}
