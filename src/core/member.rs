//! A member and its runtime state.
//!
//! The runtime state ([`MemberRuntime`]) is shared by `Arc` between successive routing tables:
//! a reload or reconcile that keeps a member (same route, same address) keeps its counters, its
//! lb bookkeeping, its error and health state. Everything in it is an atomic so the request path
//! never takes a lock.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use super::config::MemberConfig;
use super::names::MemberStatus;

/// Counts changes of any member's eligibility that are not a matter of time passing (an error
/// set or cleared, a health verdict, a join time). Large ByRequests pools keep their members
/// in an ordered schedule ([`super::pool::Pool`]) and re-sync it when this moves, so whoever
/// changes `error_until_ms`, `healthy`, `healthy_since_ms` or `joined_ms` does it through
/// [`MemberRuntime`]'s methods, which move it. Process-wide: such changes are rare (per
/// failure or health transition, not per request), and a pool re-syncs once per change.
static ELIGIBILITY_EPOCH: AtomicU64 = AtomicU64::new(0);

/// The current eligibility epoch (see [`ELIGIBILITY_EPOCH`]).
pub fn eligibility_epoch() -> u64 {
    ELIGIBILITY_EPOCH.load(std::sync::atomic::Ordering::Acquire)
}

/// Tells the schedules that some member's eligibility changed (after the change is stored).
pub fn eligibility_changed() {
    ELIGIBILITY_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Release);
}

/// Counters and health of one member that outlive table rebuilds.
#[derive(Debug)]
pub struct MemberRuntime {
    /// Apache's `lbstatus`: the request-counting credit.
    pub lbstatus: AtomicI64,
    /// Requests in flight (Apache `busy`).
    pub busy: AtomicU64,
    /// Times chosen (Apache `elected`).
    pub elected: AtomicU64,
    /// Failed attempts (connect refused, reset, timeout, failOnStatus).
    pub errors: AtomicU64,
    /// Milliseconds on the [`Clock`] until which the member is in error; 0 when it is not.
    /// Written through [`MemberRuntime::set_error`] and [`MemberRuntime::clear_error`].
    pub error_until_ms: AtomicU64,
    /// Request bytes sent to the member.
    pub bytes_to: AtomicU64,
    /// Response bytes received from the member.
    pub bytes_from: AtomicU64,
    /// Active health-check verdict (true until checks say otherwise); written through
    /// [`MemberRuntime::set_healthy`].
    pub healthy: AtomicBool,
    /// When the member last became healthy again (0: never went down).
    pub healthy_since_ms: AtomicU64,
    /// When the member joined the pool (slow start ramps from here).
    pub joined_ms: AtomicU64,
    /// Exponentially weighted response latency in microseconds (0: none yet).
    pub ewma_latency_us: AtomicU64,
    /// When the last latency sample arrived.
    pub latency_at_ms: AtomicU64,
    /// Spare capacity the member last reported (`X-Heartbeat: ready=N`); -1: never.
    pub heartbeat_ready: AtomicI64,
    /// When that report arrived.
    pub heartbeat_at_ms: AtomicU64,
    /// Failed attempts by kind: connect, exchange (reset / closed), timeout, failOnStatus.
    pub failures: [AtomicU64; 4],
    /// Health checks passed and failed.
    pub checks: [AtomicU64; 2],
    /// Sessions the member was given (answers of a sticky pool that chose it by the lb method:
    /// `BALANCER_ROUTE_CHANGED`), for the balancer-manager's share of new sessions.
    pub sessions_started: AtomicU64,
    /// What an adapter keeps beside the member: the proxy's connection pool, parsed authority,
    /// metric handles and access-log fields.
    pub extension: Extension,
}

/// A per-member slot for an adapter's own state. Tied to the runtime, that state lives exactly
/// as long as the member keeps its route and address, and a table rebuild carries it along
/// with the runtime: no per-member work in the adapter when 1 of 10,000 members changes. The
/// core knows nothing of its type (`Any`), so it stays free of hyper.
#[derive(Default)]
pub struct Extension(OnceLock<Box<dyn std::any::Any + Send + Sync>>);

impl Extension {
    /// The state, made by `init` on first use. `None` only if a value of another type is there
    /// (two adapters sharing one member): the caller then goes without.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.0.get_or_init(|| Box::new(init())).downcast_ref()
    }

    /// The state if it was made.
    pub fn get<T: std::any::Any + Send + Sync>(&self) -> Option<&T> {
        self.0.get()?.downcast_ref()
    }
}

impl std::fmt::Debug for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "Extension(set)" } else { "Extension(empty)" })
    }
}

/// Kinds of failed attempts, indexing [`MemberRuntime::failures`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection was refused or timed out.
    Connect = 0,
    /// Reset or closed before a response.
    Exchange = 1,
    /// No response head within the response timeout.
    Timeout = 2,
    /// A `failOnStatus` status.
    Status = 3,
}

