//! `--defer-accept`: the listening socket holds a connection until the
//! client's first bytes arrive (TCP_DEFER_ACCEPT), so the front accepts
//! and hands it over once, with its request already there. A client that
//! waits for the server is still served, a little late. A reload turns it
//! on and off on the running listeners.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

fn accepted(proxy: &Proxy) -> f64 {
    proxy
        .scrape()
        .get("rrproxy_accepted_connections_total", &[])
        .unwrap_or(0.0)
}

fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// Connect a client that says nothing, then one that speaks and gets its
/// echo back. Returns how many connections the front accepted meanwhile
/// and the silent client. The kernel's accept queue is first in, first
/// out: a listener that does not defer has accepted the silent client by
/// the time the speaker's echo is back (2); a deferring one has not (1),
/// as long as this took less than the kernel's hold of about a second.
/// On a machine too busy for that, the try is repeated (at most 5 times).
fn accepted_while_one_stays_silent(proxy: &Proxy) -> (f64, TcpStream) {
    for _ in 0..5 {
        let before = accepted(proxy);
        let started = Instant::now();
        let silent = proxy.connect();
        let mut speaker = proxy.connect();
        echo(&mut speaker, b"ping\n");
        let n = accepted(proxy) - before;
        if started.elapsed() < Duration::from_millis(700) {
            return (n, silent);
        }
    }
    panic!("5 tries each took over 700 ms: too slow to observe a deferred accept");
}

#[test]
fn a_deferred_listener_hands_a_client_over_only_once_it_has_spoken() {
    let b = echo_backend();
    let plain = ProxyCmd::new(&[b.addr]).workers(1).start();
    let (n, _silent) = accepted_while_one_stays_silent(&plain);
    assert_eq!(n, 2.0, "without --defer-accept both clients are accepted");

    let deferred = ProxyCmd::new(&[b.addr])
        .workers(1)
        .arg("--defer-accept")
        .start();
    let (n, mut silent) = accepted_while_one_stays_silent(&deferred);
    assert_eq!(n, 1.0, "with --defer-accept the silent client waits");
    // Once it speaks it is served like any other.
    echo(&mut silent, b"late\n");
    assert_eq!(accepted(&deferred), 2.0);

    // A client that waits for the server to speak first (a greeting
    // backend) is not lost: the kernel queues it after a SYN-ACK
    // retransmit, about a second late.
    let greeter = name_backend("hello");
    let deferred = ProxyCmd::new(&[greeter.addr])
        .workers(1)
        .arg("--defer-accept")
        .start();
    let mut listener_first = deferred.connect();
    listener_first
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    assert_eq!(read_name(&mut listener_first), "hello");
}

#[test]
fn a_reload_turns_defer_accept_on_and_off() {
    let b = echo_backend();
    let dir = temp_dir("defer-reload");
    let path = dir.join("rrproxy.toml");
    let file = |defer: bool| {
        std::fs::write(
            &path,
            format!("backends = [\"{}\"]\ndefer-accept = {defer}\n", b.addr),
        )
        .unwrap();
    };
    file(false);
    let proxy = ProxyCmd::new(&[])
        .args(["--config", path.to_str().unwrap()])
        .workers(1)
        .start();
    assert_eq!(accepted_while_one_stays_silent(&proxy).0, 2.0);

    file(true);
    let reply = proxy.ctl("config reload");
    assert!(reply.contains("defer-accept on"), "{reply}");
    let (n, mut silent) = accepted_while_one_stays_silent(&proxy);
    assert_eq!(n, 1.0, "after the reload the silent client waits");
    echo(&mut silent, b"late\n");

    file(false);
    let reply = proxy.ctl("config reload");
    assert!(reply.contains("defer-accept off"), "{reply}");
    assert_eq!(accepted_while_one_stays_silent(&proxy).0, 2.0);

    // A value that is not a switch: rejected with its place in the file,
    // and the listeners stay as they are.
    std::fs::write(
        &path,
        format!("backends = [\"{}\"]\ndefer-accept = \"yes\"\n", b.addr),
    )
    .unwrap();
    let reply = proxy.ctl("config reload");
    assert_eq!(
        reply,
        format!(
            "error: reload rejected: {}:2:16: invalid value 'yes' for 'defer-accept': expected true or false",
            path.display()
        )
    );
    assert_eq!(accepted_while_one_stays_silent(&proxy).0, 2.0);
}
