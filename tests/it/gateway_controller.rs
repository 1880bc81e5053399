//! Gateway API end to end through the controller: GatewayClasses, Gateways, HTTPRoutes, Services and EndpointSlices in
//! the fake API server, the real controller and proxy, real members on 127.0.0.1. The session
//! persistence tests follow GEP-1619's conformance plan.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{Patch, PatchParams};
use routeid::api::gateway::{Gateway, GatewayClass, HTTPRoute};
use serde_json::{Value, json};

use crate::support::cluster::*;
use crate::support::fake_apiserver::FakeApiServer;
use crate::support::*;

const GW_GROUP: &str = "gateway.networking.k8s.io";

/// Creates or replaces an object (server-side apply).
async fn put<K>(api: Api<K>, v: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).unwrap();
    let name = obj.meta().name.clone().unwrap();
    api.patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(&obj)).await.unwrap();
}

/// The class `routeid`, Gateway `gw` with one HTTP listener on port 80, and Service `shop`
/// (port 80 named `http`).
async fn gateway_basics(kube: &Kube) {
    put(
        Api::<GatewayClass>::all(kube.client.clone()),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "routeid"}, "spec": {"controllerName": "routeid.io/gateway-controller"}}),
    )
    .await;
    put(
        Api::<Gateway>::namespaced(kube.client.clone(), NS),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw", "namespace": NS},
               "spec": {"gatewayClassName": "routeid",
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"},
                                      {"name": "alt", "port": 8081, "protocol": "HTTP"}]}}),
    )
    .await;
    service(kube, "shop").await;
}

/// The GatewayClass CRD, as the upstream bundle `version` installs it (its metadata is what
/// routeid reads).
async fn installed_crds(kube: &Kube, version: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    put(
        Api::<CustomResourceDefinition>::all(kube.client.clone()),
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "gatewayclasses.gateway.networking.k8s.io",
                            "annotations": {"gateway.networking.k8s.io/bundle-version": version,
                                            "gateway.networking.k8s.io/channel": "experimental"}},
               "spec": {"group": GW_GROUP, "scope": "Cluster",
                        "names": {"kind": "GatewayClass", "plural": "gatewayclasses"},
                        "versions": [{"name": "v1", "served": true, "storage": true}]}}),
    )
    .await;
}

async fn service(kube: &Kube, name: &str) {
    put(
        Api::<Service>::namespaced(kube.client.clone(), NS),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
               "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
    )
    .await;
}

async fn route(kube: &Kube, name: &str, rules: Value) {
    put(
        Api::<HTTPRoute>::namespaced(kube.client.clone(), NS),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": name, "namespace": NS},
               "spec": {"parentRefs": [{"name": "gw", "sectionName": "http"}], "rules": rules}}),
    )
    .await;
}

/// `(status, reason)` of condition `type_` of the route's routeid parent entry.
async fn route_condition(kube: &Kube, name: &str, type_: &str) -> Option<(String, String)> {
    let r = Api::<HTTPRoute>::namespaced(kube.client.clone(), NS).get(name).await.ok()?;
    let parent = r.status?.parents.into_iter().find(|p| p.controller_name == "routeid.io/gateway-controller")?;
    let c = parent.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason))
}