impl FailureKind {
    /// All kinds with their metric label.
    pub const ALL: [(FailureKind, &'static str); 4] = [
        (FailureKind::Connect, "connect"),
        (FailureKind::Exchange, "reset"),
        (FailureKind::Timeout, "timeout"),
        (FailureKind::Status, "status"),
    ];
}

impl Default for MemberRuntime {
    fn default() -> Self {
        MemberRuntime::joined_at(Clock.now_ms())
    }
}

impl MemberRuntime {
    /// A fresh runtime for a member that joined at `now_ms`.
    pub fn joined_at(now_ms: u64) -> Self {
        MemberRuntime {
            lbstatus: AtomicI64::new(0),
            busy: AtomicU64::new(0),
            elected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            error_until_ms: AtomicU64::new(0),
            bytes_to: AtomicU64::new(0),
            bytes_from: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            healthy_since_ms: AtomicU64::new(0),
            joined_ms: AtomicU64::new(now_ms),
            ewma_latency_us: AtomicU64::new(0),
            latency_at_ms: AtomicU64::new(0),
            heartbeat_ready: AtomicI64::new(-1),
            heartbeat_at_ms: AtomicU64::new(0),
            failures: Default::default(),
            checks: Default::default(),
            sessions_started: AtomicU64::new(0),
            extension: Extension::default(),
        }
    }

    /// Whether the member is in error at `now_ms`. Once the error time has passed the member is
    /// tried again (Apache `retry`): no request is needed to "clear" it.
    pub fn in_error(&self, now_ms: u64) -> bool {
        self.error_until_ms.load(Relaxed) > now_ms
    }

    /// Puts the member in error until `now_ms + retry_after_ms`.
    pub fn set_error(&self, now_ms: u64, retry_after_ms: u64) {
        self.errors.fetch_add(1, Relaxed);
        self.error_until_ms.store(now_ms.saturating_add(retry_after_ms).max(1), Relaxed);
        eligibility_changed();
    }

    /// Ends the member's error period now (Apache `forcerecovery`).
    pub fn clear_error(&self) {
        self.error_until_ms.store(0, Relaxed);
        eligibility_changed();
    }

    /// Records the active checks' verdict; a member that passes again starts its slow start
    /// at `now_ms`. True when the verdict changed.
    pub fn set_healthy(&self, healthy: bool, now_ms: u64) -> bool {
        if healthy {
            if self.healthy.load(Relaxed) {
                return false;
            }
            self.healthy_since_ms.store(now_ms, Relaxed);
        }
        let changed = self.healthy.swap(healthy, Relaxed) != healthy;
        if changed {
            eligibility_changed();
        }
        changed
    }

    /// Sets when the member joined (slow start ramps from there).
    pub fn set_joined(&self, ms: u64) {
        self.joined_ms.store(ms, Relaxed);
        eligibility_changed();
    }

    /// Not in error and not failed by health checks.
    pub fn usable(&self, now_ms: u64) -> bool {
        !self.in_error(now_ms) && self.healthy.load(Relaxed)
    }

    /// When the member last became usable: it joined, its error time ran out, or its health
    /// checks passed again. Slow start ramps its weight from here.
    pub fn usable_since_ms(&self, now_ms: u64) -> u64 {
        let error_end = self.error_until_ms.load(Relaxed).min(now_ms);
        self.joined_ms.load(Relaxed).max(error_end).max(self.healthy_since_ms.load(Relaxed))
    }

    /// Folds one response latency into the EWMA (the new sample weighs 1/4: a slowed member is
    /// noticed within a few requests). The sample is folded into the estimate as it has faded
    /// by now ([`MemberRuntime::latency_estimate_us`]), not into the last stored value, so a
    /// probe of a recovered member continues its fade instead of restarting it.
    pub fn observe_latency(&self, micros: u64, now_ms: u64) {
        let old = self.ewma_latency_us.load(Relaxed);
        let new = if old == 0 { micros } else { (self.latency_estimate_us(now_ms) * 3 + micros) / 4 };
        self.ewma_latency_us.store(new.max(1), Relaxed);
        self.latency_at_ms.store(now_ms, Relaxed);
    }

    /// The latency LeastLatency sees now, in microseconds (and the gauge shows): the EWMA faded
    /// towards [`super::lb::DEFAULT_LATENCY_US`] by the time since its last sample,
    /// exponentially with time constant [`super::lb::LATENCY_FADE_TAU_MS`] and all the way after
    /// [`super::lb::LATENCY_DECAY_MS`]; the default without a sample.
    pub fn latency_estimate_us(&self, now_ms: u64) -> u64 {
        use super::lb::{DEFAULT_LATENCY_US, LATENCY_DECAY_MS, LATENCY_FADE_TAU_MS};
        let ewma = self.ewma_latency_us.load(Relaxed);
        let age = now_ms.saturating_sub(self.latency_at_ms.load(Relaxed));
        if ewma == 0 || age >= LATENCY_DECAY_MS {
            return DEFAULT_LATENCY_US;
        }
        let left = (-(age as f64) / LATENCY_FADE_TAU_MS).exp();
        let d = DEFAULT_LATENCY_US as f64;
        (d + (ewma as f64 - d) * left).round().max(1.0) as u64
    }

