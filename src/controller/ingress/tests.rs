//! Table tests of the Ingress translation: one per annotation and per path type, invalid values,
//! class filtering, and the whole pipeline Ingress + IngressClass + Service + slices → pools.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use super::*;
use crate::api::{CookieMode, CookieSecure};
use crate::controller::index::ClassFilter;
use crate::core::config::PoolConfig;

fn ingress(annotations: Value, spec: Value) -> Ingress {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "web", "annotations": annotations,
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": spec,
    }))
    .unwrap()
}

fn simple(annotations: Value) -> Ingress {
    ingress(
        annotations,
        json!({"ingressClassName": "routeid", "rules": [{"host": "shop.example.com", "http": {"paths": [
            {"path": "/cart", "pathType": "Prefix",
             "backend": {"service": {"name": "shop", "port": {"number": 80}}}}]}}]}),
    )
}

fn sticky_ann(extra: Value) -> Value {
    let mut a = json!({"nginx.ingress.kubernetes.io/affinity": "cookie"});
    if let (Value::Object(a), Value::Object(e)) = (&mut a, extra) {
        a.extend(e);
    }
    a
}

fn one(ing: &Ingress) -> BalancerPoolSpec {
    let t = translate(ing, "routeid").unwrap();
    assert_eq!(t.pools.len(), 1);
    t.pools[0].spec.clone()
}

fn cookie(a: Value) -> RouteCookie {
    one(&simple(sticky_ann(a))).sticky.unwrap().cookie.unwrap()
}

fn refused(a: Value) -> Vec<FieldError> {
    translate(&simple(a), "routeid").unwrap_err()
}

fn service(name: &str, port: i32, port_name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "web"},
        "spec": {"ports": [{"name": port_name, "port": port, "targetPort": 8080, "protocol": "TCP"}]},
    }))
    .unwrap()
}

fn slice(service: &str, pods: &[&str], port_name: &str, port: i32) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-1"), "namespace": "web", "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": pods.iter().enumerate().map(|(i, p)| json!({
            "addresses": [format!("10.0.0.{}", i + 1)],
            "targetRef": {"kind": "Pod", "name": p},
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn class(name: &str, controller: &str, default: bool) -> IngressClass {
    let annotations = if default { json!({DEFAULT_CLASS_ANNOTATION: "true"}) } else { json!({}) };
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"controller": controller},
    }))
    .unwrap()
}

fn index() -> Index {
    Index::new(ClassFilter { ingress_class: "routeid".into(), default_class: false })
}

fn filter(without_class: bool) -> IngressFilter {
    IngressFilter { class: "routeid".into(), watch_without_class: without_class }
}

/// The whole pipeline, pure: Ingress + class + Service + slices → served pool configs.
fn pools(ing: Ingress, services: Vec<Service>, slices: Vec<EndpointSlice>) -> Vec<std::sync::Arc<PoolConfig>> {
    let mut ix = index();
    let mut ings = Ingresses::new(filter(false));
    ings.apply_class("routeid".into(), Some(class("routeid", CONTROLLER_NAME, false)), &mut ix);
    for s in services {
        ix.apply_service(s);
    }
    for s in slices {
        ix.apply_slice(s);
    }
    ings.apply(ing, &mut ix);
    ix.rederive();
    ix.configs()
}

// ---- class filtering ----

#[test]
fn class_name_must_name_our_class_with_our_controller() {
    let mut classes = HashMap::new();
    let ing = simple(json!({}));
    assert!(!serves(&filter(false), &ing, &classes), "no IngressClass object yet");
    classes.insert("routeid".to_owned(), Arc::new(class("routeid", "k8s.io/ingress-nginx", false)));
    assert!(!serves(&filter(false), &ing, &classes), "a class named routeid of another controller");
    classes.insert("routeid".to_owned(), Arc::new(class("routeid", CONTROLLER_NAME, false)));
    assert!(serves(&filter(false), &ing, &classes));
    let mut other = ing.clone();
    other.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
    assert!(!serves(&filter(false), &other, &classes), "another class's Ingress");
}

#[test]
fn legacy_annotation_and_default_class() {
    let mut classes = HashMap::new();
    classes.insert("routeid".to_owned(), Arc::new(class("routeid", CONTROLLER_NAME, false)));
    let mut ing = simple(json!({LEGACY_CLASS_ANNOTATION: "routeid"}));
    ing.spec.as_mut().unwrap().ingress_class_name = None;
    assert!(serves(&filter(false), &ing, &classes));
    let nginx = {
        let mut i = ing.clone();
        i.metadata.annotations = Some(BTreeMap::from([(LEGACY_CLASS_ANNOTATION.to_owned(), "nginx".to_owned())]));
        i
    };
    assert!(!serves(&filter(true), &nginx, &classes));
    let classless = {
        let mut i = ing.clone();
        i.metadata.annotations = None;
        i
    };
    assert!(!serves(&filter(true), &classless, &classes), "our class is not the default");
    classes.insert("routeid".to_owned(), Arc::new(class("routeid", CONTROLLER_NAME, true)));
    assert!(!serves(&filter(false), &classless, &classes), "without --watch-ingress-without-class");
    assert!(serves(&filter(true), &classless, &classes));
}

