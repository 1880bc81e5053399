//! A lost API server: the last table keeps serving, `/readyz` stays ready, the watchers reconnect
//! with backoff (resuming, or re-listing after 410 Gone) and later changes still arrive.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::cluster::*;
use crate::support::fake_apiserver::FakeApiServer;
use crate::support::*;
use serde_json::json;

async fn serving_pool(api: &FakeApiServer, kube: &Kube) -> (Replica, Member) {
    let a = Member::start("shop-0").await;
    kube.put_slice(&slice("shop", "shop-0", a.addr, Cond::Ready)).await;
    kube.create_pool(&pool("shop", "shop", json!({}))).await;
    let r = Replica::start(api, options("r1")).await;
    eventually(WAIT, "the pool served", || async { !r.members("shop").is_empty() }).await;
    (r, a)
}

fn watch_errors(r: &Replica) -> u64 {
    r.controller.stats.watch_errors.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_dropped_mid_stream_resume_and_later_changes_arrive() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let (r, _a) = serving_pool(&api, &kube).await;
        let publishes = r.controller.stats.publishes.load(Ordering::Relaxed);

        api.drop_watches();
        // kube's client ends a cut-off watch quietly and the watcher resumes from its last
        // resourceVersion. A change made around the drop...
        let b = Member::start("shop-1").await;
        kube.put_slice(&slice("shop", "shop-1", b.addr, Cond::Ready)).await;
        // ...arrives once it has resumed.
        eventually(WAIT, "the change made during the drop", || async { r.members("shop").len() == 2 }).await;
        assert_eq!(get(r.proxy(), "/", &[("cookie", "ROUTEID=.shop-1")]).await.route(), "shop-1");

        // Dropped again: a change made after the reconnection arrives as well.
        api.drop_watches();
        eventually(WAIT, "the watches reconnected", || async { api.open_watches() >= 2 }).await;
        let c = Member::start("shop-2").await;
        kube.put_slice(&slice("shop", "shop-2", c.addr, Cond::Ready)).await;
        eventually(WAIT, "the change after the reconnection", || async { r.members("shop").len() == 3 }).await;
        assert!(r.controller.stats.publishes.load(Ordering::Relaxed) > publishes);
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_keeps_the_table_serving_and_readyz_ready() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let (r, a) = serving_pool(&api, &kube).await;

        api.set_unavailable(true);
        eventually(WAIT, "the controller noticing the outage", || async { watch_errors(&r) >= 2 }).await;
        for _ in 0..5 {
            assert_eq!(get(r.proxy(), "/", &[]).await.route(), "shop-0", "the last table serves on");
            assert_eq!(get(r.running.admin_addr, "/readyz", &[]).await.status, 200, "still ready");
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // more failed reconnects
        assert_eq!(r.members("shop").len(), 1);
        assert!(a.hits() >= 5);
        // The outage is visible in the metrics.
        let metrics = get(r.running.admin_addr, "/metrics", &[]).await.body;
        let value = |series: &str| -> f64 {
            metrics
                .lines()
                .find(|l| l.starts_with(series))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {series} in metrics"))
        };
        assert!(value("routeid_controller_watch_restarts_total{resource=\"balancerpools\"}") >= 1.0);
        assert!(value("routeid_controller_reconciles_total{result=\"ok\"}") >= 1.0);
        assert!(value("routeid_controller_last_sync_timestamp_seconds") > 1.7e9);
        assert!(value("routeid_table_publications_total") >= 1.0);

        api.set_unavailable(false);
        let b = Member::start("shop-1").await;
        kube.put_slice(&slice("shop", "shop-1", b.addr, Cond::Ready)).await;
        eventually(WAIT, "changes after the outage", || async { r.members("shop").len() == 2 }).await;
        r.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_old_resource_version_means_a_full_relist_that_sees_deletions() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let b = Member::start("shop-1").await;
        kube.put_slice(&slice("shop", "shop-1", b.addr, Cond::Ready)).await;
        let (r, _a) = serving_pool(&api, &kube).await;
        eventually(WAIT, "two members", || async { r.members("shop").len() == 2 }).await;

        // While the API server is away, a slice is deleted and the history is compacted: the
        // watcher's resourceVersion is too old when it comes back (410 Gone).
        api.set_unavailable(true);
        assert!(api.remove("discovery.k8s.io", "v1", "endpointslices", NS, "shop-shop-1"));
        api.compact();
        // Meanwhile: the old table serves.
        assert_eq!(get(r.proxy(), "/", &[("cookie", "ROUTEID=.shop-1")]).await.route(), "shop-1");
        api.set_unavailable(false);

        eventually(WAIT, "the deletion seen through the re-list", || async { r.members("shop").len() == 1 }).await;
        assert!(api.gone_served() >= 1, "the watcher was told 410 Gone");
        assert_eq!(r.members("shop")[0].0, "shop-0");
        r.stop().await;
    })
    .await;
}

