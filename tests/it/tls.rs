//! A TLS rig for the SNI routing tests: self-signed certificates made
//! with `openssl` in the test's directory, real nginx HTTPS servers that
//! answer every request with their own name (so a test can tell which
//! backend got a connection) and log the server name they were asked for,
//! TLS clients (`curl --resolve`, `openssl s_client`), and a relay that
//! delivers a real client's ClientHello in pieces and in records of a
//! chosen size (TLS hashes handshake messages, not records, so the
//! handshake still completes).
//!
//! Whether the tools are installed is found by `build.rs` (`has_nginx`,
//! `has_openssl`, `has_curl`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::peers::{Peer, free_port, tool};
use crate::support::*;

/// How long any one client command may take.
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

/// A certificate and its key, PEM files.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed ECDSA P-256 certificate for `names` (the first is the
/// subject's CN, all are subject alternative names), written to `dir`
/// as `NAME.crt` and `NAME.key` after the first name.
pub fn self_signed(dir: &Path, names: &[&str]) -> Cert {
    let stem = names[0].replace('*', "star");
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={}", names[0]),
        ])
        .args(["-addext", &format!("subjectAltName={}", san.join(","))])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Cert { cert, key }
}

/// An nginx HTTPS server for one test.
pub struct TlsBackend {
    pub peer: Peer,
    pub addr: SocketAddr,
    /// What it answers every request with (then a newline).
    pub name: String,
    pub cert: Cert,
}

impl TlsBackend {
    /// The server names it was asked for, one per request in order
    /// (`-` for a connection without SNI).
    pub fn server_names(&self) -> Vec<String> {
        self.peer
            .file("sni.log")
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// nginx serving HTTPS on a free loopback port with a fresh certificate
/// for `names`, answering every request with `name`.
pub fn nginx_tls(name: &str, names: &[&str]) -> TlsBackend {
    let dir = temp_dir("nginx-tls");
    let cert = self_signed(&dir, names);
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    log_format sni '$ssl_server_name';
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        access_log {d}/sni.log sni;
        location / {{ return 200 \"{name}\\n\"; }}
    }}
}}
",
        cert = cert.cert.display(),
        key = cert.key.display(),
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(tool("nginx"));
    cmd.arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TlsBackend {
        peer: Peer::start("nginx", cmd, dir, addr),
        addr,
        name: name.to_string(),
        cert,
    }
}

/// Run `cmd` with `input` on its standard input (then closed) to its end
/// within [`CLIENT_LIMIT`] (killed past it): its standard output, or its
/// exit status and standard error.
fn run_client(mut cmd: Command, input: &[u8]) -> Result<String, String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(input);
    drop(stdin);
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + CLIENT_LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            // Not reaped yet: the pid is still this child's.
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} did not end within {CLIENT_LIMIT:?}"));
        }
        thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{status}: {}", err.trim()))
    }
}

/// `curl https://HOST:PORT/` with HOST resolved to `to` (no certificate
/// check): the body.
pub fn curl_https(to: SocketAddr, host: &str) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-k", "--max-time", "20", "--resolve"])
        .arg(format!("{host}:{}:{}", to.port(), to.ip()))
        .arg(format!("https://{host}:{}/", to.port()));
    run_client(cmd, b"")
}

/// One HTTP/1.0 GET over `openssl s_client` to `to`, asking for
/// `servername` (`None`: no SNI), with `extra` arguments: the body.
pub fn openssl_get(
    to: SocketAddr,
    servername: Option<&str>,
    extra: &[&str],
) -> Result<String, String> {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-quiet",
        "-ign_eof",
        "-connect",
        &to.to_string(),
    ]);
    match servername {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    cmd.args(extra);
    let reply = run_client(cmd, b"GET / HTTP/1.0\r\nHost: rig\r\n\r\n")?;
    match reply.split_once("\r\n\r\n") {
        Some((_, body)) => Ok(body.to_string()),
        None => Err(format!("no HTTP reply: {reply:?}")),
    }
}

/// `-alpn` arguments that make OpenSSL's ClientHello about 5.9 KiB (22
/// long protocol names, then `http/1.1`, which nginx picks).
pub fn big_hello_args() -> [String; 2] {
    let mut protos: Vec<String> = (0..22).map(|i| format!("{}{i}", "x".repeat(250))).collect();
    protos.push("http/1.1".into());
    ["-alpn".into(), protos.join(",")]
}

/// How the relay delivers a client's ClientHello.
#[derive(Clone, Copy, Debug)]
pub struct Delivery {
    /// Re-split the hello's handshake bytes into records of this many
    /// bytes (`None`: as the client framed them).
    pub record: Option<usize>,
    /// Write it in pieces of this many bytes, `pause` apart.
    pub piece: usize,
    pub pause: Duration,
}

/// A TCP relay to `target` that delivers each connection's ClientHello as
/// [`Delivery`] says, then relays both ways untouched. It stops accepting
/// when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    /// Each relayed hello's length as delivered (record headers included).
    pub hellos: Arc<Mutex<Vec<usize>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

