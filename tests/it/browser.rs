//! The status page in a real browser: headless Chromium loads `/status`
//! from a running proxy under load, runs the page's script (which fetches
//! `/status.json` and redraws), and the test reads the DOM Chromium ends
//! with: every backend and worker present, numbers moving between two
//! reads, a stopped backend marked down. It also saves a screenshot to the
//! test's temp dir (and, with `RRPROXY_STATUS_SCREENSHOT=PATH`, copies it
//! there: that is how `docs/status.png` is made).
//!
//! Needs `chromium` (`has_chromium`, see build.rs): skipped without it,
//! failed without it under `RRPROXY_REQUIRE_TOOLS=1`.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::status::status_json;
use crate::support::*;

/// How long one Chromium run may take: it starts in a second or two on a
/// quiet machine; other tests share the two cores.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(120);

fn chromium() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Run headless Chromium on `url` with `args` (its own profile in `dir`,
/// about three seconds of page time for the script to fetch and redraw),
/// in a process group of its own that is killed afterwards. Returns its
/// standard output.
fn run_chromium(dir: &Path, tag: &str, url: &str, args: &[String]) -> String {
    let profile = dir.join(format!("profile-{tag}"));
    let out_path = dir.join(format!("{tag}.out"));
    let err_path = dir.join(format!("{tag}.err"));
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--hide-scrollbars",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out_path).unwrap())
    .stderr(std::fs::File::create(&err_path).unwrap())
    .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run {}: {e} (install the Debian package chromium; .ci/run does)",
            chromium().display()
        )
    });
    let deadline = Instant::now() + CHROMIUM_LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    // Whatever it left behind (or all of it, past the limit).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    // (A profile is ~3 MB; the output and the screenshot stay.)
    let _ = std::fs::remove_dir_all(&profile);
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let tail: Vec<&str> = err.lines().rev().take(15).collect();
    let Some(status) = status else {
        panic!("chromium did not finish {url} within {CHROMIUM_LIMIT:?}; stderr ends:\n{tail:?}");
    };
    assert!(status.success(), "chromium {status} on {url}: {tail:?}");
    std::fs::read_to_string(&out_path).unwrap()
}

/// The DOM after the page's script ran, as Chromium serialises it.
fn dom(dir: &Path, tag: &str, url: &str) -> String {
    let dom = run_chromium(dir, tag, url, &["--dump-dom".to_string()]);
    assert!(dom.contains("<h1>rrproxy</h1>"), "not the page: {dom}");
    dom
}

/// How many times the script fetched `/status.json` and redrew the page
/// (`data-updates` on `<body>`, set after each redraw).
fn updates(dom: &str) -> u32 {
    attr_after(dom, "<body", "data-updates")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The value of `name="…"` in the first tag starting at `start`.
fn attr_after<'a>(dom: &'a str, start: &str, name: &str) -> Option<&'a str> {
    let at = dom.find(start)?;
    let tag = &dom[at..at + dom[at..].find('>')?];
    let from = tag.find(&format!("{name}=\""))? + name.len() + 2;
    Some(&tag[from..from + tag[from..].find('"')?])
}

/// Every `<tr {key}="…">` row: (key, class, the row's markup).
fn rows<'a>(dom: &'a str, key: &str) -> Vec<(&'a str, &'a str, &'a str)> {
    let open = format!("<tr {key}=\"");
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at..];
        let end = rest.find("</tr>").expect("a closed row");
        let row = &rest[..end];
        let name = attr_after(row, "<tr", key).unwrap();
        let class = attr_after(row, "<tr", "class").unwrap_or("");
        out.push((name, class, row));
        rest = &rest[end..];
    }
    out
}

/// A row's `connections` cell (`class="conns" data-value="N"`).
fn conns(row: &str) -> u64 {
    attr_after(row, "class=\"conns\"", "data-value")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no connection count in {row}"))
}

fn backend_conns(dom: &str) -> u64 {
    rows(dom, "data-backend").iter().map(|r| conns(r.2)).sum()
}

