//! The balancer-manager: Apache's page for seeing members live and changing their weight, lbSet
//! and state — as HTML (no JavaScript) and as a JSON API.
//!
//! Security: reading is open on the admin listener (loopback by default in standalone mode);
//! writing needs the manager token (`--manager-token` / `ROUTEID_MANAGER_TOKEN`), as a bearer
//! token or, in the HTML form, typed into the form; form posts also need a nonce issued with the
//! page (as Apache's manager does), so another site cannot make a browser post a change. Without
//! a token the manager is read-only and says so.
//!
//! The nonce is a signed, time-limited token, one per rendered page: a random id and an expiry,
//! with an HMAC-SHA256 over both under a key made at random when the process starts. Checking
//! it needs no record of the pages served, so reading the page (which anyone on the admin port
//! may do) stores nothing and cannot push an operator's open form out of any table. Only a post
//! that presented the manager token records its nonce, until it expires, so that each form is
//! good once.
//!
//! Where a change goes: in standalone mode into the proxy's in-memory overlay (lost on restart);
//! in controller mode into the pool's `spec.members` in the Kubernetes API, from where every
//! replica's controller applies it, and it survives restarts.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use kube::api::{Api, Patch, PatchParams};
use ring::hmac;
use serde::Serialize;

use crate::admin::live::{Live, MemberFigures, PoolFigures};
use crate::api::{BalancerPool, MemberOverride, MemberStatus};
use crate::core::config::MemberChange;
use crate::core::{Clock, PoolId};
use crate::proxy::{ChangeError, Proxy};

/// Where manager changes are kept.
#[derive(Clone)]
pub enum Persistence {
    /// In the proxy's memory (standalone).
    InMemory,
    /// In the BalancerPool's `spec.members`, through this client (controller mode).
    Kubernetes(kube::Client),
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Persistence::InMemory => "InMemory",
            Persistence::Kubernetes(_) => "Kubernetes",
        })
    }
}

/// A page's nonce is good for this long.
const NONCE_TTL_MS: u64 = 3_600_000;
/// Used nonces remembered (each until it expires) so that a form is good once. Only posts that
/// presented the manager token add to it; past this many, the oldest is forgotten.
const MAX_USED_NONCES: usize = 4096;

/// The manager's configuration, the key its nonces are signed with, and the nonces used.
pub struct Manager {
    token: Option<String>,
    persistence: Persistence,
    /// `None` if the OS gave no randomness: then no nonce is issued or accepted.
    nonce_key: Option<hmac::Key>,
    used: Mutex<VecDeque<(String, u64)>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("writable", &self.writable())
            .field("persistence", &self.persistence)
            .finish_non_exhaustive()
    }
}

/// Why a write was refused; maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No token configured: the manager is read-only (403).
    #[error(
        "the balancer-manager is read-only: start routeid with --manager-token or ROUTEID_MANAGER_TOKEN to allow changes"
    )]
    ReadOnly,
    /// Missing or wrong token (401).
    #[error("a valid manager token is required")]
    Unauthorized,
    /// Missing, unknown or expired nonce on a form post (403).
    #[error("the form has expired or did not come from this page: reload the balancer-manager and try again")]
    BadNonce,
    /// Bad values (400).
    #[error("{0}")]
    Invalid(String),
    /// No such pool or member (404).
    #[error("{0}")]
    NotFound(String),
    /// The Kubernetes API refused or failed (502).
    #[error("the Kubernetes API did not take the change: {0}")]
    Api(String),
}

impl WriteError {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            WriteError::ReadOnly | WriteError::BadNonce => S::FORBIDDEN,
            WriteError::Unauthorized => S::UNAUTHORIZED,
            WriteError::Invalid(_) => S::BAD_REQUEST,
            WriteError::NotFound(_) => S::NOT_FOUND,
            WriteError::Api(_) => S::BAD_GATEWAY,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Manager {
    /// A manager; `token` empty or absent means read-only.
    pub fn new(token: Option<String>, persistence: Persistence) -> Manager {
        let nonce_key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new()).ok();
        if nonce_key.is_none() {
            tracing::error!("no OS randomness: the balancer-manager's forms are refused (the JSON API still works)");
        }
        Manager { token: token.filter(|t| !t.is_empty()), persistence, nonce_key, used: Mutex::new(VecDeque::new()) }
    }

