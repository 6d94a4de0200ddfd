//! Config tests; property tests (arbitrary files) are in `tests/props.rs`.

mod props;

use std::path::Path;

use super::*;
use crate::cli::ProxyArgs;

fn args(backends: &[&str]) -> ProxyArgs {
    ProxyArgs {
        backend: backends.iter().map(|s| s.to_string()).collect(),
        ..ProxyArgs::default()
    }
}

fn err(a: &ProxyArgs) -> String {
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

#[test]
fn backend_forms() {
    let b = parse_backend("10.0.0.5:80,weight=3").unwrap();
    assert_eq!((b.name.as_str(), b.weight), ("10.0.0.5:80", 3));
    let b = parse_backend("[::1]:8080").unwrap();
    assert_eq!(b.addr, "[::1]:8080".parse().unwrap());
    let b = parse_backend("localhost:9000").unwrap();
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
        ("localhost:80,resolve=yes", "unknown option 'resolve'"),
    ] {
        let e = parse_backend(spec).unwrap_err().to_string();
        assert!(e.contains(spec), "{e}");
        assert!(e.contains(needle), "{spec}: {e}");
    }
}

#[test]
fn bad_flags_are_refused() {
    assert!(err(&args(&[])).contains("no backend"));
    let mut a = args(&["127.0.0.1:80"]);
    a.workers = Some("0".into());
    assert!(err(&a).contains("invalid worker count 0"));
    a.workers = Some("many".into());
    assert!(err(&a).contains("'many'"));
    let mut a = args(&["127.0.0.1:80", "127.0.0.1:80"]);
    assert!(err(&a).contains("listed twice"));
    a.backend.pop();
    a.listen = vec!["nonsense".into()];
    assert!(err(&a).contains("invalid listen address 'nonsense'"));
    a.listen = vec![":9000".into()];
    assert_eq!(
        Config::load(&a).unwrap().listen[0],
        "0.0.0.0:9000".parse().unwrap()
    );
    a.tuning.max_conns = Some(0);
    assert!(err(&a).contains("max-conns must be at least 1"));
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
    let mut a = ProxyArgs {
        config: Some(path.clone()),
        ..ProxyArgs::default()
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
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_errors_point_at_line_and_column() {
    let e = FileConfig::parse("workers = 2\nbogus = 1\n", Path::new("x.toml")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("x.toml:2:1:"), "{msg}");
    assert!(msg.contains("bogus"), "{msg}");
    let e = FileConfig::parse("backlog = \"many\"\n", Path::new("y.toml")).unwrap_err();
    assert!(e.to_string().starts_with("y.toml:1:11:"), "{e}");
    // Values that fit none of a key's forms say what the key accepts.
    for (text, needle) in [
        ("health-interval = true", "expected a duration"),
        ("workers = 1.5", "a number of workers or \"auto\""),
        ("splice = 3", "\"auto\", \"on\", \"off\""),
        (
            "backends = [3]",
            "a backend is \"HOST:PORT[,weight=N][,resolve]\"",
        ),
    ] {
        let e = FileConfig::parse(text, Path::new("z.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle) && !e.contains("untagged"), "{text}: {e}");
    }
    let e = FileConfig::read(Path::new("/nonexistent/rrproxy.toml")).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot read config file /nonexistent/rrproxy.toml")
    );
}

#[test]
fn bad_values_in_a_file_name_the_key() {
    let dir = std::env::temp_dir().join(format!("rrproxy-cfg2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "backends = [\"127.0.0.1:80\"]\nidle-timeout = \"soon\"\n",
    )
    .unwrap();
    let a = ProxyArgs {
        config: Some(path),
        ..ProxyArgs::default()
    };
    assert!(err(&a).contains("idle-timeout"), "{}", err(&a));
    std::fs::remove_dir_all(&dir).unwrap();
}
