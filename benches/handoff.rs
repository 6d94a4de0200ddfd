//! The front's per-connection work, accept excluded: pick a worker and a
//! backend, encode the handoff, send the descriptor over SCM_RIGHTS, close
//! the front's copy. A separate process plays the worker: it receives and
//! closes. (A thread in this process would share the descriptor table, and
//! its `recvmsg` installing descriptors would contend with the sender's
//! `close` on the table's lock, which the real front and workers, being
//! separate processes, never do.)
//!
//! `dup` stands in for `accept` to produce a fresh descriptor each time; its
//! cost is included, so the figures are pessimistic; `dup_close_only`
//! measures it alone.
//!
//! Batch sizes: how many connections share one `sendmsg`. The front sends a
//! worker's batch when its accept loop reaches EAGAIN, so under load the
//! size depends on how many connections wait in the backlog per wake-up;
//! `benches/batches.bt` measures that distribution on a running front (see
//! benches/README.md, "Front handoffs"). The sizes run here default to
//! 1, 2, 3, 4, 6, 8, 16, 32 and 64 (`MAX_FDS`); set
//! `RRPROXY_BENCH_BATCHES="1 2 4"` to choose others.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use rrproxy::channel::fdpass::{self, Received};
use rrproxy::channel::{Down, Fallbacks, Handoff, MAX_FDS, MAX_FRAME};
use rrproxy::policy::{self, BackendView, PolicyName, WorkerView};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Set in the environment of the re-executed bench binary that plays the
/// worker: the path of the front's Unix socket to connect to.
const DRAIN_ENV: &str = "RRPROXY_BENCH_HANDOFF_DRAIN";

/// The worker's side, in the child process: receive frames and close the
/// descriptors that arrive until the front closes the channel.
fn drain_child(path: &Path) -> std::io::Result<()> {
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&sock, &SocketAddrUnix::new(path)?)?;
    fdpass::set_nonblocking(sock.as_fd())?;
    let mut buf = Box::new([0u8; MAX_FRAME]);
    let mut fds = Vec::new();
    let mut pollfd = [PollFd::new(&sock, PollFlags::IN)];
    loop {
        fds.clear(); // closes what arrived
        match fdpass::recv_raw(sock.as_fd(), &mut buf, &mut fds) {
            Ok(Received::Frame(_)) => {}
            Ok(Received::Closed) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                rustix::event::poll(&mut pollfd, None)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The front's side: a channel to a worker process (this binary, re-run
/// as the drain), connected through a Unix socket in the temp directory.
struct Drain {
    child: Child,
    front: OwnedFd,
    path: PathBuf,
}

impl Drain {
    fn start() -> Drain {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "rrproxy-bench-handoff-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .expect("socket");
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path).expect("path")).expect("bind");
        rustix::net::listen(&listener, 1).expect("listen");
        let mut child = Command::new(std::env::current_exe().expect("current_exe"))
            .env(DRAIN_ENV, &path)
            .spawn()
            .expect("spawn the drain process");
        // Wait (bounded) for the child to connect.
        let deadline = Instant::now() + Duration::from_secs(10);
        let front = loop {
            match rustix::net::accept_with(&listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)
            {
                Ok(fd) => break fd,
                Err(rustix::io::Errno::AGAIN) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("the drain process exited before connecting: {status}");
                    }
                    let mut pfd = [PollFd::new(&listener, PollFlags::IN)];
                    let wait = Timespec {
                        tv_sec: 0,
                        tv_nsec: 50_000_000,
                    };
                    let _ = rustix::event::poll(&mut pfd, Some(&wait));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the drain process did not connect: {e}");
                }
            }
        };
        Drain { child, front, path }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        // Closing the front's end ends the child; kill it if it lingers.
        let _ = rustix::net::shutdown(&self.front, rustix::net::Shutdown::Both);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn handoff(c: &mut Criterion) {
    let views: Vec<BackendView> = (0..3)
        .map(|i| BackendView {
            key: policy::backend_key(&format!("10.0.0.{i}:80")),
            weight: 1,
            routable: true,
            active: 0,
            ramp: policy::RAMP_FULL,
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

    let batches: Vec<usize> = std::env::var("RRPROXY_BENCH_BATCHES")
        .ok()
        .map(|v| {
            v.split_whitespace()
                .filter_map(|b| b.parse().ok())
                .filter(|&b| (1..=MAX_FDS).contains(&b))
                .collect()
        })
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 2, 3, 4, 6, 8, 16, 32, MAX_FDS]);
    let mut group = c.benchmark_group("front_handoff");
    for batch in batches {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("batch_{batch}"), |b| {
            let drain = Drain::start();
            let front = drain.front.as_fd();
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
                        // As the front does: two fallbacks (--retries 2).
                        let mut next = [0usize; 2];
                        let n = pol.fallbacks(client, backend, &views, &mut next);
                        let ids = next.map(|i| i as u32);
                        owned.push(template.as_fd().try_clone_to_owned().unwrap());
                        handoffs.push(Handoff {
                            fallbacks: Fallbacks::new(&ids[..n]),
                            conn: i * batch as u64 + k as u64,
                            backend: black_box(backend as u32 + slot as u32),
                            client: SocketAddr::new(client, 40000),
                            destination: None,
                        });
                    }
                    Down::encode_conns(&handoffs, &mut frame).unwrap();
                    // As the front's `try_send_owned`: borrowed on the stack,
                    // no allocation per batch.
                    let mut fds = [front; MAX_FDS];
                    for (b, fd) in fds.iter_mut().zip(&owned) {
                        *b = fd.as_fd();
                    }
                    loop {
                        match fdpass::send_raw(front, &frame, &fds[..owned.len()]) {
                            Ok(()) => break,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                std::thread::yield_now()
                            }
                            Err(e) => panic!("send: {e}"),
                        }
                    }
                    owned.clear(); // the front closes its copies
                }
                start.elapsed()
            });
            drop(drain);
        });
    }
    // What the stand-in for accept costs on its own (dup + close), to read
    // the handoff figures net of it.
    group.throughput(Throughput::Elements(1));
    group.bench_function("dup_close_only", |b| {
        b.iter(|| drop(black_box(template.as_fd().try_clone_to_owned().unwrap())))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = handoff
}
fn main() {
    if let Some(path) = std::env::var_os(DRAIN_ENV) {
        if let Err(e) = drain_child(Path::new(&path)) {
            eprintln!("handoff drain: {e}");
            std::process::exit(1);
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
