//! Log output off the request path: per-thread chunks of entries, turned into lines and
//! written by one thread.
//!
//! Every log line — the access log's and every other `tracing` event's — is appended by the
//! thread that made it to a chunk of its own, and a writer thread of routeid's writes what the
//! chunks hold to stderr. The request path never makes a write syscall and never waits for the
//! writer:
//!
//! - an access-log line is formatted by the thread that served the request, straight into its
//!   chunk ([`crate::proxy::access_log`]); a `tracing` event is appended as the finished line
//!   tracing-subscriber formatted. The writer only copies lines and writes them: on a core it
//!   shares with requests, a writer that formatted a wake-up's worth of records at a time paused
//!   the requests in flight for as long as that took. In 40 paired rounds the log's p99 was
//!   1.15x the log off's with that writer (and the page-cache calls below made for every file)
//!   and 1.04x with this one, for the same CPU (bench/README.md);
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
//!   wake-up, as long as copying and writing one [`WAKE_BYTES`] of lines takes;
//! - to a regular file, a steady stream's writes end on the file's [`WAKE_BYTES`] boundaries,
//!   inside a line where one falls (the next write goes on with it): the kernel then fills the
//!   page cache in large folios, about 30 % less system time per byte than writes that end
//!   off them (`bench/page_cache_writes.py`). The bytes past the last boundary wait for the next
//!   sweep (within [`FLUSH_AFTER`]); a pipe or a terminal gets whole lines in every write;
//! - to a regular file, in a process under a memory limit (a cgroup's: a container's, a
//!   systemd unit's `MemoryMax=`), the writer lets go of the file's page cache behind what it
//!   wrote ([`LetGo`]): the log keeps some 18 MB of memory, reused, however much it writes,
//!   instead of filling the limit with lines nobody reads again, where reclaiming them would
//!   fall on the threads that serve requests (on a disk that writes back more slowly than the
//!   log grows, the pages still being written are left to the kernel's own reclaim). Without a
//!   limit the file's pages are left to the kernel, as any program's writes are: the calls cost
//!   the writer's core about 0.1 µs a request and long pauses (bench/README.md);
//! - a file truncated under the writer (`logrotate`'s `copytruncate`) just after a write that
//!   ended inside a line: the rest of that line is dropped and counted, so the new file starts
//!   with a whole line (the old one ends with the line's start, as `copytruncate` leaves any
//!   writer's). Such a file is best opened to append (`2>>`, systemd's `append:`): a descriptor
//!   that does not append goes on writing at its old offset, past a hole;
//! - to a pipe (a container's stderr, read by the container runtime), the writer widens the
//!   pipe to [`PIPE_BYTES`] at start ([`widen_pipe`]): in a pipe of the default 64 KiB each of
//!   its writes would fill the pipe and wait for the reader;
//! - a chunk is bounded ([`thread_bytes`], at most [`THREAD_BYTES`]): when the writer falls behind (stderr blocks), an
//!   entry that does not fit is dropped and counted (`routeid_log_lines_dropped_total`) instead
//!   of slowing requests down. A chunk grows by doubling before an entry that would not fit
//!   (each entry's length is known first), never past that bound; a thread the writer is behind
//!   gets its next chunk from the writer as large as the one it filled (made while the thread's
//!   lock is free), so a stderr read slowly (a lagging log reader) costs requests no
//!   reallocation of megabytes (with stderr to a pipe read at 2 MB/s, the p99 went from 4.7x the
//!   log off's to 2.0x: bench/README.md). A thread that goes quiet gives such a chunk back at
//!   the next sweep;
//! - a full non-blocking stderr is waited for; a write that fails (a closed pipe) loses its
//!   lines, counted as dropped, and the line it cut is ended before the next write;
//! - the chunks come back from the writer and are reused, so a steady stream of lines allocates
//!   nothing (unless a thread makes more than [`REUSE_CAPACITY`] of lines between two sweeps:
//!   then its chunks are made for it and freed after).
//!
//! Lines are whole and, from one thread, in order; lines of different threads written within
//! the same [`FLUSH_AFTER`] are grouped by thread (each line carries its own timestamp). In a
//! file, what another writer writes to it while a write of routeid's has ended inside a line
//! (another process appending to it, or a panic's message, which goes to stderr directly)
//! lands inside that line.

use std::cell::RefCell;
use std::fs::File;
use std::io::{Seek, Write};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError, Weak};
use std::time::{Duration, Instant};

use crate::cli::LogFormat;

/// How often the writer writes what gathered in a steady stream (what `tail -f` waits at most,
/// but for the bytes a write to a file leaves past its last boundary: those wait for the next
/// sweep, another [`FLUSH_AFTER`] at most); the first line after a quiet spell does not wait.
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// A chunk this large wakes the writer before its timer (a stream of over 1.3 MB/s from one
/// thread: about 2,700 access-log lines a second): chunks stay far below their bound (1 MiB at least),
/// the entries a thread has waiting stay small next to its CPU's cache, and on a core shared
/// with requests the writer's pause (copying and writing one wake-up's lines, about 130 access
/// lines) stays short next to a request's latency: with the writer formatting records, at 256
/// KiB the access log's p99 was 1.2x the log off's, at 64 KiB 0.94x, for the same CPU; at 16 KiB
/// it was no better than at 64 and cost more context switches (bench/README.md). Also about
/// the size of the writer's writes.
pub const WAKE_BYTES: usize = 64 * 1024;
/// Most bytes one thread's chunk holds while the writer is behind; an entry beyond is dropped.
/// About 21,000 access-log lines of some 490 bytes: a quarter of a second of the busiest thread
/// measured (88,000 requests a second). At 4 MiB (8,500 lines) the writer fell behind far enough
/// under `bench/ab.sh`'s load to drop lines (735 in 20 rounds, cause not found); at 10 MiB none
/// in 100 rounds of `bench/ab.sh` and 82 of `bench/run.sh` (bench/README.md). With many workers
/// each gets less ([`thread_bytes`]). Memory only while the writer is behind: a chunk grows to
/// its bound by doubling (or comes that large from the writer) and is freed once the thread has
/// caught up.
pub const THREAD_BYTES: usize = 10 * 1024 * 1024;
/// Most bytes the workers' chunks hold, together, while the writer is behind (other threads that
/// log a few lines hold a chunk of the same bound, which stays small; on a
/// node of many cores, 10 MiB for each worker would outgrow a container's memory limit: the
/// Helm chart's is 256 MiB). A worker's share shrinks with their number, never below
/// [`MIN_THREAD_BYTES`]: with more than 47 workers the log may hold one MiB per worker and one.
pub const LOG_BYTES: usize = 48 * 1024 * 1024;
/// The least a thread's chunk holds however many workers share [`LOG_BYTES`]: some 2,100 lines.
pub const MIN_THREAD_BYTES: usize = 1024 * 1024;

/// The bound of each thread's chunk for a process of `workers` worker threads: [`LOG_BYTES`]
/// shared by the workers and the one chunk the writer may be writing while a worker fills its
/// next, between [`MIN_THREAD_BYTES`] and [`THREAD_BYTES`]. A request rate split over more
/// workers fills each worker's chunk more slowly, so at the same total rate the share lasts about
/// as long (many workers each as busy as one alone drop lines after shorter stalls).
pub fn thread_bytes(workers: usize) -> usize {
    (LOG_BYTES / workers.saturating_add(1)).clamp(MIN_THREAD_BYTES, THREAD_BYTES)
}
/// A fresh chunk's room: a chunk grows to what one [`FLUSH_AFTER`] of lines needs, then is reused.
const CHUNK_ROOM: usize = 64 * 1024;
/// A chunk grown larger than this (the writer fell behind) is freed instead of reused, and
/// one left this large by a thread that went quiet is taken back.
const REUSE_CAPACITY: usize = 2 * WAKE_BYTES;

