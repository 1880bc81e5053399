//! Table tests of the Gateway API translation: objects in, pools and status reasons out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use super::*;
use crate::api::MemberStatus;

const NS: &str = "web";

/// A little cluster: objects by kind, Services and slices.
#[derive(Default)]
struct World {
    classes: BTreeMap<String, Arc<GatewayClass>>,
    gateways: BTreeMap<Key, Arc<Gateway>>,
    routes: BTreeMap<Key, Arc<HTTPRoute>>,
    grants: BTreeMap<Key, Arc<ReferenceGrant>>,
    policies: BTreeMap<Key, Arc<XBackendTrafficPolicy>>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    services: HashMap<Key, Service>,
    slices: HashMap<Key, Vec<EndpointSlice>>,
    listening: Listening,
    class: Option<String>,
    bundle_version: Option<String>,
}

impl Backends for World {
    fn service(&self, key: &Key) -> Option<&Service> {
        self.services.get(key)
    }
    fn slices(&self, key: &Key) -> Vec<&EndpointSlice> {
        self.slices.get(key).map(|v| v.iter().collect()).unwrap_or_default()
    }
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

impl World {
    /// Class `routeid` (ours), Gateway `gw` with listener `http` on 80, Service `shop` with
    /// pods `shop-0` and `shop-1`.
    fn new() -> World {
        let mut w =
            World { listening: Listening { http_ports: vec![80], https_ports: vec![443] }, ..Default::default() };
        w.class("routeid", CONTROLLER_NAME);
        w.class("other", "example.com/gateway");
        w.gateway("gw", json!([{"name": "http", "port": 80, "protocol": "HTTP"}]));
        w.add_service(NS, "shop", &["shop-0", "shop-1"]);
        w
    }

    fn class(&mut self, name: &str, controller: &str) {
        let c: GatewayClass = obj(json!({"metadata": {"name": name}, "spec": {"controllerName": controller}}));
        self.classes.insert(name.into(), Arc::new(c));
    }

    fn gateway(&mut self, name: &str, listeners: Value) {
        self.gateway_in(NS, name, "routeid", listeners);
    }

    fn gateway_in(&mut self, ns: &str, name: &str, class: &str, listeners: Value) {
        let g: Gateway = obj(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"gatewayClassName": class, "listeners": listeners},
        }));
        self.gateways.insert((ns.into(), name.into()), Arc::new(g));
    }

    fn route(&mut self, name: &str, spec: Value) {
        self.route_in(NS, name, spec);
    }

    fn route_in(&mut self, ns: &str, name: &str, spec: Value) {
        let r: HTTPRoute = obj(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}));
        self.routes.insert((ns.into(), name.into()), Arc::new(r));
    }

    fn grant(&mut self, ns: &str, from_kind: &str, from_ns: &str, to_kind: &str) {
        let g: ReferenceGrant = obj(json!({
            "metadata": {"name": format!("g-{from_ns}-{to_kind}"), "namespace": ns},
            "spec": {
                "from": [{"group": GROUP, "kind": from_kind, "namespace": from_ns}],
                "to": [{"group": "", "kind": to_kind}],
            },
        }));
        self.grants.insert((ns.into(), g.metadata.name.clone().unwrap()), Arc::new(g));
    }

    /// Service `name` with port 80 → target `http`, one ready pod per entry on 10.0.0.x:8080.
    fn add_service(&mut self, ns: &str, name: &str, pods: &[&str]) {
        let svc: Service = obj(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }));
        self.services.insert((ns.into(), name.into()), svc);
        let base = self.slices.values().map(Vec::len).sum::<usize>() * 10 + self.services.len() * 10;
        let endpoints: Vec<Value> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                json!({
                    "addresses": [format!("10.0.{}.{}", base % 250, i + 1)],
                    "conditions": {"ready": true},
                    "targetRef": {"kind": "Pod", "name": p, "namespace": ns},
                })
            })
            .collect();
        let slice: EndpointSlice = obj(json!({
            "metadata": {"name": format!("{name}-abc"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints,
        }));
        self.slices.insert((ns.into(), name.into()), vec![slice]);
    }

    fn translate(&self) -> Translation {
        translate(&Inputs {
            classes: &self.classes,
            gateways: &self.gateways,
            routes: &self.routes,
            grants: &self.grants,
            policies: &self.policies,
            namespaces: &self.namespaces,
            backends: self,
            listening: &self.listening,
            class: self.class.as_deref(),
            bundle_version: self.bundle_version.as_deref(),
        })
    }
}

fn simple_route(extra: Value) -> Value {
    let mut spec = json!({
        "parentRefs": [{"name": "gw"}],
        "rules": [{"backendRefs": [{"name": "shop", "port": 80}]}],
    });
    if let (Value::Object(s), Value::Object(e)) = (&mut spec, extra) {
        s.extend(e);
    }
    spec
}

