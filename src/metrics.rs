//! Prometheus metrics.
//!
//! Three kinds of series, so that the request path pays only atomic increments and a scrape of a
//! large pool builds nothing:
//! - **Per-pool event counters** (sticky decisions, failovers, 503s) and the process's own are
//!   `prometheus` metrics; the per-pool handles are looked up once per routing-table publication
//!   and kept beside the table ([`PoolMetrics`]); a request increments a handle, no label
//!   hashing, no lock.
//! - **Per-member request counters and latency histograms** are atomics of their own
//!   ([`MemberMetrics`]), made with the member's handles at publication together with their
//!   label text, and written straight as text at scrape.
//! - **Member state** (in flight, bytes, elected, failures, health checks, state, latency) is
//!   already kept in each member's atomics; it is read from the current table at scrape time.
//!
//! Labels are `namespace`, `pool`, `member` (the route) — values that passed validation, never
//! raw request input. When a member or pool leaves the table its series go: the scrape-time
//! series by construction, the event series by [`Metrics::remove_member`] and
//! [`Metrics::remove_pool`] at publication.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::core::{FailureKind, Pool, RoutingTable};

/// Response-head latency buckets, in seconds: 1 ms to 60 s.
pub const LATENCY_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Outcomes of the sticky decision, labels of `routeid_sticky_decisions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StickyOutcome {
    /// The route named a member that took the request.
    Hit = 0,
    /// The request carried no session at all.
    NewSession = 1,
    /// A session value without a route.
    NoRoute = 2,
    /// A route naming no member (dead pod or forged value).
    UnknownRoute = 3,
    /// The routed member was unusable: the session moved.
    RouteChanged = 4,
    /// A value that is not a valid route (bad bytes, too long), or a Gateway API session value
    /// this proxy did not seal (forged).
    Malformed = 5,
    /// A genuine Gateway API session value past its `absoluteTimeout`.
    Expired = 6,
}

/// How many sticky outcomes there are (the length of every per-outcome array).
pub const STICKY_OUTCOMES: usize = 7;

const STICKY_LABELS: [&str; STICKY_OUTCOMES] =
    ["hit", "new-session", "no-route", "unknown-route", "route-changed", "malformed", "expired"];

/// Why a request went to another member than first intended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailoverReason {
    /// The session's member could not take it (error, unhealthy, disabled, stopped).
    MemberUnusable = 0,
    /// An attempt failed and the request was retried.
    Retry = 1,
}

const FAILOVER_LABELS: [&str; 2] = ["member-unusable", "retry"];

/// Requests that failed on the client's side, labels of `routeid_client_errors_total`. None of
/// them counts against a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// Refused before routing: ambiguous (two `Host`s, no `Host`, `Host` ≠ `:authority`), a bad
    /// path, or `CONNECT` (400, 405).
    BadRequest = 0,
    /// A malformed request body (400).
    BrokenBody = 1,
    /// The client went away before its answer (logged 499).
    Gone = 2,
    /// The upload stalled on the client past the client idle timeout (408).
    UploadStalled = 3,
}

const CLIENT_ERROR_LABELS: [&str; 4] = ["bad-request", "broken-body", "gone", "upload-stalled"];

/// Status classes, the `code` label of `routeid_member_requests_total`, as the label pair that
/// comes first (before `member`).
const CODES: [&str; 5] = ["code=\"1xx\",", "code=\"2xx\",", "code=\"3xx\",", "code=\"4xx\",", "code=\"5xx\","];

/// One member's handles, kept in its runtime.
///
/// The counts live in the member's own atomics ([`MemberSeries`], shared with the scrape): a
/// response costs two or three atomic operations, no label hashing, no lock, and a scrape writes
/// them as text without building anything.
#[derive(Debug, Clone)]
pub struct MemberMetrics {
    series: Arc<MemberSeries>,
}

/// A member's request counters and latency histogram, written straight as text at scrape (a
/// registry of twenty series per member cost most of a scrape of a large pool).
#[derive(Debug)]
struct MemberSeries {
    /// `member="…",namespace="…",pool="…"`, escaped, made once with the handles.
    labels: Box<str>,
    /// Responses by status class, 1xx to 5xx. 2xx is always shown, the others once non-zero.
    classes: [AtomicU64; 5],
    /// Observations per bucket of [`LATENCY_BUCKETS`] (not cumulative); the last one holds
    /// those above every bound. The count is their sum, so `+Inf` always equals `_count` and
    /// the cumulative buckets never decrease, even read while a response is being counted.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the observed seconds, as `f64` bits (added as the `prometheus` crate does).
    sum: AtomicU64,
}

impl MemberSeries {
    fn new(labels: String) -> MemberSeries {
        MemberSeries {
            labels: labels.into_boxed_str(),
            classes: Default::default(),
            buckets: Default::default(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// The cumulative bucket counts, the last one (`+Inf`) the count.
    fn cumulative(&self) -> [u64; LATENCY_BUCKETS.len() + 1] {
        let mut total = 0;
        self.buckets.each_ref().map(|b| {
            total += b.load(Relaxed);
            total
        })
    }
}

impl MemberMetrics {
    /// Counts a response of `status` that took `seconds` to its head.
    pub fn observe(&self, status: u16, seconds: f64) {
        let s = &*self.series;
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        s.classes[class].fetch_add(1, Relaxed);
        let bucket = LATENCY_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(LATENCY_BUCKETS.len());
        s.buckets[bucket].fetch_add(1, Relaxed);
        let _ = s.sum.fetch_update(Relaxed, Relaxed, |bits| Some((f64::from_bits(bits) + seconds).to_bits()));
    }

    /// Responses so far (all classes), the 5xx among them, and the latency histogram's
    /// cumulative bucket counts ([`LATENCY_BUCKETS`], then +Inf): what the balancer-manager's
    /// once-a-second sampler reads (never the request path).
    pub fn totals(&self) -> (u64, u64, [u64; LATENCY_BUCKETS.len() + 1]) {
        let s = &*self.series;
        let all = s.classes.iter().map(|c| c.load(Relaxed)).sum();
        (all, s.classes[4].load(Relaxed), s.cumulative())
    }
}

/// Per-pool handles.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    sticky: [IntCounter; 7],
    failovers: [IntCounter; 2],
    unavailable: IntCounter,
    invalid_backend: IntCounter,
}

impl PoolMetrics {
    /// Counts a sticky decision.
    pub fn sticky(&self, outcome: StickyOutcome) {
        self.sticky[outcome as usize].inc();
    }

    /// Counts a failover.
    pub fn failover(&self, reason: FailoverReason) {
        self.failovers[reason as usize].inc();
    }

    /// Counts a 503 for want of a usable member.
    pub fn unavailable(&self) {
        self.unavailable.inc();
    }

    /// Counts a 500 for a request of an HTTPRoute rule's invalid backendRefs' share.
    pub fn invalid_backend(&self) {
        self.invalid_backend.inc();
    }

    /// Sticky decisions so far, by [`StickyOutcome`], and the 503s for want of a member (read
    /// by the balancer-manager's sampler).
    pub fn totals(&self) -> ([u64; STICKY_OUTCOMES], u64) {
        (self.sticky.each_ref().map(IntCounter::get), self.unavailable.get())
    }
}

/// Where the number of log lines dropped so far comes from (the log writer's queue was full):
/// set once by the binary, read at every scrape.
static DROPPED_LOG_LINES: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>> = std::sync::OnceLock::new();

/// Tells the metrics how to read the count of log lines dropped because the log writer fell
/// behind (`routeid_log_lines_dropped_total`). The first call wins.
pub fn count_dropped_log_lines(read: impl Fn() -> u64 + Send + Sync + 'static) {
    let _ = DROPPED_LOG_LINES.set(Box::new(read));
}

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Every member's request counters and latency histogram, by route, namespace and pool (the
    /// order the encoder sorted them in): written as text at scrape, not registered.
    members: Mutex<BTreeMap<[String; 3], Arc<MemberSeries>>>,
    /// Length of the last exposition, to size the next one at once.
    last_len: AtomicUsize,
    sticky: IntCounterVec,
    failovers: IntCounterVec,
    unavailable: IntCounterVec,
    /// Requests of an HTTPRoute rule's invalid backendRefs' share (500).
    invalid_backend: IntCounterVec,
    /// Requests no pool matched (404).
    pub unmatched: IntCounter,
    /// Client-side failures by [`ClientError`], made once.
    client_errors: [IntCounter; 4],
    /// Log lines the log writer dropped: it fell behind, a write to stderr failed, or a log file
    /// truncated under it cut one (brought up to date at scrape).
    log_lines_dropped: IntCounter,
    /// Routing tables published.
    pub publications: IntCounter,
    /// Time to build and swap in one routing table (the cost of a publication).
    pub publication_seconds: Histogram,
    /// Controller reconciles by result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Controller watch restarts by resource.
    pub watch_restarts: IntCounterVec,
    /// Unix time of the controller's last complete sync.
    pub last_sync: LastSync,
    /// Failed TLS handshakes by `reason` (a bounded set, see `proxy::tls`).
    pub tls_handshake_errors: IntCounterVec,
    /// `notAfter` of each Secret's certificate, by `namespace` and `secret`.
    pub tls_expiry: GaugeVec,
    /// Connections closed for their PROXY protocol header, by `reason`.
    pub proxy_protocol_rejected: IntCounterVec,
}

/// The controller's last sync time. It has no sample until the first sync, so demo and
/// standalone runs (which have no controller) do not export a misleading `0`.
#[derive(Clone, Debug)]
pub struct LastSync(GaugeVec);

impl LastSync {
    /// Records a complete sync at `unix` seconds.
    pub fn set(&self, unix: f64) {
        self.0.with_label_values::<&str>(&[]).set(unix);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static: an error here is a programming error caught by tests.
    match r {
        Ok(v) => v,
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let sticky = must(IntCounterVec::new(
            Opts::new("routeid_sticky_decisions_total", "Requests to sticky pools, by how their member was found."),
            &["namespace", "pool", "outcome"],
        ));
        let failovers = must(IntCounterVec::new(
            Opts::new(
                "routeid_failovers_total",
                "Requests that went to another member than first intended, by reason.",
            ),
            &["namespace", "pool", "reason"],
        ));
        let unavailable = must(IntCounterVec::new(
            Opts::new("routeid_pool_unavailable_total", "Requests answered 503 because no member could take them."),
            &["namespace", "pool"],
        ));
        let invalid_backend = must(IntCounterVec::new(
            Opts::new(
                "routeid_pool_invalid_backend_total",
                "Requests answered 500 because they fell in an HTTPRoute rule's invalid backendRefs' share.",
            ),
            &["namespace", "pool"],
        ));
        let unmatched = must(IntCounter::new("routeid_unmatched_requests_total", "Requests no pool matched (404)."));
        let client_error_vec = must(IntCounterVec::new(
            Opts::new(
                "routeid_client_errors_total",
                "Requests that failed on the client's side (never counted against a member), by reason.",
            ),
            &["reason"],
        ));
        let client_errors = CLIENT_ERROR_LABELS.map(|l| client_error_vec.with_label_values(&[l]));
        let log_lines_dropped = must(IntCounter::new(
            "routeid_log_lines_dropped_total",
            "Log lines (access log included) dropped: the log writer fell behind, a write to stderr failed, or a log file truncated under it cut one.",
        ));
        let publications = must(IntCounter::new("routeid_table_publications_total", "Routing tables published."));
        let publication_seconds = must(Histogram::with_opts(
            HistogramOpts::new("routeid_table_publication_seconds", "Time to build and swap in one routing table.")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        ));
        let reconciles = must(IntCounterVec::new(
            Opts::new("routeid_controller_reconciles_total", "Controller reconciles, by result."),
            &["result"],
        ));
        let watch_restarts = must(IntCounterVec::new(
            Opts::new("routeid_controller_watch_restarts_total", "Kubernetes watches restarted, by resource."),
            &["resource"],
        ));
        let last_sync = LastSync(must(GaugeVec::new(
            Opts::new(
                "routeid_controller_last_sync_timestamp_seconds",
                "Unix time of the controller's last complete sync.",
            ),
            &[],
        )));
        let tls_handshake_errors = must(IntCounterVec::new(
            Opts::new("routeid_tls_handshake_errors_total", "TLS handshakes that failed, by reason."),
            &["reason"],
        ));
        let tls_expiry = must(GaugeVec::new(
            Opts::new(
                "routeid_tls_certificate_expiry_timestamp_seconds",
                "Unix time when the certificate of a TLS Secret expires.",
            ),
            &["namespace", "secret"],
        ));
        let proxy_protocol_rejected = must(IntCounterVec::new(
            Opts::new(
                "routeid_proxy_protocol_rejected_total",
                "Connections closed for a missing, bad or untrusted PROXY protocol header, by reason.",
            ),
            &["reason"],
        ));
        let build = must(IntGaugeVec::new(Opts::new("routeid_build_info", "Build information."), &["version"]));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(sticky.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failovers.clone()),
            Box::new(unavailable.clone()),
            Box::new(invalid_backend.clone()),
            Box::new(unmatched.clone()),
            Box::new(client_error_vec),
            Box::new(log_lines_dropped.clone()),
            Box::new(publications.clone()),
            Box::new(publication_seconds.clone()),
            Box::new(reconciles.clone()),
            Box::new(watch_restarts.clone()),
            Box::new(last_sync.0.clone()),
            Box::new(tls_handshake_errors.clone()),
            Box::new(tls_expiry.clone()),
            Box::new(proxy_protocol_rejected.clone()),
            Box::new(build),
        ] {
            must(registry.register(c));
        }
        #[cfg(target_os = "linux")]
        must(registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())));
        Metrics {
            registry,
            members: Mutex::default(),
            last_len: AtomicUsize::new(0),
            sticky,
            failovers,
            unavailable,
            invalid_backend,
            unmatched,
            client_errors,
            log_lines_dropped,
            publications,
            publication_seconds,
            reconciles,
            watch_restarts,
            last_sync,
            tls_handshake_errors,
            tls_expiry,
            proxy_protocol_rejected,
        }
    }

    /// Counts a request that failed on the client's side.
    pub fn client_error(&self, reason: ClientError) {
        self.client_errors[reason as usize].inc();
    }

    /// Handles for one pool (at publication).
    pub fn pool_handles(&self, pool: &Pool) -> PoolMetrics {
        let (ns, name) = (pool.config.id.namespace.as_str(), pool.config.id.name.as_str());
        PoolMetrics {
            sticky: STICKY_LABELS.map(|o| self.sticky.with_label_values(&[ns, name, o])),
            failovers: FAILOVER_LABELS.map(|r| self.failovers.with_label_values(&[ns, name, r])),
            unavailable: self.unavailable.with_label_values(&[ns, name]),
            invalid_backend: self.invalid_backend.with_label_values(&[ns, name]),
        }
    }

    /// Handles for one member (at publication, for a member new to its pool).
    ///
    /// A member that moved to a new address keeps its route, so it gets the same series back and
    /// its counts go on.
    pub fn member_handles(&self, pool: &crate::core::PoolId, route: &str) -> MemberMetrics {
        let key = member_key(pool, route);
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let series = members.entry(key).or_insert_with(|| {
            let [r, ns, name] = [route, &pool.namespace, &pool.name].map(label_value);
            Arc::new(MemberSeries::new(format!("member=\"{r}\",namespace=\"{ns}\",pool=\"{name}\"")))
        });
        MemberMetrics { series: Arc::clone(series) }
    }

    /// Removes a member's event series (it left its pool). Its handles may still count a
    /// response in flight: nobody shows it any more.
    pub fn remove_member(&self, pool: &crate::core::PoolId, route: &str) {
        self.members.lock().unwrap_or_else(|e| e.into_inner()).remove(&member_key(pool, route));
    }

    /// Removes a pool's event series, its members' included (the pool is gone).
    pub fn remove_pool(&self, pool: &Pool) {
        let (ns, name) = (pool.config.id.namespace.as_str(), pool.config.id.name.as_str());
        for m in &pool.members {
            self.remove_member(&pool.config.id, m.route());
        }
        for o in STICKY_LABELS {
            let _ = self.sticky.remove_label_values(&[ns, name, o]);
        }
        for r in FAILOVER_LABELS {
            let _ = self.failovers.remove_label_values(&[ns, name, r]);
        }
        let _ = self.unavailable.remove_label_values(&[ns, name]);
        let _ = self.invalid_backend.remove_label_values(&[ns, name]);
    }

    /// The text exposition: registered metrics, the members' request counters and latency
    /// histograms, and member state read from `table` now, families in name order.
    pub fn render(&self, table: &RoutingTable, now_ms: u64) -> String {
        if let Some(read) = DROPPED_LOG_LINES.get() {
            let (dropped, shown) = (read(), self.log_lines_dropped.get());
            self.log_lines_dropped.inc_by(dropped.saturating_sub(shown));
        }
        let families = self.registry.gather();
        let mut text: Vec<Written> = state_families(table, now_ms).into_iter().map(Written::State).collect();
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        if !members.is_empty() {
            text.extend([Written::Requests, Written::Latency]);
        }
        text.sort_by(|a, b| a.name().cmp(b.name()));
        let last = self.last_len.load(Relaxed);
        let mut out = String::with_capacity(last + last / 16 + 64 * 1024);
        // Both lists are sorted by name: merge them, so every family comes in name order.
        let mut text = text.into_iter().peekable();
        for mf in &families {
            while let Some(f) = text.next_if(|f| f.name() < mf.name()) {
                f.write(&members, &mut out);
            }
            if let Err(e) = TextEncoder::new().encode_utf8(std::slice::from_ref(mf), &mut out) {
                tracing::error!(error = %e, "cannot encode metrics");
            }
        }
        text.for_each(|f| f.write(&members, &mut out));
        self.last_len.store(out.len(), Relaxed);
        out
    }
}

/// A member's place in [`Metrics::members`]: route, namespace, pool (the encoder's order).
fn member_key(pool: &crate::core::PoolId, route: &str) -> [String; 3] {
    [route.to_owned(), pool.namespace.clone(), pool.name.clone()]
}

const REQUESTS: &str = "routeid_member_requests_total";
const LATENCY: &str = "routeid_member_response_seconds";

/// `,le="…"} ` of each bucket of [`LATENCY_BUCKETS`] and `+Inf`, as the encoder writes bounds.
static LE: std::sync::LazyLock<[String; LATENCY_BUCKETS.len() + 1]> = std::sync::LazyLock::new(|| {
    let mut le = [(); LATENCY_BUCKETS.len() + 1].map(|_| String::from(",le=\"+Inf\"} "));
    for (l, b) in le.iter_mut().zip(LATENCY_BUCKETS) {
        *l = format!(",le=\"{b}\"}} ");
    }
    le
});

/// A family written as text rather than by the encoder.
enum Written {
    /// Member or pool state, already written.
    State(TextFamily),
    /// `routeid_member_requests_total`, written from the members' atomics.
    Requests,
    /// `routeid_member_response_seconds`, written from the members' atomics.
    Latency,
}

impl Written {
    fn name(&self) -> &'static str {
        match self {
            Written::State(f) => f.name,
            Written::Requests => REQUESTS,
            Written::Latency => LATENCY,
        }
    }

    fn write(&self, members: &BTreeMap<[String; 3], Arc<MemberSeries>>, out: &mut String) {
        match self {
            Written::State(f) => out.push_str(&f.text),
            Written::Requests => write_requests(members.values(), out),
            Written::Latency => write_latency(members.values(), out),
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    for part in ["# HELP ", name, " ", help, "\n# TYPE ", name, " ", kind, "\n"] {
        out.push_str(part);
    }
}

/// One sample line: `name{first labels last value`, `labels` joined and escaped, `last` ending
/// with `} `.
fn line(out: &mut String, name: &str, first: &str, labels: &str, last: &str, value: &str) {
    for part in [name, "{", first, labels, last, value, "\n"] {
        out.push_str(part);
    }
}

/// The request counters, sorted as the encoder did (by class, then member): 2xx for every
/// member, the other classes for members that had one.
fn write_requests<'a>(members: impl Iterator<Item = &'a Arc<MemberSeries>> + Clone, out: &mut String) {
    header(out, REQUESTS, "counter", "Responses from a member, by status class (1xx-5xx).");
    let mut n = itoa::Buffer::new();
    for (class, code) in CODES.into_iter().enumerate() {
        for s in members.clone() {
            let v = s.classes[class].load(Relaxed);
            if v > 0 || class == 1 {
                line(out, REQUESTS, code, &s.labels, "} ", n.format(v));
            }
        }
    }
}

/// The latency histograms, one member after the other.
fn write_latency<'a>(members: impl Iterator<Item = &'a Arc<MemberSeries>>, out: &mut String) {
    use std::fmt::Write;
    const BUCKET: &str = "routeid_member_response_seconds_bucket";
    const SUM: &str = "routeid_member_response_seconds_sum";
    const COUNT: &str = "routeid_member_response_seconds_count";
    header(out, LATENCY, "histogram", "Time from sending a request to a member to its response head.");
    let (mut n, mut sum) = (itoa::Buffer::new(), String::new());
    for s in members {
        let counts = s.cumulative();
        for (c, le) in counts.iter().zip(LE.iter()) {
            line(out, BUCKET, "", &s.labels, le, n.format(*c));
        }
        // A float is written as the encoder writes it (`Display`).
        sum.clear();
        let _ = write!(sum, "{}", f64::from_bits(s.sum.load(Relaxed)));
        line(out, SUM, "", &s.labels, "} ", &sum);
        line(out, COUNT, "", &s.labels, "} ", n.format(counts[LATENCY_BUCKETS.len()]));
    }
}

const STATES: [&str; 7] = ["ok", "error", "unhealthy", "drain", "disabled", "standby", "stopped"];

/// One metric family written as text exposition.
struct TextFamily {
    name: &'static str,
    text: String,
    empty: bool,
}

impl TextFamily {
    fn new(name: &'static str, kind: &str, help: &str) -> TextFamily {
        TextFamily { name, text: format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"), empty: true }
    }

    /// One sample: `labels` are the sorted `name="value"` pairs already joined; `first` and
    /// `last` an extra pair sorting before or after them.
    fn sample(&mut self, first: Option<(&str, &str)>, labels: &str, last: Option<(&str, &str)>, value: impl Value) {
        self.empty = false;
        let t = &mut self.text;
        t.push_str(self.name);
        t.push('{');
        if let Some((n, v)) = first {
            for part in [n, "=\"", v, "\","] {
                t.push_str(part);
            }
        }
        t.push_str(labels);
        if let Some((n, v)) = last {
            for part in [",", n, "=\"", v, "\""] {
                t.push_str(part);
            }
        }
        t.push_str("} ");
        value.write_to(t);
        t.push('\n');
    }
}

/// A sample's value, written as the encoder writes it; integers without `fmt` (most of a
/// large scrape's lines).
trait Value {
    fn write_to(self, out: &mut String);
}

macro_rules! integer_values {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn write_to(self, out: &mut String) {
                out.push_str(itoa::Buffer::new().format(self));
            }
        }
    )*};
}

integer_values!(u64, usize, u8);

impl Value for f64 {
    fn write_to(self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(out, "{self}");
    }
}

/// A label value as the text format escapes it (backslash, double quote, newline).
fn label_value(v: &str) -> Cow<'_, str> {
    if v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        Cow::Owned(v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
    } else {
        Cow::Borrowed(v)
    }
}

/// Member and pool state read from the table's atomics, as text families sorted by name. Written
/// straight as text: building a registry of twenty series per member at every scrape cost most
/// of a scrape of a large pool.
fn state_families(table: &RoutingTable, now_ms: u64) -> Vec<TextFamily> {
    let mut in_flight = TextFamily::new("routeid_member_in_flight", "gauge", "Requests in flight to a member.");
    let mut bytes_to =
        TextFamily::new("routeid_member_sent_bytes_total", "counter", "Request body bytes sent to a member.");
    let mut bytes_from = TextFamily::new(
        "routeid_member_received_bytes_total",
        "counter",
        "Response body bytes received from a member.",
    );
    let mut elected =
        TextFamily::new("routeid_member_elected_total", "counter", "Attempts sent to a member (Apache elected).");
    let mut failures =
        TextFamily::new("routeid_member_failures_total", "counter", "Failed attempts on a member, by kind.");
    let mut checks = TextFamily::new(
        "routeid_member_health_checks_total",
        "counter",
        "Active health checks of a member, by result.",
    );
    let mut state = TextFamily::new("routeid_member_state", "gauge", "1 for the member's current state.");
    let mut ewma = TextFamily::new(
        "routeid_member_latency_ewma_seconds",
        "gauge",
        "Moving average of a member's response-head latency, faded towards 1 ms since its last sample: what LeastLatency sees.",
    );
    let mut pool_members = TextFamily::new("routeid_pool_members", "gauge", "Members of a pool.");
    let mut pool_usable =
        TextFamily::new("routeid_pool_members_usable", "gauge", "Members of a pool that take new sessions now.");
    let mut labels = String::new();
    for p in table.pools() {
        let (ns, name) = (label_value(&p.config.id.namespace), label_value(&p.config.id.name));
        let pool_labels = format!("namespace=\"{ns}\",pool=\"{name}\"");
        pool_members.sample(None, &pool_labels, None, p.members.len());
        pool_usable.sample(None, &pool_labels, None, p.members.iter().filter(|m| m.takes_new(now_ms)).count());
        for m in &p.members {
            labels.clear();
            labels.push_str("member=\"");
            labels.push_str(&label_value(m.route()));
            labels.push_str("\",");
            labels.push_str(&pool_labels);
            let l = labels.as_str();
            let rt = &m.runtime;
            in_flight.sample(None, l, None, rt.busy.load(Relaxed));
            bytes_to.sample(None, l, None, rt.bytes_to.load(Relaxed));
            bytes_from.sample(None, l, None, rt.bytes_from.load(Relaxed));
            elected.sample(None, l, None, rt.elected.load(Relaxed));
            for (kind, label) in FailureKind::ALL {
                failures.sample(Some(("kind", label)), l, None, rt.failures[kind as usize].load(Relaxed));
            }
            for (i, result) in ["pass", "fail"].into_iter().enumerate() {
                checks.sample(None, l, Some(("result", result)), rt.checks[i].load(Relaxed));
            }
            let current = match m.state_name(now_ms) {
                "Error" => "error",
                "Unhealthy" => "unhealthy",
                "Drain" => "drain",
                "Disabled" => "disabled",
                "HotStandby" => "standby",
                "Stopped" => "stopped",
                _ => "ok",
            };
            for s in STATES {
                state.sample(None, l, Some(("state", s)), u8::from(s == current));
            }
            ewma.sample(None, l, None, rt.latency_estimate_us(now_ms) as f64 / 1e6);
        }
    }
    let mut all =
        vec![in_flight, bytes_to, bytes_from, elected, failures, checks, state, ewma, pool_members, pool_usable];
    // As the registry does: no family without samples.
    all.retain(|f| !f.empty);
    all.sort_by(|a, b| a.name.cmp(b.name));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::PoolId;

    #[test]
    fn member_state_is_written_as_the_text_format_with_families_in_name_order() {
        let yaml = "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {name: shop}\nspec:\n  backend:\n    members:\n      - {address: \"127.0.0.1:1\", route: a}\n      - {address: \"127.0.0.1:2\", route: b}\n";
        let (table, _) = RoutingTable::build(crate::standalone::parse_pools(yaml).unwrap(), None);
        table.pools()[0].members[1].runtime.bytes_to.store(1234, Relaxed);
        let m = Metrics::new();
        let text = m.render(&table, 1);
        for want in [
            "# HELP routeid_member_state 1 for the member's current state.\n# TYPE routeid_member_state gauge\n",
            "routeid_member_state{member=\"a\",namespace=\"default\",pool=\"shop\",state=\"ok\"} 1\n",
            "routeid_member_state{member=\"a\",namespace=\"default\",pool=\"shop\",state=\"error\"} 0\n",
            "routeid_member_failures_total{kind=\"connect\",member=\"b\",namespace=\"default\",pool=\"shop\"} 0\n",
            "routeid_member_health_checks_total{member=\"b\",namespace=\"default\",pool=\"shop\",result=\"pass\"} 0\n",
            "routeid_member_sent_bytes_total{member=\"b\",namespace=\"default\",pool=\"shop\"} 1234\n",
            "routeid_member_latency_ewma_seconds{member=\"a\",namespace=\"default\",pool=\"shop\"} 0.001\n",
            "# TYPE routeid_pool_members gauge\nrouteid_pool_members{namespace=\"default\",pool=\"shop\"} 2\n",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "families in name order, registered and state ones merged");
        assert!(names.iter().any(|n| n.starts_with("routeid_member_requests_total")) || names.len() > 10);
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    fn request_series(m: &Metrics) -> Vec<String> {
        m.render(&RoutingTable::default(), 1)
            .lines()
            .filter(|l| l.starts_with("routeid_member_requests_total{"))
            .map(|l| l.split_once("code=\"").map_or("", |(_, r)| &r[..3]).to_owned())
            .collect()
    }

    #[test]
    fn last_sync_appears_with_the_first_sync_only() {
        let m = Metrics::new();
        let name = "routeid_controller_last_sync_timestamp_seconds";
        assert!(!m.render(&RoutingTable::default(), 1).contains(name));
        m.last_sync.set(1_700_000_000.0);
        let text = m.render(&RoutingTable::default(), 1);
        assert!(text.lines().any(|l| l == format!("{name} 1700000000")), "{text}");
    }

    #[test]
    fn rare_status_classes_appear_on_first_use_and_never_after_retirement() {
        let m = Metrics::new();
        let id = PoolId { namespace: "web".into(), name: "shop".into() };
        let h = m.member_handles(&id, "pod-0");
        assert_eq!(request_series(&m), ["2xx"], "2xx only, made with the member");
        h.observe(200, 0.01);
        h.observe(503, 0.01);
        h.observe(503, 0.01);
        assert_eq!(request_series(&m), ["2xx", "5xx"]);
        let text = m.render(&RoutingTable::default(), 1);
        assert!(text.lines().any(|l| l.contains("code=\"5xx\"") && l.ends_with(" 2")), "{text}");
        // The member leaves; a response still in flight must not bring a series back.
        m.remove_member(&id, "pod-0");
        h.observe(404, 0.01);
        h.observe(503, 0.01);
        assert!(request_series(&m).is_empty(), "{:?}", request_series(&m));
    }

    #[test]
    fn member_requests_and_latency_are_written_as_the_prometheus_encoder_wrote_them() {
        let registry = Registry::new();
        let help = "Responses from a member, by status class (1xx-5xx).";
        let requests = IntCounterVec::new(Opts::new(REQUESTS, help), &["namespace", "pool", "member", "code"]).unwrap();
        let help = "Time from sending a request to a member to its response head.";
        let opts = HistogramOpts::new(LATENCY, help).buckets(LATENCY_BUCKETS.to_vec());
        let latency = prometheus::HistogramVec::new(opts, &["namespace", "pool", "member"]).unwrap();
        registry.register(Box::new(requests.clone())).unwrap();
        registry.register(Box::new(latency.clone())).unwrap();
        let m = Metrics::new();
        // Not in sorted order, one label value to escape, bounds hit exactly and overflowed.
        let members =
            [("web", "shop", "pod-1"), ("web", "shop", "pod-0"), ("a\"b", "c\\d\ne", "x"), ("web", "cart", "pod-10")];
        let seen =
            [(200, 0.001), (200, 0.0011), (503, 75.0), (101, 0.0), (302, 2.5), (404, 0.3), (200, 60.0), (0, 1e-9)];
        for (i, (ns, pool, route)) in members.into_iter().enumerate() {
            let h = m.member_handles(&PoolId { namespace: ns.into(), name: pool.into() }, route);
            requests.with_label_values(&[ns, pool, route, "2xx"]);
            let histogram = latency.with_label_values(&[ns, pool, route]);
            for &(status, seconds) in &seen[i..] {
                h.observe(status, seconds);
                let class = ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(status / 100).clamp(1, 5) - 1];
                requests.with_label_values(&[ns, pool, route, class]).inc();
                histogram.observe(seconds);
            }
            let (all, errors, buckets) = h.totals();
            assert_eq!(
                (all, errors),
                ((seen.len() - i) as u64, seen[i..].iter().filter(|s| s.0 >= 500).count() as u64)
            );
            assert_eq!(buckets[LATENCY_BUCKETS.len()], all);
        }
        let want = TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        let text = m.render(&RoutingTable::default(), 1);
        let got: String =
            text.lines().filter(|l| l.contains(REQUESTS) || l.contains(LATENCY)).flat_map(|l| [l, "\n"]).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_member_that_moved_keeps_its_series_and_one_that_left_loses_them() {
        let m = Metrics::new();
        let id = PoolId { namespace: "web".into(), name: "shop".into() };
        let before = m.member_handles(&id, "pod-0");
        before.observe(200, 0.01);
        // Same route at a new address: new handles, the same counts.
        let after = m.member_handles(&id, "pod-0");
        after.observe(200, 0.01);
        assert_eq!(after.totals().0, 2);
        m.remove_member(&id, "pod-0");
        assert!(!m.render(&RoutingTable::default(), 1).contains(LATENCY));
        // Back later: a new series from zero.
        assert_eq!(m.member_handles(&id, "pod-0").totals().0, 0);
    }
}
