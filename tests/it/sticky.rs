//! Stickiness through the real proxy with real members (the README's "Stickiness" rules).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

const INSERT: &str = "  sticky:\n    names: [JSESSIONID, jsessionid]\n    cookie: {name: ROUTEID, mode: Insert}\n";

async fn three() -> (Member, Member, Member) {
    (Member::start("n1").await, Member::start("n2").await, Member::start("n3").await)
}

fn members3(m: &(Member, Member, Member)) -> [(std::net::SocketAddr, &'static str, u32); 3] {
    [(m.0.addr, "n1", 1), (m.1.addr, "n2", 1), (m.2.addr, "n3", 1)]
}

#[tokio::test]
async fn first_visit_inserts_cookie_with_every_attribute() {
    bounded(async {
        let m = three().await;
        let extra = "  sticky:\n    names: [JSESSIONID]\n    cookie: {name: ROUTEID, path: /app, domain: example.com, secure: true, sameSite: Lax, maxAge: 30m}\n";
        let p = start_proxy(&pool_yaml("shop", &members3(&m), extra)).await;
        let got = get(p.proxy_addr, "/", &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.route(), "n1");
        assert_eq!(
            got.set_cookies(),
            ["ROUTEID=.n1; Path=/app; Domain=example.com; Max-Age=1800; Secure; HttpOnly; SameSite=Lax"]
        );
        assert_eq!(got.headers.get("cache-control").unwrap(), "private", "nocache is on by default");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn follow_ups_stick_and_the_proxy_cookie_is_stripped() {
    bounded(async {
        let m = three().await;
        let p = start_proxy(&pool_yaml("shop", &members3(&m), INSERT)).await;
        for _ in 0..100 {
            let got = get(p.proxy_addr, "/", &[("cookie", "theme=dark; ROUTEID=.n2; lang=en")]).await;
            assert_eq!(got.route(), "n2");
            assert!(got.set_cookies().is_empty(), "no cookie when the client already sticks");
            assert!(got.headers.get("cache-control").is_none());
        }
        assert_eq!((m.0.hits(), m.1.hits(), m.2.hits()), (0, 100, 0));
        let seen = m.1.last_seen();
        assert_eq!(seen.headers.get("cookie").unwrap(), "theme=dark; lang=en", "indirect strips ROUTEID");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn url_parameters_beat_the_cookie_and_pass_untouched() {
    bounded(async {
        let m = three().await;
        let p = start_proxy(&pool_yaml("shop", &members3(&m), INSERT)).await;
        let got = get(p.proxy_addr, "/x?jsessionid=abc.n3", &[("cookie", "JSESSIONID=abc.n1")]).await;
        assert_eq!(got.route(), "n3");
        let got = get(p.proxy_addr, "/cart;jsessionid=abc.n2?item=1", &[("cookie", "JSESSIONID=abc.n1")]).await;
        assert_eq!(got.route(), "n2");
        assert_eq!(m.1.last_seen().path_and_query, "/cart;jsessionid=abc.n2?item=1");
        assert_eq!(
            m.1.last_seen().headers.get("cookie").unwrap(),
            "JSESSIONID=abc.n1",
            "the app's cookie is forwarded"
        );
        let got = get(p.proxy_addr, "/", &[("cookie", "JSESSIONID=abc.n3")]).await;
        assert_eq!(got.route(), "n3");
        assert!(got.set_cookies().is_empty(), "a sticky hit on the app cookie sets nothing");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn dead_member_fails_over_once_and_the_session_sticks_to_its_new_home() {
    bounded(async {
        let mut m = three().await;
        let p = start_proxy(&pool_yaml("shop", &members3(&m), INSERT)).await;
        assert_eq!(get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.n1")]).await.route(), "n1");
        m.0.die().await;
        let moved = get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.n1")]).await;
        assert_eq!(moved.status, 200, "no client-visible error: {}", moved.body);
        let new_route = moved.route().to_owned();
        assert_ne!(new_route, "n1");
        assert_eq!(moved.set_cookies(), [format!("ROUTEID=.{new_route}; Path=/; HttpOnly")]);
        let cookie = format!("ROUTEID=.{new_route}");
        for _ in 0..20 {
            let got = get(p.proxy_addr, "/", &[("cookie", &cookie)]).await;
            assert_eq!(got.route(), new_route);
            assert!(got.set_cookies().is_empty());
        }
        // Another request still naming the dead member moves too (the member is in error now).
        let again = get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.n1")]).await;
        assert_eq!(again.status, 200);
        assert_eq!(again.set_cookies().len(), 1);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn failover_off_answers_503_naming_the_route() {
    bounded(async {
        let m = three().await;
        let extra = "  sticky:\n    failover: false\n    cookie: {name: ROUTEID}\n  members:\n    - {route: n1, status: Disabled}\n";
        let p = start_proxy(&pool_yaml("shop", &members3(&m), extra)).await;
        let got = get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.n1")]).await;
        assert_eq!(got.status, 503);
        assert!(got.body.contains("route n1") && got.body.contains("default/shop"), "{}", got.body);
        assert!(got.set_cookies().is_empty(), "never a cookie on a 503");
        let unknown = get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.gone")]).await;
        assert_eq!(unknown.status, 200, "a route naming no member is balanced");
        assert_eq!(m.0.hits(), 0);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn drain_keeps_sessions_disabled_gets_nothing() {
    bounded(async {
        let m = three().await;
        let extra =
            format!("{INSERT}  members:\n    - {{route: n1, status: Drain}}\n    - {{route: n2, status: Disabled}}\n");
        let p = start_proxy(&pool_yaml("shop", &members3(&m), &extra)).await;
        for _ in 0..10 {
            assert_eq!(get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.n1")]).await.route(), "n1");
        }
        for _ in 0..20 {
            assert_eq!(get(p.proxy_addr, "/", &[]).await.route(), "n3", "no new sessions on Drain or Disabled");
        }
        for _ in 0..5 {
            let got = get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.n2")]).await;
            assert_eq!(got.route(), "n3");
            assert_eq!(got.set_cookies(), ["ROUTEID=.n3; Path=/; HttpOnly"]);
        }
        assert_eq!((m.0.hits(), m.1.hits(), m.2.hits()), (10, 0, 25));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn hot_standby_only_when_every_normal_member_is_down() {
    bounded(async {
        let mut a = Member::start("a").await;
        let s = Member::start("s").await;
        let extra = format!("{INSERT}  members:\n    - {{route: s, status: HotStandby}}\n");
        let p = start_proxy(&pool_yaml("shop", &[(a.addr, "a", 1), (s.addr, "s", 1)], &extra)).await;
        for _ in 0..10 {
            assert_eq!(get(p.proxy_addr, "/", &[]).await.route(), "a");
        }
        assert_eq!(s.hits(), 0);
        a.die().await;
        for _ in 0..5 {
            let got = get(p.proxy_addr, "/", &[]).await;
            assert_eq!((got.status.as_u16(), got.route()), (200, "s"));
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn prefix_mode_round_trip_hides_the_prefix_from_the_app() {
    bounded(async {
        let m = three().await;
        let extra = "  sticky:\n    names: [JSESSIONID]\n    cookie: {name: JSESSIONID, mode: Prefix}\n";
        let p = start_proxy(&pool_yaml("shop", &members3(&m), extra)).await;
        let got = get(p.proxy_addr, "/set-cookie?c=JSESSIONID=abc123%3B%20Path=/", &[]).await;
        assert_eq!(got.route(), "n1");
        assert_eq!(got.set_cookies(), ["JSESSIONID=n1~abc123; Path=/"]);
        for _ in 0..10 {
            let got = get(p.proxy_addr, "/", &[("cookie", "x=1; JSESSIONID=n1~abc123")]).await;
            assert_eq!(got.route(), "n1");
        }
        assert_eq!(
            m.0.last_seen().headers.get("cookie").unwrap(),
            "x=1; JSESSIONID=abc123",
            "the app never sees the prefix"
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn rewrite_mode_replaces_the_app_cookie_value() {
    bounded(async {
        let m = three().await;
        let extra = "  sticky:\n    names: [SERVERID]\n    cookie: {name: SERVERID, mode: Rewrite, nocache: false}\n";
        let p = start_proxy(&pool_yaml("shop", &members3(&m), extra)).await;
        let got = get(p.proxy_addr, "/set-cookie?c=SERVERID=placeholder%3B%20Path=/", &[]).await;
        assert_eq!(got.set_cookies(), ["SERVERID=.n1; Path=/"]);
        assert!(got.headers.get("cache-control").is_none(), "nocache: false");
        for _ in 0..5 {
            assert_eq!(get(p.proxy_addr, "/", &[("cookie", "SERVERID=.n1")]).await.route(), "n1");
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn debug_headers_carry_the_balancer_values() {
    bounded(async {
        let m = three().await;
        let extra = format!("{INSERT}    debugHeaders: {{toMember: true, toClient: true}}\n");
        let p = start_proxy(&pool_yaml("shop", &members3(&m), &extra)).await;
        let got = get(p.proxy_addr, "/", &[("cookie", "JSESSIONID=abc.n2")]).await;
        let seen = m.1.last_seen().headers;
        for h in [&got.headers, &seen] {
            assert_eq!(h.get("x-balancer-session-sticky").unwrap(), "JSESSIONID");
            assert_eq!(h.get("x-balancer-session-route").unwrap(), "n2");
            assert_eq!(h.get("x-balancer-name").unwrap(), "default/shop");
            assert_eq!(h.get("x-balancer-worker-name").unwrap(), &format!("http://{}", m.1.addr));
            assert_eq!(h.get("x-balancer-worker-route").unwrap(), "n2");
            assert_eq!(h.get("x-balancer-route-changed").unwrap(), "0");
        }
        let first = get(p.proxy_addr, "/", &[]).await;
        assert_eq!(first.headers.get("x-balancer-route-changed").unwrap(), "1");
        assert_eq!(first.headers.get("x-balancer-session-route").unwrap(), "");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn hostile_input_is_no_route_and_never_reflected() {
    bounded(async {
        let m = three().await;
        let p = start_proxy(&pool_yaml("shop", &members3(&m), INSERT)).await;
        // An encoded CRLF in the URL: no route, balanced, nothing injected.
        let got = get(p.proxy_addr, "/?jsessionid=a.n1%0D%0ASet-Cookie:%20evil=1", &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.set_cookies().len(), 1);
        assert!(got.set_cookies()[0].starts_with("ROUTEID=.n"), "{:?}", got.set_cookies());
        // A forged route only ever selects an existing member.
        for forged in
            ["ROUTEID=.admin", "ROUTEID=..n1", "ROUTEID=.n1;", "ROUTEID=.%6E1", "ROUTEID=\"\"", "ROUTEID=.n1\t"]
        {
            let got = get(p.proxy_addr, "/", &[("cookie", forged)]).await;
            assert_eq!(got.status, 200, "{forged}");
            assert!(["n1", "n2", "n3"].contains(&got.route()));
        }
        // 8 KiB of 200 cookies.
        let many: String = (0..200).map(|i| format!("c{i}={}; ", "v".repeat(40))).collect::<String>() + "ROUTEID=.n3";
        assert!(many.len() > 8192);
        assert_eq!(get(p.proxy_addr, "/", &[("cookie", &many)]).await.route(), "n3");
        // Non-UTF-8 bytes in the cookie.
        let raw = http::HeaderValue::from_bytes(b"ROUTEID=.n\xff2").unwrap();
        let c = client();
        let req = http::Request::builder()
            .uri(format!("http://{}/", p.proxy_addr))
            .header("cookie", raw)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        p.shutdown().await;
    })
    .await;
}

/// Kills the child on drop, so a failed assertion leaves no process behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_line_shows_the_six_balancer_values_as_json() {
    bounded(async {
        let m = three().await;
        let dir = std::env::temp_dir().join(format!("routeid-accesslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pools.yaml");
        std::fs::write(&file, pool_yaml("shop", &members3(&m), INSERT)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_routeid"))
            .args(["--log-format", "json", "standalone", "-f"])
            .arg(&file)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = Child(child);
        let stderr = child.0.stderr.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let proxy: std::net::SocketAddr = loop {
            let v = rx.recv().await.expect("routeid exited before serving");
            if let Some(a) = v.get("proxy").and_then(|a| a.as_str()) {
                break a.parse().unwrap();
            }
        };
        let got = get(proxy, "/cart?jsessionid=abc.n2", &[]).await;
        assert_eq!(got.route(), "n2");
        let line = loop {
            let v = rx.recv().await.expect("no access log line");
            if v.get("target").and_then(|t| t.as_str()) == Some("routeid::access") {
                break v;
            }
        };
        assert_eq!(line["BALANCER_SESSION_STICKY"], "jsessionid");
        assert_eq!(line["BALANCER_SESSION_ROUTE"], "n2");
        assert_eq!(line["BALANCER_NAME"], "default/shop");
        assert_eq!(line["BALANCER_WORKER_NAME"], format!("http://{}", m.1.addr));
        assert_eq!(line["BALANCER_WORKER_ROUTE"], "n2");
        assert_eq!(line["BALANCER_ROUTE_CHANGED"], 0);
        assert_eq!(line["status"], 200);
        assert_eq!(line["path"], "/cart");
        assert_eq!(line["malformed_route"], false);
        assert_eq!(line["bytes_in"], 0);
        assert_eq!(line["bytes_out"], got.body.len());
        assert_eq!(line["attempts"], 1);
        assert_eq!(line["method"], "GET");
        assert_eq!(line["member_address"], m.1.addr.to_string());
        // A malformed value is counted in the line.
        let _ = get(proxy, "/?jsessionid=a.n%00", &[]).await;
        let line = loop {
            let v = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
            if v.get("target").and_then(|t| t.as_str()) == Some("routeid::access") {
                break v;
            }
        };
        assert_eq!(line["malformed_route"], true);
        assert_eq!(line["BALANCER_ROUTE_CHANGED"], 1);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
