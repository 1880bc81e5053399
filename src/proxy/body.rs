//! Request bodies: taken back for a retry, and watched so that a failure is blamed on the right
//! side.
//!
//! hyper-util's pooled client consumes the request and drops it when the connection fails.
//! [`UpstreamBody`] puts the client's body back into its [`BodyState`] when it is dropped
//! *before any byte was read from it*, so a request whose body was never sent can go to another
//! member; once a byte has been streamed, the body is gone and the request is not retried.
//!
//! The same state records how the upload went, because the member exchange alone cannot tell:
//! when the client's body breaks (a bad chunk, a client that went away, an HTTP/2 reset) hyper's
//! client reports an error like any other, and without this record the member would be put in
//! error for the client's fault. It also tells the forwarder when the upload is complete (the
//! response timeout starts then) and whether a stalled upload is waiting on the client or on the
//! member. Requests without a body (most GETs) take the `Empty` path and cost no allocation.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;

use crate::core::MemberRuntime;

/// How the client's side of an upload failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientBodyError {
    /// The body was malformed (a bad chunk, more or less than announced).
    Broken = 1,
    /// The client went away in the middle of it (closed the connection, reset the stream).
    Gone = 2,
}

/// One request body's shared state: the body between attempts, and how its upload goes.
#[derive(Debug)]
pub struct BodyState {
    body: Mutex<Option<Incoming>>,
    /// Frames read from the client so far.
    frames: AtomicU64,
    /// The last poll found the client had nothing to give (the upload waits on the client).
    waiting_on_client: AtomicBool,
    /// The whole body was read.
    complete: AtomicBool,
    /// 0, or a [`ClientBodyError`].
    client_error: AtomicU8,
    /// Woken when the body completes or fails.
    changed: Notify,
    /// The client speaks HTTP/2.
    h2: bool,
}

/// Where a body waits to be reused by the next attempt, and how its upload went.
pub type BodySlot = Arc<BodyState>;

impl BodyState {
    /// The state of a client body not yet sent anywhere (`h2`: it arrives over HTTP/2).
    pub fn new(body: Incoming, h2: bool) -> BodySlot {
        Arc::new(BodyState {
            body: Mutex::new(Some(body)),
            frames: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
            complete: AtomicBool::new(false),
            client_error: AtomicU8::new(0),
            changed: Notify::new(),
            h2,
        })
    }

    /// Takes the body for an attempt; `None` once a failed attempt consumed part of it.
    pub fn take(&self) -> Option<Incoming> {
        self.body.lock().ok().and_then(|mut b| b.take())
    }

    /// Whether the body is still whole (never read), so the request can be repeated.
    pub fn replayable(&self) -> bool {
        self.body.lock().map(|b| b.is_some()).unwrap_or(false)
    }

    /// Frames read from the client so far (progress of the upload).
    pub fn frames(&self) -> u64 {
        self.frames.load(Relaxed)
    }

    /// Whether the upload is stalled on the client rather than on the member.
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Relaxed)
    }

    /// Whether the whole body went to the member.
    pub fn complete(&self) -> bool {
        self.complete.load(Relaxed)
    }

    /// How the client's side failed, if it did.
    pub fn client_error(&self) -> Option<ClientBodyError> {
        match self.client_error.load(Relaxed) {
            1 => Some(ClientBodyError::Broken),
            2 => Some(ClientBodyError::Gone),
            _ => None,
        }
    }

    /// Resolves when the body completes or fails (or at once if a change was missed).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn finished(&self) {
        self.complete.store(true, Relaxed);
        self.changed.notify_one();
    }

    fn failed(&self, e: &hyper::Error) {
        // A body that ends early, or an HTTP/2 stream the client reset, is a client that left;
        // anything else (a bad chunk, a length mismatch) is a malformed body.
        // Over HTTP/2 a client's body fails when it resets the stream; hyper reports a length
        // mismatch as a reset too, and both are the client's doing.
        let gone = self.h2 || e.is_incomplete_message() || e.is_canceled() || ended_early(e);
        let kind = if gone { ClientBodyError::Gone } else { ClientBodyError::Broken };
        self.client_error.store(kind as u8, Relaxed);
        self.changed.notify_one();
    }
}

/// Whether an HTTP/1 body failed because the connection ended before it did (hyper reports
/// an `UnexpectedEof` I/O error as the body error's source).
fn ended_early(e: &hyper::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof) {
            return true;
        }
        src = s.source();
    }
    false
}

/// The body of a request sent to a member. A streamed body is boxed: the request is moved a
/// dozen times on its way through hyper's client, and a `Request` of at most 256 bytes is
/// copied by `memcpy`'s short path (a body held inline made it 288).
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body: any attempt can be repeated.
    Empty,
    /// The client's streamed body, reclaimable until its first frame is read.
    Streamed(Box<Streamed>),
}

/// The client's body for one attempt.
#[derive(Debug)]
pub struct Streamed {
    /// The body while this attempt owns it.
    inner: Option<Incoming>,
    /// Where it goes back if it was never read, and how the upload goes.
    pub(crate) state: BodySlot,
    /// A frame was read: the body cannot be replayed.
    started: bool,
    /// The member the bytes go to (ByTraffic, metrics).
    counter: Arc<MemberRuntime>,
}

impl UpstreamBody {
    /// Wraps a client body for one attempt.
    pub fn streamed(body: Incoming, state: BodySlot, counter: Arc<MemberRuntime>) -> Self {
        UpstreamBody::Streamed(Box::new(Streamed { inner: Some(body), state, started: false, counter }))
    }

    /// Counts the body's bytes for `member` (a request handed back goes to another member).
    pub fn count_for(&mut self, member: Arc<MemberRuntime>) {
        if let UpstreamBody::Streamed(s) = self {
            s.counter = member;
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        if !self.started
            && let Some(body) = self.inner.take()
            && let Ok(mut s) = self.state.body.lock()
        {
            *s = Some(body);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let UpstreamBody::Streamed(s) = self.get_mut() else {
            return Poll::Ready(None);
        };
        let Streamed { inner, state, started, counter } = &mut **s;
        let Some(body) = inner.as_mut() else { return Poll::Ready(None) };
        let r = Pin::new(&mut *body).poll_frame(cx);
        state.waiting_on_client.store(r.is_pending(), Relaxed);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                *started = true;
                state.frames.fetch_add(1, Relaxed);
                if let Some(data) = frame.data_ref() {
                    counter.bytes_to.fetch_add(data.len() as u64, Relaxed);
                }
                // hyper stops polling once `is_end_stream` says so: check after every frame.
                if body.is_end_stream() {
                    state.finished();
                }
            }
            Poll::Ready(Some(Err(e))) => {
                *started = true;
                state.failed(e);
            }
            Poll::Ready(None) => state.finished(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Streamed(s) => s.inner.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Streamed(s) => {
                s.inner.as_ref().map(|b| b.size_hint()).unwrap_or_else(|| SizeHint::with_exact(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request to a member and its answer are moved many times inside hyper's client; at
    /// 256 bytes or less each move takes `memcpy`'s short path (bench/README.md, "A request
    /// small enough for memcpy's short path").
    #[test]
    fn a_member_request_and_its_answer_fit_memcpys_short_path() {
        use std::mem::size_of;
        assert_eq!(size_of::<UpstreamBody>(), size_of::<usize>());
        let request = size_of::<http::Request<UpstreamBody>>();
        assert!(request <= 256, "{request}");
        let answer = size_of::<http::Response<crate::proxy::upstream::MemberBody>>();
        assert!(answer <= 256, "{answer}");
    }
}