/// Condition `type_` of listener `listener` of Gateway `gw`, as `(status, reason, message)`.
async fn listener_condition(kube: &Kube, listener: &str, type_: &str) -> Option<(String, String, String)> {
    let g = Api::<Gateway>::namespaced(kube.client.clone(), NS).get("gw").await.ok()?;
    let l = g.status?.listeners.into_iter().find(|l| l.name == listener)?;
    let c = l.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

async fn members(kube: &Kube, pods: &[(&str, &Member)]) {
    for (pod, m) in pods {
        kube.put_slice(&slice("shop", pod, m.addr, Cond::Ready)).await;
    }
}

#[tokio::test]
async fn a_route_is_accepted_served_and_its_listener_ports_reported() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let m = Member::start("shop-0").await;
        gateway_basics(&kube).await;
        installed_crds(&kube, "v1.6.0").await;
        members(&kube, &[("shop-0", &m)]).await;
        route(&kube, "shop", json!([{"backendRefs": [{"name": "shop", "port": 80}]}])).await;
        let mut opts = options("a");
        opts.publish =
            routeid::controller::ingress::Publish::Addresses(vec!["203.0.113.7".into(), "lb.example.com".into()]);
        let r = Replica::start(&api, opts).await;
        eventually(WAIT, "route Accepted", || async {
            route_condition(&kube, "shop", "Accepted").await == Some(("True".into(), "Accepted".into()))
        })
        .await;
        assert_eq!(route_condition(&kube, "shop", "ResolvedRefs").await, Some(("True".into(), "ResolvedRefs".into())));
        let got = get(r.proxy(), "/anything", &[]).await;
        assert_eq!((got.status.as_u16(), got.route()), (200, "shop-0"));
        eventually(WAIT, "listener statuses", || async {
            listener_condition(&kube, "alt", "Programmed").await.is_some()
        })
        .await;
        let (status, _, message) = listener_condition(&kube, "alt", "Programmed").await.unwrap();
        assert_eq!(status, "False");
        assert!(message.contains("--gateway-http-ports") && message.contains("gateway.httpPorts"), "{message}");
        assert_eq!(listener_condition(&kube, "http", "Programmed").await.unwrap().0, "True");
        let gw = Api::<Gateway>::namespaced(kube.client.clone(), NS).get("gw").await.unwrap().status.unwrap();
        assert_eq!(gw.listeners.iter().find(|l| l.name == "http").unwrap().attached_routes, 1);
        let addresses: Vec<(&str, &str)> = gw.addresses.iter().map(|a| (a.type_.as_str(), a.value.as_str())).collect();
        assert_eq!(addresses, [("IPAddress", "203.0.113.7"), ("Hostname", "lb.example.com")]);
        let conds: Vec<(&str, &str)> = gw.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(conds, [("Accepted", "True"), ("Programmed", "True")]);
        let class = Api::<GatewayClass>::all(kube.client.clone()).get("routeid").await.unwrap();
        let conds: Vec<(String, String)> =
            class.status.unwrap().conditions.into_iter().map(|c| (c.type_, c.reason)).collect();
        assert_eq!(
            conds,
            [("Accepted".into(), "Accepted".into()), ("SupportedVersion".into(), "SupportedVersion".into())]
        );
        // Detached from routeid's Gateway: routeid's status entry goes, and so does the route.
        put(
            Api::<HTTPRoute>::namespaced(kube.client.clone(), NS),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": {"name": "shop", "namespace": NS},
                   "spec": {"parentRefs": [{"name": "elsewhere"}],
                            "rules": [{"backendRefs": [{"name": "shop", "port": 80}]}]}}),
        )
        .await;
        eventually(WAIT, "routeid's parent entry removed", || async {
            let r = Api::<HTTPRoute>::namespaced(kube.client.clone(), NS).get("shop").await.unwrap();
            r.status.is_some_and(|s| s.parents.is_empty())
        })
        .await;
        assert_eq!(get(r.proxy(), "/anything", &[]).await.status, 404);
        r.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_unsupported_feature_is_refused_with_unsupported_value_and_not_served() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let m = Member::start("shop-0").await;
        gateway_basics(&kube).await;
        members(&kube, &[("shop-0", &m)]).await;
        route(&kube, "shop", json!([{"backendRefs": [{"name": "shop", "port": 80}], "timeouts": {"request": "1s"}}]))
            .await;
        let r = Replica::start(&api, options("a")).await;
        eventually(WAIT, "route refused", || async {
            route_condition(&kube, "shop", "Accepted").await == Some(("False".into(), "UnsupportedValue".into()))
        })
        .await;
        assert_eq!(get(r.proxy(), "/", &[]).await.status, 404, "a refused route serves nothing");
        r.stop().await;
    })
    .await;
}

