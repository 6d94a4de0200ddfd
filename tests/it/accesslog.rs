//! The access log (`--access-log`): one line per connection that matches
//! what happened (who, where, bytes each way, how it ended), as text and
//! as JSON; a stalled writer never stalls proxying and counts its drops;
//! logrotate's rename + SIGUSR1 (or `ctl log reopen`) moves the workers to
//! the new file, and a reopen that fails keeps the old one.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::support::*;

/// A backend that reads one command line, then: `close N` writes N bytes
/// and closes; `echo` echoes the rest until EOF, then shuts down its
/// write side; `reset` closes with a reset; `wait` reads until the client
/// goes. Every command it got is recorded.
fn command_backend() -> (Backend, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let backend = spawn_backend_on(listen_any(), move |mut conn| {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 64 && matches!(conn.read(&mut byte), Ok(1)) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        s.lock().unwrap().push(line.clone());
        let mut buf = vec![0u8; 64 * 1024];
        match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("close", n) => {
                let n: usize = n.parse().unwrap();
                let _ = conn.write_all(&vec![b'x'; n]);
            }
            ("echo", _) => {
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
                while matches!(conn.read(&mut buf), Ok(1..)) {}
            }
            ("reset", _) => {
                let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
            }
            _ => {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                while matches!(conn.read(&mut buf), Ok(1..)) {}
            }
        }
    });
    (backend, seen)
}

/// One line, as key → value (text `k=v` pairs, or a JSON object).
fn fields(line: &str, json: bool) -> HashMap<String, String> {
    if json {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".into(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    } else {
        line.split(' ')
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not key=value: {kv:?} in {line}"));
                (k.to_string(), v.to_string())
            })
            .collect()
    }
}

/// The lines of `path` once it has at least `n`.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    wait_for(
        Duration::from_secs(15),
        &format!("{n} access log lines"),
        || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(String::from).collect();
            (lines.len() >= n).then_some(lines)
        },
    )
}

/// Connect from `src` and send `line`.
fn send(proxy: &Proxy, src: u8, line: &[u8]) -> TcpStream {
    let mut s = proxy.connect_from(Ipv4Addr::new(127, 0, 0, src));
    s.write_all(line).unwrap();
    s
}

