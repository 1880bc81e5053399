//! Gateway API rules through the real proxy with real members: request matches, filters and
//! GEP-1619 session persistence. The pools are core configs built here, as the controller's
//! translation builds them (no API server needed).

use std::net::SocketAddr;
use std::time::Duration;

use routeid::core::PoolConfig;
use routeid::core::config::StickyConfig;
use routeid::core::gateway::{
    CookieLifetime, Filters, GatewayRule, HeaderMatch, HeaderModifier, PathMatch, PathModifier, RequestMatch,
    RequestRedirect, RouteOrder, SessionKind, SessionPersistence, UrlRewrite,
};
use routeid::core::session::{SessionKey, WallClock};
use routeid::proxy::ProxySettings;
use routeid::runtime::Running;

use crate::support::*;

const START: u64 = 1_800_000_000;

/// One HTTPRoute rule as a pool: `members` as `(address, route, weight)`.
fn rule(name: &str, members: &[(SocketAddr, &str, u32)], matches: Vec<RequestMatch>) -> PoolConfig {
    let mut c = routeid::standalone::parse_pools(&pool_yaml(name, members, "")).unwrap().remove(0);
    c.gateway = Some(GatewayRule {
        matches,
        order: RouteOrder { created_unix: 1, route: format!("default/{name}"), rule: 0 },
        filters: Filters::default(),
        ..Default::default()
    });
    c
}

fn prefix(p: &str) -> RequestMatch {
    RequestMatch { path: PathMatch::Prefix(p.into()), ..Default::default() }
}

fn persistence(
    kind: SessionKind,
    name: &str,
    path: &str,
    lifetime: CookieLifetime,
    timeout: Option<u64>,
) -> StickyConfig {
    StickyConfig::persistence(SessionPersistence {
        kind,
        name: name.into(),
        cookie_path: path.into(),
        lifetime,
        absolute_timeout: timeout.map(Duration::from_secs),
    })
}

fn cookie_session(timeout: Option<u64>, lifetime: CookieLifetime) -> StickyConfig {
    persistence(SessionKind::Cookie, "gw-session", "/", lifetime, timeout)
}

fn settings(clock: &WallClock, key: u8) -> ProxySettings {
    ProxySettings {
        drain_timeout: Duration::from_secs(5),
        session_key: Some(SessionKey::from_bytes(&[key; 32]).unwrap()),
        wall_clock: clock.clone(),
        ..Default::default()
    }
}

async fn start(pools: Vec<PoolConfig>, settings: ProxySettings) -> Running {
    let any = "127.0.0.1:0".parse().unwrap();
    Running::start(settings, any, any, pools).await.unwrap().0
}

async fn three() -> [Member; 3] {
    [Member::start("n1").await, Member::start("n2").await, Member::start("n3").await]
}

