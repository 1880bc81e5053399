//! An HTTP/2 client connection's writes gathered into one per scheduler round.
//!
//! hyper's HTTP/2 server flushes the connection whenever a stream has something to send, and a
//! stream's response is queued as soon as its member answers. With ten streams in flight per
//! connection, one `writev` (and, over TLS, one record) went out for about every two responses,
//! where HAProxy sends one for about every six (`strace -c` under `h2load -c32 -m10`). Each write
//! costs a system call, the loopback's or NIC's work and a wake-up of the client.
//!
//! [`Coalesce`] keeps what an HTTP/2 connection writes, up to [`HELD_MAX`] bytes, and sends it
//! when the runtime has run every task that was ready: a flush waits for tokio's `yield_now`,
//! which wakes its task only after the scheduler's current round (the ready tasks, then a poll
//! for I/O). The responses that members finish in one round then leave in one write. A
//! connection is HTTP/2 when it opens with the HTTP/2 preface, cleartext or TLS; any other
//! connection (HTTP/1, one response at a time) is passed straight through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How an HTTP/2 connection opens (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most an HTTP/2 connection holds between flushes. A write that would pass it sends what
/// is held first; a write of this size or more goes out as it is, after what was held.
pub const HELD_MAX: usize = 16 * 1024;

/// A client connection whose writes, once it shows it is HTTP/2, leave once per round.
pub struct Coalesce<S> {
    io: S,
    mode: Mode,
    /// What was written and not sent yet; `held[sent..]` is still to go.
    held: Vec<u8>,
    sent: usize,
    /// Made when the connection turns out to be HTTP/2.
    round: Option<Round>,
}

enum Mode {
    /// The first bytes read so far match this much of the preface.
    Sniffing(usize),
    Http1,
    Http2,
}

/// The wait for the end of a scheduler round.
struct Round {
    ended: Arc<Ended>,
    /// Wakes `ended`: what `yield_now` is polled with.
    waker: Waker,
    waiting: bool,
}