#[tokio::test]
async fn without_the_crds_balancerpools_are_served_and_gateways_once_the_crds_appear() {
    bounded(async {
        let api = FakeApiServer::start().await;
        api.uninstall_group(GW_GROUP);
        api.uninstall_group("gateway.networking.x-k8s.io");
        let kube = Kube::new(&api);
        let m = Member::start("shop-0").await;
        kube.create_pool(&pool("bp", "bp", json!({"frontend": {"pathPrefix": "/bp"}}))).await;
        kube.put_slice(&slice("bp", "bp-0", m.addr, Cond::Ready)).await;
        let mut opts = options("a");
        if let Some(g) = opts.gateway.as_mut() {
            g.crd_poll = Duration::from_millis(200);
        }
        let r = Replica::start(&api, opts).await;
        eventually(WAIT, "BalancerPool served", || async {
            try_get(r.proxy(), "/bp", &[]).await.is_ok_and(|g| g.status == 200)
        })
        .await;
        assert!(r.running.admin.ready.load(std::sync::atomic::Ordering::Acquire), "ready without the Gateway API CRDs");
        api.install_group(GW_GROUP);
        api.install_group("gateway.networking.x-k8s.io");
        gateway_basics(&kube).await;
        members(&kube, &[("shop-0", &m)]).await;
        route(
            &kube,
            "shop",
            json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/shop"}}],
                                     "backendRefs": [{"name": "shop", "port": 80}]}]),
        )
        .await;
        eventually(WAIT, "route served after the CRDs appeared", || async {
            try_get(r.proxy(), "/shop", &[]).await.is_ok_and(|g| g.status == 200 && g.route() == "shop-0")
        })
        .await;
        r.stop().await;
    })
    .await;
}

// --- GEP-1619 conformance plan, through the controller ---------------------------------------

use routeid::core::session::{SessionKey, WallClock};

const START: u64 = 1_800_000_000;

/// Proxy settings sharing one session key (as replicas mounting one Secret do) and `clock`.
fn settings(clock: &WallClock) -> routeid::proxy::ProxySettings {
    routeid::proxy::ProxySettings {
        drain_timeout: Duration::from_secs(2),
        access_log: false,
        session_key: Some(SessionKey::from_bytes(&[7; 32]).unwrap()),
        wall_clock: clock.clone(),
        ..Default::default()
    }
}

/// The `name=value` of the only Set-Cookie of `got`.
fn cookie_pair(got: &Got) -> String {
    let all = got.set_cookies();
    assert_eq!(all.len(), 1, "one Set-Cookie expected: {all:?}");
    all[0].split(';').next().unwrap().to_owned()
}

/// Waits until the route is Accepted and the proxy serves `path` (the table is published).
async fn served(kube: &Kube, r: &Replica, name: &str, path: &str) {
    eventually(WAIT, "route Accepted", || async {
        route_condition(kube, name, "Accepted").await == Some(("True".into(), "Accepted".into()))
    })
    .await;
    eventually(WAIT, "route served", || async { try_get(r.proxy(), path, &[]).await.is_ok_and(|g| g.status == 200) })
        .await;
}

/// Pods `shop-0..n` of Service `shop`, each a real member.
async fn shop_pods(kube: &Kube, n: usize) -> Vec<Member> {
    let mut out = Vec::new();
    for i in 0..n {
        let m = Member::start(&format!("shop-{i}")).await;
        kube.put_slice(&slice("shop", &m.route, m.addr, Cond::Ready)).await;
        out.push(m);
    }
    out
}

#[tokio::test]
async fn gep1619_cookie_session_is_set_once_pins_50_requests_and_has_no_expiry() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        gateway_basics(&kube).await;
        let pods = shop_pods(&kube, 3).await;
        route(
            &kube,
            "shop",
            json!([{"backendRefs": [{"name": "shop", "port": 80}],
                                     "sessionPersistence": {"sessionName": "SHOPID"}}]),
        )
        .await;
        let r = Replica::start_with_settings(&api, options("a"), settings(&WallClock::manual(START))).await;
        served(&kube, &r, "shop", "/warmup").await;
        let first = get(r.proxy(), "/", &[]).await;
        let set = first.set_cookies();
        assert_eq!(set, [format!("SHOPID={}; Path=/; HttpOnly", first.route())]);
        assert!(!set[0].contains("Expires") && !set[0].contains("Max-Age"), "a Session cookie: {set:?}");
        let cookie = cookie_pair(&first);
        let before: Vec<u64> = pods.iter().map(Member::hits).collect();
        for _ in 0..50 {
            let got = get(r.proxy(), "/", &[("cookie", &cookie)]).await;
            assert_eq!(got.route(), first.route());
            assert!(got.set_cookies().is_empty());
        }
        let gained: Vec<u64> = pods.iter().zip(&before).map(|(m, b)| m.hits() - b).collect();
        assert_eq!(gained.iter().filter(|&&g| g == 50).count(), 1, "one pod took all 50: {gained:?}");
        r.stop().await;
    })
    .await;
}

