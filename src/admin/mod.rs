//! The admin listener: liveness, readiness, Prometheus metrics and the balancer-manager.
//!
//! `/healthz` answers 200 while the process serves at all; `/readyz` answers 200 once a routing
//! table has been published (in controller mode: after the first complete sync), so a load
//! balancer or kubelet sends no traffic to an empty proxy.
//!
//! The listener has the proxy listener's protections (it shares its code): the header and idle
//! timeouts, a backoff when accepting fails, a drain on shutdown, and at most
//! [`MAX_CONNECTIONS`] connections at once (so a client holding connections open cannot take
//! file descriptors from the proxy), [`MAX_CONNECTIONS_PER_IP`] of them from one peer IP. At
//! either cap the connection idle longest is closed to make room, never the new one: a peer
//! holding silent connections open cannot lock the kubelet's liveness probe out (which would
//! get every pod restarted).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::core::PoolId;
use crate::core::config::MemberChange;
use crate::proxy::Proxy;
use crate::proxy::server::{self, ListenerLimits};

pub mod live;
pub mod manager;

use manager::{Manager, Persistence, WriteError};

/// What the admin endpoints report on. It is whole before the admin listener accepts: the
/// manager (and its token) is part of it from the start, so even the very first request sees
/// the configured manager, never a read-only stand-in.
#[derive(Debug)]
pub struct AdminState {
    /// Set once the first routing table is published.
    pub ready: AtomicBool,
    /// The balancer-manager's settings.
    pub manager: Manager,
    /// The live figures' history, sampled once a second while the admin listener serves.
    pub live: Arc<live::Live>,
}

impl AdminState {
    /// Admin state with this manager; `ready` says whether `/readyz` answers 200 from the start.
    pub fn new(manager: Manager, ready: bool) -> AdminState {
        AdminState { ready: AtomicBool::new(ready), manager, live: Arc::default() }
    }
}

impl Default for AdminState {
    /// Not ready, with a read-only, in-memory manager (no token configured).
    fn default() -> Self {
        AdminState::new(Manager::new(None, Persistence::InMemory), false)
    }
}

/// Admin connections served at once, to bound the file descriptors the admin port can take;
/// one more closes the connection idle longest.
pub const MAX_CONNECTIONS: usize = 64;

/// Admin connections served at once from one peer IP (IPv6: one /64), so that one peer cannot fill
/// [`MAX_CONNECTIONS`]; one more closes that peer's connection idle longest. A browser opens up
/// to 6, Prometheus and kubelet one or two each.
pub const MAX_CONNECTIONS_PER_IP: usize = 8;

/// Largest admin request body (a form or a JSON change).
const MAX_BODY: usize = 64 * 1024;

type AdminResponse = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> AdminResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    respond(status, "text/plain; charset=utf-8", body)
}

fn json_error(e: &WriteError) -> AdminResponse {
    let mut r = respond(e.status(), "application/json", serde_json::json!({"error": e.to_string()}).to_string());
    if matches!(e, WriteError::Unauthorized) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"routeid\""));
    }
    r
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, AdminResponse> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large or broken\n")),
    }
}

/// The balancer-manager page's Content-Security-Policy: scripts, styles and requests from the
/// admin listener only, nothing inline, no framing.
const MANAGER_CSP: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

/// Serves the page's script and style sheet, compiled into the binary (works offline).
fn static_file(path: &str) -> Option<AdminResponse> {
    let (ctype, body): (&'static str, &'static str) = match path {
        "/balancer-manager/static/manager.js" => ("text/javascript; charset=utf-8", include_str!("static/manager.js")),
        "/balancer-manager/static/manager.css" => ("text/css; charset=utf-8", include_str!("static/manager.css")),
        _ => return None,
    };
    let mut r = respond(StatusCode::OK, ctype, Bytes::from_static(body.as_bytes()));
    r.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Some(r)
}

