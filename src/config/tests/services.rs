//! `[[service]]` tables: inheritance, the rules across services, and each
//! bad file refused in one line with its `path:line:column`.

use super::*;

fn load(body: &str, flags: Flags) -> Result<Config, String> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rrproxy-svc-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("x.toml");
    std::fs::write(&path, body).unwrap();
    let a = Flags {
        config: Some(path),
        ..flags
    };
    let c = Config::load(&a).map_err(|e| {
        e.to_string()
            .replace(&dir.join("x.toml").display().to_string(), "x.toml")
    });
    std::fs::remove_dir_all(&dir).unwrap();
    c
}

const ISSUE: &str = r#"
connect-timeout = "2s"
allow = ["127.0.0.0/8"]

[[service]]
name = "web"
listen = ["127.0.0.1:8443"]
backends = ["127.0.0.1:9001", "127.0.0.1:9002,weight=2"]
policy = "sticky"
sni = ["www.example.com", "*.Example.com."]

[[service]]
name = "other"
listen = ["127.0.0.1:8443"]
backends = ["127.0.0.1:9009"]
connect-timeout = "300ms"

[[service]]
name = "redis"
listen = ["127.0.0.1:6380"]
backends = ["127.0.0.1:6381", "127.0.0.1:6382"]
policy = "least-conn"
defer-accept = false
"#;

#[test]
fn the_issue_example_builds_three_services_inheriting_the_top_level() {
    let c = load(ISSUE, Flags::default()).unwrap();
    assert!(
        c.backends.is_empty() && c.listen.is_empty(),
        "no default service"
    );
    let names: Vec<&str> = c.service_list().iter().map(|s| s.0).collect();
    assert_eq!(names, ["web", "other", "redis"]);
    let web = &c.services[0];
    assert_eq!(web.sni, ["www.example.com", "*.example.com"]);
    assert_eq!(web.config.policy, PolicyName::Sticky);
    assert_eq!(web.config.backends[1].weight, 2);
    // Inherited from the top level, overridden by its own key.
    assert_eq!(web.config.connect_timeout, Duration::from_secs(2));
    assert_eq!(
        c.services[1].config.connect_timeout,
        Duration::from_millis(300)
    );
    assert_eq!(c.services[2].config.policy, PolicyName::LeastConn);
    assert!(!c.services[2].config.acl.is_empty(), "allow is inherited");
    // An SNI listener defaults to defer-accept, for each of its services.
    assert!(web.config.defer_accept && c.services[1].config.defer_accept);
    assert!(!c.services[2].config.defer_accept);
    assert_eq!(c.all_listen().len(), 2);
    assert!(c.summary().contains("service web"), "{}", c.summary());
}

#[test]
fn flags_are_the_default_service_and_what_services_inherit() {
    let body =
        "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:7100\"\nbackends = \"127.0.0.1:7101\"\n";
    let mut f = args(&["127.0.0.1:7200"]);
    f.listen = vec!["127.0.0.1:7201".into()];
    f.tuning.idle_timeout = Some(Duration::from_secs(9));
    let c = load(body, f).unwrap();
    let list = c.service_list();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].0, "default");
    assert_eq!(c.listen, ["127.0.0.1:7201".parse().unwrap()]);
    assert_eq!(
        c.services[0].config.listen,
        ["127.0.0.1:7100".parse().unwrap()]
    );
    assert_eq!(c.services[0].config.backends.len(), 1);
    assert_eq!(c.services[0].config.idle_timeout, Duration::from_secs(9));
}

/// A service's own limits are its table's only: the top-level limits are
/// the proxy's and stay so (not copied into the service's own).
#[test]
fn a_services_own_limits_are_its_tables_and_the_proxys_stay_global() {
    let body = "max-conns = 100\nmax-conns-per-ip = 9\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:7100\"\nbackends = \"127.0.0.1:7101\"\nmax-conns = 5\nmax-conns-per-ip = 2\n[[service]]\nname = \"b\"\nlisten = \"127.0.0.1:7102\"\nbackends = \"127.0.0.1:7103\"\nmax-conns = \"off\"\n";
    let c = load(body, Flags::default()).unwrap();
    assert_eq!(c.limits.max_conns, Some(100));
    assert_eq!(c.own_limits, crate::config::ServiceLimits::default());
    let a = &c.services[0].config;
    assert_eq!(a.own_limits.max_conns, Some(5));
    assert_eq!(a.own_limits.max_conns_per_ip, Some(2));
    assert_eq!(a.limits.max_conns, Some(100), "the proxy's, unchanged");
    let b = &c.services[1].config;
    assert!(!b.own_limits.any());
    assert!(
        c.summary()
            .contains("service a: listen 127.0.0.1:7100 -> backends 127.0.0.1:7101, policy round-robin, max-conns 5, max-conns-per-ip 2;"),
        "{}",
        c.summary()
    );
    assert_eq!(b.limits.max_conns_per_ip, Some(9));
}

