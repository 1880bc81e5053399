//! The access log line: formatted by hand, by the thread that served the request, straight into
//! its chunk of [`crate::log_writer`].
//!
//! A `tracing` event formatted by tracing-subscriber cost about 5 µs per request (field
//! visitors, a `serde_json` serializer per event, a fresh timestamp string). Here the line is
//! written field by field into the thread's chunk ([`AccessLine::append_to`]) — the same fields,
//! order and escaping, in JSON and in plain text, as the `tracing` event it replaces (the tests
//! compare the two) — and the log's writer thread only copies the chunks' lines and writes them.
//! Formatting where the request was served costs each request the same small amount, where a
//! writer that formatted a chunk of lines at a time paused requests on a shared core for as long
//! as that took, which showed in the tail (bench/README.md). The timestamp's date and time of
//! day are formatted once per second, and the fields of a member that stay the same from one of
//! its answers to the next once per member and thread ([`MemberFields`]).

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cli::LogFormat;
use crate::log_writer::LogWriter;

/// One request's access-log fields, in the order they are written. Strings are bytes as the
/// request had them: UTF-8 is checked only for a string that needs escaping, and one that is
/// not UTF-8 is logged as `-`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccessLine<'a> {
    pub(crate) method: &'a [u8],
    pub(crate) host: &'a [u8],
    pub(crate) path: &'a [u8],
    pub(crate) status: u16,
    /// Omitted when unknown.
    pub(crate) bytes_in: Option<u64>,
    /// Omitted when unknown.
    pub(crate) bytes_out: Option<u64>,
    pub(crate) duration_us: u64,
    pub(crate) client: IpAddr,
    pub(crate) pool: &'a [u8],
    /// Omitted when no member was chosen.
    pub(crate) member_address: Option<SocketAddr>,
    pub(crate) attempts: usize,
    pub(crate) session_sticky: &'a [u8],
    pub(crate) session_route: &'a [u8],
    pub(crate) worker_name: &'a [u8],
    pub(crate) worker_route: &'a [u8],
    pub(crate) route_changed: bool,
    pub(crate) route_source: &'a [u8],
    pub(crate) balanced: &'a [u8],
    pub(crate) malformed_route: bool,
}

/// The fields of a line that read the same on every line a member answers — `pool` and
/// `member_address`, then `BALANCER_NAME`, `BALANCER_WORKER_NAME` and
/// `BALANCER_WORKER_ROUTE` — formatted once, in the log's format, and copied whole after that:
/// five of the line's twenty fields, about a fifth of its formatting. Kept by each thread that
/// logs ([`MemberCache`]); used only for a line whose fields are these (checked per line: five
/// short comparisons).
#[derive(Debug)]
struct MemberFields {
    format: LogFormat,
    pool: Box<[u8]>,
    address: SocketAddr,
    worker_name: Box<[u8]>,
    worker_route: Box<[u8]>,
    /// `pool` and `member_address` (`..split`), then `BALANCER_NAME`, `BALANCER_WORKER_NAME` and
    /// `BALANCER_WORKER_ROUTE`, each with its separator.
    text: Box<[u8]>,
    split: usize,
}

impl MemberFields {
    /// `line`'s member fields in `format`; `None` when the line names no member address.
    fn of(line: &AccessLine<'_>, format: LogFormat) -> Option<MemberFields> {
        let address = line.member_address?;
        let mut text = Vec::new();
        let split = match format {
            LogFormat::Json => {
                line.first_group(&mut Json(&mut text), address);
                let split = text.len();
                line.second_group(&mut Json(&mut text));
                split
            }
            LogFormat::Text => {
                line.first_group(&mut Text(&mut text), address);
                let split = text.len();
                line.second_group(&mut Text(&mut text));
                split
            }
        };
        Some(MemberFields {
            format,
            pool: line.pool.into(),
            address,
            worker_name: line.worker_name.into(),
            worker_route: line.worker_route.into(),
            text: text.into(),
            split,
        })
    }

    /// `pool` and `member_address`.
    fn first(&self) -> &[u8] {
        self.text.get(..self.split).unwrap_or_default()
    }

    /// `BALANCER_NAME` to `BALANCER_WORKER_ROUTE`.
    fn second(&self) -> &[u8] {
        self.text.get(self.split..).unwrap_or_default()
    }

    /// Whether these are `line`'s own fields in `format`.
    fn fit(&self, line: &AccessLine<'_>, format: LogFormat) -> bool {
        self.format == format
            && line.member_address == Some(self.address)
            && *self.pool == *line.pool
            && *self.worker_route == *line.worker_route
            && *self.worker_name == *line.worker_name
    }
}

/// Slots of each logging thread's [`MemberCache`] (a power of two): members it keeps
/// formatted, at most. Each thread that serves requests has its own (about 120 KiB of slots, and a
/// few hundred bytes for each member it keeps), so no lock is shared between workers.
const MEMBER_SLOTS: usize = 1024;

/// A logging thread's [`MemberFields`], one slot per member address and pool (by a hash of
/// both): made at a member's first line, remade when the member there changed. A member whose
/// slot another holds takes it over when the other had no line since it was last passed over
/// (a second chance: a member gone after a rollout frees its slot, two live ones do not take
/// it from each other); until then its lines are formatted in full. So a pool of many members
/// costs a little more formatting, never an allocation per line.
#[derive(Debug)]
struct MemberCache(Box<[Option<Cached>]>);