fn manager_page(
    state: &AdminState,
    proxy: &Proxy,
    status: StatusCode,
    notice: Option<&str>,
    from: usize,
) -> AdminResponse {
    let page = manager::page(proxy, &state.manager, &state.live, notice, from);
    let mut r = respond(status, "text/html; charset=utf-8", page);
    r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(MANAGER_CSP));
    r.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// Who made a change, as shown beside it: the interface and the peer's address.
fn made_by(via: &str, peer: SocketAddr) -> String {
    format!("{via} from {}", peer.ip())
}

/// Answers one admin request from `peer`.
pub async fn route(state: &AdminState, proxy: &Proxy, peer: SocketAddr, req: Request<Incoming>) -> AdminResponse {
    let path = req.uri().path().to_owned();
    let m = &state.manager;
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (Method::GET, "/readyz") if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        (Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no routing table yet\n"),
        (Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            proxy.metrics().render(&proxy.snapshot().table, proxy.clock().now_ms()),
        ),
        (Method::GET, "/balancer-manager") => {
            let query = req.uri().query().unwrap_or("");
            let notice = query.starts_with("saved=").then_some("Change saved.");
            let from = query.strip_prefix("from=").and_then(|n| n.parse().ok()).unwrap_or(0);
            manager_page(state, proxy, StatusCode::OK, notice, from)
        }
        (Method::POST, "/balancer-manager") => form_post(state, proxy, peer, req).await,
        (Method::GET, p) if p.starts_with("/balancer-manager/static/") => {
            static_file(p).unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n"))
        }
        (Method::GET, "/balancer-manager/api/pools") => {
            // `?compact=1` (the live page's poll): no indentation, about half the bytes.
            let view = manager::view(proxy, m, &state.live);
            let json = match req.uri().query() {
                Some("compact=1") => serde_json::to_string(&view),
                _ => serde_json::to_string_pretty(&view),
            };
            match json {
                Ok(j) => respond(StatusCode::OK, "application/json", j),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        (Method::PATCH, p) if p.starts_with("/balancer-manager/api/pools/") => api_patch(m, proxy, peer, req).await,
        (Method::DELETE, p) if p.starts_with("/balancer-manager/api/pools/") => api_delete(m, proxy, peer, req).await,
        (_, "/healthz" | "/readyz" | "/metrics" | "/balancer-manager" | "/balancer-manager/api/pools") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn form_post(state: &AdminState, proxy: &Proxy, peer: SocketAddr, req: Request<Incoming>) -> AdminResponse {
    let m = &state.manager;
    let header_token = bearer(&req);
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let fields = manager::form_fields(&body);
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let token = header_token.as_deref().or(get("token"));
    let page_error = |e: WriteError| {
        let mut r = manager_page(state, proxy, e.status(), Some(&e.to_string()), 0);
        if matches!(e, WriteError::Unauthorized) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"routeid\""));
        }
        r
    };
    if let Err(e) = m.authorize(token) {
        return page_error(e);
    }
    if let Err(e) = m.take_nonce(get("nonce").unwrap_or("")) {
        return page_error(e);
    }
    let pool =
        PoolId { namespace: get("namespace").unwrap_or("").to_owned(), name: get("pool").unwrap_or("").to_owned() };
    let route = get("route").unwrap_or("").to_owned();
    if get("action") == Some("clear") {
        return match m.clear(proxy, &pool, &route, made_by("form", peer)).await {
            Ok(_) => saved(),
            Err(e) => page_error(e),
        };
    }
    let parse_num = |k: &str| -> Result<Option<u32>, WriteError> {
        match get(k).map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| WriteError::Invalid(format!("{k}: {v:?} is not a number"))),
        }
    };
    let change = (|| -> Result<MemberChange, WriteError> {
        let status = match get("status").filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
                WriteError::Invalid(format!("status: {s:?} is not Ok, Drain, Disabled, HotStandby or Stopped"))
            })?),
        };
        Ok(MemberChange { load_factor: parse_num("loadFactor")?, lb_set: parse_num("lbSet")?, status })
    })();
    let change = match change {
        Ok(c) => c,
        Err(e) => return page_error(e),
    };
    match m.apply(proxy, &pool, &route, change, made_by("form", peer)).await {
        Ok(_) => saved(),
        Err(e) => page_error(e),
    }
}

