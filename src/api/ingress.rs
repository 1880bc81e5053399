//! The Ingress annotations routeid reads, in one table: the translation, the `ingress-check`
//! report and the README all speak from it, so "supported" means the same everywhere.

/// ingress-nginx's annotation prefix; routeid reads the sticky-session ones under the same names.
pub const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";
/// routeid's own annotations, for what ingress-nginx cannot say.
pub const ROUTEID_PREFIX: &str = "routeid.io/";
/// The `spec.controller` of an IngressClass served by routeid.
pub const CONTROLLER_NAME: &str = "routeid.io/ingress-controller";
/// The IngressClass annotation that makes a class the cluster default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The pre-`ingressClassName` way to pick a controller, still honoured.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// How routeid treats an ingress-nginx annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Same name, same meaning.
    Supported,
    /// Read, with a difference the README explains.
    Differs,
    /// Not read: reported on the Ingress (Warning Event) and by `ingress-check`.
    Unsupported,
}

/// The ingress-nginx annotations routeid reads (without the prefix), with how and a note.
pub const NGINX_ANNOTATIONS: &[(&str, Support, &str)] = &[
    ("affinity", Support::Supported, "`cookie`: sticky sessions with a route cookie"),
    (
        "affinity-mode",
        Support::Differs,
        "`persistent`, `persistent-drainable` and `balanced` all keep a session on its pod while the pod is listed; routeid never re-spreads sessions on scale-out",
    ),
    ("session-cookie-name", Support::Supported, "default `INGRESSCOOKIE`"),
    ("session-cookie-path", Support::Supported, "default: the matched path (`/` for the default backend)"),
    ("session-cookie-domain", Support::Supported, ""),
    ("session-cookie-expires", Support::Supported, "seconds; `Expires` computed when the cookie is set"),
    ("session-cookie-max-age", Support::Supported, "seconds"),
    ("session-cookie-secure", Support::Supported, "unset: `Secure` over HTTPS"),
    ("session-cookie-samesite", Support::Supported, ""),
    ("session-cookie-conditional-samesite-none", Support::Supported, "same user-agent list as ingress-nginx"),
    (
        "session-cookie-change-on-failure",
        Support::Differs,
        "`false` (default): a failed request is retried on another pod, but the cookie keeps naming the session's pod while it is listed",
    ),
    ("ssl-redirect", Support::Supported, "default true for hosts with a certificate: 308 to https"),
    ("force-ssl-redirect", Support::Supported, "308 to https for every host"),
    (
        "rewrite-target",
        Support::Differs,
        "the plain form replaces the matched prefix only: path `/app`, target `/` sends `/app/cart` as `/cart` (ingress-nginx: `/`); \
         `/app(/|$)(.*)` with `/$2` is read as that prefix strip; other capture groups refuse the Ingress",
    ),
    ("proxy-connect-timeout", Support::Differs, "seconds; unset: 2s (ingress-nginx: 5s)"),
    ("proxy-read-timeout", Support::Differs, "seconds; routeid bounds the wait for the response head"),
    ("proxy-next-upstream-tries", Support::Supported, "`0` (no limit) becomes routeid's maximum, 16"),
    ("load-balance", Support::Supported, "`round_robin` → ByRequests, `ewma` → LeastLatency"),
];

/// routeid's own annotations (without the prefix) and what they set.
pub const ROUTEID_ANNOTATIONS: &[(&str, &str)] = &[
    ("sticky-names", "`JSESSIONID|jsessionid`: route from the application's session id (Apache `stickysession`)"),
    ("sticky-separator", "the route separator in session values (default `.`)"),
    ("lb-method", "ByRequests | ByTraffic | ByBusyness | Heartbeat | LeastLatency (wins over `load-balance`)"),
    ("cookie-mode", "Insert | Prefix | Rewrite (HAProxy cookie modes)"),
    ("route-from", "PodName | Hostname | Address: what names a member"),
    ("failover", "`false`: a session whose pod is unusable gets 503 instead of moving (Apache `nofailover`)"),
    ("health-path", "active health checks on this path"),
    ("health-interval", "time between checks (`5s`)"),
    ("health-timeout", "time a check may take (`2s`)"),
    ("health-expect-status", "passing statuses (`200-399`)"),
    ("retry-after", "how long a failed pod stays out (`60s`)"),
    ("fail-on-status", "statuses that put a pod in error (`503,502`)"),
    ("max-connections", "connections per pod at most"),
];

/// How routeid treats the annotation `key` (full key, any prefix): `None` when it is neither an
/// ingress-nginx nor a routeid annotation.
pub fn support_of(key: &str) -> Option<Support> {
    if let Some(name) = key.strip_prefix(NGINX_PREFIX) {
        return Some(NGINX_ANNOTATIONS.iter().find(|(n, _, _)| *n == name).map_or(Support::Unsupported, |a| a.1));
    }
    let name = key.strip_prefix(ROUTEID_PREFIX)?;
    Some(if ROUTEID_ANNOTATIONS.iter().any(|(n, _)| *n == name) { Support::Supported } else { Support::Unsupported })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_annotations() {
        assert_eq!(support_of("nginx.ingress.kubernetes.io/affinity"), Some(Support::Supported));
        assert_eq!(support_of("nginx.ingress.kubernetes.io/rewrite-target"), Some(Support::Differs));
        assert_eq!(support_of("nginx.ingress.kubernetes.io/configuration-snippet"), Some(Support::Unsupported));
        assert_eq!(support_of("routeid.io/sticky-names"), Some(Support::Supported));
        assert_eq!(support_of("routeid.io/stiky-names"), Some(Support::Unsupported));
        assert_eq!(support_of("kubernetes.io/ingress.class"), None);
    }
}
