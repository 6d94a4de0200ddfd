//! CIDR parsing and the ACL matcher: lines of the input are allow / deny
//! entries (text before and after an empty line), the last 16 bytes a
//! client; parsing never panics, a network reads back from its text, and
//! the binary-search lookup agrees with a linear scan.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use rrproxy::acl::{Acl, Cidr, Verdict};

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let (text, client) = data.split_at(data.len() - 16);
    let text = String::from_utf8_lossy(text);
    let (allow_text, deny_text) = text.split_once("\n\n").unwrap_or((&text, ""));
    let parse = |block: &str| -> Vec<Cidr> {
        block
            .lines()
            .filter_map(|line| {
                let c: Cidr = line.parse().ok()?;
                assert_eq!(c.to_string().parse::<Cidr>(), Ok(c));
                assert!(c.contains(c.addr()));
                Some(c)
            })
            .collect()
    };
    let (allow, deny) = (parse(allow_text), parse(deny_text));
    let octets: [u8; 16] = client.try_into().unwrap();
    let clients = [
        IpAddr::V6(Ipv6Addr::from(octets)),
        IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3])),
        IpAddr::V6(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]).to_ipv6_mapped()),
    ];
    let acl = Acl::new(allow.iter().copied(), deny.iter().copied());
    for ip in clients {
        let want = if deny.iter().any(|c| c.contains(ip)) {
            Verdict::Denied
        } else if !allow.is_empty() && !allow.iter().any(|c| c.contains(ip)) {
            Verdict::NotAllowed
        } else {
            Verdict::Admit
        };
        assert_eq!(acl.admits(ip), want, "{ip}");
    }
});
