//! [`read_header`] on real loopback connections: whatever the peer sends
//! and however it splits it, the right outcome, and the application's
//! first bytes still in the socket afterwards.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::super::*;
use super::tcp;

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

/// Write `bytes` in pieces of `chunk` bytes, each in its own segment.
async fn write_slowly(client: &mut TcpStream, bytes: &[u8], chunk: usize) {
    for piece in bytes.chunks(chunk) {
        client.write_all(piece).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Read until the peer closes (bounded by a deadline).
async fn read_rest(server: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENT, server.read_to_end(&mut got))
        .await
        .expect("peer never closed")
        .unwrap();
    got
}

fn sample() -> Header {
    tcp("192.0.2.7:40000", "198.51.100.1:443")
}

#[tokio::test]
async fn application_bytes_sent_with_the_header_stay_in_the_socket() {
    for version in [Version::V1, Version::V2] {
        let (mut client, mut server) = pair().await;
        let mut wire = sample().encode(version).to_vec();
        wire.extend_from_slice(b"hello, backend");
        client.write_all(&wire).await.unwrap();
        client.shutdown().await.unwrap();

        let parsed = read_header(&server, PATIENT).await.unwrap();
        assert_eq!((parsed.header, parsed.version), (sample(), version));
        assert_eq!(read_rest(&mut server).await, b"hello, backend");
    }
}

#[tokio::test]
async fn a_header_in_one_byte_writes_is_assembled() {
    for version in [Version::V1, Version::V2] {
        let (mut client, mut server) = pair().await;
        let header = sample().encode(version);
        let writer = tokio::spawn(async move {
            write_slowly(&mut client, &header, 1).await;
            write_slowly(&mut client, b"after", 1).await;
            client.shutdown().await.unwrap();
        });
        let parsed = read_header(&server, PATIENT).await.unwrap();
        assert_eq!(parsed.header, sample());
        assert_eq!(read_rest(&mut server).await, b"after");
        writer.await.unwrap();
    }
}

#[tokio::test]
async fn a_long_v2_header_is_read_whole_and_nothing_past_it() {
    // 1,000 bytes of TLVs: more than the peek buffer holds.
    let mut wire = V2_SIGNATURE.to_vec();
    wire.extend_from_slice(&[0x21, 0x11]);
    wire.extend_from_slice(&(12u16 + 1003).to_be_bytes());
    wire.extend_from_slice(&[10, 1, 2, 3, 10, 4, 5, 6, 0x1f, 0x90, 0, 80]);
    wire.extend_from_slice(&[0xe0, 0x03, 0xe8]);
    wire.extend(std::iter::repeat_n(b'x', 1000));
    let header_len = wire.len();
    wire.extend_from_slice(b"app");
    for chunk in [wire.len(), 7] {
        let (mut client, mut server) = pair().await;
        let w = wire.clone();
        let writer = tokio::spawn(async move {
            write_slowly(&mut client, &w, chunk).await;
            client.shutdown().await.unwrap();
        });
        let parsed = read_header(&server, PATIENT).await.unwrap();
        assert_eq!(parsed.header, tcp("10.1.2.3:8080", "10.4.5.6:80"));
        assert_eq!(parsed.len, header_len);
        assert_eq!(read_rest(&mut server).await, b"app", "chunks of {chunk}");
        writer.await.unwrap();
    }
}

#[tokio::test]
async fn bad_headers_fail_at_once_without_waiting_for_the_timeout() {
    let mut oversized_v2 = V2_SIGNATURE.to_vec();
    oversized_v2.extend_from_slice(&[0x21, 0x11, 0x20, 0x00]);
    let mut oversized_v1 = b"PROXY UNKNOWN ".to_vec();
    oversized_v1.extend_from_slice(&[b'a'; 120]);
    let cases: [(&[u8], &str); 5] = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not_proxy"),
        (b"PROXY HELLO WORLD\r\n", "malformed"),
        (b"PROXY TCP4 ::1 ", "malformed"), // early: TCP4 with an IPv6 address
        (&oversized_v2, "oversized"),
        (&oversized_v1, "oversized"),
    ];
    for (wire, reason) in cases {
        let (mut client, server) = pair().await;
        client.write_all(wire).await.unwrap();
        // The connection stays open: only the bytes decide (a wait for
        // more would end in "timeout").
        let err = read_header(&server, PATIENT).await.unwrap_err();
        assert_eq!(err.reason(), reason, "{wire:?}: {err}");
    }
}

#[tokio::test]
async fn a_peer_that_closes_early_truncates() {
    for sent in [
        &b""[..],
        b"PROX",
        b"PROXY TCP4 1.2.3.4",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x01",
    ] {
        let (mut client, server) = pair().await;
        client.write_all(sent).await.unwrap();
        client.shutdown().await.unwrap();
        let err = read_header(&server, PATIENT).await.unwrap_err();
        assert_eq!(err, HeaderError::Truncated, "{sent:?}");
    }
}

