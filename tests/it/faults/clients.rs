//! Clients that misbehave: say nothing, drip a byte a second, vanish
//! without a FIN.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::{active, echo_once};
use crate::shims;
use crate::support::*;

/// Promise: clients that connect and send nothing cost only themselves:
/// 200 of them at once slow nobody (50 other requests each served within
/// 1 s). With `--client-first-byte-timeout 1s` each silent one is closed
/// within 1 s plus slack, its backend connection with it, and counted in
/// `rrproxy_client_first_byte_timeouts_total`; the proxy holds nothing
/// afterwards. (Without the option they would hold their backend
/// connection for the whole `--idle-timeout`.)
#[test]
fn silent_clients_are_closed_at_the_first_byte_timeout_and_slow_nobody() {
    let (echo, echo_closed) = shims::counting_echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr])
        .workers(2)
        .args(["--client-first-byte-timeout", "1s", "--idle-timeout", "60s"])
        .args(["--health-interval", "off"])
        .start();
    let began = Instant::now();
    let mut silent: Vec<TcpStream> = (0..200).map(|_| proxy.connect()).collect();
    let slowest = (0..50)
        .map(|_| echo_once(proxy.listen).expect("served"))
        .max()
        .unwrap();
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    for s in &mut silent {
        let mut b = [0u8; 1];
        let n = s.read(&mut b).expect("closed, not timed out");
        assert_eq!(n, 0);
    }
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "{:?}",
        began.elapsed()
    );
    wait_until(Duration::from_secs(5), "backend connections closed", || {
        echo_closed.load(Ordering::Relaxed) >= 250
    });
    wait_until(Duration::from_secs(5), "timeouts counted", || {
        proxy
            .scrape()
            .get("rrproxy_client_first_byte_timeouts_total", &[])
            == Some(200.0)
    });
    wait_until(Duration::from_secs(5), "nothing held", || {
        active(&proxy) == 0
    });
}

/// Promise: a client that sends one byte a second is slow but alive: it
/// is cut by neither the first-byte timeout (1.5 s) nor the idle timeout
/// (2 s) while it keeps sending within them, every byte is echoed, and it
/// slows nobody else. (What bounds how many such clients one address may
/// hold is `--max-conns-per-ip`.)
#[test]
fn a_client_sending_a_byte_a_second_is_served_and_slows_nobody() {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr])
        .workers(1)
        .args([
            "--client-first-byte-timeout",
            "1500ms",
            "--idle-timeout",
            "2s",
        ])
        .args(["--health-interval", "off"])
        .start();
    let mut s = proxy.connect();
    let drip = thread::spawn({
        let mut w = s.try_clone().unwrap();
        move || {
            for b in b"drip" {
                thread::sleep(Duration::from_secs(1));
                w.write_all(&[*b]).unwrap();
            }
            w.shutdown(Shutdown::Write).unwrap();
        }
    });
    let others: Vec<Option<Duration>> = (0..40).map(|_| echo_once(proxy.listen)).collect();
    drip.join().unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"drip");
    assert!(others.iter().all(Option::is_some), "{others:?}");
    let slowest = others.into_iter().flatten().max().unwrap();
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
}

/// Promise: a client that vanishes without a FIN (here: a relay that
/// stops forwarding and silently holds its socket) is closed by the proxy
/// after `--idle-timeout` (2 s) without progress, and its backend
/// connection with it; other clients are unaffected, and the proxy holds
/// nothing afterwards.
#[test]
fn a_client_that_vanishes_without_fin_is_closed_at_the_idle_timeout() {
    let (echo, echo_closed) = shims::counting_echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr])
        .workers(1)
        .args(["--idle-timeout", "2s", "--health-interval", "off"])
        .start();
    let relay = shims::Relay::start(
        proxy.listen,
        shims::Impair {
            chunk: 64 * 1024,
            ..shims::Impair::default()
        },
    );
    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hi\n").unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi\n");
    relay.vanish();
    let vanished = Instant::now();
    assert!(echo_once(proxy.listen).is_some(), "others unaffected");
    wait_until(
        Duration::from_secs(6),
        "the backend connection to close",
        || echo_closed.load(Ordering::Relaxed) >= 2,
    );
    let took = vanished.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "closed before the idle timeout: {took:?}"
    );
    wait_until(Duration::from_secs(5), "nothing held", || {
        active(&proxy) == 0
    });
}
