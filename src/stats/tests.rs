use std::time::Duration;

use super::*;

#[test]
fn a_second_mapping_sees_every_write() {
    let t = Table::create(4, 8, 6).unwrap();
    let other = Table::open(t.dup_fd().unwrap()).unwrap();
    assert_eq!((other.slots(), other.columns(), other.procs()), (4, 8, 6));
    bump(t.front(FrontWord::Accepted), 3);
    bump(t.slot(2, SlotWord::Handed), 5);
    let cell = t.cell(5);
    cell.bump(ProcWord::Finished, 7);
    cell.record_duration(Duration::from_millis(20));
    let col = cell.col(7).unwrap();
    col.opened(Duration::from_micros(300));
    col.active_up();
    assert_eq!(get(other.front(FrontWord::Accepted)), 3);
    assert_eq!(get(other.slot(2, SlotWord::Handed)), 5);
    let seen = other.cell(5);
    assert_eq!(seen.get(ProcWord::Finished), 7);
    assert_eq!(
        get(seen.duration_bucket(4)),
        1,
        "20 ms falls in (10 ms, 25 ms]"
    );
    assert_eq!(seen.get(ProcWord::DurationSumNs), 20_000_000);
    let c = seen.col(7).unwrap();
    assert_eq!((c.get(Col::Conns), c.get(Col::Active)), (1, 1));
    assert_eq!(
        get(c.connect_bucket(2)),
        1,
        "300 us falls in (250 us, 500 us]"
    );
    assert!(seen.col(8).is_none());
}

#[test]
fn cells_do_not_overlap() {
    let t = Table::create(2, 3, 4).unwrap();
    for cell in 0..4 {
        let c = t.cell(cell);
        c.set(ProcWord::Pid, 100 + cell as u64);
        for col in 0..3 {
            c.col(col)
                .unwrap()
                .bump(Col::BytesUp, (cell * 10 + col) as u64);
        }
    }
    for col in 0..3 {
        ColCell::of(t.base(col)).bump(Col::CheckFailures, col as u64 + 1);
    }
    for cell in 0..4 {
        let c = t.cell(cell);
        assert_eq!(c.get(ProcWord::Pid), 100 + cell as u64);
        for col in 0..3 {
            assert_eq!(
                c.col(col).unwrap().get(Col::BytesUp),
                (cell * 10 + col) as u64
            );
        }
    }
    for col in 0..3 {
        assert_eq!(
            ColCell::of(t.base(col)).get(Col::CheckFailures),
            col as u64 + 1
        );
    }
}

#[test]
fn folding_keeps_counters_and_drops_the_gauge() {
    let t = Table::create(1, 2, 2).unwrap();
    let col = t.cell(1).col(1).unwrap();
    col.opened(Duration::from_millis(1));
    col.active_up();
    col.bump(Col::BytesDown, 99);
    let base = ColCell::of(t.base(1));
    base.absorb(col);
    base.absorb(col);
    assert_eq!(base.get(Col::Conns), 2);
    assert_eq!(base.get(Col::BytesDown), 198);
    assert_eq!(base.get(Col::Active), 0);
    t.clear_cell(1);
    assert_eq!(t.cell(1).col(1).unwrap().get(Col::BytesDown), 0);
    assert_eq!(base.get(Col::BytesDown), 198, "the base is not in the cell");
}

#[test]
fn the_wake_flag_is_taken_once() {
    let t = Table::create(1, 1, 1).unwrap();
    let c = t.cell(0);
    assert!(!c.take_wake());
    c.request_wake();
    assert!(c.take_wake());
    assert!(!c.take_wake());
}

#[test]
fn the_build_declares_its_layout() {
    assert_eq!(layout(), LAYOUT);
    assert_eq!(&layout_tag(2)[LAYOUT_MARKER.len()..], b"00000002");
    assert_eq!(&layout_tag(12345)[LAYOUT_MARKER.len()..], b"00012345");
    let t = Table::create(1, 1, 1).unwrap();
    assert_eq!(get(&t.words()[1]), LAYOUT, "the header says so");
}

#[test]
fn a_foreign_file_is_refused() {
    use rustix::fs::MemfdFlags;
    let fd =
        rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, 4096).unwrap();
    assert!(matches!(Table::open(fd), Err(StatsError::Magic)));
    // One that could shrink under the mapping is not even looked at.
    let unsealable = rustix::fs::memfd_create("z", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealable, 4096).unwrap();
    let err = Table::open(unsealable).unwrap_err().to_string();
    assert!(err.contains("cannot be sealed against shrinking"), "{err}");
    let t = Table::create(1, 1, 1).unwrap();
    set(&t.words()[1], LAYOUT + 1);
    assert!(matches!(
        Table::open(t.dup_fd().unwrap()),
        Err(StatsError::Layout { .. })
    ));
    let short = rustix::fs::memfd_create("y", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    assert!(
        Table::open(short).is_err(),
        "an empty file cannot be mapped"
    );
}

