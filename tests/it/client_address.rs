//! The client's real address end to end (PROXY protocol): rrproxy sends it
//! to real backends (nginx, HAProxy) with `send-proxy`, takes it from a
//! real upstream (HAProxy `send-proxy-v2`) with `--accept-proxy` and uses
//! it for sticky, keeps it through a chain of two rrproxies, and closes
//! only the connection whose header is bad.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use rrproxy::proxy_protocol::{Header, Version};

use crate::peers::*;
use crate::support::*;

/// A PROXY header for a TCP connection from `src` to `dst`.
fn header(version: Version, src: &str, dst: &str) -> Vec<u8> {
    Header::Tcp {
        source: src.parse().unwrap(),
        destination: dst.parse().unwrap(),
    }
    .encode(version)
    .to_vec()
}

/// An rrproxy (2 workers) listening on IPv4 and on `[::1]`, sending a
/// PROXY header of `version` to the backend at `port`, with health checks
/// every `health`. Returns it and its IPv6 address.
fn send_proxy_to(port: u16, version: &str, health: &str) -> (Proxy, SocketAddr) {
    let proxy = ProxyCmd::new(&[])
        .args(["--listen", "[::1]:0", "--health-interval", health])
        .backend(format!("127.0.0.1:{port},send-proxy={version}"))
        .workers(2)
        .start();
    let v6 = proxy.ctl_json("status")["listen"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (proxy, v6)
}

/// Connect to `to` from `from`.
fn connect_from(from: SocketAddr, to: SocketAddr) -> TcpStream {
    let s = connect_between(from, to);
    s.set_nodelay(true).unwrap();
    s
}

/// The connection was closed without a byte for us (a reset or a FIN).
fn closed_without_data(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

fn header_errors(m: &Metrics, reason: &str) -> f64 {
    m.get("rrproxy_proxy_header_errors_total", &[("reason", reason)])
        .unwrap_or(f64::NAN)
}

fn v4(last: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, last], 0))
}

#[test]
#[cfg_attr(not(has_nginx), ignore = "needs nginx: apt-get install nginx")]
fn nginx_with_proxy_protocol_logs_the_real_client_for_v1_and_v2() {
    for version in ["v1", "v2"] {
        let port = free_port();
        let nginx = nginx_proxy_protocol(port);
        let (proxy, v6) = send_proxy_to(port, version, "off");
        assert_eq!(http_get_from(v4(5), proxy.listen), "HTTP/1.1 200 OK");
        let any6: SocketAddr = "[::1]:0".parse().unwrap();
        assert_eq!(http_get_from(any6, v6), "HTTP/1.1 200 OK");
        // nginx logs a request when it is done; the reply came first.
        let log = wait_for(Duration::from_secs(5), "nginx to log both", || {
            let log = nginx.file("access.log");
            (log.lines().count() >= 2).then_some(log)
        });
        let want = format!(
            "127.0.0.5 127.0.0.1:{}\n::1 ::1:{}\n",
            proxy.listen.port(),
            v6.port()
        );
        assert_eq!(log, want, "send-proxy={version}");
        assert!(!nginx.file("error.log").contains("broken header"));
    }
}

#[test]
#[cfg_attr(not(has_haproxy), ignore = "needs haproxy: apt-get install haproxy")]
fn haproxy_with_accept_proxy_logs_the_real_client_for_v1_and_v2() {
    for version in ["v1", "v2"] {
        let port = free_port();
        let config = format!(
            "global
    log stdout format raw local0
defaults
    mode http
    log global
    option dontlognull
    timeout connect 5s
    timeout client 10s
    timeout server 10s
    log-format \"%ci %fi:%fp\"
frontend fe
    bind 127.0.0.1:{port} accept-proxy
    http-request return status 200 content-type text/plain string ok
"
        );
        let hap = haproxy(&config, SocketAddr::from(([127, 0, 0, 1], port)));
        let (proxy, v6) = send_proxy_to(port, version, "200ms");
        assert_eq!(http_get_from(v4(5), proxy.listen), "HTTP/1.1 200 OK");
        assert_eq!(
            http_get_from("[::1]:0".parse().unwrap(), v6),
            "HTTP/1.1 200 OK"
        );
        let want = [
            format!("127.0.0.5 127.0.0.1:{}", proxy.listen.port()),
            format!("::1 ::1:{}", v6.port()),
        ];
        wait_until(Duration::from_secs(5), "HAProxy to log both", || {
            let out = hap.output();
            want.iter().all(|w| out.lines().any(|l| l == w))
        });
        // Its health checks (LOCAL headers) kept it up all along.
        let b = &proxy.ctl_json("backends")[0];
        assert_eq!(b["state"], "up", "{b}");
        assert_eq!(
            proxy.scrape().sum_where(
                "rrproxy_backend_check_failures_total",
                "backend",
                &format!("127.0.0.1:{port}")
            ),
            0.0
        );
    }
}

