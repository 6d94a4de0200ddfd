//! The Prometheus text exposition, rendered from the statistics table and
//! the front's published [`Snapshot`].
//!
//! A counter of a kind that several processes add to is the front's base
//! (what departed processes had counted) plus the words of every live
//! process cell. The snapshot lists the live cells; the front folds a
//! departed cell into the bases and drops it from the snapshot under the
//! same lock the renderer holds, so a scrape never counts a cell twice or
//! misses one.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::policy::PolicyName;
use crate::proxy_protocol::HeaderError;
use crate::stats::{
    self, CONNECT, Col, ColCell, Counts, DURATION, FrontWord, Hist, ProcWord, QUEUE_WAIT,
    QueueWord, SlotWord, Table,
};

/// What the renderer needs to know beyond the numbers: which slots and
/// backends exist, their names and states. Published by the front whenever
/// one of these changes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub policy: Option<PolicyName>,
    pub slots: Vec<SlotLabel>,
    pub backends: Vec<BackendLabel>,
    /// Every process cell in use (all slots, any role).
    pub cells: Vec<usize>,
    /// Failed look-ups per `resolve` name.
    pub resolve_failures: Vec<(String, u64)>,
    /// At least one worker is ready and the front is not stopping.
    pub ready: bool,
    /// Every service, and (named "") what SNI routing led nowhere.
    pub services: Vec<ServiceLabel>,
}

/// A service's counts that live in the front (shared with it: the front
/// counts, `/metrics` reads).
#[derive(Debug, Clone)]
pub struct ServiceLabel {
    pub name: String,
    /// Connections routed to the service.
    pub connections: Arc<AtomicU64>,
    /// SNI outcomes that led to it, per [`super::SNI_REASONS`].
    pub sni: Arc<[AtomicU64; super::SNI_REASONS.len()]>,
    /// Its own `max-conns` (0: none).
    pub max_conns: Arc<AtomicU64>,
    /// Its open connections, counted only under limits of its own.
    pub open: Arc<AtomicU64>,
    /// Connections its own limits refused, per [`super::SERVICE_REFUSALS`].
    pub refused: Arc<[AtomicU64; super::SERVICE_REFUSALS.len()]>,
}

