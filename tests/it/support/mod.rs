//! Test support: real hyper members on 127.0.0.1 ephemeral ports, the real proxy, a real client.
#![allow(dead_code)]

pub mod cluster;
pub mod fake_apiserver;
pub mod raw;
pub mod switchable;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use routeid::proxy::ProxySettings;
use routeid::runtime::Running;
use tokio::net::TcpListener;

/// Every test future runs under this bound.
pub const TEST_BOUND: Duration = Duration::from_secs(60);

/// Runs `f` with a time bound, failing the test when it is exceeded.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_BOUND, f).await.expect("test exceeded its time bound")
}

/// What a member saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
}

/// A member: answers `<route>` (plus the path) and records requests.
///
/// Paths it understands:
/// - `/slow?ms=N`: waits N ms before answering;
/// - `/upload`: reads the body as a stream and answers with its length;
/// - `/download?bytes=N`: streams N bytes of `x` in 64 KiB chunks;
/// - `/ws`: a WebSocket echo endpoint;
/// - `/set-cookie?c=<raw Set-Cookie value>`: answers with that Set-Cookie header;
/// - anything else: `route=<route> path=<path-and-query>`.
pub struct Member {
    pub addr: SocketAddr,
    pub route: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Member {
    pub async fn start(route: &str) -> Member {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        Self::start_on(listener, route)
    }

    pub fn start_on(listener: TcpListener, route: &str) -> Member {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicU64::new(0));
        let route_s = route.to_owned();
        let (seen2, hits2) = (Arc::clone(&seen), Arc::clone(&hits));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let conns2 = Arc::clone(&conns);
        let task = tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (route, seen, hits, builder) = (route_s.clone(), seen2.clone(), hits2.clone(), builder.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| member_answer(route.clone(), seen.clone(), hits.clone(), req));
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                });
                conns2.lock().unwrap().push(conn.abort_handle());
            }
        });
        Member { addr, route: route.to_owned(), seen, hits, task, conns }
    }

    /// Stops accepting, closes the port and every open connection: a dead pod.
    pub fn kill(&self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Like [`Member::kill`], returning once the port is really closed.
    pub async fn die(&mut self) {
        self.kill();
        let _ = (&mut self.task).await;
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last_seen(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the member saw no request")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> AnyBody {
    Full::new(s.into()).boxed()
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

async fn member_answer(
    route: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    hits: Arc<AtomicU64>,
    mut req: Request<Incoming>,
) -> Result<Response<AnyBody>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let pq = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path_and_query: pq.clone(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/slow" => {
            let ms: u64 = query_param(&req, "ms").and_then(|v| v.parse().ok()).unwrap_or(500);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Response::new(full(format!("route={route} slow={ms}"))))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => return Ok(Response::new(full(format!("error {e}")))),
                }
            }
            Ok(Response::new(full(format!("route={route} received={n}"))))
        }
        "/download" => {
            let total: u64 = query_param(&req, "bytes").and_then(|v| v.parse().ok()).unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len() as u64) as usize;
                    Some((Ok::<_, Infallible>(Frame::data(chunk.slice(..n))), left - n as u64))
                }
            });
            Ok(Response::new(StreamBody::new(stream).boxed()))
        }
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                return Ok(Response::builder().status(400).body(full("not a websocket")).unwrap());
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    use futures_util::{SinkExt, StreamExt};
                    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    let (mut tx, mut rx) = ws.split();
                    while let Some(Ok(msg)) = rx.next().await {
                        if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            Ok(Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .unwrap())
        }
        "/close" => Ok(Response::builder().header("connection", "close").body(full(format!("route={route}"))).unwrap()),
        "/set-cookie" => {
            let c = query_param(&req, "c").unwrap_or("").replace("%20", " ").replace("%3B", ";");
            Ok(Response::builder().header("set-cookie", c).body(full(format!("route={route}"))).unwrap())
        }
        _ => {
            let mut resp = Response::new(full(format!("route={route} path={pq}")));
            resp.headers_mut().insert("x-member", route.parse().unwrap());
            resp.headers_mut().insert("connection", "keep-alive, x-hop".parse().unwrap());
            resp.headers_mut().insert("x-hop", "must-not-pass".parse().unwrap());
            Ok(resp)
        }
    }
}

