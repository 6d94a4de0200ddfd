//! The front's per-connection work, accept excluded: pick a worker and a
//! backend, encode the handoff, send the descriptor over SCM_RIGHTS, close
//! the front's copy. A thread plays the worker: it receives and closes.
//!
//! `dup` stands in for `accept` to produce a fresh descriptor each time; its
//! cost (~0.1 µs) is included, so the figure is slightly pessimistic.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rrproxy::channel::fdpass::{self, Received};
use rrproxy::channel::{Down, Handoff, MAX_FRAME};
use rrproxy::policy::{self, BackendView, PolicyName, WorkerView};

fn drain(worker: OwnedFd) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = Box::new([0u8; MAX_FRAME]);
        let mut fds = Vec::new();
        let mut pollfd = [rustix::event::PollFd::new(
            &worker,
            rustix::event::PollFlags::IN,
        )];
        loop {
            fds.clear(); // closes what arrived
            match fdpass::recv_raw(worker.as_fd(), &mut buf, &mut fds) {
                Ok(Received::Frame(_)) => {}
                Ok(Received::Closed) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let _ = rustix::event::poll(&mut pollfd, None);
                }
                Err(_) => return,
            }
        }
    })
}

fn handoff(c: &mut Criterion) {
    let views: Vec<BackendView> = (0..3)
        .map(|i| BackendView {
            key: policy::backend_key(&format!("10.0.0.{i}:80")),
            weight: 1,
            routable: true,
            active: 0,
        })
        .collect();
    let workers = vec![
        WorkerView {
            routable: true,
            active: 0
        };
        2
    ];
    let template = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    let mut group = c.benchmark_group("front_handoff");
    for batch in [1usize, 16] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("batch_{batch}"), |b| {
            let (front, worker) = fdpass::pair().unwrap();
            let reader = drain(worker);
            let mut pol = policy::build(
                PolicyName::RoundRobin,
                &views,
                &policy::PolicyOptions::default(),
            );
            let mut frame = Vec::with_capacity(1024);
            let mut handoffs = Vec::with_capacity(batch);
            let mut owned: Vec<OwnedFd> = Vec::with_capacity(batch);
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    handoffs.clear();
                    for k in 0..batch {
                        let slot = pol.pick_worker(client, &workers).unwrap();
                        let backend = pol.pick_backend(client, &views).unwrap();
                        owned.push(template.as_fd().try_clone_to_owned().unwrap());
                        handoffs.push(Handoff {
                            conn: i * batch as u64 + k as u64,
                            backend: black_box(backend as u32 + slot as u32),
                            client: SocketAddr::new(client, 40000),
                        });
                    }
                    Down::encode_conns(&handoffs, &mut frame).unwrap();
                    let fds: Vec<BorrowedFd<'_>> = owned.iter().map(|f| f.as_fd()).collect();
                    loop {
                        match fdpass::send_raw(front.as_fd(), &frame, &fds) {
                            Ok(()) => break,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                std::thread::yield_now()
                            }
                            Err(e) => panic!("send: {e}"),
                        }
                    }
                    drop(fds);
                    owned.clear(); // the front closes its copies
                }
                start.elapsed()
            });
            drop(front);
            reader.join().unwrap();
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = handoff
}
criterion_main!(benches);
