//! The user-facing `BalancerPool` resource: the one schema that both the Kubernetes CRD and the
//! standalone YAML file speak.
//!
//! These types are the *raw* form — what a user writes. They are deliberately permissive (strings
//! for durations and addresses) so that a mistake can be reported with its field path by
//! [`validate`], which turns a spec into the core's validated model the proxy runs on.

pub mod gateway;
pub mod ingress;
pub mod validate;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::core::names::{CheckMethod, CookieMode, CookieSecure, LbMethodName, MemberStatus, SameSite};

/// A sticky load-balanced pool: which requests it serves (`frontend`), which members serve them
/// (`backend`), and how a member is chosen (`lbMethod`, `sticky`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "routeid.io",
    version = "v1alpha1",
    kind = "BalancerPool",
    namespaced,
    status = "BalancerPoolStatus",
    shortname = "bp",
    category = "routeid",
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.memberCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyMembers"}"#,
    printcolumn = r#"{"name":"LB","type":"string","jsonPath":".spec.lbMethod"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BalancerPoolSpec {
    /// Which routeid installation serves this pool; empty means the default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// Which requests this pool serves.
    #[serde(default)]
    pub frontend: Frontend,
    /// Where the members come from.
    pub backend: Backend,
    /// How a member is chosen for a request that carries no usable route.
    #[serde(default)]
    pub lb_method: LbMethodName,
    /// Session stickiness; absent means every request is balanced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Per-route overrides of a member's weight and state (the balancer-manager writes here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberOverride>,
    /// How failures of members are detected and handled.
    #[serde(default)]
    pub health: Health,
    /// Timeouts towards the members.
    #[serde(default)]
    pub timeouts: Timeouts,
}

/// The request side of a pool, like Apache's `ProxyPass "/shop" balancer://shop`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Frontend {
    /// Host names served (exact, or `*.example.com`); empty serves any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path prefix served, matched segment-wise (`/shop` matches `/shop/x`, not `/shopping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// What the prefix becomes upstream (`/shop/cart` → `/cart` with `rewritePrefix: /`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
    /// `Prefix` (default): `pathPrefix` and everything under it; `Exact`: that path only (an
    /// Ingress `pathType: Exact`). An exact path wins over a prefix of the same length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_type: Option<PathType>,
    /// Certificates for this pool's hosts, as an Ingress's `spec.tls`: each names a
    /// `kubernetes.io/tls` Secret in the pool's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<FrontendTls>,
    /// Answer plain-HTTP requests with `308` to the `https://` URL (ingress-nginx `ssl-redirect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    /// Add `Strict-Transport-Security` to HTTPS responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Hsts>,
}

/// How a pool's path is matched, as an Ingress `pathType`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PathType {
    /// Segment-wise prefix: `/shop` matches `/shop` and `/shop/x`, not `/shopping`.
    #[default]
    Prefix,
    /// The path itself only (case-sensitive; a trailing `/` matters).
    Exact,
}

/// One certificate of a pool: the hosts it serves and the Secret that holds it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FrontendTls {
    /// Hosts this certificate serves; each must be one of `frontend.hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// A Secret of type `kubernetes.io/tls` (`tls.crt`, `tls.key`) in the pool's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// HTTP Strict Transport Security (RFC 6797), as ingress-nginx's `hsts-*` settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hsts {
    /// `max-age` in seconds; default 31536000 (one year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
    /// Add `includeSubDomains`.
    #[serde(default)]
    pub include_sub_domains: bool,
    /// Add `preload`.
    #[serde(default)]
    pub preload: bool,
}

/// Where a pool's members come from: a Service's endpoints (controller) or a static list
/// (standalone). Exactly one of the two, which the CRD enforces with a CEL rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(BACKEND_EXACTLY_ONE).message("exactly one of backend.service and backend.members must be set"))]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The Service whose ready endpoints are the members (controller mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// What names a member's route when members come from a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_from: Option<RouteFrom>,
    /// Static members (standalone mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<StaticMember>,
    /// Connections open to each member at most (idle and busy); absent means no cap. At the
    /// cap a request waits for a free connection until its response timeout, then gets 503
    /// (the member is not put in error): protects members that cannot take more connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_connections: Option<u32>,
    /// Speak HTTPS to the members (Tomcat on 8443, a zero-trust cluster without a mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
}