/// The answer to a form post that worked: back to the page, which says so.
fn saved() -> AdminResponse {
    let mut r = text(StatusCode::SEE_OTHER, "saved\n");
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/balancer-manager?saved=1"));
    r
}

/// The `{namespace}/{pool}/members/{route}` (and what follows) of an API path, each segment
/// percent-decoded (the live page encodes them: `ingress%3Ashop%3A0` is `ingress:shop:0`).
fn member_path(path: &str) -> Option<(PoolId, String, Option<String>)> {
    let parts: Vec<String> = path
        .trim_start_matches("/balancer-manager/api/pools/")
        .split('/')
        .map(|s| String::from_utf8_lossy(&crate::core::sticky::percent_decode(s.as_bytes())).into_owned())
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match parts.as_slice() {
        [ns, pool, "members", route] => {
            Some((PoolId { namespace: ns.to_string(), name: pool.to_string() }, route.to_string(), None))
        }
        [ns, pool, "members", route, rest] => Some((
            PoolId { namespace: ns.to_string(), name: pool.to_string() },
            route.to_string(),
            Some(rest.to_string()),
        )),
        _ => None,
    }
}

/// `DELETE .../members/{route}/override`: clears the member's override.
async fn api_delete(m: &Manager, proxy: &Proxy, peer: SocketAddr, req: Request<Incoming>) -> AdminResponse {
    let Some((pool, route, _)) = member_path(req.uri().path()).filter(|(_, _, r)| r.as_deref() == Some("override"))
    else {
        return text(
            StatusCode::NOT_FOUND,
            "expected /balancer-manager/api/pools/{namespace}/{pool}/members/{route}/override\n",
        );
    };
    if let Err(e) = m.authorize(bearer(&req).as_deref()) {
        return json_error(&e);
    }
    match m.clear(proxy, &pool, &route, made_by("api", peer)).await {
        Ok(what) => respond(
            StatusCode::OK,
            "application/json",
            serde_json::json!({"cleared": true, "result": what}).to_string(),
        ),
        Err(e) => json_error(&e),
    }
}

async fn api_patch(m: &Manager, proxy: &Proxy, peer: SocketAddr, req: Request<Incoming>) -> AdminResponse {
    let Some((pool, route, None)) = member_path(req.uri().path()) else {
        return text(
            StatusCode::NOT_FOUND,
            "expected /balancer-manager/api/pools/{namespace}/{pool}/members/{route}\n",
        );
    };
    if let Err(e) = m.authorize(bearer(&req).as_deref()) {
        return json_error(&e);
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let change: MemberChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return json_error(&WriteError::Invalid(format!("body: {e}"))),
    };
    match m.apply(proxy, &pool, &route, change, made_by("api", peer)).await {
        Ok(went) => respond(
            StatusCode::OK,
            "application/json",
            serde_json::json!({"saved": true, "changesGoTo": went}).to_string(),
        ),
        Err(e) => json_error(&e),
    }
}

/// Serves the admin endpoints until `shutdown` turns true, then drains like the proxy listener,
/// with the proxy listener's header, idle and drain timeouts.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, proxy: Arc<Proxy>, shutdown: watch::Receiver<bool>) {
    let limits = ListenerLimits {
        name: "admin",
        max_connections: Some(MAX_CONNECTIONS),
        max_connections_per_ip: Some(MAX_CONNECTIONS_PER_IP),
        ..ListenerLimits::proxy(&proxy.settings)
    };
    let sampler = tokio::spawn(live::run(Arc::clone(&state.live), Arc::clone(&proxy), shutdown.clone()));
    server::run(listener, limits, shutdown, move |peer| {
        let (state, proxy) = (Arc::clone(&state), Arc::clone(&proxy));
        move |req| {
            let (state, proxy) = (Arc::clone(&state), Arc::clone(&proxy));
            async move { route(&state, &proxy, peer, req).await }
        }
    })
    .await;
    sampler.abort();
}
