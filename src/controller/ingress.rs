//! Ingress → pools: a second front door to the same core (one pool per rule host and path).
//!
//! The translation is pure ([`translate`]): an Ingress and its annotations become
//! `BalancerPool` specs, the raw form the index already derives and validates, so Service port
//! resolution, EndpointSlices, member overrides, validation, the conflict rule (older object
//! wins) and publication are shared with BalancerPools, not repeated. The pools it makes have
//! ids no Kubernetes object can have (`ingress:<name>:<rule>-<path>`), so they never collide with
//! a BalancerPool's.
//!
//! [`Ingresses`] keeps the Ingresses and IngressClasses in scope and feeds the index: an Ingress
//! whose annotations are invalid is refused and its previous pools keep serving; one that stops
//! being ours (class changed, deleted) takes its pools away.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::index::Index;
use crate::api::ingress::{
    CONTROLLER_NAME, DEFAULT_CLASS_ANNOTATION, LEGACY_CLASS_ANNOTATION, NGINX_PREFIX, ROUTEID_PREFIX, Support,
    support_of,
};
use crate::api::validate::validate_service_backed;
use crate::api::{
    ActiveHealth, BalancerPool, BalancerPoolSpec, CookieMode, CookieSecure, Frontend, FrontendTls, LbMethodName,
    PathType, RouteCookie, RouteFrom, SameSite, ServiceRef, Sticky,
};
use crate::core::config::{FieldError, PoolId};

/// `(namespace, name)` of an Ingress.
pub type IngressKey = (String, String);

/// Which Ingresses this installation serves.
#[derive(Clone, Debug)]
pub struct IngressFilter {
    /// The IngressClass name (`--ingress-class`).
    pub class: String,
    /// Also serve Ingresses without a class when our class is the cluster default
    /// (`--watch-ingress-without-class`).
    pub watch_without_class: bool,
}

/// Whether `ing` is served: its `ingressClassName` names our class and that IngressClass names
/// routeid's controller; or its legacy `kubernetes.io/ingress.class` annotation names our class;
/// or it has no class, `watch_without_class` is on and our class is the default one.
pub fn serves(filter: &IngressFilter, ing: &Ingress, classes: &HashMap<String, Arc<IngressClass>>) -> bool {
    let ours = classes
        .get(&filter.class)
        .filter(|c| c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER_NAME));
    let class_name = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref());
    let legacy = ing.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION));
    match (class_name, legacy) {
        (Some(c), _) => c == filter.class && ours.is_some(),
        (None, Some(l)) => *l == filter.class,
        (None, None) => {
            filter.watch_without_class
                && ours.is_some_and(|c| {
                    c.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).map(String::as_str)
                        == Some("true")
                })
        }
    }
}

/// What an Ingress becomes.
#[derive(Clone, Debug, Default)]
pub struct Translated {
    /// One pool per rule host and path, then the default backend; ids unique per Ingress.
    pub pools: Vec<BalancerPool>,
    /// `nginx.ingress.kubernetes.io/*` and `routeid.io/*` annotations routeid does not read.
    pub unsupported: Vec<String>,
    /// ingress-nginx annotations that are valid but do nothing on this Ingress, each with why
    /// (e.g. `session-cookie-name` without `affinity: cookie`): reported like the unsupported ones.
    pub no_effect: Vec<String>,
    /// Parts of `spec.tls` that cannot be served (no Secret named, no host to serve it for).
    pub notes: Vec<String>,
}

/// What `status.loadBalancer.ingress` of a served Ingress says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Publish {
    /// Nothing is written.
    #[default]
    Nothing,
    /// The load-balancer addresses of this Service (`--publish-service NS/NAME`).
    Service(String, String),
    /// These addresses (`--publish-status-address`): IPs become `ip`, names `hostname`.
    Addresses(Vec<String>),
}

/// The id of pool `n` of Ingress `name`: a colon is not allowed in Kubernetes names, so it
/// cannot be a BalancerPool's.
pub fn pool_name(ingress: &str, n: &str) -> String {
    format!("ingress:{ingress}:{n}")
}

/// Whether a pool id was made from an Ingress, and which.
pub fn ingress_of(id: &PoolId) -> Option<IngressKey> {
    let rest = id.name.strip_prefix("ingress:")?;
    let (name, _) = rest.rsplit_once(':')?;
    Some((id.namespace.clone(), name.to_owned()))
}

/// Annotations, read with their field path for errors.
struct Annotations<'a> {
    map: &'a BTreeMap<String, String>,
    problems: Vec<FieldError>,
    /// ingress-nginx annotations that are valid but do nothing here, each with why.
    no_effect: Vec<String>,
}