/// Set, and the connection's task woken, when the round a flush waits for is over.
#[derive(Default)]
struct Ended {
    done: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Ended {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.done.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<S> Coalesce<S> {
    /// Wraps a client connection (nothing is held until it shows the HTTP/2 preface).
    pub fn new(io: S) -> Coalesce<S> {
        Coalesce { io, mode: Mode::Sniffing(0), held: Vec::new(), sent: 0, round: None }
    }

    /// Follows the preface through the first bytes read.
    fn sniff(&mut self, read: &[u8]) {
        let Mode::Sniffing(n) = self.mode else { return };
        let want = &PREFACE[n..];
        let k = read.len().min(want.len());
        self.mode = if read[..k] != want[..k] {
            Mode::Http1
        } else if n + k < PREFACE.len() {
            Mode::Sniffing(n + k)
        } else {
            let ended = Arc::new(Ended::default());
            let waker = Waker::from(Arc::clone(&ended));
            self.round = Some(Round { ended, waker, waiting: false });
            Mode::Http2
        };
    }
}

impl Round {
    /// Ready once the scheduler round that was running at the first call is over.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.ended.task.register(cx.waker());
        if !self.waiting {
            self.waiting = true;
            self.ended.done.store(false, Ordering::Release);
            // Polled once, with `ended`'s waker: tokio keeps that waker until the round is
            // over (or wakes it at once outside a runtime). A second poll would be ready at
            // once, and the connection is polled again by every stream that queues a frame.
            let yielded = std::pin::pin!(tokio::task::yield_now());
            if yielded.poll(&mut Context::from_waker(&self.waker)).is_ready() {
                self.ended.done.store(true, Ordering::Release);
            }
        }
        if !self.ended.done.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        self.waiting = false;
        Poll::Ready(())
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Sends everything held.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: `Ready(true)` when they are to be held, `Ready(false)`
    /// when they are too many and go straight out (what was held is sent by then).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.held.len() + len > HELD_MAX {
            ready!(self.poll_send_held(cx))?;
        }
        Poll::Ready(Ok(len < HELD_MAX))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if matches!(this.mode, Mode::Sniffing(_)) {
            this.sniff(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !matches!(this.mode, Mode::Http2) || !ready!(this.poll_room(cx, data.len()))? {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        this.held.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if !matches!(this.mode, Mode::Http2) || !ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sent < this.held.len() {
            if let Some(round) = &mut this.round {
                ready!(round.poll_end(cx));
            }
            ready!(this.poll_send_held(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends what is held at once: the connection is closing.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection that hands out `input` in the pieces given and records every write.
    #[derive(Default)]
    struct Recorder {
        input: Vec<Vec<u8>>,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        shut: bool,
    }

    impl AsyncRead for Recorder {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if !self.input.is_empty() {
                let piece = self.input.remove(0);
                buf.put_slice(&piece);
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.lock().unwrap_or_else(|e| e.into_inner()).push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    /// A wrapped connection that first reads `pieces`, and the log of what reached its socket.
    async fn opened(pieces: &[&[u8]]) -> (Coalesce<Recorder>, Arc<Mutex<Vec<Vec<u8>>>>) {
        let rec = Recorder { input: pieces.iter().map(|p| p.to_vec()).collect(), ..Recorder::default() };
        let writes = Arc::clone(&rec.writes);
        let mut c = Coalesce::new(rec);
        let mut buf = [0u8; 64];
        for p in pieces {
            assert_eq!(c.read(&mut buf).await.unwrap_or(0), p.len());
        }
        (c, writes)
    }

    fn sent(writes: &Mutex<Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
        writes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    #[tokio::test]
    async fn an_http1_connections_writes_go_straight_out() {
        let (mut c, writes) = opened(&[b"GET / HTTP/1.1\r\n"]).await;
        c.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap_or(());
        assert_eq!(sent(&writes), vec![b"HTTP/1.1 200 OK\r\n".to_vec()], "written before any flush");
        // Starts like the preface, then is not it.
        let (mut c, writes) = opened(&[b"PRI * HTTP/1.1\r\n"]).await;
        c.write_all(b"x").await.unwrap_or(());
        assert_eq!(sent(&writes).len(), 1);
    }

    #[tokio::test]
    async fn an_http2_connections_writes_of_one_round_leave_in_one_write() {
        // The preface in three reads.
        let (mut c, writes) = opened(&[&PREFACE[..3], &PREFACE[3..20], &PREFACE[20..]]).await;
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(Pin::new(&mut c).poll_write(&mut cx, b"a"), Poll::Ready(Ok(1))));
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending(), "the round is not over");
        // More streams queue frames in the same round, and the connection is polled again.
        assert!(matches!(
            Pin::new(&mut c).poll_write_vectored(&mut cx, &[io::IoSlice::new(b"b"), io::IoSlice::new(b"c")]),
            Poll::Ready(Ok(2))
        ));
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending(), "still the same round");
        assert!(sent(&writes).is_empty());
        // The round ends once this task, too, has yielded.
        tokio::task::yield_now().await;
        assert!(matches!(Pin::new(&mut c).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(sent(&writes), vec![b"abc".to_vec()]);
        // Nothing held: a flush is ready at once; the next round waits again.
        assert!(matches!(Pin::new(&mut c).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        c.write_all(b"d").await.unwrap_or(());
        c.flush().await.unwrap_or(());
        assert_eq!(sent(&writes), vec![b"abc".to_vec(), b"d".to_vec()]);
    }

    #[tokio::test]
    async fn a_large_write_goes_out_after_what_is_held_and_shutdown_sends_the_rest() {
        let (mut c, writes) = opened(&[PREFACE]).await;
        let big = vec![7u8; HELD_MAX];
        c.write_all(b"head").await.unwrap_or(());
        c.write_all(&big).await.unwrap_or(());
        c.write_all(&big[..HELD_MAX - 1]).await.unwrap_or(());
        c.write_all(b"tail").await.unwrap_or(());
        let got = sent(&writes);
        assert_eq!(got.len(), 3, "held, the large write, then the held write that would pass the cap");
        assert_eq!((got[0].as_slice(), got[1].len(), got[2].len()), (&b"head"[..], HELD_MAX, HELD_MAX - 1));
        c.shutdown().await.unwrap_or(());
        assert_eq!(sent(&writes)[3], b"tail");
        assert!(c.io.shut);
    }
}