    /// Whether writes are possible at all.
    pub fn writable(&self) -> bool {
        self.token.is_some()
    }

    /// Where changes go.
    pub fn persistence(&self) -> &Persistence {
        &self.persistence
    }

    /// Checks a presented token.
    pub fn authorize(&self, presented: Option<&str>) -> Result<(), WriteError> {
        let Some(token) = &self.token else { return Err(WriteError::ReadOnly) };
        match presented {
            Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(()),
            _ => Err(WriteError::Unauthorized),
        }
    }

    /// A fresh nonce for one page: `<id>.<expiry ms>.<HMAC>`, recorded nowhere.
    pub fn issue_nonce(&self) -> String {
        self.issue_nonce_at(Clock.now_ms())
    }

    fn issue_nonce_at(&self, now_ms: u64) -> String {
        let (Some(key), Ok(id)) = (&self.nonce_key, ring::rand::generate::<[u8; 12]>(&ring::rand::SystemRandom::new()))
        else {
            return String::new();
        };
        let signed = format!("{}.{}", hex(&id.expose()), now_ms + NONCE_TTL_MS);
        let tag = hmac::sign(key, signed.as_bytes());
        format!("{signed}.{}", hex(tag.as_ref()))
    }

    /// Accepts a nonce this process issued, not expired and not used before; records it as used.
    /// Call it only once the post has presented the manager token.
    pub fn take_nonce(&self, nonce: &str) -> Result<(), WriteError> {
        self.take_nonce_at(nonce, Clock.now_ms())
    }

    fn take_nonce_at(&self, nonce: &str, now_ms: u64) -> Result<(), WriteError> {
        let key = self.nonce_key.as_ref().ok_or(WriteError::BadNonce)?;
        let (signed, tag) = nonce.rsplit_once('.').ok_or(WriteError::BadNonce)?;
        let tag = unhex(tag).ok_or(WriteError::BadNonce)?;
        hmac::verify(key, signed.as_bytes(), &tag).map_err(|_| WriteError::BadNonce)?;
        let expiry: u64 = signed.rsplit_once('.').and_then(|(_, e)| e.parse().ok()).ok_or(WriteError::BadNonce)?;
        if expiry < now_ms {
            return Err(WriteError::BadNonce);
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.retain(|(_, exp)| *exp >= now_ms);
        if used.iter().any(|(n, _)| n == nonce) {
            return Err(WriteError::BadNonce);
        }
        if used.len() >= MAX_USED_NONCES {
            used.pop_front();
        }
        used.push_back((nonce.to_owned(), expiry));
        Ok(())
    }

    /// Applies a change where this manager keeps them; `by` says who made it. Returns where it
    /// went, for the reply.
    pub async fn apply(
        &self,
        proxy: &Proxy,
        pool: &PoolId,
        route: &str,
        change: MemberChange,
        by: String,
    ) -> Result<&'static str, WriteError> {
        let refused = |e| refusal(e, pool, route);
        match &self.persistence {
            // The proxy validates the change and checks the member itself.
            Persistence::InMemory => {
                proxy.apply_change(pool, route, change, by).map_err(refused)?;
                Ok("memory (standalone mode: lost on restart)")
            }
            // A pool made from an Ingress or an HTTPRoute has no object to keep the change in.
            Persistence::Kubernetes(_) if !has_balancer_pool(pool) => {
                proxy.apply_change(pool, route, change, by).map_err(refused)?;
                Ok("this replica's memory (a pool made from an Ingress or HTTPRoute: lost on restart, not shared)")
            }
            Persistence::Kubernetes(client) => {
                change.validate().map_err(|e| refused(ChangeError::Invalid(e)))?;
                check_member(proxy, pool, route)?;
                tracing::info!(pool = %pool, member = route, ?change, by, "balancer-manager change to spec.members");
                patch_overrides(client.clone(), pool, route, Some(change)).await?;
                Ok("the BalancerPool's spec.members (every replica applies it)")
            }
        }
    }

