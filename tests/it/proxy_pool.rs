//! Connections to members are pooled per member and reused; closed ones are replaced.

use crate::support::*;

#[tokio::test]
async fn sequential_requests_reuse_one_member_connection() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("p", &[(a.addr, "a", 1)], "")).await;
        let c = client();
        for _ in 0..50 {
            let got = send(&c, p.proxy_addr, "GET", "/", &[], bytes::Bytes::new()).await;
            assert_eq!(got.status, 200);
        }
        assert_eq!(a.hits(), 50);
        assert_eq!(a.connections(), 1, "one keep-alive connection serves them all");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_member_that_closes_every_connection_still_gets_every_request() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("p", &[(a.addr, "a", 1)], "")).await;
        for _ in 0..20 {
            let got = get(p.proxy_addr, "/close", &[]).await;
            assert_eq!((got.status.as_u16(), got.route()), (200, "a"));
        }
        assert_eq!(a.hits(), 20);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn post_bodies_reuse_connections_too() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("p", &[(a.addr, "a", 1)], "")).await;
        let c = client();
        for i in 0..20 {
            let body = bytes::Bytes::from(vec![b'x'; 1000 + i]);
            let got = send(&c, p.proxy_addr, "POST", "/upload", &[], body).await;
            assert_eq!(got.body, format!("route=a received={}", 1000 + i));
        }
        assert_eq!(a.connections(), 1);
        p.shutdown().await;
    })
    .await;
}
