//! Per-connection cost of each policy's picks, and of sticky's rebuild.
//!
//! `cargo bench --bench policy -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rrproxy::policy::{
    BackendView, Policy, PolicyName, PolicyOptions, Sticky, WorkerView, backend_key, build, mix64,
};

const SIZES: [usize; 3] = [3, 32, 1000];

/// Backends with mixed weights (1..=4) and some load, all routable.
fn views(n: usize) -> Vec<BackendView> {
    (0..n)
        .map(|i| BackendView {
            key: backend_key(&format!("10.1.{}.{}:80", i / 256, i % 256)),
            weight: 1 + (i % 4) as u32,
            routable: true,
            active: mix64(i as u64) % 100,
            ramp: rrproxy::policy::RAMP_FULL,
        })
        .collect()
}

fn workers(n: usize) -> Vec<WorkerView> {
    (0..n)
        .map(|i| WorkerView {
            routable: true,
            active: mix64(!(i as u64)) % 100,
        })
        .collect()
}

/// 65,536 distinct client addresses, cycled through.
fn clients() -> Vec<IpAddr> {
    (0..1u64 << 16)
        .map(|i| IpAddr::V4(Ipv4Addr::from(mix64(i) as u32)))
        .collect()
}

fn picks(c: &mut Criterion) {
    let ips = clients();
    let opts = PolicyOptions::default();
    for name in PolicyName::ALL {
        let mut g = c.benchmark_group(format!("{name}/pick_backend"));
        for n in SIZES {
            let v = views(n);
            let mut p = build(name, &v, &opts);
            // Warm: every client's bucket seen once (sticky's cache).
            for &ip in &ips {
                black_box(p.pick_backend(ip, &v));
            }
            let mut k = 0;
            g.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    k = (k + 1) & 0xffff;
                    black_box(p.pick_backend(ips[k], black_box(&v)))
                })
            });
        }
        g.finish();
        let mut g = c.benchmark_group(format!("{name}/pick_worker"));
        for n in [2, 32] {
            let w = workers(n);
            let mut p = build(name, &views(3), &opts);
            let mut k = 0;
            g.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    k = (k + 1) & 0xffff;
                    black_box(p.pick_worker(ips[k], black_box(&w)))
                })
            });
        }
        g.finish();
    }
}

fn sticky_rebuild(c: &mut Criterion) {
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut g = c.benchmark_group("sticky/rebuild");
    for n in SIZES {
        let v = views(n);
        let mut s = Sticky::new(128);
        s.rebuild(&v);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| s.rebuild(black_box(&v)))
        });
    }
    g.finish();
    // A rebuild then the first pick of a bucket: the cold-cache cost.
    let mut g = c.benchmark_group("sticky/rebuild+cold_pick");
    for n in SIZES {
        let v = views(n);
        let mut s = Sticky::new(128);
        s.rebuild(&v);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                s.rebuild(black_box(&v));
                black_box(s.pick_backend(ip, &v))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, picks, sticky_rebuild);
criterion_main!(benches);