impl<'a> Annotations<'a> {
    fn raw(&self, prefix: &str, name: &str) -> Option<&'a str> {
        self.map.get(&format!("{prefix}{name}")).map(|v| v.trim())
    }

    fn bad(&mut self, prefix: &str, name: &str, value: &str, why: &str) {
        self.problems.push(FieldError {
            path: format!("metadata.annotations[{prefix}{name}]"),
            reason: format!("{value:?} {why}"),
        });
    }

    /// Refuses each of `names` that is set: it would do nothing without what `why` names.
    fn needs(&mut self, prefix: &str, names: &[&str], why: &str) {
        for n in names {
            if let Some(v) = self.raw(prefix, n) {
                self.bad(prefix, n, v, why);
            }
        }
    }

    /// Reports each of `names` that is set as having no effect (ingress-nginx accepts them too).
    fn ignored(&mut self, names: &[&str], why: &str) {
        for n in names {
            if self.nginx(n).is_some() {
                self.no_effect.push(format!("{NGINX_PREFIX}{n} (no effect: {why})"));
            }
        }
    }

    fn nginx(&self, name: &str) -> Option<&'a str> {
        self.raw(NGINX_PREFIX, name)
    }

    fn routeid(&self, name: &str) -> Option<&'a str> {
        self.raw(ROUTEID_PREFIX, name)
    }

    fn bool(&mut self, prefix: &str, name: &str) -> Option<bool> {
        let v = self.raw(prefix, name)?;
        // The spellings Go's strconv.ParseBool accepts, as ingress-nginx parses its annotations.
        match v {
            "1" | "t" | "T" | "true" | "True" | "TRUE" => Some(true),
            "0" | "f" | "F" | "false" | "False" | "FALSE" => Some(false),
            _ => {
                self.bad(prefix, name, v, "is not a boolean (true, false, 1, 0, t, f)");
                None
            }
        }
    }

    /// Whole seconds (ingress-nginx's unit), optionally written with an `s`.
    fn seconds(&mut self, name: &str) -> Option<u64> {
        let v = self.nginx(name)?;
        match v.strip_suffix('s').unwrap_or(v).parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.bad(NGINX_PREFIX, name, v, "is not a number of seconds");
                None
            }
        }
    }

    fn one_of<T: Copy>(&mut self, prefix: &str, name: &str, choices: &[(&str, T)]) -> Option<T> {
        self.choose(prefix, name, choices, false)
    }

    /// [`Self::one_of`], ignoring ASCII case (for values browsers read case-insensitively).
    fn one_of_any_case<T: Copy>(&mut self, prefix: &str, name: &str, choices: &[(&str, T)]) -> Option<T> {
        self.choose(prefix, name, choices, true)
    }

    fn choose<T: Copy>(&mut self, prefix: &str, name: &str, choices: &[(&str, T)], any_case: bool) -> Option<T> {
        let v = self.raw(prefix, name)?;
        match choices.iter().find(|(n, _)| *n == v || (any_case && n.eq_ignore_ascii_case(v))) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.bad(prefix, name, v, &format!("is not one of {}", names.join(", ")));
                None
            }
        }
    }
}

/// The settings every pool of one Ingress shares, from its annotations.
#[derive(Clone, Debug, Default)]
struct Shared {
    sticky: Option<Sticky>,
    /// `session-cookie-path` given: the cookie path of every pool; otherwise each pool's path.
    cookie_path_given: bool,
    lb_method: LbMethodName,
    route_from: Option<RouteFrom>,
    rewrite: Option<String>,
    /// `rewrite-target: /$2`: every path is `<prefix>(/|$)(.*)`, served as `<prefix>` stripped.
    strip_capture: bool,
    template: BalancerPoolSpec,
}

/// The one capture-group rewrite routeid reads (with paths ending in [`STRIP_PATH_TAIL`]).
const STRIP_TARGET: &str = "/$2";
/// The path tail of ingress-nginx's prefix-strip idiom: `/app(/|$)(.*)`.
const STRIP_PATH_TAIL: &str = "(/|$)(.*)";

/// The literal prefix of a `<prefix>(/|$)(.*)` path: with `rewrite-target: /$2` it means exactly
/// a segment-wise prefix match stripped to `/` (`/app` → `/`, `/app/cart` → `/cart`, not `/apps`).
/// Any other regex is refused: routeid does not match regular expressions.
fn strip_prefix_of(path: &str) -> Result<&str, String> {
    let prefix = path.strip_suffix(STRIP_PATH_TAIL).ok_or_else(|| {
        format!("{path:?}: with rewrite-target \"/$2\" every path must be written `/prefix(/|$)(.*)`")
    })?;
    if prefix.contains(|c: char| "\\.*+?()[]{}|^$".contains(c)) || (!prefix.is_empty() && !prefix.starts_with('/')) {
        return Err(format!(
            "{path:?}: the part before `(/|$)(.*)` must be a plain path (routeid does not match regular expressions)"
        ));
    }
    Ok(if prefix.is_empty() { "/" } else { prefix })
}

