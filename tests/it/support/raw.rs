//! Raw-socket tools for the hostile tests: a client that writes exact bytes and reads a response
//! without trusting it, a member whose every connection runs a script, HTTP/2 frames built by
//! hand, and a well-behaved bystander that must not notice any of it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long one raw read may wait before the peer counts as silent.
pub const READ_BOUND: Duration = Duration::from_secs(5);

/// A response as it came off the wire.
#[derive(Debug, Default)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The whole head, status line included.
    pub head: String,
    /// Header names (lowercased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Every value of header `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that sends exact bytes and reads responses from a buffer it owns.
pub struct RawConn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn::from_stream(TcpStream::connect(addr).await.unwrap())
    }

    /// Wraps a socket connected by other means (with its own buffer sizes, say).
    pub fn from_stream(stream: TcpStream) -> RawConn {
        RawConn { stream, buf: Vec::new() }
    }

    /// Writes `bytes`; a peer that closed on us is an error, not a panic.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads more into the buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(READ_BOUND, self.stream.read(&mut chunk)).await {
            Err(_) => Err("no byte within the read bound".into()),
            Ok(Err(e)) => Err(format!("read error: {e}")),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
        }
    }

    /// Reads exactly `n` bytes (from the buffer first).
    async fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(format!("closed after {} of {n} bytes", self.buf.len()));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads one line ending in CRLF (without it).
    async fn line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.drain(..i + 2).take(i).collect();
                return Ok(line);
            }
            if self.fill().await? == 0 {
                return Err("closed in the middle of a line".into());
            }
        }
    }

    /// Reads one response (a 1xx is returned as it is, without a body).
    pub async fn response(&mut self) -> Result<RawResponse, String> {
        let head = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break self.buf.drain(..i + 4).collect::<Vec<u8>>();
            }
            if self.fill().await? == 0 {
                return Err(format!("closed before a response head ({} bytes)", self.buf.len()));
            }
        };
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut slots);
        parsed.parse(&head).map_err(|e| format!("unparsable head {:?}: {e}", head.escape_ascii().to_string()))?;
        let mut resp = RawResponse {
            status: parsed.code.unwrap_or(0),
            head: String::from_utf8_lossy(&head).into_owned(),
            headers: parsed
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .collect(),
            body: Vec::new(),
        };
        resp.body = self.body_of(&resp).await?;
        Ok(resp)
    }

    async fn body_of(&mut self, resp: &RawResponse) -> Result<Vec<u8>, String> {
        if resp.status < 200 || resp.status == 204 || resp.status == 304 {
            return Ok(Vec::new());
        }
        if resp.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let size_line = String::from_utf8_lossy(&self.line().await?).into_owned();
                let size_hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_line:?}"))?;
                if size == 0 {
                    while !self.line().await?.is_empty() {}
                    return Ok(body);
                }
                body.extend(self.take(size).await?);
                self.take(2).await?;
            }
        }
        match resp.header("content-length") {
            Some(cl) => self.take(cl.trim().parse().map_err(|_| format!("bad content-length {cl:?}"))?).await,
            None => {
                while self.fill().await? > 0 {}
                Ok(std::mem::take(&mut self.buf))
            }
        }
    }

    /// Whether the peer closes the connection (end of stream or reset) within `limit`, reading
    /// and discarding whatever it sends until then.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Sends `request` on a new connection and reads one response.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<RawResponse, String> {
    let mut c = RawConn::connect(addr).await;
    c.send(request).await.map_err(|e| format!("write: {e}"))?;
    c.response().await
}

/// A member that reads each request head, records it, and then runs a script on the
/// connection: garbage, silence, a reset, framing no parser should accept.
pub struct ScriptedMember {
    /// Where it listens.
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    conns: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedMember {
    /// Starts a member that runs `script` on every connection once it has read a request head.
    pub async fn start<F, Fut>(script: F) -> ScriptedMember
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let conns = Arc::new(AtomicUsize::new(0));
        let (heads2, conns2, script) = (Arc::clone(&heads), Arc::clone(&conns), Arc::new(script));
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                conns2.fetch_add(1, Ordering::SeqCst);
                let (heads, script) = (Arc::clone(&heads2), Arc::clone(&script));
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut stream).await else { return };
                    heads.lock().unwrap().push(head);
                    script(stream).await;
                });
            }
        });
        ScriptedMember { addr, heads, conns, task }
    }

    /// The request heads received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The request lines received so far (`GET /x HTTP/1.1`).
    pub fn request_lines(&self) -> Vec<String> {
        self.heads().iter().map(|h| h.lines().next().unwrap_or("").to_owned()).collect()
    }
}