#[tokio::test]
async fn gep1619_weights_70_30_split_new_sessions_while_established_ones_stay_pinned() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        gateway_basics(&kube).await;
        service(&kube, "canary").await;
        let stable = Member::start("stable-0").await;
        let canary = Member::start("canary-0").await;
        kube.put_slice(&slice("shop", "stable-0", stable.addr, Cond::Ready)).await;
        kube.put_slice(&slice("canary", "canary-0", canary.addr, Cond::Ready)).await;
        let rules = |w: (i32, i32)| {
            json!([{"backendRefs": [{"name": "shop", "port": 80, "weight": w.0},
                                    {"name": "canary", "port": 80, "weight": w.1}],
                    "sessionPersistence": {"sessionName": "S"}}])
        };
        route(&kube, "shop", rules((70, 30))).await;
        let r = Replica::start_with_settings(&api, options("a"), settings(&WallClock::manual(START))).await;
        served(&kube, &r, "shop", "/warmup").await;
        // An established session on the canary, used between the new sessions.
        let mut pinned = None;
        while pinned.is_none() {
            let g = get(r.proxy(), "/", &[]).await;
            if g.route() == "canary-0" {
                pinned = Some(cookie_pair(&g));
            }
        }
        let pinned = pinned.unwrap();
        let mut canary_new = 0;
        const NEW: usize = 200;
        for _ in 0..NEW {
            let g = get(r.proxy(), "/", &[]).await;
            assert_eq!(g.set_cookies().len(), 1, "every cookieless request starts a session");
            canary_new += usize::from(g.route() == "canary-0");
            let s = get(r.proxy(), "/", &[("cookie", &pinned)]).await;
            assert_eq!(s.route(), "canary-0", "the established session stays on its pod");
        }
        // Tolerance: the weights are 70/30; load factors 100/43 give 30.1 %; allow ±5 points.
        let share = canary_new as f64 / NEW as f64;
        assert!((share - 0.30).abs() <= 0.05, "canary share of new sessions {share}");
        // Weight 0: no new sessions on the canary, the established one still reaches it.
        route(&kube, "shop", rules((100, 0))).await;
        eventually(WAIT, "weight 0 applied", || async {
            r.members("httproute:shop:0").iter().any(|(route, state)| route == "canary-0" && state == "Drain")
        })
        .await;
        for _ in 0..20 {
            assert_eq!(get(r.proxy(), "/", &[]).await.route(), "stable-0");
        }
        assert_eq!(get(r.proxy(), "/", &[("cookie", &pinned)]).await.route(), "canary-0");
        r.stop().await;
    })
    .await;
}

