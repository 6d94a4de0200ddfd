//! What SNI routing costs per connection, to decide where the peek
//! happens (DESIGN.md, "SNI routing: where the peek happens"):
//!
//! - `parse/*`: [`rrproxy::sni::parse`] over real ClientHellos
//!   (`fuzz/seeds/sni/`): curl's 517 bytes, Chromium's 1,922 (a
//!   post-quantum key share), OpenSSL's 5,892 (a long ALPN list), and the
//!   latter re-split into 1 KiB records.
//! - `front/look`: what a front adds per connection when it reads the
//!   hello itself and the hello is already queued (the usual case, and
//!   always with `--defer-accept`): one
//!   [`rrproxy::sni::try_peek_client_hello`] on the accepted socket.
//! - `front/register`: registering the socket with the event loop and
//!   deregistering it, what a connection whose hello is not there yet
//!   adds before it can wait; `front/peek`: the same with
//!   [`rrproxy::sni::peek_client_hello`] in between (hello queued: its
//!   first look decides, no wait).
//! - `front/query`: the front's share if a worker peeked instead and
//!   asked the front which backend to use: read a 16-byte question off a
//!   Unix socket and write a 16-byte answer (both without waiting).
//!
//! Then it prints how many `recv(MSG_PEEK)` calls a connection took, for
//! a hello queued before the peek, written while it waits, and written in
//! three segments 1 ms apart.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use rrproxy::sni::{Hello, peek_client_hello, try_peek_client_hello};

const CURL: &[u8] = include_bytes!("../fuzz/seeds/sni/curl");
const CHROMIUM: &[u8] = include_bytes!("../fuzz/seeds/sni/chromium");
const BIG: &[u8] = include_bytes!("../fuzz/seeds/sni/openssl_big_alpn");

/// Connections set up per timed batch (two descriptors each).
const BATCH: u64 = 200;

/// `wire`'s handshake bytes in records of `size` bytes.
fn resplit(wire: &[u8], size: usize) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut at = 0;
    while at + 5 <= wire.len() {
        let n = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        payload.extend_from_slice(&wire[at + 5..at + 5 + n]);
        at += 5 + n;
    }
    let mut out = Vec::new();
    for chunk in payload.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let split = resplit(BIG, 1024);
    for (name, wire) in [
        ("curl_517B", CURL),
        ("chromium_pq_1922B", CHROMIUM),
        ("openssl_alpn_5892B", BIG),
        ("openssl_alpn_6KiB_in_1KiB_records", &split[..]),
    ] {
        assert!(matches!(
            rrproxy::sni::parse(wire),
            rrproxy::sni::Parse::Done(Hello::Found(_))
        ));
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| b.iter(|| rrproxy::sni::parse(black_box(wire))));
    }
    g.finish();
}

/// `n` accepted loopback connections whose client has sent `hello` (all
/// of it queued on the accepted side), with their clients.
fn connections(listener: &TcpListener, n: u64, hello: &[u8]) -> Vec<(TcpStream, TcpStream)> {
    let addr = listener.local_addr().unwrap();
    let mut conns = Vec::new();
    let mut buf = vec![0u8; hello.len()];
    for _ in 0..n {
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(hello).unwrap();
        let (server, _) = listener.accept().unwrap();
        while server.peek(&mut buf).unwrap() < hello.len() {}
        server.set_nonblocking(true).unwrap();
        conns.push((server, client));
    }
    conns
}

fn bench_front(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut g = c.benchmark_group("front");
    g.throughput(Throughput::Elements(1));
    // What the front does with each connection, timed over a batch.
    for name in ["look", "register", "peek"] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(BATCH);
                    left -= n;
                    let conns = connections(&listener, n, CURL);
                    let mut kept = Vec::with_capacity(conns.len());
                    total += rt.block_on(async {
                        let start = Instant::now();
                        for (server, client) in conns {
                            let server = if name == "look" {
                                black_box(try_peek_client_hello(server.as_fd()).unwrap().unwrap());
                                server
                            } else {
                                let s = tokio::net::TcpStream::from_std(server).unwrap();
                                if name == "peek" {
                                    let p = peek_client_hello(&s, Duration::from_secs(5)).await;
                                    black_box(p.unwrap());
                                }
                                s.into_std().unwrap()
                            };
                            kept.push((server, client));
                        }
                        start.elapsed()
                    });
                    drop(kept);
                }
                total
            })
        });
    }
    g.bench_function("query", |b| {
        let (mut worker, front) = UnixStream::pair().unwrap();
        front.set_nonblocking(true).unwrap();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            let mut question = [0u8; 16];
            let mut replies = vec![0u8; 16 * BATCH as usize];
            while left > 0 {
                let n = left.min(BATCH);
                left -= n;
                worker.write_all(&vec![7u8; 16 * n as usize]).unwrap();
                let start = Instant::now();
                for _ in 0..n {
                    let (got, _) = rustix::net::recv(
                        &front,
                        &mut question[..],
                        rustix::net::RecvFlags::empty(),
                    )
                    .unwrap();
                    assert_eq!(got, 16);
                    rustix::net::send(
                        &front,
                        black_box(&question),
                        rustix::net::SendFlags::empty(),
                    )
                    .unwrap();
                }
                total += start.elapsed();
                worker.read_exact(&mut replies[..16 * n as usize]).unwrap();
            }
            total
        })
    });
    g.finish();
}

/// How a client sends its hello in [`peeks_per_connection`].
#[derive(Clone, Copy, Debug)]
enum Send {
    /// Before the peek starts (queued at accept).
    Queued,
    /// In one write once the peek waits.
    WhileWaiting,
    /// In three segments 1 ms apart.
    ThreePieces,
}

/// Mean `recv(MSG_PEEK)` calls per connection over `n` connections.
fn peeks_per_connection(how: Send, n: u32) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peeks = 0;
        for _ in 0..n {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            client.set_nodelay(true).unwrap();
            let (server, _) = listener.accept().await.unwrap();
            if let Send::Queued = how {
                tokio::io::AsyncWriteExt::write_all(&mut client, CHROMIUM)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let writer = tokio::spawn(async move {
                let pieces: &[&[u8]] = match how {
                    Send::Queued => &[],
                    Send::WhileWaiting => &[CHROMIUM],
                    Send::ThreePieces => {
                        &[&CHROMIUM[..600], &CHROMIUM[600..1200], &CHROMIUM[1200..]]
                    }
                };
                for piece in pieces {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    tokio::io::AsyncWriteExt::write_all(&mut client, piece)
                        .await
                        .unwrap();
                }
                client
            });
            let p = peek_client_hello(&server, Duration::from_secs(5))
                .await
                .unwrap();
            assert!(matches!(p.hello, Hello::Found(_)));
            peeks += p.peeks;
            drop(writer.await.unwrap());
        }
        f64::from(peeks) / f64::from(n)
    })
}

criterion_group!(benches, bench_parse, bench_front);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!(
        "\nrecv(MSG_PEEK) calls per connection (Chromium's 1,922-byte hello, 200 connections):"
    );
    for how in [Send::Queued, Send::WhileWaiting, Send::ThreePieces] {
        println!(
            "  {:<13} {:.2}",
            format!("{how:?}"),
            peeks_per_connection(how, 200)
        );
    }
}
