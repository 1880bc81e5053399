//! The admin listener: liveness and readiness (metrics and the balancer-manager come later).
//!
//! `/healthz` answers 200 while the process serves at all; `/readyz` answers 200 once a routing
//! table has been published, so a load balancer or kubelet sends no traffic to an empty proxy.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the admin endpoints report on.
#[derive(Debug, Default)]
pub struct AdminState {
    /// Set once the first routing table is published.
    pub ready: AtomicBool,
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Answers one admin request.
pub fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no routing table yet\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves the admin endpoints until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut shutdown: watch::Receiver<bool>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = Arc::clone(&state);
                let builder = builder.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let resp = route(&state, &req);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        }
    }
}
