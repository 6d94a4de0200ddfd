//! `send-proxy`, `--allow`, `--deny`, `--accept-proxy` and
//! `--proxy-header-timeout`: what they mean, and every bad value refused
//! in one line naming the flag (or key) and the value.

use super::*;
use crate::acl::{Action, Verdict};
use crate::proxy_protocol::Version;

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

#[test]
fn send_proxy_is_a_backend_option_in_flags_files_and_ctl() {
    let c = Config::load(&args(&[
        "127.0.0.1:80,send-proxy=v1",
        "127.0.0.1:81,weight=2,send-proxy=v2",
        "127.0.0.1:82",
    ]))
    .unwrap();
    let sp: Vec<_> = c.backends.iter().map(|b| b.send_proxy).collect();
    assert_eq!(sp, [Some(Version::V1), Some(Version::V2), None]);
    assert_eq!(
        c.backends[1].to_string(),
        "127.0.0.1:81,weight=2,send-proxy=v2"
    );
    // The name is the address alone: metrics and ctl are unchanged by it.
    assert_eq!(c.backends[0].name, "127.0.0.1:80");
    let b = parse_backend("127.0.0.1:83,send-proxy=v2", &[]).unwrap();
    assert_eq!(b.send_proxy, Some(Version::V2));
    // A `resolve` name's addresses all get it.
    let c = Config::load(&args(&["localhost:9000,resolve,send-proxy=v1"])).unwrap();
    assert!(c.backends.iter().all(|b| b.send_proxy == Some(Version::V1)));
    assert_eq!(c.resolve[0].send_proxy, Some(Version::V1));
}

#[test]
fn bad_send_proxy_values_name_the_flag_and_the_value() {
    assert_eq!(
        err(&args(&["127.0.0.1:80,send-proxy=v3"])),
        "invalid value '127.0.0.1:80,send-proxy=v3' for '--backend <ADDR>': send-proxy must be v1 or v2 (the PROXY protocol version), got 'v3'"
    );
    assert!(err(&args(&["127.0.0.1:80,send-proxy"])).contains("got ''"));
    assert!(
        err(&args(&["127.0.0.1:80,send-prxy=v2"]))
            .ends_with("tip: a similar option exists: 'send-proxy'")
    );
    assert_eq!(
        file_err("backends = [{ address = \"127.0.0.1:80\", send-proxy = \"v3\" }]\n"),
        "x.toml:1:13: invalid value '{ address = \"127.0.0.1:80\", send-proxy = \"v3\" }' for 'backends': send-proxy must be v1 or v2 (the PROXY protocol version), got 'v3'"
    );
    // No smuggling of other options through the value.
    assert!(
        file_err("backends = [{ address = \"127.0.0.1:80\", send-proxy = \"v2,weight=9\" }]\n")
            .contains("expected \"HOST:PORT")
    );
}

#[test]
fn access_lists_from_flags_and_the_file() {
    let mut a = args(&["127.0.0.1:80"]);
    a.access.allow = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()];
    a.access.deny = vec!["10.1.0.0/16".into(), "192.0.2.7".into()];
    a.access.accept_proxy = vec!["127.0.0.1/32".into()];
    a.access.proxy_header_timeout = Some(Duration::from_millis(500));
    let c = Config::load(&a).unwrap();
    assert_eq!(c.acl.admits(ip("10.2.3.4")), Verdict::Admit);
    assert_eq!(c.acl.admits(ip("10.1.3.4")), Verdict::Denied);
    assert_eq!(c.acl.admits(ip("2001:db8::9")), Verdict::Admit);
    assert_eq!(c.acl.admits(ip("192.0.2.8")), Verdict::NotAllowed);
    assert!(c.accept_proxy.contains(ip("127.0.0.1")));
    assert!(!c.accept_proxy.contains(ip("127.0.0.2")));
    assert_eq!(c.proxy_header_timeout, Duration::from_millis(500));

    // Defaults: no list, no trusted source, 3 s.
    let c = Config::load(&args(&["127.0.0.1:80"])).unwrap();
    assert!(c.acl.is_empty() && c.accept_proxy.is_empty());
    assert_eq!(c.proxy_header_timeout, Duration::from_secs(3));

    // The file: one value or a list.
    let dir = std::env::temp_dir().join(format!("rrproxy-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("acl.toml");
    std::fs::write(
        &path,
        "backends = \"127.0.0.1:80\"\nallow = [\"10.0.0.0/8\"]\ndeny = \"10.9.0.0/16\"\naccept-proxy = [\"127.0.0.1\", \"::1\"]\nproxy-header-timeout = \"1s\"\n",
    )
    .unwrap();
    let c = Config::load(&Flags {
        config: Some(path.clone()),
        ..Flags::default()
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let entries: Vec<(Action, String)> = c.acl.entries().map(|(a, c)| (a, c.to_string())).collect();
    assert_eq!(
        entries,
        [
            (Action::Allow, "10.0.0.0/8".to_string()),
            (Action::Deny, "10.9.0.0/16".to_string())
        ]
    );
    assert!(c.accept_proxy.contains(ip("::1")));
    assert_eq!(c.proxy_header_timeout, Duration::from_secs(1));

    // The whole value survives an upgrade's JSON (ctl edits included).
    let json = serde_json::to_string(&c).unwrap();
    let back: Config = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
}

#[test]
fn bad_networks_name_the_flag_as_typed_and_the_value() {
    let mut a = args(&["127.0.0.1:80"]);
    a.access.deny = vec!["10.0.0.0/33".into()];
    assert_eq!(
        err(&a),
        "invalid value '10.0.0.0/33' for '--deny <CIDR>': '10.0.0.0/33': the prefix length must be a number from 0 to 32"
    );
    a.access.deny = vec![];
    a.access.allow = vec!["10.0.0.300".into()];
    assert!(err(&a).starts_with(
        "invalid value '10.0.0.300' for '--allow <CIDR>': '10.0.0.300' is not an IP address"
    ));
    a.access.allow = vec![];
    a.access.accept_proxy = vec!["lb.example.com".into()];
    assert_eq!(
        err(&a),
        "invalid value 'lb.example.com' for '--accept-proxy <CIDR>': 'lb.example.com' is a host name; a network must be an IP address with an optional /prefix (like 10.0.0.0/8)\n  tip: write its address (or its network) instead"
    );
    assert_eq!(Config::load(&a).unwrap_err().exit_code(), 2);
    assert_eq!(
        file_err("backends = \"127.0.0.1:80\"\nallow = [\"10.0.0.0/8\", \"nope/8\"]\n"),
        "x.toml:2:24: invalid value 'nope/8' for 'allow': 'nope/8' is a host name; a network must be an IP address with an optional /prefix (like 10.0.0.0/8)\n  tip: write its address (or its network) instead"
    );
    assert!(
        file_err("backends = \"127.0.0.1:80\"\nproxy-header-timeout = \"0s\"\n")
            .starts_with("x.toml:2:24: invalid value '0s' for 'proxy-header-timeout'")
    );
}
