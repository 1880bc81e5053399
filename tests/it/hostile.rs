//! Hostile inputs: what a malicious or broken client or member can send, over real sockets.
//!
//! Every case runs against a scene: a sticky pool `shop` of two echo members at `/`, optionally a
//! pool `bad` at `/bad` whose only member runs a script, and a bystander — a well-behaved client
//! keeping its own session busy the whole time. Each case asserts what the hostile side got,
//! what the members received (often: nothing), and that the bystander never noticed and the
//! members of `shop` stayed `Ok` without an error. Raw bytes go out through
//! [`crate::support::raw`]; HTTP/2 abuse is written frame by frame.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::raw::*;
use crate::support::*;
use routeid::proxy::ProxySettings;
use routeid::runtime::Running;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const STICKY: &str = "  sticky:\n    names: [JSESSIONID, jsessionid]\n    cookie: {name: ROUTEID, mode: Insert}\n";
/// The `bad` pool answers within 500 ms or not at all, with one attempt per request.
const BAD_POOL: &str =
    "  frontend: {pathPrefix: /bad}\n  timeouts: {response: 500ms}\n  health: {passive: {maxAttempts: 1}}\n";
/// The client header timeout of every scene.
const HEADER_TIMEOUT: Duration = Duration::from_millis(800);

struct Scene {
    p: Running,
    a: Member,
    b: Member,
    bystander: Bystander,
}

