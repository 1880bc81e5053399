//! Connections to members: one small pool per member.
//!
//! Why not hyper-util's pooled `Client`: its pool is one `Mutex` that every request of every
//! member takes; it drops the request when a connection fails (a retry would need a copy of
//! every request head); and it spawns a task per response to hand the connection back. Here each
//! member has its own queue of idle HTTP/1.1 connections; a connection goes back to the queue
//! when its response body ends (see [`MemberBody`]); and a request that was never written — a
//! connect failure, a pooled connection found closed, or a wait for a free connection that ran
//! out of time — comes back to the caller intact, so it can go elsewhere without having been
//! copied.
//!
//! The queue behaves like the pools of pingora and Envoy:
//! - **Newest idle connection first** (LIFO). The connection used last is the one least likely
//!   to have been closed by the member's keep-alive timer; the oldest ones are left to age out.
//!   The queue is a `VecDeque` behind a per-member `Mutex`: only requests to the same member
//!   meet there, for a push or a pop (no allocation, no await, no syscall under it), and a
//!   member with nothing idle is not locked at all. A lock-free LIFO would need a stack with
//!   epoch reclamation (crossbeam has no concurrent stack; `crossbeam-deque`'s LIFO end is
//!   single-owner), and the reaper needs the oldest end too.
//! - **An idle reaper**: one task per member pool, alive only while something is idle, closes
//!   connections idle past `timeouts.idle` without waiting for the next request, so a member's
//!   sockets are not held open (and its keep-alive race is not lost) by a quiet proxy.
//! - **A cap per member** (`backend.maxConnections`): at the cap a request waits for a
//!   connection to come back or close, until its response deadline; then it gets
//!   [`SendError::Saturated`], which is the pool being full, not the member failing. Waiting
//!   requests are served first come, first served, as in HAProxy's server queue: a connection
//!   that comes back (or the place of one that closed) is handed straight to the oldest waiter,
//!   so a request arriving meanwhile finds nothing free and queues behind it.
//!
//! A response is checked before it is handed on: conflicting framing (both `Content-Length`
//! and `Transfer-Encoding`, RFC 9112 §6.3) and a first body frame that is already broken are
//! errors while nothing has reached the client yet, and the response is relabelled with the
//! proxy's own version (RFC 9110 §6.2). A member may send at most [`HEAD_BUDGET`] bytes before
//! its final response head, which bounds a flood of `1xx` responses.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use super::body::{BodySlot, UpstreamBody};
use super::tls::UpstreamTls;
use crate::core::{BusyGuard, FailureKind, PoolConfig};

/// Idle connections kept per member; beyond it the oldest is closed.
const MAX_IDLE_PER_MEMBER: usize = 512;

/// Bytes a member may send after a request before its final (non-`1xx`) response head. A real
/// head fits the connection's read buffer ([`super::MAX_BUF_PER_CONNECTION`], 32 KiB); the rest
/// is ample room for the first body reads made along with it. A member streaming
/// `100 Continue` forever hits this in milliseconds instead of holding the request until the
/// response timeout.
pub const HEAD_BUDGET: u64 = 1 << 20;

/// What one request may use of a member's pool, taken from its pool's configuration per
/// request (a reload applies to the next request).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// TCP connect timeout.
    pub connect: Duration,
    /// How long a connection may stay idle once its response has ended.
    pub idle: Duration,
    /// Connections open to the member at most (`None`: no cap).
    pub max_connections: Option<u32>,
    /// When waiting for a free connection gives up (the request's response deadline).
    pub deadline: tokio::time::Instant,
    /// When this attempt set out ([`now`]): what idle connections' expiry is checked against,
    /// so an attempt reads the clock once for its deadline and its connection.
    pub sent: Instant,
}

/// The clock of the pool's timings (idle expiry, answer times): tokio's, so that a test on
/// paused time sees one clock; outside such a test it is `Instant::now()` itself.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Stands for "never" when a configured duration does not fit in an `Instant` (as tokio does).
const FAR_FUTURE: Duration = Duration::from_secs(86400 * 365 * 30);

impl Limits {
    /// `after` from now; a duration too long to represent (a huge configured timeout) is taken
    /// as 30 years instead of overflowing.
    pub fn deadline_in(after: Duration) -> tokio::time::Instant {
        Self::deadline_after(tokio::time::Instant::now(), after)
    }

    fn deadline_after(at: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
        at.checked_add(after).unwrap_or(at + FAR_FUTURE)
    }

    /// The limits of `pool` for a request sent at `sent` (tokio's clock: paused in tests), so
    /// its response is due one response timeout later.
    pub fn of(pool: &PoolConfig, sent: tokio::time::Instant) -> Limits {
        Limits {
            connect: pool.timeouts.connect,
            idle: pool.timeouts.idle,
            max_connections: pool.max_connections,
            deadline: Self::deadline_after(sent, pool.timeouts.response),
            sent: sent.into_std(),
        }
    }
}

/// One connection to a member, as the pool holds it.
struct Conn {
    sender: SendRequest<UpstreamBody>,
    budget: Arc<ReadBudget>,
    /// How long it may stay idle once back (the pool's `timeouts.idle` at its last request).
    idle_for: Duration,
    /// The TLS setting it was made under: it is never used under another (a pool switched to
    /// `backend.tls`, or to another CA or server name, must not go on in clear or unverified).
    tls: UpstreamTls,
    /// The upload of the exchange in flight, if it has a body: the connection only goes back
    /// to the pool once that went out whole.
    upload: Option<BodySlot>,
    /// The connection's task, to close it at once.
    task: AbortHandle,
}

impl Conn {
    /// Whether a request that reaches the member through `tls` may use this connection: the
    /// same client configuration (by identity: it is cached per setting) and server name.
    fn made_under(&self, tls: &UpstreamTls) -> bool {
        match (&self.tls, tls) {
            (UpstreamTls::Plain, UpstreamTls::Plain) => true,
            (UpstreamTls::Tls { config: a, server_name: na }, UpstreamTls::Tls { config: b, server_name: nb }) => {
                Arc::ptr_eq(a, b) && na == nb
            }
            _ => false,
        }
    }