#[tokio::test]
async fn gep1619_rules_a_and_b_keep_independent_sessions_and_the_header_type_round_trips() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        gateway_basics(&kube).await;
        let _pods = shop_pods(&kube, 3).await;
        let rule = |path: &str, persistence: Value| {
            json!({"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                   "backendRefs": [{"name": "shop", "port": 80}], "sessionPersistence": persistence})
        };
        route(
            &kube,
            "shop",
            json!([
                rule("/a", json!({})),
                rule("/b", json!({})),
                rule("/h", json!({"type": "Header", "sessionName": "x-session"}))
            ]),
        )
        .await;
        let r = Replica::start_with_settings(&api, options("a"), settings(&WallClock::manual(START))).await;
        served(&kube, &r, "shop", "/a").await;
        let a = get(r.proxy(), "/a", &[]).await;
        let b = get(r.proxy(), "/b", &[]).await;
        let (ca, cb) = (cookie_pair(&a), cookie_pair(&b));
        let name = |c: &str| c.split('=').next().unwrap().to_owned();
        assert_ne!(name(&ca), name(&cb), "generated session names differ per rule");
        assert!(a.set_cookies()[0].contains("Path=/a") && b.set_cookies()[0].contains("Path=/b"));
        // /a's session does not carry over to /b: /b starts its own.
        let b_with_a = get(r.proxy(), "/b", &[("cookie", &ca)]).await;
        assert_eq!(b_with_a.set_cookies().len(), 1);
        // Both held together: each rule reads its own.
        let both = format!("{ca}; {cb}");
        for _ in 0..5 {
            assert_eq!(get(r.proxy(), "/a/x", &[("cookie", &both)]).await.route(), a.route());
            assert_eq!(get(r.proxy(), "/b/x", &[("cookie", &both)]).await.route(), b.route());
        }
        // Header type: the route travels in the response header and comes back in the request.
        let h = get(r.proxy(), "/h", &[]).await;
        let value = h.headers.get("x-session").expect("the session header").to_str().unwrap().to_owned();
        assert!(h.set_cookies().is_empty(), "no cookie for a Header session");
        for _ in 0..10 {
            let again = get(r.proxy(), "/h", &[("x-session", &value)]).await;
            assert_eq!(again.route(), h.route());
            assert!(again.headers.get("x-session").is_none(), "an established session is not re-sent");
        }
        r.stop().await;
    })
    .await;
}

#[tokio::test]
async fn gep1619_permanent_cookie_max_age_and_the_proxy_ends_the_session_after_the_timeout() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        gateway_basics(&kube).await;
        let _pods = shop_pods(&kube, 3).await;
        route(
            &kube,
            "shop",
            json!([{"backendRefs": [{"name": "shop", "port": 80}],
            "sessionPersistence": {"sessionName": "P", "absoluteTimeout": "1m",
                                   "cookieConfig": {"lifetimeType": "Permanent"}}}]),
        )
        .await;
        let clock = WallClock::manual(START);
        let r = Replica::start_with_settings(&api, options("a"), settings(&clock)).await;
        served(&kube, &r, "shop", "/warmup").await;
        let first = get(r.proxy(), "/", &[]).await;
        let set = first.set_cookies();
        assert!(set[0].contains("Max-Age=60"), "Max-Age is the absoluteTimeout: {set:?}");
        let cookie = cookie_pair(&first);
        clock.advance(Duration::from_secs(59));
        let kept = get(r.proxy(), "/", &[("cookie", &cookie)]).await;
        assert_eq!((kept.route(), kept.set_cookies().len()), (first.route(), 0));
        clock.advance(Duration::from_secs(1));
        let late = get(r.proxy(), "/", &[("cookie", &cookie)]).await;
        assert_eq!(late.set_cookies().len(), 1, "after the timeout the proxy no longer honours the session");
        r.stop().await;
    })
    .await;
}

