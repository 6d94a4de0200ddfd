//! Per-connection cost of the access list lookup (`Acl::admits`) with 10
//! and 10,000 CIDRs, IPv4 and IPv6 clients, and of rebuilding a list of
//! 10,000 after one `ctl acl` edit. Also `proxy_protocol` encode and
//! decode, which run once per connection with `send-proxy`/`accept-proxy`.
//!
//! `cargo bench --bench acl -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rrproxy::acl::{Acl, Action, Cidr};
use rrproxy::policy::mix64;
use rrproxy::proxy_protocol::{Header, Version, decode};

const SIZES: [usize; 2] = [10, 10_000];

/// `n` deny entries, half IPv4 (/16 to /32) and half IPv6 (/32 to /128),
/// spread over the address space; an allow list of the same shape.
fn lists(n: usize) -> (Vec<Cidr>, Vec<Cidr>) {
    let cidr = |i: u64| {
        let h = mix64(i);
        if i % 2 == 0 {
            let prefix = 16 + (h % 17) as u8;
            Cidr::new(Ipv4Addr::from((h >> 32) as u32).into(), prefix).unwrap()
        } else {
            let prefix = 32 + (h % 97) as u8;
            let addr = (u128::from(h) << 64) | u128::from(mix64(!h));
            Cidr::new(Ipv6Addr::from(addr).into(), prefix).unwrap()
        }
    };
    let deny = (0..n as u64).map(cidr).collect();
    let allow = (0..n as u64).map(|i| cidr(i + (1 << 40))).collect();
    (allow, deny)
}

/// 65,536 client addresses, IPv4 or IPv6, cycled through.
fn clients(v6: bool) -> Vec<IpAddr> {
    (0..1u64 << 16)
        .map(|i| {
            let h = mix64(i ^ 0x5555);
            if v6 {
                IpAddr::V6(Ipv6Addr::from((u128::from(h) << 64) | u128::from(i)))
            } else {
                IpAddr::V4(Ipv4Addr::from(h as u32))
            }
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    for (family, v6) in [("ipv4", false), ("ipv6", true)] {
        let ips = clients(v6);
        let mut g = c.benchmark_group(format!("acl/admits_{family}"));
        for n in SIZES {
            let (allow, deny) = lists(n);
            let acl = Acl::new(allow, deny);
            let mut k = 0;
            g.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    k = (k + 1) & 0xffff;
                    black_box(acl.admits(ips[k]))
                })
            });
        }
        g.finish();
    }
}

fn edits(c: &mut Criterion) {
    let (allow, deny) = lists(10_000);
    let acl = Acl::new(allow, deny);
    let extra: Cidr = "192.0.2.0/24".parse().unwrap();
    c.bench_function("acl/edit_10000", |b| {
        b.iter(|| black_box(acl.with(Action::Deny, black_box(extra))))
    });
}

fn proxy_header(c: &mut Criterion) {
    let h = Header::Tcp {
        source: "[2001:db8::7]:40000".parse().unwrap(),
        destination: "[2001:db8::1]:443".parse().unwrap(),
    };
    for v in [Version::V1, Version::V2] {
        c.bench_function(&format!("proxy_protocol/encode_{v}"), |b| {
            b.iter(|| black_box(black_box(h).encode(v)))
        });
        let wire = h.encode(v).to_vec();
        c.bench_function(&format!("proxy_protocol/decode_{v}"), |b| {
            b.iter(|| black_box(decode(black_box(&wire))))
        });
    }
}

criterion_group!(benches, lookups, edits, proxy_header);
criterion_main!(benches);