    /// Remembers the upload of the request about to go out on this connection.
    fn sending(&mut self, req: &Request<UpstreamBody>) {
        self.budget.arm();
        self.upload = match req.body() {
            UpstreamBody::Streamed(s) => Some(Arc::clone(&s.state)),
            UpstreamBody::Empty => None,
        };
    }
}

/// `conn`, just sent a request, unless it is closing. hyper queues a request for the
/// connection's task, whose queue is drained once when that task ends; a request queued at that
/// very instant can land after the drain, and only dropping the sender (the queue's last
/// holder) frees it: until then no answer comes, and the request waited out the response
/// timeout. A connection seen closing right after the send (the task's end marks it before
/// the drain) is dropped at once, so such a request comes back unsent; one not closing then is
/// drained, or answered, as usual (on x86-64 and AArch64, whose ordering of the send and the
/// check makes the drain see the request; were it missed, the request would wait as before).
/// A closing connection would not go back to the pool anyway.
fn unless_closing(conn: Conn) -> Option<Conn> {
    (!conn.sender.is_closed()).then_some(conn)
}

struct Idle {
    conn: Conn,
    expires: Instant,
}

/// What a member's pool keeps under its lock: one lock, so a connection coming back is either
/// handed to a waiting request or put idle, and a request about to wait sees which.
#[derive(Default)]
struct Queues {
    /// Idle connections, oldest first: requests take the newest (back), the reaper the expired.
    idle: VecDeque<Idle>,
    /// Requests waiting for a connection (at `maxConnections`), oldest first. Never both this
    /// and `idle` non-empty: a connection coming back goes to the oldest waiter still there.
    waiting: VecDeque<Waiter>,
}

/// A request waiting for a connection.
struct Waiter {
    /// Where it is handed one.
    tx: tokio::sync::oneshot::Sender<Freed>,
    /// The cap it waits under (its pool's `maxConnections` when it came): the place of a
    /// closed connection goes to it only within that cap, so a reload that lowers the cap
    /// takes effect while requests wait.
    max: usize,
}

/// What a waiting request is handed.
enum Freed {
    /// A connection that came back from its last exchange.
    Conn(Conn),
    /// The place of a connection that closed: the waiter opens a new one in it.
    Slot(Slot),
}

/// A waiting request's end of its hand-over. When the wait ends without taking what was
/// handed (the deadline came just then, or the client left and the request was dropped), a
/// connection goes back through check-in (to the next waiter, or idle) rather than being
/// closed, and a place goes to the next waiter as its slot drops.
struct Handed<'a> {
    rx: tokio::sync::oneshot::Receiver<Freed>,
    pool: &'a Arc<MemberConns>,
}

impl Drop for Handed<'_> {
    fn drop(&mut self) {
        self.rx.close();
        match self.rx.try_recv() {
            Ok(Freed::Conn(conn)) => self.pool.checkin(conn, now()),
            Ok(Freed::Slot(slot)) => drop(slot),
            Err(_) => {}
        }
    }
}

/// How a wait for a free connection ended.
enum Wait {
    /// Handed a connection, or a place for a new one.
    Freed(Freed),
    /// One may be free now (nothing had to be waited for): look again.
    Again,
    /// The response deadline came first.
    TimedOut,
}

/// The connection pool of one member (by address). Shared across routing tables so a reload
/// keeps warm connections; the pool's limits come with each request, so a reload that
/// changes them takes effect on the next one.
pub struct MemberConns {
    addr: SocketAddr,
    /// Idle connections and waiting requests.
    queues: Mutex<Queues>,
    /// The number of idle connections, readable without the lock (a member with nothing idle is
    /// never locked).
    idle_len: AtomicUsize,
    /// Connections open now, idle or busy; a connection's task gives its slot back when it ends
    /// (lowered under the lock, so a request about to wait cannot miss it).
    open: AtomicUsize,
    /// A reaper task is running.
    reaping: AtomicBool,
}

impl std::fmt::Debug for MemberConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberConns")
            .field("addr", &self.addr)
            .field("idle", &self.idle_count())
            .field("open", &self.open_count())
            .finish()
    }
}

/// What went wrong sending a request to a member.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No TCP connection could be made (refused, unreachable, timed out): the member is down.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// The member.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed after connecting (reset, closed before the response, bad
    /// response head, too many bytes before the head).
    #[error("request to {addr} failed: {source}")]
    Exchange {
        /// The member.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
        /// It happened on a pooled connection, not a fresh one.
        reused: bool,
    },
    /// The member's response head came but cannot be passed on; its connection is closed.
    #[error("bad response from {addr}: {reason}")]
    BadResponse {
        /// The member.
        addr: SocketAddr,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The member's response body broke before any of it went to the client.
    #[error("response body from {addr} failed: {source}")]
    Body {
        /// The member.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
    /// Every connection the member may have (`backend.maxConnections`) stayed busy until the
    /// response deadline: the pool is full, the member did not fail.
    #[error("all {max} connections to {addr} stayed busy until the response deadline (backend.maxConnections)")]
    Saturated {
        /// The member.
        addr: SocketAddr,
        /// The cap.
        max: u32,
    },
}

impl SendError {
    /// A connect failure: the member is down, not just this request.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect { .. })
    }

    /// A pooled keep-alive connection that the member closed just as the request went out: the
    /// member is fine (it only timed the connection out), so it is not put in error.
    pub fn is_keepalive_race(&self) -> bool {
        matches!(self, SendError::Exchange { source, reused: true, .. } if source.is_incomplete_message())
    }

    /// No connection became free in time: not the member's failure (it is not put in error).
    pub fn is_saturated(&self) -> bool {
        matches!(self, SendError::Saturated { .. })
    }
}

/// A failed send, with the request when it was never written (it can go elsewhere as it is).
pub struct Failed {
    /// What went wrong.
    pub error: SendError,
    /// The request, when the member never saw a byte of it. Boxed: a rare path, and every
    /// request's answer travels in a `Result` with this beside it.
    pub request: Option<Box<Request<UpstreamBody>>>,
}

