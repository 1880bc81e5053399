//! TLS at the edge, with a real rustls client and certificates made in the test: SNI, default
//! certificate, alerts, ALPN, rotation under load, redirects, HSTS, the `Secure` cookie,
//! trusted proxies and the PROXY protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use routeid::proxy::ProxySettings;
use routeid::proxy::tls::{CertError, SecretRef, TlsData};
use routeid::runtime::{Running, TlsStart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::tls::{TestCert, handshake, https_get};
use crate::support::{Member, bounded, get, pool_yaml, spawn_standalone, temp_file, try_get, wait_for};

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2"];

fn settings() -> ProxySettings {
    ProxySettings { drain_timeout: Duration::from_secs(5), ..Default::default() }
}

async fn start_tls(
    yaml: &str,
    settings: ProxySettings,
    secrets: &[(&str, &str, &TestCert)],
    default: Option<&str>,
) -> Running {
    let pools = routeid::standalone::parse_pools(yaml).unwrap_or_else(|e| panic!("bad test pools: {e:?}"));
    start_tls_pools(pools, settings, secrets, default).await
}

async fn start_tls_pools(
    pools: Vec<routeid::core::PoolConfig>,
    settings: ProxySettings,
    secrets: &[(&str, &str, &TestCert)],
    default: Option<&str>,
) -> Running {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let secrets = secrets.iter().map(|(ns, n, c)| (SecretRef::new(*ns, *n), Ok(c.data.clone()))).collect();
    let tls = TlsStart { listen: any, secrets, default: default.map(|d| d.parse().unwrap()) };
    Running::start_full(
        settings,
        any,
        any,
        pools,
        routeid::admin::AdminState::new(
            routeid::admin::manager::Manager::new(None, routeid::admin::manager::Persistence::InMemory),
            true,
        ),
        Some(tls),
    )
    .await
    .unwrap()
    .0
}

fn tls_pool(name: &str, m: &Member, hosts: &str, secret: &str, extra: &str) -> String {
    let frontend = format!("  frontend:\n    hosts: [{hosts}]\n    tls: [{{secretName: {secret}}}]\n{extra}");
    pool_yaml(name, &[(m.addr, name, 1)], &frontend)
}

async fn metrics(p: &Running) -> String {
    try_get(p.admin_addr, "/metrics", &[]).await.unwrap().body
}

#[tokio::test]
async fn sni_picks_the_exact_host_then_the_longest_wildcard_then_the_default() {
    bounded(async {
        let (ma, mb, mw) = (Member::start("a").await, Member::start("b").await, Member::start("w").await);
        let (a, b, w, d) = (
            TestCert::new(&["a.test"]),
            TestCert::new(&["b.test"]),
            TestCert::new(&["*.w.test"]),
            TestCert::new(&["default.test"]),
        );
        let yaml = [
            tls_pool("a", &ma, "a.test", "a-cert", ""),
            tls_pool("b", &mb, "b.test", "b-cert", ""),
            tls_pool("w", &mw, "\"*.w.test\"", "w-cert", ""),
        ]
        .join("---\n");
        let secrets =
            [("default", "a-cert", &a), ("default", "b-cert", &b), ("default", "w-cert", &w), ("ops", "d", &d)];
        let p = start_tls(&yaml, settings(), &secrets, Some("ops/d")).await;
        let addr = p.tls_addr.unwrap();
        for (sni, want, route) in
            [("a.test", &a, "a"), ("b.test", &b, "b"), ("x.w.test", &w, "w"), ("deep.x.w.test", &d, "w")]
        {
            let shown = https_get(addr, Some(sni), H1, sni, "/", &[]).await.unwrap();
            assert!(shown.cert == want.der, "{sni} got another certificate");
            assert_eq!(
                (shown.status.as_u16(), shown.body.starts_with(&format!("route={route}"))),
                (200, true),
                "{sni}"
            );
        }
        assert_eq!(handshake(addr, None).await.unwrap(), d.der, "no SNI: the default certificate");
        assert_eq!(handshake(addr, Some("other.test")).await.unwrap(), d.der, "unknown SNI: the default");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_sni_without_a_default_is_refused_with_an_alert_and_counted() {
    bounded(async {
        let m = Member::start("a").await;
        let a = TestCert::new(&["a.test"]);
        let p =
            start_tls(&tls_pool("a", &m, "a.test", "a-cert", ""), settings(), &[("default", "a-cert", &a)], None).await;
        let addr = p.tls_addr.unwrap();
        let err = handshake(addr, Some("b.test")).await.unwrap_err();
        assert!(err.contains("AccessDenied") || err.contains("alert"), "{err}");
        assert!(handshake(addr, None).await.is_err(), "no SNI and no default: refused too");
        // Never another tenant's certificate; and the others keep working.
        assert_eq!(handshake(addr, Some("a.test")).await.unwrap(), a.der);
        let text = metrics(&p).await;
        assert!(text.contains("routeid_tls_handshake_errors_total{reason=\"no_certificate\"} 2"), "{text}");
        assert!(
            text.contains("routeid_tls_certificate_expiry_timestamp_seconds{namespace=\"default\",secret=\"a-cert\"}")
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn h2_and_http1_over_tls_route_alike_and_say_https() {
    bounded(async {
        let m = Member::start("a").await;
        let a = TestCert::new(&["a.test"]);
        let sticky = "  sticky:\n    cookie: {name: ROUTEID}\n";
        let p =
            start_tls(&tls_pool("a", &m, "a.test", "a-cert", sticky), settings(), &[("default", "a-cert", &a)], None)
                .await;
        for (alpn, want) in [(H2, b"h2".as_slice()), (H1, b"http/1.1".as_slice())] {
            let shown =
                https_get(p.tls_addr.unwrap(), Some("a.test"), alpn, "a.test", "/x", &[("x-forwarded-proto", "http")])
                    .await
                    .unwrap();
            assert_eq!(shown.alpn.as_deref(), Some(want));
            assert_eq!(shown.status, 200);
            let seen = m.last_seen();
            assert_eq!(seen.headers["x-forwarded-proto"], "https", "a client cannot downgrade it");
            let cookie = shown.headers["set-cookie"].to_str().unwrap();
            assert!(cookie.contains("; Secure"), "Auto over TLS: {cookie}");
        }
        // The same pool over plain HTTP: no Secure with Auto.
        let got = get(p.proxy_addr, "/x", &[("host", "a.test")]).await;
        assert!(!got.set_cookies()[0].contains("Secure"), "{:?}", got.set_cookies());
        assert_eq!(m.last_seen().headers["x-forwarded-proto"], "http");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn https_redirect_answers_plain_http_and_hsts_goes_on_https_only() {
    bounded(async {
        let m = Member::start("a").await;
        let a = TestCert::new(&["a.test"]);
        let extra = "    httpsRedirect: true\n    hsts: {maxAge: 600, includeSubDomains: true}\n";
        let p =
            start_tls(&tls_pool("a", &m, "a.test", "a-cert", extra), settings(), &[("default", "a-cert", &a)], None)
                .await;
        let got = get(p.proxy_addr, "/cart?id=7", &[("host", "a.test:8080")]).await;
        assert_eq!(got.status, 308);
        assert_eq!(got.headers["location"], "https://a.test/cart?id=7");
        assert!(!got.headers.contains_key("strict-transport-security"));
        assert_eq!(m.hits(), 0, "the member never saw the plain request");
        let shown = https_get(p.tls_addr.unwrap(), Some("a.test"), H1, "a.test", "/cart", &[]).await.unwrap();
        assert_eq!(shown.status, 200);
        assert_eq!(shown.headers["strict-transport-security"], "max-age=600; includeSubDomains");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn https_redirect_refuses_a_host_that_would_send_the_client_elsewhere() {
    bounded(async {
        let m = Member::start("any").await;
        let p = start_tls(
            &pool_yaml("any", &[(m.addr, "any", 1)], "  frontend:\n    httpsRedirect: true\n"),
            settings(),
            &[],
            None,
        )
        .await;
        for host in ["shop.example@evil.example", "shop.example/evil", "[zz]"] {
            let got = get(p.proxy_addr, "/x", &[("host", host)]).await;
            assert_eq!(got.status, 400, "{host}: {got:?}");
            assert!(!got.headers.contains_key("location"), "{host}");
        }
        let got = get(p.proxy_addr, "/x", &[("host", "shop.example:80")]).await;
        assert_eq!(
            (got.status.as_u16(), &got.headers["location"]),
            (308, &"https://shop.example/x".parse::<http::HeaderValue>().unwrap())
        );
        assert_eq!(m.hits(), 0, "nothing was served in clear");
        p.shutdown().await;
    })
    .await;
}

/// Two tenants: `evil` serves any host, `bank` serves bank.test with its own certificate.
fn catch_all_and_bank(evil: &Member, bank: &Member, evil_tls: &str) -> String {
    format!(
        "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: evil, namespace: evil}}\nspec:\n  frontend:\n{evil_tls}  backend:\n    members:\n      - {{address: \"{}\", route: e}}\n---\napiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: bank, namespace: bank}}\nspec:\n  frontend:\n    hosts: [bank.test]\n    tls: [{{secretName: bank-cert}}]\n  backend:\n    members:\n      - {{address: \"{}\", route: b}}\n",
        evil.addr, bank.addr
    )
}

#[tokio::test]
async fn a_catch_all_pool_cannot_put_its_certificate_on_another_tenants_host() {
    bounded(async {
        let (me, mb) = (Member::start("evil").await, Member::start("bank").await);
        let (evil, bank) = (TestCert::new(&["bank.test"]), TestCert::new(&["bank.test"]));
        // Refused by validation: a pool serving any host names no certificate.
        let claim = "    tls: [{hosts: [bank.test], secretName: evil-cert}]\n";
        let errs = routeid::standalone::parse_pools(&catch_all_and_bank(&me, &mb, claim)).unwrap_err();
        assert!(errs.iter().any(|e| e.contains("spec.frontend.tls[0]") && e.contains("serves any host")), "{errs:?}");
        // And a config that skipped validation still cannot: the host routes to another namespace.
        let mut pools =
            routeid::standalone::parse_pools(&catch_all_and_bank(&me, &mb, "    httpsRedirect: false\n")).unwrap();
        pools[0].tls = vec![routeid::core::config::TlsEntry {
            hosts: vec![routeid::core::config::HostMatch::Exact("bank.test".into())],
            secret_name: "evil-cert".into(),
            namespace: None,
        }];
        let secrets = [("evil", "evil-cert", &evil), ("bank", "bank-cert", &bank)];
        let p = start_tls_pools(pools, settings(), &secrets, None).await;
        assert_eq!(handshake(p.tls_addr.unwrap(), Some("bank.test")).await.unwrap(), bank.der);
        let snap = p.proxy.snapshot();
        let said = |ns: &str| snap.tls.problems.iter().find(|(id, _)| id.namespace == ns).map(|(_, v)| v.clone());
        assert_eq!(said("bank"), Some(Vec::new()), "bank's own certificate is not in conflict");
        assert!(said("evil").is_some_and(|v| v.iter().any(|p| p.reason == "HostOfAnotherNamespace")));
        assert_eq!(get(p.proxy_addr, "/", &[("host", "bank.test")]).await.body, "route=bank path=/");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_wildcard_of_one_tenant_is_never_shown_for_an_exact_host_of_another() {
    bounded(async {
        let (ma, ma2, mb) = (Member::start("a").await, Member::start("a2").await, Member::start("bank").await);
        let (wild, own, d) = (TestCert::new(&["*.example.test"]), TestCert::new(&["x"]), TestCert::new(&["default"]));
        let pool = |name: &str, ns: &str, hosts: &str, tls: &str, m: &Member| {
            format!(
                "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  frontend:\n    hosts: [{hosts}]\n{tls}  backend:\n    members:\n      - {{address: \"{}\", route: {name}}}\n",
                m.addr
            )
        };
        let yaml = [
            pool("a", "tenant-a", "\"*.example.test\"", "    tls: [{secretName: wild}]\n", &ma),
            pool("a2", "tenant-a", "shop.example.test", "", &ma2),
            pool("bank", "tenant-b", "bank.example.test", "", &mb),
        ]
        .join("---\n");
        let secrets = [("tenant-a", "wild", &wild), ("ops", "own", &own), ("ops", "d", &d)];
        let p = start_tls(&yaml, settings(), &secrets[..1], None).await;
        let tls = p.tls_addr.unwrap();
        assert!(handshake(tls, Some("bank.example.test")).await.is_err(), "tenant-b's host gets no tenant-a certificate");
        assert_eq!(get(p.proxy_addr, "/", &[("host", "bank.example.test")]).await.body, "route=bank path=/");
        assert_eq!(handshake(tls, Some("shop.example.test")).await.unwrap(), wild.der, "same tenant: the wildcard");
        assert_eq!(handshake(tls, Some("any.example.test")).await.unwrap(), wild.der);
        assert!(handshake(tls, Some("a.b.example.test")).await.is_err(), "a wildcard certificate covers one label");
        p.shutdown().await;
        // With a default certificate, the other tenant's host gets the default.
        let p = start_tls(&yaml, settings(), &[secrets[0], secrets[2]], Some("ops/d")).await;
        assert_eq!(handshake(p.tls_addr.unwrap(), Some("bank.example.test")).await.unwrap(), d.der);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_changed_secret_serves_within_two_seconds_under_load_without_a_failed_request() {
    bounded(async {
        let m = Member::start("a").await;
        let (old, new) = (TestCert::new(&["a.test"]), TestCert::new(&["a.test"]));
        let p = start_tls(&tls_pool("a", &m, "a.test", "a-cert", ""), settings(), &[("default", "a-cert", &old)], None)
            .await;
        let addr = p.tls_addr.unwrap();
        let (stop, ok, failed) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let load: Vec<_> = (0..4)
            .map(|_| {
                let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match https_get(addr, Some("a.test"), H1, "a.test", "/", &[]).await {
                            Ok(s) if s.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        wait_for(Duration::from_secs(5), "load running", || ok.load(Ordering::Relaxed) > 20).await;
        let changed = tokio::time::Instant::now();
        let problems = p.proxy.update_tls_secrets(&[(SecretRef::new("default", "a-cert"), Ok(new.data.clone()))]);
        assert!(problems.is_empty());
        loop {
            if handshake(addr, Some("a.test")).await.unwrap() == new.der {
                break;
            }
            assert!(changed.elapsed() < Duration::from_secs(2), "the new certificate was not served within 2 s");
        }
        let before = ok.load(Ordering::Relaxed);
        wait_for(Duration::from_secs(5), "more load after the change", || ok.load(Ordering::Relaxed) > before + 20)
            .await;
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.await.unwrap();
        }
        assert_eq!(failed.load(Ordering::Relaxed), 0, "{} requests passed", ok.load(Ordering::Relaxed));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_broken_secret_keeps_the_last_good_certificate_and_says_why() {
    bounded(async {
        let m = Member::start("a").await;
        let (good, other) = (TestCert::new(&["a.test"]), TestCert::new(&["a.test"]));
        let p =
            start_tls(&tls_pool("a", &m, "a.test", "a-cert", ""), settings(), &[("default", "a-cert", &good)], None)
                .await;
        let r = SecretRef::new("default", "a-cert");
        let mismatch = TlsData::new(other.data.crt.clone(), good.data.key.clone());
        let problems = p.proxy.update_tls_secrets(&[(r.clone(), Ok(mismatch))]);
        assert_eq!(problems, [(r.clone(), CertError::KeyMismatch)]);
        assert_eq!(handshake(p.tls_addr.unwrap(), Some("a.test")).await.unwrap(), good.der, "last good keeps serving");
        let snap = p.proxy.snapshot();
        let said = &snap.tls.problems[&snap.table.pools()[0].config.id];
        assert_eq!(said.len(), 1);
        assert_eq!(said[0].reason, "KeyMismatch");
        assert!(said[0].message.contains("Secret default/a-cert: tls.key does not belong"), "{said:?}");
        assert!(said[0].message.contains("last good certificate keeps serving"), "{said:?}");
        assert!(!said[0].message.contains("BEGIN"), "no Secret content in messages");
        p.proxy.update_tls_secrets(&[(r, Err(CertError::Missing))]);
        assert_eq!(handshake(p.tls_addr.unwrap(), Some("a.test")).await.unwrap(), good.der);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_pool_cannot_use_a_secret_of_another_namespace() {
    bounded(async {
        let m = Member::start("a").await;
        let theirs = TestCert::new(&["a.test"]);
        let yaml = tls_pool("a", &m, "a.test", "shared", "");
        let p = start_tls(&yaml, settings(), &[("other", "shared", &theirs)], None).await;
        assert!(handshake(p.tls_addr.unwrap(), Some("a.test")).await.is_err(), "other/shared is not default/shared");
        let snap = p.proxy.snapshot();
        let said = &snap.tls.problems[&snap.table.pools()[0].config.id];
        assert!(said[0].message.contains("Secret default/shared: the Secret does not exist"), "{said:?}");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_and_counted_without_disturbing_others() {
    bounded(async {
        let m = Member::start("a").await;
        let a = TestCert::new(&["a.test"]);
        let s = ProxySettings { handshake_timeout: Duration::from_millis(300), ..settings() };
        let p = start_tls(&tls_pool("a", &m, "a.test", "a-cert", ""), s, &[("default", "a-cert", &a)], None).await;
        let mut silent = TcpStream::connect(p.tls_addr.unwrap()).await.unwrap();
        let mut garbage = TcpStream::connect(p.tls_addr.unwrap()).await.unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
        assert_eq!(https_get(p.tls_addr.unwrap(), Some("a.test"), H1, "a.test", "/", &[]).await.unwrap().status, 200);
        let mut buf = [0u8; 64];
        assert_eq!(silent.read(&mut buf).await.unwrap_or(0), 0, "closed after the handshake timeout");
        let _ = garbage.read(&mut buf).await;
        let text = metrics(&p).await;
        assert!(text.contains("routeid_tls_handshake_errors_total{reason=\"timeout\"} 1"), "{text}");
        assert!(text.contains("routeid_tls_handshake_errors_total{reason=\"protocol\"} 1"), "{text}");
        p.shutdown().await;
    })
    .await;
}

/// Writes `bytes` (then ends the sending side when `close` is set) and reads all the answer.
async fn raw_exchange_closing(addr: SocketAddr, bytes: &[u8], close: bool) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    raw_exchange_closing(addr, bytes, false).await
}

#[tokio::test]
async fn trusted_proxies_are_believed_and_others_are_not() {
    bounded(async {
        let m = Member::start("a").await;
        let sticky = "  sticky:\n    cookie: {name: ROUTEID}\n";
        let yaml = pool_yaml("a", &[(m.addr, "a", 1)], sticky);
        let spoof = [
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
        ];
        // Untrusted: replaced.
        let p = crate::support::start_proxy(&yaml).await;
        let got = get(p.proxy_addr, "/", &spoof).await;
        let seen = m.last_seen();
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        assert_ne!(seen.headers["x-forwarded-host"], "evil.test");
        assert!(!got.set_cookies()[0].contains("Secure"), "a client's own X-Forwarded-Proto is not believed");
        p.shutdown().await;
        // Trusted: appended and kept, and its https makes the cookie Secure.
        let s = ProxySettings { trusted_proxies: "127.0.0.0/8".parse().unwrap(), ..settings() };
        let p = crate::support::start_proxy_with(&yaml, s).await;
        let got = get(p.proxy_addr, "/", &spoof).await;
        let seen = m.last_seen();
        assert_eq!(seen.headers["x-forwarded-for"], "6.6.6.6, 203.0.113.9, 127.0.0.1");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.headers["x-forwarded-host"], "evil.test");
        assert!(got.set_cookies()[0].contains("; Secure"), "{:?}", got.set_cookies());
        p.shutdown().await;
    })
    .await;
}

fn v2_header(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(src);
    h.extend([127, 0, 0, 1]);
    h.extend(port.to_be_bytes());
    h.extend(80u16.to_be_bytes());
    h
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client_and_bad_headers_close() {
    bounded(async {
        let m = Member::start("a").await;
        let yaml = pool_yaml("a", &[(m.addr, "a", 1)], "");
        let s = ProxySettings { trusted_proxies: "127.0.0.1".parse().unwrap(), proxy_protocol: true, ..settings() };
        let p = crate::support::start_proxy_with(&yaml, s).await;
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        let v1 = [b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\n".as_slice(), req].concat();
        assert!(raw_exchange(p.proxy_addr, &v1).await.starts_with("HTTP/1.1 200"));
        assert_eq!(m.last_seen().headers["x-forwarded-for"], "203.0.113.7");
        let v2 = [v2_header([198, 51, 100, 9], 40000).as_slice(), req].concat();
        assert!(raw_exchange(p.proxy_addr, &v2).await.starts_with("HTTP/1.1 200"));
        assert_eq!(m.last_seen().headers["x-forwarded-for"], "198.51.100.9");
        let hits = m.hits();
        assert_eq!(raw_exchange(p.proxy_addr, req).await, "", "no header: closed");
        let cut = b"PROXY TCP4 203.0.113.7 127.0";
        assert_eq!(raw_exchange_closing(p.proxy_addr, cut, true).await, "", "truncated: closed");
        let cut = &v2_header([1, 2, 3, 4], 1)[..20];
        assert_eq!(raw_exchange_closing(p.proxy_addr, cut, true).await, "", "truncated v2: closed");
        assert_eq!(m.hits(), hits);
        let text = metrics(&p).await;
        assert!(text.contains("routeid_proxy_protocol_rejected_total{reason=\"invalid\"} 1"), "{text}");
        assert!(text.contains("routeid_proxy_protocol_rejected_total{reason=\"truncated\"} 2"), "{text}");
        p.shutdown().await;
        // From a peer not in --trusted-proxies even a valid header closes the connection.
        let s = ProxySettings { trusted_proxies: "10.0.0.0/8".parse().unwrap(), proxy_protocol: true, ..settings() };
        let p = crate::support::start_proxy_with(&yaml, s).await;
        assert_eq!(raw_exchange(p.proxy_addr, &v1).await, "");
        assert_eq!(m.hits(), hits);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn proxy_protocol_works_in_front_of_tls() {
    bounded(async {
        let m = Member::start("a").await;
        let a = TestCert::new(&["a.test"]);
        let s = ProxySettings { trusted_proxies: "127.0.0.1".parse().unwrap(), tls_proxy_protocol: true, ..settings() };
        let p = start_tls(&tls_pool("a", &m, "a.test", "a-cert", ""), s, &[("default", "a-cert", &a)], None).await;
        // A TLS client behind a PROXY v1 header: write the header, then hand the socket to rustls.
        let mut tcp = TcpStream::connect(p.tls_addr.unwrap()).await.unwrap();
        tcp.write_all(b"PROXY TCP4 203.0.113.8 127.0.0.1 5000 443\r\n").await.unwrap();
        let cfg = crate::support::tls::client_config(H1, true);
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
        assert_eq!(m.last_seen().headers["x-forwarded-for"], "203.0.113.8");
        assert_eq!(m.last_seen().headers["x-forwarded-proto"], "https");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn standalone_serves_https_from_a_secret_document_and_reloads_it() {
    bounded(async {
        let m = Member::start("a").await;
        let (one, two) = (TestCert::new(&["a.test"]), TestCert::new(&["a.test"]));
        let pool = tls_pool("a", &m, "a.test", "a-cert", "");
        let file = temp_file("tls-pools", &format!("{pool}---\n{}", one.secret_yaml("default", "a-cert")));
        let tls = crate::support::free_port().to_string();
        let proc = spawn_standalone(&file, &["--tls-listen", &tls]).await;
        let addr: SocketAddr = tls.parse().unwrap();
        assert_eq!(https_get(addr, Some("a.test"), H2, "a.test", "/", &[]).await.unwrap().cert, one.der);
        // A broken Secret: the reload is refused, the old certificate keeps serving.
        let broken = one.secret_yaml("default", "a-cert").replace("BEGIN PRIVATE KEY", "BEGIN NOTHING");
        std::fs::write(&file, format!("{pool}---\n{broken}")).unwrap();
        proc.signal("HUP");
        wait_for(Duration::from_secs(5), "the refused reload logged", || proc.stderr().contains("reload refused"))
            .await;
        assert!(proc.stderr().contains("Secret default/a-cert"), "{}", proc.stderr());
        assert!(!proc.stderr().contains("BEGIN"), "no Secret content in logs");
        assert_eq!(handshake(addr, Some("a.test")).await.unwrap(), one.der);
        // A new certificate: served after SIGHUP.
        std::fs::write(&file, format!("{pool}---\n{}", two.secret_yaml("default", "a-cert"))).unwrap();
        proc.signal("HUP");
        wait_for(Duration::from_secs(5), "the reload logged", || proc.stderr().contains("reloaded")).await;
        assert_eq!(handshake(addr, Some("a.test")).await.unwrap(), two.der);
    })
    .await;
}

#[tokio::test]
async fn standalone_tls_listen_without_a_secret_is_a_startup_error() {
    bounded(async {
        let m = Member::start("a").await;
        let file = temp_file("no-secret", &pool_yaml("a", &[(m.addr, "a", 1)], ""));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_routeid"))
            .args(["standalone", "-f"])
            .arg(&file)
            .args(["--tls-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--tls-listen needs a certificate") && err.contains("kubernetes.io/tls"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn proxy_protocol_without_trusted_proxies_is_a_startup_error() {
    bounded(async {
        let m = Member::start("a").await;
        let file = temp_file("pp-untrusted", &pool_yaml("a", &[(m.addr, "a", 1)], ""));
        for flag in ["--proxy-protocol", "--tls-proxy-protocol"] {
            // Bounded: a routeid that starts anyway is killed when the wait gives up.
            let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_routeid"))
                .args(["standalone", "-f"])
                .arg(&file)
                .args([flag, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(Duration::from_secs(5), run).await.expect("routeid started").unwrap();
            assert_eq!(out.status.code(), Some(2), "{flag}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(&format!("{flag} needs --trusted-proxies")), "{err}");
        }
    })
    .await;
}

mod controller {
    //! The controller: Secrets from the (fake) API server, rotation, broken Secrets, namespaces.

    use super::*;
    use crate::support::cluster::*;
    use crate::support::fake_apiserver::FakeApiServer;
    use serde_json::{Value, json};

    fn tls_frontend() -> Value {
        json!({"frontend": {"hosts": ["a.test"], "tls": [{"secretName": "a-cert"}]}})
    }

    fn events(api: &FakeApiServer, pool: &str) -> Vec<(String, String)> {
        api.objects("events.k8s.io", "events")
            .iter()
            .filter(|e| e.pointer("/regarding/name").and_then(Value::as_str) == Some(pool))
            .map(|e| {
                let s = |p: &str| e.pointer(p).and_then(Value::as_str).unwrap_or("").to_owned();
                (s("/reason"), s("/note"))
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewed_secret_serves_within_two_seconds_under_load_and_a_broken_one_keeps_the_last_good() {
        bounded(async {
            let api = FakeApiServer::start().await;
            let kube = Kube::new(&api);
            let m = Member::start("shop-0").await;
            kube.put_slice(&slice("shop", "shop-0", m.addr, Cond::Ready)).await;
            let (one, two) = (TestCert::new(&["a.test"]), TestCert::new(&["a.test"]));
            kube.put_tls_secret(NS, "a-cert", &one.data).await;
            kube.create_pool(&pool("shop", "shop", tls_frontend())).await;
            let r = Replica::start_tls(&api, options("r1")).await;
            let addr = r.running.tls_addr.unwrap();
            eventually(WAIT, "the Secret's certificate served", || async {
                handshake(addr, Some("a.test")).await.is_ok_and(|c| c == one.der)
            })
            .await;
            eventually(WAIT, "TLSReady=True", || async {
                kube.condition("shop", "TLSReady").await.is_some_and(|(s, _, _)| s == "True")
            })
            .await;

            // cert-manager renews the Secret while clients keep coming.
            let (stop, ok, failed) =
                (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let load: Vec<_> = (0..4)
                .map(|_| {
                    let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            match https_get(addr, Some("a.test"), H1, "a.test", "/", &[]).await {
                                Ok(s) if s.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                                _ => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    })
                })
                .collect();
            wait_for(Duration::from_secs(5), "load running", || ok.load(Ordering::Relaxed) > 20).await;
            let changed = tokio::time::Instant::now();
            kube.put_tls_secret(NS, "a-cert", &two.data).await;
            while handshake(addr, Some("a.test")).await.unwrap() != two.der {
                assert!(
                    changed.elapsed() < Duration::from_secs(2),
                    "the renewed certificate was not served within 2 s"
                );
            }
            let took = changed.elapsed();
            let before = ok.load(Ordering::Relaxed);
            wait_for(Duration::from_secs(5), "load after the change", || ok.load(Ordering::Relaxed) > before + 20)
                .await;
            stop.store(true, Ordering::Relaxed);
            for t in load {
                t.await.unwrap();
            }
            assert_eq!(failed.load(Ordering::Relaxed), 0, "{} requests passed", ok.load(Ordering::Relaxed));
            eprintln!("renewed certificate served after {took:?}");

            // A key that does not match: the last good certificate stays, the pool says why.
            let broken = TlsData::new(one.data.crt.clone(), two.data.key.clone());
            kube.put_tls_secret(NS, "a-cert", &broken).await;
            eventually(WAIT, "TLSReady=False", || async {
                kube.condition("shop", "TLSReady")
                    .await
                    .is_some_and(|(s, reason, _)| s == "False" && reason == "KeyMismatch")
            })
            .await;
            let (_, _, message) = kube.condition("shop", "TLSReady").await.unwrap();
            assert!(
                message.contains("Secret web/a-cert") && message.contains("last good certificate keeps serving"),
                "{message}"
            );
            assert_eq!(handshake(addr, Some("a.test")).await.unwrap(), two.der);
            eventually(WAIT, "a KeyMismatch Event", || async {
                events(&api, "shop").iter().any(|(reason, note)| reason == "KeyMismatch" && note.contains("web/a-cert"))
            })
            .await;
            for (_, note) in events(&api, "shop") {
                assert!(!note.contains("BEGIN"), "no Secret content in Events");
            }
            let st = serde_json::to_string(&kube.status("shop").await.unwrap()).unwrap();
            assert!(!st.contains("BEGIN"));
            r.stop().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_secret_not_read_yet_is_pending_not_missing_and_readiness_waits_for_it() {
        bounded(async {
            let api = FakeApiServer::start().await;
            let kube = Kube::new(&api);
            let m = Member::start("shop-0").await;
            kube.put_slice(&slice("shop", "shop-0", m.addr, Cond::Ready)).await;
            let (one, two) = (TestCert::new(&["a.test"]), TestCert::new(&["b.test"]));
            kube.put_tls_secret(NS, "a-cert", &one.data).await;
            kube.put_tls_secret(NS, "b-cert", &two.data).await;
            kube.create_pool(&pool("shop", "shop", tls_frontend())).await;
            let r = Replica::start_tls(&api, options("r1")).await;
            let tls = r.running.tls_addr.unwrap();
            eventually(WAIT, "/readyz 200", || async {
                try_get(r.running.admin_addr, "/readyz", &[]).await.is_ok_and(|g| g.status == 200)
            })
            .await;
            // Ready means the Secret is read: its certificate serves at once.
            assert_eq!(handshake(tls, Some("a.test")).await.unwrap(), one.der);
            // A new pool naming a Secret that exists: no SecretNotFound on the way.
            kube.put_slice(&slice("b", "b-0", m.addr, Cond::Ready)).await;
            let b = json!({"frontend": {"hosts": ["b.test"], "tls": [{"secretName": "b-cert"}]}});
            kube.create_pool(&pool("b", "b", b)).await;
            eventually(WAIT, "b.test served", || async {
                handshake(tls, Some("b.test")).await.is_ok_and(|c| c == two.der)
            })
            .await;
            eventually(WAIT, "TLSReady=True on b", || async {
                kube.condition("b", "TLSReady").await.is_some_and(|(s, _, _)| s == "True")
            })
            .await;
            // An Event queued after any TLS Event of this publication (the writer keeps order).
            eventually(WAIT, "MemberAdded on b", || async {
                events(&api, "b").iter().any(|(r, _)| r == "MemberAdded")
            })
            .await;
            let evs = events(&api, "b");
            assert!(!evs.iter().any(|(r, _)| r == "SecretNotFound" || r == "SecretPending"), "{evs:?}");
            assert!(!events(&api, "shop").iter().any(|(r, _)| r == "SecretNotFound"));
            r.stop().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_never_gets_a_secret_of_another_namespace() {
        bounded(async {
            let api = FakeApiServer::start().await;
            let kube = Kube::new(&api);
            let m = Member::start("shop-0").await;
            kube.put_slice(&slice("shop", "shop-0", m.addr, Cond::Ready)).await;
            let theirs = TestCert::new(&["a.test"]);
            kube.put_tls_secret("other", "a-cert", &theirs.data).await;
            kube.create_pool(&pool("shop", "shop", tls_frontend())).await;
            let r = Replica::start_tls(&api, options("r1")).await;
            eventually(WAIT, "TLSReady=False, SecretNotFound", || async {
                kube.condition("shop", "TLSReady")
                    .await
                    .is_some_and(|(s, reason, _)| s == "False" && reason == "SecretNotFound")
            })
            .await;
            let (_, _, message) = kube.condition("shop", "TLSReady").await.unwrap();
            assert!(message.contains("Secret web/a-cert: the Secret does not exist"), "{message}");
            assert!(handshake(r.running.tls_addr.unwrap(), Some("a.test")).await.is_err());
            // Created in the right namespace, it serves.
            let ours = TestCert::new(&["a.test"]);
            kube.put_tls_secret(NS, "a-cert", &ours.data).await;
            eventually(WAIT, "our certificate served", || async {
                handshake(r.running.tls_addr.unwrap(), Some("a.test")).await.is_ok_and(|c| c == ours.der)
            })
            .await;
            r.stop().await;
        })
        .await;
    }
}

mod members {
    //! `backend.tls`: members that speak only HTTPS, verified with a CA from a Secret.

    use super::*;
    use crate::support::tls::{TestCa, https_member};

    fn pool(addr: SocketAddr, tls: &str) -> String {
        let m = format!("      - {{address: \"{addr}\", route: m}}\n");
        format!(
            "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: tomcat}}\nspec:\n  backend:\n    tls: {tls}\n    members:\n{m}"
        )
    }

    async fn start(yaml: &str, secrets: Vec<(SecretRef, Result<TlsData, CertError>)>) -> Running {
        let pools = routeid::standalone::parse_pools(yaml).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let tls = TlsStart { listen: any, secrets, default: None };
        Running::start_full(
            settings(),
            any,
            any,
            pools,
            routeid::admin::AdminState::new(
                routeid::admin::manager::Manager::new(None, routeid::admin::manager::Persistence::InMemory),
                true,
            ),
            Some(tls),
        )
        .await
        .unwrap()
        .0
    }

    #[tokio::test]
    async fn https_members_are_verified_with_the_ca_and_refused_without_it() {
        bounded(async {
            let (ca, other) = (TestCa::new(), TestCa::new());
            let (addr, member) = https_member("m", &ca.leaf(&["member.test"])).await;
            let yaml = pool(addr, "{caSecretName: member-ca, serverName: member.test}");
            let r = SecretRef::new("default", "member-ca");
            let p = start(&yaml, vec![(r.clone(), Ok(ca.secret_data()))]).await;
            let got = get(p.proxy_addr, "/", &[]).await;
            assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "route=m proto=http"));
            assert!(p.proxy.snapshot().tls.problems.values().all(Vec::is_empty), "TLSReady=True");
            p.shutdown().await;

            // A CA that did not sign the member's certificate: the member is refused.
            let p = start(&yaml, vec![(r.clone(), Ok(other.secret_data()))]).await;
            let got = get(p.proxy_addr, "/", &[]).await;
            assert!(got.status.is_server_error(), "{got:?}");
            assert!(!got.body.starts_with("route="));
            p.shutdown().await;

            // The wrong name: refused too.
            let wrong = pool(addr, "{caSecretName: member-ca, serverName: other.test}");
            let p = start(&wrong, vec![(r.clone(), Ok(ca.secret_data()))]).await;
            assert!(get(p.proxy_addr, "/", &[]).await.status.is_server_error());
            p.shutdown().await;

            // insecureSkipVerify: encrypted, unverified.
            let p = start(&pool(addr, "{insecureSkipVerify: true}"), Vec::new()).await;
            assert_eq!(get(p.proxy_addr, "/", &[]).await.status, 200);
            p.shutdown().await;
            member.abort();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_controller_watches_the_backend_ca_secret() {
        use crate::support::cluster::*;
        use crate::support::fake_apiserver::FakeApiServer;
        use serde_json::json;
        bounded(async {
            let api = FakeApiServer::start().await;
            let kube = Kube::new(&api);
            let ca = TestCa::new();
            let (addr, member) = https_member("m", &ca.leaf(&["member.test"])).await;
            kube.put_slice(&slice("shop", "shop-0", addr, Cond::Ready)).await;
            let mut secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "member-ca", "namespace": NS},
            }))
            .unwrap();
            secret.data = Some([("ca.crt".to_owned(), k8s_openapi::ByteString(ca.pem.clone()))].into());
            let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(api.client(), NS);
            let apply = kube::api::PatchParams::apply("test").force();
            secrets.patch("member-ca", &apply, &kube::api::Patch::Apply(&secret)).await.unwrap();
            let tls = json!({"backend": {"tls": {"caSecretName": "member-ca", "serverName": "member.test"}}});
            kube.create_pool(&pool("shop", "shop", tls)).await;
            let r = Replica::start(&api, options("r1")).await;
            eventually(WAIT, "/readyz 200", || async {
                try_get(r.running.admin_addr, "/readyz", &[]).await.is_ok_and(|g| g.status == 200)
            })
            .await;
            let got = get(r.proxy(), "/", &[]).await;
            assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "route=m proto=http"));
            eventually(WAIT, "TLSReady=True", || async {
                kube.condition("shop", "TLSReady").await.is_some_and(|(s, _, _)| s == "True")
            })
            .await;
            r.stop().await;
            member.abort();
        })
        .await;
    }

    /// The member configuration `p` publishes for its only pool.
    fn member_config(p: &Running) -> Arc<rustls::ClientConfig> {
        match &p.proxy.snapshot().tls.backend[0] {
            routeid::proxy::tls::UpstreamTls::Tls { config, .. } => Arc::clone(config),
            other => panic!("not TLS to the members: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_pooled_plain_connection_is_not_reused_once_the_pool_asks_for_tls() {
        bounded(async {
            let m = Member::start("m").await;
            let plain = pool_yaml("p", &[(m.addr, "m", 1)], "");
            let p = start(&plain, Vec::new()).await;
            assert_eq!(get(p.proxy_addr, "/", &[]).await.status, 200);
            let hits = m.hits();
            let tls = plain.replace("  backend:\n", "  backend:\n    tls: {insecureSkipVerify: true}\n");
            p.proxy.publish(routeid::standalone::parse_pools(&tls).unwrap());
            for _ in 0..5 {
                let got = get(p.proxy_addr, "/", &[]).await;
                assert!(got.status.is_server_error(), "a plain member cannot answer over TLS: {got:?}");
            }
            assert_eq!(m.hits(), hits, "not one request went out in clear text");
            p.shutdown().await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_publication_keeps_the_member_tls_configuration_unless_its_setting_changes() {
        bounded(async {
            let (addr, member) = https_member("m", &TestCa::new().leaf(&["member.test"])).await;
            let yaml = pool(addr, "{insecureSkipVerify: true}");
            let p = start(&yaml, Vec::new()).await;
            assert_eq!(get(p.proxy_addr, "/", &[]).await.status, 200);
            let before = member_config(&p);
            // The same setting published again (an EndpointSlice change): the same configuration,
            // so pooled connections and TLS sessions carry on.
            p.proxy.publish(routeid::standalone::parse_pools(&yaml).unwrap());
            assert!(Arc::ptr_eq(&before, &member_config(&p)));
            assert_eq!(get(p.proxy_addr, "/", &[]).await.status, 200);
            // Another server name: another configuration, so no connection is shared.
            let named = pool(addr, "{insecureSkipVerify: true, serverName: member.test}");
            p.proxy.publish(routeid::standalone::parse_pools(&named).unwrap());
            assert!(!Arc::ptr_eq(&before, &member_config(&p)));
            assert_eq!(get(p.proxy_addr, "/", &[]).await.status, 200);
            p.shutdown().await;
            member.abort();
        })
        .await;
    }

    #[tokio::test]
    async fn a_missing_ca_answers_503_instead_of_sending_in_clear() {
        bounded(async {
            let ca = TestCa::new();
            // Without serverName the member's IP is verified.
            let (addr, member) = https_member("m", &ca.leaf(&["127.0.0.1"])).await;
            let p = start(&pool(addr, "{caSecretName: member-ca}"), Vec::new()).await;
            let got = get(p.proxy_addr, "/", &[]).await;
            assert_eq!(got.status, 503);
            assert!(got.body.contains("TLS to this pool's members is not ready"), "{}", got.body);
            let snap = p.proxy.snapshot();
            let said = &snap.tls.problems[&snap.table.pools()[0].config.id];
            assert!(said[0].message.contains("backend.tls CA Secret default/member-ca"), "{said:?}");
            // The Secret arrives: served.
            let r = SecretRef::new("default", "member-ca");
            p.proxy.update_tls_secrets(&[(r, Ok(ca.secret_data()))]);
            assert_eq!(get(p.proxy_addr, "/", &[]).await.status, 200);
            p.shutdown().await;
            member.abort();
        })
        .await;
    }
}
