//! Status, conditions and Events: what `kubectl get/describe balancerpool` shows.

use crate::support::cluster::*;
use crate::support::fake_apiserver::FakeApiServer;
use crate::support::*;
use serde_json::{Value, json};

fn events(api: &FakeApiServer, pool: &str) -> Vec<(String, String, String)> {
    api.objects("events.k8s.io", "events")
        .iter()
        .filter(|e| e.pointer("/regarding/name").and_then(Value::as_str) == Some(pool))
        .map(|e| {
            let s = |p: &str| e.pointer(p).and_then(Value::as_str).unwrap_or("").to_owned();
            (s("/type"), s("/reason"), s("/note"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_members_conditions_and_events() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let a = Member::start("shop-0").await;
        let mut b = Member::start("shop-1").await;
        kube.put_slice(&slice("shop", "shop-0", a.addr, Cond::Ready)).await;
        kube.put_slice(&slice("shop", "shop-1", b.addr, Cond::Terminating)).await;
        kube.create_pool(&pool("shop", "shop", json!({"health": {"passive": {"retryAfter": "30s"}}}))).await;
        let r = Replica::start(&api, options("r1")).await;

        eventually(WAIT, "a status with two members", || async {
            kube.status("shop").await.is_some_and(|s| s.member_count == Some(2))
        })
        .await;
        let st = kube.status("shop").await.unwrap();
        assert_eq!(st.observed_generation, Some(1));
        assert_eq!(st.ready_members, Some(1));
        let members: Vec<_> = st.members.iter().map(|m| (m.route.as_str(), m.ready, m.state.as_str())).collect();
        assert_eq!(members, [("shop-0", true, "Ok"), ("shop-1", false, "Drain")]);
        assert_eq!(st.members[0].address, a.addr.to_string());
        let conds: Vec<_> = st.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(conds, [("Accepted", "True"), ("Ready", "True"), ("Degraded", "False"), ("Conflict", "False")]);
        assert!(st.conditions.iter().all(|c| c.last_transition_time.is_some()));

        // Scale out: an event names the new member, status counts it.
        let c = Member::start("shop-2").await;
        kube.put_slice(&slice("shop", "shop-2", c.addr, Cond::Ready)).await;
        eventually(WAIT, "a MemberAdded event", || async {
            events(&api, "shop")
                .iter()
                .any(|(t, reason, note)| t == "Normal" && reason == "MemberAdded" && note.contains("shop-2"))
        })
        .await;
        eventually(WAIT, "three members in status", || async {
            kube.status("shop").await.is_some_and(|s| s.member_count == Some(3) && s.ready_members == Some(2))
        })
        .await;

        // Scale in: the terminating pod goes away.
        kube.delete_slice("shop-shop-1").await;
        eventually(WAIT, "a MemberRemoved event", || async {
            events(&api, "shop").iter().any(|(_, reason, note)| reason == "MemberRemoved" && note.contains("shop-1"))
        })
        .await;

        // A member that refuses connections is in error: Degraded.
        b.die().await;
        kube.put_slice(&slice("shop", "shop-1", b.addr, Cond::Ready)).await;
        eventually(WAIT, "shop-1 back in the table", || async { r.members("shop").len() == 3 }).await;
        for _ in 0..6 {
            let got = get(r.proxy(), "/", &[("cookie", "ROUTEID=.shop-1")]).await;
            assert_eq!(got.status, 200, "failed over");
        }
        eventually(WAIT, "Degraded=True", || async {
            kube.condition("shop", "Degraded").await.is_some_and(|(s, reason, msg)| {
                s == "True" && reason == "MembersUnhealthy" && msg.contains("shop-1 (Error)")
            })
        })
        .await;
        let st = kube.status("shop").await.unwrap();
        let shop1 = st.members.iter().find(|m| m.route == "shop-1").unwrap();
        assert_eq!((shop1.ready, shop1.state.as_str()), (false, "Error"));
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pool_is_not_accepted_and_the_old_table_keeps_serving() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let a = Member::start("shop-0").await;
        kube.put_slice(&slice("shop", "shop-0", a.addr, Cond::Ready)).await;
        kube.create_pool(&pool("shop", "shop", json!({"frontend": {"pathPrefix": "/shop"}}))).await;
        let r = Replica::start(&api, options("r1")).await;
        eventually(WAIT, "Accepted=True", || async {
            kube.condition("shop", "Accepted").await.is_some_and(|(s, _, _)| s == "True")
        })
        .await;

        // An edit the CRD schema cannot catch (the fake server, like a cluster without CEL,
        // stores it): two problems at once.
        kube.patch_pool("shop", json!({"spec": {"frontend": {"pathPrefix": "shop"}, "timeouts": {"connect": "soon"}}}))
            .await;
        eventually(WAIT, "Accepted=False", || async {
            kube.condition("shop", "Accepted").await.is_some_and(|(s, _, _)| s == "False")
        })
        .await;
        let (_, reason, message) = kube.condition("shop", "Accepted").await.unwrap();
        assert_eq!(reason, "InvalidSpec");
        assert!(message.contains("spec.frontend.pathPrefix"), "{message}");
        assert!(message.contains("spec.timeouts.connect") && message.contains("soon"), "{message}");
        assert!(message.contains("the last valid spec keeps serving"), "{message}");
        let st = kube.status("shop").await.unwrap();
        assert_eq!(st.observed_generation, Some(2));
        // The last valid table serves on.
        let got = get(r.proxy(), "/shop/x", &[]).await;
        assert_eq!((got.status.as_u16(), got.route()), (200, "shop-0"));
        eventually(WAIT, "an InvalidSpec warning event", || async {
            events(&api, "shop")
                .iter()
                .any(|(t, reason, note)| t == "Warning" && reason == "InvalidSpec" && note.contains("soon"))
        })
        .await;

        // Fixed: accepted again, the new prefix serves.
        kube.patch_pool("shop", json!({"spec": {"frontend": {"pathPrefix": "/app"}, "timeouts": {"connect": "1s"}}}))
            .await;
        eventually(WAIT, "Accepted=True again", || async {
            kube.condition("shop", "Accepted").await.is_some_and(|(s, _, _)| s == "True")
        })
        .await;
        assert_eq!(get(r.proxy(), "/app/x", &[]).await.route(), "shop-0");
        assert_eq!(get(r.proxy(), "/shop/x", &[]).await.status, 404);
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newer_of_two_pools_on_one_host_and_prefix_gets_conflict() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let old_member = Member::start("old-0").await;
        let new_member = Member::start("new-0").await;
        kube.put_slice(&slice("old", "old-0", old_member.addr, Cond::Ready)).await;
        kube.put_slice(&slice("new", "new-0", new_member.addr, Cond::Ready)).await;
        let front = json!({"frontend": {"hosts": ["shop.example.com"], "pathPrefix": "/"}});
        // "new" is created first but is younger by creationTimestamp: age decides, not order.
        let mut newer = pool("a-new", "new", front.clone());
        newer.metadata.creation_timestamp = Some(serde_json::from_value(json!("2025-02-01T00:00:00Z")).unwrap());
        kube.create_pool(&newer).await;
        let mut older = pool("z-old", "old", front);
        older.metadata.creation_timestamp = Some(serde_json::from_value(json!("2025-01-01T00:00:00Z")).unwrap());
        kube.create_pool(&older).await;
        let r = Replica::start(&api, options("r1")).await;

        eventually(WAIT, "Conflict=True on the newer pool", || async {
            kube.condition("a-new", "Conflict").await.is_some_and(|(s, _, _)| s == "True")
        })
        .await;
        let (_, reason, message) = kube.condition("a-new", "Conflict").await.unwrap();
        assert_eq!(reason, "HostPrefixClaimed");
        assert!(message.contains("web/z-old"), "{message}");
        assert_eq!(kube.condition("a-new", "Ready").await.unwrap().1, "Conflict");
        eventually(WAIT, "Conflict=False on the older pool", || async {
            kube.condition("z-old", "Conflict").await.is_some_and(|(s, _, _)| s == "False")
        })
        .await;
        let got = get(r.proxy(), "/", &[("host", "shop.example.com")]).await;
        assert_eq!(got.route(), "old-0", "the older pool serves");

        // The older pool goes away: the newer one takes over, its conflict clears.
        kube.pools().delete("z-old", &Default::default()).await.unwrap();
        eventually(WAIT, "the newer pool serving", || async {
            get(r.proxy(), "/", &[("host", "shop.example.com")]).await.route() == "new-0"
        })
        .await;
        eventually(WAIT, "Conflict=False on the newer pool", || async {
            kube.condition("a-new", "Conflict").await.is_some_and(|(s, _, _)| s == "False")
        })
        .await;

        // Nothing changes any more: statuses are recomputed every 300 ms here, written never.
        let writes = || r.controller.stats.writer.status_writes.load(std::sync::atomic::Ordering::Relaxed);
        let settled = {
            let mut last = writes();
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(400)).await;
                let now = writes();
                if now == last {
                    break now;
                }
                last = now;
            }
        };
        tokio::time::sleep(std::time::Duration::from_millis(1_000)).await; // three resyncs
        assert_eq!(writes(), settled, "an unchanged status is not written again");
        r.stop().await;
    })
    .await;
}

