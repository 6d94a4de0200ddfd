//! `explain ADDR [--service S]`: its arguments, and its reply as text (the
//! JSON reply is the front's `Explanation` as it is).

use std::net::{IpAddr, SocketAddr};

use crate::front::explain::{BackendRank, Explanation};
use crate::policy::PolicyName;

/// Rows of the backend table shown in text (JSON has them all).
const SHOWN: usize = 12;

/// The client address `explain` asks about (`--service` is taken out
/// before, as for every per-service command).
pub fn parse(args: &[&str]) -> Result<IpAddr, String> {
    let [addr] = args else {
        return Err("usage: explain ADDR [--service S]".to_string());
    };
    let ip = addr
        .parse::<IpAddr>()
        .or_else(|_| addr.parse::<SocketAddr>().map(|a| a.ip()))
        .map_err(|_| {
            format!(
                "invalid client address '{}': expected an IP address such as 192.0.2.7 or 2001:db8::7 (a port is ignored)",
                addr.chars().take(60).collect::<String>()
            )
        })?;
    Ok(ip.to_canonical())
}

/// The reply as text.
pub fn render(e: &Explanation) -> String {
    let mut out = vec![format!(
        "client {} · service {} · policy {}",
        e.client, e.service, e.policy
    )];
    let verdict = match e.outcome {
        "served" => match (&e.worker, &e.backend) {
            (Some(w), Some(b)) => {
                let who = if e.next_from_anyone {
                    "the next connection, from this client or any other,"
                } else {
                    "a connection from it"
                };
                format!("=> {who} goes to worker slot {w} and backend {b}")
            }
            _ => "=> served".to_string(),
        },
        "denied" => "=> refused with a reset: the access list denies it".to_string(),
        "refused" => match e.service_limits.as_ref().and_then(|l| l.reached) {
            Some("max_conns_per_ip") => {
                "=> refused with a reset: it is at the service's own per-IP limit (max-conns-per-ip)"
                    .to_string()
            }
            _ => "=> refused with a reset: it is at its per-IP limit".to_string(),
        },
        "full" => "=> not served now: the service is at its own max-conns; on a listener of its own the client waits in the backlog until a connection ends, on one shared by SNI it is reset".to_string(),
        "waits" => {
            "=> it waits in the front's queue: no worker slot can take a connection now".to_string()
        }
        "queued" => match &e.backend {
            Some(b) => {
                let why = if e.policy == PolicyName::Sticky {
                    "it is at its connection limit (maxconn), and a sticky client waits for its own backend"
                } else {
                    "every backend it may use is at its connection limit (maxconn)"
                };
                format!(
                    "=> it waits in the queue of backend {b}: {why}; a slot freed goes to the oldest waiting"
                )
            }
            None => "=> it waits in a backend's queue".to_string(),
        },
        "closed" => "=> closed: no backend is enabled".to_string(),
        _ => "=> refused: the proxy is stopping".to_string(),
    };
    out.push(verdict);
    if e.proxy_header {
        out.push("note: connections from this address must begin with a PROXY header (--accept-proxy); the client is then the header's address".to_string());
    }
    out.push(format!("access list: {}", e.access.rule));
    out.push(match &e.per_ip {
        None => "per-IP limit: none (--max-conns-per-ip not set)".to_string(),
        Some(p) => format!(
            "per-IP limit: {} of {} connections open as client {} ({})",
            p.open,
            p.limit,
            p.key,
            if p.admitted {
                "room for one more"
            } else {
                "full: refused"
            }
        ),
    });
    if let Some(l) = &e.service_limits {
        let mut parts = Vec::new();
        if let Some(max) = l.max_conns {
            parts.push(format!("{} of max-conns {max} open", l.open));
        }
        if let (Some(max), Some(n)) = (l.max_conns_per_ip, l.client_open) {
            parts.push(format!("{n} of max-conns-per-ip {max} from this client"));
        }
        let state = match l.reached {
            Some(_) => "full",
            None => "room for one more",
        };
        out.push(format!("service limits: {} ({state})", parts.join(", ")));
    }
    let would = if matches!(e.outcome, "served" | "queued") {
        ""
    } else {
        " (were it admitted)"
    };
    out.push(format!("worker{would}: {}", e.worker_reason));
    let mut w = vec!["  SLOT  READY  ACTIVE".to_string()];
    for r in &e.workers {
        let score = r
            .score
            .map(|s| format!("  score {s:.6}"))
            .unwrap_or_default();
        let mark = if Some(r.slot) == e.worker { "  <-" } else { "" };
        w.push(format!(
            "  {:<4}  {:<5}  {:<6}{score}{mark}",
            r.slot,
            if r.routable { "yes" } else { "no" },
            r.active
        ));
    }
    out.extend(w);
    if !e.backend_reason.is_empty() {
        out.push(format!("backend{would}: {}", e.backend_reason));
    }
    if e.fail_open {
        out.push(
            "note: every backend is down: the pick fails open and tries them anyway".to_string(),
        );
    }
    out.extend(backend_table(e));
    if !e.fallbacks.is_empty() {
        out.push(format!(
            "if it cannot connect: {} (in that order)",
            e.fallbacks.join(", ")
        ));
    }
    out.join("\n")
}

fn backend_table(e: &Explanation) -> Vec<String> {
    let width = e
        .backends
        .iter()
        .take(SHOWN)
        .map(|b| b.name.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let num = |b: &BackendRank| match (b.credit, b.load, b.score) {
        (Some(c), _, _) => format!("credit {c:.3}"),
        (_, Some(l), _) => format!("load {l:.3}"),
        (_, _, Some(s)) => {
            let held = if b.ramp_admits == Some(false) {
                " (held back: slow start)"
            } else {
                ""
            };
            format!("score {s:.4}{held}")
        }
        _ => "-".to_string(),
    };
    let mut out = vec![format!(
        "  RANK  {:<width$}  STATE     WEIGHT  ACTIVE  WHY",
        "BACKEND"
    )];
    for (i, b) in e.backends.iter().take(SHOWN).enumerate() {
        let mark = if Some(&b.name) == e.backend.as_ref() {
            "  <-"
        } else {
            ""
        };
        let weight = if b.effective_weight < f64::from(b.weight) {
            format!("{:.2}", b.effective_weight)
        } else {
            b.weight.to_string()
        };
        out.push(format!(
            "  {:<4}  {:<width$}  {:<8}  {:<6}  {:<6}  {}{mark}",
            i + 1,
            b.name,
            b.state,
            weight,
            b.active,
            num(b)
        ));
    }
    if e.backends.len() > SHOWN {
        out.push(format!(
            "  ... {} more (--json lists them all)",
            e.backends.len() - SHOWN
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(parse(&["192.0.2.7"]).unwrap(), v4);
        assert_eq!(parse(&["192.0.2.7:5000"]).unwrap(), v4);
        assert_eq!(parse(&["::ffff:192.0.2.7"]).unwrap(), v4);
        assert_eq!(
            parse(&["[2001:db8::7]:80"]).unwrap(),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        assert!(
            parse(&["web01"])
                .unwrap_err()
                .starts_with("invalid client address 'web01'")
        );
        assert_eq!(
            parse(&["192.0.2.7", "--servce", "web"]).unwrap_err(),
            "usage: explain ADDR [--service S]"
        );
    }
}