/// The items of a channel as a stream (a body a test feeds frame by frame).
pub fn stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A port on 127.0.0.1 with nothing listening: a connection to it is refused. The port stays
/// bound (without `listen`) for the rest of the run, so no listener of a test running meanwhile
/// can be given it (a port merely dropped can be: it then answers where a refusal was meant).
pub async fn closed_port() -> SocketAddr {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let a = s.local_addr().unwrap();
    held().push(s);
    a
}

/// Lets go of a port from [`closed_port`], for a test that listens on it next (a member coming
/// back).
pub fn release_port(addr: SocketAddr) {
    held().retain(|s| s.local_addr().ok() != Some(addr));
}

fn held() -> std::sync::MutexGuard<'static, Vec<tokio::net::TcpSocket>> {
    static HELD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A minimal pool document: `members` as `(address, route, loadFactor)`, `extra` spliced into
/// `spec` (indented two spaces).
pub fn pool_yaml(name: &str, members: &[(SocketAddr, &str, u32)], extra: &str) -> String {
    let m: String = members
        .iter()
        .map(|(a, r, lf)| format!("      - {{address: \"{a}\", route: {r}, loadFactor: {lf}}}\n"))
        .collect();
    format!(
        "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: {name}}}\nspec:\n{extra}  backend:\n    members:\n{m}"
    )
}

/// Starts the real proxy on 127.0.0.1 ephemeral ports with pools from YAML.
pub async fn start_proxy(yaml: &str) -> Running {
    start_proxy_with(yaml, ProxySettings { drain_timeout: Duration::from_secs(5), ..Default::default() }).await
}

pub async fn start_proxy_with(yaml: &str, settings: ProxySettings) -> Running {
    let pools = routeid::standalone::parse_pools(yaml).unwrap_or_else(|e| panic!("bad test pools: {e:?}"));
    let any = "127.0.0.1:0".parse().unwrap();
    Running::start(settings, any, any, pools).await.unwrap().0
}

/// Like [`start_proxy_with`], with a balancer-manager that takes `token` (read-only without).
pub async fn start_proxy_with_token(yaml: &str, settings: ProxySettings, token: Option<&str>) -> Running {
    use routeid::admin::AdminState;
    use routeid::admin::manager::{Manager, Persistence};
    let pools = routeid::standalone::parse_pools(yaml).unwrap_or_else(|e| panic!("bad test pools: {e:?}"));
    let any = "127.0.0.1:0".parse().unwrap();
    let admin = AdminState::new(Manager::new(token.map(str::to_owned), Persistence::InMemory), true);
    Running::start_with_admin(settings, any, any, pools, admin).await.unwrap().0
}

/// A pooled HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Got {
    /// The `route=` the member answered with.
    pub fn route(&self) -> &str {
        self.body.strip_prefix("route=").and_then(|r| r.split(' ').next()).unwrap_or("")
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    }
}

/// Sends `GET path` to `proxy` with extra headers.
pub async fn get(proxy: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    send(&client(), proxy, "GET", path, headers, Bytes::new()).await
}

