//! Connections to members: one small lock-free pool per member.
//!
//! Why not hyper-util's pooled `Client`: its pool is one `Mutex` that every request of every
//! member takes; it drops the request when a connection fails (a retry would need a copy of
//! every request head); and it spawns a task per response to hand the connection back. Here each
//! member has a lock-free queue of idle HTTP/1.1 connections; a connection goes back to the
//! queue when its response body ends (see [`MemberBody`]); and a request that was never written —
//! a connect failure, or a pooled connection found closed — comes back to the caller intact, so
//! it can go to another member without having been copied.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpStream;

use super::body::UpstreamBody;
use crate::core::MemberRuntime;

/// Idle connections kept per member; more are closed when their response ends.
const MAX_IDLE_PER_MEMBER: usize = 512;

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// The connection pool of one member (by address). Shared across routing tables so a reload
/// keeps warm connections; the pool's timeouts come with each request, so a reload that
/// changes them takes effect on the next one.
pub struct MemberConns {
    addr: SocketAddr,
    /// Grows in small blocks as connections are returned: an idle member costs no memory (a
    /// preallocated ring per member would cost megabytes for a pool of thousands).
    idle: SegQueue<Idle>,
    idle_len: AtomicUsize,
}

impl std::fmt::Debug for MemberConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberConns").field("addr", &self.addr).field("idle", &self.idle_count()).finish()
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
    /// response).
    #[error("request to {addr} failed: {source}")]
    Exchange {
        /// The member.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
        /// It happened on a pooled connection, not a fresh one.
        reused: bool,
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
}

/// A failed send, with the request when it was never written (it can go elsewhere as it is).
pub struct Failed {
    /// What went wrong.
    pub error: SendError,
    /// The request, when the member never saw a byte of it.
    pub request: Option<Request<UpstreamBody>>,
}

impl MemberConns {
    /// An empty pool for the member at `addr`.
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(MemberConns { addr, idle: SegQueue::new(), idle_len: AtomicUsize::new(0) })
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.idle_len.load(Ordering::Relaxed)
    }

    fn pop_idle(&self) -> Option<Idle> {
        let idle = self.idle.pop()?;
        self.idle_len.fetch_sub(1, Ordering::Relaxed);
        Some(idle)
    }

    /// Sends `req` over an idle connection (one idle for less than `idle_timeout`), or a new one
    /// (made within `connect_timeout`, with TLS when `tls` says so).
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        tls: &super::tls::UpstreamTls,
    ) -> Result<Response<MemberBody>, Failed> {
        while let Some(idle) = self.pop_idle() {
            if idle.since.elapsed() > idle_timeout || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            // It went back to the pool when its last response ended; this only waits for the
            // connection task to notice.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, sender)),
                Err(mut e) => match e.take_message() {
                    // Closed before our request was written: try the next connection.
                    Some(back) => req = back,
                    None => {
                        return Err(Failed {
                            error: SendError::Exchange { addr: self.addr, source: e.into_error(), reused: true },
                            request: None,
                        });
                    }
                },
            }
        }
        let mut sender = match self.connect(connect_timeout, tls).await {
            Ok(s) => s,
            Err(source) => {
                return Err(Failed { error: SendError::Connect { addr: self.addr, source }, request: Some(req) });
            }
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.wrap(resp, sender)),
            Err(mut e) => {
                let request = e.take_message();
                Err(Failed {
                    error: SendError::Exchange { addr: self.addr, source: e.into_error(), reused: false },
                    request,
                })
            }
        }
    }

    async fn connect(
        &self,
        connect_timeout: Duration,
        tls: &super::tls::UpstreamTls,
    ) -> std::io::Result<SendRequest<UpstreamBody>> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        match tls {
            super::tls::UpstreamTls::Tls { config, server_name } => {
                let name = server_name.clone().unwrap_or_else(|| self.addr.ip().into());
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                let stream = tokio::time::timeout(connect_timeout, connector.connect(name, stream))
                    .await
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
                self.handshake(stream).await
            }
            _ => self.handshake(stream).await,
        }
    }

    /// HTTP/1.1 over a connected stream; the connection runs in its own task.
    async fn handshake<S>(&self, stream: S) -> std::io::Result<SendRequest<UpstreamBody>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "member connection ended");
            }
        });
        Ok(sender)
    }

    fn wrap(self: &Arc<Self>, resp: Response<Incoming>, sender: SendRequest<UpstreamBody>) -> Response<MemberBody> {
        let upgrade = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        resp.map(|inner| {
            let mut body = MemberBody { inner, give_back: None, counter: None };
            if !upgrade {
                if body.inner.is_end_stream() {
                    self.checkin(sender);
                } else {
                    body.give_back = Some((sender, Arc::clone(self)));
                }
            }
            body
        })
    }

    fn checkin(&self, sender: SendRequest<UpstreamBody>) {
        // Beyond the bound the connection is dropped: enough are idle already.
        if sender.is_closed() {
            return;
        }
        if self.idle_len.fetch_add(1, Ordering::Relaxed) < MAX_IDLE_PER_MEMBER {
            self.idle.push(Idle { sender, since: Instant::now() });
        } else {
            self.idle_len.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A member's response body; hands its connection back to the pool when it ends. A body
/// dropped before its end closes the connection (its state is unknown).
pub struct MemberBody {
    inner: Incoming,
    give_back: Option<(SendRequest<UpstreamBody>, Arc<MemberConns>)>,
    counter: Option<Arc<MemberRuntime>>,
}

impl MemberBody {
    /// Counts the body's bytes as received from this member (ByTraffic, metrics).
    pub fn counting(mut self, member: Arc<MemberRuntime>) -> Self {
        self.counter = Some(member);
        self
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
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &r {
            // hyper stops polling once `is_end_stream` says so: check after every frame.
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(c), Some(d)) = (&this.counter, frame.data_ref()) {
                    c.bytes_from.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                this.inner.is_end_stream()
            }
            Poll::Ready(None) => true,
            Poll::Ready(Some(Err(_))) => {
                this.give_back = None;
                false
            }
            Poll::Pending => false,
        };
        if ended && let Some((sender, pool)) = this.give_back.take() {
            pool.checkin(sender);
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