fn known_workload(json: bool) {
    let began = SystemTime::now();
    let (backend, seen) = command_backend();
    let dir = temp_dir("alog");
    let path = dir.join("access.log");
    let mut cmd = ProxyCmd::new(&[backend.addr])
        .workers(2)
        .args(["--idle-timeout", "1s", "--access-log"])
        .arg(path.display().to_string());
    if json {
        cmd = cmd.args(["--log-format", "json"]);
    }
    let proxy = cmd.start();
    let seen_count = |what: &str| seen.lock().unwrap().iter().filter(|c| *c == what).count();

    // 127.0.0.2: the backend answers 5000 bytes and closes first.
    let mut s = send(&proxy, 2, b"close 5000\n");
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 5000);
    drop(s);
    // 127.0.0.3: the client sends 1000 bytes and closes first.
    let mut s = send(&proxy, 3, b"echo\n");
    s.write_all(&random_bytes(3, 1000)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, random_bytes(3, 1000));
    drop(s);
    // 127.0.0.4: the backend resets.
    let mut s = send(&proxy, 4, b"reset\n");
    let _ = s.read_to_end(&mut Vec::new());
    drop(s);
    // 127.0.0.5: the client resets (once its line reached the backend).
    let s = send(&proxy, 5, b"wait\n");
    wait_until(Duration::from_secs(10), "the backend to get 'wait'", || {
        seen_count("wait") == 1
    });
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    // 127.0.0.6: quiet until the idle timeout (1 s) closes it.
    let mut s = send(&proxy, 6, b"wait\n");
    let idle_began = Instant::now();
    let _ = s.read_to_end(&mut Vec::new());
    assert!(idle_began.elapsed() >= Duration::from_millis(900));

    // No backend to reach: a proxy whose only backend refuses.
    let refused = refused_addr();
    let failing_path = dir.join("failing.log");
    let mut cmd = ProxyCmd::new(&[refused])
        .workers(1)
        .args(["--retries", "0", "--health-interval", "off", "--access-log"])
        .arg(failing_path.display().to_string());
    if json {
        cmd = cmd.args(["--log-format", "json"]);
    }
    let failing = cmd.start();
    // The reset may come before connect(2) has returned to us.
    match failing.try_connect_from(Ipv4Addr::new(127, 0, 0, 7)) {
        Ok(mut s) => {
            let _ = s.read_to_end(&mut Vec::new());
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }

    let mut lines = wait_lines(&path, 5);
    lines.extend(wait_lines(&failing_path, 1));
    let ended = SystemTime::now();
    assert_eq!(lines.len(), 6, "one line per connection: {lines:#?}");
    let by_client: HashMap<String, HashMap<String, String>> = lines
        .iter()
        .map(|l| {
            let f = fields(l, json);
            let ip = f["client"].parse::<SocketAddr>().unwrap().ip().to_string();
            (ip, f)
        })
        .collect();
    let b = backend.addr.to_string();
    // client, backend, bytes up, bytes down, how it ended
    let expected = [
        ("127.0.0.2", b.as_str(), 11, 5000, "backend_closed"),
        ("127.0.0.3", b.as_str(), 1005, 1000, "client_closed"),
        ("127.0.0.4", b.as_str(), 6, 0, "backend_reset"),
        ("127.0.0.5", b.as_str(), 5, 0, "client_reset"),
        ("127.0.0.6", b.as_str(), 5, 0, "idle_timeout"),
        ("127.0.0.7", "-", 0, 0, "connect_failed"),
    ];
    for (client, backend, up, down, end) in expected {
        let f = by_client
            .get(client)
            .unwrap_or_else(|| panic!("no line for {client}: {lines:#?}"));
        let line = format!("{f:?}");
        assert_eq!(f["backend"], backend, "{line}");
        assert_eq!(f["bytes_up"], up.to_string(), "{line}");
        assert_eq!(f["bytes_down"], down.to_string(), "{line}");
        assert_eq!(f["end"], end, "{line}");
        let time = humantime::parse_rfc3339(&f["time"]).unwrap();
        let slack = Duration::from_millis(5);
        assert!(time + slack >= began && time <= ended + slack, "{line}");
        let duration: f64 = f["duration"].parse().unwrap();
        assert!((0.0..60.0).contains(&duration), "{line}");
        if end == "idle_timeout" {
            assert!(duration >= 0.9, "{line}");
        }
    }
    // Each line names its worker slot: as many per slot as it was handed.
    let metrics = proxy.scrape();
    let handed = metrics.per_worker("rrproxy_worker_connections_total", 2);
    for (slot, n) in handed.iter().enumerate() {
        let logged = by_client
            .values()
            .filter(|f| f["backend"] != "-" && f["worker"] == slot.to_string())
            .count();
        assert_eq!(logged as f64, *n, "worker {slot}: {lines:#?}");
    }
    let mut ids: Vec<&String> = by_client
        .values()
        .filter(|f| f["backend"] != "-")
        .map(|f| &f["conn"])
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "connection ids are distinct");
    assert_eq!(
        metrics.get("rrproxy_access_log_lines_dropped_total", &[]),
        Some(0.0)
    );
    drop((proxy, failing));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn text_lines_match_a_known_workload() {
    known_workload(false);
}

#[test]
fn json_lines_match_a_known_workload() {
    known_workload(true);
}

fn dropped(proxy: &Proxy) -> f64 {
    proxy
        .scrape()
        .get("rrproxy_access_log_lines_dropped_total", &[])
        .unwrap()
}