#[derive(Debug)]
struct Cached {
    fields: MemberFields,
    /// A line used these since another member's line was last turned away from the slot.
    used: bool,
}

impl Default for MemberCache {
    fn default() -> Self {
        MemberCache((0..MEMBER_SLOTS).map(|_| None).collect())
    }
}

impl MemberCache {
    /// `line`'s member fields in `format`, when its member has (or gets) the slot; `None` when
    /// the line names no member address.
    fn fields(&mut self, line: &AccessLine<'_>, format: LogFormat) -> Option<&MemberFields> {
        let address = line.member_address?;
        let slot = self.0.get_mut(slot_of(address, line.pool))?;
        match slot {
            Some(c) if c.fields.fit(line, format) => c.used = true,
            Some(c) if c.used && (c.fields.address != address || *c.fields.pool != *line.pool) => {
                c.used = false;
                return None;
            }
            _ => *slot = Some(Cached { fields: MemberFields::of(line, format)?, used: false }),
        }
        slot.as_ref().map(|c| &c.fields)
    }
}

/// A member's slot in [`MemberCache`]: its address and pool, hashed as FxHash does (a rotate,
/// an xor and a multiply per word).
fn slot_of(address: SocketAddr, pool: &[u8]) -> usize {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(K);
    let ip = match address.ip() {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    let mut h = mix(mix(0, ip), u64::from(address.port()));
    let (words, rest) = pool.as_chunks::<8>();
    for w in words {
        h = mix(h, u64::from_le_bytes(*w));
    }
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    h = mix(h, u64::from_le_bytes(tail) ^ pool.len() as u64);
    // The top bits are the best mixed.
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - MEMBER_SLOTS.trailing_zeros())) as usize
}

/// A field's name with the separator before it and after it, in each format, made at compile
/// time so a field costs one copy for its name.
struct Name {
    /// ` name=`
    text: &'static [u8],
    /// ` name="`
    text_quoted: &'static [u8],
    /// `,"name":`
    json: &'static [u8],
    /// `,"name":"`
    json_quoted: &'static [u8],
}

macro_rules! name {
    ($n:literal) => {
        const {
            &Name {
                text: concat!(" ", $n, "=").as_bytes(),
                text_quoted: concat!(" ", $n, "=\"").as_bytes(),
                json: concat!(",\"", $n, "\":").as_bytes(),
                json_quoted: concat!(",\"", $n, "\":\"").as_bytes(),
            }
        }
    };
}

/// How one format writes a field: after the previous one, with its separator.
trait Fields {
    /// Quoted, escaped when it needs to be; `-` when it is not UTF-8.
    fn str(&mut self, name: &Name, v: &[u8]);
    fn num(&mut self, name: &Name, v: u64);
    fn bool(&mut self, name: &Name, v: bool);
    /// A `Display` value (tracing's `%field`): quoted in JSON, bare in text.
    fn ip(&mut self, name: &Name, v: IpAddr);
    fn addr(&mut self, name: &Name, v: SocketAddr);
    /// Fields formatted already, with their separators.
    fn raw(&mut self, fields: &[u8]);
}

/// `,"name":value`
struct Json<'a>(&'a mut Vec<u8>);
/// ` name=value`
struct Text<'a>(&'a mut Vec<u8>);

impl Fields for Json<'_> {
    fn str(&mut self, name: &Name, v: &[u8]) {
        if plain_bytes(v) {
            self.0.extend_from_slice(name.json_quoted);
            self.0.extend_from_slice(v);
            self.0.push(b'"');
        } else {
            self.0.extend_from_slice(name.json);
            // serde_json escapes exactly as tracing-subscriber's JSON formatter (it uses it).
            let _ = serde_json::to_writer(&mut *self.0, text(v));
        }
    }
    fn num(&mut self, name: &Name, v: u64) {
        self.0.extend_from_slice(name.json);
        write_num(self.0, v);
    }
    fn bool(&mut self, name: &Name, v: bool) {
        self.0.extend_from_slice(name.json);
        self.0.extend_from_slice(if v { b"true" } else { b"false" });
    }
    fn ip(&mut self, name: &Name, v: IpAddr) {
        self.0.extend_from_slice(name.json_quoted);
        write_ip(self.0, v);
        self.0.push(b'"');
    }
    fn addr(&mut self, name: &Name, v: SocketAddr) {
        self.0.extend_from_slice(name.json_quoted);
        write_addr(self.0, v);
        self.0.push(b'"');
    }
    fn raw(&mut self, fields: &[u8]) {
        self.0.extend_from_slice(fields);
    }
}

impl Fields for Text<'_> {
    fn str(&mut self, name: &Name, v: &[u8]) {
        if plain_bytes(v) {
            self.0.extend_from_slice(name.text_quoted);
            self.0.extend_from_slice(v);
            self.0.push(b'"');
        } else {
            self.0.extend_from_slice(name.text);
            let _ = write!(self.0, "{:?}", text(v));
        }
    }
    fn num(&mut self, name: &Name, v: u64) {
        self.0.extend_from_slice(name.text);
        write_num(self.0, v);
    }
    fn bool(&mut self, name: &Name, v: bool) {
        self.0.extend_from_slice(name.text);
        self.0.extend_from_slice(if v { b"true" } else { b"false" });
    }
    fn ip(&mut self, name: &Name, v: IpAddr) {
        self.0.extend_from_slice(name.text);
        write_ip(self.0, v);
    }
    fn addr(&mut self, name: &Name, v: SocketAddr) {
        self.0.extend_from_slice(name.text);
        write_addr(self.0, v);
    }
    fn raw(&mut self, fields: &[u8]) {
        self.0.extend_from_slice(fields);
    }
}

