//! Test harness: start the real `rrproxy` binary, real backends on
//! loopback, and wait on conditions with deadlines.
//!
//! Every proxy runs in its own process group, killed as a whole when the
//! `Proxy` value drops, so no worker outlives its test. Ports are
//! ephemeral: the proxy binds `127.0.0.1:0` and the harness reads the bound
//! addresses from `ctl status --json`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_rrproxy");

/// Poll `cond` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Like `wait_until` but returns the value once `f` yields `Some`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh directory for one test.
/// Run the rrproxy binary with `args` to completion; it must succeed.
/// Returns its standard output.
pub fn run_ok(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "rrproxy {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A config file holding `body`, in a fresh temp dir named after `tag`.
pub fn config_file(tag: &str, body: &str) -> PathBuf {
    let path = temp_dir(tag).join("rrproxy.toml");
    std::fs::write(&path, body).unwrap();
    path
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rrproxy-it-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running rrproxy front (and its workers).
pub struct Proxy {
    pub child: Child,
    pub dir: PathBuf,
    pub control: PathBuf,
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub log: PathBuf,
    exited: Option<ExitStatus>,
}

/// Builder for a proxy invocation.
pub struct ProxyCmd {
    bin: PathBuf,
    args: Vec<String>,
    prefix: Vec<String>,
    envs: Vec<(String, String)>,
    metrics: bool,
    wait_workers: bool,
    /// Run with `XDG_RUNTIME_DIR` here and no `--control`: the default socket.
    runtime_dir: Option<PathBuf>,
    /// stderr is a pipe the test holds open and never reads.
    stderr_unread: bool,
}

impl ProxyCmd {
    pub fn new(backends: &[SocketAddr]) -> ProxyCmd {
        let mut args = vec!["--listen".to_string(), "127.0.0.1:0".to_string()];
        for b in backends {
            args.push("--backend".into());
            args.push(b.to_string());
        }
        ProxyCmd {
            bin: PathBuf::from(BIN),
            args,
            prefix: Vec::new(),
            envs: Vec::new(),
            metrics: true,
            wait_workers: true,
            runtime_dir: None,
            stderr_unread: false,
        }
    }

    /// Listen on `addr` instead of an ephemeral port.
    pub fn listen_on(mut self, addr: &str) -> ProxyCmd {
        self.args[1] = addr.to_string();
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> ProxyCmd {
        self.args.push(a.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, a: impl IntoIterator<Item = S>) -> ProxyCmd {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// Leave out the `--listen 127.0.0.1:0` that `new` puts first (the
    /// config file says where to listen).
    pub fn no_listen(mut self) -> ProxyCmd {
        if self.args.first().is_some_and(|a| a == "--listen") {
            self.args.drain(..2);
        }
        self
    }

    /// One more `--backend SPEC` (an address with its options).
    pub fn backend(self, spec: impl Into<String>) -> ProxyCmd {
        self.arg("--backend").arg(spec)
    }

    /// Run from the config file at `path` (`--config`), which says where
    /// to listen.
    pub fn config(self, path: &Path) -> ProxyCmd {
        self.no_listen()
            .args(["--config".to_string(), path.display().to_string()])
    }

    pub fn workers(self, n: usize) -> ProxyCmd {
        self.args(["--workers".to_string(), n.to_string()])
    }

    pub fn no_metrics(mut self) -> ProxyCmd {
        self.metrics = false;
        self
    }

    /// Run this rrproxy binary instead of the one cargo built.
    pub fn binary(mut self, path: &Path) -> ProxyCmd {
        self.bin = path.to_path_buf();
        self
    }

    /// Run the proxy under another command (e.g. `prlimit --nofile=64`).
    pub fn under<S: Into<String>>(mut self, cmd: impl IntoIterator<Item = S>) -> ProxyCmd {
        self.prefix = cmd.into_iter().map(Into::into).collect();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> ProxyCmd {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Send stderr into a pipe that nobody reads (it fills and stalls).
    pub fn stderr_unread(mut self) -> ProxyCmd {
        self.stderr_unread = true;
        self
    }

    /// Use the default control socket, with `XDG_RUNTIME_DIR` set to `dir`.
    pub fn default_control(mut self, dir: &Path) -> ProxyCmd {
        self.runtime_dir = Some(dir.to_path_buf());
        self
    }

    /// Don't wait for every worker to be up (only for the control socket).
    pub fn no_wait_workers(mut self) -> ProxyCmd {
        self.wait_workers = false;
        self
    }

    pub fn start(self) -> Proxy {
        let dir = temp_dir("proxy");
        let log = dir.join("stderr.log");
        let mut args = self.args;
        let control = match &self.runtime_dir {
            Some(runtime) => runtime.join("rrproxy").join("ctl.sock"),
            None => {
                let control = dir.join("ctl.sock");
                args.extend(["--control".to_string(), control.display().to_string()]);
                control
            }
        };
        if self.metrics {
            args.extend(["--metrics".into(), "127.0.0.1:0".into()]);
        } else {
            args.extend(["--metrics".into(), "off".into()]);
        }
        let mut cmd = if self.prefix.is_empty() {
            Command::new(&self.bin)
        } else {
            let mut c = Command::new(&self.prefix[0]);
            c.args(&self.prefix[1..]).arg(&self.bin);
            c
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if self.stderr_unread {
                Stdio::piped()
            } else {
                std::fs::File::create(&log).unwrap().into()
            })
            .env(
                "RUST_LOG",
                std::env::var("IT_RUST_LOG").unwrap_or("info".into()),
            )
            .process_group(0);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(runtime) = &self.runtime_dir {
            cmd.env("XDG_RUNTIME_DIR", runtime);
        }
        // A binary just copied (`binary_copy`) may still be open for
        // writing in a child another test thread forked before the copy
        // was closed, until that child execs: exec then fails with
        // ETXTBSY for a moment. Try again, a bounded number of times.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("start rrproxy"),
            }
        };
        let mut proxy = Proxy {
            child,
            dir,
            control,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: None,
            log,
            exited: None,
        };
        let wait_workers = self.wait_workers;
        let status = wait_for(Duration::from_secs(20), "proxy to come up", || {
            if let Ok(Some(st)) = proxy.child.try_wait() {
                panic!("rrproxy exited early with {st}:\n{}", proxy.stderr());
            }
            let s = proxy.try_ctl("status --json").ok()?;
            let v: serde_json::Value = serde_json::from_str(&s).ok()?;
            let up = v["workers_up"].as_u64()?;
            let want = v["workers"].as_u64()?;
            (up == want || (!wait_workers && v["listen"].is_array())).then_some(v)
        });
        proxy.listen = status["listen"][0].as_str().unwrap().parse().unwrap();
        proxy.metrics = status["metrics"].as_str().map(|m| m.parse().unwrap());
        proxy
    }
}

impl Proxy {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log holds `what` (logging is asynchronous: a line
    /// may land a moment after what it reports is visible elsewhere).
    pub fn wait_log(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.stderr().contains(what) {
            assert!(
                Instant::now() < deadline,
                "the log never said {what:?}:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send one control command; `Err` if the socket is unreachable.
    pub fn try_ctl(&self, line: &str) -> std::io::Result<String> {
        ctl_at(&self.control, line)
    }

    pub fn ctl(&self, line: &str) -> String {
        self.try_ctl(line)
            .unwrap_or_else(|e| panic!("ctl {line}: {e}\n{}", self.stderr()))
    }

    pub fn ctl_json(&self, line: &str) -> serde_json::Value {
        let reply = self.ctl(&format!("{line} --json"));
        serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("bad JSON from {line}: {e}: {reply}"))
    }

    /// The pid of each worker slot's serving process.
    pub fn worker_pids(&self) -> Vec<Option<u32>> {
        self.ctl_json("workers")
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["pid"].as_u64().map(|p| p as u32))
            .collect()
    }

    /// Scrape `/metrics` into series → value.
    pub fn scrape(&self) -> Metrics {
        let addr = self.metrics.expect("metrics enabled");
        Metrics::parse(&http_get(addr, "/metrics"))
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for the front to exit and return its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(st) = self.exited {
            return st;
        }
        let st = wait_for(limit, "rrproxy to exit", || self.child.try_wait().unwrap());
        self.exited = Some(st);
        st
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.listen, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to proxy {}: {e}", self.listen));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Connect from a given loopback source address (127.0.0.x).
    pub fn connect_from(&self, src: Ipv4Addr) -> TcpStream {
        self.try_connect_from(src)
            .unwrap_or_else(|e| panic!("connect from {src}: {e}"))
    }

    /// Connect from `src`; a refused client may see its reset already here.
    pub fn try_connect_from(&self, src: Ipv4Addr) -> std::io::Result<TcpStream> {
        try_connect_between(SocketAddr::from((src, 0)), self.listen)
    }
}

/// Connect to `to` from the local address `from` (port 0: any), with a
/// 5 s connect timeout and a 20 s read timeout.
pub fn try_connect_between(from: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )?;
    sock.bind(&from.into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

/// [`try_connect_between`], or a panic naming both ends.
pub fn connect_between(from: SocketAddr, to: SocketAddr) -> TcpStream {
    try_connect_between(from, to).unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"))
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Kill the whole process group: the front and every worker.
        let pgid = self.child.id() as i32;
        // SIGKILL to the group; ignore errors (already gone).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- rrproxy stderr ({}) ---\n{}",
                self.log.display(),
                self.stderr()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One control command; like `rrproxy ctl`, asks again (a few times) if
/// the front it reached had just handed over to a new one in an upgrade.
pub fn ctl_at(path: &Path, line: &str) -> std::io::Result<String> {
    for _ in 0..5 {
        let reply = match ctl_once(path, line) {
            // Closed with the command unread (a front exiting after an
            // upgrade): it did not run.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                String::new()
            }
            other => other?,
        };
        // Closed without a reply: a front leaving after an upgrade, which
        // had not run the command.
        if !reply.contains("handed over to a new one") && !reply.is_empty() {
            return Ok(reply);
        }
        thread::sleep(Duration::from_millis(50));
    }
    ctl_once(path, line)
}

fn ctl_once(path: &Path, line: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut r = BufReader::new(s);
    let mut out = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 || l == "\n" {
            break;
        }
        out.push_str(&l);
    }
    Ok(out.trim_end().to_string())
}

/// A minimal HTTP GET (Connection: close) returning the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        // HTTP/1.0: the reply is never chunked, so the body is the rest.
        "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    match resp.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => resp,
    }
}

/// A scraped exposition: `name{labels}` → value.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub series: HashMap<String, f64>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut series = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((k, v)) = line.rsplit_once(' ') {
                if let Ok(v) = v.parse::<f64>() {
                    series.insert(k.to_string(), v);
                }
            }
        }
        Metrics {
            series,
            text: text.to_string(),
        }
    }

    /// Value of `name` with exactly these labels (order as exported:
    /// pass them in the order the exporter prints them).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        self.series.get(&key).copied()
    }

    /// Sum of every series of `name` whose labels include `label=value`.
    pub fn sum_where(&self, name: &str, label: &str, value: &str) -> f64 {
        let needle = format!("{label}=\"{value}\"");
        self.series
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name) && k.contains(&needle))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn per_worker(&self, name: &str, workers: usize) -> Vec<f64> {
        (0..workers)
            .map(|w| {
                self.get(name, &[("worker", &w.to_string())])
                    .unwrap_or(f64::NAN)
            })
            .collect()
    }
}

