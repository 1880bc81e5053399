//! A member whose behaviour a test switches at run time: answer, fail with a status, hang,
//! reset the connection, slow down, or close its port — the bad days a load balancer must
//! survive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// What the member does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 with `route=<route>`.
    Ok,
    /// This status for every request (health checks included).
    Status(u16),
    /// Reads the request, never answers.
    Hang,
    /// Reads the request head, then resets the connection (RST).
    Reset,
    /// Answers 200 after this many milliseconds (health checks answer at once).
    Slow(u64),
    /// The port is closed: connections are refused.
    Closed,
}

#[derive(Default)]
struct Shared {
    mode: Mutex<Option<Mode>>,
    heartbeat: Mutex<Option<u32>>,
    requests: AtomicU64,
    checks_passed: AtomicU64,
    checks_failed: AtomicU64,
    conns: Mutex<Vec<AbortHandle>>,
}

/// A member a test can switch between modes.
pub struct Switchable {
    pub addr: SocketAddr,
    pub route: String,
    shared: Arc<Shared>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Switchable {
    pub async fn start(route: &str) -> Switchable {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        *shared.mode.lock().unwrap() = Some(Mode::Ok);
        let mut s = Switchable { addr, route: route.to_owned(), shared, listener: None };
        s.listen(listener);
        s
    }

    fn listen(&mut self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let route = self.route.clone();
        self.listener = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (shared2, route) = (Arc::clone(&shared), route.clone());
                let conn = tokio::spawn(serve(stream, shared2, route));
                shared.conns.lock().unwrap().push(conn.abort_handle());
            }
        }));
    }

    /// Switches the behaviour. Open connections are cut, so the next request meets the new
    /// mode on a new connection (as when a pod restarts or hangs). Closing the port stops the
    /// listener before the connections are cut: one accepted in between would live on.
    pub async fn set(&mut self, mode: Mode) {
        let was = self.mode();
        *self.shared.mode.lock().unwrap() = Some(mode);
        if mode == Mode::Closed
            && let Some(l) = self.listener.take()
        {
            l.abort();
            let _ = l.await;
        }
        for c in self.shared.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        if was == Mode::Closed && mode != Mode::Closed {
            let listener = TcpListener::bind(self.addr).await.expect("re-bind the member's port");
            self.listen(listener);
        }
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode.lock().unwrap().unwrap_or(Mode::Ok)
    }

    /// Report `X-Heartbeat: ready=N` on health checks.
    pub fn set_heartbeat(&self, ready: Option<u32>) {
        *self.shared.heartbeat.lock().unwrap() = ready;
    }

    /// Requests other than health checks.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(SeqCst)
    }

    /// Health checks answered with a passing (2xx) status.
    pub fn checks_passed(&self) -> u64 {
        self.shared.checks_passed.load(SeqCst)
    }

    /// Health checks answered with a failing status.
    pub fn checks_failed(&self) -> u64 {
        self.shared.checks_failed.load(SeqCst)
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        if let Some(l) = &self.listener {
            l.abort();
        }
        for c in self.shared.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>, route: String) {
    let mode = shared.mode.lock().unwrap().unwrap_or(Mode::Ok);
    if mode == Mode::Reset {
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        shared.requests.fetch_add(1, SeqCst);
        let _ = stream.set_zero_linger();
        drop(stream);
        return;
    }
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = Arc::clone(&shared);
        let route = route.clone();
        async move {
            let mode = shared.mode.lock().unwrap().unwrap_or(Mode::Ok);
            let health = req.uri().path() == "/health";
            if !health {
                shared.requests.fetch_add(1, SeqCst);
            }
            let status = match mode {
                Mode::Status(s) => s,
                Mode::Hang => std::future::pending::<u16>().await,
                Mode::Slow(ms) if !health => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    200
                }
                _ => 200,
            };
            if health {
                let counter = if (200..300).contains(&status) { &shared.checks_passed } else { &shared.checks_failed };
                counter.fetch_add(1, SeqCst);
            }
            let mut resp = Response::builder().status(status);
            if health && let Some(r) = *shared.heartbeat.lock().unwrap() {
                resp = resp.header("x-heartbeat", format!("ready={r}&busy=0"));
            }
            Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(format!("route={route} status={status}")))).unwrap())
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}
