//! The balancer-manager in controller mode: a change made on one replica is written to the
//! pool's `spec.members` in the (fake) Kubernetes API, and every replica applies it; clearing
//! it removes the entry.

use crate::support::cluster::*;
use crate::support::fake_apiserver::FakeApiServer;
use crate::support::*;
use bytes::Bytes;
use routeid::admin::manager::{Manager, Persistence};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_lands_in_the_spec_and_every_replica_applies_it() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let members = [Member::start("shop-0").await, Member::start("shop-1").await];
        for m in &members {
            kube.put_slice(&slice("shop", &m.route, m.addr, Cond::Ready)).await;
        }
        kube.create_pool(&pool("shop", "shop", json!({}))).await;
        let manager = Manager::new(Some("tok".into()), Persistence::Kubernetes(api.client()));
        let r1 = Replica::start_with_manager(&api, options("r1"), manager).await;
        let r2 = Replica::start(&api, options("r2")).await;
        for r in [&r1, &r2] {
            eventually(WAIT, "two members", || async { r.members("shop").len() == 2 }).await;
        }

        let patch = send(
            &client(),
            r1.running.admin_addr,
            "PATCH",
            "/balancer-manager/api/pools/web/shop/members/shop-1",
            &[("authorization", "Bearer tok")],
            Bytes::from_static(br#"{"status": "Drain", "loadFactor": 4}"#),
        )
        .await;
        assert_eq!(patch.status, 200, "{}", patch.body);
        assert!(patch.body.contains("spec.members"), "{}", patch.body);

        let stored = kube.pools().get("shop").await.unwrap();
        let o = stored.spec.members.iter().find(|o| o.route == "shop-1").expect("an override for shop-1");
        assert_eq!((o.status, o.load_factor), (Some(routeid::api::MemberStatus::Drain), Some(4)));

        for r in [&r1, &r2] {
            eventually(WAIT, "the replica applies the override", || async {
                r.members("shop").iter().any(|(route, state)| route == "shop-1" && state == "Drain")
            })
            .await;
        }
        for _ in 0..6 {
            assert_eq!(get(r2.proxy(), "/", &[]).await.route(), "shop-0", "a drained member gets no new sessions");
        }
        assert_eq!(get(r2.proxy(), "/", &[("cookie", "ROUTEID=.shop-1")]).await.route(), "shop-1");

        // Clearing the override removes the member's entry from spec.members; every replica
        // goes back to the member's own state.
        let clear = send(
            &client(),
            r1.running.admin_addr,
            "DELETE",
            "/balancer-manager/api/pools/web/shop/members/shop-1/override",
            &[("authorization", "Bearer tok")],
            Bytes::new(),
        )
        .await;
        assert_eq!(clear.status, 200, "{}", clear.body);
        let stored = kube.pools().get("shop").await.unwrap();
        assert!(stored.spec.members.iter().all(|o| o.route != "shop-1"), "{:?}", stored.spec.members);
        for r in [&r1, &r2] {
            eventually(WAIT, "the replica drops the override", || async {
                r.members("shop").iter().any(|(route, state)| route == "shop-1" && state == "Ok")
            })
            .await;
        }
        r1.stop().await;
        r2.stop().await;
    })
    .await;
}
