//! The control socket and the config file: every command, hostile
//! clients, `rrproxy check`, SIGHUP reloads good and bad.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn names(proxy: &Proxy, n: usize) -> Vec<String> {
    (0..n).map(|_| fetch_name(proxy)).collect()
}

#[test]
fn status_workers_backends_and_policy_report_the_truth() {
    let a = name_backend("a");
    let b = name_backend("b");
    let proxy = ProxyCmd::new(&[a.addr, b.addr]).workers(2).start();
    names(&proxy, 4);
    let status = proxy.ctl_json("status");
    assert_eq!(status["workers"], 2);
    assert_eq!(status["workers_up"], 2);
    assert_eq!(status["backends_up"], 2);
    assert_eq!(status["total_connections"], 4);
    assert_eq!(status["policy"], "round-robin");
    assert_eq!(status["listen"][0], proxy.listen.to_string());

    let workers = proxy.ctl_json("workers");
    assert_eq!(workers.as_array().unwrap().len(), 2);
    for (slot, w) in workers.as_array().unwrap().iter().enumerate() {
        assert_eq!(w["slot"], slot);
        assert_eq!(w["state"], "up");
        assert_eq!(w["total"], 2);
        assert!(w["pid"].as_u64().is_some());
    }
    let backends = proxy.ctl_json("backends");
    assert_eq!(backends[0]["address"], a.addr.to_string());
    assert_eq!(backends[0]["state"], "up");
    assert_eq!(backends[0]["total"], 2);
    assert_eq!(proxy.ctl("policy"), "round-robin");

    // The human forms are tables with the same facts.
    let table = proxy.ctl("workers");
    assert!(
        table.starts_with("SLOT") && table.lines().count() == 3,
        "{table}"
    );
    let table = proxy.ctl("backends");
    assert!(
        table.contains(&b.addr.to_string()) && table.contains(" up "),
        "{table}"
    );
    assert!(proxy.ctl("status").contains("workers      2/2 up"));
    assert!(proxy.ctl("help").contains("backend add"));

    // The control socket is private to its owner.
    let mode = std::fs::metadata(&proxy.control)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn backends_can_be_added_disabled_enabled_and_removed_at_run_time() {
    let a = name_backend("a");
    let b = name_backend("b");
    let proxy = ProxyCmd::new(&[a.addr]).workers(2).start();
    assert!(names(&proxy, 4).iter().all(|n| n == "a"));

    let reply = proxy.ctl(&format!("backend add {},weight=2", b.addr));
    assert!(reply.contains("added"), "{reply}");
    let got = names(&proxy, 6);
    assert_eq!(
        got.iter().filter(|n| *n == "b").count(),
        4,
        "weight 2 of 3: {got:?}"
    );

    proxy.ctl(&format!("backend disable {}", a.addr));
    assert!(names(&proxy, 4).iter().all(|n| n == "b"));
    assert_eq!(proxy.ctl_json("backends")[0]["state"], "disabled");
    proxy.ctl(&format!("backend enable {}", a.addr));
    assert!(names(&proxy, 6).iter().any(|n| n == "a"));

    // Remove drains: an open connection on it finishes, new ones go elsewhere.
    let mut held = wait_for(Duration::from_secs(5), "a connection on a", || {
        let mut s = proxy.connect();
        (read_name(&mut s) == "a").then_some(s)
    });
    let reply = proxy.ctl(&format!("backend remove {}", a.addr));
    assert!(reply.contains("draining"), "{reply}");
    assert_eq!(proxy.ctl_json("backends")[0]["state"], "draining");
    assert!(names(&proxy, 4).iter().all(|n| n == "b"));
    held.write_all(b"still here\n").unwrap();
    drop(held);
    wait_until(
        Duration::from_secs(5),
        "drained backend to leave the list",
        || proxy.ctl_json("backends").as_array().unwrap().len() == 1,
    );
    // The last backend cannot be removed.
    let reply = proxy.ctl(&format!("backend remove {}", b.addr));
    assert!(
        reply.starts_with("error:") && reply.contains("last backend"),
        "{reply}"
    );
    let reply = proxy.ctl(&format!("backend add {}", b.addr));
    assert!(
        reply.starts_with("error:") && reply.contains("already exists"),
        "{reply}"
    );
}

#[test]
fn bad_commands_get_an_error_and_change_nothing() {
    let a = name_backend("a");
    let proxy = ProxyCmd::new(&[a.addr]).workers(1).start();
    let before = proxy.ctl("backends");
    for (cmd, needle) in [
        ("frobnicate", "unknown command 'frobnicate'"),
        ("policy fastest", "unknown policy 'fastest'"),
        ("backend add nonsense", "invalid backend 'nonsense'"),
        ("backend remove 10.9.9.9:1", "no backend named '10.9.9.9:1'"),
        ("backend explode 1.2.3.4:5", "usage: backend"),
        ("workers now", "takes no arguments"),
        ("\u{1}\u{2}\u{3}", "unknown command"),
    ] {
        let reply = proxy.ctl(cmd);
        assert!(
            reply.starts_with("error: ") && reply.contains(needle),
            "{cmd:?}: {reply}"
        );
        assert_eq!(reply.lines().count(), 1, "{cmd:?}: one line");
    }
    let json: serde_json::Value = serde_json::from_str(&proxy.ctl("nope --json")).unwrap();
    assert!(json["error"].as_str().unwrap().contains("unknown command"));
    assert_eq!(proxy.ctl("backends"), before, "nothing changed");
    assert_eq!(fetch_name(&proxy), "a");
}

#[test]
fn hostile_control_clients_cannot_block_anything() {
    let a = name_backend("a");
    let proxy = ProxyCmd::new(&[a.addr]).workers(1).start();
    // A client that connects and says nothing...
    let _silent = UnixStream::connect(&proxy.control).unwrap();
    // ...one that sends a partial line and stalls...
    let mut partial = UnixStream::connect(&proxy.control).unwrap();
    partial.write_all(b"stat").unwrap();
    // ...and one that sends an endless line.
    let mut flood = UnixStream::connect(&proxy.control).unwrap();
    flood
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let junk = vec![b'x'; 8192];
    let _ = flood.write_all(&junk);
    let mut reply = String::new();
    let _ = flood.read_to_string(&mut reply);
    assert!(reply.contains("longer than 4096 bytes"), "{reply:?}");
    // Invalid UTF-8 gets an error, the session goes on.
    let mut bin = UnixStream::connect(&proxy.control).unwrap();
    bin.write_all(b"\xff\xfe\n").unwrap();
    let mut r = BufReader::new(bin.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("not valid UTF-8"), "{line}");
    // Meanwhile, everything else works.
    let t = Instant::now();
    assert!(proxy.ctl("status").contains("rrproxy"));
    assert_eq!(fetch_name(&proxy), "a");
    assert!(t.elapsed() < Duration::from_secs(2));
    // Several commands on one connection, like socat by hand.
    let mut s = UnixStream::connect(&proxy.control).unwrap();
    s.write_all(b"policy\nworkers --json\nquit\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("round-robin\n\n[{"), "{all}");
}

#[test]
fn ctl_client_prints_replies_and_fails_on_errors() {
    let a = name_backend("a");
    let proxy = ProxyCmd::new(&[a.addr]).workers(1).start();
    let ctl = |args: &[&str]| {
        let mut full = vec!["ctl", "--control", proxy.control.to_str().unwrap()];
        full.extend_from_slice(args);
        Command::new(BIN).args(&full).output().unwrap()
    };
    let out = ctl(&["policy"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "round-robin");
    let out = ctl(&["--json", "workers"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["slot"], 0);
    let out = ctl(&["bogus"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("rrproxy ctl: error: unknown command 'bogus'"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["ctl", "--control", "/nonexistent/rrproxy.sock", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot reach rrproxy at /nonexistent/rrproxy.sock")
    );
}

#[test]
fn the_control_socket_is_removed_on_exit_and_a_live_one_is_not_stolen() {
    let a = name_backend("a");
    let mut proxy = ProxyCmd::new(&[a.addr]).workers(1).start();
    // A second proxy on the same control path is refused.
    let (st, err) = run_bin(&[
        "--backend",
        &a.addr.to_string(),
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "off",
        "--control",
        proxy.control.to_str().unwrap(),
    ]);
    assert!(!st.success());
    assert!(err.contains("is in use by another process"), "{err}");
    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(20)).success());
    assert!(!proxy.control.exists(), "socket removed on exit");
}

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("rrproxy.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn check_validates_config_files() {
    let dir = temp_dir("check");
    let good = write_config(
        &dir,
        "backends = [\"127.0.0.1:8081\", { address = \"127.0.0.1:8082\", weight = 2 }]\nworkers = 2\n",
    );
    let out = run_ok(&["check", "--config", good.to_str().unwrap()]);
    assert!(out.contains("configuration OK"), "{out}");
    for (body, needle) in [
        (
            "backends = [\"127.0.0.1:80\"]\nspeed = 3\n",
            ":2:1: unknown key 'speed'",
        ),
        (
            "backends = [\"127.0.0.1:80\"]\nworkers = 0\n",
            ":2:11: invalid value '0' for 'workers'",
        ),
        (
            "backends = [\"127.0.0.1:80\"]\nidle-timeout = \"never\"\n",
            ":2:16: invalid value 'never' for 'idle-timeout'",
        ),
        ("backends = 5\n", ":1:12:"),
    ] {
        let path = write_config(&dir, body);
        let out = Command::new(BIN)
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{body}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{body}: {err}");
        // One line, and at most a tip.
        let mut lines = err.trim_end().lines();
        assert!(
            lines.next().is_some() && lines.all(|l| l.starts_with("  tip: ")),
            "{err}"
        );
    }
    let unreadable = dir.join("missing.toml");
    let out = Command::new(BIN)
        .args(["check", "--config", unreadable.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sighup_applies_a_good_file_and_keeps_running_on_a_bad_one() {
    let a = name_backend("a");
    let b = name_backend("b");
    let dir = temp_dir("reload");
    let config = write_config(&dir, &format!("backends = [\"{}\"]\n", a.addr));
    let proxy = ProxyCmd::new(&[])
        .args(["--config", config.to_str().unwrap()])
        .workers(1)
        .start();
    assert!(names(&proxy, 3).iter().all(|n| n == "a"));
    // Good: switch to b.
    write_config(&dir, &format!("backends = [\"{}\"]\n", b.addr));
    proxy.signal("HUP");
    wait_until(Duration::from_secs(5), "reload to apply", || {
        fetch_name(&proxy) == "b" && fetch_name(&proxy) == "b"
    });
    // Bad: rejected, logged, and the running config stays.
    write_config(&dir, "backends = [\"127.0.0.1:80\"]\nmystery = true\n");
    proxy.signal("HUP");
    wait_until(Duration::from_secs(5), "rejection logged", || {
        proxy.stderr().contains("reload rejected")
    });
    assert!(names(&proxy, 3).iter().all(|n| n == "b"));
    // The same through the control socket.
    let reply = proxy.ctl("config reload");
    assert!(
        reply.starts_with("error: reload rejected") && reply.contains("mystery"),
        "{reply}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Run the binary with `args` and `XDG_RUNTIME_DIR` set; (status, stderr).
fn run_with_runtime_dir(runtime: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every starting proxy in these tests: one worker, no metrics.
fn quick_args(backend: &str) -> Vec<&str> {
    vec![
        "--backend",
        backend,
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "off",
        "--workers",
        "1",
    ]
}

/// `--control` aimed at something that is not a socket (a config file
/// typed in the wrong place, a directory, a link) is refused with one line
/// naming the path and what is there, and the thing is left as it was.
#[test]
fn control_on_a_file_that_is_not_a_socket_is_refused_and_left_alone() {
    let dir = temp_dir("ctl-not-socket");
    let file = dir.join("some.toml");
    std::fs::write(&file, "precious\n").unwrap();
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for (path, what) in [(&file, "a regular file"), (&link, "a symbolic link")] {
        let mut args = quick_args("127.0.0.1:9");
        let p = path.to_str().unwrap();
        args.extend(["--control", p]);
        let (st, err) = run_bin(&args);
        assert!(!st.success(), "{p}: should not start");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(p) && err.contains(&format!("is {what}, not a socket")),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without `--control`, the socket is `ctl.sock` in a directory of its own
/// (here `$XDG_RUNTIME_DIR/rrproxy`), made mode 0700, and `rrproxy ctl`
/// finds it with no flag. A directory that is open to others, or that
/// belongs to another user (pre-created to hijack or block the proxy), is
/// refused with one line saying why.
#[test]
fn the_default_socket_lives_in_a_private_directory_that_ctl_finds() {
    let runtime = temp_dir("xdg");
    let a = name_backend("a");
    let proxy = ProxyCmd::new(&[a.addr])
        .workers(1)
        .default_control(&runtime)
        .start();
    let dir = runtime.join("rrproxy");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&proxy.control), 0o600);
    let out = Command::new(BIN)
        .args(["ctl", "status"])
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("workers      1/1 up"));
    drop(proxy);

    let b = a.addr.to_string();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, err) = run_with_runtime_dir(&runtime, &quick_args(&b));
    assert!(!ok);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&dir.display().to_string()) && err.contains("mode 0755"),
        "{err}"
    );
    if rustix::process::geteuid().is_root() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let (ok, err) = run_with_runtime_dir(&runtime, &quick_args(&b));
        assert!(!ok);
        assert!(err.contains("belongs to uid 65534"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&runtime);
}

/// The control socket serves root and the proxy's own user only, even when
/// its file mode lets others connect: anyone else is refused, the refusal
/// is logged, and nothing they asked for happens. `rrproxy ctl` run by a
/// user other than the server's refuses to talk to it (an impostor check).
#[test]
fn only_root_and_the_proxys_own_user_may_use_the_control_socket() {
    use std::os::unix::process::CommandExt;
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var_os("RRPROXY_REQUIRE_TOOLS").is_none(),
            "the peer credential test needs root (RRPROXY_REQUIRE_TOOLS is set)"
        );
        eprintln!("SKIPPED: needs root to connect as another user");
        return;
    }
    let a = name_backend("a");
    let proxy = ProxyCmd::new(&[a.addr]).workers(1).start();
    // Open the path to everyone: only the credential check is left.
    std::fs::set_permissions(&proxy.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&proxy.control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(BIN)
        .args(["ctl", "--control", proxy.control.to_str().unwrap()])
        .args(["policy", "least-conn"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("served by uid 0, not by you (uid 65534)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(5), "the refusal to be logged", || {
        let log = proxy.stderr();
        log.contains("control client refused") && log.contains("peer.uid=65534")
    });
    assert!(proxy.ctl("policy").contains("round-robin"));
}

/// A reload makes the running state what the file says and reports each
/// run-time change it overrides; state the file cannot express is kept and
/// said so.
#[test]
fn a_reload_reports_the_run_time_changes_it_overrides() {
    let dir = temp_dir("overrides");
    let a = name_backend("a");
    let b = name_backend("b");
    let added = name_backend("added");
    let config = write_config(
        &dir,
        &format!(
            "backends = [\"{}\", \"{}\"]\npolicy = \"least-conn\"\n",
            a.addr, b.addr
        ),
    );
    let proxy = ProxyCmd::new(&[])
        .args(["--config", config.to_str().unwrap()])
        .workers(1)
        .start();
    assert!(proxy.ctl("policy sticky").contains("least-conn -> sticky"));
    assert!(
        proxy
            .ctl(&format!("backend add {}", added.addr))
            .contains("added")
    );
    proxy.ctl(&format!("backend disable {}", b.addr));
    let reply = proxy.ctl("config reload");
    assert!(reply.starts_with("configuration reloaded"), "{reply}");
    assert!(
        reply.contains("policy sticky (set by ctl) -> least-conn (from the configuration)"),
        "{reply}"
    );
    assert!(
        reply.contains(&format!(
            "backend {} added by ctl: removed (draining)",
            added.addr
        )),
        "{reply}"
    );
    assert!(
        reply.contains(&format!(
            "backend {} disabled by ctl: stays disabled",
            b.addr
        )),
        "{reply}"
    );
    assert_eq!(proxy.ctl("policy"), "least-conn");
    proxy.wait_log("policy sticky (set by ctl) -> least-conn");
    // A second reload has nothing left to override.
    let again = proxy.ctl("config reload");
    assert!(
        !again.contains("set by ctl") && !again.contains("added by ctl"),
        "{again}"
    );
}

/// A proxy started without --config has nothing to re-read: a reload
/// fails and says why (it used to answer "configuration reloaded").
#[test]
fn a_reload_without_a_config_file_is_an_error() {
    let a = name_backend("a");
    let proxy = ProxyCmd::new(&[a.addr]).workers(1).start();
    let reply = proxy.ctl("config reload");
    assert!(
        reply.starts_with("error:") && reply.contains("started without --config"),
        "{reply}"
    );
    let (code, _, err) = run_ctl(&proxy, &["config", "reload"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("started without --config"), "{err}");
}

/// `rrproxy ctl ARGS` against `proxy`: exit code, stdout, stderr.
fn run_ctl(proxy: &Proxy, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("ctl")
        .arg("--control")
        .arg(&proxy.control)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A reload may not take the backend table over its limit of 1,024,
/// counting backends that are gone from the file but still draining
/// connections (their rows must stay in the table workers get, and the
/// table must fit a channel frame). Refused whole, the running config
/// stays, and no worker is disturbed.
#[test]
fn a_reload_over_the_backend_limit_counting_draining_ones_is_refused() {
    let dir = temp_dir("limit");
    let held = name_backend("held");
    let config = write_config(&dir, &format!("backends = [\"{}\"]\n", held.addr));
    let proxy = ProxyCmd::new(&[])
        .args([
            "--config",
            config.to_str().unwrap(),
            "--health-interval",
            "off",
        ])
        .workers(2)
        .start();
    let workers = proxy.worker_pids();
    let mut conn = proxy.connect();
    assert_eq!(read_name(&mut conn), "held");
    // Addresses nothing listens on (health checks are off).
    let others = |n: usize| -> String {
        (0..n)
            .map(|i| format!("\"127.1.{}.{}:9\"", i / 200, i % 200 + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // 1,024 new ones, plus the one still draining its connection: 1,025.
    write_config(&dir, &format!("backends = [{}]\n", others(1024)));
    let reply = proxy.ctl("config reload");
    assert!(
        reply.starts_with("error:") && reply.contains("still draining") && reply.contains("1024"),
        "{reply}"
    );
    assert_eq!(proxy.ctl_json("backends").as_array().unwrap().len(), 1);
    // 1,023 fit.
    write_config(&dir, &format!("backends = [{}]\n", others(1023)));
    let reply = proxy.ctl("config reload");
    assert!(reply.starts_with("configuration reloaded"), "{reply}");
    assert_eq!(proxy.ctl_json("backends").as_array().unwrap().len(), 1024);
    assert_eq!(proxy.worker_pids(), workers, "no worker was disturbed");
    conn.write_all(b"still here\n").unwrap();
    drop(conn);
    wait_until(Duration::from_secs(10), "the drained one to leave", || {
        proxy.ctl_json("backends").as_array().unwrap().len() == 1023
    });
}

/// A reload driven by an edited file says what the file changed (the
/// policy, backends added and removed, a weight, a timeout), in the reply
/// and in the log; the running proxy then does what the file says.
#[test]
fn a_reload_of_an_edited_file_lists_what_it_changed() {
    let dir = temp_dir("edited");
    let a = name_backend("a");
    let b = name_backend("b");
    let c = name_backend("c");
    let config = write_config(
        &dir,
        &format!(
            "backends = [\"{}\", \"{}\"]\npolicy = \"round-robin\"\n",
            a.addr, b.addr
        ),
    );
    let proxy = ProxyCmd::new(&[])
        .args(["--config", config.to_str().unwrap()])
        .workers(1)
        .start();
    write_config(
        &dir,
        &format!(
            "backends = [\"{},weight=3\", \"{}\"]\npolicy = \"least-conn\"\nconnect-timeout = \"2s\"\n",
            b.addr, c.addr
        ),
    );
    let reply = proxy.ctl("config reload");
    assert!(reply.starts_with("configuration reloaded"), "{reply}");
    for line in [
        "policy round-robin -> least-conn".to_string(),
        format!("backend {} weight 1 -> 3", b.addr),
        format!("backend {} added", c.addr),
        format!("backend {} removed (its connections drain)", a.addr),
        "connect-timeout 5s -> 2s".to_string(),
    ] {
        assert!(reply.contains(&line), "no {line:?} in:\n{reply}");
        proxy.wait_log(&line);
    }
    assert!(proxy.ctl("policy").contains("least-conn"));
    // Reloading the same file again changes nothing and says so by
    // listing nothing.
    let again = proxy.ctl("config reload");
    assert_eq!(again.trim_end(), "configuration reloaded", "{again}");
}

/// A reload that moves the listener to another port binds the new one
/// before it replies and closes the old one, and says both.
#[test]
fn a_reload_moves_the_listener_and_says_so() {
    let dir = temp_dir("move-listener");
    let a = name_backend("a");
    let (p1, p2) = (crate::peers::free_port(), crate::peers::free_port());
    let body = |p: u16| {
        format!(
            "listen = [\"127.0.0.1:{p}\"]\nbackends = [\"{}\"]\n",
            a.addr
        )
    };
    let config = write_config(&dir, &body(p1));
    let proxy = ProxyCmd::new(&[])
        .no_listen()
        .args(["--config", config.to_str().unwrap()])
        .workers(1)
        .start();
    let old: std::net::SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
    let new: std::net::SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
    let mut c = std::net::TcpStream::connect(old).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_name(&mut c), "a");
    write_config(&dir, &body(p2));
    let reply = proxy.ctl("config reload");
    assert!(reply.contains(&format!("listening on {new}")), "{reply}");
    assert!(
        reply.contains(&format!("no longer listening on {old}")),
        "{reply}"
    );
    // (It used to be bound and never accepted from: the only listener's
    // accept loop was removed first, and the new one got none.)
    let mut c = std::net::TcpStream::connect(new).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_name(&mut c), "a");
    wait_until(Duration::from_secs(10), "the old port to close", || {
        std::net::TcpStream::connect(old).is_err()
    });
}
