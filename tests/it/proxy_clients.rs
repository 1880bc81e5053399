//! Blame the side that failed: a client's broken, aborted or slow request never counts against
//! a member; ambiguous requests are refused; dot-segments never reach a member; proxy-made
//! errors never pin a session; a member stays busy until its response body ends.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use routeid::proxy::ProxySettings;
use routeid::runtime::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn runtime(running: &Running, pool: usize, member: usize) -> std::sync::Arc<routeid::core::MemberRuntime> {
    std::sync::Arc::clone(&running.proxy.snapshot().table.pools()[pool].members[member].runtime)
}

/// No failure of any kind was counted against the member, and it is not in error.
fn assert_unblamed(running: &Running, pool: usize, member: usize) {
    let rt = runtime(running, pool, member);
    let failures: Vec<u64> = rt.failures.iter().map(|f| f.load(Relaxed)).collect();
    assert_eq!(failures, [0, 0, 0, 0], "no failure is counted against member {member}");
    assert_eq!(rt.errors.load(Relaxed), 0, "member {member} has no errors");
    assert!(!rt.in_error(running.proxy.clock().now_ms()), "member {member} is not in error");
}

/// Sends raw bytes and reads until the proxy closes the connection (or `limit` passes).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = bounded_for(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of one series in the admin `/metrics` page (0 when absent).
async fn metric(running: &Running, series: &str) -> u64 {
    let page = get(running.admin_addr, "/metrics", &[]).await.body;
    page.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn status_of(raw: &str) -> u16 {
    raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_fault() {
    bounded(async {
        let (a, b) = (Member::start("a").await, Member::start("b").await);
        let p = start_proxy(&pool_yaml("up", &[(a.addr, "a", 1), (b.addr, "b", 1)], "")).await;
        for _ in 0..4 {
            let raw = raw_exchange(
                p.proxy_addr,
                b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\n\r\n",
            )
            .await;
            let status = status_of(&raw);
            assert!(status == 400 || raw.is_empty(), "a broken body gets 400 (or a closed connection): {raw:?}");
        }
        wait_for(Duration::from_secs(5), "the attempts to end", || {
            runtime(&p, 0, 0).busy.load(Relaxed) == 0 && runtime(&p, 0, 1).busy.load(Relaxed) == 0
        })
        .await;
        assert!(a.hits() + b.hits() >= 1, "the members saw the requests start");
        assert_unblamed(&p, 0, 0);
        assert_unblamed(&p, 0, 1);
        assert!(metric(&p, "routeid_client_errors_total{reason=\"broken-body\"}").await >= 1);
        let got = get(p.proxy_addr, "/after", &[]).await;
        assert_eq!(got.status, 200, "the pool still serves: {got:?}");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_upload_is_not_the_members_fault() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("up", &[(a.addr, "a", 1)], "  sticky: {failover: false}\n")).await;
        for _ in 0..3 {
            let hits = a.hits();
            let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
            s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n").await.unwrap();
            s.write_all(&[b'x'; 1000]).await.unwrap();
            wait_for(Duration::from_secs(5), "the member to see the upload", || a.hits() > hits).await;
            drop(s);
            wait_for(Duration::from_secs(5), "the attempt to end", || runtime(&p, 0, 0).busy.load(Relaxed) == 0).await;
        }
        assert_unblamed(&p, 0, 0);
        assert_eq!(metric(&p, "routeid_client_errors_total{reason=\"gone\"}").await, 3, "logged as 499 and counted");
        let got = get(p.proxy_addr, "/after", &[]).await;
        assert_eq!(got.status, 200, "the only member still serves: {got:?}");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_reset_mid_upload_is_not_the_members_fault() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("up", &[(a.addr, "a", 1)], "")).await;
        let tcp = TcpStream::connect(p.proxy_addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
            let body = StreamBody::new(stream_from(rx));
            let req = Request::post(format!("http://{}/upload", p.proxy_addr)).body(body).unwrap();
            let hits = a.hits();
            let resp = tokio::spawn(send.send_request(req));
            tx.send(Ok(Frame::data(Bytes::from_static(&[b'x'; 1000])))).await.unwrap();
            wait_for(Duration::from_secs(5), "the member to see the upload", || a.hits() > hits).await;
            // A body error makes hyper's client reset the stream.
            tx.send(Err(std::io::Error::other("client gives up"))).await.unwrap();
            let _ = resp.await;
            wait_for(Duration::from_secs(5), "the attempt to end", || runtime(&p, 0, 0).busy.load(Relaxed) == 0).await;
            send.ready().await.unwrap();
        }
        assert_unblamed(&p, 0, 0);
        assert!(metric(&p, "routeid_client_errors_total{reason=\"gone\"}").await >= 3);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timeout_starts_after_the_upload() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("up", &[(a.addr, "a", 1)], "  timeouts: {response: 300ms}\n")).await;
        // A slow, steady upload: ten chunks 100 ms apart, a second in all.
        let stream = futures_util::stream::unfold(0u32, |i| async move {
            if i == 10 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"0123456789"))), i + 1))
        });
        let body = StreamBody::new(Box::pin(stream));
        let req = Request::post(format!("http://{}/upload", p.proxy_addr)).body(body).unwrap();
        let c = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"route=a received=100");
        assert_unblamed(&p, 0, 0);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_bounded_by_the_client_idle_timeout() {
    bounded(async {
        let a = Member::start("a").await;
        let settings = ProxySettings {
            client_idle_timeout: Duration::from_millis(400),
            drain_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let p = start_proxy_with(&pool_yaml("up", &[(a.addr, "a", 1)], ""), settings).await;
        let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789").await.unwrap();
        let mut out = Vec::new();
        bounded_for(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap();
        let raw = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&raw), 408, "a stalled upload gets 408: {raw:?}");
        wait_for(Duration::from_secs(5), "the attempt to end", || runtime(&p, 0, 0).busy.load(Relaxed) == 0).await;
        assert_unblamed(&p, 0, 0);
        assert_eq!(metric(&p, "routeid_client_errors_total{reason=\"upload-stalled\"}").await, 1);
        p.shutdown().await;
    })
    .await;
}