#[tokio::test]
async fn gep1619_a_removed_pod_moves_its_session_once_and_a_second_replica_routes_the_same_cookie() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        gateway_basics(&kube).await;
        let pods = shop_pods(&kube, 3).await;
        route(
            &kube,
            "shop",
            json!([{"backendRefs": [{"name": "shop", "port": 80}],
            "sessionPersistence": {"sessionName": "S", "absoluteTimeout": "1h"}}]),
        )
        .await;
        let clock = WallClock::manual(START);
        let r1 = Replica::start_with_settings(&api, options("a"), settings(&clock)).await;
        let r2 = Replica::start_with_settings(&api, options("b"), settings(&clock)).await;
        served(&kube, &r1, "shop", "/warmup").await;
        served(&kube, &r2, "shop", "/warmup").await;
        let first = get(r1.proxy(), "/", &[]).await;
        let cookie = cookie_pair(&first);
        for _ in 0..10 {
            let other = get(r2.proxy(), "/", &[("cookie", &cookie)]).await;
            assert_eq!((other.route(), other.set_cookies().len()), (first.route(), 0), "replica b honours a's session");
        }
        // The pinned pod goes away: its session moves once, then sticks to the new pod.
        let gone = pods.iter().find(|m| m.route == first.route()).unwrap();
        kube.delete_slice(&format!("shop-{}", gone.route)).await;
        eventually(WAIT, "pod removed", || async { r1.members("httproute:shop:0").len() == 2 }).await;
        let moved = get(r1.proxy(), "/", &[("cookie", &cookie)]).await;
        assert_ne!(moved.route(), first.route());
        let new_cookie = cookie_pair(&moved);
        for _ in 0..10 {
            let again = get(r1.proxy(), "/", &[("cookie", &new_cookie)]).await;
            assert_eq!((again.route(), again.set_cookies().len()), (moved.route(), 0), "moved once, then pinned");
        }
        r1.stop().await;
        r2.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_listener_whose_certificate_secret_is_broken_says_invalid_certificate_ref() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let m = Member::start("shop-0").await;
        gateway_basics(&kube).await;
        put(
            Api::<Gateway>::namespaced(kube.client.clone(), NS),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "gw", "namespace": NS},
                   "spec": {"gatewayClassName": "routeid",
                            "listeners": [{"name": "http", "port": 443, "protocol": "HTTPS", "hostname": "shop.test",
                                           "tls": {"certificateRefs": [{"name": "shop-cert"}]}}]}}),
        )
        .await;
        let garbage = routeid::proxy::tls::TlsData::new(b"not a certificate".to_vec(), b"not a key".to_vec());
        kube.put_tls_secret(NS, "shop-cert", &garbage).await;
        members(&kube, &[("shop-0", &m)]).await;
        route(&kube, "shop", json!([{"backendRefs": [{"name": "shop", "port": 80}]}])).await;
        let r = Replica::start(&api, options("a")).await;
        eventually(WAIT, "InvalidCertificateRef", || async {
            listener_condition(&kube, "http", "ResolvedRefs")
                .await
                .is_some_and(|(s, reason, _)| s == "False" && reason == "InvalidCertificateRef")
        })
        .await;
        let (_, _, message) = listener_condition(&kube, "http", "ResolvedRefs").await.unwrap();
        assert!(message.contains("web/shop-cert"), "{message}");
        r.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_selector_listener_follows_namespace_labels() {
    use k8s_openapi::api::core::v1::Namespace;
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        gateway_basics(&kube).await;
        put(
            Api::<Gateway>::namespaced(kube.client.clone(), NS),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "gw", "namespace": NS},
                   "spec": {"gatewayClassName": "routeid",
                            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                                           "allowedRoutes": {"namespaces": {"from": "Selector",
                                               "selector": {"matchLabels": {"gateway": "shared"}}}}}]}}),
        )
        .await;
        let namespace = |labels: Value| {
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "labels": labels}})
        };
        let namespaces = Api::<Namespace>::all(kube.client.clone());
        put(namespaces.clone(), namespace(json!({"gateway": "shared"}))).await;
        put(
            Api::<HTTPRoute>::namespaced(kube.client.clone(), "team"),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": {"name": "r", "namespace": "team"},
                   "spec": {"parentRefs": [{"name": "gw", "namespace": NS}], "rules": [{}]}}),
        )
        .await;
        let r = Replica::start(&api, options("a")).await;
        let accepted = || async {
            let route = Api::<HTTPRoute>::namespaced(kube.client.clone(), "team").get("r").await.ok()?;
            let c = route.status?.parents.into_iter().next()?.conditions.into_iter().find(|c| c.type_ == "Accepted")?;
            Some((c.status, c.reason))
        };
        eventually(WAIT, "attached by label", || async { accepted().await == Some(("True".into(), "Accepted".into())) })
            .await;
        put(namespaces, namespace(json!({"gateway": "private"}))).await;
        eventually(WAIT, "detached when the label changes", || async {
            accepted().await == Some(("False".into(), "NotAllowedByListeners".into()))
        })
        .await;
        r.stop().await;
    })
    .await;
}