/// The room a chunk of `n` bytes grows to: twice as much, up to its `bound`. A chunk
/// grows only by this, before an entry that would not fit ([`LogWriter::append_to`]), never by
/// `Vec`'s own doubling, which would take it past its bound.
fn doubled(n: usize, bound: usize) -> usize {
    (2 * n).min(bound)
}

/// How many bytes the writer writes to a regular file between two calls letting go of its page
/// cache ([`LetGo`]): about 35 `fadvise` calls a second at 80,000 requests a second. Most of a
/// call is starting the write-back (ext4's block allocation, the disk's queue), with a cost per
/// call as well as per byte: under `bench/ab.sh`'s load a call took 160 µs at a MiB and 190 at
/// 256 KiB (`strace -T` of the writer thread), so larger steps cost less in all.
const LET_GO_EVERY: u64 = 1024 * 1024;
/// How large a pipe on stderr is made ([`widen_pipe`]), when the system lets an unprivileged
/// process (`/proc/sys/fs/pipe-max-size`, 1 MiB by default): some 3,400 access-log lines, 40 ms
/// of the busiest log measured. A pipe's default 64 KiB fills with each of the writer's writes,
/// so the writer waits for the reader (in Kubernetes, the container runtime) and is woken again
/// for every write: under `bench/ab.sh`'s load with stderr to a pipe read by `cat`, 1 MiB halved
/// the writer's CPU per line and the process's context switches (bench/README.md).
const PIPE_BYTES: usize = 1024 * 1024;
/// A smaller size to ask for when [`PIPE_BYTES`] is refused (a lower `pipe-max-size`, or the
/// pipes of the user who made this one, the container runtime's, over `pipe-user-pages-soft`:
/// the kernel charges a pipe's pages to its creator).
const PIPE_BYTES_FALLBACK: usize = 256 * 1024;
/// How much of the file's end the writer leaves in the page cache: what `tail -f` or a log
/// shipper reading behind it finds there instead of on disk (half a second of the busiest log
/// measured, 80,000 lines and 35 MB a second; over half a minute of one at 1,000 lines).
const LET_GO_KEEP: u64 = 16 * 1024 * 1024;
/// How far back each call of [`LetGo`] reaches before its range's end: the pages in it whose
/// writeback an earlier call started are done by now and are dropped (pages already dropped
/// cost the call next to nothing).
const LET_GO_BEHIND: u64 = 4 * 1024 * 1024;

/// An entry in a chunk: its kind (one byte, always [`LINE`]: an entry of another kind is a
/// broken chunk, counted), its payload's length (4 bytes, little-endian), its payload.
const FRAME: usize = 5;
/// An entry's kind: a finished line, written as it is.
const LINE: u8 = 0;

/// A reason to wake the writer ([`Shared::bell`]): an entry found the writer asleep: write it
/// now.
const RING_LINES: u8 = 1;
/// A chunk reached [`WAKE_BYTES`]: write now.
const RING_FULL: u8 = 1 << 1;
/// A flush waits in [`Shared::flushes`]: write everything appended before it, then answer.
const RING_FLUSH: u8 = 1 << 2;

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
    /// Most bytes a thread's chunk holds ([`thread_bytes`]).
    bound: usize,
    /// The writer sleeps until woken (it found every chunk empty): the next line must wake it.
    /// Set by the writer only after it saw every chunk empty under its lock, and read by a
    /// thread after appending under that lock, so no line is left behind unwritten.
    asleep: AtomicBool,
    /// Wake-ups sent (read by the tests: a steady stream sends none).
    wakes: AtomicU64,
    /// Why the writer was woken since it last looked: `RING_*` bits, set by the threads that
    /// append (and by a flush), then the writer's unpark; taken all at once by the writer. A
    /// wake-up so holds no lock: a channel's send holds the channel's lock while it wakes the
    /// receiver, and on a core the two share the writer ran its whole sweep before the sender
    /// let go of it, then blocked on it (two more context switches per wake-up).
    bell: AtomicU8,
    /// Flushes waiting for their answer; `None` once the writer thread has ended (a flush then
    /// returns at once).
    flushes: Mutex<Option<Vec<SyncSender<()>>>>,
    /// The writer thread, unparked to wake it: set by [`LogWriter::spawn`] right after the
    /// thread starts, before any handle exists, so every ring finds it.
    writer: OnceLock<std::thread::Thread>,
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

impl Shared {
    /// Wakes the writer, saying why (`RING_*`).
    fn ring(&self, why: u8) {
        self.bell.fetch_or(why, SeqCst);
        self.unpark_writer();
    }

    fn unpark_writer(&self) {
        if let Some(w) = self.writer.get() {
            w.unpark();
        }
    }
}

impl Drop for Shared {
    /// The last [`LogWriter`] is gone: the writer wakes, finds nothing to write for, and ends.
    fn drop(&mut self) {
        self.unpark_writer();
    }
}

/// The appending side of the log; cheap to clone.
#[derive(Clone, Debug)]
pub struct LogWriter {
    shared: Arc<Shared>,
    /// The access log formats its lines itself, straight into the chunks (stderr is no terminal:
    /// no colours to match).
    direct_access_log: bool,
    /// The log filter is asked for each access-log line ([`LogWriter::install`]).
    pub(crate) filter_per_line: bool,
    /// The format access-log lines are written in by the threads that log them.
    format: LogFormat,
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
    /// Starts the writer thread, which writes to `out`, each thread's chunk bounded by the whole
    /// [`THREAD_BYTES`] (the process's own log sizes it by its workers: [`LogWriter::start_stderr`]);
    /// access-log lines are formatted in `format`.
    /// `direct_access_log` lets the proxy format access-log lines into it itself (its formatting
    /// matches tracing-subscriber's output without colours only).
    pub fn start(
        out: Box<dyn Write + Send>,
        format: LogFormat,
        direct_access_log: bool,
    ) -> std::io::Result<(LogWriter, FlushGuard)> {
        Self::spawn(out, None, format, direct_access_log, THREAD_BYTES)
    }

    /// Starts the writer thread on stderr. When stderr is a regular file (`2>routeid.log`,
    /// systemd's `StandardError=append:`), a descriptor of its own on the same open file tells
    /// the writer the file's offset, so a steady stream's writes end on [`WAKE_BYTES`]
    /// boundaries of the file ([`Output::aligned_len`]). `workers`: the runtime's worker threads,
    /// which share [`LOG_BYTES`] ([`thread_bytes`]).
    pub fn start_stderr(
        format: LogFormat,
        direct_access_log: bool,
        workers: usize,
    ) -> std::io::Result<(LogWriter, FlushGuard)> {
        use std::os::fd::AsFd;
        let file = std::io::stderr().as_fd().try_clone_to_owned().map(File::from).ok();
        let file = file.filter(|f| f.metadata().is_ok_and(|m| m.is_file()));
        widen_pipe(std::io::stderr().as_fd());
        Self::spawn(Box::new(std::io::stderr()), file, format, direct_access_log, thread_bytes(workers))
    }

