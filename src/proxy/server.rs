//! The client-facing listener.
//!
//! Each connection is served by hyper-util's `auto` builder (HTTP/1.1, and HTTP/2 with prior
//! knowledge), with upgrades. Instead of hyper-util's `GracefulShutdown`, each connection task
//! runs its own small loop so that one place handles both reasons to close a connection
//! gracefully: the process is shutting down, or the connection has been idle (no bytes either
//! way and no request in flight) for the idle timeout — which hyper does not do for HTTP/2.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::Proxy;
use super::headers::ClientIp;
use super::listener::{ClientStream, Edge};

/// Activity and requests in flight on one client connection. The socket only counts I/O; the
/// idle watchdog, which wakes a few times per idle period, compares counts and reads the clock,
/// so no read or write pays for a clock read.
#[derive(Debug, Default)]
struct Activity {
    io: AtomicU64,
    in_flight: AtomicUsize,
}

pin_project_lite::pin_project! {
    /// A socket that counts when bytes move.
    struct ActivityIo {
        #[pin]
        inner: ClientStream,
        activity: Arc<Activity>,
    }
}

impl AsyncRead for ActivityIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.io.fetch_add(1, Relaxed);
        }
        r
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.io.fetch_add(1, Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.io.fetch_add(1, Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Accepts connections until `shutdown` turns true, then lets open connections finish their
/// in-flight requests (closing idle keep-alive connections at once) for at most the drain
/// timeout. Returns when every connection is closed or the drain timeout passed. `edge` says
/// what happens to a socket before HTTP (TLS, PROXY protocol).
pub async fn serve(listener: TcpListener, edge: Edge, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(proxy.settings.client_header_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(20)));
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (builder, edge, proxy, shutdown) = (builder.clone(), edge.clone(), Arc::clone(&proxy), shutdown.clone());
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        if let Some((stream, client)) = edge.accept(stream, peer).await {
                            serve_connection(builder, stream, client, proxy, shutdown).await;
                        }
                        drop(done);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    drop(done_tx);
    tracing::info!(drain_timeout = ?proxy.settings.drain_timeout, "stopped accepting; draining connections");
    if tokio::time::timeout(proxy.settings.drain_timeout, done_rx.recv()).await.is_err() {
        tracing::warn!("drain timeout passed with connections still open");
    }
}

async fn serve_connection(
    builder: auto::Builder<TokioExecutor>,
    stream: ClientStream,
    client: ClientIp,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = client.ip;
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(ActivityIo { inner: stream, activity: Arc::clone(&activity) });
    let idle = proxy.settings.client_idle_timeout;
    let act = Arc::clone(&activity);
    let svc = service_fn(move |req| {
        act.in_flight.fetch_add(1, Relaxed);
        let guard = InFlight(Arc::clone(&act));
        let proxy = Arc::clone(&proxy);
        let client = client.clone();
        async move {
            let resp = proxy.handle(req, client).await;
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    // Closes between `idle` and `idle + tick` after the last byte.
    let tick = (idle / 4).max(Duration::from_millis(10));
    let (mut seen_io, mut quiet_since) = (0, tokio::time::Instant::now());
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = tokio::time::sleep(tick), if !closing => {
                let io = activity.io.load(Relaxed);
                if io != seen_io || activity.in_flight.load(Relaxed) > 0 {
                    (seen_io, quiet_since) = (io, tokio::time::Instant::now());
                } else if quiet_since.elapsed() >= idle {
                    tracing::debug!(%peer, "closing idle client connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
