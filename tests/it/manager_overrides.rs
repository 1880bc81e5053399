//! Balancer-manager overrides against later edits of the pools file (standalone mode): an
//! override survives reloads that leave its field alone, a file edit of the same field wins, a
//! member that leaves loses it, and it can be cleared through the API and the page. Each is
//! shown, with when and by whom, in the JSON and the page, and logged on reload.

use std::time::{Duration, Instant};

use bytes::Bytes;
use routeid::proxy::ProxySettings;
use serde_json::Value;

use crate::support::*;

const TOKEN: &str = "s3cret";

async fn call(admin: std::net::SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Got {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
    send(&client(), admin, method, path, &headers, Bytes::from(body.to_owned())).await
}

async fn member(admin: std::net::SocketAddr, route: &str) -> Value {
    let v: Value = serde_json::from_str(&get(admin, "/balancer-manager/api/pools", &[]).await.body).unwrap();
    let members = v["pools"][0]["members"].as_array().unwrap().clone();
    members.into_iter().find(|m| m["route"] == route).unwrap_or(Value::Null)
}

/// Sends SIGHUP and waits for the `reloaded` line it brings.
async fn reload(proc: &ProxyProcess) {
    let before = proc.stderr().matches("reloaded").count();
    proc.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc.stderr().matches("reloaded").count() == before {
        assert!(Instant::now() < deadline, "no reload: {}", proc.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_holds_until_the_file_changes_its_field_or_its_member_leaves() {
    bounded(async {
        let (a, b) = (Member::start("a").await, Member::start("b").await);
        let file = temp_file("override-pools.yaml", &pool_yaml("shop", &[(a.addr, "a", 1), (b.addr, "b", 1)], ""));
        let proc = spawn_standalone(&file, &["--no-access-log", "--manager-token", TOKEN]).await;
        let admin = proc.admin_addr;
        let r = call(
            admin,
            "PATCH",
            "/balancer-manager/api/pools/default/shop/members/b",
            Some(TOKEN),
            r#"{"status":"Drain"}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let b_view = member(admin, "b").await;
        assert_eq!(b_view["status"], "Drain");
        let o = &b_view["override"];
        assert_eq!((o["set"]["status"].as_str(), o["file"]["status"].as_str()), (Some("Drain"), Some("Ok")), "{o}");
        assert_eq!(o["madeBy"], "api from 127.0.0.1");
        let at = humantime::parse_rfc3339(o["madeAt"].as_str().unwrap()).expect("madeAt is RFC 3339");
        assert!(at.elapsed().unwrap_or_default() < Duration::from_secs(60));
        assert!(member(admin, "a").await["override"].is_null());

        // A reload that edits another field of b keeps the drain, and says so.
        std::fs::write(&file, pool_yaml("shop", &[(a.addr, "a", 1), (b.addr, "b", 2)], "")).unwrap();
        reload(&proc).await;
        let b_view = member(admin, "b").await;
        assert_eq!((b_view["status"].as_str(), b_view["loadFactor"].as_u64()), (Some("Drain"), Some(2)), "{b_view}");
        assert!(!b_view["override"].is_null());
        let log = proc.stderr();
        assert!(log.contains("manager override kept over the file") && log.contains("member=b"), "{log}");

        // A file edit of the same field is newer: the file wins, the override goes (logged).
        let disabled = "  members:\n    - {route: b, status: Disabled}\n";
        std::fs::write(&file, pool_yaml("shop", &[(a.addr, "a", 1), (b.addr, "b", 2)], disabled)).unwrap();
        reload(&proc).await;
        let b_view = member(admin, "b").await;
        assert_eq!(b_view["status"], "Disabled");
        assert!(b_view["override"].is_null(), "{b_view}");
        assert!(proc.stderr().contains("manager override dropped: the file changed it"), "{}", proc.stderr());

        // A member that leaves loses its override; added again it starts from the file.
        let r = call(
            admin,
            "PATCH",
            "/balancer-manager/api/pools/default/shop/members/a",
            Some(TOKEN),
            r#"{"loadFactor":5}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        std::fs::write(&file, pool_yaml("shop", &[(b.addr, "b", 2)], "")).unwrap();
        reload(&proc).await;
        assert!(proc.stderr().contains("manager override dropped: the member left the pool"), "{}", proc.stderr());
        std::fs::write(&file, pool_yaml("shop", &[(a.addr, "a", 1), (b.addr, "b", 2)], "")).unwrap();
        reload(&proc).await;
        let a_view = member(admin, "a").await;
        assert_eq!(a_view["loadFactor"], 1);
        assert!(a_view["override"].is_null());
    })
    .await;
}

#[tokio::test]
async fn an_override_is_cleared_by_the_api_and_by_the_page() {
    bounded(async {
        let (a, b) = (Member::start("a").await, Member::start("b").await);
        let yaml = pool_yaml("shop", &[(a.addr, "a", 1), (b.addr, "b", 1)], "");
        let settings = ProxySettings { drain_timeout: Duration::from_secs(5), ..Default::default() };
        let p = start_proxy_with_token(&yaml, settings, Some(TOKEN)).await;
        let admin = p.admin_addr;
        let path = "/balancer-manager/api/pools/default/shop/members/a";
        assert_eq!(call(admin, "PATCH", path, Some(TOKEN), r#"{"status":"Drain"}"#).await.status, 200);
        let clear = format!("{path}/override");
        assert_eq!(call(admin, "DELETE", &clear, None, "").await.status, 401, "clearing needs the token");
        let r = call(admin, "DELETE", &clear, Some(TOKEN), "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let a_view = member(admin, "a").await;
        assert_eq!(a_view["status"], "Ok", "the file's value is back");
        assert!(a_view["override"].is_null());
        let again = call(admin, "DELETE", &clear, Some(TOKEN), "").await;
        assert_eq!(again.status, 404);
        assert!(again.body.contains("has no override"), "{}", again.body);
        assert_eq!(
            call(admin, "DELETE", "/balancer-manager/api/pools/default/shop/members/zz/override", Some(TOKEN), "")
                .await
                .status,
            404
        );

        // The page shows the override (what, the file's value, when, who) and a button to clear it.
        let r = call(
            admin,
            "PATCH",
            "/balancer-manager/api/pools/default/shop/members/b",
            Some(TOKEN),
            r#"{"loadFactor":3}"#,
        )
        .await;
        assert_eq!(r.status, 200);
        let page = get(admin, "/balancer-manager", &[]).await.body;
        assert!(
            page.contains("loadFactor 3 (file: loadFactor 1) at ") && page.contains("by api from 127.0.0.1"),
            "{page}"
        );
        assert!(page.contains("id=\"c-default-shop-b\""), "a clear button for b");
        assert!(!page.contains("id=\"c-default-shop-a\""), "none for a member without an override");
        let nonce = page.split("name=nonce value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let form = format!("namespace=default&pool=shop&route=b&action=clear&nonce={nonce}&token={TOKEN}");
        let r = send(
            &client(),
            admin,
            "POST",
            "/balancer-manager",
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from(form),
        )
        .await;
        assert_eq!(r.status, 303, "{}", r.body);
        let b_view = member(admin, "b").await;
        assert_eq!(b_view["loadFactor"], 1);
        assert!(b_view["override"].is_null());
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn healthy_is_false_while_a_member_is_in_error() {
    bounded(async {
        let a = Member::start("a").await;
        let gone = closed_port().await;
        let p = start_proxy(&pool_yaml("shop", &[(gone, "gone", 1), (a.addr, "a", 1)], "")).await;
        for _ in 0..2 {
            assert_eq!(get(p.proxy_addr, "/", &[]).await.route(), "a", "the refused attempt fails over");
        }
        let g = member(p.admin_addr, "gone").await;
        assert_eq!((g["state"].as_str(), g["healthy"].as_bool()), (Some("Error"), Some(false)), "{g}");
        assert_eq!(g["healthCheck"], "off", "no active checks configured");
        let ok = member(p.admin_addr, "a").await;
        assert_eq!((ok["state"].as_str(), ok["healthy"].as_bool()), (Some("Ok"), Some(true)));
        p.shutdown().await;
    })
    .await;
}