impl MemberConns {
    /// An empty pool for the member at `addr`.
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(MemberConns {
            addr,
            queues: Mutex::new(Queues::default()),
            idle_len: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            reaping: AtomicBool::new(false),
        })
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.idle_len.load(Ordering::Relaxed)
    }

    /// Open connections now, idle or busy.
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queues> {
        // The critical sections cannot panic half-way; a poisoned queue is still consistent.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest idle connection still usable through `tls` at `now`; expired or closed
    /// ones, and ones made under another TLS setting, met on the way are dropped (closed).
    fn pop_idle(&self, tls: &UpstreamTls, now: Instant) -> Option<Conn> {
        if self.idle_len.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut q = self.queue();
        let mut found = None;
        while let Some(idle) = q.idle.pop_back() {
            if idle.expires > now && !idle.conn.sender.is_closed() && idle.conn.made_under(tls) {
                found = Some(idle.conn);
                break;
            }
            idle.conn.task.abort();
        }
        self.idle_len.store(q.idle.len(), Ordering::SeqCst);
        found
    }

    /// Sends `req` over the newest idle connection made under `tls`, or a new one (made
    /// within `limits.connect`, with TLS when `tls` says so); at `limits.max_connections` it
    /// waits for one until `limits.deadline`. The answer comes with when its head arrived.
    #[expect(clippy::manual_async_fn, reason = "an async fn would hold its request twice")]
    pub fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
        limits: &Limits,
        tls: &UpstreamTls,
    ) -> impl Future<Output = Result<(Response<MemberBody>, Instant), Failed>> + Send {
        // An `async` block, not an `async fn`: the request is held once in the future, not
        // also as a local copy of the argument.
        async move {
            let mut now = limits.sent;
            // A connection handed over by the wait below, when it can serve this request; boxed
            // (a rare path), as every request's future carries this.
            let mut handed: Option<Box<Conn>> = None;
            loop {
                while let Some(mut conn) = handed.take().map(|c| *c).or_else(|| self.pop_idle(tls, now)) {
                    // It went back to the pool when its last exchange ended whole; this only waits
                    // for the connection task to notice. Bounded all the same: a connection that
                    // does not get ready is closed, not waited on until the response deadline.
                    // Usually it is ready already: then no timer is made.
                    let ready = if conn.sender.is_ready() {
                        Ok(Ok(()))
                    } else {
                        let ready = tokio::time::timeout(limits.connect, conn.sender.ready()).await;
                        // Waited: the next idle connection is checked against the wait's end.
                        now = self::now();
                        ready
                    };
                    match ready {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => continue,
                        Err(_) => {
                            tracing::debug!(addr = %self.addr, "pooled member connection not ready in time; closed");
                            conn.task.abort();
                            continue;
                        }
                    }
                    conn.idle_for = limits.idle;
                    conn.sending(&req);
                    let answer = conn.sender.try_send_request(req);
                    let conn = unless_closing(conn);
                    match answer.await {
                        Ok(resp) => return self.answer(resp, conn, true),
                        Err(mut e) => match e.take_message() {
                            // Closed before our request was written: try the next connection.
                            Some(back) => req = back,
                            None => {
                                let source = e.into_error();
                                let error = SendError::Exchange { addr: self.addr, source, reused: true };
                                return Err(Failed { error, request: None });
                            }
                        },
                    }
                }
                // A new connection (TCP connect, maybe a TLS handshake) and a wait for a free one
                // are boxed: their futures are large, and every request's future would carry them
                // although most requests reuse a pooled connection.
                if let Some(slot) = self.reserve(limits.max_connections).and_then(|s| self.first_in_line(s)) {
                    return Box::pin(self.send_fresh(req, slot, limits, tls)).await;
                }
                // The slot is taken out before the await below: the wait's result is not held
                // across it in every request's future.
                let slot = match Box::pin(self.wait_for_free(limits, tls)).await {
                    Wait::Freed(Freed::Slot(slot)) => slot,
                    // Made under `tls`: the wait closes any other, keeping this request's place.
                    Wait::Freed(Freed::Conn(conn)) => {
                        handed = Some(Box::new(conn));
                        now = self::now();
                        continue;
                    }
                    // The wait may have lasted: idle connections are checked against its end.
                    Wait::Again => {
                        now = self::now();
                        continue;
                    }
                    Wait::TimedOut => {
                        let max = limits.max_connections.unwrap_or(u32::MAX);
                        return Err(Failed {
                            error: SendError::Saturated { addr: self.addr, max },
                            request: Some(Box::new(req)),
                        });
                    }
                };
                return Box::pin(self.send_fresh(req, slot, limits, tls)).await;
            }
        }
    }

    async fn send_fresh(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        slot: Slot,
        limits: &Limits,
        tls: &UpstreamTls,
    ) -> Result<(Response<MemberBody>, Instant), Failed> {
        let mut conn = match self.connect(slot, limits, tls).await {
            Ok(c) => c,
            Err(source) => {
                return Err(Failed {
                    error: SendError::Connect { addr: self.addr, source },
                    request: Some(Box::new(req)),
                });
            }
        };
        conn.sending(&req);
        let answer = conn.sender.try_send_request(req);
        let conn = unless_closing(conn);
        match answer.await {
            Ok(resp) => self.answer(resp, conn, false),
            Err(mut e) => {
                let request = e.take_message().map(Box::new);
                Err(Failed {
                    error: SendError::Exchange { addr: self.addr, source: e.into_error(), reused: false },
                    request,
                })
            }
        }
    }

    /// A slot for one more connection, unless `max` are open.
    fn reserve(self: &Arc<Self>, max: Option<u32>) -> Option<Slot> {
        match max {
            None => {
                self.open.fetch_add(1, Ordering::SeqCst);
            }
            Some(max) => {
                let max = max as usize;
                self.open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).ok()?;
            }
        }
        Some(Slot(Arc::downgrade(self)))
    }

    /// A place just reserved, unless a request already waits (it queued under a lower cap,
    /// before a reload raised it): then the place is its, and this request queues behind it.
    /// Locks only when a new connection is about to be made.
    fn first_in_line(&self, slot: Slot) -> Option<Slot> {
        let mut q = self.queue();
        if q.waiting.is_empty() {
            return Some(slot);
        }
        // Within the cap this request brings (the newest configuration): any waiter may have it.
        match Self::hand_over(&mut q, Freed::Slot(slot), 0) {
            Some(Freed::Slot(slot)) => Some(slot),
            // Handed (or, never, something else back: not dropped under the lock all the same).
            back => {
                drop(q);
                drop(back);
                None
            }
        }
    }

    /// Queues behind the requests already waiting until a connection comes back or closes
    /// ([`Queues::waiting`]), or `limits.deadline` comes first. A connection handed over that
    /// was made under another TLS setting than `tls` (a reload changed it) is closed, and this
    /// request keeps its place: it queues again at the front before closing it, so that
    /// connection's place comes to it.
    async fn wait_for_free(self: &Arc<Self>, limits: &Limits, tls: &UpstreamTls) -> Wait {
        let mut stale: Option<Conn> = None;
        loop {
            match self.wait_in_line(limits, stale.take()).await {
                Wait::Freed(Freed::Conn(conn)) if !conn.made_under(tls) => stale = Some(conn),
                wait => return wait,
            }
        }
    }

    /// One wait of [`MemberConns::wait_for_free`]: at the back of the queue, or at its front
    /// when it closes `stale` (which it does once queued, outside the lock).
    async fn wait_in_line(self: &Arc<Self>, limits: &Limits, stale: Option<Conn>) -> Wait {
        let max = limits.max_connections.map_or(usize::MAX, |m| m as usize);
        let mut handed = {
            let mut q = self.queue();
            // Under the lock, where connections come back and places are given up: one freed
            // since this request looked is not missed.
            if !q.idle.is_empty() || self.open.load(Ordering::SeqCst) < max {
                drop(q);
                drop(stale);
                return Wait::Again;
            }
            // Waiters that gave up (timed out, or their client left) leave from the front
            // here, or when a hand-over meets them; the whole queue is swept each time it
            // doubles (a short deadline behind a long one), which keeps this O(1) on average.
            while q.waiting.front().is_some_and(|w| w.tx.is_closed()) {
                q.waiting.pop_front();
            }
            if q.waiting.len() >= 64 && q.waiting.len().is_power_of_two() {
                q.waiting.retain(|w| !w.tx.is_closed());
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            match stale {
                Some(_) => q.waiting.push_front(Waiter { tx, max }),
                None => q.waiting.push_back(Waiter { tx, max }),
            }
            Handed { rx, pool: self }
        };
        if let Some(conn) = stale {
            // Its task ends and gives its place up, to this request, first in line now.
            conn.task.abort();
        }
        match tokio::time::timeout_at(limits.deadline, &mut handed.rx).await {
            Ok(Ok(freed)) => Wait::Freed(freed),
            // The pool dropped its queue (never while a request holds the pool): look again.
            Ok(Err(_)) => Wait::Again,
            Err(_) => Wait::TimedOut,
        }
    }

    /// Hands `freed` to the oldest request still waiting whose cap allows `open` connections
    /// (a connection coming back: 0, any waiter); gives it back when none is.
    fn hand_over(q: &mut Queues, mut freed: Freed, open: usize) -> Option<Freed> {
        let mut i = 0;
        while let Some(waiter) = q.waiting.get(i) {
            if waiter.max < open {
                i += 1;
                continue;
            }
            let Some(waiter) = q.waiting.remove(i) else { break };
            match waiter.tx.send(freed) {
                Ok(()) => return None,
                // That one gave up; the next.
                Err(back) => freed = back,
            }
        }
        Some(freed)
    }

    /// A new connection: TCP connect and, for `backend.tls`, the TLS handshake, both within
    /// one `limits.connect`.
    async fn connect(&self, slot: Slot, limits: &Limits, tls: &UpstreamTls) -> std::io::Result<Conn> {
        let deadline = Limits::deadline_in(limits.connect);
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(self.addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        super::server::set_tcp_keepalive(&stream);
        let budget = Arc::new(ReadBudget::new());
        // The slot lives as long as the socket: the connection, or the tunnel it becomes.
        let io = Metered { io: stream, budget: Arc::clone(&budget), _slot: slot };
        let (sender, task) = match tls {
            UpstreamTls::Tls { config, server_name } => {
                let name = server_name.clone().unwrap_or_else(|| self.addr.ip().into());
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                let stream = tokio::time::timeout_at(deadline, connector.connect(name, io))
                    .await
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
                self.handshake(stream).await?
            }
            _ => self.handshake(io).await?,
        };
        Ok(Conn { sender, budget, idle_for: limits.idle, tls: tls.clone(), upload: None, task })
    }

    /// HTTP/1.1 over a connected stream; the connection runs in its own task.
    async fn handshake<S>(&self, stream: S) -> std::io::Result<(SendRequest<UpstreamBody>, AbortHandle)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(super::MAX_BUF_PER_CONNECTION)
            // One flat write buffer, as on the client side: a request head goes out in one
            // plain `write` instead of a `writev`.
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let addr = self.addr;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "member connection ended");
            }
        });
        Ok((sender, task.abort_handle()))
    }

    /// Checks the member's response head (and its first body frame when it came along) before
    /// it goes to the client, and says when it arrived (the one clock read of the answer: the
    /// member's latency, and the idle time of a connection whose body came whole with it). Not
    /// `async`: the first frame is taken only if it is already there (polled with a no-op
    /// waker; the body's next poll registers the real one), so the request's future carries no
    /// state for this step. `conn`, the connection it came on, goes back to the pool once the
    /// body has ended; `None` when it was closing ([`unless_closing`]).
    fn answer(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        conn: Option<Conn>,
        reused: bool,
    ) -> Result<(Response<MemberBody>, Instant), Failed> {
        let at = now();
        if let Some(c) = &conn {
            c.budget.disarm();
        }
        let (mut parts, mut inner) = resp.into_parts();
        // A proxy answers with its own version, whatever the member spoke (RFC 9110 §6.2).
        parts.version = Version::HTTP_11;
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection becomes the tunnel; it never goes back to the pool.
            return Ok((Response::from_parts(parts, MemberBody::new(inner)), at));
        }
        let framed_body = !inner.is_end_stream(); // not HEAD, 204, 304 (RFC 9112 §6.3 rule 1)
        if framed_body && parts.headers.contains_key(TRANSFER_ENCODING) && parts.headers.contains_key(CONTENT_LENGTH) {
            // RFC 9112 §6.3: a sign of request smuggling or response splitting. Refused as
            // nginx does, and the connection (dropped here) closed: its framing is not trusted.
            let reason = "both Content-Length and Transfer-Encoding (RFC 9112 §6.3)";
            tracing::debug!(addr = %self.addr, reused, reason, "bad member response");
            return Err(Failed { error: SendError::BadResponse { addr: self.addr, reason }, request: None });
        }
        let (mut first, mut ended) = (None, false);
        if framed_body {
            // The first frame, if it came with the head: a broken one is still a clean 502.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match Pin::new(&mut inner).poll_frame(&mut cx) {
                Poll::Ready(Some(Err(source))) => {
                    return Err(Failed { error: SendError::Body { addr: self.addr, source }, request: None });
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are a body's last frame (a chunked body of trailers only).
                    ended = frame.is_trailers();
                    first = Some(First::from(frame));
                }
                Poll::Ready(None) => ended = true,
                Poll::Pending => {}
            }
        }
        let ended = ended || inner.is_end_stream();
        let mut body = MemberBody { first, ended, ..MemberBody::new(inner) };
        // A connection that was closing (see [`unless_closing`]) does not go back to the pool.
        match conn {
            Some(conn) if ended => self.checkin(conn, at),
            Some(conn) => body.give_back = Some(Box::new((conn, Arc::clone(self)))),
            None => {}
        }
        Ok((Response::from_parts(parts, body), at))
    }

    /// Gives a connection back once its response has ended. One whose request body did not go
    /// out whole (a member that answered an upload early) is closed instead: hyper cannot send
    /// on it before the rest of that upload, so the next request would wait on another
    /// client's upload, and the member would be blamed for it. Its idle time starts at `now`.
    fn checkin(self: &Arc<Self>, mut conn: Conn, now: Instant) {
        if conn.sender.is_closed() {
            return;
        }
        if conn.upload.take().is_some_and(|u| !u.complete()) {
            tracing::debug!(addr = %self.addr, "member answered before the whole upload; connection closed");
            conn.task.abort();
            return;
        }
        let expires = now.checked_add(conn.idle_for).unwrap_or(now + FAR_FUTURE);
        {
            let mut q = self.queue();
            // A waiting request gets it first.
            let conn = match Self::hand_over(&mut q, Freed::Conn(conn), 0) {
                Some(Freed::Conn(conn)) => conn,
                // Handed (or, never, something else back: not dropped under the lock all the same).
                back => {
                    drop(q);
                    drop(back);
                    return;
                }
            };
            // Beyond the bound the oldest idle connection is dropped (closed).
            if q.idle.len() >= MAX_IDLE_PER_MEMBER {
                q.idle.pop_front();
            }
            q.idle.push_back(Idle { conn, expires });
            self.idle_len.store(q.idle.len(), Ordering::SeqCst);
        }
        self.start_reaper();
    }

    /// Starts the reaper unless it runs. Read before written: the flag is set while anything is
    /// idle, so a busy member pays one shared read here.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaping.load(Ordering::SeqCst) || self.reaping.swap(true, Ordering::SeqCst) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(reap(Arc::downgrade(self)));
            }
            // Outside a runtime (never in the proxy): requests still skip expired connections.
            Err(_) => self.reaping.store(false, Ordering::SeqCst),
        }
    }

    /// Closes the idle connections past their time (or closed by the member). Returns when the
    /// next one expires, or `None` — and the reaper stops — when nothing is idle.
    fn reap_expired(&self, now: Instant) -> Option<Instant> {
        let mut q = self.queue();
        q.idle.retain(|i| i.expires > now && !i.conn.sender.is_closed());
        self.idle_len.store(q.idle.len(), Ordering::SeqCst);
        let next = q.idle.iter().map(|i| i.expires).min();
        if next.is_none() {
            // Under the lock: a checkin after this sees the flag down and starts a new reaper.
            self.reaping.store(false, Ordering::SeqCst);
        }
        next
    }
}

