//! [`peek_client_hello`] on real loopback connections: whatever the
//! client sends and however it splits it, the right outcome, every byte
//! still in the socket afterwards, and one slow client holding up no
//! other.

use std::os::fd::AsFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::super::*;
use super::CAPTURED;
use super::build::{Spec, hello, message, records};

/// Long enough never to fire in a test that expects another outcome.
const PATIENT: Duration = Duration::from_secs(20);

/// A connected (client, server-side) pair on loopback.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    client.set_nodelay(true).unwrap();
    (client, server)
}

/// Write `bytes` in pieces of the given sizes (the last repeating), each
/// in its own segment, `pause` apart.
async fn write_in_pieces(
    client: &mut TcpStream,
    bytes: &[u8],
    sizes: &[usize],
    pause: Duration,
) -> usize {
    let mut rest = bytes;
    let mut writes = 0;
    while !rest.is_empty() {
        let n = sizes[writes.min(sizes.len() - 1)].min(rest.len());
        client.write_all(&rest[..n]).await.unwrap();
        client.flush().await.unwrap();
        rest = &rest[n..];
        writes += 1;
        tokio::time::sleep(pause).await;
    }
    writes
}

/// Read until the client closes (bounded by a deadline).
async fn read_rest(server: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENT, server.read_to_end(&mut got))
        .await
        .expect("client never closed")
        .unwrap();
    got
}

fn name(host: &str) -> Hello {
    Hello::Found(HostName::new(host.as_bytes()).unwrap())
}

/// Send `wire` in pieces, then `after`, then close; peek, then check the
/// server side still reads every byte. Returns the outcome and how many
/// writes the client made.
async fn peek_pieces(
    wire: Vec<u8>,
    sizes: &'static [usize],
    after: &'static [u8],
) -> (Peeked, usize) {
    let (mut client, mut server) = pair().await;
    let sent = [&wire[..], after].concat();
    let writer = tokio::spawn(async move {
        let writes = write_in_pieces(&mut client, &wire, sizes, Duration::from_millis(5)).await;
        client.write_all(after).await.unwrap();
        client.shutdown().await.unwrap();
        writes
    });
    let peeked = peek_client_hello(&server, PATIENT).await.unwrap();
    let writes = writer.await.unwrap();
    assert_eq!(
        read_rest(&mut server).await,
        sent,
        "every byte stays for the backend"
    );
    (peeked, writes)
}

#[tokio::test]
async fn captured_hellos_in_one_write_are_decided_in_a_few_looks() {
    for (file, wire, host) in CAPTURED {
        let (peeked, _) = peek_pieces(wire.to_vec(), &[16384], b"after the hello").await;
        assert_eq!(peeked.hello, host.map_or(Hello::NoSni, name), "{file}");
        // The first look finds nothing (the client writes once the peek
        // waits), tokio's first readiness of a new socket may be spurious,
        // then the hello is there.
        assert!(peeked.peeks <= 3, "{file}: {peeked:?}");
        assert!(peeked.bytes >= wire.len().min(1), "{file}: {peeked:?}");
    }
}

#[tokio::test]
async fn a_hello_in_several_segments_is_assembled_without_spinning() {
    let (_, wire, _) = CAPTURED[3];
    let (peeked, writes) = peek_pieces(wire.to_vec(), &[1, 1, 3, 4, 40, 100], b"").await;
    assert_eq!(peeked.hello, name("www.example.com"));
    // At most one look per segment, plus the first.
    assert!(
        peeked.peeks as usize <= writes + 1,
        "{peeked:?} for {writes} writes"
    );
}

#[tokio::test]
async fn a_hello_over_4_kib_in_several_records_and_segments() {
    let (_, wire, _) = CAPTURED[5];
    assert!(wire.len() > 4096);
    let (peeked, _) = peek_pieces(wire.to_vec(), &[1000], b"").await;
    assert_eq!(peeked.hello, name("big.example.com"));
    let msg = message(&Spec::named("frag.example").padded_to(9000));
    let (peeked, _) = peek_pieces(records(&msg, &[700]), &[1500], b"").await;
    assert_eq!(peeked.hello, name("frag.example"));
}

#[tokio::test]
async fn plain_text_and_no_name_are_decided_at_once() {
    let (peeked, _) =
        peek_pieces(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[4096], b"").await;
    assert_eq!(peeked.hello, Hello::NotTls(NotTls::RecordType));
    let (_, wire, _) = CAPTURED[2];
    let (peeked, _) = peek_pieces(wire.to_vec(), &[4096], b"").await;
    assert_eq!(peeked.hello, Hello::NoSni);
}

