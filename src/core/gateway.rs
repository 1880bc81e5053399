//! Gateway API rules in core terms: what an HTTPRoute rule adds to a pool.
//!
//! The control plane translates one HTTPRoute rule into one [`super::PoolConfig`] whose
//! `gateway` field holds a [`GatewayRule`]: the rule's request matches (OR'd), the data the
//! Gateway API precedence needs to break ties between matches of different rules, and the
//! rule's filters. Session persistence (GEP-1619) lives on the pool's sticky configuration as a
//! [`SessionPersistence`]. BalancerPool and Ingress pools leave both empty and behave as before.
//!
//! The types hold plain strings and numbers (no kube, no hyper); [`GatewayRule::validate`] and
//! [`SessionPersistence::validate`] say what the proxy relies on, so a translation that calls
//! them can report a bad value on the route instead of serving something else.

use std::time::Duration;

use super::config::{FieldError, is_token};

/// An HTTPRoute rule as the proxy serves it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayRule {
    /// The rule's matches, OR'd. Empty means the Gateway API default: one `PathPrefix /` match.
    /// The pool's `path_prefix`/`path_exact` are not used for matching when this is present.
    pub matches: Vec<RequestMatch>,
    /// Tie-break between equally specific matches of different rules.
    pub order: RouteOrder,
    /// The rule's filters.
    pub filters: Filters,
    /// The kind of connection the rule is served on: that of the listeners it attached through.
    pub served_on: ServedOn,
    /// The share of new requests that belongs to invalid backendRefs: the spec answers them 500.
    pub invalid: Option<InvalidShare>,
}

/// The weight of a rule's invalid backendRefs (Service not found, no ReferenceGrant, bad
/// port…). The HTTPRoute spec answers the requests that would have gone to them with `500`,
/// rather than moving their share onto the valid backends; so new requests (not those of a
/// session pinned to a valid member) land in it in proportion to its weight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InvalidShare {
    /// The invalid backendRefs' weights, summed.
    pub weight: u32,
    /// Every backendRef's weight, summed (valid and invalid); the share is `weight / total`.
    pub total: u32,
    /// Why, for the `500`'s text: the invalid backendRefs' problems.
    pub reason: String,
}

impl InvalidShare {
    /// Whether the `n`th new request of the rule falls in the share: exactly `weight` of every
    /// `total` consecutive requests, spread evenly (no random draw, nothing to allocate).
    pub fn takes(&self, n: u64) -> bool {
        if self.total == 0 {
            return false;
        }
        let (w, t) = (u64::from(self.weight.min(self.total)), u64::from(self.total));
        let k = n % t;
        (k + 1) * w / t > k * w / t
    }
}

/// Which client connections a rule is served on, so a route attached only to an HTTPS listener
/// is not reachable in clear text (and one attached only to an HTTP listener not over TLS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ServedOn {
    /// Plain and secure connections (listeners of both kinds, with the same hostnames).
    #[default]
    Both,
    /// Plain HTTP only (HTTP listeners).
    Plain,
    /// Secure only: TLS at routeid, or a trusted front proxy that says `https` (HTTPS listeners).
    Secure,
}

impl ServedOn {
    /// Whether a request on a connection that is `secure` (or not) is served.
    pub fn serves(self, secure: bool) -> bool {
        match self {
            ServedOn::Both => true,
            ServedOn::Plain => !secure,
            ServedOn::Secure => secure,
        }
    }
}

/// How a request path is compared (HTTPRoute `path.type`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// `Exact`: the path as written, byte for byte.
    Exact(String),
    /// `PathPrefix`: element-wise prefix; normalised without a trailing `/` (except `/` itself).
    Prefix(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::Prefix("/".to_owned())
    }
}

impl PathMatch {
    /// The path text (the prefix, or the exact path).
    pub fn value(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        }
    }
}

/// One HTTPRoute match: every condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestMatch {
    /// The path condition (default `PathPrefix /`).
    pub path: PathMatch,
    /// Header conditions (type `Exact`); all must hold.
    pub headers: Vec<HeaderMatch>,
    /// Query-parameter conditions (type `Exact`); all must hold.
    pub query: Vec<QueryMatch>,
    /// The request method, upper case as on the wire (`GET`); `None` matches any.
    pub method: Option<String>,
}

