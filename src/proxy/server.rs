//! The client-facing listener, and the connection handling the admin listener shares with it.
//!
//! Each connection is served by hyper-util's `auto` builder (HTTP/1.1, and HTTP/2 with prior
//! knowledge), with upgrades. Instead of hyper-util's `GracefulShutdown`, each connection task
//! runs its own small watchdog, so that one place decides when a connection closes:
//! - **Header timeout.** A new connection must start its first request within the header
//!   timeout. On HTTP/1.1 every later request head, and the keep-alive wait for it, is bounded
//!   the same way: with no request in flight, a connection that starts none for the header
//!   timeout is closed gracefully. hyper's own `header_read_timeout` is not used: it starts
//!   only once the protocol is known (a connection that never sends a byte would stay open
//!   until the idle timeout), and it allocates and arms a timer for every request.
//! - **Idle timeout.** Activity is counted in requests, not bytes: a request is in flight from
//!   its head until its response body has been sent (or dropped). A connection with no request
//!   in flight and none started for the idle timeout is closed gracefully (and outright if it is
//!   still open one idle timeout later). HTTP/2 PINGs, their ACKs, SETTINGS and WINDOW_UPDATEs
//!   keep nothing open.
//! - **Write stall.** A client that stops reading its response would keep its request in flight,
//!   and the member connection behind it, for ever. So a response body that handed hyper data
//!   and is not polled again for the idle timeout (hyper polls it as soon as the client has read
//!   enough) closes the connection. A long poll is not affected: its body is polled and waits.
//! - **Drain.** On shutdown every connection is closed gracefully (idle ones at once, the others
//!   after their in-flight requests); those still open after the drain timeout are closed.
//!
//! The accept loop backs off when accepting fails (EMFILE and friends) instead of spinning, and
//! can cap the connections served at once, in all and per peer IP (the admin listener does). At
//! a cap the connection idle longest is closed to make room, never the new one: a peer holding
//! silent connections open then cannot lock out a liveness probe.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
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
    /// Time a new connection has to start its first request (on HTTP/1.1 also every later
    /// request head, and the keep-alive wait for it).
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// On shutdown, how long open connections may take to finish.
    pub drain_timeout: Duration,
    /// Connections served at once; at the cap, a new one makes the connection idle longest
    /// close (so that file descriptors stay bounded, yet the newest client is served).
    pub max_connections: Option<usize>,
    /// Connections served at once per peer IP (IPv6: per /64), in front of `max_connections`,
    /// so one peer cannot fill it; at the cap, a new one closes that peer's connection idle
    /// longest.
    pub max_connections_per_ip: Option<usize>,
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
            max_connections_per_ip: None,
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
fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // No `header_read_timeout` (hyper's default is 30 s once a timer is set): the
        // connection's watchdog bounds request heads without a timer per request.
        .header_read_timeout(None)
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
            // Boxed: the request's future is a few KiB, and hyper moves what the handler
            // returns (twice per request, measured with callgrind); a box moves as a pointer.
            let conn = super::forward::ClientConn::new(client);
            let handler = move |req| boxed_in_place(|| Arc::clone(&proxy).handle(req, Arc::clone(&conn)));
            Some((stream, peer, handler))
        }
    })
    .await;
    proxy.tunnels.drain(deadline).await;
}

