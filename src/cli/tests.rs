use std::ffi::OsString;

use clap::CommandFactory;

use super::*;
use crate::config::{Config, Origin};

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once("rrproxy")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect()
}

/// What `rrproxy ARGS` prints for a bad flag clap refuses.
fn clap_err(args: &[&str]) -> String {
    let argv = argv(args);
    let err = parse(&argv).unwrap_err();
    assert_eq!(err.exit_code(), 2, "{args:?}");
    render_error(&err, &argv)
}

#[test]
fn spelling_follows_every_way_of_writing_a_flag() {
    let mut cmd = Cli::command();
    cmd.build();
    let s = Spelling::scan(
        &cmd,
        &argv(&[
            "-qw4",
            "--backend=a:1",
            "-b",
            "b:2",
            "--listen",
            ":1",
            "-p=sticky",
        ]),
    );
    assert_eq!(s.typed("workers", Some("4")), Some("-w"));
    assert_eq!(s.typed("quiet", None), Some("-q"));
    assert_eq!(s.typed("backend", Some("a:1")), Some("--backend"));
    assert_eq!(s.typed("backend", Some("b:2")), Some("-b"));
    assert_eq!(s.typed("listen", Some(":1")), Some("--listen"));
    assert_eq!(s.typed("policy", Some("sticky")), Some("-p"));
    assert_eq!(s.typed("metrics", None), None);
    // In a subcommand too, and `--` ends the flags.
    let s = Spelling::scan(&cmd, &argv(&["check", "-w", "0", "--", "--listen"]));
    assert_eq!(s.typed("workers", Some("0")), Some("-w"));
    assert_eq!(s.typed("listen", None), None);
}

#[test]
fn errors_after_parsing_name_the_flag_as_typed() {
    let cli = parse(&argv(&["-w", "0", "--backend", "127.0.0.1:80"])).unwrap();
    let e = Config::load(&cli.proxy).unwrap_err().to_string();
    assert_eq!(
        e,
        "invalid value '0' for '-w <N|auto>': expected a number 1..=256 or auto"
    );
    let Some(Command::Check(check)) =
        parse(&argv(&["check", "--workers", "0", "-b", "127.0.0.1:80"]))
            .unwrap()
            .command
    else {
        panic!("not check");
    };
    let e = Config::load(&check.proxy).unwrap_err().to_string();
    assert!(e.contains("for '--workers <N|auto>'"), "{e}");
    // Built in code (the demo): the long name.
    assert_eq!(
        Spelling::default().origin("metrics", None),
        Origin::Flag {
            name: "--metrics".into(),
            placeholder: Some("ADDR|off".into())
        }
    );
}

#[test]
fn clap_errors_read_like_ours() {
    assert_eq!(
        clap_err(&["-p", "roundrobin"]),
        "rrproxy: error: invalid value 'roundrobin' for '-p <NAME>': expected round-robin, least-conn or sticky\n  tip: a similar value exists: 'round-robin'"
    );
    assert_eq!(
        clap_err(&["--policy=fast"]),
        "rrproxy: error: invalid value 'fast' for '--policy <NAME>': expected round-robin, least-conn or sticky"
    );
    assert_eq!(
        clap_err(&["check", "--max-conns", "0"]),
        "rrproxy: error: invalid value '0' for '--max-conns <N|off>': expected a whole number, 1 or more, or off\n  tip: for no limit, write off (or leave it out)"
    );
    assert_eq!(
        clap_err(&["--worker", "3"]),
        "rrproxy: error: unexpected argument '--worker' found\n  tip: a similar argument exists: '--workers'"
    );
    assert!(clap_err(&["--connect-timeout", "soon"]).starts_with(
        "rrproxy: error: invalid value 'soon' for '--connect-timeout <DURATION>': expected a duration"
    ));
    assert!(clap_err(&["--splice", "of"]).ends_with("tip: a similar value exists: 'off'"));
    assert_eq!(
        clap_err(&["-b", "127.0.0.1:80", "-w"]),
        "rrproxy: error: a value is required for '-w <N|auto>' but none was supplied"
    );
}

#[test]
fn the_man_synopsis_shows_value_placeholders() {
    let mut out = Vec::new();
    clap_mangen::Man::new(man::command())
        .render(&mut out)
        .unwrap();
    let man = String::from_utf8(out).unwrap().replace("\\-", "-");
    let synopsis = &man[man.find(".SH SYNOPSIS").unwrap()..man.find(".SH DESCRIPTION").unwrap()];
    for want in [
        "[-l|--listen <ADDR>]...",
        "[-b|--backend <ADDR>]...",
        "[-w|--workers <N|auto>]",
        "[--metrics <ADDR|off>]",
        "[--drain-timeout <DURATION>]",
        "[--cpu-affinity]",
        "rrproxy\\fR ctl [--control <PATH>] [--json] <COMMAND>...",
        "rrproxy\\fR check [OPTIONS]",
    ] {
        assert!(synopsis.contains(want), "{want} not in {synopsis}");
    }
}
