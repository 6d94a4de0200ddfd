use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn acl(allow: &[&str], deny: &[&str]) -> Acl {
    Acl::new(allow.iter().map(|s| cidr(s)), deny.iter().map(|s| cidr(s)))
}

#[test]
fn networks_parse_in_every_form() {
    let cases = [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("::1/128", "::1/128"),
        ("10.1.2.3", "10.1.2.3/32"),
        ("2001:db8::1", "2001:db8::1/128"),
        (" 192.168.0.0/16 ", "192.168.0.0/16"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("::/0", "::/0"),
        ("10.0.0.0/008", "10.0.0.0/8"),
        // IPv4-mapped IPv6 is IPv4.
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:10.0.0.1", "10.0.0.1/32"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
    ];
    for (text, want) in cases {
        let c = cidr(text);
        assert_eq!(c.to_string(), want, "{text}");
        assert_eq!(cidr(want), c, "{want} reads back");
    }
    // Wider than the mapped block: an IPv6 network.
    assert!(cidr("::ffff:0:0/95").addr().is_ipv6());
}

#[test]
fn host_bits_are_cleared_and_noted() {
    let cases = [
        ("10.1.2.3/8", "10.0.0.0/8", true),
        ("10.0.0.0/8", "10.0.0.0/8", false),
        ("2001:db8::1/32", "2001:db8::/32", true),
        ("10.0.0.1", "10.0.0.1/32", false),
        ("::ffff:10.1.2.3/104", "10.0.0.0/8", true),
        ("255.255.255.255/0", "0.0.0.0/0", true),
    ];
    for (text, want, noted) in cases {
        let (c, had) = Cidr::parse_noting_host_bits(text).unwrap();
        assert_eq!((c.to_string().as_str(), had), (want, noted), "{text}");
    }
}

#[test]
fn bad_networks_are_refused_naming_the_value() {
    let cases = [
        ("localhost", "host name"),
        ("example.com/24", "host name"),
        ("db-1", "host name"),
        ("10.0.0.0/33", "0 to 32"),
        ("::/129", "0 to 128"),
        ("10.0.0.0/", "0 to 32"),
        ("10.0.0.0/+8", "0 to 32"),
        ("10.0.0.0/-1", "0 to 32"),
        ("10.0.0.0/8/9", "0 to 32"),
        ("10.0.0.0/ 8", "0 to 32"),
        ("10.0.0.256/8", "not an IP address"),
        ("10.0.0/8", "not an IP address"),
        ("fe80::1%eth0/64", "not an IP address"),
        ("10.0.0.0 /8", "not an IP address"),
        ("/8", "not an IP address"),
    ];
    for (text, want) in cases {
        let err = text.parse::<Cidr>().unwrap_err().to_string();
        assert!(err.contains(want), "{text}: {err}");
        assert!(err.contains(&format!("'{}'", text.trim())), "{text}: {err}");
        assert!(!err.contains('\n'));
    }
    assert_eq!("  ".parse::<Cidr>(), Err(CidrError::Empty));
}

#[test]
fn deny_refuses_and_a_non_empty_allow_list_admits_only_its_own() {
    let everyone = Acl::default();
    assert!(everyone.is_empty());
    assert_eq!(everyone.admits(ip("203.0.113.9")), Verdict::Admit);

    let a = acl(
        &["10.0.0.0/8", "2001:db8::/32"],
        &["10.1.0.0/16", "10.2.3.4"],
    );
    assert_eq!(a.admits(ip("10.9.9.9")), Verdict::Admit);
    assert_eq!(
        a.admits(ip("10.1.2.3")),
        Verdict::Denied,
        "deny beats allow"
    );
    assert_eq!(a.admits(ip("10.2.3.4")), Verdict::Denied);
    assert_eq!(a.admits(ip("10.2.3.5")), Verdict::Admit);
    assert_eq!(a.admits(ip("11.0.0.1")), Verdict::NotAllowed);
    assert_eq!(a.admits(ip("2001:db8:ffff::1")), Verdict::Admit);
    assert_eq!(a.admits(ip("2001:db9::1")), Verdict::NotAllowed);
    assert!(!a.admits(ip("11.0.0.1")).admitted());

    let deny_only = acl(&[], &["192.0.2.0/24"]);
    assert_eq!(deny_only.admits(ip("192.0.2.200")), Verdict::Denied);
    assert_eq!(deny_only.admits(ip("192.0.3.1")), Verdict::Admit);
}

#[test]
fn ipv4_mapped_clients_match_ipv4_entries_and_families_stay_apart() {
    let a = acl(&["10.0.0.0/8"], &["127.0.0.1"]);
    assert_eq!(a.admits(ip("::ffff:10.1.1.1")), Verdict::Admit);
    assert_eq!(a.admits(ip("::ffff:127.0.0.1")), Verdict::Denied);
    assert_eq!(a.admits(ip("::ffff:11.1.1.1")), Verdict::NotAllowed);
    // "Every IPv6 client" is not every client, and the other way round.
    let no_v6 = acl(&[], &["::/0"]);
    assert_eq!(no_v6.admits(ip("10.0.0.1")), Verdict::Admit);
    assert_eq!(no_v6.admits(ip("::ffff:10.0.0.1")), Verdict::Admit);
    assert_eq!(no_v6.admits(ip("::1")), Verdict::Denied);
    let no_v4 = acl(&[], &["0.0.0.0/0"]);
    assert_eq!(no_v4.admits(ip("::1")), Verdict::Admit);
    assert_eq!(no_v4.admits(ip("::ffff:1.2.3.4")), Verdict::Denied);
}

#[test]
fn edits_build_a_new_list_and_say_when_nothing_changes() {
    let a = Acl::default();
    let net = cidr("10.0.0.0/8");
    let b = a.with(Action::Allow, net).unwrap();
    assert!(a.is_empty(), "the original is untouched");
    assert_eq!(b.allow(), [net]);
    assert!(b.with(Action::Allow, net).is_none(), "already there");
    // The same network in the other list moves there.
    let c = b.with(Action::Deny, net).unwrap();
    assert_eq!((c.allow(), c.deny()), (&[][..], &[net][..]));
    assert_eq!(c.admits(ip("10.1.1.1")), Verdict::Denied);
    let d = c
        .with(Action::Allow, cidr("::1"))
        .unwrap()
        .with(Action::Allow, cidr("1.2.3.4"))
        .unwrap();
    let listed: Vec<String> = d.entries().map(|(a, c)| format!("{a} {c}")).collect();
    assert_eq!(
        listed,
        ["allow 1.2.3.4/32", "allow ::1/128", "deny 10.0.0.0/8"]
    );
    let e = d.without(net).unwrap();
    assert_eq!(e.admits(ip("10.1.1.1")), Verdict::NotAllowed);
    assert!(e.without(net).is_none(), "not listed");
}

#[test]
fn duplicates_are_dropped_and_nested_entries_merge_for_lookup() {
    let a = acl(
        &["10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/8", "10.1.2.3/8"],
        &[],
    );
    assert_eq!(a.allow(), [cidr("10.0.0.0/8"), cidr("10.1.0.0/16")]);
    assert_eq!(
        (&a.allow.ranges.v4.starts[..], &a.allow.ranges.v4.ends[..]),
        (&[0x0a00_0000][..], &[0x0aff_ffff][..])
    );
    // Adjacent networks stay separate ranges but both match.
    let b = acl(&["10.0.0.0/9", "10.128.0.0/9"], &[]);
    assert_eq!(b.admits(ip("10.127.255.255")), Verdict::Admit);
    assert_eq!(b.admits(ip("10.128.0.0")), Verdict::Admit);
    assert_eq!(b.admits(ip("11.0.0.0")), Verdict::NotAllowed);
}

#[test]
fn per_ip_limit_keys_group_ipv6_by_prefix() {
    assert_eq!(limit_key(ip("10.1.2.3"), 64), ip("10.1.2.3"));
    assert_eq!(limit_key(ip("::ffff:10.1.2.3"), 64), ip("10.1.2.3"));
    assert_eq!(
        limit_key(ip("2001:db8:1:2:aaaa::1"), 64),
        ip("2001:db8:1:2::")
    );
    assert_eq!(
        limit_key(ip("2001:db8:1:2:aaaa::1"), 48),
        ip("2001:db8:1::")
    );
    assert_eq!(limit_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
    assert_eq!(limit_key(ip("2001:db8::1"), 200), ip("2001:db8::1"));
    assert_eq!(limit_key(ip("2001:db8::1"), 0), ip("::"));
}

// ---- properties ----

fn any_cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Cidr::new(Ipv4Addr::from(a).into(), p).unwrap()),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, p)| Cidr::new(Ipv6Addr::from(a).into(), p).unwrap()),
        // Few, long-prefix networks in a small space, so clients hit them.
        (any::<u8>(), 20u8..=32)
            .prop_map(|(a, p)| { Cidr::new(Ipv4Addr::new(10, 0, a, 0).into(), p).unwrap() }),
        (any::<u32>(), 96u8..=128).prop_map(|(a, p)| {
            Cidr::new(Ipv4Addr::from(a).to_ipv6_mapped().into(), p).unwrap()
        }),
    ]
}

