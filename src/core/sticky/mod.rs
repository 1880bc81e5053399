//! Finding a request's session route, with Apache mod_proxy_balancer's precedence and parsed
//! properly (Apache does a raw substring search and never unquotes; routeid does neither).
//!
//! Sources, first non-empty value wins (README "Stickiness"):
//! 1. the path parameter `;B=value` (when `pathParameter` is on), then the query parameter `B`;
//! 2. the session cookie `A`;
//! 3. the proxy's own route cookie, when it has another name — consulted also when the value found
//!    in 1–2 carries no route, because the application's plain session id (`JSESSIONID=abc`)
//!    must not hide the route the proxy itself inserted.
//!
//! A value found in 1–2 without a separator ends the search of 1–2 (Apache) and carries no route.
//! The route is whatever follows the **first** separator. A route that is not made of route-safe
//! bytes (see [`crate::core::config::is_valid_route`]) is treated as no route and flagged
//! `malformed`: nothing a client sends can reach a header unescaped.

use std::borrow::Cow;

use super::config::{StickyConfig, is_valid_route};
use crate::core::names::CookieMode;

/// Where a session value was found; the access log's `BALANCER_SESSION_STICKY` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteSource {
    /// `;name=value` in the path.
    PathParameter,
    /// `?name=value` in the query.
    QueryParameter,
    /// The application's session cookie.
    SessionCookie,
    /// The proxy's route cookie.
    RouteCookie,
}

impl RouteSource {
    /// A bounded label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSource::PathParameter => "path-parameter",
            RouteSource::QueryParameter => "query-parameter",
            RouteSource::SessionCookie => "session-cookie",
            RouteSource::RouteCookie => "route-cookie",
        }
    }
}

/// What the request says about its session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteLookup<'a> {
    /// Where the route (or, failing that, the session value) came from.
    pub source: Option<RouteSource>,
    /// The route, validated route-safe.
    pub route: Option<Cow<'a, str>>,
    /// A value was present but unusable (bad bytes, too long): counted, never reflected.
    pub malformed: bool,
}

/// Finds the route of a request from its path-and-query and its `Cookie` header values.
///
/// `cookie_headers` is called at most twice and yields the raw `Cookie` header values.
pub fn extract_route<'a, F, I>(cfg: &StickyConfig, path_and_query: &'a str, cookie_headers: F) -> RouteLookup<'a>
where
    F: Fn() -> I,
    I: Iterator<Item = &'a [u8]>,
{
    let mut out = RouteLookup::default();
    let (path, query) = match path_and_query.find('?') {
        Some(i) => (&path_and_query[..i], Some(&path_and_query[i + 1..])),
        None => (path_and_query, None),
    };
    let app_value: Option<(RouteSource, Cow<'a, [u8]>)> = {
        let from_path = if cfg.path_parameter { path_parameter(path, &cfg.param_name) } else { None };
        let from_url = from_path.map(|v| (RouteSource::PathParameter, percent_decode(v.as_bytes()))).or_else(|| {
            query
                .and_then(|q| query_parameter(q, &cfg.param_name))
                .map(|v| (RouteSource::QueryParameter, percent_decode(v.as_bytes())))
        });
        from_url.or_else(|| {
            cookie_value(cookie_headers(), &cfg.cookie_name).map(|v| (RouteSource::SessionCookie, Cow::Borrowed(v)))
        })
    };
    let prefix_mode = cfg.cookie.as_ref().is_some_and(|c| c.mode == CookieMode::Prefix);
    if let Some((source, value)) = app_value {
        out.source = Some(source);
        let route = if prefix_mode && source == RouteSource::SessionCookie {
            // Prefix mode: `route~session`; the route comes first.
            value.iter().position(|&b| b == b'~').map(|i| cow_slice(value, 0, i))
        } else {
            route_part(cfg.separator, value)
        };
        if let Some(r) = route {
            match validated(r) {
                Ok(r) => {
                    out.route = Some(r);
                    return out;
                }
                Err(()) => out.malformed = true,
            }
        }
    }
    if let Some(c) = cfg.cookie.as_ref().filter(|c| c.mode == CookieMode::Insert && c.name != cfg.cookie_name)
        && let Some(v) = cookie_value(cookie_headers(), &c.name)
    {
        match route_part(cfg.separator, Cow::Borrowed(v)).map(validated) {
            Some(Ok(r)) => {
                out.source = Some(RouteSource::RouteCookie);
                out.route = Some(r);
            }
            Some(Err(())) => out.malformed = true,
            None => {}
        }
    }
    out
}

fn cow_slice(v: Cow<'_, [u8]>, start: usize, end: usize) -> Cow<'_, [u8]> {
    match v {
        Cow::Borrowed(b) => Cow::Borrowed(&b[start..end]),
        Cow::Owned(o) => Cow::Owned(o[start..end].to_vec()),
    }
}

fn route_part(separator: Option<u8>, value: Cow<'_, [u8]>) -> Option<Cow<'_, [u8]>> {
    match separator {
        None => Some(value),
        Some(sep) => {
            let i = value.iter().position(|&b| b == sep)?;
            let len = value.len();
            Some(cow_slice(value, i + 1, len))
        }
    }
}

fn validated(r: Cow<'_, [u8]>) -> Result<Cow<'_, str>, ()> {
    let s: Cow<'_, str> = match r {
        Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).map_err(|_| ())?),
        Cow::Owned(o) => Cow::Owned(String::from_utf8(o).map_err(|_| ())?),
    };
    if is_valid_route(&s) { Ok(s) } else { Err(()) }
}