fn slice_watch_errors(r: &Replica) -> u64 {
    r.running.proxy.metrics().watch_restarts.with_label_values(&["endpointslices"]).get()
}

/// The outage: the API server is away long enough for the watches' backoff to grow,
/// comes back with its watch cache restarted (every resumed watch gets 410 Gone), and a change
/// made right after must be served within 5 s — not after a 30 s backoff for the outage plus
/// another for the 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_and_410_gone_a_new_change_is_served_within_5_s() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let (r, _a) = serving_pool(&api, &kube).await;

        api.set_unavailable(true);
        // Four failed reconnections: kube's default backoff would now wait 6.4–12.8 s.
        eventually(WAIT, "four failed reconnections", || async { slice_watch_errors(&r) >= 4 }).await;
        // It comes back with its watch cache restarted: every resumed watch gets 410 Gone.
        let gone_before = api.gone_served();
        api.expire_watches();
        api.set_unavailable(false);
        let b = Member::start("shop-1").await;
        kube.put_slice(&slice("shop", "shop-1", b.addr, Cond::Ready)).await;
        let changed = tokio::time::Instant::now();
        eventually(Duration::from_secs(5), "the change after the outage served within 5 s", || async {
            r.members("shop").len() == 2
        })
        .await;
        let took = changed.elapsed();
        assert_eq!(get(r.proxy(), "/", &[("cookie", "ROUTEID=.shop-1")]).await.route(), "shop-1");
        assert!(api.gone_served() > gone_before, "the resumed watches were told 410 Gone");
        eprintln!("served {took:?} after the change");
        r.stop().await;
    })
    .await;
}

/// A healthy watch ended with 410 Gone re-lists at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watch_ended_with_410_gone_relists_at_once() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let (r, _a) = serving_pool(&api, &kube).await;
        eventually(WAIT, "the watches open", || async { api.open_watches() >= 3 }).await;
        api.expire_watches();
        let b = Member::start("shop-1").await;
        kube.put_slice(&slice("shop", "shop-1", b.addr, Cond::Ready)).await;
        eventually(Duration::from_secs(2), "the change after 410 Gone within 2 s", || async {
            r.members("shop").len() == 2
        })
        .await;
        assert!(api.gone_served() >= 3, "every open watch was ended with 410 Gone");
        r.stop().await;
    })
    .await;
}

/// Once the controller stops, nothing watches the API server: `/readyz` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_the_controller_stops_watching() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let (r, _a) = serving_pool(&api, &kube).await;
        eventually(WAIT, "ready", || async { get(r.running.admin_addr, "/readyz", &[]).await.status == 200 }).await;
        let Replica { running, controller } = r;
        controller.shutdown().await;
        assert_eq!(get(running.admin_addr, "/readyz", &[]).await.status, 503, "nothing watches any more");
        assert_eq!(get(running.proxy_addr, "/", &[]).await.route(), "shop-0", "the last table still serves");
        running.shutdown().await;
    })
    .await;
}