/// A header condition: the first value of header `name` equals `value`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderMatch {
    /// Lower-case header name (header names are case-insensitive).
    pub name: String,
    /// The exact value (case-sensitive).
    pub value: String,
}

/// A query-parameter condition: the first parameter `name` (case-sensitive) has `value`,
/// compared after percent-decoding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueryMatch {
    /// Parameter name, as written.
    pub name: String,
    /// The exact value.
    pub value: String,
}

/// Where a rule stands among equally specific matches (Gateway API precedence): the oldest
/// route first, then `namespace/name` alphabetically, then the rule's position in its route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteOrder {
    /// The HTTPRoute's `metadata.creationTimestamp`, in seconds since the Unix epoch.
    pub created_unix: i64,
    /// The HTTPRoute's `namespace/name`.
    pub route: String,
    /// The rule's index in `spec.rules`.
    pub rule: u32,
}

/// The filters of a rule, applied in this order: a redirect answers at once (no member is
/// chosen); otherwise the request headers are modified, the URL rewritten, and the member's
/// response headers modified on the way back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// `RequestHeaderModifier`.
    pub request_headers: Option<HeaderModifier>,
    /// `ResponseHeaderModifier`.
    pub response_headers: Option<HeaderModifier>,
    /// `RequestRedirect`.
    pub redirect: Option<RequestRedirect>,
    /// `URLRewrite`.
    pub rewrite: Option<UrlRewrite>,
}

impl Filters {
    /// No filter at all.
    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`: set replaces, add appends, remove drops,
/// applied in that order (the order the spec lists them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    /// Headers replaced (or added when absent): `(lower-case name, value)`.
    pub set: Vec<(String, String)>,
    /// Headers appended to any existing values: `(lower-case name, value)`.
    pub add: Vec<(String, String)>,
    /// Lower-case names of headers removed.
    pub remove: Vec<String>,
}

/// How a redirect or rewrite changes the path (HTTPRoute `HTTPPathModifier`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    /// The whole path becomes this.
    ReplaceFullPath(String),
    /// The matched `PathPrefix` is replaced by this, on segment boundaries.
    ReplacePrefixMatch(String),
}

/// `RequestRedirect`: routeid answers with `Location` built from the request and these parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRedirect {
    /// `http` or `https`; `None` keeps the request's scheme.
    pub scheme: Option<String>,
    /// `None` keeps the request's host.
    pub hostname: Option<String>,
    /// `None` keeps the request's path.
    pub path: Option<PathModifier>,
    /// `None`: the scheme's default port when the scheme changes, else the request's port.
    pub port: Option<u16>,
    /// 301 or 302.
    pub status: u16,
}

/// `URLRewrite`: what the member sees instead of the client's host and path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UrlRewrite {
    /// The `Host` sent to the member.
    pub hostname: Option<String>,
    /// The path sent to the member.
    pub path: Option<PathModifier>,
}

/// How the session travels (GEP-1619 `type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SessionKind {
    /// A cookie the proxy inserts.
    #[default]
    Cookie,
    /// A response header the client sends back as a request header of the same name.
    Header,
}

/// A session cookie's lifetime (GEP-1619 `cookieConfig.lifetimeType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CookieLifetime {
    /// No `Expires`/`Max-Age`: the browser forgets it when it closes.
    #[default]
    Session,
    /// `Max-Age` equal to the absolute timeout (which is then required).
    Permanent,
}

/// GEP-1619 session persistence of one rule (`sessionPersistence`). The value the client
/// holds names the member's route (its pod name); with an absolute timeout it also carries an
/// expiry and a MAC, so the proxy itself stops honouring it after the timeout and a client
/// cannot forge or extend it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionPersistence {
    /// Cookie or header.
    pub kind: SessionKind,
    /// `sessionName`: the cookie or header name (the translation generates one when unset).
    pub name: String,
    /// The cookie's `Path`: the rule's path match (`/` when none).
    pub cookie_path: String,
    /// Session or Permanent (cookies only).
    pub lifetime: CookieLifetime,
    /// `absoluteTimeout`: how long after it starts a session is honoured.
    pub absolute_timeout: Option<Duration>,
}