#[test]
fn buckets_are_upper_inclusive() {
    fn check<const N: usize>(h: Hist<N>) {
        assert_eq!(h.bucket(0), 0);
        for (i, &b) in h.bounds_ns.iter().enumerate() {
            assert_eq!(h.bucket(b), i, "{b} ns is in the bucket it bounds");
            assert_eq!(h.bucket(b + 1), i + 1, "{b} + 1 ns is in the next");
        }
        assert_eq!(h.bucket(u64::MAX), N, "+Inf");
        assert!(h.bounds_ns.is_sorted_by(|a, b| a < b), "ascending");
    }
    check(CONNECT);
    check(DURATION);
}

#[test]
fn bounds_read_as_prometheus_writes_them() {
    assert_eq!(
        CONNECT.le(),
        [
            "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
            "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30"
        ]
    );
    assert_eq!(
        DURATION.le(),
        [
            "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
            "5", "10", "30", "60", "300", "900", "3600"
        ]
    );
}

#[test]
fn a_recorded_duration_adds_to_its_bucket_and_the_sum() {
    let t = Table::create(1, 1, 2).unwrap();
    let cell = t.cell(1);
    for ms in [1, 2, 7, 7, 4_000_000] {
        cell.record_duration(Duration::from_millis(ms));
    }
    // Over 584 years saturates the sum's nanoseconds rather than wrap.
    assert_eq!(nanos(Duration::MAX), u64::MAX);
    let mut h = Counts::new(Hist::<18>::BUCKETS);
    h.add(cell.duration());
    let mut want = vec![0; 19];
    (want[0], want[1], want[3], want[18]) = (1, 1, 2, 1);
    assert_eq!(h.buckets, want);
    assert_eq!(h.sum_ns, 4_000_017 * 1_000_000);
    assert_eq!(h.count(), 5);
    // The base and a cell add up.
    let base = Counts::new(19);
    let mut both = base.clone();
    both.add(t.duration_base());
    both.add(cell.duration());
    assert_eq!(both, h, "an empty base adds nothing");
}

#[test]
fn every_header_error_reason_has_its_word() {
    use crate::proxy_protocol::HeaderError as E;
    let samples = [
        E::NotProxy,
        E::Malformed("x"),
        E::Oversized { limit: 1 },
        E::Truncated,
        E::Timeout,
        E::Unsupported("x"),
        E::Io(std::io::ErrorKind::ConnectionReset),
    ];
    assert_eq!(samples.len(), E::REASONS.len());
    for e in samples {
        let i = E::REASONS.iter().position(|&r| r == e.reason()).unwrap();
        assert_eq!(
            FrontWord::HEADER_ERRORS[i],
            FrontWord::header_error(&e),
            "{e}"
        );
    }
}

/// The wake-up handshake as a litmus test, with the real methods on a real
/// shared table: in every round the worker counts a finished connection
/// and looks for a wake-up request while the front requests one and looks
/// at `Finished`; at least one of them must see the other. Without the
/// fence in `ProcCell::finish` both miss now and then (store-buffer
/// reordering): here hundreds to thousands of times in the three seconds
/// this runs, whenever the two threads get a core each at the same time
/// (on a loaded two-core machine they may not, and then it cannot show).
#[test]
fn a_wake_up_request_and_a_finished_connection_never_miss_each_other() {
    use std::sync::atomic::{AtomicBool, fence};
    const MAX_ROUNDS: u64 = 1_000_000;
    const BUDGET: Duration = Duration::from_secs(3);
    let t = Table::create(1, 1, 1).unwrap();
    // Each side says which round it reached; the other waits for it.
    let (worker_at, front_at) = (AtomicU64::new(0), AtomicU64::new(0));
    let stop = AtomicBool::new(false);
    let wait = |at: &dyn Fn() -> u64, round: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut spins = 0u32;
        while at() < round {
            spins += 1;
            if spins % 256 == 0 {
                assert!(std::time::Instant::now() < deadline, "litmus stalled");
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
    };
    let (rounds, missed) = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let cell = t.cell(0);
            let mut saw = Vec::new();
            for round in 1..=MAX_ROUNDS {
                front_at.store(round, Ordering::Release);
                wait(&|| worker_at.load(Ordering::Acquire), round);
                if stop.load(Ordering::Acquire) {
                    break;
                }
                saw.push(cell.finish(1));
            }
            saw
        });
        let cell = t.cell(0);
        let started = std::time::Instant::now();
        let mut saw = Vec::new();
        for round in 1..=MAX_ROUNDS {
            wait(&|| front_at.load(Ordering::Acquire), round);
            if started.elapsed() > BUDGET {
                stop.store(true, Ordering::Release);
                worker_at.store(round, Ordering::Release);
                break;
            }
            // The last round's request, if the worker did not take it.
            cell.word(ProcWord::Wake).store(0, Ordering::Relaxed);
            worker_at.store(round, Ordering::Release);
            // The worker sees the round start a cache transfer later:
            // start after it by a varying few cycles, so the two sides'
            // stores and loads overlap in every alignment.
            for _ in 0..round % 16 {
                std::hint::spin_loop();
            }
            cell.request_wake();
            fence(Ordering::SeqCst);
            saw.push(cell.get(ProcWord::Finished) >= round);
            // The worker ends this round before the next reset.
            wait(&|| cell.get(ProcWord::Finished), round);
        }
        let worker_saw = worker.join().unwrap();
        let missed = saw
            .iter()
            .zip(&worker_saw)
            .filter(|(front, worker)| !**front && !**worker)
            .count();
        (saw.len(), missed)
    });
    assert!(rounds > 1000, "only {rounds} rounds ran");
    assert_eq!(missed, 0, "rounds (of {rounds}) in which both missed");
}