/// The future `make` returns, made in its box: `Box::pin(make())` makes it on the stack and
/// copies all of it into the box, 3 KiB for a request's future (a memcpy into cold memory that
/// was a tenth of an HTTP/2 request's memcpy time in `perf`); with the box allocated first, the
/// compiler has `make` write the future there.
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
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
    let builder = builder();
    let limits = Arc::new(limits);
    let slots = Slots::new(&limits);
    let (tracker, abort) = (TaskTracker::new(), CancellationToken::new());
    let evictions = EvictionLog::default();
    let mut stop = shutdown.clone();
    accept_loop(&listener, &mut stop, |stream: TcpStream, peer| {
        // Its own token, so the listener can close this one connection (a cap evicts it).
        let close = abort.child_token();
        let activity = Arc::new(Activity::new(slots.as_ref().map(|s| s.epoch)));
        let slot = slots.as_ref().map(|s| {
            let (slot, evicted) = s.admit(peer.ip(), Arc::clone(&activity), close.clone());
            if let Some(evicted) = evicted {
                evictions.evict(limits.name, evicted);
            }
            slot
        });
        let _ = stream.set_nodelay(true);
        set_tcp_keepalive(&stream);
        let prepared = prepare(stream, peer);
        let (builder, limits, shutdown) = (builder.clone(), Arc::clone(&limits), shutdown.clone());
        tracker.spawn(async move {
            let prepared = tokio::select! {
                p = prepared => p,
                _ = close.cancelled() => None,
            };
            if let Some((io, peer, handler)) = prepared {
                serve_connection(builder, io, peer, handler, activity, limits, shutdown, close).await;
            }
            drop(slot);
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

/// Connections closed for a connection cap: each one is logged at debug, and a warning with
/// the count goes out at most once a second, so a flood cannot flood the log too.
#[derive(Debug, Default)]
struct EvictionLog {
    count: AtomicU64,
    last_warned_s: AtomicU64,
}

impl EvictionLog {
    fn evict(&self, listener: &'static str, ip: IpAddr) {
        let n = self.count.fetch_add(1, Relaxed) + 1;
        tracing::debug!(listener, peer = %ip, "connection limit reached: the connection idle longest was closed");
        let now_s = crate::core::Clock.now_ms() / 1000;
        if self.last_warned_s.swap(now_s, Relaxed) != now_s {
            tracing::warn!(
                listener,
                closed_so_far = n,
                "connection limit reached: connections idle longest are closed to make room"
            );
        }
    }
}

/// The connections of a capped listener, by peer IP. Only accepting and closing a connection
/// take the lock, never a request.
#[derive(Debug)]
struct Slots {
    max: usize,
    per_ip: usize,
    /// What [`Activity::last_active_us`] counts from.
    epoch: Instant,
    inner: Mutex<SlotsInner>,
}

#[derive(Debug, Default)]
struct SlotsInner {
    next_id: u64,
    conns: HashMap<u64, Slot>,
    by_ip: HashMap<IpAddr, usize>,
}

/// One open connection: its peer, its activity (to find the one idle longest) and what closes it.
#[derive(Debug)]
struct Slot {
    ip: IpAddr,
    activity: Arc<Activity>,
    close: CancellationToken,
}

impl SlotsInner {
    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.conns.remove(&id)?;
        if let Some(n) = self.by_ip.get_mut(&slot.ip) {
            *n -= 1;
            if *n == 0 {
                self.by_ip.remove(&slot.ip);
            }
        }
        Some(slot)
    }

    /// The connection idle longest (of `ip`, if given): one with no request in flight if there
    /// is one, the least recently active first, the oldest of those.
    fn idlest(&self, ip: Option<IpAddr>) -> Option<u64> {
        let key = |(id, s): &(&u64, &Slot)| {
            (s.activity.in_flight.load(Relaxed) > 0, s.activity.last_active_us.load(Relaxed), **id)
        };
        self.conns.iter().filter(|(_, s)| ip.is_none_or(|ip| s.ip == ip)).min_by_key(key).map(|(id, _)| *id)
    }
}

impl Slots {
    fn new(limits: &ListenerLimits) -> Option<Arc<Slots>> {
        if limits.max_connections.is_none() && limits.max_connections_per_ip.is_none() {
            return None;
        }
        Some(Arc::new(Slots {
            max: limits.max_connections.unwrap_or(usize::MAX).max(1),
            per_ip: limits.max_connections_per_ip.unwrap_or(usize::MAX).max(1),
            epoch: Instant::now(),
            inner: Mutex::default(),
        }))
    }

    /// Takes a slot for a new connection from `ip`. At the peer's cap that peer's connection
    /// idle longest is closed, at the listener's cap the listener's; returns the closed one's IP.
    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        activity: Arc<Activity>,
        close: CancellationToken,
    ) -> (SlotGuard, Option<IpAddr>) {
        let ip = peer_key(ip);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let victim = if inner.by_ip.get(&ip).is_some_and(|n| *n >= self.per_ip) {
            inner.idlest(Some(ip))
        } else if inner.conns.len() >= self.max {
            inner.idlest(None)
        } else {
            None
        };
        let evicted = victim.and_then(|id| inner.remove(id)).map(|slot| {
            slot.close.cancel();
            slot.ip
        });
        let id = inner.next_id;
        inner.next_id += 1;
        inner.conns.insert(id, Slot { ip, activity, close });
        *inner.by_ip.entry(ip).or_default() += 1;
        (SlotGuard { slots: Arc::clone(self), id }, evicted)
    }
}

/// Who a per-peer cap counts: the IPv4 address, or the IPv6 /64 (one host usually has a whole
/// /64, and would otherwise have as many addresses as it likes).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// A connection's slot; it frees the slot when the connection ends.
#[derive(Debug)]
struct SlotGuard {
    slots: Arc<Slots>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        // Already gone if the connection was evicted.
        self.slots.inner.lock().unwrap_or_else(PoisonError::into_inner).remove(self.id);
    }
}

/// Requests started and in flight on one connection, and the state of its response bodies.
/// The watchdog, which wakes a few times per idle period, compares counts and reads the clock;
/// a request only counts.
#[derive(Debug, Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
    /// Response bodies that handed hyper data and have not been polled since: hyper is writing
    /// that data to the client.
    owed: AtomicUsize,
    /// Polls of a body in `owed`: each one means the client read what it was sent.
    written: AtomicU64,
    /// On a capped listener: what `last_active_us` counts from. `None`: no time stamps.
    epoch: Option<Instant>,
    /// When a request last started or ended (or the connection was accepted).
    last_active_us: AtomicU64,
    /// An HTTP/2 request came: the connection is multiplexed, its keep-alive wait is bounded
    /// by the idle timeout alone (HTTP/2 has its own PINGs), not by the header timeout.
    multiplexed: AtomicBool,
}