#[test]
fn a_config_without_services_is_as_before() {
    let c = load("backends = [\"127.0.0.1:80\"]\n", Flags::default()).unwrap();
    assert!(c.services.is_empty());
    assert_eq!(c.service_list().len(), 1);
    assert_eq!(c.sni_timeout, Duration::from_secs(5));
    assert!(!c.defer_accept);
}

#[test]
fn bad_services_are_refused_with_their_position() {
    const S: &str = "[[service]]\n";
    for (body, want) in [
        (
            format!("{S}name = \"Web\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\n"),
            "x.toml:2:8: invalid value 'Web' for 'name': expected 1 to 32 characters",
        ),
        (
            format!(
                "{S}name = \"default\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\n"
            ),
            "x.toml:2:8: invalid value 'default' for 'name'",
        ),
        (
            format!(
                "{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\n{S}name = \"a\"\nlisten = \"127.0.0.1:3\"\nbackends = \"127.0.0.1:2\"\n"
            ),
            "x.toml:6:8: invalid 'name': service 'a' is defined twice",
        ),
        (
            format!("{S}name = \"a\"\nbackends = \"127.0.0.1:2\"\n"),
            "service 'a' has no `listen`",
        ),
        (
            format!("{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\n"),
            "service 'a' has no `backends`",
        ),
        (
            format!(
                "{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\nworkers = 3\n"
            ),
            "x.toml:5:1: 'workers' is a setting of the whole proxy, not of one service: set it at the top level (a [[service]] table takes name, sni, listen, backends,",
        ),
        (
            format!(
                "{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\ncolour = 3\n"
            ),
            "x.toml:5:1: unknown key 'colour' in a [[service]] table (it takes name, sni, listen, backends,",
        ),
        (
            format!(
                "{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\nmax-conns = 0\n"
            ),
            "x.toml:5:13: invalid value '0' for 'max-conns': expected a whole number, 1 or more, or off",
        ),
        (
            format!(
                "{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\nmax-conns-per-ip = \"many\"\n"
            ),
            "x.toml:5:20: invalid value 'many' for 'max-conns-per-ip': expected a whole number 1..=4294967295, or off",
        ),
        (
            format!(
                "{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\n{S}name = \"b\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:3\"\n"
            ),
            "x.toml:7:10: invalid 'listen': services a and b both listen on 127.0.0.1:1 without `sni`",
        ),
        (
            format!(
                "{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\nsni = [\"*.x.org\"]\n{S}name = \"b\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:3\"\nsni = [\"y.org\", \"*.X.org\"]\n"
            ),
            "x.toml:10:7: invalid 'sni': sni name \"*.x.org\" is claimed by both service a and service b on the same listener (127.0.0.1:1)",
        ),
        (
            format!(
                "{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\nsni = [\"bad name\"]\n"
            ),
            "x.toml:5:8: invalid value 'bad name' for 'sni'",
        ),
        (
            format!(
                "{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\nsni = [\"a.org\"]\n{S}name = \"b\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:3\"\nbacklog = 10\n"
            ),
            "services a and b share 127.0.0.1:1 but not their backlog",
        ),
        (
            format!(
                "listen = \"127.0.0.1:1\"\n{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\n"
            ),
            "x.toml:1:10: invalid value '127.0.0.1:1' for 'listen': the top-level `listen` is the default service's, which has no backends",
        ),
        (
            format!(
                "{S}name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\nconnect-timeout = \"soon\"\n"
            ),
            "x.toml:5:19: invalid value 'soon' for 'connect-timeout'",
        ),
    ] {
        let got = load(&body, Flags::default()).unwrap_err();
        assert!(got.contains(want), "{body}\ngot:  {got}\nwant: {want}");
    }
}

#[test]
fn the_default_service_may_be_the_fallback_of_an_sni_listener() {
    let body = "listen = \"127.0.0.1:7300\"\nbackends = \"127.0.0.1:7301\"\n[[service]]\nname = \"tls\"\nlisten = \"127.0.0.1:7300\"\nbackends = \"127.0.0.1:7302\"\nsni = [\"a.test\"]\n";
    let c = load(body, Flags::default()).unwrap();
    assert!(c.defer_accept && c.services[0].config.defer_accept);
    // Said explicitly: kept off.
    let off = format!("defer-accept = false\n{body}");
    let c = load(&off, Flags::default()).unwrap();
    assert!(!c.defer_accept && !c.services[0].config.defer_accept);
}