/// `(type, status, reason)` of a route's first parent.
fn route_conds(t: &Translation, name: &str) -> Vec<(&'static str, bool, &'static str)> {
    t.routes[&(NS.to_owned(), name.to_owned())][0].conditions.iter().map(|c| (c.type_, c.ok, c.reason)).collect()
}

fn accepted(t: &Translation, name: &str) -> (bool, &'static str) {
    let c = route_conds(t, name);
    (c[0].1, c[0].2)
}

fn listener_cond(t: &Translation, gw: &str, listener: &str, type_: &str) -> Cond {
    let g = &t.gateways[&(NS.to_owned(), gw.to_owned())];
    let l = g.listeners.iter().find(|l| l.name == listener).unwrap();
    l.conditions.iter().find(|c| c.type_ == type_).unwrap().clone()
}

#[test]
fn a_simple_route_becomes_one_pool_with_the_services_pods() {
    let mut w = World::new();
    w.route("shop", simple_route(json!({})));
    let t = w.translate();
    assert_eq!(route_conds(&t, "shop"), [("Accepted", true, "Accepted"), ("ResolvedRefs", true, "ResolvedRefs")]);
    assert_eq!(t.pools.len(), 1);
    let p = &t.pools[0];
    assert_eq!(p.id, PoolId { namespace: NS.into(), name: "httproute:shop:0".into() });
    assert!(p.hosts.is_empty());
    assert_eq!(p.path_prefix, "/");
    let routes: Vec<&str> = p.members.iter().map(|m| m.route.as_str()).collect();
    assert_eq!(routes, ["shop-0", "shop-1"]);
    assert!(p.members.iter().all(|m| m.address.port() == 8080 && m.load_factor == 100));
    assert_eq!(t.gateways[&(NS.to_owned(), "gw".to_owned())].listeners[0].attached_routes, 1);
    assert_eq!(t.classes["routeid"][0].reason, "Accepted");
    assert!(!t.classes.contains_key("other"), "another controller's class is not ours to report");
}

#[test]
fn hostnames_are_intersected_with_the_listener() {
    let mut w = World::new();
    w.gateway("gw", json!([{"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com"}]));
    w.route("shop", simple_route(json!({"hostnames": ["shop.example.com", "shop.example.org"]})));
    w.route("nope", simple_route(json!({"hostnames": ["shop.example.org"]})));
    let t = w.translate();
    assert_eq!(accepted(&t, "shop"), (true, "Accepted"));
    assert_eq!(accepted(&t, "nope"), (false, "NoMatchingListenerHostname"));
    assert_eq!(t.pools.len(), 1);
    assert_eq!(t.pools[0].hosts, [crate::core::config::HostMatch::Exact("shop.example.com".into())]);
}

