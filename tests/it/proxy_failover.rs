//! Passive health: a member whose port is closed is failed over without a client-visible error,
//! put in error, and tried again once `retryAfter` has passed.

use std::time::Duration;

use crate::support::*;
use routeid::runtime::Running;
use tokio::net::TcpListener;

fn in_error(running: &Running, member: usize) -> bool {
    running.proxy.snapshot().table.pools()[0].members[member].runtime.in_error(running.proxy.clock().now_ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_member_is_failed_over_put_in_error_and_retried_after_retry_after() {
    bounded(async {
        let dead_addr = closed_port().await;
        let live = Member::start("live").await;
        let yaml = pool_yaml(
            "fo",
            &[(dead_addr, "dead", 1), (live.addr, "live", 1)],
            "  health: {passive: {retryAfter: 1s}}\n",
        );
        let running = start_proxy(&yaml).await;
        assert!(!in_error(&running, 0), "nothing has failed yet");

        // Every request succeeds: the refused connection is retried on the live member.
        for i in 0..8 {
            let got = get(running.proxy_addr, &format!("/r{i}"), &[]).await;
            assert_eq!(got.status, 200, "request {i}: {got:?}");
            assert_eq!(got.route(), "live", "request {i}");
        }
        assert_eq!(live.hits(), 8);
        assert!(in_error(&running, 0), "the member that refused the connection is in error");
        assert!(!in_error(&running, 1));
        let errors = running.proxy.snapshot().table.pools()[0].members[0]
            .runtime
            .errors
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(errors, 1, "in error, the closed member is not even attempted again");

        // The member comes back on the very same port.
        crate::support::release_port(dead_addr);
        let listener = TcpListener::bind(dead_addr).await.expect("rebind the closed member's port");
        let back = Member::start_on(listener, "dead");

        // While its error time lasts it still gets nothing (checked only when the error surely
        // held for the whole request).
        let got = get(running.proxy_addr, "/while-in-error", &[]).await;
        if in_error(&running, 0) {
            assert_eq!(got.route(), "live");
            assert_eq!(back.hits(), 0);
        }

        // After retryAfter (1s) it is usable again without any request clearing it...
        wait_for(Duration::from_secs(5), "the error state to expire", || !in_error(&running, 0)).await;
        // ...and the balancer gives it traffic again.
        let mut routes = Vec::new();
        for i in 0..6 {
            let got = get(running.proxy_addr, &format!("/after{i}"), &[]).await;
            assert_eq!(got.status, 200);
            routes.push(got.route().to_owned());
        }
        assert!(routes.iter().any(|r| r == "dead"), "the recovered member got no traffic: {routes:?}");
        assert!(back.hits() >= 1);
        assert!(!in_error(&running, 0));
        running.shutdown().await;
    })
    .await;
}