fn shared(a: &mut Annotations<'_>) -> Shared {
    let mut out = Shared::default();
    (out.sticky, out.cookie_path_given) = sticky(a);
    out.lb_method = lb_method(a);
    out.route_from = a.one_of(
        ROUTEID_PREFIX,
        "route-from",
        &[("PodName", RouteFrom::PodName), ("Hostname", RouteFrom::Hostname), ("Address", RouteFrom::Address)],
    );
    if let Some(r) = a.nginx("rewrite-target") {
        if r == STRIP_TARGET {
            // ingress-nginx's prefix strip, with paths written `<prefix>(/|$)(.*)`.
            out.strip_capture = true;
            out.rewrite = Some("/".to_owned());
        } else if r.contains('$') {
            a.bad(
                NGINX_PREFIX,
                "rewrite-target",
                r,
                "uses capture groups: routeid reads only the prefix strip, path `/app(/|$)(.*)` with \
                 rewrite-target `/$2`; write that, or path `/app` (pathType Prefix) with rewrite-target `/`",
            );
        } else {
            out.rewrite = Some(r.to_owned());
        }
    }
    let t = &mut out.template;
    t.timeouts.connect = a.seconds("proxy-connect-timeout").map(|s| format!("{s}s"));
    t.timeouts.response = a.seconds("proxy-read-timeout").map(|s| format!("{s}s"));
    if let Some(n) = a.nginx("proxy-next-upstream-tries") {
        match n.parse::<u32>() {
            Ok(0) => t.health.passive.max_attempts = Some(crate::core::config::MAX_ATTEMPTS),
            Ok(n) => t.health.passive.max_attempts = Some(n.min(crate::core::config::MAX_ATTEMPTS)),
            Err(_) => a.bad(NGINX_PREFIX, "proxy-next-upstream-tries", n, "is not a number"),
        }
    }
    routeid_health(a, t);
    out
}

/// Stickiness from `affinity` and `routeid.io/sticky-names`, and whether the cookie path was
/// given (otherwise each pool's path is its cookie path).
fn sticky(a: &mut Annotations<'_>) -> (Option<Sticky>, bool) {
    let cookie = match a.nginx("affinity") {
        None => false,
        Some("cookie") => true,
        Some(v) => {
            a.bad(NGINX_PREFIX, "affinity", v, "is not supported: only \"cookie\"");
            false
        }
    };
    // Both modes keep a session on its pod while the pod is listed (see the README).
    let _mode =
        a.one_of(NGINX_PREFIX, "affinity-mode", &[("balanced", ()), ("persistent", ()), ("persistent-drainable", ())]);
    let names: Option<Vec<String>> =
        a.routeid("sticky-names").map(|v| v.split('|').map(|n| n.trim().to_owned()).collect());
    let cookie_mode = a.one_of(
        ROUTEID_PREFIX,
        "cookie-mode",
        &[("Insert", CookieMode::Insert), ("Prefix", CookieMode::Prefix), ("Rewrite", CookieMode::Rewrite)],
    );
    if !cookie {
        not_sticky_by_cookie(a, names.is_some());
    }
    if !cookie && names.is_none() {
        return (None, false);
    }
    let mut sticky = Sticky { names: names.clone().unwrap_or_default(), ..Default::default() };
    if names.is_none() {
        // No application session id: the route cookie is the only source, its value the route.
        sticky.names = vec![a.nginx("session-cookie-name").unwrap_or("INGRESSCOOKIE").to_owned()];
    }
    sticky.separator = a.routeid("sticky-separator").map(str::to_owned);
    sticky.failover = a.bool(ROUTEID_PREFIX, "failover");
    sticky.change_on_failure = Some(a.bool(NGINX_PREFIX, "session-cookie-change-on-failure").unwrap_or(false));
    let mut path_given = false;
    if cookie {
        let mode = cookie_mode.unwrap_or_default();
        let default_name = match (mode, &names) {
            (CookieMode::Prefix | CookieMode::Rewrite, Some(n)) => n.first().cloned().unwrap_or_default(),
            _ => "INGRESSCOOKIE".to_owned(),
        };
        let c = route_cookie(a, mode, default_name);
        path_given = c.path.is_some();
        sticky.cookie = Some(c);
    }
    (Some(sticky), path_given)
}

/// Without `affinity: cookie` the cookie annotations do nothing: ingress-nginx's are reported,
/// routeid's own refused (see the README).
fn not_sticky_by_cookie(a: &mut Annotations<'_>, sticky_names: bool) {
    const WHY: &str = "needs nginx.ingress.kubernetes.io/affinity: cookie";
    a.needs(ROUTEID_PREFIX, &["cookie-mode"], WHY);
    a.ignored(
        &[
            "affinity-mode",
            "session-cookie-name",
            "session-cookie-path",
            "session-cookie-domain",
            "session-cookie-expires",
            "session-cookie-max-age",
            "session-cookie-secure",
            "session-cookie-samesite",
            "session-cookie-conditional-samesite-none",
        ],
        "affinity is not cookie",
    );
    if !sticky_names {
        a.needs(
            ROUTEID_PREFIX,
            &["sticky-separator", "failover"],
            "needs nginx.ingress.kubernetes.io/affinity: cookie or routeid.io/sticky-names",
        );
        a.ignored(&["session-cookie-change-on-failure"], "affinity is not cookie");
    }
}

