//! Several replicas: every one serves traffic, only the Lease holder writes status and Events,
//! and when it goes away another takes over.

use std::sync::atomic::Ordering;

use crate::support::cluster::*;
use crate::support::fake_apiserver::FakeApiServer;
use crate::support::*;
use serde_json::{Value, json};

fn writes(r: &Replica) -> u64 {
    r.controller.stats.writer.status_writes.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_but_only_the_leader_writes_status() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let a = Member::start("shop-0").await;
        kube.put_slice(&slice("shop", "shop-0", a.addr, Cond::Ready)).await;
        kube.create_pool(&pool("shop", "shop", json!({}))).await;
        let r1 = Replica::start(&api, options("replica-1")).await;
        let r2 = Replica::start(&api, options("replica-2")).await;

        eventually(WAIT, "one leader", || async { r1.controller.is_leader() || r2.controller.is_leader() }).await;
        eventually(WAIT, "a status", || async { kube.status("shop").await.is_some_and(|s| s.member_count == Some(1)) })
            .await;
        // Both replicas serve traffic.
        for r in [&r1, &r2] {
            eventually(WAIT, "the pool served by each replica", || async { r.members("shop").len() == 1 }).await;
            assert_eq!(get(r.proxy(), "/", &[]).await.route(), "shop-0");
        }
        // A change: both replicas see it, one writes.
        let b = Member::start("shop-1").await;
        kube.put_slice(&slice("shop", "shop-1", b.addr, Cond::Ready)).await;
        eventually(WAIT, "the change in status", || async {
            kube.status("shop").await.is_some_and(|s| s.member_count == Some(2))
        })
        .await;
        eventually(WAIT, "both replicas routing to the new member", || async {
            r1.members("shop").len() == 2 && r2.members("shop").len() == 2
        })
        .await;
        let (leader, follower) = if r1.controller.is_leader() { (r1, r2) } else { (r2, r1) };
        assert!(!follower.controller.is_leader(), "exactly one leader");
        // Every status write the API server took came from the leader (its counter catches up
        // once the responses arrive); the follower wrote none.
        let status_writes = || api.writes().into_iter().filter(|w| w.subresource.as_deref() == Some("status")).count();
        eventually(WAIT, "the leader's count of its writes", || async {
            writes(&leader) >= 2 && writes(&leader) as usize == status_writes()
        })
        .await;
        assert_eq!(writes(&follower), 0, "the follower never writes status");
        let lease = api.object("coordination.k8s.io", "v1", "leases", NS, "routeid-status").expect("a Lease");
        let holder = lease.pointer("/spec/holderIdentity").and_then(Value::as_str).unwrap().to_owned();
        let instances: Vec<String> = api
            .objects("events.k8s.io", "events")
            .iter()
            .filter_map(|e| e.pointer("/reportingInstance").and_then(Value::as_str).map(str::to_owned))
            .collect();
        assert!(!instances.is_empty(), "events were published");
        assert!(
            instances.iter().all(|i| *i == holder),
            "only the Lease holder {holder} publishes events: {instances:?}"
        );

        // The leader goes away (releasing the Lease): the follower takes over and writes.
        leader.stop().await;
        eventually(WAIT, "the follower leading", || async { follower.controller.is_leader() }).await;
        let c = Member::start("shop-2").await;
        kube.put_slice(&slice("shop", "shop-2", c.addr, Cond::Ready)).await;
        eventually(WAIT, "status written by the new leader", || async {
            kube.status("shop").await.is_some_and(|s| s.member_count == Some(3))
        })
        .await;
        // (The write lands before its response reaches the writer, which counts it then.)
        eventually(WAIT, "the new leader counting its write", || async { writes(&follower) >= 1 }).await;
        follower.stop().await;
    })
    .await;
}

/// A leader that shuts down gracefully releases the Lease; the standby sees that on its watch of
/// the Lease and takes over at once, not when the (here 30 s) lease would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_over_at_once_not_at_expiry() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let long = |id: &str| {
            let mut o = options(id);
            o.leader.duration_secs = 30;
            o.leader.grace_secs = 5;
            o
        };
        let r1 = Replica::start(&api, long("replica-1")).await;
        eventually(WAIT, "replica-1 leading", || async { r1.controller.is_leader() }).await;
        let r2 = Replica::start(&api, long("replica-2")).await;
        eventually(WAIT, "replica-2 synced", || async { r2.controller.stats.synced.load(Ordering::Acquire) }).await;
        assert!(!r2.controller.is_leader());

        r1.stop().await;
        let released = tokio::time::Instant::now();
        eventually(std::time::Duration::from_secs(5), "replica-2 leading within 5 s of the release", || async {
            r2.controller.is_leader()
        })
        .await;
        eprintln!("took over {:?} after the release", released.elapsed());
        let lease = api.object("coordination.k8s.io", "v1", "leases", NS, "routeid-status").expect("a Lease");
        assert_eq!(lease.pointer("/spec/holderIdentity").and_then(Value::as_str), Some("replica-2"));
        r2.stop().await;
    })
    .await;
}
