//! `--health-send`, `--health-expect`, `--source`, `--slow-start` and the
//! backend options `source=` and `slow-start=`: flags, file keys, backend
//! tables, and every bad value refused in one line naming it.

use std::net::IpAddr;

use super::*;

fn ips(s: &[&str]) -> Vec<IpAddr> {
    s.iter().map(|s| s.parse().unwrap()).collect()
}

pub(super) fn file_ok(body: &str) -> Config {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rrproxy-prot-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("x.toml");
    std::fs::write(&path, body).unwrap();
    let a = Flags {
        config: Some(path),
        ..Flags::default()
    };
    let c = Config::load(&a);
    std::fs::remove_dir_all(&dir).unwrap();
    c.unwrap()
}

#[test]
fn probe_strings_from_flags_and_the_file() {
    let mut a = args(&["127.0.0.1:80"]);
    a.tuning.health_send = Some("PING\\r\\n".into());
    a.tuning.health_expect = Some("+PONG".into());
    let c = Config::load(&a).unwrap();
    assert_eq!(
        (&c.probe.send[..], &c.probe.expect[..]),
        (&b"PING\r\n"[..], &b"+PONG"[..])
    );
    assert!(
        c.summary()
            .ends_with(", health check send 'PING\\r\\n' expect '+PONG'")
    );
    // A greeting check: expect alone.
    let c = file_ok("backends = \"127.0.0.1:80\"\nhealth-expect = \"220 \"\n");
    assert_eq!((c.probe.send.len(), &c.probe.expect[..]), (0, &b"220 "[..]));
    // In TOML the escapes are TOML's own in a basic string, ours in a
    // literal one: both reach the same bytes.
    let c = file_ok("backends = \"127.0.0.1:80\"\nhealth-send = 'PING\\r\\n'\n");
    assert_eq!(c.probe.send, b"PING\r\n");
    let c = Config::load(&args(&["127.0.0.1:80"])).unwrap();
    assert_eq!(c.probe, Probe::default());
}

#[test]
fn bad_probe_strings_name_the_flag_and_the_position() {
    let mut a = args(&["127.0.0.1:80"]);
    a.tuning.health_send = Some("PING\\q".into());
    assert_eq!(
        err(&a),
        "invalid value 'PING\\q' for '--health-send <STRING>': bad escape '\\q' at position 5 (use \\r, \\n, \\t, \\0, \\\\ or \\xNN)"
    );
    a.tuning.health_send = None;
    a.tuning.health_expect = Some(String::new());
    assert!(
        err(&a).starts_with("invalid value '' for '--health-expect <STRING>': expected some text")
    );
    assert_eq!(
        file_err("backends = \"127.0.0.1:80\"\nhealth-expect = '+PO\\x4'\n"),
        "x.toml:2:17: invalid value '+PO\\x4' for 'health-expect': bad escape '\\x4' at position 4 (use \\r, \\n, \\t, \\0, \\\\ or \\xNN)"
    );
}

#[test]
fn sources_global_per_backend_and_in_tables() {
    let mut a = args(&[
        "127.0.0.1:80",
        "127.0.0.1:81,source=127.0.0.4",
        "[::1]:82,source=::1",
    ]);
    a.source = Some("127.0.0.2;127.0.0.3".into());
    let c = Config::load(&a).unwrap();
    assert_eq!(c.source, ips(&["127.0.0.2", "127.0.0.3"]));
    assert!(
        c.backends[0].source.is_empty(),
        "the global list is not copied in"
    );
    assert_eq!(c.backends[1].source, ips(&["127.0.0.4"]));
    assert_eq!(c.backends[1].to_string(), "127.0.0.1:81,source=127.0.0.4");
    assert_eq!(
        sources::of(&c.backends[0], &c.source),
        ips(&["127.0.0.2", "127.0.0.3"])
    );
    let c = file_ok(
        "backends = [{ address = \"127.0.0.1:80\", source = [\"127.0.0.2\", \"127.0.0.3\"] },\n  \"127.0.0.1:81,source=127.0.0.4;127.0.0.5\"]\nsource = [\"127.0.0.6\", \"127.0.0.7;127.0.0.8\"]\n",
    );
    assert_eq!(c.backends[0].source, ips(&["127.0.0.2", "127.0.0.3"]));
    assert_eq!(c.backends[1].source, ips(&["127.0.0.4", "127.0.0.5"]));
    assert_eq!(c.source, ips(&["127.0.0.6", "127.0.0.7", "127.0.0.8"]));
    // ctl backend add checks against the running --source.
    let v4 = ips(&["127.0.0.2"]);
    assert!(parse_backend("127.0.0.1:9,source=127.0.0.9", &v4).is_ok());
    assert_eq!(
        parse_backend("[::1]:9", &v4).unwrap_err(),
        "invalid backend '[::1]:9': --source has no IPv6 address for backend [::1]:9 (add one, or give the backend its own source=)"
    );
}