    /// Starts the writer thread on `out`; `file`: the same open file as `out`, when it is a
    /// regular file; `bound`: most bytes a thread's chunk holds.
    fn spawn(
        out: Box<dyn Write + Send>,
        file: Option<File>,
        format: LogFormat,
        direct_access_log: bool,
        bound: usize,
    ) -> std::io::Result<(LogWriter, FlushGuard)> {
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Relaxed),
            slots: Mutex::default(),
            dropped: AtomicU64::new(0),
            bound,
            asleep: AtomicBool::new(true),
            wakes: AtomicU64::new(0),
            bell: AtomicU8::new(0),
            flushes: Mutex::new(Some(Vec::new())),
            writer: OnceLock::new(),
            #[cfg(test)]
            before_sleep: BeforeSleep::default(),
        });
        let weak = Arc::downgrade(&shared);
        let let_go = file.is_some() && memory_limited();
        let thread = std::thread::Builder::new()
            .name("routeid-log".into())
            .spawn(move || write_loop(weak, Output::new(out, file, let_go)))?;
        let _ = shared.writer.set(thread.thread().clone());
        let writer = LogWriter { shared, direct_access_log, filter_per_line: false, format };
        Ok((writer.clone(), FlushGuard { writer }))
    }

    /// Makes `self` the process's log writer, which the access log finds with [`installed`].
    /// With `filter_per_line` false the access log writes its lines without asking the log
    /// filter (about 100 instructions a line): install it so only when the filter, fixed from
    /// then on, lets every `routeid::access` line through (target and level directives only).
    /// The first call wins.
    pub fn install(&self, filter_per_line: bool) {
        let _ = INSTALLED.set(LogWriter { filter_per_line, ..self.clone() });
    }

    /// Entries dropped so far: the writer was behind, or a write to the output failed (or, never
    /// seen, an entry made no line).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Relaxed)
    }

    /// The format access-log lines are written in.
    pub(crate) fn format(&self) -> LogFormat {
        self.format
    }

    /// Appends one line of at most `len` bytes, which `line` writes (with its `\n`) straight
    /// into this thread's chunk ([`crate::proxy::access_log`] formats access-log lines so),
    /// without waiting for the writer; drops and counts it when the chunk is full.
    pub(crate) fn append_line(&self, len: usize, line: impl FnOnce(&mut Vec<u8>)) {
        self.append(len, line);
    }

    /// Queues one finished line (ending in `\n`).
    pub fn send(&self, line: &[u8]) {
        self.append(line.len(), |chunk| chunk.extend_from_slice(line));
    }

    /// Appends one line, which `payload` writes into this thread's chunk:
    /// `len` bytes, which the chunk makes room for first. The thread's slots stay borrowed,
    /// exclusively, for the append: a payload that logs (none does) finds them borrowed and
    /// appends to a slot of its own ([`LogWriter::register`]), instead of locking the chunk its
    /// own thread holds.
    fn append(&self, len: usize, payload: impl FnOnce(&mut Vec<u8>)) {
        let appended = SLOTS.try_with(|slots| {
            if let Ok(mine) = slots.try_borrow_mut()
                && let Some((_, slot)) = mine.iter().find(|(id, _)| *id == self.shared.id)
            {
                return self.append_to(slot, len, payload);
            }
            let slot = self.register(slots);
            self.append_to(&slot, len, payload);
        });
        // A thread logging while it ends, after its thread-locals are gone.
        if appended.is_err() {
            self.shared.dropped.fetch_add(1, Relaxed);
        }
    }

    fn append_to(&self, slot: &Slot, len: usize, payload: impl FnOnce(&mut Vec<u8>)) {
        let mut chunk = lock(&slot.chunk);
        let before = chunk.len();
        let end = before.saturating_add(FRAME).saturating_add(len);
        // Full, or too full for this entry (the writer is behind): dropped before anything is
        // written, so the chunk never grows past its bound.
        if end > self.shared.bound {
            drop(chunk);
            self.shared.dropped.fetch_add(1, Relaxed);
            return;
        }
        if chunk.capacity() < end {
            let room = doubled(chunk.capacity(), self.shared.bound).max(end);
            chunk.reserve_exact(room - before);
        }
        chunk.push(LINE);
        chunk.extend_from_slice(&[0; FRAME - 1]);
        payload(&mut chunk);
        let after = chunk.len();
        match after.checked_sub(before + FRAME).map(u32::try_from) {
            Some(Ok(wrote)) if after <= self.shared.bound => {
                if let Some(at) = chunk.get_mut(before + 1..before + FRAME) {
                    at.copy_from_slice(&wrote.to_le_bytes());
                }
            }
            _ => {
                chunk.truncate(before);
                self.shared.dropped.fetch_add(1, Relaxed);
                return;
            }
        }
        drop(chunk);
        let why = if before < WAKE_BYTES && after >= WAKE_BYTES {
            RING_FULL
        } else if before == 0 && self.shared.asleep.load(SeqCst) {
            // Read after this thread's lock of the chunk: a writer that went to sleep before
            // saw the chunk empty has set `asleep` already (see `Shared::asleep`).
            RING_LINES
        } else {
            return;
        };
        self.shared.wakes.fetch_add(1, Relaxed);
        self.shared.ring(why);
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
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        match lock(&self.shared.flushes).as_mut() {
            Some(waiting) => waiting.push(ack_tx),
            // The writer thread has ended (only a bug could end it): nothing will be written.
            None => return,
        }
        self.shared.ring(RING_FLUSH);
        let _ = ack_rx.recv_timeout(within);
    }
}

/// The installed writer when the access log may format its lines into it itself.
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

/// Marks the writer thread ended, however it ends (a panic too): waiting flushes are answered
/// (their senders dropped) and later ones return at once instead of waiting out their bound.
struct Ended(Weak<Shared>);

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            *lock(&shared.flushes) = None;
        }
    }
}

/// Sleeps until an entry comes and writes it; while entries keep coming, wakes every
/// [`FLUSH_AFTER`] (sooner for a full chunk or a flush) and writes every thread's chunk; sleeps
/// again once a sweep finds nothing. Ends when every [`LogWriter`] is gone.
fn write_loop(weak: Weak<Shared>, mut out: Output) {
    let _ended = Ended(weak.clone());
    // The next sweep; `None` while asleep.
    let mut next: Option<Instant> = None;
    // `None` once every `LogWriter` is gone, with `Shared` (then there is nothing left to write).
    while let Some(flushes) = wait(&weak, next) {
        let Some(shared) = weak.upgrade() else { break };
        let flush = !flushes.is_empty();
        if next.is_none() {
            // Awake from here on: entries appended while this sweep writes need no wake-up
            // (every way back to sleep says so again and looks once more).
            shared.asleep.store(false, SeqCst);
        }
        let mut swept = sweep(&shared, &mut out, flush);
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
        out.end_sweep(swept == Swept::Something && !flush);
        shared.dropped.fetch_add(std::mem::take(&mut out.lost), Relaxed);
        // A failed flush (stderr closed) has nowhere to be reported.
        let _ = out.out.flush();
        next = (swept == Swept::Something).then(|| Instant::now() + FLUSH_AFTER);
        for ack in flushes {
            let _ = ack.try_send(());
        }
    }
}

/// The writer's side: the output, the lines taken for it, and chunks for reuse.
struct Output {
    out: Box<dyn Write + Send>,
    /// The same open file as `out` when that is a regular file: its offset places writes, and
    /// the page cache behind them is let go of ([`LetGo`]) when the process has a memory limit.
    file: Option<File>,
    let_go: Option<LetGo>,
    /// Lines not yet written: written at [`WAKE_BYTES`] and at the end of each sweep.
    text: Vec<u8>,
    /// How many bytes at the front of `text` the last sweep held back ([`Output::end_sweep`]).
    held: usize,
    /// This sweep wrote a [`WAKE_BYTES`] of lines: the stream is a steady one.
    steady: bool,
    spare: Vec<Vec<u8>>,
    /// Lines failed writes lost since the writer's round last counted them as dropped (once,
    /// after the round's last write).
    lost: u64,
    /// A failed write left a line cut short on the output: the next write ends it first.
    cut: bool,
    /// The output ends inside a line on purpose (a write ended on a boundary of the file): the
    /// next write goes on with it.
    open: bool,
    /// The file's offset after the write that left it [`Output::open`]: a file found shorter
    /// than this was truncated since ([`Output::drop_cut_line`]).
    mark: u64,
}

impl Output {
    /// `let_go`: let go of `file`'s page cache behind the writes ([`LetGo`]).
    fn new(out: Box<dyn Write + Send>, file: Option<File>, let_go: bool) -> Output {
        Output {
            out,
            file,
            let_go: let_go.then(LetGo::default),
            text: Vec::with_capacity(WAKE_BYTES),
            held: 0,
            steady: false,
            spare: Vec::new(),
            lost: 0,
            cut: false,
            open: false,
            mark: 0,
        }
    }

