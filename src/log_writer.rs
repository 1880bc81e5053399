//! Log output off the request path: a bounded queue of finished lines to one writer thread.
//!
//! Every log line — the access log's, formatted by the proxy itself
//! ([`crate::proxy::access_log`]), and every other `tracing` event, formatted by
//! tracing-subscriber — is handed to [`LogWriter::send`] as one buffer and written to stderr by
//! a thread of its own, in batches. The request path never makes a write syscall, never waits
//! for the writer and never takes a lock:
//!
//! - the queue is bounded in lines and in bytes; a line that does not fit is dropped and counted
//!   (`routeid_log_lines_dropped_total`) instead of slowing requests down;
//! - line buffers come back from the writer and are reused, so a steady stream of lines
//!   allocates nothing;
//! - after writing a batch the writer sleeps for [`BATCH_WAIT`] while the next lines gather,
//!   not waiting on the queue, so under load a sender never pays for waking it (a futex call per
//!   line); only when the queue is empty after the pause does it wait on the queue.
//!
//! One writer serves all lines, so lines from the access log and from other events never
//! interleave mid-line.

use std::io::Write;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::cli::LogFormat;

/// Most lines queued at once.
pub const QUEUE_LINES: usize = 64 * 1024;
/// Most bytes queued at once (a line holds a client's path, which may be long).
pub const QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// How long the writer lets lines gather after writing a batch.
pub const BATCH_WAIT: Duration = Duration::from_millis(2);
/// A returned buffer larger than this is freed instead of kept for reuse.
const REUSE_CAPACITY: usize = 4 * 1024;
/// Most idle buffers kept for reuse.
const SPARE_BUFFERS: usize = 1024;

enum Msg {
    Line(Vec<u8>),
    /// Write everything queued before this, then answer.
    Flush(SyncSender<()>),
}

#[derive(Debug)]
struct Shared {
    queued_bytes: AtomicUsize,
    dropped: std::sync::atomic::AtomicU64,
}

/// The sending side of the log queue; cheap to clone.
#[derive(Clone, Debug)]
pub struct LogWriter {
    tx: SyncSender<Msg>,
    spare: Arc<std::sync::Mutex<Receiver<Vec<u8>>>>,
    shared: Arc<Shared>,
    format: LogFormat,
    /// The access log formats its own lines (stderr is no terminal: no colours to match).
    direct_access_log: bool,
}

/// Flushes the queue when dropped (at the end of `main`).
#[must_use = "dropping the guard flushes and stops waiting for the log"]
#[derive(Debug)]
pub struct FlushGuard {
    writer: LogWriter,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.writer.flush(Duration::from_secs(2));
    }
}

static INSTALLED: OnceLock<LogWriter> = OnceLock::new();