/// A client: random, or inside/near one of `cidrs`.
fn client_near(cidrs: Vec<Cidr>) -> impl Strategy<Value = IpAddr> {
    let n = cidrs.len();
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
        any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
        (any::<prop::sample::Index>(), any::<u128>(), any::<bool>()).prop_map(
            move |(i, noise, mapped)| {
                if n == 0 {
                    return IpAddr::V4(Ipv4Addr::new(10, 0, noise as u8, 1));
                }
                let c = cidrs[i.index(n)];
                // Same leading bits, random rest; sometimes one bit past.
                let ip = match c.addr() {
                    IpAddr::V4(a) => {
                        let host = (noise as u32) >> c.prefix().min(31);
                        IpAddr::V4((u32::from(a) ^ host).into())
                    }
                    IpAddr::V6(a) => {
                        IpAddr::V6((u128::from(a) ^ (noise >> c.prefix().min(127))).into())
                    }
                };
                match ip {
                    IpAddr::V4(v4) if mapped => IpAddr::V6(v4.to_ipv6_mapped()),
                    other => other,
                }
            }
        ),
    ]
}

/// Bit-by-bit membership, from the octets: the reference the fast
/// lookup must agree with.
fn naive_contains(c: &Cidr, ip: IpAddr) -> bool {
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => a.octets().to_vec(),
        },
    };
    let (net, client) = (octets(c.addr()), octets(ip));
    net.len() == client.len()
        && (0..usize::from(c.prefix())).all(|i| {
            let bit = |o: &[u8]| o[i / 8] >> (7 - i % 8) & 1;
            bit(&net) == bit(&client)
        })
}

