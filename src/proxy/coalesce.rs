//! An HTTP/2 client connection's writes gathered into one per scheduler round.
//!
//! hyper's HTTP/2 server flushes the connection whenever a stream has something to send, and a
//! stream's response is queued as soon as its member answers. With ten streams in flight per
//! connection, one `writev` (and, over TLS, one record) went out for about every two responses,
//! where HAProxy sends one for about every six (`strace -c` under `h2load -c32 -m10`). Each write
//! costs a system call, the loopback's or NIC's work and a wake-up of the client.
//!
//! [`Coalesce`] keeps what an HTTP/2 connection writes, up to [`HELD_MAX`] bytes, and sends it
//! at the end of the worker's scheduler round: a flush waits for tokio's `yield_now`, whose
//! waker tokio keeps until the worker has no task left to run (or at its every 61st scheduler
//! tick) and has polled for I/O. The responses that members finish in one round then leave in
//! one write. A connection is HTTP/2 when it opens with the HTTP/2 preface, cleartext or TLS;
//! any other connection (HTTP/1, one response at a time) is passed straight through.
//!
//! This leans on `yield_now` deferring its wake-up, which tokio does not promise: were it to
//! wake at once (as it does outside a runtime worker, e.g. in `block_in_place`), each flush would
//! simply send at once, as without this layer; a flush never waits for more than one round. The
//! buffer exists only while something is held: an idle HTTP/2 connection keeps none.

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
pub(crate) const HELD_MAX: usize = 16 * 1024;

/// A client connection whose writes, once it shows it is HTTP/2, leave once per round.
pub(crate) struct Coalesce<S> {
    io: S,
    mode: Mode,
    /// What was written and not sent yet; `held[sent..]` is still to go.
    held: Vec<u8>,
    sent: usize,
}

enum Mode {
    /// The first bytes read so far match this much of the preface.
    Sniffing(usize),
    Http1,
    /// Writes are held, and flushes wait for the round's end.
    Http2(Round),
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
    pub(crate) fn new(io: S) -> Coalesce<S> {
        Coalesce { io, mode: Mode::Sniffing(0), held: Vec::new(), sent: 0 }
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
            Mode::Http2(Round { ended, waker, waiting: false })
        };
    }
}

