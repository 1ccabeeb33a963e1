//! The HTTP side of the daemon (hyper 1, HTTP/1.1): `GET /metrics`, `GET /healthz`,
//! `GET /status` and `POST /hooks/<target>`. It reads shared state and asks the
//! supervisor for cycles; it never runs a cycle itself.
//!
//! The port must be reachable from the forge, so anyone may connect: connections are capped
//! ([`MAX_CONNECTIONS`]; over the cap a new connection is closed at once), headers must arrive
//! within [`HEADER_TIMEOUT`], and every connection ends within [`CONNECTION_TIMEOUT`]. What a
//! webhook may cost in memory is bounded in `webhook`.

pub mod webhook;

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use crate::daemon::shared::Shared;
use webhook::Secrets;

pub type Body = Full<Bytes>;

pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}

/// At most this many connections at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// A client must send its request head within this.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// No connection lives longer than this.
pub const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves connections from `listener` until the shutdown signal.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    secrets: Arc<Secrets>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let guard = Arc::new(webhook::Guard::new());
    tokio::spawn(webhook::report_auth_failures(
        guard.clone(),
        shutdown.clone(),
    ));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (tcp, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: closing now costs nothing; queueing would hold a socket each.
            drop(tcp);
            continue;
        };
        let (shared, secrets, guard) = (shared.clone(), secrets.clone(), guard.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (shared, secrets, guard) = (shared.clone(), secrets.clone(), guard.clone());
                async move { Ok::<_, Infallible>(route(&shared, &secrets, &guard, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
            // A slow or stuck client must not hold a task forever.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

async fn route(
    shared: &Shared,
    secrets: &Secrets,
    guard: &webhook::Guard,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::util::offload::blocking(|| shared.metrics.render()),
        ),
        (&Method::GET, "/healthz") => {
            if shared.alive() {
                respond(StatusCode::OK, "text/plain", "ok\n")
            } else {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not alive\n")
            }
        }
        (&Method::GET, "/status") => {
            let mut targets = crate::observe::status::collect(&shared.cfg, |t| shared.store(t));
            // A cycle that could not save its state happened all the same: show it over
            // the older state on disk.
            for t in &mut targets {
                if let Some(e) = shared.unsaved(&t.target) {
                    t.last_outcome = Some(crate::model::labels::Outcome::Failed);
                    let why = crate::model::reason::Reason::Failed {
                        stage: "state",
                        error: e.to_string(),
                    };
                    t.last_error = Some(why.to_string());
                    t.state_unsaved = true;
                }
            }
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "ready": shared.is_ready(),
                    "alive": shared.alive(),
                    "targets": targets,
                }),
            )
        }
        (m, p) if p.starts_with("/hooks/") => {
            if m != Method::POST {
                let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "POST only\n");
                r.headers_mut().insert(
                    hyper::header::ALLOW,
                    hyper::header::HeaderValue::from_static("POST"),
                );
                return r;
            }
            let name = p.trim_start_matches("/hooks/").to_string();
            let (parts, body) = req.into_parts();
            webhook::handle(shared, secrets, guard, &name, &parts.headers, body).await
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
