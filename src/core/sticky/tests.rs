use super::*;
use crate::core::config::CookieConfig;
use proptest::prelude::*;

fn cfg() -> StickyConfig {
    crate::core::testing::default_sticky()
}

fn with_cookie(mut c: StickyConfig, name: &str, mode: CookieMode) -> StickyConfig {
    c.cookie = Some(CookieConfig {
        name: name.into(),
        mode,
        indirect: true,
        nocache: true,
        attributes: "; Path=/".into(),
        conditional_same_site_none: false,
        expires: None,
        secure_attributes: "; Path=/; Secure".into(),
    });
    c
}

fn run(c: &StickyConfig, pq: &str, cookies: &[&str]) -> (Option<String>, Option<RouteSource>, bool) {
    let l = extract_route(c, pq, || cookies.iter().map(|s| s.as_bytes()));
    (l.route.map(|r| r.into_owned()), l.source, l.malformed)
}

use RouteSource::*;

/// (case, path-and-query, cookie headers, expected route, expected source)
type Case = (&'static str, &'static str, &'static [&'static str], Option<&'static str>, Option<RouteSource>);

#[rustfmt::skip]
const CASES: &[Case] = &[
    ("nothing",                        "/",                               &[],                                   None,              None),
    ("cookie",                         "/",                               &["JSESSIONID=abc.pod-1"],             Some("pod-1"),     Some(SessionCookie)),
    ("cookie with spaces",             "/",                               &["  JSESSIONID = abc.pod-1 ; x=1"],   Some("pod-1"),     Some(SessionCookie)),
    ("cookie quoted",                  "/",                               &["JSESSIONID=\"abc.pod-1\""],         Some("pod-1"),     Some(SessionCookie)),
    ("cookie among others",            "/",                               &["a=1; JSESSIONID=abc.n2; b=2"],      Some("n2"),        Some(SessionCookie)),
    ("cookie in second header",        "/",                               &["a=1", "JSESSIONID=abc.n2"],         Some("n2"),        Some(SessionCookie)),
    ("duplicate cookie first wins",    "/",                               &["JSESSIONID=a.n1; JSESSIONID=b.n2"], Some("n1"),        Some(SessionCookie)),
    ("duplicate across headers",       "/",                               &["JSESSIONID=a.n1", "JSESSIONID=b.n2"], Some("n1"),      Some(SessionCookie)),
    ("empty cookie skipped",           "/",                               &["JSESSIONID=; JSESSIONID=b.n2"],     Some("n2"),        Some(SessionCookie)),
    ("cookie name case-sensitive",     "/",                               &["jsessionid=abc.n1"],                None,              None),
    ("cookie name prefix no match",    "/",                               &["XJSESSIONID=abc.n1"],               None,              None),
    ("cookie without separator",       "/",                               &["JSESSIONID=abc"],                   None,              Some(SessionCookie)),
    ("separator at start",             "/",                               &["JSESSIONID=.n1"],                   Some("n1"),        Some(SessionCookie)),
    ("separator at end",               "/",                               &["JSESSIONID=abc."],                  None,              Some(SessionCookie)),
    ("first separator wins",           "/",                               &["JSESSIONID=abc.n1.extra"],          Some("n1.extra"),  Some(SessionCookie)),
    ("cookie without equals skipped",  "/",                               &["JSESSIONID; JSESSIONID=a.n3"],      Some("n3"),        Some(SessionCookie)),
    ("query parameter",                "/app?jsessionid=abc.n1",          &[],                                   Some("n1"),        Some(QueryParameter)),
    ("query among others",             "/app?x=1&jsessionid=abc.n1&y=2",  &[],                                   Some("n1"),        Some(QueryParameter)),
    ("query name case-sensitive",      "/app?JSESSIONID=abc.n1",          &[],                                   None,              None),
    ("query name prefix no match",     "/app?xjsessionid=abc.n1",         &[],                                   None,              None),
    ("raw substring is not a match",   "/xjsessionid=abc.n1",             &[],                                   None,              None),
    ("query empty skipped",            "/app?jsessionid=&jsessionid=a.n2", &[],                                  Some("n2"),        Some(QueryParameter)),
    ("query beats cookie",             "/app?jsessionid=abc.n1",          &["JSESSIONID=abc.n2"],                Some("n1"),        Some(QueryParameter)),
    ("query without route stops",      "/app?jsessionid=abc",             &["JSESSIONID=abc.n2"],                None,              Some(QueryParameter)),
    ("query empty falls to cookie",    "/app?jsessionid=",                &["JSESSIONID=abc.n2"],                Some("n2"),        Some(SessionCookie)),
    ("query percent-encoded",          "/app?jsessionid=abc.n%2D1",       &[],                                   Some("n-1"),       Some(QueryParameter)),
    ("query encoded separator",        "/app?jsessionid=abc%2En1",        &[],                                   Some("n1"),        Some(QueryParameter)),
    ("query bad escape kept",          "/app?jsessionid=abc.n%zz",        &[],                                   None,              Some(QueryParameter)),
    ("query encoded CRLF refused",     "/app?jsessionid=a.n1%0D%0ASet-Cookie:x", &[],                            None,              Some(QueryParameter)),
    ("path parameter",                 "/app;jsessionid=abc.n1",          &[],                                   Some("n1"),        Some(PathParameter)),
    ("path parameter then query",      "/app;jsessionid=abc.n1?x=1",      &[],                                   Some("n1"),        Some(PathParameter)),
    ("path parameter mid path",        "/a;jsessionid=abc.n1/b",          &[],                                   Some("n1"),        Some(PathParameter)),
    ("path parameter among others",    "/a;x=1;jsessionid=abc.n3",        &[],                                   Some("n3"),        Some(PathParameter)),
    ("path parameter beats query",     "/a;jsessionid=a.n1?jsessionid=a.n2", &[],                                Some("n1"),        Some(PathParameter)),
    ("path parameter beats cookie",    "/a;jsessionid=a.n1",              &["JSESSIONID=a.n2"],                  Some("n1"),        Some(PathParameter)),
    ("path parameter empty skipped",   "/a;jsessionid=?jsessionid=a.n2",  &[],                                   Some("n2"),        Some(QueryParameter)),
    ("semicolon in query not a path param", "/a?x=1;jsessionid=a.n1",     &[],                                   None,              None),
    ("path parameter encoded",         "/a;jsessionid=a.n%31",            &[],                                   Some("n1"),        Some(PathParameter)),
    ("route with control chars",       "/",                               &["JSESSIONID=a.n\x011"],              None,              Some(SessionCookie)),
    ("route with comma",               "/",                               &["JSESSIONID=a.n1,n2"],               None,              Some(SessionCookie)),
    ("route with quote inside",        "/",                               &["JSESSIONID=a.n\"1"],                None,              Some(SessionCookie)),
    ("route with space inside",        "/",                               &["JSESSIONID=a.n 1"],                 None,              Some(SessionCookie)),
    ("route with colon allowed",       "/",                               &["JSESSIONID=a.ns:n1"],               Some("ns:n1"),     Some(SessionCookie)),
];