    /// Clears a member's override: the file's (or the spec's) values apply again. In controller
    /// mode it removes the member's entry from the BalancerPool's `spec.members`.
    pub async fn clear(
        &self,
        proxy: &Proxy,
        pool: &PoolId,
        route: &str,
        by: String,
    ) -> Result<&'static str, WriteError> {
        match &self.persistence {
            Persistence::Kubernetes(client) if has_balancer_pool(pool) => {
                check_member(proxy, pool, route)?;
                tracing::info!(pool = %pool, member = route, by, "balancer-manager override removed from spec.members");
                patch_overrides(client.clone(), pool, route, None).await?;
                Ok("removed from the BalancerPool's spec.members")
            }
            _ => {
                let gone = proxy.clear_change(pool, route).map_err(|e| refusal(e, pool, route))?;
                tracing::info!(pool = %pool, member = route, by, cleared = ?gone.set, restored = ?gone.file, "balancer-manager override cleared");
                Ok("cleared: the file's values apply again")
            }
        }
    }
}

/// Whether the pool is a BalancerPool object, where changes are kept in `spec.members` (pools
/// made from Ingresses and HTTPRoutes are not).
fn has_balancer_pool(pool: &PoolId) -> bool {
    crate::controller::ingress::ingress_of(pool).is_none() && !crate::controller::gateway::is_route_pool(pool)
}

fn refusal(e: ChangeError, pool: &PoolId, route: &str) -> WriteError {
    match e {
        ChangeError::Invalid(f) => WriteError::Invalid(f.to_string()),
        ChangeError::NoPool => WriteError::NotFound(format!("no pool {pool}")),
        ChangeError::NoMember => WriteError::NotFound(format!("no member with route {route} in pool {pool}")),
        ChangeError::NoOverride => WriteError::NotFound(format!("member {route} of pool {pool} has no override")),
    }
}

fn check_member(proxy: &Proxy, pool: &PoolId, route: &str) -> Result<(), WriteError> {
    match proxy.snapshot().table.pool(pool) {
        None => Err(refusal(ChangeError::NoPool, pool, route)),
        Some(p) if p.member(route).is_none() => Err(refusal(ChangeError::NoMember, pool, route)),
        Some(_) => Ok(()),
    }
}

/// Writes the change into `spec.members` (`None`: removes the route's entry) with optimistic
/// concurrency (one retry on conflict).
async fn patch_overrides(
    client: kube::Client,
    pool: &PoolId,
    route: &str,
    change: Option<MemberChange>,
) -> Result<(), WriteError> {
    let api: Api<BalancerPool> = Api::namespaced(client, &pool.namespace);
    for attempt in 0..2 {
        let bp = api.get(&pool.name).await.map_err(|e| WriteError::Api(e.to_string()))?;
        let mut members = bp.spec.members.clone();
        match (change, members.iter_mut().find(|o| o.route == route)) {
            (None, None) => {
                return Err(WriteError::NotFound(format!("{pool} has no spec.members entry for {route}")));
            }
            (None, Some(_)) => members.retain(|o| o.route != route),
            (Some(change), Some(o)) => {
                o.load_factor = change.load_factor.or(o.load_factor);
                o.lb_set = change.lb_set.or(o.lb_set);
                o.status = change.status.or(o.status);
            }
            (Some(change), None) => members.push(MemberOverride {
                route: route.to_owned(),
                load_factor: change.load_factor,
                status: change.status,
                lb_set: change.lb_set,
            }),
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": bp.metadata.resource_version},
            "spec": {"members": members},
        });
        match api.patch(&pool.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt == 0 => continue,
            Err(e) => return Err(WriteError::Api(e.to_string())),
        }
    }
    Err(WriteError::Api("the pool kept changing; try again".into()))
}

/// One member as the manager shows it. Fields are only ever added (the page and scripts use
/// them); the README documents each.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    route: String,
    address: String,
    status: MemberStatus,
    state: &'static str,
    load_factor: u32,
    lb_set: u32,
    elected: u64,
    /// Apache's `lbstatus`: the request-counting credit (ByRequests, ByBusyness, Heartbeat).
    lbstatus: i64,
    busy: u64,
    bytes_to: u64,
    bytes_from: u64,
    errors: u64,
    /// Whether the member can take traffic as far as its health goes: false while it is in
    /// error (passive) or failing its active checks.
    healthy: bool,
    /// The active checks' verdict: `passing`, `failing`, or `off` (no active checks).
    health_check: &'static str,
    /// The balancer-manager override in effect, if any.
    #[serde(rename = "override")]
    override_: Option<OverrideView>,
    #[serde(flatten)]
    live: MemberFigures,
}