/// What health checks of a `send-proxy` backend send: a header with no
/// client (v2 `LOCAL`, v1 `PROXY UNKNOWN`), byte for byte.
#[test]
fn health_checks_of_send_proxy_backends_send_a_header_without_a_client() {
    for (version, want) in [
        ("v1", b"PROXY UNKNOWN\r\n".to_vec()),
        ("v2", Header::Local.encode(Version::V2).to_vec()),
    ] {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let b = spawn_backend_on(listen_any(), move |mut conn| {
            let mut got = Vec::new();
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = conn.read_to_end(&mut got);
            let _ = tx.lock().unwrap().send(got);
        });
        let _proxy = ProxyCmd::new(&[])
            .args(["--health-interval", "100ms", "--workers", "1"])
            .backend(format!("{},send-proxy={version}", b.addr))
            .start();
        for _ in 0..3 {
            let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got, want, "send-proxy={version}");
        }
        // (LOCAL in v2 is 16 bytes: the signature, 0x20, family 0, length 0.)
        assert_eq!(Header::Local.encode(Version::V2).len(), 16);
    }
}

#[test]
#[cfg_attr(not(has_haproxy), ignore = "needs haproxy: apt-get install haproxy")]
fn sticky_behind_haproxy_send_proxy_v2_keys_on_the_header_address() {
    let names = ["a", "b", "c", "d"];
    let backends: Vec<Backend> = names.iter().map(|n| name_backend(n)).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let proxy = ProxyCmd::new(&addrs)
        .args(["--policy", "sticky", "--accept-proxy", "127.0.0.1/32"])
        .workers(2)
        .start();
    let port = free_port();
    let config = format!(
        "defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    server rr {} send-proxy-v2
",
        proxy.listen
    );
    let hap_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let _hap = haproxy(&config, hap_addr);
    let mut chosen = std::collections::HashMap::new();
    for round in 0..3 {
        for last in 10..40u8 {
            let mut s = connect_from(v4(last), hap_addr);
            let name = read_name(&mut s);
            assert!(names.contains(&name.as_str()), "{name}");
            let first = chosen.entry(last).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "127.0.0.{last} moved in round {round}");
        }
    }
    let spread: std::collections::HashSet<&String> = chosen.values().collect();
    assert!(
        spread.len() >= 3,
        "30 client addresses went to {spread:?}: keyed on HAProxy's address, not the header's"
    );
    // A client sending the same header itself (from a trusted address)
    // lands where HAProxy's clients from that address did.
    for (last, version) in [(10u8, Version::V2), (23, Version::V1), (39, Version::V2)] {
        let mut s = connect_from(v4(1), proxy.listen);
        let src = format!("127.0.0.{last}:5555");
        s.write_all(&header(version, &src, &proxy.listen.to_string()))
            .unwrap();
        assert_eq!(
            read_name(&mut s),
            chosen[&last],
            "direct {version} for {src}"
        );
    }
    assert_eq!(header_errors(&proxy.scrape(), "not_proxy"), 0.0);
}