/// The route cookie with the attributes the `session-cookie-*` annotations ask for.
fn route_cookie(a: &mut Annotations<'_>, mode: CookieMode, default_name: String) -> RouteCookie {
    let same_site = a.one_of_any_case(
        NGINX_PREFIX,
        "session-cookie-samesite",
        &[("None", SameSite::None), ("Lax", SameSite::Lax), ("Strict", SameSite::Strict)],
    );
    // Unset: `Secure` over HTTPS, as ingress-nginx does.
    let secure = match a.bool(NGINX_PREFIX, "session-cookie-secure") {
        None => CookieSecure::Auto,
        Some(true) => CookieSecure::Always,
        Some(false) => CookieSecure::Never,
    };
    let max_age = a.seconds("session-cookie-max-age").map(|s| format!("{s}s"));
    let expires = a.seconds("session-cookie-expires").map(|s| format!("{s}s"));
    RouteCookie {
        name: a.nginx("session-cookie-name").map_or(default_name, str::to_owned),
        mode,
        path: a.nginx("session-cookie-path").map(str::to_owned),
        domain: a.nginx("session-cookie-domain").map(str::to_owned),
        secure,
        http_only: Some(true),
        same_site,
        max_age: max_age.filter(|m| m != "0s"),
        expires: expires.filter(|m| m != "0s"),
        conditional_same_site_none: a.bool(NGINX_PREFIX, "session-cookie-conditional-samesite-none"),
        ..Default::default()
    }
}

/// `load-balance`, overridden by `routeid.io/lb-method`.
fn lb_method(a: &mut Annotations<'_>) -> LbMethodName {
    let nginx = a.one_of(
        NGINX_PREFIX,
        "load-balance",
        &[("round_robin", LbMethodName::ByRequests), ("ewma", LbMethodName::LeastLatency)],
    );
    let ours = a.one_of(
        ROUTEID_PREFIX,
        "lb-method",
        &[
            ("ByRequests", LbMethodName::ByRequests),
            ("ByTraffic", LbMethodName::ByTraffic),
            ("ByBusyness", LbMethodName::ByBusyness),
            ("Heartbeat", LbMethodName::Heartbeat),
            ("LeastLatency", LbMethodName::LeastLatency),
        ],
    );
    ours.or(nginx).unwrap_or_default()
}

fn routeid_health(a: &mut Annotations<'_>, t: &mut BalancerPoolSpec) {
    if let Some(path) = a.routeid("health-path") {
        t.health.active = Some(ActiveHealth {
            path: Some(path.to_owned()),
            interval: a.routeid("health-interval").map(str::to_owned),
            timeout: a.routeid("health-timeout").map(str::to_owned),
            expect_status: a.routeid("health-expect-status").map(str::to_owned),
            ..Default::default()
        });
    } else {
        a.needs(
            ROUTEID_PREFIX,
            &["health-interval", "health-timeout", "health-expect-status"],
            "needs routeid.io/health-path (active checks are off without it)",
        );
    }
    t.health.passive.retry_after = a.routeid("retry-after").map(str::to_owned);
    if let Some(v) = a.routeid("fail-on-status") {
        for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match s.parse::<u16>() {
                Ok(n) => t.health.passive.fail_on_status.push(n),
                Err(_) => a.bad(ROUTEID_PREFIX, "fail-on-status", v, "is not a comma-separated list of statuses"),
            }
        }
    }
    if let Some(v) = a.routeid("max-connections") {
        match v.parse::<u32>() {
            Ok(n) => t.backend.max_connections = Some(n),
            Err(_) => a.bad(ROUTEID_PREFIX, "max-connections", v, "is not a number"),
        }
    }
}

/// The Service behind an Ingress backend, or the problem with it.
fn service_ref(b: &IngressBackend, field: &str) -> Result<ServiceRef, FieldError> {
    let bad = |reason: &str| FieldError { path: field.to_owned(), reason: reason.to_owned() };
    let svc = b.service.as_ref().ok_or_else(|| bad("only Service backends are supported (not resource backends)"))?;
    let port = svc.port.as_ref().ok_or_else(|| bad("service.port is required"))?;
    let port = match (&port.name, port.number) {
        (Some(n), _) if !n.is_empty() => IntOrString::String(n.clone()),
        (_, Some(n)) => IntOrString::Int(n),
        _ => return Err(bad("service.port needs a name or a number")),
    };
    Ok(ServiceRef { name: svc.name.clone(), port })
}

