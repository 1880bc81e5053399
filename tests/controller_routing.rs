//! The controller end to end: BalancerPools and EndpointSlices in a fake API server become the
//! proxy's routing table, and real requests reach real members on 127.0.0.1.

#[path = "support/controller.rs"]
mod cluster;
mod support;

use cluster::*;
use serde_json::json;
use support::fake_apiserver::FakeApiServer;
use support::*;

fn route_cookie(got: &Got) -> Option<String> {
    got.set_cookies()
        .iter()
        .find_map(|c| c.strip_prefix("ROUTEID=").map(|v| v.split(';').next().unwrap_or("").to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_slices_give_sticky_traffic_and_readyz_waits_for_the_first_sync() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let members = [Member::start("shop-0").await, Member::start("shop-1").await, Member::start("shop-2").await];
        for m in &members {
            kube.put_slice(&slice("shop", &m.route, m.addr, Cond::Ready)).await;
        }
        kube.create_pool(&pool("shop", "shop", json!({}))).await;

        // The API server is down when the replica starts: it must not claim readiness.
        api.set_unavailable(true);
        let r = Replica::start(&api, options("r1")).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await; // let it try and fail
        let ready = get(r.running.admin_addr, "/readyz", &[]).await;
        assert_eq!(ready.status, 503, "not ready before the first sync");
        assert_eq!(get(r.proxy(), "/", &[]).await.status, 404, "no table yet");

        api.set_unavailable(false);
        eventually(WAIT, "three members", || async { r.members("shop").len() == 3 }).await;
        assert_eq!(get(r.running.admin_addr, "/readyz", &[]).await.status, 200);
        assert_eq!(
            r.members("shop"),
            [("shop-0".into(), "Ok".into()), ("shop-1".into(), "Ok".into()), ("shop-2".into(), "Ok".into())]
        );

        // A new session is balanced and pinned with the route cookie...
        let first = get(r.proxy(), "/cart", &[]).await;
        assert_eq!(first.status, 200);
        let cookie = route_cookie(&first).expect("a route cookie on a new session");
        assert_eq!(cookie, format!(".{}", first.route()));
        // ...and every follow-up reaches the pod the cookie names.
        for _ in 0..5 {
            let again = get(r.proxy(), "/cart", &[("cookie", &format!("ROUTEID={cookie}"))]).await;
            assert_eq!(again.route(), first.route());
            assert!(route_cookie(&again).is_none(), "no new cookie on a sticky hit");
        }
        // The cookie names a pod: any pod named is reached.
        for m in &members {
            let got = get(r.proxy(), "/", &[("cookie", &format!("ROUTEID=.{}", m.route))]).await;
            assert_eq!(got.route(), m.route);
        }
        // The session id route (Tomcat jvmRoute = pod name) works too.
        let got = get(r.proxy(), "/", &[("cookie", "JSESSIONID=abc.shop-2")]).await;
        assert_eq!(got.route(), "shop-2");
        r.stop().await;
    })
    .await;
}
