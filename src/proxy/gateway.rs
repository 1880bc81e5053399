//! Gateway API rules in the proxy: the filters of an HTTPRoute rule (header modifiers,
//! redirect, URL rewrite) and GEP-1619 session persistence (the route in a cookie or a header,
//! sealed with an expiry when the rule has an `absoluteTimeout`).
//!
//! Header names and values are parsed once per pool at publication ([`RuleExt`]); a request
//! pays only for the filters its rule has.

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, Uri};

use super::forward::{ProxyBody, plain};
use crate::core::gateway::{
    CookieLifetime, HeaderModifier, PathMatch, PathModifier, RequestMatch, RequestRedirect, SessionKind,
    SessionPersistence,
};
use crate::core::session::{self, Opened, SessionKey};
use crate::core::sticky::cookie_value;
use crate::core::table::HeaderSource;
use crate::core::{PoolConfig, PoolId};

impl HeaderSource for HeaderMap {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }
}

/// A header modifier with its names and values parsed.
#[derive(Debug, Default)]
pub(crate) struct Modifier {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Modifier {
    /// Parses a validated modifier; an entry that still does not parse is logged and left out
    /// (validation at translation reports it on the route).
    fn of(m: &HeaderModifier, pool: &PoolId) -> Modifier {
        let pair =
            |(n, v): &(String, String)| match (HeaderName::try_from(n.as_str()), HeaderValue::try_from(v.as_str())) {
                (Ok(n), Ok(v)) => Some((n, v)),
                _ => {
                    tracing::warn!(pool = %pool, header = %n, "header modifier entry is not a valid header; left out");
                    None
                }
            };
        Modifier {
            set: m.set.iter().filter_map(pair).collect(),
            add: m.add.iter().filter_map(pair).collect(),
            remove: m.remove.iter().filter_map(|n| HeaderName::try_from(n.as_str()).ok()).collect(),
        }
    }

    /// Set, add, remove — in the order the spec lists them.
    pub(crate) fn apply(&self, h: &mut HeaderMap) {
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            h.remove(n);
        }
    }
}

/// What the proxy keeps per Gateway API pool beside its config.
#[derive(Debug, Default)]
pub(crate) struct RuleExt {
    /// `RequestHeaderModifier`, parsed.
    pub(crate) request_headers: Option<Modifier>,
    /// `ResponseHeaderModifier`, parsed.
    pub(crate) response_headers: Option<Modifier>,
    /// `URLRewrite.hostname` as a `Host` value.
    pub(crate) rewrite_host: Option<HeaderValue>,
    /// The session header's name (`type: Header`).
    pub(crate) session_header: Option<HeaderName>,
}

impl RuleExt {
    /// The parsed filters of a pool; `None` for a pool that is not a Gateway API rule.
    pub(crate) fn of(cfg: &PoolConfig) -> Option<RuleExt> {
        let rule = cfg.gateway.as_ref()?;
        let f = &rule.filters;
        let persistence = cfg.sticky.as_ref().and_then(|s| s.persistence.as_ref());
        Some(RuleExt {
            request_headers: f.request_headers.as_ref().map(|m| Modifier::of(m, &cfg.id)),
            response_headers: f.response_headers.as_ref().map(|m| Modifier::of(m, &cfg.id)),
            rewrite_host: f
                .rewrite
                .as_ref()
                .and_then(|r| r.hostname.as_deref())
                .and_then(|h| HeaderValue::try_from(h).ok()),
            session_header: persistence
                .filter(|p| p.kind == SessionKind::Header)
                .and_then(|p| HeaderName::try_from(p.name.as_str()).ok()),
        })
    }
}

/// The prefix a `ReplacePrefixMatch` replaces: the matched `PathPrefix` (`/` for a rule
/// without matches).
fn matched_prefix(matched: Option<&RequestMatch>) -> &str {
    match matched.map(|m| &m.path) {
        Some(PathMatch::Prefix(p)) | Some(PathMatch::Exact(p)) => p,
        None => "/",
    }
}