#[test]
fn allowed_routes_same_all_and_selector() {
    let mut w = World::new();
    w.gateway(
        "gw",
        json!([
            {"name": "same", "port": 80, "protocol": "HTTP", "hostname": "same.test"},
            {"name": "all", "port": 80, "protocol": "HTTP", "hostname": "all.test",
             "allowedRoutes": {"namespaces": {"from": "All"}}},
            {"name": "sel", "port": 80, "protocol": "HTTP", "hostname": "sel.test",
             "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}}},
        ]),
    );
    w.namespaces.insert("team-a".into(), [("team".to_owned(), "a".to_owned())].into());
    w.namespaces.insert("team-b".into(), [("team".to_owned(), "b".to_owned())].into());
    for ns in ["team-a", "team-b"] {
        w.add_service(ns, "shop", &["p"]);
        w.route_in(
            ns,
            "r",
            json!({"parentRefs": [{"name": "gw", "namespace": NS, "sectionName": "sel"}],
                   "rules": [{"backendRefs": [{"name": "shop", "port": 80}]}]}),
        );
    }
    w.route_in(
        "team-b",
        "same",
        json!({"parentRefs": [{"name": "gw", "namespace": NS, "sectionName": "same"}],
               "rules": [{"backendRefs": [{"name": "shop", "port": 80}]}]}),
    );
    w.route_in(
        "team-b",
        "all",
        json!({"parentRefs": [{"name": "gw", "namespace": NS, "sectionName": "all"}],
               "rules": [{"backendRefs": [{"name": "shop", "port": 80}]}]}),
    );
    let t = w.translate();
    let acc = |ns: &str, n: &str| {
        let c = &t.routes[&(ns.to_owned(), n.to_owned())][0].conditions[0];
        (c.ok, c.reason)
    };
    assert_eq!(acc("team-a", "r"), (true, "Accepted"));
    assert_eq!(acc("team-b", "r"), (false, "NotAllowedByListeners"));
    assert_eq!(acc("team-b", "same"), (false, "NotAllowedByListeners"));
    assert_eq!(acc("team-b", "all"), (true, "Accepted"));
    let all = t.pools.iter().find(|p| p.id.namespace == "team-b").unwrap();
    assert_eq!(all.hosts, [crate::core::config::HostMatch::Exact("all.test".into())], "sectionName picks one listener");
}

#[test]
fn section_name_and_port_must_name_a_listener() {
    let mut w = World::new();
    w.route("bad-section", simple_route(json!({"parentRefs": [{"name": "gw", "sectionName": "nope"}]})));
    w.route("bad-port", simple_route(json!({"parentRefs": [{"name": "gw", "port": 8080}]})));
    w.route("good-port", simple_route(json!({"parentRefs": [{"name": "gw", "port": 80}]})));
    w.route("not-ours", simple_route(json!({"parentRefs": [{"name": "missing"}]})));
    let t = w.translate();
    assert_eq!(accepted(&t, "bad-section"), (false, "NoMatchingParent"));
    assert_eq!(accepted(&t, "bad-port"), (false, "NoMatchingParent"));
    assert_eq!(accepted(&t, "good-port"), (true, "Accepted"));
    assert!(!t.routes.contains_key(&(NS.to_owned(), "not-ours".to_owned())), "no status for a parent not ours");
}

#[test]
fn backend_refs_need_a_service_a_port_and_a_grant_across_namespaces() {
    let mut w = World::new();
    w.add_service("other", "db", &["db-0"]);
    let refs = |b: Value| simple_route(json!({"rules": [{"backendRefs": [b]}]}));
    w.route("missing", refs(json!({"name": "nope", "port": 80})));
    w.route("kind", refs(json!({"name": "x", "kind": "ConfigMap"})));
    w.route("cross", refs(json!({"name": "db", "namespace": "other", "port": 80})));
    w.route("noport", refs(json!({"name": "shop"})));
    w.route("badport", refs(json!({"name": "shop", "port": 81})));
    let t = w.translate();
    let refs_reason = |n: &str| route_conds(&t, n)[1];
    assert_eq!(refs_reason("missing"), ("ResolvedRefs", false, "BackendNotFound"));
    assert_eq!(refs_reason("kind"), ("ResolvedRefs", false, "InvalidKind"));
    assert_eq!(refs_reason("cross"), ("ResolvedRefs", false, "RefNotPermitted"));
    assert_eq!(refs_reason("noport"), ("ResolvedRefs", false, "BackendNotFound"));
    assert_eq!(refs_reason("badport"), ("ResolvedRefs", false, "BackendNotFound"));
    // Still accepted: the rule is served, and answers 500 (its only backendRef is invalid).
    assert_eq!(accepted(&t, "missing"), (true, "Accepted"));
    w.grant("other", "HTTPRoute", NS, "Service");
    let t = w.translate();
    assert_eq!(route_conds(&t, "cross")[1], ("ResolvedRefs", true, "ResolvedRefs"));
    let p = t.pools.iter().find(|p| p.id.name == "httproute:cross:0").unwrap();
    assert_eq!(p.members[0].route.as_str(), "db-0~other");
}

#[test]
fn weights_split_over_each_services_pods() {
    let mut w = World::new();
    w.add_service(NS, "canary", &["canary-0"]);
    w.add_service(NS, "old", &["old-0"]);
    w.route(
        "shop",
        simple_route(json!({"rules": [{"backendRefs": [
            {"name": "shop", "port": 80, "weight": 70},
            {"name": "canary", "port": 80, "weight": 30},
            {"name": "old", "port": 80, "weight": 0},
        ]}]})),
    );
    let t = w.translate();
    let lf: BTreeMap<&str, (u32, MemberStatus)> =
        t.pools[0].members.iter().map(|m| (m.route.as_str(), (m.load_factor, m.status))).collect();
    // 70 over two pods is 35 each, 30 on one pod: scaled so the largest is 100.
    assert_eq!(lf["shop-0"], (100, MemberStatus::Ok));
    assert_eq!(lf["shop-1"], (100, MemberStatus::Ok));
    assert_eq!(lf["canary-0"], (86, MemberStatus::Ok));
    assert_eq!(lf["old-0"].1, MemberStatus::Drain, "weight 0: keeps its sessions, takes no new ones");
    let total: u32 = ["shop-0", "shop-1", "canary-0"].iter().map(|r| lf[r].0).sum();
    let canary_share = f64::from(lf["canary-0"].0) / f64::from(total);
    assert!((canary_share - 0.30).abs() < 0.02, "canary share {canary_share}");
}

#[test]
fn session_persistence_becomes_the_sticky_settings() {
    let mut w = World::new();
    w.route(
        "shop",
        simple_route(json!({"rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
             "backendRefs": [{"name": "shop", "port": 80}],
             "sessionPersistence": {"sessionName": "SHOP"}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/b"}}],
             "backendRefs": [{"name": "shop", "port": 80}],
             "sessionPersistence": {"absoluteTimeout": "1h", "cookieConfig": {"lifetimeType": "Permanent"}}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/c"}}],
             "backendRefs": [{"name": "shop", "port": 80}],
             "sessionPersistence": {"type": "Header", "sessionName": "X-Session"}},
        ]})),
    );
    let t = w.translate();
    assert_eq!(accepted(&t, "shop"), (true, "Accepted"));
    let p = |i: usize| t.pools[i].sticky.clone().unwrap().persistence.unwrap();
    use crate::core::gateway::{CookieLifetime, SessionKind};
    let a = p(0);
    assert_eq!((a.kind, a.name.as_str(), a.cookie_path.as_str()), (SessionKind::Cookie, "SHOP", "/a"));
    assert_eq!((a.lifetime, a.absolute_timeout), (CookieLifetime::Session, None));
    let b = p(1);
    assert!(b.name.starts_with("routeid-") && b.name != a.name, "a generated name per rule: {}", b.name);
    assert_eq!(b.lifetime, CookieLifetime::Permanent);
    assert_eq!(b.absolute_timeout, Some(std::time::Duration::from_secs(3600)));
    let c = p(2);
    assert_eq!((c.kind, c.name.as_str()), (SessionKind::Header, "X-Session"));
    assert!(t.pools.iter().all(|p| p.gateway.is_some()));
}