#[test]
fn extraction_table() {
    let c = cfg();
    for (case, pq, cookies, route, source) in CASES {
        let (r, s, _) = run(&c, pq, cookies);
        assert_eq!((r.as_deref(), s), (*route, *source), "case {case:?}: {pq} {cookies:?}");
    }
    assert!(CASES.len() >= 40);
}

#[test]
fn malformed_values_are_flagged() {
    let c = cfg();
    assert!(run(&c, "/", &["JSESSIONID=a.n\x011"]).2);
    assert!(run(&c, "/?jsessionid=a.n1%0D%0A", &[]).2);
    let long = format!("JSESSIONID=a.{}", "r".repeat(300));
    assert_eq!(run(&c, "/", &[&long]), (None, Some(SessionCookie), true));
    assert!(!run(&c, "/", &["JSESSIONID=abc"]).2, "no separator is not malformed");
}

#[test]
fn non_utf8_cookie_is_no_route() {
    let c = cfg();
    let raw: &[u8] = b"JSESSIONID=a.\xff\xfe";
    let l = extract_route(&c, "/", || std::iter::once(raw));
    assert_eq!((l.route, l.malformed), (None, true));
}

#[test]
fn one_name_serves_cookie_and_parameter() {
    let mut c = cfg();
    c.cookie_name = "sid".into();
    c.param_name = "sid".into();
    assert_eq!(run(&c, "/?sid=a.n1", &[]).0.as_deref(), Some("n1"));
    assert_eq!(run(&c, "/", &["sid=a.n2"]).0.as_deref(), Some("n2"));
}

