//! The per-request path: pool lookup, session route, member choice, forwarding, retries, and
//! the sticky rewriting of cookies on the way back.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};

use super::access_log::AccessLine;
use super::body::{BodySlot, BodyState, ClientBodyError, UpstreamBody};
use super::gateway::{NewSession, RuleExt, write_session};
use super::headers::{ClientIp, add_via, set_forwarded, strip_hop_by_hop, wants_upgrade};
use super::response_timer::ResponseTimer;
use super::upstream::{Failed, Limits, MemberBody};
use super::{MemberExt, PoolExt, Proxy, Snapshot};
use crate::api::CookieMode;
use crate::core::config::StickyConfig;
use crate::core::gateway::{RequestMatch, SessionKind};
use crate::core::sticky::{
    RouteLookup, RouteSource, extract_route, rewrite_request_cookie, rewrite_set_cookie, same_site_none_compatible,
};
use crate::core::table::{Found, RequestFacts};
use crate::core::{Balanced, BusyGuard, Choice, FailureKind, MemberRuntime, Pool, Tried, Unavailable};
use crate::metrics::{ClientError, FailoverReason, StickyOutcome};

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

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

fn session_name(cfg: &StickyConfig, src: RouteSource) -> &str {
    match src {
        RouteSource::PathParameter | RouteSource::QueryParameter => &cfg.param_name,
        RouteSource::SessionCookie => &cfg.cookie_name,
        RouteSource::RouteCookie => cfg.cookie.as_ref().map_or(cfg.cookie_name.as_str(), |c| c.name.as_str()),
        RouteSource::Header => &cfg.cookie_name,
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
    let mut emptied = false;
    for v in entry.iter_mut() {
        if let Some(new) = rewrite_request_cookie(v.as_bytes(), drop, unprefix) {
            *v = HeaderValue::from_bytes(&new).unwrap_or(HeaderValue::from_static(""));
            emptied |= v.is_empty();
        }
    }
    if emptied {
        // A header left holding nothing is not forwarded as an empty `cookie:` line.
        let kept: Vec<HeaderValue> = entry.remove_entry_mult().1.filter(|v| !v.is_empty()).collect();
        for v in kept {
            h.append(header::COOKIE, v);
        }
    }
}

/// Who made the response the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// The member's own response.
    Member,
    /// routeid's, after the member failed or was too slow (502, 504).
    Proxy,
    /// routeid's, because the client's side failed (400, 408, 499).
    ClientFault,
}

/// How the client's side of an exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientFault {
    /// A malformed or early-ending body, or the client went away.
    Body(ClientBodyError),
    /// The upload stalled on the client for the client idle timeout.
    Stalled,
}

/// nginx's "client closed request": logged, never really sent.
fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

impl ClientFault {
    fn reason(self) -> ClientError {
        match self {
            ClientFault::Body(ClientBodyError::Broken) => ClientError::BrokenBody,
            ClientFault::Body(ClientBodyError::Gone) => ClientError::Gone,
            ClientFault::Stalled => ClientError::UploadStalled,
        }
    }

    fn response(self) -> Response<ProxyBody> {
        let mut r = match self {
            ClientFault::Body(ClientBodyError::Broken) => {
                plain(StatusCode::BAD_REQUEST, "routeid: the request body is malformed or incomplete\n")
            }
            ClientFault::Body(ClientBodyError::Gone) => plain(client_closed_request(), "routeid: client went away\n"),
            ClientFault::Stalled => {
                plain(StatusCode::REQUEST_TIMEOUT, "routeid: the request body stalled past the client idle timeout\n")
            }
        };
        // The connection's state is unknown after a broken body: close it.
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    }
}

/// How waiting for a member's answer ended.
enum Waited {
    /// The member answered; its head arrived at the instant given.
    Answered(Response<MemberBody>, Instant),
    /// The attempt failed on the member's side (refused, reset, closed, bad response).
    Failed(Failed),
    /// No response head within the response timeout.
    MemberSlow,
    /// The client's side failed first.
    ClientFault(ClientFault),
}

/// A request matched to its pool, with its session route read and its first member chosen:
/// what the later stages share.
struct Routed<'s> {
    pool: &'s Pool,
    ext: &'s PoolExt,
    upstream_tls: &'s super::tls::UpstreamTls,
    /// `Strict-Transport-Security` for HTTPS answers, when the pool sets it.
    hsts: Option<&'s HeaderValue>,
    vars: BalancerVars<'s>,
    first: Choice,
    /// The session's route names a member of this pool (a sticky hit, or a listed member that
    /// cannot take it now), as opposed to no route or a route of a pod that left.
    session_member_listed: bool,
    /// The client's user agent accepts `SameSite=None` (or it does not matter).
    same_site_none_ok: bool,
    /// The Gateway API match that held (`None` for other pools).
    rule_match: Option<&'s RequestMatch>,
    /// A Gateway API session's end (kept when the session moves), and the wall clock it was
    /// read at (Unix seconds; 0 when the pool has no session persistence).
    session_end: Option<u64>,
    wall_now: u64,
}

/// What the requests of one client connection share, made once per connection: who the
/// client is, and the response timer its requests reuse.
#[derive(Debug)]
pub struct ClientConn {
    pub client: ClientIp,
    pub timer: ResponseTimer,
}

impl ClientConn {
    pub fn new(client: ClientIp) -> Arc<Self> {
        Arc::new(ClientConn { client, timer: ResponseTimer::default() })
    }
}

/// The request as it goes to members: the head rewritten once, the client's body, and a
/// request a member handed back unsent.
struct Outgoing {
    headers: HeaderMap,
    pq: PathAndQuery,
    slot: Option<BodySlot>,
    returned: Option<Box<Request<UpstreamBody>>>,
}