/// TLS towards the members: verified against a CA from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendTls {
    /// A Secret in the pool's namespace whose `ca.crt` holds the CA certificates (PEM) that sign
    /// the members' certificates (cert-manager writes `ca.crt` into its TLS Secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub ca_secret_name: Option<String>,
    /// The name the members' certificates must carry (and the SNI sent); default: the member's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub server_name: Option<String>,
    /// Do not verify the members' certificates (encryption without authentication). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// CEL: a pool's members come from a Service or from a static list, never both, never neither.
const BACKEND_EXACTLY_ONE: &str = "has(self.service) != (has(self.members) && size(self.members) > 0)";

/// CEL: a Go-style duration (`2s`, `1m30s`, `500ms`), the subset of what the validator accepts
/// that `kubectl explain` users expect; the controller still parses and range-checks it. The
/// fields carrying it have a `maxLength`, which keeps the API server's CEL cost estimate small.
const DURATION_RULE: &str = "self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')";
/// The message for [`DURATION_RULE`].
const DURATION_MESSAGE: &str = "must be a duration like 2s, 500ms or 1m30s";

/// A Service reference by name and port (port name or number).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// Service name in the pool's namespace.
    pub name: String,
    /// Port name (`http`) or number (`8080`).
    pub port: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
}

/// Which endpoint field becomes the member's route.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RouteFrom {
    /// The pod name (`targetRef.name`), like a Tomcat `jvmRoute`.
    #[default]
    PodName,
    /// The endpoint's `hostname`.
    Hostname,
    /// The endpoint's address.
    Address,
}

/// A member given by address, as in a standalone file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticMember {
    /// `host:port` with an IP literal (`127.0.0.1:8081`, `[::1]:8081`).
    pub address: String,
    /// The route that names this member in session ids and cookies.
    pub route: String,
    /// Relative weight, 1–100 (Apache `loadfactor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub load_factor: Option<u32>,
    /// Apache `lbset`: lower sets are used first; a higher set only when every member of the
    /// lower sets is unusable. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 99))]
    pub lb_set: Option<u32>,
}

/// Stickiness, with the semantics of Apache `stickysession` and HAProxy `cookie`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sticky {
    /// `[cookie name, URL parameter name]`, or one name for both (Apache `JSESSIONID|jsessionid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The route is what follows the first separator in the session value; `""` makes the whole
    /// value the route. Default `.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// Also read `;name=value` path parameters (Apache `scolonpathdelim`). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_parameter: Option<bool>,
    /// A proxy-managed route cookie (Apache `ROUTEID`, HAProxy `cookie ... insert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<RouteCookie>,
    /// False: a sticky request whose member is unusable gets 503 (Apache `nofailover=On`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<bool>,
    /// When a session's member fails and the request is served by another one: true (default)
    /// gives the session a new route cookie there; false keeps the cookie pointing at its member
    /// while that member is listed, so the session returns to it (ingress-nginx
    /// `session-cookie-change-on-failure: "false"`). A member that leaves the Service always
    /// moves its sessions, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_on_failure: Option<bool>,
    /// Debug headers carrying the `BALANCER_*` values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_headers: Option<DebugHeaders>,
}

/// Where to send the `X-Balancer-*` debug headers; both off by default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DebugHeaders {
    /// Add them to the request forwarded to the member.
    #[serde(default)]
    pub to_member: bool,
    /// Add them to the response sent to the client.
    #[serde(default)]
    pub to_client: bool,
}

/// The proxy's own route cookie.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteCookie {
    /// Cookie name (`ROUTEID`); in Prefix and Rewrite modes it must be the session cookie name.
    #[x_kube(validation = Rule::new("self.matches('^[!#$%&\\'*+.^_`|~0-9A-Za-z-]+$')").message("must be a cookie name (an RFC 6265 token)"))]
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// How the route is carried (HAProxy `insert` / `prefix` / `rewrite`). Default Insert.
    #[serde(default)]
    pub mode: CookieMode,
    /// Remove the proxy cookie before forwarding (HAProxy `indirect`). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    /// `Cache-Control: private` on responses that set it (HAProxy `nocache`). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nocache: Option<bool>,
    /// Cookie `Path`; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Cookie `Domain`; default none (host-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Cookie `Secure`: `Auto` (default) when the request came over TLS or a trusted front
    /// proxy said `https`; `Always`; `Never`. Standalone files may still say `true` / `false`.
    #[serde(default)]
    pub secure: CookieSecure,
    /// Cookie `HttpOnly`; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
    /// Cookie `SameSite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<SameSite>,
    /// Cookie `Max-Age` as a duration (`30m`); absent means a session cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub max_age: Option<String>,
    /// Cookie `Expires`, as a duration from the moment the cookie is set (`48h`): the legacy
    /// form of `maxAge` for old browsers (ingress-nginx `session-cookie-expires`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub expires: Option<String>,
    /// With `sameSite: None`, leave the attribute out for the user agents known to reject such
    /// cookies (Chrome 51–66, iOS 12, Safari on macOS 10.14), as ingress-nginx
    /// `session-cookie-conditional-samesite-none` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditional_same_site_none: Option<bool>,
}

