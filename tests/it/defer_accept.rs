//! `--defer-accept`: the listening socket holds a connection until the
//! client's first bytes arrive (TCP_DEFER_ACCEPT), so the front accepts
//! and hands it over once, with its request already there. A client that
//! waits for the server is still served, a little late. A reload turns it
//! on and off on the running listeners.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
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
    silent_and_speaker(proxy.listen, || accepted(proxy))
}

/// [`accepted_while_one_stays_silent`] for a listener at `listen` whose
/// accepted-connections count `accepted` reads.
fn silent_and_speaker(listen: SocketAddr, accepted: impl Fn() -> f64) -> (f64, TcpStream) {
    let connect = || {
        let s = TcpStream::connect_timeout(&listen, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    for _ in 0..5 {
        let before = accepted();
        let started = Instant::now();
        let silent = connect();
        let mut speaker = connect();
        echo(&mut speaker, b"ping\n");
        let n = accepted() - before;
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

/// Under socket activation the front applies `--defer-accept` to the
/// sockets it is given, and without the flag leaves a socket the service
/// manager set up (systemd's `DeferAcceptSec=`) as it is.
#[test]
fn inherited_listeners_defer_when_asked_and_keep_their_own_setting_otherwise() {
    let b = echo_backend();
    // (preset by the "service manager", flag given)
    for (preset, flag) in [(true, false), (false, true)] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = listener.local_addr().unwrap();
        if preset {
            rrproxy::sys::set_defer_accept(std::os::fd::AsFd::as_fd(&listener), true).unwrap();
        }
        socket2::SockRef::from(&listener)
            .set_cloexec(false)
            .unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let metrics = SocketAddr::from(([127, 0, 0, 1], crate::peers::free_port()));
        let script = format!(
            "exec 3<&{fd}; exec {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec {BIN} --backend {} --workers 1 --metrics {metrics} --control off{}",
            b.addr,
            if flag { " --defer-accept" } else { "" }
        );
        // bash: dash takes only one-digit descriptors in `exec 3<&N`.
        let child = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let _group = KillGroup(child);
        drop(listener); // only rrproxy holds it now
        let accepted = || {
            Metrics::parse(&http_get(metrics, "/metrics"))
                .get("rrproxy_accepted_connections_total", &[])
                .unwrap_or(0.0)
        };
        wait_until(Duration::from_secs(10), "the activated proxy", || {
            std::net::TcpStream::connect_timeout(&metrics, Duration::from_secs(1)).is_ok()
        });
        let (n, _silent) = silent_and_speaker(listen, accepted);
        assert_eq!(
            n, 1.0,
            "preset {preset}, flag {flag}: the silent client waits"
        );
    }
}

/// Kills a spawned process group when the test ends, passed or not.
struct KillGroup(std::process::Child);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}
