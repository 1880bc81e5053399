//! The client-facing listener, and the connection handling the admin listener shares with it.
//!
//! Each connection is served by hyper-util's `auto` builder (HTTP/1.1, and HTTP/2 with prior
//! knowledge), with upgrades. Instead of hyper-util's `GracefulShutdown`, each connection task
//! runs its own small watchdog, so that one place decides when a connection closes:
//! - **Header timeout.** A new connection must start its first request within the header
//!   timeout. hyper's own `header_read_timeout` only starts once the protocol is known, that is
//!   after the first bytes: a connection that never sends one would otherwise stay open until
//!   the idle timeout. On HTTP/1.1 hyper then bounds every later request head itself.
//! - **Idle timeout.** Activity is counted in requests, not bytes: a request is in flight from
//!   its head until its response body has been sent (or dropped). A connection with no request
//!   in flight and none started for the idle timeout is closed gracefully. HTTP/2 PINGs, their
//!   ACKs, SETTINGS and WINDOW_UPDATEs keep nothing open.
//! - **Drain.** On shutdown every connection is closed gracefully (idle ones at once, the others
//!   after their in-flight requests); those still open after the drain timeout are closed.
//!
//! The accept loop backs off when accepting fails (EMFILE and friends) instead of spinning, and
//! can cap the connections served at once (the admin listener does).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Proxy;
use super::listener::Edge;

/// How a listener protects itself from its clients; the proxy and admin listeners share it.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// For logs: which listener.
    pub name: &'static str,
    /// Time a new connection has to start its first request (on HTTP/1.1, hyper also bounds
    /// every later request head, and the keep-alive wait for it, by this).
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// On shutdown, how long open connections may take to finish.
    pub drain_timeout: Duration,
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: Option<usize>,
}

impl ListenerLimits {
    /// The client-facing listener's limits.
    pub fn proxy(settings: &super::ProxySettings) -> ListenerLimits {
        ListenerLimits {
            name: "proxy",
            header_timeout: settings.client_header_timeout,
            idle_timeout: settings.client_idle_timeout,
            drain_timeout: settings.drain_timeout,
            max_connections: None,
        }
    }
}

/// The first wait after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`] while accepting
/// keeps failing (out of file descriptors, say) and starts over after a success.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest wait between two accept attempts that fail.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// TCP keepalive for client and member sockets: probes after 60 s of silence, every 15 s, four
/// times. A peer that vanished without a FIN or RST (a crashed host, a dropped NAT entry) is
/// then found within two minutes, even under a tunnel or a long poll that waits on it.
pub(crate) fn set_tcp_keepalive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15))
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// The hyper builder both listeners use.
fn builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        // One flat write buffer: a queue of member chunks would pin the member side's read
        // buffers behind a slow reader.
        .writev(false)
        .max_buf_size(super::MAX_BUF_PER_CONNECTION);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .max_send_buf_size(super::MAX_BUF_PER_CONNECTION);
    builder
}

/// Accepts connections until `shutdown` turns true, then lets open connections finish their
/// in-flight requests (closing idle keep-alive connections at once) and tunnels end, for at most
/// the drain timeout; what is left then is closed. Returns when everything is closed.
pub async fn serve(listener: TcpListener, edge: Edge, proxy: Arc<Proxy>, shutdown: watch::Receiver<bool>) {
    let limits = ListenerLimits::proxy(&proxy.settings);
    let p = Arc::clone(&proxy);
    let deadline = run_with(listener, limits, shutdown, move |stream, peer| {
        let (edge, proxy) = (edge.clone(), Arc::clone(&p));
        async move {
            // TLS handshake and PROXY header, bounded by the edge's own timeout.
            let (stream, client) = edge.accept(stream, peer).await?;
            let handler = move |req| Arc::clone(&proxy).handle(req, client.clone());
            Some((stream, peer, handler))
        }
    })
    .await;
    proxy.tunnels.drain(deadline).await;
}

