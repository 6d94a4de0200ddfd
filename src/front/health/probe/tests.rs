//! Checks against small servers on loopback that answer each way a
//! backend can: right, wrong, late, not at all, or with a reset.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use super::*;

/// A server that accepts one connection, reads `read` bytes, then does
/// `then` with it; returns its address and what it read.
fn server(
    read: usize,
    then: impl FnOnce(&mut std::net::TcpStream) + Send + 'static,
) -> (SocketAddr, std::thread::JoinHandle<(Vec<u8>, SocketAddr)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, peer) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; read];
        s.read_exact(&mut got).unwrap();
        then(&mut s);
        (got, peer)
    });
    (addr, h)
}

fn plan(addr: SocketAddr, send: &[u8], expect: &[u8]) -> Plan {
    Plan {
        addr,
        source: None,
        send_proxy: None,
        send: send.to_vec(),
        expect: expect.to_vec(),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn a_right_answer_passes_after_the_request() {
    let (addr, h) = server(6, |s| s.write_all(b"+PONG\r\n").unwrap());
    assert_eq!(check(&plan(addr, b"PING\r\n", b"+PONG")).await, Ok(()));
    assert_eq!(h.join().unwrap().0, b"PING\r\n");
}

#[tokio::test]
async fn a_greeting_passes_without_a_request_even_in_pieces() {
    let (addr, h) = server(0, |s| {
        s.write_all(b"22").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"0 mail ESMTP\r\n").unwrap();
    });
    assert_eq!(check(&plan(addr, b"", b"220 ")).await, Ok(()));
    h.join().unwrap();
}

#[tokio::test]
async fn a_wrong_answer_fails_showing_what_came() {
    let reply = b"-LOADING Redis is loading the dataset in memory\r\n";
    let (addr, h) = server(6, move |s| s.write_all(reply).unwrap());
    let e = check(&plan(addr, b"PING\r\n", b"+PONG")).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "expected '+PONG', got '-LOADING Redis is loading the dataset in memory\\r\\n'"
    );
    h.join().unwrap();
    // Long answers are cut.
    let (addr, h) = server(0, |s| s.write_all(&[b'x'; 300]).unwrap());
    let e = check(&plan(addr, b"", b"+OK"))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("expected '+OK', got '{}...'", "x".repeat(64)));
    h.join().unwrap();
}

#[tokio::test]
async fn silence_closes_and_resets_each_say_so() {
    let (addr, h) = server(6, |s| {
        s.write_all(b"+PO").unwrap();
        std::thread::sleep(Duration::from_millis(600));
    });
    let mut p = plan(addr, b"PING\r\n", b"+PONG");
    p.timeout = Duration::from_millis(300);
    assert_eq!(
        check(&p).await.unwrap_err().to_string(),
        "timeout while waiting for the reply (300ms) (got '+PO')"
    );
    h.join().unwrap();
    let (addr, h) = server(0, |s| s.shutdown(std::net::Shutdown::Write).unwrap());
    assert_eq!(
        check(&plan(addr, b"", b"+OK"))
            .await
            .unwrap_err()
            .to_string(),
        "closed without a reply (expected '+OK')"
    );
    h.join().unwrap();
    let (addr, h) = server(0, |s| {
        socket2::SockRef::from(&*s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let e = check(&plan(addr, b"", b"+OK"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("connection reset while"), "{e}");
    h.join().unwrap();
    let gone = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(check(&plan(gone, b"", b"")).await, Err(Failure::Refused));
    assert_eq!(Failure::Refused.to_string(), "connection refused");
}

#[tokio::test]
async fn the_proxy_header_goes_first_and_the_source_is_used() {
    let header = Header::Local.encode(Version::V2);
    let n = header.len() + 6;
    let (addr, h) = server(n, |s| s.write_all(b"+PONG\r\n").unwrap());
    let mut p = plan(addr, b"PING\r\n", b"+PONG");
    p.send_proxy = Some(Version::V2);
    p.source = Some("127.0.0.3".parse().unwrap());
    assert_eq!(check(&p).await, Ok(()));
    let (got, peer) = h.join().unwrap();
    assert_eq!(&got[..header.len()], &header[..]);
    assert_eq!(&got[header.len()..], b"PING\r\n");
    assert_eq!(peer.ip().to_string(), "127.0.0.3");
}