/// A pool that leaves the index other than by deletion (here: moved to another ingress class)
/// has its waiting status write dropped: routeid must not write the status of a pool another
/// installation now owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_moved_to_another_class_gets_no_more_status_writes() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let a = Member::start("shop-0").await;
        kube.put_slice(&slice("shop", "shop-0", a.addr, Cond::Ready)).await;
        kube.create_pool(&pool("shop", "shop", json!({}))).await;
        let mut opts = options("r1");
        // Long enough that the change and the class move below land inside it on a loaded
        // machine (they take well under a second); the test says so if they did not.
        let interval = std::time::Duration::from_millis(6_000);
        opts.writer.min_interval = interval;
        // A lease that cannot lapse within the test: a new term rightly writes every status
        // again at once (what the last leader wrote may be stale), and the quick test lease
        // (3 s) could lapse on a loaded machine and make that write inside the window.
        opts.leader.duration_secs = 60;
        opts.leader.grace_secs = 20;
        // The first write happens after this instant, so a second one is never due before
        // `first_written + interval` (the test may see the first write late on a loaded machine).
        let first_written = tokio::time::Instant::now();
        let r = Replica::start(&api, opts).await;
        eventually(WAIT, "the first status", || async {
            kube.status("shop").await.is_some_and(|s| s.member_count == Some(1))
        })
        .await;
        let shop_writes =
            || api.writes().iter().filter(|w| w.name == "shop" && w.subresource.as_deref() == Some("status")).count();
        let written = shop_writes();
        // A change whose status must wait out the per-pool interval...
        let b = Member::start("shop-1").await;
        kube.put_slice(&slice("shop", "shop-1", b.addr, Cond::Ready)).await;
        eventually(WAIT, "the change served", || async { r.members("shop").len() == 2 }).await;
        // ...then the pool moves to another class before that interval is over.
        kube.patch_pool("shop", json!({"spec": {"ingressClassName": "nginx"}})).await;
        eventually(WAIT, "the pool dropped", || async { r.members("shop").is_empty() }).await;
        assert!(first_written.elapsed() < interval, "the pool was dropped only after the status interval");
        // Absence can only be waited out: past the interval, nothing more was written for it.
        tokio::time::sleep_until(first_written + interval + std::time::Duration::from_millis(500)).await;
        let all: Vec<_> = api.writes().into_iter().filter(|w| w.name == "shop").collect();
        assert_eq!(shop_writes(), written, "no status write for a pool of another class: {all:?}");
        assert_eq!(kube.status("shop").await.unwrap().member_count, Some(1));
        r.stop().await;
    })
    .await;
}