impl ServiceLabel {
    pub fn new(name: &str) -> ServiceLabel {
        ServiceLabel {
            name: name.to_string(),
            connections: Arc::new(AtomicU64::new(0)),
            sni: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
            max_conns: Arc::new(AtomicU64::new(0)),
            open: Arc::new(AtomicU64::new(0)),
            refused: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    pub fn refused_counts(&self) -> Vec<u64> {
        self.refused
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    /// Refusal counts carried over from a previous front.
    pub fn set_refused_counts(&self, counts: &[u64]) {
        for (a, &n) in self.refused.iter().zip(counts) {
            a.store(n, Ordering::Relaxed);
        }
    }

    pub fn sni_counts(&self) -> Vec<u64> {
        self.sni.iter().map(|a| a.load(Ordering::Relaxed)).collect()
    }

    /// Counts carried over from a previous front.
    pub fn set_sni_counts(&self, counts: &[u64]) {
        for (a, &n) in self.sni.iter().zip(counts) {
            a.store(n, Ordering::Relaxed);
        }
    }

    pub fn set_connections(&self, n: u64) {
        self.connections.store(n, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Default)]
pub struct SlotLabel {
    /// Has a ready (serving) process.
    pub up: bool,
    /// The cells of the slot's processes (serving, starting, retiring).
    pub cells: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct BackendLabel {
    /// Its service's name.
    pub service: String,
    pub name: String,
    pub column: usize,
    pub up: bool,
    pub weight: u32,
    /// Its connection limit (`maxconn=`), if any.
    pub maxconn: Option<u32>,
}

/// What the metrics endpoint serves from: the table and the snapshot.
#[derive(Clone)]
pub struct Exporter {
    pub table: Arc<Table>,
    pub snapshot: Arc<Mutex<Snapshot>>,
    /// Becomes true once the front has handed over to a new one.
    pub handed_over: tokio::sync::watch::Receiver<bool>,
}

impl Exporter {
    pub fn render(&self) -> String {
        let snap = match self.snapshot.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        render(&self.table, &snap)
    }

    pub fn ready(&self) -> bool {
        self.snapshot.lock().map(|s| s.ready).unwrap_or(false)
    }
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str) {
        let (_, kind, help) = FAMILIES
            .iter()
            .find(|(n, _, _)| *n == name)
            .copied()
            .unwrap_or((name, "untyped", ""));
        let _ = write!(self.0, "# HELP {name} ");
        for c in help.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
        let _ = writeln!(self.0, "\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.series(name, "", labels, None, value);
    }

    /// One line: `name` + `suffix`, the labels (and `le`), the value.
    /// Writes straight into the buffer: no allocation per line.
    fn series(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(&str, &str)],
        le: Option<&str>,
        value: impl std::fmt::Display,
    ) {
        self.0.push_str(name);
        self.0.push_str(suffix);
        let le = le.map(|v| ("le", v));
        let mut first = true;
        for (k, v) in labels.iter().chain(le.as_ref()) {
            self.0.push(if first { '{' } else { ',' });
            first = false;
            self.0.push_str(k);
            self.0.push_str("=\"");
            self.label_value(v);
            self.0.push('"');
        }
        if !first {
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn label_value(&mut self, v: &str) {
        if !v.contains(['\\', '"', '\n']) {
            self.0.push_str(v);
            return;
        }
        for c in v.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
    }

    /// A histogram from its counts (per bucket, not cumulative) and its
    /// bounds written as `le` values.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], le: &[String], h: &Counts) {
        let mut cumulative = 0u64;
        for (i, &n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let bound = le.get(i).map_or("+Inf", String::as_str);
            self.series(name, "_bucket", labels, Some(bound), cumulative);
        }
        self.series(name, "_sum", labels, None, h.sum_ns as f64 / 1e9);
        self.series(name, "_count", labels, None, cumulative);
    }
}

/// Sum of process word `w` over `cells`.
fn over(table: &Table, cells: &[usize], w: ProcWord) -> u64 {
    cells.iter().map(|&c| table.cell(c).get(w)).sum()
}

/// Base plus every live cell, for column word `w` of backend column `col`.
fn col_total(table: &Table, cells: &[usize], col: usize, w: Col) -> u64 {
    let base = ColCell::of(table.base(col)).get(w);
    base + cells
        .iter()
        .filter_map(|&c| table.cell(c).col(col))
        .map(|c| c.get(w))
        .sum::<u64>()
}

/// Connections a process holds: handed to it and not finished.
pub fn proc_active(table: &Table, cell: usize) -> u64 {
    let c = table.cell(cell);
    c.get(ProcWord::Handed)
        .saturating_sub(c.get(ProcWord::Finished))
}

/// Render the whole exposition.
pub fn render(table: &Table, snap: &Snapshot) -> String {
    // About 2.5 kB per backend (the connect histogram is most of it).
    let mut o = Out(String::with_capacity(
        16 * 1024 + snap.backends.len() * 2560,
    ));
    let front = |w: FrontWord| stats::get(table.front(w));
    let slot_names: Vec<String> = (0..snap.slots.len()).map(|i| i.to_string()).collect();

    // Worker slots.
    let per_slot = |o: &mut Out, name: &str, value: &dyn Fn(usize, &SlotLabel) -> u64| {
        o.family(name);
        for (i, s) in snap.slots.iter().enumerate() {
            o.sample(name, &[("worker", &slot_names[i])], value(i, s));
        }
    };
    per_slot(&mut o, WORKER_CONNECTIONS, &|i, _| {
        stats::get(table.slot(i, SlotWord::Handed))
    });
    let actives: Vec<u64> = snap
        .slots
        .iter()
        .map(|s| s.cells.iter().map(|&c| proc_active(table, c)).sum())
        .collect();
    per_slot(&mut o, WORKER_ACTIVE, &|i, _| actives[i]);
    per_slot(&mut o, WORKER_RESTARTS, &|i, _| {
        stats::get(table.slot(i, SlotWord::Restarts))
    });
    per_slot(&mut o, WORKER_UP, &|_, s| u64::from(s.up));
    per_slot(&mut o, WORKER_BYTES_IN, &|i, s| {
        stats::get(table.slot(i, SlotWord::BytesInBase)) + over(table, &s.cells, ProcWord::BytesIn)
    });
    per_slot(&mut o, WORKER_BYTES_OUT, &|i, s| {
        stats::get(table.slot(i, SlotWord::BytesOutBase))
            + over(table, &s.cells, ProcWord::BytesOut)
    });

    // Backends.
    let cells = &snap.cells;
    let per_backend = |o: &mut Out, name: &str, value: &dyn Fn(&BackendLabel) -> u64| {
        o.family(name);
        for b in &snap.backends {
            o.sample(
                name,
                &[("service", &b.service), ("backend", &b.name)],
                value(b),
            );
        }
    };
    let total = |w: Col| move |b: &BackendLabel| col_total(table, cells, b.column, w);
    per_backend(&mut o, BACKEND_CONNECTIONS, &total(Col::Conns));
    per_backend(&mut o, BACKEND_ACTIVE, &|b| {
        cells
            .iter()
            .filter_map(|&c| table.cell(c).col(b.column))
            .map(|c| c.get(Col::Active))
            .sum()
    });
    per_backend(&mut o, BACKEND_UP, &|b| u64::from(b.up));
    per_backend(&mut o, BACKEND_WEIGHT, &|b| u64::from(b.weight));
    per_backend(&mut o, BACKEND_BYTES_IN, &total(Col::BytesDown));
    per_backend(&mut o, BACKEND_BYTES_OUT, &total(Col::BytesUp));
    per_backend(&mut o, BACKEND_REDISPATCHES, &total(Col::Redispatch));
    per_backend(&mut o, BACKEND_CHECK_FAILURES, &|b| {
        ColCell::of(table.base(b.column)).get(Col::CheckFailures)
    });
    o.family(BACKEND_CONNECT_FAILURES);
    for b in &snap.backends {
        for (reason, w) in [
            ("refused", Col::FailRefused),
            ("timeout", Col::FailTimeout),
            ("other", Col::FailOther),
        ] {
            let v = col_total(table, cells, b.column, w);
            o.sample(
                BACKEND_CONNECT_FAILURES,
                &[
                    ("service", &b.service),
                    ("backend", &b.name),
                    ("reason", reason),
                ],
                v,
            );
        }
    }
    o.family(BACKEND_CONNECT_SECONDS);
    let le = CONNECT.le();
    let mut h = Counts::new(Hist::<{ CONNECT.bounds_ns.len() }>::BUCKETS);
    for b in &snap.backends {
        h.clear();
        h.add(ColCell::of(table.base(b.column)).connect());
        for c in cells.iter().filter_map(|&c| table.cell(c).col(b.column)) {
            h.add(c.connect());
        }
        o.histogram(
            BACKEND_CONNECT_SECONDS,
            &[("service", &b.service), ("backend", &b.name)],
            &le,
            &h,
        );
    }
    o.family(SERVICE_CONNECTIONS);
    for s in snap.services.iter().filter(|s| !s.name.is_empty()) {
        o.sample(
            SERVICE_CONNECTIONS,
            &[("service", &s.name)],
            s.connections.load(Ordering::Relaxed),
        );
    }
    o.family(SERVICE_REFUSED);
    for s in snap.services.iter().filter(|s| !s.name.is_empty()) {
        for (reason, n) in super::SERVICE_REFUSALS.iter().zip(s.refused.iter()) {
            o.sample(
                SERVICE_REFUSED,
                &[("service", &s.name), ("reason", reason)],
                n.load(Ordering::Relaxed),
            );
        }
    }
    // Services with a max-conns of their own: the limit, and what it
    // counts now.
    type Gauge = fn(&ServiceLabel) -> &AtomicU64;
    let gauges: [(&str, Gauge); 2] = [
        (SERVICE_MAXCONN, |s| &s.max_conns),
        (SERVICE_ACTIVE, |s| &s.open),
    ];
    for (name, gauge) in gauges {
        o.family(name);
        for s in snap
            .services
            .iter()
            .filter(|s| !s.name.is_empty() && s.max_conns.load(Ordering::Relaxed) > 0)
        {
            o.sample(
                name,
                &[("service", &s.name)],
                gauge(s).load(Ordering::Relaxed),
            );
        }
    }
    o.family(SNI_CONNECTIONS);
    if snap.services.iter().any(|s| s.name.is_empty()) {
        for s in &snap.services {
            for (reason, n) in super::SNI_REASONS.iter().zip(s.sni.iter()) {
                o.sample(
                    SNI_CONNECTIONS,
                    &[("service", &s.name), ("reason", reason)],
                    n.load(Ordering::Relaxed),
                );
            }
        }
    }
    per_backend(&mut o, BACKEND_MAXCONN, &|b| {
        u64::from(b.maxconn.unwrap_or(0))
    });
    let queue = |w: QueueWord| move |b: &BackendLabel| table.queue(b.column).get(w);
    per_backend(&mut o, BACKEND_QUEUE_LENGTH, &queue(QueueWord::Length));
    per_backend(&mut o, BACKEND_QUEUED, &queue(QueueWord::Queued));
    per_backend(&mut o, BACKEND_QUEUE_TIMEOUTS, &queue(QueueWord::Timeouts));
    per_backend(
        &mut o,
        BACKEND_QUEUE_OVERFLOWS,
        &queue(QueueWord::Overflows),
    );
    per_backend(
        &mut o,
        BACKEND_QUEUE_ABANDONED,
        &queue(QueueWord::Abandoned),
    );
    o.family(BACKEND_QUEUE_WAIT);
    let le = QUEUE_WAIT.le();
    let mut h = Counts::new(Hist::<{ QUEUE_WAIT.bounds_ns.len() }>::BUCKETS);
    for b in &snap.backends {
        h.clear();
        h.add(table.queue(b.column).wait());
        o.histogram(
            BACKEND_QUEUE_WAIT,
            &[("service", &b.service), ("backend", &b.name)],
            &le,
            &h,
        );
    }
    o.family(RESOLVE_FAILURES);
    for (name, n) in &snap.resolve_failures {
        o.sample(RESOLVE_FAILURES, &[("name", name)], n);
    }

    // The front.
    let simple = |o: &mut Out, name: &str, v: u64| {
        o.family(name);
        o.sample(name, &[], v);
    };
    simple(&mut o, ACCEPTED, front(FrontWord::Accepted));
    o.family(ACCEPT_ERRORS);
    o.sample(
        ACCEPT_ERRORS,
        &[("reason", "emfile")],
        front(FrontWord::AcceptEmfile),
    );
    o.sample(
        ACCEPT_ERRORS,
        &[("reason", "other")],
        front(FrontWord::AcceptOther),
    );
    simple(&mut o, HANDOFF_FAILURES, front(FrontWord::HandoffFailures));
    simple(
        &mut o,
        REDISPATCHED,
        front(FrontWord::Recovered)
            + front(FrontWord::RedispatchedBase)
            + over(table, cells, ProcWord::Redispatched),
    );
    simple(
        &mut o,
        FAILED_CONNECTIONS,
        front(FrontWord::FailedFront)
            + front(FrontWord::FailedBase)
            + over(table, cells, ProcWord::Failed),
    );
    simple(&mut o, REFUSED_PER_IP, front(FrontWord::RefusedPerIp));
    simple(&mut o, DENIED, front(FrontWord::Denied));
    o.family(PROXY_HEADER_ERRORS);
    for (reason, w) in HeaderError::REASONS.iter().zip(FrontWord::HEADER_ERRORS) {
        o.sample(PROXY_HEADER_ERRORS, &[("reason", reason)], front(w));
    }
    simple(
        &mut o,
        FIRST_BYTE_TIMEOUTS,
        front(FrontWord::FirstByteTimeoutsBase) + over(table, cells, ProcWord::FirstByteTimeouts),
    );
    // The front's own, counted by its log writer and read now, and the
    // workers' (live and departed).
    simple(
        &mut o,
        LOG_DROPPED,
        crate::logging::dropped_lines()
            + front(FrontWord::LogDroppedBase)
            + over(table, cells, ProcWord::LogDropped),
    );
    simple(
        &mut o,
        ACCESS_LOG_DROPPED,
        front(FrontWord::AccessLogDroppedBase) + over(table, cells, ProcWord::AccessLogDropped),
    );
    let pending = front(FrontWord::Pending);
    simple(&mut o, ACTIVE, actives.iter().sum::<u64>() + pending);
    o.family(IMBALANCE);
    let ready: Vec<u64> = snap
        .slots
        .iter()
        .zip(&actives)
        .filter(|(s, _)| s.up)
        .map(|(_, a)| *a)
        .collect();
    let sum: u64 = ready.iter().sum();
    let ratio = match ready.iter().max() {
        Some(&max) if sum > 0 => max as f64 * ready.len() as f64 / sum as f64,
        _ => 1.0,
    };
    o.sample(IMBALANCE, &[], ratio);
    simple(
        &mut o,
        OPEN_FDS,
        crate::sys::open_fd_count().unwrap_or(0) as u64,
    );
    simple(&mut o, MAX_FDS, front(FrontWord::MaxFds));
    simple(&mut o, WORKER_LIMIT, front(FrontWord::WorkerLimit));
    simple(&mut o, PENDING, pending);
    simple(&mut o, ACCEPT_PAUSED, front(FrontWord::Paused));
    o.family(POLICY_INFO);
    for p in PolicyName::ALL {
        o.sample(
            POLICY_INFO,
            &[("policy", p.as_str())],
            u64::from(snap.policy == Some(p)),
        );
    }
    simple(&mut o, POLICY_CHANGES, front(FrontWord::PolicyChanges));
    o.family(BUILD_INFO);
    o.sample(
        BUILD_INFO,
        &[
            ("version", crate::version::VERSION),
            ("build", crate::version::build_id()),
        ],
        1,
    );

    // Connection lifetimes, all workers.
    o.family(CONNECTION_SECONDS);
    let mut h = Counts::new(Hist::<{ DURATION.bounds_ns.len() }>::BUCKETS);
    h.add(table.duration_base());
    for &c in cells {
        h.add(table.cell(c).duration());
    }
    o.histogram(CONNECTION_SECONDS, &[], &DURATION.le(), &h);
    o.0
}