impl LogWriter {
    /// Starts the writer thread on `out`. `direct_access_log` lets the proxy format access-log
    /// lines itself (it matches tracing-subscriber's output without colours only).
    pub fn start(
        out: Box<dyn Write + Send>,
        format: LogFormat,
        direct_access_log: bool,
    ) -> std::io::Result<(LogWriter, FlushGuard)> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let (spare_tx, spare_rx) = mpsc::sync_channel(SPARE_BUFFERS);
        let shared = Arc::new(Shared { queued_bytes: AtomicUsize::new(0), dropped: Default::default() });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("routeid-log".into())
            .spawn(move || write_loop(rx, spare_tx, out, &thread_shared))?;
        let writer =
            LogWriter { tx, spare: Arc::new(std::sync::Mutex::new(spare_rx)), shared, format, direct_access_log };
        Ok((writer.clone(), FlushGuard { writer }))
    }

    /// Makes `self` the process's log writer, which the access log finds with [`installed`].
    /// The first call wins.
    pub fn install(&self) {
        let _ = INSTALLED.set(self.clone());
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Relaxed)
    }

    /// The output format lines are written in.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// A buffer for one line, empty, reused when one is spare.
    pub fn buffer(&self) -> Vec<u8> {
        // `try_lock`: never wait on another thread for a buffer; a new one is cheap enough.
        let spare = self.spare.try_lock().ok().and_then(|rx| rx.try_recv().ok());
        spare.unwrap_or_else(|| Vec::with_capacity(512))
    }

    /// Queues one finished line (ending in `\n`) without waiting; drops and counts it when the
    /// queue is full.
    pub fn send(&self, line: Vec<u8>) {
        let len = line.len();
        if self.shared.queued_bytes.fetch_add(len, Relaxed) + len > QUEUE_BYTES {
            self.shared.queued_bytes.fetch_sub(len, Relaxed);
            self.shared.dropped.fetch_add(1, Relaxed);
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(Msg::Line(line)) {
            self.shared.queued_bytes.fetch_sub(len, Relaxed);
            self.shared.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Waits (at most `within`, even when stderr blocks) until every line queued so far is
    /// written.
    pub fn flush(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => {
                    let _ = ack_rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
                    return;
                }
                // A full queue at exit: give the writer a moment, within the bound.
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
    }
}

/// The installed writer when the access log may format its lines itself.
pub fn installed() -> Option<&'static LogWriter> {
    INSTALLED.get().filter(|w| w.direct_access_log)
}

fn write_loop(rx: Receiver<Msg>, spare: SyncSender<Vec<u8>>, out: Box<dyn Write + Send>, shared: &Shared) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut next = rx.recv().ok();
    while let Some(first) = next.take() {
        let mut msg = Some(first);
        while let Some(m) = msg {
            match m {
                Msg::Line(mut line) => {
                    // A failed write (stderr closed) has nowhere to be reported.
                    let _ = out.write_all(&line);
                    shared.queued_bytes.fetch_sub(line.len(), Relaxed);
                    if line.capacity() <= REUSE_CAPACITY {
                        line.clear();
                        let _ = spare.try_send(line);
                    }
                }
                Msg::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.try_send(());
                }
            }
            msg = rx.try_recv().ok();
        }
        let _ = out.flush();
        // Not waiting on the queue while lines gather: a sender then finds nobody to wake (a
        // waiting receiver costs every sender a futex call). Only an empty queue after the
        // pause blocks on it.
        std::thread::sleep(BATCH_WAIT);
        next = match rx.try_recv() {
            Ok(m) => Some(m),
            Err(TryRecvError::Empty) => rx.recv().ok(),
            Err(TryRecvError::Disconnected) => None,
        };
    }
    let _ = out.flush();
}

/// One line from tracing-subscriber: collected, then queued whole when dropped (the fmt layer
/// writes an event with one `write_all`; collecting keeps a line whole whatever it does).
#[derive(Debug)]
pub struct EventLine<'a> {
    writer: &'a LogWriter,
    buf: Vec<u8>,
}

impl Write for EventLine<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventLine<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.writer.send(std::mem::take(&mut self.buf));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = EventLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventLine { writer: self, buf: self.buffer() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` that appends to a shared buffer, for reading what the thread wrote.
    #[derive(Clone, Default)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A `Write` that blocks until told to go on, to fill the queue.
    struct Stuck(Receiver<()>, Sink);

    impl Write for Stuck {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            self.1.write(data)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_and_in_order() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::start(Box::new(sink.clone()), LogFormat::Json, true).unwrap();
        for i in 0..1000 {
            let mut b = w.buffer();
            b.extend_from_slice(format!("line {i}\n").as_bytes());
            w.send(b);
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
        assert_eq!(w.dropped(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let sink = Sink::default();
        let (go_tx, go_rx) = mpsc::channel();
        let (w, guard) = LogWriter::start(Box::new(Stuck(go_rx, sink.clone())), LogFormat::Text, true).unwrap();
        // Lines larger than the BufWriter go straight to `Stuck`, which holds the writer there
        // while the rest fill the byte budget.
        let big = vec![b'x'; QUEUE_BYTES / 2];
        w.send(big.clone());
        w.send(big.clone());
        w.send(big);
        let started = std::time::Instant::now();
        for _ in 0..10 {
            w.send(b"small\n".to_vec());
        }
        assert!(started.elapsed() < Duration::from_secs(1), "sending never waits");
        assert!(w.dropped() >= 1, "the line over the byte budget is dropped and counted");
        drop(go_tx);
        drop(guard);
    }

    #[test]
    fn tracing_events_go_through_the_queue() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::start(Box::new(sink.clone()), LogFormat::Text, false).unwrap();
        let sub = tracing_subscriber::fmt().with_writer(w.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(sub, || tracing::info!(answer = 42, "hello"));
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with("hello answer=42\n"), "{text}");
    }
}
