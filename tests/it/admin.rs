//! Metrics and the balancer-manager through the real admin listener.

use std::process::{Command, Stdio};

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use routeid::proxy::ProxySettings;

const STICKY: &str = "  sticky:\n    cookie: {name: ROUTEID}\n";

/// The value of the series whose line starts with `prefix` (name and labels).
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

async fn metrics(p: &routeid::runtime::Running) -> String {
    let got = get(p.admin_addr, "/metrics", &[]).await;
    assert_eq!(got.status, 200);
    assert!(got.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    got.body
}

#[tokio::test]
async fn known_traffic_gives_exact_counters() {
    bounded(async {
        let a = Member::start("a").await;
        let b = Member::start("b").await;
        let p = start_proxy(&pool_yaml("shop", &[(a.addr, "a", 1), (b.addr, "b", 1)], STICKY)).await;
        for _ in 0..6 {
            get(p.proxy_addr, "/", &[]).await;
        }
        for _ in 0..4 {
            get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.a")]).await;
        }
        get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.gone")]).await;
        let c = client();
        send(&c, p.proxy_addr, "POST", "/upload", &[("cookie", "ROUTEID=.b")], Bytes::from(vec![b'x'; 1000])).await;
        let m = metrics(&p).await;
        // Labels come in alphabetical order in the exposition.
        let l = |member: &str| format!("member=\"{member}\",namespace=\"default\",pool=\"shop\"");
        // 6 balanced (a b a b a b), 4 sticky to a, 1 unknown route balanced — to b, because
        // the sticky requests paid a's share — and 1 sticky POST to b.
        assert_eq!(value(&m, &format!("routeid_member_requests_total{{code=\"2xx\",{}}}", l("a"))), 7.0);
        assert_eq!(value(&m, &format!("routeid_member_requests_total{{code=\"2xx\",{}}}", l("b"))), 5.0);
        let sticky = |o: &str| {
            value(&m, &format!("routeid_sticky_decisions_total{{namespace=\"default\",outcome=\"{o}\",pool=\"shop\"}}"))
        };
        assert_eq!((sticky("new-session"), sticky("hit"), sticky("unknown-route")), (6.0, 5.0, 1.0));
        assert_eq!(value(&m, &format!("routeid_member_sent_bytes_total{{{}}}", l("b"))), 1000.0);
        assert!(value(&m, &format!("routeid_member_received_bytes_total{{{}}}", l("a"))) > 0.0);
        assert_eq!(value(&m, &format!("routeid_member_elected_total{{{}}}", l("a"))), 7.0);
        assert_eq!(value(&m, &format!("routeid_member_in_flight{{{}}}", l("a"))), 0.0);
        assert_eq!(value(&m, &format!("routeid_member_state{{{},state=\"ok\"}}", l("a"))), 1.0);
        assert_eq!(value(&m, &format!("routeid_member_state{{{},state=\"error\"}}", l("a"))), 0.0);
        assert_eq!(value(&m, "routeid_pool_members{namespace=\"default\",pool=\"shop\"}"), 2.0);
        assert_eq!(value(&m, "routeid_pool_members_usable{namespace=\"default\",pool=\"shop\"}"), 2.0);
        // The histogram: 7 observations for a, cumulative buckets, +Inf equals the count.
        let count = value(&m, &format!("routeid_member_response_seconds_count{{{}}}", l("a")));
        assert_eq!(count, 7.0);
        let buckets: Vec<f64> = m
            .lines()
            .filter(|x| x.starts_with("routeid_member_response_seconds_bucket{") && x.contains("member=\"a\""))
            .map(|x| x.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), 16, "15 bounds and +Inf");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative: {buckets:?}");
        assert_eq!(*buckets.last().unwrap(), count);
        assert!(buckets[9] == count, "every loopback answer is under a second: {buckets:?}");
        assert!(value(&m, &format!("routeid_member_response_seconds_sum{{{}}}", l("a"))) < 7.0);
        assert!(m.contains("routeid_build_info{version=\""));
        assert!(m.contains("process_cpu_seconds_total"));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn failures_503s_and_unmatched_requests_are_counted() {
    bounded(async {
        let a = Member::start("a").await;
        let dead = closed_port().await;
        let yaml = pool_yaml(
            "shop",
            &[(dead, "dead", 1), (a.addr, "a", 1)],
            "  frontend: {pathPrefix: /shop, rewritePrefix: /}\n",
        );
        let p = start_proxy(&yaml).await;
        // A POST refused by the dead member comes back intact and goes to a: its bytes count for a.
        let posted = send(&client(), p.proxy_addr, "POST", "/shop/upload", &[], Bytes::from(vec![b'x'; 1000])).await;
        assert_eq!((posted.status.as_u16(), posted.body.as_str()), (200, "route=a received=1000"));
        assert_eq!(get(p.proxy_addr, "/elsewhere", &[]).await.status, 404);
        let m = metrics(&p).await;
        let dead_l = "member=\"dead\",namespace=\"default\",pool=\"shop\"";
        assert_eq!(value(&m, &format!("routeid_member_failures_total{{kind=\"connect\",{dead_l}}}")), 1.0);
        assert_eq!(value(&m, &format!("routeid_member_state{{{dead_l},state=\"error\"}}")), 1.0);
        assert_eq!(value(&m, "routeid_failovers_total{namespace=\"default\",pool=\"shop\",reason=\"retry\"}"), 1.0);
        assert_eq!(value(&m, "routeid_unmatched_requests_total"), 1.0);
        let a_l = "member=\"a\",namespace=\"default\",pool=\"shop\"";
        assert_eq!(value(&m, &format!("routeid_member_sent_bytes_total{{{a_l}}}")), 1000.0);
        assert_eq!(value(&m, &format!("routeid_member_sent_bytes_total{{{dead_l}}}")), 0.0);
        assert_eq!(value(&m, "routeid_pool_members_usable{namespace=\"default\",pool=\"shop\"}"), 1.0);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn series_stay_bounded_over_a_thousand_pod_replacements() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("shop", &[(a.addr, "pod-0", 1)], "")).await;
        get(p.proxy_addr, "/", &[]).await;
        let series = |m: &str| m.lines().filter(|l| !l.starts_with('#') && l.contains("member=\"")).count();
        let before = series(&metrics(&p).await);
        for i in 1..=1000 {
            let pools =
                routeid::standalone::parse_pools(&pool_yaml("shop", &[(a.addr, &format!("pod-{i}"), 1)], "")).unwrap();
            p.proxy.publish(pools);
            if i % 100 == 0 {
                // Traffic to the current pod creates its event series.
                assert_eq!(get(p.proxy_addr, "/", &[]).await.route(), "a");
            }
        }
        let m = metrics(&p).await;
        assert_eq!(series(&m), before, "one member's series, not a thousand");
        assert!(!m.contains("member=\"pod-999\""));
        assert!(m.contains("member=\"pod-1000\""));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs promtool (apt: prometheus); .ci/run installs it and runs it"]
async fn exposition_passes_promtool() {
    bounded(async {
        let Some(promtool) = find_on_path("promtool") else {
            panic!("this test needs promtool: apt-get install prometheus");
        };
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("shop", &[(a.addr, "a", 1)], STICKY)).await;
        get(p.proxy_addr, "/", &[]).await;
        let m = metrics(&p).await;
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool check metrics failed:\n{text}");
        p.shutdown().await;
    })
    .await;
}

async fn start_with_token(yaml: &str, token: Option<&str>) -> routeid::runtime::Running {
    start_proxy_with_token(yaml, ProxySettings { drain_timeout: Duration::from_secs(5), ..Default::default() }, token)
        .await
}

async fn patch(p: &routeid::runtime::Running, path: &str, token: Option<&str>, body: &str) -> Got {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
    send(&client(), p.admin_addr, "PATCH", path, &headers, Bytes::from(body.to_owned())).await
}

#[tokio::test]
async fn manager_reads_and_changes_weights_and_states() {
    bounded(async {
        let a = Member::start("a").await;
        let b = Member::start("b").await;
        let p =
            start_with_token(&pool_yaml("shop", &[(a.addr, "a", 1), (b.addr, "b", 1)], STICKY), Some("s3cret")).await;
        let page = get(p.admin_addr, "/balancer-manager", &[]).await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains("<h2>Pool default/shop</h2>"));
        assert!(page.body.contains("id=\"m-default-shop-a\"") && page.body.contains("id=\"m-default-shop-b\""));
        assert!(page.body.contains("lost on restart"), "the page says where changes go");
        let api = get(p.admin_addr, "/balancer-manager/api/pools", &[]).await;
        let v: serde_json::Value = serde_json::from_str(&api.body).unwrap();
        assert_eq!(v["pools"][0]["members"][1]["route"], "b");
        assert_eq!(v["readOnly"], false);

        // loadFactor 3 for a: the distribution follows.
        let r = patch(&p, "/balancer-manager/api/pools/default/shop/members/a", Some("s3cret"), r#"{"loadFactor": 3}"#)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let mut count = (0, 0);
        for _ in 0..8 {
            match get(p.proxy_addr, "/", &[]).await.route() {
                "a" => count.0 += 1,
                _ => count.1 += 1,
            }
        }
        assert_eq!(count, (6, 2));

        // Drain b: only its sticky traffic.
        let r =
            patch(&p, "/balancer-manager/api/pools/default/shop/members/b", Some("s3cret"), r#"{"status": "Drain"}"#)
                .await;
        assert_eq!(r.status, 200, "{}", r.body);
        for _ in 0..6 {
            assert_eq!(get(p.proxy_addr, "/", &[]).await.route(), "a");
        }
        assert_eq!(get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.b")]).await.route(), "b");
        let v: serde_json::Value =
            serde_json::from_str(&get(p.admin_addr, "/balancer-manager/api/pools", &[]).await.body).unwrap();
        assert_eq!(v["pools"][0]["members"][1]["status"], "Drain");
        assert_eq!(v["pools"][0]["members"][0]["loadFactor"], 3);

        // Refusals.
        let no_token =
            patch(&p, "/balancer-manager/api/pools/default/shop/members/a", None, r#"{"status": "Ok"}"#).await;
        assert_eq!(no_token.status, 401);
        assert!(no_token.headers.contains_key("www-authenticate"));
        let wrong =
            patch(&p, "/balancer-manager/api/pools/default/shop/members/a", Some("guess"), r#"{"status":"Ok"}"#).await;
        assert_eq!(wrong.status, 401);
        let bad =
            patch(&p, "/balancer-manager/api/pools/default/shop/members/a", Some("s3cret"), r#"{"loadFactor": 0}"#)
                .await;
        assert_eq!(bad.status, 400);
        assert!(bad.body.contains("loadFactor"));
        let unknown =
            patch(&p, "/balancer-manager/api/pools/default/shop/members/zz", Some("s3cret"), r#"{"lbSet": 1}"#).await;
        assert_eq!(unknown.status, 404);
        let junk =
            patch(&p, "/balancer-manager/api/pools/default/shop/members/a", Some("s3cret"), r#"{"weight": 2}"#).await;
        assert_eq!(junk.status, 400);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn form_posts_need_the_token_and_a_nonce_from_the_page() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_with_token(&pool_yaml("shop", &[(a.addr, "a", 1)], ""), Some("s3cret")).await;
        let page = get(p.admin_addr, "/balancer-manager", &[]).await.body;
        let nonce = page.split("name=nonce value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let post = |body: String| async move {
            send(
                &client(),
                p.admin_addr,
                "POST",
                "/balancer-manager",
                &[("content-type", "application/x-www-form-urlencoded")],
                Bytes::from(body),
            )
            .await
        };
        let fields = "namespace=default&pool=shop&route=a&loadFactor=5&lbSet=0&status=Drain";
        let r = post(format!("{fields}&nonce=0000&token=s3cret")).await;
        assert_eq!(r.status, 403, "wrong nonce");
        let r = post(format!("{fields}&nonce={nonce}")).await;
        assert_eq!(r.status, 401, "no token");
        let r = post(format!("{fields}&nonce={nonce}&token=s3cret")).await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(r.headers["location"], "/balancer-manager?saved=1");
        let r = post(format!("{fields}&nonce={nonce}&token=s3cret")).await;
        assert_eq!(r.status, 403, "a nonce is good once");
        let snap = p.proxy.snapshot();
        let m = &snap.table.pools()[0].members[0];
        assert_eq!((m.config.load_factor, m.config.status), (5, routeid::api::MemberStatus::Drain));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn without_a_token_the_manager_is_read_only_and_says_so() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_with_token(&pool_yaml("shop", &[(a.addr, "a", 1)], ""), None).await;
        let page = get(p.admin_addr, "/balancer-manager", &[]).await.body;
        assert!(page.contains("id=readonly"));
        assert!(!page.contains("<form"), "no forms when nothing can be changed");
        let r =
            patch(&p, "/balancer-manager/api/pools/default/shop/members/a", Some("s3cret"), r#"{"status": "Drain"}"#)
                .await;
        assert_eq!(r.status, 403);
        assert!(r.body.contains("read-only") && r.body.contains("--manager-token"), "{}", r.body);
        p.shutdown().await;
    })
    .await;
}

/// Reads until the peer closes; returns how long that took.
async fn closed_after(s: &mut tokio::net::TcpStream) -> Duration {
    use tokio::io::AsyncReadExt;
    let t = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return t.elapsed(),
            Ok(_) => {}
        }
    }
}

/// One keep-alive `GET /healthz` on a raw connection; true if it was answered 200.
async fn healthz(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 1024];
    matches!(s.read(&mut buf).await, Ok(n) if n > 0 && buf[..n].starts_with(b"HTTP/1.1 200"))
}

#[tokio::test]
async fn a_silent_admin_connection_is_closed_after_the_header_timeout() {
    bounded(async {
        let settings = ProxySettings {
            client_header_timeout: Duration::from_millis(300),
            client_idle_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let a = Member::start("a").await;
        let p = start_proxy_with_token(&pool_yaml("shop", &[(a.addr, "a", 1)], ""), settings, None).await;
        let mut silent = tokio::net::TcpStream::connect(p.admin_addr).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(5), closed_after(&mut silent))
            .await
            .expect("an admin connection that sent nothing was still open after 5 s");
        assert!(waited >= Duration::from_millis(200), "closed after {waited:?}");
        // A keep-alive connection whose next request never comes is closed too (HTTP/1.1: the
        // header timeout bounds the wait for the next head).
        let mut idle = tokio::net::TcpStream::connect(p.admin_addr).await.unwrap();
        assert!(healthz(&mut idle).await);
        tokio::time::timeout(Duration::from_secs(5), closed_after(&mut idle))
            .await
            .expect("idle admin connection closed");
        p.shutdown().await;
    })
    .await;
}

/// A connection to `to` from the source address `from` (any 127.0.0.x: all are loopback).
async fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind((from, 0).into()).unwrap();
    s.connect(to).await.unwrap()
}

/// Admin settings where only the connection caps can close a connection.
fn long_timeouts() -> ProxySettings {
    ProxySettings {
        client_header_timeout: Duration::from_secs(30),
        client_idle_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

#[tokio::test]
async fn silent_connections_from_one_peer_do_not_lock_out_healthz() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy_with_token(&pool_yaml("shop", &[(a.addr, "a", 1)], ""), long_timeouts(), None).await;
        let mut held = Vec::new();
        for _ in 0..routeid::admin::MAX_CONNECTIONS {
            held.push(tokio::net::TcpStream::connect(p.admin_addr).await.unwrap());
        }
        // The same host (kubelet on the node) and another one still get their probe answered.
        for from in [[127, 0, 0, 1], [127, 0, 0, 2]] {
            let r = try_get(p.admin_addr, "/healthz", &[]).await;
            assert_eq!(r.map(|g| g.status.as_u16()), Ok(200), "/healthz from the peer's host");
            let mut s = connect_from(from, p.admin_addr).await;
            assert!(healthz(&mut s).await, "/healthz from {from:?} with 64 silent connections held");
        }
        // The peer's first connections were closed to make room, in the order they came.
        for (i, s) in held.iter_mut().take(4).enumerate() {
            tokio::time::timeout(Duration::from_secs(5), closed_after(s))
                .await
                .unwrap_or_else(|_| panic!("silent connection {i} is still open"));
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn at_the_admin_caps_the_connection_idle_longest_is_closed() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy_with_token(&pool_yaml("shop", &[(a.addr, "a", 1)], ""), long_timeouts(), None).await;
        let per_ip = routeid::admin::MAX_CONNECTIONS_PER_IP;
        // Fill the listener's cap from 127.0.0.2, 127.0.0.3, ..., per_ip connections each.
        let mut held = Vec::new();
        for i in 0..routeid::admin::MAX_CONNECTIONS {
            let from = [127, 0, 0, 2 + u8::try_from(i / per_ip).unwrap()];
            let mut s = connect_from(from, p.admin_addr).await;
            assert!(healthz(&mut s).await, "connection {i} within the caps is served");
            held.push(s);
        }
        // One more, from a new peer: served, and the connection idle longest (the first) closed.
        let mut new = connect_from([127, 0, 0, 100], p.admin_addr).await;
        assert!(healthz(&mut new).await, "a new connection at the cap is served");
        let waited = tokio::time::timeout(Duration::from_secs(5), closed_after(&mut held[0]))
            .await
            .expect("the connection idle longest was kept open");
        assert!(waited < Duration::from_secs(2), "closed after {waited:?}: not at once");
        // A connection used lately is kept over one idle longer: the second is used now.
        assert!(healthz(&mut held[1]).await);
        let mut again = connect_from([127, 0, 0, 101], p.admin_addr).await;
        assert!(healthz(&mut again).await);
        tokio::time::timeout(Duration::from_secs(5), closed_after(&mut held[2])).await.expect("the idlest closed");
        assert!(healthz(&mut held[1]).await, "the connection used last is still served");
        // At a peer's own cap, that peer's connection idle longest is closed, no one else's.
        let mut ninth = connect_from([127, 0, 0, 3], p.admin_addr).await;
        assert!(healthz(&mut ninth).await, "a peer's connection over its cap is served");
        tokio::time::timeout(Duration::from_secs(5), closed_after(&mut held[per_ip]))
            .await
            .expect("the peer's connection idle longest was kept open");
        assert!(healthz(&mut held[3]).await, "another peer's idle connection is untouched");
        // The proxy listener is not limited by the admin's connections.
        assert_eq!(get(p.proxy_addr, "/", &[]).await.route(), "a");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn anonymous_page_loads_do_not_expire_an_operator_form() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_with_token(&pool_yaml("shop", &[(a.addr, "a", 1)], ""), Some("s3cret")).await;
        let page = get(p.admin_addr, "/balancer-manager", &[]).await.body;
        let nonce = page.split("name=nonce value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        // 2,000 page loads by anyone, four at a time, while the operator's form is open.
        let c = client();
        let loads = (0..4).map(|_| {
            let c = c.clone();
            let admin = p.admin_addr;
            tokio::spawn(async move {
                for _ in 0..500 {
                    assert_eq!(send(&c, admin, "GET", "/balancer-manager", &[], Bytes::new()).await.status, 200);
                }
            })
        });
        for l in loads {
            l.await.unwrap();
        }
        let body =
            format!("namespace=default&pool=shop&route=a&loadFactor=7&lbSet=0&status=Ok&nonce={nonce}&token=s3cret");
        let r = send(
            &c,
            p.admin_addr,
            "POST",
            "/balancer-manager",
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from(body),
        )
        .await;
        assert_eq!(r.status, 303, "the operator's form still posts: {}", r.body);
        assert_eq!(p.proxy.snapshot().table.pools()[0].members[0].config.load_factor, 7);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn every_form_of_a_page_carries_the_same_nonce() {
    bounded(async {
        let a = Member::start("a").await;
        let b = Member::start("b").await;
        let p = start_with_token(&pool_yaml("shop", &[(a.addr, "a", 1), (b.addr, "b", 1)], ""), Some("s3cret")).await;
        let page = get(p.admin_addr, "/balancer-manager", &[]).await.body;
        let nonces: Vec<&str> =
            page.split("name=nonce value=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
        assert_eq!(nonces.len(), 2);
        assert_eq!(nonces[0], nonces[1], "one nonce per page");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_first_admin_request_after_startup_sees_the_configured_manager() {
    bounded(async {
        let a = Member::start("a").await;
        let file = temp_file("first-admin-request.yaml", &pool_yaml("shop", &[(a.addr, "a", 1)], ""));
        // Several starts, each asked by the manager API before anything else (not /readyz).
        for _ in 0..3 {
            let (proxy, admin) = (free_port(), free_port());
            let stderr = temp_path("first-admin-request-stderr");
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_routeid"))
                .args(["standalone", "-f"])
                .arg(&file)
                .args(["--listen", &proxy.to_string(), "--admin-listen", &admin.to_string()])
                .args(["--manager-token", "s3cret", "--no-access-log"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr).unwrap())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let first = loop {
                if let Ok(g) = try_get(admin, "/balancer-manager/api/pools", &[]).await {
                    break g;
                }
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "routeid exited: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
                assert!(std::time::Instant::now() < deadline, "routeid never answered");
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(first.status, 200);
            let v: serde_json::Value = serde_json::from_str(&first.body).unwrap();
            assert_eq!(v["readOnly"], false, "the very first answer knows the token");
        }
    })
    .await;
}

/// CPU time (user + system) of a process so far, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is the 3rd, utime the 14th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn out_of_file_descriptors_both_listeners_back_off_instead_of_spinning() {
    bounded(async {
        let a = Member::start("a").await;
        let file = temp_file("emfile.yaml", &pool_yaml("shop", &[(a.addr, "a", 1)], ""));
        let (proxy, admin) = (free_port(), free_port());
        let stderr = temp_path("emfile-stderr");
        // 32 descriptors: the runtime, the listeners and a handful of connections.
        let mut child = Command::new("/bin/sh")
            .args(["-c", "ulimit -n 32 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_routeid"), "standalone", "-f"])
            .arg(&file)
            .args(["--listen", &proxy.to_string(), "--admin-listen", &admin.to_string()])
            .args(["--client-header-timeout", "30s", "--no-access-log"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !matches!(try_get(admin, "/readyz", &[]).await, Ok(g) if g.status == 200) {
            assert!(child.try_wait().unwrap().is_none(), "routeid exited: {}", log());
            assert!(std::time::Instant::now() < deadline, "routeid never became ready: {}", log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // More connections than descriptors, to both listeners: the kernel completes them (the
        // backlog), routeid cannot accept them.
        let mut held = Vec::new();
        for addr in [admin, proxy] {
            for _ in 0..40 {
                held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log().matches("accept failed").count() < 2 {
            assert!(std::time::Instant::now() < deadline, "accepting never failed: {}", log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = cpu_ticks(child.id());
        tokio::time::sleep(Duration::from_secs(1)).await; // the measuring window
        let used = cpu_ticks(child.id()) - before;
        eprintln!("CPU while out of descriptors: {used} ticks in 1 s");
        let _ = child.kill();
        let _ = child.wait();
        // A spinning accept loop burns a whole core: ~100 ticks in that second.
        assert!(used < 30, "{used} ticks of CPU in 1 s while out of descriptors");
        assert!(
            log().matches("accept failed").count() < 40,
            "a flood of accept warnings: {}",
            log().matches("accept failed").count()
        );
    })
    .await;
}