#[tokio::test]
async fn without_rbac_for_the_gateway_api_the_controller_is_ready_and_serves_balancerpools() {
    bounded(async {
        let api = FakeApiServer::start().await;
        api.forbid_group(GW_GROUP);
        api.forbid_group("gateway.networking.x-k8s.io");
        let kube = Kube::new(&api);
        let m = Member::start("bp-0").await;
        kube.create_pool(&pool("bp", "bp", json!({}))).await;
        kube.put_slice(&slice("bp", "bp-0", m.addr, Cond::Ready)).await;
        let r = Replica::start(&api, options("a")).await;
        eventually(WAIT, "ready and serving", || async {
            r.running.admin.ready.load(std::sync::atomic::Ordering::Acquire)
                && try_get(r.proxy(), "/", &[]).await.is_ok_and(|g| g.route() == "bp-0")
        })
        .await;
        r.stop().await;
    })
    .await;
}

/// Route `name` attached through listener `section` only, serving `prefix` from Service `shop`.
async fn route_through(kube: &Kube, name: &str, section: &str, prefix: &str) {
    put(
        Api::<HTTPRoute>::namespaced(kube.client.clone(), NS),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": name, "namespace": NS},
               "spec": {"parentRefs": [{"name": "gw", "sectionName": section}],
                        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                                   "backendRefs": [{"name": "shop", "port": 80}]}]}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_is_reachable_only_on_the_kind_of_listener_it_attached_to() {
    use crate::support::tls::{TestCert, https_get};
    const HOST: &str = "shop.test";
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let m = Member::start("shop-0").await;
        gateway_basics(&kube).await;
        put(
            Api::<Gateway>::namespaced(kube.client.clone(), NS),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "gw", "namespace": NS},
                   "spec": {"gatewayClassName": "routeid",
                            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"},
                                          {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": HOST,
                                           "tls": {"certificateRefs": [{"name": "shop-cert"}]}}]}}),
        )
        .await;
        let cert = TestCert::new(&[HOST]);
        kube.put_tls_secret(NS, "shop-cert", &cert.data).await;
        members(&kube, &[("shop-0", &m)]).await;
        route_through(&kube, "secure", "https", "/secure").await;
        route_through(&kube, "plain", "http", "/plain").await;
        let r = Replica::start_tls(&api, options("a")).await;
        let tls_addr = r.running.tls_addr.expect("a TLS listener");
        let over_tls = |path: &'static str| https_get(tls_addr, Some(HOST), &[b"http/1.1"], HOST, path, &[]);
        eventually(WAIT, "the HTTPS-only route over TLS, with its listener's certificate", || async {
            over_tls("/secure/x").await.is_ok_and(|s| s.cert == cert.der && s.status == 200)
        })
        .await;
        eventually(WAIT, "the HTTP-only route in clear text", || async {
            get(r.proxy(), "/plain/x", &[("host", HOST)]).await.status == 200
        })
        .await;
        // The status is written after the routing table is pushed: a route can serve before it
        // says so.
        for route in ["secure", "plain"] {
            eventually(WAIT, "the route's Accepted condition", || async {
                route_condition(&kube, route, "Accepted").await == Some(("True".into(), "Accepted".into()))
            })
            .await;
        }
        let shown = over_tls("/secure/x").await.unwrap();
        assert!(shown.body.starts_with("route=shop-0"), "{}", shown.body);
        let plain = get(r.proxy(), "/secure/x", &[("host", HOST)]).await;
        assert_eq!(plain.status, 404, "an HTTPS-only route is not served in clear text");
        assert_eq!(get(r.proxy(), "/secure/x", &[]).await.status, 404, "nor without a Host");
        assert_eq!(over_tls("/plain/x").await.unwrap().status, 404, "an HTTP-only route is not served over TLS");
        assert_eq!(get(r.proxy(), "/plain/x", &[("host", HOST)]).await.route(), "shop-0");
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_manager_drains_and_clears_a_member_of_an_httproute_pool_in_controller_mode() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        gateway_basics(&kube).await;
        let _pods = shop_pods(&kube, 2).await;
        route(&kube, "shop", json!([{"backendRefs": [{"name": "shop", "port": 80}]}])).await;
        let manager = routeid::admin::manager::Manager::new(
            Some("tok".into()),
            routeid::admin::manager::Persistence::Kubernetes(api.client()),
        );
        let r = Replica::start_with_manager(&api, options("a"), manager).await;
        served(&kube, &r, "shop", "/warmup").await;
        let pool = routeid::controller::gateway::pool_name("shop", 0);
        let member = format!("/balancer-manager/api/pools/{NS}/{pool}/members/shop-1");
        let auth = [("authorization", "Bearer tok")];
        let body = bytes::Bytes::from_static(br#"{"status": "Drain"}"#);
        // An HTTPRoute pool has no BalancerPool to keep the change in: it stays in memory.
        let patch = send(&client(), r.running.admin_addr, "PATCH", &member, &auth, body).await;
        assert_eq!(patch.status, 200, "{}", patch.body);
        assert!(r.members(&pool).iter().any(|(route, state)| route == "shop-1" && state == "Drain"));
        let page = get(r.running.admin_addr, "/balancer-manager", &[]).await;
        assert!(page.body.contains("Ingress or HTTPRoute: this replica&#39;s memory"), "{}", page.body);
        // The live page encodes each segment (encodeURIComponent): `httproute%3Ashop%3A0`.
        let encoded = member.replace(':', "%3A");
        let body = bytes::Bytes::from_static(br#"{"loadFactor": 7}"#);
        let patch = send(&client(), r.running.admin_addr, "PATCH", &encoded, &auth, body).await;
        assert_eq!(patch.status, 200, "{}", patch.body);
        let clear =
            send(&client(), r.running.admin_addr, "DELETE", &format!("{encoded}/override"), &auth, bytes::Bytes::new())
                .await;
        assert_eq!(clear.status, 200, "{}", clear.body);
        assert!(r.members(&pool).iter().any(|(route, state)| route == "shop-1" && state == "Ok"));
        r.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_invalid_backend_refs_share_of_new_requests_gets_500_and_an_all_invalid_rule_answers_500() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        gateway_basics(&kube).await;
        let pods = shop_pods(&kube, 1).await;
        let half = json!({"matches": [{"path": {"type": "PathPrefix", "value": "/half"}}],
                          "backendRefs": [{"name": "shop", "port": 80, "weight": 1},
                                          {"name": "nope", "port": 80, "weight": 1}],
                          "sessionPersistence": {"sessionName": "S"}});
        let all = json!({"matches": [{"path": {"type": "PathPrefix", "value": "/all"}}],
                         "backendRefs": [{"name": "nope", "port": 80}]});
        route(&kube, "shop", json!([half, all])).await;
        let r = Replica::start_with_settings(&api, options("a"), settings(&WallClock::manual(START))).await;
        served(&kube, &r, "shop", "/half").await;
        assert_eq!(
            route_condition(&kube, "shop", "ResolvedRefs").await,
            Some(("False".into(), "BackendNotFound".into()))
        );
        // New requests: the invalid backendRef's weight is half of the rule's. The share is
        // spread evenly (exactly 1 of every 2), so the tolerance of ±5 of 100 is slack.
        let mut five_hundreds = 0;
        let mut session = None;
        let before = pods[0].hits();
        for _ in 0..100 {
            let got = get(r.proxy(), "/half", &[]).await;
            match got.status.as_u16() {
                500 => {
                    assert!(got.body.contains("Service web/nope not found"), "{}", got.body);
                    assert!(got.set_cookies().is_empty(), "no session to an invalid backend");
                    five_hundreds += 1;
                }
                200 => session = Some(cookie_pair(&got)),
                other => panic!("unexpected {other}: {}", got.body),
            }
        }
        assert!((45..=55).contains(&five_hundreds), "{five_hundreds} of 100 new requests got 500");
        // A session on the valid pod stays pinned: none of its requests falls in the share.
        let cookie = session.expect("some new requests reached shop-0");
        for _ in 0..20 {
            let got = get(r.proxy(), "/half", &[("cookie", &cookie)]).await;
            assert_eq!((got.status.as_u16(), got.route()), (200, "shop-0"));
        }
        // Every backendRef invalid: every request 500, and the valid pod is not blamed.
        for _ in 0..20 {
            let got = get(r.proxy(), "/all", &[]).await;
            assert_eq!(got.status.as_u16(), 500, "{}", got.body);
        }
        assert_eq!(pods[0].hits() - before, 100 - five_hundreds + 20, "only the valid share reached the pod");
        r.stop().await;
    })
    .await;
}
