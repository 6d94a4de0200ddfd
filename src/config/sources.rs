//! Source addresses of backend connections (`--source`, `source=`): which
//! ones a backend uses, and the checks that they can be used at all.
//!
//! A backend's own `source=` list wins; without one, it uses the
//! addresses of `--source` of its own family (so one `--source
//! 10.0.0.1;2001:db8::1` serves IPv4 and IPv6 backends alike); with
//! neither, the system chooses. Every address must be of the backend's
//! family and an address of this host: each is bound once (port 0, with
//! `IP_BIND_ADDRESS_NO_PORT`, so no port is taken) when the config is
//! built, at start, by `rrproxy check`, on reload and by `ctl backend
//! add`, so a typo is an error then rather than failed connects later.

use std::net::IpAddr;

use super::parse::BackendSpec;

/// Most different source lists the backends of one config may use (each
/// list travels once in the workers' backend table, whose frame is
/// bounded).
pub const MAX_SOURCE_LISTS: usize = 64;

/// The addresses connections to `spec` leave from, in the order they are
/// taken in turn; empty: the system's choice.
pub fn of(spec: &BackendSpec, global: &[IpAddr]) -> Vec<IpAddr> {
    if !spec.source.is_empty() {
        return spec.source.clone();
    }
    global
        .iter()
        .copied()
        .filter(|ip| ip.is_ipv4() == spec.addr.is_ipv4())
        .collect()
}

/// Whether `spec` can use its sources: each of the backend's family, and
/// `--source`, when given, has one of that family. The error names the
/// address and the backend.
pub fn check_family(spec: &BackendSpec, global: &[IpAddr]) -> Result<(), String> {
    let family = |ip: bool| if ip { "IPv4" } else { "IPv6" };
    let backend = family(spec.addr.is_ipv4());
    if let Some(ip) = spec
        .source
        .iter()
        .find(|ip| ip.is_ipv4() != spec.addr.is_ipv4())
    {
        return Err(format!(
            "source {ip} is {} but backend {} is {backend}",
            family(ip.is_ipv4()),
            spec.addr
        ));
    }
    if spec.source.is_empty() && !global.is_empty() && of(spec, global).is_empty() {
        return Err(format!(
            "--source has no {backend} address for backend {} (add one, or give the backend its own source=)",
            spec.addr
        ));
    }
    Ok(())
}

/// Whether this host can connect from `ip`: bind a socket to it (port 0,
/// no port reserved). The error names the address.
pub fn check_local(ip: IpAddr) -> Result<(), String> {
    let domain = if ip.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)
        .map_err(|e| format!("cannot test source address {ip}: {e}"))?;
    crate::sys::bind_source(&socket, ip).map_err(|e| {
        if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            format!("source address {ip} is not an address of this host")
        } else {
            format!("cannot bind source address {ip}: {e}")
        }
    })
}

/// No more than [`MAX_SOURCE_LISTS`] different lists among `specs`.
pub fn check_lists(specs: &[BackendSpec], global: &[IpAddr]) -> Result<(), String> {
    let mut lists: Vec<Vec<IpAddr>> = Vec::new();
    for spec in specs {
        let list = of(spec, global);
        if !list.is_empty() && !lists.contains(&list) {
            lists.push(list);
        }
    }
    if lists.len() > MAX_SOURCE_LISTS {
        return Err(format!(
            "{} different source lists: at most {MAX_SOURCE_LISTS}",
            lists.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str, source: &[&str]) -> BackendSpec {
        BackendSpec {
            name: addr.into(),
            addr: addr.parse().unwrap(),
            weight: 1,
            group: None,
            send_proxy: None,
            source: source.iter().map(|s| s.parse().unwrap()).collect(),
            slow_start: None,
            maxconn: None,
            maxqueue: None,
            backup: false,
        }
    }

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn a_backend_list_wins_and_the_global_one_serves_by_family() {
        let global = ips(&["127.0.0.2", "::1", "127.0.0.3"]);
        assert_eq!(
            of(&spec("127.0.0.1:80", &[]), &global),
            ips(&["127.0.0.2", "127.0.0.3"])
        );
        assert_eq!(of(&spec("[::1]:80", &[]), &global), ips(&["::1"]));
        assert_eq!(
            of(&spec("127.0.0.1:80", &["127.0.0.9"]), &global),
            ips(&["127.0.0.9"])
        );
        assert!(of(&spec("127.0.0.1:80", &[]), &[]).is_empty());
    }

    #[test]
    fn family_and_locality_are_checked_naming_the_address() {
        assert_eq!(
            check_family(&spec("127.0.0.1:80", &["::1"]), &[]).unwrap_err(),
            "source ::1 is IPv6 but backend 127.0.0.1:80 is IPv4"
        );
        assert!(
            check_family(&spec("[::1]:80", &[]), &ips(&["127.0.0.2"]))
                .unwrap_err()
                .starts_with("--source has no IPv6 address for backend [::1]:80")
        );
        assert!(check_family(&spec("[::1]:80", &["::1"]), &ips(&["127.0.0.2"])).is_ok());
        assert!(check_local("127.0.0.3".parse().unwrap()).is_ok());
        assert_eq!(
            check_local("192.0.2.77".parse().unwrap()).unwrap_err(),
            "source address 192.0.2.77 is not an address of this host"
        );
    }

    #[test]
    fn different_lists_are_bounded() {
        let many: Vec<BackendSpec> = (0..=MAX_SOURCE_LISTS)
            .map(|i| {
                spec(
                    &format!("127.0.0.1:{}", 1000 + i),
                    &[&format!("127.0.1.{i}")],
                )
            })
            .collect();
        assert!(check_lists(&many[..MAX_SOURCE_LISTS], &[]).is_ok());
        assert!(check_lists(&many, &[]).unwrap_err().contains("at most 64"));
    }
}
