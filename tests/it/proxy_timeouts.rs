//! The client idle timeout closes keep-alive connections that carry nothing, on HTTP/1.1 and
//! HTTP/2, and never one whose request is still waiting for its member.

use std::time::{Duration, Instant};

use crate::support::*;
use routeid::proxy::ProxySettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn settings() -> ProxySettings {
    ProxySettings {
        client_idle_timeout: Duration::from_millis(300),
        // Longer than the idle timeout, so the idle timeout is what closes the connection.
        client_header_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// Reads until the peer closes; returns when it did.
async fn closed_after(stream: &mut TcpStream) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return t.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    bounded(async {
        let m = Member::start("m").await;
        let p = start_proxy_with(&pool_yaml("p", &[(m.addr, "m", 1)], ""), settings()).await;
        let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        let waited = closed_after(&mut s).await;
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(5), "closed after {waited:?}");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_too() {
    bounded(async {
        let m = Member::start("m").await;
        let p = start_proxy_with(&pool_yaml("p", &[(m.addr, "m", 1)], ""), settings()).await;
        let stream = TcpStream::connect(p.proxy_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        let t = Instant::now();
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://{}/", p.proxy_addr))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
        // Idle now: the proxy sends GOAWAY and the connection ends.
        let _ = conn.await;
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(5), "closed after {waited:?}");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_request_waiting_for_its_member_is_not_idle() {
    bounded(async {
        let m = Member::start("m").await;
        let p = start_proxy_with(&pool_yaml("p", &[(m.addr, "m", 1)], ""), settings()).await;
        let got = get(p.proxy_addr, "/slow?ms=1000", &[]).await;
        assert_eq!(got.status, 200, "a 1 s answer outlives a 300 ms idle timeout");
        assert_eq!(got.body, "route=m slow=1000");
        p.shutdown().await;
    })
    .await;
}