impl Outgoing {
    /// The request for the next attempt: the one the last member handed back unsent, else a
    /// new one from the head and the client's body (the head is copied only when `keep_copy`).
    /// `None` when the body already went to a member that failed.
    fn request_for(
        &mut self,
        method: &Method,
        mext: &MemberExt,
        runtime: &Arc<MemberRuntime>,
        keep_copy: bool,
    ) -> Option<Request<UpstreamBody>> {
        // Origin-form, as an origin server expects; the client's Host is kept.
        let uri = Uri::from(self.pq.clone());
        if let Some(mut r) = self.returned.take() {
            // The previous member never saw a byte of it: send it as it is.
            *r.uri_mut() = uri;
            r.body_mut().count_for(Arc::clone(runtime));
            return Some(*r);
        }
        let body = match &self.slot {
            None => UpstreamBody::Empty,
            Some(s) => UpstreamBody::streamed(s.take()?, Arc::clone(s), Arc::clone(runtime)),
        };
        let mut r = Request::new(body);
        *r.method_mut() = method.clone();
        *r.version_mut() = Version::HTTP_11;
        *r.uri_mut() = uri;
        *r.headers_mut() = if keep_copy {
            // The map with room goes to the member and the copy (sized to its entries) stays
            // for a retry: hyper parses the member's answer into the map it sent, and a copy
            // sent instead had to grow once per request.
            let copy = self.headers.clone();
            std::mem::replace(&mut self.headers, copy)
        } else {
            std::mem::take(&mut self.headers)
        };
        if !r.headers().contains_key(header::HOST) {
            // An HTTP/1.0 client without Host: name the member.
            if let Ok(h) = HeaderValue::from_str(mext.authority.as_str()) {
                r.headers_mut().insert(header::HOST, h);
            }
        }
        Some(r)
    }

    /// The body can be sent again (none, or not started).
    fn body_replayable(&self) -> bool {
        self.slot.as_ref().is_none_or(|s| s.replayable())
    }
}

/// How finding the pool ended: routed, or answered before any member is chosen (with the
/// pool's name when a pool was found).
enum Routing<'s> {
    Routed(Routed<'s>),
    /// Boxed: a rare path, and the routed variant is what every request moves.
    Early(Option<&'s HeaderValue>, Box<Response<ProxyBody>>),
}

/// How the attempts ended: an answer after an attempt at a member, or routeid's answer with no
/// member to name (none left, or none usable).
enum Ended<'s> {
    Answered(Answered<'s>),
    NoMember(Response<ProxyBody>),
}

/// A member's answer, or routeid's after an attempt at a member: what [`Proxy::finish`] works on.
struct Answered<'s> {
    resp: Response<ProxyBody>,
    idx: usize,
    mext: &'s MemberExt,
    answer: Answer,
    /// For a `101`: keeps the member busy while the tunnel is open.
    busy: Option<BusyGuard>,
    /// When a member's answer arrived (routeid's own answers are timed when finished).
    at: Option<Instant>,
}

/// How one attempt at a member ended.
// The answer is every request's case: boxing it would allocate per request.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    /// The member answered at the instant given; for a `101`, the guard that keeps it busy
    /// while the tunnel is open.
    Answered(Response<ProxyBody>, Option<BusyGuard>, Instant),
    /// The client's side failed: the member is not blamed, nothing is retried.
    ClientFault(ClientFault),
    /// No connection to the member became free in time (`backend.maxConnections`).
    Saturated,
    /// The member failed before answering; the request is handed back when it never left.
    /// `connect`: the member never took it (the connection failed).
    Failed { request: Option<Box<Request<UpstreamBody>>>, connect: bool },
    /// No response head within the response timeout.
    Slow,
}

/// The path and query members get: the client's, with the pool's prefix rewritten (or the
/// Gateway API rule's `URLRewrite` path applied to the match that held).
fn member_path(pool: &Pool, matched: Option<&RequestMatch>, uri: &Uri) -> PathAndQuery {
    let orig = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let rewrite = pool.config.gateway.as_ref().and_then(|g| g.filters.rewrite.as_ref()).and_then(|r| r.path.as_ref());
    let rewritten = match rewrite {
        Some(m) => {
            let path = super::gateway::modified_path(m, matched, uri.path());
            Some(super::gateway::with_query(path, uri))
        }
        None => pool
            .config
            .rewrite_prefix
            .as_deref()
            .and_then(|rw| crate::core::table::rewrite_path(&pool.config.path_prefix, rw, orig.as_str())),
    };
    match rewritten {
        Some(new) => PathAndQuery::try_from(new).unwrap_or(orig),
        None => orig,
    }
}

/// Counts how the first choice went: the sticky outcome, and a failover away from the
/// session's member.
fn count_first_choice(ext: &PoolExt, sticky: bool, first: &Choice, vars: &BalancerVars<'_>, expired: bool) {
    if sticky {
        let outcome = match first {
            _ if expired => StickyOutcome::Expired,
            _ if vars.malformed => StickyOutcome::Malformed,
            Choice::StickyHit(_) => StickyOutcome::Hit,
            Choice::Balanced(_, Balanced::UnknownRoute) => StickyOutcome::UnknownRoute,
            Choice::Balanced(_, Balanced::Failover) | Choice::Unavailable(Unavailable::StickyMemberUnusable) => {
                StickyOutcome::RouteChanged
            }
            _ if vars.source.is_none() => StickyOutcome::NewSession,
            _ => StickyOutcome::NoRoute,
        };
        ext.metrics.sticky(outcome);
    }
    if matches!(first, Choice::Balanced(_, Balanced::Failover)) {
        ext.metrics.failover(FailoverReason::MemberUnusable);
    }
}

