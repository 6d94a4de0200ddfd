//! The statistics table a scrape reads in the exposition benches: as the
//! front makes it for 4 workers, with 1,000 backends, every live cell
//! holding traffic. Shared by `benches/exposition/main.rs` and
//! `benches/exporter-prototype`.
#![allow(dead_code)] // each bench uses part of it

use std::collections::HashMap;
use std::time::Duration;

use rrproxy::metrics::{BackendLabel, ServiceLabel, SlotLabel, Snapshot};
use rrproxy::policy::{PolicyName, mix64};
use rrproxy::stats::{self, Col, ProcWord, SlotWord, Table};

pub const WORKERS: usize = 4;
pub const BACKENDS: usize = 1000;
/// Backend columns the front's table has (`MAX_BACKENDS` + spares).
pub const COLUMNS: usize = 1088;

/// The table and the snapshot the front would publish for it.
pub fn table() -> (Table, Snapshot) {
    let table = Table::create(WORKERS, COLUMNS, 2 * WORKERS + 4).unwrap();
    let snap = Snapshot {
        policy: Some(PolicyName::RoundRobin),
        slots: (0..WORKERS)
            .map(|i| SlotLabel {
                up: true,
                cells: vec![i],
            })
            .collect(),
        backends: (0..BACKENDS)
            .map(|i| BackendLabel {
                service: "default".to_string(),
                name: format!("10.1.{}.{}:8080", i / 250, i % 250),
                column: i,
                up: i % 50 != 0,
                weight: 1 + (i % 4) as u32,
                maxconn: None,
            })
            .collect(),
        cells: (0..WORKERS).collect(),
        resolve_failures: Vec::new(),
        ready: true,
        services: vec![ServiceLabel::new("default")],
    };
    traffic(&table, 1, 1_000);
    (table, snap)
}

/// Add `per_cell` finished connections to every live cell, spread over
/// the backends, with bytes, connect times and lifetimes, as workers do.
pub fn traffic(table: &Table, seed: u64, per_cell: u64) {
    for cell in 0..WORKERS {
        let c = table.cell(cell);
        for n in 0..per_cell {
            let r = mix64(seed ^ ((cell as u64) << 40) ^ n);
            let col = c.col((r % BACKENDS as u64) as usize).unwrap();
            col.opened(Duration::from_nanos(50_000 + r % 3_000_000));
            col.bump(Col::BytesUp, r % 10_000);
            col.bump(Col::BytesDown, r % 100_000);
            c.bump(ProcWord::Handed, 1);
            c.bump(ProcWord::Finished, 1);
            c.bump(ProcWord::BytesIn, r % 10_000);
            c.bump(ProcWord::BytesOut, r % 100_000);
            c.record_duration(Duration::from_nanos(r % 20_000_000_000));
        }
        stats::bump(table.slot(cell, SlotWord::Handed), per_cell);
    }
}

/// `name{sorted labels}` -> value, to compare two expositions series by
/// series (`le` normalised: "0.0001" and "1e-4" are one bound).
pub fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut labels: Vec<String> = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| match kv.strip_prefix("le=\"") {
                    Some(v) if v != "+Inf\"" => {
                        let v: f64 = v.trim_end_matches('"').parse().unwrap_or(f64::NAN);
                        format!("le=\"{v}\"")
                    }
                    _ => kv.to_string(),
                })
                .collect();
            labels.sort_unstable();
            Some((
                format!("{name}{{{}}}", labels.join(",")),
                value.parse().ok()?,
            ))
        })
        .collect()
}

/// This process's resident and peak resident memory, in kB.
pub fn rss_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