/// The reaper of one member pool: sleeps until the next idle connection expires, closes what
/// expired, and ends when nothing is idle (an idle member costs no task) or the pool is gone.
async fn reap(pool: Weak<MemberConns>) {
    loop {
        let next = match pool.upgrade() {
            Some(p) => p.reap_expired(now()),
            None => None,
        };
        let Some(next) = next else { return };
        tokio::time::sleep_until(next.into()).await;
    }
}

/// One open connection's place under `maxConnections`; held by its socket. When the socket
/// closes, the place goes to the oldest waiting request (which opens a new connection in it), or
/// is given back.
struct Slot(Weak<MemberConns>);

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(pool) = self.0.upgrade() else { return };
        let mut q = pool.queue();
        if !q.waiting.is_empty() {
            let place = Freed::Slot(Slot(std::mem::take(&mut self.0)));
            // Counted in `open` still: handed on, the count stays as it is.
            let open = pool.open.load(Ordering::SeqCst);
            // `None`: still taken, by the waiter.
            let Some(back) = MemberConns::hand_over(&mut q, place, open) else { return };
            // Every waiter had given up, or waits under a lower cap (a reload lowered it): the
            // place is given back below. Emptied first, so its own drop (here, under the lock)
            // does nothing.
            if let Freed::Slot(mut place) = back {
                drop(std::mem::take(&mut place.0));
            }
        }
        pool.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes the member may still send before a final response head; `u64::MAX` while no head is
