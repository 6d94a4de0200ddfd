//! Config tests; property tests (arbitrary files) are in `tests/props.rs`.

mod access;
mod props;
mod protect;
mod queue;
mod services;

use std::path::Path;

use super::*;
use crate::config::Flags;

pub(super) fn args(backends: &[&str]) -> Flags {
    Flags {
        backend: backends.iter().map(|s| s.to_string()).collect(),
        ..Flags::default()
    }
}

pub(super) fn err(a: &Flags) -> String {
    // (The message, as `rrproxy` prints it after `rrproxy: error: `.)
    Config::load(a).unwrap_err().to_string()
}

#[test]
fn defaults_fill_everything_but_backends() {
    let c = Config::load(&args(&["127.0.0.1:80"])).unwrap();
    assert_eq!(c.listen, vec!["0.0.0.0:8080".parse().unwrap()]);
    assert_eq!(c.policy, PolicyName::RoundRobin);
    assert_eq!(c.metrics, Some("127.0.0.1:9898".parse().unwrap()));
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.backends[0].weight, 1);
    assert!(c.workers >= 1);
}

/// Every limit is off unless set, none is derived from another, and
/// `off` is a value (on the command line it overrides the file's number).
#[test]
fn limits_are_off_unless_set_and_off_is_a_value() {
    let c = Config::load(&args(&["127.0.0.1:80"])).unwrap();
    assert_eq!(c.limits.max_conns, None);
    assert_eq!(c.limits.max_conns_per_worker, None);
    assert_eq!(c.limits.per_ip(), None);
    let mut a = args(&["127.0.0.1:80"]);
    a.tuning.max_conns = Some(values::limit_u64("2").unwrap());
    let c = Config::load(&a).unwrap();
    assert_eq!(c.limits.max_conns, Some(2));
    assert_eq!(c.limits.per_ip(), None, "no per-IP limit from --max-conns");
    let dir = std::env::temp_dir().join(format!("rrproxy-cfg-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("limits.toml");
    std::fs::write(
        &path,
        "max-conns = \"off\"\nmax-conns-per-worker = 7\nmax-conns-per-ip = 3\n",
    )
    .unwrap();
    let mut a = args(&["127.0.0.1:80"]);
    a.config = Some(path);
    let c = Config::load(&a).unwrap();
    assert_eq!(
        (
            c.limits.max_conns,
            c.limits.max_conns_per_worker,
            c.limits.per_ip()
        ),
        (None, Some(7), Some(3))
    );
    a.tuning.max_conns_per_ip = Some(values::limit_u32("off").unwrap());
    assert_eq!(
        Config::load(&a).unwrap().limits.per_ip(),
        None,
        "the flag wins"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_status_address_is_off_by_default_and_not_the_metrics_one() {
    let mut a = args(&["127.0.0.1:80"]);
    assert_eq!(Config::load(&a).unwrap().status, None);
    a.status = Some("127.0.0.1:9899".into());
    assert_eq!(
        Config::load(&a).unwrap().status,
        Some("127.0.0.1:9899".parse().unwrap())
    );
    a.status = Some("off".into());
    assert_eq!(Config::load(&a).unwrap().status, None);
    a.status = Some("9899".into());
    assert!(err(&a).starts_with("invalid value '9899' for '--status <ADDR|off>'"));
    // Port 0 (any free port) for both is two sockets, not one.
    a.metrics = Some("127.0.0.1:0".into());
    a.status = Some("127.0.0.1:0".into());
    assert!(Config::load(&a).is_ok());
    a.metrics = None;
    a.status = Some("127.0.0.1:9898".into());
    assert_eq!(
        err(&a),
        "invalid value '127.0.0.1:9898' for '--status <ADDR|off>': that is the metrics address, which serves the status page already"
    );
}

#[test]
fn backend_forms() {
    let b = parse_backend("10.0.0.5:80,weight=3", &[]).unwrap();
    assert_eq!((b.name.as_str(), b.weight), ("10.0.0.5:80", 3));
    let b = parse_backend("[::1]:8080", &[]).unwrap();
    assert_eq!(b.addr, "[::1]:8080".parse().unwrap());
    let b = parse_backend("localhost:9000", &[]).unwrap();
    assert_eq!(b.addr.port(), 9000);
    assert_eq!(b.name, "localhost:9000");
}

#[test]
fn resolve_makes_every_address_a_backend() {
    let arg = parse_backend_arg("localhost:9000,weight=2,resolve").unwrap();
    assert!(arg.resolve);
    assert_eq!((arg.name.as_str(), arg.weight), ("localhost:9000", 2));
    let specs = expand_backend(&arg).unwrap();
    assert!(!specs.is_empty());
    for s in &specs {
        assert_eq!(s.name, s.addr.to_string(), "named by its address");
        assert_eq!(s.group.as_deref(), Some("localhost:9000"));
        assert_eq!((s.addr.port(), s.weight), (9000, 2));
    }
    assert!(
        specs
            .iter()
            .any(|s| s.addr == "127.0.0.1:9000".parse().unwrap())
    );
    // In a config: the group is remembered for re-resolution, and an
    // address also given by itself stays the named backend.
    let c = Config::load(&args(&["127.0.0.1:9000", "localhost:9000,resolve"])).unwrap();
    assert_eq!(c.resolve.len(), 1);
    assert_eq!(c.resolve[0].name, "localhost:9000");
    let named: Vec<_> = c
        .backends
        .iter()
        .filter(|b| b.addr == "127.0.0.1:9000".parse().unwrap())
        .collect();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].group, None);
    assert!(
        err(&args(&["localhost:9000,resolve", "localhost:9000,resolve"])).contains("listed twice")
    );
}

#[test]
fn bad_backends_name_the_problem() {
    for (spec, needle) in [
        ("10.0.0.5", "expected HOST:PORT"),
        ("10.0.0.5:http", "not a port"),
        ("::1:80", "brackets"),
        ("10.0.0.5:80,weight=0", "weight must be"),
        ("10.0.0.5:80,weight=x", "weight must be"),
        ("10.0.0.5:80,color=red", "unknown option 'color'"),
        ("10.0.0.5:0", "port 0"),
        ("no-such-host.invalid:80", "cannot resolve host"),
        ("10.0.0.5:80,resolve", "resolve needs a host name"),
        (
            "localhost:80,resolve",
            "resolve is for --backend and the config file",
        ),
        (
            "localhost:80,resolve=yes",
            "option 'resolve' takes no value",
        ),
        (
            "10.0.0.5:80,weight=2,weight=3",
            "option 'weight' is given twice",
        ),
    ] {
        let e = parse_backend(spec, &[]).unwrap_err().to_string();
        assert!(e.contains(spec), "{e}");
        assert!(e.contains(needle), "{spec}: {e}");
    }
}

#[test]
fn bad_flags_are_refused_naming_the_flag() {
    assert!(err(&args(&[])).contains("no backend given"));
    // A bad value is named before the missing backend.
    let mut a = args(&[]);
    a.workers = Some("atuo".into());
    assert!(err(&a).starts_with("invalid value 'atuo'"), "{}", err(&a));
    let mut a = args(&["127.0.0.1:80"]);
    a.workers = Some("0".into());
    assert_eq!(
        err(&a),
        "invalid value '0' for '--workers <N|auto>': expected a number 1..=256 or auto"
    );
    a.workers = Some("atuo".into());
    assert!(
        err(&a).ends_with("\n  tip: a similar value exists: 'auto'"),
        "{}",
        err(&a)
    );
    a.workers = None;
    a.listen = vec!["nonsense".into()];
    assert!(err(&a).starts_with("invalid value 'nonsense' for '--listen <ADDR>'"));
    a.listen = vec!["8080".into()];
    assert!(err(&a).contains("tip: ':8080' means port 8080 on every IPv4 interface"));
    a.listen = vec![":9000".into()];
    assert_eq!(
        Config::load(&a).unwrap().listen[0],
        "0.0.0.0:9000".parse().unwrap()
    );
    a.metrics = Some("9899".into());
    assert!(err(&a).starts_with("invalid value '9899' for '--metrics <ADDR|off>'"));
    assert!(err(&a).contains("tip: ':9899'"));
    a.metrics = None;
    a.control = Some(String::new());
    assert!(err(&a).contains("for '--control <PATH|off>': expected a socket path or off"));
    a.control = None;
    a.tuning.health_interval = Some("often".into());
    assert!(err(&a).starts_with("invalid value 'often' for '--health-interval <DURATION|off>'"));
    let a = args(&["127.0.0.1:80", "127.0.0.1:80"]);
    assert!(
        err(&a).contains("'127.0.0.1:80' is listed twice"),
        "{}",
        err(&a)
    );
    let many: Vec<String> = (1..=1025).map(|p| format!("127.0.0.1:{p}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        err(&args(&many)),
        "invalid '--backend <ADDR>': too many backends: 1025 (at most 1024)"
    );
    let e = Config::load(&args(&["no-such-host.invalid:80"])).unwrap_err();
    assert_eq!(e.exit_code(), 1, "a look-up failure is a run-time failure");
    assert_eq!(Config::load(&args(&[])).unwrap_err().exit_code(), 2);
}

/// A file with `body`, loaded with no flags but `--config`: the error.
pub(super) fn file_err(body: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rrproxy-cfg-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("x.toml");
    std::fs::write(&path, body).unwrap();
    let a = Flags {
        config: Some(path.clone()),
        ..Flags::default()
    };
    let e = Config::load(&a).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    let text = e.to_string();
    text.replace(&path.display().to_string(), "x.toml")
}

#[test]
fn file_fills_and_flags_override() {
    let dir = std::env::temp_dir().join(format!("rrproxy-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("good.toml");
    std::fs::write(
        &path,
        r#"
listen = ["127.0.0.1:7000"]
backends = ["127.0.0.1:81", { address = "127.0.0.1:82", weight = 3 }]
workers = 2
policy = "sticky"
connect-timeout = "250ms"
idle-timeout = 60
max-conns-per-ip = 10
health-interval = "off"
splice = false
"#,
    )
    .unwrap();
    let mut a = Flags {
        config: Some(path.clone()),
        ..Flags::default()
    };
    let c = Config::load(&a).unwrap();
    assert_eq!(c.workers, 2);
    assert_eq!(c.policy, PolicyName::Sticky);
    assert_eq!(c.backends.len(), 2);
    assert_eq!(c.backends[1].weight, 3);
    assert_eq!(c.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.max_conns_per_ip, Some(10));
    assert_eq!(c.health.interval, None);
    assert_eq!(c.splice, crate::channel::Splice::Off);
    a.policy = Some(PolicyName::LeastConn);
    a.backend = vec!["127.0.0.1:99".into()];
    a.tuning.connect_timeout = Some(Duration::from_secs(9));
    let c = Config::load(&a).unwrap();
    assert_eq!(c.policy, PolicyName::LeastConn);
    assert_eq!(c.connect_timeout, Duration::from_secs(9));
    assert_eq!(c.backends.len(), 1);
    // One listen address (or backend) need not be in a list.
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:7001\"\nbackends = \"127.0.0.1:81\"\n",
    )
    .unwrap();
    a.backend.clear();
    let c = Config::load(&a).unwrap();
    assert_eq!(c.listen, vec!["127.0.0.1:7001".parse().unwrap()]);
    assert_eq!(c.backends[0].name, "127.0.0.1:81");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn syntax_and_key_errors_point_at_line_and_column() {
    let e = LoadedFile::parse("workers = 2\nbogus = 1\n".into(), Path::new("x.toml")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("x.toml:2:1:"), "{msg}");
    assert!(msg.contains("bogus"), "{msg}");
    assert_eq!(e.exit_code(), 2);
    let e = LoadedFile::read(Path::new("/nonexistent/rrproxy.toml")).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot read config file /nonexistent/rrproxy.toml")
    );
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn bad_values_in_a_file_name_the_key_and_its_position() {
    const B: &str = "backends = [\"127.0.0.1:80\"]\n";
    for (body, want) in [
        (
            "workers = 0\n",
            "x.toml:2:11: invalid value '0' for 'workers': expected a number 1..=256 or auto",
        ),
        (
            "policy = \"rr\"\n",
            "x.toml:2:10: invalid value 'rr' for 'policy': expected round-robin, least-conn or sticky",
        ),
        (
            "policy = \"stiky\"\n",
            "x.toml:2:10: invalid value 'stiky' for 'policy': expected round-robin, least-conn or sticky\n  tip: a similar value exists: 'sticky'",
        ),
        (
            "idle-timeout = \"soon\"\n",
            "x.toml:2:16: invalid value 'soon' for 'idle-timeout': expected a duration like 5s, 500ms or 2m (a bare number is seconds)",
        ),
        (
            "connect-timeout = 0\n",
            "x.toml:2:19: invalid value '0' for 'connect-timeout': expected a duration greater than 0, like 5s, 500ms or 2m (a bare number is seconds)",
        ),
        (
            "health-interval = true\n",
            "x.toml:2:19: invalid value 'true' for 'health-interval': expected a duration like 5s, 500ms or 2m (a bare number is seconds), or off",
        ),
        (
            "backlog = \"many\"\n",
            "x.toml:2:11: invalid value 'many' for 'backlog': expected a whole number 1..=4294967295",
        ),
        (
            "max-conns = 0\n",
            "x.toml:2:13: invalid value '0' for 'max-conns': expected a whole number, 1 or more, or off\n  tip: for no limit, write off (or leave it out)",
        ),
        (
            "rise = -1\n",
            "x.toml:2:8: invalid value '-1' for 'rise': expected a whole number 1..=4294967295",
        ),
        (
            "sticky-ipv6-prefix = 129\n",
            "x.toml:2:22: invalid value '129' for 'sticky-ipv6-prefix': expected a whole number 1..=128",
        ),
        (
            "splice = 3\n",
            "x.toml:2:10: invalid value '3' for 'splice': expected auto, on or off",
        ),
        (
            "cpu-affinity = \"yes\"\n",
            "x.toml:2:16: invalid value 'yes' for 'cpu-affinity': expected true or false",
        ),
        (
            "metrics = 9899\n",
            "x.toml:2:11: invalid value '9899' for 'metrics': expected HOST:PORT, [IPV6]:PORT, :PORT or off\n  tip: ':9899' means port 9899 on every IPv4 interface, '127.0.0.1:9899' on this host only",
        ),
        (
            "control = 5\n",
            "x.toml:2:11: invalid value '5' for 'control': expected a socket path or off",
        ),
        (
            "listen = [\"127.0.0.1:7000\", \"8080\"]\n",
            "x.toml:2:29: invalid value '8080' for 'listen': expected HOST:PORT, [IPV6]:PORT or :PORT\n  tip: ':8080' means port 8080 on every IPv4 interface, '127.0.0.1:8080' on this host only",
        ),
        (
            "workers = [2]\n",
            "x.toml:2:11: invalid value '[2]' for 'workers': expected a number 1..=256 or auto",
        ),
        (
            "max-conn = 5\n",
            "x.toml:2:1: unknown key 'max-conn'\n  tip: a similar key exists: 'max-conns'",
        ),
        (
            "helth-interval = \"5s\"\n",
            "x.toml:2:1: unknown key 'helth-interval'\n  tip: a similar key exists: 'health-interval'",
        ),
        (
            "zzz = 1\n",
            "x.toml:2:1: unknown key 'zzz' (the keys are the flags' long names: see rrproxy --help)",
        ),
    ] {
        assert_eq!(file_err(&format!("{B}{body}")), want, "{body}");
    }
    for (body, want) in [
        (
            "backends = [\"127.0.0.1:80\", { address = \"127.0.0.1:81\", wieght = 2 }]\n",
            "x.toml:1:29: invalid value '{ address = \"127.0.0.1:81\", wieght = 2 }' for 'backends': unknown key 'wieght' in a backend table (expected address, weight, resolve, send-proxy, source, slow-start, maxconn, maxqueue, backup)\n  tip: a similar key exists: 'weight'",
        ),
        (
            "backends = [\"127.0.0.1:80\",\n  \"127.0.0.1:80,weight=0\"]\n",
            "x.toml:2:3: invalid value '127.0.0.1:80,weight=0' for 'backends': weight must be 1..=1000, got '0'",
        ),
        (
            "backends = [3]\n",
            "x.toml:1:13: invalid value '3' for 'backends': expected \"HOST:PORT[,weight=N][,resolve][,send-proxy=v1|v2][,source=IP[;IP...]][,slow-start=D|off][,maxconn=N][,maxqueue=M][,backup]\" or a table { address = \"HOST:PORT\", ... } with those options as keys",
        ),
        (
            "backends = [\"127.0.0.1:80\", \"127.0.0.1:80\"]\n",
            "x.toml:1:29: invalid value '127.0.0.1:80' for 'backends': backend '127.0.0.1:80' is listed twice",
        ),
        (
            "backends = [true]\n",
            "x.toml:1:13: invalid value 'true' for 'backends': expected \"HOST:PORT[,weight=N][,resolve][,send-proxy=v1|v2][,source=IP[;IP...]][,slow-start=D|off][,maxconn=N][,maxqueue=M][,backup]\" or a table { address = \"HOST:PORT\", ... } with those options as keys",
        ),
        (
            "workers = 2\n",
            "no backend given: use --backend HOST:PORT (repeatable) or `backends` in x.toml",
        ),
    ] {
        assert_eq!(file_err(body), want, "{body}");
    }
}

#[test]
fn durations_are_capped_at_a_day_so_no_deadline_overflows() {
    for text in ["1000000000y", "300000000000y", "86401", "25h"] {
        let e = values::duration(text).unwrap_err().to_string();
        assert!(
            e.contains("too long") && e.contains("at most 24h"),
            "{text}: {e}"
        );
    }
    assert_eq!(values::duration("24h").unwrap(), MAX_DURATION);
    assert_eq!(values::interval("86400").unwrap(), Some(MAX_DURATION));
    assert!(
        values::interval("2d")
            .unwrap_err()
            .to_string()
            .contains("too long")
    );
    // A file's bare number of seconds is capped the same way, naming the key.
    let e = file_err("backends = [\"127.0.0.1:80\"]\nhealth-timeout = 9999999999\n");
    assert!(
        e.contains("health-timeout") && e.contains("too long"),
        "{e}"
    );
    let e = file_err("backends = [\"127.0.0.1:80\"]\ndrain-timeout = \"1000000000y\"\n");
    assert!(e.contains("drain-timeout") && e.contains("too long"), "{e}");
}

#[test]
fn the_client_first_byte_timeout_is_off_unless_given() {
    let mut a = args(&["127.0.0.1:80"]);
    assert_eq!(Config::load(&a).unwrap().client_first_byte_timeout, None);
    a.tuning.client_first_byte_timeout = Some("2s".into());
    assert_eq!(
        Config::load(&a).unwrap().client_first_byte_timeout,
        Some(Duration::from_secs(2))
    );
    a.tuning.client_first_byte_timeout = Some("off".into());
    assert_eq!(Config::load(&a).unwrap().client_first_byte_timeout, None);
    a.tuning.client_first_byte_timeout = Some("2d".into());
    assert!(err(&a).contains("client-first-byte-timeout"), "{}", err(&a));
    let file = LoadedFile::parse(
        "backends = [\"127.0.0.1:80\"]\nclient-first-byte-timeout = \"750ms\"\n".into(),
        Path::new("t.toml"),
    )
    .unwrap();
    let c = build::build(&args(&[]), Some(&file)).unwrap();
    assert_eq!(
        c.client_first_byte_timeout,
        Some(Duration::from_millis(750))
    );
}

#[test]
fn defer_accept_is_off_unless_the_flag_or_the_file_says_so() {
    let mut a = args(&["127.0.0.1:80"]);
    assert!(!Config::load(&a).unwrap().defer_accept);
    a.tuning.defer_accept = true;
    let c = Config::load(&a).unwrap();
    assert!(c.defer_accept);
    // `rrproxy check` and the start-up line say so.
    assert!(c.summary().ends_with(", defer-accept"), "{}", c.summary());
    let file = |text: &str| {
        LoadedFile::parse(
            format!("backends = [\"127.0.0.1:80\"]\n{text}\n"),
            Path::new("t.toml"),
        )
        .unwrap()
    };
    let on = file("defer-accept = true");
    assert!(build::build(&args(&[]), Some(&on)).unwrap().defer_accept);
    let off = file("defer-accept = false");
    assert!(!build::build(&args(&[]), Some(&off)).unwrap().defer_accept);
    // The flag wins over the file, as for every key.
    let mut flagged = args(&[]);
    flagged.tuning.defer_accept = true;
    assert!(build::build(&flagged, Some(&off)).unwrap().defer_accept);
}

#[test]
fn the_access_log_is_off_unless_given_and_a_path_is_made_absolute() {
    use crate::channel::AccessLog;
    let mut a = args(&["127.0.0.1:80"]);
    assert_eq!(Config::load(&a).unwrap().access_log, AccessLog::Off);
    a.run.access_log = Some("stderr".into());
    assert_eq!(Config::load(&a).unwrap().access_log, AccessLog::Stderr);
    a.run.access_log = Some("logs/access.log".into());
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        Config::load(&a).unwrap().access_log,
        AccessLog::File(cwd.join("logs/access.log"))
    );
    a.run.access_log = Some(String::new());
    assert_eq!(
        err(&a),
        "invalid value '' for '--access-log <off|stderr|PATH>': expected off, stderr or a file path"
    );
    assert_eq!(
        file_err("backends = \"127.0.0.1:80\"\naccess-log = 7\n"),
        "x.toml:2:14: invalid value '7' for 'access-log': expected off, stderr or a file path"
    );
}

#[test]
fn user_and_group_are_looked_up_and_a_missing_one_is_named() {
    let mut a = args(&["127.0.0.1:80"]);
    assert_eq!(Config::load(&a).unwrap().run_as, None);
    a.run.user = Some("root".into());
    let who = Config::load(&a).unwrap().run_as.unwrap();
    assert_eq!((who.uid, who.gid, who.group.as_str()), (0, 0, "root"));
    a.run.user = Some("no-such-user-rrproxy".into());
    let e = Config::load(&a).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid value 'no-such-user-rrproxy' for '--user <NAME>': no such user"
    );
    assert_eq!(e.exit_code(), 2);
    a.run.user = Some("root".into());
    a.run.group = Some("no-such-group-rrproxy".into());
    assert_eq!(
        err(&a),
        "invalid value 'no-such-group-rrproxy' for '--group <NAME>': no such group"
    );
    a.run.user = None;
    a.run.group = Some("root".into());
    assert_eq!(
        err(&a),
        "invalid value 'root' for '--group <NAME>': needs --user (the user to run as)"
    );
    a.run.group = None;
    a.run.user = Some("two words".into());
    assert_eq!(
        err(&a),
        "invalid value 'two words' for '--user <NAME>': expected a name or a number"
    );
    assert_eq!(
        file_err("backends = \"127.0.0.1:80\"\nuser = \"no-such-user-rrproxy\"\n"),
        "x.toml:2:8: invalid value 'no-such-user-rrproxy' for 'user': no such user"
    );
}

#[test]
fn a_handover_from_a_build_without_the_new_settings_still_reads() {
    let c = Config::load(&args(&["127.0.0.1:80"])).unwrap();
    let mut v = serde_json::to_value(&c).unwrap();
    let obj = v.as_object_mut().unwrap();
    assert!(obj.remove("access_log").is_some() && obj.remove("run_as").is_some());
    let back: Config = serde_json::from_value(v).unwrap();
    assert_eq!(back, c);
}