/// Why a request is refused before it is routed: a request two parties could read
/// differently (RFC 9112 §3.2, RFC 9113 §8.3.1), or a tunnel routeid does not open.
fn refusal(req: &Request<Incoming>) -> Option<(StatusCode, &'static str)> {
    if req.method() == Method::CONNECT {
        return Some((StatusCode::METHOD_NOT_ALLOWED, "routeid: CONNECT is not supported\n"));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some((StatusCode::BAD_REQUEST, "routeid: more than one Host header\n"));
    }
    match (req.version(), host, req.uri().authority()) {
        (Version::HTTP_11, None, _) => {
            Some((StatusCode::BAD_REQUEST, "routeid: an HTTP/1.1 request needs a Host header\n"))
        }
        (Version::HTTP_2, Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => {
            Some((StatusCode::BAD_REQUEST, "routeid: the Host header differs from :authority\n"))
        }
        _ => None,
    }
}

/// Resolves dot-segments in the request path (see [`crate::core::path`]) so that matching,
/// route extraction and forwarding all see the resolved path. Allocates only when the path has
/// dot-segments.
fn normalize_path(req: &mut Request<Incoming>) -> Result<(), (StatusCode, &'static str)> {
    let Some(path) = crate::core::path::normalize(req.uri().path()) else { return Ok(()) };
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query =
        Some(PathAndQuery::try_from(pq).map_err(|_| (StatusCode::BAD_REQUEST, "routeid: bad path\n"))?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| (StatusCode::BAD_REQUEST, "routeid: bad path\n"))?;
    Ok(())
}

/// The host a request is for: the request target's authority when it has one (absolute-form,
/// HTTP/2 `:authority`), which RFC 9112 §3.2.2 and RFC 9113 §8.3.1 rank above `Host`; else `Host`.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => {
            // Never userinfo: `user@host` names `host`.
            let hostport = a.as_str().rsplit('@').next().unwrap_or("");
            HeaderValue::from_str(hostport).ok()
        }
        None => req.headers().get(header::HOST).cloned(),
    }
}

/// Logs a request whose client went away before it was answered (nginx's 499): hyper drops
/// the request's future then, and nothing else would log it.
struct LogIfAbandoned<'a> {
    proxy: &'a Proxy,
    info: ReqInfo<'a>,
    pool: &'a HeaderValue,
    armed: bool,
}

impl Drop for LogIfAbandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.proxy.settings.metrics {
            self.proxy.metrics().client_error(ClientError::Gone);
        }
        let out = Outcome { status: client_closed_request(), bytes_out: None, attempts: 0 };
        self.proxy.access_log(&self.info, Some(self.pool), None, &BalancerVars::default(), out);
    }
}

impl Proxy {
    /// Answers a request refused before routing, logged and counted.
    fn refuse(
        &self,
        req: &Request<Incoming>,
        client: &ClientIp,
        status: StatusCode,
        why: &'static str,
        started: Instant,
        bytes_in: Option<u64>,
    ) -> Response<ProxyBody> {
        let mut resp = plain(status, why);
        if status == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"));
        }
        if req.version() != Version::HTTP_2 {
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.settings.metrics {
            self.metrics().client_error(ClientError::BadRequest);
        }
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        let client = super::headers::forwarded(req.headers(), client).client;
        let info = ReqInfo { method: req.method(), host, path: req.uri().path(), started, bytes_in, client };
        self.answer_early(&info, None, resp)
    }

    /// Logs and returns an answer routeid gives before any member is chosen (refusal, no pool,
    /// TLS to the members not ready, HTTPS redirect).
    fn answer_early(
        &self,
        info: &ReqInfo<'_>,
        pool: Option<&HeaderValue>,
        resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        self.access_log(info, pool, None, &BalancerVars::default(), Outcome::of(&resp, 0));
        resp
    }

    /// Waits for the member's answer. While the request body is still being sent, the upload
    /// is bounded by the client idle timeout when it waits on the client (the client's fault,
    /// 408) and by the response timeout when it waits on the member; the response timeout
    /// proper starts once the body is fully sent. Without a body the answer is due by
    /// `deadline`, one response timeout after the attempt set out ([`Limits::of`]), so no
    /// second clock read starts the timeout. The timer is the connection's, reused
    /// ([`ResponseTimer`]).
    async fn await_member<F>(
        &self,
        mut exchange: Pin<&mut F>,
        (body, timer): (Option<&BodySlot>, &ResponseTimer),
        response: Duration,
        deadline: tokio::time::Instant,
    ) -> Waited
    where
        F: Future<Output = Result<(Response<MemberBody>, Instant), Failed>>,
    {
        let done = |r: Result<(Response<MemberBody>, Instant), Failed>| match (r, body.and_then(|b| b.client_error())) {
            (Err(_), Some(e)) => Waited::ClientFault(ClientFault::Body(e)),
            (Err(f), None) => Waited::Failed(f),
            (Ok((resp, at)), _) => Waited::Answered(resp, at),
        };
        let Some(b) = body else {
            let mut timeout = timer.start(deadline);
            let waited = tokio::select! {
                biased;
                r = exchange => done(r),
                () = timeout.as_mut() => Waited::MemberSlow,
            };
            timer.put(timeout);
            return waited;
        };
        let idle = self.settings.client_idle_timeout;
        // Checked a few times per period: a stall is noticed between `idle` and `idle * 1.25`.
        let tick = (idle.min(response) / 4).max(Duration::from_millis(10));
        let (mut seen, mut client_stall, mut member_stall) = (b.frames(), Duration::ZERO, Duration::ZERO);
        while !b.complete() {
            tokio::select! {
                // An answer (or a maxConnections wait that ran out) wins a tie with a tick.
                biased;
                r = exchange.as_mut() => return done(r),
                _ = b.changed() => {}
                _ = tokio::time::sleep(tick) => {
                    let now = b.frames();
                    if now != seen || b.complete() {
                        (seen, client_stall, member_stall) = (now, Duration::ZERO, Duration::ZERO);
                    } else if b.waiting_on_client() {
                        client_stall += tick;
                        if client_stall >= idle {
                            return Waited::ClientFault(ClientFault::Stalled);
                        }
                    } else {
                        // The member does not read the body: that time counts as its answering time.
                        member_stall += tick;
                        if member_stall >= response {
                            return Waited::MemberSlow;
                        }
                    }
                }
            }
        }
        match tokio::time::timeout(response, exchange).await {
            Ok(r) => done(r),
            Err(_) => Waited::MemberSlow,
        }
    }

