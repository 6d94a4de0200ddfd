//! The operator's first hour: a bad flag or config value gets one error in
//! one style, naming the flag as typed or the file's `path:line:column`
//! and key; exit status 2 for usage and config errors and 1 at run time,
//! as `--help` says; the same text from `check`, at start and on reload;
//! `ctl --help` and `ctl help` list the commands the server accepts.

use std::process::Command;
use std::time::Duration;

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

/// The command column of a help table: `backend add` from
/// `  backend add ADDR[,weight=N]  add a backend`.
fn commands_in(help: &str) -> Vec<String> {
    let start = help.find("commands (").expect("a command list");
    help[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let usage = l.trim().split("  ").next().unwrap();
            usage
                .split(' ')
                .take_while(|w| w.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn ctl_help_lists_every_command_the_server_accepts() {
    let a = name_backend("a");
    let proxy = ProxyCmd::new(&[a.addr]).workers(1).start();
    let server = proxy.ctl("help");
    let (code, ctl_help, _) = run(&["ctl", "--help"]);
    assert_eq!(code, Some(0));
    let listed = commands_in(&ctl_help);
    assert_eq!(
        listed,
        commands_in(&server),
        "ctl --help and the server's help"
    );
    for want in [
        "status",
        "backend add",
        "drain",
        "config reload",
        "reload",
        "upgrade",
        "top",
        "quit",
    ] {
        assert!(
            listed.iter().any(|c| c == want),
            "{want} missing: {listed:?}"
        );
    }
    // Every listed command is one the server knows: asked with too many
    // arguments (so nothing runs), it answers about that command, never
    // "unknown".
    for (line, name) in server.lines().skip(1).zip(&listed) {
        let usage = line.trim().split("  ").next().unwrap();
        let args = usage[name.len()..].trim();
        let probe = format!("{name} x1 x2 x3 x4");
        let reply = proxy.ctl(&probe);
        assert!(!reply.contains("unknown command"), "{probe}: {reply}");
        if args.is_empty() {
            assert!(
                reply.contains(&format!("'{name}' takes no arguments")),
                "{probe}: {reply}"
            );
        } else {
            assert!(
                reply.starts_with(&format!("error: usage: {name} {args}")),
                "{probe}: {reply}"
            );
        }
    }
    assert_eq!(fetch_name(&proxy), "a", "nothing was disturbed");
}

#[test]
fn ctl_help_needs_no_running_proxy() {
    let (code, out, err) = run(&["ctl", "--control", "/nonexistent/rrproxy.sock", "help"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("commands (add --json"), "{out}");
    assert!(
        out.contains("  backend disable ADDR") && out.contains("  drain ADDR"),
        "{out}"
    );
    let (code, json, _) = run(&[
        "ctl",
        "--control",
        "/nonexistent/rrproxy.sock",
        "--json",
        "help",
    ]);
    assert_eq!(code, Some(0));
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let drain = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["command"] == "drain")
        .expect("drain listed");
    assert_eq!(drain["alias_of"], "backend disable");
    // A command that does need the proxy still says so.
    let (code, _, err) = run(&["ctl", "--control", "/nonexistent/rrproxy.sock", "status"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach rrproxy"), "{err}");
}

#[test]
fn the_man_page_synopsis_shows_value_placeholders() {
    let (code, man, _) = run(&["man"]);
    assert_eq!(code, Some(0));
    let man = man.replace("\\-", "-");
    let start = man.find(".SH SYNOPSIS").expect("a SYNOPSIS");
    let synopsis = &man[start..start + man[start..].find(".SH DESCRIPTION").unwrap()];
    for want in [
        "[-l|--listen <ADDR>]...",
        "[-w|--workers <N|auto>]",
        "[-c|--config <FILE>]",
        "ctl [--control <PATH>] [--json] <COMMAND>...",
    ] {
        assert!(synopsis.contains(want), "{want} not in:\n{synopsis}");
    }
}

/// `check` makes every check starting makes, short of binding: for each
/// fault starting finds after the configuration (an access log it cannot
/// open, as --user too; a control path it cannot use), `check` fails with
/// the same line and the same exit status (1), and for a good setting it
/// passes without creating anything.
#[test]
fn check_refuses_what_starting_refuses_with_the_same_line() {
    let dir = temp_dir("check-start");
    let d = dir.to_str().unwrap().to_string();
    let file = dir.join("plain.toml");
    std::fs::write(&file, "").unwrap();
    let f = file.to_str().unwrap().to_string();
    let mut cases: Vec<Vec<String>> = vec![
        vec!["--access-log".into(), format!("{d}/missing/access.log")],
        vec!["--access-log".into(), d.clone()],
        vec!["--control".into(), format!("{d}/missing/ctl.sock")],
        vec!["--control".into(), f.clone()],
        vec!["--pid-file".into(), format!("{d}/missing/rrproxy.pid")],
        vec!["--pid-file".into(), d.clone()],
    ];
    if rustix::process::geteuid().is_root() {
        // Root may write there; the --user the workers run as may not.
        let private = dir.join("root-only");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let log = format!("{}/access.log", private.display());
        cases.push(vec![
            "--user".into(),
            "nobody".into(),
            "--access-log".into(),
            log,
        ]);
    }
    for extra in &cases {
        // (Not the default control socket: its directory is the machine's.)
        let control = if extra.contains(&"--control".to_string()) {
            vec![]
        } else {
            vec!["--control", "off"]
        };
        let mut check = vec!["check", "-b", "127.0.0.1:9"];
        check.extend(extra.iter().map(String::as_str));
        check.extend(&control);
        let (code, out, err) = run(&check);
        assert_eq!(code, Some(1), "{extra:?}: {out}{err}");
        let mut start = Command::new(BIN);
        start.args(["-b", "127.0.0.1:9", "-l", "127.0.0.1:0", "--metrics", "off"]);
        start.args(extra).args(&control);
        let (status, start_err) = run_to_exit(start, Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "{extra:?}: {start_err}");
        // (Among its log lines.)
        let said = start_err
            .lines()
            .find(|l| l.starts_with("rrproxy: error: "))
            .unwrap_or("");
        assert_eq!(err.trim_end(), said, "{extra:?}");
    }
    // A good setting passes and creates nothing.
    let log = dir.join("new-access.log");
    let (code, out, err) = run(&[
        "check",
        "-b",
        "127.0.0.1:9",
        "--access-log",
        log.to_str().unwrap(),
        "--control",
        &format!("{d}/ctl.sock"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("configuration OK"), "{out}");
    assert!(!log.exists() && !dir.join("ctl.sock").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A second instance on a metrics port already taken (the default one is
/// the same for every instance) fails in one line that says what to do.
#[test]
fn a_metrics_port_in_use_says_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut start = Command::new(BIN);
    start.args(["-b", "127.0.0.1:9", "-l", "127.0.0.1:0", "--control", "off"]);
    start.args(["--metrics", &addr]);
    let (status, err) = run_to_exit(start, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("rrproxy: error: "))
        .unwrap_or("");
    assert_eq!(
        line,
        format!(
            "rrproxy: error: cannot serve metrics on {addr}: Address already in use (os error 98) (another rrproxy? give this one --metrics HOST:PORT with a free port, or --metrics off)"
        )
    );
}
