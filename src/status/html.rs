//! The status page as HTML: one self-contained document (inline CSS and
//! script, no external asset), its tables rendered here so that it reads
//! without JavaScript. With it, `page.js` fetches `/status.json` about
//! once a second and redraws the same tables with the same markup (the
//! classes and `data-` attributes below are what both write, and what the
//! browser test reads).

use std::fmt::Write as _;

use super::view::View;
use super::{BackendStatus, Event, Report, Service, WorkerSlot};

const CSS: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// The whole page for `report` (already paged by `view`).
pub fn page(report: &Report, view: &View) -> String {
    let rows: usize = report.services.iter().map(|s| s.backends.len()).sum();
    let mut o = String::with_capacity(8 * 1024 + rows * 900 + report.workers.len() * 400);
    o.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    let _ = write!(
        o,
        "<title>rrproxy status: {}</title><style>{CSS}</style></head>\n<body data-updates=\"0\">",
        esc(report.listeners.first().map_or("", |l| l.address.as_str()))
    );
    o.push_str("<header><h1>rrproxy</h1><p id=\"meta\">");
    meta(&mut o, report);
    o.push_str("</p><p id=\"live\">static page: reload for new numbers (JavaScript updates it live)</p></header>\n<main>");
    o.push_str("<section><h2>Totals</h2><dl id=\"totals\">");
    totals(&mut o, report);
    o.push_str("</dl></section>\n<section><h2>Listeners</h2><table id=\"listeners\"><thead><tr><th>role</th><th>address</th><th>service</th></tr></thead><tbody>");
    for l in &report.listeners {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            l.role,
            esc(&l.address),
            esc(l.service.as_deref().unwrap_or(""))
        );
    }
    o.push_str(
        "</tbody></table></section>\n<section><h2>Workers</h2><table id=\"workers\"><thead><tr>",
    );
    for h in WORKER_HEADS {
        let class = if h == "state" { " class=\"l\"" } else { "" };
        let _ = write!(o, "<th{class}>{h}</th>");
    }
    o.push_str("</tr></thead><tbody>");
    for w in &report.workers {
        worker(&mut o, w);
    }
    o.push_str("</tbody></table></section>\n");
    for s in &report.services {
        service(&mut o, s, view);
    }
    o.push_str("<section><h2>Events</h2><table id=\"events\"><thead><tr><th>time (UTC)</th><th>kind</th><th>what</th></tr></thead><tbody>");
    events(&mut o, &report.events);
    o.push_str("</tbody></table></section></main>\n<footer>The same data as JSON: <a href=\"status.json\">status.json</a> (fields in the README, \"Status page\"). Rates are per second over the time since an earlier request at least a second before; shares are of the connections made in that time.</footer>\n<script>");
    o.push_str(SCRIPT);
    o.push_str("</script></body></html>\n");
    o
}

const WORKER_HEADS: [&str; 11] = [
    "slot",
    "pid",
    "state",
    "active",
    "connections",
    "conn/s",
    "bytes in",
    "bytes out",
    "bytes/s",
    "restarts",
    "draining",
];

fn meta(o: &mut String, r: &Report) {
    let _ = write!(
        o,
        "version <b>{}</b> · build {} · front pid {} · phase <b class=\"phase\">{}</b> · up {} (since {}) · {}",
        esc(&r.version),
        esc(&r.build.chars().take(12).collect::<String>()),
        r.pid,
        esc(&r.phase),
        duration(r.uptime_seconds),
        time(r.started_ms),
        if r.accepting {
            "accepting"
        } else {
            "<b class=\"bad\">not accepting</b>"
        }
    );
}

fn totals(o: &mut String, r: &Report) {
    let t = &r.totals;
    let items: [(&str, &str, String); 6] = [
        (
            "active",
            "active connections",
            t.active_connections.to_string(),
        ),
        (
            "pending",
            "waiting for a worker",
            t.pending_connections.to_string(),
        ),
        (
            "accepted",
            "accepted",
            format!("{} ({}/s)", t.accepted_total, rate(t.accepted_rate)),
        ),
        ("denied", "denied (access list)", t.denied_total.to_string()),
        (
            "refused",
            "refused (per-IP limit)",
            t.refused_per_ip_total.to_string(),
        ),
        ("failed", "failed (no backend)", t.failed_total.to_string()),
    ];
    for (id, label, value) in items {
        let _ = write!(
            o,
            "<div><dt>{label}</dt><dd id=\"total-{id}\">{value}</dd></div>"
        );
    }
}