/// awaited. Shared by a connection's socket and the request using it.
#[derive(Debug)]
struct ReadBudget(AtomicU64);

impl ReadBudget {
    fn new() -> Self {
        ReadBudget(AtomicU64::new(u64::MAX))
    }

    /// A request is going out: its response head must come within [`HEAD_BUDGET`] bytes.
    fn arm(&self) {
        self.0.store(HEAD_BUDGET, Ordering::Relaxed);
    }

    /// The head came: the body is bounded by the client's reading, not here.
    fn disarm(&self) {
        self.0.store(u64::MAX, Ordering::Relaxed);
    }

    /// Takes `n` bytes off; false when that is more than was left.
    fn spend(&self, n: u64) -> bool {
        self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n)).is_ok()
    }
}

/// A member socket that fails a read once the member has sent more than its [`ReadBudget`]
/// allows before a response head, and holds the socket's [`Slot`].
struct Metered {
    io: TcpStream,
    budget: Arc<ReadBudget>,
    _slot: Slot,
}

impl AsyncRead for Metered {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        if this.budget.spend(n) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the member sent more than 1 MiB without a final response head (endless 1xx responses?)",
            )))
        }
    }
}

impl AsyncWrite for Metered {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A member's response body; hands its connection back to the pool when it ends. A body
/// dropped before its end closes the connection (its state is unknown).
///
/// Kept small (64 bytes more than hyper's own `Incoming`): every request moves its response
/// several times on the way to the client, so what rarely matters here is boxed.
pub struct MemberBody {
    inner: Incoming,
    /// The first frame, read with the head to check it, not yet passed on.
    first: Option<First>,
    /// `inner` has ended (never polled again).
    ended: bool,
    /// The connection to give back when the body ends; boxed, as it is needed only for a body
    /// that did not come whole with the head.
    give_back: Option<Box<(Conn, Arc<MemberConns>)>>,
    /// The request's place in the member's busy count, released when the body ends or drops.
    busy: Option<BusyGuard>,
}

/// A body's first frame as [`MemberBody`] holds it: data, or (a body of trailers only) the
/// trailers boxed, as a whole `Frame` would add 64 bytes to every response.
enum First {
    Data(Bytes),
    Trailers(Box<http::HeaderMap>),
}

impl From<Frame<Bytes>> for First {
    fn from(frame: Frame<Bytes>) -> Self {
        match frame.into_data() {
            Ok(data) => First::Data(data),
            // A frame is data or trailers (hyper 1); anything else is passed on as no trailers.
            Err(frame) => First::Trailers(Box::new(frame.into_trailers().unwrap_or_default())),
        }
    }
}

impl First {
    fn into_frame(self) -> Frame<Bytes> {
        match self {
            First::Data(data) => Frame::data(data),
            First::Trailers(trailers) => Frame::trailers(*trailers),
        }
    }

