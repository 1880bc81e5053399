//! Request bodies that can be taken back for a retry.
//!
//! hyper-util's pooled client consumes the request and drops it when the connection fails.
//! [`UpstreamBody`] puts the client's body back into a slot when it is dropped *before any byte
//! was read from it*, so a request whose body was never sent can go to another member; once a
//! byte has been streamed, the body is gone and the request is not retried (DESIGN.md §5.6).
//! Requests without a body (most GETs) take the `Empty` path and cost no allocation.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::sync::atomic::Ordering::Relaxed;

use crate::core::MemberRuntime;

/// Where a body waits to be reused by the next attempt.
pub type BodySlot = Arc<Mutex<Option<Incoming>>>;

/// The body of a request sent to a member.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body: any attempt can be repeated.
    Empty,
    /// The client's streamed body, reclaimable until its first frame is read.
    Streamed {
        /// The body while this attempt owns it.
        inner: Option<Incoming>,
        /// Where it goes back if it was never read.
        slot: BodySlot,
        /// A frame was read: the body cannot be replayed.
        started: bool,
        /// The member the bytes go to (ByTraffic, metrics).
        counter: Arc<MemberRuntime>,
    },
}

impl UpstreamBody {
    /// Wraps a client body for one attempt.
    pub fn streamed(body: Incoming, slot: BodySlot, counter: Arc<MemberRuntime>) -> Self {
        UpstreamBody::Streamed { inner: Some(body), slot, started: false, counter }
    }
}

impl UpstreamBody {
    /// Counts the body's bytes for `member` (a request handed back goes to another member).
    pub fn count_for(&mut self, member: Arc<MemberRuntime>) {
        if let UpstreamBody::Streamed { counter, .. } = self {
            *counter = member;
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let UpstreamBody::Streamed { inner, slot, started: false, .. } = self
            && let Some(body) = inner.take()
            && let Ok(mut s) = slot.lock()
        {
            *s = Some(body);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Streamed { inner, started, counter, .. } => match inner.as_mut() {
                None => Poll::Ready(None),
                Some(body) => {
                    let r = Pin::new(body).poll_frame(cx);
                    if let Poll::Ready(Some(frame)) = &r {
                        *started = true;
                        if let Some(data) = frame.as_ref().ok().and_then(|f| f.data_ref()) {
                            counter.bytes_to.fetch_add(data.len() as u64, Relaxed);
                        }
                    }
                    r
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Streamed { inner, .. } => inner.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Streamed { inner, .. } => {
                inner.as_ref().map(|b| b.size_hint()).unwrap_or_else(|| SizeHint::with_exact(0))
            }
        }
    }
}