#[test]
fn bad_sources_name_the_address() {
    let mut a = args(&["127.0.0.1:80"]);
    a.source = Some("192.0.2.77".into());
    assert_eq!(
        err(&a),
        "invalid value '192.0.2.77' for '--source <IP[;IP...]>': source address 192.0.2.77 is not an address of this host"
    );
    a.source = Some("127.0.0.2:5000".into());
    assert!(err(&a).contains("'127.0.0.2:5000' has a port\n  tip: a source is an address alone"));
    a.source = Some("127.0.0.2;127.0.0.2".into());
    assert!(err(&a).ends_with("'127.0.0.2' is listed twice"));
    a.source = Some("0.0.0.0".into());
    assert!(err(&a).contains("cannot be a source address"));
    a.source = Some("::1".into());
    assert_eq!(
        err(&a),
        "invalid value '127.0.0.1:80' for '--backend <ADDR>': --source has no IPv4 address for backend 127.0.0.1:80 (add one, or give the backend its own source=)"
    );
    assert_eq!(
        err(&args(&["127.0.0.1:80,source=::1"])),
        "invalid value '127.0.0.1:80,source=::1' for '--backend <ADDR>': source ::1 is IPv6 but backend 127.0.0.1:80 is IPv4"
    );
    assert_eq!(
        err(&args(&["127.0.0.1:80,source=127.0.0.2;bogus"])),
        "invalid value '127.0.0.1:80,source=127.0.0.2;bogus' for '--backend <ADDR>': source: 'bogus' is not an IP address (expected IP addresses separated by ';' (like 10.0.0.1;10.0.0.2))"
    );
    assert!(
        err(&args(&["127.0.0.1:80,souce=127.0.0.2"]))
            .ends_with("tip: a similar option exists: 'source'")
    );
    let many: Vec<String> = (1..=17).map(|i| format!("127.0.0.{i}")).collect();
    assert!(
        err(&args(&[&format!("127.0.0.1:80,source={}", many.join(";"))])).contains("at most 16")
    );
    assert_eq!(
        file_err("backends = [{ address = \"127.0.0.1:80\", source = \"192.0.2.77\" }]\n"),
        "x.toml:1:13: invalid value '{ address = \"127.0.0.1:80\", source = \"192.0.2.77\" }' for 'backends': source address 192.0.2.77 is not an address of this host"
    );
    assert!(
        file_err(
            "backends = [{ address = \"127.0.0.1:80\", source = [\"127.0.0.2,weight=3\"] }]\n"
        )
        .contains("expected \"HOST:PORT")
    );
    assert!(
        file_err("backends = \"127.0.0.1:80\"\nsource = [\"127.0.0.2\", \"127.0.0.2\"]\n")
            .starts_with(
                "x.toml:2:24: invalid value '127.0.0.2' for 'source': '127.0.0.2' is listed twice"
            )
    );
}

#[test]
fn slow_start_global_and_per_backend() {
    let mut a = args(&[
        "127.0.0.1:80",
        "127.0.0.1:81,slow-start=30s",
        "127.0.0.1:82,slow-start=off",
    ]);
    a.tuning.slow_start = Some("1m".into());
    let c = Config::load(&a).unwrap();
    assert_eq!(c.slow_start, Some(Duration::from_secs(60)));
    let per: Vec<_> = c.backends.iter().map(|b| b.slow_start).collect();
    assert_eq!(
        per,
        [None, Some(Duration::from_secs(30)), Some(Duration::ZERO)]
    );
    assert_eq!(c.backends[1].to_string(), "127.0.0.1:81,slow-start=30s");
    assert_eq!(c.backends[2].to_string(), "127.0.0.1:82,slow-start=off");
    assert!(c.summary().ends_with(", slow start 1m"));
    let c = file_ok(
        "backends = { address = \"127.0.0.1:80\", slow-start = 10 }\nslow-start = \"off\"\n",
    );
    assert_eq!(c.slow_start, None);
    assert_eq!(c.backends[0].slow_start, Some(Duration::from_secs(10)));
    assert!(
        err(&args(&["127.0.0.1:80,slow-start=soon"])).ends_with(
            "slow-start: expected a duration like 5s, 500ms or 2m (a bare number is seconds), or off, got 'soon'"
        )
    );
    a.tuning.slow_start = Some("forever".into());
    assert!(err(&a).starts_with("invalid value 'forever' for '--slow-start <DURATION|off>'"));
}
