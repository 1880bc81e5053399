//! Streams through the proxy: WebSocket upgrades, HTTP/2 clients in front of HTTP/1.1 members,
//! and 256 MiB each way through the real binary in bounded memory.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::support::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    bounded(async {
        let m = Member::start("ws").await;
        let p = start_proxy(&pool_yaml("ws", &[(m.addr, "ws", 1)], "")).await;
        let tcp = TcpStream::connect(p.proxy_addr).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/ws", p.proxy_addr), tcp)
            .await
            .expect("the WebSocket handshake passes the proxy");
        assert_eq!(resp.status(), 101);
        for text in ["hello through routeid", "second message"] {
            ws.send(Message::text(text)).await.unwrap();
            let echoed = ws.next().await.expect("an echo").expect("a frame");
            assert_eq!(echoed, Message::text(text));
        }
        let big = vec![7u8; 200_000];
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
        // The member saw the upgrade request with its upgrade headers intact.
        let seen = m.last_seen();
        assert_eq!(seen.path_and_query, "/ws");
        assert_eq!(seen.headers["upgrade"].to_str().unwrap().to_ascii_lowercase(), "websocket");
        ws.close(None).await.unwrap();
        p.shutdown().await;
    })
    .await;
}

/// What an HTTP/1.1-only member saw: version, `Cookie` headers, `Host`.
type SeenH1 = Arc<Mutex<Vec<(Version, Vec<String>, String)>>>;

/// A member that speaks HTTP/1.1 only (hyper's `http1` server, no `auto`).
async fn start_h1_only_member() -> (std::net::SocketAddr, SeenH1, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: SeenH1 = Arc::default();
    let seen2 = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let seen = Arc::clone(&seen2);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let cookies =
                            req.headers().get_all("cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
                        let host =
                            req.headers().get("host").map(|h| h.to_str().unwrap().to_owned()).unwrap_or_default();
                        seen.lock().unwrap().push((req.version(), cookies, host));
                        let body = format!("h1 member {:?} {}", req.version(), req.uri());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_client_reaches_an_http1_member() {
    bounded(async {
        let (member, seen, task) = start_h1_only_member().await;
        let p = start_proxy(&pool_yaml("h2", &[(member, "h1", 1)], "")).await;
        let tcp = TcpStream::connect(p.proxy_addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c prior-knowledge handshake with the proxy");
        tokio::spawn(conn);
        // Several streams multiplexed on the one connection.
        let mut pending = Vec::new();
        for i in 0..4 {
            let mut sender = sender.clone();
            let uri = format!("http://{}/h2?i={i}", p.proxy_addr);
            pending.push(tokio::spawn(async move {
                let req = Request::builder()
                    .uri(uri)
                    .header("cookie", "a=1")
                    .header("cookie", "b=2")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.expect("h2 request through the proxy");
                let version = resp.version();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (i, version, status, String::from_utf8(body.to_vec()).unwrap())
            }));
        }
        for t in pending {
            let (i, version, status, body) = t.await.unwrap();
            assert_eq!(version, Version::HTTP_2, "the client side stays HTTP/2");
            assert_eq!(status, 200);
            assert_eq!(body, format!("h1 member HTTP/1.1 /h2?i={i}"));
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4);
        for (version, cookies, host) in seen {
            assert_eq!(version, Version::HTTP_11);
            // HTTP/2 cookie crumbs are joined into one header for HTTP/1.1 (RFC 9113 §8.2.3).
            assert_eq!(cookies, ["a=1; b=2"]);
            // The member gets a Host built from the :authority.
            assert_eq!(host, p.proxy_addr.to_string());
        }
        task.abort();
        p.shutdown().await;
    })
    .await;
}

const BIG: u64 = 256 * 1024 * 1024;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_256_mib_up_and_down_through_the_binary_in_bounded_memory() {
    bounded(async {
        let m = Member::start("big").await;
        let file = temp_file("big-pools.yaml", &pool_yaml("big", &[(m.addr, "big", 1)], ""));
        let proxy = spawn_standalone(&file, &["--no-access-log"]).await;

        // Upload: 256 MiB streamed (chunked) in 64 KiB frames; the member counts what arrives.
        let started = Instant::now();
        let tcp = TcpStream::connect(proxy.proxy_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
        let frames = futures_util::stream::unfold(BIG, move |left| {
            let chunk = chunk.clone();
            async move {
                (left > 0).then(|| {
                    let n = left.min(chunk.len() as u64) as usize;
                    (Ok::<_, Infallible>(Frame::data(chunk.slice(..n))), left - n as u64)
                })
            }
        });
        let req = Request::post(format!("http://{}/upload", proxy.proxy_addr))
            .header("host", "big.test")
            .body(StreamBody::new(frames))
            .unwrap();
        let resp = sender.send_request(req).await.expect("upload through the proxy");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(String::from_utf8_lossy(&body), format!("route=big received={BIG}"));
        let upload_took = started.elapsed();

        // Download: 256 MiB streamed by the member, counted frame by frame.
        let started = Instant::now();
        let tcp = TcpStream::connect(proxy.proxy_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("http://{}/download?bytes={BIG}", proxy.proxy_addr))
            .header("host", "big.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.expect("download through the proxy");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut received: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("the download body streams without error");
            if let Some(d) = frame.data_ref() {
                assert!(d.first().is_none_or(|&b| b == b'x') && d.last().is_none_or(|&b| b == b'x'));
                received += d.len() as u64;
            }
        }
        assert_eq!(received, BIG);
        let download_took = started.elapsed();

        let peak = proxy.peak_rss_kib();
        eprintln!("upload {upload_took:?}, download {download_took:?}, proxy peak RSS {peak} KiB");
        assert!(peak < RSS_LIMIT_KIB, "the proxy's peak RSS was {peak} KiB (limit {RSS_LIMIT_KIB} KiB)");
        assert_eq!(m.hits(), 2);
        drop(proxy);
        let _ = std::fs::remove_file(file);
    })
    .await;
}
