//! Upgraded connections (WebSocket and other `Upgrade`s): bytes copied both ways between the
//! client and the member once both sides have switched protocols.
//!
//! A tunnel outlives the HTTP connection it came from, so it is tracked on its own: it is closed
//! when no byte has moved either way for the client idle timeout (a half-open peer would
//! otherwise hold a task and two sockets forever), and the shutdown drain waits for open tunnels
//! up to the drain timeout, then closes them.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;

use crate::core::BusyGuard;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The open tunnels of one proxy.
#[derive(Debug, Default)]
pub(crate) struct Tunnels {
    tracker: TaskTracker,
    abort: CancellationToken,
}

impl Tunnels {
    /// Copies bytes both ways once both sides have upgraded; closes the tunnel after `idle`
    /// without a byte either way. `busy` keeps the member busy while the tunnel is open.
    pub(crate) fn spawn(&self, client: OnUpgrade, member: OnUpgrade, idle: Duration, busy: Option<BusyGuard>) {
        let abort = self.abort.clone();
        self.tracker.spawn(async move {
            tunnel(client, member, idle, abort).await;
            drop(busy);
        });
    }

    /// Tunnels open now.
    pub(crate) fn open(&self) -> usize {
        self.tracker.len()
    }

    /// Waits for every tunnel to end until `deadline`, then closes those left.
    pub(crate) async fn drain(&self, deadline: Instant) {
        self.tracker.close();
        if self.tracker.is_empty() {
            return;
        }
        tracing::info!(open = self.open(), "waiting for upgraded connections (tunnels) to end");
        if tokio::time::timeout_at(deadline, self.tracker.wait()).await.is_err() {
            tracing::warn!(open = self.open(), "drain timeout passed: closing the tunnels left");
            self.abort.cancel();
            self.tracker.wait().await;
        }
    }
}

async fn tunnel(client: OnUpgrade, member: OnUpgrade, idle: Duration, abort: CancellationToken) {
    let upgraded = tokio::select! {
        r = tokio::time::timeout(idle, async { tokio::try_join!(client, member) }) => r,
        _ = abort.cancelled() => return,
    };
    let (client, member) = match upgraded {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
        Err(_) => {
            tracing::debug!("upgrade did not complete within the idle timeout");
            return;
        }
    };
    // Every byte either way passes through the client side: counting there is enough.
    let moved = AtomicU64::new(0);
    let mut client = Counted { inner: TokioIo::new(client), moved: &moved };
    let mut member = TokioIo::new(member);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut member);
    tokio::pin!(copy);
    // Closes between `idle` and `idle + tick` after the last byte.
    let tick = (idle / 4).max(Duration::from_millis(10));
    let (mut seen, mut quiet_since) = (0, Instant::now());
    loop {
        tokio::select! {
            r = copy.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
                return;
            }
            _ = abort.cancelled() => return,
            _ = tokio::time::sleep(tick) => {
                let now = moved.load(Relaxed);
                if now != seen {
                    (seen, quiet_since) = (now, Instant::now());
                } else if quiet_since.elapsed() >= idle {
                    tracing::debug!(?idle, "closing an idle upgraded connection");
                    return;
                }
            }
        }
    }
}

/// A stream that counts the reads and writes that moved bytes.
struct Counted<'a, T> {
    inner: T,
    moved: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved.fetch_add(1, Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.fetch_add(1, Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
