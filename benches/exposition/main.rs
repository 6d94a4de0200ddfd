//! What a `/metrics` scrape costs with 4 workers and 1,000 backends, and
//! what recording one connection's connect time and lifetime costs a
//! worker.
//!
//! `cargo bench --bench exposition -- --warm-up-time 1 --measurement-time 3`
//!
//! Before the timings it prints the exposition's size and series count,
//! and the time of a scrape over a table that has counted 10 million
//! connections (the renderer's cost does not grow with traffic).
//! `EXPOSITION_DUMP=DIR` writes the exposition to `DIR/hand.prom` (for
//! `promtool check metrics`). `EXPOSITION_RECORD_LOOP=N` records N
//! connections and exits, for callgrind:
//! `valgrind --tool=callgrind --toggle-collect='*record_one*' BENCH_BINARY`.
//!
//! The same table published through `metrics-exporter-prometheus` is
//! measured by `benches/exporter-prototype` (see DESIGN.md, "Metrics
//! exposition").

#[path = "table.rs"]
mod table;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion};
use rrproxy::metrics::render;
use rrproxy::policy::mix64;
use rrproxy::stats::Table;
use table::{BACKENDS, COLUMNS, WORKERS, parse, traffic};

/// One connection's recording in a worker: its connect time on its
/// backend column, then its lifetime (what `serve_conn` does).
#[inline(never)]
fn record_one(table: &Table, col: usize, connect: Duration, lifetime: Duration) {
    let cell = table.cell(0);
    if let Some(c) = cell.col(col) {
        c.opened(connect);
    }
    cell.record_duration(lifetime);
}

/// 1,024 (connect time, lifetime) pairs, cycled through.
fn times() -> Vec<(Duration, Duration)> {
    (0..1024u64)
        .map(|i| {
            let r = mix64(i);
            (
                Duration::from_nanos(30_000 + r % 2_000_000),
                Duration::from_nanos(r % 60_000_000_000),
            )
        })
        .collect()
}

fn record_loop(n: u64) {
    let table = Table::create(WORKERS, COLUMNS, 2 * WORKERS + 4).unwrap();
    let times = times();
    for i in 0..n {
        let (c, d) = times[(i % 1024) as usize];
        record_one(&table, (i % 1000) as usize, black_box(c), black_box(d));
    }
}

fn report() {
    let (table, snap) = table::table();
    traffic(&table, 2, 15_000 / WORKERS as u64);
    let t = Instant::now();
    let text = render(&table, &snap);
    let took = t.elapsed();
    println!(
        "one scrape, {WORKERS} workers, {BACKENDS} backends: {} bytes, {} series, {took:?} (cold)",
        text.len(),
        parse(&text).len()
    );
    if let Some(dir) = std::env::var_os("EXPOSITION_DUMP") {
        let path = std::path::Path::new(&dir).join("hand.prom");
        std::fs::write(&path, &text).unwrap();
        println!("  written to {}", path.display());
    }
    traffic(&table, 3, 10_000_000 / WORKERS as u64);
    let t = Instant::now();
    let text = black_box(render(&table, &snap));
    println!(
        "  with 10,000,000 connections in the table: {:?} ({} bytes)",
        t.elapsed(),
        text.len()
    );
}

fn main() {
    if let Some(n) = std::env::var("EXPOSITION_RECORD_LOOP")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        record_loop(n);
        return;
    }
    report();
    let mut c = Criterion::default().configure_from_args();
    let (table, snap) = table::table();
    let mut g = c.benchmark_group("scrape_4w_1000b");
    g.bench_function("render/idle", |b| {
        b.iter(|| black_box(render(&table, &snap)))
    });
    // 15 s at 1,000 new connections a second between two scrapes.
    let mut seed = 10;
    g.bench_function("render/15k_new", |b| {
        b.iter_batched(
            || {
                seed += 1;
                traffic(&table, seed, 15_000 / WORKERS as u64)
            },
            |()| black_box(render(&table, &snap)),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    let times = times();
    let mut i = 0usize;
    c.bench_function("record_connection", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let (connect, lifetime) = times[i % 1024];
            record_one(
                &table,
                i % BACKENDS,
                black_box(connect),
                black_box(lifetime),
            )
        })
    });
    c.final_summary();
}