#[test]
fn no_separator_means_whole_value() {
    let mut c = cfg();
    c.separator = None;
    assert_eq!(run(&c, "/", &["JSESSIONID=n1"]).0.as_deref(), Some("n1"));
    assert_eq!(run(&c, "/", &["JSESSIONID=a.n1"]).0.as_deref(), Some("a.n1"));
}

#[test]
fn other_separator() {
    let mut c = cfg();
    c.separator = Some(b'!');
    assert_eq!(run(&c, "/", &["JSESSIONID=a.b!n1"]).0.as_deref(), Some("n1"));
    assert_eq!(run(&c, "/", &["JSESSIONID=a.n1"]).0, None);
}

#[test]
fn path_parameter_can_be_off() {
    let mut c = cfg();
    c.path_parameter = false;
    assert_eq!(run(&c, "/a;jsessionid=a.n1", &["JSESSIONID=a.n2"]).0.as_deref(), Some("n2"));
}

#[test]
fn route_cookie_is_last_and_consulted_when_session_has_no_route() {
    let c = with_cookie(cfg(), "ROUTEID", CookieMode::Insert);
    assert_eq!(run(&c, "/", &["ROUTEID=.n1"]), (Some("n1".into()), Some(RouteCookie), false));
    assert_eq!(
        run(&c, "/", &["ROUTEID=.n1; JSESSIONID=a.n2"]).0.as_deref(),
        Some("n2"),
        "the app's cookie knows better"
    );
    assert_eq!(run(&c, "/", &["ROUTEID=.n1; JSESSIONID=plain"]).0.as_deref(), Some("n1"));
    assert_eq!(run(&c, "/?jsessionid=a.n3", &["ROUTEID=.n1"]).0.as_deref(), Some("n3"));
    assert_eq!(run(&c, "/", &["ROUTEID=n1"]).0, None, "Apache form: route after the separator");
}

#[test]
fn prefix_mode_reads_route_before_tilde() {
    let c = with_cookie(cfg(), "JSESSIONID", CookieMode::Prefix);
    assert_eq!(run(&c, "/", &["JSESSIONID=n1~abc.def"]).0.as_deref(), Some("n1"));
    assert_eq!(run(&c, "/", &["JSESSIONID=abc"]).0, None);
    // URL parameters keep the separator rule.
    assert_eq!(run(&c, "/?jsessionid=abc.n2", &[]).0.as_deref(), Some("n2"));
}

#[test]
fn request_cookie_rewrites() {
    assert_eq!(rewrite_request_cookie(b"a=1; b=2", Some("ROUTEID"), None), None);
    assert_eq!(rewrite_request_cookie(b"a=1; ROUTEID=.n1; b=2", Some("ROUTEID"), None).unwrap(), b"a=1; b=2");
    assert_eq!(rewrite_request_cookie(b"ROUTEID=.n1", Some("ROUTEID"), None).unwrap(), b"");
    assert_eq!(
        rewrite_request_cookie(b"JSESSIONID=n1~abc; x=1", None, Some("JSESSIONID")).unwrap(),
        b"JSESSIONID=abc; x=1"
    );
    assert_eq!(rewrite_request_cookie(b"JSESSIONID=abc", None, Some("JSESSIONID")), None);
}

