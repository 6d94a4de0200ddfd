//! A prototype of `/metrics` rendered through the `metrics` facade and
//! `metrics-exporter-prometheus`, as the design card first named them:
//! at scrape time the front publishes every series of the statistics
//! table into a `PrometheusRecorder` (counters with `absolute`, gauges with
//! `set`, histograms by recording each observation counted since the last
//! scrape once, at its bucket's upper bound: the recorder takes
//! observations, not bucket counts), then the recorder renders. Measured
//! against rrproxy's own renderer over the same table (4 workers, 1,000
//! backends): time and size of a scrape, whether every series equals the
//! table, whether a removed backend's series leave, and the first scrape
//! of a fresh recorder (a new front after an upgrade) over a table that
//! has counted 10 million connections.
//!
//! `cd benches/exporter-prototype && cargo run --release`
//! (`CARGO_TARGET_DIR=../../target` reuses the main build).
//! `PROTO_SCRAPES=N PROTO_PATH=hand|exporter`: N scrapes of one path and
//! nothing else, for `valgrind --tool=dhat` (allocations per scrape).
//! `EXPOSITION_DUMP=DIR`: both expositions, for `promtool check metrics`.

#[path = "../../exposition/table.rs"]
mod table;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use metrics::{Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;
use rrproxy::metrics::{FAMILIES, Snapshot, render};
use rrproxy::policy::PolicyName;
use rrproxy::stats::{
    self, CONNECT_BOUNDS, Col, ColCell, DURATION_BOUNDS, ProcWord, SlotWord, Table,
};
use table::{BACKENDS, WORKERS, parse, rss_kb, traffic};

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Base plus live cells, for one column word.
fn col_word(table: &Table, cells: &[usize], col: usize, word: &dyn Fn(ColCell<'_>) -> u64) -> u64 {
    word(ColCell::of(table.base(col)))
        + cells
            .iter()
            .filter_map(|&c| table.cell(c).col(col))
            .map(word)
            .sum::<u64>()
}

/// The prototype: every series of the table published into a
/// `PrometheusRecorder` (counters with `absolute`, gauges with `set`,
/// histograms by recording each new observation since the last scrape
/// once, at its bucket's upper bound), then the recorder's own render.
struct ExporterPath {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Per (histogram, backend column, bucket): the count already recorded.
    seen: HashMap<(u8, usize, usize), u64>,
}

static META: Metadata<'static> = Metadata::new("rrproxy", metrics::Level::INFO, None);

impl ExporterPath {
    fn new() -> ExporterPath {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(rrproxy::metrics::BACKEND_CONNECT_SECONDS.into()),
                &CONNECT_BOUNDS.map(secs),
            )
            .unwrap()
            .set_buckets_for_metric(
                Matcher::Full(rrproxy::metrics::CONNECTION_SECONDS.into()),
                &DURATION_BOUNDS.map(secs),
            )
            .unwrap()
            // A series not published by the scrape leaves (a removed
            // backend's): the only way to drop one from this registry.
            .idle_timeout(MetricKindMask::ALL, Some(Duration::from_nanos(1)))
            .build_recorder();
        for (name, kind, help) in FAMILIES {
            let name = KeyName::from(*name);
            let help = SharedString::from(*help);
            match *kind {
                "counter" => recorder.describe_counter(name, None, help),
                "gauge" => recorder.describe_gauge(name, None, help),
                _ => recorder.describe_histogram(name, None, help),
            }
        }
        let handle = recorder.handle();
        ExporterPath {
            recorder,
            handle,
            seen: HashMap::new(),
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>, v: u64) {
        let key = Key::from_parts(name, labels);
        self.recorder.register_counter(&key, &META).absolute(v);
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>, v: f64) {
        let key = Key::from_parts(name, labels);
        self.recorder.register_gauge(&key, &META).set(v);
    }

    /// Record what bucket counts grew by since the last scrape.
    fn histogram(
        &mut self,
        id: (u8, usize),
        name: &'static str,
        labels: Vec<Label>,
        bounds: &[f64],
        counts: &[u64],
    ) {
        let key = Key::from_parts(name, labels);
        let h = self.recorder.register_histogram(&key, &META);
        // Touched even when nothing is new, so the series stays.
        h.record_many(0.0, 0);
        for (i, &count) in counts.iter().enumerate() {
            let seen = self.seen.entry((id.0, id.1, i)).or_insert(0);
            let new = count.saturating_sub(*seen);
            *seen = count;
            let at = bounds
                .get(i)
                .copied()
                .unwrap_or(bounds[bounds.len() - 1] * 2.0);
            h.record_many(at, new as usize);
        }
    }

    /// One scrape: publish the table, render.
    fn scrape(&mut self, table: &Table, snap: &Snapshot) -> String {
        use rrproxy::metrics::*;
        let cells = &snap.cells;
        for (i, s) in snap.slots.iter().enumerate() {
            let w = || vec![Label::new("worker", i.to_string())];
            self.counter(
                WORKER_CONNECTIONS,
                w(),
                stats::get(table.slot(i, SlotWord::Handed)),
            );
            let active: u64 = s
                .cells
                .iter()
                .map(|&c| {
                    let c = table.cell(c);
                    c.get(ProcWord::Handed)
                        .saturating_sub(c.get(ProcWord::Finished))
                })
                .sum();
            self.gauge(WORKER_ACTIVE, w(), active as f64);
            self.counter(
                WORKER_RESTARTS,
                w(),
                stats::get(table.slot(i, SlotWord::Restarts)),
            );
            self.gauge(WORKER_UP, w(), f64::from(u8::from(s.up)));
            let over = |word| {
                s.cells
                    .iter()
                    .map(|&c| table.cell(c).get(word))
                    .sum::<u64>()
            };
            self.counter(
                WORKER_BYTES_IN,
                w(),
                stats::get(table.slot(i, SlotWord::BytesInBase)) + over(ProcWord::BytesIn),
            );
            self.counter(
                WORKER_BYTES_OUT,
                w(),
                stats::get(table.slot(i, SlotWord::BytesOutBase)) + over(ProcWord::BytesOut),
            );
        }
        for b in &snap.backends {
            let l = || vec![Label::new("backend", b.name.clone())];
            let total = |w: Col| col_word(table, cells, b.column, &|c| c.get(w));
            self.counter(BACKEND_CONNECTIONS, l(), total(Col::Conns));
            let active: u64 = cells
                .iter()
                .filter_map(|&c| table.cell(c).col(b.column))
                .map(|c| c.get(Col::Active))
                .sum();
            self.gauge(BACKEND_ACTIVE, l(), active as f64);
            self.gauge(BACKEND_UP, l(), f64::from(u8::from(b.up)));
            self.gauge(BACKEND_WEIGHT, l(), f64::from(b.weight));
            self.counter(BACKEND_BYTES_IN, l(), total(Col::BytesDown));
            self.counter(BACKEND_BYTES_OUT, l(), total(Col::BytesUp));
            self.counter(BACKEND_REDISPATCHES, l(), total(Col::Redispatch));
            self.counter(
                BACKEND_CHECK_FAILURES,
                l(),
                ColCell::of(table.base(b.column)).get(Col::CheckFailures),
            );
            for (reason, w) in [
                ("refused", Col::FailRefused),
                ("timeout", Col::FailTimeout),
                ("other", Col::FailOther),
            ] {
                let mut labels = l();
                labels.push(Label::new("reason", reason));
                self.counter(BACKEND_CONNECT_FAILURES, labels, total(w));
            }
            let counts: Vec<u64> = (0..=CONNECT_BOUNDS.len())
                .map(|i| col_word(table, cells, b.column, &|c| stats::get(c.connect_bucket(i))))
                .collect();
            self.histogram(
                (0, b.column),
                BACKEND_CONNECT_SECONDS,
                l(),
                &CONNECT_BOUNDS.map(secs),
                &counts,
            );
        }
        let counts: Vec<u64> = (0..=DURATION_BOUNDS.len())
            .map(|i| {
                stats::get(table.duration_bucket_base(i))
                    + cells
                        .iter()
                        .map(|&c| stats::get(table.cell(c).duration_bucket(i)))
                        .sum::<u64>()
            })
            .collect();
        self.histogram(
            (1, 0),
            CONNECTION_SECONDS,
            vec![],
            &DURATION_BOUNDS.map(secs),
            &counts,
        );
        // The front's series, as the own renderer writes them.
        use rrproxy::stats::FrontWord as F;
        let front = |w: F| stats::get(table.front(w));
        let over = |w: ProcWord| cells.iter().map(|&c| table.cell(c).get(w)).sum::<u64>();
        for (name, v) in [
            (ACCEPTED, front(F::Accepted)),
            (HANDOFF_FAILURES, front(F::HandoffFailures)),
            (
                REDISPATCHED,
                front(F::Recovered) + front(F::RedispatchedBase) + over(ProcWord::Redispatched),
            ),
            (
                FAILED_CONNECTIONS,
                front(F::FailedFront) + front(F::FailedBase) + over(ProcWord::Failed),
            ),
            (REFUSED_PER_IP, front(F::RefusedPerIp)),
            (DENIED, front(F::Denied)),
            (
                FIRST_BYTE_TIMEOUTS,
                front(F::FirstByteTimeoutsBase) + over(ProcWord::FirstByteTimeouts),
            ),
            (
                LOG_DROPPED,
                front(F::LogDroppedBase) + over(ProcWord::LogDropped),
            ),
            (
                ACCESS_LOG_DROPPED,
                front(F::AccessLogDroppedBase) + over(ProcWord::AccessLogDropped),
            ),
            (POLICY_CHANGES, front(F::PolicyChanges)),
        ] {
            self.counter(name, vec![], v);
        }
        for (reason, w) in [("emfile", F::AcceptEmfile), ("other", F::AcceptOther)] {
            self.counter(ACCEPT_ERRORS, vec![Label::new("reason", reason)], front(w));
        }
        for (reason, w) in rrproxy::proxy_protocol::HeaderError::REASONS
            .iter()
            .zip(F::HEADER_ERRORS)
        {
            self.counter(
                PROXY_HEADER_ERRORS,
                vec![Label::new("reason", *reason)],
                front(w),
            );
        }
        let actives: Vec<u64> = snap
            .slots
            .iter()
            .map(|s| {
                s.cells
                    .iter()
                    .map(|&c| {
                        let c = table.cell(c);
                        c.get(ProcWord::Handed)
                            .saturating_sub(c.get(ProcWord::Finished))
                    })
                    .sum()
            })
            .collect();
        let pending = front(F::Pending);
        for (name, v) in [
            (ACTIVE, (actives.iter().sum::<u64>() + pending) as f64),
            (OPEN_FDS, rrproxy::sys::open_fd_count().unwrap_or(0) as f64),
            (MAX_FDS, front(F::MaxFds) as f64),
            (WORKER_LIMIT, front(F::WorkerLimit) as f64),
            (PENDING, pending as f64),
            (ACCEPT_PAUSED, front(F::Paused) as f64),
        ] {
            self.gauge(name, vec![], v);
        }
        let sum: u64 = actives.iter().sum();
        let ratio = match actives.iter().max() {
            Some(&max) if sum > 0 => max as f64 * actives.len() as f64 / sum as f64,
            _ => 1.0,
        };
        self.gauge(IMBALANCE, vec![], ratio);
        for p in PolicyName::ALL {
            let on = snap.policy == Some(p);
            self.gauge(
                POLICY_INFO,
                vec![Label::new("policy", p.as_str())],
                f64::from(u8::from(on)),
            );
        }
        self.gauge(
            BUILD_INFO,
            vec![
                Label::new("version", rrproxy::version::VERSION),
                Label::new("build", rrproxy::version::build_id()),
            ],
            1.0,
        );
        self.handle.render()
    }
}

/// Median wall time of `n` runs of `f`.
fn median(n: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[n / 2]
}

fn main() {
    let (table, snap) = table::table();
    if let Ok(n) = std::env::var("PROTO_SCRAPES") {
        let n: usize = n.parse().unwrap();
        let mut exp = ExporterPath::new();
        match std::env::var("PROTO_PATH").as_deref() {
            Ok("exporter") => (0..n).for_each(|_| drop(black_box(exp.scrape(&table, &snap)))),
            _ => (0..n).for_each(|_| drop(black_box(render(&table, &snap)))),
        }
        return;
    }
    let mut exp = ExporterPath::new();
    exp.scrape(&table, &snap);
    traffic(&table, 2, 15_000 / WORKERS as u64);
    let hand = render(&table, &snap);
    let mine = exp.scrape(&table, &snap);
    println!("{WORKERS} workers, {BACKENDS} backends, 15,000 connections since the last scrape:");
    let (h, e) = (parse(&hand), parse(&mine));
    println!(
        "  own renderer:        {} bytes, {} series",
        hand.len(),
        h.len()
    );
    println!(
        "  metrics + exporter:  {} bytes, {} series",
        mine.len(),
        e.len()
    );
    let mut differ: Vec<(String, f64, f64)> = e
        .iter()
        .filter_map(|(k, v)| {
            let hv = *h.get(k)?;
            ((hv - v).abs() > 1e-9 * hv.abs().max(1.0)).then(|| (k.clone(), hv, *v))
        })
        .collect();
    differ.sort_by(|a, b| a.0.cmp(&b.0));
    let sums = differ.iter().filter(|d| d.0.contains("_sum{")).count();
    let only_hand = h.keys().filter(|k| !e.contains_key(*k)).count();
    println!(
        "  exporter series that differ from the table: {} ({sums} of them _sum); own-renderer series it lacks: {only_hand}",
        differ.len()
    );
    for (k, hv, ev) in differ.iter().take(2) {
        println!("    {k}: table {hv}, exporter {ev}");
    }
    if let Some(dir) = std::env::var_os("EXPOSITION_DUMP") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::write(dir.join("hand.prom"), &hand).unwrap();
        std::fs::write(dir.join("exporter.prom"), &mine).unwrap();
        println!("  written to {}", dir.display());
    }
    // Scrape time, median of 30, idle and with 15,000 new connections.
    let t_hand = median(30, || drop(black_box(render(&table, &snap))));
    let t_exp = median(30, || drop(black_box(exp.scrape(&table, &snap))));
    println!("  idle scrape (median of 30): own {t_hand:?}, exporter {t_exp:?}");
    let mut seed = 100;
    let t_hand = median(30, || {
        seed += 1;
        traffic(&table, seed, 15_000 / WORKERS as u64);
        drop(black_box(render(&table, &snap)))
    });
    let t_exp = median(30, || {
        seed += 1;
        traffic(&table, seed, 15_000 / WORKERS as u64);
        drop(black_box(exp.scrape(&table, &snap)))
    });
    println!("  15,000 new + scrape (median of 30): own {t_hand:?}, exporter {t_exp:?}");
    // A removed backend: gone from the next scrape?
    let mut fewer = snap.clone();
    let gone = fewer.backends.pop().unwrap().name;
    let out = exp.scrape(&table, &fewer);
    println!(
        "  a removed backend's series in the next scrape: {}",
        out.matches(&format!("\"{gone}\"")).count()
    );
    // A new front (fresh recorder) over a table with 10 million.
    traffic(&table, 3, 10_000_000 / WORKERS as u64);
    let t = Instant::now();
    drop(black_box(render(&table, &snap)));
    let t_hand = t.elapsed();
    let (_, peak0) = rss_kb();
    let mut fresh = ExporterPath::new();
    let t = Instant::now();
    drop(black_box(fresh.scrape(&table, &snap)));
    let t_exp = t.elapsed();
    let (_, peak1) = rss_kb();
    println!(
        "first scrape of a new front, 10,000,000 connections counted: own {t_hand:?}, exporter {t_exp:?} (peak RSS +{} MB)",
        peak1.saturating_sub(peak0) >> 10
    );
}