impl Activity {
    fn new(epoch: Option<Instant>) -> Activity {
        let a = Activity { epoch, ..Activity::default() };
        a.stamp();
        a
    }

    fn stamp(&self) {
        if let Some(epoch) = self.epoch {
            let us = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.last_active_us.store(us, Relaxed);
        }
    }

    fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            self.multiplexed.store(true, Relaxed);
        }
        self.started.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        self.stamp();
        InFlight { activity: Arc::clone(self), owes: false }
    }
}

/// One request in flight; it ends when dropped. `owes`: its body is counted in `owed`.
#[derive(Debug)]
struct InFlight {
    activity: Arc<Activity>,
    owes: bool,
}

impl InFlight {
    /// hyper polls the body: it has written what the body handed it before.
    fn polled(&mut self) {
        if std::mem::take(&mut self.owes) {
            self.activity.owed.fetch_sub(1, Relaxed);
            self.activity.written.fetch_add(1, Relaxed);
        }
    }

    /// The body handed hyper data to write.
    fn handed(&mut self) {
        self.owes = true;
        self.activity.owed.fetch_add(1, Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.owes {
            self.activity.owed.fetch_sub(1, Relaxed);
        }
        self.activity.in_flight.fetch_sub(1, Relaxed);
        self.activity.stamp();
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
        if let Some(g) = this.guard.as_mut() {
            g.polled();
        }
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) if f.is_data() => {
                if let Some(g) = this.guard.as_mut() {
                    g.handed();
                }
            }
            Poll::Ready(None | Some(Err(_))) => drop(this.guard.take()),
            _ => {}
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

/// What the watchdog found on one of its ticks.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Requests in flight or started lately, and the client reads what it is sent.
    Busy,
    /// No request in flight or started for the idle timeout.
    Idle,
    /// HTTP/1.1: no request in flight or started for the header timeout (a keep-alive wait
    /// for a head that did not come, or came too slowly).
    NoHead,
    /// A response body has waited for the client to read it for the idle timeout.
    Stalled,
}

/// The watchdog's memory between two ticks.
#[derive(Debug)]
struct Watchdog {
    seen_started: u64,
    /// Since when no request has been in flight nor started, as the ticks saw it (never
    /// earlier than it was so); `None` while one is in flight.
    quiet_since: Option<Instant>,
    /// `written` when a body was first seen owed, and when.
    owed_since: Option<(u64, Instant)>,
}

/// How long a connection may stay quiet (no request in flight nor started).
#[derive(Debug, Clone, Copy)]
struct QuietLimits {
    idle: Duration,
    /// The header timeout, on a connection not (yet) known to be HTTP/2.
    head: Duration,
}

impl QuietLimits {
    /// The period of the watchdog's ticks: a limit is noticed at most a quarter of it late.
    fn tick(&self) -> Duration {
        (self.idle.min(self.head) / 4).max(Duration::from_millis(10))
    }
}

impl Watchdog {
    fn new(now: Instant) -> Watchdog {
        Watchdog { seen_started: 0, quiet_since: Some(now), owed_since: None }
    }

