//! `maxconn=`, `maxqueue=`, `backup` and `--queue-timeout`: flags, file
//! keys, backend tables, and every bad value refused in one line naming
//! it.

use std::time::Duration;

use super::protect::file_ok;
use super::*;

#[test]
fn limits_and_backup_from_flags_and_tables() {
    let a = args(&[
        "127.0.0.1:80,maxconn=50,maxqueue=200",
        "127.0.0.1:81,maxconn=1",
        "127.0.0.1:82,backup",
        "127.0.0.1:83,maxconn=5,maxqueue=0,backup",
    ]);
    let c = Config::load(&a).unwrap();
    let got: Vec<_> = c
        .backends
        .iter()
        .map(|b| (b.maxconn, b.maxqueue, b.backup))
        .collect();
    assert_eq!(
        got,
        [
            (Some(50), Some(200), false),
            (Some(1), None, false),
            (None, None, true),
            (Some(5), Some(0), true),
        ]
    );
    assert_eq!(
        c.backends[0].to_string(),
        "127.0.0.1:80,maxconn=50,maxqueue=200"
    );
    assert_eq!(c.backends[2].to_string(), "127.0.0.1:82,backup");
    // The queue timeout is the connect timeout unless given.
    assert_eq!(c.queue_timeout, None);
    assert_eq!(c.queue_timeout(), c.connect_timeout);
    assert!(c.summary().ends_with(", queue timeout 5s"));
    let c = file_ok(
        "backends = [{ address = \"127.0.0.1:80\", maxconn = 20, maxqueue = \"40\" },\n  { address = \"127.0.0.1:81\", backup = true }, { address = \"127.0.0.1:82\", backup = false }]\nqueue-timeout = \"2s\"\n",
    );
    assert_eq!(
        (c.backends[0].maxconn, c.backends[0].maxqueue),
        (Some(20), Some(40))
    );
    assert!(c.backends[1].backup && !c.backends[2].backup);
    assert_eq!(c.queue_timeout(), Duration::from_secs(2));
    let mut a = args(&["127.0.0.1:80"]);
    a.tuning.queue_timeout = Some(Duration::from_millis(300));
    let c = Config::load(&a).unwrap();
    assert_eq!(c.queue_timeout(), Duration::from_millis(300));
    assert!(
        !c.summary().contains("queue timeout"),
        "no limit, nothing queues"
    );
}

#[test]
fn bad_limits_are_refused_naming_the_backend() {
    assert_eq!(
        err(&args(&["127.0.0.1:80,maxconn=0"])),
        "invalid value '127.0.0.1:80,maxconn=0' for '--backend <ADDR>': maxconn must be 1..=1000000, got '0'\n  tip: leave maxconn out for no limit (HAProxy's maxconn 0)"
    );
    assert!(
        err(&args(&["127.0.0.1:80,maxconn=lots"]))
            .ends_with("maxconn must be 1..=1000000, got 'lots'")
    );
    assert!(
        err(&args(&["127.0.0.1:80,maxconn=5,maxqueue=-1"]))
            .ends_with("maxqueue must be 0..=1000000 (0: none wait), got '-1'")
    );
    assert!(
        err(&args(&["127.0.0.1:80,maxqueue=5"]))
            .ends_with("maxqueue needs maxconn (connections queue only above a connection limit)")
    );
    assert!(
        err(&args(&["127.0.0.1:80,backup=yes"]))
            .ends_with("option 'backup' takes no value, got 'backup=yes'")
    );
    assert!(
        err(&args(&["127.0.0.1:80,maxcon=5"])).ends_with("tip: a similar option exists: 'maxconn'")
    );
    assert!(
        err(&args(&["127.0.0.1:80,maxconn=5,maxconn=6"]))
            .ends_with("option 'maxconn' is given twice")
    );
    assert_eq!(
        file_err("backends = \"127.0.0.1:80\"\nqueue-timeout = \"0s\"\n"),
        "x.toml:2:17: invalid value '0s' for 'queue-timeout': expected a duration greater than 0, like 5s, 500ms or 2m (a bare number is seconds)"
    );
    assert!(
        file_err("backends = [{ address = \"127.0.0.1:80\", maxconn = 0 }]\n")
            .starts_with("x.toml:1:13: invalid value '{ address = \"127.0.0.1:80\", maxconn = 0 }' for 'backends': maxconn must be 1..=1000000")
    );
    // ctl backend add reads the same options.
    assert_eq!(
        parse_backend("127.0.0.1:9,maxconn=3,backup", &[])
            .unwrap()
            .to_string(),
        "127.0.0.1:9,maxconn=3,backup"
    );
}