#[tokio::test]
async fn a_hello_over_the_cap_is_refused() {
    let msg = message(&Spec::named("huge.example").padded_to(20000));
    let (peeked, _) = peek_pieces(records(&msg, &[16384]), &[8192], b"").await;
    assert_eq!(peeked.hello, Hello::TooLarge);
}

#[tokio::test]
async fn a_slow_client_times_out_holding_no_other_up() {
    let wire = hello(&Spec::named("slow.example"));
    let (mut slow, slow_server) = pair().await;
    slow.write_all(&wire[..20]).await.unwrap();
    let (mut quick, quick_server) = pair().await;
    let slow_peek = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let got = peek_client_hello(&slow_server, Duration::from_secs(3)).await;
        (got, started.elapsed())
    });
    // While the slow one waits, another connection is decided.
    quick
        .write_all(&hello(&Spec::named("quick.example")))
        .await
        .unwrap();
    let quick_peek = peek_client_hello(&quick_server, PATIENT).await.unwrap();
    assert_eq!(quick_peek.hello, name("quick.example"));
    assert!(!slow_peek.is_finished());
    let (got, took) = slow_peek.await.unwrap();
    assert_eq!(got, Err(PeekError::Timeout { bytes: 20 }));
    assert!(took >= Duration::from_secs(3));
    assert_eq!(got.unwrap_err().reason(), "timeout");
    drop(slow);
}

#[tokio::test]
async fn a_client_that_closes_early_is_closed() {
    let wire = hello(&Spec::named("gone.example"));
    let (mut client, server) = pair().await;
    client.write_all(&wire[..30]).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(
        peek_client_hello(&server, PATIENT).await,
        Err(PeekError::Closed { bytes: 30 })
    );
    let (mut client, server) = pair().await;
    client.shutdown().await.unwrap();
    assert_eq!(
        peek_client_hello(&server, PATIENT).await,
        Err(PeekError::Closed { bytes: 0 })
    );
    // Closing after part of the hello came in pieces.
    let (mut client, server) = pair().await;
    let writer = tokio::spawn(async move {
        write_in_pieces(&mut client, &wire[..50], &[10], Duration::from_millis(5)).await;
        client.shutdown().await.unwrap();
    });
    let got = peek_client_hello(&server, PATIENT).await;
    writer.await.unwrap();
    assert_eq!(got, Err(PeekError::Closed { bytes: 50 }));
    assert_eq!(got.unwrap_err().reason(), "closed");
}

/// Wait until `server` has `n` bytes queued.
async fn queued(server: &TcpStream, n: usize) {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(PATIENT, async {
        while server.peek(&mut buf).await.unwrap() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("bytes never arrived");
}

#[tokio::test]
async fn a_hello_already_queued_costs_one_look_and_no_wait() {
    let (_, wire, _) = CAPTURED[4];
    let (mut client, server) = pair().await;
    client.write_all(wire).await.unwrap();
    queued(&server, wire.len()).await;
    let peeked = peek_client_hello(&server, PATIENT).await.unwrap();
    assert_eq!(
        (peeked.hello, peeked.peeks, peeked.bytes),
        (name("pq.example.com"), 1, wire.len())
    );
    let once = try_peek_client_hello(server.as_fd()).unwrap().unwrap();
    assert_eq!(once, peeked);
}

#[tokio::test]
async fn one_look_says_when_the_connection_must_wait() {
    let wire = hello(&Spec::named("look.example"));
    let (mut client, server) = pair().await;
    assert_eq!(try_peek_client_hello(server.as_fd()), Ok(None));
    client.write_all(&wire[..40]).await.unwrap();
    queued(&server, 40).await;
    assert_eq!(try_peek_client_hello(server.as_fd()), Ok(None));
    client.write_all(&wire[40..]).await.unwrap();
    queued(&server, wire.len()).await;
    let once = try_peek_client_hello(server.as_fd()).unwrap().unwrap();
    assert_eq!(once.hello, name("look.example"));
    drop(client);
    let (client, server) = pair().await;
    drop(client);
    tokio::time::timeout(PATIENT, server.readable())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        try_peek_client_hello(server.as_fd()),
        Err(PeekError::Closed { bytes: 0 })
    );
}