pub async fn send(
    c: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Got {
    let mut b = Request::builder().method(method).uri(format!("http://{proxy}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c.request(b.body(Full::new(body)).unwrap()).await.expect("request through the proxy failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Got { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

// ---------------------------------------------------------------------------------------------
// Helpers for the proxy_* tests: polling, raw clients, temp files, the real binary as a child.
// ---------------------------------------------------------------------------------------------

/// Runs `f` with a time bound of its own (for the long streaming tests).
pub async fn bounded_for<F: std::future::Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f).await.expect("test exceeded its time bound")
}

/// Polls `cond` every 10 ms until it holds, panicking with `what` after `limit`.
pub async fn wait_for<F: FnMut() -> bool>(limit: Duration, what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`get`], but returns the error instead of panicking (for polling a starting process).
pub async fn try_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Got, String> {
    let mut b = Request::builder().method("GET").uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client().request(b.body(Full::new(Bytes::new())).unwrap()).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Got { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// A program on `PATH` (for tests that drive promtool, chromium, chromedriver).
pub fn find_on_path(cmd: &str) -> Option<std::path::PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|d| d.join(cmd)).find(|p| p.is_file())
}

/// A free port on 127.0.0.1 (bound to :0, then released) for a child process to listen on.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    l.local_addr().unwrap()
}

/// A fresh path under Cargo's per-target temporary directory.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}-{n}-{nanos}", std::process::id()))
}

/// A kubeconfig file (named after `name`) whose one context points at an API server on `addr`
/// (the fake API server), for tests that run the binary against it.
pub fn kubeconfig_file(name: &str, addr: std::net::SocketAddr) -> std::path::PathBuf {
    temp_file(
        name,
        &format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"http://{addr}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n"
        ),
    )
}

/// Writes `text` to a fresh temporary file and returns its path.
pub fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let p = temp_path(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The `routeid` binary running as a child process; killed (and reaped) when dropped.
pub struct ProxyProcess {
    pub child: std::process::Child,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub stderr_path: std::path::PathBuf,
}

impl ProxyProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child has not exited.
    pub fn child_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal (`"HUP"`, `"TERM"`) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
        assert!(st.expect("kill(1) runs").success(), "kill -{sig} {} failed", self.pid());
    }

    /// Sends `SIGTERM` and waits (at most 10 s, else the test fails with its stderr) for the
    /// child to exit; its exit status. A std child cannot be awaited, so it is polled.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(tokio::time::Instant::now() < deadline, "no exit after SIGTERM: {}", self.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The peak resident set size (`VmHWM`) of the child, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `routeid standalone -f <file>` on free 127.0.0.1 ports (plus `extra` arguments),
/// stderr captured to a file, and waits until `/readyz` answers 200. A lost race for a port is
/// retried with new ones.
pub async fn spawn_standalone(file: &std::path::Path, extra: &[&str]) -> ProxyProcess {
    let mut args: Vec<&std::ffi::OsStr> = vec!["standalone".as_ref(), "-f".as_ref(), file.as_os_str()];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    spawn_routeid(&args).await
}

/// The routeid binary with `args` (a subcommand and its flags) on `proxy_addr` and
/// `admin_addr`, at log level info, without `KUBECONFIG` from the environment, stdin and stdout
/// null; the caller picks stderr.
pub fn routeid_command(
    args: &[&std::ffi::OsStr],
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_routeid"));
    command
        .args(args)
        .args(["--listen", &proxy_addr.to_string(), "--admin-listen", &admin_addr.to_string()])
        .env("RUST_LOG", "info")
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    command
}

/// Starts the routeid binary with `args` (a subcommand and its flags) on free ports, without
/// `KUBECONFIG` from the environment, and waits until `/readyz` answers 200. Retries with new
/// ports when it loses the race for one.
pub async fn spawn_routeid(args: &[&std::ffi::OsStr]) -> ProxyProcess {
    for _ in 0..3 {
        let (proxy_addr, admin_addr) = (free_port(), free_port());
        let stderr_path = temp_path("routeid-stderr");
        let child = routeid_command(args, proxy_addr, admin_addr)
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("the routeid binary starts");
        let mut p = ProxyProcess { child, proxy_addr, admin_addr, stderr_path };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = p.child.try_wait().unwrap() {
                let err = p.stderr();
                if err.contains("cannot listen") {
                    break; // lost the port race: try again with new ports
                }
                panic!("routeid exited early with {st}: {err}");
            }
            if matches!(try_get(admin_addr, "/readyz", &[]).await, Ok(g) if g.status == StatusCode::OK) {
                return p;
            }
            assert!(tokio::time::Instant::now() < deadline, "routeid never became ready: {}", p.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("could not start routeid on free ports");
}
