//! The latency histograms (`rrproxy_backend_connect_seconds`,
//! `rrproxy_connection_duration_seconds`): every bucket present at 0 from
//! start, a known workload counted in the right buckets (failed connects
//! not among them), and the counts kept when a worker is killed and
//! respawned.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use crate::support::*;

const CONNECT: &str = "rrproxy_backend_connect_seconds";
const LIFETIME: &str = "rrproxy_connection_duration_seconds";
const CONNECT_LE: [&str; 18] = [
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf",
];
const LIFETIME_LE: [&str; 19] = [
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10", "30", "60", "300", "900", "3600", "+Inf",
];

/// Every `_bucket`, `_sum` and `_count` series of histogram `name` whose
/// labels include `labels`, in bucket order, then sum and count.
fn histogram(m: &Metrics, name: &str, labels: &[(&str, &str)], le: &[&str]) -> Vec<f64> {
    let mut out: Vec<f64> = le
        .iter()
        .map(|le| {
            let mut l = labels.to_vec();
            l.push(("le", le));
            m.get(&format!("{name}_bucket"), &l)
                .unwrap_or_else(|| panic!("{name}_bucket{l:?} missing"))
        })
        .collect();
    for part in ["_sum", "_count"] {
        out.push(
            m.get(&format!("{name}{part}"), labels)
                .unwrap_or_else(|| panic!("{name}{part}{labels:?} missing")),
        );
    }
    out
}

/// One connection through the proxy, held open for at least `hold`.
fn one(proxy: &Proxy, i: u64, hold: Duration) {
    let mut s = proxy.connect();
    let data = random_bytes(i, 100);
    s.write_all(&data).unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
    // Not synchronisation: the workload's known minimum lifetime.
    std::thread::sleep(hold);
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0);
}

#[test]
fn histograms_start_at_zero_count_each_connection_and_survive_a_respawn() {
    let echo = echo_backend();
    let dead = refused_addr();
    let (e, d) = (echo.addr.to_string(), dead.to_string());
    let proxy = ProxyCmd::new(&[echo.addr, dead])
        .workers(2)
        .args(["--health-interval", "off", "--fall", "100"])
        .start();
    // From start: every bucket of every backend, and the lifetimes, at 0,
    // with their HELP and TYPE.
    let m = proxy.scrape();
    for b in [&e, &d] {
        let h = histogram(
            &m,
            CONNECT,
            &[("service", "default"), ("backend", b)],
            &CONNECT_LE,
        );
        assert!(h.iter().all(|&v| v == 0.0), "{b}: {h:?}");
    }
    let h = histogram(&m, LIFETIME, &[], &LIFETIME_LE);
    assert!(h.iter().all(|&v| v == 0.0), "{h:?}");
    for name in [CONNECT, LIFETIME] {
        assert!(m.text.contains(&format!("# TYPE {name} histogram\n")));
        assert!(m.text.contains(&format!("# HELP {name} ")));
    }

    // Ten connections of at least 30 ms each; round-robin plans five on
    // the dead backend, whose refused connects are failures, not times.
    let hold = Duration::from_millis(30);
    let began = Instant::now();
    for i in 0..10 {
        one(&proxy, i, hold);
    }
    let spent = began.elapsed().as_secs_f64();
    let m = wait_for(Duration::from_secs(10), "ten lifetimes counted", || {
        let m = proxy.scrape();
        (m.get(&format!("{LIFETIME}_count"), &[]) == Some(10.0)).then_some(m)
    });
    let connect = histogram(
        &m,
        CONNECT,
        &[("service", "default"), ("backend", &e)],
        &CONNECT_LE,
    );
    assert_eq!(connect[CONNECT_LE.len() + 1], 10.0, "ten connects to {e}");
    assert_eq!(connect[CONNECT_LE.len() - 1], 10.0, "+Inf is the count");
    assert!(
        connect
            .windows(2)
            .take(CONNECT_LE.len() - 1)
            .all(|w| w[0] <= w[1]),
        "cumulative: {connect:?}"
    );
    let sum = connect[CONNECT_LE.len()];
    assert!(sum > 0.0 && sum < spent, "connect time sum {sum}");
    let refused = m.get(
        "rrproxy_backend_connect_failures_total",
        &[
            ("service", "default"),
            ("backend", &d),
            ("reason", "refused"),
        ],
    );
    assert_eq!(refused, Some(5.0));
    let h = histogram(
        &m,
        CONNECT,
        &[("service", "default"), ("backend", &d)],
        &CONNECT_LE,
    );
    assert!(h.iter().all(|&v| v == 0.0), "failures are not times: {h:?}");
    let life = histogram(&m, LIFETIME, &[], &LIFETIME_LE);
    // None lasted 25 ms or less; all ten under an hour.
    assert_eq!(life[..5], [0.0; 5], "{life:?}");
    assert_eq!(life[LIFETIME_LE.len() - 2], 10.0, "{life:?}");
    let sum = life[LIFETIME_LE.len()];
    assert!(
        sum >= 10.0 * hold.as_secs_f64() && sum <= spent,
        "lifetimes sum {sum}, the loop took {spent}"
    );

    // A worker killed: what it counted stays, folded into the bases.
    let victim = proxy.worker_pids()[1].unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_until(Duration::from_secs(20), "slot 1 respawned", || {
        proxy.ctl_json("workers")[1]["state"] == "up"
            && proxy
                .scrape()
                .get("rrproxy_worker_restarts_total", &[("worker", "1")])
                == Some(1.0)
    });
    let after = proxy.scrape();
    assert_eq!(
        histogram(
            &after,
            CONNECT,
            &[("service", "default"), ("backend", &e)],
            &CONNECT_LE
        ),
        connect
    );
    assert_eq!(histogram(&after, LIFETIME, &[], &LIFETIME_LE), life);
    // And counting goes on from there, on both slots.
    for i in 10..12 {
        one(&proxy, i, Duration::ZERO);
    }
    wait_until(Duration::from_secs(10), "twelve lifetimes", || {
        let m = proxy.scrape();
        m.get(&format!("{LIFETIME}_count"), &[]) == Some(12.0)
            && m.get(
                &format!("{CONNECT}_count"),
                &[("service", "default"), ("backend", &e)],
            ) == Some(12.0)
    });
}
