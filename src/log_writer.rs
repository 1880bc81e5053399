//! Log output off the request path: per-thread chunks of entries, turned into lines and
//! written by one thread.
//!
//! Every log line — the access log's and every other `tracing` event's — is appended by the
//! thread that made it to a chunk of its own, and a writer thread of routeid's writes what the
//! chunks hold to stderr. The request path never makes a write syscall, never waits for the
//! writer, and never formats an access-log line:
//!
//! - an access-log line is appended as a compact record (its fields copied, nothing formatted:
//!   [`crate::proxy::access_log`]) and the writer formats the records of a chunk one after the
//!   other, with the formatting's code and data hot in its cache, where the request path would
//!   run it cold between requests; a `tracing` event is appended as the finished line
//!   tracing-subscriber formatted;
//! - a thread writes straight into its chunk (no buffer per line, no queue node); the chunk's
//!   lock is that thread's alone and is taken by the writer only to swap the chunk for an empty
//!   one, and only when it is free (`try_lock`: a writer that preempted a thread mid-entry
//!   takes that chunk next time instead of waiting), so requests never wait on it;
//! - the writer writes the first line after a quiet spell at once; in a steady stream it wakes
//!   by itself every [`FLUSH_AFTER`] and writes what gathered, in writes of about
//!   [`WAKE_BYTES`], so `tail -f` sees a line within [`FLUSH_AFTER`]. A steady stream costs the
//!   request path no wake-up of the writer at all (a wake-up is a futex call, and on a busy core
//!   a context switch away from requests): only an entry that finds the writer asleep, or a
//!   chunk that reaches [`WAKE_BYTES`] before the timer, wakes it. Idle, it sleeps until an
//!   entry comes;
//! - the writer runs at the priority of the threads that serve requests and never steps aside
//!   while it has lines to make: on a core it shares with a busy worker, a thread that yields
//!   or runs at a lower priority waits a whole time slice of the worker's each time and falls
//!   behind until lines are dropped (measured: three lines in four at `nice` 10 with a
//!   `sched_yield` every 32 records). What it costs requests on a shared core is one pause per
//!   wake-up, as long as formatting one [`WAKE_BYTES`] of records takes (bench/README.md);
//! - a chunk is bounded ([`THREAD_BYTES`]): when the writer falls behind (stderr blocks), an
//!   entry that does not fit is dropped and counted (`routeid_log_lines_dropped_total`) instead
//!   of slowing requests down;
//! - a full non-blocking stderr is waited for; a write that fails (a closed pipe) loses its
//!   lines, counted as dropped, and the line it cut is ended before the next write;
//! - the chunks come back from the writer and are reused, so a steady stream of lines allocates
//!   nothing.
//!
//! Lines are whole and, from one thread, in order; lines of different threads written within
//! the same [`FLUSH_AFTER`] are grouped by thread (each line carries its own timestamp).

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError, Weak};
use std::time::{Duration, Instant};

use crate::cli::LogFormat;

/// How often the writer writes what gathered in a steady stream (what `tail -f` waits at most);
/// the first line after a quiet spell does not wait.
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// A chunk this large wakes the writer before its timer (a stream of over 1.3 MB/s from one
/// thread: about 7,700 access-log records a second): chunks stay far below [`THREAD_BYTES`],
/// the entries a thread has waiting stay small next to its CPU's cache, and on a core shared
/// with requests the writer's pause (formatting and writing one wake-up's records, about 385
/// of them at 0.35 µs each, some 0.13 ms) stays short next to a request's latency: at 256 KiB
/// the access log's p99 was 1.2x the log off's, at 64 KiB 0.94x, for the same CPU; at 16 KiB it
/// was no better than at 64 and cost more context switches (bench/README.md). Also about the
/// size of the writer's writes.
pub const WAKE_BYTES: usize = 64 * 1024;
/// Most bytes one thread's chunk holds while the writer is behind; an entry beyond is dropped.
pub const THREAD_BYTES: usize = 4 * 1024 * 1024;
/// A fresh chunk's room: a chunk grows to what one [`FLUSH_AFTER`] of lines needs, then is reused.
const CHUNK_ROOM: usize = 64 * 1024;
/// A chunk grown larger than this (the writer fell behind) is freed instead of reused.
const REUSE_CAPACITY: usize = 2 * WAKE_BYTES;
/// Wake-ups that may wait for the writer; beyond, one is pending and that is enough.
const WAKE_QUEUE: usize = 64;