/// A number as `Display` writes it. One digit (attempts, flags, an empty body) and three (a
/// status) are written byte by byte: itoa's text copied over cost a `memcpy` call each.
fn write_num(out: &mut Vec<u8>, v: u64) {
    match v {
        0..10 => out.push(b'0' + v as u8),
        100..1000 => {
            out.extend_from_slice(&[b'0' + (v / 100) as u8, b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8])
        }
        _ => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
    }
}

/// An address as `Display` writes it; IPv4 without the formatting machinery.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, b) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                for (digit, at_least) in [(b / 100, 100), (b / 10 % 10, 10), (b % 10, 0)] {
                    if b >= at_least {
                        text[n] = b'0' + digit;
                        n += 1;
                    }
                }
            }
            out.extend_from_slice(&text[..n]);
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

fn write_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            write_ip(out, IpAddr::V4(*a.ip()));
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(a.port()).as_bytes());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

impl AccessLine<'_> {
    /// The fields after `message`, in the event's order; what tracing would record nothing for
    /// (`None`) is left out. `member`: the member's fields, formatted once.
    fn fields(&self, f: &mut impl Fields, member: Option<&MemberFields>) {
        f.str(name!("method"), self.method);
        f.str(name!("host"), self.host);
        f.str(name!("path"), self.path);
        f.num(name!("status"), u64::from(self.status));
        if let Some(n) = self.bytes_in {
            f.num(name!("bytes_in"), n);
        }
        if let Some(n) = self.bytes_out {
            f.num(name!("bytes_out"), n);
        }
        f.num(name!("duration_us"), self.duration_us);
        f.ip(name!("client"), self.client);
        match member {
            Some(m) => f.raw(m.first()),
            None => {
                f.str(name!("pool"), self.pool);
                if let Some(a) = self.member_address {
                    f.addr(name!("member_address"), a);
                }
            }
        }
        f.num(name!("attempts"), self.attempts as u64);
        f.str(name!("BALANCER_SESSION_STICKY"), self.session_sticky);
        f.str(name!("BALANCER_SESSION_ROUTE"), self.session_route);
        match member {
            Some(m) => f.raw(m.second()),
            None => self.second_group(f),
        }
        f.num(name!("BALANCER_ROUTE_CHANGED"), u64::from(self.route_changed));
        f.str(name!("route_source"), self.route_source);
        f.str(name!("balanced"), self.balanced);
        f.bool(name!("malformed_route"), self.malformed_route);
    }

    /// `pool` and `member_address` at `address`, as [`MemberFields`] keeps them.
    fn first_group(&self, f: &mut impl Fields, address: SocketAddr) {
        f.str(name!("pool"), self.pool);
        f.addr(name!("member_address"), address);
    }

    /// `BALANCER_NAME` to `BALANCER_WORKER_ROUTE`.
    fn second_group(&self, f: &mut impl Fields) {
        f.str(name!("BALANCER_NAME"), self.pool);
        f.str(name!("BALANCER_WORKER_NAME"), self.worker_name);
        f.str(name!("BALANCER_WORKER_ROUTE"), self.worker_route);
    }

    /// Appends the line (with its `\n`) to `out`, stamped `now`, every field formatted here.
    #[cfg(test)]
    fn write(&self, out: &mut Vec<u8>, format: LogFormat, now: SystemTime) {
        self.write_with(out, format, UnixMicros::of(now), None);
    }

    /// Appends the line (with its `\n`) to `out`, stamped `now`; `member`: the member's fields
    /// formatted already, when they are this line's.
    fn write_with(&self, out: &mut Vec<u8>, format: LogFormat, now: UnixMicros, member: Option<&MemberFields>) {
        match format {
            LogFormat::Json => self.write_json(out, now, member),
            LogFormat::Text => self.write_text(out, now, member),
        }
    }

    /// Emits the line as a `tracing` event: for an embedding without routeid's log writer, and
    /// where tracing-subscriber adds colours.
    pub(crate) fn emit(&self) {
        let s = text;
        tracing::info!(
            target: "routeid::access",
            method = s(self.method),
            host = s(self.host),
            path = s(self.path),
            status = self.status,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_us = self.duration_us,
            client = %self.client,
            pool = s(self.pool),
            member_address = self.member_address.map(tracing::field::display),
            attempts = self.attempts,
            BALANCER_SESSION_STICKY = s(self.session_sticky),
            BALANCER_SESSION_ROUTE = s(self.session_route),
            BALANCER_NAME = s(self.pool),
            BALANCER_WORKER_NAME = s(self.worker_name),
            BALANCER_WORKER_ROUTE = s(self.worker_route),
            BALANCER_ROUTE_CHANGED = u8::from(self.route_changed),
            route_source = s(self.route_source),
            balanced = s(self.balanced),
            malformed_route = self.malformed_route,
            "request"
        );
    }

    /// Appends the line to routeid's log writer when one is installed
    /// ([`AccessLine::append_to`]), else emits it as a `tracing` event. The binary's log filter
    /// (`RUST_LOG`, `--log-level`) is fixed for the process's life: with target and level
    /// directives only, the binary installs its writer only when the filter lets
    /// `routeid::access` lines through, and the filter is not asked per line (that cost about
    /// 100 instructions); a filtered-out event costs next to nothing (tracing caches that its
    /// call site is off). With span or field directives it is asked per line. `now` is the
    /// request's end, which also stamps the line.
    pub(crate) fn log(&self, now: Instant) {
        match crate::log_writer::installed() {
            Some(w) => {
                if w.filter_per_line && !tracing::enabled!(target: "routeid::access", tracing::Level::INFO) {
                    return;
                }
                self.append_to(w, wall_clock(now));
            }
            None => self.emit(),
        }
    }

    /// Formats the line, stamped `now`, in `w`'s format straight into this thread's chunk of
    /// `w`, with the member's fields this thread formatted already ([`MemberCache`]); the
    /// writer only copies it out. Dropped and counted when the chunk is full.
    pub(crate) fn append_to(&self, w: &LogWriter, now: UnixMicros) {
        w.append_line(self.max_len(), |chunk| self.write_cached(chunk, w.format(), now));
    }

    /// Appends the line (with its `\n`) to `out`, stamped `now`, with this thread's member
    /// fields ([`MemberCache`]).
    fn write_cached(&self, out: &mut Vec<u8>, format: LogFormat, now: UnixMicros) {
        let cached = MEMBERS.try_with(|members| match members.try_borrow_mut() {
            Ok(mut members) => self.write_with(out, format, now, members.fields(self, format)),
            Err(_) => self.write_with(out, format, now, None),
        });
        // The thread is ending (its cache is gone): formatted in full.
        if cached.is_err() {
            self.write_with(out, format, now, None);
        }
    }

    /// The most bytes the line can take, in either format: the chunk makes room for them first.
    /// Escaped, a byte takes at most six (`\u001f` in JSON, `\u{1f}` in text; a character of
    /// two to four bytes at most ten); the pool's name is written twice. Everything else — the
    /// names, the numbers at their longest, two IPv6 addresses with a scope, the stamp — takes
    /// under [`FIXED_MAX`].
    fn max_len(&self) -> usize {
        let strings = [
            self.method,
            self.host,
            self.path,
            self.pool,
            self.pool,
            self.session_sticky,
            self.session_route,
            self.worker_name,
            self.worker_route,
            self.route_source,
            self.balanced,
        ];
        FIXED_MAX + 6 * strings.iter().map(|s| s.len()).sum::<usize>()
    }

    fn write_json(&self, out: &mut Vec<u8>, now: UnixMicros, member: Option<&MemberFields>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
        self.fields(&mut Json(out), member);
        out.extend_from_slice(b",\"target\":\"routeid::access\"}\n");
    }

    fn write_text(&self, out: &mut Vec<u8>, now: UnixMicros, member: Option<&MemberFields>) {
        timestamp(out, now);
        out.extend_from_slice(b"  INFO routeid::access: request");
        self.fields(&mut Text(out), member);
        out.push(b'\n');
    }
}