    /// Idle (or without a head) between the limit and the limit plus a tick after the last
    /// request ended, never before; stalled between `idle` and `idle + tick` after the client
    /// last read.
    fn tick(&mut self, a: &Activity, limits: QuietLimits, now: Instant) -> Verdict {
        let written = a.written.load(Relaxed);
        match self.owed_since {
            _ if a.owed.load(Relaxed) == 0 => self.owed_since = None,
            Some((w, since)) if w == written => {
                if now.duration_since(since) >= limits.idle {
                    return Verdict::Stalled;
                }
            }
            _ => self.owed_since = Some((written, now)),
        }
        let started = a.started.load(Relaxed);
        if a.in_flight.load(Relaxed) > 0 {
            (self.seen_started, self.quiet_since) = (started, None);
            return Verdict::Busy;
        }
        if started != self.seen_started {
            // Requests came and went since the last tick: quiet from some moment before now.
            (self.seen_started, self.quiet_since) = (started, Some(now));
            return Verdict::Busy;
        }
        let quiet = now.duration_since(*self.quiet_since.get_or_insert(now));
        if quiet >= limits.idle {
            Verdict::Idle
        } else if quiet >= limits.head && !a.multiplexed.load(Relaxed) {
            Verdict::NoHead
        } else {
            Verdict::Busy
        }
    }
}

/// Serves one connection, with the watchdog described in the module doc. `abort` closes it
/// outright (the drain timeout passed, or a connection cap evicted it).
#[allow(clippy::too_many_arguments)]
async fn serve_connection<I, H, F, B>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    peer: SocketAddr,
    handler: H,
    activity: Arc<Activity>,
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
    let act = Arc::clone(&activity);
    let svc = service_fn(move |req| {
        let guard = act.begin(req.version());
        let resp = handler(req);
        async move { Ok::<_, Infallible>(resp.await.map(|inner| Tracked { inner, guard: Some(guard) })) }
    });
    // HTTP/2 connections send what their streams wrote once per scheduler round.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(super::coalesce::Coalesce::new(io)), svc);
    tokio::pin!(conn);
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let idle = limits.idle_timeout;
    let quiet = QuietLimits { idle, head: limits.header_timeout };
    let tick = quiet.tick();
    let mut watch = Watchdog::new(Instant::now());
    // Every future below is made once per connection, not once per wake-up: the loop wakes on
    // every request, and a new timer or waiter each time cost a timer-wheel insertion and
    // removal and a few waiter-list locks per request.
    let first_request = tokio::time::sleep(limits.header_timeout);
    let mut awaiting_first = true;
    let ticks = tokio::time::sleep(tick);
    // Armed when closed for idleness: a connection still open then (hyper still writing to a
    // client that does not read) is closed outright one idle timeout later.
    let idle_close = tokio::time::sleep(idle);
    let mut idle_closing = false;
    let cancelled = abort.cancelled();
    let shutdown_asked = async move { while shutdown.changed().await.is_ok() && !*shutdown.borrow() {} };
    tokio::pin!(first_request, ticks, idle_close, cancelled, shutdown_asked);
    loop {
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(listener = limits.name, %peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = &mut cancelled => return,
            _ = &mut shutdown_asked, if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = &mut first_request, if awaiting_first => {
                awaiting_first = false;
                if activity.started.load(Relaxed) == 0 {
                    tracing::debug!(listener = limits.name, %peer, "no request within the header timeout: connection closed");
                    return;
                }
            }
            // Also while closing: a response a client stopped reading would hold the drain.
            _ = &mut ticks => {
                let now = Instant::now();
                ticks.as_mut().reset(now + tick);
                match watch.tick(&activity, quiet, now) {
                    Verdict::Busy => {}
                    Verdict::Idle | Verdict::NoHead if closing => {}
                    verdict @ (Verdict::Idle | Verdict::NoHead) => {
                        // Closed gracefully (hyper first writes out what it holds), and
                        // outright once the same limit has passed again.
                        let again = if verdict == Verdict::Idle {
                            tracing::debug!(listener = limits.name, %peer, "closing idle client connection");
                            idle
                        } else {
                            tracing::debug!(listener = limits.name, %peer, "no request head within the header timeout: closing the connection");
                            limits.header_timeout
                        };
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        idle_closing = true;
                        idle_close.as_mut().reset(now + again);
                    }
                    Verdict::Stalled => {
                        tracing::debug!(listener = limits.name, %peer, "the client stopped reading its response: connection closed");
                        return;
                    }
                }
            }
            _ = &mut idle_close, if idle_closing => {
                // A request that came in as it was closed is let finish.
                if activity.in_flight.load(Relaxed) > 0 {
                    idle_close.as_mut().reset(Instant::now() + idle);
                    continue;
                }
                tracing::debug!(listener = limits.name, %peer, "idle client connection did not close: closed outright");
                return;
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

    fn capped(max: usize, per_ip: usize) -> Arc<Slots> {
        let limits = ListenerLimits {
            name: "test",
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(1),
            max_connections: Some(max),
            max_connections_per_ip: Some(per_ip),
        };
        Slots::new(&limits).unwrap()
    }

    /// Admits a connection from `ip`; returns its guard, activity and close token.
    fn admit(slots: &Arc<Slots>, ip: [u8; 4]) -> (SlotGuard, Arc<Activity>, CancellationToken, Option<IpAddr>) {
        let (a, close) = (Arc::new(Activity::new(Some(slots.epoch))), CancellationToken::new());
        let (g, evicted) = slots.admit(IpAddr::from(ip), Arc::clone(&a), close.clone());
        (g, a, close, evicted)
    }

    #[test]
    fn at_a_cap_the_connection_idle_longest_is_closed_not_the_new_one() {
        let slots = capped(3, 2);
        let first = admit(&slots, [10, 0, 0, 1]);
        let second = admit(&slots, [10, 0, 0, 1]);
        // The peer's cap: its own connection idle longest goes.
        let third = admit(&slots, [10, 0, 0, 1]);
        assert_eq!(third.3, Some(IpAddr::from([10, 0, 0, 1])));
        assert!(first.2.is_cancelled() && !second.2.is_cancelled());
        drop(first); // its slot was freed already: dropping its guard changes nothing
        let other = admit(&slots, [10, 0, 0, 2]);
        assert_eq!(other.3, None, "2 of 3 slots were taken");
        // The listener's cap: a request in flight keeps `second` open; `third` is idle.
        let busy = second.1.begin(Version::HTTP_11);
        let last = admit(&slots, [10, 0, 0, 3]);
        assert_eq!(last.3, Some(IpAddr::from([10, 0, 0, 1])));
        assert!(third.2.is_cancelled() && !second.2.is_cancelled() && !other.2.is_cancelled());
        drop((busy, last));
        assert_eq!(slots.inner.lock().unwrap().conns.len(), 2, "closed connections free their slot");
    }

    #[test]
    fn a_peer_is_an_ipv4_address_or_an_ipv6_64() {
        let k = |s: &str| peer_key(s.parse().unwrap());
        assert_eq!(k("10.0.0.1"), k("::ffff:10.0.0.1"), "a mapped IPv4 peer is that IPv4 peer");
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
        assert_eq!(k("2001:db8::1"), k("2001:db8::ffff:2"));
        assert_ne!(k("2001:db8::1"), k("2001:db8:0:1::1"));
    }

    #[test]
    fn a_body_hyper_stops_polling_after_data_is_a_write_stall() {
        let (a, idle) = (Arc::new(Activity::new(None)), Duration::from_secs(1));
        let limits = QuietLimits { idle, head: idle };
        let mut now = Instant::now();
        let mut dog = Watchdog::new(now);
        let mut req = a.begin(Version::HTTP_11);
        // A long poll: in flight, nothing handed to hyper. Never idle, never stalled.
        for _ in 0..8 {
            now += idle / 2;
            assert_eq!(dog.tick(&a, limits, now), Verdict::Busy);
        }
        // A client that reads: hyper polls again after each chunk.
        req.handed();
        for _ in 0..8 {
            now += idle / 2;
            assert_eq!(dog.tick(&a, limits, now), Verdict::Busy);
            req.polled();
            req.handed();
        }
        // A client that stopped reading: no poll since the last chunk.
        assert_eq!(dog.tick(&a, limits, now), Verdict::Busy);
        now += idle / 2;
        assert_eq!(dog.tick(&a, limits, now), Verdict::Busy);
        now += idle / 2;
        assert_eq!(dog.tick(&a, limits, now), Verdict::Stalled);
        drop(req);
        assert_eq!(a.owed.load(Relaxed), 0, "a dropped body owes nothing");
    }

    /// Ticks every `step` from `now` until the verdict is not `Busy`; how long that took.
    fn quiet_until_verdict(
        dog: &mut Watchdog,
        a: &Activity,
        limits: QuietLimits,
        now: &mut Instant,
    ) -> (Verdict, Duration) {
        let (start, step) = (*now, limits.tick());
        loop {
            *now += step;
            let v = dog.tick(a, limits, *now);
            if v != Verdict::Busy || *now - start > limits.idle * 2 {
                return (v, *now - start);
            }
        }
    }

    /// A new connection's activity and watchdog, with the default limits (idle 60 s, head 15 s).
    fn defaults_watched() -> (Arc<Activity>, QuietLimits, Instant, Watchdog) {
        let limits = QuietLimits { idle: Duration::from_secs(60), head: Duration::from_secs(15) };
        let now = Instant::now();
        (Arc::new(Activity::new(None)), limits, now, Watchdog::new(now))
    }

    #[test]
    fn an_http1_keep_alive_wait_is_bounded_by_the_header_timeout_never_early() {
        let (a, limits, mut now, mut dog) = defaults_watched();
        // A request in flight across many ticks is never cut by either limit.
        let req = a.begin(Version::HTTP_11);
        for _ in 0..100 {
            now += limits.tick();
            assert_eq!(dog.tick(&a, limits, now), Verdict::Busy);
        }
        // It ends just after a tick: the wait for the next head counts from the next tick.
        now += Duration::from_millis(1);
        drop(req);
        let (v, took) = quiet_until_verdict(&mut dog, &a, limits, &mut now);
        assert_eq!(v, Verdict::NoHead);
        assert!(took >= limits.head && took <= limits.head + 2 * limits.tick(), "{took:?}");
        // Requests that come and go between two ticks: quiet from the tick that saw them.
        let mut dog = Watchdog::new(now);
        drop(a.begin(Version::HTTP_11));
        let (v, took) = quiet_until_verdict(&mut dog, &a, limits, &mut now);
        assert_eq!(v, Verdict::NoHead);
        assert!(took >= limits.head + limits.tick() && took <= limits.head + 2 * limits.tick(), "{took:?}");
    }

    #[test]
    fn an_http2_connection_waits_the_idle_timeout() {
        let (a, limits, mut now, mut dog) = defaults_watched();
        drop(a.begin(Version::HTTP_2));
        let (v, took) = quiet_until_verdict(&mut dog, &a, limits, &mut now);
        assert_eq!(v, Verdict::Idle);
        assert!(took >= limits.idle && took <= limits.idle + 2 * limits.tick(), "{took:?}");
    }

    /// One HTTP/1.1 request over an in-memory pipe of 1 KiB to `serve_connection`, answered with
    /// 64 KiB; the client reads `read` bytes of the answer, then nothing, and sends nothing.
    /// How long the connection lived. Paused time: the timers fire exactly when due.
    async fn lifetime_after_one_answer(read: usize) -> Duration {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1024);
        let limits = Arc::new(ListenerLimits {
            name: "test",
            header_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(1),
            max_connections: None,
            max_connections_per_ip: None,
        });
        let (_shutdown, rx) = watch::channel(false);
        let handler = |_req: Request<Incoming>| async {
            Response::new(http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 64 * 1024])))
        };
        let started = Instant::now();
        let activity = Arc::new(Activity::new(None));
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let conn = tokio::spawn(serve_connection(
            builder(),
            server,
            peer,
            handler,
            activity,
            limits,
            rx,
            CancellationToken::new(),
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut got = vec![0u8; read];
        rd.read_exact(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 200"));
        conn.await.unwrap();
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_closes_a_header_timeout_after_its_answer() {
        let (head, tick) = (Duration::from_secs(15), Duration::from_millis(3750));
        // The client read the whole answer: the graceful close ends the connection.
        let took = lifetime_after_one_answer(64 * 1024 + 40).await;
        assert!(took >= head && took <= head + tick, "closed after {took:?}");
        // It left the rest of the answer unread, so hyper cannot finish writing it: the
        // connection is closed outright one header timeout after the graceful close.
        let took = lifetime_after_one_answer(100).await;
        assert!(took >= 2 * head && took <= 2 * head + tick, "closed after {took:?}");
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