/// An administrative state and weight for one route, kept across pod restarts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberOverride {
    /// The route this override applies to.
    pub route: String,
    /// Relative weight, 1–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub load_factor: Option<u32>,
    /// Administrative state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MemberStatus>,
    /// Apache `lbset` (0–99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 99))]
    pub lb_set: Option<u32>,
}

/// Failure handling.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Periodic checks of every member (Apache mod_proxy_hcheck, HAProxy `check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveHealth>,
    /// What a failed request does to a member.
    #[serde(default)]
    pub passive: PassiveHealth,
    /// A member that joins or recovers ramps its weight up over this duration (HAProxy
    /// `slowstart`), instead of receiving its full share at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub slow_start: Option<String>,
}

/// Active health checks.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveHealth {
    /// `GET` (default), `HEAD` or `OPTIONS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<CheckMethod>,
    /// Path checked (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between two checks of a member (default 5s); checks are spread over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub interval: Option<String>,
    /// Time a check may take (default 2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub timeout: Option<String>,
    /// Consecutive passing checks that bring a failed member back (HAProxy `rise`, default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub passes: Option<u32>,
    /// Consecutive failing checks that take a member out (HAProxy `fall`, default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub fails: Option<u32>,
    /// Passing statuses, as ranges: `"200-399"` (default), `"200,204,300-302"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<String>,
    /// A substring the response body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
}

/// Passive failure detection (Apache `retry`, HAProxy `redispatch`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassiveHealth {
    /// How long a member that refused a connection stays in error (`60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub retry_after: Option<String>,
    /// Attempts per request, the first included (default 3, at most 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub max_attempts: Option<u32>,
    /// Response statuses that put the member in error (Apache `failonstatus`); the response
    /// itself still goes to the client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fail_on_status: Vec<u16>,
    /// A response timeout puts the member in error (Apache `failontimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on_timeout: Option<bool>,
    /// When every member is in error, try them again instead of answering 503 (Apache
    /// `forcerecovery`, default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_recovery: Option<bool>,
}

/// Timeouts towards members, as durations (`2s`, `1m30s`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// TCP connect (default 2s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub connect: Option<String>,
    /// Until the member's response headers arrive (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub response: Option<String>,
    /// How long an unused pooled connection to a member is kept (default 4s): shorter than the
    /// members' own keep-alive timeouts (Node 5s, Tomcat 20s, nginx 75s), so routeid closes an
    /// idle connection before the member does rather than race the member's close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    #[schemars(length(max = 64))]
    pub idle: Option<String>,
}

/// What the controller reports back.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BalancerPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_count: Option<u32>,
    /// Number of members that can take new sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_members: Option<u32>,
    /// The members as last derived.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatusEntry>,
    /// `Accepted`, `Ready`, `Degraded`, `Conflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One member as reported in status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatusEntry {
    /// The member's route.
    pub route: String,
    /// `ip:port`.
    pub address: String,
    /// Whether it takes new sessions.
    pub ready: bool,
    /// Its state (`Ok`, `Drain`, `Error`, ...).
    pub state: String,
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    #[serde(default)]
    pub reason: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time of the last status change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// The CRD as YAML, exactly what `routeid crd` prints and `crds/balancerpool.yaml` holds.
/// Multi-line descriptions are `|-` blocks; long single-line ones stay on one line (no folded
/// `>` blocks), so a change to one doc comment changes its own lines of the committed file.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    serde_saphyr::to_string_with_options(
        &BalancerPool::crd(),
        serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX },
    )
}