fn naive_verdict(allow: &[Cidr], deny: &[Cidr], ip: IpAddr) -> Verdict {
    if deny.iter().any(|c| naive_contains(c, ip)) {
        Verdict::Denied
    } else if !allow.is_empty() && !allow.iter().any(|c| naive_contains(c, ip)) {
        Verdict::NotAllowed
    } else {
        Verdict::Admit
    }
}

fn lists_and_clients() -> impl Strategy<Value = (Vec<Cidr>, Vec<Cidr>, Vec<IpAddr>)> {
    (
        prop::collection::vec(any_cidr(), 0..40),
        prop::collection::vec(any_cidr(), 0..40),
    )
        .prop_flat_map(|(allow, deny)| {
            let all: Vec<Cidr> = allow.iter().chain(&deny).copied().collect();
            let clients = prop::collection::vec(client_near(all), 1..40);
            (Just(allow), Just(deny), clients)
        })
}

proptest! {
    #[test]
    fn lookups_agree_with_a_linear_scan((allow, deny, clients) in lists_and_clients()) {
        let acl = Acl::new(allow.iter().copied(), deny.iter().copied());
        for ip in clients {
            prop_assert_eq!(acl.admits(ip), naive_verdict(&allow, &deny, ip), "{}", ip);
            for c in allow.iter().chain(&deny) {
                prop_assert_eq!(c.contains(ip), naive_contains(c, ip), "{} in {}", ip, c);
            }
        }
    }

    #[test]
    fn edits_agree_with_building_from_scratch(
        (allow, deny, clients) in lists_and_clients(),
        extra in any_cidr(),
        deny_it in any::<bool>(),
    ) {
        let acl = Acl::new(allow.iter().copied(), deny.iter().copied());
        let action = if deny_it { Action::Deny } else { Action::Allow };
        let edited = acl.with(action, extra).unwrap_or_else(|| acl.clone());
        let (mut a2, mut d2): (Vec<Cidr>, Vec<Cidr>) = (allow.clone(), deny.clone());
        a2.retain(|c| *c != extra);
        d2.retain(|c| *c != extra);
        if deny_it { d2.push(extra) } else { a2.push(extra) }
        let removed = edited.without(extra).expect("just added");
        let (mut a3, mut d3) = (a2.clone(), d2.clone());
        a3.retain(|c| *c != extra);
        d3.retain(|c| *c != extra);
        for ip in clients {
            prop_assert_eq!(edited.admits(ip), naive_verdict(&a2, &d2, ip));
            prop_assert_eq!(removed.admits(ip), naive_verdict(&a3, &d3, ip));
        }
    }

    #[test]
    fn networks_read_back_from_their_text(c in any_cidr()) {
        prop_assert_eq!(c.to_string().parse::<Cidr>(), Ok(c));
        let (again, had_host_bits) = Cidr::parse_noting_host_bits(&c.to_string()).unwrap();
        prop_assert_eq!((again, had_host_bits), (c, false));
    }

    #[test]
    fn any_address_and_prefix_text_parses_as_its_network(a in any::<u128>(), p in 0u8..=128, v4 in any::<bool>()) {
        let (addr, p): (IpAddr, u8) = if v4 {
            (Ipv4Addr::from(a as u32).into(), p % 33)
        } else {
            (Ipv6Addr::from(a).into(), p)
        };
        let parsed: Cidr = format!("{addr}/{p}").parse().unwrap();
        prop_assert_eq!(Some(parsed), Cidr::new(addr, p));
        prop_assert!(parsed.contains(addr));
    }

    #[test]
    fn arbitrary_text_never_panics_and_errors_name_it(text in "[0-9a-fA-Z:./% +-]{0,50}|\\PC{0,30}") {
        match text.parse::<Cidr>() {
            Ok(c) => prop_assert!(c.contains(c.addr())),
            Err(CidrError::Empty) => prop_assert!(text.trim().is_empty()),
            Err(e) => prop_assert!(e.to_string().contains(text.trim()), "{}", e),
        }
    }

    #[test]
    fn limit_keys_are_equal_exactly_when_the_prefixes_are(a in any::<u128>(), b in any::<u128>(), p in 0u8..=128, shared in 0u32..=128) {
        // b shares `shared` leading bits with a.
        let keep = u128::MAX.checked_shl(128 - shared).unwrap_or(0);
        let b = (a & keep) | (b & !keep);
        let (x, y) = (Ipv6Addr::from(a), Ipv6Addr::from(b));
        prop_assume!(x.to_ipv4_mapped().is_none() && y.to_ipv4_mapped().is_none());
        let same = limit_key(x.into(), p) == limit_key(y.into(), p);
        let mask = u128::MAX.checked_shl(128 - u32::from(p)).unwrap_or(0);
        prop_assert_eq!(same, a & mask == b & mask);
    }
}

/// Found by the property test: a network given on both lists is moved by
/// `with` like any other (it used to be left on both).
#[test]
fn with_moves_a_network_listed_on_both_sides() {
    let x: Cidr = "10.0.0.0/8".parse().unwrap();
    let acl = Acl::new([x], [x]);
    let denied = acl.with(Action::Deny, x).expect("a change");
    assert_eq!(denied.admits(ip("10.1.2.3")), Verdict::Denied);
    let allowed = acl.with(Action::Allow, x).expect("a change");
    assert_eq!(allowed.admits(ip("10.1.2.3")), Verdict::Admit);
    assert!(
        allowed.with(Action::Allow, x).is_none(),
        "nothing left to do"
    );
}
