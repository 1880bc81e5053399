//! Fuzz targets for everything a client or a pools file can put in front of routeid's parsers:
//! route extraction, the `Cookie` and `Set-Cookie` rewrites, the standalone config parser, and
//! Gateway API session values and path rewrites.
//!
//! They are [bolero](https://docs.rs/bolero) targets in test mode, so they run on the stable
//! toolchain inside `cargo test`: each replays its committed corpus
//! (`src/__fuzz__/<target>/corpus/`) and then generates random inputs for a bounded time
//! ([`CI_TIME`], or `BOLERO_RANDOM_TEST_TIME_MS`). The same targets run under libFuzzer with
//! `cargo bolero test` on a nightly toolchain (README, "Fuzzing").
//!
//! Every target takes raw bytes and decodes them itself, so a corpus file is readable and a
//! byte-level fuzzer mutates what matters. Each asserts properties beyond "does not panic":
//! a route found is route-safe, a rewritten header is still a valid header (never CR/LF) and keeps
//! the other cookies, and a refused pools file names the document and field of every problem.

use std::time::Duration;

use http::HeaderValue;

use crate::api::CookieMode;
use crate::core::config::{CookieConfig, StickyConfig, is_valid_route};
use crate::core::sticky::{RouteSource, cookie_pairs, extract_route, rewrite_request_cookie, rewrite_set_cookie};
use crate::standalone::parse_pools;

/// Random inputs per target in CI, after the corpus: a few seconds on a busy 2-core machine.
const CI_TIME: Duration = Duration::from_secs(2);

/// Bytes a header value may hold (hyper refuses the others at the door): visible ASCII, space,
/// tab and obs-text.
fn header_safe(b: &[u8]) -> bool {
    HeaderValue::from_bytes(b).is_ok()
}

/// Pieces of cookies and URLs that random bytes would rarely spell: the bytes 0x80–0x9f stand
/// for them (see [`expand`]), every other byte for itself.
const TOKENS: [&[u8]; 32] = [
    b"jsessionid=",
    b"JSESSIONID=",
    b"ROUTEID=",
    b"; ",
    b";",
    b"?",
    b"&",
    b"=",
    b".",
    b"~",
    b"/",
    b"%2e",
    b"%0d%0a",
    b"%3B",
    b"%",
    b"\r\n",
    b"\r",
    b"\0",
    b"\xff",
    b"\"",
    b" ",
    b",",
    b"n1",
    b"pod-1",
    b"abc",
    b";jsessionid=",
    b"?jsessionid=",
    b"=.n1",
    b"route~",
    b"\t",
    b"\xc3\xa9",
    b"..",
];

/// Replaces each byte 0x80–0x9f by its [`TOKENS`] entry, so that random inputs reach the
/// interesting branches within the few seconds CI gives a target.
fn expand(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 2);
    for &b in input {
        match b {
            0x80..=0x9f => out.extend_from_slice(TOKENS[usize::from(b - 0x80)]),
            _ => out.push(b),
        }
    }
    out
}

/// One of a few separators, or none (the whole value is the route).
fn separator(bits: u8) -> Option<u8> {
    [Some(b'.'), Some(b':'), Some(b'-'), None][usize::from(bits & 3)]
}

/// The sticky configuration selected by the first input byte: path parameters on or off, the
/// separator, one or two names, and the proxy cookie's mode.
fn sticky_config(sel: u8) -> StickyConfig {
    let same_names = sel & 0x20 != 0;
    let cookie = match (sel >> 3) & 3 {
        0 => None,
        1 => Some(("ROUTEID", CookieMode::Insert)),
        2 => Some(("JSESSIONID", CookieMode::Prefix)),
        _ => Some(("JSESSIONID", CookieMode::Rewrite)),
    };
    StickyConfig {
        cookie_name: "JSESSIONID".into(),
        param_name: if same_names { "JSESSIONID" } else { "jsessionid" }.into(),
        separator: separator(sel >> 1),
        path_parameter: sel & 1 != 0,
        cookie: cookie.map(|(name, mode)| CookieConfig {
            name: name.into(),
            mode,
            indirect: true,
            nocache: true,
            attributes: "; Path=/".into(),
            secure_attributes: "; Path=/; Secure".into(),
            conditional_same_site_none: false,
            expires: None,
        }),
        failover: true,
        change_on_failure: true,
        headers_to_member: false,
        headers_to_client: false,
        persistence: None,
    }
}

