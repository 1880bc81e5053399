//! Members that misbehave, and the per-member connection pool.
//!
//! Misbehaving members are raw TCP servers that read one request head and answer with bytes a
//! test chooses (conflicting framing, a bad chunk, an HTTP/1.0 head, endless `1xx`, garbage, an
//! early close or reset). Each case asserts what the client gets, that the member is counted as
//! failed, and that another pool served by the same proxy is unaffected.
//!
//! The pool cases use a hyper member that reports each request's connection (its peer port)
//! and how many connections it has open, to see which connection served what and when one
//! closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use routeid::core::FailureKind;
use routeid::runtime::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A raw member: for each connection, reads one request head, then runs `answer` on the socket.
struct RawMember {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawMember {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_member<F, Fut>(answer: F) -> RawMember
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let answer = Arc::new(answer);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                if read_head(&mut stream).await {
                    answer(stream).await;
                }
            });
        }
    });
    RawMember { addr, accepted, task }
}

/// Reads up to the end of a request head; false when the peer closed first.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Waits until the peer closes `stream` (EOF or reset) and says whether it did within `limit`.
async fn closed_by_peer(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A proxy with pool `bad` at `/` (the raw member, one attempt per request, so the client sees
/// what that member did) and pool `good` at `/ok` (a well-behaved member).
async fn proxy_for(bad: SocketAddr, good: &Member, spec_extra: &str) -> Running {
    let yaml = format!(
        "{}---\n{}",
        pool_yaml("bad", &[(bad, "bad", 1)], &format!("  health: {{passive: {{maxAttempts: 1}}}}\n{spec_extra}")),
        pool_yaml("good", &[(good.addr, "good", 1)], "  frontend: {pathPrefix: /ok}\n"),
    );
    start_proxy(&yaml).await
}

fn bad_member_in_error(running: &Running) -> bool {
    let snap = running.proxy.snapshot();
    let pool = snap.table.pools().iter().find(|p| p.config.id.name == "bad").expect("pool bad");
    pool.members[0].runtime.in_error(running.proxy.clock().now_ms())
}

/// The well-behaved pool still answers.
async fn good_pool_answers(running: &Running) {
    let got = get(running.proxy_addr, "/ok/still-there", &[]).await;
    assert_eq!((got.status, got.route()), (StatusCode::OK, "good"), "{got:?}");
}

/// Sends `GET /` to the proxy and reads the response whole, or the error on the way.
async fn get_result(proxy: SocketAddr, path: &str) -> Result<Got, String> {
    try_get(proxy, path, &[]).await
}

// ---------------------------------------------------------------------------------------------
// Broken member responses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_response_with_both_content_length_and_transfer_encoding_is_a_502_and_its_connection_closed() {
    bounded(async {
        let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
        let bad = raw_member(move |mut s| {
            let closed_tx = closed_tx.clone();
            async move {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
                    )
                    .await;
                let _ = closed_tx.send(closed_by_peer(&mut s, Duration::from_secs(5)).await);
            }
        })
        .await;
        let good = Member::start("good").await;
        let p = proxy_for(bad.addr, &good, "").await;

        let got = get(p.proxy_addr, "/", &[]).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{got:?}");
        assert!(!got.body.contains("hello"), "nothing of the smuggled body reaches the client: {got:?}");
        assert_eq!(closed_rx.recv().await, Some(true), "the proxy closes the member connection");
        assert!(bad_member_in_error(&p), "a member with conflicting framing is failed");
        good_pool_answers(&p).await;
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_head_response_may_carry_both_framing_headers() {
    bounded(async {
        // A response to HEAD has no body whatever its headers say (RFC 9112 §6.3 rule 1).
        let member = raw_member(|mut s| async move {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").await;
            closed_by_peer(&mut s, Duration::from_secs(5)).await;
        })
        .await;
        let good = Member::start("good").await;
        let p = proxy_for(member.addr, &good, "").await;
        let got = send(&client(), p.proxy_addr, "HEAD", "/", &[], Bytes::new()).await;
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        assert!(!bad_member_in_error(&p));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_bad_first_chunk_is_a_502_not_an_empty_reply() {
    bounded(async {
        let bad = raw_member(|mut s| async move {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz-not-a-size\r\n").await;
            closed_by_peer(&mut s, Duration::from_secs(5)).await;
        })
        .await;
        let good = Member::start("good").await;
        let p = proxy_for(bad.addr, &good, "").await;

        let got = get_result(p.proxy_addr, "/").await;
        let got = got.expect("the client gets an answer, not an empty reply");
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{got:?}");
        assert!(bad_member_in_error(&p));
        good_pool_answers(&p).await;
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_body_that_breaks_after_bytes_were_sent_aborts_the_client_response() {
    bounded(async {
        // The member sends its head and part of its body, then (once the client has the head)
        // a bad chunk, or it closes 95 bytes short of its Content-Length. The client reads over
        // HTTP/1.1 (the connection is aborted) and over HTTP/2 (the stream is reset).
        for (framing, h2) in [("chunked", false), ("length", false), ("chunked", true), ("length", true)] {
            let go = Arc::new(Notify::new());
            let go2 = Arc::clone(&go);
            let bad = raw_member(move |mut s| {
                let go = Arc::clone(&go2);
                async move {
                    let (head, rest): (&[u8], &[u8]) = if framing == "chunked" {
                        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"zz\r\n")
                    } else {
                        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello", b"")
                    };
                    let _ = s.write_all(head).await;
                    go.notified().await;
                    let _ = s.write_all(rest).await;
                }
            })
            .await;
            let good = Member::start("good").await;
            let p = proxy_for(bad.addr, &good, "").await;

            let c = Client::builder(TokioExecutor::new()).http2_only(h2).build_http::<Full<Bytes>>();
            let req = Request::get(format!("http://{}/", p.proxy_addr)).body(Full::new(Bytes::new())).unwrap();
            let resp = c.request(req).await.expect("the head arrives");
            assert_eq!(resp.status(), StatusCode::OK, "{framing} h2={h2}");
            go.notify_one();
            let body = resp.into_body().collect().await;
            assert!(body.is_err(), "{framing} h2={h2}: a broken body must not look complete: {body:?}");
            // Counted against the member (failures{kind="reset"}), but not put in error: it
            // answered, and the next request may well succeed.
            let snap = p.proxy.snapshot();
            let bad_pool = snap.table.pools().iter().find(|p| p.config.id.name == "bad").unwrap();
            let resets = &bad_pool.members[0].runtime.failures[FailureKind::Exchange as usize];
            assert_eq!(resets.load(Ordering::SeqCst), 1, "{framing} h2={h2}");
            good_pool_answers(&p).await;
            p.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn trailers_reach_the_client_and_the_connection_goes_back_to_the_pool() {
    bounded(async {
        // A chunked answer with trailers only, then one with data and trailers, then a plain
        // one, on one keep-alive connection (a new connection would start with the first
        // answer again): a connection must go back to the pool after trailers, whether they
        // came with the head or after data.
        let bad = raw_member(|mut s| async move {
            let answers: [&[u8]; 3] = [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n0\r\nx-sum: none\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 5\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone",
            ];
            for (i, answer) in answers.iter().enumerate() {
                if i > 0 && !read_head(&mut s).await {
                    return;
                }
                let _ = s.write_all(answer).await;
            }
            closed_by_peer(&mut s, Duration::from_secs(5)).await;
        })
        .await;
        let good = Member::start("good").await;
        let p = proxy_for(bad.addr, &good, "").await;

        let c = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
        for (body, sum) in [("", Some("none")), ("hello", Some("5")), ("done", None)] {
            let req = Request::get(format!("http://{}/", p.proxy_addr)).body(Full::new(Bytes::new())).unwrap();
            let resp = c.request(req).await.expect("an answer");
            assert_eq!(resp.status(), StatusCode::OK);
            let got = resp.into_body().collect().await.expect("a whole body");
            let trailers = got.trailers().cloned().unwrap_or_default();
            assert_eq!(got.to_bytes(), body.as_bytes());
            assert_eq!(trailers.get("x-sum").map(|v| v.to_str().unwrap()), sum);
        }
        assert_eq!(bad.accepted.load(Ordering::SeqCst), 1, "every answer came over one member connection");
        assert!(!bad_member_in_error(&p));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_http_1_0_member_response_reaches_the_client_as_http_1_1() {
    bounded(async {
        let old = raw_member(|mut s| async move {
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfrom an old server").await;
            // HTTP/1.0 without Content-Length: the body ends with the connection.
        })
        .await;
        let good = Member::start("good").await;
        let p = proxy_for(old.addr, &good, "").await;

        let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200"), "the proxy speaks its own version: {text}");
        assert!(text.contains("from an old server"), "{text}");
        assert!(!bad_member_in_error(&p), "an HTTP/1.0 answer is a good answer");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_endless_stream_of_1xx_responses_is_a_502() {
    bounded(async {
        let bad = raw_member(|mut s| async move {
            let interim = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(256);
            while s.write_all(&interim).await.is_ok() {}
        })
        .await;
        let good = Member::start("good").await;
        // A response timeout the test would notice: the flood must end long before it.
        let p = proxy_for(bad.addr, &good, "  timeouts: {response: 30s}\n").await;

        let started = tokio::time::Instant::now();
        let got = get(p.proxy_addr, "/", &[]).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "ended by the flood bound, not the response timeout");
        assert!(bad_member_in_error(&p));
        good_pool_answers(&p).await;
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_few_1xx_responses_before_the_real_one_are_fine() {
    bounded(async {
        let member = raw_member(|mut s| async move {
            let _ = s
                .write_all(
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                )
                .await;
            closed_by_peer(&mut s, Duration::from_secs(5)).await;
        })
        .await;
        let good = Member::start("good").await;
        let p = proxy_for(member.addr, &good, "").await;
        let got = get(p.proxy_addr, "/", &[]).await;
        assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "ok"));
        assert!(!bad_member_in_error(&p));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn garbage_instead_of_a_status_line_is_a_502() {
    bounded(async {
        let bad = raw_member(|mut s| async move {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n\x00\x01\x02 not http at all\r\n\r\n").await;
            closed_by_peer(&mut s, Duration::from_secs(5)).await;
        })
        .await;
        let good = Member::start("good").await;
        let p = proxy_for(bad.addr, &good, "").await;
        let got = get(p.proxy_addr, "/", &[]).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{got:?}");
        assert!(bad_member_in_error(&p));
        good_pool_answers(&p).await;
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_member_that_closes_or_resets_before_the_head_is_a_502() {
    bounded(async {
        for reset in [false, true] {
            let bad = raw_member(move |s| async move {
                if reset {
                    let _ = s.set_zero_linger();
                }
                drop(s);
            })
            .await;
            let good = Member::start("good").await;
            let p = proxy_for(bad.addr, &good, "").await;
            let got = get(p.proxy_addr, "/", &[]).await;
            assert_eq!(got.status, StatusCode::BAD_GATEWAY, "reset={reset}: {got:?}");
            assert_eq!(bad.accepted.load(Ordering::SeqCst), 1, "one attempt, on a fresh connection");
            assert!(bad_member_in_error(&p), "reset={reset}");
            good_pool_answers(&p).await;
            p.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_idempotent_request_to_a_broken_member_goes_to_a_good_one() {
    bounded(async {
        let bad = raw_member(|mut s| async move {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").await;
        })
        .await;
        let good = Member::start("good").await;
        let yaml = pool_yaml("p", &[(bad.addr, "bad", 1), (good.addr, "good", 1)], "");
        let p = start_proxy(&yaml).await;
        for i in 0..4 {
            let got = get(p.proxy_addr, &format!("/{i}"), &[]).await;
            assert_eq!((got.status, got.route()), (StatusCode::OK, "good"), "{got:?}");
        }
        assert_eq!(bad.accepted.load(Ordering::SeqCst), 1, "tried once, then in error");
        p.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The member connection pool
// ---------------------------------------------------------------------------------------------

/// A hyper member that answers `peer=<port>` (the proxy side of the connection), can hold a
/// request until released, and reports its open connections.
struct PortMember {
    addr: SocketAddr,
    accepted: watch::Receiver<usize>,
    open: watch::Receiver<usize>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PortMember {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl PortMember {
    async fn start() -> PortMember {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (acc, accepted) = watch::channel(0usize);
        let (open_tx, open) = watch::channel(0usize);
        let open_tx = Arc::new(open_tx);
        let release = Arc::new(Notify::new());
        let rel = Arc::clone(&release);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else { continue };
                acc.send_modify(|n| *n += 1);
                open_tx.send_modify(|n| *n += 1);
                let (open_tx, rel) = (Arc::clone(&open_tx), Arc::clone(&rel));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let rel = Arc::clone(&rel);
                        async move { Ok::<_, Infallible>(port_answer(req, peer.port(), rel).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                    open_tx.send_modify(|n| *n -= 1);
                });
            }
        });
        PortMember { addr, accepted, open, release, task }
    }

    fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    /// Waits until the member has accepted `n` connections.
    async fn accepted_reaches(&self, n: usize) {
        self.accepted.clone().wait_for(|a| *a >= n).await.unwrap();
    }
}

/// `/hold`: answers once released; `/stream-hold`: sends its head at once and ends its body
/// once released; anything else answers at once.
async fn port_answer(req: Request<hyper::body::Incoming>, port: u16, release: Arc<Notify>) -> Response<AnyBody> {
    let text = format!("peer={port}");
    match req.uri().path() {
        "/hold" => {
            release.notified().await;
            Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed())
        }
        "/stream-hold" => {
            let stream = futures_util::stream::once(async move {
                release.notified().await;
                Ok::<_, Infallible>(Frame::data(Bytes::from(text)))
            });
            Response::new(StreamBody::new(stream).boxed())
        }
        _ => Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed()),
    }
}

/// A one-member pool document with `backend` and `spec` extras.
fn one_member_pool(member: SocketAddr, backend_extra: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: p}}\nspec:\n{spec_extra}  backend:\n{backend_extra}    members:\n      - {{address: \"{member}\", route: m}}\n"
    )
}

#[tokio::test]
async fn the_newest_idle_connection_is_reused_first() {
    bounded(async {
        let m = PortMember::start().await;
        let p = start_proxy(&one_member_pool(m.addr, "", "")).await;
        let proxy = p.proxy_addr;
        // Two connections: the held request keeps one busy while another request opens a second
        // one, which goes idle first; the held one goes idle last, so it is the newest.
        let held = tokio::spawn(async move { get(proxy, "/hold", &[]).await });
        m.accepted_reaches(1).await;
        let quick = get(proxy, "/quick", &[]).await;
        assert_eq!(m.accepted(), 2);
        m.release.notify_one();
        let held = held.await.unwrap();
        assert_ne!(held.body, quick.body, "two connections");
        for i in 0..6 {
            let got = get(proxy, &format!("/again{i}"), &[]).await;
            assert_eq!(got.body, held.body, "request {i} goes on the newest idle connection");
        }
        assert_eq!(m.accepted(), 2, "no new connection");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn idle_connections_are_closed_by_the_reaper_without_waiting_for_a_request() {
    bounded(async {
        let m = PortMember::start().await;
        let p = start_proxy(&one_member_pool(m.addr, "", "  timeouts: {idle: 200ms}\n")).await;
        let started = tokio::time::Instant::now();
        let got = get(p.proxy_addr, "/", &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(*m.open.borrow(), 1, "the connection is kept for reuse");
        // No further request: the reaper alone closes it once it has been idle for 200 ms.
        bounded_for(Duration::from_secs(5), m.open.clone().wait_for(|n| *n == 0)).await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "not before the idle timeout: {took:?}");
        assert!(took < Duration::from_secs(3), "soon after it: {took:?}");
        // And the next request simply opens a new one.
        assert_eq!(get(p.proxy_addr, "/", &[]).await.status, StatusCode::OK);
        assert_eq!(m.accepted(), 2);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn max_connections_queues_requests_until_a_connection_is_free() {
    bounded(async {
        let m = PortMember::start().await;
        let p = start_proxy(&one_member_pool(m.addr, "    maxConnections: 1\n", "")).await;
        let proxy = p.proxy_addr;
        let held = tokio::spawn(async move { get(proxy, "/hold", &[]).await });
        m.accepted_reaches(1).await;
        let queued: Vec<_> =
            (0..3).map(|i| tokio::spawn(async move { get(proxy, &format!("/queued{i}"), &[]).await })).collect();
        // The queued requests wait for the one connection; the member sees no second one.
        let snap = p.proxy.snapshot();
        let busy = &snap.table.pools()[0].members[0].runtime.busy;
        wait_for(Duration::from_secs(5), "the queued requests to count as busy", || busy.load(Ordering::SeqCst) == 4)
            .await;
        assert_eq!(m.accepted(), 1);
        m.release.notify_one();
        let held = held.await.unwrap();
        for q in queued {
            let got = q.await.unwrap();
            assert_eq!((got.status, &got.body), (StatusCode::OK, &held.body), "served on the same connection");
        }
        assert_eq!(m.accepted(), 1, "never more than maxConnections");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_request_queued_past_the_response_timeout_gets_503_and_the_member_stays_usable() {
    bounded(async {
        let m = PortMember::start().await;
        let spec = "  timeouts: {response: 300ms}\n  health: {passive: {failOnTimeout: true}}\n";
        let p = start_proxy(&one_member_pool(m.addr, "    maxConnections: 1\n", spec)).await;
        let proxy = p.proxy_addr;
        // A streamed response keeps the only connection busy past its head.
        let c = client();
        let req = Request::get(format!("http://{proxy}/stream-hold")).body(Full::new(Bytes::new())).unwrap();
        let streaming = c.request(req).await.unwrap();
        assert_eq!(streaming.status(), StatusCode::OK);

        let started = tokio::time::Instant::now();
        let got = get(proxy, "/queued", &[]).await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{got:?}");
        assert!(got.body.contains("maxConnections"), "{}", got.body);
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
        // A request with a body waits the same way: its body is not read while it waits.
        let got = send(&client(), proxy, "POST", "/queued", &[], Bytes::from_static(b"payload")).await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{got:?}");
        let snap = p.proxy.snapshot();
        let member = &snap.table.pools()[0].members[0];
        assert!(!member.runtime.in_error(p.proxy.clock().now_ms()), "a full queue is not a member failure");

        m.release.notify_one();
        let body = streaming.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"peer="));
        assert_eq!(get(proxy, "/after", &[]).await.status, StatusCode::OK, "the freed connection serves again");
        assert_eq!(m.accepted(), 1);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn max_connections_is_validated() {
    let yaml = one_member_pool("127.0.0.1:1".parse().unwrap(), "    maxConnections: 0\n", "");
    let err = routeid::standalone::parse_pools(&yaml).expect_err("0 connections is refused");
    let text = format!("{err:?}");
    assert!(text.contains("spec.backend.maxConnections"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_a_member_closing_every_connection_still_gets_every_request() {
    bounded(async {
        // Each response closes its connection; its slot must come back for the next request.
        let a = Member::start("a").await;
        let p = start_proxy(&one_member_pool(a.addr, "    maxConnections: 1\n", "  timeouts: {response: 5s}\n")).await;
        let proxy = p.proxy_addr;
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                tokio::spawn(async move {
                    for i in 0..10 {
                        let got = get(proxy, &format!("/close?t={t}&i={i}"), &[]).await;
                        assert_eq!((got.status, got.route()), (StatusCode::OK, "a"), "{got:?}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(a.hits(), 40);
        assert_eq!(a.connections(), 40, "one connection per request: each closed one gave its slot back");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_holds_its_connection_slot_until_it_closes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    bounded(async {
        let m = Member::start("ws").await;
        let p =
            start_proxy(&one_member_pool(m.addr, "    maxConnections: 1\n", "  timeouts: {response: 500ms}\n")).await;
        let tcp = TcpStream::connect(p.proxy_addr).await.unwrap();
        let (mut ws, resp) =
            tokio_tungstenite::client_async(format!("ws://{}/ws", p.proxy_addr), tcp).await.expect("handshake");
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));

        let got = get(p.proxy_addr, "/", &[]).await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "the tunnel is the one connection: {got:?}");

        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
        drop(ws); // both sides closed: the tunnel ends
        let got = get(p.proxy_addr, "/", &[]).await;
        assert_eq!((got.status, got.route()), (StatusCode::OK, "ws"), "the closed tunnel gave its slot back");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_max_connections_without_a_lost_wakeup() {
    bounded(async {
        let m = PortMember::start().await;
        // A lost wakeup would leave a request queued until its 5 s deadline: a 503 here.
        let p = start_proxy(&one_member_pool(m.addr, "    maxConnections: 2\n", "  timeouts: {response: 5s}\n")).await;
        let proxy = p.proxy_addr;
        let started = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                tokio::spawn(async move {
                    let c = client();
                    for i in 0..25 {
                        let got = send(&c, proxy, "GET", &format!("/{t}/{i}"), &[], Bytes::new()).await;
                        assert_eq!(got.status, StatusCode::OK, "{got:?}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(m.accepted() <= 2, "{} connections for a cap of 2", m.accepted());
        assert!(started.elapsed() < Duration::from_secs(5), "no request waited for its deadline");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn huge_timeouts_are_served_not_a_panic() {
    bounded(async {
        let m = PortMember::start().await;
        let spec = "  timeouts: {response: 500000000000y, idle: 500000000000y}\n";
        let p = start_proxy(&one_member_pool(m.addr, "    maxConnections: 1\n", spec)).await;
        for _ in 0..3 {
            assert_eq!(get(p.proxy_addr, "/", &[]).await.status, StatusCode::OK);
        }
        assert_eq!(m.accepted(), 1, "the idle connection is kept and reused");
        p.shutdown().await;
    })
    .await;
}