impl Scene {
    /// The `shop` pool and, given a scripted member, the `bad` pool.
    async fn start(bad: Option<&ScriptedMember>) -> Scene {
        let (a, b) = (Member::start("a").await, Member::start("b").await);
        let mut yaml = pool_yaml("shop", &[(a.addr, "a", 1), (b.addr, "b", 1)], STICKY);
        if let Some(bad) = bad {
            yaml = format!("{yaml}---\n{}", pool_yaml("bad", &[(bad.addr, "bad", 1)], BAD_POOL));
        }
        let settings = ProxySettings {
            client_header_timeout: HEADER_TIMEOUT,
            client_idle_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let p = start_proxy_with(&yaml, settings).await;
        let bystander = Bystander::start(p.proxy_addr).await;
        Scene { p, a, b, bystander }
    }

    fn addr(&self) -> SocketAddr {
        self.p.proxy_addr
    }

    /// What the `shop` members received besides the bystander's requests.
    fn seen_by_shop(&self) -> Vec<Seen> {
        let mut seen: Vec<Seen> = self.a.seen.lock().unwrap().clone();
        seen.extend(self.b.seen.lock().unwrap().iter().cloned());
        seen.retain(|s| s.path_and_query != "/bystander");
        seen
    }

    /// Forgets what the `shop` members received so far (between the cases of one test).
    fn forget(&self) {
        for m in [&self.a, &self.b] {
            m.seen.lock().unwrap().retain(|s| s.path_and_query == "/bystander");
        }
    }

    /// The bystander never noticed, the `shop` members are unharmed; then the proxy stops.
    async fn end(self) {
        self.bystander.finish().await;
        assert_pool_unharmed(self.p.admin_addr, "shop").await;
        self.p.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Request framing
// ---------------------------------------------------------------------------------------------

/// Requests no proxy may forward: each gets a 4xx, the connection closes, no member sees it.
#[rustfmt::skip]
const REFUSED: &[(&str, &str)] = &[
    ("conflicting Content-Length",    "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
    ("Content-Length list",           "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd"),
    ("signed Content-Length",         "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc"),
    ("unknown transfer coding",       "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
    ("chunked not last",              "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("Transfer-Encoding in HTTP/1.0", "POST /upload HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("obs-fold",                      "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n"),
    ("NUL in a header value",         "GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n"),
    ("bare CR in a header value",     "GET / HTTP/1.1\r\nHost: x\r\nX-Cr: a\rb\r\n\r\n"),
    ("bare CR in a cookie",           "GET / HTTP/1.1\r\nHost: x\r\nCookie: ROUTEID=.a\rX-Evil: 1\r\n\r\n"),
    ("white space before the colon",  "GET / HTTP/1.1\r\nHost: x\r\nX-Space : a\r\n\r\n"),
    ("space in the target",           "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("unknown version",               "GET / HTTP/1.7\r\nHost: x\r\n\r\n"),
    ("no header name",                "GET / HTTP/1.1\r\nHost: x\r\n: empty\r\n\r\n"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_is_refused_before_any_member_sees_it() {
    bounded(async {
        let s = Scene::start(None).await;
        for (case, request) in REFUSED {
            let mut c = RawConn::connect(s.addr()).await;
            c.send(request.as_bytes()).await.unwrap();
            let got = c.response().await.unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!((400..500).contains(&got.status), "{case}: got {}", got.head);
            assert!(got.all("set-cookie").is_empty(), "{case}: a refusal pins no session: {}", got.head);
            assert!(c.closed_within(Duration::from_secs(2)).await, "{case}: the connection stays open");
            assert!(s.seen_by_shop().is_empty(), "{case}: a member saw {:?}", s.seen_by_shop());
        }
        s.end().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_request_line_and_headers_get_4xx_and_reach_no_member() {
    bounded(async {
        let s = Scene::start(None).await;
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(512 * 1024));
        let long_header = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(512 * 1024));
        let many = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
        let many_headers = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        let big_cookie = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {}ROUTEID=.a\r\n\r\n", "k=v; ".repeat(100_000));
        for (case, request) in [
            ("request line", long_target),
            ("one header", long_header),
            ("500 headers", many_headers),
            ("cookie header", big_cookie),
        ] {
            let mut c = RawConn::connect(s.addr()).await;
            // The proxy may answer and close before it has read everything: a failed write is fine.
            let _ = c.send(request.as_bytes()).await;
            let got = c.response().await.unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!([400, 414, 431].contains(&got.status), "{case}: got {}", got.head);
            assert!(c.closed_within(Duration::from_secs(2)).await, "{case}: the connection stays open");
            assert!(s.seen_by_shop().is_empty(), "{case}: a member saw a request");
        }
        s.end().await;
    })
    .await;
}

/// RFC 9112 §6.1: a request with both `Transfer-Encoding` and `Content-Length` is refused, or
/// read as chunked and the connection closed after it. Either way the bytes after the chunked
/// body never become a request of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_smuggles_nothing() {
    bounded(async {
        let s = Scene::start(None).await;
        let smuggle = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        for (case, framing) in [
            ("CL first", format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", smuggle.len())),
            ("TE first", format!("Transfer-Encoding: chunked\r\nContent-Length: {}\r\n", smuggle.len())),
            (
                "CL between two TE",
                format!(
                    "Transfer-Encoding: chunked\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    smuggle.len()
                ),
            ),
        ] {
            let request = format!("POST /upload HTTP/1.1\r\nHost: x\r\n{framing}\r\n{smuggle}");
            let mut c = RawConn::connect(s.addr()).await;
            c.send(request.as_bytes()).await.unwrap();
            let got = c.response().await.unwrap_or_else(|e| panic!("{case}: {e}"));
            match got.status {
                400 => assert!(s.seen_by_shop().is_empty(), "{case}: refused, yet a member saw it"),
                200 => {
                    assert_eq!(got.text().split(' ').nth(1), Some("received=0"), "{case}: read as chunked");
                    let seen = s.seen_by_shop();
                    assert_eq!(seen.len(), 1, "{case}: {seen:?}");
                    let h = &seen[0].headers;
                    assert!(
                        !(h.contains_key("content-length") && h.contains_key("transfer-encoding")),
                        "{case}: the member got both framings: {h:?}"
                    );
                }
                _ => panic!("{case}: got {}", got.head),
            }
            assert!(c.closed_within(Duration::from_secs(2)).await, "{case}: the connection stays open");
            assert!(s.seen_by_shop().iter().all(|r| r.path_and_query != "/smuggled"), "{case}: smuggled");
            s.forget();
        }
        s.end().await;
    })
    .await;
}

/// Two equal `Content-Length` headers may be read as one (RFC 9110 §8.6); the member then gets
/// exactly that many bytes, never the bytes after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_equal_content_length_reads_exactly_that_body() {
    bounded(async {
        let s = Scene::start(None).await;
        let request = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut c = RawConn::connect(s.addr()).await;
        c.send(request.as_bytes()).await.unwrap();
        let got = c.response().await.unwrap();
        match got.status {
            400 => assert!(s.seen_by_shop().is_empty()),
            200 => {
                assert_eq!(got.text().split(' ').nth(1), Some("received=3"));
                // What follows the body is the client's next request, parsed by the proxy.
                let next = c.response().await.unwrap();
                assert_eq!(next.status, 200);
                assert!(next.text().ends_with("path=/smuggled"), "{}", next.text());
                assert_eq!(s.seen_by_shop().len(), 2);
            }
            _ => panic!("got {}", got.head),
        }
        s.end().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Route values
// ---------------------------------------------------------------------------------------------

/// Asserts the route cookie routeid set, if any, names a real member and nothing else.
fn assert_clean_route_cookie(case: &str, got: &RawResponse) {
    for c in got.all("set-cookie") {
        let value = c.split(';').next().unwrap_or("");
        assert!(value == "ROUTEID=.a" || value == "ROUTEID=.b", "{case}: Set-Cookie {c:?}");
    }
    let injected = got.headers.iter().find(|(n, v)| n.contains("evil") || v.contains("evil"));
    assert!(injected.is_none(), "{case}: injected header {injected:?}");
}

/// (case, request line target, Cookie header bytes, the member it must stick to, if any)
type RouteCase = (&'static str, &'static str, &'static [u8], Option<&'static str>);

#[rustfmt::skip]
const ROUTE_CASES: &[RouteCase] = &[
    ("CR LF encoded in the query",     "/?jsessionid=x.a%0d%0aX-Evil:%201", b"",                                   None),
    ("CR LF encoded in a path param",  "/p;jsessionid=x.a%0D%0ASet-Cookie:evil=1", b"",                             None),
    ("CR LF encoded in the cookie",    "/",                                 b"JSESSIONID=x.a%0d%0aX-Evil:%201",    None),
    ("comma in the route cookie",      "/",                                 b"ROUTEID=.a,b",                       None),
    ("comma in the session cookie",    "/",                                 b"JSESSIONID=x.a, ROUTEID=.b",         None),
    ("semicolon ends the value",       "/",                                 b"ROUTEID=.a;evil=1",                  Some("a")),
    ("semicolon encoded in the query", "/?jsessionid=x.b%3Bevil",           b"",                                   None),
    ("non-UTF-8 in the cookie",        "/",                                 b"ROUTEID=.\xff\xfe",                  None),
    ("non-UTF-8 encoded in the query", "/?jsessionid=x.%ff%fe",             b"",                                   None),
    ("overlong route",                 "/",                                 b"ROUTEID=.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", None),
    ("NUL encoded in the query",       "/?jsessionid=x.a%00",               b"",                                   None),
    ("percent-encoded real route",     "/?jsessionid=x.%62",                b"",                                   Some("b")),
    ("quoted route cookie",            "/",                                 b"ROUTEID=\".b\"",                     Some("b")),
];

/// Route values with CR/LF, `;`, `,`, non-UTF-8 bytes and worse: never a header, never a
/// cookie of their own, never a failed request; a usable route still sticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_route_values_never_reach_a_header() {
    bounded(async {
        let s = Scene::start(None).await;
        for (case, target, cookie, sticks_to) in ROUTE_CASES {
            let mut request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n").into_bytes();
            if !cookie.is_empty() {
                request.extend_from_slice(b"Cookie: ");
                request.extend_from_slice(cookie);
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(b"Connection: close\r\n\r\n");
            let got = exchange(s.addr(), &request).await.unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(got.status, 200, "{case}: {}", got.head);
            assert_clean_route_cookie(case, &got);
            let member = got.header("x-member").unwrap_or_default().to_owned();
            match sticks_to {
                Some(m) => {
                    assert_eq!(member, *m, "{case}");
                    assert!(got.all("set-cookie").is_empty(), "{case}: a sticky hit sets no cookie");
                }
                None => assert_eq!(got.all("set-cookie").len(), 1, "{case}: balanced, so pinned anew"),
            }
            // The member got the request as sent: the target untouched, the route cookie stripped.
            let mut seen = s.seen_by_shop();
            assert_eq!(seen.len(), 1, "{case}: {seen:?}");
            let seen = seen.remove(0);
            s.forget();
            assert_eq!(seen.path_and_query, *target, "{case}");
            let cookies: Vec<_> = seen.headers.get_all("cookie").iter().map(|v| v.as_bytes().to_vec()).collect();
            let names = cookies.iter().flat_map(|c| c.split(|&b| b == b';')).map(|p| p.split(|&b| b == b'=').next());
            assert!(names.flatten().all(|n| n.trim_ascii() != b"ROUTEID"), "{case}: {cookies:?}");
        }
        s.end().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 abuse
// ---------------------------------------------------------------------------------------------

/// Reads frames until GOAWAY or the end of the connection; returns the GOAWAY's error code.
async fn goaway_or_close(c: &mut RawConn, limit: Duration) -> Option<u32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match c.frame().await {
            Ok(Some(f)) if f.kind == GOAWAY => {
                return Some(u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
    panic!("the connection neither went away nor closed within {limit:?}");
}

/// Requests from everyone but the bystander, on both `shop` members.
fn hostile_hits(s: &Scene) -> usize {
    s.seen_by_shop().len()
}

/// CVE-2023-44487: open a stream and cancel it at once, thousands of times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off() {
    bounded(async {
        let s = Scene::start(None).await;
        let mut c = RawConn::h2(s.addr()).await;
        let block = h2_get_block("/slow?ms=300", "x");
        let mut burst = Vec::new();
        for i in 0..2000u32 {
            let id = 2 * i + 1;
            burst.extend(h2_frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            burst.extend(h2_frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
        }
        let _ = c.send(&burst).await; // the proxy may hang up before reading it all
        let code = goaway_or_close(&mut c, Duration::from_secs(10)).await;
        assert!(code.is_none_or(|c| c == 0xb || c == 0x1), "GOAWAY code {code:?}");
        assert!(hostile_hits(&s) < 200, "{} cancelled requests reached the members", hostile_hits(&s));
        s.end().await;
    })
    .await;
}

/// CVE-2024-27316 and friends: a header block that never ends, in CONTINUATION frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_is_cut_off() {
    bounded(async {
        let s = Scene::start(None).await;
        let mut c = RawConn::h2(s.addr()).await;
        c.send(&h2_frame(HEADERS, END_STREAM, 1, &h2_get_block("/", "x"))).await.unwrap();
        let junk: Vec<u8> = (0..120).flat_map(|i| hpack_literal(&format!("x-junk-{i}"), &[b'j'; 100])).collect();
        let (mut reader, mut writer) = c.stream.into_split();
        let flood = tokio::spawn(async move {
            let frame = h2_frame(CONTINUATION, 0, 1, &junk);
            let mut sent = 0usize;
            // 64 MiB at most; the proxy should hang up long before.
            while sent < 64 << 20 {
                match tokio::time::timeout(Duration::from_secs(2), writer.write_all(&frame)).await {
                    Ok(Ok(())) => sent += frame.len(),
                    _ => break,
                }
            }
            sent
        });
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut sink = vec![0u8; 16 * 1024];
            loop {
                match tokio::io::AsyncReadExt::read(&mut reader, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the proxy kept reading CONTINUATION frames for 10 s");
        let sent = flood.await.unwrap();
        assert!(sent < 64 << 20, "the proxy read the whole 64 MiB flood");
        assert_eq!(hostile_hits(&s), 0, "the unfinished request reached a member");
        s.end().await;
    })
    .await;
}

/// An HPACK integer with a 7-bit prefix after `first` (the representation bits).
fn hpack_len(out: &mut Vec<u8>, first: u8, mut n: usize) {
    if n < 127 {
        out.push(first | n as u8);
        return;
    }
    out.push(first | 127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// One 4 KiB header put in the dynamic table, then referenced 4000 times by one byte each:
/// 16 MB of headers from an 8 KiB frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_hpack_bomb_is_refused() {
    bounded(async {
        let s = Scene::start(None).await;
        let mut c = RawConn::h2(s.addr()).await;
        let mut block = h2_get_block("/", "x");
        block.push(0x40); // literal with incremental indexing, new name
        hpack_len(&mut block, 0, 6);
        block.extend_from_slice(b"x-bomb");
        hpack_len(&mut block, 0, 4000);
        block.extend(std::iter::repeat_n(b'B', 4000));
        block.extend(std::iter::repeat_n(0x80 | 62, 4000)); // indexed: the entry just added
        c.send(&h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)).await.unwrap();
        // The answer for stream 1: a refusal (HEADERS without :status 200, RST_STREAM, GOAWAY)
        // or the end of the connection; never the member's 200.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "no answer to the bomb");
            match c.frame().await {
                Ok(Some(f)) if f.kind == HEADERS && f.stream == 1 => {
                    assert_ne!(f.payload.first(), Some(&0x88), "the bomb got a 200");
                    break;
                }
                Ok(Some(f)) if (f.kind == RST_STREAM && f.stream == 1) || f.kind == GOAWAY => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        assert_eq!(hostile_hits(&s), 0, "the bomb reached a member");
        s.end().await;
    })
    .await;
}

/// More concurrent streams than the proxy's SETTINGS allow: the excess is refused, and no more
/// than the limit reach the members at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_beyond_the_limit_are_refused() {
    bounded(async {
        let s = Scene::start(None).await;
        let mut c = RawConn::h2(s.addr()).await;
        let limit = loop {
            let f = c.frame().await.unwrap().expect("the server's SETTINGS");
            if f.kind == SETTINGS && f.flags & 1 == 0 {
                let max = f
                    .payload
                    .chunks(6)
                    .find(|p| p[..2] == [0, 3])
                    .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                break max.expect("the proxy announces SETTINGS_MAX_CONCURRENT_STREAMS") as usize;
            }
        };
        c.send(&h2_frame(SETTINGS, 1, 0, &[])).await.unwrap(); // ACK
        let extra = 50;
        let block = h2_get_block("/slow?ms=1500", "x");
        let burst: Vec<u8> = (0..(limit + extra) as u32)
            .flat_map(|i| h2_frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block))
            .collect();
        c.send(&burst).await.unwrap();
        let (mut refused, mut goaway) = (0, false);
        while refused < extra && !goaway {
            match c.frame().await.unwrap() {
                Some(f) if f.kind == RST_STREAM && f.payload == 7u32.to_be_bytes() => refused += 1,
                Some(f) if f.kind == GOAWAY => goaway = true,
                Some(_) => {}
                None => break,
            }
        }
        assert!(refused >= extra || goaway, "only {refused} of {extra} excess streams were refused");
        // The accepted streams all reach the members (they answer after 1.5 s), the refused never.
        wait_for(Duration::from_secs(5), "the accepted streams to reach the members", || hostile_hits(&s) >= limit)
            .await;
        assert_eq!(hostile_hits(&s), limit, "streams beyond the limit reached the members");
        drop(c); // cancels the accepted streams
        s.end().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------------

/// Sends a head for `path` one byte every 50 ms until the proxy stops taking bytes or four
/// header timeouts have passed; asserts the proxy then closes, and returns how long that took.
async fn dribble_until_closed(c: &mut RawConn, path: &str) -> Duration {
    let started = Instant::now();
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Slow: {}\r\n\r\n", "s".repeat(200));
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for byte in head.as_bytes() {
        tick.tick().await;
        if c.send(&[*byte]).await.is_err() || started.elapsed() > HEADER_TIMEOUT * 4 {
            break;
        }
    }
    assert!(c.closed_within(Duration::from_secs(3)).await, "never closed");
    started.elapsed()
}

/// Slowloris: a head dribbled one byte at a time is cut off by the header timeout, however
/// steadily the bytes come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_dribbling_its_head_is_closed_by_the_header_timeout() {
    bounded(async {
        let s = Scene::start(None).await;
        let mut c = RawConn::connect(s.addr()).await;
        let took = dribble_until_closed(&mut c, "/").await;
        assert!(took < HEADER_TIMEOUT * 4, "closed after {took:?}, header timeout {HEADER_TIMEOUT:?}");
        assert!(s.seen_by_shop().is_empty());
        s.end().await;
    })
    .await;
}

/// On a kept-alive HTTP/1.1 connection the next head is bounded by the header timeout too,
/// counted from the end of the last response: a client whose first request was served and who
/// then dribbles its second is cut off, never before the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_a_kept_alive_connection_is_closed_by_the_header_timeout() {
    bounded(async {
        let s = Scene::start(None).await;
        let mut c = RawConn::connect(s.addr()).await;
        c.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(c.response().await.unwrap().status, 200);
        let took = dribble_until_closed(&mut c, "/second").await;
        assert!(took >= HEADER_TIMEOUT, "closed after {took:?}, before the header timeout {HEADER_TIMEOUT:?}");
        assert!(took < HEADER_TIMEOUT * 4, "closed after {took:?}, header timeout {HEADER_TIMEOUT:?}");
        let paths: Vec<String> = s.seen_by_shop().into_iter().map(|r| r.path_and_query).collect();
        assert_eq!(paths, ["/first"]);
        s.end().await;
    })
    .await;
}

/// A kept-alive HTTP/1.1 connection whose requests come more often than the header timeout
/// stays open however long it lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_with_steady_requests_stays_open_past_the_header_timeout() {
    bounded(async {
        let s = Scene::start(None).await;
        let mut c = RawConn::connect(s.addr()).await;
        let started = Instant::now();
        while started.elapsed() < HEADER_TIMEOUT * 3 {
            c.send(b"GET /steady HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            assert_eq!(c.response().await.unwrap().status, 200);
            tokio::time::sleep(HEADER_TIMEOUT / 2).await;
        }
        s.end().await;
    })
    .await;
}

/// A connection that never sends a byte is closed by the header timeout too, not the (longer)
/// idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_by_the_header_timeout() {
    bounded(async {
        let s = Scene::start(None).await;
        let mut c = RawConn::connect(s.addr()).await;
        let started = Instant::now();
        assert!(c.closed_within(HEADER_TIMEOUT * 4).await, "a silent connection outlived 4× the header timeout");
        assert!(started.elapsed() >= HEADER_TIMEOUT / 2);
        assert!(s.seen_by_shop().is_empty());
        s.end().await;
    })
    .await;
}

/// A client that asks for 64 MiB and reads none of it: the proxy stops pulling from the
/// member once a bounded amount is buffered (socket buffers plus its own), instead of holding
/// the whole response in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_a_bounded_amount() {
    bounded(async {
        let s = Scene::start(None).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let stream = socket.connect(s.addr()).await.unwrap();
        let mut c = RawConn::from_stream(stream);
        // The member the bystander does not use, so that its byte count is the download's alone.
        let (other, index) = if s.bystander.route == "a" { ("b", 1) } else { ("a", 0) };
        let request = format!("GET /download?bytes=67108864 HTTP/1.1\r\nHost: x\r\nCookie: ROUTEID=.{other}\r\n\r\n");
        c.send(request.as_bytes()).await.unwrap();
        // Wait until the proxy stops pulling from the member: its byte count stands still.
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = members_of(s.p.admin_addr, "shop").await[index]["bytesFrom"].as_u64().unwrap();
            if now == last {
                break;
            }
            last = now;
        }
        assert!(last < 16 << 20, "the proxy pulled {} MiB for a client that reads nothing", last >> 20);
        drop(c);
        s.end().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Misbehaving members
// ---------------------------------------------------------------------------------------------

/// Sends `GET /bad/x` and returns the response (or the error).
async fn ask_bad(s: &Scene) -> Result<RawResponse, String> {
    exchange(s.addr(), b"GET /bad/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await
}

/// The state and error count of the `bad` pool's member.
async fn bad_state(s: &Scene) -> (String, u64) {
    let m = members_of(s.p.admin_addr, "bad").await.remove(0);
    (m["state"].as_str().unwrap().to_owned(), m["errors"].as_u64().unwrap())
}

/// Runs one misbehaving-member case: the client's status, the one request the member got, the
/// member's state after, and the `shop` pool and bystander untouched.
async fn member_case<F, Fut>(script: F, want_status: u16, want_state: &str) -> RawResponse
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let bad = ScriptedMember::start(script).await;
    let s = Scene::start(Some(&bad)).await;
    let t = Instant::now();
    let got = ask_bad(&s).await.unwrap_or_else(|e| panic!("the client got no response: {e}"));
    assert_eq!(got.status, want_status, "{} / {:?}", got.head, got.text());
    assert!(t.elapsed() < Duration::from_secs(3), "answered after {:?}", t.elapsed());
    assert!(got.all("set-cookie").is_empty(), "a proxy-made error pins no session: {}", got.head);
    assert_eq!(bad.request_lines(), ["GET /bad/x HTTP/1.1"], "what the member received");
    assert_eq!(bad_state(&s).await.0, want_state);
    assert!(s.seen_by_shop().is_empty());
    s.end().await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_answering_garbage_gets_502_and_is_put_in_error() {
    bounded(member_case(
        |mut s| async move {
            let _ = s.write_all(b"HTXP/9.9 two hundred\r\nbla\r\n\r\n").await;
        },
        502,
        "Error",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_closing_without_an_answer_gets_502() {
    bounded(member_case(|s| async move { drop(s) }, 502, "Error")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_resetting_the_connection_gets_502() {
    bounded(member_case(|s| async move { reset(s) }, 502, "Error")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_closing_mid_head_gets_502() {
    bounded(member_case(
        |mut s| async move {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Len").await;
        },
        502,
        "Error",
    ))
    .await;
}

/// A member that never answers: 504 after the pool's response timeout. `failOnTimeout` is off
/// by default, so the member stays usable and only its error count moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_answers_gets_504_after_the_response_timeout() {
    bounded(async {
        let bad = ScriptedMember::start(hold_open).await;
        let s = Scene::start(Some(&bad)).await;
        let t = Instant::now();
        let got = ask_bad(&s).await.unwrap();
        assert_eq!(got.status, 504, "{}", got.head);
        assert!(t.elapsed() >= Duration::from_millis(450) && t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(bad.request_lines(), ["GET /bad/x HTTP/1.1"]);
        assert_eq!(bad_state(&s).await, ("Ok".to_owned(), 1));
        s.end().await;
    })
    .await;
}

/// A thousand `100 Continue` before the answer: skipped, the real answer arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_a_thousand_1xx_then_answering_is_passed_through() {
    bounded(async {
        let got = member_case(
            |mut s| async move {
                let flood = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1000);
                let _ = s.write_all(&flood).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
            },
            200,
            "Ok",
        )
        .await;
        assert_eq!(got.body, b"ok");
    })
    .await;
}

/// Informational responses without end: at most 1 MiB of them before a final head, then 502
/// (the member broke its answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_1xx_forever_gets_502() {
    bounded(async {
        let bad = ScriptedMember::start(|mut s| async move {
            // Padded heads reach the 1 MiB budget in a few hundred responses, well inside the
            // pool's 500 ms response timeout even on a loaded machine (bare 102s took ~40,000).
            let pad = "p".repeat(4000);
            let chunk = format!("HTTP/1.1 102 Processing\r\nX-Pad: {pad}\r\n\r\n").repeat(4).into_bytes();
            let until = Instant::now() + READ_BOUND;
            while Instant::now() < until && s.write_all(&chunk).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        let s = Scene::start(Some(&bad)).await;
        let got = ask_bad(&s).await.unwrap();
        assert_eq!(got.status, 502, "{}", got.head);
        assert_eq!(bad.request_lines(), ["GET /bad/x HTTP/1.1"]);
        s.end().await;
    })
    .await;
}

/// Both framings from a member: a proxy must not pass the `Content-Length` with a body cut to
/// it (RFC 9112 §6.3: Transfer-Encoding wins, or the response is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_both_framings_never_reaches_the_client_truncated() {
    bounded(async {
        let bad = ScriptedMember::start(|mut s| async move {
            let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n6\r\nhello!\r\n0\r\n\r\n";
            let _ = s.write_all(resp).await;
        })
        .await;
        let s = Scene::start(Some(&bad)).await;
        let got = ask_bad(&s).await.unwrap();
        match got.status {
            502 => assert_eq!(bad_state(&s).await.0, "Error"),
            200 => {
                assert_eq!(got.body, b"hello!", "{}", got.head);
                assert!(got.header("content-length").is_none_or(|cl| cl == "6"), "{}", got.head);
            }
            _ => panic!("{}", got.head),
        }
        s.end().await;
    })
    .await;
}

/// A broken chunk before any byte reached the client: a 502, not an empty 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_a_bad_chunk_gets_502() {
    bounded(member_case(
        |mut s| async move {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n").await;
        },
        502,
        "Error",
    ))
    .await;
}