#[test]
fn the_session_cookie_path_covers_every_path_match_of_the_rule() {
    // A cookie scoped to the first match only is never sent on the others: every request there
    // would start a new session.
    let mut w = World::new();
    let prefix = |v: &str| json!({"path": {"type": "PathPrefix", "value": v}});
    let rule = |matches: Value| {
        json!({"matches": matches, "backendRefs": [{"name": "shop", "port": 80}],
                                       "sessionPersistence": {"sessionName": "S"}})
    };
    w.route(
        "shop",
        simple_route(json!({"rules": [
            rule(json!([prefix("/shop/cart"), prefix("/shop/checkout")])),
            rule(json!([prefix("/a"), prefix("/b")])),
            rule(json!([prefix("/x/y"), {"path": {"type": "Exact", "value": "/x/y/z"}}])),
            rule(json!([prefix("/app")])),
        ]})),
    );
    let t = w.translate();
    assert_eq!(accepted(&t, "shop"), (true, "Accepted"));
    let paths: Vec<String> =
        t.pools.iter().map(|p| p.sticky.clone().unwrap().persistence.unwrap().cookie_path).collect();
    assert_eq!(paths, ["/shop", "/", "/", "/app"]);
}

#[test]
fn matches_filters_and_precedence_data_reach_the_pool() {
    let mut w = World::new();
    w.route(
        "shop",
        simple_route(json!({"rules": [
            {"matches": [
                {"path": {"type": "Exact", "value": "/x"}, "method": "POST"},
                {"path": {"value": "/y/"}, "headers": [{"name": "X-Env", "value": "canary"}],
                 "queryParams": [{"name": "v", "value": "2"}]}],
             "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-A", "value": "1"}], "remove": ["X-B"]}},
                {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/z"}}}],
             "backendRefs": [{"name": "shop", "port": 80}]},
            {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]},
        ]})),
    );
    let t = w.translate();
    assert_eq!(accepted(&t, "shop"), (true, "Accepted"));
    use crate::core::gateway::{PathMatch, PathModifier};
    let g = t.pools[0].gateway.clone().unwrap();
    assert_eq!(g.matches[0].path, PathMatch::Exact("/x".into()));
    assert_eq!(g.matches[0].method.as_deref(), Some("POST"));
    assert_eq!(g.matches[1].path, PathMatch::Prefix("/y".into()));
    assert_eq!(g.matches[1].headers[0].name, "x-env");
    assert_eq!(g.matches[1].query[0].value, "2");
    assert_eq!(g.order.route, "web/shop");
    assert_eq!(g.order.rule, 0);
    let rh = g.filters.request_headers.unwrap();
    assert_eq!((rh.set, rh.remove), (vec![("x-a".to_owned(), "1".to_owned())], vec!["x-b".to_owned()]));
    assert_eq!(g.filters.rewrite.unwrap().path, Some(PathModifier::ReplaceFullPath("/z".into())));
    let r = t.pools[1].gateway.clone().unwrap().filters.redirect.unwrap();
    assert_eq!((r.scheme.as_deref(), r.status), (Some("https"), 301));
    assert!(t.pools[1].members.is_empty());
}

#[test]
fn generated_session_names_are_stable_and_per_rule() {
    let k = (NS.to_owned(), "shop".to_owned());
    assert_eq!(generated_session_name(&k, 0), generated_session_name(&k, 0));
    assert_ne!(generated_session_name(&k, 0), generated_session_name(&k, 1));
    assert!(crate::core::config::is_token(&generated_session_name(&k, 0)));
}

#[test]
fn a_policy_on_the_service_gives_persistence_to_rules_without_their_own() {
    let mut w = World::new();
    let p: XBackendTrafficPolicy = obj(json!({
        "metadata": {"name": "p", "namespace": NS},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "shop"}],
                 "sessionPersistence": {"sessionName": "FROMPOLICY"}},
    }));
    w.policies.insert((NS.into(), "p".into()), Arc::new(p));
    w.route("shop", simple_route(json!({})));
    let t = w.translate();
    assert_eq!(t.pools[0].sticky.as_ref().unwrap().cookie_name, "FROMPOLICY");
}