    /// Serves one client request, in stages: refuse what two parties could read differently;
    /// find the pool, read the session route and choose a member ([`Proxy::route`]); rewrite
    /// the head once for the members ([`Proxy::member_head`]); one [`Proxy::attempt`] per
    /// member until one answers or none is left; finish the answer ([`Proxy::finish`]) and log.
    #[expect(clippy::manual_async_fn, reason = "an async fn would hold its request twice")]
    pub fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Arc<ClientConn>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        // An `async` block, not an `async fn`: an `async fn` moves its arguments into locals
        // of its future, which then holds the request twice; the block uses them in place.
        async move {
            let client = &conn.client;
            let started = Instant::now();
            let bytes_in = req.body().size_hint().exact();
            if let Some((status, why)) = refusal(&req).or_else(|| normalize_path(&mut req).err()) {
                return self.refuse(&req, client, status, why, started, bytes_in);
            }
            let snap = self.snapshot();
            let host = request_host(&req);
            let host_str = host.as_ref().and_then(|h| h.to_str().ok());
            let fwd = super::headers::forwarded(req.headers(), client);
            let mut r = match self.route(&snap, &req, host_str, fwd.https, started) {
                Routing::Routed(r) => r,
                Routing::Early(pool, resp) => {
                    let (method, path) = (req.method(), req.uri().path());
                    let early = ReqInfo { method, host: host_str, path, started, bytes_in, client: fwd.client };
                    return self.answer_early(&early, pool, *resp);
                }
            };
            let upgrade = if req.version() == Version::HTTP_11 && wants_upgrade(req.headers()) {
                Some(hyper::upgrade::on(&mut req))
            } else {
                None
            };
            let (mut parts, body) = req.into_parts();
            let sticky = r.pool.config.sticky.as_ref();
            self.member_head(&mut parts, client, host.as_ref(), upgrade.is_some(), sticky, r.ext.rule.as_ref());
            let mut out = Outgoing {
                headers: std::mem::take(&mut parts.headers),
                pq: member_path(r.pool, r.rule_match, &parts.uri),
                slot: (!body.is_end_stream()).then(|| BodyState::new(body, parts.version == Version::HTTP_2)),
                returned: None,
            };
            let method = &parts.method;
            // From here on, a request whose client goes away before its answer is logged as 499.
            let info =
                ReqInfo { method, host: host_str, path: parts.uri.path(), started, bytes_in, client: fwd.client };
            let ext = r.ext;
            let mut abandoned = LogIfAbandoned { proxy: &self, info, pool: &ext.balancer_name, armed: true };
            let mut tried = Tried::default();
            let done = self.attempts(&mut r, &mut out, (method, upgrade.is_some()), &mut tried, &conn.timer).await;
            abandoned.armed = false;
            let (resp, member) = match done {
                Ended::Answered(a) => {
                    let took = a.at.unwrap_or_else(Instant::now).saturating_duration_since(started);
                    let resp = self.finish(a.resp, a.answer, &r, a.idx, a.mext, (upgrade, a.busy), fwd.https, took);
                    (resp, Some(r.pool.members[a.idx].config.address))
                }
                Ended::NoMember(resp) => (resp, None),
            };
            let out = Outcome::of(&resp, tried.len());
            self.access_log(&abandoned.info, Some(&ext.balancer_name), member, &r.vars, out);
            resp
        }
    }

    /// Tries members one attempt at a time, from the first choice, until one answers, the
    /// answer is routeid's (a `502`, `503` or `504` after an attempt, a client fault), or no
    /// member is left.
    async fn attempts<'s>(
        &self,
        r: &mut Routed<'s>,
        out: &mut Outgoing,
        (method, upgrade): (&Method, bool),
        tried: &mut Tried,
        timer: &ResponseTimer,
    ) -> Ended<'s> {
        let sticky = r.pool.config.sticky.as_ref();
        let mut choice = r.first;
        // The last failed attempt reached its member (as opposed to failing to connect).
        let mut last_taken = false;
        loop {
            let idx = match choice {
                Choice::StickyHit(i) => {
                    r.vars.balanced = None;
                    i
                }
                Choice::Balanced(i, why) => {
                    r.vars.balanced = Some(why);
                    i
                }
                Choice::Unavailable(why) => return Ended::NoMember(self.no_member_left(r, why, last_taken)),
            };
            // Only the proxy fills the member's extension slot: unreachable, but answered, and
            // logged as routeid's fault, not as a client that went away (499).
            let Some(mext) = self.member_ext(r.pool, idx) else {
                return Ended::NoMember(plain(StatusCode::BAD_GATEWAY, "routeid: member state unavailable\n"));
            };
            tried.push(idx);
            let member = &r.pool.members[idx];
            r.vars.worker_route = Some(member.route());
            r.vars.worker_name = Some(&mext.worker_name);
            r.vars.route_changed = sticky.is_some() && r.vars.balanced.is_some();
            let done = |resp, answer| Ended::Answered(Answered { resp, idx, mext, answer, busy: None, at: None });

            let last_try = tried.len() >= r.pool.config.max_attempts as usize;
            // A copy of the head is only needed to repeat an idempotent request that a member
            // received but did not answer; a request that never left comes back.
            let keep_copy = !last_try && out.slot.is_none() && is_idempotent(method) && !upgrade;
            let Some(mut up) = out.request_for(method, mext, &member.runtime, keep_copy) else {
                let msg = "routeid: the request body was already sent to a member that failed\n";
                return done(plain(StatusCode::BAD_GATEWAY, msg), Answer::Proxy);
            };
            if sticky.is_some_and(|s| s.headers_to_member) {
                put_debug_headers(up.headers_mut(), &r.vars, r.ext);
            }
            match self.attempt(r.pool, idx, mext, up, (out.slot.as_ref(), timer), r.upstream_tls).await {
                Attempt::Answered(resp, busy, at) => {
                    let answer = Answer::Member;
                    return Ended::Answered(Answered { resp, idx, mext, answer, busy, at: Some(at) });
                }
                Attempt::ClientFault(fault) => return done(fault.response(), Answer::ClientFault),
                Attempt::Saturated => {
                    let msg = "routeid: every connection to the member stayed busy (backend.maxConnections)\n";
                    return done(plain(StatusCode::SERVICE_UNAVAILABLE, msg), Answer::Proxy);
                }
                Attempt::Slow => {
                    let msg = "routeid: the member did not answer in time\n";
                    return done(plain(StatusCode::GATEWAY_TIMEOUT, msg), Answer::Proxy);
                }
                Attempt::Failed { request, connect } => {
                    let repeatable = request.is_some()
                        || (is_idempotent(method) && !out.headers.is_empty() && out.body_replayable());
                    if last_try || upgrade || !repeatable {
                        if connect {
                            // No member took it: the same answer as when none is usable.
                            return Ended::NoMember(self.no_member_left(r, Unavailable::NoUsableMember, false));
                        }
                        let msg = "routeid: the member failed before answering\n";
                        return done(plain(StatusCode::BAD_GATEWAY, msg), Answer::Proxy);
                    }
                    last_taken = !connect;
                    out.returned = request;
                    if self.settings.metrics {
                        r.ext.metrics.failover(FailoverReason::Retry);
                    }
                    choice = r.pool.choose(r.vars.session_route.as_deref(), tried, self.clock.now_ms());
                }
            }
        }
    }

    /// Stage one: finds the pool, answers what is answered before any member is chosen (no
    /// pool, TLS to the members not ready, HTTPS redirect), reads the session route and makes
    /// the first choice.
    ///
    /// `now` is the request's start: its member choice needs no clock read of its own.
    fn route<'s>(
        &self,
        snap: &'s Snapshot,
        req: &Request<Incoming>,
        host: Option<&str>,
        https: bool,
        now: Instant,
    ) -> Routing<'s> {
        let facts = RequestFacts {
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method().as_str(),
            headers: req.headers(),
            secure: https,
        };
        let Some(Found { pool: pi, rule_match }) = snap.table.find_request(&facts) else {
            if self.settings.metrics {
                self.metrics().unmatched.inc();
            }
            let resp = plain(StatusCode::NOT_FOUND, "routeid: no pool serves this host and path\n");
            return Routing::Early(None, Box::new(resp));
        };
        let pool: &Pool = &snap.table.pools()[pi];
        let ext = &snap.ext[pi];
        let upstream_tls = snap.tls.backend.get(pi).unwrap_or(&super::tls::UpstreamTls::Plain);
        if let super::tls::UpstreamTls::Unavailable = upstream_tls {
            let resp = plain(StatusCode::SERVICE_UNAVAILABLE, "routeid: TLS to this pool's members is not ready\n");
            return Routing::Early(Some(&ext.balancer_name), Box::new(resp));
        }
        if pool.config.https_redirect
            && !https
            && let Some(resp) = super::tls::https_redirect(host, req.uri())
        {
            return Routing::Early(Some(&ext.balancer_name), Box::new(resp));
        }
        if let Some(r) = pool.config.gateway.as_ref().and_then(|g| g.filters.redirect.as_ref()) {
            let resp = super::gateway::redirect(r, rule_match, host, https, req.uri());
            return Routing::Early(Some(&ext.balancer_name), Box::new(resp));
        }
        let sticky = pool.config.sticky.as_ref();
        let persistence = sticky.and_then(|s| s.persistence.as_ref());
        let wall_now = if persistence.is_some() { self.settings.wall_clock.now_unix() } else { 0 };
        let (mut session_end, mut session_expired) = (None, false);
        let mut vars = BalancerVars::default();
        let lookup = match sticky {
            Some(_) if let Some(p) = persistence => {
                let key = self.session_key.as_ref();
                let session = super::gateway::read_session(p, key, req.headers(), ext.rule.as_ref(), wall_now);
                (session_end, session_expired) = (session.expires, session.expired);
                let source = match p.kind {
                    SessionKind::Cookie => RouteSource::RouteCookie,
                    SessionKind::Header => RouteSource::Header,
                };
                RouteLookup {
                    source: session.present.then_some(source),
                    route: session.route.map(Cow::Borrowed),
                    malformed: session.forged,
                }
            }
            Some(cfg) => {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let headers = req.headers();
                extract_route(cfg, pq, || headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes()))
            }
            None => Default::default(),
        };
        vars.malformed = lookup.malformed;
        vars.source = lookup.source;
        let first = pool.choose(lookup.route.as_deref(), &Tried::default(), self.clock.ms_at(now));
        // Keep the route beyond the request's borrow: borrowed from the pool on a hit, owned
        // otherwise.
        vars.session_route = match (&first, lookup.route) {
            (Choice::StickyHit(i), Some(_)) => Some(Cow::Borrowed(pool.members[*i].route())),
            (_, r) => r.map(|r| Cow::Owned(r.into_owned())),
        };
        if let (Some(cfg), Some(src)) = (sticky, vars.source) {
            vars.session_sticky = Some(session_name(cfg, src));
        }
        // Read only when the pool asks for conditional `SameSite=None`.
        let same_site_none_ok = sticky.and_then(|c| c.cookie.as_ref()).is_none_or(|c| !c.conditional_same_site_none)
            || req.headers().get(header::USER_AGENT).is_none_or(|ua| same_site_none_compatible(ua.as_bytes()));
        if self.settings.metrics {
            count_first_choice(ext, sticky.is_some(), &first, &vars, session_expired);
        }
        Routing::Routed(Routed {
            pool,
            ext,
            upstream_tls,
            hsts: snap.tls.hsts.get(pi).and_then(Option::as_ref),
            session_member_listed: matches!(first, Choice::StickyHit(_) | Choice::Balanced(_, Balanced::Failover)),
            first,
            vars,
            same_site_none_ok,
            rule_match,
            session_end,
            wall_now,
        })
    }

    /// Stage two: the request head as members get it, rewritten once for every attempt:
    /// hop-by-hop headers gone, `X-Forwarded-*` set, the routed host in `Host`, `Via`, and the
    /// cookies as the member must see them.
    fn member_head(
        &self,
        head: &mut http::request::Parts,
        client: &ClientIp,
        host: Option<&HeaderValue>,
        upgrade: bool,
        sticky: Option<&StickyConfig>,
        rule: Option<&RuleExt>,
    ) {
        let headers = &mut head.headers;
        strip_hop_by_hop(headers, upgrade);
        set_forwarded(headers, client, host);
        // The member sees the host the request was routed by (RFC 9112 §3.2.2: an absolute-form
        // target's authority replaces Host).
        if (head.uri.authority().is_some() || !headers.contains_key(header::HOST))
            && let Some(h) = host
        {
            headers.insert(header::HOST, h.clone());
        }
        if self.settings.via {
            add_via(headers, head.version);
        }
        prepare_request_cookies(headers, head.version == Version::HTTP_2, sticky);
        if let Some(rule) = rule {
            if let Some(m) = &rule.request_headers {
                m.apply(headers);
            }
            if let Some(h) = &rule.rewrite_host {
                headers.insert(header::HOST, h.clone());
            }
        }
    }

    /// Stage three: one attempt at member `idx`. Sends the request, waits for the head of the
    /// answer, and does the member's bookkeeping for what happened (latency, failures, error
    /// state); the caller decides what comes next from the outcome.
    #[expect(clippy::manual_async_fn, reason = "an async fn would hold its request twice")]
    fn attempt(
        &self,
        pool: &Pool,
        idx: usize,
        mext: &MemberExt,
        up: Request<UpstreamBody>,
        (slot, timer): (Option<&BodySlot>, &ResponseTimer),
        upstream_tls: &super::tls::UpstreamTls,
    ) -> impl Future<Output = Attempt> + Send {
        // A block, as in `handle`: `up` is held once, not also as a local copy.
        async move {
            let member = &pool.members[idx];
            let busy = BusyGuard::enter(&member.runtime);
            // One clock read (tokio's: paused in tests) for the response deadline, the idle
            // connections' expiry and the start of the member's latency.
            let t = pool.config.timeouts;
            // Waiting for a free connection (maxConnections) ends within the response timeout.
            let limits = Limits::of(&pool.config, tokio::time::Instant::now());
            // Pinned here and lent to `await_member`: moved into it, the exchange's future would be
            // stored twice in this future (as its argument and as its pinned local).
            let exchange = std::pin::pin!(mext.conns.send(up, &limits, upstream_tls));
            match self.await_member(exchange, (slot, timer), t.response, limits.deadline).await {
                Waited::ClientFault(fault) => {
                    // The client's side failed: the member is not to blame, nothing is retried.
                    tracing::debug!(pool = %pool.config.id, member = member.route(), ?fault, "client side of the exchange failed");
                    if self.settings.metrics {
                        self.metrics().client_error(fault.reason());
                    }
                    Attempt::ClientFault(fault)
                }
                Waited::Answered(resp, at) => {
                    let latency = at.saturating_duration_since(limits.sent).as_micros() as u64;
                    member.runtime.observe_latency(latency, self.clock.ms_at(at));
                    if pool.config.health.fail_on_status.contains(&resp.status().as_u16()) {
                        member.runtime.count_failure(FailureKind::Status);
                        // Apache failonstatus: the member goes in error, the client still gets the
                        // response.
                        pool.member_failed(idx, self.clock.ms_at(at));
                        tracing::warn!(pool = %pool.config.id, member = member.route(), status = resp.status().as_u16(), "failOnStatus: member put in error");
                    }
                    // The member stays busy until the body ends (or, upgraded, the tunnel closes).
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        return Attempt::Answered(resp.map(Either::Left), Some(busy), at);
                    }
                    Attempt::Answered(resp.map(|b| Either::Left(b.counting(busy))), None, at)
                }
                Waited::Failed(failed) if failed.error.is_saturated() => {
                    // The pool's cap, not a member failure: no error state, no retry elsewhere.
                    tracing::warn!(pool = %pool.config.id, member = member.route(), error = %failed.error, "no free connection");
                    Attempt::Saturated
                }
                Waited::Failed(failed) => {
                    let connect = failed.error.is_connect();
                    member.runtime.count_failure(if connect { FailureKind::Connect } else { FailureKind::Exchange });
                    if failed.error.is_keepalive_race() {
                        member.runtime.errors.fetch_add(1, Relaxed);
                    } else {
                        // Refused, reset or closed without an answer: the member is in trouble.
                        pool.member_failed(idx, self.clock.now_ms());
                    }
                    tracing::warn!(pool = %pool.config.id, member = member.route(), error = %error_chain(&failed.error), connect, "attempt failed");
                    Attempt::Failed { request: failed.request, connect }
                }
                Waited::MemberSlow => {
                    member.runtime.count_failure(FailureKind::Timeout);
                    let now = super::upstream::now();
                    let waited = now.saturating_duration_since(limits.sent).as_micros() as u64;
                    member.runtime.observe_latency(waited, self.clock.ms_at(now));
                    if pool.config.health.fail_on_timeout {
                        pool.member_failed(idx, self.clock.ms_at(now));
                    } else {
                        member.runtime.errors.fetch_add(1, Relaxed);
                    }
                    tracing::warn!(pool = %pool.config.id, member = member.route(), "response timeout");
                    Attempt::Slow
                }
            }
        }
    }

    /// routeid's answer when no member is left to take the request: `503` naming the pool when
    /// none took it (none usable, or every attempt failed to connect), `502` when the last
    /// member tried received it and failed before answering.
    fn no_member_left(&self, r: &mut Routed<'_>, why: Unavailable, last_taken: bool) -> Response<ProxyBody> {
        r.vars.route_changed = false;
        r.vars.worker_route = None;
        r.vars.worker_name = None;
        if last_taken {
            return plain(StatusCode::BAD_GATEWAY, "routeid: the member failed before answering\n");
        }
        if why == Unavailable::InvalidBackend {
            return self.invalid_backend(r);
        }
        if self.settings.metrics {
            r.ext.metrics.unavailable();
        }
        let id = &r.pool.config.id;
        let text = match why {
            Unavailable::NoUsableMember => format!("routeid: no usable member in pool {id}\n"),
            Unavailable::StickyMemberUnusable => format!(
                "routeid: the member for route {} of pool {id} is unavailable and failover is off\n",
                r.vars.session_route.as_deref().unwrap_or("-"),
            ),
            Unavailable::InvalidBackend => String::new(),
        };
        plain(StatusCode::SERVICE_UNAVAILABLE, text)
    }

    /// The HTTPRoute spec's `500` for a request that fell in the rule's invalid backendRefs'
    /// share: counted per pool and in the access log (no member is at fault), and logged at
    /// debug only, as the route's `ResolvedRefs=False` status already says why.
    fn invalid_backend(&self, r: &mut Routed<'_>) -> Response<ProxyBody> {
        if self.settings.metrics {
            r.ext.metrics.invalid_backend();
        }
        let reason = r.pool.config.gateway.as_ref().and_then(|g| g.invalid.as_ref()).map_or("", |i| i.reason.as_str());
        tracing::debug!(pool = %r.pool.config.id, reason, "request of an invalid backendRef's share: 500");
        plain(StatusCode::INTERNAL_SERVER_ERROR, format!("routeid: invalid backendRef: {reason}\n"))
    }

    /// Stage four: finishes the answer for the client — metrics, the tunnel of an upgrade,
    /// hop-by-hop headers, the route cookie (only on a member's own answer), debug headers,
    /// `Via` and HSTS.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        mut resp: Response<ProxyBody>,
        answer: Answer,
        r: &Routed<'_>,
        idx: usize,
        mext: &MemberExt,
        (upgrade, tunnel_busy): (Option<hyper::upgrade::OnUpgrade>, Option<BusyGuard>),
        https: bool,
        took: Duration,
    ) -> Response<ProxyBody> {
        if self.settings.metrics && answer != Answer::ClientFault {
            mext.metrics.observe(resp.status().as_u16(), took.as_secs_f64());
        }
        if answer == Answer::Member && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            match upgrade {
                Some(client_side) => {
                    let member_side = hyper::upgrade::on(&mut resp);
                    self.tunnels.spawn(client_side, member_side, self.settings.client_idle_timeout, tunnel_busy);
                }
                None => {
                    resp =
                        plain(StatusCode::BAD_GATEWAY, "routeid: the member switched protocols without being asked\n");
                }
            }
        } else {
            strip_hop_by_hop(resp.headers_mut(), false);
        }
        if let Some(cfg) = r.pool.config.sticky.as_ref() {
            // Only a member's own answer pins the session: a 502/504 routeid made after a failed
            // attempt must not send the client back to the member that failed.
            if answer == Answer::Member {
                let member = &r.pool.members[idx];
                if r.vars.route_changed {
                    member.runtime.sessions_started.fetch_add(1, Relaxed);
                }
                // ingress-nginx `change-on-failure: false`: a session whose member is still
                // listed keeps its cookie when another member answered for it.
                let keep = !cfg.change_on_failure
                    && r.session_member_listed
                    && matches!(r.vars.balanced, Some(Balanced::Failover | Balanced::Retry));
                let changed = r.vars.route_changed && !keep;
                match &cfg.persistence {
                    Some(p) if changed => {
                        // A moved session keeps its end; a new one starts now.
                        let expires = r.session_end.or_else(|| crate::core::session::expiry(p, r.wall_now));
                        let new = NewSession { route: member.route(), expires, now: r.wall_now, https };
                        write_session(p, self.session_key.as_ref(), resp.headers_mut(), r.ext.rule.as_ref(), new);
                    }
                    Some(_) => {}
                    None => {
                        let cookie = CookieContext { same_site_none_ok: r.same_site_none_ok, https };
                        self.sticky_response(cfg, resp.headers_mut(), member.route(), changed, cookie);
                    }
                }
            }
            if cfg.headers_to_client {
                put_debug_headers(resp.headers_mut(), &r.vars, r.ext);
            }
        }
        if let Some(m) = r.ext.rule.as_ref().and_then(|r| r.response_headers.as_ref()) {
            m.apply(resp.headers_mut());
        }
        if self.settings.via {
            add_via(resp.headers_mut(), Version::HTTP_11);
        }
        if https && let Some(v) = r.hsts {
            resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
        resp
    }

    fn sticky_response(
        &self,
        cfg: &StickyConfig,
        h: &mut HeaderMap,
        route: &str,
        route_changed: bool,
        ctx: CookieContext,
    ) {
        let Some(c) = &cfg.cookie else { return };
        let attributes = if ctx.https { &c.secure_attributes } else { &c.attributes };
        let mut set = false;
        match c.mode {
            CookieMode::Insert => {
                if route_changed {
                    // Only a user agent that rejects `SameSite=None` costs a copy.
                    let attributes: Cow<'_, str> = if ctx.same_site_none_ok {
                        Cow::Borrowed(attributes)
                    } else {
                        Cow::Owned(attributes.replace("; SameSite=None", ""))
                    };
                    let mut v = Vec::with_capacity(c.name.len() + route.len() + attributes.len() + 40);
                    v.extend_from_slice(c.name.as_bytes());
                    v.push(b'=');
                    v.extend(cfg.separator);
                    v.extend_from_slice(route.as_bytes());
                    if let Some(d) = c.expires {
                        let at = std::time::SystemTime::now() + d;
                        v.extend_from_slice(b"; Expires=");
                        v.extend_from_slice(httpdate::fmt_http_date(at).as_bytes());
                    }
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
        // Routeid's own header values (a pool's name, a member's URL) as bytes: the log's thread
        // checks UTF-8 only where a string needs escaping (a pool named in non-ASCII letters,
        // possible in standalone mode, is logged by its name, escaped).
        let pool = pool.map_or(b"-".as_slice(), HeaderValue::as_bytes);
        // The one clock read of the line: its duration and (see `AccessLine::log`) its timestamp.
        let now = Instant::now();
        AccessLine {
            method: req.method.as_str().as_bytes(),
            host: req.host.unwrap_or("-").as_bytes(),
            path: req.path.as_bytes(),
            status: out.status.as_u16(),
            bytes_in: req.bytes_in,
            bytes_out: out.bytes_out,
            duration_us: now.saturating_duration_since(req.started).as_micros() as u64,
            client: req.client,
            pool,
            member_address: member,
            attempts: out.attempts,
            session_sticky: vars.session_sticky.unwrap_or("-").as_bytes(),
            session_route: vars.session_route.as_deref().unwrap_or("-").as_bytes(),
            worker_name: vars.worker_name.map_or(b"-".as_slice(), HeaderValue::as_bytes),
            worker_route: vars.worker_route.unwrap_or("-").as_bytes(),
            route_changed: vars.route_changed,
            route_source: vars.source.map_or("-", RouteSource::as_str).as_bytes(),
            balanced: vars.balanced.map_or("-", Balanced::as_str).as_bytes(),
            malformed_route: vars.malformed,
        }
        .log(now);
    }
}

/// What the route cookie's attributes depend on in the request.
#[derive(Clone, Copy)]
struct CookieContext {
    /// The client's user agent accepts `SameSite=None` (or it does not matter).
    same_site_none_ok: bool,
    /// The client connection is HTTPS (TLS, or a trusted front proxy said so).
    https: bool,
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

/// An error and its sources in one line. Errors that already print their source (`connect to
/// 10.0.0.1:80 failed: Connection refused`) do not get it twice.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod error_chain_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("connect to 127.0.0.1:9 failed: {source}")]
    struct Connect {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("attempt failed")]
    struct Attempt(#[source] Connect);

    #[test]
    fn a_source_already_in_the_text_is_not_repeated() {
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = super::error_chain(&Connect { source: refused() });
        assert_eq!(text, format!("connect to 127.0.0.1:9 failed: {}", refused()));
        let text = super::error_chain(&Attempt(Connect { source: refused() }));
        assert_eq!(text, format!("attempt failed: connect to 127.0.0.1:9 failed: {}", refused()));
    }
}
#[cfg(test)]
mod tests {
    use super::super::tls::UpstreamTls;
    use super::super::upstream::{Limits, MemberConns};
    use super::*;

    /// hyper moves each request's future, and memcpy of a 12.6 KiB future was a quarter of the
    /// instructions of a request (callgrind): the cold paths (a new member connection, a wait
    /// for a free one) are boxed, and so is the future hyper gets. Sizes of the debug build.
    #[test]
    fn the_request_future_stays_small() {
        fn handle<F: Future>(_: fn(Arc<Proxy>, Request<Incoming>, Arc<ClientConn>) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        type Send<'a, F> = fn(&'a Arc<MemberConns>, Request<UpstreamBody>, &'a Limits, &'a UpstreamTls) -> F;
        fn send<'a, F: Future>(_: Send<'a, F>) -> usize {
            std::mem::size_of::<F>()
        }
        let (h, s) = (handle(Proxy::handle), send(MemberConns::send));
        // 3,216 and 864 bytes (`send` also keeps the time its idle connections are checked
        // against): `handle`, `attempt` and `send` are `async` blocks, so each holds its
        // request once (as `async fn`s they held 3,992 and 1,160).
        assert!(h <= 4 * 1024, "Proxy::handle's future is {h} bytes");
        assert!(s <= 1024, "MemberConns::send's future is {s} bytes");
    }

    /// A member's answer is moved from the connection pool up through every stage to hyper,
    /// each move a memcpy of the whole value: what is rare in it (the connection to give back,
    /// a request handed back unsent, trailers) is boxed. Before, a response was 376 bytes.
    #[test]
    fn a_member_answer_stays_small() {
        use super::super::upstream::Failed;
        use std::mem::size_of;
        let (head, incoming) = (size_of::<Response<()>>(), size_of::<Incoming>());
        let body = size_of::<MemberBody>();
        assert!(body <= incoming + 64, "MemberBody is {body} bytes, hyper's Incoming {incoming}");
        assert!(size_of::<Response<ProxyBody>>() <= head + body + 8, "{}", size_of::<Response<ProxyBody>>());
        assert!(size_of::<Failed>() <= size_of::<Response<MemberBody>>() / 2, "{}", size_of::<Failed>());
        assert!(size_of::<Attempt>() <= head + body + 24, "Attempt is {} bytes", size_of::<Attempt>());
    }
}