#[test]
fn a_chain_of_two_rrproxies_keeps_the_original_client_and_destination() {
    let rec = header_echo_backend();
    let inner = ProxyCmd::new(&[])
        .args(["--accept-proxy", "127.0.0.1/32", "--health-interval", "off"])
        .backend(format!("{},send-proxy=v1", rec.backend.addr))
        .workers(2)
        .start();
    let outer = ProxyCmd::new(&[])
        .args(["--health-interval", "off"])
        .backend(format!("{},send-proxy=v2", inner.listen))
        .workers(2)
        .start();
    for i in 0..4u64 {
        let mut s = connect_from(v4(7), outer.listen);
        let data = random_bytes(i, 5000);
        assert_eq!(exchange(&mut s, &data).unwrap(), data);
    }
    let lines = rec.from("127.0.0.7");
    assert_eq!(lines.len(), 4, "{:?}", rec.headers.lock().unwrap());
    for l in &lines {
        // Source 127.0.0.7 (any port), destination: the outer proxy, where
        // the client connected.
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(
            (f[0], f[1], f[2], f[3]),
            ("PROXY", "TCP4", "127.0.0.7", "127.0.0.1"),
            "{l}"
        );
        assert_eq!(f[5], outer.listen.port().to_string(), "{l}");
    }
}

/// A trusted source's connections: every kind of bad header closes that
/// connection only, counted by reason, without the backend seeing it;
/// good headers (whole, split into single bytes, LOCAL) are served with
/// their address; an untrusted source's bytes are never read as a header.
#[test]
fn bad_proxy_headers_close_only_their_connection_and_are_counted() {
    let rec = header_echo_backend();
    let proxy = ProxyCmd::new(&[])
        .args([
            "--accept-proxy",
            "127.0.0.1/32",
            "--proxy-header-timeout",
            "2500ms",
            "--health-interval",
            "off",
        ])
        .backend(format!("{},send-proxy=v1", rec.backend.addr))
        .workers(2)
        .start();
    let me = v4(1);
    let dst = proxy.listen.to_string();

    // Late: a trusted connection that sends nothing waits for its header
    // without holding anyone up.
    let mut late = connect_from(me, proxy.listen);
    for i in 0..3u8 {
        let mut s = connect_from(me, proxy.listen);
        let src = format!("192.0.2.{}:4000", 10 + i);
        let mut data = header(Version::V2, &src, &dst);
        data.extend_from_slice(b"served while another waits");
        assert_eq!(
            exchange(&mut s, &data).unwrap(),
            b"served while another waits"
        );
    }
    assert_eq!(
        header_errors(&proxy.scrape(), "timeout"),
        0.0,
        "served before the late one timed out"
    );
    assert!(closed_without_data(&mut late));
    assert_eq!(header_errors(&proxy.scrape(), "timeout"), 1.0);

    // Whole headers, one byte per write (v1 and v2): read whole, and the
    // header's destination travels too.
    for (i, version) in [Version::V1, Version::V2].into_iter().enumerate() {
        let mut s = connect_from(me, proxy.listen);
        let src = format!("198.51.100.{}:4000", i + 1);
        let mut data = header(version, &src, "203.0.113.9:80");
        data.extend_from_slice(b"byte by byte");
        for b in &data {
            s.write_all(&[*b]).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"byte by byte");
        let ip = format!("198.51.100.{}", i + 1);
        assert_eq!(
            rec.from(&ip),
            [format!("PROXY TCP4 {ip} 203.0.113.9 4000 80")]
        );
    }

    // LOCAL (a health check of an upstream): the connection's own address.
    let mut s = connect_from(me, proxy.listen);
    let mut data = Header::Local.encode(Version::V2).to_vec();
    data.extend_from_slice(b"local");
    assert_eq!(exchange(&mut s, &data).unwrap(), b"local");
    assert_eq!(rec.from("127.0.0.1").len(), 1);

    // IPv6 in the header, from an IPv4 connection.
    let mut s = connect_from(me, proxy.listen);
    let mut data = header(Version::V2, "[2001:db8::5]:4000", "[2001:db8::1]:443");
    data.extend_from_slice(b"six");
    assert_eq!(exchange(&mut s, &data).unwrap(), b"six");
    assert_eq!(
        rec.from("2001:db8::5"),
        ["PROXY TCP6 2001:db8::5 2001:db8::1 4000 443"]
    );

    let served = rec
        .backend
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(served, 7);

    // Each bad kind: closed without a byte, the backend never sees it.
    let mut oversized = Vec::from(rrproxy::proxy_protocol::V2_SIGNATURE);
    oversized.extend_from_slice(&[0x21, 0x11, 0x13, 0x88]); // 5000 bytes follow
    oversized.extend_from_slice(&[0; 64]);
    let mut udp = header(Version::V2, "192.0.2.1:1", "192.0.2.2:2");
    udp[13] = 0x12; // IPv4 over UDP
    let cases: [(&str, Vec<u8>, bool); 5] = [
        ("not_proxy", b"GET / HTTP/1.0\r\n\r\n".to_vec(), false),
        ("oversized", oversized, false),
        (
            "malformed",
            b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\nxx".to_vec(),
            false,
        ),
        ("unsupported", udp, false),
        ("truncated", b"PROXY TCP4 192.0.2".to_vec(), true),
    ];
    for (reason, bytes, then_eof) in cases {
        let mut s = connect_from(me, proxy.listen);
        s.write_all(&bytes).unwrap();
        if then_eof {
            s.shutdown(Shutdown::Write).unwrap();
        }
        assert!(closed_without_data(&mut s), "{reason}");
        wait_until(Duration::from_secs(5), reason, || {
            header_errors(&proxy.scrape(), reason) == 1.0
        });
    }

    // An untrusted source: its bytes are data, never a header.
    let mut s = connect_from(v4(2), proxy.listen);
    let fake = b"PROXY TCP4 192.0.2.99 127.0.0.1 1 2\r\nhello".to_vec();
    assert_eq!(exchange(&mut s, &fake).unwrap(), fake);
    assert_eq!(rec.from("127.0.0.2").len(), 1);
    assert!(rec.from("192.0.2.99").is_empty());

    let m = proxy.scrape();
    for reason in [
        "not_proxy",
        "malformed",
        "oversized",
        "truncated",
        "timeout",
        "unsupported",
    ] {
        assert_eq!(header_errors(&m, reason), 1.0, "{reason}");
    }
    assert_eq!(header_errors(&m, "io"), 0.0);
    assert_eq!(
        rec.backend
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        served + 1,
        "no bad header reached the backend"
    );
    assert_eq!(m.get("rrproxy_accepted_connections_total", &[]), Some(14.0));
}