/// An override as the manager shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OverrideView {
    /// The values the manager set.
    set: MemberChange,
    /// The file's values they replace.
    file: MemberChange,
    /// When (RFC 3339).
    made_at: String,
    /// Who: the interface and peer address.
    made_by: String,
}

/// One pool as the manager shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    namespace: String,
    name: String,
    lb_method: &'static str,
    hosts: Vec<String>,
    path_prefix: String,
    sticky_names: Option<[String; 2]>,
    route_cookie: Option<String>,
    /// The overview line: members usable/total, rates, p99, sticky hits, state.
    summary: PoolFigures,
    members: Vec<MemberView>,
}

/// What `GET /balancer-manager/api/pools` returns.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagerView {
    read_only: bool,
    changes_go_to: &'static str,
    /// Seconds behind rates, shares and ratios.
    rate_window_seconds: u64,
    /// Seconds behind the latency percentiles.
    latency_window_seconds: u64,
    /// When this view was made (RFC 3339).
    generated_at: String,
    /// When the live figures were last sampled (RFC 3339; `null` before the first sample).
    sampled_at: Option<String>,
    pools: Vec<PoolView>,
}

fn member_view(
    proxy: &Proxy,
    p: &crate::core::Pool,
    i: usize,
    m: &crate::core::Member,
    live: MemberFigures,
    now: u64,
) -> MemberView {
    use std::sync::atomic::Ordering::Relaxed;
    let rt = &m.runtime;
    let state = m.state_name(now);
    let health_check = match (&p.config.health.active, rt.healthy.load(Relaxed)) {
        (None, _) => "off",
        (Some(_), true) => "passing",
        (Some(_), false) => "failing",
    };
    let override_ = proxy.override_of(&p.config.id, m.route()).map(|o| OverrideView {
        set: o.set,
        file: o.file,
        made_at: humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(o.made_at_unix_ms),
        )
        .to_string(),
        made_by: o.made_by,
    });
    MemberView {
        route: m.route().to_owned(),
        address: m.config.address.to_string(),
        status: m.config.status,
        state,
        load_factor: m.config.load_factor,
        lb_set: m.config.lb_set,
        elected: rt.elected.load(Relaxed),
        lbstatus: p.lbstatus(i),
        busy: rt.busy.load(Relaxed),
        bytes_to: rt.bytes_to.load(Relaxed),
        bytes_from: rt.bytes_from.load(Relaxed),
        errors: rt.errors.load(Relaxed),
        healthy: !matches!(state, "Error" | "Unhealthy"),
        health_check,
        override_,
        live,
    }
}

/// A view of every pool now, with the live figures `live` sampled.
pub fn view(proxy: &Proxy, manager: &Manager, live: &Live) -> ManagerView {
    let now = Clock.now_ms();
    let snap = proxy.snapshot();
    let pools = snap
        .table
        .pools()
        .iter()
        .map(|p| {
            let (figures, summary) = live.figures(p, now);
            PoolView {
                namespace: p.config.id.namespace.clone(),
                name: p.config.id.name.clone(),
                lb_method: p.lb_name(),
                hosts: p
                    .config
                    .hosts
                    .iter()
                    .map(|h| match h {
                        crate::core::config::HostMatch::Exact(e) => e.clone(),
                        crate::core::config::HostMatch::Wildcard(w) => format!("*{w}"),
                    })
                    .collect(),
                path_prefix: p.config.path_prefix.clone(),
                sticky_names: p.config.sticky.as_ref().map(|s| [s.cookie_name.clone(), s.param_name.clone()]),
                route_cookie: p
                    .config
                    .sticky
                    .as_ref()
                    .and_then(|s| s.cookie.as_ref())
                    .map(|c| format!("{} ({:?})", c.name, c.mode)),
                summary,
                members: p
                    .members
                    .iter()
                    .zip(figures)
                    .enumerate()
                    .map(|(i, (m, f))| member_view(proxy, p, i, m, f, now))
                    .collect(),
            }
        })
        .collect();
    ManagerView {
        read_only: !manager.writable(),
        changes_go_to: changes_go_to(manager),
        rate_window_seconds: crate::admin::live::RATE_WINDOW_S,
        latency_window_seconds: crate::admin::live::LATENCY_WINDOW_S,
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        sampled_at: live.sampled_at(),
        pools,
    }
}

