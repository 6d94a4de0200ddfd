//! Access lists (`--allow`, `--deny`, `ctl acl`, SIGHUP): a refused client
//! never reaches a backend (its accept count proves it), lists change
//! under load without failing anyone else, a reload says which `ctl`
//! edits it undid and an invalid one changes nothing, an upgrade keeps the
//! running lists and the connections still waiting for a PROXY header;
//! bad values are one line naming the flag or key.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rrproxy::proxy_protocol::{Header, Version};

use crate::support::*;

/// Is a client from `src` served (reads the name backend's line) or
/// refused (closed without a byte)?
fn served_from(proxy: &Proxy, src: Ipv4Addr) -> bool {
    let Ok(mut s) = proxy.try_connect_from(src) else {
        return false;
    };
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n > 0)
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn denied(proxy: &Proxy) -> f64 {
    proxy
        .scrape()
        .get("rrproxy_denied_connections_total", &[])
        .unwrap()
}

#[test]
fn refused_clients_never_reach_a_backend_and_ctl_acl_edits_the_lists() {
    let b = name_backend("a");
    let proxy = ProxyCmd::new(&[b.addr])
        .args([
            "--listen",
            "[::1]:0",
            "--deny",
            "127.0.0.6",
            "--health-interval",
            "off",
        ])
        .workers(2)
        .start();
    let v6: SocketAddr = proxy.ctl_json("status")["listen"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for _ in 0..5 {
        assert!(!served_from(&proxy, ip(6)), "a denied client was served");
    }
    assert_eq!(
        b.accepted.load(Ordering::Relaxed),
        0,
        "the backend saw none"
    );
    assert_eq!(denied(&proxy), 5.0);
    assert!(served_from(&proxy, ip(7)));
    assert_eq!(b.accepted.load(Ordering::Relaxed), 1);

    // An allow entry: only its clients are served from now on.
    let reply = proxy.ctl("acl allow 127.0.0.8");
    assert!(
        reply.starts_with("127.0.0.8/32 added to the allow list")
            && reply.contains("only clients in it are served"),
        "{reply}"
    );
    assert!(!served_from(&proxy, ip(7)));
    assert!(served_from(&proxy, ip(8)));
    assert_eq!(proxy.ctl("acl"), "allow 127.0.0.8/32\ndeny  127.0.0.6/32");
    let j = proxy.ctl_json("acl");
    assert_eq!(j["allow"], serde_json::json!(["127.0.0.8/32"]));
    assert_eq!(j["deny"], serde_json::json!(["127.0.0.6/32"]));
    // Moving an entry, taking the allow list away again.
    assert_eq!(
        proxy.ctl("acl deny 127.0.0.8"),
        "127.0.0.8/32 moved from the allow list to the deny list"
    );
    assert!(!served_from(&proxy, ip(8)));
    assert!(
        served_from(&proxy, ip(7)),
        "no allow entry left: open again"
    );
    assert_eq!(
        proxy.ctl("acl remove 127.0.0.8/32"),
        "127.0.0.8/32 removed from the deny list"
    );
    assert!(served_from(&proxy, ip(8)));
    // IPv6, and a network with host bits.
    assert_eq!(
        proxy.ctl("acl deny ::1/120"),
        "::/120 added to the deny list (written ::1/120: host bits cleared)"
    );
    let mut s = TcpStream::connect(v6).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    // Bad requests: one line each, nothing changed.
    assert_eq!(
        proxy.ctl("acl deny 10.0.0.0/33"),
        "error: '10.0.0.0/33': the prefix length must be a number from 0 to 32"
    );
    assert!(
        proxy
            .ctl("acl allow gateway.local")
            .starts_with("error: 'gateway.local' is a host name")
    );
    assert_eq!(
        proxy.ctl("acl remove 10.9.9.9"),
        "error: 10.9.9.9/32 is in neither list (see `acl`)"
    );
    assert_eq!(
        proxy.ctl("acl frob"),
        "error: 'acl' takes no arguments (usage: acl | acl allow CIDR | acl deny CIDR | acl remove CIDR)"
    );
    let (code, _, err) = {
        let out = Command::new(BIN)
            .args(["ctl", "--control", proxy.control.to_str().unwrap()])
            .args(["acl", "deny", "10.0.0.0/33"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        proxy.ctl("acl"),
        "(no allow entry: every client not denied is served)\ndeny  127.0.0.6/32\ndeny  ::/120"
    );
    let total_denied = denied(&proxy);
    assert_eq!(total_denied, 8.0);
    assert_eq!(b.accepted.load(Ordering::Relaxed), 4);
    proxy.wait_log("client refused by the access list");
}

/// With `--accept-proxy`, the list judges the address in the header.
#[test]
fn the_header_address_is_what_the_list_judges() {
    let b = name_backend("a");
    let proxy = ProxyCmd::new(&[b.addr])
        .args([
            "--accept-proxy",
            "127.0.0.1/32",
            "--deny",
            "192.0.2.0/24",
            "--health-interval",
            "off",
        ])
        .workers(1)
        .start();
    let dst = proxy.listen.to_string();
    let via_header = |src: &str| {
        let mut s = proxy.connect();
        let h = Header::Tcp {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        };
        s.write_all(&h.encode(Version::V2)).unwrap();
        let mut buf = [0u8; 8];
        matches!(s.read(&mut buf), Ok(n) if n > 0)
    };
    assert!(!via_header("192.0.2.5:1000"));
    assert!(via_header("198.51.100.5:1000"));
    assert_eq!(b.accepted.load(Ordering::Relaxed), 1);
    assert_eq!(denied(&proxy), 1.0);
}

/// Lists switched with `ctl acl` and SIGHUP, many times, while clients
/// keep connecting: none of those fails. A reload reports the `ctl` edits
/// it undoes; an invalid network in the file rejects the reload whole.
#[test]
fn switching_lists_under_load_fails_nothing_else() {
    let b = name_backend("a");
    let dir = temp_dir("acl-reload");
    let path = dir.join("rrproxy.toml");
    let file = |deny: &str| {
        std::fs::write(
            &path,
            format!("backends = [\"{}\"]\ndeny = [{deny}]\n", b.addr),
        )
        .unwrap();
    };
    file("\"127.0.0.30\"");
    let proxy = ProxyCmd::new(&[])
        .args(["--config", path.to_str().unwrap()])
        .workers(2)
        .start();
    let load = Load::start(&proxy, 4);
    for round in 0..10 {
        let reply = proxy.ctl("acl deny 127.0.0.31");
        assert!(reply.contains("added to the deny list"), "{reply}");
        assert!(!served_from(&proxy, ip(31)));
        proxy.ctl("acl allow 127.0.0.0/8");
        assert!(served_from(&proxy, ip(34)));
        proxy.ctl("acl remove 127.0.0.0/8");
        // The file, alternately denying .30 and .32 (SIGHUP, like systemctl reload).
        let (deny, open) = if round % 2 == 0 { (32, 30) } else { (30, 32) };
        file(&format!("\"127.0.0.{deny}\""));
        proxy.signal("HUP");
        wait_until(Duration::from_secs(10), "the reload", || {
            !served_from(&proxy, ip(deny)) && served_from(&proxy, ip(open))
        });
        // The reload undid the ctl entry.
        assert!(served_from(&proxy, ip(31)));
    }
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{ok} served, {failed} failed");
    assert!(ok > 0);

    // A reload that undoes a ctl edit says so.
    proxy.ctl("acl deny 127.0.0.33");
    proxy.ctl("acl remove 127.0.0.30");
    file("\"127.0.0.30\"");
    let reply = proxy.ctl("config reload");
    assert!(
        reply.contains("acl 127.0.0.33/32 in the deny list (set by ctl) -> in neither list (from the configuration)")
            && reply.contains("acl 127.0.0.30/32 in neither list (set by ctl) -> in the deny list (from the configuration)"),
        "{reply}"
    );
    // An invalid network: rejected, one line naming key and value; the
    // running lists stay.
    std::fs::write(
        &path,
        format!("backends = [\"{}\"]\ndeny = [\"127.0.0.300\"]\n", b.addr),
    )
    .unwrap();
    let reply = proxy.ctl("config reload");
    assert_eq!(
        reply,
        format!(
            "error: reload rejected: {}:2:9: invalid value '127.0.0.300' for 'deny': '127.0.0.300' is not an IP address (expected something like 10.0.0.0/8 or 2001:db8::/32)",
            path.display()
        )
    );
    assert!(!served_from(&proxy, ip(30)), "the running list stays");
    assert!(served_from(&proxy, ip(33)));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An upgrade hands over the running lists (ctl edits included) and the
/// connections still waiting for their PROXY header, which the new front
/// reads, from the first byte (one whose long header had half arrived
/// included).
#[test]
fn an_upgrade_keeps_the_lists_and_the_connections_waiting_for_a_header() {
    let b = echo_backend();
    let proxy = ProxyCmd::new(&[b.addr])
        .args([
            "--accept-proxy",
            "127.0.0.1/32",
            "--proxy-header-timeout",
            "20s",
            "--health-interval",
            "off",
        ])
        .workers(1)
        .start();
    proxy.ctl("acl deny 127.0.0.40");
    // Trusted, header not sent yet.
    let mut waiting = proxy.connect();
    // Trusted, the first part of a v2 header longer than one peek (600
    // bytes of TLVs) sent: the old front must leave every byte of it for
    // the new one.
    let mut long = Header::Tcp {
        source: "198.51.100.8:4321".parse().unwrap(),
        destination: proxy.listen,
    }
    .encode(Version::V2)
    .to_vec();
    let body = u16::from_be_bytes([long[14], long[15]]) + 603;
    long[14..16].copy_from_slice(&body.to_be_bytes());
    long.extend_from_slice(&[0x04, 0x02, 0x58]); // PP2_TYPE_NOOP, 600 bytes
    long.extend(std::iter::repeat_n(0u8, 600));
    let mut half_sent = proxy.connect();
    half_sent.write_all(&long[..300]).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the long header's connection accepted",
        || {
            proxy
                .scrape()
                .get("rrproxy_accepted_connections_total", &[])
                == Some(2.0)
        },
    );
    let old = proxy.ctl_json("status")["pid"].as_u64().unwrap();
    let reply = proxy.ctl("upgrade");
    assert!(reply.contains("front upgraded"), "{reply}");
    assert_ne!(proxy.ctl_json("status")["pid"].as_u64().unwrap(), old);
    assert_eq!(
        proxy.ctl("acl"),
        "(no allow entry: every client not denied is served)\ndeny  127.0.0.40/32\naccept-proxy 127.0.0.1/32  (PROXY header required; --accept-proxy)"
    );
    // The waiting connection's header goes to the new front now.
    let h = Header::Tcp {
        source: "198.51.100.7:1234".parse().unwrap(),
        destination: proxy.listen,
    };
    let mut data = h.encode(Version::V1).to_vec();
    data.extend_from_slice(b"after the upgrade");
    waiting.write_all(&data).unwrap();
    waiting.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    waiting.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"after the upgrade");
    long.drain(..300);
    long.extend_from_slice(b"the long header's rest came after the upgrade");
    half_sent.write_all(&long).unwrap();
    half_sent.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    half_sent.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"the long header's rest came after the upgrade");
    // And a client the list denies is still refused.
    let mut s = proxy.connect();
    s.write_all(
        &Header::Tcp {
            source: "127.0.0.40:1".parse().unwrap(),
            destination: proxy.listen,
        }
        .encode(Version::V2),
    )
    .unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    // (The old front may still answer a scrape or two while it exits,
    // with an empty reply: ask until the new one does.)
    let m = wait_for(Duration::from_secs(10), "a scrape of the new front", || {
        let m = proxy.scrape();
        m.get("rrproxy_denied_connections_total", &[]).map(|_| m)
    });
    assert_eq!(m.get("rrproxy_denied_connections_total", &[]), Some(1.0));
    assert_eq!(
        m.get(
            "rrproxy_proxy_header_errors_total",
            &[("reason", "not_proxy")]
        ),
        Some(0.0)
    );
}

/// Bad values at start and in `check`: exit 2, one line naming the flag
/// as typed and the value.
#[test]
fn bad_networks_and_send_proxy_versions_are_one_line_naming_the_flag() {
    for (args, want) in [
        (
            &["--deny", "10.0.0.0/33"][..],
            "rrproxy: error: invalid value '10.0.0.0/33' for '--deny <CIDR>': '10.0.0.0/33': the prefix length must be a number from 0 to 32",
        ),
        (
            &["--allow=10.0.0"][..],
            "rrproxy: error: invalid value '10.0.0' for '--allow <CIDR>': '10.0.0' is not an IP address (expected something like 10.0.0.0/8 or 2001:db8::/32)",
        ),
        (
            &["--accept-proxy", "lb.internal"][..],
            "rrproxy: error: invalid value 'lb.internal' for '--accept-proxy <CIDR>': 'lb.internal' is a host name; a network must be an IP address with an optional /prefix (like 10.0.0.0/8)\n  tip: write its address (or its network) instead",
        ),
        (
            &["-b", "127.0.0.1:81,send-proxy=v3"][..],
            "rrproxy: error: invalid value '127.0.0.1:81,send-proxy=v3' for '-b <ADDR>': send-proxy must be v1 or v2 (the PROXY protocol version), got 'v3'",
        ),
    ] {
        for check in [true, false] {
            let mut cmd = Command::new(BIN);
            if check {
                cmd.arg("check");
            }
            let out = cmd
                .args(["-b", "127.0.0.1:80", "--metrics", "off", "--control", "off"])
                .args(["--listen", "127.0.0.1:0"])
                .args(args)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stderr).trim_end(),
                want,
                "{args:?} (check: {check})"
            );
        }
    }
}