/// Replaces the matched prefix of `path` on segment boundaries, as the HTTPRoute spec's table
/// shows: `/foo/bar` with prefix `/foo` and replacement `/xyz` (or `/xyz/`) is `/xyz/bar`; an
/// empty replacement or `/` leaves the rest, or `/` when nothing is left.
pub fn replace_prefix(prefix: &str, replacement: &str, path: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let repl = replacement.trim_end_matches('/');
    let mut out = String::with_capacity(repl.len() + rest.len() + 1);
    if !repl.starts_with('/') && !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(repl);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The path a path modifier makes of `path`.
pub fn modified_path(m: &PathModifier, matched: Option<&RequestMatch>, path: &str) -> String {
    match m {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(r) => replace_prefix(matched_prefix(matched), r, path),
    }
}

/// `path?query`, the query kept as it came.
pub(crate) fn with_query(path: String, uri: &Uri) -> String {
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((v6, tail)) => (&host[..v6.len() + 2], tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse().ok()),
        _ => (host, None),
    }
}

/// The `Location` of a `RequestRedirect`. The port is the redirect's, else the scheme's
/// well-known one when the redirect changes the scheme, else the one the client used; it is left
/// out when it is the scheme's default (80 for http, 443 for https), as the spec asks.
pub fn redirect_location(
    r: &RequestRedirect,
    matched: Option<&RequestMatch>,
    host: Option<&str>,
    https: bool,
    uri: &Uri,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(if https { "https" } else { "http" });
    let (req_host, req_port) = split_host(host.unwrap_or(""));
    let hostname = r.hostname.as_deref().unwrap_or(req_host);
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(_)) => default_port,
        (None, None) => req_port.unwrap_or(default_port),
    };
    let path = match &r.path {
        Some(m) => modified_path(m, matched, uri.path()),
        None => uri.path().to_owned(),
    };
    let mut loc = format!("{scheme}://{hostname}");
    if port != default_port {
        loc.push_str(&format!(":{port}"));
    }
    loc.push_str(&with_query(path, uri));
    loc
}

/// routeid's answer to a request of a rule with `RequestRedirect`.
pub(crate) fn redirect(
    r: &RequestRedirect,
    matched: Option<&RequestMatch>,
    host: Option<&str>,
    https: bool,
    uri: &Uri,
) -> http::Response<ProxyBody> {
    // The client's Host becomes the target only when it is a plain host name: a Host such as
    // `evil.example/x.example.com` (which a wildcard listener matches) must not redirect elsewhere.
    if r.hostname.is_none() && !host.is_some_and(|h| super::tls::valid_redirect_host(split_host(h).0)) {
        return plain(StatusCode::BAD_REQUEST, "routeid: the request has no valid Host to redirect to\n");
    }
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
    let mut resp = plain(status, "");
    match HeaderValue::try_from(redirect_location(r, matched, host, https, uri)) {
        Ok(loc) => {
            resp.headers_mut().insert(header::LOCATION, loc);
        }
        Err(_) => resp = plain(StatusCode::BAD_REQUEST, "routeid: the redirect target is not a valid URL\n"),
    }
    resp
}

/// What a request's session value says, for the route lookup and the metrics.
#[derive(Debug, Default)]
pub(crate) struct Session<'r> {
    /// The route of a valid session.
    pub(crate) route: Option<&'r str>,
    /// When a valid session ends (kept when a dead pod's session moves).
    pub(crate) expires: Option<u64>,
    /// A value was there.
    pub(crate) present: bool,
    /// Its time was up.
    pub(crate) expired: bool,
    /// It was not one this proxy made.
    pub(crate) forged: bool,
}

/// Reads the session of persistence `p` from the request headers.
pub(crate) fn read_session<'r>(
    p: &SessionPersistence,
    key: Option<&SessionKey>,
    headers: &'r HeaderMap,
    rule: Option<&RuleExt>,
    now: u64,
) -> Session<'r> {
    let raw: Option<&'r [u8]> = match p.kind {
        SessionKind::Cookie => cookie_value(headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes), &p.name),
        SessionKind::Header => {
            rule.and_then(|r| r.session_header.as_ref()).and_then(|n| headers.get(n)).map(HeaderValue::as_bytes)
        }
    };
    let Some(raw) = raw.filter(|v| !v.is_empty()) else { return Session::default() };
    let mut s = Session { present: true, ..Default::default() };
    let opened = match std::str::from_utf8(raw) {
        Ok(v) => session::open(p, key, v, now),
        Err(_) => Opened::Forged,
    };
    match opened {
        Opened::Valid { route, expires } => (s.route, s.expires) = (Some(route), expires),
        Opened::Expired => s.expired = true,
        Opened::Forged => s.forged = true,
    }
    s
}

