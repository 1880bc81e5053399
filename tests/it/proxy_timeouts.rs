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

#[tokio::test]
async fn an_http2_client_that_answers_pings_is_still_closed_when_idle() {
    bounded(async {
        let m = Member::start("m").await;
        let p = start_proxy_with(&pool_yaml("p", &[(m.addr, "m", 1)], ""), settings()).await;
        let stream = TcpStream::connect(p.proxy_addr).await.unwrap();
        // The client PINGs every 50 ms, idle or not, and answers the server's PINGs: bytes move
        // both ways all the time, and none of them is a request.
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(50))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://{}/", p.proxy_addr))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
        let t = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        let waited = t.elapsed();
        assert!(ended.is_ok(), "the PINGing connection was still open after 5 s (idle timeout 300 ms)");
        assert!(waited >= Duration::from_millis(200), "closed after {waited:?}, before the idle timeout");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    bounded(async {
        let m = Member::start("m").await;
        // The idle timeout is far away: only the header timeout can close it.
        let s = ProxySettings {
            client_header_timeout: Duration::from_millis(300),
            client_idle_timeout: Duration::from_secs(30),
            ..settings()
        };
        let p = start_proxy_with(&pool_yaml("p", &[(m.addr, "m", 1)], ""), s).await;
        let mut silent = TcpStream::connect(p.proxy_addr).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(5), closed_after(&mut silent))
            .await
            .expect("a connection that never sent a byte was still open after 5 s");
        assert!(waited >= Duration::from_millis(200), "closed after {waited:?}, before the header timeout");
        // A connection that sends its request in time is served past the header timeout.
        let got = get(p.proxy_addr, "/slow?ms=500", &[]).await;
        assert_eq!((got.status.as_u16(), got.route()), (200, "m"));
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_silent_http2_connection_is_closed_after_the_header_timeout_too() {
    bounded(async {
        let m = Member::start("m").await;
        let s = ProxySettings {
            client_header_timeout: Duration::from_millis(300),
            client_idle_timeout: Duration::from_secs(30),
            ..settings()
        };
        let p = start_proxy_with(&pool_yaml("p", &[(m.addr, "m", 1)], ""), s).await;
        // The preface and SETTINGS, then nothing: no request ever starts.
        let stream = TcpStream::connect(p.proxy_addr).await.unwrap();
        let (_sender, conn) = hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        let t = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(ended.is_ok(), "an HTTP/2 connection without a request was still open after 5 s");
        assert!(t.elapsed() < Duration::from_secs(5));
        p.shutdown().await;
    })
    .await;
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Resident set size of a process now, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_pinging_http2_clients_give_their_sockets_back_when_idle() {
    bounded(async {
        let m = Member::start("m").await;
        let file = temp_file("idle-h2.yaml", &pool_yaml("p", &[(m.addr, "m", 1)], ""));
        // Long enough that the first client is not idle before the hundredth has connected.
        let p = spawn_standalone(&file, &["--client-idle-timeout", "2s", "--no-access-log"]).await;
        let (pid, baseline) = (p.pid(), open_fds(p.pid()));
        let mut conns = Vec::new();
        for _ in 0..100 {
            let stream = TcpStream::connect(p.proxy_addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Duration::from_millis(100))
                .keep_alive_while_idle(true)
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
            let conn = tokio::spawn(conn);
            let req = http::Request::get(format!("http://{}/", p.proxy_addr))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
            conns.push((sender, conn));
        }
        let (open, rss_open) = (open_fds(pid), rss_kib(pid));
        assert!(open >= baseline + 100, "{open} descriptors open with 100 clients (baseline {baseline})");
        for (_sender, conn) in conns {
            tokio::time::timeout(Duration::from_secs(10), conn).await.expect("an idle PINGing client was kept").unwrap().ok();
        }
        // The proxy closed them all: its descriptors are back (its member connections aside).
        wait_for(Duration::from_secs(5), "the proxy's descriptors back to the baseline", || {
            open_fds(pid) <= baseline + 2
        })
        .await;
        eprintln!(
            "100 idle PINGing h2 clients: {open} fds open (baseline {baseline}), RSS {rss_open} KiB; after the idle timeout: {} fds, RSS {} KiB",
            open_fds(pid),
            rss_kib(pid)
        );
    })
    .await;
}