    fn len(&self) -> u64 {
        match self {
            First::Data(data) => data.remaining() as u64,
            First::Trailers(_) => 0,
        }
    }
}

impl MemberBody {
    fn new(inner: Incoming) -> Self {
        MemberBody { inner, first: None, ended: false, give_back: None, busy: None }
    }

    /// Keeps the member busy until the body ends, counting its bytes as received from the
    /// member (ByTraffic, metrics).
    pub fn counting(mut self, busy: BusyGuard) -> Self {
        self.busy = Some(busy);
        self
    }

    fn count(&self, frame: &Frame<Bytes>) {
        if let (Some(b), Some(d)) = (&self.busy, frame.data_ref()) {
            b.runtime().bytes_from.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
    }

    /// The body has ended: the member is no longer busy, its connection goes back to the pool.
    fn finish(&mut self) {
        self.ended = true;
        self.busy = None;
        if let Some(back) = self.give_back.take() {
            let (conn, pool) = *back;
            pool.checkin(conn, now());
        }
    }
}

impl std::fmt::Debug for MemberBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberBody").finish_non_exhaustive()
    }
}

impl Body for MemberBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            let frame = first.into_frame();
            this.count(&frame);
            if this.ended || this.inner.is_end_stream() {
                this.finish();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.ended {
            this.busy = None;
            return Poll::Ready(None);
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                this.count(frame);
                // hyper stops polling once `is_end_stream` says so, and after trailers (a
                // body's last frame, whatever `is_end_stream` says): check after every frame.
                if frame.is_trailers() || this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                // The connection is closed with the body (dropped, not given back). Part of the
                // response went out already: hyper aborts the client's connection or stream.
                // Counted against the member, not put in error: it did answer.
                this.give_back = None;
                if let Some(b) = this.busy.take() {
                    b.runtime().count_failure(FailureKind::Exchange);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().map_or(0, First::len);
        if self.ended {
            return SizeHint::with_exact(first);
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(first));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(first));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_budget_bounds_bytes_before_a_head_only() {
        let b = ReadBudget::new();
        assert!(b.spend(u64::MAX / 2), "no head awaited: no bound");
        b.arm();
        assert!(b.spend(HEAD_BUDGET - 10));
        assert!(b.spend(10), "exactly the budget is fine");
        assert!(!b.spend(1), "one byte more is not");
        b.disarm();
        assert!(b.spend(HEAD_BUDGET * 2), "once the head came, the body is not bounded here");
        b.arm();
        assert!(b.spend(HEAD_BUDGET), "each request gets the whole budget again");
    }

    fn limits(max: Option<u32>, wait: Duration) -> Limits {
        Limits {
            connect: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            max_connections: max,
            deadline: Limits::deadline_in(wait),
            sent: Instant::now(),
        }
    }

    #[tokio::test]
    async fn slots_are_capped_and_a_freed_one_wakes_a_waiter() {
        let pool = MemberConns::new("127.0.0.1:9".parse().unwrap());
        drop(pool.reserve(None).expect("no cap"));
        assert_eq!(pool.open_count(), 0, "a dropped slot is given back");
        let first = pool.reserve(Some(1)).expect("below the cap");
        assert_eq!(pool.open_count(), 1);
        assert!(pool.reserve(Some(1)).is_none(), "at the cap");
        assert!(pool.reserve(Some(2)).is_some(), "a reload that raises the cap applies at once");
        let timed_out = pool.wait_for_free(&limits(Some(1), Duration::from_millis(20)), &UpstreamTls::Plain).await;
        assert!(matches!(timed_out, Wait::TimedOut), "nothing freed");
        assert!(
            matches!(pool.wait_for_free(&limits(Some(2), Duration::ZERO), &UpstreamTls::Plain).await, Wait::Again),
            "below the cap"
        );
        let waiter = wait_under_one(&pool);
        waiting(&pool, 1).await;
        drop(first);
        let got = waiter.await.unwrap();
        assert!(matches!(got, Wait::Freed(Freed::Slot(_))), "handed the place, long before its deadline");
        assert_eq!(pool.open_count(), 1, "the place stayed taken: the waiter has it");
        drop(got);
        assert_eq!((pool.open_count(), pool.queue().waiting.len()), (0, 0));
    }

    /// Yields until `n` requests wait for a connection of `pool`.
    async fn waiting(pool: &MemberConns, n: usize) {
        while pool.queue().waiting.iter().filter(|w| !w.tx.is_closed()).count() < n {
            tokio::task::yield_now().await;
        }
    }

    /// At the cap, a connection that comes back goes to the oldest waiting request: one
    /// arriving just then finds nothing free (it would otherwise take the connection the woken
    /// waiter was about to, and that waiter would queue again behind it), and waiters are served
    /// in their order.
    #[tokio::test]
    async fn at_the_cap_a_freed_connection_goes_to_the_oldest_waiter() {
        let (pool, lim, busy) = one_busy_connection().await;
        let (done, mut order) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..3 {
            let (p, done) = (Arc::clone(&pool), done.clone());
            tokio::spawn(async move {
                let r = p.send(Request::new(UpstreamBody::Empty), &lim, &UpstreamTls::Plain).await;
                let _ = done.send((n, read_whole(r).await));
            });
            waiting(&pool, n + 1).await;
        }
        pool.checkin(busy, Instant::now());
        assert!(pool.pop_idle(&UpstreamTls::Plain, Instant::now()).is_none(), "a newcomer does not barge in");
        for n in 0..3 {
            assert_eq!(order.recv().await, Some((n, Some(StatusCode::OK))), "served in their order");
        }
        assert_eq!((pool.open_count(), pool.idle_count()), (1, 1), "one connection all along");
    }

    /// A pool capped at one connection, with that connection busy (taken out of the pool, as a
    /// request in flight holds it), and the limits of the requests that will wait for it.
    async fn one_busy_connection() -> (Arc<MemberConns>, Limits, Conn) {
        let pool = MemberConns::new(ok_member().await);
        let lim = limits(Some(1), Duration::from_secs(30));
        let first = pool.send(Request::new(UpstreamBody::Empty), &lim, &UpstreamTls::Plain).await;
        assert_eq!(read_whole(first).await, Some(StatusCode::OK));
        let busy = pool.pop_idle(&UpstreamTls::Plain, Instant::now()).expect("back idle after its answer");
        (pool, lim, busy)
    }

    /// The answer's status once its body was read to the end (its connection back in the pool).
    async fn read_whole(r: Result<(Response<MemberBody>, Instant), Failed>) -> Option<StatusCode> {
        use http_body_util::BodyExt;
        let (resp, _) = r.ok()?;
        let status = resp.status();
        resp.into_body().collect().await.ok().map(|_| status)
    }

    /// Starts a request waiting for a place under a cap of one connection, in plain HTTP.
    fn wait_under_one(pool: &Arc<MemberConns>) -> tokio::task::JoinHandle<Wait> {
        wait_under_one_with(pool, UpstreamTls::Plain)
    }

    /// Starts a request waiting for a place under a cap of one connection, reaching the member
    /// through `tls`.
    fn wait_under_one_with(pool: &Arc<MemberConns>, tls: UpstreamTls) -> tokio::task::JoinHandle<Wait> {
        let pool = Arc::clone(pool);
        tokio::spawn(async move { pool.wait_for_free(&limits(Some(1), Duration::from_secs(30)), &tls).await })
    }

    /// A request dropped (its client left) after a connection was handed to it, before it ran,
    /// gives the connection back: it is not closed with the request.
    #[tokio::test]
    async fn a_connection_handed_to_a_request_that_left_goes_back() {
        let (pool, lim, busy) = one_busy_connection().await;
        let left = {
            let p = Arc::clone(&pool);
            tokio::spawn(async move {
                read_whole(p.send(Request::new(UpstreamBody::Empty), &lim, &UpstreamTls::Plain).await).await
            })
        };
        waiting(&pool, 1).await;
        pool.checkin(busy, Instant::now());
        assert_eq!(pool.idle_count(), 0, "handed to the waiter");
        left.abort();
        assert!(left.await.is_err_and(|e| e.is_cancelled()), "dropped before it ran");
        assert_eq!((pool.idle_count(), pool.open_count()), (1, 1), "back idle, still open");
    }

    /// A connection handed to a request that reaches the member under another TLS setting (a
    /// reload switched the pool to `backend.tls`) is closed, and its place goes to that request,
    /// not to the one queued behind it.
    #[tokio::test]
    async fn a_connection_of_another_tls_setting_is_closed_and_its_place_kept() {
        let (pool, _, busy) = one_busy_connection().await;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let tls = UpstreamTls::Tls { config: Arc::new(config), server_name: None };
        let first = wait_under_one_with(&pool, tls);
        waiting(&pool, 1).await;
        let behind = wait_under_one(&pool);
        waiting(&pool, 2).await;
        pool.checkin(busy, Instant::now());
        let Wait::Freed(Freed::Slot(place)) = first.await.unwrap() else { panic!("handed the closed one's place") };
        assert_eq!((pool.open_count(), pool.idle_count()), (1, 0), "the plain connection closed, its place taken");
        assert!(!behind.is_finished(), "the request behind still waits");
        drop(place);
        assert!(matches!(behind.await.unwrap(), Wait::Freed(Freed::Slot(_))), "then it gets the place");
    }

    /// A reload that lowers the cap applies while requests wait: a closed connection's place
    /// goes to a waiter only within its cap.
    #[tokio::test]
    async fn a_lowered_cap_holds_while_requests_wait() {
        let pool = MemberConns::new("127.0.0.1:9".parse().unwrap());
        let (a, b) = (pool.reserve(Some(2)).unwrap(), pool.reserve(Some(2)).unwrap());
        let waiter = wait_under_one(&pool);
        waiting(&pool, 1).await;
        drop(a);
        assert_eq!(pool.open_count(), 1, "two open are above the waiter's cap of one: given back");
        assert!(!waiter.is_finished());
        drop(b);
        assert!(matches!(waiter.await.unwrap(), Wait::Freed(Freed::Slot(_))), "one open is within it");
        assert_eq!(pool.open_count(), 0);
    }

    /// A reload that raises the cap does not let a newcomer pass a request already waiting:
    /// the place it reserves goes to the waiter.
    #[tokio::test]
    async fn a_raised_cap_serves_the_waiting_first() {
        let pool = MemberConns::new("127.0.0.1:9".parse().unwrap());
        let busy = pool.reserve(Some(1)).unwrap();
        let waiter = wait_under_one(&pool);
        waiting(&pool, 1).await;
        let newcomer = pool.reserve(Some(2)).expect("below the raised cap");
        assert!(pool.first_in_line(newcomer).is_none(), "the place went to the waiter");
        let Wait::Freed(Freed::Slot(theirs)) = waiter.await.unwrap() else { panic!("handed a place") };
        assert_eq!(pool.open_count(), 2);
        let next = pool.reserve(Some(3)).expect("below the cap");
        assert!(pool.first_in_line(next).is_some(), "nobody waits: the newcomer keeps it");
        drop((busy, theirs));
    }

    /// A waiter that gives up is skipped: the next one gets the connection, and a place handed
    /// to nobody is given back.
    #[tokio::test]
    async fn a_waiter_that_gave_up_is_passed_over() {
        let pool = MemberConns::new("127.0.0.1:9".parse().unwrap());
        let first = pool.reserve(Some(1)).expect("below the cap");
        let gave_up = wait_under_one(&pool);
        waiting(&pool, 1).await;
        let next = wait_under_one(&pool);
        waiting(&pool, 2).await;
        gave_up.abort();
        assert!(gave_up.await.is_err_and(|e| e.is_cancelled()));
        drop(first);
        assert!(matches!(next.await.unwrap(), Wait::Freed(Freed::Slot(_))), "the next waiter got the place");
        assert_eq!(pool.open_count(), 0, "and gave it back when it dropped it");
        let last = pool.reserve(Some(1)).expect("below the cap");
        let alone = wait_under_one(&pool);
        waiting(&pool, 1).await;
        alone.abort();
        assert!(alone.await.is_err());
        drop(last);
        assert_eq!(pool.open_count(), 0, "nobody waits any more: the place is given back");
    }

    /// A member that answers every request head with `200 ok`, on keep-alive connections.
    async fn ok_member() -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut buf, mut got) = (vec![0u8; 4096], Vec::new());
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        got.extend_from_slice(&buf[..n]);
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            got.drain(..end + 4);
                            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// A plain connection as the pool holds it, around `sender`, closed through `task`.
    fn conn_of(sender: SendRequest<UpstreamBody>, task: AbortHandle) -> Conn {
        let budget = Arc::new(ReadBudget::new());
        Conn { sender, budget, idle_for: Duration::from_secs(30), tls: UpstreamTls::Plain, upload: None, task }
    }

    #[tokio::test]
    async fn a_pooled_connection_that_does_not_get_ready_is_closed_not_waited_on() {
        let addr = ok_member().await;
        let pool = MemberConns::new(addr);
        // A connection whose task never runs is never ready to send, and not closed either.
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, stuck) = http1::Builder::new().handshake::<_, UpstreamBody>(TokioIo::new(stream)).await.unwrap();
        let never = tokio::spawn(std::future::pending::<()>());
        pool.checkin(conn_of(sender, never.abort_handle()), Instant::now());
        assert_eq!(pool.idle_count(), 1);
        let limits = Limits { connect: Duration::from_millis(100), ..limits(None, Duration::from_secs(20)) };
        let send = pool.send(Request::new(UpstreamBody::Empty), &limits, &UpstreamTls::Plain);
        let resp =
            tokio::time::timeout(Duration::from_secs(5), send).await.expect("not held until the response deadline");
        assert_eq!(
            resp.map(|(r, _)| r.status()).map_err(|f| f.error.to_string()),
            Ok(StatusCode::OK),
            "on a new connection"
        );
        let ended = tokio::time::timeout(Duration::from_secs(5), never).await.expect("the stuck connection is closed");
        assert!(ended.is_err_and(|e| e.is_cancelled()));
        drop(stuck);
    }

    /// [`unless_closing`] drops a connection seen closing right after a send, and keeps an open
    /// one, which answers. (The race it guards against, a request queued just after hyper
    /// drained the closing connection's queue, cannot be made to happen on purpose: here hyper
    /// refuses the send to a closed connection and hands the request back itself.)
    #[tokio::test]
    async fn a_request_sent_as_its_connection_closes_comes_back_unsent() {
        let addr = ok_member().await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, closing) = http1::Builder::new().handshake::<_, UpstreamBody>(TokioIo::new(stream)).await.unwrap();
        drop(closing);
        let no_task = tokio::spawn(async {});
        let mut conn = conn_of(sender, no_task.abort_handle());
        let sent = conn.sender.try_send_request(Request::new(UpstreamBody::Empty));
        let conn = unless_closing(conn);
        let answer = tokio::time::timeout(Duration::from_secs(5), sent).await.expect("not held");
        assert!(conn.is_none(), "a closing connection is not kept");
        assert!(answer.is_err_and(|mut e| e.take_message().is_some()), "the request comes back unsent");

        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, open) = http1::Builder::new().handshake::<_, UpstreamBody>(TokioIo::new(stream)).await.unwrap();
        let task = tokio::spawn(async move {
            let _ = open.await;
        });
        let mut req = Request::new(UpstreamBody::Empty);
        req.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("m"));
        let mut conn = conn_of(sender, task.abort_handle());
        let sent = conn.sender.try_send_request(req);
        let conn = unless_closing(conn);
        let answer = tokio::time::timeout(Duration::from_secs(5), sent).await.expect("answered");
        assert_eq!(answer.as_ref().map(|r| r.status()).ok(), Some(StatusCode::OK));
        assert!(conn.is_some(), "an open connection comes back");

        // An answer that came on a connection dropped as closing goes to the client whole, and
        // no connection goes back to the pool.
        let pool = MemberConns::new(addr);
        let resp = answer.expect("answered");
        let (resp, _) = pool.answer(resp, None, false).map_err(|f| f.error.to_string()).expect("answer");
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_huge_timeout_is_a_far_deadline_not_a_panic() {
        let far = Limits::deadline_in(Duration::from_secs(u64::MAX));
        assert!(far > tokio::time::Instant::now() + Duration::from_secs(86400 * 365));
        let soon = Limits::deadline_in(Duration::from_secs(1));
        assert!(soon <= tokio::time::Instant::now() + Duration::from_secs(1));
    }
}