impl Round {
    /// Ready once the scheduler round that was running at the first call is over.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.ended.task.register(cx.waker());
        if !self.waiting {
            // The wait belongs to the round of the first flush that finds something held:
            // every stream that queues a frame polls the connection again, and those polls
            // must not start (or end) a wait of their own.
            self.waiting = true;
            self.ended.done.store(false, Ordering::Release);
            // A new `yield_now`, polled once with `ended`'s waker, which tokio keeps until the
            // round is over. Always `Pending`: where tokio cannot defer (outside a worker) it
            // wakes `ended` at once, within this poll, which sets `done`.
            let yielded = std::pin::pin!(tokio::task::yield_now());
            let _ = yielded.poll(&mut Context::from_waker(&self.waker));
        }
        // The wait stays on (`done` set) until the held bytes are out: a socket too full to
        // take them now does not make the flush wait for another round.
        if self.ended.done.load(Ordering::Acquire) { Poll::Ready(()) } else { Poll::Pending }
    }

    /// The held bytes went out: the wait, if one was on, is over. One whose round has not
    /// ended yet (bytes sent because more came than fit) gets a new waker, so that round's
    /// end, on whichever worker it comes, cannot end the next wait early.
    fn end(&mut self) {
        if self.waiting && !self.ended.done.load(Ordering::Acquire) {
            self.ended = Arc::new(Ended::default());
            self.waker = Waker::from(Arc::clone(&self.ended));
        }
        self.waiting = false;
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Sends everything held; a wait for the round's end that was on is over with it.
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
        if let Mode::Http2(round) = &mut self.mode {
            round.end();
        }
        Poll::Ready(Ok(()))
    }

    /// Gives the buffer back once nothing is held: an idle connection keeps none.
    fn release(&mut self) {
        if self.held.is_empty() && self.held.capacity() != 0 {
            self.held = Vec::new();
        }
    }

    /// Makes room for `len` more bytes: `Ready(true)` when they are to be held, `Ready(false)`
    /// when they are too many and go straight out (what was held is sent by then).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.held.len() + len > HELD_MAX {
            ready!(self.poll_send_held(cx))?;
        }
        if len >= HELD_MAX {
            return Poll::Ready(Ok(false));
        }
        if self.held.capacity() == 0 {
            // At its full size: the buffer never grows past it.
            self.held.reserve_exact(HELD_MAX);
        }
        Poll::Ready(Ok(true))
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
        if !matches!(this.mode, Mode::Http2(_)) || !ready!(this.poll_room(cx, data.len()))? {
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
        if !matches!(this.mode, Mode::Http2(_)) || !ready!(this.poll_room(cx, len))? {
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
            // Once sending has begun (the socket took part of it), the rest follows as the
            // socket allows, without waiting for another round.
            if this.sent == 0
                && let Mode::Http2(round) = &mut this.mode
            {
                ready!(round.poll_end(cx));
            }
            ready!(this.poll_send_held(cx))?;
        }
        this.release();
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends what is held at once: the connection is closing.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        this.release();
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Log = Arc<Mutex<Vec<Vec<u8>>>>;

    /// A connection that hands out `input` in the pieces given and records every write; it
    /// takes at most `limit` bytes per write (0: all), and answers `Pending` to every other
    /// write when `stall` is set.
    #[derive(Default)]
    struct Recorder {
        input: Vec<Vec<u8>>,
        writes: Log,
        limit: usize,
        stall: bool,
        stalled: bool,
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
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            if self.stall {
                self.stalled = !self.stalled;
                if self.stalled {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            let n = if self.limit == 0 { data.len() } else { data.len().min(self.limit) };
            self.writes.lock().unwrap_or_else(|e| e.into_inner()).push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    /// `rec` wrapped, after it read its input piece by piece.
    async fn opened(rec: Recorder) -> Coalesce<Recorder> {
        let pieces: Vec<usize> = rec.input.iter().map(Vec::len).collect();
        let mut c = Coalesce::new(rec);
        let mut buf = [0u8; 64];
        for len in pieces {
            assert_eq!(c.read(&mut buf).await.ok(), Some(len));
        }
        c
    }

    fn reading(pieces: &[&[u8]]) -> Recorder {
        Recorder { input: pieces.iter().map(|p| p.to_vec()).collect(), ..Recorder::default() }
    }

    fn sent(writes: &Log) -> Vec<Vec<u8>> {
        writes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Within a second: a wait for a round's end that never ends fails the test, not hangs it.
    async fn soon<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(1), f).await.unwrap_or_else(|_| panic!("not within a second"))
    }

    fn poll_write(c: &mut Coalesce<Recorder>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(c).poll_write(&mut Context::from_waker(std::task::Waker::noop()), data)
    }

    fn poll_flush(c: &mut Coalesce<Recorder>) -> Poll<io::Result<()>> {
        Pin::new(c).poll_flush(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn an_http1_connections_writes_go_straight_out() {
        let mut c = opened(reading(&[b"GET / HTTP/1.1\r\n"])).await;
        let writes = Arc::clone(&c.io.writes);
        assert!(matches!(poll_write(&mut c, b"HTTP/1.1 200 OK\r\n"), Poll::Ready(Ok(17))));
        assert_eq!(sent(&writes), vec![b"HTTP/1.1 200 OK\r\n".to_vec()], "written before any flush");
        // Starts like the preface, then is not it.
        let mut c = opened(reading(&[b"PRI * HTTP/1.1\r\n"])).await;
        assert!(matches!(poll_write(&mut c, b"x"), Poll::Ready(Ok(1))));
        assert_eq!(sent(&c.io.writes).len(), 1);
    }

    #[tokio::test]
    async fn an_http2_connections_writes_of_one_round_leave_in_one_write() {
        // The preface in three reads, the last with the client's first frame after it.
        let last = [&PREFACE[20..], b"\0\0\0\x04"].concat();
        let mut c = opened(reading(&[&PREFACE[..3], &PREFACE[3..20], &last])).await;
        let writes = Arc::clone(&c.io.writes);
        assert!(matches!(poll_write(&mut c, b"a"), Poll::Ready(Ok(1))));
        assert!(poll_flush(&mut c).is_pending(), "the round is not over");
        // More streams queue frames in the same round, and the connection is polled again.
        let two = [io::IoSlice::new(b"b"), io::IoSlice::new(b"c")];
        let waker = std::task::Waker::noop();
        assert!(matches!(
            Pin::new(&mut c).poll_write_vectored(&mut Context::from_waker(waker), &two),
            Poll::Ready(Ok(2))
        ));
        assert!(poll_flush(&mut c).is_pending(), "still the same round");
        assert!(sent(&writes).is_empty());
        // The round ends once this task, too, has yielded.
        soon(tokio::task::yield_now()).await;
        assert!(matches!(poll_flush(&mut c), Poll::Ready(Ok(()))));
        assert_eq!(sent(&writes), vec![b"abc".to_vec()]);
        // Nothing held: a flush is ready at once; the next round waits again, and its end
        // wakes the connection's task.
        assert!(matches!(poll_flush(&mut c), Poll::Ready(Ok(()))));
        assert!(matches!(poll_write(&mut c, b"d"), Poll::Ready(Ok(1))));
        assert!(poll_flush(&mut c).is_pending());
        assert!(soon(c.flush()).await.is_ok());
        assert_eq!(sent(&writes), vec![b"abc".to_vec(), b"d".to_vec()]);
    }

    #[tokio::test]
    async fn a_large_write_goes_out_after_what_is_held_and_shutdown_sends_the_rest() {
        let mut c = opened(reading(&[PREFACE])).await;
        let writes = Arc::clone(&c.io.writes);
        let big = vec![7u8; HELD_MAX];
        assert!(matches!(poll_write(&mut c, b"head"), Poll::Ready(Ok(4))));
        assert!(poll_flush(&mut c).is_pending(), "a wait for the round's end is running");
        assert!(matches!(poll_write(&mut c, &big), Poll::Ready(Ok(HELD_MAX))));
        assert!(matches!(poll_write(&mut c, &big[1..]), Poll::Ready(Ok(n)) if n == HELD_MAX - 1));
        assert!(matches!(poll_write(&mut c, b"tail"), Poll::Ready(Ok(4))));
        let got = sent(&writes);
        assert_eq!(got.len(), 3, "held, the large write, then the held write that would pass the cap");
        assert_eq!((got[0].as_slice(), got[1].len(), got[2].len()), (&b"head"[..], HELD_MAX, HELD_MAX - 1));
        assert!(c.held.capacity() <= HELD_MAX, "the buffer never grows past its size");
        // The wait that was running ended with the held bytes that went out: a round's end
        // arriving later does not let the next flush out at once.
        soon(tokio::task::yield_now()).await;
        assert!(poll_flush(&mut c).is_pending(), "the next flush waits for its own round");
        assert!(soon(c.shutdown()).await.is_ok());
        assert_eq!(sent(&writes)[3], b"tail");
        assert!(c.io.shut);
        assert_eq!(c.held.capacity(), 0, "nothing held, no buffer kept");
    }

    #[tokio::test]
    async fn a_socket_that_takes_part_of_a_write_or_stalls_gets_every_byte_in_order() {
        let mut rec = reading(&[PREFACE]);
        (rec.limit, rec.stall) = (3, true);
        let mut c = opened(rec).await;
        let writes = Arc::clone(&c.io.writes);
        for chunk in [&b"0123"[..], b"4567", b"89"] {
            assert!(soon(c.write_all(chunk)).await.is_ok());
        }
        assert!(soon(c.flush()).await.is_ok());
        let got = sent(&writes);
        assert_eq!(got.concat(), b"0123456789");
        assert!(got.iter().all(|w| w.len() <= 3));
        assert!(c.held.is_empty());
    }

    #[tokio::test]
    async fn a_round_that_ended_is_not_waited_for_again_when_the_socket_was_full() {
        let mut rec = reading(&[PREFACE]);
        rec.stall = true;
        let mut c = opened(rec).await;
        let writes = Arc::clone(&c.io.writes);
        assert!(matches!(poll_write(&mut c, b"a"), Poll::Ready(Ok(1))));
        assert!(poll_flush(&mut c).is_pending(), "the round is not over");
        soon(tokio::task::yield_now()).await;
        assert!(poll_flush(&mut c).is_pending(), "the socket takes nothing this time");
        assert!(matches!(poll_flush(&mut c), Poll::Ready(Ok(()))), "no second round");
        assert_eq!(sent(&writes), vec![b"a".to_vec()]);
    }

    /// A connection's side that counts its writes.
    struct Counted {
        io: tokio::io::DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.io).poll_write(cx, data)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// hyper's HTTP/2 server and client, ten concurrent streams, on the runtimes the proxy runs
    /// (multi-threaded, here with one worker; single-threaded, as on one CPU): the ten responses
    /// leave in one write, where a flush per stream made one write per response (10, measured
    /// with this test).
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn ten_concurrent_http2_responses_share_their_writes() {
        ten_responses_in_few_writes().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ten_concurrent_http2_responses_share_their_writes_on_one_thread() {
        ten_responses_in_few_writes().await;
    }

    async fn ten_responses_in_few_writes() {
        use http_body_util::{BodyExt, Empty, Full};
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server_io = Coalesce::new(Counted { io: server_io, writes: Arc::clone(&writes) });
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from_static(b"hello"))))
        });
        let server = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server_io), svc);
        tokio::spawn(server);
        let (sender, conn) = soon(hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(conn);
        let get = |sender: hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>| async move {
            let req = http::Request::get("http://test/").body(Empty::new()).unwrap_or_else(|e| panic!("{e}"));
            let resp = sender.clone().send_request(req).await.unwrap_or_else(|e| panic!("{e}"));
            resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default()
        };
        assert_eq!(soon(get(sender.clone())).await, "hello", "settings exchanged");
        let before = writes.load(Ordering::Relaxed);
        // Sent from a task of the same worker, as a client's requests arrive together.
        let ten = tokio::spawn(futures_util::future::join_all((0..10).map(|_| get(sender.clone()))));
        let all = soon(ten).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(all.iter().all(|b| b == "hello"));
        let used = writes.load(Ordering::Relaxed) - before;
        assert!(used <= 3, "ten responses took {used} writes");
    }
}