/// `[config byte] path-and-query [\n cookie header]*`: the path as hyper would hand it over
/// (text), the cookie headers as raw bytes (obs-text, NUL, anything).
fn check_route_extraction(input: &[u8]) {
    let Some((&sel, rest)) = input.split_first() else { return };
    let rest = &expand(rest)[..];
    let cfg = sticky_config(sel);
    let mut parts = rest.split(|&b| b == b'\n');
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let cookies: Vec<&[u8]> = parts.collect();
    let calls = std::cell::Cell::new(0);
    let lookup = extract_route(&cfg, &path, || {
        calls.set(calls.get() + 1);
        cookies.iter().copied()
    });
    assert!(calls.get() <= 2, "the cookie headers were read {} times", calls.get());
    if let Some(route) = &lookup.route {
        assert!(is_valid_route(route), "route {route:?} is not route-safe");
        assert!(lookup.source.is_some(), "a route without a source");
        assert!(!lookup.malformed || lookup.source == Some(RouteSource::RouteCookie));
    }
    let again = extract_route(&cfg, &path, || cookies.iter().copied());
    assert_eq!(lookup, again, "extraction is not deterministic");
}

/// Cookie names other than `drop`, in order: what the member must still see.
fn kept_names<'a>(header: &'a [u8], drop: Option<&str>) -> Vec<&'a [u8]> {
    cookie_pairs(std::iter::once(header)).map(|(n, _)| n).filter(|n| drop.is_none_or(|d| *n != d.as_bytes())).collect()
}

/// `[selector byte] Cookie header`: the selector picks the cookie to drop and the one to
/// unprefix.
fn check_request_cookie(input: &[u8]) {
    let Some((&sel, header)) = input.split_first() else { return };
    let header = &expand(header)[..];
    let drop = [None, Some("ROUTEID"), Some("JSESSIONID"), Some("")][usize::from(sel & 3)];
    let unprefix = [None, Some("JSESSIONID"), Some("ROUTEID"), None][usize::from((sel >> 2) & 3)];
    let Some(out) = rewrite_request_cookie(header, drop, unprefix) else {
        assert!(drop.is_none_or(|d| !kept_names(header, None).contains(&d.as_bytes())), "the cookie to drop was kept");
        return;
    };
    if header_safe(header) {
        assert!(header_safe(&out), "{:?} became the invalid header {:?}", header.escape_ascii(), out.escape_ascii());
    }
    let added = out.iter().find(|b| !header.contains(b) && !b"; =".contains(b));
    assert!(added.is_none(), "byte {added:?} appeared from nowhere in {:?}", out.escape_ascii());
    assert_eq!(kept_names(&out, None), kept_names(header, drop), "other cookies must pass unchanged, in order");
}

/// `[mode byte] [route length] route bytes, Set-Cookie header`: routes are drawn from the
/// route-safe alphabet, as the validated config guarantees.
fn check_set_cookie(input: &[u8]) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:~";
    let [sel, len, rest @ ..] = input else { return };
    let (route_bytes, header) = rest.split_at(usize::from(len % 24).min(rest.len()));
    let header = &expand(header)[..];
    let route: String = route_bytes.iter().map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])).collect();
    if !is_valid_route(&route) {
        return;
    }
    let mode = [CookieMode::Prefix, CookieMode::Rewrite, CookieMode::Insert][usize::from(sel % 3)];
    let sep = separator(sel >> 2);
    let Some(out) = rewrite_set_cookie(header, "JSESSIONID", mode, &route, sep) else { return };
    assert_ne!(mode, CookieMode::Insert, "Insert mode never rewrites the application's cookie");
    assert!(out.starts_with(b"JSESSIONID="), "{:?}", out.escape_ascii());
    if header_safe(header) {
        assert!(header_safe(&out), "{:?} became the invalid header {:?}", header.escape_ascii(), out.escape_ascii());
    }
    let attrs = header.iter().position(|&b| b == b';').map_or(&[][..], |i| &header[i..]);
    assert!(out.ends_with(attrs), "the attributes of {:?} were lost", header.escape_ascii());
}

/// A refused file names, for every problem, the document (and its field) or the pools in
/// conflict; an accepted one holds only route-safe members.
fn check_pools_text(text: &str) {
    match parse_pools(text) {
        Ok(pools) => {
            assert!(!pools.is_empty(), "accepted a file without pools");
            for m in pools.iter().flat_map(|p| &p.members) {
                assert!(is_valid_route(m.route.as_str()), "accepted route {:?}", m.route.as_str());
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "refused without a reason");
            for p in &problems {
                let named = p.starts_with("document ") || p.starts_with("pool ") || p == "no BalancerPool documents";
                assert!(named, "a problem that names no document: {p:?}");
            }
        }
    }
}

/// The pools file as given (UTF-8, lossily).
fn check_pools_file(input: &[u8]) {
    check_pools_text(&String::from_utf8_lossy(input));
}

