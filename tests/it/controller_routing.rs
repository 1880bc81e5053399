//! The controller end to end: BalancerPools and EndpointSlices in a fake API server become the
//! proxy's routing table, and real requests reach real members on 127.0.0.x.

use crate::support::cluster::*;
use crate::support::fake_apiserver::FakeApiServer;
use crate::support::*;
use serde_json::json;

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

/// Two members with a pinned session each.
async fn two_member_pool(api: &FakeApiServer, kube: &Kube) -> (Replica, Vec<Member>) {
    let members = vec![Member::start("shop-0").await, Member::start("shop-1").await];
    for m in &members {
        kube.put_slice(&slice("shop", &m.route, m.addr, Cond::Ready)).await;
    }
    kube.create_pool(&pool("shop", "shop", json!({}))).await;
    let r = Replica::start(api, options("r1")).await;
    eventually(WAIT, "two members", || async { r.members("shop").len() == 2 }).await;
    (r, members)
}

fn cookie(route: &str) -> String {
    format!("ROUTEID=.{route}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_gives_new_sessions_to_the_new_pod_and_keeps_old_sessions() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let (r, _members) = two_member_pool(&api, &kube).await;
        let before = r.running.proxy.snapshot();
        let runtime_0 = before.table.pools()[0].members[0].runtime.clone();

        let new = Member::start("shop-2").await;
        kube.put_slice(&slice("shop", "shop-2", new.addr, Cond::Ready)).await;
        eventually(WAIT, "three members", || async { r.members("shop").len() == 3 }).await;
        // The rebuild kept the unchanged members' runtime state.
        let after = r.running.proxy.snapshot();
        assert!(std::sync::Arc::ptr_eq(&runtime_0, &after.table.pools()[0].members[0].runtime));

        // Old sessions stay where they are.
        for route in ["shop-0", "shop-1"] {
            for _ in 0..3 {
                let got = get(r.proxy(), "/", &[("cookie", &cookie(route))]).await;
                assert_eq!(got.route(), route);
                assert!(route_cookie(&got).is_none());
            }
        }
        // New sessions go to the new pod: the sticky traffic above went through the ByRequests
        // bookkeeping too, so the pod that served none of it has the most credit.
        for _ in 0..3 {
            let got = get(r.proxy(), "/", &[]).await;
            assert_eq!(got.route(), "shop-2");
            assert_eq!(route_cookie(&got).as_deref(), Some(".shop-2"));
        }
        // And balancing goes on over all three.
        let mut routes = std::collections::BTreeSet::new();
        for _ in 0..9 {
            routes.insert(get(r.proxy(), "/", &[]).await.route().to_owned());
        }
        assert_eq!(routes.len(), 3, "{routes:?}");
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_moves_the_removed_pods_sessions_once_with_a_new_cookie() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let (r, members) = two_member_pool(&api, &kube).await;
        kube.delete_slice("shop-shop-1").await;
        eventually(WAIT, "one member", || async { r.members("shop").len() == 1 }).await;

        // The session pinned to the removed pod moves, and is re-pinned by a new cookie...
        let moved = get(r.proxy(), "/", &[("cookie", &cookie("shop-1"))]).await;
        assert_eq!(moved.status, 200);
        assert_eq!(moved.route(), "shop-0");
        assert_eq!(route_cookie(&moved).as_deref(), Some(".shop-0"));
        // ...after which it sticks: no further move, no further cookie.
        for _ in 0..3 {
            let again = get(r.proxy(), "/", &[("cookie", &cookie("shop-0"))]).await;
            assert_eq!(again.route(), "shop-0");
            assert!(route_cookie(&again).is_none());
        }
        assert_eq!(members[1].hits(), 0, "nothing was sent to the removed pod");
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_pod_drains_and_all_terminating_pods_still_serve() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let (r, members) = two_member_pool(&api, &kube).await;
        kube.put_slice(&slice("shop", "shop-0", members[0].addr, Cond::Terminating)).await;
        eventually(WAIT, "shop-0 draining", || async {
            r.members("shop") == [("shop-0".to_owned(), "Drain".to_owned()), ("shop-1".to_owned(), "Ok".to_owned())]
        })
        .await;
        // Its sessions stay...
        let sticky = get(r.proxy(), "/", &[("cookie", &cookie("shop-0"))]).await;
        assert_eq!(sticky.route(), "shop-0");
        // ...it gets no new ones.
        let hits = members[0].hits();
        for _ in 0..6 {
            assert_eq!(get(r.proxy(), "/", &[]).await.route(), "shop-1");
        }
        assert_eq!(members[0].hits(), hits);

        // Every pod terminating (a rollout with nothing ready yet): they take all traffic.
        kube.put_slice(&slice("shop", "shop-1", members[1].addr, Cond::Terminating)).await;
        eventually(WAIT, "all members taking traffic", || async {
            r.members("shop").iter().all(|(_, state)| state == "Ok")
        })
        .await;
        let mut routes: Vec<String> = Vec::new();
        for _ in 0..4 {
            routes.push(get(r.proxy(), "/", &[]).await.route().to_owned());
        }
        assert!(routes.contains(&"shop-0".to_owned()) && routes.contains(&"shop-1".to_owned()), "{routes:?}");

        // Not serving at all: gone.
        kube.put_slice(&slice("shop", "shop-1", members[1].addr, Cond::NotReady)).await;
        eventually(WAIT, "shop-1 gone", || async { r.members("shop").len() == 1 }).await;
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_slice_changes_is_folded_into_few_publications_and_traffic_never_fails() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let (r, _members) = two_member_pool(&api, &kube).await;
        let publishes = r.controller.stats.publishes.load(std::sync::atomic::Ordering::Relaxed);
        let mut more = Vec::new();
        for i in 0..30 {
            more.push(Member::start(&format!("burst-{i:02}")).await);
        }
        // Traffic runs all along: every request sees a whole table (old or new), never a part.
        let proxy = r.proxy();
        let traffic = tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..150 {
                let got = get(proxy, &format!("/t{i}"), &[]).await;
                statuses.push(got.status.as_u16());
            }
            statuses
        });
        let slices: Vec<_> = more.iter().map(|m| slice("shop", &m.route, m.addr, Cond::Ready)).collect();
        futures_util::future::join_all(slices.iter().map(|s| kube.put_slice(s))).await;
        eventually(WAIT, "32 members", || async { r.members("shop").len() == 32 }).await;
        let statuses = traffic.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        let rebuilt = r.controller.stats.publishes.load(std::sync::atomic::Ordering::Relaxed) - publishes;
        assert!(rebuilt < 15, "30 slice changes folded into {rebuilt} publications");
        r.stop().await;
    })
    .await;
}