fn worker(o: &mut String, w: &WorkerSlot) {
    let pids: Vec<String> = w.draining_pids.iter().map(|p| p.to_string()).collect();
    let _ = write!(
        o,
        "<tr data-slot=\"{}\" class=\"st-{}\"><td>{}</td><td>{}</td><td class=\"state\">{}</td><td class=\"active\">{}</td><td class=\"conns\" data-value=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        w.slot,
        w.state,
        w.slot,
        w.pid.map_or("-".to_string(), |p| p.to_string()),
        w.state,
        w.active,
        w.connections_total,
        w.connections_total,
        rate(w.connection_rate),
        bytes(w.bytes_in_total),
        bytes(w.bytes_out_total),
        w.byte_rate.map_or("–".to_string(), |r| bytes(r as u64)),
        w.restarts,
        pids.join(" ")
    );
}

/// ` · N of max-conns M` for a service with its own `max-conns`.
fn limit_text(s: &Service) -> String {
    match (s.limited_connections, s.max_connections) {
        (Some(n), Some(max)) => format!(" · {n} of max-conns {max}"),
        _ => String::new(),
    }
}

fn service(o: &mut String, s: &Service, view: &View) {
    let _ = write!(
        o,
        "<section class=\"service\" data-service=\"{0}\"><h2>Service <b>{0}</b>{5} · policy <b class=\"policy\">{1}</b>{6}</h2><p class=\"listen\">listens on {2} · {3} active{7} · {4} conn/s</p>",
        esc(&s.name),
        esc(&s.policy),
        esc(&s.listen.join(", ")),
        s.active_connections,
        rate(s.connection_rate),
        if s.sni.is_empty() {
            String::new()
        } else {
            format!(" <small>(TLS names {})</small>", esc(&s.sni.join(", ")))
        },
        if s.leaving {
            " · <b class=\"bad\">leaving</b> (removed; draining)"
        } else {
            ""
        },
        limit_text(s),
    );
    o.push_str("<p class=\"summary\">backends: ");
    let c = &s.summary;
    for (state, n) in [
        ("up", c.up),
        ("down", c.down),
        ("disabled", c.disabled),
        ("draining", c.draining),
    ] {
        let q = View {
            state: Some(state.into()),
            page: 1,
            ..view.clone()
        };
        let _ = write!(
            o,
            "<a class=\"st-{state}\" data-state=\"{state}\" href=\"?{}\">{state} <b>{n}</b></a> ",
            esc(&q.query(1))
        );
    }
    let _ = write!(o, "of {} · <a href=\"?\">all</a></p>", s.backends_total);
    filter_form(o, view);
    let queue = s
        .backends
        .iter()
        .any(|b| b.maxconn.is_some() || b.queued.is_some());
    o.push_str("<table class=\"backends\"><thead><tr><th>backend</th><th class=\"l\">state</th><th>weight</th><th>active</th><th>connections</th><th>conn/s</th><th>share</th><th class=\"l\">health checks</th><th>connect failures</th><th>bytes in</th><th>bytes out</th>");
    if queue {
        o.push_str("<th>maxconn</th><th>queued</th>");
    }
    o.push_str("</tr></thead><tbody>");
    for b in &s.backends {
        backend(o, b, queue);
    }
    let _ = write!(o, "</tbody></table>");
    pager(o, s, view);
    o.push_str("</section>\n");
}

fn filter_form(o: &mut String, view: &View) {
    let _ = write!(
        o,
        "<form class=\"filter\" method=\"get\"><input type=\"search\" name=\"filter\" placeholder=\"filter by name or address\" value=\"{}\"> <select name=\"state\"><option value=\"\">every state</option>",
        esc(&view.filter)
    );
    for st in super::view::STATES {
        let sel = if view.state.as_deref() == Some(st) {
            " selected"
        } else {
            ""
        };
        let label = if st == "problems" { "not up" } else { st };
        let _ = write!(o, "<option value=\"{st}\"{sel}>{label}</option>");
    }
    o.push_str("</select> <button type=\"submit\">show</button></form>");
}