/// A backend thread pool that stops when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicU64>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn spawn_backend(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Backend {
    spawn_backend_on(listen_any(), handler)
}

/// A loopback listener on an ephemeral port with a deep backlog (std's
/// `bind` uses 128, too few when a worker opens hundreds at once).
pub fn listen_any() -> TcpListener {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(4096).unwrap();
    sock.into()
}

pub fn spawn_backend_on(
    listener: TcpListener,
    handler: impl Fn(TcpStream) + Send + Sync + 'static,
) -> Backend {
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let handler = Arc::new(handler);
    let (s, a) = (stop.clone(), accepted.clone());
    thread::spawn(move || {
        for conn in listener.incoming() {
            if s.load(Ordering::Relaxed) {
                break;
            }
            let Ok(conn) = conn else { continue };
            a.fetch_add(1, Ordering::Relaxed);
            let h = handler.clone();
            thread::spawn(move || h(conn));
        }
    });
    Backend {
        addr,
        stop,
        accepted,
    }
}

/// Echoes every byte; on EOF from the client, shuts down its write side.
pub fn echo_backend() -> Backend {
    spawn_backend(|mut conn| echo_until_eof(&mut conn))
}

/// Echo what `conn` sends until its EOF (then half-close) or an error.
pub fn echo_until_eof(conn: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// Writes `name\n` on connect, then waits for the client's EOF.
pub fn name_backend(name: &'static str) -> Backend {
    name_backend_on(listen_any(), name)
}

/// `name_backend` on a given listener.
pub fn name_backend_on(listener: TcpListener, name: &'static str) -> Backend {
    spawn_backend_on(listener, move |mut conn| {
        if conn.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
        let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
        let mut sink = [0u8; 1024];
        while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
    })
}

/// A port nothing listens on (connections are refused).
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Read the name line a `name_backend` sends.
pub fn read_name(s: &mut TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

/// Connect through the proxy, read the backend's name, close.
pub fn fetch_name(proxy: &Proxy) -> String {
    let mut s = proxy.connect();
    let name = read_name(&mut s);
    let _ = s.shutdown(Shutdown::Both);
    name
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Child processes of `pid` (from /proc), with their command names.
pub fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // comm is in parentheses and may contain spaces.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat[stat.find('(').unwrap() + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if fields.get(1).and_then(|f| f.parse::<u32>().ok()) == Some(pid) && fields[0] != "Z" {
            out.push((p, comm));
        }
    }
    out
}

pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .is_some_and(|i| !stat[i + 2..].starts_with('Z')),
        Err(_) => false,
    }
}

/// User + system CPU time of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let close = stat.rfind(')').unwrap();
    let f: Vec<&str> = stat[close + 2..].split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Run the binary with `args` and return (exit status, stderr).
pub fn run_bin(args: &[&str]) -> (ExitStatus, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run_to_exit(cmd, Duration::from_secs(10))
}

/// Run `cmd` (stdin and stdout closed, in a process group of its own) and
/// return (exit status, stderr); past `limit` the whole group is killed
/// and the test fails.
pub fn run_to_exit(mut cmd: Command, limit: Duration) -> (ExitStatus, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            // Leave nothing running behind a failed test.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (st, err)
}

/// Clients hitting the proxy in a loop until stopped; counts outcomes.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// One request against a `name_backend`: connect, read its name.
fn read_some(addr: SocketAddr) -> Option<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).ok()?;
    (n > 0).then_some(())
}

/// One request against an `echo_backend`: send a line, read it back.
fn echo_line(addr: SocketAddr) -> Option<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"ping\n").ok()?;
    s.shutdown(Shutdown::Write).ok()?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).ok()?;
    (got == b"ping\n").then_some(())
}

impl Load {
    /// `clients` threads connecting to a `name_backend` through `proxy`.
    pub fn start(proxy: &Proxy, clients: usize) -> Load {
        Load::run(proxy.listen, clients, read_some)
    }

