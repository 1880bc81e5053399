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

use std::sync::atomic::Ordering::Relaxed;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::core::{FailureKind, Pool, RoutingTable};

/// Response-head latency buckets, in seconds: 1 ms to 60 s.
const LATENCY_BUCKETS: [f64; 15] =
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
    /// A value that is not a valid route (bad bytes, too long).
    Malformed = 5,
}

const STICKY_LABELS: [&str; 6] = ["hit", "new-session", "no-route", "unknown-route", "route-changed", "malformed"];

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

    /// The member left its pool: series made from now on are removed at once.
    pub fn retire(&self) {
        self.retired.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Per-pool handles.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    sticky: [IntCounter; 6],
    failovers: [IntCounter; 2],
    unavailable: IntCounter,
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
    /// Requests no pool matched (404).
    pub unmatched: IntCounter,
    /// Client-side failures by [`ClientError`], made once.
    client_errors: [IntCounter; 4],
    /// Log lines dropped because the log writer fell behind (brought up to date at scrape).
    log_lines_dropped: IntCounter,
    /// Routing tables published.
    pub publications: IntCounter,
    /// Controller reconciles by result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Controller watch restarts by resource.
    pub watch_restarts: IntCounterVec,
    /// Unix time of the controller's last complete sync.
    pub last_sync: Gauge,
    /// Failed TLS handshakes by `reason` (a bounded set, see `proxy::tls`).
    pub tls_handshake_errors: IntCounterVec,
    /// `notAfter` of each Secret's certificate, by `namespace` and `secret`.
    pub tls_expiry: GaugeVec,
    /// Connections closed for their PROXY protocol header, by `reason`.
    pub proxy_protocol_rejected: IntCounterVec,
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
        let reconciles = must(IntCounterVec::new(
            Opts::new("routeid_controller_reconciles_total", "Controller reconciles, by result."),
            &["result"],
        ));
        let watch_restarts = must(IntCounterVec::new(
            Opts::new("routeid_controller_watch_restarts_total", "Kubernetes watches restarted, by resource."),
            &["resource"],
        ));
        let last_sync = must(Gauge::new(
            "routeid_controller_last_sync_timestamp_seconds",
            "Unix time of the controller's last complete sync.",
        ));
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
            Box::new(unmatched.clone()),
            Box::new(client_error_vec),
            Box::new(log_lines_dropped.clone()),
            Box::new(publications.clone()),
            Box::new(reconciles.clone()),
            Box::new(watch_restarts.clone()),
            Box::new(last_sync.clone()),
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
            unmatched,
            client_errors,
            log_lines_dropped,
            publications,
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
    }

    /// The text exposition: registered metrics plus member state read from `table` now.
    pub fn render(&self, table: &RoutingTable, now_ms: u64) -> String {
        if let Some(read) = DROPPED_LOG_LINES.get() {
            let (dropped, shown) = (read(), self.log_lines_dropped.get());
            self.log_lines_dropped.inc_by(dropped.saturating_sub(shown));
        }
        let mut families = self.registry.gather();
        families.extend(state_families(table, now_ms));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

const STATES: [&str; 7] = ["ok", "error", "unhealthy", "drain", "disabled", "standby", "stopped"];

/// Member state as metric families, from the table's atomics.
fn state_families(table: &RoutingTable, now_ms: u64) -> Vec<prometheus::proto::MetricFamily> {
    let r = Registry::new();
    let member = ["namespace", "pool", "member"];
    let in_flight =
        must(IntGaugeVec::new(Opts::new("routeid_member_in_flight", "Requests in flight to a member."), &member));
    let bytes_to = must(IntCounterVec::new(
        Opts::new("routeid_member_sent_bytes_total", "Request body bytes sent to a member."),
        &member,
    ));
    let bytes_from = must(IntCounterVec::new(
        Opts::new("routeid_member_received_bytes_total", "Response body bytes received from a member."),
        &member,
    ));
    let elected = must(IntCounterVec::new(
        Opts::new("routeid_member_elected_total", "Attempts sent to a member (Apache elected)."),
        &member,
    ));
    let failures = must(IntCounterVec::new(
        Opts::new("routeid_member_failures_total", "Failed attempts on a member, by kind."),
        &["namespace", "pool", "member", "kind"],
    ));
    let checks = must(IntCounterVec::new(
        Opts::new("routeid_member_health_checks_total", "Active health checks of a member, by result."),
        &["namespace", "pool", "member", "result"],
    ));
    let state = must(IntGaugeVec::new(
        Opts::new("routeid_member_state", "1 for the member's current state."),
        &["namespace", "pool", "member", "state"],
    ));
    let ewma = must(prometheus::GaugeVec::new(
        Opts::new(
            "routeid_member_latency_ewma_seconds",
            "Moving average of a member's response-head latency, faded towards 1 ms since its last sample: what LeastLatency sees.",
        ),
        &member,
    ));
    let pool_members =
        must(IntGaugeVec::new(Opts::new("routeid_pool_members", "Members of a pool."), &["namespace", "pool"]));
    let pool_usable = must(IntGaugeVec::new(
        Opts::new("routeid_pool_members_usable", "Members of a pool that take new sessions now."),
        &["namespace", "pool"],
    ));
    for p in table.pools() {
        let (ns, name) = (p.config.id.namespace.as_str(), p.config.id.name.as_str());
        pool_members.with_label_values(&[ns, name]).set(p.members.len() as i64);
        pool_usable.with_label_values(&[ns, name]).set(p.members.iter().filter(|m| m.takes_new(now_ms)).count() as i64);
        for m in &p.members {
            let l = [ns, name, m.route()];
            let rt = &m.runtime;
            in_flight.with_label_values(&l).set(rt.busy.load(Relaxed) as i64);
            bytes_to.with_label_values(&l).inc_by(rt.bytes_to.load(Relaxed));
            bytes_from.with_label_values(&l).inc_by(rt.bytes_from.load(Relaxed));
            elected.with_label_values(&l).inc_by(rt.elected.load(Relaxed));
            for (kind, label) in FailureKind::ALL {
                failures
                    .with_label_values(&[ns, name, m.route(), label])
                    .inc_by(rt.failures[kind as usize].load(Relaxed));
            }
            for (i, result) in ["pass", "fail"].into_iter().enumerate() {
                checks.with_label_values(&[ns, name, m.route(), result]).inc_by(rt.checks[i].load(Relaxed));
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
                state.with_label_values(&[ns, name, m.route(), s]).set(i64::from(s == current));
            }
            ewma.with_label_values(&l).set(rt.latency_estimate_us(now_ms) as f64 / 1e6);
        }
    }
    for c in [
        Box::new(in_flight) as Box<dyn prometheus::core::Collector>,
        Box::new(bytes_to),
        Box::new(bytes_from),
        Box::new(elected),
        Box::new(failures),
        Box::new(checks),
        Box::new(state),
        Box::new(ewma),
        Box::new(pool_members),
        Box::new(pool_usable),
    ] {
        must(r.register(c));
    }
    r.gather()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::PoolId;

    fn request_series(m: &Metrics) -> Vec<String> {
        m.render(&RoutingTable::default(), 1)
            .lines()
            .filter(|l| l.starts_with("routeid_member_requests_total{"))
            .map(|l| l.split_once("code=\"").map_or("", |(_, r)| &r[..3]).to_owned())
            .collect()
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
