//! `ctl explain ADDR`: what a connection from a client address would get
//! now, and why, in the order the front decides it (`Front::admit`, then
//! `Front::dispatch`): the access list (the verdict `Access::admits`
//! gives, and the entries that match), the per-IP limit (the count
//! `Ledger::admit_ip` checks), then the worker slot and the backend from
//! [`Routing::dry_run`], which runs the policy's own picks on a copy of it
//! with the views dispatch reads. Nothing changes: the next real
//! connection from that address gets the same answer unless something
//! moves in between (for round-robin, any connection from anyone does).

use std::net::IpAddr;

use serde::Serialize;

use super::routing::DryRun;
use super::{Backends, Routing};
use crate::acl::{Action, Cidr, Verdict};
use crate::policy::{PolicyName, Why};

/// The answer to `ctl explain`.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub client: IpAddr,
    pub service: String,
    pub policy: PolicyName,
    /// What happens to the connection: `served`, `denied` (access list),
    /// `refused` (per-IP limit, the proxy's or the service's own), `full`
    /// (the service is at its own `max-conns`), `waits` (no worker can take
    /// one now),
    /// `queued` (it would wait in the queue of `backend`, at its
    /// `maxconn`), `closed` (no backend enabled) or `stopping`.
    pub outcome: &'static str,
    /// Connections from this address must begin with a PROXY header
    /// (`--accept-proxy`); the header's address is then the client.
    pub proxy_header: bool,
    pub access: AccessCheck,
    /// `None`: no per-IP limit.
    pub per_ip: Option<PerIp>,
    /// The service's own limits; `None`: it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_limits: Option<ServiceLimitCheck>,
    /// The slot and backend it gets (when served).
    pub worker: Option<usize>,
    pub backend: Option<String>,
    /// The backends tried next if that one cannot be reached, in order.
    pub fallbacks: Vec<String>,
    /// Every backend is down: the pick ignored health (fail open).
    pub fail_open: bool,
    /// Round-robin: the answer is the next connection's, whoever opens it.
    pub next_from_anyone: bool,
    /// Why, in words.
    pub worker_reason: String,
    pub backend_reason: String,
    /// Every slot as the worker pick saw it.
    pub workers: Vec<WorkerRank>,
    /// Every backend as the pick saw it, in the policy's order of
    /// preference for this client.
    pub backends: Vec<BackendRank>,
    /// The policy's own numbers.
    pub why: Why,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessCheck {
    pub admitted: bool,
    /// The rule that decides, in words.
    pub rule: String,
    /// The entries that contain the address: `allow CIDR`, `deny CIDR`.
    pub matches: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PerIp {
    /// The client the limit counts (an IPv6 address's network).
    pub key: String,
    pub limit: u32,
    /// Connections it has open now.
    pub open: u32,
    pub admitted: bool,
}

/// The service's own limits (`max-conns`, `max-conns-per-ip` in its
/// table) as admission would check them.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceLimitCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_conns: Option<u64>,
    /// Connections the service's limits count now.
    pub open: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_conns_per_ip: Option<u32>,
    /// This client's connections to the service now (with a per-IP limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_open: Option<u32>,
    /// The limit that stops it: `max_conns` or `max_conns_per_ip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerRank {
    pub slot: usize,
    pub routable: bool,
    pub active: u64,
    /// Sticky: the slot's score for this client (highest routable wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendRank {
    pub name: String,
    pub state: &'static str,
    pub routable: bool,
    pub weight: u32,
    /// Weight times the slow-start ramp: what round-robin and
    /// least-connections balance by.
    pub effective_weight: f64,
    /// Connections open on it, plus those waiting in its queue.
    pub active: u64,
    /// Least-connections: active / effective weight (lowest wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// Round-robin: credit plus effective weight (highest wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit: Option<f64>,
    /// Sticky: rendezvous score (highest routable, admitted wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Sticky: whether this client's bucket takes it while it ramps up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp_admits: Option<bool>,
}

/// What the admission steps found for the address.
pub struct Admission {
    pub verdict: Verdict,
    pub matching: Vec<(Action, Cidr)>,
    pub proxy_header: bool,
    /// (client key, limit, open now, room for one more).
    pub per_ip: Option<(IpAddr, u32, u32, bool)>,
    /// The service's own limits, when it has any.
    pub service_limits: Option<ServiceLimitCheck>,
    pub stopping: bool,
}