/// Translates an Ingress into pool specs (see the module docs). `class` is set on every pool so
/// the index serves them. Invalid annotation values and unusable backends refuse the whole
/// Ingress, with every problem named. Each pool is also run through the core validator here (all
/// but its members), so a value only the core knows is wrong is refused now, before any
/// `Accepted`, under the annotation that set it rather than a BalancerPool field path.
pub fn translate(ing: &Ingress, class: &str) -> Result<Translated, Vec<FieldError>> {
    let empty = BTreeMap::new();
    let map = ing.metadata.annotations.as_ref().unwrap_or(&empty);
    let mut a = Annotations { map, problems: Vec::new(), no_effect: Vec::new() };
    let shared = shared(&mut a);
    let no_effect = std::mem::take(&mut a.no_effect);
    let mut out = Translated { unsupported: unsupported_annotations(ing), no_effect, ..Default::default() };
    // ingress-nginx redirects plain HTTP to HTTPS for hosts with TLS unless told not to, and for
    // every host with force-ssl-redirect.
    let redirect = Redirect {
        tls_hosts: a.bool(NGINX_PREFIX, "ssl-redirect").unwrap_or(true),
        always: a.bool(NGINX_PREFIX, "force-ssl-redirect").unwrap_or(false),
    };
    let spec = ing.spec.clone().unwrap_or_default();
    let tls = spec.tls.clone().unwrap_or_default();
    out.notes = tls_notes(&spec);
    let name = ing.metadata.name.clone().unwrap_or_default();
    let mut problems = std::mem::take(&mut a.problems);
    let mut wanted: Vec<Place<'_>> = Vec::new();
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule.host.as_deref().filter(|h| !h.is_empty());
        for (j, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let mut path = p.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
            if shared.strip_capture {
                match strip_prefix_of(path) {
                    Ok(prefix) => path = prefix,
                    Err(reason) => {
                        problems.push(FieldError { path: format!("{field}.path"), reason });
                        continue;
                    }
                }
            }
            let exact = match p.path_type.as_str() {
                // A capture-group path is a regex in ingress-nginx, whatever its pathType.
                "Exact" => !shared.strip_capture,
                "Prefix" | "ImplementationSpecific" | "" => false,
                other => {
                    problems.push(FieldError {
                        path: format!("{field}.pathType"),
                        reason: format!("{other:?} is not a path type"),
                    });
                    continue;
                }
            };
            let (n, field) = (format!("{i}-{j}"), format!("{field}.backend"));
            wanted.push(Place { n, host, path, exact, backend: &p.backend, field });
        }
    }
    if let Some(b) = &spec.default_backend {
        let (n, field) = ("default".to_owned(), "spec.defaultBackend".to_owned());
        wanted.push(Place { n, host: None, path: "/", exact: false, backend: b, field });
    }
    for place in wanted {
        match service_ref(place.backend, &place.field) {
            Ok(service) => {
                let mut p = pool(ing, &name, class, &shared, service, &place);
                p.spec.frontend.tls = certificates(&tls, place.host);
                p.spec.frontend.https_redirect =
                    Some(redirect.always || (redirect.tls_hosts && !p.spec.frontend.tls.is_empty()));
                if let Err(errors) = validate_service_backed(super::index::pool_id(&p), &p.spec, Vec::new()) {
                    let at = place.field.strip_suffix(".backend").unwrap_or(&place.field);
                    for e in errors.into_iter().map(|e| blame(map, at, e)) {
                        if !problems.contains(&e) {
                            problems.push(e);
                        }
                    }
                }
                out.pools.push(p);
            }
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

/// The `nginx.ingress.kubernetes.io/*` and `routeid.io/*` annotations of `ing` that routeid does
/// not read, whether or not the Ingress is accepted.
pub fn unsupported_annotations(ing: &Ingress) -> Vec<String> {
    let keys = ing.metadata.annotations.iter().flat_map(|m| m.keys());
    keys.filter(|k| support_of(k) == Some(Support::Unsupported)).cloned().collect()
}

/// Which annotations set a pool field, first the one that decides it; so that a value the core
/// validator refuses is reported under the annotation the user wrote.
const BLAME: &[(&str, &[&str])] = &[
    ("spec.sticky.cookie.name", &["nginx.ingress.kubernetes.io/session-cookie-name", "routeid.io/sticky-names"]),
    ("spec.sticky.cookie.path", &["nginx.ingress.kubernetes.io/session-cookie-path"]),
    ("spec.sticky.cookie.domain", &["nginx.ingress.kubernetes.io/session-cookie-domain"]),
    ("spec.sticky.cookie.expires", &["nginx.ingress.kubernetes.io/session-cookie-expires"]),
    ("spec.sticky.cookie.maxAge", &["nginx.ingress.kubernetes.io/session-cookie-max-age"]),
    (
        "spec.sticky.cookie.sameSite",
        &["nginx.ingress.kubernetes.io/session-cookie-samesite", "nginx.ingress.kubernetes.io/session-cookie-secure"],
    ),
    ("spec.sticky.names", &["routeid.io/sticky-names", "nginx.ingress.kubernetes.io/session-cookie-name"]),
    ("spec.sticky.separator", &["routeid.io/sticky-separator"]),
    ("spec.frontend.rewritePrefix", &["nginx.ingress.kubernetes.io/rewrite-target"]),
    ("spec.health.active.path", &["routeid.io/health-path"]),
    ("spec.health.active.interval", &["routeid.io/health-interval"]),
    ("spec.health.active.timeout", &["routeid.io/health-timeout"]),
    ("spec.health.active.expectStatus", &["routeid.io/health-expect-status"]),
    ("spec.health.passive.retryAfter", &["routeid.io/retry-after"]),
    ("spec.health.passive.failOnStatus", &["routeid.io/fail-on-status"]),
    ("spec.health.passive.maxAttempts", &["nginx.ingress.kubernetes.io/proxy-next-upstream-tries"]),
    ("spec.backend.maxConnections", &["routeid.io/max-connections"]),
    ("spec.timeouts.connect", &["nginx.ingress.kubernetes.io/proxy-connect-timeout"]),
    ("spec.timeouts.response", &["nginx.ingress.kubernetes.io/proxy-read-timeout"]),
];

/// A core validation problem of the pool made at `at`, renamed to the annotation that set the
/// field (with its value), or else to the Ingress field `at` (its host, path or backend).
fn blame(annotations: &BTreeMap<String, String>, at: &str, e: FieldError) -> FieldError {
    let key = BLAME
        .iter()
        .find(|(field, _)| e.path.starts_with(field))
        .and_then(|(_, keys)| keys.iter().find(|k| annotations.contains_key(**k)));
    match key.and_then(|k| annotations.get(*k).map(|v| (k, v.trim()))) {
        Some((k, v)) => {
            let quoted = format!("{v:?}");
            let reason = if e.reason.contains(&quoted) { e.reason } else { format!("{quoted}: {}", e.reason) };
            FieldError { path: format!("metadata.annotations[{k}]"), reason }
        }
        None => FieldError { path: at.to_owned(), reason: format!("{} {}", e.path, e.reason) },
    }
}

/// `ssl-redirect` / `force-ssl-redirect`.
struct Redirect {
    /// Redirect the hosts that have a certificate (`ssl-redirect`, default true).
    tls_hosts: bool,
    /// Redirect every host (`force-ssl-redirect`).
    always: bool,
}

/// Whether the Ingress TLS host `tls_host` covers the rule host `host` (equal, or a
/// `*.example.com` wildcard over one label).
fn covers(tls_host: &str, host: &str) -> bool {
    if tls_host.eq_ignore_ascii_case(host) {
        return true;
    }
    match (tls_host.strip_prefix("*."), host.split_once('.')) {
        (Some(domain), Some((label, rest))) => !label.is_empty() && label != "*" && rest.eq_ignore_ascii_case(domain),
        _ => false,
    }
}

/// The certificates of `spec.tls` that serve the rule host `host`: each entry naming it (or
/// naming no host: the entry covers every rule host). A rule without host gets none (routeid's
/// `--default-tls-secret` serves such requests).
fn certificates(tls: &[k8s_openapi::api::networking::v1::IngressTLS], host: Option<&str>) -> Vec<FrontendTls> {
    let Some(host) = host else { return Vec::new() };
    tls.iter()
        .filter_map(|t| {
            let secret = t.secret_name.as_deref().filter(|s| !s.is_empty())?;
            let hosts = t.hosts.as_deref().unwrap_or_default();
            (hosts.is_empty() || hosts.iter().any(|h| covers(h, host)))
                .then(|| FrontendTls { hosts: vec![host.to_owned()], secret_name: secret.to_owned() })
        })
        .collect()
}

/// What of `spec.tls` cannot be served, said once per Ingress change.
fn tls_notes(spec: &k8s_openapi::api::networking::v1::IngressSpec) -> Vec<String> {
    let tls = spec.tls.as_deref().unwrap_or_default();
    let rule_hosts: Vec<&str> = spec.rules.iter().flatten().filter_map(|r| r.host.as_deref()).collect();
    let mut notes = Vec::new();
    for (i, t) in tls.iter().enumerate() {
        if t.secret_name.as_deref().is_none_or(str::is_empty) {
            notes.push(format!("spec.tls[{i}] names no Secret: its hosts are not served with TLS"));
        }
        for h in t.hosts.iter().flatten() {
            if !rule_hosts.iter().any(|r| covers(h, r)) {
                notes.push(format!("spec.tls[{i}]: no rule serves host {h:?}"));
            }
        }
    }
    let hostless = spec.rules.iter().flatten().any(|r| r.host.as_deref().is_none_or(str::is_empty));
    if !tls.is_empty() && (hostless || spec.default_backend.is_some()) {
        notes.push(
            "rules without a host and the default backend get no certificate from spec.tls: \
             routeid's --default-tls-secret serves them"
                .into(),
        );
    }
    notes
}

/// Where one pool of an Ingress serves, and from which field.
struct Place<'a> {
    /// The pool's suffix (`<rule>-<path>`, `default`).
    n: String,
    host: Option<&'a str>,
    path: &'a str,
    exact: bool,
    backend: &'a IngressBackend,
    /// The field path, for errors.
    field: String,
}

/// One pool of an Ingress.
fn pool(ing: &Ingress, name: &str, class: &str, shared: &Shared, service: ServiceRef, at: &Place<'_>) -> BalancerPool {
    let (host, path, exact) = (at.host, at.path, at.exact);
    let mut spec = shared.template.clone();
    spec.ingress_class_name = Some(class.to_owned());
    spec.frontend = Frontend {
        hosts: host.map(|h| vec![h.to_owned()]).unwrap_or_default(),
        path_prefix: Some(path.to_owned()),
        rewrite_prefix: shared.rewrite.clone(),
        path_type: exact.then_some(PathType::Exact),
        ..Default::default()
    };
    spec.backend.service = Some(service);
    spec.backend.route_from = shared.route_from;
    spec.lb_method = shared.lb_method;
    spec.sticky = shared.sticky.clone().map(|mut s| {
        if let Some(c) = s.cookie.as_mut()
            && !shared.cookie_path_given
        {
            // ingress-nginx's default: the matched path.
            c.path = Some(path.to_owned());
        }
        s
    });
    let mut pool = BalancerPool::new(&pool_name(name, &at.n), spec);
    pool.metadata.namespace = ing.metadata.namespace.clone();
    pool.metadata.creation_timestamp = ing.metadata.creation_timestamp.clone();
    pool
}

/// Something to tell about an Ingress (an Event, and a log line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressNews {
    /// The Ingress.
    pub key: IngressKey,
    /// Warning or Normal.
    pub warning: bool,
    /// `Accepted`, `Rejected`, `UnsupportedAnnotations`, `TLSNotApplied`.
    pub reason: &'static str,
    /// What happened, naming annotations and values.
    pub note: String,
}

