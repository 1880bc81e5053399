//! Connections to members are pooled per member and reused; closed ones are replaced.

use crate::support::*;

#[tokio::test]
async fn sequential_requests_reuse_one_member_connection() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("p", &[(a.addr, "a", 1)], "")).await;
        let c = client();
        for _ in 0..50 {
            let got = send(&c, p.proxy_addr, "GET", "/", &[], bytes::Bytes::new()).await;
            assert_eq!(got.status, 200);
        }
        assert_eq!(a.hits(), 50);
        assert_eq!(a.connections(), 1, "one keep-alive connection serves them all");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_member_that_closes_every_connection_still_gets_every_request() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("p", &[(a.addr, "a", 1)], "")).await;
        for _ in 0..20 {
            let got = get(p.proxy_addr, "/close", &[]).await;
            assert_eq!((got.status.as_u16(), got.route()), (200, "a"));
        }
        assert_eq!(a.hits(), 20);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn post_bodies_reuse_connections_too() {
    bounded(async {
        let a = Member::start("a").await;
        let p = start_proxy(&pool_yaml("p", &[(a.addr, "a", 1)], "")).await;
        let c = client();
        for i in 0..20 {
            let body = bytes::Bytes::from(vec![b'x'; 1000 + i]);
            let got = send(&c, p.proxy_addr, "POST", "/upload", &[], body).await;
            assert_eq!(got.body, format!("route=a received={}", 1000 + i));
        }
        assert_eq!(a.connections(), 1);
        p.shutdown().await;
    })
    .await;
}

/// A member that answers `200 ok` as soon as it has a request head, before any body, then
/// reads whatever comes until the connection closes, which it reports.
async fn early_answering_member() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (closed, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                let _ = closed.send(());
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_connection_answered_before_its_upload_ended_is_closed_not_pooled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let (maddr, mut closed) = early_answering_member().await;
        let yaml = pool_yaml("p", &[(maddr, "m", 1)], "  timeouts: {response: 2s}\n");
        let p = start_proxy(&yaml).await;
        // Client A starts a 100 000-byte upload, gets its early answer and stays connected.
        let mut a = tokio::net::TcpStream::connect(p.proxy_addr).await.unwrap();
        a.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789").await.unwrap();
        let (mut buf, mut seen) = (vec![0u8; 4096], Vec::new());
        while !seen.ends_with(b"ok") {
            let n = a.read(&mut buf).await.unwrap();
            assert!(n > 0, "A's connection closed before its answer");
            seen.extend_from_slice(&buf[..n]);
        }
        // That member connection cannot carry another request before the rest of A's upload:
        // it is closed, not handed to the next client.
        let closing = tokio::time::timeout(std::time::Duration::from_secs(5), closed.recv()).await;
        assert_eq!(closing, Ok(Some(())), "the member saw that connection closed");
        let t = std::time::Instant::now();
        let b = get(p.proxy_addr, "/b", &[]).await;
        assert_eq!((b.status.as_u16(), b.body.as_str()), (200, "ok"), "another client is not held up");
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "{:?}", t.elapsed());
        drop(a);
        p.shutdown().await;
    })
    .await;
}
