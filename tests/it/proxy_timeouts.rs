//! The client idle timeout closes keep-alive connections that carry nothing, on HTTP/1.1 and
//! HTTP/2, and never one whose request is still waiting for its member; a client that stops
//! reading its response is closed after it too.

use std::time::{Duration, Instant};

use crate::support::cluster::{WAIT, eventually};
use crate::support::raw::RawConn;
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

/// A member that answers its one request with `content-length: len` and then writes the body in
/// chunks, waiting `pause` between them. The receiver fires when its connection is closed (a
/// write fails), or when the body was all written.
async fn raw_member(
    len: usize,
    chunk: usize,
    pause: Duration,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
        let mut left = len;
        let mut ok = s.write_all(head.as_bytes()).await.is_ok();
        while ok && left > 0 {
            let n = left.min(chunk);
            ok = s.write_all(&vec![b'x'; n]).await.is_ok();
            left -= n;
            if left > 0 && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let _ = tx.send(());
    });
    (addr, rx)
}

/// Polls the proxy's metrics until the member's `routeid_member_in_flight` is 0.
async fn member_in_flight_drops_to_zero(p: &routeid::runtime::Running) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = get(p.admin_addr, "/metrics", &[]).await.body;
        let line = m.lines().find(|l| l.starts_with("routeid_member_in_flight{")).unwrap_or("-").to_owned();
        if line.ends_with(" 0") {
            return;
        }
        assert!(Instant::now() < deadline, "still in flight: {line}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_closed_after_the_idle_timeout() {
    bounded(async {
        // 64 MiB the client never reads: far more than the socket buffers on both sides hold.
        let (member, member_closed) = raw_member(64 << 20, 64 << 10, Duration::ZERO).await;
        let settings = ProxySettings { client_idle_timeout: Duration::from_secs(1), ..settings() };
        let p = start_proxy_with(&pool_yaml("p", &[(member, "m", 1)], ""), settings).await;
        let mut c = TcpStream::connect(p.proxy_addr).await.unwrap();
        let _ = socket2::SockRef::from(&c).set_recv_buffer_size(4096);
        c.write_all(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), member_closed)
            .await
            .expect("the member connection was still held 10 s after the client stopped reading")
            .unwrap();
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(900), "closed after {waited:?}: before the idle timeout");
        member_in_flight_drops_to_zero(&p).await;
        // The client's fault: the member is not blamed.
        let m = get(p.admin_addr, "/metrics", &[]).await.body;
        let blamed: Vec<_> =
            m.lines().filter(|l| l.starts_with("routeid_member_failures_total{") && !l.ends_with(" 0")).collect();
        assert!(blamed.is_empty(), "{blamed:?}");
        eprintln!("a client that stopped reading (idle timeout 1 s): member connection closed after {waited:?}");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_response_body_waiting_for_its_member_is_not_a_write_stall() {
    bounded(async {
        // A long poll: the body waits 500 ms on the member between its chunks, 1 s in all (idle
        // timeout 300 ms).
        let (member, _done) = raw_member(3, 1, Duration::from_millis(500)).await;
        let p = start_proxy_with(&pool_yaml("p", &[(member, "m", 1)], ""), settings()).await;
        let got = get(p.proxy_addr, "/poll", &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "xxx"));
        p.shutdown().await;
    })
    .await;
}

/// Two pools on one proxy: `/short` with a 300 ms response timeout, `/long` with 3 s.
fn two_timeouts(m: &Member) -> String {
    let pool = |name: &str, prefix: &str, timeout: &str| {
        let extra =
            format!("  frontend: {{pathPrefix: {prefix}, rewritePrefix: /}}\n  timeouts: {{response: {timeout}}}\n");
        pool_yaml(name, &[(m.addr, "m", 1)], &extra)
    };
    format!("{}---\n{}", pool("short", "/short", "300ms"), pool("long", "/long", "3s"))
}

/// Asserts that `took` is within `[at_least, under)` milliseconds.
fn within(what: &str, took: Duration, at_least: u64, under: u64) {
    let (at_least, under) = (Duration::from_millis(at_least), Duration::from_millis(under));
    assert!(took >= at_least && took < under, "{what}: answered after {took:?}");
}

/// The requests of one keep-alive connection share its response timer: each gets its own
/// pool's response timeout whatever came before on the connection — a shorter one after a
/// longer, a longer one after a shorter, again after one that fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_of_a_connection_gets_its_own_response_timeout() {
    bounded(async {
        let m = Member::start("m").await;
        let p = start_proxy(&two_timeouts(&m)).await;
        let mut c = RawConn::connect(p.proxy_addr).await;
        // (path, status, at least, under), in milliseconds.
        let cases: [(&str, u16, u64, u64); 6] = [
            ("/long/slow?ms=0", 200, 0, 2_000),
            ("/short/slow?ms=5000", 504, 300, 2_000),
            ("/long/slow?ms=1000", 200, 1_000, 2_900),
            ("/short/slow?ms=5000", 504, 300, 2_000),
            ("/short/slow?ms=0", 200, 0, 2_000),
            ("/long/slow?ms=5000", 504, 3_000, 5_000),
        ];
        for (path, status, at_least, under) in cases {
            let t = Instant::now();
            c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let got = c.response().await.unwrap();
            assert_eq!(got.status, status, "{path}: {}", got.head);
            within(path, t.elapsed(), at_least, under);
        }
        p.shutdown().await;
    })
    .await;
}

/// Concurrent HTTP/2 streams of one connection cannot share one timer: each waits under its
/// own pool's timeout, and a stream reset mid-wait leaves the next ones theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_http2_streams_each_get_their_own_response_timeout() {
    bounded(async {
        let m = Member::start("m").await;
        let p = start_proxy(&two_timeouts(&m)).await;
        let stream = TcpStream::connect(p.proxy_addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let ask = |path: &'static str| {
            let mut sender = sender.clone();
            let uri = format!("http://{}{path}", p.proxy_addr);
            async move {
                let t = Instant::now();
                let req = http::Request::get(uri).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
                let status = sender.send_request(req).await.unwrap().status().as_u16();
                (status, t.elapsed())
            }
        };
        // A stream given up on while it waits: its timer goes with it.
        let dropped = tokio::spawn(ask("/long/slow?ms=5000"));
        let hits = std::sync::Arc::clone(&m.hits);
        eventually(WAIT, "the member to get the request", || {
            let hits = std::sync::Arc::clone(&hits);
            async move { hits.load(std::sync::atomic::Ordering::SeqCst) == 1 }
        })
        .await;
        dropped.abort();
        let (short, long, short_again) =
            tokio::join!(ask("/short/slow?ms=5000"), ask("/long/slow?ms=1000"), ask("/short/slow?ms=5000"));
        assert_eq!(short.0, 504);
        within("/short", short.1, 300, 2_000);
        assert_eq!(long.0, 200);
        within("/long", long.1, 1_000, 2_900);
        assert_eq!(short_again.0, 504);
        within("/short again", short_again.1, 300, 2_000);
        p.shutdown().await;
    })
    .await;
}