/// Longest `sessionName` accepted (it travels in every request).
pub const MAX_SESSION_NAME_LEN: usize = 128;

/// Headers that frame a message or concern only one hop: a header modifier or a session header
/// that wrote them would break the exchange instead of adding a field to it.
const FRAMING_HEADERS: [&str; 8] =
    ["connection", "content-length", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Headers a session header must not take over besides those: `Host` routes the request, and
/// writing the session into `Set-Cookie` would drop the member's cookies.
const NOT_A_SESSION_HEADER: [&str; 3] = ["host", "cookie", "set-cookie"];

fn is_framing_header(name: &str) -> bool {
    FRAMING_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// An absolute path the proxy can put in a request target: no white space, controls, query or
/// fragment, nor `<`, `>` and `` ` `` (which the HTTP library refuses in a URI, so a rewrite to
/// such a path would silently keep the original one).
fn is_path(s: &str) -> bool {
    s.starts_with('/') && s.bytes().all(|b| b > 0x20 && b != 0x7f && !b"?#<>`".contains(&b))
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

impl HeaderModifier {
    fn validate(&self, at: &str, out: &mut Vec<FieldError>) {
        let names = self.set.iter().chain(&self.add).map(|(n, _)| n).chain(&self.remove);
        for n in names {
            if !is_token(n) || n.bytes().any(|b| b.is_ascii_uppercase()) {
                out.push(FieldError { path: at.into(), reason: format!("{n:?} is not a lower-case header name") });
            } else if is_framing_header(n) {
                out.push(FieldError {
                    path: at.into(),
                    reason: format!("{n:?} frames the message; it is not modified"),
                });
            }
        }
        for (n, v) in self.set.iter().chain(&self.add) {
            if !is_header_value(v) {
                out.push(FieldError {
                    path: at.into(),
                    reason: format!("the value of {n:?} holds control characters"),
                });
            }
        }
    }
}

impl PathModifier {
    fn validate(&self, at: &str, out: &mut Vec<FieldError>) {
        // An empty ReplacePrefixMatch removes the prefix (the spec's table allows it).
        let p = match self {
            PathModifier::ReplaceFullPath(p) => p,
            PathModifier::ReplacePrefixMatch(p) if p.is_empty() => return,
            PathModifier::ReplacePrefixMatch(p) => p,
        };
        if !is_path(p) {
            out.push(FieldError { path: at.into(), reason: format!("{p:?} is not an absolute path") });
        }
    }
}

impl GatewayRule {
    /// Every problem that would make the proxy serve the rule differently than written, with
    /// the field path under `at` (e.g. `spec.rules[0]`).
    pub fn validate(&self, at: &str) -> Vec<FieldError> {
        let mut out = Vec::new();
        let mut err = |path: String, reason: String| out.push(FieldError { path, reason });
        for (i, m) in self.matches.iter().enumerate() {
            let here = format!("{at}.matches[{i}]");
            if !is_path(m.path.value()) {
                err(format!("{here}.path.value"), format!("{:?} is not an absolute path", m.path.value()));
            }
            for (j, h) in m.headers.iter().enumerate() {
                if !is_token(&h.name) || h.name.bytes().any(|b| b.is_ascii_uppercase()) {
                    err(format!("{here}.headers[{j}].name"), format!("{:?} is not a lower-case header name", h.name));
                }
                if !is_header_value(&h.value) {
                    err(format!("{here}.headers[{j}].value"), "holds control characters".into());
                }
            }
            for (j, q) in m.query.iter().enumerate() {
                if q.name.is_empty() || q.name.bytes().any(|b| b"&=#".contains(&b) || b <= 0x20) {
                    err(format!("{here}.queryParams[{j}].name"), format!("{:?} is not a parameter name", q.name));
                }
            }
            if let Some(method) = &m.method
                && !(is_token(method) && method.bytes().all(|b| !b.is_ascii_lowercase()))
            {
                err(format!("{here}.method"), format!("{method:?} is not an upper-case method"));
            }
        }
        let f = &self.filters;
        if let Some(h) = &f.request_headers {
            h.validate(&format!("{at}.filters.requestHeaderModifier"), &mut out);
        }
        if let Some(h) = &f.response_headers {
            h.validate(&format!("{at}.filters.responseHeaderModifier"), &mut out);
        }
        if let Some(r) = &f.redirect {
            let here = format!("{at}.filters.requestRedirect");
            if r.scheme.as_deref().is_some_and(|s| s != "http" && s != "https") {
                out.push(FieldError { path: format!("{here}.scheme"), reason: "must be http or https".into() });
            }
            if r.hostname.as_deref().is_some_and(|h| !is_hostname(h)) {
                out.push(FieldError { path: format!("{here}.hostname"), reason: "is not a host name".into() });
            }
            if r.status != 301 && r.status != 302 {
                out.push(FieldError {
                    path: format!("{here}.statusCode"),
                    reason: format!("{} is not 301 or 302", r.status),
                });
            }
            if let Some(p) = &r.path {
                p.validate(&format!("{here}.path"), &mut out);
            }
            if f.rewrite.is_some() {
                out.push(FieldError { path: here, reason: "cannot be combined with URLRewrite".into() });
            }
        }
        if let Some(r) = &f.rewrite {
            let here = format!("{at}.filters.urlRewrite");
            if r.hostname.as_deref().is_some_and(|h| !is_hostname(h)) {
                out.push(FieldError { path: format!("{here}.hostname"), reason: "is not a host name".into() });
            }
            if let Some(p) = &r.path {
                p.validate(&format!("{here}.path"), &mut out);
            }
        }
        let prefix_modifier =
            [f.redirect.as_ref().and_then(|r| r.path.as_ref()), f.rewrite.as_ref().and_then(|r| r.path.as_ref())]
                .into_iter()
                .flatten()
                .any(|p| matches!(p, PathModifier::ReplacePrefixMatch(_)));
        if prefix_modifier && self.matches.iter().any(|m| matches!(m.path, PathMatch::Exact(_))) {
            out.push(FieldError {
                path: format!("{at}.filters"),
                reason: "ReplacePrefixMatch needs PathPrefix matches only".into(),
            });
        }
        out
    }
}

impl SessionPersistence {
    /// Every problem that would make the proxy serve the persistence differently than written,
    /// with the field path under `at` (e.g. `spec.rules[0].sessionPersistence`).
    pub fn validate(&self, at: &str) -> Vec<FieldError> {
        let mut out = Vec::new();
        if !is_token(&self.name) || self.name.len() > MAX_SESSION_NAME_LEN {
            out.push(FieldError {
                path: format!("{at}.sessionName"),
                reason: format!("{:?} is not a cookie or header name", self.name),
            });
        }
        if self.kind == SessionKind::Header
            && (is_framing_header(&self.name)
                || NOT_A_SESSION_HEADER.iter().any(|h| h.eq_ignore_ascii_case(&self.name)))
        {
            out.push(FieldError {
                path: format!("{at}.sessionName"),
                reason: format!("{:?} cannot carry a session (the proxy uses that header itself)", self.name),
            });
        }
        if !is_path(&self.cookie_path) || self.cookie_path.contains(';') {
            out.push(FieldError {
                path: format!("{at}.cookiePath"),
                reason: format!("{:?} is not a path", self.cookie_path),
            });
        }
        if self.lifetime == CookieLifetime::Permanent && self.absolute_timeout.is_none() {
            out.push(FieldError {
                path: format!("{at}.cookieConfig.lifetimeType"),
                reason: "Permanent needs absoluteTimeout".into(),
            });
        }
        if self.absolute_timeout.is_some_and(|t| t.as_secs() == 0) {
            out.push(FieldError { path: format!("{at}.absoluteTimeout"), reason: "must be at least 1s".into() });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_path_the_proxy_could_not_send_is_refused() {
        for bad in ["/a<b>", "/a`b", "/a?b", "/a b"] {
            let rule = GatewayRule {
                filters: Filters {
                    rewrite: Some(UrlRewrite { hostname: None, path: Some(PathModifier::ReplaceFullPath(bad.into())) }),
                    ..Default::default()
                },
                ..Default::default()
            };
            assert_eq!(rule.validate("r").len(), 1, "{bad}");
        }
    }

    #[test]
    fn framing_and_proxy_headers_are_neither_modified_nor_session_headers() {
        let rule = GatewayRule {
            filters: Filters {
                request_headers: Some(HeaderModifier {
                    set: vec![("content-length".into(), "0".into())],
                    add: vec![("x-ok".into(), "1".into())],
                    remove: vec![],
                }),
                response_headers: Some(HeaderModifier {
                    set: vec![],
                    add: vec![("transfer-encoding".into(), "chunked".into())],
                    remove: vec!["connection".into()],
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(rule.validate("r").len(), 3, "{:?}", rule.validate("r"));
        let p = |kind, name: &str| SessionPersistence {
            kind,
            name: name.into(),
            cookie_path: "/".into(),
            lifetime: CookieLifetime::Session,
            absolute_timeout: None,
        };
        for name in ["Set-Cookie", "Content-Length", "host", "Transfer-Encoding", "Connection"] {
            assert_eq!(p(SessionKind::Header, name).validate("s").len(), 1, "{name}");
        }
        assert!(p(SessionKind::Header, "X-Session").validate("s").is_empty());
        assert!(p(SessionKind::Cookie, "host").validate("s").is_empty(), "a cookie may have any token name");
    }

    #[test]
    fn validation_names_the_field() {
        let rule = GatewayRule {
            matches: vec![RequestMatch {
                path: PathMatch::Exact("/a".into()),
                headers: vec![HeaderMatch { name: "X-Up".into(), value: "1".into() }],
                query: vec![],
                method: Some("get".into()),
            }],
            filters: Filters {
                redirect: Some(RequestRedirect {
                    scheme: Some("ftp".into()),
                    hostname: None,
                    path: Some(PathModifier::ReplacePrefixMatch("/b".into())),
                    port: None,
                    status: 307,
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let paths: Vec<String> = rule.validate("spec.rules[0]").into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "spec.rules[0].matches[0].headers[0].name",
                "spec.rules[0].matches[0].method",
                "spec.rules[0].filters.requestRedirect.scheme",
                "spec.rules[0].filters.requestRedirect.statusCode",
                "spec.rules[0].filters",
            ]
        );
        assert!(GatewayRule::default().validate("r").is_empty());
    }

    #[test]
    fn permanent_needs_a_timeout() {
        let mut p = SessionPersistence {
            kind: SessionKind::Cookie,
            name: "sticky".into(),
            cookie_path: "/".into(),
            lifetime: CookieLifetime::Permanent,
            absolute_timeout: None,
        };
        assert_eq!(p.validate("s").len(), 1);
        p.absolute_timeout = Some(Duration::from_secs(60));
        assert!(p.validate("s").is_empty());
    }

    #[test]
    fn the_invalid_share_takes_exactly_its_weight_spread_evenly() {
        let share = |weight, total| InvalidShare { weight, total, reason: String::new() };
        let taken = |s: &InvalidShare, n: u64| (0..n).filter(|&i| s.takes(i)).count();
        let half = share(1, 2);
        assert_eq!((0..4).map(|i| half.takes(i)).collect::<Vec<_>>(), [false, true, false, true]);
        assert_eq!(taken(&share(3, 10), 1000), 300);
        assert_eq!(taken(&share(7, 7), 50), 50, "all invalid: every request");
        assert_eq!(taken(&share(0, 5), 50), 0);
        assert_eq!(taken(&share(9, 0), 50), 0, "no weight at all: nothing");
        assert_eq!(taken(&share(u32::MAX, u32::MAX), 10), 10, "no overflow");
        assert_eq!((u64::MAX - 2..u64::MAX).filter(|&i| share(1, 3).takes(i)).count(), 1, "any n");
    }
}
