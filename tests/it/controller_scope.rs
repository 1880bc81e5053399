//! Which pools a replica serves: its namespace (`--namespace`) and its ingress class.

use crate::support::cluster::*;
use crate::support::fake_apiserver::FakeApiServer;
use crate::support::*;
use kube::api::PostParams;
use routeid::api::BalancerPool;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_ingress_class_decide_what_is_served() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let a = Member::start("a-0").await;
        kube.put_slice(&slice("a", "a-0", a.addr, Cond::Ready)).await;
        let host = |h: &str| json!({"frontend": {"hosts": [h]}});
        let mut ours = pool("ours", "a", host("ours.example.com"));
        ours.spec.ingress_class_name = Some("routeid".into());
        kube.create_pool(&ours).await;
        kube.create_pool(&pool("classless", "a", host("classless.example.com"))).await;
        let mut theirs = pool("theirs", "a", host("theirs.example.com"));
        theirs.spec.ingress_class_name = Some("nginx".into());
        kube.create_pool(&theirs).await;
        // The same pool in another namespace, with its own slice.
        let other: kube::Api<BalancerPool> = kube::Api::namespaced(kube.client.clone(), "elsewhere");
        let mut far = pool("far", "a", host("far.example.com"));
        far.metadata.namespace = Some("elsewhere".into());
        other.create(&PostParams::default(), &far).await.unwrap();

        let mut opts = options("r1");
        opts.namespace = Some(NS.into());
        opts.filter.default_class = false;
        let r = Replica::start(&api, opts).await;
        eventually(WAIT, "our pool", || async { !r.members("ours").is_empty() }).await;
        let snap = r.running.proxy.snapshot();
        let served: Vec<String> = snap.table.pools().iter().map(|p| p.config.id.to_string()).collect();
        assert_eq!(
            served,
            ["web/ours"],
            "not the classless one (default class off), not nginx's, not another namespace's"
        );
        assert_eq!(get(r.proxy(), "/", &[("host", "ours.example.com")]).await.route(), "a-0");
        assert_eq!(get(r.proxy(), "/", &[("host", "theirs.example.com")]).await.status, 404);
        // Nothing was written for pools that are not ours.
        let st = kube.pools().get("theirs").await.unwrap().status;
        assert!(st.is_none(), "{st:?}");
        r.stop().await;

        // The default class serves pools without a class.
        let r = Replica::start(&api, options("r2")).await;
        eventually(WAIT, "the classless pool", || async { !r.members("classless").is_empty() }).await;
        assert_eq!(get(r.proxy(), "/", &[("host", "classless.example.com")]).await.route(), "a-0");
        r.stop().await;
    })
    .await;
}
