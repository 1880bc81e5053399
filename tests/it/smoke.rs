use crate::support::*;

#[tokio::test]
async fn support_works() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("p", &[(a.addr, "a", 1)], "")).await;
        let got = get(p.proxy_addr, "/x", &[]).await;
        assert_eq!(got.route(), "a");
        assert!(got.headers.get("x-hop").is_none());
        p.shutdown().await;
    })
    .await;
}