/// Explain a connection from `ip` to `service`; `active`: what each
/// backend holds now plus what waits for it.
pub fn explain(
    ip: IpAddr,
    service: &str,
    adm: Admission,
    routing: &Routing,
    backends: &Backends,
    active: &[u64],
    retries: usize,
) -> Explanation {
    let access = access_check(&adm);
    let per_ip = adm.per_ip.map(|(key, limit, open, admitted)| PerIp {
        key: key.to_string(),
        limit,
        open,
        admitted,
    });
    let run = routing.dry_run(ip, backends, retries);
    let outcome = if adm.stopping {
        "stopping"
    } else if !access.admitted {
        "denied"
    } else if per_ip.as_ref().is_some_and(|p| !p.admitted) {
        "refused"
    } else if let Some(reached) = adm.service_limits.as_ref().and_then(|l| l.reached) {
        if reached == "max_conns" {
            "full"
        } else {
            "refused"
        }
    } else if run.slot.is_none() {
        "waits"
    } else if run.backend.is_none() {
        "closed"
    } else if run.queued {
        "queued"
    } else {
        "served"
    };
    let name = |i: usize| backends.get(i).spec().name.clone();
    let by_id = |id: u32| backends.index_of(id).map(name);
    let (backend, fallbacks, fail_open) = match &run.backend {
        Some((first, fb, open)) => (
            Some(name(*first)),
            fb.as_slice().iter().filter_map(|&id| by_id(id)).collect(),
            *open,
        ),
        None => (None, Vec::new(), false),
    };
    let policy = routing.policy();
    let workers = worker_ranks(&run);
    let ranks = backend_ranks(&run, backends, active);
    let (worker_reason, backend_reason) = reasons(&run, &workers, &ranks, backend.as_deref());
    Explanation {
        client: ip,
        service: service.to_string(),
        policy,
        outcome,
        proxy_header: adm.proxy_header,
        access,
        per_ip,
        service_limits: adm.service_limits,
        worker: run.slot.filter(|_| matches!(outcome, "served" | "queued")),
        backend: backend.filter(|_| matches!(outcome, "served" | "queued")),
        fallbacks: if outcome == "served" {
            fallbacks
        } else {
            Vec::new()
        },
        fail_open,
        next_from_anyone: policy == PolicyName::RoundRobin,
        worker_reason,
        backend_reason,
        workers,
        backends: ranks,
        why: run.why,
    }
}

fn access_check(adm: &Admission) -> AccessCheck {
    let matches: Vec<String> = adm
        .matching
        .iter()
        .map(|(a, c)| format!("{a} {c}"))
        .collect();
    let (admitted, rule) = match adm.verdict {
        Verdict::Denied => (
            false,
            format!(
                "denied: it is in {} (a deny entry always refuses)",
                deny_entries(&adm.matching)
            ),
        ),
        Verdict::NotAllowed => (
            false,
            "denied: there is an allow list and no entry of it contains the address".to_string(),
        ),
        Verdict::Admit if adm.matching.is_empty() => (
            true,
            "admitted: no access list entry contains the address, and the allow list is empty"
                .to_string(),
        ),
        Verdict::Admit => (true, format!("admitted: it is in {}", matches.join(", "))),
    };
    AccessCheck {
        admitted,
        rule,
        matches,
    }
}

fn deny_entries(m: &[(Action, Cidr)]) -> String {
    let d: Vec<String> = m
        .iter()
        .filter(|(a, _)| *a == Action::Deny)
        .map(|(_, c)| format!("deny {c}"))
        .collect();
    d.join(", ")
}

fn worker_ranks(run: &DryRun) -> Vec<WorkerRank> {
    let scores = match &run.why {
        Why::Sticky { slot_scores, .. } => Some(slot_scores),
        _ => None,
    };
    run.workers
        .iter()
        .enumerate()
        .map(|(slot, v)| WorkerRank {
            slot,
            routable: v.routable,
            active: v.active,
            score: scores.and_then(|s| s.get(slot).copied()),
        })
        .collect()
}

