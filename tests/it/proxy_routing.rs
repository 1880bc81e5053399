//! Routing through the real proxy: the ByRequests sequence, host and prefix matching, the
//! proxy's own 404/503 answers, and the header rules of a forwarding proxy.

use std::time::Duration;

use crate::support::*;
use routeid::proxy::ProxySettings;

#[tokio::test]
async fn byrequests_1_2_3_gives_the_apache_sequence_over_12_requests() {
    bounded(async {
        let (n1, n2, n3) = (Member::start("n1").await, Member::start("n2").await, Member::start("n3").await);
        let p = start_proxy(&pool_yaml("lb", &[(n1.addr, "n1", 1), (n2.addr, "n2", 2), (n3.addr, "n3", 3)], "")).await;
        let mut seq = Vec::new();
        for _ in 0..12 {
            let got = get(p.proxy_addr, "/", &[]).await;
            assert_eq!(got.status, 200, "{got:?}");
            seq.push(got.route().to_owned());
        }
        assert_eq!(seq, ["n3", "n2", "n1", "n3", "n2", "n3", "n3", "n2", "n1", "n3", "n2", "n3"]);
        assert_eq!((n1.hits(), n2.hits(), n3.hits()), (2, 4, 6));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn hosts_wildcards_longest_prefix_and_rewrite_prefix() {
    bounded(async {
        let exact = Member::start("exact").await;
        let checkout = Member::start("checkout").await;
        let wild = Member::start("wild").await;
        let api = Member::start("api").await;
        let apiv2 = Member::start("apiv2").await;
        let rw = Member::start("rw").await;
        let docs = [
            pool_yaml("exact", &[(exact.addr, "exact", 1)], "  frontend: {hosts: [shop.example.com]}\n"),
            pool_yaml(
                "checkout",
                &[(checkout.addr, "checkout", 1)],
                "  frontend: {hosts: [shop.example.com], pathPrefix: /checkout}\n",
            ),
            pool_yaml("wild", &[(wild.addr, "wild", 1)], "  frontend: {hosts: [\"*.example.com\"]}\n"),
            pool_yaml("api", &[(api.addr, "api", 1)], "  frontend: {pathPrefix: /api}\n"),
            pool_yaml("apiv2", &[(apiv2.addr, "apiv2", 1)], "  frontend: {pathPrefix: /api/v2/}\n"),
            pool_yaml(
                "rw",
                &[(rw.addr, "rw", 1)],
                "  frontend: {hosts: [rw.test], pathPrefix: /shop, rewritePrefix: /}\n",
            ),
        ];
        let p = start_proxy(&docs.join("---\n")).await;
        let route_for = |host: &'static str, path: &'static str| {
            let addr = p.proxy_addr;
            async move {
                let got = get(addr, path, &[("host", host)]).await;
                (got.status.as_u16(), got.route().to_owned())
            }
        };
        let cases = [
            // Exact host.
            ("shop.example.com", "/x", "exact"),
            // Longest prefix within the exact host's pools.
            ("shop.example.com", "/checkout/pay", "checkout"),
            ("shop.example.com", "/checkout", "checkout"),
            // Prefixes match whole segments only.
            ("shop.example.com", "/checkouts", "exact"),
            // Port and case do not matter.
            ("SHOP.Example.COM:8080", "/x", "exact"),
            ("shop.example.com:80", "/checkout/x", "checkout"),
            // Wildcards match any subdomain, not the bare domain.
            ("www.example.com", "/x", "wild"),
            ("A.B.Example.com:443", "/x", "wild"),
            ("example.com", "/api/x", "api"),
            // Hostless pools: the longest matching prefix wins.
            ("other.test", "/api/x", "api"),
            ("other.test", "/api/v2", "apiv2"),
            ("other.test", "/api/v2/items?id=3", "apiv2"),
            ("other.test", "/api/v20", "api"),
        ];
        for (host, path, want) in cases {
            assert_eq!(route_for(host, path).await, (200, want.to_owned()), "Host: {host}, path {path}");
        }
        assert_eq!(route_for("other.test", "/nothing").await.0, 404);
        assert_eq!(route_for("shopping.test", "/shop/cart").await.0, 404, "rw.test only");

        // rewritePrefix: the member sees the rewritten path, query kept.
        let got = get(p.proxy_addr, "/shop/cart?x=1", &[("host", "rw.test")]).await;
        assert_eq!(got.route(), "rw");
        assert_eq!(rw.last_seen().path_and_query, "/cart?x=1");
        assert_eq!(got.body, "route=rw path=/cart?x=1");
        get(p.proxy_addr, "/shop", &[("host", "RW.test")]).await;
        assert_eq!(rw.last_seen().path_and_query, "/");
        get(p.proxy_addr, "/shop?q=a/b", &[("host", "rw.test")]).await;
        assert_eq!(rw.last_seen().path_and_query, "/?q=a/b");
        // Without rewritePrefix the path goes through untouched.
        get(p.proxy_addr, "/api/v2/items?id=3", &[("host", "x")]).await;
        assert_eq!(apiv2.last_seen().path_and_query, "/api/v2/items?id=3");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn no_pool_gives_404_and_no_usable_member_gives_503() {
    bounded(async {
        let a = Member::start("a").await;
        let b = Member::start("b").await;
        let docs = [
            pool_yaml("served", &[(a.addr, "a", 1)], "  frontend: {hosts: [served.test]}\n"),
            // Both members administratively disabled.
            pool_yaml(
                "disabled",
                &[(a.addr, "a", 1), (b.addr, "b", 1)],
                "  frontend: {hosts: [disabled.test]}\n  members:\n    - {route: a, status: Disabled}\n    - {route: b, status: Stopped}\n",
            ),
        ];
        let (c1, c2) = (closed_port().await, closed_port().await);
        let closed = pool_yaml("closed", &[(c1, "c1", 1), (c2, "c2", 1)], "  frontend: {hosts: [closed.test]}\n");
        let p = start_proxy(&format!("{}---\n{}---\n{closed}", docs[0], docs[1])).await;

        let got = get(p.proxy_addr, "/x", &[("host", "nobody.test")]).await;
        assert_eq!(got.status, 404);
        assert!(got.body.contains("no pool"), "{}", got.body);
        assert!(got.headers["content-type"].to_str().unwrap().starts_with("text/plain"), "{:?}", got.headers);

        let got = get(p.proxy_addr, "/x", &[("host", "disabled.test")]).await;
        assert_eq!(got.status, 503);
        assert!(got.body.contains("default/disabled"), "{}", got.body);
        assert!(got.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
        assert_eq!((a.hits(), b.hits()), (0, 0), "disabled members get nothing");

        // Every port closed: each attempt is refused, then nothing is left to try.
        let got = get(p.proxy_addr, "/x", &[("host", "closed.test")]).await;
        assert_eq!(got.status, 503, "{got:?}");
        assert!(got.body.contains("default/closed"), "{}", got.body);
        // Both are now in error: the next request is refused without an attempt.
        let got = get(p.proxy_addr, "/x", &[("host", "closed.test")]).await;
        assert_eq!(got.status, 503);

        // The served pool still works.
        assert_eq!(get(p.proxy_addr, "/x", &[("host", "served.test")]).await.route(), "a");
        p.shutdown().await;
    })
    .await;
}

fn assert_no_hop_by_hop_request_headers(seen: &Seen) {
    for h in ["x-secret", "keep-alive", "te", "proxy-connection", "trailer", "upgrade"] {
        assert!(!seen.headers.contains_key(h), "{h} reached the member: {:?}", seen.headers);
    }
    for v in seen.headers.get_all("connection") {
        assert!(!v.to_str().unwrap().to_ascii_lowercase().contains("x-secret"), "{v:?}");
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways_and_forwarded_headers_set() {
    bounded(async {
        let m = Member::start("m").await;
        let yaml = pool_yaml("hop", &[(m.addr, "m", 1)], "");
        let p = start_proxy(&yaml).await;
        let request_headers = [
            ("host", "app.test:8443"),
            ("connection", "close, X-Secret"),
            ("x-secret", "do-not-forward"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("x-forwarded-for", "10.1.2.3"),
            ("x-kept", "yes"),
        ];
        let got = get(p.proxy_addr, "/hop", &request_headers).await;
        assert_eq!(got.status, 200);
        // Response: the member's `Connection: keep-alive, x-hop` and `X-Hop` stay behind.
        assert!(!got.headers.contains_key("x-hop"), "{:?}", got.headers);
        for v in got.headers.get_all("connection") {
            assert!(!v.to_str().unwrap().to_ascii_lowercase().contains("x-hop"), "{v:?}");
        }
        assert_eq!(got.headers["x-member"], "m", "end-to-end headers pass");
        assert!(!got.headers.contains_key("via"), "no Via unless asked");

        let seen = m.last_seen();
        assert_no_hop_by_hop_request_headers(&seen);
        assert_eq!(seen.headers["x-kept"], "yes");
        assert_eq!(seen.headers["host"], "app.test:8443");
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1", "an untrusted client's list is replaced");
        assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        assert_eq!(seen.headers["x-forwarded-host"], "app.test:8443");
        assert!(!seen.headers.contains_key("via"));

        // Without a previous X-Forwarded-For the client address starts the list.
        get(p.proxy_addr, "/hop", &[("host", "app.test")]).await;
        assert_eq!(m.last_seen().headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(m.last_seen().headers["x-forwarded-host"], "app.test");
        p.shutdown().await;

        // With `via`, both directions carry it.
        let settings = ProxySettings { via: true, drain_timeout: Duration::from_secs(5), ..Default::default() };
        let p = start_proxy_with(&yaml, settings).await;
        let got = get(p.proxy_addr, "/via", &request_headers).await;
        assert_eq!(got.status, 200);
        assert!(!got.headers.contains_key("x-hop"));
        assert_eq!(got.headers["via"], "1.1 routeid");
        let seen = m.last_seen();
        assert_no_hop_by_hop_request_headers(&seen);
        assert_eq!(seen.headers["via"], "1.1 routeid");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_http10_request_without_host_cannot_forge_forwarded_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let m = Member::start("m").await;
        let p = start_proxy(&pool_yaml("p", &[(m.addr, "m", 1)], "")).await;
        let mut c = tokio::net::TcpStream::connect(p.proxy_addr).await.unwrap();
        let forged = b"GET /x HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\r\n";
        c.write_all(forged).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.0 200"), "{}", String::from_utf8_lossy(&out));
        let seen = m.last_seen();
        assert_eq!(seen.headers.get("x-forwarded-host"), None, "no host: no X-Forwarded-Host at all");
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        p.shutdown().await;
    })
    .await;
}

/// One answer for "no member could take it": with every member refusing connections, a pool of
/// one, two or three members (fewer, as many, or more members than `maxAttempts`) answers `503`
/// naming the pool, counted as unavailable; a member that took the request and failed is a `502`.
#[tokio::test]
async fn every_member_refusing_is_a_503_whatever_the_pool_size() {
    bounded(async {
        let mut docs = Vec::new();
        for n in 1..=4 {
            let mut members = Vec::new();
            for i in 0..n {
                members.push((closed_port().await, format!("c{i}")));
            }
            let members: Vec<_> = members.iter().map(|(a, r)| (*a, r.as_str(), 1)).collect();
            docs.push(pool_yaml(
                &format!("closed{n}"),
                &members,
                &format!("  frontend: {{hosts: [closed{n}.test]}}\n"),
            ));
        }
        // Members that read the request and close without an answer: they took it and failed.
        let mut rude = Vec::new();
        for _ in 0..3 {
            rude.push(crate::support::raw::ScriptedMember::start(|s| async move { drop(s) }).await);
        }
        for n in 2..=3 {
            let members: Vec<_> = rude[..n].iter().zip(["r0", "r1", "r2"]).map(|(m, r)| (m.addr, r, 1)).collect();
            docs.push(pool_yaml(&format!("rude{n}"), &members, &format!("  frontend: {{hosts: [rude{n}.test]}}\n")));
        }
        let p = start_proxy(&docs.join("---\n")).await;
        for n in 2..=3 {
            let got = get(p.proxy_addr, "/x", &[("host", &format!("rude{n}.test"))]).await;
            assert_eq!(got.status, 502, "{n} members that took the request and failed: {got:?}");
        }
        for n in 1..=4 {
            let got = get(p.proxy_addr, "/x", &[("host", &format!("closed{n}.test"))]).await;
            assert_eq!(got.status, 503, "{n} members: {got:?}");
            assert!(got.body.contains(&format!("no usable member in pool default/closed{n}")), "{}", got.body);
        }
        let m = get(p.admin_addr, "/metrics", &[]).await.body;
        for n in 1..=4 {
            let line = format!("routeid_pool_unavailable_total{{namespace=\"default\",pool=\"closed{n}\"}} 1");
            assert!(m.contains(&line), "{line} in\n{m}");
        }
        p.shutdown().await;
    })
    .await;
}