/// An entry in a chunk: its kind (one byte), its payload's length (4 bytes, little-endian),
/// its payload.
const FRAME: usize = 5;
/// An entry's kind: a finished line, written as it is.
const LINE: u8 = 0;
/// An entry's kind: an access-log record, which the writer formats
/// ([`crate::proxy::access_log::render`]).
const RECORD: u8 = 1;

/// Why the writer is woken.
enum Wake {
    /// An entry found the writer asleep: write it now.
    Lines,
    /// A chunk reached [`WAKE_BYTES`]: write now.
    Full,
    /// Write everything appended before this, then answer.
    Flush(SyncSender<()>),
}

/// One thread's chunk of entries for one writer.
#[derive(Debug, Default)]
struct Slot {
    chunk: Mutex<Vec<u8>>,
}

#[derive(Debug)]
struct Shared {
    /// Tells this writer apart in a thread's list of slots (tests start several).
    id: u64,
    /// Every thread's slot; locked when a thread logs its first line and once per sweep.
    slots: Mutex<Vec<Arc<Slot>>>,
    dropped: AtomicU64,
    /// The writer sleeps until woken (it found every chunk empty): the next line must wake it.
    /// Set by the writer only after it saw every chunk empty under its lock, and read by a
    /// thread after appending under that lock, so no line is left behind unwritten.
    asleep: AtomicBool,
    /// Wake-ups sent (read by the tests: a steady stream sends none).
    wakes: AtomicU64,
    wake: SyncSender<Wake>,
    /// Run by the writer between a sweep that found nothing and its saying it is asleep: lets
    /// a test append a line exactly there.
    #[cfg(test)]
    before_sleep: BeforeSleep,
}

/// A test's hook into the moment the writer decides to sleep.
#[cfg(test)]
#[derive(Default)]
struct BeforeSleep(Mutex<Option<Box<dyn FnMut() + Send>>>);

#[cfg(test)]
impl std::fmt::Debug for BeforeSleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeSleep")
    }
}

/// The appending side of the log; cheap to clone.
#[derive(Clone, Debug)]
pub struct LogWriter {
    shared: Arc<Shared>,
    /// The access log records its lines for the writer to format (stderr is no terminal: no
    /// colours to match).
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
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's slot in each writer it has logged to (one, outside tests).
    static SLOTS: RefCell<Vec<(u64, Arc<Slot>)>> = const { RefCell::new(Vec::new()) };
}