/// Two pools: `shop` on `/shop` (rewritten to `/app`) and a catch-all `root`.
async fn two_pools() -> (Member, Member, Running) {
    let (shop, root) = (Member::start("shop").await, Member::start("root").await);
    let yaml = format!(
        "{}---\n{}",
        pool_yaml("shop", &[(shop.addr, "shop", 1)], "  frontend: {pathPrefix: /shop, rewritePrefix: /app}\n"),
        pool_yaml("root", &[(root.addr, "root", 1)], "")
    );
    let p = start_proxy(&yaml).await;
    (shop, root, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_resolved_before_matching_and_forwarding() {
    bounded(async {
        let (_shop, _root, p) = two_pools().await;
        let cases = [
            ("/shop/../secret", "root", "/secret"),
            ("/shop/%2e%2e/secret", "root", "/secret"),
            ("/shop/.%2E/secret?q=1", "root", "/secret?q=1"),
            ("/shop/..;x=1/secret", "root", "/secret"),
            ("/shop/./cart/../item", "shop", "/app/item"),
            ("/shop/a/b/../../c", "shop", "/app/c"),
            ("/../../etc/passwd", "root", "/etc/passwd"),
            ("/shop/%2E", "shop", "/app/"),
            ("/shop/..", "root", "/"),
            ("/shop/..x/y", "shop", "/app/..x/y"),
        ];
        for (path, member, seen) in cases {
            let got = raw_exchange(
                p.proxy_addr,
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await;
            assert_eq!(status_of(&got), 200, "{path}: {got}");
            assert!(got.contains(&format!("route={member} path={seen}")), "{path} → {member} {seen}: {got}");
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_get_400() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("a", &[(a.addr, "a", 1)], "")).await;
        let two_hosts =
            raw_exchange(p.proxy_addr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status_of(&two_hosts), 400, "{two_hosts}");
        let no_host = raw_exchange(p.proxy_addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status_of(&no_host), 400, "{no_host}");
        assert_eq!(a.hits(), 0, "neither reached the member");
        // HTTP/1.0 needs no Host.
        let old = raw_exchange(p.proxy_addr, b"GET /old HTTP/1.0\r\n\r\n").await;
        assert_eq!(status_of(&old), 200, "{old}");
        // CONNECT is not a tunnel routeid opens.
        let connect =
            raw_exchange(p.proxy_addr, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status_of(&connect), 405, "{connect}");
        assert_eq!(a.hits(), 1);
        assert_eq!(metric(&p, "routeid_client_errors_total{reason=\"bad-request\"}").await, 3);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_target_authority_wins_over_host() {
    bounded(async {
        let (a, b) = (Member::start("a").await, Member::start("b").await);
        let yaml = format!(
            "{}---\n{}",
            pool_yaml("a", &[(a.addr, "a", 1)], "  frontend: {hosts: [a.example]}\n"),
            pool_yaml("b", &[(b.addr, "b", 1)], "  frontend: {hosts: [b.example]}\n")
        );
        let p = start_proxy(&yaml).await;
        let got = raw_exchange(
            p.proxy_addr,
            b"GET http://b.example/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(got.contains("route=b path=/x"), "absolute-form names the host: {got}");
        assert_eq!(b.last_seen().headers["host"], "b.example", "the member sees the request target's host");
        // HTTP/2: :authority names the host; a Host header naming another is malformed.
        let tcp = TcpStream::connect(p.proxy_addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get("http://b.example/h2").body(Empty::<Bytes>::new()).unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"route=b path=/h2"), "{body:?}");
        let req = Request::get("http://b.example/h2").header("host", "a.example").body(Empty::<Bytes>::new()).unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(a.hits(), 0);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_header_names_hop_by_hop_headers() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("a", &[(a.addr, "a", 1)], "")).await;
        let got = raw_exchange(
            p.proxy_addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-one\r\nConnection: x-two, close\r\nX-One: 1\r\nX-Two: 2\r\nX-Three: 3\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&got), 200, "{got}");
        let seen = a.last_seen().headers;
        assert!(!seen.contains_key("x-one") && !seen.contains_key("x-two"), "{seen:?}");
        assert_eq!(seen["x-three"], "3");
        p.shutdown().await;
    })
    .await;
}

/// A member that accepts, reads the request head and closes without answering.
async fn rude_member() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"garbage\r\n\r\n").await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_made_errors_set_no_route_cookie() {
    bounded(async {
        let (rude, _task) = rude_member().await;
        let slow = Member::start("slow").await;
        let sticky = "  sticky: {cookie: {name: ROUTEID, mode: Insert}}\n  timeouts: {response: 200ms}\n";
        let yaml = format!(
            "{}---\n{}",
            pool_yaml("rude", &[(rude, "rude", 1)], &format!("  frontend: {{pathPrefix: /rude}}\n{sticky}")),
            pool_yaml("slow", &[(slow.addr, "slow", 1)], &format!("  frontend: {{pathPrefix: /slow}}\n{sticky}"))
        );
        let p = start_proxy(&yaml).await;
        // A POST with a body is not repeated: the failed attempt is the answer.
        let bad = send(&client(), p.proxy_addr, "POST", "/rude", &[], Bytes::from_static(b"x")).await;
        assert_eq!(bad.status, 502, "{bad:?}");
        let late = get(p.proxy_addr, "/slow?ms=2000", &[]).await;
        assert_eq!(late.status, 504, "{late:?}");
        for got in [&bad, &late] {
            assert!(got.set_cookies().is_empty(), "no route cookie on a proxy-made error: {got:?}");
            assert_eq!(got.headers.get_all("cache-control").iter().count(), 1, "{got:?}");
        }
        let ok = get(p.proxy_addr, "/slow?ms=0", &[]).await;
        assert_eq!(ok.set_cookies().len(), 1, "a member's own answer still sets it: {ok:?}");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_busy_until_its_response_body_ends() {
    bounded(async {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let svc = service_fn(move |_req| {
                let rx = std::sync::Arc::clone(&rx);
                async move {
                    let rx = rx.lock().await.take().unwrap();
                    Ok::<_, Infallible>(Response::new(StreamBody::new(stream_from(rx))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
        });
        let p = start_proxy(&pool_yaml("stream", &[(addr, "s", 1)], "")).await;
        let resp = client()
            .request(Request::get(format!("http://{}/events", p.proxy_addr)).body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let rt = runtime(&p, 0, 0);
        assert_eq!(rt.busy.load(Relaxed), 1, "busy while the body streams");
        tx.send(Ok(Frame::data(Bytes::from_static(b"event 1\n")))).await.unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap(), &b"event 1\n"[..]);
        assert_eq!(rt.busy.load(Relaxed), 1, "still busy");
        drop(tx);
        while body.frame().await.is_some() {}
        wait_for(Duration::from_secs(5), "busy to drop when the body ends", || rt.busy.load(Relaxed) == 0).await;
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_header_holding_only_the_route_cookie_is_not_forwarded() {
    bounded(async {
        let a = Member::start("a").await;
        let p =
            start_proxy(&pool_yaml("a", &[(a.addr, "a", 1)], "  sticky: {cookie: {name: ROUTEID, mode: Insert}}\n"))
                .await;
        let got = get(p.proxy_addr, "/one", &[("cookie", "ROUTEID=.a")]).await;
        assert_eq!(got.status, 200);
        assert!(!a.last_seen().headers.contains_key("cookie"), "{:?}", a.last_seen().headers);
        let got = raw_exchange(
            p.proxy_addr,
            b"GET /two HTTP/1.1\r\nHost: x\r\nCookie: ROUTEID=.a\r\nCookie: app=1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&got), 200, "{got}");
        let cookies: Vec<_> = a.last_seen().headers.get_all("cookie").iter().cloned().collect();
        assert_eq!(cookies, ["app=1"], "only the application's cookie is forwarded");
        let got = raw_exchange(
            p.proxy_addr,
            b"GET /three HTTP/1.1\r\nHost: x\r\nCookie: ROUTEID=.a; \r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&got), 200, "{got}");
        assert!(!a.last_seen().headers.contains_key("cookie"), "{:?}", a.last_seen().headers);
        p.shutdown().await;
    })
    .await;
}
