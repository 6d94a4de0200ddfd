//! `rrproxy demo`: a one-command tour. Starts three small HTTP backends on
//! loopback that answer with their own name, and the real proxy (front and
//! worker processes) in front of them, then prints what to try.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::DemoArgs;
use crate::config::Config;
use crate::config::Flags;
use crate::front::FrontError;
use crate::logging::LogOptions;
use crate::proxy;

/// Names of the demo backends.
pub const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

/// Run the demo until Ctrl-C.
pub fn run(args: DemoArgs, log: LogOptions) -> Result<(), FrontError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FrontError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut backends = Vec::new();
        for name in NAMES {
            let listener =
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|source| FrontError::Listen {
                        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                        source,
                    })?;
            let addr = listener.local_addr().map_err(FrontError::Runtime)?;
            tokio::task::spawn_local(serve_backend(listener, name));
            backends.push(addr.to_string());
        }
        let proxy = Flags {
            listen: vec![args.listen.clone()],
            backend: backends.clone(),
            workers: Some(args.workers.clone()),
            policy: Some(args.policy),
            metrics: Some(args.metrics.clone()),
            control: args.control.clone(),
            ..Flags::default()
        };
        let config = Config::load(&proxy)?;
        let workers = config.workers;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let proxy_task = proxy::serve(config, None, log, Some(tx));
        let banner = async move {
            if let Ok(started) = rx.await {
                print_banner(&started, &backends, workers, &args);
            }
        };
        let (result, ()) = tokio::join!(proxy_task, banner);
        result
    })
}

fn print_banner(started: &proxy::Started, backends: &[String], workers: usize, args: &DemoArgs) {
    let listen = started
        .listen
        .first()
        .map_or(args.listen.clone(), |a| a.to_string());
    let exe = std::env::current_exe().map_or("rrproxy".into(), |p| p.display().to_string());
    let mut out = String::new();
    out.push_str(&format!(
        "\nrrproxy demo: {} workers in front of {} backends ({}), policy {}\n\n",
        workers,
        backends.len(),
        NAMES
            .iter()
            .zip(backends)
            .map(|(n, a)| format!("{n} {a}"))
            .collect::<Vec<_>>()
            .join(", "),
        args.policy
    ));
    out.push_str(&format!(
        "  try it:    for i in 1 2 3 4 5 6; do curl -s http://{listen}/; done\n"
    ));
    if let Some(m) = started.metrics {
        out.push_str(&format!(
            "  metrics:   curl -s http://{m}/metrics | grep -E 'rrproxy_(worker|backend)_connections_total'\n"
        ));
    }
    if let Some(c) = &started.control {
        let c = c.display();
        out.push_str(&format!("  workers:   {exe} ctl --control {c} workers\n"));
        out.push_str(&format!(
            "  switch:    {exe} ctl --control {c} policy sticky\n"
        ));
    }
    out.push_str("\n  Ctrl-C stops everything.\n");
    println!("{out}");
}

/// A tiny HTTP/1.1 server answering every request with its name.
async fn serve_backend(listener: TcpListener, name: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::task::spawn_local(answer(stream, name));
    }
}

async fn answer(mut stream: TcpStream, name: &'static str) {
    let mut buf = vec![0u8; 8192];
    let mut filled = 0;
    loop {
        // Read one request head (bounded in size and time).
        let head_end = loop {
            if let Some(end) = find_head_end(&buf[..filled]) {
                break end;
            }
            if filled == buf.len() {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf[filled..]))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(n)) => filled += n,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let close = head.contains("connection: close") || head.starts_with("get / http/1.0");
        let body = format!("hello from backend {name}\n");
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-backend: {name}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if stream.write_all(reply.as_bytes()).await.is_err() || close {
            return;
        }
        buf.copy_within(head_end..filled, 0);
        filled -= head_end;
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}
