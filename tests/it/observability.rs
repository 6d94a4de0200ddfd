//! Observability: the metrics a known workload produces, byte counters that
//! advance during long connections, `promtool` on a live scrape, a real
//! Prometheus server scraping the proxy, systemd notification and socket
//! activation, JSON logs, `ctl top`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// An external tool the test needs. The build script (`build.rs`) found
/// it, or the test would be ignored; CI (`RRPROXY_REQUIRE_TOOLS=1`, set by
/// `.ci/run`, which installs them) runs every test, so a missing tool fails.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{name} is not installed (apt-get install prometheus)"))
}

/// Every metric the README documents.
const DOCUMENTED: &[&str] = &[
    "rrproxy_worker_connections_total",
    "rrproxy_worker_active_connections",
    "rrproxy_worker_restarts_total",
    "rrproxy_worker_up",
    "rrproxy_worker_received_bytes_total",
    "rrproxy_worker_sent_bytes_total",
    "rrproxy_worker_imbalance_ratio",
    "rrproxy_backend_connections_total",
    "rrproxy_backend_active_connections",
    "rrproxy_backend_up",
    "rrproxy_backend_connect_failures_total",
    "rrproxy_backend_check_failures_total",
    "rrproxy_backend_redispatches_total",
    "rrproxy_backend_received_bytes_total",
    "rrproxy_backend_sent_bytes_total",
    "rrproxy_backend_weight",
    "rrproxy_backend_connect_seconds_bucket",
    "rrproxy_connection_duration_seconds_bucket",
    "rrproxy_accepted_connections_total",
    "rrproxy_accept_errors_total",
    "rrproxy_handoff_failures_total",
    "rrproxy_redispatched_connections_total",
    "rrproxy_failed_connections_total",
    "rrproxy_refused_connections_total",
    "rrproxy_active_connections",
    "rrproxy_open_fds",
    "rrproxy_max_fds",
    "rrproxy_worker_connection_limit",
    "rrproxy_pending_connections",
    "rrproxy_accept_paused",
    "rrproxy_policy_info",
    "rrproxy_policy_changes_total",
    "rrproxy_build_info",
    "rrproxy_log_lines_dropped_total",
    "rrproxy_client_first_byte_timeouts_total",
    "rrproxy_denied_connections_total",
    "rrproxy_proxy_header_errors_total",
    "rrproxy_backend_max_connections",
    "rrproxy_backend_queue_length",
    "rrproxy_backend_queued_total",
    "rrproxy_backend_queue_timeouts_total",
    "rrproxy_backend_queue_overflows_total",
    "rrproxy_backend_queue_abandoned_total",
    "rrproxy_backend_queue_wait_seconds_bucket",
];