fn unsupported_note(list: &[String]) -> String {
    format!("annotations routeid does not read or that have no effect, ignored: {}", list.join(", "))
}

/// Says (once per change) which annotations of the Ingress `key` routeid does not read.
fn report_unsupported(key: &IngressKey, served: &mut Served, list: Vec<String>, out: &mut Vec<IngressNews>) {
    if list != served.unsupported && !list.is_empty() {
        let note = unsupported_note(&list);
        tracing::warn!(ingress = %format!("{}/{}", key.0, key.1), "{note}");
        out.push(IngressNews { key: key.clone(), warning: true, reason: "UnsupportedAnnotations", note });
    }
    served.unsupported = list;
}

/// What was last accepted from one Ingress.
#[derive(Debug, Default)]
struct Served {
    /// Translated at least once: only then is it served (and its status written).
    accepted: bool,
    pools: BTreeSet<PoolId>,
    /// The last refusal, so it is reported once.
    rejected: Option<String>,
    unsupported: Vec<String>,
    notes: Vec<String>,
}

/// The Ingresses and IngressClasses in scope, and the pools made from them.
#[derive(Debug)]
pub struct Ingresses {
    filter: IngressFilter,
    objects: HashMap<IngressKey, Arc<Ingress>>,
    classes: HashMap<String, Arc<IngressClass>>,
    served: HashMap<IngressKey, Served>,
    /// Ingresses that were served and stopped being ours while still in scope: their
    /// `status.loadBalancer` is to be cleared by the Lease holder.
    left: std::collections::HashSet<IngressKey>,
    /// Conflicts (loser, winner) already reported with an Event.
    pub(crate) reported_conflicts: std::collections::HashSet<(PoolId, PoolId)>,
}

