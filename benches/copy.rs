//! The worker's copy path: `worker::pump`, the loop that moves a
//! connection's bytes both ways, run as a worker runs it (one
//! single-threaded tokio runtime on its own thread) between a real client
//! socket and a real backend socket on loopback.
//!
//! Two shapes, each for `--splice off` (buffered copies), `on` (splice(2)
//! through a pipe) and `auto` (the default), plus `direct` (client and
//! backend connected to each other, no proxy: the ceiling):
//! - `bulk_download`: the backend writes 8 MiB, the client reads it all;
//! - `round_trip_64B`: the client sends 64 bytes, the backend echoes them,
//!   the client reads them back (a keep-alive request/response).
//!
//! Compare the modes with each other and with `direct` in the same run;
//! absolute figures move with the machine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rrproxy::channel::Splice;
use rrproxy::worker::Meter;
use rrproxy::worker::pump::{ConnBytes, pump};

const BULK: usize = 8 << 20;
const SMALL: usize = 64;

/// A client and a backend socket joined through a pump on its own thread
/// (or directly, when `mode` is `None`).
struct Path {
    client: TcpStream,
    backend: TcpStream,
    pump: Option<JoinHandle<()>>,
}

fn connect(mode: Option<Splice>) -> Path {
    let backends = TcpListener::bind("127.0.0.1:0").unwrap();
    let Some(mode) = mode else {
        let client = TcpStream::connect(backends.local_addr().unwrap()).unwrap();
        let (backend, _) = backends.accept().unwrap();
        client.set_nodelay(true).unwrap();
        backend.set_nodelay(true).unwrap();
        return Path {
            client,
            backend,
            pump: None,
        };
    };
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let front_addr = front.local_addr().unwrap();
    let backend_addr = backends.local_addr().unwrap();
    let pump = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            front.set_nonblocking(true).unwrap();
            let front = tokio::net::TcpListener::from_std(front).unwrap();
            let (mut client, _) = front.accept().await.unwrap();
            let mut backend = tokio::net::TcpStream::connect(backend_addr).await.unwrap();
            client.set_nodelay(true).unwrap();
            backend.set_nodelay(true).unwrap();
            let count = std::sync::atomic::AtomicU64::new(0);
            let conn = ConnBytes::default();
            let meter = Meter {
                from_clients: &count,
                to_clients: &count,
                to_backend: &count,
                from_backend: &count,
                conn: &conn,
            };
            pump(
                &mut client,
                &mut backend,
                Duration::from_secs(60),
                None,
                mode,
                &meter,
            )
            .await;
        });
    });
    let client = TcpStream::connect(front_addr).unwrap();
    let (backend, _) = backends.accept().unwrap();
    client.set_nodelay(true).unwrap();
    backend.set_nodelay(true).unwrap();
    Path {
        client,
        backend,
        pump: Some(pump),
    }
}

impl Path {
    /// Close both ends; the pump sees EOF both ways and returns.
    fn finish(self) {
        drop(self.client);
        drop(self.backend);
        if let Some(pump) = self.pump {
            pump.join().unwrap();
        }
    }
}

const MODES: [(&str, Option<Splice>); 4] = [
    ("direct", None),
    ("off", Some(Splice::Off)),
    ("on", Some(Splice::On)),
    ("auto", Some(Splice::Auto)),
];

fn bulk(c: &mut Criterion) {
    let mut group = c.benchmark_group("bulk_download");
    group.throughput(Throughput::Bytes(BULK as u64));
    for (name, mode) in MODES {
        group.bench_function(name, |b| {
            let mut path = connect(mode);
            // The backend writes BULK bytes each time it is asked to.
            let (ask, asked) = mpsc::channel::<()>();
            let mut backend = path.backend.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                let data = vec![0x5au8; BULK];
                while asked.recv().is_ok() {
                    backend.write_all(&data).unwrap();
                }
            });
            let mut buf = vec![0u8; 256 * 1024];
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    ask.send(()).unwrap();
                    let mut left = BULK;
                    while left > 0 {
                        let n = path.client.read(&mut buf[..left.min(256 * 1024)]).unwrap();
                        assert!(n > 0, "the connection closed mid-transfer");
                        left -= n;
                    }
                }
                start.elapsed()
            });
            drop(ask);
            writer.join().unwrap();
            path.backend.shutdown(std::net::Shutdown::Write).unwrap();
            path.finish();
        });
    }
    group.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip_64B");
    group.throughput(Throughput::Elements(1));
    for (name, mode) in MODES {
        group.bench_function(name, |b| {
            let path = connect(mode);
            // The backend echoes every SMALL-byte message until EOF.
            let mut backend = path.backend.try_clone().unwrap();
            let echo = std::thread::spawn(move || {
                let mut msg = [0u8; SMALL];
                while backend.read_exact(&mut msg).is_ok() {
                    if backend.write_all(&msg).is_err() {
                        return;
                    }
                }
            });
            let mut client = path.client.try_clone().unwrap();
            let msg = [0xa5u8; SMALL];
            let mut back = [0u8; SMALL];
            b.iter(|| {
                client.write_all(&msg).unwrap();
                client.read_exact(&mut back).unwrap();
            });
            assert_eq!(back, msg);
            client.shutdown(std::net::Shutdown::Write).unwrap();
            echo.join().unwrap();
            drop(client);
            path.finish();
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bulk, round_trip
}
criterion_main!(benches);