/// Serves `listener` with `make_handler(peer)` answering each connection's requests, under
/// `limits`, until `shutdown` turns true; then drains. Returns the drain's deadline, for
/// whatever else the caller drains (tunnels).
pub(crate) async fn run<M, H, F, B>(
    listener: TcpListener,
    limits: ListenerLimits,
    shutdown: watch::Receiver<bool>,
    make_handler: M,
) -> Instant
where
    M: Fn(SocketAddr) -> H,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    run_with(listener, limits, shutdown, |stream, peer| std::future::ready(Some((stream, peer, make_handler(peer)))))
        .await
}

/// Like [`run`], with an asynchronous step between accepting a socket and serving HTTP on it
/// (`prepare`: a TLS handshake, a PROXY protocol header), run in the connection's own task;
/// `None` closes the connection.
pub(crate) async fn run_with<P, PF, S, H, F, B>(
    listener: TcpListener,
    limits: ListenerLimits,
    shutdown: watch::Receiver<bool>,
    prepare: P,
) -> Instant
where
    P: Fn(TcpStream, SocketAddr) -> PF,
    PF: Future<Output = Option<(S, SocketAddr, H)>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = builder(&limits);
    let limits = Arc::new(limits);
    let permits = limits.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let (tracker, abort) = (TaskTracker::new(), CancellationToken::new());
    let refused = RefusalLog::default();
    let mut stop = shutdown.clone();
    accept_loop(&listener, &mut stop, |stream: TcpStream, peer| {
        let permit = match &permits {
            None => None,
            Some(p) => match Arc::clone(p).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    refused.refuse(limits.name, peer);
                    return; // dropping `stream` closes it at once
                }
            },
        };
        let _ = stream.set_nodelay(true);
        set_tcp_keepalive(&stream);
        let prepared = prepare(stream, peer);
        let (builder, limits, shutdown, abort) =
            (builder.clone(), Arc::clone(&limits), shutdown.clone(), abort.clone());
        tracker.spawn(async move {
            let prepared = tokio::select! {
                p = prepared => p,
                _ = abort.cancelled() => None,
            };
            if let Some((io, peer, handler)) = prepared {
                serve_connection(builder, io, peer, handler, limits, shutdown, abort).await;
            }
            drop(permit);
        });
    })
    .await;
    drop(listener);
    let deadline = Instant::now() + limits.drain_timeout;
    tracing::info!(listener = limits.name, drain_timeout = ?limits.drain_timeout, open = tracker.len(), "stopped accepting; draining connections");
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
        tracing::warn!(
            listener = limits.name,
            open = tracker.len(),
            "drain timeout passed: closing the connections left"
        );
        abort.cancel();
        tracker.wait().await;
    }
    deadline
}