fn key_of(ing: &Ingress) -> IngressKey {
    (ing.metadata.namespace.clone().unwrap_or_default(), ing.metadata.name.clone().unwrap_or_default())
}

impl Ingresses {
    /// Nothing yet.
    pub fn new(filter: IngressFilter) -> Ingresses {
        Ingresses {
            filter,
            objects: HashMap::new(),
            classes: HashMap::new(),
            served: HashMap::new(),
            left: Default::default(),
            reported_conflicts: Default::default(),
        }
    }

    /// An Ingress in scope.
    pub fn ingress(&self, key: &IngressKey) -> Option<&Arc<Ingress>> {
        self.objects.get(key)
    }

    /// The served Ingresses (accepted at least once), with the pools each one has. One refused
    /// on first sight serves nothing, so it is not listed and gets no status.
    pub fn served(&self) -> impl Iterator<Item = (&IngressKey, &BTreeSet<PoolId>)> {
        self.served.iter().filter(|(_, s)| s.accepted).map(|(k, s)| (k, &s.pools))
    }

    /// The Ingresses that stopped being served (class changed, annotation removed) and whose
    /// load-balancer status has not been cleared yet.
    pub fn left(&self) -> impl Iterator<Item = &IngressKey> {
        self.left.iter()
    }

    /// The status of `key` was cleared (or is not ours to clear): it is no longer [`Self::left`].
    pub fn status_cleared(&mut self, key: &IngressKey) {
        self.left.remove(key);
    }

    /// An Ingress was added or changed: re-translated now.
    pub fn apply(&mut self, ing: Ingress, index: &mut Index) -> Vec<IngressNews> {
        let key = key_of(&ing);
        if let Some(old) = self.objects.get(&key)
            && old.spec == ing.spec
            && old.metadata.annotations == ing.metadata.annotations
        {
            self.objects.insert(key, Arc::new(ing));
            return Vec::new();
        }
        self.objects.insert(key.clone(), Arc::new(ing));
        self.sync(&key, index)
    }