/// A poisoned lock only means a panic elsewhere mid-append: the bytes are still there.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogWriter {
    /// Starts the writer thread, which writes to `out` and formats access-log records in
    /// `format`.
    /// `direct_access_log` lets the proxy record access-log lines for it (its formatting
    /// matches tracing-subscriber's output without colours only).
    pub fn start(
        out: Box<dyn Write + Send>,
        format: LogFormat,
        direct_access_log: bool,
    ) -> std::io::Result<(LogWriter, FlushGuard)> {
        let (wake, rx) = mpsc::sync_channel(WAKE_QUEUE);
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Relaxed),
            slots: Mutex::default(),
            dropped: AtomicU64::new(0),
            asleep: AtomicBool::new(true),
            wakes: AtomicU64::new(0),
            wake,
            #[cfg(test)]
            before_sleep: BeforeSleep::default(),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new().name("routeid-log".into()).spawn(move || write_loop(rx, weak, out, format))?;
        let writer = LogWriter { shared, direct_access_log };
        Ok((writer.clone(), FlushGuard { writer }))
    }

    /// Makes `self` the process's log writer, which the access log finds with [`installed`].
    /// The first call wins.
    pub fn install(&self) {
        let _ = INSTALLED.set(self.clone());
    }

    /// Entries dropped so far: the writer was behind, or a write to the output failed (or, never
    /// seen, an entry made no line).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Relaxed)
    }

    /// Appends one access-log record, which `record` writes into this thread's chunk
    /// ([`crate::proxy::access_log`] makes them and formats them on the writer's thread), without
    /// waiting for the writer;
    /// drops and counts it when the chunk is full.
    pub(crate) fn append_record(&self, record: impl FnOnce(&mut Vec<u8>)) {
        self.append(RECORD, record);
    }

    /// Appends a line that `payload` writes: for a test of a payload that logs.
    #[cfg(test)]
    fn send_with_payload_for_test(&self, payload: impl FnOnce(&mut Vec<u8>)) {
        self.append(LINE, payload);
    }

    /// Queues one finished line (ending in `\n`), as [`LogWriter::append_record`] does a record.
    pub fn send(&self, line: &[u8]) {
        self.append(LINE, |chunk| chunk.extend_from_slice(line));
    }

    /// Appends one entry of `kind`, whose payload `payload` writes into this thread's chunk.
    /// The thread's slots stay borrowed, exclusively, for the append: a payload that logs (none
    /// does) finds them borrowed and appends to a slot of its own ([`LogWriter::register`]),
    /// instead of locking the chunk its own thread holds.
    fn append(&self, kind: u8, payload: impl FnOnce(&mut Vec<u8>)) {
        let appended = SLOTS.try_with(|slots| {
            if let Ok(mine) = slots.try_borrow_mut()
                && let Some((_, slot)) = mine.iter().find(|(id, _)| *id == self.shared.id)
            {
                return self.append_to(slot, kind, payload);
            }
            let slot = self.register(slots);
            self.append_to(&slot, kind, payload);
        });
        // A thread logging while it ends, after its thread-locals are gone.
        if appended.is_err() {
            self.shared.dropped.fetch_add(1, Relaxed);
        }
    }

    fn append_to(&self, slot: &Slot, kind: u8, payload: impl FnOnce(&mut Vec<u8>)) {
        let mut chunk = lock(&slot.chunk);
        let before = chunk.len();
        chunk.push(kind);
        chunk.extend_from_slice(&[0; FRAME - 1]);
        payload(&mut chunk);
        let after = chunk.len();
        match after.checked_sub(before + FRAME).map(u32::try_from) {
            Some(Ok(len)) if after <= THREAD_BYTES => {
                if let Some(at) = chunk.get_mut(before + 1..before + FRAME) {
                    at.copy_from_slice(&len.to_le_bytes());
                }
            }
            _ => {
                chunk.truncate(before);
                self.shared.dropped.fetch_add(1, Relaxed);
                return;
            }
        }
        drop(chunk);
        let wake = if before < WAKE_BYTES && after >= WAKE_BYTES {
            Wake::Full
        } else if before == 0 && self.shared.asleep.load(SeqCst) {
            // Read after this thread's lock of the chunk: a writer that went to sleep before
            // saw the chunk empty has set `asleep` already (see `Shared::asleep`).
            Wake::Lines
        } else {
            return;
        };
        self.shared.wakes.fetch_add(1, Relaxed);
        // Full: wake-ups are pending already, and one is all this would ask for.
        let _ = self.shared.wake.try_send(wake);
    }

    /// This thread's first entry to this writer: a slot of its own.
    fn register(&self, slots: &RefCell<Vec<(u64, Arc<Slot>)>>) -> Arc<Slot> {
        let slot = Arc::new(Slot { chunk: Mutex::new(Vec::with_capacity(CHUNK_ROOM)) });
        lock(&self.shared.slots).push(Arc::clone(&slot));
        // Borrowed already only by an append whose payload appends (none does): then the slot
        // serves this entry alone and the writer forgets it once written.
        if let Ok(mut mine) = slots.try_borrow_mut() {
            mine.push((self.shared.id, Arc::clone(&slot)));
        }
        slot
    }

    /// Waits (at most `within`, even when stderr blocks) until every line appended so far is
    /// written.
    pub fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let mut msg = Wake::Flush(ack_tx);
        loop {
            match self.shared.wake.try_send(msg) {
                Ok(()) => {
                    let _ = ack_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
                    return;
                }
                // Many wake-ups pending at exit: give the writer a moment, within the bound.
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
    }
}

/// The installed writer when the access log may record its lines for it.
pub fn installed() -> Option<&'static LogWriter> {
    INSTALLED.get().filter(|w| w.direct_access_log)
}

/// What one sweep found.
#[derive(Debug, PartialEq)]
enum Swept {
    /// Every chunk was empty (and free): nothing to write.
    Nothing,
    /// Something was written, or a chunk was busy and is left for the next sweep.
    Something,
}