/// The accept half of a listener: a trait so that the accept loop's backoff can be tested
/// without running the process out of file descriptors.
pub(crate) trait Accept {
    /// An accepted connection.
    type Conn;
    /// The next connection.
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Conn, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    type Conn = TcpStream;
    fn accept(&self) -> impl Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// Hands each accepted connection to `on_conn` until `shutdown` turns true (or its sender is
/// gone). Failed accepts are logged and retried after a growing pause, never in a busy loop.
pub(crate) async fn accept_loop<A: Accept>(
    listener: &A,
    shutdown: &mut watch::Receiver<bool>,
    mut on_conn: impl FnMut(A::Conn, SocketAddr),
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((conn, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                on_conn(conn, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Connections refused for the connection limit: each one is logged at debug, and a warning
/// with the count goes out at most once a second, so a flood cannot flood the log too.
#[derive(Debug, Default)]
struct RefusalLog {
    count: AtomicU64,
    last_warned_s: AtomicU64,
}

impl RefusalLog {
    fn refuse(&self, listener: &'static str, peer: SocketAddr) {
        let n = self.count.fetch_add(1, Relaxed) + 1;
        tracing::debug!(listener, %peer, "connection limit reached: connection closed");
        let now_s = crate::core::Clock.now_ms() / 1000;
        if self.last_warned_s.swap(now_s, Relaxed) != now_s {
            tracing::warn!(listener, refused_so_far = n, "connection limit reached: new connections are closed");
        }
    }
}

/// Requests started and in flight on one connection. The watchdog, which wakes a few times per
/// idle period, compares counts and reads the clock; a request only counts.
#[derive(Debug, Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// One request in flight; it ends when dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until the body has been sent (or
    /// dropped): a streamed download or a long poll is activity, a PING is not.
    struct Tracked<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if matches!(r, Poll::Ready(None | Some(Err(_)))) {
            this.guard.take();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one connection, with the watchdog described in the module doc. `abort` closes it
/// outright (the drain timeout passed).
pub(crate) async fn serve_connection<I, H, F, B>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    peer: SocketAddr,
    handler: H,
    limits: Arc<ListenerLimits>,
    mut shutdown: watch::Receiver<bool>,
    abort: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::default());
    let act = Arc::clone(&activity);
    let svc = service_fn(move |req| {
        let guard = act.begin();
        let resp = handler(req);
        async move { Ok::<_, Infallible>(resp.await.map(|inner| Tracked { inner, guard: Some(guard) })) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let first_request_by = Instant::now() + limits.header_timeout;
    let mut awaiting_first = true;
    // Closes between `idle` and `idle + tick` after the last request ended.
    let idle = limits.idle_timeout;
    let tick = (idle / 4).max(Duration::from_millis(10));
    let (mut seen_started, mut quiet_since) = (0, Instant::now());
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(listener = limits.name, %peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = abort.cancelled() => return,
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = tokio::time::sleep_until(first_request_by), if awaiting_first => {
                awaiting_first = false;
                if activity.started.load(Relaxed) == 0 {
                    tracing::debug!(listener = limits.name, %peer, "no request within the header timeout: connection closed");
                    return;
                }
            }
            _ = tokio::time::sleep(tick), if !closing => {
                let started = activity.started.load(Relaxed);
                if started != seen_started || activity.in_flight.load(Relaxed) > 0 {
                    (seen_started, quiet_since) = (started, Instant::now());
                } else if quiet_since.elapsed() >= idle {
                    tracing::debug!(listener = limits.name, %peer, "closing idle client connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener out of file descriptors: every accept fails at once.
    struct Exhausted(AtomicUsize);

    impl Accept for Exhausted {
        type Conn = ();
        fn accept(&self) -> impl Future<Output = std::io::Result<((), SocketAddr)>> + Send {
            self.0.fetch_add(1, Relaxed);
            std::future::ready(Err(std::io::Error::from_raw_os_error(24))) // EMFILE
        }
    }

    #[tokio::test]
    async fn failing_accepts_back_off_instead_of_spinning() {
        let listener = Exhausted(AtomicUsize::new(0));
        let (stop, mut rx) = watch::channel(false);
        let window = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let _ = stop.send(true);
        };
        let started = Instant::now();
        tokio::join!(accept_loop(&listener, &mut rx, |(), _| unreachable!("nothing is accepted")), window);
        let tries = listener.0.load(Relaxed);
        // Waits of 10, 20, 40, 80, 160 ms: 5 tries in the first 310 ms, a sixth by 630 ms.
        // Without the backoff it would be hundreds of thousands.
        assert!((3..=7).contains(&tries), "{tries} accept attempts in 400 ms");
        assert!(started.elapsed() < Duration::from_secs(2), "stops promptly when asked, even while backing off");
    }

    #[tokio::test]
    async fn a_gone_shutdown_sender_stops_the_loop() {
        let listener = Exhausted(AtomicUsize::new(0));
        let (stop, mut rx) = watch::channel(false);
        drop(stop);
        accept_loop(&listener, &mut rx, |(), _| {}).await;
        assert!(listener.0.load(Relaxed) <= 1, "a gone sender stops the loop");
    }

    #[tokio::test]
    async fn sockets_get_tcp_keepalive() {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        set_tcp_keepalive(&s);
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), Duration::from_secs(15));
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
    }
}
