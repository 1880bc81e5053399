//! The fake API server itself, through a real `kube::Client`: the behaviours the controller tests
//! rely on, so a failure there points at the fake rather than at the controller.

use crate::support::bounded;
use crate::support::fake_apiserver::FakeApiServer;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt};
use routeid::api::BalancerPool;
use serde_json::json;

fn slice(name: &str, service: &str) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": [],
    }))
    .unwrap()
}

fn pool(name: &str) -> BalancerPool {
    serde_json::from_value(json!({
        "apiVersion": "routeid.io/v1alpha1", "kind": "BalancerPool",
        "metadata": {"name": name},
        "spec": {"backend": {"service": {"name": "s", "port": 80}}},
    }))
    .unwrap()
}

#[tokio::test]
async fn list_with_label_selectors_namespaced_and_cluster_wide() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let pp = PostParams::default();
        let web: Api<EndpointSlice> = Api::namespaced(api.client(), "web");
        let other: Api<EndpointSlice> = Api::namespaced(api.client(), "other");
        web.create(&pp, &slice("a", "shop")).await.unwrap();
        web.create(&pp, &slice("b", "cart")).await.unwrap();
        other.create(&pp, &slice("c", "shop")).await.unwrap();
        let mut unlabelled = slice("d", "x");
        unlabelled.metadata.labels = None;
        web.create(&pp, &unlabelled).await.unwrap();
        let names = |l: kube::api::ObjectList<EndpointSlice>| l.items.iter().map(|s| s.name_any()).collect::<Vec<_>>();
        let all: Api<EndpointSlice> = Api::all(api.client());
        // Sorted by namespace, then name.
        assert_eq!(names(all.list(&ListParams::default()).await.unwrap()), ["c", "a", "b", "d"]);
        let labelled = ListParams::default().labels("kubernetes.io/service-name");
        assert_eq!(names(all.list(&labelled).await.unwrap()), ["c", "a", "b"]);
        let shop = ListParams::default().labels("kubernetes.io/service-name=shop");
        assert_eq!(names(web.list(&shop).await.unwrap()), ["a"]);
        let not_shop = ListParams::default().labels("kubernetes.io/service-name!=shop");
        assert_eq!(names(web.list(&not_shop).await.unwrap()), ["b", "d"]);
        assert_eq!(names(web.list(&ListParams::default().fields("metadata.name=a")).await.unwrap()), ["a"]);
        let err = web.list(&ListParams::default().fields("metadata.namespace=web")).await.unwrap_err();
        assert!(err.to_string().contains("fieldSelector"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn watch_from_a_version_bookmarks_and_410_after_compaction() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let web: Api<EndpointSlice> = Api::namespaced(api.client(), "web");
        let created = web.create(&PostParams::default(), &slice("a", "shop")).await.unwrap();
        let rv = created.resource_version().unwrap();
        web.create(&PostParams::default(), &slice("b", "shop")).await.unwrap();
        web.delete("a", &Default::default()).await.unwrap();
        let wp = WatchParams { bookmarks: true, ..WatchParams::default() };
        let mut events = web.watch(&wp, &rv).await.unwrap().boxed();
        let mut seen = Vec::new();
        while let Some(ev) = events.try_next().await.unwrap() {
            match ev {
                WatchEvent::Added(s) => seen.push(format!("ADDED {}", s.name_any())),
                WatchEvent::Deleted(s) => seen.push(format!("DELETED {}", s.name_any())),
                WatchEvent::Bookmark(_) => {
                    seen.push("BOOKMARK".into());
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["ADDED b", "DELETED a", "BOOKMARK"]);

        api.compact();
        let mut events = web.watch(&wp, &rv).await.unwrap().boxed();
        match events.next().await {
            Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
            other => panic!("expected 410 Gone, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn status_subresource_generation_and_conflicts() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let pools: Api<BalancerPool> = Api::namespaced(api.client(), "web");
        let p = pools.create(&PostParams::default(), &pool("shop")).await.unwrap();
        assert_eq!(p.metadata.generation, Some(1));
        assert!(p.metadata.uid.is_some() && p.metadata.creation_timestamp.is_some());
        // Status through /status: generation stays.
        let st = json!({"status": {"memberCount": 2}});
        let p = pools.patch_status("shop", &PatchParams::default(), &Patch::Merge(&st)).await.unwrap();
        assert_eq!((p.metadata.generation, p.status.unwrap().member_count), (Some(1), Some(2)));
        // Status through the main endpoint: ignored. A spec change: generation moves.
        let edit =
            json!({"spec": {"lbMethod": "ByRequests", "frontend": {"pathPrefix": "/x"}}, "status": {"memberCount": 9}});
        let p = pools.patch("shop", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
        assert_eq!((p.metadata.generation, p.status.as_ref().unwrap().member_count), (Some(2), Some(2)));
        // A replace with a stale resourceVersion conflicts.
        let mut stale = p.clone();
        stale.metadata.resource_version = Some("1".into());
        let err = pools.replace("shop", &PostParams::default(), &stale).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref e) if e.code == 409), "{err}");
        // Creating it again: AlreadyExists.
        let err = pools.create(&PostParams::default(), &pool("shop")).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref e) if e.code == 409 && e.reason == "AlreadyExists"), "{err}");
        let err = pools.get("nope").await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref e) if e.code == 404), "{err}");
    })
    .await;
}

#[tokio::test]
async fn apply_owns_fields_leases_and_core_events() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let leases: Api<Lease> = Api::namespaced(api.client(), "web");
        let claim = |who: &str| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": who}})
        };
        leases.patch("l", &PatchParams::apply("a"), &Patch::Apply(claim("a"))).await.unwrap();
        // Another manager changing a field "a" owns: 409 unless forced.
        let err = leases.patch("l", &PatchParams::apply("b"), &Patch::Apply(claim("b"))).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref e) if e.code == 409), "{err}");
        // The same value is no conflict; force takes the field over.
        leases.patch("l", &PatchParams::apply("b"), &Patch::Apply(claim("a"))).await.unwrap();
        let l = leases.patch("l", &PatchParams::apply("b").force(), &Patch::Apply(claim("b"))).await.unwrap();
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("b"));
        // A merge patch that clears it releases ownership: "a" may claim again.
        let clear = json!({"spec": {"holderIdentity": null}});
        leases.patch("l", &PatchParams::default(), &Patch::Strategic(clear)).await.unwrap();
        leases.patch("l", &PatchParams::apply("a"), &Patch::Apply(claim("a"))).await.unwrap();

        let events: Api<CoreEvent> = Api::namespaced(api.client(), "web");
        let ev: CoreEvent = serde_json::from_value(json!({
            "metadata": {"generateName": "shop."}, "reason": "Test",
            "involvedObject": {"kind": "BalancerPool", "name": "shop"},
        }))
        .unwrap();
        let created = events.create(&PostParams::default(), &ev).await.unwrap();
        assert!(created.name_any().starts_with("shop."));
        assert_eq!(api.objects("", "events").len(), 1);
        let writes = api.writes();
        assert!(writes.iter().any(|w| w.verb == "apply" && w.field_manager.as_deref() == Some("a")));
    })
    .await;
}
