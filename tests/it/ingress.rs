//! Kubernetes Ingress end to end: Ingresses, IngressClasses, Services and EndpointSlices in the
//! fake API server, the real controller and proxy, real members on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use routeid::controller::ingress::Publish;
use routeid::core::PoolId;
use serde_json::{Value, json};

use crate::support::cluster::*;
use crate::support::fake_apiserver::FakeApiServer;
use crate::support::*;

const HOST: &str = "shop.example.com";

async fn create<K>(api: Api<K>, v: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
}

async fn class(kube: &Kube, name: &str, controller: &str) {
    let v = json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                   "metadata": {"name": name}, "spec": {"controller": controller}});
    create(Api::<IngressClass>::all(kube.client.clone()), v).await;
}

/// A Service whose port `port` (named `name`) targets the container port `target`.
async fn service(kube: &Kube, svc: &str, name: &str, port: i32, target: Value) {
    let v = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "namespace": NS},
                   "spec": {"ports": [{"name": name, "port": port, "targetPort": target, "protocol": "TCP"}]}});
    create(Api::<Service>::namespaced(kube.client.clone(), NS), v).await;
}

/// A slice with one endpoint whose port is named `port_name` (the Service port's name).
fn named_slice(service: &str, pod: &str, port_name: &str, addr: SocketAddr, cond: Cond) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-{pod}"), "namespace": NS,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": addr.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": cond.conditions(),
                       "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}],
    })
}

fn ingress_json(name: &str, class: &str, annotations: Value, port: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {"ingressClassName": class, "rules": [{"host": HOST, "http": {"paths": [
            {"path": "/app", "pathType": "Prefix", "backend": {"service": {"name": "shop", "port": port}}}]}}]},
    })
}

fn ingresses(kube: &Kube) -> Api<Ingress> {
    Api::namespaced(kube.client.clone(), NS)
}

fn pool_members(r: &Replica, ingress: &str) -> Vec<(String, String)> {
    r.members(&format!("ingress:{ingress}:0-0"))
}

fn cookie_of(got: &Got, name: &str) -> Option<String> {
    got.set_cookies().into_iter().find(|c| c.starts_with(&format!("{name}=")))
}

fn value_of(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or("").to_owned()
}

async fn host_get(r: &Replica, headers: &[(&str, &str)]) -> Got {
    let mut h = vec![("host", HOST)];
    h.extend_from_slice(headers);
    get(r.proxy(), "/app/cart", &h).await
}