    /// Turns a chunk's entries into lines, written [`WAKE_BYTES`] at a time (to a file: up to
    /// its last [`WAKE_BYTES`] boundary that they reach). Returns how many entries made no line
    /// (none: a thread appends only whole entries of known kinds).
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
                _ => false,
            };
            broken += u64::from(!made);
            if self.text.len() >= WAKE_BYTES {
                // To a file, a boundary always falls within a WAKE_BYTES of lines.
                let n = self.aligned_len().unwrap_or(self.text.len());
                self.write_front(n);
                self.steady = true;
            }
        }
        broken
    }

    /// How many of the lines' bytes end a write on a [`WAKE_BYTES`] boundary of the output file
    /// (0: none within them); `None` when the output is no regular file or its offset cannot be
    /// read. Writes that fill the page cache a [`WAKE_BYTES`] at a time, on its boundaries, let
    /// the kernel give the file large folios (ext4 on a kernel that has them for it, as Linux
    /// 6.18 does; elsewhere this gains and costs nothing): about 30 % less system time per byte
    /// than writes ending off them (`bench/page_cache_writes.py`). The offset is the open
    /// file's, shared with stderr (a file opened to append reads 0 until its first write: that
    /// write is simply not placed), read with one `lseek`.
    fn aligned_len(&self) -> Option<usize> {
        let at = self.file.as_ref()?.stream_position().ok()?;
        let over = (at + self.text.len() as u64) % WAKE_BYTES as u64;
        Some(self.text.len().saturating_sub(over as usize))
    }

    /// Writes the lines made in a sweep. All of them, except in a steady stream to a file (`awake`:
    /// another sweep follows within [`FLUSH_AFTER`]; and this one wrote a [`WAKE_BYTES`]), where
    /// the bytes past the file's last boundary wait for the next sweep: never longer, since that
    /// one either writes a [`WAKE_BYTES`] again, which takes them along, or writes everything.
    fn end_sweep(&mut self, awake: bool) {
        let aligned = if awake && self.steady { self.aligned_len() } else { None };
        let n = aligned.filter(|&n| n >= self.held).unwrap_or(self.text.len());
        self.write_front(n);
        self.held = self.text.len();
        self.steady = false;
    }

    /// Writes all the lines made so far.
    #[cfg(test)]
    fn write(&mut self) {
        self.write_front(self.text.len());
    }

    /// Writes the first `n` bytes of the lines, whole: a non-blocking stderr's `WouldBlock` is
    /// waited out (as a blocking one would block) and an interrupted write retried. Any other
    /// error loses all that is left, counted in [`Output::lost`] by its lines; a line cut short
    /// by it is ended before the next write, so the lines after it start lines of their own.
    fn write_front(&mut self, n: usize) {
        let gone = self.drop_cut_line();
        self.held = self.held.saturating_sub(gone);
        let n = n.saturating_sub(gone);
        let Some(front) = self.text.get(..n).filter(|f| !f.is_empty()) else {
            return;
        };
        // The line a failed write cut is ended first; while that fails too, nothing goes after
        // it (the next line would go on the cut one).
        let ended = !self.cut || write_whole(&mut *self.out, b"\n").is_ok();
        self.cut &= !ended;
        let wrote = if ended { write_whole(&mut *self.out, front) } else { Err(n) };
        match wrote {
            Ok(()) => {
                self.open = front.last() != Some(&b'\n');
                if let Some(file) = &self.file {
                    if self.open {
                        self.mark = (&*file).stream_position().unwrap_or(0);
                    }
                    if let Some(let_go) = &mut self.let_go {
                        let_go.wrote(file, n);
                    }
                }
                self.text.drain(..n);
            }
            Err(left) => {
                let written = n - left;
                self.lost +=
                    self.text.get(written..).unwrap_or_default().iter().filter(|&&b| b == b'\n').count() as u64;
                self.cut |= match written.checked_sub(1).and_then(|i| self.text.get(i)) {
                    Some(&last) => last != b'\n',
                    None => self.open,
                };
                self.open = false;
                self.text.clear();
            }
        }
        self.held = self.held.saturating_sub(n).min(self.text.len());
        if self.text.is_empty() && self.text.capacity() > REUSE_CAPACITY {
            self.text = Vec::with_capacity(WAKE_BYTES);
        }
    }

    /// When the last write ended inside a line and the file has been truncated since
    /// (`logrotate`'s `copytruncate`), drops the rest of that line, counted as lost: its start
    /// went with the old file, and its rest would begin the new one as a fragment (a broken
    /// JSON line for whatever reads the log). Returns how many bytes it dropped from the front
    /// of the lines.
    fn drop_cut_line(&mut self) -> usize {
        let Some(file) = self.file.as_ref().filter(|_| self.open) else {
            return 0;
        };
        if !file.metadata().is_ok_and(|m| m.len() < self.mark) {
            return 0;
        }
        let rest = self.text.iter().position(|&b| b == b'\n').map_or(self.text.len(), |i| i + 1);
        self.text.drain(..rest);
        self.open = false;
        self.lost += 1;
        rest
    }
}

/// Lets go of a log file's page cache behind the writer: what the log wrote more than
/// [`LET_GO_KEEP`] ago is written back and dropped from memory, a [`LET_GO_EVERY`] at a time.
/// Only in a process under a memory limit ([`memory_limited`]): there the page cache counts
/// against the limit, and when the limit is reached the kernel reclaims it from whichever of
/// the process's threads allocates, requests included. Without a limit the pages are left to
/// the kernel, which reclaims clean ones in the background as it does any program's writes:
/// the calls cost the writer about 0.1 µs a request, and their runs of up to 0.7 ms on the core
/// the writer shares with requests show in the log's p99 (bench/README.md).
///
/// Without it, every line stays in the page cache until memory runs short: a busy log fills
/// gigabytes with lines nobody reads again, counted in a container's memory cgroup, and every
/// 4 KiB it writes lands in a page of memory it has not used before. With it, the pages it
/// drops go back to the free lists and are soon given to the file again: the log reuses some
/// 18 MB. That may matter most on a VM whose host takes freed memory back (free page reporting,
/// balloons): on the test VM, in spells, copying the lines into the page cache took 80 % of the
/// writer's time, which fits pages the host backs again as they are written (bench/README.md).
/// No spell has come to a build with this since; one came to a build with it switched off, in a
/// run with no such build beside it, so whether it keeps spells away is not measured. In a
/// paired run, switched off, the writer cost about 0.1 µs a request less.
///
/// `POSIX_FADV_DONTNEED` starts the writeback of a range's dirty pages and drops its clean ones,
/// so each call covers the [`LET_GO_BEHIND`] before its end again: pages whose writeback an
/// earlier call started are dropped by a later one. The advice is only advice: when it fails
/// (no file system refuses it for a regular file) the lines are written all the same.
#[derive(Debug, Default)]
struct LetGo {
    /// Where the last call's range ended.
    upto: u64,
    /// Bytes written since the last call.
    since: u64,
}

impl LetGo {
    /// Counts `n` bytes written to `file`; after each [`LET_GO_EVERY`] lets go of the file's
    /// pages up to [`LET_GO_KEEP`] before its offset. A file truncated under the writer
    /// (`logrotate`'s `copytruncate`) starts over from its new end (when it is open to append:
    /// else the offset, and these ranges, go on from where they were).
    fn wrote(&mut self, file: &File, n: usize) {
        self.since += n as u64;
        if self.since < LET_GO_EVERY {
            return;
        }
        self.since = 0;
        let Ok(at) = (&*file).stream_position() else { return };
        let end = at.saturating_sub(LET_GO_KEEP);
        // Below the last range's end only when the file was truncated: then from its new end.
        let from = self.upto.min(end).saturating_sub(LET_GO_BEHIND);
        if let Some(len) = std::num::NonZeroU64::new(end - from) {
            let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
        }
        self.upto = end;
    }
}