/// Fields a pools document is filled with, in order; a slot the input leaves out keeps a good
/// value, so that one bad field at a time reaches validation.
const SLOTS: &[(&str, &str)] = &[
    ("name", "shop"),
    ("host", "shop.example.com"),
    ("prefix", "/shop"),
    ("rewrite", "/"),
    ("lb", "ByRequests"),
    ("names", "JSESSIONID"),
    ("sep", "."),
    ("cookie", "ROUTEID"),
    ("mode", "Insert"),
    ("maxAge", "1h"),
    ("connect", "2s"),
    ("address", "127.0.0.1:8081"),
    ("route", "shop-0"),
    ("status", "Drain"),
];

/// `slot\nslot\n...`: each line replaces one field of a valid document (as a quoted YAML
/// string, so the YAML stays well-formed and the validation is what gets exercised).
fn check_pools_fields(input: &[u8]) {
    let mut given = input.split(|&b| b == b'\n').map(|s| String::from_utf8_lossy(s).into_owned());
    let v: Vec<String> = SLOTS
        .iter()
        .map(|(_, good)| given.next().unwrap_or_else(|| (*good).to_owned()))
        .map(|s| serde_json::to_string(&s).unwrap_or_default())
        .collect();
    let doc = format!(
        "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: {}}}\nspec:\n  \
         frontend: {{hosts: [{}], pathPrefix: {}, rewritePrefix: {}}}\n  lbMethod: {}\n  \
         sticky: {{names: [{}], separator: {}, cookie: {{name: {}, mode: {}, maxAge: {}}}}}\n  \
         timeouts: {{connect: {}}}\n  backend:\n    members: [{{address: {}, route: {}}}]\n  \
         members: [{{route: {}, status: {}}}]\n",
        v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[12], v[13]
    );
    check_pools_text(&doc);
    if let Err(problems) = parse_pools(&doc)
        && problems.len() == 1
        && problems[0].starts_with(&format!("document 1 ({}): ", v[0].trim_matches('"')))
    {
        let detail = &problems[0][problems[0].find("): ").map_or(0, |i| i + 3)..];
        assert!(
            detail.starts_with("spec.") || detail.starts_with("metadata.") || detail.starts_with("another "),
            "a problem that names no field: {:?}",
            problems[0]
        );
    }
}

#[test]
fn route_extraction() {
    bolero::check!().with_test_time(CI_TIME).for_each(check_route_extraction);
}

#[test]
fn request_cookie_rewrite() {
    bolero::check!().with_test_time(CI_TIME).for_each(check_request_cookie);
}

#[test]
fn set_cookie_rewrite() {
    bolero::check!().with_test_time(CI_TIME).for_each(check_set_cookie);
}

#[test]
fn pools_file() {
    bolero::check!().with_test_time(CI_TIME).for_each(check_pools_file);
}

#[test]
fn pools_fields() {
    bolero::check!().with_test_time(CI_TIME).for_each(check_pools_fields);
}

/// A Gateway API session value from the client: never a panic; valid only with a route-safe
/// route, and, with a timeout, only if this proxy sealed it (random bytes never carry a good MAC).
/// The same bytes as a request path: a prefix replacement is an absolute path.
fn check_gateway_input(input: &[u8]) {
    use crate::core::gateway::{CookieLifetime, SessionKind, SessionPersistence};
    use crate::core::session::{Opened, SessionKey, open, seal};
    let Ok(text) = std::str::from_utf8(input) else { return };
    let Ok(key) = SessionKey::from_bytes(&[7; 32]) else { return };
    for timeout in [None, Some(Duration::from_secs(60))] {
        let p = SessionPersistence {
            kind: SessionKind::Cookie,
            name: "s".into(),
            cookie_path: "/".into(),
            lifetime: CookieLifetime::Session,
            absolute_timeout: timeout,
        };
        if let Opened::Valid { route, expires } = open(&p, Some(&key), text, 1000) {
            assert!(is_valid_route(route), "{text:?}");
            if timeout.is_some() {
                assert_eq!(seal(&p, Some(&key), route, expires).as_deref(), Some(text), "only sealed values open");
            }
        }
    }
    if let Some(after) = text.strip_prefix('/') {
        let (prefix, rest) = text.split_at(after.find('/').map_or(text.len(), |i| i + 1));
        for repl in ["", "/", "/x", "/x/"] {
            let out = crate::proxy::gateway::replace_prefix(prefix, repl, text);
            assert!(out.starts_with('/'), "{prefix:?} {repl:?} {text:?} gave {out:?}");
            assert!(out.ends_with(rest.trim_start_matches('/')), "{out:?} keeps {rest:?}");
        }
    }
}

#[test]
fn gateway_input() {
    bolero::check!().with_test_time(CI_TIME).for_each(check_gateway_input);
}