    /// An Ingress was deleted: its pools go.
    pub fn delete(&mut self, key: &IngressKey, index: &mut Index) {
        self.objects.remove(key);
        self.left.remove(key);
        self.drop_pools(key, index);
    }

    /// Keeps only the Ingresses in `seen` (after a re-list).
    pub fn retain(&mut self, seen: &std::collections::HashSet<IngressKey>, index: &mut Index) {
        let gone: Vec<IngressKey> = self.objects.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for k in gone {
            self.delete(&k, index);
        }
    }

    /// An IngressClass was added, changed or deleted (`None`): when it is routeid's class, every
    /// Ingress is looked at again.
    pub fn apply_class(&mut self, name: String, class: Option<IngressClass>, index: &mut Index) -> Vec<IngressNews> {
        // Only routeid's own class decides what is served: another class changing changes nothing.
        let ours = name == self.filter.class;
        match class {
            Some(c) => self.classes.insert(name, Arc::new(c)),
            None => self.classes.remove(&name),
        };
        if !ours {
            return Vec::new();
        }
        let keys: Vec<IngressKey> = self.objects.keys().cloned().collect();
        keys.iter().flat_map(|k| self.sync(k, index)).collect()
    }

    /// Keeps only the classes in `seen` (after a re-list).
    pub fn retain_classes(&mut self, seen: &std::collections::HashSet<String>, index: &mut Index) -> Vec<IngressNews> {
        let gone: Vec<String> = self.classes.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        gone.into_iter().flat_map(|c| self.apply_class(c, None, index)).collect()
    }

    fn drop_pools(&mut self, key: &IngressKey, index: &mut Index) {
        if let Some(s) = self.served.remove(key) {
            for id in &s.pools {
                index.delete_pool_id(id);
            }
            if s.accepted && self.objects.contains_key(key) {
                self.left.insert(key.clone());
            }
        }
    }

    fn sync(&mut self, key: &IngressKey, index: &mut Index) -> Vec<IngressNews> {
        let Some(ing) = self.objects.get(key).cloned() else { return Vec::new() };
        if !serves(&self.filter, &ing, &self.classes) {
            self.drop_pools(key, index);
            return Vec::new();
        }
        let news = |warning, reason, note: String| IngressNews { key: key.clone(), warning, reason, note };
        let served = self.served.entry(key.clone()).or_default();
        let mut out = Vec::new();
        match translate(&ing, &self.filter.class) {
            Err(problems) => {
                let msg = super::index::problems_message(&problems);
                if served.rejected.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(ingress = %format!("{}/{}", key.0, key.1), "Ingress refused, its previous configuration keeps serving: {msg}");
                    out.push(news(true, "Rejected", msg.clone()));
                    served.rejected = Some(msg);
                }
                // What routeid does not read is said while the Ingress is refused too.
                report_unsupported(key, served, unsupported_annotations(&ing), &mut out);
            }
            Ok(t) => {
                let ids: BTreeSet<PoolId> = t.pools.iter().map(super::index::pool_id).collect();
                for gone in served.pools.difference(&ids) {
                    index.delete_pool_id(gone);
                }
                for p in t.pools {
                    index.apply_pool(p);
                }
                if served.rejected.take().is_some() || served.pools != ids {
                    out.push(news(false, "Accepted", format!("serving {} path(s)", ids.len())));
                }
                served.pools = ids;
                served.accepted = true;
                self.left.remove(key);
                report_unsupported(key, served, [t.unsupported, t.no_effect].concat(), &mut out);
                if t.notes != served.notes {
                    for n in &t.notes {
                        tracing::warn!(ingress = %format!("{}/{}", key.0, key.1), "{n}");
                        out.push(news(true, "TLSNotApplied", n.clone()));
                    }
                }
                served.notes = t.notes;
            }
        }
        out
    }

    /// The warnings that still hold (refusals, unsupported annotations, notes), for a replica
    /// that just became the one that writes Events.
    pub fn standing_news(&self) -> Vec<IngressNews> {
        let mut out = Vec::new();
        for (key, s) in &self.served {
            let news = |reason, note: String| IngressNews { key: key.clone(), warning: true, reason, note };
            if let Some(r) = &s.rejected {
                out.push(news("Rejected", r.clone()));
            }
            if !s.unsupported.is_empty() {
                out.push(news("UnsupportedAnnotations", unsupported_note(&s.unsupported)));
            }
            out.extend(s.notes.iter().map(|n| news("TLSNotApplied", n.clone())));
        }
        out
    }

    /// Notes on a served Ingress (for its status).
    pub fn notes(&self, key: &IngressKey) -> &[String] {
        self.served.get(key).map(|s| s.notes.as_slice()).unwrap_or_default()
    }
}

pub mod check;
#[cfg(test)]
mod tests;
pub mod watch;
