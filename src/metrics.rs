//! Prometheus metrics.
//!
//! Two kinds of series, so that the request path pays only atomic increments:
//! - **Event counters and the latency histogram** (requests by status class, sticky decisions,
//!   failovers, 503s) are `prometheus` vectors whose per-member and per-pool handles are looked
//!   up once per routing-table publication and kept beside the table ([`PoolMetrics`],
//!   [`MemberMetrics`]); a request increments a handle, no label hashing, no lock.
//! - **Member state** (in flight, bytes, elected, failures, health checks, state, latency) is
//!   already kept in each member's atomics; it is read from the current table at scrape time.
//!
//! Labels are `namespace`, `pool`, `member` (the route) — values that passed validation, never
//! raw request input. When a member or pool leaves the table its series go: the scrape-time
//! series by construction, the event series by [`Metrics::remove_member`] and
//! [`Metrics::remove_pool`] at publication.

use std::borrow::Cow;
use std::fmt::Display;
use std::sync::atomic::Ordering::Relaxed;

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
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

/// Status classes, the `code` label of `routeid_member_requests_total`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One member's handles, kept in its runtime.
///
/// The 2xx counter and the latency histogram are made with the member; the other classes on
/// their first response. A series costs about 1 KiB in the `prometheus` crate, and most
/// members never answer 1xx and rarely 3xx–5xx: made eagerly they were about 25 MiB of a
/// 10,000-member pool.
#[derive(Debug)]
pub struct MemberMetrics {
    ok: IntCounter,
    /// 1xx, 3xx, 4xx, 5xx; `None` once the member has left (counted nowhere).
    rare: [std::sync::OnceLock<Option<IntCounter>>; 4],
    duration: Histogram,
    /// Made on demand from these.
    requests: IntCounterVec,
    labels: Box<[String; 3]>,
    /// Set when the member leaves its pool (before its series are removed), so a response still
    /// in flight does not bring a removed series back.
    retired: std::sync::atomic::AtomicBool,
}

