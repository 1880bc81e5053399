//! The validated pool configuration the proxy runs on.
//!
//! A [`PoolConfig`] cannot hold an invalid value: the proxy never re-checks it. The validation
//! that builds one from a user's spec (every problem at once, each with its field path) lives
//! beside the spec (the `api` module's `validate`); the core knows nothing of the spec's shape.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::names::{CheckMethod, CookieMode, LbMethodName, MemberStatus};
use super::route::Route;

/// Identifies a pool: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId {
    /// Kubernetes namespace (`default` in standalone files without one).
    pub namespace: String,
    /// Pool name.
    pub name: String,
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One validation problem, with the field path it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path from the document root, e.g. `spec.timeouts.connect`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// How a request's host is matched.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Lowercased exact host, without port.
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches one or more labels in front.
    Wildcard(String),
}

/// Validated proxy-cookie settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieConfig {
    /// Cookie name (an RFC 6265 token).
    pub name: String,
    /// Insert / Prefix / Rewrite.
    pub mode: CookieMode,
    /// Strip the proxy cookie before forwarding.
    pub indirect: bool,
    /// `Cache-Control: private` on responses that set it.
    pub nocache: bool,
    /// The attributes appended after `name=value`, precomputed (`; Path=/; HttpOnly`), for a
    /// request that did not come over HTTPS.
    pub attributes: String,
    /// `SameSite=None` is left out for user agents that reject it (`conditionalSameSiteNone`,
    /// with `sameSite: None`).
    pub conditional_same_site_none: bool,
    /// `Expires` this long after the cookie is set (computed when it is set).
    pub expires: Option<Duration>,
    /// The same for a request that came over HTTPS (with `Secure` unless `secure: Never`).
    pub secure_attributes: String,
}

/// Validated stickiness settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StickyConfig {
    /// Cookie name that carries the session (Apache `A` of `A|B`).
    pub cookie_name: String,
    /// URL parameter name that carries the session (Apache `B` of `A|B`).
    pub param_name: String,
    /// Route separator; `None` makes the whole value the route.
    pub separator: Option<u8>,
    /// Read `;name=value` path parameters.
    pub path_parameter: bool,
    /// The proxy route cookie, if any.
    pub cookie: Option<CookieConfig>,
    /// Re-pin to another member when the routed one is unusable.
    pub failover: bool,
    /// A session whose listed member failed gets a new cookie (true), or keeps pointing at its
    /// member (false: ingress-nginx `change-on-failure: false`).
    pub change_on_failure: bool,
    /// Send `X-Balancer-*` headers to the member.
    pub headers_to_member: bool,
    /// Send `X-Balancer-*` headers to the client.
    pub headers_to_client: bool,
}

/// A validated static member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberConfig {
    /// The member's route.
    pub route: Route,
    /// Where it listens.
    pub address: SocketAddr,
    /// Weight 1–100.
    pub load_factor: u32,
    /// Administrative state.
    pub status: MemberStatus,
    /// Apache `lbset`: lower sets first.
    pub lb_set: u32,
}

/// An operator's change to one member (balancer-manager): what to set, `None` keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberChange {
    /// New weight, 1–100.
    #[serde(default)]
    pub load_factor: Option<u32>,
    /// New lbSet, 0–99.
    #[serde(default)]
    pub lb_set: Option<u32>,
    /// New administrative state.
    #[serde(default)]
    pub status: Option<MemberStatus>,
}

impl MemberChange {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(lf) = self.load_factor
            && !(1..=100).contains(&lf)
        {
            return Err(FieldError { path: "loadFactor".into(), reason: format!("{lf} is outside 1–100") });
        }
        if let Some(set) = self.lb_set
            && set > 99
        {
            return Err(FieldError { path: "lbSet".into(), reason: format!("{set} is outside 0–99") });
        }
        if self.load_factor.is_none() && self.lb_set.is_none() && self.status.is_none() {
            return Err(FieldError {
                path: "".into(),
                reason: "nothing to change: give loadFactor, lbSet or status".into(),
            });
        }
        Ok(())
    }

    /// Applies the change to a member's configuration.
    pub fn apply(&self, m: &mut MemberConfig) {
        if let Some(lf) = self.load_factor {
            m.load_factor = lf;
        }
        if let Some(set) = self.lb_set {
            m.lb_set = set;
        }
        if let Some(s) = self.status {
            m.status = s;
        }
    }

    /// Folds a later change into this one.
    pub fn merge(&mut self, later: MemberChange) {
        self.load_factor = later.load_factor.or(self.load_factor);
        self.lb_set = later.lb_set.or(self.lb_set);
        self.status = later.status.or(self.status);
    }
}