    /// Counts a failed attempt of this kind.
    pub fn count_failure(&self, kind: FailureKind) {
        self.failures[kind as usize].fetch_add(1, Relaxed);
    }

    /// Records a heartbeat report of spare capacity.
    pub fn report_heartbeat(&self, ready: u32, now_ms: u64) {
        self.heartbeat_ready.store(i64::from(ready), Relaxed);
        self.heartbeat_at_ms.store(now_ms, Relaxed);
    }
}

/// One request in flight to a member (Apache `busy`, `routeid_member_in_flight`): taken when the
/// member is chosen and released when the guard drops — when the response body ends, the
/// tunnel of an upgraded connection closes, or the request fails or is abandoned. ByBusyness
/// and LeastLatency then see streamed bodies, long polls and server-sent events as the load
/// they are. It also carries the runtime, so the body that holds it can count bytes.
#[derive(Debug)]
pub struct BusyGuard(Arc<MemberRuntime>);

impl BusyGuard {
    /// Counts a request in flight to `member` (and one more election).
    pub fn enter(member: &Arc<MemberRuntime>) -> BusyGuard {
        member.busy.fetch_add(1, Relaxed);
        member.elected.fetch_add(1, Relaxed);
        BusyGuard(Arc::clone(member))
    }

    /// The member's runtime.
    pub fn runtime(&self) -> &Arc<MemberRuntime> {
        &self.0
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Relaxed);
    }
}

/// A member of a pool: validated configuration plus shared runtime state.
#[derive(Debug, Clone)]
pub struct Member {
    /// What the spec says.
    pub config: MemberConfig,
    /// What happened to it; survives rebuilds.
    pub runtime: Arc<MemberRuntime>,
}

impl Member {
    /// The member's route.
    pub fn route(&self) -> &str {
        &self.config.route
    }

    /// May take new (non-sticky) sessions at normal priority.
    pub fn takes_new(&self, now_ms: u64) -> bool {
        self.config.status == MemberStatus::Ok && self.runtime.usable(now_ms)
    }

    /// May take new sessions when no normal member of its lbSet can.
    pub fn takes_new_as_standby(&self, now_ms: u64) -> bool {
        self.config.status == MemberStatus::HotStandby && self.runtime.usable(now_ms)
    }

    /// May take requests of sessions already pinned to it.
    pub fn takes_sticky(&self, now_ms: u64) -> bool {
        matches!(self.config.status, MemberStatus::Ok | MemberStatus::Drain | MemberStatus::HotStandby)
            && self.runtime.usable(now_ms)
    }

    /// A short state name for status and the balancer-manager.
    pub fn state_name(&self, now_ms: u64) -> &'static str {
        if self.runtime.in_error(now_ms) {
            return "Error";
        }
        if !self.runtime.healthy.load(Relaxed) {
            return "Unhealthy";
        }
        match self.config.status {
            MemberStatus::Ok => "Ok",
            MemberStatus::Drain => "Drain",
            MemberStatus::Disabled => "Disabled",
            MemberStatus::HotStandby => "HotStandby",
            MemberStatus::Stopped => "Stopped",
        }
    }
}

/// Monotonic milliseconds since the process first asked: the one timeline of error deadlines,
/// health transitions and slow start. Tests drive the core with explicit `now_ms` values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock;

static PROCESS_START: OnceLock<std::time::Instant> = OnceLock::new();

impl Clock {
    /// Milliseconds on the process timeline, at least 1.
    pub fn now_ms(&self) -> u64 {
        self.ms_at(std::time::Instant::now())
    }

    /// `at` on the process timeline: for a caller that read the clock already (a request reads
    /// it once for its timings and its member choice).
    pub fn ms_at(&self, at: std::time::Instant) -> u64 {
        at.saturating_duration_since(*PROCESS_START.get_or_init(|| at)).as_millis() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;
    use std::time::{Duration, Instant};

    /// A time read once serves every use of it: the timeline puts it where `now_ms` would have,
    /// and never before the timeline's start.
    #[test]
    fn an_instant_already_read_lands_on_the_process_timeline() {
        // The timeline starts at the process's first reading (maybe another test's).
        Clock.now_ms();
        let at = Instant::now();
        let ms = Clock.ms_at(at);
        assert!(ms >= 1);
        assert_eq!(Clock.ms_at(at + Duration::from_millis(250)), ms + 250);
        assert!(Clock.now_ms() >= ms);
        let long_ago = at.checked_sub(Duration::from_secs(3600)).unwrap_or(at);
        assert!(Clock.ms_at(long_ago) >= 1);
    }
}