impl MemberMetrics {
    /// Counts a response of `status` that took `seconds` to its head.
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        match class {
            1 => self.ok.inc(),
            _ => {
                let slot = &self.rare[if class == 0 { 0 } else { class - 1 }];
                if let Some(c) = slot.get_or_init(|| self.rare_counter(class)) {
                    c.inc();
                }
            }
        }
        self.duration.observe(seconds);
    }

    fn rare_counter(&self, class: usize) -> Option<IntCounter> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.retired.load(SeqCst) {
            return None;
        }
        let [ns, pool, route] = &*self.labels;
        let values = [ns.as_str(), pool.as_str(), route.as_str(), STATUS_CLASSES[class]];
        let counter = self.requests.with_label_values(&values);
        // Retirement stores the flag, then removes the series; this made the series, then
        // reads the flag again. One of the two removes it (SeqCst orders the flag, the
        // vector's lock the series), so a retired member's series never outlives its removal.
        if self.retired.load(SeqCst) {
            let _ = self.requests.remove_label_values(&values);
            return None;
        }
        Some(counter)
    }

    /// Responses so far (all classes), the 5xx among them, and the latency histogram's
    /// cumulative bucket counts ([`LATENCY_BUCKETS`], then +Inf): what the balancer-manager's
    /// once-a-second sampler reads (never the request path).
    pub fn totals(&self) -> (u64, u64, [u64; LATENCY_BUCKETS.len() + 1]) {
        use prometheus::core::Metric;
        let rare = |i: usize| self.rare[i].get().and_then(Option::as_ref).map_or(0, IntCounter::get);
        let all = self.ok.get() + (0..4).map(rare).sum::<u64>();
        let proto = self.duration.metric();
        let h = proto.get_histogram();
        let mut buckets = [0u64; LATENCY_BUCKETS.len() + 1];
        for (b, got) in buckets.iter_mut().zip(h.get_bucket()) {
            *b = got.cumulative_count();
        }
        buckets[LATENCY_BUCKETS.len()] = h.get_sample_count();
        (all, rare(3), buckets)
    }

    /// The member left its pool: series made from now on are removed at once.
    pub fn retire(&self) {
        self.retired.store(true, std::sync::atomic::Ordering::SeqCst);
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
    requests: IntCounterVec,
    duration: HistogramVec,
    sticky: IntCounterVec,
    failovers: IntCounterVec,
    unavailable: IntCounterVec,
    /// Requests of an HTTPRoute rule's invalid backendRefs' share (500).
    invalid_backend: IntCounterVec,
    /// Requests no pool matched (404).
    pub unmatched: IntCounter,
    /// Client-side failures by [`ClientError`], made once.
    client_errors: [IntCounter; 4],
    /// Log lines dropped because the log writer fell behind (brought up to date at scrape).
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
        let member = ["namespace", "pool", "member"];
        let requests = must(IntCounterVec::new(
            Opts::new("routeid_member_requests_total", "Responses from a member, by status class (1xx-5xx)."),
            &["namespace", "pool", "member", "code"],
        ));
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "routeid_member_response_seconds",
                "Time from sending a request to a member to its response head.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &member,
        ));
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
            "Log lines (access log included) dropped because the log writer fell behind.",
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
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(sticky.clone()),
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
            requests,
            duration,
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
    pub fn member_handles(&self, pool: &crate::core::PoolId, route: &str) -> MemberMetrics {
        let (ns, name) = (pool.namespace.as_str(), pool.name.as_str());
        MemberMetrics {
            ok: self.requests.with_label_values(&[ns, name, route, STATUS_CLASSES[1]]),
            rare: Default::default(),
            duration: self.duration.with_label_values(&[ns, name, route]),
            requests: self.requests.clone(),
            labels: Box::new([ns.to_owned(), name.to_owned(), route.to_owned()]),
            retired: Default::default(),
        }
    }

    /// Removes a member's event series (it left its pool).
    pub fn remove_member(&self, pool: &crate::core::PoolId, route: &str) {
        let (ns, name) = (pool.namespace.as_str(), pool.name.as_str());
        for c in STATUS_CLASSES {
            let _ = self.requests.remove_label_values(&[ns, name, route, c]);
        }
        let _ = self.duration.remove_label_values(&[ns, name, route]);
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

    /// The text exposition: registered metrics plus member state read from `table` now.
    pub fn render(&self, table: &RoutingTable, now_ms: u64) -> String {
        if let Some(read) = DROPPED_LOG_LINES.get() {
            let (dropped, shown) = (read(), self.log_lines_dropped.get());
            self.log_lines_dropped.inc_by(dropped.saturating_sub(shown));
        }
        let families = self.registry.gather();
        let state = state_families(table, now_ms);
        let mut out = String::with_capacity(state.iter().map(|f| f.text.len()).sum::<usize>() + 64 * 1024);
        // Both lists are sorted by name: merge them, so every family comes in name order.
        let mut state = state.into_iter().peekable();
        for mf in &families {
            while let Some(f) = state.next_if(|f| f.name < mf.name()) {
                out.push_str(&f.text);
            }
            if let Err(e) = TextEncoder::new().encode_utf8(std::slice::from_ref(mf), &mut out) {
                tracing::error!(error = %e, "cannot encode metrics");
            }
        }
        state.for_each(|f| out.push_str(&f.text));
        out
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
    fn sample(&mut self, first: Option<(&str, &str)>, labels: &str, last: Option<(&str, &str)>, value: impl Display) {
        use std::fmt::Write;
        self.empty = false;
        let t = &mut self.text;
        t.push_str(self.name);
        t.push('{');
        if let Some((n, v)) = first {
            let _ = write!(t, "{n}=\"{v}\",");
        }
        t.push_str(labels);
        if let Some((n, v)) = last {
            let _ = write!(t, ",{n}=\"{v}\"");
        }
        let _ = writeln!(t, "}} {value}");
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
        h.retire();
        m.remove_member(&id, "pod-0");
        h.observe(404, 0.01);
        h.observe(503, 0.01);
        assert!(request_series(&m).is_empty(), "{:?}", request_series(&m));
    }
}