#[test]
fn a_known_workload_shows_in_every_metric() {
    let echo = echo_backend();
    let dead = refused_addr();
    // (--fall 10: five failures must not mark the dead one down.)
    let proxy = ProxyCmd::new(&[echo.addr, dead])
        .workers(2)
        .args(["--health-interval", "off", "--fall", "10"])
        .start();
    for i in 0..10u64 {
        let mut s = proxy.connect();
        let data = random_bytes(i, 1000);
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
    }
    let (e, d) = (echo.addr.to_string(), dead.to_string());
    // A worker counts bytes right after it writes them, and a connection's
    // end after it closes: the client may be done a moment earlier.
    let m = wait_for(Duration::from_secs(5), "all events reported", || {
        let m = proxy.scrape();
        let bytes = m.get(
            "rrproxy_backend_received_bytes_total",
            &[("service", "default"), ("backend", &e)],
        );
        let closed = m.get("rrproxy_connection_duration_seconds_count", &[]);
        (bytes == Some(10_000.0) && closed == Some(10.0)).then_some(m)
    });
    for name in DOCUMENTED {
        assert!(
            m.series.keys().any(|k| k.split('{').next() == Some(*name)),
            "{name} missing from the exposition"
        );
    }
    let w = |name: &str, slot: &str| m.get(name, &[("worker", slot)]);
    let b =
        |name: &str, backend: &str| m.get(name, &[("service", "default"), ("backend", backend)]);
    assert_eq!(w("rrproxy_worker_connections_total", "0"), Some(5.0));
    assert_eq!(w("rrproxy_worker_connections_total", "1"), Some(5.0));
    assert_eq!(w("rrproxy_worker_active_connections", "0"), Some(0.0));
    let sum = |name: &str| w(name, "0").unwrap() + w(name, "1").unwrap();
    assert_eq!(sum("rrproxy_worker_received_bytes_total"), 10_000.0);
    assert_eq!(sum("rrproxy_worker_sent_bytes_total"), 10_000.0);
    assert_eq!(b("rrproxy_backend_connections_total", &e), Some(10.0));
    assert_eq!(b("rrproxy_backend_connections_total", &d), Some(0.0));
    assert_eq!(b("rrproxy_backend_sent_bytes_total", &e), Some(10_000.0));
    assert_eq!(b("rrproxy_backend_active_connections", &e), Some(0.0));
    assert_eq!(b("rrproxy_backend_redispatches_total", &d), Some(5.0));
    assert_eq!(b("rrproxy_backend_weight", &e), Some(1.0));
    assert_eq!(
        m.get(
            "rrproxy_backend_connect_failures_total",
            &[
                ("service", "default"),
                ("backend", &d),
                ("reason", "refused")
            ]
        ),
        Some(5.0)
    );
    assert_eq!(
        m.get(
            "rrproxy_backend_connect_seconds_count",
            &[("service", "default"), ("backend", &e)]
        ),
        Some(10.0)
    );
    assert_eq!(m.get("rrproxy_accepted_connections_total", &[]), Some(10.0));
    assert_eq!(
        m.get("rrproxy_redispatched_connections_total", &[]),
        Some(5.0)
    );
    assert_eq!(m.get("rrproxy_failed_connections_total", &[]), Some(0.0));
    assert_eq!(
        m.get("rrproxy_policy_info", &[("policy", "round-robin")]),
        Some(1.0)
    );
    assert_eq!(
        m.sum_where("rrproxy_build_info", "version", env!("CARGO_PKG_VERSION")),
        1.0
    );
    assert_eq!(w("rrproxy_worker_up", "1"), Some(1.0));
    assert_eq!(w("rrproxy_worker_restarts_total", "1"), Some(0.0));

    // A restart shows too.
    let victim = proxy.worker_pids()[1].unwrap();
    assert!(
        Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_until(Duration::from_secs(5), "restart counted", || {
        proxy
            .scrape()
            .get("rrproxy_worker_restarts_total", &[("worker", "1")])
            == Some(1.0)
    });
}

#[test]
fn byte_counters_advance_while_a_connection_is_open() {
    let echo = echo_backend();
    let proxy = ProxyCmd::new(&[echo.addr]).workers(1).start();
    let mut s = proxy.connect();
    let data = random_bytes(5, 200_000);
    s.write_all(&data).unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    wait_until(
        Duration::from_secs(5),
        "bytes reported before close",
        || {
            proxy
                .scrape()
                .get("rrproxy_worker_received_bytes_total", &[("worker", "0")])
                == Some(200_000.0)
        },
    );
    assert_eq!(
        proxy
            .scrape()
            .get("rrproxy_worker_active_connections", &[("worker", "0")]),
        Some(1.0),
        "the connection is still open"
    );
}

#[test]
#[cfg_attr(
    not(has_promtool),
    ignore = "needs promtool: apt-get install prometheus"
)]
fn promtool_accepts_a_live_scrape() {
    let promtool = tool("promtool");
    let b = name_backend("p");
    let proxy = ProxyCmd::new(&[b.addr, refused_addr()]).workers(2).start();
    for _ in 0..5 {
        fetch_name(&proxy);
    }
    let text = proxy.scrape().text;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let dir = temp_dir("notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = dir.join("rrproxy.toml");
    let b = name_backend("n");
    std::fs::write(&config, format!("backends = [\"{}\"]\n", b.addr)).unwrap();
    let mut proxy = ProxyCmd::new(&[])
        .args(["--config", config.to_str().unwrap()])
        .workers(1)
        .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .start();
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(next().contains("READY=1"));
    proxy.signal("HUP");
    let reloading = next();
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(next().contains("READY=1"));
    proxy.signal("TERM");
    assert!(next().contains("STOPPING=1"));
    assert!(proxy.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn socket_activation_serves_on_the_inherited_listener() {
    let b = name_backend("activated");
    // The "service manager": we bind, rrproxy inherits the socket as fd 3.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sock = socket2::SockRef::from(&listener);
    sock.set_cloexec(false).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let dir = temp_dir("activation");
    let log = dir.join("stderr.log");
    let script = format!(
        "exec 3<&{fd}; exec {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec {BIN} --backend {} --workers 1 --metrics off --control off",
        b.addr
    );
    // bash: dash takes only one-digit descriptors in `exec 3<&N`.
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    drop(listener); // only rrproxy holds it now
    let name = wait_for(
        Duration::from_secs(10),
        "service on the inherited socket",
        || {
            let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            let mut line = String::new();
            BufReader::new(s.try_clone().ok()?)
                .read_line(&mut line)
                .ok()?;
            let _ = s.shutdown(Shutdown::Both);
            Some(line.trim().to_string())
        },
    );
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(name, "activated", "{stderr}");
    assert!(stderr.contains("socket activation"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_logs_are_json_and_connections_are_not_logged_by_default() {
    let b = name_backend("j");
    let proxy = ProxyCmd::new(&[b.addr])
        .workers(1)
        .args(["--log-format", "json"])
        .start();
    for _ in 0..5 {
        fetch_name(&proxy);
    }
    // (Log lines are written asynchronously.)
    proxy.wait_log("\"worker up\"");
    let log = proxy.stderr();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        assert_ne!(
            v["level"], "DEBUG",
            "no per-connection lines at the default level"
        );
    }
    assert!(log.contains("\"worker up\""), "{log}");
}

#[test]
fn ctl_top_draws_frames() {
    let b = name_backend("t");
    let proxy = ProxyCmd::new(&[b.addr]).workers(2).start();
    fetch_name(&proxy);
    let text = run_ok(&[
        "ctl",
        "--control",
        proxy.control.to_str().unwrap(),
        "top",
        "2",
    ]);
    assert_eq!(text.matches("WORKER").count(), 2, "{text}");
    assert!(
        text.contains(&b.addr.to_string()) && text.contains("/s"),
        "{text}"
    );
}

/// A real Prometheus server (Debian's `prometheus`) on loopback.
struct PromServer {
    child: std::process::Child,
    dir: PathBuf,
    addr: std::net::SocketAddr,
}

impl Drop for PromServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}",
                std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl PromServer {
    /// Start Prometheus with `deploy/prometheus/prometheus-ci.yml` (and
    /// the alert rules) scraping `target`.
    fn start(bin: &std::path::Path, target: std::net::SocketAddr) -> PromServer {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = temp_dir("prometheus");
        let template =
            std::fs::read_to_string(root.join("deploy/prometheus/prometheus-ci.yml")).unwrap();
        assert!(template.contains("RRPROXY_METRICS_TARGET"));
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            template.replace("RRPROXY_METRICS_TARGET", &target.to_string()),
        )
        .unwrap();
        std::fs::copy(
            root.join("deploy/prometheus/rules.yml"),
            dir.join("rules.yml"),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut server = PromServer {
            child,
            dir,
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        // It logs `msg="Listening on" address=127.0.0.1:PORT`.
        server.addr = wait_for(Duration::from_secs(20), "prometheus to listen", || {
            let text = std::fs::read_to_string(&log).ok()?;
            let line = text.lines().find(|l| l.contains("Listening on"))?;
            line.split("address=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
        server
    }

    /// Run an instant query; returns the `data.result` array.
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = http_get(self.addr, &format!("/api/v1/query?query={encoded}"));
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

#[test]
#[cfg_attr(
    not(has_prometheus),
    ignore = "needs prometheus: apt-get install prometheus"
)]
fn a_real_prometheus_scrapes_the_distribution() {
    let bin = tool("prometheus");
    let b = name_backend("prom");
    let proxy = ProxyCmd::new(&[b.addr]).workers(3).start();
    let prom = PromServer::start(&bin, proxy.metrics.unwrap());
    for _ in 0..30 {
        assert_eq!(fetch_name(&proxy), "prom");
    }
    // Prometheus scrapes every second; wait until it has seen all 30.
    let per_worker = wait_for(
        Duration::from_secs(30),
        "prometheus to see the connections",
        || {
            let result = prom.query("sum by (worker) (rrproxy_worker_connections_total)");
            let counts: std::collections::BTreeMap<String, f64> = result
                .iter()
                .map(|r| {
                    let slot = r["metric"]["worker"].as_str().unwrap_or("?").to_string();
                    (
                        slot,
                        r["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
                    )
                })
                .collect();
            (counts.values().sum::<f64>() == 30.0).then_some(counts)
        },
    );
    let expected: std::collections::BTreeMap<String, f64> =
        (0..3).map(|w| (w.to_string(), 10.0)).collect();
    assert_eq!(
        per_worker, expected,
        "round-robin over 3 slots, as Prometheus sees it"
    );
    // The scrape is healthy and the alert rules load and evaluate.
    assert_eq!(prom.query("up{job=\"rrproxy\"}")[0]["value"][1], "1");
    let rules = http_get(prom.addr, "/api/v1/rules");
    let v: serde_json::Value = serde_json::from_str(&rules).unwrap();
    let groups = v["data"]["groups"].as_array().unwrap();
    assert!(!groups.is_empty(), "alert rules loaded: {rules}");
    for g in groups {
        for r in g["rules"].as_array().unwrap() {
            assert_ne!(
                r["health"], "err",
                "rule {} failed: {}",
                r["name"], r["lastError"]
            );
        }
    }
}

#[test]
#[cfg_attr(
    not(all(has_promtool, has_python3)),
    ignore = "needs promtool and python3: apt-get install prometheus python3"
)]
fn deploy_artifacts_validate() {
    tool("promtool");
    tool("python3");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("deploy/validate.sh"))
        .env("RRPROXY_BIN", BIN)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/validate.sh failed:\n{text}");
    assert!(text.contains("0 failed"), "{text}");
}

/// A worker killed in the middle of counting: the counts stay right. What
/// it had counted (connections, bytes) stays in the totals, which never go
/// back; what it held leaves the active gauges; the survivor's connections
/// are still counted; and the respawned worker counts on from there.
#[test]
fn a_worker_killed_mid_count_leaves_the_counts_right() {
    let echo = echo_backend();
    let e = echo.addr.to_string();
    let proxy = ProxyCmd::new(&[echo.addr]).workers(2).start();
    // Four held connections, two per worker (round-robin), each echoed once.
    let mut held: Vec<std::net::TcpStream> = (0..4)
        .map(|i| {
            let mut s = proxy.connect();
            let data = random_bytes(i, 1000);
            s.write_all(&data).unwrap();
            let mut got = vec![0u8; 1000];
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, data);
            s
        })
        .collect();
    let active = |m: &Metrics| {
        m.get(
            "rrproxy_backend_active_connections",
            &[("service", "default"), ("backend", &e)],
        )
    };
    let conns = |m: &Metrics| {
        m.get(
            "rrproxy_backend_connections_total",
            &[("service", "default"), ("backend", &e)],
        )
    };
    let bytes = |m: &Metrics| {
        m.get(
            "rrproxy_backend_received_bytes_total",
            &[("service", "default"), ("backend", &e)],
        )
    };
    // A worker counts a chunk right after writing it, so the client may
    // read its echo a moment before the count lands: wait for all three.
    wait_until(Duration::from_secs(5), "all four counted", || {
        let m = proxy.scrape();
        active(&m) == Some(4.0) && conns(&m) == Some(4.0) && bytes(&m) == Some(4000.0)
    });
    let victim = proxy.worker_pids()[1].unwrap();
    let rows = proxy.ctl_json("workers");
    assert_eq!(rows[1]["active"], 2);
    std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    let after = wait_for(Duration::from_secs(10), "the dead worker folded", || {
        let m = proxy.scrape();
        (active(&m) == Some(2.0)).then_some(m)
    });
    assert_eq!(conns(&after), Some(4.0), "counted connections stay");
    assert_eq!(bytes(&after), Some(4000.0), "counted bytes stay");
    assert_eq!(
        after.get("rrproxy_worker_active_connections", &[("worker", "1")]),
        Some(0.0)
    );
    assert_eq!(
        after.get("rrproxy_worker_active_connections", &[("worker", "0")]),
        Some(2.0)
    );
    // The survivors still work and are still counted; a new worker counts
    // on from the folded totals.
    wait_until(Duration::from_secs(10), "slot 1 back", || {
        proxy.ctl_json("workers")[1]["state"] == "up"
    });
    for _ in 0..2 {
        let mut s = proxy.connect();
        s.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
    }
    held.retain_mut(|s| s.write_all(b"y").is_ok() && s.read_exact(&mut [0u8; 1]).is_ok());
    assert_eq!(held.len(), 2, "the survivor's connections still work");
    drop(held);
    wait_until(
        Duration::from_secs(10),
        "everything closed and counted",
        || {
            let m = proxy.scrape();
            active(&m) == Some(0.0) && conns(&m) == Some(6.0) && bytes(&m) == Some(4004.0)
        },
    );
}
