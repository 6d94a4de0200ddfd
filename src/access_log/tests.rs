//! The access log's writer against real files and pipes: lines arrive
//! whole and in order, a stalled writer costs the event loop nothing but
//! counted drops, and a reopen that fails keeps the old file.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::stats::{ProcWord, Table};

fn record(conn: u64) -> Record {
    Record {
        time: SystemTime::now(),
        conn,
        client: "127.0.0.2:40000".parse().unwrap(),
        backend: Some("127.0.0.1:8081".parse().unwrap()),
        bytes_up: conn,
        bytes_down: 2 * conn,
        duration: Duration::from_millis(3),
        end: End::BackendClosed,
    }
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rrproxy-alog-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn dropped(table: &Table) -> u64 {
    table.cell(0).get(ProcWord::AccessLogDropped)
}

/// Read `path` until it has `n` lines (the writer is another thread).
fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(String::from).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "{} of {n} lines", lines.len());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn every_line_arrives_whole_and_in_order() {
    let dir = scratch("order");
    let path = dir.join("access.log");
    let table = Arc::new(Table::create(1, 1, 1).unwrap());
    let log = AccessLog::new(table.clone(), 0, 0);
    log.set(Target::File(path.clone()), true);
    for conn in 0..3000 {
        log.push(record(conn));
    }
    drop(log); // writes out what is queued
    let got = lines(&path, 3000);
    assert_eq!(got.len() + dropped(&table) as usize, 3000);
    let mut last = None;
    for l in &got {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let conn = v["conn"].as_u64().unwrap();
        assert!(last.is_none_or(|p| p < conn), "out of order at {conn}");
        assert_eq!(v["bytes_down"].as_u64(), Some(2 * conn));
        last = Some(conn);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_stalled_writer_drops_and_counts_without_blocking() {
    let dir = scratch("stall");
    let fifo = dir.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // Hold the FIFO open for reading and read nothing yet: the writer's
    // open succeeds, and its writes block once the pipe is full.
    let hold = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&fifo)
        .unwrap();
    rustix::fs::fcntl_setfl(&hold, rustix::fs::OFlags::empty()).unwrap();
    let table = Arc::new(Table::create(1, 1, 1).unwrap());
    let log = AccessLog::new(table.clone(), 0, 0);
    log.set(Target::File(fifo.clone()), false);
    let n = 200_000u64;
    let began = Instant::now();
    for conn in 0..n {
        log.push(record(conn));
    }
    let took = began.elapsed();
    // Each push is a copy into the queue or a drop: no waiting on the pipe.
    assert!(
        took < Duration::from_secs(2),
        "200,000 pushes took {took:?}"
    );
    let lost = dropped(&table);
    // A 64 KiB pipe and a 4096-record queue hold far fewer than 200,000.
    assert!(lost >= n - 10_000, "only {lost} of {n} dropped");
    // Now read: the writer goes on, writes out its queue and, once the
    // log is dropped, closes the FIFO (EOF here).
    let reader = std::thread::spawn(move || {
        let mut hold = hold;
        let mut got = String::new();
        hold.read_to_string(&mut got).unwrap();
        got
    });
    drop(log);
    let text = reader.join().unwrap();
    for l in text.lines() {
        assert!(
            l.starts_with("time=") && l.ends_with("end=backend_closed"),
            "{l}"
        );
    }
    assert_eq!(
        text.lines().count() as u64 + dropped(&table),
        n,
        "every record is written or counted"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reopen_that_fails_keeps_the_old_file() {
    let dir = scratch("reopen");
    let path = dir.join("access.log");
    let table = Arc::new(Table::create(1, 1, 1).unwrap());
    let log = AccessLog::new(table.clone(), 0, 0);
    log.set(Target::File(path.clone()), false);
    log.push(record(1));
    lines(&path, 1);
    // Rotated away, and a directory where the new file would go.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    std::fs::create_dir(&path).unwrap();
    log.set(Target::File(path.clone()), false);
    log.push(record(2));
    assert_eq!(lines(&rotated, 2).len(), 2);
    // Once the path is usable again, a reopen moves there.
    std::fs::remove_dir(&path).unwrap();
    log.set(Target::File(path.clone()), false);
    log.push(record(3));
    let new = lines(&path, 1);
    assert!(new[0].contains("conn=3"), "{new:?}");
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        2
    );
    assert_eq!(dropped(&table), 0);
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn off_takes_nothing() {
    let table = Arc::new(Table::create(1, 1, 1).unwrap());
    let log = AccessLog::new(table.clone(), 0, 0);
    assert!(!log.is_on());
    log.push(record(1));
    log.set(Target::Off, false);
    assert!(!log.is_on());
    assert_eq!(dropped(&table), 0);
}