/// A session to hand the client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewSession<'a> {
    /// The member's route.
    pub(crate) route: &'a str,
    /// When it ends (Unix seconds), with a timeout.
    pub(crate) expires: Option<u64>,
    /// Now (Unix seconds).
    pub(crate) now: u64,
    /// The client connection is HTTPS.
    pub(crate) https: bool,
}

/// Puts a new session for `route` on the response: the cookie (with `Path`, `HttpOnly`, `Secure`
/// over HTTPS, and `Max-Age` for `Permanent` only) or the header. `expires` is the session's
/// end: a new one for a new session, the old one when a dead pod's session moves.
pub(crate) fn write_session(
    p: &SessionPersistence,
    key: Option<&SessionKey>,
    h: &mut HeaderMap,
    rule: Option<&RuleExt>,
    new: NewSession<'_>,
) {
    let NewSession { route, expires, now, https } = new;
    // Without a key a timed session cannot be sealed (the proxy said so at start).
    let Some(value) = session::seal(p, key, route, expires) else { return };
    match p.kind {
        SessionKind::Header => {
            if let (Some(name), Ok(v)) = (rule.and_then(|r| r.session_header.as_ref()), HeaderValue::try_from(value)) {
                h.insert(name.clone(), v);
            }
        }
        SessionKind::Cookie => {
            let mut c = format!("{}={value}; Path={}; HttpOnly", p.name, p.cookie_path);
            if https {
                c.push_str("; Secure");
            }
            if p.lifetime == CookieLifetime::Permanent
                && let Some(at) = expires
            {
                c.push_str(&format!("; Max-Age={}", at.saturating_sub(now)));
            }
            if let Ok(v) = HeaderValue::try_from(c) {
                h.append(header::SET_COOKIE, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_prefix_match_follows_the_spec_table() {
        // HTTPPathModifier's table in the HTTPRoute reference.
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/a/b", "/", "/x", "/x/a/b"),
        ];
        for (path, prefix, repl, want) in cases {
            assert_eq!(replace_prefix(prefix, repl, path), want, "{path} {prefix} {repl}");
        }
    }

    fn redirect_of(
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
        path: Option<PathModifier>,
    ) -> RequestRedirect {
        RequestRedirect { scheme: scheme.map(Into::into), hostname: host.map(Into::into), path, port, status: 302 }
    }

    #[test]
    fn redirect_locations() {
        let uri: Uri = "/shop/cart?x=1".parse().unwrap();
        let m = RequestMatch { path: PathMatch::Prefix("/shop".into()), ..Default::default() };
        let loc =
            |r: &RequestRedirect, host: &str, https: bool| redirect_location(r, Some(&m), Some(host), https, &uri);
        assert_eq!(
            loc(&redirect_of(Some("https"), None, None, None), "a.com:8080", false),
            "https://a.com/shop/cart?x=1"
        );
        assert_eq!(
            loc(&redirect_of(None, Some("b.com"), None, None), "a.com:8080", false),
            "http://b.com:8080/shop/cart?x=1"
        );
        assert_eq!(loc(&redirect_of(None, None, Some(443), None), "a.com", true), "https://a.com/shop/cart?x=1");
        assert_eq!(
            loc(&redirect_of(Some("http"), None, Some(8443), None), "a.com", true),
            "http://a.com:8443/shop/cart?x=1"
        );
        let full = redirect_of(None, None, None, Some(PathModifier::ReplaceFullPath("/new".into())));
        assert_eq!(loc(&full, "a.com", false), "http://a.com/new?x=1");
        let prefix = redirect_of(None, None, None, Some(PathModifier::ReplacePrefixMatch("/store".into())));
        assert_eq!(loc(&prefix, "[::1]:81", false), "http://[::1]:81/store/cart?x=1");
    }

    #[test]
    fn a_redirect_never_sends_the_client_to_a_host_its_host_header_smuggled_in() {
        let uri: Uri = "/a".parse().unwrap();
        let r = redirect_of(Some("https"), None, None, None);
        for host in ["evil.example/x.example.com", "evil.example?.example.com", "a@evil.example", "a b.example.com"] {
            let resp = redirect(&r, None, Some(host), false, &uri);
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{host}");
            assert!(resp.headers().get(header::LOCATION).is_none(), "{host}");
        }
        for host in ["a.example.com", "a.example.com:8080", "[::1]:81", "10.0.0.1"] {
            assert_eq!(redirect(&r, None, Some(host), false, &uri).status(), StatusCode::FOUND, "{host}");
        }
        let fixed = redirect_of(Some("https"), Some("b.example.com"), None, None);
        let resp = redirect(&fixed, None, Some("evil.example/x"), false, &uri);
        assert_eq!(
            resp.headers().get(header::LOCATION).unwrap(),
            "https://b.example.com/a",
            "the route names the host"
        );
    }

    #[test]
    fn modifiers_set_add_remove() {
        let cfg_modifier = HeaderModifier {
            set: vec![("x-set".into(), "s".into())],
            add: vec![("x-add".into(), "a".into())],
            remove: vec!["x-gone".into()],
        };
        let pool = PoolId { namespace: "ns".into(), name: "p".into() };
        let m = Modifier::of(&cfg_modifier, &pool);
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("first"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        m.apply(&mut h);
        assert_eq!(h.get_all("x-set").iter().collect::<Vec<_>>(), ["s"]);
        assert_eq!(h.get_all("x-add").iter().collect::<Vec<_>>(), ["first", "a"]);
        assert!(!h.contains_key("x-gone"));
    }

    fn persistence(kind: SessionKind, lifetime: CookieLifetime, timeout: Option<u64>) -> SessionPersistence {
        SessionPersistence {
            kind,
            name: "Sess".into(),
            cookie_path: "/app".into(),
            lifetime,
            absolute_timeout: timeout.map(std::time::Duration::from_secs),
        }
    }

    #[test]
    fn session_cookies_and_headers_round_trip() {
        let key = SessionKey::from_bytes(&[3; 32]).ok();
        let new = NewSession { route: "pod-1", expires: Some(1100), now: 1000, https: true };
        let p = persistence(SessionKind::Cookie, CookieLifetime::Permanent, Some(100));
        let mut h = HeaderMap::new();
        write_session(&p, key.as_ref(), &mut h, None, new);
        let set = h.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_owned();
        assert!(set.starts_with("Sess=pod-1.1100."), "{set}");
        assert!(set.ends_with("; Path=/app; HttpOnly; Secure; Max-Age=100"), "{set}");
        let mut req = HeaderMap::new();
        let pair = set.split(';').next().unwrap();
        req.insert(header::COOKIE, HeaderValue::try_from(format!("a=b; {pair}")).unwrap());
        let s = read_session(&p, key.as_ref(), &req, None, 1099);
        assert_eq!((s.route, s.expires, s.expired, s.forged), (Some("pod-1"), Some(1100), false, false));
        let s = read_session(&p, key.as_ref(), &req, None, 1100);
        assert_eq!((s.route, s.present, s.expired), (None, true, true));

        let p = persistence(SessionKind::Header, CookieLifetime::Session, None);
        let rule = RuleExt { session_header: HeaderName::try_from("sess").ok(), ..Default::default() };
        let mut h = HeaderMap::new();
        write_session(&p, None, &mut h, Some(&rule), NewSession { expires: None, ..new });
        assert_eq!(h.get("sess").unwrap(), "pod-1", "no timeout: the route itself, no key needed");
        assert!(h.get(header::SET_COOKIE).is_none());
        let s = read_session(&p, None, &h, Some(&rule), 0);
        assert_eq!(s.route, Some("pod-1"));
    }

    #[test]
    fn a_timed_session_without_a_key_is_never_set_nor_honoured() {
        let p = persistence(SessionKind::Cookie, CookieLifetime::Session, Some(100));
        let mut h = HeaderMap::new();
        let new = NewSession { route: "pod-1", expires: Some(1100), now: 1000, https: false };
        write_session(&p, None, &mut h, None, new);
        assert!(h.is_empty());
        h.insert(header::COOKIE, HeaderValue::from_static("Sess=pod-1"));
        let s = read_session(&p, None, &h, None, 0);
        assert!(s.forged && s.route.is_none());
    }
}