fn changes_go_to(manager: &Manager) -> &'static str {
    match manager.persistence {
        Persistence::InMemory => "memory: standalone mode, changes are lost on restart",
        Persistence::Kubernetes(_) => {
            "the BalancerPool's spec.members in Kubernetes: every replica applies them and they survive restarts \
             (pools made from an Ingress or HTTPRoute: this replica's memory, lost on restart)"
        }
    }
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STATUSES: [MemberStatus; 5] =
    [MemberStatus::Ok, MemberStatus::Drain, MemberStatus::Disabled, MemberStatus::HotStandby, MemberStatus::Stopped];

/// Members per pool in the page's no-JavaScript tables; `?from=N` shows the next ones. (A
/// browser takes seconds to lay out a thousand rows of forms; the live view pages by itself.)
pub const PAGE_MEMBERS: usize = 100;

/// The HTML page; `notice` is a message to show on top (already plain text). It works without
/// JavaScript (a form per member, [`PAGE_MEMBERS`] members per pool from `from`); `manager.js`,
/// served beside it, turns it into the live view built on the JSON API.
pub fn page(proxy: &Proxy, manager: &Manager, live: &Live, notice: Option<&str>, from: usize) -> String {
    let v = view(proxy, manager, live);
    // One nonce for the page: every form on it carries the same.
    let nonce = if v.read_only { String::new() } else { manager.issue_nonce() };
    let mut h = String::with_capacity(8192);
    h.push_str("<!doctype html><html lang=en><head><meta charset=utf-8><title>routeid balancer-manager</title>");
    h.push_str("<meta name=viewport content=\"width=device-width, initial-scale=1\">");
    h.push_str("<link rel=stylesheet href=/balancer-manager/static/manager.css>");
    h.push_str("<script src=/balancer-manager/static/manager.js defer></script></head>");
    let _ = write!(h, "<body data-read-only={}><h1>routeid balancer-manager</h1>", v.read_only);
    if let Some(n) = notice {
        let _ = write!(h, "<p class=notice id=notice>{}</p>", esc(n));
    }
    let _ = write!(h, "<p id=persistence>Changes go to {}.</p>", esc(v.changes_go_to));
    if v.read_only {
        h.push_str("<p id=readonly class=notice>Read-only: start routeid with <code>--manager-token</code> (or <code>ROUTEID_MANAGER_TOKEN</code>) to change members.</p>");
    }
    h.push_str("<div id=live></div><div id=static>");
    overview_html(&mut h, &v);
    for p in &v.pools {
        pool_html(&mut h, p, &nonce, v.read_only, from);
    }
    h.push_str(
        "</div><p><a href=/balancer-manager/api/pools>JSON</a> · <a href=/metrics>metrics</a></p></body></html>",
    );
    h
}

fn overview_html(h: &mut String, v: &ManagerView) {
    h.push_str(
        "<table class=overview><tr><th>Pool<th>Members usable<th>Req/s<th>5xx<th>p99<th>Sticky hits<th>State</tr>",
    );
    let pct = |r: Option<f64>| r.map_or("–".to_owned(), |r| format!("{:.1}%", r * 100.0));
    for p in &v.pools {
        let s = &p.summary;
        let _ = write!(
            h,
            "<tr><td>{}/{}<td>{}/{}<td>{:.1}<td>{}<td>{}<td>{}<td class={}>{}</tr>",
            esc(&p.namespace),
            esc(&p.name),
            s.members_usable,
            s.members,
            s.requests_per_second,
            pct(s.five_xx_ratio),
            s.p99_ms.map_or("–".to_owned(), |ms| format!("{ms:.1} ms")),
            pct(s.sticky_hit_ratio),
            s.state,
            s.state
        );
    }
    h.push_str("</table>");
}