/// Three pods behind Service `shop` (port 80 → targetPort `http`, the members' real ports).
async fn shop(api: &FakeApiServer, kube: &Kube, annotations: Value) -> (Replica, Vec<Member>) {
    class(kube, "routeid", "routeid.io/ingress-controller").await;
    service(kube, "shop", "http", 80, json!("http")).await;
    let members = vec![Member::start("shop-0").await, Member::start("shop-1").await, Member::start("shop-2").await];
    for m in &members {
        kube.put_slice(&serde_json::from_value(named_slice("shop", &m.route, "http", m.addr, Cond::Ready)).unwrap())
            .await;
    }
    create(ingresses(kube), ingress_json("shop", "routeid", annotations, json!({"number": 80}))).await;
    let r = Replica::start(api, options("r1")).await;
    eventually(WAIT, "three members", || async { pool_members(&r, "shop").len() == 3 }).await;
    (r, members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_cookie_has_the_annotated_attributes_sticks_drains_and_moves_once() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let annotations = json!({
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/session-cookie-name": "SHOPID",
            "nginx.ingress.kubernetes.io/session-cookie-path": "/app",
            "nginx.ingress.kubernetes.io/session-cookie-domain": "example.com",
            "nginx.ingress.kubernetes.io/session-cookie-expires": "3600",
            "nginx.ingress.kubernetes.io/session-cookie-max-age": "1800",
            "nginx.ingress.kubernetes.io/session-cookie-secure": "true",
            "nginx.ingress.kubernetes.io/session-cookie-samesite": "Lax",
        });
        let (r, members) = shop(&api, &kube, annotations).await;

        // The first response sets the cookie with exactly the attributes asked for.
        let first = host_get(&r, &[]).await;
        assert_eq!(first.status, 200);
        let pinned = first.route().to_owned();
        let set = cookie_of(&first, "SHOPID").expect("a session cookie");
        let parts: Vec<&str> = set.split("; ").collect();
        assert_eq!(parts[0], format!("SHOPID=.{pinned}"));
        let expires = parts[1].strip_prefix("Expires=").expect("Expires right after the value");
        let at = httpdate::parse_http_date(expires).unwrap();
        let ahead = at.duration_since(SystemTime::now()).unwrap_or_default();
        assert!(ahead > Duration::from_secs(3590) && ahead <= Duration::from_secs(3600), "{ahead:?}");
        assert_eq!(
            parts[2..],
            ["Path=/app", "Domain=example.com", "Max-Age=1800", "Secure", "HttpOnly", "SameSite=Lax"]
        );

        // 100 follow-ups stick to that pod, without a new cookie.
        let jar = value_of(&set);
        for _ in 0..100 {
            let again = host_get(&r, &[("cookie", &jar)]).await;
            assert_eq!(again.route(), pinned);
            assert!(cookie_of(&again, "SHOPID").is_none());
        }
        // Another host is not this Ingress's.
        assert_eq!(get(r.proxy(), "/app/cart", &[("host", "other.example.com")]).await.status, 404);

        // A terminating pod keeps its sessions and gets no new ones.
        let m = members.iter().find(|m| m.route == pinned).unwrap();
        let terminating = named_slice("shop", &pinned, "http", m.addr, Cond::Terminating);
        kube.put_slice(&serde_json::from_value(terminating).unwrap()).await;
        eventually(WAIT, "the pod draining", || async {
            pool_members(&r, "shop").iter().any(|(route, state)| *route == pinned && state == "Drain")
        })
        .await;
        for _ in 0..5 {
            assert_eq!(host_get(&r, &[("cookie", &jar)]).await.route(), pinned);
            assert_ne!(host_get(&r, &[]).await.route(), pinned, "no new session on a terminating pod");
        }

        // The pod leaves the slices: its session moves once, with a new cookie, then sticks.
        kube.delete_slice(&format!("shop-{pinned}")).await;
        eventually(WAIT, "two members", || async { pool_members(&r, "shop").len() == 2 }).await;
        let moved = host_get(&r, &[("cookie", &jar)]).await;
        assert_eq!(moved.status, 200);
        assert_ne!(moved.route(), pinned);
        let new_set = cookie_of(&moved, "SHOPID").expect("the moved session gets a new cookie");
        assert_eq!(value_of(&new_set), format!("SHOPID=.{}", moved.route()));
        for _ in 0..5 {
            let again = host_get(&r, &[("cookie", &value_of(&new_set))]).await;
            assert_eq!(again.route(), moved.route());
            assert!(cookie_of(&again, "SHOPID").is_none());
        }
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_on_failure_false_keeps_the_cookie_on_a_listed_pod_and_true_moves_it() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let (r, members) = shop(&api, &kube, json!({"nginx.ingress.kubernetes.io/affinity": "cookie"})).await;
        let first = host_get(&r, &[]).await;
        let pinned = first.route().to_owned();
        let jar = value_of(&cookie_of(&first, "INGRESSCOOKIE").expect("the default cookie name"));
        members.iter().find(|m| m.route == pinned).unwrap().kill();

        // The pod is still listed: the request is answered by another pod, the cookie stays.
        for _ in 0..3 {
            let got = host_get(&r, &[("cookie", &jar)]).await;
            assert_eq!(got.status, 200);
            assert_ne!(got.route(), pinned);
            assert!(cookie_of(&got, "INGRESSCOOKIE").is_none(), "change-on-failure: false keeps the session's pod");
        }

        // With change-on-failure: true, the failed session is moved with a new cookie.
        let patch = json!({"metadata": {"annotations": {
            "nginx.ingress.kubernetes.io/session-cookie-change-on-failure": "true"}}});
        ingresses(&kube).patch("shop", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        let id = PoolId { namespace: NS.into(), name: "ingress:shop:0-0".into() };
        eventually(WAIT, "the new setting", || async {
            r.running
                .proxy
                .snapshot()
                .table
                .pool(&id)
                .is_some_and(|p| p.config.sticky.as_ref().is_some_and(|s| s.change_on_failure))
        })
        .await;
        let got = host_get(&r, &[("cookie", &jar)]).await;
        assert_ne!(got.route(), pinned);
        let set = cookie_of(&got, "INGRESSCOOKIE").expect("moved with a new cookie");
        assert_eq!(value_of(&set), format!("INGRESSCOOKIE=.{}", got.route()));
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_filtering_and_named_service_ports() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        class(&kube, "routeid", "routeid.io/ingress-controller").await;
        class(&kube, "nginx", "k8s.io/ingress-nginx").await;
        // Service port `web` (8080) targets the container port named `app`: the slices list it
        // under the Service port's name with the pod's real port.
        service(&kube, "shop", "web", 8080, json!("app")).await;
        let m = Member::start("shop-0").await;
        kube.put_slice(&serde_json::from_value(named_slice("shop", "shop-0", "web", m.addr, Cond::Ready)).unwrap())
            .await;
        create(ingresses(&kube), ingress_json("theirs", "nginx", json!({}), json!({"number": 8080}))).await;
        create(ingresses(&kube), ingress_json("ours", "routeid", json!({}), json!({"name": "web"}))).await;
        let r = Replica::start(&api, options("r1")).await;
        eventually(WAIT, "our Ingress served", || async { pool_members(&r, "ours").len() == 1 }).await;
        assert!(pool_members(&r, "theirs").is_empty(), "another class's Ingress is not served");
        let got = host_get(&r, &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.route(), "shop-0");
        assert_eq!(r.running.proxy.snapshot().table.pools().len(), 1);
        r.stop().await;
    })
    .await;
}

