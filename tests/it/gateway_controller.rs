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
        members(&kube, &[("shop-0", &m)]).await;
        route(&kube, "shop", json!([{"backendRefs": [{"name": "shop", "port": 80}]}])).await;
        let r = Replica::start(&api, options("a")).await;
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
        let gw = Api::<Gateway>::namespaced(kube.client.clone(), NS).get("gw").await.unwrap();
        assert_eq!(gw.status.unwrap().listeners.iter().find(|l| l.name == "http").unwrap().attached_routes, 1);
        let class = Api::<GatewayClass>::all(kube.client.clone()).get("routeid").await.unwrap();
        assert_eq!(class.status.unwrap().conditions[0].reason, "Accepted");
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
