//! The operator's first hour: a bad flag or config value gets one error in
//! one style, naming the flag as typed or the file's `path:line:column`
//! and key; exit status 2 for usage and config errors and 1 at run time,
//! as `--help` says; the same text from `check`, at start and on reload.

use std::process::Command;

use crate::support::*;

/// Run the binary; (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_states_the_exit_statuses_and_they_hold() {
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    let status = &help[help.find("EXIT STATUS:").expect("an EXIT STATUS section")..];
    assert!(
        status.contains("\n    1   a failure at run time"),
        "{status}"
    );
    assert!(
        status.contains("\n    2   a usage or configuration error"),
        "{status}"
    );
    // 2: no backend at all, a clap error, a value, an unreadable file.
    for args in [
        &[][..],
        &["--frobnicate"],
        &["-b", "127.0.0.1:80", "--workers", "0"],
        &["--config", "/nonexistent/rrproxy.toml"],
        &["check"],
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.starts_with("rrproxy: error: "), "{args:?}: {err}");
    }
}

#[test]
fn address_flags_given_a_bare_port_hint_at_the_colon_form() {
    for (flag, port) in [("--listen", "8080"), ("--metrics", "9899")] {
        let (code, _, err) = run(&["check", "-b", "127.0.0.1:80", flag, port]);
        assert_eq!(code, Some(2));
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines[0].starts_with(&format!(
                "rrproxy: error: invalid value '{port}' for '{flag} <ADDR"
            )),
            "{err}"
        );
        assert_eq!(
            lines[1],
            format!(
                "  tip: ':{port}' means port {port} on every IPv4 interface, '127.0.0.1:{port}' on this host only"
            )
        );
    }
    // A short flag is named as typed.
    let (_, _, err) = run(&["check", "-b", "127.0.0.1:80", "-l", "8080"]);
    assert!(
        err.starts_with("rrproxy: error: invalid value '8080' for '-l <ADDR>'"),
        "{err}"
    );
}

#[test]
fn a_bad_config_value_reads_the_same_in_check_at_start_and_on_reload() {
    let a = name_backend("a");
    let dir = temp_dir("usage-reload");
    let path = dir.join("rrproxy.toml");
    std::fs::write(&path, format!("backends = [\"{}\"]\n", a.addr)).unwrap();
    let file = path.to_str().unwrap();
    let proxy = ProxyCmd::new(&[])
        .args(["--config", file])
        .workers(1)
        .start();
    assert_eq!(fetch_name(&proxy), "a");

    std::fs::write(
        &path,
        format!("backends = [\"{}\"]\npolicy = \"stiky\"\n", a.addr),
    )
    .unwrap();
    let want = format!(
        "{file}:2:10: invalid value 'stiky' for 'policy': expected round-robin, least-conn or sticky\n  tip: a similar value exists: 'sticky'"
    );
    let (code, _, check) = run(&["check", "--config", file]);
    assert_eq!(
        (code, check.trim_end()),
        (Some(2), format!("rrproxy: error: {want}").as_str())
    );
    let (code, _, start) = run(&[
        "--config",
        file,
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "off",
        "--control",
        "off",
    ]);
    assert_eq!(
        (code, start.trim_end()),
        (Some(2), format!("rrproxy: error: {want}").as_str())
    );
    // On the socket, and through `rrproxy ctl` (a refused command: 1).
    assert_eq!(
        proxy.ctl("config reload"),
        format!("error: reload rejected: {want}")
    );
    let (code, _, ctl) = run(&[
        "ctl",
        "--control",
        proxy.control.to_str().unwrap(),
        "config",
        "reload",
    ]);
    assert_eq!(
        (code, ctl.trim_end()),
        (
            Some(1),
            format!("rrproxy ctl: error: reload rejected: {want}").as_str()
        )
    );
    assert_eq!(
        proxy.ctl("policy"),
        "round-robin",
        "the running config stays"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_listen_address_and_one_backend_need_no_list() {
    let a = name_backend("a");
    let dir = temp_dir("usage-single");
    let path = dir.join("rrproxy.toml");
    std::fs::write(
        &path,
        format!("listen = \"127.0.0.1:0\"\nbackends = \"{}\"\n", a.addr),
    )
    .unwrap();
    let proxy = ProxyCmd::new(&[])
        .no_listen()
        .args(["--config", path.to_str().unwrap()])
        .workers(1)
        .start();
    assert_eq!(proxy.listen.ip().to_string(), "127.0.0.1");
    assert_ne!(proxy.listen.port(), 0);
    assert_eq!(fetch_name(&proxy), "a");
    std::fs::remove_dir_all(&dir).unwrap();
}