impl Drop for ScriptedMember {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads up to the end of a request head (64 KiB at most, within the read bound).
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match tokio::time::timeout(READ_BOUND, stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Closes `stream` with a TCP reset instead of a FIN.
pub fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Waits until `stream`'s peer closes it (or the read bound passes): a member that never
/// answers but keeps the connection open.
pub async fn hold_open(mut stream: TcpStream) {
    let mut sink = [0u8; 1024];
    let _ =
        tokio::time::timeout(READ_BOUND * 2, async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} })
            .await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 by hand: frames a well-behaved client library would never send.
// ---------------------------------------------------------------------------------------------

/// The client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame types used here.
pub const DATA: u8 = 0;
/// HEADERS frame type.
pub const HEADERS: u8 = 1;
/// RST_STREAM frame type.
pub const RST_STREAM: u8 = 3;
/// SETTINGS frame type.
pub const SETTINGS: u8 = 4;
/// GOAWAY frame type.
pub const GOAWAY: u8 = 7;
/// CONTINUATION frame type.
pub const CONTINUATION: u8 = 9;
/// END_STREAM flag.
pub const END_STREAM: u8 = 0x1;
/// END_HEADERS flag.
pub const END_HEADERS: u8 = 0x4;

/// One frame: 9-byte header and payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal (no Huffman), lengths below 127 only.
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    assert!(s.len() < 127, "short strings only");
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

/// HPACK "literal header field without indexing — new name".
pub fn hpack_literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_string(&mut out, name.as_bytes());
    hpack_string(&mut out, value);
    out
}

/// The header block of `GET <path>` to `authority`.
pub fn h2_get_block(path: &str, authority: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(hpack_literal(":method", b"GET"));
    b.extend(hpack_literal(":scheme", b"http"));
    b.extend(hpack_literal(":path", path.as_bytes()));
    b.extend(hpack_literal(":authority", authority.as_bytes()));
    b
}

/// A frame as read back: type, flags, stream id, payload.
#[derive(Debug)]
pub struct Frame {
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl RawConn {
    /// Opens an HTTP/2 connection with prior knowledge (preface and empty SETTINGS).
    pub async fn h2(addr: SocketAddr) -> RawConn {
        let mut c = RawConn::connect(addr).await;
        let mut hello = H2_PREFACE.to_vec();
        hello.extend(h2_frame(SETTINGS, 0, 0, &[]));
        c.send(&hello).await.unwrap();
        c
    }

    /// Reads one HTTP/2 frame; `Ok(None)` at end of stream.
    pub async fn frame(&mut self) -> Result<Option<Frame>, String> {
        let head = match self.take(9).await {
            Ok(h) => h,
            Err(_) if self.buf.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let payload = self.take(len).await?;
        Ok(Some(Frame { kind: head[3], flags: head[4], stream, payload }))
    }
}

// ---------------------------------------------------------------------------------------------
// The bystander: a well-behaved client that must not notice the attack.
// ---------------------------------------------------------------------------------------------

/// A client that keeps one sticky session busy with requests while a test misbehaves, then
/// reports whether any of its requests failed or left its member.
pub struct Bystander {
    /// The member its session sticks to.
    pub route: String,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(usize, String), String>>,
}

impl Bystander {
    /// Starts the loop once its first request (which picks its member) has succeeded.
    pub async fn start(proxy: SocketAddr) -> Bystander {
        let first = super::get(proxy, "/bystander", &[]).await;
        assert_eq!(first.status, 200, "the bystander's first request: {first:?}");
        let cookie = first.set_cookies().first().and_then(|c| c.split(';').next()).map(str::to_owned);
        let route = first.route().to_owned();
        let route2 = route.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let client = super::client();
            let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
            let mut n = 0;
            while !stop2.load(Ordering::SeqCst) || n == 0 {
                let got = super::send(&client, proxy, "GET", "/bystander", &headers, bytes::Bytes::new()).await;
                if got.status != 200 || got.route() != route2 {
                    return Err(format!("request {n} of the bystander: {} from {:?}", got.status, got.route()));
                }
                n += 1;
            }
            Ok((n, route2))
        });
        Bystander { route, stop, task }
    }

    /// Stops the loop and asserts that every request succeeded on the session's member.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        match self.task.await.unwrap() {
            Ok((n, _)) => assert!(n > 0),
            Err(e) => panic!("the well-behaved client noticed: {e}"),
        }
    }
}

/// The members of pool `name` as the balancer-manager's JSON shows them.
pub async fn members_of(admin: SocketAddr, name: &str) -> Vec<serde_json::Value> {
    let got = super::get(admin, "/balancer-manager/api/pools", &[]).await;
    let v: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    let pool = v["pools"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned();
    pool.unwrap_or_else(|| panic!("no pool {name} in {v}"))["members"].as_array().unwrap().clone()
}

/// Asserts every member of pool `name` is `Ok`, counted no error and has nothing in flight
/// (once requests cancelled by a client have been let go, within a few seconds).
pub async fn assert_pool_unharmed(admin: SocketAddr, name: &str) {
    let deadline = tokio::time::Instant::now() + READ_BOUND;
    let mut members = members_of(admin, name).await;
    while members.iter().any(|m| m["busy"] != 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        members = members_of(admin, name).await;
    }
    for m in members {
        assert_eq!(m["state"], "Ok", "member {} of {name}: {m}", m["route"]);
        assert_eq!(m["errors"], 0, "member {} of {name}: {m}", m["route"]);
        assert_eq!(m["busy"], 0, "member {} of {name}: {m}", m["route"]);
    }
}