// ---- path types ----

fn with_path(path: &str, path_type: &str) -> Ingress {
    ingress(
        json!({}),
        json!({"rules": [{"http": {"paths": [{"path": path, "pathType": path_type,
            "backend": {"service": {"name": "shop", "port": {"name": "http"}}}}]}}]}),
    )
}

#[test]
fn path_type_prefix() {
    let s = one(&with_path("/cart/", "Prefix"));
    assert_eq!((s.frontend.path_prefix.as_deref(), s.frontend.path_type), (Some("/cart/"), None));
    assert!(s.frontend.hosts.is_empty(), "a rule without host serves any host");
}

#[test]
fn path_type_exact() {
    let s = one(&with_path("/login", "Exact"));
    assert_eq!(s.frontend.path_type, Some(PathType::Exact));
}

#[test]
fn path_type_implementation_specific_is_prefix() {
    let s = one(&with_path("/a", "ImplementationSpecific"));
    assert_eq!(s.frontend.path_type, None);
}

#[test]
fn path_type_unknown_is_refused() {
    let e = translate(&with_path("/a", "Regex"), "routeid").unwrap_err();
    assert_eq!(e[0].path, "spec.rules[0].http.paths[0].pathType");
}

#[test]
fn rules_paths_and_default_backend_become_pools() {
    let ing = ingress(
        json!({}),
        json!({
            "defaultBackend": {"service": {"name": "fallback", "port": {"number": 8080}}},
            "rules": [
                {"host": "a.example.com", "http": {"paths": [
                    {"path": "/x", "pathType": "Prefix", "backend": {"service": {"name": "x", "port": {"number": 80}}}},
                    {"path": "/y", "pathType": "Exact", "backend": {"service": {"name": "y", "port": {"name": "web"}}}}]}},
                {"host": "*.example.org", "http": {"paths": [
                    {"pathType": "Prefix", "backend": {"service": {"name": "z", "port": {"number": 80}}}}]}}]}),
    );
    let t = translate(&ing, "routeid").unwrap();
    let names: Vec<_> = t.pools.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["ingress:shop:0-0", "ingress:shop:0-1", "ingress:shop:1-0", "ingress:shop:default"]);
    assert_eq!(t.pools[1].spec.backend.service.as_ref().unwrap().port, IntOrString::String("web".into()));
    assert_eq!(t.pools[2].spec.frontend.hosts, ["*.example.org"]);
    assert_eq!(t.pools[2].spec.frontend.path_prefix.as_deref(), Some("/"));
    assert_eq!(t.pools[3].spec.backend.service.as_ref().unwrap().port, IntOrString::Int(8080));
    assert!(t.pools.iter().all(|p| p.spec.ingress_class_name.as_deref() == Some("routeid")));
    assert!(t.pools.iter().all(|p| p.metadata.creation_timestamp.is_some()), "the Ingress's age decides conflicts");
    assert_eq!(ingress_of(&crate::controller::index::pool_id(&t.pools[3])), Some(("web".into(), "shop".into())));
}

#[test]
fn resource_backends_are_refused() {
    let ing =
        ingress(json!({}), json!({"defaultBackend": {"resource": {"apiGroup": "x", "kind": "Bucket", "name": "b"}}}));
    let e = translate(&ing, "routeid").unwrap_err();
    assert_eq!(e[0].path, "spec.defaultBackend");
}

// ---- ingress-nginx annotations ----

#[test]
fn affinity_cookie_defaults() {
    let s = one(&simple(sticky_ann(json!({}))));
    let sticky = s.sticky.unwrap();
    assert_eq!(sticky.names, ["INGRESSCOOKIE"]);
    assert_eq!(sticky.change_on_failure, Some(false), "ingress-nginx's default");
    let c = sticky.cookie.unwrap();
    assert_eq!((c.name.as_str(), c.mode, c.path.as_deref()), ("INGRESSCOOKIE", CookieMode::Insert, Some("/cart")));
    assert_eq!(
        (c.secure, c.http_only, c.same_site, c.max_age, c.expires),
        (CookieSecure::Auto, Some(true), None, None, None),
        "Secure over HTTPS, as ingress-nginx"
    );
}

#[test]
fn no_affinity_no_stickiness() {
    assert!(one(&simple(json!({}))).sticky.is_none());
    assert!(refused(json!({"nginx.ingress.kubernetes.io/affinity": "ip"}))[0].reason.contains("only \"cookie\""));
}