fn events(api: &FakeApiServer, name: &str) -> Vec<(String, String, String)> {
    api.objects("events.k8s.io", "events")
        .iter()
        .filter(|e| {
            e.pointer("/regarding/name").and_then(Value::as_str) == Some(name)
                && e.pointer("/regarding/kind").and_then(Value::as_str) == Some("Ingress")
        })
        .map(|e| {
            let s = |p: &str| e.pointer(p).and_then(Value::as_str).unwrap_or("").to_owned();
            (s("/type"), s("/reason"), s("/note"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_annotations_and_invalid_values_are_reported() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let annotations = json!({
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/limit-rps": "10",
            "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers \"X: y\";",
        });
        let (r, _members) = shop(&api, &kube, annotations).await;
        eventually(WAIT, "an UnsupportedAnnotations event", || async {
            events(&api, "shop").iter().any(|(t, reason, note)| {
                t == "Warning"
                    && reason == "UnsupportedAnnotations"
                    && note.contains("nginx.ingress.kubernetes.io/limit-rps")
                    && note.contains("nginx.ingress.kubernetes.io/configuration-snippet")
            })
        })
        .await;
        // An invalid value refuses the change; the previous configuration keeps serving.
        let patch =
            json!({"metadata": {"annotations": {"nginx.ingress.kubernetes.io/session-cookie-max-age": "forever"}}});
        ingresses(&kube).patch("shop", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        eventually(WAIT, "a Rejected event", || async {
            events(&api, "shop").iter().any(|(t, reason, note)| {
                t == "Warning"
                    && reason == "Rejected"
                    && note.contains("session-cookie-max-age")
                    && note.contains("forever")
            })
        })
        .await;
        let got = host_get(&r, &[]).await;
        assert_eq!(got.status, 200);
        assert!(cookie_of(&got, "INGRESSCOOKIE").is_some_and(|c| !c.contains("Max-Age")), "the previous config");
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_address_is_written_by_the_leader_only() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let mut o1 = options("r1");
        o1.publish = Publish::Addresses(vec!["203.0.113.7".into(), "lb.example.com".into()]);
        class(&kube, "routeid", "routeid.io/ingress-controller").await;
        service(&kube, "shop", "http", 80, json!(8080)).await;
        create(ingresses(&kube), ingress_json("shop", "routeid", json!({}), json!({"number": 80}))).await;
        let r1 = Replica::start(&api, o1.clone()).await;
        eventually(WAIT, "r1 leading", || async { r1.controller.is_leader() }).await;
        let mut o2 = options("r2");
        o2.publish = o1.publish.clone();
        let r2 = Replica::start(&api, o2).await;
        eventually(WAIT, "the status address", || async {
            let ing = ingresses(&kube).get("shop").await.unwrap();
            let lb = ing.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).unwrap_or_default();
            lb.len() == 2
                && lb[0].ip.as_deref() == Some("203.0.113.7")
                && lb[1].hostname.as_deref() == Some("lb.example.com")
        })
        .await;
        eventually(WAIT, "r2 synced", || async { r2.controller.stats.synced.load(Ordering::Acquire) }).await;
        assert!(!r2.controller.is_leader());
        assert!(r1.controller.stats.writer.status_writes.load(Ordering::Relaxed) >= 1);
        assert_eq!(r2.controller.stats.writer.status_writes.load(Ordering::Relaxed), 0, "only the Lease holder writes");
        r2.stop().await;
        r1.stop().await;
    })
    .await;
}

/// Runs `routeid ingress-check --class nginx -n NS` against the fake API server: exit code, stdout.
async fn ingress_check(api: &FakeApiServer, file: &str) -> (Option<i32>, String) {
    let kubeconfig = kubeconfig_file(file, api.addr);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_routeid"))
        .args(["ingress-check", "--class", "nginx", "-n", NS, "--kubeconfig"])
        .arg(&kubeconfig)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out).await.unwrap().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_check_reports_an_ingress_routeid_would_refuse_and_exits_1() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        // Every key is one routeid reads; only the values would refuse the Ingress.
        let annotations = json!({
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/session-cookie-samesite": "None",
            "nginx.ingress.kubernetes.io/session-cookie-secure": "false",
        });
        create(ingresses(&kube), ingress_json("shop", "nginx", annotations, json!({"number": 80}))).await;
        let (code, text) = ingress_check(&api, "kubeconfig-check-refused").await;
        assert_eq!(code, Some(1), "a refusal: exit 1\n{text}");
        assert!(
            text.contains(
                "REFUSED: metadata.annotations[nginx.ingress.kubernetes.io/session-cookie-samesite]: \"None\""
            ),
            "{text}"
        );
        assert!(text.contains("1 Ingress(es) routeid would refuse"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_only_the_core_validator_refuses_is_rejected_by_name_never_accepted() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        class(&kube, "routeid", "routeid.io/ingress-controller").await;
        service(&kube, "shop", "http", 80, json!("http")).await;
        let m = Member::start("shop-0").await;
        kube.put_slice(&serde_json::from_value(named_slice("shop", &m.route, "http", m.addr, Cond::Ready)).unwrap())
            .await;
        let annotations = json!({
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/session-cookie-name": "shop id",
            "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers \"X: y\";",
        });
        create(ingresses(&kube), ingress_json("shop", "routeid", annotations, json!({"number": 80}))).await;
        let r = Replica::start(&api, options("r1")).await;
        eventually(WAIT, "Rejected and UnsupportedAnnotations events", || async {
            let ev = events(&api, "shop");
            let has = |want: &str, text: &str| ev.iter().any(|(_, reason, note)| reason == want && note.contains(text));
            has("Rejected", "metadata.annotations[nginx.ingress.kubernetes.io/session-cookie-name]: \"shop id\"")
                && has("UnsupportedAnnotations", "configuration-snippet")
        })
        .await;
        // The fix is accepted: every Event up to then said why, none said Accepted.
        let patch = json!({"metadata": {"annotations": {"nginx.ingress.kubernetes.io/session-cookie-name": "SHOPID"}}});
        ingresses(&kube).patch("shop", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        eventually(WAIT, "an Accepted event", || async {
            events(&api, "shop").iter().any(|(_, reason, _)| reason == "Accepted")
        })
        .await;
        let reasons: Vec<String> = events(&api, "shop").into_iter().map(|e| e.1).collect();
        let accepted = reasons.iter().position(|r| r == "Accepted").unwrap();
        let rejected = reasons.iter().position(|r| r == "Rejected").unwrap();
        assert!(rejected < accepted, "{reasons:?}");
        assert!(!reasons.iter().any(|r| r == "InvalidSpec"), "{reasons:?}");
        eventually(WAIT, "the pool served", || async { pool_members(&r, "shop").len() == 1 }).await;
        let got = host_get(&r, &[]).await;
        assert_eq!(got.status, 200);
        assert!(cookie_of(&got, "SHOPID").is_some(), "{got:?}");
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_target_capture_pair_strips_the_prefix_at_the_member() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        class(&kube, "routeid", "routeid.io/ingress-controller").await;
        service(&kube, "shop", "http", 80, json!("http")).await;
        let m = Member::start("shop-0").await;
        kube.put_slice(&serde_json::from_value(named_slice("shop", &m.route, "http", m.addr, Cond::Ready)).unwrap())
            .await;
        let mut ing = ingress_json(
            "shop",
            "routeid",
            json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"}),
            json!({"number": 80}),
        );
        ing["spec"]["rules"][0]["http"]["paths"][0]["path"] = json!("/app(/|$)(.*)");
        ing["spec"]["rules"][0]["http"]["paths"][0]["pathType"] = json!("ImplementationSpecific");
        create(ingresses(&kube), ing).await;
        let r = Replica::start(&api, options("r1")).await;
        eventually(WAIT, "one member", || async { pool_members(&r, "shop").len() == 1 }).await;
        for (path, seen) in [("/app/cart?x=1", "/cart?x=1"), ("/app", "/"), ("/app/", "/")] {
            let got = get(r.proxy(), path, &[("host", HOST)]).await;
            assert_eq!(got.status, 200, "{path}");
            assert_eq!(m.last_seen().path_and_query, seen, "{path}");
        }
        assert_eq!(get(r.proxy(), "/apps", &[("host", HOST)]).await.status, 404, "not a segment prefix");
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_check_lists_another_class_and_its_unsupported_annotations() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let annotations = json!({
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/auth-url": "http://auth",
        });
        create(ingresses(&kube), ingress_json("legacy-shop", "nginx", annotations, json!({"number": 80}))).await;
        create(ingresses(&kube), ingress_json("mine", "routeid", json!({}), json!({"number": 80}))).await;
        let (code, text) = ingress_check(&api, "kubeconfig-check").await;
        assert_eq!(code, Some(1), "an unsupported annotation: exit 1\n{text}");
        assert!(text.contains("Ingress web/legacy-shop"), "{text}");
        assert!(text.contains("NOT SUPPORTED        nginx.ingress.kubernetes.io/auth-url"), "{text}");
        assert!(text.contains("supported            nginx.ingress.kubernetes.io/affinity"), "{text}");
        assert!(!text.contains("web/mine"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_that_claims_an_older_pools_host_and_path_gets_a_conflict_event() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        class(&kube, "routeid", "routeid.io/ingress-controller").await;
        let m = Member::start("old-0").await;
        kube.put_slice(&slice("old", "old-0", m.addr, Cond::Ready)).await;
        let mut older = pool("old", "old", json!({"frontend": {"hosts": [HOST], "pathPrefix": "/app"}}));
        older.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2020-01-01T00:00:00Z".parse().unwrap()));
        kube.create_pool(&older).await;
        create(ingresses(&kube), ingress_json("shop", "routeid", json!({}), json!({"number": 80}))).await;
        let r = Replica::start(&api, options("r1")).await;
        eventually(WAIT, "a Conflict event on the Ingress", || async {
            events(&api, "shop").iter().any(|(t, reason, note)| {
                t == "Warning" && reason == "Conflict" && note.contains("BalancerPool web/old") && note.contains("/app")
            })
        })
        .await;
        assert_eq!(host_get(&r, &[]).await.route(), "old-0", "the older object serves");
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_pool_re_list_keeps_the_ingress_pools() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let (r, _members) = shop(&api, &kube, json!({})).await;
        // The history is forgotten and every watch is cut: each watcher resumes from a
        // resourceVersion that is gone, gets 410 and re-lists.
        // (A write nobody watches first, so every watcher's resourceVersion is behind.)
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bump", "namespace": NS}});
        create(Api::<k8s_openapi::api::core::v1::Pod>::namespaced(kube.client.clone(), NS), pod).await;
        api.compact();
        api.drop_watches();
        eventually(WAIT, "410 Gone served", || async { api.gone_served() >= 1 }).await;
        // A pool created now arrives after the re-list of BalancerPools completed.
        kube.create_pool(&pool("later", "shop", json!({"frontend": {"hosts": ["later.example.com"]}}))).await;
        eventually(WAIT, "the later pool", || async { !r.members("later").is_empty() }).await;
        assert_eq!(pool_members(&r, "shop").len(), 3, "the Ingress's pool survived the re-list");
        assert_eq!(host_get(&r, &[]).await.status, 200);
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_samesite_none_is_withheld_from_incompatible_user_agents() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let annotations = json!({
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/session-cookie-samesite": "None",
            "nginx.ingress.kubernetes.io/session-cookie-conditional-samesite-none": "true",
        });
        let (r, _members) = shop(&api, &kube, annotations).await;
        let modern =
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
        let old = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/62.0 Safari/537.36";
        let set = cookie_of(&host_get(&r, &[("user-agent", modern)]).await, "INGRESSCOOKIE").unwrap();
        assert!(set.ends_with("; Path=/app; HttpOnly; SameSite=None"), "{set}");
        let set = cookie_of(&host_get(&r, &[("user-agent", old)]).await, "INGRESSCOOKIE").unwrap();
        assert!(set.ends_with("; Path=/app; HttpOnly"), "{set}");
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_service_copies_the_services_load_balancer_addresses() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        service(&kube, "routeid", "http", 80, json!(8080)).await;
        let services: Api<Service> = Api::namespaced(kube.client.clone(), NS);
        let lb = |ip: &str| json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
        services.patch_status("routeid", &PatchParams::default(), &Patch::Merge(lb("198.51.100.1"))).await.unwrap();
        class(&kube, "routeid", "routeid.io/ingress-controller").await;
        create(ingresses(&kube), ingress_json("shop", "routeid", json!({}), json!({"number": 80}))).await;
        let mut o = options("r1");
        o.publish = Publish::Service(NS.into(), "routeid".into());
        let r = Replica::start(&api, o).await;
        let ip_of = || async {
            let ing = ingresses(&kube).get("shop").await.unwrap();
            let lb = ing.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).unwrap_or_default();
            lb.first().and_then(|e| e.ip.clone())
        };
        eventually(WAIT, "the Service's address", || async { ip_of().await.as_deref() == Some("198.51.100.1") }).await;
        // The load balancer moves: the Ingress follows.
        services.patch_status("routeid", &PatchParams::default(), &Patch::Merge(lb("198.51.100.2"))).await.unwrap();
        eventually(WAIT, "the new address", || async { ip_of().await.as_deref() == Some("198.51.100.2") }).await;
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_tls_serves_the_secrets_certificate_secures_the_cookie_and_redirects_http() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let cert = crate::support::tls::TestCert::new(&[HOST]);
        kube.put_tls_secret(NS, "shop-tls", &cert.data).await;
        class(&kube, "routeid", "routeid.io/ingress-controller").await;
        service(&kube, "shop", "http", 80, json!("http")).await;
        let m = Member::start("shop-0").await;
        kube.put_slice(&serde_json::from_value(named_slice("shop", "shop-0", "http", m.addr, Cond::Ready)).unwrap())
            .await;
        let mut ing = ingress_json(
            "shop",
            "routeid",
            json!({"nginx.ingress.kubernetes.io/affinity": "cookie"}),
            json!({"number": 80}),
        );
        ing["spec"]["tls"] = json!([{"hosts": [HOST], "secretName": "shop-tls"}]);
        create(ingresses(&kube), ing).await;
        let r = Replica::start_tls(&api, options("r1")).await;
        eventually(WAIT, "the pool", || async { pool_members(&r, "shop").len() == 1 }).await;
        let tls_addr = r.running.tls_addr.expect("a TLS listener");
        eventually(WAIT, "the Secret's certificate", || async {
            let got = crate::support::tls::https_get(tls_addr, Some(HOST), &[b"http/1.1"], HOST, "/", &[]).await;
            got.is_ok_and(|g| g.cert == cert.der)
        })
        .await;
        let shown =
            crate::support::tls::https_get(tls_addr, Some(HOST), &[b"http/1.1"], HOST, "/app/cart", &[]).await.unwrap();
        assert_eq!(shown.status, 200);
        let set =
            shown.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
        assert!(set.iter().any(|c| c.starts_with("INGRESSCOOKIE=.shop-0") && c.contains("; Secure")), "{set:?}");
        // ssl-redirect defaults to true for a host with a certificate.
        let plain = host_get(&r, &[]).await;
        assert_eq!(plain.status, 308);
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_manager_drains_an_ingress_pools_member_in_memory() {
    bounded(async {
        use routeid::admin::manager::{Manager, Persistence};
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        class(&kube, "routeid", "routeid.io/ingress-controller").await;
        service(&kube, "shop", "http", 80, json!("http")).await;
        let members = [Member::start("shop-0").await, Member::start("shop-1").await];
        for m in &members {
            let s = named_slice("shop", &m.route, "http", m.addr, Cond::Ready);
            kube.put_slice(&serde_json::from_value(s).unwrap()).await;
        }
        create(ingresses(&kube), ingress_json("shop", "routeid", json!({}), json!({"number": 80}))).await;
        let manager = Manager::new(Some("tok".into()), Persistence::Kubernetes(api.client()));
        let r = Replica::start_with_manager(&api, options("r1"), manager).await;
        eventually(WAIT, "two members", || async { pool_members(&r, "shop").len() == 2 }).await;
        let patch = send(
            &client(),
            r.running.admin_addr,
            "PATCH",
            "/balancer-manager/api/pools/web/ingress:shop:0-0/members/shop-1",
            &[("authorization", "Bearer tok")],
            bytes::Bytes::from_static(br#"{"status": "Drain"}"#),
        )
        .await;
        assert_eq!(patch.status, 200, "{}", patch.body);
        assert!(patch.body.contains("memory"), "{}", patch.body);
        let drained = || pool_members(&r, "shop").iter().any(|(route, state)| route == "shop-1" && state == "Drain");
        assert!(drained());
        // A republication (a new pod) keeps the operator's change.
        let m2 = Member::start("shop-2").await;
        kube.put_slice(&serde_json::from_value(named_slice("shop", "shop-2", "http", m2.addr, Cond::Ready)).unwrap())
            .await;
        eventually(WAIT, "three members", || async { pool_members(&r, "shop").len() == 3 }).await;
        assert!(drained(), "{:?}", pool_members(&r, "shop"));
        r.stop().await;
    })
    .await;
}

fn lb_of(ing: &Ingress) -> Vec<String> {
    let lb = ing.status.clone().and_then(|s| s.load_balancer).and_then(|l| l.ingress).unwrap_or_default();
    lb.into_iter().filter_map(|e| e.ip.or(e.hostname)).collect()
}

async fn lb_of_named(kube: &Kube, name: &str) -> Vec<String> {
    lb_of(&ingresses(kube).get(name).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_only_while_served_and_cleared_when_an_ingress_stops_being_ours() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        class(&kube, "routeid", "routeid.io/ingress-controller").await;
        service(&kube, "shop", "http", 80, json!(8080)).await;
        create(ingresses(&kube), ingress_json("shop", "routeid", json!({}), json!({"number": 80}))).await;
        let legacy_class = json!({"kubernetes.io/ingress.class": "routeid"});
        let mut legacy = ingress_json("legacy", "routeid", legacy_class, json!({"number": 80}));
        legacy["spec"].as_object_mut().unwrap().remove("ingressClassName");
        legacy["spec"]["rules"][0]["host"] = json!("legacy.example.com");
        create(ingresses(&kube), legacy).await;
        // Refused on first sight: it serves nothing, so it must get no address.
        let bogus = json!({"nginx.ingress.kubernetes.io/affinity": "bogus"});
        create(ingresses(&kube), ingress_json("bad", "routeid", bogus, json!({"number": 80}))).await;
        let mut o = options("r1");
        o.publish = Publish::Addresses(vec!["203.0.113.7".into()]);
        let r = Replica::start(&api, o).await;
        let ours = vec!["203.0.113.7".to_owned()];
        eventually(WAIT, "both served Ingresses' status", || async {
            lb_of_named(&kube, "shop").await == ours && lb_of_named(&kube, "legacy").await == ours
        })
        .await;
        eventually(WAIT, "bad is refused", || async {
            events(&api, "bad").iter().any(|(_, reason, _)| reason == "Rejected")
        })
        .await;
        // The writer flushes Ingress statuses in key order: "bad" would have gone before "shop".
        assert_eq!(lb_of_named(&kube, "bad").await, Vec::<String>::new(), "a refused Ingress gets no status");

        // Class changed to another controller's: routeid empties the address it wrote.
        let patch = json!({"spec": {"ingressClassName": "nginx"}});
        ingresses(&kube).patch("shop", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        eventually(WAIT, "shop's status cleared", || async { lb_of_named(&kube, "shop").await.is_empty() }).await;
        // The legacy class annotation removed: the same.
        let patch = json!({"metadata": {"annotations": {"kubernetes.io/ingress.class": null}}});
        ingresses(&kube).patch("legacy", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        eventually(WAIT, "legacy's status cleared", || async { lb_of_named(&kube, "legacy").await.is_empty() }).await;
        assert_eq!(r.controller.stats.writer.status_errors.load(Ordering::Relaxed), 0);
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_service_outside_the_watched_namespace_is_watched_on_its_own() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let edge: Api<Service> = Api::namespaced(kube.client.clone(), "edge");
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "routeid", "namespace": "edge"},
                         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}});
        create(edge.clone(), svc).await;
        let lb = |ip: &str| json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
        edge.patch_status("routeid", &PatchParams::default(), &Patch::Merge(lb("198.51.100.1"))).await.unwrap();
        class(&kube, "routeid", "routeid.io/ingress-controller").await;
        service(&kube, "shop", "http", 80, json!(8080)).await;
        create(ingresses(&kube), ingress_json("shop", "routeid", json!({}), json!({"number": 80}))).await;
        let mut o = options("r1");
        o.namespace = Some(NS.into());
        o.publish = Publish::Service("edge".into(), "routeid".into());
        let r = Replica::start(&api, o).await;
        eventually(WAIT, "the edge Service's address", || async {
            lb_of_named(&kube, "shop").await == ["198.51.100.1"]
        })
        .await;
        edge.patch_status("routeid", &PatchParams::default(), &Patch::Merge(lb("198.51.100.2"))).await.unwrap();
        eventually(WAIT, "the new address", || async { lb_of_named(&kube, "shop").await == ["198.51.100.2"] }).await;
        // The Service goes: so does the address it gave.
        edge.delete("routeid", &Default::default()).await.unwrap();
        eventually(WAIT, "no address", || async { lb_of_named(&kube, "shop").await.is_empty() }).await;
        r.stop().await;
    })
    .await;
}
