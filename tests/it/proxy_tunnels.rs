//! Upgraded connections (tunnels) are tracked: the client idle timeout closes a silent one (both
//! sockets), and the shutdown drain waits for open ones up to the drain timeout, then closes them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use routeid::proxy::ProxySettings;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A member that answers its first request head with `101` and then echoes bytes; `closed`
/// fires when the proxy closes its side of the tunnel.
struct UpgradeMember {
    addr: SocketAddr,
    closed: oneshot::Receiver<()>,
}

async fn read_head(s: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed in the head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

async fn upgrade_member() -> UpgradeMember {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, closed) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_head(&mut s).await;
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(());
    });
    UpgradeMember { addr, closed }
}

/// A client connection upgraded through the proxy.
async fn open_tunnel(proxy: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, msg);
}

/// Reads until the peer closes; returns how long that took.
async fn closed_after(s: &mut TcpStream) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return t.elapsed(),
            Ok(_) => {}
        }
    }
}

/// Waits until the proxy refuses new connections (its listener is closed: the drain began).
async fn until_not_accepting(proxy: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(proxy).await.is_ok() {
        assert!(Instant::now() < deadline, "the proxy kept accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn settings(idle: Duration, drain: Duration) -> ProxySettings {
    ProxySettings { client_idle_timeout: idle, drain_timeout: drain, access_log: false, ..Default::default() }
}

#[tokio::test]
async fn a_silent_tunnel_is_closed_after_the_idle_timeout_on_both_sides() {
    bounded(async {
        let m = upgrade_member().await;
        let p = start_proxy_with(
            &pool_yaml("t", &[(m.addr, "m", 1)], ""),
            settings(Duration::from_millis(300), Duration::from_secs(5)),
        )
        .await;
        let mut t = open_tunnel(p.proxy_addr).await;
        // Traffic keeps it open well past the idle timeout.
        for i in 0..8 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            echo(&mut t, b"ping").await;
        }
        // Then nothing either way, as with a peer that vanished: both sockets are closed. The
        // idle time counts from the last bytes (not from a sleep that a loaded machine stretches).
        let last_traffic = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), closed_after(&mut t))
            .await
            .expect("a silent tunnel was still open after 5 s (idle timeout 300 ms)");
        let idle = last_traffic.elapsed();
        assert!(idle >= Duration::from_millis(250), "closed {idle:?} after the last bytes, before the idle timeout");
        tokio::time::timeout(Duration::from_secs(5), m.closed).await.expect("the member's side was closed").unwrap();
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_waits_for_an_open_tunnel_then_closes_it_at_the_drain_timeout() {
    bounded(async {
        let m = upgrade_member().await;
        let p = start_proxy_with(
            &pool_yaml("t", &[(m.addr, "m", 1)], ""),
            settings(Duration::from_secs(30), Duration::from_secs(1)),
        )
        .await;
        let proxy_addr = p.proxy_addr;
        let mut t = open_tunnel(proxy_addr).await;
        let started = Instant::now();
        let mut shutdown = tokio::spawn(p.shutdown());
        until_not_accepting(proxy_addr).await;
        // Draining: the tunnel still carries bytes, and the shutdown waits for it.
        echo(&mut t, b"still here").await;
        assert!(!shutdown.is_finished(), "shutdown returned with a tunnel open");
        tokio::time::timeout(Duration::from_secs(5), closed_after(&mut t)).await.expect("closed at the drain timeout");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900), "the tunnel was closed after {took:?}, before the drain timeout");
        tokio::time::timeout(Duration::from_secs(5), &mut shutdown).await.expect("shutdown returns").unwrap();
        tokio::time::timeout(Duration::from_secs(5), m.closed).await.expect("the member's side was closed").unwrap();
    })
    .await;
}

#[tokio::test]
async fn shutdown_returns_as_soon_as_the_last_tunnel_ends() {
    bounded(async {
        let m = upgrade_member().await;
        let p = start_proxy_with(
            &pool_yaml("t", &[(m.addr, "m", 1)], ""),
            settings(Duration::from_secs(30), Duration::from_secs(30)),
        )
        .await;
        let proxy_addr = p.proxy_addr;
        let mut t = open_tunnel(proxy_addr).await;
        echo(&mut t, b"hello").await;
        let shutdown = tokio::spawn(p.shutdown());
        until_not_accepting(proxy_addr).await;
        assert!(!shutdown.is_finished(), "shutdown returned with a tunnel open");
        let closed_by_client = Instant::now();
        drop(t);
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("shutdown returns once the tunnel ended")
            .unwrap();
        assert!(closed_by_client.elapsed() < Duration::from_secs(5), "far from the 30 s drain timeout");
        tokio::time::timeout(Duration::from_secs(5), m.closed).await.expect("the member's side was closed").unwrap();
    })
    .await;
}