#[test]
#[cfg_attr(not(has_chromium), ignore = "needs chromium")]
fn the_status_page_runs_live_in_headless_chromium() {
    let dir = temp_dir("browser");
    let mut backends = vec![name_backend("a"), name_backend("b"), name_backend("c")];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let proxy = ProxyCmd::new(&addrs)
        .workers(2)
        .args(["--health-interval", "200ms", "--fall", "1", "--rise", "1"])
        .start();
    let m = proxy.metrics.unwrap();
    let url = format!("http://{m}/status");
    let load = Load::start(&proxy, 2);
    wait_until(Duration::from_secs(30), "traffic through the proxy", || {
        load.counts().0 > 0
    });

    // First read: the script ran and redrew from status.json (so every
    // row below is the script's, not the server's), every backend up,
    // every worker ready with its pid.
    let first = dom(&dir, "first", &url);
    assert!(updates(&first) >= 1, "the script never redrew: {first}");
    assert!(first.contains("live: updated"), "{first}");
    let shown = rows(&first, "data-backend");
    assert_eq!(shown.len(), 3, "{first}");
    for a in &addrs {
        let row = shown.iter().find(|r| r.0 == a.to_string());
        let row = row.unwrap_or_else(|| panic!("{a} missing: {first}"));
        assert_eq!(row.1, "st-up", "{}", row.2);
    }
    let pids = proxy.worker_pids();
    let slots = rows(&first, "data-slot");
    assert_eq!(slots.len(), pids.len(), "{first}");
    for (i, pid) in pids.iter().enumerate() {
        let pid = pid.expect("a worker pid");
        let want = format!("<td>{i}</td><td>{pid}</td>");
        let row = slots.iter().find(|r| r.0 == i.to_string()).unwrap();
        assert!(row.1 == "st-ready" && row.2.contains(&want), "{}", row.2);
    }

    // Second read: the numbers moved (bounded: a few reads).
    let before = backend_conns(&first);
    let mut moved = None;
    for n in 0..5 {
        let again = dom(&dir, &format!("again-{n}"), &url);
        if updates(&again) >= 1 && backend_conns(&again) > before {
            moved = Some(again);
            break;
        }
    }
    let second = moved.expect("connection counts to move between two reads");
    assert!(conns(rows(&second, "data-slot")[0].2) > 0, "{second}");

    // A backend stopped: once the proxy knows, the page marks it down.
    let down = addrs[2].to_string();
    drop(backends.remove(2));
    wait_until(Duration::from_secs(30), "the proxy to mark it down", || {
        let v = status_json(m, "");
        v["services"][0]["summary"]["down"] == 1
    });
    let third = dom(&dir, "down", &url);
    assert!(updates(&third) >= 1, "{third}");
    let rows3 = rows(&third, "data-backend");
    let row = rows3.iter().find(|r| r.0 == down).expect("the stopped one");
    assert_eq!(row.1, "st-down", "{}", row.2);
    assert!(row.2.contains("<i class=\"bad\"></i>"), "{}", row.2);
    assert!(
        rows3.iter().filter(|r| r.1 == "st-up").count() == 2,
        "{third}"
    );
    let summary = &third[third.find("data-state=\"down\"").unwrap()..];
    assert!(
        summary[..summary.find("</a>").unwrap()].ends_with("down <b>1</b>"),
        "{summary}"
    );
    assert!(third.contains(&format!("backend {down} down")), "{third}");

    // A screenshot of the page as it is now.
    let png = dir.join("status.png");
    run_chromium(
        &dir,
        "screenshot",
        &url,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,1000".to_string(),
        ],
    );
    let bytes = std::fs::read(&png).expect("a screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000);
    eprintln!("screenshot: {}", png.display());
    if let Some(to) = std::env::var_os("RRPROXY_STATUS_SCREENSHOT") {
        std::fs::copy(&png, &to).unwrap();
    }
    let (ok, _) = load.finish();
    assert!(ok > 0);
}
