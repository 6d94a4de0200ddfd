//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the front is
//! alive) and `/readyz` (at least one worker is ready), served by hyper on a
//! thread of its own so a scrape never delays the front's accept loop.
//!
//! At most [`MAX_CONNECTIONS`] connections are served at once; one more is
//! closed as soon as it is accepted. A client that sends no complete
//! request header within [`HEADER_TIMEOUT`] is disconnected, so silent
//! connections cannot hold the slots for long.

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
use tracing::{debug, warn};

/// Most metrics connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// A connection that has not sent a whole request header within this is
/// closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running endpoint.
pub struct Endpoint {
    pub addr: SocketAddr,
}

/// Serve the exposition on `listener` (already bound, so "address in use"
/// is a startup error) from a thread of its own.
pub fn start(listener: std::net::TcpListener, exporter: Exporter) -> std::io::Result<Endpoint> {
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
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
            runtime.block_on(serve(listener, exporter));
        })?;
    Ok(Endpoint { addr: bound })
}

async fn serve(listener: std::net::TcpListener, exporter: Exporter) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(err) => {
            warn!(cause = %err, "metrics endpoint cannot start");
            return;
        }
    };
    let open = Arc::new(AtomicUsize::new(0));
    let mut refused = 0u64;
    let mut handed_over = exporter.handed_over.clone();
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
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, &exporter);
                async move { Ok::<_, Infallible>(response) }
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

fn respond(req: &Request<Incoming>, exporter: &Exporter) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        resp
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            exporter.render(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if exporter.ready() => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "no worker ready\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