/// Sleeps until an entry comes and writes it; while entries keep coming, wakes every
/// [`FLUSH_AFTER`] (sooner for a full chunk or a flush) and writes every thread's chunk; sleeps
/// again once a sweep finds nothing. Ends when every [`LogWriter`] is gone.
fn write_loop(rx: Receiver<Wake>, shared: Weak<Shared>, out: Box<dyn Write + Send>, format: LogFormat) {
    let mut out = Output { out, text: Vec::with_capacity(WAKE_BYTES), format, spare: Vec::new(), lost: 0, cut: false };
    // The next sweep; `None` while asleep.
    let mut next: Option<Instant> = None;
    // `None` once every sender is gone, with `Shared` (then there is nothing left to write).
    while let Some(flush) = wait(&rx, next) {
        let Some(shared) = shared.upgrade() else { break };
        if next.is_none() {
            // Awake from here on: entries appended while this sweep writes need no wake-up
            // (every way back to sleep says so again and looks once more).
            shared.asleep.store(false, SeqCst);
        }
        let mut swept = sweep(&shared, &mut out, flush.is_some());
        if swept == Swept::Nothing {
            #[cfg(test)]
            if let Some(hook) = lock(&shared.before_sleep.0).as_mut() {
                hook();
            }
            // Going to sleep: say so first, then look once more, so an entry appended meanwhile
            // either is seen here or sees `asleep` and wakes the writer.
            shared.asleep.store(true, SeqCst);
            swept = sweep(&shared, &mut out, true);
            if swept == Swept::Something {
                shared.asleep.store(false, SeqCst);
            }
        }
        out.write();
        shared.dropped.fetch_add(std::mem::take(&mut out.lost), Relaxed);
        // A failed flush (stderr closed) has nowhere to be reported.
        let _ = out.out.flush();
        next = (swept == Swept::Something).then(|| Instant::now() + FLUSH_AFTER);
        if let Some(ack) = flush {
            let _ = ack.try_send(());
        }
    }
}

/// The writer's side: the output, the lines formatted for it, and chunks for reuse.
struct Output {
    out: Box<dyn Write + Send>,
    /// Lines not yet written: written at [`WAKE_BYTES`] and at the end of each sweep.
    text: Vec<u8>,
    format: LogFormat,
    spare: Vec<Vec<u8>>,
    /// Lines failed writes lost since the writer's round last counted them as dropped (once,
    /// after the round's last write).
    lost: u64,
    /// A failed write left a line cut short on the output: the next write ends it first.
    cut: bool,
}

impl Output {
    /// Turns a chunk's entries into lines, written [`WAKE_BYTES`] at a time. Returns how many
    /// entries made no line (none: a thread appends only whole entries of known kinds).
    fn lines(&mut self, chunk: &[u8]) -> u64 {
        let mut rest = chunk;
        let mut broken = 0;
        while !rest.is_empty() {
            let Some((&[kind, l0, l1, l2, l3], after)) = rest.split_first_chunk::<FRAME>() else {
                return broken + 1;
            };
            let Some((payload, next)) = after.split_at_checked(u32::from_le_bytes([l0, l1, l2, l3]) as usize) else {
                return broken + 1;
            };
            rest = next;
            let made = match kind {
                LINE => {
                    self.text.extend_from_slice(payload);
                    true
                }
                RECORD => crate::proxy::access_log::render(payload, self.format, &mut self.text),
                _ => false,
            };
            broken += u64::from(!made);
            if self.text.len() >= WAKE_BYTES {
                self.write();
            }
        }
        broken
    }

    /// Writes the lines made so far, whole: a non-blocking stderr's `WouldBlock` is waited out
    /// (as a blocking one would block) and an interrupted write retried. Any other error loses
    /// what is left, counted in [`Output::lost`] by its lines; a line cut short by it is ended
    /// before the next write, so the lines after it start lines of their own.
    fn write(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let mut rest = self.text.as_slice();
        if self.cut && write_whole(&mut *self.out, b"\n").is_ok() {
            self.cut = false;
        }
        if let Err(left) = write_whole(&mut *self.out, rest) {
            rest = rest.get(rest.len() - left..).unwrap_or_default();
            self.lost += rest.iter().filter(|&&b| b == b'\n').count() as u64;
            let written = self.text.get(..self.text.len() - left).unwrap_or_default();
            self.cut |= written.last().is_some_and(|&b| b != b'\n');
        }
        if self.text.capacity() > REUSE_CAPACITY {
            self.text = Vec::with_capacity(WAKE_BYTES);
        } else {
            self.text.clear();
        }
    }
}