/// A bound on everything in a line but its strings, quotes included ([`AccessLine::max_len`]).
const FIXED_MAX: usize = 2048;

thread_local! {
    /// This thread's member fields, formatted for the lines it logs.
    static MEMBERS: RefCell<MemberCache> = RefCell::default();
}

/// A field's text: `-` for one that is not UTF-8 (as a `HeaderValue`'s `to_str` failing would
/// log it).
fn text(v: &[u8]) -> &str {
    std::str::from_utf8(v).unwrap_or("-")
}

/// True when `bytes` need no escaping in JSON nor in Rust's `Debug` (printable ASCII, no quote
/// or backslash): the usual host, path and route. Eight bytes at a time: a byte-by-byte check
/// cost about 1,100 instructions per access-log line, a third of the line.
fn plain_bytes(bytes: &[u8]) -> bool {
    let (words, rest) = bytes.as_chunks::<8>();
    let odd = words.iter().fold(0, |odd, w| odd | odd_bytes(u64::from_le_bytes(*w)));
    // The bytes past the last whole word, without copying them to a padded word (a `memcpy`
    // call per field): from 8 bytes on, the last eight (some checked twice).
    let tail = match bytes.last_chunk::<8>() {
        Some(last) if !rest.is_empty() => u64::from_le_bytes(*last),
        Some(_) => PLAIN_WORD,
        None => short_word(rest),
    };
    odd | odd_bytes(tail) == 0
}

/// Eight plain bytes (`a`): what a short string's word is padded with.
const PLAIN_WORD: u64 = u64::from_le_bytes([b'a'; 8]);

/// A word holding every byte of `short` (under 8 bytes), some more than once, the rest plain:
/// with 4 to 7 bytes its first four and its last four; with 1 to 3, its first, middle and last
/// byte. The same few operations whatever the length (a loop over the bytes cost more than the
/// copy).
fn short_word(short: &[u8]) -> u64 {
    debug_assert!(short.len() < 8, "a word's worth or more: {} bytes", short.len());
    if let (Some(first), Some(last)) = (short.first_chunk::<4>(), short.last_chunk::<4>()) {
        return u64::from(u32::from_le_bytes(*first)) | (u64::from(u32::from_le_bytes(*last)) << 32);
    }
    let (Some(&first), Some(&last)) = (short.first(), short.last()) else {
        return PLAIN_WORD;
    };
    let middle = short.get(short.len() / 2).copied().unwrap_or(first);
    (PLAIN_WORD << 24) | u64::from(first) | (u64::from(middle) << 8) | (u64::from(last) << 16)
}