/// The first non-empty `;name=value` in any path segment.
fn path_parameter<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = path;
    while let Some(i) = rest.find(';') {
        let params = &rest[i + 1..];
        let seg_end = params.find('/').unwrap_or(params.len());
        for p in params[..seg_end].split(';') {
            if let Some(v) = p.strip_prefix(name).and_then(|r| r.strip_prefix('='))
                && !v.is_empty()
            {
                return Some(v);
            }
        }
        rest = &params[seg_end..];
    }
    None
}

/// The first non-empty value of `name` among `&`-separated query pairs.
fn query_parameter<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .find(|v| !v.is_empty())
}

/// Decodes `%XX` (`+` is kept: it is not a space in a path or a session id). Borrows when
/// there is nothing to decode; an invalid escape is kept as it is.
pub fn percent_decode(b: &[u8]) -> Cow<'_, [u8]> {
    if !b.contains(&b'%') {
        return Cow::Borrowed(b);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Iterates `(name, value)` over `Cookie` header values, RFC 6265 leniently: `;` separated,
/// optional white space, quoted values unquoted, pairs without `=` skipped.
pub fn cookie_pairs<'a, I>(headers: I) -> impl Iterator<Item = (&'a [u8], &'a [u8])>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    headers.into_iter().flat_map(|h| h.split(|&b| b == b';')).filter_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let name = pair[..eq].trim_ascii();
        let mut value = pair[eq + 1..].trim_ascii();
        if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
            value = &value[1..value.len() - 1];
        }
        Some((name, value))
    })
}

/// The first non-empty value of cookie `name` (names are case-sensitive; the first wins).
pub fn cookie_value<'a, I>(headers: I, name: &str) -> Option<&'a [u8]>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    cookie_pairs(headers).find(|(n, v)| *n == name.as_bytes() && !v.is_empty()).map(|(_, v)| v)
}

/// Rewrites one `Cookie` header value for the member: drops cookie `drop` (HAProxy `indirect`)
/// and strips `route~` from cookie `unprefix` (Prefix mode). `None` when nothing changes, so the
/// common case costs no allocation.
pub fn rewrite_request_cookie(header: &[u8], drop: Option<&str>, unprefix: Option<&str>) -> Option<Vec<u8>> {
    let touches = cookie_pairs(std::iter::once(header)).any(|(n, v)| {
        drop.is_some_and(|d| n == d.as_bytes()) || unprefix.is_some_and(|u| n == u.as_bytes() && v.contains(&b'~'))
    });
    if !touches {
        return None;
    }
    // Allocated on the first kept pair only: stripping the only cookie costs nothing.
    let mut out = Vec::new();
    for pair in header.split(|&b| b == b';') {
        let trimmed = pair.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        let (name, value) = match trimmed.iter().position(|&b| b == b'=') {
            Some(eq) => (trimmed[..eq].trim_ascii(), Some(trimmed[eq + 1..].trim_ascii())),
            None => (trimmed, None),
        };
        if drop.is_some_and(|d| name == d.as_bytes()) {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        match value {
            Some(v) if unprefix.is_some_and(|u| name == u.as_bytes()) => {
                let v = match v.iter().position(|&b| b == b'~') {
                    Some(i) => &v[i + 1..],
                    None => v,
                };
                out.extend_from_slice(name);
                out.push(b'=');
                out.extend_from_slice(v);
            }
            _ => out.extend_from_slice(trimmed),
        }
    }
    Some(out)
}

/// For a member's `Set-Cookie` of the session cookie, the value routeid sends to the client in
/// Prefix (`route~value`) or Rewrite (`.route`) mode; `None` when the header is another cookie.
pub fn rewrite_set_cookie(
    header: &[u8],
    cookie: &str,
    mode: CookieMode,
    route: &str,
    separator: Option<u8>,
) -> Option<Vec<u8>> {
    let eq = header.iter().position(|&b| b == b'=')?;
    if header[..eq].trim_ascii() != cookie.as_bytes() {
        return None;
    }
    let rest = &header[eq + 1..];
    let value_end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
    let (value, attrs) = (rest[..value_end].trim_ascii(), &rest[value_end..]);
    let mut out = Vec::with_capacity(header.len() + route.len() + 2);
    out.extend_from_slice(cookie.as_bytes());
    out.push(b'=');
    match mode {
        CookieMode::Prefix => {
            if value.is_empty() {
                // A deletion: keep it a deletion.
            } else {
                out.extend_from_slice(route.as_bytes());
                out.push(b'~');
                out.extend_from_slice(value);
            }
        }
        CookieMode::Rewrite => {
            if !value.is_empty() {
                out.extend(separator);
                out.extend_from_slice(route.as_bytes());
            }
        }
        CookieMode::Insert => return None,
    }
    out.extend_from_slice(attrs);
    Some(out)
}

/// Whether a user agent handles `SameSite=None` (false for the clients Chromium lists as
/// incompatible: Chrome 40–69 era builds, iOS 12, Safari on macOS 10.14). The same substring
/// tests ingress-nginx applies with `session-cookie-conditional-samesite-none`.
pub fn same_site_none_compatible(user_agent: &[u8]) -> bool {
    let has = |needle: &[u8]| user_agent.windows(needle.len()).any(|w| w == needle);
    let old_chrome = has(b"Chrome/4") || has(b"Chrome/5") || has(b"Chrome/6");
    let ios12 = has(b"CPU iPhone OS 12") || has(b"iPad; CPU OS 12");
    let mojave_safari = has(b"Macintosh") && has(b"Intel Mac OS X 10_14") && has(b"Safari") && !has(b"Chrome");
    !(old_chrome || ios12 || mojave_safari)
}

#[cfg(test)]
mod tests;