/// Raise this process's open-file limit to at least `n` (up to the hard
/// limit).
fn raise_nofile(n: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    assert!(hard >= n, "needs {n} descriptors, the hard limit is {hard}");
    if lim.current.is_some_and(|c| c < n) {
        lim.current = Some(n);
        setrlimit(Resource::Nofile, lim).unwrap();
    }
}

/// At most `MAX_HEADER_WAITS` connections wait for their header at once:
/// then the front stops accepting (clients wait in the backlog, like at the
/// other limits), and resumes as soon as reads end.
#[test]
fn at_the_bound_of_header_reads_accepting_pauses_then_resumes() {
    let max = rrproxy::front::MAX_HEADER_WAITS;
    raise_nofile(2 * max as u64 + 512);
    let b = name_backend("a");
    let proxy = ProxyCmd::new(&[b.addr])
        .args([
            "--accept-proxy",
            "127.0.0.1/32",
            "--proxy-header-timeout",
            "60s",
            "--health-interval",
            "off",
        ])
        .workers(1)
        .start();
    let mut silent: Vec<TcpStream> = (0..max)
        .map(|_| connect_from(v4(1), proxy.listen))
        .collect();
    let paused = |p: &Proxy| p.scrape().get("rrproxy_accept_paused", &[]) == Some(1.0);
    wait_until(Duration::from_secs(30), "accepting to pause", || {
        paused(&proxy)
    });
    proxy.wait_log("waiting for their PROXY header");
    // An ordinary client now waits in the listen backlog.
    let mut c = connect_from(v4(2), proxy.listen);
    let m = proxy.scrape();
    assert_eq!(
        m.get("rrproxy_accepted_connections_total", &[]),
        Some(max as f64)
    );
    assert_eq!(b.accepted.load(std::sync::atomic::Ordering::Relaxed), 0);
    // A hundred of the silent ones give up: their reads end, the front
    // accepts again, and the waiting client is served.
    for s in silent.drain(..100) {
        let _ = s.shutdown(Shutdown::Both);
    }
    assert_eq!(read_name(&mut c), "a");
    wait_until(Duration::from_secs(10), "all hundred counted", || {
        header_errors(&proxy.scrape(), "truncated") == 100.0
    });
    assert!(!paused(&proxy));
}