#[test]
fn a_stalled_access_log_never_stalls_proxying_and_counts_its_drops() {
    let backend = echo_backend();
    let dir = temp_dir("alog-stall");
    let fifo = dir.join("access.fifo");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(ok.success());
    // Open for reading, and read nothing: the writers fill the pipe and
    // block in write(2).
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_nonblock())
        .open(&fifo)
        .unwrap();
    let proxy = ProxyCmd::new(&[backend.addr])
        .workers(2)
        .args(["--access-log", &fifo.display().to_string()])
        .start();
    // Far more connections than the queues and the pipe hold.
    let load = Load::start_echo(&proxy, 8);
    wait_until(
        Duration::from_secs(90),
        "access log lines to be dropped",
        || load.counts().0 >= 3000 && dropped(&proxy) > 0.0,
    );
    // Proxying goes on at full pace while the log is stalled.
    let before = load.counts().0;
    wait_until(Duration::from_secs(20), "2000 more requests", || {
        load.counts().0 >= before + 2000
    });
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    // Every connection is in the log or counted as dropped, once the
    // reader catches up.
    let accepted = proxy
        .scrape()
        .get("rrproxy_accepted_connections_total", &[])
        .unwrap();
    assert_eq!(accepted as u64, ok);
    let mut text = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    wait_until(
        Duration::from_secs(20),
        "lines written + dropped = connections",
        || {
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                text.extend_from_slice(&buf[..n]);
            }
            let lines = text.iter().filter(|&&b| b == b'\n').count() as f64;
            lines + dropped(&proxy) == accepted
        },
    );
    let text = String::from_utf8(text).unwrap();
    for l in text.lines() {
        let f = fields(l, false);
        assert_eq!(f["end"], "client_closed", "{l}");
        assert_eq!(
            (f["bytes_up"].as_str(), f["bytes_down"].as_str()),
            ("5", "5")
        );
    }
    assert!(
        proxy.stderr().contains("worker") && !proxy.stderr().contains("panicked"),
        "{}",
        proxy.stderr()
    );
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn libc_nonblock() -> i32 {
    rustix::fs::OFlags::NONBLOCK.bits() as i32
}

/// Make `n` connections through the proxy (each reads the backend's name).
fn requests(proxy: &Proxy, n: usize) {
    for _ in 0..n {
        assert_eq!(fetch_name(proxy), "a");
    }
}

/// How many times the workers said they (re)opened the access log.
fn reopened(proxy: &Proxy) -> usize {
    proxy.stderr().matches("access log (re)opened").count()
}