    /// The same through the listener at `addr` (a service's).
    pub fn start_at(addr: SocketAddr, clients: usize) -> Load {
        Load::run(addr, clients, read_some)
    }

    /// The same against an echo backend.
    pub fn start_echo(proxy: &Proxy, clients: usize) -> Load {
        Load::run(proxy.listen, clients, echo_line)
    }

    fn run(addr: SocketAddr, clients: usize, request: fn(SocketAddr) -> Option<()>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match request(addr) {
                            Some(()) => ok.fetch_add(1, Ordering::Relaxed),
                            None => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.counts()
    }
}

/// Send `sig` (a name like "KILL") to `pid`; it must exist.
pub fn kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A copy of the rrproxy binary in `dir`, under `name`.
pub fn binary_copy(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(BIN, &path).unwrap();
    path
}

/// A copy of the rrproxy binary that is another build: the same code with
/// a different build id (the first byte of its GNU build-id note changed),
/// as a rebuilt package would be.
pub fn other_build_copy(dir: &Path, name: &str) -> PathBuf {
    let id = rrproxy::version::read_build_id(Path::new(BIN)).unwrap();
    let id: Vec<u8> = (0..id.len() / 2)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut bytes = std::fs::read(BIN).unwrap();
    let at = bytes
        .windows(id.len())
        .position(|w| w == id.as_slice())
        .expect("the build id is in the binary");
    bytes[at] ^= 0x5a;
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Replace the file at `path` the way a package upgrade does: write the
/// new one beside it, then rename it over (the running image stays).
pub fn replace_file(path: &Path, with: &Path) {
    std::fs::rename(with, path).unwrap();
}

/// Where `/proc/PID/exe` points (" (deleted)" if the file was replaced).
pub fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}