#[test]
fn what_is_not_served_is_refused_with_unsupported_value() {
    let cases: &[(&str, Value)] = &[
        (
            "timeouts",
            json!({"rules": [{"backendRefs": [{"name": "shop", "port": 80}], "timeouts": {"request": "1s"}}]}),
        ),
        ("regex", json!({"rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}]}]})),
        (
            "header-regex",
            json!({"rules": [{"matches": [{"headers": [{"type": "RegularExpression", "name": "a", "value": "b"}]}]}]}),
        ),
        ("mirror", json!({"rules": [{"filters": [{"type": "RequestMirror", "requestMirror": {}}]}]})),
        ("backend-filter", json!({"rules": [{"backendRefs": [{"name": "shop", "port": 80, "filters": [{}]}]}]})),
        ("permanent", json!({"rules": [{"sessionPersistence": {"cookieConfig": {"lifetimeType": "Permanent"}}}]})),
        ("idle", json!({"rules": [{"sessionPersistence": {"idleTimeout": "1m"}}]})),
        ("bad-duration", json!({"rules": [{"sessionPersistence": {"absoluteTimeout": "1 hour"}}]})),
        ("bad-type", json!({"rules": [{"sessionPersistence": {"type": "IP"}}]})),
        (
            "two-rewrites",
            json!({"rules": [{"filters": [
            {"type": "URLRewrite", "urlRewrite": {"hostname": "a.test"}},
            {"type": "URLRewrite", "urlRewrite": {"hostname": "b.test"}}]}]}),
        ),
        (
            "redirect-307",
            json!({"rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 307}}]}]}),
        ),
        (
            "prefix-on-exact",
            json!({"rules": [{"matches": [{"path": {"type": "Exact", "value": "/a"}}],
            "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]}]}),
        ),
    ];
    let mut w = World::new();
    for (name, spec) in cases {
        w.route(name, simple_route(spec.clone()));
    }
    let t = w.translate();
    for (name, _) in cases {
        assert_eq!(accepted(&t, name), (false, "UnsupportedValue"), "{name}");
        let msg = &t.routes[&(NS.to_owned(), (*name).to_owned())][0].conditions[0].message;
        assert!(msg.contains("spec.rules[0]"), "{name}: {msg}");
    }
    assert!(t.pools.is_empty(), "a refused route serves nothing");
}

#[test]
fn https_listeners_take_certificates_and_cross_namespace_needs_a_grant() {
    let mut w = World::new();
    w.gateway(
        "gw",
        json!([
            {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "shop.test",
             "tls": {"certificateRefs": [{"name": "shop-cert"}]}},
            {"name": "other", "port": 443, "protocol": "HTTPS", "hostname": "other.test",
             "tls": {"certificateRefs": [{"name": "c", "namespace": "certs"}]}},
        ]),
    );
    w.route("shop", simple_route(json!({"parentRefs": [{"name": "gw", "sectionName": "https"}]})));
    let t = w.translate();
    assert!(listener_cond(&t, "gw", "https", "ResolvedRefs").ok);
    let other = listener_cond(&t, "gw", "other", "ResolvedRefs");
    assert_eq!((other.ok, other.reason), (false, "RefNotPermitted"));
    let tls = &t.pools[0].tls;
    assert_eq!(tls.len(), 1);
    assert_eq!((tls[0].secret_name.as_str(), tls[0].namespace.as_deref()), ("shop-cert", Some(NS)));
    w.grant("certs", "Gateway", NS, "Secret");
    let t = w.translate();
    assert!(listener_cond(&t, "gw", "other", "ResolvedRefs").ok);
}

#[test]
fn a_port_routeid_does_not_listen_on_is_not_programmed_and_says_how_to_open_it() {
    let mut w = World::new();
    w.listening = Listening { http_ports: vec![80], https_ports: Vec::new() };
    w.gateway(
        "gw",
        json!([
            {"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "alt", "port": 8080, "protocol": "HTTP"},
            {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "c"}]}},
            {"name": "tcp", "port": 9000, "protocol": "TCP"},
        ]),
    );
    let t = w.translate();
    assert!(listener_cond(&t, "gw", "http", "Programmed").ok);
    let alt = listener_cond(&t, "gw", "alt", "Programmed");
    assert!(
        !alt.ok && alt.message.contains("--gateway-http-ports") && alt.message.contains("gateway.httpPorts"),
        "{alt:?}"
    );
    let https = listener_cond(&t, "gw", "https", "Programmed");
    assert!(!https.ok && https.message.contains("--tls-listen"), "{https:?}");
    let tcp = listener_cond(&t, "gw", "tcp", "Accepted");
    assert_eq!((tcp.ok, tcp.reason), (false, "UnsupportedProtocol"));
    let g = &t.gateways[&(NS.to_owned(), "gw".to_owned())];
    assert!(g.conditions.iter().all(|c| c.ok), "{:?}", g.conditions);
}

#[test]
fn listener_conflicts_are_reported() {
    let mut w = World::new();
    w.gateway(
        "gw",
        json!([
            {"name": "a", "port": 80, "protocol": "HTTP", "hostname": "x.test"},
            {"name": "b", "port": 80, "protocol": "HTTP", "hostname": "x.test"},
            {"name": "c", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "c"}]}},
            {"name": "d", "port": 443, "protocol": "HTTP"},
        ]),
    );
    let t = w.translate();
    assert_eq!(listener_cond(&t, "gw", "a", "Conflicted").reason, "HostnameConflict");
    assert_eq!(listener_cond(&t, "gw", "c", "Conflicted").reason, "ProtocolConflict");
    assert!(!listener_cond(&t, "gw", "a", "Programmed").ok);
}

#[test]
fn a_gateway_of_another_class_is_ignored_and_route_kinds_are_checked() {
    let mut w = World::new();
    w.gateway_in(NS, "theirs", "other", json!([{"name": "http", "port": 80, "protocol": "HTTP"}]));
    w.gateway(
        "gw",
        json!([{"name": "http", "port": 80, "protocol": "HTTP",
                "allowedRoutes": {"kinds": [{"kind": "GRPCRoute"}]}}]),
    );
    w.route("shop", simple_route(json!({})));
    let t = w.translate();
    assert!(!t.gateways.contains_key(&(NS.to_owned(), "theirs".to_owned())));
    assert_eq!(listener_cond(&t, "gw", "http", "ResolvedRefs").reason, "InvalidRouteKinds");
    assert_eq!(accepted(&t, "shop"), (false, "NotAllowedByListeners"));
}

#[test]
fn gep_2257_durations() {
    use std::time::Duration;
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("1h1m1s1ms"), Some(Duration::from_millis(3_661_001)));
    for bad in ["", "1", "1d", "1h1m1s1ms1h", "123456s", "-1s", "1.5s"] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn the_example_in_examples_is_accepted_with_its_sessions() {
    let text = include_str!("../../../examples/gateway.yaml");
    let mut w = World::new();
    w.add_service("web", "shop", &["shop-0"]);
    w.add_service("web", "shop-canary", &["canary-0"]);
    for v in serde_saphyr::from_multiple::<Value>(text).unwrap() {
        match v["kind"].as_str().unwrap() {
            "GatewayClass" => {
                let c: GatewayClass = obj(v);
                w.classes.insert(c.metadata.name.clone().unwrap(), Arc::new(c));
            }
            "Gateway" => {
                let g: Gateway = obj(v);
                w.gateways.insert(("web".into(), g.metadata.name.clone().unwrap()), Arc::new(g));
            }
            "HTTPRoute" => {
                let r: HTTPRoute = obj(v);
                w.routes.insert(("web".into(), r.metadata.name.clone().unwrap()), Arc::new(r));
            }
            k => panic!("unexpected kind {k}"),
        }
    }
    let t = w.translate();
    let parents = &t.routes[&("web".to_owned(), "shop".to_owned())];
    assert!(parents[0].conditions.iter().all(|c| c.ok), "{:?}", parents[0].conditions);
    assert_eq!(t.pools.len(), 2);
    let sessions: Vec<_> = t.pools.iter().map(|p| p.sticky.clone().unwrap().persistence.unwrap().name).collect();
    assert_eq!(sessions, ["SHOPID", "x-session"]);
    assert_eq!(t.pools[0].tls.len(), 1, "the HTTPS listener's certificate");
}

#[test]
fn a_class_filter_and_the_installed_crd_version_are_reported_on_the_class() {
    let mut w = World::new();
    w.class("second", CONTROLLER_NAME);
    w.bundle_version = Some("v1.6.1".into());
    let t = w.translate();
    assert_eq!(t.classes.len(), 2, "without a filter every class naming routeid's controller");
    assert_eq!(t.classes["routeid"][1], supported_version("v1.6.1"));
    assert!(t.classes["routeid"][1].ok);
    w.class = Some("second".into());
    w.bundle_version = Some("v1.3.0".into());
    let t = w.translate();
    assert_eq!(t.classes.keys().collect::<Vec<_>>(), ["second"]);
    let v = &t.classes["second"][1];
    assert_eq!((v.ok, v.reason), (false, "UnsupportedVersion"));
    assert!(t.gateways.is_empty(), "the Gateway of class routeid is another installation's");
}

/// The cost of one whole translation at a size a busy cluster has: 1000 routes over 200
/// Services of 10 pods (2 backends per rule, session persistence on). A measurement, not a check.
#[test]
#[ignore = "a measurement, not a check: cargo test --lib translation_cost -- --ignored --nocapture"]
fn translation_cost() {
    let mut w = World::new();
    for s in 0..200 {
        let pods: Vec<String> = (0..10).map(|p| format!("svc{s}-{p}")).collect();
        let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
        w.add_service(NS, &format!("svc{s}"), &pods);
    }
    for r in 0..1000 {
        w.route(
            &format!("r{r}"),
            simple_route(json!({"hostnames": [format!("h{r}.example.com")], "rules": [{
                "backendRefs": [{"name": format!("svc{}", r % 200), "port": 80, "weight": 70},
                                {"name": format!("svc{}", (r + 1) % 200), "port": 80, "weight": 30}],
                "sessionPersistence": {"absoluteTimeout": "1h"}}]})),
        );
    }
    let runs = 5;
    let start = std::time::Instant::now();
    for _ in 0..runs {
        let t = w.translate();
        assert_eq!(t.pools.len(), 1000);
    }
    let each = start.elapsed() / runs;
    println!("translation of 1000 routes x 2 backends x 10 pods: {each:?} per translation");
}

#[test]
fn a_broken_certificate_secret_makes_the_listener_refs_unresolved() {
    let mut w = World::new();
    w.gateway(
        "gw",
        json!([{"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "bad"}]}}]),
    );
    let t = w.translate();
    let mut l = t.gateways[&(NS.to_owned(), "gw".to_owned())].listeners[0].clone();
    l.check_certificates(|_, n| (n == "other").then(|| "no".to_owned()));
    assert!(l.conditions.iter().all(|c| c.type_ != "ResolvedRefs" || c.ok));
    l.check_certificates(|ns, n| (ns == NS && n == "bad").then(|| "tls.key is missing".to_owned()));
    let c = l.conditions.iter().find(|c| c.type_ == "ResolvedRefs").unwrap();
    assert_eq!((c.ok, c.reason), (false, "InvalidCertificateRef"));
    assert!(c.message.contains("web/bad: tls.key is missing"), "{}", c.message);
}

#[test]
fn a_rule_is_served_on_the_kinds_of_listener_it_attached_through_with_their_hostnames() {
    use crate::core::config::HostMatch;
    use crate::core::gateway::ServedOn;
    let mut w = World::new();
    let https = |name: &str, host: &str| {
        json!({"name": name, "port": 443, "protocol": "HTTPS", "hostname": host,
               "tls": {"certificateRefs": [{"name": format!("{name}-cert")}]}})
    };
    w.gateway(
        "gw",
        json!([
            {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "a.example"},
            https("https", "b.example"),
            {"name": "http-same", "port": 80, "protocol": "HTTP", "hostname": "same.example"},
            https("https-same", "same.example"),
        ]),
    );
    let through = |sections: &[&str]| {
        let refs: Vec<Value> = sections.iter().map(|s| json!({"name": "gw", "sectionName": s})).collect();
        simple_route(json!({"parentRefs": refs}))
    };
    w.route("plain", through(&["http"]));
    w.route("secure", through(&["https"]));
    w.route("split", through(&["http", "https"]));
    w.route("both", through(&["http-same", "https-same"]));
    let t = w.translate();
    let pools: BTreeMap<&str, (ServedOn, &[HostMatch], Vec<&str>)> = t
        .pools
        .iter()
        .map(|p| {
            let certs = p.tls.iter().map(|c| c.secret_name.as_str()).collect();
            (p.id.name.as_str(), (p.gateway.as_ref().unwrap().served_on, p.hosts.as_slice(), certs))
        })
        .collect();
    let exact = |h: &str| vec![HostMatch::Exact(h.into())];
    // (pool id, served on, hosts, certificates)
    let want: &[(&str, ServedOn, Vec<HostMatch>, &[&str])] = &[
        ("httproute:plain:0", ServedOn::Plain, exact("a.example"), &[]),
        ("httproute:secure:0", ServedOn::Secure, exact("b.example"), &["https-cert"]),
        ("httproute:split:0:http", ServedOn::Plain, exact("a.example"), &[]),
        ("httproute:split:0:https", ServedOn::Secure, exact("b.example"), &["https-cert"]),
        ("httproute:both:0", ServedOn::Both, exact("same.example"), &["https-same-cert"]),
    ];
    assert_eq!(pools.len(), want.len(), "{:?}", pools.keys());
    for (id, on, hosts, certs) in want {
        let got = &pools[id];
        assert_eq!((got.0, got.1, got.2.as_slice()), (*on, hosts.as_slice(), *certs), "{id}");
    }
    for r in ["plain", "secure", "split", "both"] {
        assert_eq!(accepted(&t, r), (true, "Accepted"), "{r}");
    }
    let attached = |l: &str| {
        let g = &t.gateways[&(NS.to_owned(), "gw".to_owned())];
        g.listeners.iter().find(|x| x.name == l).unwrap().attached_routes
    };
    assert_eq!((attached("http"), attached("https")), (2, 2), "attachment is counted once per listener");
    // Pool ids are unique and the same on every translation.
    let again: Vec<String> = w.translate().pools.iter().map(|p| p.id.name.clone()).collect();
    assert_eq!(again, t.pools.iter().map(|p| p.id.name.clone()).collect::<Vec<_>>());
    assert!(t.pools.iter().all(|p| is_route_pool(&p.id)));
}

#[test]
fn pods_of_the_same_name_in_two_namespaces_stay_two_members_with_exact_weights() {
    let mut w = World::new();
    w.add_service("a", "web", &["web-0"]);
    w.add_service("b", "web", &["web-0"]);
    w.add_service(NS, "web", &["web-0"]);
    w.grant("a", "HTTPRoute", NS, "Service");
    w.grant("b", "HTTPRoute", NS, "Service");
    w.route(
        "shop",
        simple_route(json!({"rules": [{"backendRefs": [
            {"name": "web", "namespace": "a", "port": 80, "weight": 1},
            {"name": "web", "namespace": "b", "port": 80, "weight": 3},
            {"name": "web", "port": 80, "weight": 2},
        ]}]})),
    );
    let t = w.translate();
    let members = &t.pools[0].members;
    let lf: BTreeMap<&str, (u32, std::net::SocketAddr)> =
        members.iter().map(|m| (m.route.as_str(), (m.load_factor, m.address))).collect();
    // The route's own namespace keeps the pod name; the others are qualified, whether or not
    // a name collides today, so a route never changes when a pod elsewhere comes or goes.
    assert_eq!(lf.keys().copied().collect::<Vec<_>>(), ["web-0", "web-0~a", "web-0~b"]);
    assert_eq!(lf["web-0~b"].0, 100);
    assert_eq!(lf["web-0~a"].0, 33);
    assert_eq!(lf["web-0"].0, 67);
    let addrs: std::collections::HashSet<_> = lf.values().map(|v| v.1).collect();
    assert_eq!(addrs.len(), 3, "each pod at its own address");
    assert!(members.windows(2).all(|p| p[0].route < p[1].route), "sorted, unique routes");
    assert!(members.iter().all(|m| crate::core::config::is_valid_route(&m.route)));
    // A re-translation, and one without namespace b's Service, keep a's route.
    assert_eq!(w.translate().pools[0].members, *members);
    w.services.remove(&("b".to_owned(), "web".to_owned()));
    let t = w.translate();
    assert!(t.pools[0].members.iter().any(|m| m.route == "web-0~a"));
}

#[test]
fn a_pod_behind_two_services_of_a_rule_is_one_member_with_the_summed_weight() {
    let mut w = World::new();
    w.add_service(NS, "solo", &["solo-0"]);
    // `both` selects the pods of `shop`: same pod names, same addresses.
    w.add_service(NS, "both", &["shop-0", "shop-1"]);
    let shop_slice = w.slices[&(NS.to_owned(), "shop".to_owned())].clone();
    let mut both = shop_slice.clone();
    both[0].metadata.name = Some("both-abc".into());
    w.slices.insert((NS.to_owned(), "both".to_owned()), both);
    w.route(
        "shop",
        simple_route(json!({"rules": [{"backendRefs": [
            {"name": "shop", "port": 80, "weight": 2},
            {"name": "both", "port": 80, "weight": 2},
            {"name": "solo", "port": 80, "weight": 1},
        ]}]})),
    );
    let t = w.translate();
    let lf: BTreeMap<&str, u32> = t.pools[0].members.iter().map(|m| (m.route.as_str(), m.load_factor)).collect();
    // shop-0 and shop-1: 1 + 1 each, solo-0: 1.
    assert_eq!(lf.len(), 3);
    assert_eq!((lf["shop-0"], lf["shop-1"], lf["solo-0"]), (100, 100, 50));
}

#[test]
fn invalid_backend_refs_keep_their_share_for_the_spec_500() {
    let mut w = World::new();
    let rule = |refs: Value| simple_route(json!({"rules": [{"backendRefs": refs}]}));
    w.route("half", rule(json!([{"name": "shop", "port": 80}, {"name": "nope", "port": 80}])));
    w.route("none", rule(json!([{"name": "nope", "port": 80, "weight": 0}, {"name": "x", "kind": "ConfigMap"}])));
    w.route("fine", rule(json!([{"name": "shop", "port": 80}, {"name": "nope", "port": 80, "weight": 0}])));
    let t = w.translate();
    let share = |n: &str| {
        let p = t.pools.iter().find(|p| p.id.name == format!("httproute:{n}:0")).unwrap();
        p.gateway.as_ref().unwrap().invalid.clone().map(|s| (s.weight, s.total, s.reason))
    };
    assert_eq!(share("half"), Some((1, 2, "Service web/nope not found".to_owned())));
    let (w_, t_, reason) = share("none").unwrap();
    assert_eq!((w_, t_), (1, 1), "no valid backendRef: every request, even at weight 0");
    assert_eq!(reason, "Service web/nope not found; backendRef \"x\" is not a Service");
    assert_eq!(share("fine"), None, "an invalid backendRef of weight 0 takes nothing");
    assert_eq!(route_conds(&t, "half")[1], ("ResolvedRefs", false, "BackendNotFound"));
}

#[test]
fn a_qualified_route_too_long_for_a_route_is_refused() {
    let pod = crate::core::Route::from("p".repeat(251));
    assert_eq!(qualified_route(&pod, "ns"), None);
    assert_eq!(qualified_route(&crate::core::Route::from("web-0"), "b").unwrap(), "web-0~b");
}