#[tokio::test]
async fn a_reset_mid_header_ends_the_read() {
    let (client, server) = pair().await;
    client.try_write(b"PROXY TCP4 1.2").unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client); // RST
    let err = read_header(&server, PATIENT).await.unwrap_err();
    assert!(
        matches!(err, HeaderError::Truncated | HeaderError::Io(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_silent_or_stalled_peer_times_out() {
    for sent in [
        &b""[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c",
    ] {
        let (mut client, server) = pair().await;
        client.write_all(sent).await.unwrap();
        let err = read_header(&server, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(err, HeaderError::Timeout, "{sent:?}");
        drop(client);
    }
}

#[tokio::test]
async fn many_slow_connections_progress_together_on_one_thread() {
    // 64 peers each dribble their header a byte at a time, interleaved:
    // none may wait for another (the reader never blocks the loop).
    const PEERS: usize = 64;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..PEERS {
        let client = TcpStream::connect(addr).await.unwrap();
        client.set_nodelay(true).unwrap();
        clients.push(client);
        let (server, _) = listener.accept().await.unwrap();
        readers.spawn(async move {
            let parsed = read_header(&server, PATIENT).await;
            (i, parsed, server)
        });
    }
    let headers: Vec<_> = (0..PEERS)
        .map(|i| {
            let h = tcp(&format!("10.0.0.{i}:{}", 1000 + i), "10.9.9.9:80");
            let v = if i % 2 == 0 { Version::V1 } else { Version::V2 };
            h.encode(v).to_vec()
        })
        .collect();
    let longest = headers.iter().map(Vec::len).max().unwrap();
    for at in 0..longest {
        for (client, h) in clients.iter_mut().zip(&headers) {
            if let Some(b) = h.get(at) {
                client.write_all(&[*b]).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for client in &mut clients {
        client.write_all(b"!").await.unwrap();
    }
    let mut done = 0;
    while let Some(joined) = readers.join_next().await {
        let (i, parsed, server) = joined.unwrap();
        let parsed = parsed.unwrap();
        assert_eq!(parsed.header.source().unwrap().port() as usize, 1000 + i);
        let mut first = [0u8; 1];
        let n = tokio::time::timeout(PATIENT, server.peek(&mut first))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&first[..n], b"!");
        done += 1;
    }
    assert_eq!(done, PEERS);
}

#[tokio::test]
async fn a_pending_read_holds_little_memory() {
    // The future is what a pending connection costs while its header
    // arrives (no heap unless the header is longer than the peek buffer).
    let (_client, server) = pair().await;
    let pending = read_header(&server, PATIENT);
    let size = std::mem::size_of_val(&pending);
    assert!(size <= 1024, "{size} bytes");
}

/// A read stopped half-way (the front freezing for an upgrade cancels it)
/// must have consumed nothing: the next front reads the header anew from
/// its first byte. The case that once failed: a v2 header longer than one
/// peek, of which only the first part had arrived.
#[tokio::test]
async fn a_cancelled_read_leaves_every_byte_for_the_next_one() {
    let mut long = V2_SIGNATURE.to_vec();
    long.extend_from_slice(&[0x21, 0x11]);
    long.extend_from_slice(&(12u16 + 603).to_be_bytes());
    long.extend_from_slice(&[10, 1, 2, 3, 10, 4, 5, 6, 0x1f, 0x90, 0, 80]);
    long.extend_from_slice(&[0xe0, 0x02, 0x58]);
    long.extend(std::iter::repeat_n(b'y', 600));
    let short = sample().encode(Version::V1).to_vec();
    for (wire, cut) in [(&long, 400), (&long, 20), (&short, 10)] {
        let (mut client, mut server) = pair().await;
        client.write_all(&wire[..cut]).await.unwrap();
        // (Bytes queued at the server, looked at directly: the cancelled
        // read below leaves tokio's readiness cleared.)
        let queued = || {
            let mut peek = vec![0u8; wire.len()];
            let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
            rustix::net::recv(&server, &mut peek[..], flags).map_or(0, |(n, _)| n)
        };
        // Wait until the first part is queued at the server...
        let deadline = tokio::time::Instant::now() + PATIENT;
        while queued() < cut {
            assert!(tokio::time::Instant::now() < deadline, "first part");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // ...let a read see it, then cancel that read.
        {
            let mut first = std::pin::pin!(read_header(&server, PATIENT));
            assert!(
                tokio::time::timeout(Duration::from_millis(50), &mut first)
                    .await
                    .is_err(),
                "half a header cannot be read"
            );
        }
        assert_eq!(queued(), cut, "the cancelled read took bytes");
        client.write_all(&wire[cut..]).await.unwrap();
        client.write_all(b"app").await.unwrap();
        client.shutdown().await.unwrap();
        let parsed = read_header(&server, PATIENT).await.unwrap();
        assert_eq!(parsed.len, wire.len(), "cut at {cut}");
        assert_eq!(read_rest(&mut server).await, b"app", "cut at {cut}");
    }
}
