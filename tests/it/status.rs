//! The status page over HTTP (`/status.json`, `/status`, `--status ADDR`):
//! every worker and backend, numbers and rates that move, events as they
//! happen, paging and filters, one-line refusals, and an upgrade that
//! keeps the page, its events and the proxy's start time. The page in a
//! real browser is tested in `browser`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// GET `path`: (status code, body).
pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

/// `/status.json` (with `query`), parsed.
pub(crate) fn status_json(addr: SocketAddr, query: &str) -> Value {
    let (code, body) = get(addr, &format!("/status.json{query}"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad JSON: {e}: {body}"))
}

fn backend<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {v}"))
}

fn events(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap(),
                e["text"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn status_json_shows_every_worker_and_backend_with_moving_numbers_and_events() {
    let mut backends = vec![name_backend("a"), name_backend("b"), name_backend("c")];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let proxy = ProxyCmd::new(&addrs)
        .workers(2)
        .args(["--health-interval", "200ms", "--fall", "1", "--rise", "1"])
        .start();
    let m = proxy.metrics.unwrap();
    let load = Load::start(&proxy, 2);
    let first = status_json(m, "");
    assert_eq!(first["schema"], 1);
    assert_eq!(first["phase"], "serving");
    let pids: Vec<Value> = proxy
        .worker_pids()
        .into_iter()
        .map(|p| p.unwrap().into())
        .collect();
    let workers = first["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    assert_eq!(
        workers.iter().map(|w| w["pid"].clone()).collect::<Vec<_>>(),
        pids
    );
    assert!(workers.iter().all(|w| w["state"] == "ready"), "{first}");
    let s = &first["services"][0];
    assert_eq!(
        (&s["name"], &s["policy"]),
        (&"default".into(), &"round-robin".into())
    );
    assert_eq!(s["summary"]["up"], 3);
    for a in &addrs {
        let b = backend(&first, &a.to_string());
        assert_eq!(b["state"], "up");
        assert_eq!(b["health"]["checked"], true);
    }
    let roles: Vec<&str> = first["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["proxy", "metrics", "control"]);
    // A second look a second or more later: counts moved, rates exist,
    // the shares of the connections made meanwhile add up to 1.
    let total = |v: &Value| v["totals"]["accepted_total"].as_u64().unwrap();
    let second = wait_for(Duration::from_secs(30), "rates and moving counts", || {
        let v = status_json(m, "");
        (total(&v) > total(&first) && v["totals"]["accepted_rate"].as_f64()? > 0.0).then_some(v)
    });
    assert!(second["totals"]["rate_window_seconds"].as_f64().unwrap() >= 0.25);
    let s = &second["services"][0];
    assert_eq!(s["share_basis"], "rate");
    let shares: f64 = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["share"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-6, "{s}");
    assert!(second["workers"][0]["connection_rate"].as_f64().unwrap() > 0.0);
    assert!(second["workers"][0]["bytes_out_total"].as_u64().unwrap() > 0);
    assert!(
        events(&second)
            .iter()
            .any(|e| e.contains("slot 0: worker pid"))
    );
    // Events as they happen: a policy switch, a worker killed and
    // respawned, a backend down (its history shows the failed check).
    proxy.ctl("policy least-conn");
    let killed = pids[1].as_u64().unwrap() as u32;
    kill(killed, "KILL");
    drop(backends.remove(2));
    let down = addrs[2].to_string();
    let v = wait_for(Duration::from_secs(30), "the events on the page", || {
        let v = status_json(m, "");
        let ev = events(&v);
        let want = [
            "policy policy round-robin -> least-conn".to_string(),
            format!("worker slot 1: worker pid {killed} died"),
            "worker slot 1: worker respawned".to_string(),
            format!("health backend {down} down ("),
        ];
        want.iter()
            .all(|w| ev.iter().any(|e| e.starts_with(w.as_str())))
            .then_some(v)
    });
    assert_eq!(v["services"][0]["policy"], "least-conn");
    assert_eq!(backend(&v, &down)["state"], "down");
    // (Taken down by traffic or by a check: the check's failure shows.)
    let v = wait_for(
        Duration::from_secs(30),
        "a failed check in the history",
        || {
            let v = status_json(m, "");
            let last = backend(&v, &down)["health"]["history"]
                .as_array()?
                .last()?
                .clone();
            (last == false).then_some(v)
        },
    );
    let b = backend(&v, &down);
    assert!(
        b["health"]["last"].as_str().unwrap().contains("refused"),
        "{b}"
    );
    assert_eq!(v["services"][0]["summary"]["down"], 1);
    // Not up comes first.
    assert_eq!(v["services"][0]["backends"][0]["name"], down.as_str());
    assert_eq!(v["workers"][1]["restarts"], 1);
    let (ok, _) = load.finish();
    assert!(ok > 0);
}

#[test]
fn status_pages_filter_and_refuse_bad_queries_in_one_line() {
    let backends = [echo_backend(), echo_backend(), echo_backend()];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let proxy = ProxyCmd::new(&addrs).workers(1).start();
    let m = proxy.metrics.unwrap();
    proxy.ctl(&format!("backend disable {}", addrs[1]));
    let v = status_json(m, "?per_page=1&page=2");
    let s = &v["services"][0];
    assert_eq!(
        (&s["backends_total"], &s["backends_matched"], &s["offset"]),
        (&3.into(), &3.into(), &1.into())
    );
    assert_eq!(s["backends"].as_array().unwrap().len(), 1);
    let v = status_json(m, "?state=disabled");
    assert_eq!(
        v["services"][0]["backends"][0]["name"],
        addrs[1].to_string()
    );
    assert_eq!(v["services"][0]["backends_matched"], 1);
    let port = addrs[2].port().to_string();
    let v = status_json(m, &format!("?filter={port}"));
    assert_eq!(
        v["services"][0]["backends"][0]["name"],
        addrs[2].to_string()
    );
    assert!(
        events(&v)
            .iter()
            .any(|e| e == &format!("backend backend {} disabled by ctl", addrs[1]))
    );
    // The HTML page: every row, server-rendered (no JavaScript needed).
    let (code, html) = get(m, "/status");
    assert_eq!(code, 200);
    assert!(html.starts_with("<!doctype html>"));
    for a in &addrs {
        assert!(
            html.contains(&format!("data-backend=\"{a}\"")),
            "{a} missing"
        );
    }
    assert!(html.contains("<tr data-slot=\"0\" class=\"st-ready\">"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "external asset"
    );
    let (code, html) = get(m, "/status?state=problems");
    assert_eq!(code, 200);
    assert_eq!(html.matches("<tr data-backend=\"127.").count(), 1);
    for (query, want) in [
        ("?state=sideways", "invalid state 'sideways'"),
        ("?page=0", "invalid page '0': expected a number 1..="),
        ("?colour=red", "unknown parameter 'colour'"),
    ] {
        let (code, body) = get(m, &format!("/status.json{query}"));
        assert_eq!(code, 400, "{query}");
        assert!(
            body.starts_with(want) && body.lines().count() == 1,
            "{query}: {body}"
        );
    }
    let (code, body) = get(m, "/nothing");
    assert_eq!(code, 404);
    assert!(body.contains("/status"), "{body}");
}

#[test]
fn the_status_address_serves_the_page_alone_and_an_upgrade_keeps_its_history() {
    let backend = name_backend("a");
    let proxy = ProxyCmd::new(&[backend.addr])
        .workers(1)
        .args(["--status", "127.0.0.1:0"])
        .start();
    let m = proxy.metrics.unwrap();
    let before = status_json(m, "");
    let st: SocketAddr = before["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["role"] == "status")
        .expect("a status listener")["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (code, html) = get(st, "/");
    assert_eq!(code, 200);
    assert!(html.contains("<h1>rrproxy</h1>"));
    assert_eq!(get(st, "/status.json").0, 200);
    assert_eq!(get(st, "/metrics").0, 404);
    proxy.ctl("policy sticky");
    let old = before["pid"].as_u64().unwrap() as u32;
    proxy.ctl("upgrade");
    let new = crate::upgrade::wait_upgraded(&proxy, old, Duration::from_secs(60));
    let after = wait_for(Duration::from_secs(20), "the new front's page", || {
        let (code, body) = get(st, "/status.json");
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["pid"] == new).then_some(v)
    });
    assert_eq!(after["started_ms"], before["started_ms"]);
    assert!(after["front_started_ms"].as_u64() > before["front_started_ms"].as_u64());
    let ev = events(&after);
    assert!(
        ev.iter()
            .any(|e| e == "policy policy round-robin -> sticky"),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| e.starts_with(&format!("upgrade this front (pid {new}"))),
        "{ev:?}"
    );
    assert_eq!(after["services"][0]["policy"], "sticky");
    assert_eq!(get(m, "/status.json").0, 200);
}