#[test]
fn affinity_mode() {
    assert!(
        one(&simple(sticky_ann(json!({"nginx.ingress.kubernetes.io/affinity-mode": "persistent"})))).sticky.is_some()
    );
    assert!(
        one(&simple(sticky_ann(json!({"nginx.ingress.kubernetes.io/affinity-mode": "balanced"})))).sticky.is_some()
    );
    let e = refused(sticky_ann(json!({"nginx.ingress.kubernetes.io/affinity-mode": "sticky"})));
    assert_eq!(e[0].path, "metadata.annotations[nginx.ingress.kubernetes.io/affinity-mode]");
    assert!(e[0].reason.contains("\"sticky\""));
}

#[test]
fn session_cookie_name() {
    let c = cookie(json!({"nginx.ingress.kubernetes.io/session-cookie-name": "route"}));
    assert_eq!(c.name, "route");
    let s = one(&simple(sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-name": "route"}))));
    assert_eq!(s.sticky.unwrap().names, ["route"], "the cookie is where the route is read");
}

#[test]
fn session_cookie_path() {
    assert_eq!(cookie(json!({"nginx.ingress.kubernetes.io/session-cookie-path": "/"})).path.as_deref(), Some("/"));
}

#[test]
fn session_cookie_domain() {
    let c = cookie(json!({"nginx.ingress.kubernetes.io/session-cookie-domain": "example.com"}));
    assert_eq!(c.domain.as_deref(), Some("example.com"));
}

#[test]
fn session_cookie_expires_and_max_age() {
    let c = cookie(json!({
        "nginx.ingress.kubernetes.io/session-cookie-expires": "172800",
        "nginx.ingress.kubernetes.io/session-cookie-max-age": "3600",
    }));
    assert_eq!((c.expires.as_deref(), c.max_age.as_deref()), (Some("172800s"), Some("3600s")));
    let e = refused(sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-max-age": "2d"})));
    assert_eq!(e[0].path, "metadata.annotations[nginx.ingress.kubernetes.io/session-cookie-max-age]");
    assert!(e[0].reason.contains("\"2d\" is not a number of seconds"));
}

#[test]
fn session_cookie_secure() {
    assert_eq!(
        cookie(json!({"nginx.ingress.kubernetes.io/session-cookie-secure": "true"})).secure,
        CookieSecure::Always
    );
    assert_eq!(
        cookie(json!({"nginx.ingress.kubernetes.io/session-cookie-secure": "false"})).secure,
        CookieSecure::Never
    );
    let e = refused(sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-secure": "yes"})));
    assert!(e[0].reason.contains("\"yes\" is not a boolean"), "{e:?}");
}

#[test]
fn booleans_take_every_spelling_go_parse_bool_takes() {
    for (v, want) in [("1", true), ("t", true), ("T", true), ("TRUE", true), ("True", true), ("true", true)]
        .into_iter()
        .chain([("0", false), ("f", false), ("F", false), ("FALSE", false), ("False", false), ("false", false)])
    {
        let secure = cookie(json!({"nginx.ingress.kubernetes.io/session-cookie-secure": v})).secure;
        let expected = if want { CookieSecure::Always } else { CookieSecure::Never };
        assert_eq!(secure, expected, "{v}");
        let s = one(&simple(json!({"nginx.ingress.kubernetes.io/force-ssl-redirect": v})));
        assert_eq!(s.frontend.https_redirect, Some(want), "{v}");
    }
    for v in ["yes", "on", "2", ""] {
        refused(json!({"nginx.ingress.kubernetes.io/ssl-redirect": v}));
    }
}

#[test]
fn session_cookie_samesite() {
    let c = cookie(json!({"nginx.ingress.kubernetes.io/session-cookie-samesite": "Strict"}));
    assert_eq!(c.same_site, Some(SameSite::Strict));
    let c = cookie(json!({"nginx.ingress.kubernetes.io/session-cookie-samesite": "None"}));
    assert_eq!((c.same_site, c.secure), (Some(SameSite::None), CookieSecure::Auto));
    for (v, want) in [("lax", SameSite::Lax), ("none", SameSite::None), ("STRICT", SameSite::Strict)] {
        let c = cookie(json!({"nginx.ingress.kubernetes.io/session-cookie-samesite": v}));
        assert_eq!(c.same_site, Some(want), "any case, canonical spelling");
    }
    let e = refused(sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-samesite": "relaxed"})));
    assert!(e[0].reason.contains("is not one of None, Lax, Strict"));
}

#[test]
fn session_cookie_conditional_samesite_none() {
    let c = cookie(json!({
        "nginx.ingress.kubernetes.io/session-cookie-samesite": "None",
        "nginx.ingress.kubernetes.io/session-cookie-conditional-samesite-none": "true",
    }));
    assert_eq!(c.conditional_same_site_none, Some(true));
}

#[test]
fn session_cookie_change_on_failure() {
    let s = one(&simple(sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-change-on-failure": "true"}))));
    assert_eq!(s.sticky.unwrap().change_on_failure, Some(true));
}

fn with_tls(annotations: Value, tls: Value) -> Ingress {
    let mut ing = simple(annotations);
    ing.spec.as_mut().unwrap().tls = Some(serde_json::from_value(tls).unwrap());
    ing
}

#[test]
fn spec_tls_names_the_certificate_for_the_rule_host() {
    let s = one(&with_tls(json!({}), json!([{"hosts": ["shop.example.com"], "secretName": "shop-tls"}])));
    assert_eq!(
        s.frontend.tls,
        [FrontendTls { hosts: vec!["shop.example.com".into()], secret_name: "shop-tls".into() }]
    );
    // A wildcard certificate, and an entry without hosts, cover the rule host too.
    let s =
        one(&with_tls(json!({}), json!([{"hosts": ["*.example.com"], "secretName": "wild"}, {"secretName": "any"}])));
    let secrets: Vec<&str> = s.frontend.tls.iter().map(|t| t.secret_name.as_str()).collect();
    assert_eq!(secrets, ["wild", "any"]);
    // Another host's certificate is not this rule's, and is reported.
    let t = translate(&with_tls(json!({}), json!([{"hosts": ["bank.example.net"], "secretName": "bank"}])), "routeid")
        .unwrap();
    assert!(t.pools[0].spec.frontend.tls.is_empty());
    assert!(t.notes[0].contains("no rule serves host \"bank.example.net\""), "{:?}", t.notes);
    let t = translate(&with_tls(json!({}), json!([{"hosts": ["shop.example.com"]}])), "routeid").unwrap();
    assert!(t.notes[0].contains("names no Secret"));
}

#[test]
fn ssl_redirect_defaults_to_true_for_hosts_with_a_certificate() {
    let tls = json!([{"hosts": ["shop.example.com"], "secretName": "shop-tls"}]);
    assert_eq!(one(&with_tls(json!({}), tls.clone())).frontend.https_redirect, Some(true));
    let off = json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"});
    assert_eq!(one(&with_tls(off, tls)).frontend.https_redirect, Some(false));
    assert_eq!(one(&simple(json!({}))).frontend.https_redirect, Some(false), "no certificate, no redirect");
    assert!(!refused(json!({"nginx.ingress.kubernetes.io/ssl-redirect": "on"})).is_empty());
}

#[test]
fn force_ssl_redirect_without_a_certificate() {
    let s = one(&simple(json!({"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"})));
    assert_eq!(s.frontend.https_redirect, Some(true));
}

#[test]
fn rewrite_target() {
    let s = one(&simple(json!({"nginx.ingress.kubernetes.io/rewrite-target": "/"})));
    assert_eq!(s.frontend.rewrite_prefix.as_deref(), Some("/"));
    let e = refused(json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$1"}));
    assert_eq!(e[0].path, "metadata.annotations[nginx.ingress.kubernetes.io/rewrite-target]");
    assert!(e[0].reason.contains("capture groups") && e[0].reason.contains("/app(/|$)(.*)"), "{e:?}");
    // The plain form without a leading slash: refused by the core validator, under its name.
    let e = refused(json!({"nginx.ingress.kubernetes.io/rewrite-target": "app"}));
    assert_eq!(e[0].path, "metadata.annotations[nginx.ingress.kubernetes.io/rewrite-target]", "{e:?}");
    assert!(e[0].reason.contains("\"app\""), "{e:?}");
}

fn strip(path: &str, path_type: &str) -> Result<Translated, Vec<FieldError>> {
    let mut ing = with_path(path, path_type);
    ing.metadata.annotations =
        Some([("nginx.ingress.kubernetes.io/rewrite-target".to_owned(), "/$2".to_owned())].into());
    translate(&ing, "routeid")
}

#[test]
fn rewrite_target_capture_pair_is_a_prefix_strip() {
    for (path, prefix) in [("/app(/|$)(.*)", "/app"), ("/a/b(/|$)(.*)", "/a/b"), ("(/|$)(.*)", "/")] {
        for path_type in ["ImplementationSpecific", "Prefix", "Exact"] {
            let t = strip(path, path_type).unwrap();
            let f = &t.pools[0].spec.frontend;
            assert_eq!(f.path_prefix.as_deref(), Some(prefix), "{path}");
            assert_eq!(f.rewrite_prefix.as_deref(), Some("/"));
            assert_eq!(f.path_type, None, "{path_type}: a segment-wise prefix");
        }
    }
    // What the strip does to requests: ingress-nginx's `/app(/|$)(.*)` → `/$2`.
    for (req, want) in [("/app", "/"), ("/app/", "/"), ("/app/cart?x=1", "/cart?x=1")] {
        assert_eq!(crate::core::table::rewrite_path("/app", "/", req).as_deref(), Some(want), "{req}");
    }
    for path in ["/app", "/app(.*)", "/a.b(/|$)(.*)", "/a(x|y)(/|$)(.*)", "app(/|$)(.*)"] {
        let e = strip(path, "ImplementationSpecific").unwrap_err();
        assert_eq!(e[0].path, "spec.rules[0].http.paths[0].path", "{path}");
        assert!(e[0].reason.contains("(/|$)(.*)"), "{e:?}");
    }
}

#[test]
fn proxy_timeouts() {
    let s = one(&simple(json!({
        "nginx.ingress.kubernetes.io/proxy-connect-timeout": "5",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "120s",
    })));
    assert_eq!((s.timeouts.connect.as_deref(), s.timeouts.response.as_deref()), (Some("5s"), Some("120s")));
    assert!(!refused(json!({"nginx.ingress.kubernetes.io/proxy-read-timeout": "1m"})).is_empty());
}

#[test]
fn proxy_next_upstream_tries() {
    let tries = |v: &str| {
        one(&simple(json!({"nginx.ingress.kubernetes.io/proxy-next-upstream-tries": v}))).health.passive.max_attempts
    };
    assert_eq!(tries("2"), Some(2));
    assert_eq!(tries("0"), Some(16), "0 is nginx's no limit");
    assert_eq!(tries("50"), Some(16));
    assert!(!refused(json!({"nginx.ingress.kubernetes.io/proxy-next-upstream-tries": "many"})).is_empty());
}

#[test]
fn load_balance() {
    let lb = |v: &str| one(&simple(json!({"nginx.ingress.kubernetes.io/load-balance": v}))).lb_method;
    assert_eq!(lb("round_robin"), LbMethodName::ByRequests);
    assert_eq!(lb("ewma"), LbMethodName::LeastLatency);
    assert!(!refused(json!({"nginx.ingress.kubernetes.io/load-balance": "chash"})).is_empty());
}

#[test]
fn unsupported_annotations_are_listed() {
    let t = translate(
        &simple(json!({
            "nginx.ingress.kubernetes.io/configuration-snippet": "x",
            "nginx.ingress.kubernetes.io/limit-rps": "5",
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "routeid.io/typo": "1",
            "example.com/other": "kept quiet",
        })),
        "routeid",
    )
    .unwrap();
    assert_eq!(
        t.unsupported,
        [
            "nginx.ingress.kubernetes.io/configuration-snippet",
            "nginx.ingress.kubernetes.io/limit-rps",
            "routeid.io/typo"
        ]
    );
}

#[test]
fn every_problem_is_named_at_once() {
    let e = refused(sticky_ann(json!({
        "nginx.ingress.kubernetes.io/session-cookie-secure": "yes",
        "nginx.ingress.kubernetes.io/load-balance": "random",
    })));
    assert_eq!(e.len(), 2);
}

/// Values only the core validator knows are wrong refuse the Ingress in `translate`, named by
/// their annotation and value, never as `spec.*` fields of a BalancerPool.
#[test]
fn values_the_core_validator_refuses_name_the_annotation() {
    let cases = [
        (
            sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-name": "a b"})),
            "session-cookie-name",
            "\"a b\"",
        ),
        (
            sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-path": "cart"})),
            "session-cookie-path",
            "\"cart\"",
        ),
        (
            sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-domain": "a;b"})),
            "session-cookie-domain",
            "\"a;b\"",
        ),
        (
            sticky_ann(json!({
                "nginx.ingress.kubernetes.io/session-cookie-samesite": "None",
                "nginx.ingress.kubernetes.io/session-cookie-secure": "false",
            })),
            "session-cookie-samesite",
            "\"None\"",
        ),
        (json!({"routeid.io/health-path": "/h", "routeid.io/health-interval": "soon"}), "health-interval", "\"soon\""),
        (json!({"routeid.io/health-path": "/h", "routeid.io/health-timeout": "0s"}), "health-timeout", "\"0s\""),
        (
            json!({"routeid.io/health-path": "/h", "routeid.io/health-expect-status": "ok"}),
            "health-expect-status",
            "\"ok\"",
        ),
        (json!({"routeid.io/health-path": "h"}), "health-path", "\"h\""),
        (json!({"routeid.io/retry-after": "later"}), "retry-after", "\"later\""),
        (json!({"routeid.io/max-connections": "0"}), "max-connections", "\"0\""),
        (json!({"routeid.io/sticky-names": "JSESSION ID"}), "sticky-names", "\"JSESSION ID\""),
        (
            json!({"routeid.io/sticky-names": "JSESSIONID", "routeid.io/sticky-separator": "ab"}),
            "sticky-separator",
            "\"ab\"",
        ),
    ];
    for (annotations, name, value) in cases {
        let e = refused(annotations);
        let named = e.iter().find(|e| e.path.ends_with(&format!("/{name}]")));
        let named = named.unwrap_or_else(|| panic!("{name}: {e:?}"));
        assert!(named.reason.contains(value), "{name}: {e:?}");
        assert!(e.iter().all(|e| !e.path.starts_with("spec.sticky") && !e.path.starts_with("spec.health")), "{e:?}");
    }
}

#[test]
fn a_refused_value_is_never_accepted() {
    let mut ix = index();
    let mut ings = Ingresses::new(filter(false));
    ings.apply_class("routeid".into(), Some(class("routeid", CONTROLLER_NAME, false)), &mut ix);
    let news =
        ings.apply(simple(sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-name": "a b"}))), &mut ix);
    assert!(news.iter().all(|n| n.reason != "Accepted"), "{news:?}");
    let rejected = news.iter().find(|n| n.reason == "Rejected").unwrap();
    assert!(rejected.note.contains("nginx.ingress.kubernetes.io/session-cookie-name"), "{rejected:?}");
    assert!(ix.configs().is_empty());
}

#[test]
fn affinity_mode_persistent_drainable() {
    let s = one(&simple(sticky_ann(json!({"nginx.ingress.kubernetes.io/affinity-mode": "persistent-drainable"}))));
    assert!(s.sticky.is_some());
}

/// Annotations that would do nothing: routeid's own are refused, ingress-nginx's reported.
#[test]
fn annotations_without_effect_are_never_silent() {
    let e = refused(json!({"routeid.io/sticky-names": "JSESSIONID", "routeid.io/cookie-mode": "Prefix"}));
    assert_eq!(e[0].path, "metadata.annotations[routeid.io/cookie-mode]");
    assert!(e[0].reason.contains("needs nginx.ingress.kubernetes.io/affinity: cookie"), "{e:?}");
    for name in ["health-interval", "health-timeout", "health-expect-status"] {
        let e = refused(json!({format!("routeid.io/{name}"): "5s"}));
        assert!(e[0].reason.contains("needs routeid.io/health-path"), "{name}: {e:?}");
    }
    for name in ["sticky-separator", "failover"] {
        let e = refused(json!({format!("routeid.io/{name}"): "-"}));
        assert!(e.iter().any(|e| e.path.ends_with(&format!("/{name}]"))), "{name}: {e:?}");
    }
    let t = translate(
        &simple(json!({
            "nginx.ingress.kubernetes.io/session-cookie-name": "S",
            "nginx.ingress.kubernetes.io/affinity-mode": "persistent",
        })),
        "routeid",
    )
    .unwrap();
    assert_eq!(t.no_effect.len(), 2, "{:?}", t.no_effect);
    assert!(t.no_effect.iter().all(|u| u.contains("no effect: affinity is not cookie")), "{:?}", t.no_effect);
    let mut ix = index();
    let mut ings = Ingresses::new(filter(false));
    ings.apply_class("routeid".into(), Some(class("routeid", CONTROLLER_NAME, false)), &mut ix);
    let news = ings.apply(simple(json!({"nginx.ingress.kubernetes.io/session-cookie-name": "S"})), &mut ix);
    let warn = news.iter().find(|n| n.reason == "UnsupportedAnnotations").unwrap();
    assert!(warn.note.contains("session-cookie-name (no effect: affinity is not cookie)"), "{warn:?}");
}

#[test]
fn unsupported_annotations_are_reported_while_refused() {
    let mut ix = index();
    let mut ings = Ingresses::new(filter(false));
    ings.apply_class("routeid".into(), Some(class("routeid", CONTROLLER_NAME, false)), &mut ix);
    let a =
        json!({"nginx.ingress.kubernetes.io/configuration-snippet": "x", "nginx.ingress.kubernetes.io/affinity": "ip"});
    let news = ings.apply(simple(a), &mut ix);
    let reasons: Vec<&str> = news.iter().map(|n| n.reason).collect();
    assert_eq!(reasons, ["Rejected", "UnsupportedAnnotations"], "{news:?}");
    assert!(news[1].note.contains("configuration-snippet"));
    assert!(ings.standing_news().iter().any(|n| n.reason == "UnsupportedAnnotations"));
}

/// Status follows what is served: a refused-on-first-sight Ingress is not served; one that
/// stops being ours is `left` (its status to clear) until served again or deleted.
#[test]
fn served_only_once_accepted_and_left_when_no_longer_ours() {
    let mut ix = index();
    let mut ings = Ingresses::new(filter(false));
    ings.apply_class("routeid".into(), Some(class("routeid", CONTROLLER_NAME, false)), &mut ix);
    let key: IngressKey = ("web".into(), "shop".into());
    ings.apply(simple(json!({"nginx.ingress.kubernetes.io/affinity": "ip"})), &mut ix);
    assert_eq!(ings.served().count(), 0, "refused on first sight serves nothing");
    ings.apply(simple(json!({})), &mut ix);
    assert_eq!(ings.served().map(|(k, _)| k.clone()).collect::<Vec<_>>(), vec![key.clone()]);
    // Refused later: the previous configuration keeps serving, so it stays served.
    ings.apply(simple(json!({"nginx.ingress.kubernetes.io/affinity": "ip"})), &mut ix);
    assert_eq!(ings.served().count(), 1);
    assert_eq!(ings.left().count(), 0);
    let mut other = simple(json!({}));
    other.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
    ings.apply(other, &mut ix);
    assert_eq!((ings.served().count(), ings.left().cloned().collect::<Vec<_>>()), (0, vec![key.clone()]));
    ings.apply(simple(json!({})), &mut ix);
    assert_eq!((ings.served().count(), ings.left().count()), (1, 0), "served again: nothing to clear");
    let mut other = simple(json!({}));
    other.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
    ings.apply(other, &mut ix);
    ings.delete(&key, &mut ix);
    assert_eq!(ings.left().count(), 0, "a deleted Ingress has no status to clear");
}

// ---- routeid.io annotations ----

#[test]
fn routeid_sticky_names_and_cookie_mode() {
    let s = one(&simple(json!({"routeid.io/sticky-names": "JSESSIONID|jsessionid"})));
    let sticky = s.sticky.unwrap();
    assert_eq!(sticky.names, ["JSESSIONID", "jsessionid"]);
    assert!(sticky.cookie.is_none(), "the application's session id alone");
    let s = one(&simple(sticky_ann(
        json!({"routeid.io/sticky-names": "JSESSIONID|jsessionid", "routeid.io/cookie-mode": "Prefix"}),
    )));
    let c = s.sticky.unwrap().cookie.unwrap();
    assert_eq!((c.mode, c.name.as_str()), (CookieMode::Prefix, "JSESSIONID"));
    assert!(!refused(json!({"routeid.io/cookie-mode": "insert"})).is_empty());
}

#[test]
fn routeid_lb_method_wins_over_load_balance() {
    let s =
        one(&simple(json!({"nginx.ingress.kubernetes.io/load-balance": "ewma", "routeid.io/lb-method": "ByBusyness"})));
    assert_eq!(s.lb_method, LbMethodName::ByBusyness);
}

#[test]
fn routeid_failover_route_from_separator() {
    let s = one(&simple(json!({
        "routeid.io/sticky-names": "sid",
        "routeid.io/failover": "false",
        "routeid.io/route-from": "Hostname",
        "routeid.io/sticky-separator": "~",
    })));
    let st = s.sticky.unwrap();
    assert_eq!((st.failover, st.separator.as_deref()), (Some(false), Some("~")));
    assert_eq!(s.backend.route_from, Some(RouteFrom::Hostname));
}

#[test]
fn routeid_health_and_limits() {
    let s = one(&simple(json!({
        "routeid.io/health-path": "/healthz",
        "routeid.io/health-interval": "3s",
        "routeid.io/health-expect-status": "200",
        "routeid.io/retry-after": "10s",
        "routeid.io/fail-on-status": "503, 502",
        "routeid.io/max-connections": "100",
    })));
    let a = s.health.active.unwrap();
    assert_eq!(
        (a.path.as_deref(), a.interval.as_deref(), a.expect_status.as_deref()),
        (Some("/healthz"), Some("3s"), Some("200"))
    );
    assert_eq!(s.health.passive.retry_after.as_deref(), Some("10s"));
    assert_eq!(s.health.passive.fail_on_status, [503, 502]);
    assert_eq!(s.backend.max_connections, Some(100));
    assert!(!refused(json!({"routeid.io/fail-on-status": "5xx"})).is_empty());
}

// ---- the whole pipeline ----

#[test]
fn numeric_service_port_resolves_to_the_target_port() {
    let got =
        pools(simple(json!({})), vec![service("shop", 80, "http")], vec![slice("shop", &["shop-0"], "http", 8080)]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].members[0].address.to_string(), "10.0.0.1:8080");
    assert_eq!(got[0].id.name, "ingress:shop:0-0");
}

#[test]
fn named_service_port_resolves_to_the_target_port() {
    let ing = ingress(
        json!({}),
        json!({"ingressClassName": "routeid", "rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "shop", "port": {"name": "web"}}}}]}}]}),
    );
    let got = pools(ing, vec![service("shop", 80, "web")], vec![slice("shop", &["shop-0", "shop-1"], "web", 9090)]);
    let addrs: Vec<String> = got[0].members.iter().map(|m| m.address.to_string()).collect();
    assert_eq!(addrs, ["10.0.0.1:9090", "10.0.0.2:9090"]);
}

#[test]
fn cookie_attributes_reach_the_pool_config() {
    let ing = simple(sticky_ann(json!({
        "nginx.ingress.kubernetes.io/session-cookie-name": "SHOP",
        "nginx.ingress.kubernetes.io/session-cookie-domain": "example.com",
        "nginx.ingress.kubernetes.io/session-cookie-max-age": "3600",
        "nginx.ingress.kubernetes.io/session-cookie-expires": "7200",
        "nginx.ingress.kubernetes.io/session-cookie-samesite": "Lax",
        "nginx.ingress.kubernetes.io/session-cookie-secure": "true",
    })));
    let got = pools(ing, vec![service("shop", 80, "http")], vec![slice("shop", &["shop-0"], "http", 8080)]);
    let sticky = got[0].sticky.as_ref().unwrap();
    let c = sticky.cookie.as_ref().unwrap();
    assert_eq!(c.attributes, "; Path=/cart; Domain=example.com; Max-Age=3600; Secure; HttpOnly; SameSite=Lax");
    assert_eq!(c.secure_attributes, c.attributes, "session-cookie-secure: true is Always");
    assert_eq!(c.expires, Some(Duration::from_secs(7200)));
    assert!(!sticky.change_on_failure);
}

#[test]
fn invalid_annotations_keep_the_previous_pools() {
    let mut ix = index();
    let mut ings = Ingresses::new(filter(false));
    ings.apply_class("routeid".into(), Some(class("routeid", CONTROLLER_NAME, false)), &mut ix);
    let news = ings.apply(simple(sticky_ann(json!({}))), &mut ix);
    assert_eq!(news[0].reason, "Accepted");
    ix.rederive();
    let before = ix.configs();
    let news =
        ings.apply(simple(sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-max-age": "soon"}))), &mut ix);
    assert_eq!((news[0].reason, news[0].warning), ("Rejected", true));
    assert!(news[0].note.contains("session-cookie-max-age") && news[0].note.contains("\"soon\""));
    ix.rederive();
    assert_eq!(ix.configs(), before, "the previous configuration keeps serving");
    // The same refusal again is not reported twice; a fix is accepted.
    assert!(
        ings.apply(simple(sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-max-age": "soon"}))), &mut ix)
            .is_empty()
    );
    let news =
        ings.apply(simple(sticky_ann(json!({"nginx.ingress.kubernetes.io/session-cookie-max-age": "60"}))), &mut ix);
    assert_eq!(news[0].reason, "Accepted");
}

#[test]
fn a_class_change_takes_the_pools_away_and_deletion_too() {
    let mut ix = index();
    let mut ings = Ingresses::new(filter(false));
    ings.apply_class("routeid".into(), Some(class("routeid", CONTROLLER_NAME, false)), &mut ix);
    ings.apply(simple(json!({})), &mut ix);
    ix.rederive();
    assert_eq!(ix.configs().len(), 1);
    let mut moved = simple(json!({}));
    moved.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
    ings.apply(moved, &mut ix);
    ix.rederive();
    assert!(ix.configs().is_empty());
    ings.apply(simple(json!({})), &mut ix);
    ix.rederive();
    assert_eq!(ix.configs().len(), 1);
    ings.apply_class("routeid".into(), None, &mut ix);
    ix.rederive();
    assert!(ix.configs().is_empty(), "the IngressClass is gone");
    ings.apply_class("routeid".into(), Some(class("routeid", CONTROLLER_NAME, false)), &mut ix);
    ings.delete(&("web".into(), "shop".into()), &mut ix);
    ix.rederive();
    assert!(ix.configs().is_empty());
}

#[test]
fn unsupported_annotations_are_reported_once() {
    let mut ix = index();
    let mut ings = Ingresses::new(filter(false));
    ings.apply_class("routeid".into(), Some(class("routeid", CONTROLLER_NAME, false)), &mut ix);
    let ann = json!({"nginx.ingress.kubernetes.io/limit-rps": "5"});
    let news = ings.apply(simple(ann.clone()), &mut ix);
    let warn: Vec<_> = news.iter().filter(|n| n.reason == "UnsupportedAnnotations").collect();
    assert_eq!(warn.len(), 1);
    assert!(warn[0].note.contains("nginx.ingress.kubernetes.io/limit-rps"));
    let mut changed = simple(ann);
    changed.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].host = Some("other.example.com".into());
    let news = ings.apply(changed, &mut ix);
    assert!(news.iter().all(|n| n.reason != "UnsupportedAnnotations"), "the same list is not repeated");
}

#[test]
fn older_object_wins_a_conflict_with_a_balancer_pool() {
    let mut ix = index();
    let mut ings = Ingresses::new(filter(false));
    ings.apply_class("routeid".into(), Some(class("routeid", CONTROLLER_NAME, false)), &mut ix);
    // A BalancerPool created later on the same host and path.
    let pool: BalancerPool = serde_json::from_value(json!({
        "apiVersion": "routeid.io/v1alpha1", "kind": "BalancerPool",
        "metadata": {"name": "shop", "namespace": "web", "creationTimestamp": "2025-06-01T00:00:00Z"},
        "spec": {"ingressClassName": "routeid", "frontend": {"hosts": ["shop.example.com"], "pathPrefix": "/cart"},
                 "backend": {"service": {"name": "shop", "port": "http"}}},
    }))
    .unwrap();
    ix.apply_pool(pool);
    ings.apply(simple(json!({})), &mut ix);
    ix.rederive();
    let (_, conflicts) = crate::core::table::RoutingTable::build(ix.configs(), None);
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].winner.name, "ingress:shop:0-0", "the Ingress is older");
    assert_eq!(conflicts[0].loser.name, "shop");
}

/// The shipped example passes the whole translation, core validation included.
#[test]
fn the_example_ingress_is_accepted() {
    let ing: Ingress = serde_saphyr::from_str(include_str!("../../../examples/ingress.yaml")).unwrap();
    let t = translate(&ing, "routeid").unwrap();
    assert_eq!(t.pools.len(), 1);
    assert!(t.unsupported.is_empty() && t.no_effect.is_empty(), "{t:?}");
}