fn backend(o: &mut String, b: &BackendStatus, queue: bool) {
    let state = match b.slow_start_percent {
        Some(p) => format!("{} <small>(slow start {p}%)</small>", b.state),
        None => b.state.to_string(),
    };
    let name = if b.name == b.address {
        esc(&b.name)
    } else {
        format!("{} <small>{}</small>", esc(&b.name), esc(&b.address))
    };
    let pct = b.share * 100.0;
    let _ = write!(
        o,
        "<tr data-backend=\"{}\" class=\"st-{}\"><td class=\"name\">{name}</td><td class=\"state\">{state}</td><td>{}</td><td class=\"active\">{}</td><td class=\"conns\" data-value=\"{}\">{}</td><td>{}</td><td class=\"share\"><span class=\"bar\"><span style=\"width:{:.1}%\"></span></span> {:.1}%</td><td class=\"health\">",
        esc(&b.name),
        b.state,
        b.weight,
        b.active,
        b.connections_total,
        b.connections_total,
        rate(b.connection_rate),
        pct,
        pct,
    );
    if b.health.checked {
        o.push_str("<span class=\"hc\">");
        for &ok in &b.health.history {
            o.push_str(if ok {
                "<i class=\"ok\"></i>"
            } else {
                "<i class=\"bad\"></i>"
            });
        }
        let _ = write!(
            o,
            "</span> <small>{}</small>",
            esc(b.health.last.as_deref().unwrap_or("not checked yet"))
        );
    } else {
        o.push_str("<small>checks off</small>");
    }
    let _ = write!(
        o,
        "</td><td>{}</td><td>{}</td><td>{}</td>",
        b.connect_failures_total,
        bytes(b.bytes_in_total),
        bytes(b.bytes_out_total)
    );
    if queue {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
        let _ = write!(o, "<td>{}</td><td>{}</td>", opt(b.maxconn), opt(b.queued));
    }
    o.push_str("</tr>");
}

fn pager(o: &mut String, s: &Service, view: &View) {
    let shown = s.backends.len();
    let from = if shown == 0 { 0 } else { s.offset + 1 };
    let _ = write!(
        o,
        "<p class=\"pager\">rows {from}–{} of {} matching",
        s.offset + shown,
        s.backends_matched
    );
    let pages = view.pages(s.backends_matched);
    if pages > 1 {
        o.push_str(" · page ");
        for p in 1..=pages {
            if p == view.page {
                let _ = write!(o, "<b>{p}</b> ");
            } else if p <= 3 || p + 2 >= pages || p.abs_diff(view.page) <= 2 {
                let _ = write!(o, "<a href=\"?{}\">{p}</a> ", esc(&view.query(p)));
            } else if p == 4 || p + 3 == pages {
                o.push_str("… ");
            }
        }
        let all = View {
            per_page: None,
            ..view.clone()
        };
        let _ = write!(o, "· <a href=\"?{}\">all rows</a>", esc(&all.query(1)));
    }
    o.push_str("</p>");
}

fn events(o: &mut String, events: &[Event]) {
    for e in events {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = write!(
            o,
            "<tr class=\"ev-{kind}\"><td>{}</td><td>{kind}</td><td>{}</td></tr>",
            time(e.at_ms),
            esc(&e.text)
        );
    }
}

/// Escape text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A rate, one decimal; `–` without one.
pub fn rate(r: Option<f64>) -> String {
    r.map_or("–".to_string(), |r| format!("{r:.1}"))
}

/// Bytes in binary units, one decimal above 1 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `3d 4h 05m`, `4h 05m 09s`, `5m 09s`, `9s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m:02}m")
    } else if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `2026-12-07 13:44:52Z` for ms since the Unix epoch.
pub fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replacen('T', " ", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_match_the_script() {
        // page.js formats the same way: keep these in step with it.
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(duration(9), "9s");
        assert_eq!(duration(309), "5m 09s");
        assert_eq!(duration(4 * 3600 + 309), "4h 05m 09s");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 300), "3d 4h 05m");
        assert_eq!(time(1_796_651_092_123), "2026-12-07 13:44:52Z");
        assert_eq!(rate(None), "–");
        assert_eq!(rate(Some(2.26)), "2.3");
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        for f in [
            "function bytes(",
            "function duration(",
            "function time(",
            "function esc(",
        ] {
            assert!(SCRIPT.contains(f), "page.js lacks {f}");
        }
    }
}