pub fn relay(target: SocketAddr, how: Delivery) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hellos = Arc::new(Mutex::new(Vec::new()));
    let seen = hellos.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    thread::spawn(move || {
        for client in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            let Ok(client) = client else { return };
            let seen = seen.clone();
            thread::spawn(move || {
                let _ = relay_one(client, target, how, &seen);
            });
        }
    });
    Relay { addr, hellos, stop }
}

fn relay_one(
    mut client: TcpStream,
    target: SocketAddr,
    how: Delivery,
    seen: &Mutex<Vec<usize>>,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(CLIENT_LIMIT))?;
    let payload = read_hello(&mut client)?;
    let mut hello = Vec::new();
    for chunk in payload.chunks(how.record.unwrap_or(16384).clamp(1, 16384)) {
        hello.extend_from_slice(&[22, 3, 1]);
        hello.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        hello.extend_from_slice(chunk);
    }
    seen.lock().unwrap().push(hello.len());
    let mut server = TcpStream::connect(target)?;
    server.set_nodelay(true)?;
    server.set_read_timeout(Some(CLIENT_LIMIT))?;
    for piece in hello.chunks(how.piece.max(1)) {
        server.write_all(piece)?;
        thread::sleep(how.pause);
    }
    let (mut c2, mut s2) = (client.try_clone()?, server.try_clone()?);
    let up = thread::spawn(move || pipe(&mut c2, &mut s2));
    pipe(&mut server, &mut client);
    let _ = up.join();
    Ok(())
}

/// Read a ClientHello's records off `client` until its handshake message
/// is whole; its handshake bytes (exactly the message: a client sends
/// nothing else before the server answers).
fn read_hello(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 5];
        client.read_exact(&mut header)?;
        let mut record = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
        client.read_exact(&mut record)?;
        payload.extend_from_slice(&record);
        if payload.len() >= 4 {
            let len = 4
                + (usize::from(payload[1]) << 16
                    | usize::from(payload[2]) << 8
                    | usize::from(payload[3]));
            if payload.len() >= len || payload.len() > 64 * 1024 {
                return Ok(payload);
            }
        }
    }
}

/// Copy `from` to `to` until EOF or an error, then pass the EOF on.
fn pipe(from: &mut TcpStream, to: &mut TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
#[cfg_attr(
    not(all(has_nginx, has_openssl, has_curl)),
    ignore = "needs nginx, openssl and curl"
)]
fn tls_rig_backends_answer_with_their_names_and_log_the_server_name() {
    let alpha = nginx_tls("alpha", &["a.test", "*.b.test"]);
    let beta = nginx_tls("beta", &["c.test"]);
    assert_eq!(curl_https(alpha.addr, "a.test").unwrap(), "alpha\n");
    assert_eq!(curl_https(beta.addr, "c.test").unwrap(), "beta\n");
    assert_eq!(
        openssl_get(alpha.addr, Some("X.B.test"), &[]).unwrap(),
        "alpha\n"
    );
    assert_eq!(openssl_get(beta.addr, None, &[]).unwrap(), "beta\n");
    wait_until(Duration::from_secs(10), "nginx to log the requests", || {
        alpha.server_names().len() == 2 && beta.server_names().len() == 2
    });
    assert_eq!(alpha.server_names(), ["a.test", "X.B.test"]);
    assert_eq!(beta.server_names(), ["c.test", "-"]);
    // The certificate is the one made for the test.
    let pem = std::fs::read_to_string(&alpha.cert.cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
#[cfg_attr(
    not(all(has_nginx, has_openssl, has_curl)),
    ignore = "needs nginx, openssl and curl"
)]
fn tls_rig_relay_delivers_real_hellos_in_pieces_and_records() {
    let alpha = nginx_tls("alpha", &["a.test"]);
    let pieces = relay(
        alpha.addr,
        Delivery {
            record: Some(100),
            piece: 70,
            pause: Duration::from_millis(5),
        },
    );
    assert_eq!(curl_https(pieces.addr, "a.test").unwrap(), "alpha\n");
    // A hello over 4 KiB, in records of 1 KiB, in pieces of 1,500 bytes.
    let big = relay(
        alpha.addr,
        Delivery {
            record: Some(1024),
            piece: 1500,
            pause: Duration::from_millis(5),
        },
    );
    let args = big_hello_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        openssl_get(big.addr, Some("a.test"), &args).unwrap(),
        "alpha\n"
    );
    let relayed = |r: &Relay| r.hellos.lock().unwrap().clone();
    // curl's hello is 512 bytes of handshake: 6 records of 100 bytes.
    assert_eq!(relayed(&pieces).len(), 1);
    assert!(relayed(&pieces)[0] > 512 + 5 * 5, "{:?}", relayed(&pieces));
    assert!(relayed(&big)[0] > 4096 + 5 * 5, "{:?}", relayed(&big));
    wait_until(Duration::from_secs(10), "nginx to log both", || {
        alpha.server_names().len() == 2
    });
    assert_eq!(alpha.server_names(), ["a.test", "a.test"]);
}