/// Non-zero when one of the eight bytes of `w` is below a space, above `~`, `"` or `\`. The
/// classic tests (a borrow or carry marks a byte's high bit); one can also mark the byte after
/// an odd one, never a word without one, which is all "is there any" needs.
fn odd_bytes(w: u64) -> u64 {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v;
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    // 0x7f (DEL) plus one reaches the high bit; bytes from 0x80 have it already.
    let high = w.wrapping_add(ONES) | w;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    (control | high | quote | backslash) & HIGH
}

thread_local! {
    /// The second last formatted and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

thread_local! {
    /// A moment on both clocks, read together at most a second ago.
    static ANCHOR: Cell<Option<(Instant, UnixMicros)>> = const { Cell::new(None) };
}

/// A moment in microseconds since 1970, UTC: how a line's stamp is kept from the request's clock
/// read to its text, without `SystemTime` arithmetic on the way (about 300 instructions a line
/// did that, a tenth of the log's cost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UnixMicros(u64);

impl UnixMicros {
    /// `t` in microseconds (0 before 1970, which no clock here reads).
    pub(crate) fn of(t: SystemTime) -> UnixMicros {
        UnixMicros(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64))
    }
}

/// The wall-clock time at `now` without a second clock read per line: the anchor plus the
/// monotonic time since, re-read every second (so a step of the wall clock shows within one).
fn wall_clock(now: Instant) -> UnixMicros {
    if let Some((at, wall)) = ANCHOR.get()
        && let Some(since) = now.checked_duration_since(at)
        && since < Duration::from_secs(1)
    {
        // Under a second: the microseconds fit in 32 bits.
        return UnixMicros(wall.0 + u64::from(since.subsec_micros()));
    }
    let wall = UnixMicros::of(SystemTime::now());
    ANCHOR.set(Some((now, wall)));
    wall
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber writes it
/// (`2026-12-01T18:10:00.123456Z`).
fn timestamp(out: &mut Vec<u8>, now: UnixMicros) {
    let secs = now.0 / 1_000_000;
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        text = date_time(secs);
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    let micros = now.0 % 1_000_000;
    let mut frac = [b'.', 0, 0, 0, 0, 0, 0, b'Z'];
    let mut m = micros;
    for d in frac[1..7].iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.extend_from_slice(&frac);
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (Howard Hinnant's `civil_from_days`).
fn date_time(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut b = [0u8; 19];
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, tod / 3600);
    put(14, 2, tod / 60 % 60);
    put(17, 2, tod % 60);
    b[4] = b'-';
    b[7] = b'-';
    b[10] = b'T';
    b[13] = b':';
    b[16] = b':';
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line as [`AccessLine::emit`] (the `tracing` event) formats it.
    fn by_tracing(l: &AccessLine<'_>, format: LogFormat) -> String {
        let buf = Buf::default();
        let w = buf.clone();
        let builder = tracing_subscriber::fmt().with_writer(move || w.clone()).with_ansi(false);
        match format {
            LogFormat::Json => {
                tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), || l.emit())
            }
            LogFormat::Text => tracing::subscriber::with_default(builder.finish(), || l.emit()),
        }
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    fn by_hand(l: &AccessLine<'_>, format: LogFormat) -> String {
        let mut out = Vec::new();
        l.write(&mut out, format, SystemTime::now());
        String::from_utf8(out).unwrap()
    }

    /// The lines without their timestamps (the two are made a moment apart).
    fn untimed(line: &str, format: LogFormat) -> String {
        match format {
            LogFormat::Json => line.split_once("\",\"level\"").map(|(_, r)| r.to_string()).unwrap(),
            LogFormat::Text => line.split_once("Z ").map(|(_, r)| r.to_string()).unwrap(),
        }
    }

    fn sample() -> AccessLine<'static> {
        AccessLine {
            method: "GET".as_bytes(),
            host: "shop.example.com".as_bytes(),
            path: "/cart".as_bytes(),
            status: 200,
            bytes_in: Some(0),
            bytes_out: Some(3),
            duration_us: 812,
            client: "10.1.2.3".parse().unwrap(),
            pool: "default/shop".as_bytes(),
            member_address: Some("127.0.0.1:8080".parse().unwrap()),
            attempts: 1,
            session_sticky: "JSESSIONID".as_bytes(),
            session_route: "n2".as_bytes(),
            worker_name: "http://127.0.0.1:8080".as_bytes(),
            worker_route: "n2".as_bytes(),
            route_changed: false,
            route_source: "session-cookie".as_bytes(),
            balanced: "-".as_bytes(),
            malformed_route: false,
        }
    }

    /// The line as a logging thread appends it, member fields cached; never longer than the
    /// room made for it.
    fn by_line(l: &AccessLine<'_>, format: LogFormat) -> String {
        let mut out = Vec::new();
        l.write_cached(&mut out, format, UnixMicros::of(SystemTime::now()));
        assert!(out.len() <= l.max_len(), "{} bytes, room for {}: {l:?}", out.len(), l.max_len());
        String::from_utf8(out).unwrap()
    }

    /// A member's fields formatted once are copied into its later lines, in either format; a
    /// line they do not fit (another pool name, member, route or format, no member address) gets
    /// its own, field by field, and a member's fields that change (its address reused) are
    /// made again. Every line is the one tracing writes.
    #[test]
    fn a_members_fields_formatted_once_serve_only_lines_they_fit() {
        for format in [LogFormat::Json, LogFormat::Text] {
            let mut cache = MemberCache::default();
            let lines = [
                sample(),
                AccessLine { path: "/second".as_bytes(), status: 503, duration_us: 7, ..sample() },
                AccessLine { pool: "other/pool".as_bytes(), ..sample() },
                AccessLine { worker_route: "n3".as_bytes(), ..sample() },
                AccessLine { worker_name: "http://127.0.0.1:9".as_bytes(), ..sample() },
                AccessLine { member_address: Some("127.0.0.1:9".parse().unwrap()), ..sample() },
                AccessLine { member_address: None, ..sample() },
            ];
            for l in &lines {
                let mut got = Vec::new();
                l.write_with(&mut got, format, UnixMicros::of(SystemTime::now()), cache.fields(l, format));
                let (want, got) = (by_tracing(l, format), String::from_utf8(got).unwrap());
                assert_eq!(untimed(&got, format), untimed(&want, format), "{format:?}");
            }
            // The last line at this address (the worker name changed) made them again.
            let made = cache.fields(&lines[4], format).unwrap();
            assert!(made.fit(&lines[4], format) && !made.fit(&lines[0], format));
            assert!(cache.fields(&lines[0], format).is_some_and(|m| m.fit(&lines[1], format)));
            let made = cache.fields(&lines[0], format).unwrap();
            assert!(lines[2..].iter().all(|l| !made.fit(l, format)));
            let address = sample().member_address.unwrap();
            let other = match format {
                LogFormat::Json => LogFormat::Text,
                LogFormat::Text => LogFormat::Json,
            };
            assert!(!cache.fields(&lines[0], format).unwrap().fit(&lines[0], other), "not for the other format");
            assert_eq!(cache.0.iter().flatten().filter(|c| c.fields.address == address).count(), 2, "one per pool");
            assert_eq!(untimed(&by_hand(&lines[0], other), other), untimed(&by_tracing(&lines[0], other), other));
        }
        // Fields that need escaping, and an IPv6 member, copied as they were formatted.
        for format in [LogFormat::Json, LogFormat::Text] {
            let mut cache = MemberCache::default();
            let odd = AccessLine {
                pool: "caf\u{e9}/\"p\"\\\u{1}".as_bytes(),
                worker_route: "r\u{2028}".as_bytes(),
                member_address: Some("[2001:db8::2]:8080".parse().unwrap()),
                ..sample()
            };
            for l in [odd, AccessLine { status: 502, ..odd }] {
                let mut got = Vec::new();
                l.write_with(&mut got, format, UnixMicros::of(SystemTime::now()), cache.fields(&l, format));
                let got = String::from_utf8(got).unwrap();
                assert_eq!(untimed(&got, format), untimed(&by_tracing(&l, format), format));
            }
            assert!(cache.fields(&odd, format).is_some_and(|m| m.fit(&odd, format)));
        }
        // A line without a member address makes none.
        let mut cache = MemberCache::default();
        assert!(cache.fields(&AccessLine { member_address: None, ..sample() }, LogFormat::Json).is_none());
        assert!(cache.0.iter().all(Option::is_none));
    }

    /// The text a line's member fields are copied from, to tell whether they were remade.
    fn cached_at(cache: &mut MemberCache, l: &AccessLine<'_>) -> Option<*const u8> {
        cache.fields(l, LogFormat::Text).map(|m| m.text.as_ptr())
    }

    fn at_port(port: u16) -> AccessLine<'static> {
        AccessLine { member_address: Some(SocketAddr::from(([10, 0, 0, 1], port))), ..sample() }
    }

    /// The cache holds [`MEMBER_SLOTS`] members at most; a member whose slot another holds is
    /// formatted in full, as the tracing event has it.
    #[test]
    fn the_member_cache_is_bounded() {
        let mut cache = MemberCache::default();
        assert!((0..5000).all(|p| cache.fields(&at_port(p), LogFormat::Text).is_some()));
        assert_eq!(cache.0.len(), MEMBER_SLOTS);
        // A member kept busy keeps its slot against a stream of others.
        let busy = at_port(1);
        let kept = cached_at(&mut cache, &busy);
        let mut turned_away = 0;
        for p in 2..5000 {
            assert_eq!(cached_at(&mut cache, &busy), kept);
            let l = at_port(p);
            let mut got = Vec::new();
            let fields = cache.fields(&l, LogFormat::Text);
            turned_away += usize::from(fields.is_none());
            l.write_with(&mut got, LogFormat::Text, UnixMicros::of(SystemTime::now()), fields);
            let got = String::from_utf8(got).unwrap();
            assert_eq!(untimed(&got, LogFormat::Text), untimed(&by_tracing(&l, LogFormat::Text), LogFormat::Text));
        }
        assert!(turned_away > 0);
    }

    /// A member gone quiet gives its slot up to another at the second line that wants it; two
    /// pools on one address (a Service behind two routes) are two members, each kept.
    #[test]
    fn the_member_cache_keeps_live_members_and_frees_quiet_ones() {
        let mut cache = MemberCache::default();
        let quiet = at_port(1);
        let slot = slot_of(quiet.member_address.unwrap(), quiet.pool);
        let next = (2..u16::MAX).map(at_port).find(|l| slot_of(l.member_address.unwrap(), l.pool) == slot).unwrap();
        let first = cached_at(&mut cache, &quiet);
        assert_eq!(cached_at(&mut cache, &quiet), first, "used once more: a second chance");
        assert_eq!(cached_at(&mut cache, &next), None, "turned away once");
        let taken = cached_at(&mut cache, &next);
        assert!(taken.is_some(), "the quiet member's slot is taken over");
        assert_eq!(cached_at(&mut cache, &next), taken);

        let one = sample();
        let two = AccessLine { pool: b"other/pool", ..sample() };
        assert_ne!(slot_of(one.member_address.unwrap(), one.pool), slot_of(two.member_address.unwrap(), two.pool));
        let (a, b) = (cached_at(&mut cache, &one), cached_at(&mut cache, &two));
        for _ in 0..10 {
            assert_eq!((cached_at(&mut cache, &one), cached_at(&mut cache, &two)), (a, b));
        }
    }

    #[test]
    fn the_line_is_the_one_tracing_wrote_in_both_formats() {
        let odd = AccessLine {
            host: "h\u{e9}st\"\\".as_bytes(),
            path: "/a b/\u{1}\t\u{7f}/\u{2028}".as_bytes(),
            bytes_in: None,
            bytes_out: None,
            member_address: None,
            client: "::1".parse().unwrap(),
            route_changed: true,
            malformed_route: true,
            ..sample()
        };
        let v6 = AccessLine {
            client: "2001:db8::1".parse().unwrap(),
            member_address: Some("[2001:db8::2]:80".parse().unwrap()),
            ..sample()
        };
        let zeros = AccessLine {
            client: "0.0.0.0".parse().unwrap(),
            member_address: Some("255.255.255.255:65535".parse().unwrap()),
            ..sample()
        };
        for l in [sample(), odd, v6, zeros] {
            for format in [LogFormat::Json, LogFormat::Text] {
                let (want, got) = (by_tracing(&l, format), by_hand(&l, format));
                assert_eq!(untimed(&got, format), untimed(&want, format), "{format:?}");
                assert_eq!(got.len() - untimed(&got, format).len(), want.len() - untimed(&want, format).len());
            }
        }
        let json: serde_json::Value = serde_json::from_str(&by_hand(&sample(), LogFormat::Json)).unwrap();
        assert_eq!(json["BALANCER_ROUTE_CHANGED"], 0);
        assert_eq!(json["member_address"], "127.0.0.1:8080");
    }

    /// Long fields, and short ones that escaping makes six times longer, are written whole,
    /// after what the chunk held.
    #[test]
    fn long_and_escaped_fields_are_written_whole_after_earlier_lines() {
        let long_path = format!("/{}", "p".repeat(5000));
        let long_route = "r".repeat(3000);
        let escaped = "\u{1}".repeat(400);
        let lines = [
            AccessLine { path: long_path.as_bytes(), ..sample() },
            AccessLine { route_source: long_route.as_bytes(), balanced: long_route.as_bytes(), ..sample() },
            AccessLine { worker_name: long_route.as_bytes(), session_route: long_route.as_bytes(), ..sample() },
            AccessLine { pool: escaped.as_bytes(), route_source: escaped.as_bytes(), ..sample() },
            AccessLine { client: "2001:db8::1".parse().unwrap(), ..sample() },
        ];
        let now = SystemTime::now();
        for l in &lines {
            for format in [LogFormat::Json, LogFormat::Text] {
                let mut out = b"earlier line\n".to_vec();
                l.write(&mut out, format, now);
                let (earlier, line) = out.split_at(13);
                assert_eq!(earlier, b"earlier line\n");
                let line = std::str::from_utf8(line).unwrap();
                assert_eq!(untimed(line, format), untimed(&by_tracing(l, format), format), "{format:?}");
                assert_eq!(line.matches('\n').count(), 1);
                assert!(line.ends_with('\n'));
            }
        }
        let mut out = Vec::new();
        lines[3].write(&mut out, LogFormat::Json, now);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&out).unwrap()["pool"], escaped);
    }

    /// A line as a logging thread appends it is the line tracing writes, whatever its fields
    /// (escaped, long, IPv6, absent), in either format, with the stamp it was given, and within
    /// the room made for it.
    #[test]
    fn an_appended_line_is_the_one_tracing_writes() {
        let long_path = format!("/{}", "p".repeat(70_000));
        let escaped = "\u{1}\"\\caf\u{e9}\u{2028}".repeat(50);
        let lines = [
            sample(),
            AccessLine {
                host: "h\u{e9}st\"\\".as_bytes(),
                path: "/a b/\u{1}\t\u{7f}/\u{2028}".as_bytes(),
                bytes_in: None,
                bytes_out: None,
                member_address: None,
                client: "::1".parse().unwrap(),
                route_changed: true,
                malformed_route: true,
                ..sample()
            },
            AccessLine {
                client: "2001:db8::1".parse().unwrap(),
                member_address: Some("[2001:db8::2]:80".parse().unwrap()),
                ..sample()
            },
            AccessLine { member_address: Some("[fe80::1%2]:8080".parse().unwrap()), ..sample() },
            AccessLine {
                client: "::ffff:10.1.2.3".parse().unwrap(),
                member_address: Some("255.255.255.255:65535".parse().unwrap()),
                bytes_in: Some(u64::MAX),
                bytes_out: None,
                status: 499,
                attempts: 3,
                duration_us: u64::MAX,
                ..sample()
            },
            AccessLine {
                path: long_path.as_bytes(),
                pool: escaped.as_bytes(),
                worker_route: "".as_bytes(),
                session_route: "".as_bytes(),
                ..sample()
            },
            // Not UTF-8: `-`, as the tracing event has it.
            AccessLine { host: b"\xff\xfe", path: b"/caf\xe9", worker_route: b"\xc3", ..sample() },
            AccessLine {
                method: "".as_bytes(),
                host: "".as_bytes(),
                path: "".as_bytes(),
                pool: "".as_bytes(),
                worker_name: "".as_bytes(),
                balanced: "".as_bytes(),
                ..sample()
            },
        ];
        for l in &lines {
            for format in [LogFormat::Json, LogFormat::Text] {
                let (want, got) = (by_tracing(l, format), by_line(l, format));
                assert_eq!(untimed(&got, format), untimed(&want, format), "{format:?}");
                assert_eq!(got.len() - untimed(&got, format).len(), want.len() - untimed(&want, format).len());
            }
        }
        let at = UNIX_EPOCH + Duration::new(1_764_613_800, 123_456_789);
        let mut out = Vec::new();
        sample().write_cached(&mut out, LogFormat::Text, UnixMicros::of(at));
        assert!(out.starts_with(b"2025-12-01T18:30:00.123456Z  INFO routeid::access: request method="));
    }

    proptest::proptest! {
        /// Whatever bytes a client puts in the fields it controls (host, path, a route from a
        /// cookie: control characters, quotes, backslashes, invalid UTF-8), the line a logging
        /// thread appends is the one tracing writes, whole, on one line, within its room.
        #[test]
        fn any_client_bytes_are_written_as_tracing_writes_them(
            host in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            path in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            route in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
            ascii in proptest::prelude::any::<bool>(),
        ) {
            // Half the cases in ASCII only, where the escaping rather than the `-` of invalid
            // UTF-8 decides the line.
            let fit = |v: &Vec<u8>| if ascii { v.iter().map(|b| b & 0x7f).collect() } else { v.clone() };
            let (host, path, route) = (fit(&host), fit(&path), fit(&route));
            let l = AccessLine { host: &host, path: &path, session_route: &route, ..sample() };
            for format in [LogFormat::Json, LogFormat::Text] {
                let (want, got) = (by_tracing(&l, format), by_line(&l, format));
                proptest::prop_assert_eq!(untimed(&got, format), untimed(&want, format));
                proptest::prop_assert_eq!(got.matches('\n').count(), 1);
            }
        }
    }

    /// The room made for a line holds it at its longest: every string made of the bytes that
    /// escape longest, every number at its largest, IPv6 addresses with a scope.
    #[test]
    fn the_room_made_for_a_line_holds_it_at_its_longest() {
        let control = vec![0x1f_u8; 300];
        let wide = "\u{2028}\u{10ffff}\u{85}".repeat(40);
        for s in [control.as_slice(), wide.as_bytes()] {
            let l = AccessLine {
                method: s,
                host: s,
                path: s,
                pool: s,
                session_sticky: s,
                session_route: s,
                worker_name: s,
                worker_route: s,
                route_source: s,
                balanced: s,
                status: u16::MAX,
                bytes_in: Some(u64::MAX),
                bytes_out: Some(u64::MAX),
                duration_us: u64::MAX,
                attempts: usize::MAX,
                client: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
                member_address: Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535".parse().unwrap()),
                route_changed: true,
                malformed_route: true,
            };
            for format in [LogFormat::Json, LogFormat::Text] {
                by_line(&l, format);
            }
        }
    }

    /// Every byte value at every position of words and tails, against the byte-by-byte rule.
    #[test]
    fn plain_bytes_flags_exactly_the_bytes_that_need_escaping() {
        let odd = |b: u8| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\';
        for len in 1..=24 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert_eq!(plain_bytes(&v), !odd(b), "byte {b:#x} at {at} of {len}");
                    // With another odd byte next to it (a carry or borrow between them).
                    v[(at + 1) % len] = 0xff;
                    assert!(!plain_bytes(&v), "byte {b:#x} at {at} of {len}, 0xff after it");
                }
            }
        }
        assert!(plain_bytes(b""));
        assert!(plain_bytes(b"GET /shop/cart;jsessionid=abc.pod-1?x=1 HTTP"));
        assert!(!plain_bytes("caf\u{e9}".as_bytes()));
    }

    #[test]
    fn numbers_are_written_as_display_writes_them() {
        for v in (0..2_000).chain([9_999, 10_000, 123_456_789, u64::MAX]) {
            let mut out = Vec::new();
            write_num(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }

    #[test]
    fn ipv4_addresses_are_written_as_display_writes_them() {
        for b in 0..=255u8 {
            let ip = IpAddr::from([b, 10, 100, 255 - b]);
            let mut out = Vec::new();
            write_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn the_timestamp_comes_from_the_requests_own_clock_read() {
        let close = |a: UnixMicros, b: SystemTime| UnixMicros::of(b).0.abs_diff(a.0) < 1_000_000;
        let now = Instant::now();
        let wall = wall_clock(now);
        assert!(close(wall, SystemTime::now()));
        // Within the second: the anchor plus the monotonic time since, no second read.
        assert_eq!(wall_clock(now + Duration::from_micros(999_999)), UnixMicros(wall.0 + 999_999));
        // Past it: read again.
        assert!(close(wall_clock(now + Duration::from_secs(3)), SystemTime::now()));
        assert!(close(wall_clock(now + Duration::from_secs(1)), SystemTime::now()));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u32| {
            let mut out = Vec::new();
            timestamp(&mut out, UnixMicros(secs * 1_000_000 + u64::from(micros)));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_764_613_800, 123_456), "2025-12-01T18:30:00.123456Z");
        assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
        // The per-second cache follows the clock.
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000000Z");
    }
}
