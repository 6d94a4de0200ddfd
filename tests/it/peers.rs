//! Real third-party servers as peers of rrproxy: nginx and HAProxy, each
//! started in the foreground in a process group of its own with a config
//! written for the test, and killed (group and all) when dropped.
//!
//! Whether they are installed is found by `build.rs` (`has_nginx`,
//! `has_haproxy`); a test that needs one is ignored with the reason when
//! it is missing, and fails under `RRPROXY_REQUIRE_TOOLS` (CI).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::support::*;

/// The path of an installed tool: on `PATH` or in `/usr/sbin`.
pub fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(Path::new("/usr/sbin").join(name)).filter(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{name} is not installed (apt-get install {name})"))
}

/// A port free on 127.0.0.1 and on [::1] right now (for a server that
/// takes its port from a config file).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and [::1]");
}

/// A server process started for one test.
pub struct Peer {
    child: Child,
    pub dir: PathBuf,
    pub name: &'static str,
}

impl Peer {
    /// Run `cmd` (already configured) in its own process group, output to
    /// `dir/NAME.out`, and wait until it accepts on `ready`.
    pub fn start(name: &'static str, mut cmd: Command, dir: PathBuf, ready: SocketAddr) -> Peer {
        let out = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut peer = Peer { child, dir, name };
        wait_until(
            Duration::from_secs(10),
            &format!("{name} to listen"),
            || {
                if let Ok(Some(st)) = peer.child.try_wait() {
                    panic!("{name} exited with {st}:\n{}", peer.output());
                }
                TcpStream::connect_timeout(&ready, Duration::from_millis(200)).is_ok()
            },
        );
        peer
    }

    /// What the process wrote to stdout and stderr.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.out", self.name))).unwrap_or_default()
    }

    /// A file of its directory (a log), or "" while it does not exist.
    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- {} output ---\n{}", self.name, self.output());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx, serving HTTP on 127.0.0.1:`port` with `listen ... proxy_protocol`
/// (a connection without a valid PROXY header is refused), answering every
/// request with 200, and logging each request to `access.log` as
/// `$proxy_protocol_addr $proxy_protocol_server_addr:$proxy_protocol_server_port`.
pub fn nginx_proxy_protocol(port: u16) -> Peer {
    let dir = temp_dir("nginx");
    let d = dir.display();
    let conf = format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    log_format pp '$proxy_protocol_addr $proxy_protocol_server_addr:$proxy_protocol_server_port';
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        access_log {d}/access.log pp;
        location / {{ return 200 \"ok\\n\"; }}
    }}
}}
"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(tool("nginx"));
    cmd.arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"));
    Peer::start("nginx", cmd, dir, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// HAProxy with `config` (a whole configuration file; `{dir}` in it is
/// replaced with its directory), run in the foreground; ready when it
/// accepts on `ready`.
pub fn haproxy(config: &str, ready: SocketAddr) -> Peer {
    let dir = temp_dir("haproxy");
    let config = config.replace("{dir}", &dir.display().to_string());
    std::fs::write(dir.join("haproxy.cfg"), config).unwrap();
    let mut cmd = Command::new(tool("haproxy"));
    cmd.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
    Peer::start("haproxy", cmd, dir, ready)
}

/// redis-server on 127.0.0.1:`port`, in the foreground, with no
/// persistence (nothing is written but its output).
pub fn redis(port: u16) -> Peer {
    let dir = temp_dir("redis");
    let mut cmd = Command::new(tool("redis-server"));
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--protected-mode", "no"])
        .arg("--dir")
        .arg(&dir);
    Peer::start("redis", cmd, dir, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// One HTTP/1.0 GET through `to` from the local address `from` (port 0:
/// any); the status line.
pub fn http_get_from(from: SocketAddr, to: SocketAddr) -> String {
    let mut s = connect_between(from, to);
    s.write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply.lines().next().unwrap_or_default().to_string()
}

/// A backend that expects a PROXY v1 header: it reads the header line
/// (up to `\r\n`, at most 107 bytes), records it, then echoes everything
/// else. `headers` holds the lines in arrival order.
pub struct HeaderEcho {
    pub backend: Backend,
    pub headers: Arc<Mutex<Vec<String>>>,
}

pub fn header_echo_backend() -> HeaderEcho {
    let headers = Arc::new(Mutex::new(Vec::new()));
    let h = headers.clone();
    let backend = spawn_backend_on(listen_any(), move |conn| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let mut r = BufReader::new(conn.try_clone().unwrap()).take(107);
        let mut line = String::new();
        if r.read_line(&mut line).is_err() || !line.ends_with("\r\n") {
            return;
        }
        h.lock().unwrap().push(line.trim_end().to_string());
        // Whatever the reader buffered past the line is the client's.
        let mut r = r.into_inner();
        let mut w = conn;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let pending = r.buffer().to_vec();
            if !pending.is_empty() {
                r.consume(pending.len());
                if w.write_all(&pending).is_err() {
                    return;
                }
                continue;
            }
            match r.get_mut().read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = w.shutdown(Shutdown::Write);
    });
    HeaderEcho { backend, headers }
}

impl HeaderEcho {
    /// The header lines whose source address is `ip`.
    pub fn from(&self, ip: &str) -> Vec<String> {
        self.headers
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.split(' ').nth(2) == Some(ip))
            .cloned()
            .collect()
    }
}

/// Send `data` and our EOF on `s`, read to the end; what came back.
pub fn exchange(s: &mut TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(data)?;
    s.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    Ok(got)
}