#[test]
fn set_cookie_rewrites() {
    let p = rewrite_set_cookie(b"JSESSIONID=abc; Path=/; HttpOnly", "JSESSIONID", CookieMode::Prefix, "n1", Some(b'.'));
    assert_eq!(p.unwrap(), b"JSESSIONID=n1~abc; Path=/; HttpOnly");
    let r = rewrite_set_cookie(b"JSESSIONID=abc; Path=/", "JSESSIONID", CookieMode::Rewrite, "n1", Some(b'.'));
    assert_eq!(r.unwrap(), b"JSESSIONID=.n1; Path=/");
    assert_eq!(rewrite_set_cookie(b"other=abc", "JSESSIONID", CookieMode::Prefix, "n1", Some(b'.')), None);
    let del = rewrite_set_cookie(b"JSESSIONID=; Max-Age=0", "JSESSIONID", CookieMode::Prefix, "n1", Some(b'.'));
    assert_eq!(del.unwrap(), b"JSESSIONID=; Max-Age=0", "a deletion stays a deletion");
}

#[test]
fn huge_cookie_header_is_handled() {
    let c = with_cookie(cfg(), "ROUTEID", CookieMode::Insert);
    let many: String = (0..200).map(|i| format!("c{i}={}; ", "v".repeat(40))).collect::<String>() + "JSESSIONID=a.n7";
    assert!(many.len() > 8 * 1024);
    assert_eq!(run(&c, "/", &[&many]).0.as_deref(), Some("n7"));
}

fn header_safe(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:~".contains(&b))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn extraction_never_panics_and_routes_are_header_safe(
        pq in "/[ -~]{0,80}",
        cookie in proptest::collection::vec(any::<u8>(), 0..200),
        prefix_mode in any::<bool>(),
    ) {
        let c = if prefix_mode { with_cookie(cfg(), "JSESSIONID", CookieMode::Prefix) } else { with_cookie(cfg(), "ROUTEID", CookieMode::Insert) };
        let l = extract_route(&c, &pq, || std::iter::once(cookie.as_slice()));
        if let Some(r) = l.route {
            prop_assert!(header_safe(&r), "route {:?}", r);
            prop_assert!(!r.is_empty() && r.len() <= 253);
        }
        let _ = rewrite_request_cookie(&cookie, Some("ROUTEID"), Some("JSESSIONID"));
    }

    #[test]
    fn structured_inputs_roundtrip(session in "[A-Za-z0-9]{1,20}", route in "[a-z0-9-]{1,30}") {
        let c = cfg();
        let header = format!("JSESSIONID={session}.{route}");
        let (got, _, malformed) = run(&c, "/", &[&header]);
        prop_assert_eq!(got.as_deref(), Some(route.as_str()));
        prop_assert!(!malformed);
        let url = format!("/a;jsessionid={session}.{route}?jsessionid=x.other");
        let from_url = run(&c, &url, &[]).0;
        prop_assert_eq!(from_url.as_deref(), Some(route.as_str()));
    }
}

#[test]
fn same_site_none_incompatible_clients() {
    let incompatible = [
        "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/59.0.3071.115 Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 12_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
        "Mozilla/5.0 (iPad; CPU OS 12_1 like Mac OS X) AppleWebKit/605.1.15",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1 Safari/605.1.15",
    ];
    for ua in incompatible {
        assert!(!same_site_none_compatible(ua.as_bytes()), "{ua}");
    }
    let compatible = [
        "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        "curl/8.0",
        "",
    ];
    for ua in compatible {
        assert!(same_site_none_compatible(ua.as_bytes()), "{ua}");
    }
}