/// Validated active health check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActiveCheck {
    /// Request method.
    pub method: CheckMethod,
    /// Path (and query) checked.
    pub path: String,
    /// Time between checks of one member.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive passes that bring a member back.
    pub passes: u32,
    /// Consecutive failures that take a member out.
    pub fails: u32,
    /// Inclusive status ranges that pass.
    pub expect_status: Vec<(u16, u16)>,
    /// A substring the body must contain.
    pub expect_body: Option<String>,
}

impl ActiveCheck {
    /// Whether `status` is one of the expected ones.
    pub fn status_passes(&self, status: u16) -> bool {
        self.expect_status.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// Validated failure handling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Active checks, if configured.
    pub active: Option<ActiveCheck>,
    /// Statuses that put a member in error.
    pub fail_on_status: Vec<u16>,
    /// A response timeout puts the member in error.
    pub fail_on_timeout: bool,
    /// Retry members in error when all are.
    pub force_recovery: bool,
    /// Weight ramp-up window for members that join or recover.
    pub slow_start: Option<Duration>,
}

/// Validated timeouts towards members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Until the response head arrives.
    pub response: Duration,
    /// Idle pooled connection lifetime.
    pub idle: Duration,
}

/// A validated pool: everything the proxy needs, nothing it must check again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// `namespace/name`.
    pub id: PoolId,
    /// Hosts served; empty = any.
    pub hosts: Vec<HostMatch>,
    /// Normalised prefix: starts with `/`, no trailing `/` unless it is `/`. With `path_exact`,
    /// the exact path as written.
    pub path_prefix: String,
    /// Only `path_prefix` itself matches (Ingress `pathType: Exact`).
    pub path_exact: bool,
    /// What the prefix becomes upstream.
    pub rewrite_prefix: Option<String>,
    /// The lb method.
    pub lb_method: LbMethodName,
    /// Stickiness.
    pub sticky: Option<StickyConfig>,
    /// Members in listed order (the order breaks lb ties).
    pub members: Vec<MemberConfig>,
    /// The members are strictly ordered by route, as the controller derives them: a pool then
    /// finds a route by binary search and carries member state over in one merge walk, with
    /// no index to build on each of a large pool's frequent republications.
    pub members_sorted: bool,
    /// How long a failed member stays in error.
    pub retry_after: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Connections open to each member at most; `None`: no cap.
    pub max_connections: Option<u32>,
    /// Health checks and failure handling.
    pub health: HealthConfig,
    /// Certificates named for the pool's hosts; the Secrets are in the pool's namespace.
    pub tls: Vec<TlsEntry>,
    /// Plain-HTTP requests get `308` to the `https://` URL.
    pub https_redirect: bool,
    /// The `Strict-Transport-Security` value added to HTTPS responses.
    pub hsts: Option<String>,
    /// TLS towards the members.
    pub backend_tls: Option<BackendTlsConfig>,
}

/// Validated `backend.tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTlsConfig {
    /// The Secret (pool's namespace) whose `ca.crt` verifies the members; `None` only with
    /// `insecure_skip_verify`.
    pub ca_secret_name: Option<String>,
    /// The name to verify and send as SNI; `None`: the member's IP address.
    pub server_name: Option<String>,
    /// Accept any member certificate.
    pub insecure_skip_verify: bool,
}

/// One validated `frontend.tls` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsEntry {
    /// Hosts served with this certificate (a subset of the pool's hosts).
    pub hosts: Vec<HostMatch>,
    /// The Secret's name, in the pool's namespace.
    pub secret_name: String,
}

/// Default `timeouts.idle`: below the shortest common server keep-alive (Node's 5 s; Tomcat
/// 20 s, nginx 75 s), so the member never closes a connection routeid is about to reuse.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest `backend.maxConnections` (one member address cannot have more ports than this).
pub const MAX_CONNECTIONS: u32 = 65535;

/// Upper bound on attempts per request (bounded retry work per request).
pub const MAX_ATTEMPTS: u32 = 16;
/// Longest accepted route: routes travel in cookies and headers.
pub const MAX_ROUTE_LEN: usize = 253;

/// Whether `s` is an RFC 6265 / RFC 9110 token (cookie and parameter names).
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `s` can be a route: it must survive a cookie value, a header and a URL unescaped.
pub fn is_valid_route(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ROUTE_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:~".contains(&b))
}
