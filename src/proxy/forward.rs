//! The per-request path: pool lookup, session route, member choice, forwarding, retries, and
//! the sticky rewriting of cookies on the way back.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;

use super::body::{BodySlot, UpstreamBody};
use super::headers::{ClientIp, add_via, set_forwarded, strip_hop_by_hop, wants_upgrade};
use super::upstream::MemberBody;
use super::{PoolExt, Proxy};
use crate::admin::metrics::{FailoverReason, StickyOutcome};
use crate::api::CookieMode;
use crate::core::config::StickyConfig;
use crate::core::member::MemberRuntime;
use crate::core::sticky::{RouteSource, extract_route, rewrite_request_cookie, rewrite_set_cookie};
use crate::core::{Balanced, Choice, FailureKind, Pool, Tried, Unavailable};

/// The response body: the member's streamed body, or a short body routeid wrote itself.
pub type ProxyBody = Either<MemberBody, Full<Bytes>>;

/// A plain-text response from routeid itself (404, 502, 503, 504).
pub fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(Either::Right(Full::new(text.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The six Apache `BALANCER_*` values of one request, for the access log and debug headers.
#[derive(Debug, Default)]
struct BalancerVars<'a> {
    /// `BALANCER_SESSION_STICKY`: the name the route was read from.
    session_sticky: Option<&'a str>,
    /// `BALANCER_SESSION_ROUTE`: the route the request carried.
    session_route: Option<Cow<'a, str>>,
    /// `BALANCER_WORKER_ROUTE`: the chosen member's route.
    worker_route: Option<&'a str>,
    /// `BALANCER_WORKER_NAME`: the chosen member's URL.
    worker_name: Option<&'a HeaderValue>,
    /// `BALANCER_ROUTE_CHANGED`.
    route_changed: bool,
    /// Where the route came from, and why the lb method chose.
    source: Option<RouteSource>,
    balanced: Option<Balanced>,
    malformed: bool,
}

/// Decrements `busy` even when the request future is dropped (client went away).
struct Busy<'a>(&'a MemberRuntime);

impl<'a> Busy<'a> {
    fn enter(m: &'a MemberRuntime) -> Self {
        m.busy.fetch_add(1, Relaxed);
        m.elected.fetch_add(1, Relaxed);
        Busy(m)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Relaxed);
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

fn session_name(cfg: &StickyConfig, src: RouteSource) -> &str {
    match src {
        RouteSource::PathParameter | RouteSource::QueryParameter => &cfg.param_name,
        RouteSource::SessionCookie => &cfg.cookie_name,
        RouteSource::RouteCookie => cfg.cookie.as_ref().map_or("", |c| c.name.as_str()),
    }
}

static X_BALANCER: [HeaderName; 6] = [
    HeaderName::from_static("x-balancer-session-sticky"),
    HeaderName::from_static("x-balancer-session-route"),
    HeaderName::from_static("x-balancer-name"),
    HeaderName::from_static("x-balancer-worker-name"),
    HeaderName::from_static("x-balancer-worker-route"),
    HeaderName::from_static("x-balancer-route-changed"),
];

fn put_debug_headers(h: &mut HeaderMap, vars: &BalancerVars<'_>, ext: &PoolExt) {
    let s = |v: Option<&str>| v.and_then(|v| HeaderValue::from_str(v).ok()).unwrap_or(HeaderValue::from_static(""));
    h.insert(X_BALANCER[0].clone(), s(vars.session_sticky));
    h.insert(X_BALANCER[1].clone(), s(vars.session_route.as_deref()));
    h.insert(X_BALANCER[2].clone(), ext.balancer_name.clone());
    h.insert(X_BALANCER[3].clone(), vars.worker_name.cloned().unwrap_or(HeaderValue::from_static("")));
    h.insert(X_BALANCER[4].clone(), s(vars.worker_route));
    h.insert(X_BALANCER[5].clone(), HeaderValue::from_static(if vars.route_changed { "1" } else { "0" }));
}

/// Joins HTTP/2 cookie crumbs into one header for an HTTP/1.1 member (RFC 9113 §8.2.3) and
/// applies the sticky cookie rewrites (indirect, Prefix) in place: one map lookup, and no
/// allocation when nothing changes.
fn prepare_request_cookies(h: &mut HeaderMap, from_h2: bool, sticky: Option<&StickyConfig>) {
    let drop = sticky
        .and_then(|s| s.cookie.as_ref())
        .filter(|c| c.mode == CookieMode::Insert && c.indirect)
        .map(|c| c.name.as_str());
    let unprefix =
        sticky.and_then(|s| s.cookie.as_ref()).filter(|c| c.mode == CookieMode::Prefix).map(|c| c.name.as_str());
    if drop.is_none() && unprefix.is_none() && !from_h2 {
        return;
    }
    let http::header::Entry::Occupied(mut entry) = h.entry(header::COOKIE) else { return };
    let several = entry.iter().nth(1).is_some();
    if from_h2 && several {
        let mut joined: Vec<u8> = Vec::new();
        for v in entry.iter() {
            let new = rewrite_request_cookie(v.as_bytes(), drop, unprefix);
            let part: &[u8] = new.as_deref().unwrap_or(v.as_bytes());
            if !part.is_empty() {
                if !joined.is_empty() {
                    joined.extend_from_slice(b"; ");
                }
                joined.extend_from_slice(part);
            }
        }
        entry.remove_entry_mult();
        if !joined.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(&joined)
        {
            h.insert(header::COOKIE, v);
        }
        return;
    }
    let mut all_empty = true;
    for v in entry.iter_mut() {
        if let Some(new) = rewrite_request_cookie(v.as_bytes(), drop, unprefix) {
            *v = HeaderValue::from_bytes(&new).unwrap_or(HeaderValue::from_static(""));
        }
        all_empty &= v.is_empty();
    }
    if all_empty {
        entry.remove_entry_mult();
    }
}

impl Proxy {
    /// Serves one client request.
    pub async fn handle(self: Arc<Self>, mut req: Request<Incoming>, client: ClientIp) -> Response<ProxyBody> {
        let started = Instant::now();
        let snap = self.snapshot();
        let bytes_in = req.body().size_hint().exact();
        let host: Option<HeaderValue> = req
            .headers()
            .get(header::HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        let host_str = host.as_ref().and_then(|h| h.to_str().ok());
        let fwd = super::headers::forwarded(req.headers(), &client);
        let Some(pi) = snap.table.find_index(host_str, req.uri().path()) else {
            let resp = plain(StatusCode::NOT_FOUND, "routeid: no pool serves this host and path\n");
            if self.settings.metrics {
                self.metrics().unmatched.inc();
            }
            let info = ReqInfo {
                method: req.method(),
                host: host_str,
                path: req.uri().path(),
                started,
                bytes_in,
                client: fwd.client,
            };
            let out = Outcome::of(&resp, 0);
            self.access_log(&info, None, None, &BalancerVars::default(), out);
            return resp;
        };
        let pool: &Pool = &snap.table.pools()[pi];
        let ext = &snap.ext[pi];
        let upstream_tls = snap.tls.backend.get(pi).unwrap_or(&super::tls::UpstreamTls::Plain);
        if let super::tls::UpstreamTls::Unavailable = upstream_tls {
            let resp = plain(StatusCode::SERVICE_UNAVAILABLE, "routeid: TLS to this pool's members is not ready\n");
            let info = ReqInfo {
                method: req.method(),
                host: host_str,
                path: req.uri().path(),
                started,
                bytes_in,
                client: fwd.client,
            };
            self.access_log(&info, Some(&ext.balancer_name), None, &BalancerVars::default(), Outcome::of(&resp, 0));
            return resp;
        }
        if pool.config.https_redirect
            && !fwd.https
            && let Some(resp) = super::tls::https_redirect(host_str, req.uri())
        {
            let info = ReqInfo {
                method: req.method(),
                host: host_str,
                path: req.uri().path(),
                started,
                bytes_in,
                client: fwd.client,
            };
            self.access_log(&info, Some(&ext.balancer_name), None, &BalancerVars::default(), Outcome::of(&resp, 0));
            return resp;
        }
        let sticky = pool.config.sticky.as_ref();
        let now = self.clock.now_ms();

        // The session route and the first choice, while the request is still borrowed.
        let mut vars = BalancerVars::default();
        let first = {
            let lookup = match sticky {
                Some(cfg) => {
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let headers = req.headers();
                    extract_route(cfg, pq, || headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes()))
                }
                None => Default::default(),
            };
            vars.malformed = lookup.malformed;
            vars.source = lookup.source;
            let choice = pool.choose(lookup.route.as_deref(), &Tried::default(), now);
            // Keep the route beyond the borrow: borrowed from the pool on a hit, owned otherwise.
            vars.session_route = match (&choice, lookup.route) {
                (Choice::StickyHit(i), Some(_)) => Some(Cow::Borrowed(pool.members[*i].route())),
                (_, r) => r.map(|r| Cow::Owned(r.into_owned())),
            };
            choice
        };
        if let (Some(cfg), Some(src)) = (sticky, vars.source) {
            vars.session_sticky = Some(session_name(cfg, src));
        }
        if self.settings.metrics {
            if sticky.is_some() {
                let outcome = match first {
                    _ if vars.malformed => StickyOutcome::Malformed,
                    Choice::StickyHit(_) => StickyOutcome::Hit,
                    Choice::Balanced(_, Balanced::UnknownRoute) => StickyOutcome::UnknownRoute,
                    Choice::Balanced(_, Balanced::Failover)
                    | Choice::Unavailable(Unavailable::StickyMemberUnusable) => StickyOutcome::RouteChanged,
                    _ if vars.source.is_none() => StickyOutcome::NewSession,
                    _ => StickyOutcome::NoRoute,
                };
                ext.metrics.sticky(outcome);
            }
            if matches!(first, Choice::Balanced(_, Balanced::Failover)) {
                ext.metrics.failover(FailoverReason::MemberUnusable);
            }
        }

        let upgrade = if req.version() == Version::HTTP_11 && wants_upgrade(req.headers()) {
            Some(hyper::upgrade::on(&mut req))
        } else {
            None
        };
        let (parts, body) = req.into_parts();
        let method = parts.method;
        let client_version = parts.version;
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers, upgrade.is_some());
        set_forwarded(&mut headers, &client, host.as_ref());
        if !headers.contains_key(header::HOST)
            && let Some(h) = &host
        {
            headers.insert(header::HOST, h.clone());
        }
        if self.settings.via {
            add_via(&mut headers, client_version);
        }
        prepare_request_cookies(&mut headers, client_version == Version::HTTP_2, sticky);
        let pq: PathAndQuery = {
            let orig = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            match pool
                .config
                .rewrite_prefix
                .as_deref()
                .and_then(|rw| crate::core::table::rewrite_path(&pool.config.path_prefix, rw, orig.as_str()))
            {
                Some(new) => PathAndQuery::try_from(new).unwrap_or(orig),
                None => orig,
            }
        };
        let slot: Option<BodySlot> =
            if body.is_end_stream() { None } else { Some(Arc::new(std::sync::Mutex::new(Some(body)))) };
        let body_replayable =
            |slot: &Option<BodySlot>| slot.as_ref().is_none_or(|s| s.lock().map(|b| b.is_some()).unwrap_or(false));

        let mut tried = Tried::default();
        let mut returned: Option<Request<UpstreamBody>> = None;
        let mut choice = first;
        let max_attempts = pool.config.max_attempts as usize;
        let (resp, idx, mext) = loop {
            let idx = match choice {
                Choice::StickyHit(i) => {
                    vars.balanced = None;
                    i
                }
                Choice::Balanced(i, why) => {
                    vars.balanced = Some(why);
                    i
                }
                Choice::Unavailable(why) => {
                    if self.settings.metrics {
                        ext.metrics.unavailable();
                    }
                    vars.route_changed = false;
                    vars.worker_route = None;
                    vars.worker_name = None;
                    let resp = match why {
                        Unavailable::NoUsableMember => plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("routeid: no usable member in pool {}\n", pool.config.id),
                        ),
                        Unavailable::StickyMemberUnusable => plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "routeid: the member for route {} of pool {} is unavailable and failover is off\n",
                                vars.session_route.as_deref().unwrap_or("-"),
                                pool.config.id
                            ),
                        ),
                    };
                    let info = ReqInfo {
                        method: &method,
                        host: host_str,
                        path: parts.uri.path(),
                        started,
                        bytes_in,
                        client: fwd.client,
                    };
                    let out = Outcome::of(&resp, tried.len());
                    self.access_log(&info, Some(&ext.balancer_name), None, &vars, out);
                    return resp;
                }
            };
            let Some(mext) = self.member_ext(pool, idx) else {
                // Only the proxy fills the member's extension slot: unreachable, but answered.
                return plain(StatusCode::BAD_GATEWAY, "routeid: member state unavailable\n");
            };
            tried.push(idx);
            let member = &pool.members[idx];
            vars.worker_route = Some(member.route());
            vars.worker_name = Some(&mext.worker_name);
            vars.route_changed = sticky.is_some() && vars.balanced.is_some();

            let last_try = tried.len() >= max_attempts;
            // Origin-form, as an origin server expects; the client's Host is kept.
            let uri = Uri::from(pq.clone());
            let mut up = match returned.take() {
                // The previous member never saw a byte of it: send it as it is.
                Some(mut r) => {
                    *r.uri_mut() = uri;
                    r.body_mut().count_for(Arc::clone(&member.runtime));
                    r
                }
                None => {
                    let body = match &slot {
                        None => UpstreamBody::Empty,
                        Some(s) => match s.lock().ok().and_then(|mut b| b.take()) {
                            Some(b) => UpstreamBody::streamed(b, Arc::clone(s), Arc::clone(&member.runtime)),
                            None => {
                                let msg = "routeid: the request body was already sent to a member that failed\n";
                                break (plain(StatusCode::BAD_GATEWAY, msg), idx, mext);
                            }
                        },
                    };
                    // A copy of the head is only needed to repeat an idempotent request that a
                    // member received but did not answer; a request that never left comes back.
                    let keep_copy = !last_try && slot.is_none() && is_idempotent(&method) && upgrade.is_none();
                    let mut r = Request::new(body);
                    *r.method_mut() = method.clone();
                    *r.version_mut() = Version::HTTP_11;
                    *r.uri_mut() = uri;
                    *r.headers_mut() = if keep_copy { headers.clone() } else { std::mem::take(&mut headers) };
                    if !r.headers().contains_key(header::HOST) {
                        // An HTTP/1.0 client without Host: name the member.
                        if let Ok(h) = HeaderValue::from_str(mext.authority.as_str()) {
                            r.headers_mut().insert(header::HOST, h);
                        }
                    }
                    r
                }
            };
            if sticky.is_some_and(|s| s.headers_to_member) {
                put_debug_headers(up.headers_mut(), &vars, ext);
            }

            let busy = Busy::enter(&member.runtime);
            let sent_at = Instant::now();
            let t = pool.config.timeouts;
            let result = tokio::time::timeout(t.response, mext.conns.send(up, t.connect, t.idle, upstream_tls)).await;
            drop(busy);
            match result {
                Ok(Ok(resp)) => {
                    member.runtime.observe_latency(sent_at.elapsed().as_micros() as u64, self.clock.now_ms());
                    if pool.config.health.fail_on_status.contains(&resp.status().as_u16()) {
                        member.runtime.count_failure(FailureKind::Status);
                        // Apache failonstatus: the member goes in error, the client still gets
                        // the response.
                        pool.member_failed(idx, self.clock.now_ms());
                        tracing::warn!(pool = %pool.config.id, member = member.route(), status = resp.status().as_u16(), "failOnStatus: member put in error");
                    }
                    let counter = Arc::clone(&member.runtime);
                    break (resp.map(|b| Either::Left(b.counting(counter))), idx, mext);
                }
                Ok(Err(failed)) => {
                    let connect = failed.error.is_connect();
                    member.runtime.count_failure(if connect { FailureKind::Connect } else { FailureKind::Exchange });
                    if failed.error.is_keepalive_race() {
                        member.runtime.errors.fetch_add(1, Relaxed);
                    } else {
                        // Refused, reset or closed without an answer: the member is in trouble.
                        pool.member_failed(idx, self.clock.now_ms());
                    }
                    tracing::warn!(pool = %pool.config.id, member = member.route(), error = %error_chain(&failed.error), connect, "attempt failed");
                    let repeatable = failed.request.is_some()
                        || (is_idempotent(&method) && !headers.is_empty() && body_replayable(&slot));
                    if last_try || upgrade.is_some() || !repeatable {
                        break (
                            plain(StatusCode::BAD_GATEWAY, "routeid: the member failed before answering\n"),
                            idx,
                            mext,
                        );
                    }
                    returned = failed.request;
                    if self.settings.metrics {
                        ext.metrics.failover(FailoverReason::Retry);
                    }
                    choice = pool.choose(vars.session_route.as_deref(), &tried, self.clock.now_ms());
                }
                Err(_elapsed) => {
                    member.runtime.count_failure(FailureKind::Timeout);
                    member.runtime.observe_latency(sent_at.elapsed().as_micros() as u64, self.clock.now_ms());
                    if pool.config.health.fail_on_timeout {
                        pool.member_failed(idx, self.clock.now_ms());
                    } else {
                        member.runtime.errors.fetch_add(1, Relaxed);
                    }
                    tracing::warn!(pool = %pool.config.id, member = member.route(), "response timeout");
                    break (
                        plain(StatusCode::GATEWAY_TIMEOUT, "routeid: the member did not answer in time\n"),
                        idx,
                        mext,
                    );
                }
            }
        };

        let mut resp = resp;
        let member = &pool.members[idx];
        if self.settings.metrics {
            mext.metrics.observe(resp.status().as_u16(), started.elapsed().as_secs_f64());
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            match upgrade {
                Some(client_side) => {
                    let member_side = hyper::upgrade::on(&mut resp);
                    tokio::spawn(tunnel(client_side, member_side));
                }
                None => {
                    resp =
                        plain(StatusCode::BAD_GATEWAY, "routeid: the member switched protocols without being asked\n");
                }
            }
        } else {
            strip_hop_by_hop(resp.headers_mut(), false);
        }
        if let Some(cfg) = sticky {
            self.sticky_response(cfg, resp.headers_mut(), member.route(), vars.route_changed, fwd.https);
            if cfg.headers_to_client {
                put_debug_headers(resp.headers_mut(), &vars, ext);
            }
        }
        if self.settings.via {
            add_via(resp.headers_mut(), Version::HTTP_11);
        }
        if fwd.https
            && let Some(Some(v)) = snap.tls.hsts.get(pi)
        {
            resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
        let info =
            ReqInfo { method: &method, host: host_str, path: parts.uri.path(), started, bytes_in, client: fwd.client };
        let out = Outcome::of(&resp, tried.len());
        self.access_log(&info, Some(&ext.balancer_name), Some(member.config.address), &vars, out);
        resp
    }

    fn sticky_response(&self, cfg: &StickyConfig, h: &mut HeaderMap, route: &str, route_changed: bool, https: bool) {
        let Some(c) = &cfg.cookie else { return };
        let attributes = if https { &c.secure_attributes } else { &c.attributes };
        let mut set = false;
        match c.mode {
            CookieMode::Insert => {
                if route_changed {
                    let mut v = Vec::with_capacity(c.name.len() + route.len() + attributes.len() + 2);
                    v.extend_from_slice(c.name.as_bytes());
                    v.push(b'=');
                    v.extend(cfg.separator);
                    v.extend_from_slice(route.as_bytes());
                    v.extend_from_slice(attributes.as_bytes());
                    if let Ok(v) = HeaderValue::from_bytes(&v) {
                        h.append(header::SET_COOKIE, v);
                        set = true;
                    }
                }
            }
            CookieMode::Prefix | CookieMode::Rewrite => {
                if let http::header::Entry::Occupied(mut e) = h.entry(header::SET_COOKIE) {
                    for v in e.iter_mut() {
                        if let Some(new) = rewrite_set_cookie(v.as_bytes(), &c.name, c.mode, route, cfg.separator)
                            && let Ok(nv) = HeaderValue::from_bytes(&new)
                        {
                            *v = nv;
                            set = true;
                        }
                    }
                }
            }
        }
        if set && c.nocache {
            h.append(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        }
    }

    fn access_log(
        &self,
        req: &ReqInfo<'_>,
        pool: Option<&HeaderValue>,
        member: Option<SocketAddr>,
        vars: &BalancerVars<'_>,
        out: Outcome,
    ) {
        if !self.settings.access_log {
            return;
        }
        let sample = self.settings.access_log_sample;
        if sample > 1 && !self.log_counter.fetch_add(1, Relaxed).is_multiple_of(sample) {
            return;
        }
        let pool = pool.and_then(|p| p.to_str().ok()).unwrap_or("-");
        tracing::info!(
            target: "routeid::access",
            method = req.method.as_str(),
            host = req.host.unwrap_or("-"),
            path = req.path,
            status = out.status.as_u16(),
            bytes_in = req.bytes_in,
            bytes_out = out.bytes_out,
            duration_us = req.started.elapsed().as_micros() as u64,
            client = %req.client,
            pool,
            member_address = member.map(tracing::field::display),
            attempts = out.attempts,
            BALANCER_SESSION_STICKY = vars.session_sticky.unwrap_or("-"),
            BALANCER_SESSION_ROUTE = vars.session_route.as_deref().unwrap_or("-"),
            BALANCER_NAME = pool,
            BALANCER_WORKER_NAME = vars.worker_name.and_then(|v| v.to_str().ok()).unwrap_or("-"),
            BALANCER_WORKER_ROUTE = vars.worker_route.unwrap_or("-"),
            BALANCER_ROUTE_CHANGED = u8::from(vars.route_changed),
            route_source = vars.source.map_or("-", RouteSource::as_str),
            balanced = vars.balanced.map_or("-", Balanced::as_str),
            malformed_route = vars.malformed,
            "request"
        );
    }
}

/// The request facts the access log needs, kept past the moment the request is taken apart.
struct ReqInfo<'a> {
    method: &'a Method,
    host: Option<&'a str>,
    path: &'a str,
    started: Instant,
    /// Request body length when known in advance (`Content-Length`).
    bytes_in: Option<u64>,
    /// The client, as the trusted chain names it.
    client: std::net::IpAddr,
}

/// What the access log says of the answer.
struct Outcome {
    status: StatusCode,
    /// Response body length when known in advance.
    bytes_out: Option<u64>,
    attempts: usize,
}

impl Outcome {
    fn of(resp: &Response<ProxyBody>, attempts: usize) -> Outcome {
        Outcome { status: resp.status(), bytes_out: resp.body().size_hint().exact(), attempts }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Copies bytes both ways between an upgraded client connection and the member's.
async fn tunnel(client: hyper::upgrade::OnUpgrade, member: hyper::upgrade::OnUpgrade) {
    let (client, member) = match tokio::try_join!(client, member) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut member = TokioIo::new(member);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut member).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}