/// Whether a memory limit applies to this process: a cgroup of its, or an ancestor of that
/// cgroup, with `memory.max` or `memory.high` set (cgroup v2) or `memory.limit_in_bytes`
/// (cgroup v1). There a log file's page cache counts against the limit ([`LetGo`]). Read once,
/// when the writer starts; a hierarchy it cannot read counts as no limit.
fn memory_limited() -> bool {
    std::fs::read_to_string("/proc/self/cgroup")
        .is_ok_and(|cgroups| limited_in(std::path::Path::new("/sys/fs/cgroup"), &cgroups))
}

/// [`memory_limited`] for `/proc/self/cgroup`'s text `cgroups`, with the hierarchies mounted
/// under `root`: the v2 one at `root` itself, v1's memory controller at `root/memory`. From
/// the process's cgroup up to the hierarchy's root (in a container with a cgroup namespace of
/// its own the cgroup reads `/` and the root is its own; without one, a path not found there is
/// looked for higher up).
fn limited_in(root: &std::path::Path, cgroups: &str) -> bool {
    cgroups.lines().any(|line| {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let (top, files): (std::path::PathBuf, &[&str]) = match controllers {
            "" => (root.to_path_buf(), &["memory.max", "memory.high"]),
            c if c.split(',').any(|c| c == "memory") => (root.join("memory"), &["memory.limit_in_bytes"]),
            _ => return false,
        };
        // A cgroup outside this process's cgroup namespace reads `/../..`: the root of the
        // hierarchy mounted here (the namespace's, not an ancestor) is taken as the container's.
        let outside = std::path::Path::new(path).components().any(|c| c == std::path::Component::ParentDir);
        let mut dir = if outside { top.clone() } else { top.join(path.trim_start_matches('/')) };
        loop {
            let set = |f: &&str| std::fs::read_to_string(dir.join(f)).is_ok_and(|v| is_limit(v.trim()));
            if files.iter().any(set) {
                return true;
            }
            if dir == top || !dir.pop() {
                return false;
            }
        }
    })
}

/// A limit file's value that limits: not `max` (v2's none), and under 2^62 bytes (v1 writes
/// its none as the largest page-aligned `i64`).
fn is_limit(value: &str) -> bool {
    value.parse::<u64>().is_ok_and(|bytes| bytes < 1 << 62)
}