fn pool_html(h: &mut String, p: &PoolView, nonce: &str, read_only: bool, from: usize) {
    let _ = write!(h, "<h2>Pool {}/{}</h2><table class=settings>", esc(&p.namespace), esc(&p.name));
    let _ = write!(h, "<tr><th>LB method<td>{}</tr>", p.lb_method);
    let hosts = if p.hosts.is_empty() { "any".to_owned() } else { p.hosts.join(", ") };
    let _ = write!(h, "<tr><th>Hosts<td>{}</tr><tr><th>Path prefix<td>{}</tr>", esc(&hosts), esc(&p.path_prefix));
    let sticky = p.sticky_names.as_ref().map_or("off".to_owned(), |[a, b]| format!("{a} | {b}"));
    let _ = write!(h, "<tr><th>Sticky session<td>{}</tr>", esc(&sticky));
    let _ = write!(h, "<tr><th>Route cookie<td>{}</tr></table>", esc(p.route_cookie.as_deref().unwrap_or("none")));
    h.push_str("<table class=members><tr><th>Route<th>Address<th>Status<th>State<th>Load factor<th>LB set<th>Elected<th>Busy<th>To<th>From<th>Errors<th>Health<th>Override");
    if !read_only {
        h.push_str("<th>Change");
    }
    h.push_str("</tr>");
    for m in p.members.iter().skip(from).take(PAGE_MEMBERS) {
        let id = format!("{}-{}-{}", p.namespace, p.name, m.route);
        let _ = write!(
            h,
            "<tr id=\"m-{}\"><td>{}<td>{}<td>{:?}<td class={}>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}",
            esc(&id),
            esc(&m.route),
            esc(&m.address),
            m.status,
            m.state,
            m.state,
            m.load_factor,
            m.lb_set,
            m.elected,
            m.busy,
            m.bytes_to,
            m.bytes_from,
            m.errors,
            m.health_check,
            m.override_.as_ref().map_or("none".to_owned(), |o| esc(&format!(
                "{} (file: {}) at {} by {}",
                change_text(&o.set),
                change_text(&o.file),
                o.made_at,
                o.made_by
            )))
        );
        if !read_only {
            let hidden = format!(
                "<input type=hidden name=namespace value=\"{}\"><input type=hidden name=pool value=\"{}\">\
<input type=hidden name=route value=\"{}\"><input type=hidden name=nonce value=\"{}\">",
                esc(&p.namespace),
                esc(&p.name),
                esc(&m.route),
                esc(nonce)
            );
            let _ = write!(
                h,
                "<td><form method=post action=/balancer-manager id=\"f-{}\">{hidden}\
<label>lf <input type=number name=loadFactor min=1 max=100 value={}></label> \
<label>set <input type=number name=lbSet min=0 max=99 value={}></label> <select name=status>",
                esc(&id),
                m.load_factor,
                m.lb_set
            );
            for s in STATUSES {
                let sel = if s == m.status { " selected" } else { "" };
                let _ = write!(h, "<option value={s:?}{sel}>{s:?}</option>");
            }
            h.push_str("</select> <input type=password name=token placeholder=token autocomplete=off> <button type=submit>Apply</button></form>");
            if m.override_.is_some() {
                let _ = write!(
                    h,
                    "<form method=post action=/balancer-manager id=\"c-{}\">{hidden}<input type=hidden name=action value=clear>\
<input type=password name=token placeholder=token autocomplete=off> <button type=submit>Clear override</button></form>",
                    esc(&id)
                );
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    if p.members.len() > PAGE_MEMBERS {
        let shown = p.members.len().min(from.saturating_add(PAGE_MEMBERS));
        let _ =
            write!(h, "<p class=pager>Members {}–{shown} of {}.", from.saturating_add(1).min(shown), p.members.len());
        if from > 0 {
            let _ =
                write!(h, " <a href=\"/balancer-manager?from={}\">‹ previous</a>", from.saturating_sub(PAGE_MEMBERS));
        }
        if shown < p.members.len() {
            let _ = write!(h, " <a href=\"/balancer-manager?from={shown}\">next ›</a>");
        }
        h.push_str("</p>");
    }
}

/// `status Drain, loadFactor 3` for the fields a change sets.
fn change_text(c: &MemberChange) -> String {
    let mut parts = Vec::new();
    if let Some(s) = c.status {
        parts.push(format!("status {s:?}"));
    }
    if let Some(lf) = c.load_factor {
        parts.push(format!("loadFactor {lf}"));
    }
    if let Some(set) = c.lb_set {
        parts.push(format!("lbSet {set}"));
    }
    parts.join(", ")
}

/// Parses `application/x-www-form-urlencoded`.
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        // `+` is a space in forms; then the same %XX decoding as URL parameters.
        let spaced: std::borrow::Cow<'_, [u8]> = if s.contains(&b'+') {
            s.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect::<Vec<u8>>().into()
        } else {
            s.into()
        };
        String::from_utf8_lossy(&crate::core::sticky::percent_decode(&spaced)).into_owned()
    }
    body.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(i) => (decode(&p[..i]), decode(&p[i + 1..])),
            None => (decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_nonces() {
        let m = Manager::new(Some("s3cret".into()), Persistence::InMemory);
        assert!(m.authorize(Some("s3cret")).is_ok());
        assert!(matches!(m.authorize(Some("nope")), Err(WriteError::Unauthorized)));
        assert!(matches!(m.authorize(None), Err(WriteError::Unauthorized)));
        let n = m.issue_nonce();
        assert!(m.take_nonce(&n).is_ok());
        assert!(matches!(m.take_nonce(&n), Err(WriteError::BadNonce)), "a nonce is used once");
        assert!(matches!(m.take_nonce(""), Err(WriteError::BadNonce)));
        let ro = Manager::new(None, Persistence::InMemory);
        assert!(matches!(ro.authorize(Some("s3cret")), Err(WriteError::ReadOnly)));
        assert!(!Manager::new(Some(String::new()), Persistence::InMemory).writable(), "an empty token is no token");
    }

    #[test]
    fn nonces_are_signed_time_limited_and_good_once() {
        let m = Manager::new(Some("s3cret".into()), Persistence::InMemory);
        let now = 1_000_000;
        let n = m.issue_nonce_at(now);
        // Reads store nothing: ten thousand later pages do not push this one out.
        for _ in 0..10_000 {
            m.issue_nonce_at(now);
        }
        assert!(m.used.lock().unwrap().is_empty(), "issuing records nothing");
        assert!(m.take_nonce_at(&n, now + NONCE_TTL_MS - 1).is_ok(), "good until it expires");
        assert!(matches!(m.take_nonce_at(&n, now + 1), Err(WriteError::BadNonce)), "and once");
        let late = m.issue_nonce_at(now);
        assert!(matches!(m.take_nonce_at(&late, now + NONCE_TTL_MS + 1), Err(WriteError::BadNonce)), "expired");
        // Tampering with the expiry or the id breaks the signature.
        let fresh = m.issue_nonce_at(now);
        let (id, rest) = fresh.split_once('.').unwrap();
        let (_, tag) = rest.split_once('.').unwrap();
        let longer = format!("{id}.{}.{tag}", now + 10 * NONCE_TTL_MS);
        assert!(matches!(m.take_nonce_at(&longer, now), Err(WriteError::BadNonce)));
        let other_id = format!("{}.{rest}", "0".repeat(id.len()));
        assert!(matches!(m.take_nonce_at(&other_id, now), Err(WriteError::BadNonce)));
        for junk in ["", ".", "..", "a.b.c", "x.1.zz", "é.1.é"] {
            assert!(matches!(m.take_nonce_at(junk, now), Err(WriteError::BadNonce)), "{junk:?}");
        }
        // Another process (another key) issued it: refused.
        let other = Manager::new(Some("s3cret".into()), Persistence::InMemory);
        assert!(matches!(other.take_nonce_at(&fresh, now), Err(WriteError::BadNonce)));
        assert!(m.take_nonce_at(&fresh, now).is_ok());
    }

    #[test]
    fn used_nonces_are_forgotten_when_they_expire() {
        let m = Manager::new(Some("s3cret".into()), Persistence::InMemory);
        for i in 0..(MAX_USED_NONCES as u64 + 10) {
            let n = m.issue_nonce_at(i);
            assert!(m.take_nonce_at(&n, i).is_ok());
        }
        assert_eq!(m.used.lock().unwrap().len(), MAX_USED_NONCES, "bounded");
        let n = m.issue_nonce_at(2 * NONCE_TTL_MS);
        assert!(m.take_nonce_at(&n, 2 * NONCE_TTL_MS).is_ok());
        assert_eq!(m.used.lock().unwrap().len(), 1, "the expired ones are gone");
    }

    #[test]
    fn forms_and_escaping() {
        let f = form_fields(b"pool=a%2Fb&status=Drain&x=1+2&bad=%zz&flag");
        assert_eq!(f[0], ("pool".into(), "a/b".into()));
        assert_eq!(f[2], ("x".into(), "1 2".into()));
        assert_eq!(f[3], ("bad".into(), "%zz".into()));
        assert_eq!(f[4], ("flag".into(), String::new()));
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