#[test]
fn logrotate_rename_then_sigusr1_or_ctl_moves_every_worker_to_the_new_file() {
    let backend = name_backend("a");
    let dir = temp_dir("alog-rotate");
    let path = dir.join("access.log");
    let proxy = ProxyCmd::new(&[backend.addr])
        .workers(2)
        .args(["--access-log", &path.display().to_string()])
        .start();
    wait_until(Duration::from_secs(10), "both workers to open it", || {
        reopened(&proxy) == 2
    });
    requests(&proxy, 6);
    assert_eq!(wait_lines(&path, 6).len(), 6);

    // logrotate: rename, then `postrotate kill -USR1`.
    let first = dir.join("access.log.1");
    std::fs::rename(&path, &first).unwrap();
    proxy.signal("USR1");
    wait_until(Duration::from_secs(10), "both workers to reopen", || {
        reopened(&proxy) == 4
    });
    requests(&proxy, 4);
    assert_eq!(wait_lines(&path, 4).len(), 4);
    assert_eq!(
        std::fs::read_to_string(&first).unwrap().lines().count(),
        6,
        "nothing more went to the rotated file"
    );

    // The same with `ctl log reopen`.
    let second = dir.join("access.log.2");
    std::fs::rename(&path, &second).unwrap();
    let reply = proxy.ctl("log reopen");
    assert!(reply.contains("reopen sent to 2 worker"), "{reply}");
    wait_until(Duration::from_secs(10), "both workers to reopen", || {
        reopened(&proxy) == 6
    });
    requests(&proxy, 3);
    assert_eq!(wait_lines(&path, 3).len(), 3);
    assert_eq!(std::fs::read_to_string(&second).unwrap().lines().count(), 4);

    // A reopen that fails (a directory where the file should be) is
    // logged, and the workers keep writing to the file they have.
    let third = dir.join("access.log.3");
    std::fs::rename(&path, &third).unwrap();
    std::fs::create_dir(&path).unwrap();
    proxy.ctl("log reopen");
    wait_until(Duration::from_secs(10), "both workers to say why", || {
        proxy.stderr().matches("cannot open the access log").count() == 2
    });
    requests(&proxy, 2);
    assert_eq!(wait_lines(&third, 5).len(), 5);
    assert!(
        proxy
            .stderr()
            .contains(&format!("still writing to {}", path.display())),
        "{}",
        proxy.stderr()
    );
    let m = proxy.scrape();
    assert_eq!(
        m.get("rrproxy_access_log_lines_dropped_total", &[]),
        Some(0.0)
    );
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reopen_without_an_access_log_file_says_why() {
    let backend = name_backend("a");
    let proxy = ProxyCmd::new(&[backend.addr]).workers(1).start();
    let reply = proxy.ctl("log reopen");
    assert!(reply.starts_with("error: the access log is off"), "{reply}");
    // SIGUSR1 is harmless too.
    proxy.signal("USR1");
    proxy.wait_log("SIGUSR1: the access log is off");
    assert_eq!(fetch_name(&proxy), "a");
}

#[test]
fn an_access_log_that_cannot_be_opened_is_refused_at_start() {
    let dir = temp_dir("alog-bad");
    let path = dir.join("no-such-dir").join("access.log");
    let (st, err) = run_bin(&[
        "-b",
        "127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "off",
        "--control",
        "off",
        "--access-log",
        &path.display().to_string(),
    ]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end().lines().last().unwrap(),
        format!(
            "rrproxy: error: cannot open the access log {}: No such file or directory (os error 2)",
            path.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reload_moves_the_access_log_and_says_so() {
    let backend = name_backend("a");
    let dir = temp_dir("alog-reload");
    let first = dir.join("first.log");
    let second = dir.join("second.log");
    let config = dir.join("rrproxy.toml");
    let write = |log: &Path| {
        std::fs::write(
            &config,
            format!(
                "backends = [\"{}\"]\naccess-log = \"{}\"\n",
                backend.addr,
                log.display()
            ),
        )
        .unwrap();
    };
    write(&first);
    let proxy = ProxyCmd::new(&[])
        .args(["--config", config.to_str().unwrap()])
        .workers(2)
        .start();
    requests(&proxy, 3);
    assert_eq!(wait_lines(&first, 3).len(), 3);
    write(&second);
    let reply = proxy.ctl("config reload");
    assert!(
        reply.contains(&format!("access log -> {}", second.display())),
        "{reply}"
    );
    wait_until(Duration::from_secs(10), "both workers to open it", || {
        proxy
            .stderr()
            .matches(&format!("access_log={}", second.display()))
            .count()
            == 2
    });
    requests(&proxy, 2);
    assert_eq!(wait_lines(&second, 2).len(), 2);
    assert_eq!(std::fs::read_to_string(&first).unwrap().lines().count(), 3);
    // A target that cannot be opened: the reply says so, and the workers
    // keep the file they have.
    let bad = dir.join("missing").join("x.log");
    write(&bad);
    let reply = proxy.ctl("config reload");
    assert!(
        reply.contains("cannot be opened") && reply.contains("the workers keep the old one"),
        "{reply}"
    );
    wait_until(Duration::from_secs(10), "both workers to say why", || {
        proxy.stderr().matches("cannot open the access log").count() == 2
    });
    requests(&proxy, 1);
    assert_eq!(wait_lines(&second, 3).len(), 3);
    drop(proxy);
    std::fs::remove_dir_all(&dir).unwrap();
}