/// Makes `fd` a pipe of [`PIPE_BYTES`] (else [`PIPE_BYTES_FALLBACK`]) when it is a smaller
/// pipe; a pipe the system will not widen stays as it is (the log works the same, with more
/// wake-ups). Returns the pipe's size after; `None` when `fd` is not a pipe.
fn widen_pipe(fd: std::os::fd::BorrowedFd<'_>) -> Option<usize> {
    let stat = rustix::fs::fstat(fd).ok()?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Fifo {
        return None;
    }
    let size = rustix::pipe::fcntl_getpipe_size(fd).ok()?;
    let larger = [PIPE_BYTES, PIPE_BYTES_FALLBACK].into_iter().filter(|&want| want > size);
    Some(larger.map(|want| rustix::pipe::fcntl_setpipe_size(fd, want)).find_map(Result::ok).unwrap_or(size))
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
/// or sooner for a full chunk or a flush. Returns the flushes to answer after the sweep (none
/// when that is not why); `None` once every [`LogWriter`] is gone. Holds `Shared` only while it
/// looks, so the last `LogWriter` going drops it (and unparks this thread).
fn wait(weak: &Weak<Shared>, next: Option<Instant>) -> Option<Vec<SyncSender<()>>> {
    loop {
        let shared = weak.upgrade()?;
        let why = shared.bell.swap(0, SeqCst);
        let flushes = match why & RING_FLUSH {
            0 => Vec::new(),
            _ => lock(&shared.flushes).as_mut().map(std::mem::take).unwrap_or_default(),
        };
        let now = Instant::now();
        // An entry that found the writer asleep just before it woke is no reason to sweep
        // before `next`.
        let lines = why & RING_LINES != 0 && next.is_none();
        if why & (RING_FULL | RING_FLUSH) != 0 || lines || next.is_some_and(|at| now >= at) {
            return Some(flushes);
        }
        drop(shared);
        // A ring between the swap above and here, or the drop of `Shared` (maybe the one just
        // above), leaves the unpark's token: no sleep then.
        match next {
            None => std::thread::park(),
            Some(at) => std::thread::park_timeout(at.saturating_duration_since(now)),
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
                // A thread that went quiet after a burst gives back the large chunk it was
                // handed (freed below, once its lock is let go).
                if theirs.capacity() > REUSE_CAPACITY {
                    std::mem::swap(&mut *theirs, &mut chunk);
                } else {
                    out.spare.push(chunk);
                }
                continue;
            }
            // Behind this thread: its next chunk comes as large as it will need, so the thread
            // does not grow it by reallocating, a copy of up to megabytes (and a page fault for
            // each page of the copy) inside one request. Made with the lock let go: the thread
            // may be waiting for it.
            let want = doubled(theirs.len(), shared.bound);
            if theirs.len() > REUSE_CAPACITY && chunk.capacity() < want {
                drop(theirs);
                out.spare.push(std::mem::replace(&mut chunk, Vec::with_capacity(want)));
                theirs = lock(&slot.chunk);
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
    use std::sync::mpsc::Receiver;
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
            w2.append_line(6, move |chunk| {
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

    /// A `Write` that says when it is dropped: the writer thread, which owns it, has ended.
    struct Ends(Sink, SyncSender<()>);

    impl Write for Ends {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.write(data)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Drop for Ends {
        fn drop(&mut self) {
            let _ = self.1.try_send(());
        }
    }

    #[test]
    fn the_writer_ends_when_the_last_handle_goes_and_flushes_from_many_threads_are_answered() {
        let sink = Sink::default();
        let (tx, ended) = mpsc::sync_channel(1);
        let (w, guard) = LogWriter::start(Box::new(Ends(sink.clone(), tx)), LogFormat::Text, true).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (w, sink) = (w.clone(), sink.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let line = format!("{t} {i}\n");
                        w.send(line.as_bytes());
                        w.flush(Duration::from_secs(10));
                        assert!(sink.text().contains(&line), "{line:?} not out after its flush");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(sink.text().lines().count(), 200);
        assert!(ended.try_recv().is_err(), "the writer ended while handles were left");
        drop(w);
        drop(guard);
        assert!(ended.recv_timeout(Duration::from_secs(10)).is_ok(), "the writer thread did not end");
    }

    /// A `Write` that panics: a bug in the writer thread, which then ends.
    struct Panics;

    impl Write for Panics {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            panic!("the writer thread's output panics (a test)")
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_flush_does_not_wait_out_its_bound_for_a_writer_that_ended() {
        let (w, _guard) = LogWriter::start(Box::new(Panics), LogFormat::Text, true).unwrap();
        w.send(b"ends the writer\n");
        for _ in 0..2 {
            let started = Instant::now();
            w.flush(Duration::from_secs(60));
            assert!(started.elapsed() < Duration::from_secs(30), "a flush waited for an ended writer");
        }
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

    /// A writer whose output holds each write until `go` is sent (or dropped), the lines it
    /// wrote, and `go`.
    fn stuck_writer() -> (LogWriter, FlushGuard, Sink, mpsc::Sender<()>) {
        let sink = Sink::default();
        let (go_tx, go_rx) = mpsc::channel();
        let (w, guard) = LogWriter::start(Box::new(Stuck(go_rx, sink.clone())), LogFormat::Text, true).unwrap();
        (w, guard, sink, go_tx)
    }

    /// A line of `len` bytes: `byte` repeated, then a newline.
    fn line_of(byte: u8, len: usize) -> Vec<u8> {
        [vec![byte; len - 1], b"\n".to_vec()].concat()
    }

    /// A worker's share of the log's bytes: the whole bound for a few workers, less with more,
    /// never under its floor; the chunks of all workers and the one the writer is writing stay
    /// within `LOG_BYTES` until the floor takes over.
    #[test]
    fn a_workers_share_of_the_logs_bytes_shrinks_with_their_number_within_its_bounds() {
        for few in [0, 1, 2, 3] {
            assert_eq!(thread_bytes(few), THREAD_BYTES, "{few} workers");
        }
        assert!(thread_bytes(4) < THREAD_BYTES, "more than 3 workers share");
        assert_eq!(thread_bytes(7), LOG_BYTES / 8);
        assert!(49 * thread_bytes(48) > LOG_BYTES, "more than 47 workers: the floor holds");
        assert_eq!(thread_bytes(47), MIN_THREAD_BYTES);
        assert_eq!(thread_bytes(1000), MIN_THREAD_BYTES);
        assert_eq!(thread_bytes(usize::MAX), MIN_THREAD_BYTES);
        for workers in 1..=200 {
            let all = (workers + 1) * thread_bytes(workers);
            assert!(all <= LOG_BYTES.max((workers + 1) * MIN_THREAD_BYTES), "{workers} workers: {all}");
        }
    }

    /// A writer started for many workers drops a thread's lines at that thread's share, not at
    /// `THREAD_BYTES`.
    #[test]
    fn a_chunk_is_bounded_by_the_share_the_writer_was_started_with() {
        let sink = Sink::default();
        let (go_tx, go_rx) = mpsc::channel();
        let bound = thread_bytes(64);
        let stuck = Box::new(Stuck(go_rx, sink.clone()));
        let (w, guard) = LogWriter::spawn(stuck, None, LogFormat::Text, true, bound).unwrap();
        let line = line_of(b'x', 1000);
        let mut sent = 0;
        while w.dropped() == 0 && sent < 10 * bound / line.len() {
            w.send(&line);
            sent += 1;
        }
        assert!(w.dropped() > 0, "lines dropped before {sent} of them");
        // At most two chunks' worth went in: the one the stuck writer took and this thread's.
        assert!(sent * (line.len() + FRAME) <= 2 * bound + line.len(), "{sent} lines in a bound of {bound}");
        assert!(lock(&only_slot(&w).chunk).capacity() <= bound, "a chunk never grows past its share");
        drop(go_tx);
        drop(guard);
    }

    #[test]
    fn a_full_chunk_drops_and_counts_instead_of_waiting() {
        let (w, guard, sink, go_tx) = stuck_writer();
        // The writer takes at most one chunk before `Stuck` holds it; this thread's chunk then
        // holds one of these lines (two and their frames are over the bound): five cannot fit.
        let big = line_of(b'x', THREAD_BYTES / 2);
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

    #[test]
    fn a_thread_the_writer_is_behind_gets_a_chunk_it_need_not_grow() {
        let (w, guard, sink, go_tx) = stuck_writer();
        let line = line_of(b'x', 1000);
        let slot = || only_slot(&w);
        let room = || lock(&slot().chunk).capacity();
        // Until the chunk is full and lines are dropped; the writer sits in its first write.
        let mut sent = 0;
        while w.dropped() == 0 {
            w.send(&line);
            sent += 1;
            assert!(room() <= THREAD_BYTES, "a full chunk is never grown past its bound");
        }
        let full = lock(&slot().chunk).len();
        assert!(full > THREAD_BYTES - line.len() - FRAME && full <= THREAD_BYTES, "{full}");
        // The writer's writes go through one at a time until its next sweep takes the full
        // chunk and hands the thread one as large.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&slot().chunk).len() == full {
            assert!(Instant::now() < deadline, "the writer never took the full chunk");
            go_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(room() >= THREAD_BYTES, "the thread's next chunk holds {} bytes", room());
        drop(go_tx);
        drop(guard);
        let written = sink.text().len() as u64;
        assert_eq!(written, (sent - w.dropped()) * line.len() as u64, "every line kept is written whole");
    }

    /// The slot of the one thread that has logged to `w`.
    fn only_slot(w: &LogWriter) -> Arc<Slot> {
        Arc::clone(lock(&w.shared.slots).first().unwrap())
    }

    /// An entry longer than the room a chunk has left makes room by the chunk's rule (twice,
    /// up to the bound), not by `Vec`'s doubling, which would take a chunk near its bound to
    /// twice the bound (a reallocation of megabytes inside a request); one that would overfill
    /// the chunk is dropped before it is written.
    #[test]
    fn an_entry_longer_than_the_room_left_never_grows_a_chunk_past_its_bound() {
        let (w, guard, sink, go_tx) = stuck_writer();
        let small = line_of(b's', 1000);
        let large = line_of(b'L', 100 * 1024);
        // Until a small line is dropped too: the writer sits in its first write.
        let (mut kept, mut larges, mut full) = (0, 0, false);
        while !full {
            for line in [&small, &large] {
                let dropped = w.dropped();
                w.send(line);
                let room = lock(&only_slot(&w).chunk).capacity();
                assert!(room <= THREAD_BYTES, "a chunk of {room} bytes, past its bound");
                if w.dropped() == dropped {
                    kept += line.len();
                    larges += usize::from(line.len() == large.len());
                } else {
                    full |= line.len() == small.len();
                }
            }
        }
        drop(go_tx);
        drop(guard);
        assert!(larges > 1);
        assert_eq!(sink.text().len(), kept, "every line kept is written whole");
    }

    /// A thread the writer handed a large chunk (it was behind) and that then logs nothing
    /// more gives that chunk back at the next sweep: the memory of a burst returns.
    #[test]
    fn a_thread_that_goes_quiet_after_a_burst_gives_its_large_chunk_back() {
        let (w, guard, sink, go_tx) = stuck_writer();
        let line = line_of(b'x', 1000);
        // The writer takes the first line and sits in its write; the rest gather, past what a
        // chunk is reused at, so the writer hands this thread a chunk twice as large.
        for _ in 0..300 {
            w.send(&line);
        }
        assert!(lock(&only_slot(&w).chunk).len() > REUSE_CAPACITY);
        drop(go_tx);
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&only_slot(&w).chunk).capacity() > REUSE_CAPACITY {
            assert!(Instant::now() < deadline, "the quiet thread still holds a large chunk");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(guard);
        assert_eq!(sink.text().len(), 300 * line.len());
        assert_eq!(w.dropped(), 0);
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

    /// Access-log lines appended by a thread come out in the writer's format, in order with
    /// the lines it sent around them.
    #[test]
    fn access_lines_come_out_in_order_with_the_lines_around_them() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::start(Box::new(sink.clone()), LogFormat::Json, true).unwrap();
        for status in 200..300 {
            w.send(format!("before {status}\n").as_bytes());
            access_line(status, b"/cart").append_to(&w, UnixMicros::of(SystemTime::now()));
        }
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
        assert_eq!(w.dropped(), 0);
    }

    /// An access line after a quiet spell wakes the writer and is written without a flush, in
    /// the writer's format; a line over a chunk's bound is dropped and counted, and the next one
    /// is written as usual.
    #[test]
    fn an_access_line_reaches_the_output_without_a_flush_and_one_too_big_is_dropped() {
        let (tx, rx) = mpsc::sync_channel(16);
        let (w, _guard) = LogWriter::start(Box::new(Told(tx)), LogFormat::Text, true).unwrap();
        let huge = vec![b'p'; THREAD_BYTES];
        let (huge, cart) = (access_line(404, &huge), access_line(200, b"/cart"));
        huge.append_to(&w, UnixMicros::of(SystemTime::now()));
        assert_eq!(w.dropped(), 1);
        cart.append_to(&w, UnixMicros::of(SystemTime::now()));
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
        let mut out = Output::new(Box::new(sink.clone()), None, false);
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

    #[test]
    fn a_pipe_on_stderr_is_widened_and_nothing_else_is_touched() {
        use std::os::fd::AsFd;
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        let before = rustix::pipe::fcntl_getpipe_size(&writer).unwrap();
        assert!(before < PIPE_BYTES, "a new pipe holds {before} bytes");
        assert_eq!(widen_pipe(writer.as_fd()), Some(PIPE_BYTES));
        assert_eq!(rustix::pipe::fcntl_getpipe_size(&reader).unwrap(), PIPE_BYTES);
        let text = b"a line\n";
        assert_eq!(rustix::io::write(&writer, text).unwrap(), text.len());
        let mut back = [0; 16];
        assert_eq!(rustix::io::read(&reader, &mut back).unwrap(), text.len());
        // A pipe as large already is left as it is.
        assert_eq!(widen_pipe(reader.as_fd()), Some(PIPE_BYTES));
        // A regular file is left alone.
        let file = TempFile::new("not-a-pipe");
        assert_eq!(widen_pipe(file.open().as_fd()), None);
    }

    /// A file of its own in the temp directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str) -> TempFile {
            TempFile::at(std::env::temp_dir().join(format!("routeid-{}-{name}", std::process::id())))
        }
        fn at(path: std::path::PathBuf) -> TempFile {
            File::create(&path).unwrap();
            TempFile(path)
        }
        fn open(&self) -> File {
            std::fs::OpenOptions::new().append(true).open(&self.0).unwrap()
        }
        fn text(&self) -> String {
            std::fs::read_to_string(&self.0).unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Numbered lines of 300 bytes, `from..to`.
    fn numbered(range: std::ops::Range<usize>) -> String {
        range.map(|i| format!("{i:06} {}\n", "x".repeat(292))).collect()
    }

    /// One entry of a chunk, as a thread appends it.
    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        [&[kind][..], &(payload.len() as u32).to_le_bytes(), payload].concat()
    }

    /// A chunk of [`numbered`] lines, an entry each.
    fn chunk(range: std::ops::Range<usize>) -> Vec<u8> {
        numbered(range).split_inclusive('\n').flat_map(|l| frame(LINE, l.as_bytes())).collect()
    }

    /// A steady stream to a file: each write ends on a WAKE_BYTES boundary of the file (the file
    /// starts off one), the lines past the last boundary wait for the next sweep and no longer,
    /// and the file holds every line, whole and in order.
    #[test]
    fn a_steady_stream_to_a_file_is_written_on_its_boundaries_and_held_one_sweep_at_most() {
        let f = TempFile::new("aligned.log");
        // The writer's output and its offset: one open file (stderr and its copy), appending.
        let mut file = f.open();
        file.write_all(b"before\n").unwrap();
        let mut out = Output::new(Box::new(file.try_clone().unwrap()), Some(file), false);
        let len = || std::fs::metadata(&f.0).unwrap().len();
        // 100 KB: one write up to the first boundary; the rest held for the next sweep.
        assert_eq!(out.lines(&chunk(0..333)), 0);
        assert_eq!(len(), WAKE_BYTES as u64);
        out.end_sweep(true);
        assert_eq!(len(), WAKE_BYTES as u64, "held: less than a WAKE_BYTES past the boundary");
        assert!(out.held > 0 && out.held < WAKE_BYTES);
        // The next sweep writes a WAKE_BYTES again, which takes the held lines along.
        assert_eq!(out.lines(&chunk(333..666)), 0);
        assert_eq!(len(), 3 * WAKE_BYTES as u64);
        out.end_sweep(true);
        assert_eq!(len(), 3 * WAKE_BYTES as u64);
        // A sweep with less to write (the stream slowed down) writes all it has.
        assert_eq!(out.lines(&chunk(666..670)), 0);
        out.end_sweep(true);
        assert_eq!(f.text(), format!("before\n{}", numbered(0..670)));
        assert_eq!((out.held, out.text.len(), out.lost), (0, 0, 0));
        // Lines held when the stream stops go out with the sweep that finds nothing more.
        assert_eq!(out.lines(&chunk(670..1000)), 0);
        out.end_sweep(true);
        assert!(out.held > 0);
        out.end_sweep(false);
        assert_eq!(f.text(), format!("before\n{}", numbered(0..1000)));
    }

    /// Not a file (a pipe, a terminal): every sweep writes all it made, as before.
    #[test]
    fn a_stream_to_no_file_is_written_whole_at_every_sweep() {
        let sink = Sink::default();
        let mut out = Output::new(Box::new(sink.clone()), None, false);
        assert_eq!(out.lines(&chunk(0..333)), 0);
        assert_eq!(sink.text(), numbered(0..219), "the first WAKE_BYTES of whole lines");
        out.end_sweep(true);
        assert_eq!(sink.text(), numbered(0..333));
    }

    /// A write that fails after one that ended on a boundary inside a line: the lines it lost
    /// are counted (the one cut included) and that line is ended before the next write.
    #[test]
    fn a_failed_write_after_a_boundary_inside_a_line_ends_that_line() {
        let f = TempFile::new("aligned-fail.log");
        // The offset the writer reads stays at 100: the lines go to `sink`.
        let mut at = f.open();
        at.write_all(&[b'.'; 100]).unwrap();
        let sink = Scripted::new(&[Some(usize::MAX), None], std::io::ErrorKind::BrokenPipe);
        let mut out = Output::new(Box::new(sink.clone()), Some(at), false);
        assert_eq!(out.lines(&chunk(0..300)), 0);
        let first = WAKE_BYTES - 100;
        assert_eq!(sink.text().len(), first, "up to the file's boundary, inside line {}", first / 300);
        out.end_sweep(false);
        assert_eq!(out.lost, 300 - first as u64 / 300, "the cut line and those after it");
        out.lines(&frame(LINE, b"after\n"));
        out.end_sweep(false);
        let all = numbered(0..300);
        assert_eq!(sink.text(), format!("{}\nafter\n", &all[..first]));
    }

    /// A write that fails after one that cut a line: the cut line is ended first, and while
    /// that fails too nothing is written after it (the next line would go on the cut one).
    #[test]
    fn a_cut_line_that_cannot_be_ended_takes_nothing_after_it() {
        let sink = Scripted::new(&[Some(10), None, None], std::io::ErrorKind::BrokenPipe);
        let mut out = Output::new(Box::new(sink.clone()), None, false);
        out.lines(&frame(LINE, b"first line, cut here\n"));
        out.end_sweep(false);
        assert_eq!((out.lost, out.cut), (1, true));
        // Ending the cut line fails: the next line is lost with it, not written onto it.
        out.lines(&frame(LINE, b"second\n"));
        out.end_sweep(false);
        assert_eq!((out.lost, out.cut), (2, true));
        out.lines(&frame(LINE, b"third\n"));
        out.end_sweep(false);
        assert_eq!(sink.text(), "first line\nthird\n");
        assert_eq!((out.lost, out.cut), (2, false));
    }

    /// `logrotate`'s `copytruncate` after a write that ended inside a line (on a boundary of
    /// the file): the rest of that line is dropped and counted, so the new file starts with a
    /// whole line.
    #[test]
    fn a_file_truncated_after_a_write_inside_a_line_starts_with_a_whole_line() {
        let f = TempFile::new("truncated.log");
        let mut file = f.open();
        file.write_all(b"before\n").unwrap();
        let mut out = Output::new(Box::new(file.try_clone().unwrap()), Some(file), false);
        assert_eq!(out.lines(&chunk(0..333)), 0);
        // Up to the file's first boundary: lines 0 to 217 whole, 218 cut.
        assert_eq!(std::fs::metadata(&f.0).unwrap().len(), WAKE_BYTES as u64);
        assert!(out.open);
        std::fs::OpenOptions::new().write(true).open(&f.0).unwrap().set_len(0).unwrap();
        out.end_sweep(false);
        assert_eq!(f.text(), numbered(219..333));
        assert_eq!(out.lost, 1, "the cut line");
        // Not truncated: a write that ended inside a line goes on with it.
        assert_eq!(out.lines(&chunk(333..666)), 0);
        assert!(out.open);
        out.end_sweep(false);
        assert_eq!(f.text(), numbered(219..666));
        assert_eq!(out.lost, 1);
    }

    /// The writer's own thread, fed faster than it writes, to a file: the file holds every line
    /// whole and in order, and the writes of the steady stream end on WAKE_BYTES boundaries.
    #[test]
    fn a_fast_stream_to_a_file_arrives_whole_with_its_writes_on_the_boundaries() {
        /// Counts the writes and those that leave the file's end on a boundary; the first write
        /// waits for the gate (until every line is sent: then the writer has a steady stream to
        /// write, however the test threads are scheduled).
        struct Counted(File, Arc<(AtomicU64, AtomicU64)>, Option<Receiver<()>>);
        impl Write for Counted {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                if let Some(gate) = self.2.take() {
                    let _ = gate.recv();
                }
                let n = self.0.write(data)?;
                let end = self.0.metadata()?.len();
                self.1.0.fetch_add(1, Relaxed);
                self.1.1.fetch_add(u64::from(end % WAKE_BYTES as u64 == 0), Relaxed);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let f = TempFile::new("aligned-fast.log");
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let file = f.open();
        let (open, gate) = mpsc::channel();
        let out = Box::new(Counted(file.try_clone().unwrap(), Arc::clone(&counts), Some(gate)));
        let (w, guard) = LogWriter::spawn(out, Some(file), LogFormat::Text, true, THREAD_BYTES).unwrap();
        // 3.6 MB, under THREAD_BYTES: nothing is dropped however far behind the writer falls.
        let lines = numbered(0..12_000);
        for line in lines.split_inclusive('\n') {
            w.send(line.as_bytes());
        }
        open.send(()).unwrap();
        drop(guard);
        assert_eq!((w.dropped(), f.text() == lines), (0, true));
        let (writes, on_boundary) = (counts.0.load(Relaxed), counts.1.load(Relaxed));
        // About 55 writes of a WAKE_BYTES, plus one at each sweep that wrote everything.
        assert!(on_boundary >= 45 && on_boundary * 10 >= writes * 8, "{on_boundary} of {writes} writes on a boundary");
    }

    /// A memory limit is found in cgroup v2 (`memory.max`, `memory.high`) or v1
    /// (`memory.limit_in_bytes`), on the process's cgroup or an ancestor's, or where a
    /// container's namespace mounts its own cgroup at the root; `max`, v1's unlimited value,
    /// anything unreadable and other controllers' lines are no limit.
    #[test]
    fn a_memory_limit_is_found_in_either_cgroup_version_and_its_ancestors() {
        let root = std::env::temp_dir().join(format!("routeid-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let put = |rel: &str, value: &str| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, value).unwrap();
        };
        put("memory.max", "max\n");
        put("kubepods/pod1/memory.max", "max\n");
        put("kubepods/pod1/memory.high", "max\n");
        put("memory/memory.limit_in_bytes", "9223372036854771712\n");
        put("memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
        let v2 = "0::/kubepods/pod1/ctr\n";
        let v1 = "9:name=systemd:/\n4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n0::/\n";
        assert!(!limited_in(&root, v2));
        assert!(!limited_in(&root, v1));
        assert!(!limited_in(&root, ""));
        assert!(!limited_in(&root, "garbage\n4:memory\n"));
        put("kubepods/pod1/ctr/memory.max", "536870912\n");
        assert!(limited_in(&root, v2), "the cgroup's own memory.max");
        put("kubepods/pod1/ctr/memory.max", "max\n");
        put("kubepods/memory.high", "1073741824\n");
        assert!(limited_in(&root, v2), "an ancestor's memory.high");
        assert!(!limited_in(&root, "0::/elsewhere\n"), "not an ancestor");
        put("memory/memory.limit_in_bytes", "268435456\n");
        assert!(limited_in(&root, v1), "v1, the limit above the process's cgroup");
        assert!(limited_in(&root, "4:memory:/not/mounted/here\n"), "a namespace's own cgroup at the root");
        assert!(!limited_in(&root, "1:cpu,cpuacct:/\n"), "another controller");
        assert!(limited_in(&root, "4:cpu,memory:/docker/abc\n"), "memory mounted with another");
        assert!(limited_in(&root, "4:memory:/../../x\n"), "outside the namespace: the root's limit");
        assert!(!limited_in(&root, "0::/../../kubepods/pod1/ctr\n"), "outside the namespace: not the path");
        put("a:b/memory.max", "536870912\n");
        assert!(limited_in(&root, "0::/a:b\n"), "a cgroup with a colon in its name");
        std::fs::remove_dir_all(&root).unwrap();
        for (value, limits) in
            [("max", false), ("0", true), ("536870912", true), ("9223372036854771712", false), ("", false)]
        {
            assert_eq!(is_limit(value), limits, "{value:?}");
        }
    }

    /// Whether the page holding byte `at` of `file` is in the page cache: a read that may not
    /// wait for the disk (`RWF_NOWAIT`) fails with `EAGAIN` for a page that is not.
    fn cached(file: &File, at: u64) -> bool {
        let mut byte = [0u8; 1];
        let mut bufs = [std::io::IoSliceMut::new(&mut byte)];
        match rustix::io::preadv2(file, &mut bufs, at, rustix::io::ReadWriteFlags::NOWAIT) {
            Ok(n) => n == 1,
            Err(rustix::io::Errno::AGAIN) => false,
            Err(e) => panic!("preadv2 at {at}: {e}"),
        }
    }

    /// Writes `mib` MiB of 1 KiB lines through `out`, a MiB per write, each written back to disk
    /// before the next (so every page a call of `LetGo` covers is clean and is dropped).
    fn write_mib(out: &mut Output, reader: &File, mib: usize) {
        let line = [&[b'x'; 1023][..], b"\n"].concat();
        for _ in 0..mib {
            for _ in 0..1024 {
                out.text.extend_from_slice(&line);
            }
            out.write();
            reader.sync_data().unwrap();
        }
    }

    #[test]
    fn a_log_file_keeps_only_its_end_in_the_page_cache_and_starts_over_when_truncated() {
        // Next to the test binary, on the build's disk: tmpfs would keep every page (they are
        // the file's only copy), and the temp directory may be one.
        let path = std::env::current_exe().unwrap().with_file_name(format!("routeid-let-go-{}", std::process::id()));
        let file = TempFile::at(path);
        let writer = file.open();
        let reader = File::open(&file.0).unwrap();
        const TMPFS_MAGIC: u64 = 0x0102_1994;
        let fs_type = u64::try_from(rustix::fs::fstatfs(&reader).unwrap().f_type).ok();
        assert_ne!(fs_type, Some(TMPFS_MAGIC), "{:?} is on tmpfs: build in a directory on disk", file.0);
        let mut out = Output::new(Box::new(writer.try_clone().unwrap()), Some(writer), true);
        const MIB: u64 = 1024 * 1024;
        let (keep, page) = (LET_GO_KEEP, 4096);
        // What a file of `len` bytes must hold in memory and must not, after the writes above.
        let check = |len: u64| {
            for at in [0, (len - keep) / 2, len - keep - page] {
                assert!(!cached(&reader, at), "byte {at} of {len} is still cached");
            }
            for at in [len - keep, len - 1] {
                assert!(cached(&reader, at), "byte {at} of {len} was dropped");
            }
        };
        write_mib(&mut out, &reader, (keep / MIB) as usize + 12);
        check(keep + 12 * MIB);
        // Truncated under the writer (`copytruncate`): it appends from 0 again and lets go of
        // the new file's pages behind its last few MiB in the same way.
        std::fs::OpenOptions::new().write(true).open(&file.0).unwrap().set_len(0).unwrap();
        write_mib(&mut out, &reader, (keep / MIB) as usize + 4);
        assert_eq!(reader.metadata().unwrap().len(), keep + 4 * MIB);
        check(keep + 4 * MIB);
    }
}
