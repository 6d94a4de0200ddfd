//! What the access log costs per connection, in parts: on the worker's
//! event loop (an `Entry` dropped: two clock reads and a copy into the
//! queue; with the log off, a flag check) and on the writer thread (one
//! line formatted, text or JSON). The whole, on a real workload next to
//! HAProxy, is `benches/accesslog.sh`.
//!
//! `cargo bench --bench access_log -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use rrproxy::access_log::ConnBytes;
use rrproxy::access_log::{AccessLog, End, Entry, Record, Target, format};
use rrproxy::stats::Table;

fn record() -> Record {
    Record {
        time: SystemTime::now(),
        conn: 123_456,
        client: "[2001:db8::7]:40000".parse().unwrap(),
        backend: Some("10.0.0.5:8080".parse().unwrap()),
        bytes_up: 78,
        bytes_down: 1_234_567,
        duration: Duration::from_micros(4_512),
        end: End::BackendClosed,
    }
}

fn event_loop(c: &mut Criterion) {
    let table = Arc::new(Table::create(1, 1, 1).unwrap());
    let bytes = ConnBytes::default();
    let client = "127.0.0.2:40000".parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let off = AccessLog::new(table.clone(), 0, 0);
    c.bench_function("access_log/entry_dropped_log_off", |b| {
        b.iter(|| {
            let mut e = Entry::new(&off, &bytes, tokio::time::Instant::now(), 1, client);
            e.end = Some(End::ClientClosed);
            drop(black_box(e));
        })
    });
    // Queued, not dropped: timed in runs of 2,000 (less than the queue
    // holds), each followed, untimed, by a pause in which the writer
    // (writing to /dev/null) empties the queue.
    let on = AccessLog::new(table.clone(), 0, 0);
    on.set(Target::File("/dev/null".into()), false);
    let mut group = c.benchmark_group("access_log");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_millis(300));
    group.bench_function("entry_dropped_log_on_queued", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(2000);
                let began = std::time::Instant::now();
                for _ in 0..n {
                    let mut e = Entry::new(&on, &bytes, tokio::time::Instant::now(), 1, client);
                    e.backend = Some(client);
                    e.end = Some(End::ClientClosed);
                    drop(black_box(e));
                }
                timed += began.elapsed();
                left -= n;
                std::thread::sleep(rrproxy::access_log::PAUSE + Duration::from_millis(10));
            }
            timed
        })
    });
    group.finish();
    let dropped = table
        .cell(0)
        .get(rrproxy::stats::ProcWord::AccessLogDropped);
    assert_eq!(dropped, 0, "the queue never filled");
}

fn writer(c: &mut Criterion) {
    let r = record();
    let mut out = String::with_capacity(64 * 1024);
    for (name, json) in [("text", false), ("json", true)] {
        c.bench_function(&format!("access_log/format_line_{name}"), |b| {
            b.iter(|| {
                if out.len() > 60_000 {
                    out.clear();
                }
                format::line(&mut out, black_box(&r), 3, json);
            })
        });
    }
}

criterion_group!(benches, event_loop, writer);
criterion_main!(benches);
