//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the front is
//! alive), `/readyz` (at least one worker is ready), and the status page
//! (`/status`, `/status.json`; see [`crate::status`]), served by hyper on a
//! thread of its own so a scrape never delays the front's accept loop.
//! `--status ADDR` adds a second socket on the same thread that serves
//! only the status page (and `/` as the page).
//!
//! At most [`MAX_CONNECTIONS`] connections are served at once, both
//! sockets together; one more is closed as soon as it is accepted. A
//! client that sends no complete request header within [`HEADER_TIMEOUT`]
//! is disconnected, so silent connections cannot hold the slots for long.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::Exporter;
use crate::status::Asker;
use crate::status::serve::{Format, Pages, Refusal};
use tracing::{debug, warn};

/// Most metrics connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// A connection that has not sent a whole request header within this is
/// closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a running endpoint serves.
pub struct Endpoint {
    pub metrics: Option<SocketAddr>,
    pub status: Option<SocketAddr>,
}

/// What a socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routes {
    /// The metrics address: everything.
    All,
    /// `--status`: the status page only.
    Status,
}

/// What every connection's handler shares.
struct Shared {
    exporter: Exporter,
    pages: Pages,
}

/// Serve the exposition and the status page on `metrics`, and the status
/// page alone on `status` (both already bound, so "address in use" is a
/// startup error), from a thread of its own; `asker` reaches the front.
/// Neither socket: nothing is started.
pub fn start(
    metrics: Option<std::net::TcpListener>,
    status: Option<std::net::TcpListener>,
    exporter: Exporter,
    asker: Asker,
) -> std::io::Result<Endpoint> {
    let mut sockets = Vec::new();
    let mut bound = Endpoint {
        metrics: None,
        status: None,
    };
    for (listener, routes) in [(metrics, Routes::All), (status, Routes::Status)] {
        let Some(listener) = listener else { continue };
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        match routes {
            Routes::All => bound.metrics = Some(addr),
            Routes::Status => bound.status = Some(addr),
        }
        sockets.push((listener, routes));
    }
    if sockets.is_empty() {
        return Ok(bound);
    }
    let shared = Arc::new(Shared {
        exporter,
        pages: Pages::new(asker),
    });
    std::thread::Builder::new()
        .name("rrproxy-metrics".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    warn!(cause = %err, "metrics endpoint cannot start");
                    return;
                }
            };
            runtime.block_on(async move {
                let open = Arc::new(AtomicUsize::new(0));
                let loops: Vec<_> = sockets
                    .into_iter()
                    .map(|(l, routes)| tokio::spawn(serve(l, routes, shared.clone(), open.clone())))
                    .collect();
                for l in loops {
                    let _ = l.await;
                }
            });
        })?;
    Ok(bound)
}

async fn serve(
    listener: std::net::TcpListener,
    routes: Routes,
    shared: Arc<Shared>,
    open: Arc<AtomicUsize>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(err) => {
            warn!(cause = %err, "metrics endpoint cannot start");
            return;
        }
    };
    let mut refused = 0u64;
    let mut handed_over = shared.exporter.handed_over.clone();
    loop {
        // After an upgrade's hand-over the new front answers: scrapers
        // wait in the shared socket's queue rather than reach a front
        // about to exit.
        let accepted = tokio::select! {
            biased;
            _ = handed_over.wait_for(|done| *done) => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                debug!(cause = %err, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            drop(stream);
            refused += 1;
            if refused.is_power_of_two() {
                warn!(
                    refused,
                    limit = MAX_CONNECTIONS,
                    "metrics endpoint at its connection limit; closing new connections"
                );
            }
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(open.clone());
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&req, &shared, routes).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = conn.await {
                debug!(cause = %err, "metrics connection error");
            }
        });
    }
}

/// One open connection, counted while it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    resp
}

async fn respond(
    req: &Request<Incoming>,
    shared: &Shared,
    routes: Routes,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    let query = req.uri().query().unwrap_or("");
    let exporter = &shared.exporter;
    match (routes, req.uri().path()) {
        (Routes::All, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            exporter.render(),
        ),
        (Routes::All, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (Routes::All, "/readyz") if exporter.ready() => {
            reply(StatusCode::OK, "text/plain", "ready\n".into())
        }
        (Routes::All, "/readyz") => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "no worker ready\n".into(),
        ),
        (_, "/status") | (Routes::Status, "/") => {
            status(shared, query, Format::Html, "text/html; charset=utf-8").await
        }
        (_, "/status.json") => status(shared, query, Format::Json, "application/json").await,
        (Routes::All, _) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /status, /status.json, /healthz or /readyz\n".into(),
        ),
        (Routes::Status, _) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /status or /status.json\n".into(),
        ),
    }
}

async fn status(
    shared: &Shared,
    query: &str,
    format: Format,
    ctype: &'static str,
) -> Response<Full<Bytes>> {
    let mut resp = match shared.pages.get(query, format).await {
        Ok(body) => reply(StatusCode::OK, ctype, body),
        Err(Refusal { code, text }) => reply(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "text/plain; charset=utf-8",
            format!("{text}\n"),
        ),
    };
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    resp
}