fn backend_ranks(run: &DryRun, backends: &Backends, active: &[u64]) -> Vec<BackendRank> {
    let unit = f64::from(crate::policy::RAMP_FULL);
    let mut ranks: Vec<BackendRank> = backends
        .views()
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let b = backends.get(i);
            let ew = v.effective_weight() as f64 / unit;
            let (mut load, mut credit, mut score, mut admits) = (None, None, None, None);
            match &run.why {
                Why::RoundRobin { credit: c, .. } => {
                    credit = v.routable.then(|| c.get(i).copied().unwrap_or(0.0) + ew);
                }
                Why::LeastConn { .. } => load = Some(v.active as f64 / ew),
                Why::Sticky {
                    backend_scores,
                    ramp_admits,
                    ..
                } => {
                    score = backend_scores.get(i).copied();
                    admits = ramp_admits.get(i).copied();
                }
            }
            BackendRank {
                name: b.spec().name.clone(),
                state: b.state(),
                routable: v.routable,
                weight: v.weight,
                effective_weight: ew,
                active: active.get(i).copied().unwrap_or(v.active),
                load,
                credit,
                score,
                ramp_admits: admits,
            }
        })
        .collect();
    // The policy's order of preference (stable: list order on ties, as
    // the round-robin and least-connections scans keep the first).
    let key = |r: &BackendRank| match &run.why {
        Why::RoundRobin { .. } => -r.credit.unwrap_or(f64::NEG_INFINITY),
        Why::LeastConn { .. } => r.load.unwrap_or(f64::INFINITY),
        Why::Sticky { .. } => -r.score.unwrap_or(0.0),
    };
    // Sticky ranks every backend (a down one keeps its rank: its clients
    // come back to it); the others choose among the routable ones only.
    let sticky = matches!(run.why, Why::Sticky { .. });
    ranks.sort_by(|a, b| {
        (!a.routable && !sticky)
            .cmp(&(!b.routable && !sticky))
            .then(key(a).total_cmp(&key(b)))
    });
    ranks
}

fn reasons(
    run: &DryRun,
    workers: &[WorkerRank],
    ranks: &[BackendRank],
    backend: Option<&str>,
) -> (String, String) {
    let ready = workers.iter().filter(|w| w.routable).count();
    let worker = match (run.slot, &run.why) {
        (None, _) => "no worker slot can take a connection now: it would wait in the front's queue"
            .to_string(),
        (Some(s), Why::RoundRobin { next_slot, .. }) => format!(
            "round-robin over the {ready} ready slots: the rotation stands at slot {next_slot}, and slot {s} is the first ready one from there"
        ),
        (
            Some(s),
            Why::LeastConn {
                worker_scan_from, ..
            },
        ) => format!(
            "least-conn: slot {s} holds {} connections, the fewest of the {ready} ready slots (ties go to the first from slot {worker_scan_from})",
            workers[s].active
        ),
        (Some(s), Why::Sticky { .. }) => format!(
            "sticky: slot {s} has this address's highest rendezvous score ({:.6}) among the {ready} ready slots",
            workers[s].score.unwrap_or(0.0)
        ),
    };
    let Some(chosen) = backend else {
        return (
            worker,
            "no backend is enabled: the connection would be closed".to_string(),
        );
    };
    let rank = ranks
        .iter()
        .position(|r| r.name == chosen)
        .map_or(0, |p| p + 1);
    let r = ranks.iter().find(|r| r.name == chosen);
    let up = ranks.iter().filter(|r| r.routable).count();
    let backend = match (&run.why, r) {
        (Why::RoundRobin { .. }, Some(r)) => format!(
            "smooth weighted round-robin over the {up} routable backends: {chosen} has the highest credit after adding its weight ({:.3}; the first in list order on a tie), so it is next; it then gives back the sum of the weights",
            r.credit.unwrap_or(0.0)
        ),
        (
            Why::LeastConn {
                backend_scan_from, ..
            },
            Some(r),
        ) => format!(
            "least-conn: {chosen} has the fewest active connections per unit of weight ({} / {:.3} = {:.3}) of the {up} routable backends (ties go to the first from backend #{backend_scan_from})",
            r.active,
            r.effective_weight,
            r.load.unwrap_or(0.0)
        ),
        (Why::Sticky { bucket, .. }, Some(r)) => format!(
            "sticky: {chosen} is rank {rank} of the weighted rendezvous ranking of bucket {bucket} (score {:.4}); {}",
            r.score.unwrap_or(0.0),
            if rank == 1 {
                "the client's first choice".to_string()
            } else {
                "every backend ranked above it is not routable or holds it back while ramping up"
                    .to_string()
            }
        ),
        (_, None) => String::new(),
    };
    (worker, backend)
}