/// Binds one port on each of `ips` (127.0.0.x): pods have their own addresses and share the
/// container port, as in a cluster.
async fn same_port_on(ips: &[&str]) -> Vec<tokio::net::TcpListener> {
    for _ in 0..20 {
        let first = tokio::net::TcpListener::bind((ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match tokio::net::TcpListener::bind((*ip, port)).await {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == ips.len() {
            return all;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// One slice listing several pods (`(pod, address, condition)`), the port named `http`.
fn multi_slice(
    service: &str,
    name: &str,
    port: u16,
    pods: &[(&str, &str, Cond)],
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let endpoints: Vec<serde_json::Value> = pods
        .iter()
        .map(|(pod, ip, cond)| {
            json!({
                "addresses": [ip],
                "conditions": cond.conditions(),
                "targetRef": {"kind": "Pod", "name": pod, "namespace": NS},
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_their_own_addresses_behind_one_slice() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
        let listeners = same_port_on(&ips).await;
        let port = listeners[0].local_addr().unwrap().port();
        let names = ["shop-0", "shop-1", "shop-2"];
        let _members: Vec<Member> =
            listeners.into_iter().zip(names).map(|(l, name)| Member::start_on(l, name)).collect();
        let all_ready: Vec<(&str, &str, Cond)> = names.iter().zip(ips).map(|(n, ip)| (*n, ip, Cond::Ready)).collect();
        kube.put_slice(&multi_slice("shop", "shop-abcde", port, &all_ready)).await;
        kube.create_pool(&pool("shop", "shop", json!({}))).await;
        let r = Replica::start(&api, options("r1")).await;
        eventually(WAIT, "three members", || async { r.members("shop").len() == 3 }).await;

        // Each pod is reached at its own address, by the route its cookie names.
        for name in names {
            let got = get(r.proxy(), "/", &[("cookie", &format!("ROUTEID=.{name}"))]).await;
            assert_eq!(got.route(), name);
        }
        let want: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
        eventually(WAIT, "status lists each pod's address", || async {
            let status = kube.status("shop").await.unwrap_or_default();
            status.members.iter().map(|m| m.address.clone()).collect::<Vec<_>>() == want
        })
        .await;

        // shop-1 terminates: its session stays, new sessions go elsewhere.
        let mut draining = all_ready.clone();
        draining[1].2 = Cond::Terminating;
        kube.put_slice(&multi_slice("shop", "shop-abcde", port, &draining)).await;
        eventually(WAIT, "shop-1 draining", || async {
            r.members("shop").iter().any(|(n, s)| n == "shop-1" && s == "Drain")
        })
        .await;
        assert_eq!(get(r.proxy(), "/", &[("cookie", "ROUTEID=.shop-1")]).await.route(), "shop-1");
        for _ in 0..6 {
            assert_ne!(get(r.proxy(), "/", &[]).await.route(), "shop-1", "no new session on a draining pod");
        }

        // shop-1 is gone: its session moves once, with a new cookie, and sticks there.
        draining.remove(1);
        kube.put_slice(&multi_slice("shop", "shop-abcde", port, &draining)).await;
        eventually(WAIT, "two members", || async { r.members("shop").len() == 2 }).await;
        let moved = get(r.proxy(), "/", &[("cookie", "ROUTEID=.shop-1")]).await;
        assert_ne!(moved.route(), "shop-1");
        let cookie = route_cookie(&moved).expect("a new route cookie for the moved session");
        assert_eq!(cookie, format!(".{}", moved.route()));
        let again = get(r.proxy(), "/", &[("cookie", &format!("ROUTEID={cookie}"))]).await;
        assert_eq!(again.route(), moved.route());
        assert!(route_cookie(&again).is_none(), "the session stays where it moved");
        r.stop().await;
    })
    .await;
}