/// Writes all of `bytes` to `out`, waiting out `WouldBlock` (1 ms at a time) and retrying
/// `Interrupted`; on any other error (or a write of nothing), how many bytes were not written.
fn write_whole(out: &mut dyn Write, mut bytes: &[u8]) -> Result<(), usize> {
    while !bytes.is_empty() {
        match out.write(bytes) {
            Ok(0) => return Err(bytes.len()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return Err(bytes.len()),
        }
    }
    Ok(())
}

/// Waits for the next sweep: asleep (`next` is `None`) until anything comes, awake until `next`
/// or sooner for a full chunk or a flush. Returns the flush to answer, if that is why; `None`
/// when every sender is gone.
fn wait(rx: &Receiver<Wake>, next: Option<Instant>) -> Option<Option<SyncSender<()>>> {
    loop {
        let wake = match next {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match wake {
            // An entry that found the writer asleep just before it woke: the sweep is due anyway.
            Ok(Wake::Lines) if next.is_some_and(|at| Instant::now() < at) => {}
            Ok(Wake::Lines | Wake::Full) | Err(RecvTimeoutError::Timeout) => return Some(None),
            Ok(Wake::Flush(ack)) => return Some(Some(ack)),
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// Takes each thread's chunk (swapping in an empty one) and turns it into lines; forgets the
/// slots of threads that have ended once they are empty. Without `all`, a chunk whose thread is
/// appending right now is left for the next sweep instead of waited for.
fn sweep(shared: &Shared, out: &mut Output, all: bool) -> Swept {
    let slots: Vec<Arc<Slot>> = {
        let mut known = lock(&shared.slots);
        known.retain(|s| Arc::strong_count(s) > 1 || !lock(&s.chunk).is_empty());
        known.clone()
    };
    let mut swept = Swept::Nothing;
    for slot in slots {
        let mut chunk = out.spare.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK_ROOM));
        {
            let mut theirs = match slot.chunk.try_lock() {
                Ok(theirs) => theirs,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) if all => lock(&slot.chunk),
                Err(TryLockError::WouldBlock) => {
                    swept = Swept::Something;
                    out.spare.push(chunk);
                    continue;
                }
            };
            if theirs.is_empty() {
                out.spare.push(chunk);
                continue;
            }
            std::mem::swap(&mut *theirs, &mut chunk);
        }
        swept = Swept::Something;
        let broken = out.lines(&chunk);
        shared.dropped.fetch_add(broken, Relaxed);
        if chunk.capacity() <= REUSE_CAPACITY {
            chunk.clear();
            out.spare.push(chunk);
        }
    }
    swept
}

/// One line from tracing-subscriber: collected, then appended whole when dropped (the fmt layer
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
            self.writer.send(&self.buf);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = EventLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventLine { writer: self, buf: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::access_log::UnixMicros;
    use std::time::SystemTime;

    /// An output that answers each write as scripted (then takes everything): `Some(n)` takes
    /// `n` bytes at most, `None` fails with `kind`.
    #[derive(Clone)]
    struct Scripted(Arc<Mutex<(Vec<u8>, Script)>>, std::io::ErrorKind);

    /// Each write's answer, in turn.
    type Script = std::collections::VecDeque<Option<usize>>;

    impl Scripted {
        fn new(script: &[Option<usize>], kind: std::io::ErrorKind) -> Scripted {
            Scripted(Arc::new(Mutex::new((Vec::new(), script.iter().copied().collect()))), kind)
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&lock(&self.0).0).into_owned()
        }
    }

    impl Write for Scripted {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let mut g = lock(&self.0);
            match g.1.pop_front() {
                Some(None) => Err(self.1.into()),
                Some(Some(n)) => {
                    let n = n.min(data.len());
                    g.0.extend_from_slice(&data[..n]);
                    Ok(n)
                }
                None => {
                    g.0.extend_from_slice(data);
                    Ok(data.len())
                }
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A non-blocking stderr (a pipe or terminal shared with another process) that is full for
    /// a moment: the rest of the batch waits, nothing is lost or cut.
    #[test]
    fn a_full_non_blocking_output_is_waited_for() {
        let sink = Scripted::new(&[Some(10), None, None], std::io::ErrorKind::WouldBlock);
        let (w, guard) = LogWriter::start(Box::new(sink.clone()), LogFormat::Text, true).unwrap();
        w.send(b"first line, cut by EAGAIN\n");
        w.flush(Duration::from_secs(5));
        w.send(b"second line\n");
        drop(guard);
        assert_eq!(sink.text(), "first line, cut by EAGAIN\nsecond line\n");
        assert_eq!(w.dropped(), 0);
    }

    /// An output that fails (a closed pipe): what the write lost is counted by its lines, and
    /// the line it cut is ended, so the next lines start lines of their own.
    #[test]
    fn a_failed_write_counts_its_lines_and_ends_the_line_it_cut() {
        let sink = Scripted::new(&[Some(10), None], std::io::ErrorKind::BrokenPipe);
        let (w, guard) = LogWriter::start(Box::new(sink.clone()), LogFormat::Text, true).unwrap();
        // One entry, so both lines meet the failed write (two sends could be swept apart).
        w.send(b"first line, cut by EPIPE\nlost with it\n");
        w.flush(Duration::from_secs(5));
        assert_eq!(w.dropped(), 2, "the cut line and the one after it");
        w.send(b"second line\n");
        drop(guard);
        assert_eq!(sink.text(), "first line\nsecond line\n");
        assert_eq!(w.dropped(), 2);
    }

    /// A payload that logs (none does today: a debug line or a panic hook that logs would)
    /// appends to a slot of its own instead of locking its thread's chunk a second time.
    #[test]
    fn an_append_whose_payload_logs_does_not_deadlock() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::start(Box::new(sink.clone()), LogFormat::Text, true).unwrap();
        let (tx, rx) = mpsc::channel();
        let w2 = w.clone();
        std::thread::spawn(move || {
            w2.send(b"registers this thread's slot\n");
            let inner = w2.clone();
            w2.send_with_payload_for_test(move |chunk| {
                inner.send(b"nested\n");
                chunk.extend_from_slice(b"outer\n");
            });
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok(), "the nested append hung");
        w.flush(Duration::from_secs(5));
        drop(guard);
        let text = sink.text();
        assert!(text.starts_with("registers this thread's slot\n"), "{text:?}");
        assert!(text.contains("nested\n") && text.contains("outer\n"), "{text:?}");
        assert_eq!(w.dropped(), 0);
    }

    /// A `Write` that appends to a shared buffer, for reading what the thread wrote, and counts
    /// its `write` calls.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>, Arc<AtomicU64>);

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            self.1.fetch_add(1, Relaxed);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A `Write` that blocks until told to go on, to fill the chunks.
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

    /// A `Write` that reports each write, to await a line without a flush.
    struct Told(SyncSender<Vec<u8>>);

    impl Write for Told {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.try_send(data.to_vec());
            Ok(data.len())
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
            w.send(format!("line {i}\n").as_bytes());
        }
        drop(guard);
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(sink.text(), want);
        assert_eq!(w.dropped(), 0);
    }

    #[test]
    fn lines_of_many_threads_all_arrive_in_each_threads_order() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::start(Box::new(sink.clone()), LogFormat::Text, true).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let w = &w;
                s.spawn(move || (0..2000).for_each(|i| w.send(format!("t{t} {i}\n").as_bytes())));
            }
        });
        drop(guard);
        let text = sink.text();
        for t in 0..4 {
            let mine: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("t{t} "))).collect();
            let want: Vec<String> = (0..2000).map(|i| format!("t{t} {i}")).collect();
            assert_eq!(mine, want, "thread {t}");
        }
        assert_eq!(text.lines().count(), 8000);
    }

    #[test]
    fn lines_are_written_in_large_chunks() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::start(Box::new(sink.clone()), LogFormat::Text, true).unwrap();
        let line = [b"x".repeat(299), b"\n".to_vec()].concat();
        // Under THREAD_BYTES: none is dropped however far the writer falls behind.
        for _ in 0..3_000 {
            w.send(&line);
        }
        drop(guard);
        assert_eq!((sink.text().len(), w.dropped()), (900_000, 0));
        // 900 kB is a few writes (the first line, a WAKE_BYTES chunk each, the rest at the flush).
        let writes = sink.1.load(Relaxed);
        assert!(writes <= 40, "{writes} writes for 3,000 lines");
    }

    #[test]
    fn a_line_reaches_the_output_without_a_flush() {
        let (tx, rx) = mpsc::sync_channel(16);
        let (w, _guard) = LogWriter::start(Box::new(Told(tx)), LogFormat::Text, true).unwrap();
        w.send(b"tail -f sees me\n");
        let got = rx.recv_timeout(Duration::from_secs(5)).expect("written within FLUSH_AFTER");
        assert_eq!(got, b"tail -f sees me\n");
    }

    #[test]
    fn a_steady_stream_never_wakes_the_writer() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::start(Box::new(sink.clone()), LogFormat::Text, true).unwrap();
        // A line every 2 ms for about 400 ms: the writer wakes for the first and then by its
        // timer. It can fall asleep (and need waking) only after FLUSH_AFTER without a line, so
        // each longer gap of this thread (a loaded machine) allows one more wake-up.
        let started = Instant::now();
        let mut last = started;
        let mut long_gaps = 0;
        for i in 0..200 {
            w.send(format!("line {i}\n").as_bytes());
            std::thread::sleep(Duration::from_millis(2));
            let now = Instant::now();
            long_gaps += u64::from(now - last >= FLUSH_AFTER);
            last = now;
        }
        let took = started.elapsed();
        let wakes = w.shared.wakes.load(Relaxed);
        drop(guard);
        assert_eq!(sink.text().lines().count(), 200);
        assert!(wakes <= 1 + long_gaps, "{wakes} wake-ups for 200 lines ({long_gaps} gaps of FLUSH_AFTER)");
        // Written by the timer, not line by line: one write per FLUSH_AFTER of the stream.
        let timer_writes = (took.as_millis() / FLUSH_AFTER.as_millis()) as u64;
        let writes = sink.1.load(Relaxed);
        assert!(writes <= timer_writes + long_gaps + 3, "{writes} writes in {took:?}");
    }

    #[test]
    fn a_line_is_never_left_behind_when_the_writer_falls_asleep() {
        let (tx, rx) = mpsc::sync_channel(64);
        let (w, _guard) = LogWriter::start(Box::new(Told(tx)), LogFormat::Text, true).unwrap();
        // The narrow moment: the writer has just found every chunk empty and not yet said it is
        // asleep, when another thread appends (and, the writer being awake, sends no wake-up).
        // The writer's last look before sleeping must write that line.
        let (now_tx, now_rx) = mpsc::sync_channel::<()>(0);
        let (done_tx, done_rx) = mpsc::sync_channel::<()>(0);
        let mut once = Some((now_tx, done_rx));
        *lock(&w.shared.before_sleep.0) = Some(Box::new(move || {
            if let Some((now, done)) = once.take() {
                let _ = now.send(());
                let _ = done.recv_timeout(Duration::from_secs(5));
            }
        }));
        w.send(b"first\n");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("first written"), b"first\n");
        let appender = {
            let w = w.clone();
            std::thread::spawn(move || {
                now_rx.recv_timeout(Duration::from_secs(5)).expect("the writer went to sleep");
                w.send(b"in the gap\n");
                let _ = done_tx.send(());
            })
        };
        let got = rx.recv_timeout(Duration::from_secs(5)).expect("the line appended in the gap is written");
        assert_eq!(got, b"in the gap\n");
        appender.join().unwrap();
        // And lines timed around FLUSH_AFTER, as the writer goes to sleep, each arrive alone.
        let pauses = [0, 45, 49, 50, 51, 55, 60, 100];
        let mut seen = String::new();
        for i in 0..16 {
            let line = format!("line {i}\n");
            w.send(line.as_bytes());
            while !seen.ends_with(&line) {
                let got = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| panic!("{line:?} never written"));
                seen.push_str(std::str::from_utf8(&got).unwrap());
            }
            std::thread::sleep(Duration::from_millis(pauses[i % pauses.len()]));
        }
    }

    #[test]
    fn a_full_chunk_drops_and_counts_instead_of_waiting() {
        let sink = Sink::default();
        let (go_tx, go_rx) = mpsc::channel();
        let (w, guard) = LogWriter::start(Box::new(Stuck(go_rx, sink.clone())), LogFormat::Text, true).unwrap();
        // The writer takes at most one chunk before `Stuck` holds it; this thread's chunk then
        // holds one of these lines (two and their frames are over the bound): five cannot fit.
        let big = [vec![b'x'; THREAD_BYTES / 2 - 1], b"\n".to_vec()].concat();
        let started = Instant::now();
        for _ in 0..5 {
            w.send(&big);
        }
        assert!(started.elapsed() < Duration::from_secs(1), "appending never waits");
        assert!(w.dropped() >= 1, "the line over the bound is dropped and counted");
        drop(go_tx);
        drop(guard);
        assert_eq!(sink.text().len() as u64, (5 - w.dropped()) * big.len() as u64, "the rest is written whole");
    }

    fn access_line(status: u16, path: &[u8]) -> crate::proxy::access_log::AccessLine<'_> {
        crate::proxy::access_log::AccessLine {
            method: b"GET",
            host: b"shop",
            path,
            status,
            bytes_in: Some(0),
            bytes_out: Some(3),
            duration_us: 812,
            client: [10, 1, 2, 3].into(),
            pool: b"default/shop",
            member_address: Some(([127, 0, 0, 1], 8080).into()),
            attempts: 1,
            session_sticky: b"JSESSIONID",
            session_route: b"n2",
            worker_name: b"http://127.0.0.1:8080",
            worker_route: b"n2",
            route_changed: false,
            route_source: b"session-cookie",
            balanced: b"-",
            malformed_route: false,
        }
    }

    /// Access-log records come out as their lines, in order with the lines sent around them;
    /// an entry that is no record is counted as dropped and the rest go on.
    #[test]
    fn records_become_lines_in_order_with_the_lines_around_them() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::start(Box::new(sink.clone()), LogFormat::Json, true).unwrap();
        for status in 200..300 {
            w.send(format!("before {status}\n").as_bytes());
            w.append_record(|chunk| access_line(status, b"/cart").record(chunk, UnixMicros::of(SystemTime::now())));
        }
        w.append_record(|chunk| chunk.extend_from_slice(b"no record"));
        w.send(b"after\n");
        drop(guard);
        let text = sink.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 201);
        for (pair, status) in lines.chunks(2).zip(200..300) {
            assert_eq!(pair[0], format!("before {status}"));
            let json: serde_json::Value = serde_json::from_str(pair[1]).unwrap();
            assert_eq!((json["status"].as_u64(), json["BALANCER_WORKER_ROUTE"].as_str()), (Some(status), Some("n2")));
        }
        assert_eq!(lines[200], "after");
        assert_eq!(w.dropped(), 1);
    }

    /// A record after a quiet spell wakes the writer and is written without a flush, in the
    /// writer's format; a record over a chunk's bound is dropped and counted, and the next one
    /// is written as usual.
    #[test]
    fn a_record_reaches_the_output_without_a_flush_and_one_too_big_is_dropped() {
        let (tx, rx) = mpsc::sync_channel(16);
        let (w, _guard) = LogWriter::start(Box::new(Told(tx)), LogFormat::Text, true).unwrap();
        let huge = vec![b'p'; THREAD_BYTES];
        w.append_record(|chunk| access_line(404, &huge).record(chunk, UnixMicros::of(SystemTime::now())));
        assert_eq!(w.dropped(), 1);
        w.append_record(|chunk| access_line(200, b"/cart").record(chunk, UnixMicros::of(SystemTime::now())));
        let got = rx.recv_timeout(Duration::from_secs(5)).expect("written within FLUSH_AFTER");
        let got = String::from_utf8(got).unwrap();
        assert!(
            got.contains("Z  INFO routeid::access: request method=\"GET\" host=\"shop\" path=\"/cart\" status=200"),
            "{got}"
        );
        assert_eq!(got.lines().count(), 1);
    }

    /// The writer's reading of a chunk: an entry of no known kind, and a frame cut short, each
    /// count once; the entries around the first are written.
    #[test]
    fn entries_that_make_no_line_are_counted_and_skipped() {
        let sink = Sink::default();
        let mut out = Output {
            out: Box::new(sink.clone()),
            text: Vec::new(),
            format: LogFormat::Text,
            spare: Vec::new(),
            lost: 0,
            cut: false,
        };
        let frame = |kind: u8, payload: &[u8]| [&[kind][..], &(payload.len() as u32).to_le_bytes(), payload].concat();
        let chunk = [frame(LINE, b"one\n"), frame(7, b"what"), frame(LINE, b"two\n")].concat();
        assert_eq!(out.lines(&chunk), 1);
        let cut = [frame(LINE, b"three\n"), frame(LINE, b"four\n")].concat();
        assert_eq!(out.lines(&cut[..cut.len() - 2]), 1);
        assert_eq!(out.lines(&cut[..cut.len() - 7]), 1, "a frame's header cut short");
        out.write();
        assert_eq!(sink.text(), "one\ntwo\nthree\nthree\n");
    }

    #[test]
    fn tracing_events_go_through_the_queue() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::start(Box::new(sink.clone()), LogFormat::Text, false).unwrap();
        let sub = tracing_subscriber::fmt().with_writer(w.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(sub, || tracing::info!(answer = 42, "hello"));
        drop(guard);
        let text = sink.text();
        assert!(text.ends_with("hello answer=42\n"), "{text}");
    }
}
