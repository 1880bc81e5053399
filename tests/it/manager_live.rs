//! The balancer-manager's live figures in its JSON: rates, shares of traffic and of new
//! sessions, latency percentiles and the pool's overview line move with real traffic, from the
//! once-a-second sampler (no page reload, nothing on the request path).

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

async fn view(admin: std::net::SocketAddr) -> Value {
    serde_json::from_str(&get(admin, "/balancer-manager/api/pools", &[]).await.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_figures_follow_the_traffic() {
    bounded(async {
        let (a, b) = (Member::start("a").await, Member::start("b").await);
        let p = start_proxy(&pool_yaml(
            "shop",
            &[(a.addr, "a", 3), (b.addr, "b", 1)],
            "  sticky:\n    cookie: {name: ROUTEID}\n",
        ))
        .await;
        // The sampler's first tick comes with the admin listener: wait for it (the baseline).
        let mut v = view(p.admin_addr).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while v["sampledAt"].is_null() {
            assert!(tokio::time::Instant::now() < deadline, "no sample: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            v = view(p.admin_addr).await;
        }
        assert_eq!((v["rateWindowSeconds"].as_u64(), v["latencyWindowSeconds"].as_u64()), (Some(10), Some(60)));
        let s = &v["pools"][0]["summary"];
        assert_eq!(
            (s["members"].as_u64(), s["membersUsable"].as_u64(), s["state"].as_str()),
            (Some(2), Some(2), Some("Ok"))
        );
        // 40 new sessions and 20 returning ones (sticky hits on b), then wait for the sampler to see them.
        for _ in 0..40 {
            assert_eq!(get(p.proxy_addr, "/", &[]).await.status, 200);
        }
        for _ in 0..20 {
            assert_eq!(get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.b")]).await.route(), "b");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let v = loop {
            let v = view(p.admin_addr).await;
            if v["pools"][0]["summary"]["requestsPerSecond"].as_f64().unwrap_or(0.0) > 0.0 {
                break v;
            }
            assert!(tokio::time::Instant::now() < deadline, "the sampler never showed the traffic: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let pool = &v["pools"][0];
        let (ma, mb) = (&pool["members"][0], &pool["members"][1]);
        // New sessions follow the weights 3:1 (30 and 10); traffic is 30 : (10 + 20).
        let (na, nb) = (ma["newSessionShare"].as_f64().unwrap(), mb["newSessionShare"].as_f64().unwrap());
        assert!((na - 0.75).abs() < 1e-9 && (nb - 0.25).abs() < 1e-9, "{na} {nb}");
        let (sa, sb) = (ma["share"].as_f64().unwrap(), mb["share"].as_f64().unwrap());
        assert!((sa - 0.5).abs() < 1e-9 && (sb - 0.5).abs() < 1e-9, "{sa} {sb}");
        for m in [ma, mb] {
            assert!(m["requestsPerSecond"].as_f64().unwrap() > 0.0, "{m}");
            let (p50, p99) = (m["p50Ms"].as_f64().unwrap(), m["p99Ms"].as_f64().unwrap());
            assert!(p50 > 0.0 && p50 <= p99 && p99 < 60_000.0, "{p50} {p99}");
            assert_eq!(m["errorRatio"], 0.0);
            assert_eq!(m["fiveXxRatio"], 0.0);
        }
        let compact = get(p.admin_addr, "/balancer-manager/api/pools?compact=1", &[]).await.body;
        assert!(!compact.contains('\n'), "compact JSON");
        assert!(compact.contains("\"newSessionShare\":"), "the same fields");
        let s = &pool["summary"];
        let hit = s["stickyHitRatio"].as_f64().unwrap();
        assert!((hit - 20.0 / 60.0).abs() < 1e-9, "{hit}");
        assert_eq!(s["fiveXxRatio"], 0.0);
        assert!(s["p99Ms"].as_f64().unwrap() > 0.0);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_huge_page_offset_is_an_empty_page_not_a_panic() {
    bounded(async {
        let members: Vec<(std::net::SocketAddr, String, u32)> =
            (1..=101u16).map(|i| (std::net::SocketAddr::from(([127, 0, 0, 1], i)), format!("m{i}"), 1)).collect();
        let members: Vec<(std::net::SocketAddr, &str, u32)> =
            members.iter().map(|(a, r, l)| (*a, r.as_str(), *l)).collect();
        let p = start_proxy(&pool_yaml("shop", &members, "")).await;
        let got = get(p.admin_addr, &format!("/balancer-manager?from={}", usize::MAX), &[]).await;
        assert_eq!(got.status, 200, "{}", got.body);
        let got = get(p.admin_addr, "/balancer-manager?from=100", &[]).await;
        assert!(got.body.contains("Members 101–101 of 101."), "{}", got.body);
    })
    .await;
}