fn weights(m: &[Member; 3]) -> [(SocketAddr, &'static str, u32); 3] {
    [(m[0].addr, "n1", 1), (m[1].addr, "n2", 1), (m[2].addr, "n3", 1)]
}

/// The `name=value` part of the first Set-Cookie.
fn cookie_pair(got: &Got) -> String {
    let all = got.set_cookies();
    let first = all.first().unwrap_or_else(|| panic!("no Set-Cookie in {:?}", got.headers));
    first.split(';').next().unwrap().to_owned()
}

async fn sticky_count(p: &Running, pool: &str, outcome: &str) -> f64 {
    let m = get(p.admin_addr, "/metrics", &[]).await.body;
    let series =
        format!("routeid_sticky_decisions_total{{namespace=\"default\",outcome=\"{outcome}\",pool=\"{pool}\"}} ");
    m.lines().find_map(|l| l.strip_prefix(&series)).map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn session_cookie_round_trip_sticks_and_has_no_expiry() {
    bounded(async {
        let m = three().await;
        let mut pool = rule("shop", &weights(&m), vec![]);
        pool.sticky = Some(cookie_session(None, CookieLifetime::Session));
        let p = start(vec![pool], settings(&WallClock::manual(START), 1)).await;
        let first = get(p.proxy_addr, "/", &[]).await;
        assert_eq!(first.status, 200);
        let set = first.set_cookies();
        assert_eq!(set, [format!("gw-session={}; Path=/; HttpOnly", first.route())], "no Expires, no Max-Age");
        let cookie = cookie_pair(&first);
        for _ in 0..50 {
            let got = get(p.proxy_addr, "/", &[("cookie", &cookie)]).await;
            assert_eq!(got.route(), first.route());
            assert!(got.set_cookies().is_empty(), "an established session is not re-set");
        }
        let hits: Vec<u64> = m.iter().map(Member::hits).collect();
        assert_eq!(hits.iter().sum::<u64>(), 51);
        assert_eq!(hits.iter().filter(|&&h| h == 51).count(), 1, "one pod took them all: {hits:?}");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn permanent_cookie_max_age_is_the_timeout_and_the_proxy_ends_the_session() {
    bounded(async {
        let m = three().await;
        let mut pool = rule("shop", &weights(&m), vec![]);
        pool.sticky = Some(cookie_session(Some(60), CookieLifetime::Permanent));
        let clock = WallClock::manual(START);
        let p = start(vec![pool], settings(&clock, 1)).await;
        let first = get(p.proxy_addr, "/", &[]).await;
        let set = first.set_cookies();
        assert_eq!(set.len(), 1);
        assert!(set[0].ends_with("; Path=/; HttpOnly; Max-Age=60"), "{set:?}");
        let cookie = cookie_pair(&first);
        assert!(cookie.starts_with(&format!("gw-session={}.{}.", first.route(), START + 60)), "{cookie}");
        clock.advance(Duration::from_secs(59));
        let got = get(p.proxy_addr, "/", &[("cookie", &cookie)]).await;
        assert_eq!(got.route(), first.route());
        assert!(got.set_cookies().is_empty(), "honoured before the timeout, and not extended");
        clock.advance(Duration::from_secs(1));
        let late = get(p.proxy_addr, "/", &[("cookie", &cookie)]).await;
        let renewed = late.set_cookies();
        assert_eq!(renewed.len(), 1, "after the timeout the session is a new one");
        assert!(renewed[0].contains(&format!("={}.{}.", late.route(), START + 120)), "{renewed:?}");
        assert_eq!(sticky_count(&p, "shop", "expired").await, 1.0);
        assert_eq!(sticky_count(&p, "shop", "hit").await, 1.0);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_forged_or_extended_value_is_no_session() {
    bounded(async {
        let a = Member::start("a").await;
        let b = Member::start("b").await;
        let mut pool = rule("shop", &[(a.addr, "a", 1), (b.addr, "b", 1)], vec![]);
        pool.sticky = Some(cookie_session(Some(60), CookieLifetime::Session));
        let clock = WallClock::manual(START);
        let p = start(vec![pool], settings(&clock, 1)).await;
        // Sessions on b: the first request goes to a (listed first), the second to b.
        get(p.proxy_addr, "/", &[]).await;
        let on_b = get(p.proxy_addr, "/", &[]).await;
        assert_eq!(on_b.route(), "b");
        let genuine = cookie_pair(&on_b);
        assert!(!on_b.set_cookies()[0].contains("Max-Age"), "a Session cookie with a timeout has no Max-Age");
        clock.advance(Duration::from_secs(61));
        // The client rewrites the expiry to extend its session: the MAC no longer holds.
        let extended = genuine.replace(&format!(".{}.", START + 60), &format!(".{}.", START + 6000));
        let forged = [extended.as_str(), "gw-session=b", "gw-session=b.9999999999.AAAAAAAAAAAAAAAAAAAAAA"];
        for cookie in forged {
            let got = get(p.proxy_addr, "/", &[("cookie", cookie)]).await;
            assert_eq!(got.status, 200, "a forged value is never an error");
            assert_eq!(got.set_cookies().len(), 1, "{cookie}: treated as no session, a new one is set");
        }
        assert_eq!(sticky_count(&p, "shop", "malformed").await, 3.0);
        assert_eq!(sticky_count(&p, "shop", "hit").await, 0.0);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn header_sessions_round_trip() {
    bounded(async {
        let m = three().await;
        let mut pool = rule("api", &weights(&m), vec![]);
        pool.sticky = Some(persistence(SessionKind::Header, "x-session", "/", CookieLifetime::Session, Some(600)));
        let p = start(vec![pool], settings(&WallClock::manual(START), 1)).await;
        get(p.proxy_addr, "/", &[]).await; // n1 takes the first session
        let first = get(p.proxy_addr, "/", &[]).await;
        assert_eq!(first.route(), "n2");
        assert!(first.set_cookies().is_empty(), "a header session sets no cookie");
        let value = first.headers.get("x-session").expect("the session header").to_str().unwrap().to_owned();
        assert!(value.starts_with("n2."), "{value}");
        for _ in 0..20 {
            let got = get(p.proxy_addr, "/", &[("x-session", &value)]).await;
            assert_eq!(got.route(), "n2");
            assert!(got.headers.get("x-session").is_none(), "an established session is not re-sent");
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn rules_a_and_b_keep_independent_sessions() {
    bounded(async {
        let m = three().await;
        let mut a = rule("rule-a", &weights(&m), vec![prefix("/a")]);
        a.sticky = Some(persistence(SessionKind::Cookie, "sess-a", "/a", CookieLifetime::Session, Some(600)));
        let mut b = rule("rule-b", &weights(&m), vec![prefix("/b")]);
        b.sticky = Some(persistence(SessionKind::Cookie, "sess-b", "/b", CookieLifetime::Session, Some(600)));
        let p = start(vec![a, b], settings(&WallClock::manual(START), 1)).await;
        let on_a = get(p.proxy_addr, "/a/x", &[]).await;
        get(p.proxy_addr, "/b/x", &[]).await; // rule b's first session: n1
        let on_b = get(p.proxy_addr, "/b/x", &[]).await;
        assert_eq!((on_a.route(), on_b.route()), ("n1", "n2"), "each rule balances on its own");
        assert!(on_a.set_cookies()[0].contains("; Path=/a;"), "{:?}", on_a.set_cookies());
        assert!(on_b.set_cookies()[0].contains("; Path=/b;"), "{:?}", on_b.set_cookies());
        let both = format!("{}; {}", cookie_pair(&on_a), cookie_pair(&on_b));
        for _ in 0..10 {
            assert_eq!(get(p.proxy_addr, "/a/y", &[("cookie", &both)]).await.route(), "n1");
            assert_eq!(get(p.proxy_addr, "/b/y", &[("cookie", &both)]).await.route(), "n2");
        }
        // Rule a's value is no session for rule b, even under b's name (the MAC binds the name).
        let a_value = cookie_pair(&on_a).replace("sess-a=", "sess-b=");
        let got = get(p.proxy_addr, "/b/z", &[("cookie", &a_value)]).await;
        assert_eq!(got.set_cookies().len(), 1, "a new session for rule b");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_second_replica_with_the_same_key_routes_the_same_cookie() {
    bounded(async {
        let m = three().await;
        let mut pool = rule("shop", &weights(&m), vec![]);
        pool.sticky = Some(cookie_session(Some(600), CookieLifetime::Permanent));
        let clock = WallClock::manual(START);
        let one = start(vec![pool.clone()], settings(&clock, 7)).await;
        let two = start(vec![pool.clone()], settings(&clock, 7)).await;
        let other_key = start(vec![pool], settings(&clock, 8)).await;
        get(one.proxy_addr, "/", &[]).await;
        let first = get(one.proxy_addr, "/", &[]).await;
        assert_eq!(first.route(), "n2", "replica two would pick n1 for a new session");
        let cookie = cookie_pair(&first);
        let got = get(two.proxy_addr, "/", &[("cookie", &cookie)]).await;
        assert_eq!(got.route(), "n2");
        assert!(got.set_cookies().is_empty());
        let got = get(other_key.proxy_addr, "/", &[("cookie", &cookie)]).await;
        assert_eq!(got.set_cookies().len(), 1, "a replica with another key cannot read it");
        for p in [one, two, other_key] {
            p.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_dead_pods_sessions_move_once_and_weights_apply_to_new_sessions_only() {
    bounded(async {
        let mut heavy = Member::start("heavy").await;
        let light = Member::start("light").await;
        let mut pool = rule("shop", &[(heavy.addr, "heavy", 7), (light.addr, "light", 3)], vec![]);
        pool.sticky = Some(cookie_session(Some(600), CookieLifetime::Session));
        let p = start(vec![pool], settings(&WallClock::manual(START), 1)).await;
        // 100 new sessions split exactly 70/30 (Apache byrequests), whatever the sticky traffic
        // in between: an established session does not pay for its member's share.
        let mut cookies = Vec::new();
        for i in 0..100 {
            let got = get(p.proxy_addr, "/", &[]).await;
            cookies.push((got.route().to_owned(), cookie_pair(&got)));
            if i % 10 == 0 {
                let (_, c) = cookies.iter().find(|(r, _)| r == "light").unwrap_or(&cookies[0]);
                for _ in 0..5 {
                    get(p.proxy_addr, "/", &[("cookie", c)]).await;
                }
            }
        }
        let on_light = cookies.iter().filter(|(r, _)| r == "light").count();
        assert_eq!(on_light, 30, "new sessions follow the weights");
        // heavy dies: its session moves to light once, and stays there.
        heavy.die().await;
        let (_, old) = cookies.iter().find(|(r, _)| r == "heavy").unwrap();
        let moved = get(p.proxy_addr, "/", &[("cookie", old)]).await;
        assert_eq!(moved.route(), "light");
        let new_cookie = cookie_pair(&moved);
        assert_ne!(&new_cookie, old);
        assert!(new_cookie.contains(&format!(".{}.", START + 600)), "a moved session keeps its end: {new_cookie}");
        for _ in 0..5 {
            let got = get(p.proxy_addr, "/", &[("cookie", &new_cookie)]).await;
            assert_eq!(got.route(), "light");
            assert!(got.set_cookies().is_empty(), "moved once");
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn matches_choose_the_rule_by_precedence() {
    bounded(async {
        let plain = Member::start("plain").await;
        let canary = Member::start("canary").await;
        let exact = Member::start("exact").await;
        let mut canary_match = prefix("/app");
        canary_match.headers = vec![HeaderMatch { name: "x-canary".into(), value: "yes".into() }];
        let mut post = prefix("/app");
        post.method = Some("POST".into());
        let pools = vec![
            rule("plain", &[(plain.addr, "plain", 1)], vec![prefix("/app")]),
            rule("canary", &[(canary.addr, "canary", 1)], vec![canary_match, post]),
            rule(
                "exact",
                &[(exact.addr, "exact", 1)],
                vec![RequestMatch { path: PathMatch::Exact("/app/login".into()), ..Default::default() }],
            ),
        ];
        let p = start(pools, settings(&WallClock::manual(START), 1)).await;
        assert_eq!(get(p.proxy_addr, "/app/x", &[]).await.route(), "plain");
        assert_eq!(get(p.proxy_addr, "/app/x", &[("x-canary", "yes")]).await.route(), "canary");
        assert_eq!(get(p.proxy_addr, "/app/x", &[("x-canary", "no")]).await.route(), "plain");
        let c = client();
        assert_eq!(send(&c, p.proxy_addr, "POST", "/app/x", &[], Default::default()).await.route(), "canary");
        assert_eq!(get(p.proxy_addr, "/app/login", &[("x-canary", "yes")]).await.route(), "exact");
        assert_eq!(get(p.proxy_addr, "/other", &[]).await.status, 404);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn redirect_rewrite_and_header_filters() {
    bounded(async {
        let m = Member::start("m").await;
        let mut redirect = rule("old", &[(m.addr, "m", 1)], vec![prefix("/old")]);
        redirect.gateway.as_mut().unwrap().filters.redirect = Some(RequestRedirect {
            scheme: Some("https".into()),
            hostname: Some("new.example.com".into()),
            path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
            port: None,
            status: 301,
        });
        let mut shop = rule("shop", &[(m.addr, "m", 1)], vec![prefix("/shop")]);
        shop.gateway.as_mut().unwrap().filters = Filters {
            request_headers: Some(HeaderModifier {
                set: vec![("x-set".into(), "set".into())],
                add: vec![("x-add".into(), "added".into())],
                remove: vec!["x-drop".into()],
            }),
            response_headers: Some(HeaderModifier {
                set: vec![("x-served-by".into(), "routeid".into())],
                add: vec![],
                remove: vec!["x-member".into()],
            }),
            rewrite: Some(UrlRewrite {
                hostname: Some("store.internal".into()),
                path: Some(PathModifier::ReplacePrefixMatch("/store".into())),
            }),
            redirect: None,
        };
        let p = start(vec![redirect, shop], settings(&WallClock::manual(START), 1)).await;

        let got = get(p.proxy_addr, "/old/page?x=1", &[]).await;
        assert_eq!(got.status, 301);
        assert_eq!(got.headers.get("location").unwrap(), "https://new.example.com/new/page?x=1");
        assert_eq!(m.hits(), 0, "a redirect never reaches a member");

        let got =
            get(p.proxy_addr, "/shop/cart?id=7", &[("x-set", "client"), ("x-add", "client"), ("x-drop", "1")]).await;
        assert_eq!(got.status, 200);
        let seen = m.last_seen();
        assert_eq!(seen.path_and_query, "/store/cart?id=7");
        assert_eq!(seen.headers.get("host").unwrap(), "store.internal");
        assert_eq!(seen.headers.get_all("x-set").iter().collect::<Vec<_>>(), ["set"]);
        assert_eq!(seen.headers.get_all("x-add").iter().collect::<Vec<_>>(), ["client", "added"]);
        assert!(seen.headers.get("x-drop").is_none());
        assert_eq!(got.headers.get("x-served-by").unwrap(), "routeid");
        // `/shopping` is not under `/shop`: segment boundaries.
        assert_eq!(get(p.proxy_addr, "/shopping", &[]).await.status, 404);
        get(p.proxy_addr, "/shop", &[]).await;
        assert_eq!(m.last_seen().path_and_query, "/store");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_draining_pod_keeps_its_sessions_and_gets_no_new_ones() {
    bounded(async {
        let m = three().await;
        let mut pool = rule("shop", &weights(&m), vec![]);
        pool.sticky = Some(cookie_session(Some(600), CookieLifetime::Session));
        let p = start(vec![pool.clone()], settings(&WallClock::manual(START), 1)).await;
        let on_n1 = get(p.proxy_addr, "/", &[]).await;
        assert_eq!(on_n1.route(), "n1");
        let cookie = cookie_pair(&on_n1);
        pool.members[0].status = routeid::api::MemberStatus::Drain;
        p.proxy.publish(vec![pool]);
        for _ in 0..10 {
            assert_eq!(get(p.proxy_addr, "/", &[("cookie", &cookie)]).await.route(), "n1");
            assert_ne!(get(p.proxy_addr, "/", &[]).await.route(), "n1", "no new session on a draining pod");
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_short_or_missing_session_key_file_is_refused_with_exit_code_2() {
    let pools = temp_file("gw-pools.yaml", &pool_yaml("shop", &[("127.0.0.1:1".parse().unwrap(), "a", 1)], ""));
    let short = temp_file("gw-short-key", "too short\n");
    for (key, why) in [(short.to_str().unwrap(), "needs at least 32"), ("/nonexistent/key", "/nonexistent/key")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_routeid"))
            .args(["standalone", "-f", pools.to_str().unwrap(), "--session-key-file", key])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--session-key-file") && err.contains(why), "{err}");
    }
    // A key of 32 bytes or more serves.
    let good = temp_file("gw-good-key", &"k".repeat(48));
    let p = spawn_standalone(&pools, &["--session-key-file", good.to_str().unwrap()]).await;
    assert!(!p.stderr().contains("no --session-key-file"), "no warning in standalone mode");
}
