//! Name patterns: what is refused and how the message reads, what matches
//! what, most specific first, the fallback, and the overlap check.

use proptest::prelude::*;

use super::super::names::*;

fn p(s: &str) -> Pattern {
    Pattern::parse(s).unwrap()
}

#[test]
fn bad_patterns_are_refused_with_a_line_naming_them() {
    let long_label = format!("{}.com", "a".repeat(64));
    let long_name = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(62));
    // The whole pattern counts: a name it matches is at least as long.
    let long_wild = format!("*.{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(60));
    for (text, says) in [
        ("", "the name is empty"),
        ("*", "a lone '*'"),
        ("*.", "a domain after '*.'"),
        ("*..", "a domain after '*.'"),
        ("a.*.b", "'*' may only be the whole first label"),
        ("**", "'*' may only be the whole first label"),
        ("**.example.com", "'*' may only be the whole first label"),
        ("*a.example.com", "'*' may only be the whole first label"),
        ("*.*.example.com", "'*' may only be the whole first label"),
        ("www.example.*", "'*' may only be the whole first label"),
        ("a..b", "empty label"),
        (".example.com", "empty label"),
        ("example.com..", "empty label"),
        ("*.example..com", "empty label"),
        (long_label.as_str(), "a label longer than 63"),
        (long_name.as_str(), "longer than 253"),
        (long_wild.as_str(), "longer than 253"),
        ("web server.example", "character ' '"),
        ("host:443", "character ':'"),
        ("caf\u{e9}.fr", "non-ASCII"),
        ("a\0b", "character '\\0'"),
        ("10.0.0.1", "an IP address"),
        ("::1", "an IP address"),
        ("[2001:db8::1]", "an IP address"),
    ] {
        let err = Pattern::parse(text).expect_err(text).to_string();
        assert!(
            err.starts_with(&format!("invalid sni name {text:?}: ")) && err.contains(says),
            "{text:?}: {err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn patterns_are_lowercase_without_a_trailing_dot() {
    assert_eq!(
        p("WWW.Example.COM."),
        Pattern::Exact("www.example.com".into())
    );
    assert_eq!(p("*.Example.com"), Pattern::Wildcard("example.com".into()));
    assert_eq!(p("*.Example.com").to_string(), "*.example.com");
    assert_eq!(p("*.local").to_string(), "*.local");
    assert_eq!(p("_acme.example").to_string(), "_acme.example");
}

#[test]
fn a_wildcard_stands_for_exactly_one_label() {
    let w = p("*.example.com");
    for yes in [
        "www.example.com",
        "API.Example.Com",
        "a.example.com.",
        "x-1.example.com",
    ] {
        assert!(w.matches(yes), "{yes}");
    }
    for no in [
        "example.com",
        "a.b.example.com",
        ".example.com",
        "wwwexample.com",
        "www.example.org",
    ] {
        assert!(!w.matches(no), "{no}");
    }
    assert!(p("www.example.com").matches("WWW.EXAMPLE.COM."));
    assert!(!p("www.example.com").matches("www.example.co"));
}

#[test]
fn the_most_specific_claim_wins_then_the_fallback() {
    let mut map = SniMap::new();
    map.insert(p("*.example.com"), "wild").unwrap();
    map.insert(p("www.example.com"), "exact").unwrap();
    map.insert(p("*.com"), "com").unwrap();
    map.insert(p("*.b.example.com"), "deeper").unwrap();
    assert_eq!(map.lookup("www.example.com"), Some(&"exact"));
    assert_eq!(map.lookup("WWW.example.com."), Some(&"exact"));
    assert_eq!(map.lookup("api.example.com"), Some(&"wild"));
    assert_eq!(map.lookup("example.com"), Some(&"com"));
    assert_eq!(map.lookup("a.b.example.com"), Some(&"deeper"));
    assert_eq!(map.lookup("x.y.z.example.com"), None);
    assert_eq!(map.lookup("com"), None);
    assert_eq!(map.lookup(""), None);
    assert_eq!(map.lookup(&"a".repeat(300)), None);
    assert_eq!(map.route(Some("other.org")), None);
    assert_eq!(map.set_fallback("fallback"), None);
    assert_eq!(map.route(Some("other.org")), Some(&"fallback"));
    assert_eq!(map.route(None), Some(&"fallback"));
    assert_eq!(map.route(Some("www.example.com")), Some(&"exact"));
    assert_eq!(map.fallback(), Some(&"fallback"));
    assert!(!map.is_empty());
}

#[test]
fn a_pattern_claimed_twice_keeps_its_first_owner() {
    let mut map = SniMap::new();
    map.insert(p("www.example.com"), 1).unwrap();
    assert_eq!(map.insert(p("WWW.example.com."), 2), Err(&1));
    assert_eq!(map.lookup("www.example.com"), Some(&1));
}

#[test]
fn overlaps_name_both_services_per_pattern() {
    let claims = [
        ("web", p("www.example.com")),
        ("web", p("*.example.com")),
        ("api", p("api.example.com")),
        ("api", p("*.Example.com")),
        ("blog", p("WWW.example.com.")),
        ("web", p("www.example.com")),
    ];
    let found = overlaps(claims);
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "sni name \"*.example.com\" is claimed by both service web and service api on the same listener",
            "sni name \"www.example.com\" is claimed by both service web and service blog on the same listener",
            "sni name \"www.example.com\" is listed twice by service web",
        ]
    );
    assert!(overlaps([("a", p("a.example")), ("b", p("*.example"))]).is_empty());
}

proptest! {
    /// The map agrees with a scan of the patterns: an exact match if any,
    /// else the wildcard match if any.
    #[test]
    fn lookup_agrees_with_a_scan(
        names in prop::collection::vec("(\\*\\.)?[a-c]{1,2}(\\.[a-c]{1,2}){0,2}", 1..12),
        host in "[a-cA-C]{1,2}(\\.[a-cA-C]{1,2}){0,3}",
    ) {
        let mut map = SniMap::new();
        let mut kept = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let pat = p(n);
            if map.insert(pat.clone(), i).is_ok() {
                kept.push((pat, i));
            }
        }
        let exact = kept.iter().find(|(pat, _)| matches!(pat, Pattern::Exact(_)) && pat.matches(&host));
        let wild = kept.iter().find(|(pat, _)| matches!(pat, Pattern::Wildcard(_)) && pat.matches(&host));
        let want = exact.or(wild).map(|(_, i)| i);
        prop_assert_eq!(map.lookup(&host), want);
    }

    #[test]
    fn any_text_parses_or_gives_one_line(text in "\\PC{0,40}|[a-z*.]{0,12}") {
        match Pattern::parse(&text) {
            Ok(pat) => {
                prop_assert_eq!(Pattern::parse(&pat.to_string()), Ok(pat.clone()));
            }
            Err(e) => {
                let line = e.to_string();
                prop_assert!(!line.contains('\n'));
            }
        }
    }
}