#[test]
fn the_table_cannot_change_size_or_lose_its_seals() {
    use rustix::fs::{SealFlags, fcntl_add_seals, fcntl_get_seals, ftruncate};
    let t = Table::create(2, 4, 3).unwrap();
    let size = rustix::fs::fstat(t.fd()).unwrap().st_size as u64;
    let seals = fcntl_get_seals(t.fd()).unwrap();
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
    assert_eq!(ftruncate(t.fd(), size - 8), Err(rustix::io::Errno::PERM));
    assert_eq!(ftruncate(t.fd(), 0), Err(rustix::io::Errno::PERM));
    assert_eq!(ftruncate(t.fd(), size + 4096), Err(rustix::io::Errno::PERM));
    assert_eq!(
        fcntl_add_seals(t.fd(), SealFlags::WRITE),
        Err(rustix::io::Errno::PERM)
    );
    // Clearing a cell punches holes: still allowed, still the same size.
    t.cell(2).bump(ProcWord::Finished, 5);
    t.clear_cell(2);
    assert_eq!(t.cell(2).get(ProcWord::Finished), 0);
    assert_eq!(rustix::fs::fstat(t.fd()).unwrap().st_size as u64, size);
    // A table handed over by a front that did not seal it gets the seal
    // from the process that opens it.
    let fd = rustix::fs::memfd_create(
        "old",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    ftruncate(&fd, size).unwrap();
    let copy = Table::open(t.dup_fd().unwrap()).unwrap();
    drop(copy);
    let old = SharedWords::map(fd.as_fd(), 16).unwrap();
    drop(old);
    assert!(fcntl_get_seals(&fd).unwrap().contains(SealFlags::SHRINK));
    assert_eq!(ftruncate(&fd, 8), Err(rustix::io::Errno::PERM));
}

mod buckets_match_the_float_definition {
    use proptest::prelude::*;

    use super::*;

    /// Prometheus's definition: the first bucket whose bound is at least
    /// the value, in seconds.
    fn by_float<const N: usize>(h: Hist<N>, d: Duration) -> usize {
        let secs = d.as_secs_f64();
        h.bounds_ns
            .iter()
            .position(|&b| secs <= b as f64 / 1e9)
            .unwrap_or(N)
    }

    proptest! {
        #[test]
        fn for_any_duration(ns in 0u64..100_000_000_000_000) {
            let d = Duration::from_nanos(ns);
            prop_assert_eq!(CONNECT.bucket(nanos(d)), by_float(CONNECT, d));
            prop_assert_eq!(DURATION.bucket(nanos(d)), by_float(DURATION, d));
        }

        #[test]
        fn next_to_a_bound(i in 0usize..18, delta in -2i64..=2) {
            for b in [CONNECT.bounds_ns.get(i), DURATION.bounds_ns.get(i)].into_iter().flatten() {
                let d = Duration::from_nanos(b.saturating_add_signed(delta));
                prop_assert_eq!(CONNECT.bucket(nanos(d)), by_float(CONNECT, d));
                prop_assert_eq!(DURATION.bucket(nanos(d)), by_float(DURATION, d));
            }
        }
    }
}
