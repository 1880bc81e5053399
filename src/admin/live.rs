//! Live figures for the balancer-manager: rates, shares and latency percentiles over the last
//! seconds, which need history the counters alone do not give.
//!
//! A sampler ([`run`]) reads every member's existing counters and latency histogram once a
//! second, off the request path, into a ring of the last [`RING`] samples per member and per
//! pool. The request path pays nothing for it (the counters are the ones `/metrics` exports,
//! plus one per-member count of new sessions). Figures are differences between the newest
//! sample and one [`RATE_WINDOW_S`] (rates, shares, error ratios) or [`LATENCY_WINDOW_S`]
//! (p50/p99) older. Memory: about 7 KiB per member (7 MiB at 1,000 members); a member or pool
//! that leaves the table leaves the history at the next tick.
//!
//! The sampler also notes the time of each member's last state change (`Ok` → `Error` …), since
//! the core keeps no such time for every state.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::core::{Clock, Member, PoolId, Route};
use crate::metrics::{LATENCY_BUCKETS, STICKY_OUTCOMES, StickyOutcome};
use crate::proxy::{MemberExt, Proxy, Snapshot};

/// Seconds of history behind rates, shares and error ratios.
pub const RATE_WINDOW_S: u64 = 10;
/// Seconds of history behind the latency percentiles.
pub const LATENCY_WINDOW_S: u64 = 60;
/// Samples kept per member: one a second over the latency window, and the newest.
pub const RING: usize = LATENCY_WINDOW_S as usize + 1;

const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// One member's counters at one tick.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    at_ms: u64,
    elected: u64,
    responses: u64,
    five_xx: u64,
    failures: u64,
    sessions: u64,
    /// Cumulative latency bucket counts, truncated to 32 bits (differences over a minute wrap
    /// correctly below 4 billion responses a minute).
    buckets: [u32; BUCKETS],
}

#[derive(Debug, Default)]
struct MemberHistory {
    ring: VecDeque<Sample>,
    state: &'static str,
    state_since: Option<SystemTime>,
    tick: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct PoolSample {
    at_ms: u64,
    sticky: [u64; STICKY_OUTCOMES],
    unavailable: u64,
}

#[derive(Debug, Default)]
struct PoolHistory {
    ring: VecDeque<PoolSample>,
    members: HashMap<Route, MemberHistory>,
    tick: u64,
}

/// The sampled history of every pool and member.
#[derive(Debug, Default)]
pub struct Live {
    inner: Mutex<LiveState>,
}

#[derive(Debug, Default)]
struct LiveState {
    pools: HashMap<PoolId, PoolHistory>,
    tick: u64,
    sampled_at: Option<SystemTime>,
}

fn push<T>(ring: &mut VecDeque<T>, s: T) {
    if ring.len() == RING {
        ring.pop_front();
    }
    ring.push_back(s);
}

fn sample(m: &Member, now_ms: u64) -> Sample {
    let rt = &m.runtime;
    let (responses, five_xx, cumulative) =
        rt.extension.get::<MemberExt>().map_or((0, 0, [0; BUCKETS]), |e| e.metrics.totals());
    Sample {
        at_ms: now_ms,
        elected: rt.elected.load(Relaxed),
        responses,
        five_xx,
        failures: rt.failures.iter().map(|f| f.load(Relaxed)).sum(),
        sessions: rt.sessions_started.load(Relaxed),
        buckets: cumulative.map(|c| c as u32),
    }
}

impl Live {
    /// Takes one sample of every member and pool in `snap` (the sampler calls it once a second).
    pub fn tick(&self, snap: &Snapshot, now_ms: u64, wall: SystemTime) {
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        st.tick += 1;
        st.sampled_at = Some(wall);
        let tick = st.tick;
        for (p, ext) in snap.table.pools().iter().zip(&snap.ext) {
            if !st.pools.contains_key(&p.config.id) {
                st.pools.insert(p.config.id.clone(), PoolHistory::default());
            }
            let Some(ph) = st.pools.get_mut(&p.config.id) else { continue };
            ph.tick = tick;
            let (sticky, unavailable) = ext.metrics.totals();
            push(&mut ph.ring, PoolSample { at_ms: now_ms, sticky, unavailable });
            for m in &p.members {
                let s = sample(m, now_ms);
                let state = m.state_name(now_ms);
                let h = match ph.members.get_mut(m.route()) {
                    Some(h) => h,
                    None => ph.members.entry(m.config.route.clone()).or_default(),
                };
                // A member replaced under the same route starts its counters again.
                if h.ring.back().is_some_and(|b| s.elected < b.elected || s.responses < b.responses) {
                    h.ring.clear();
                }
                push(&mut h.ring, s);
                if h.state != state {
                    h.state_since = (!h.state.is_empty()).then_some(wall);
                    h.state = state;
                }
                h.tick = tick;
            }
            ph.members.retain(|_, h| h.tick == tick);
        }
        st.pools.retain(|_, p| p.tick == tick);
    }

    /// When the newest sample was taken (RFC 3339); `None` before the first.
    pub fn sampled_at(&self) -> Option<String> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).sampled_at.map(rfc3339)
    }

    /// The live figures of one pool's members, in the pool's order, and of the pool.
    pub fn figures(&self, pool: &crate::core::Pool, now_ms: u64) -> (Vec<MemberFigures>, PoolFigures) {
        let st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let ph = st.pools.get(&pool.config.id);
        let history = |m: &Member| ph.and_then(|ph| ph.members.get(m.route()));
        let deltas: Vec<Deltas> = pool.members.iter().map(|m| history(m).map(deltas).unwrap_or_default()).collect();
        let all = deltas.iter().fold(Deltas::default(), |mut a, d| {
            a.add(d);
            a
        });
        let members = pool
            .members
            .iter()
            .zip(&deltas)
            .map(|(m, d)| MemberFigures {
                requests_per_second: per_second(d.elected, d.secs),
                share: ratio(d.elected, all.elected),
                new_session_share: ratio(d.sessions, all.sessions),
                in_flight: m.runtime.busy.load(Relaxed),
                p50_ms: quantile(&d.latency, 0.5),
                p99_ms: quantile(&d.latency, 0.99),
                error_ratio: ratio(d.failures, d.elected),
                five_xx_ratio: ratio(d.five_xx, d.responses),
                state_since: history(m).and_then(|h| h.state_since).map(rfc3339),
            })
            .collect();
        let usable = pool.members.iter().filter(|m| m.takes_new(now_ms)).count();
        let failing = pool.members.iter().any(|m| matches!(m.state_name(now_ms), "Error" | "Unhealthy"));
        let (sticky, unavailable) = ph.map_or(([0; STICKY_OUTCOMES], 0), |ph| pool_delta(&ph.ring));
        let pool_figures = PoolFigures {
            members: pool.members.len(),
            members_usable: usable,
            requests_per_second: deltas.iter().map(|d| per_second(d.elected, d.secs)).sum(),
            five_xx_ratio: ratio(all.five_xx + unavailable, all.responses + unavailable),
            p99_ms: quantile(&all.latency, 0.99),
            sticky_hit_ratio: ratio(sticky[StickyOutcome::Hit as usize], sticky.iter().sum()),
            state: match (usable, failing) {
                (0, _) => "Down",
                (_, true) => "Degraded",
                _ => "Ok",
            },
        };
        (members, pool_figures)
    }
}

/// What changed over the windows of one member's history: counts over the rate window
/// (`secs` long), latency buckets over the latency window.
#[derive(Debug, Default)]
struct Deltas {
    elected: u64,
    sessions: u64,
    responses: u64,
    five_xx: u64,
    failures: u64,
    secs: f64,
    latency: [u64; BUCKETS],
}

impl Deltas {
    fn add(&mut self, d: &Deltas) {
        self.elected += d.elected;
        self.sessions += d.sessions;
        self.responses += d.responses;
        self.five_xx += d.five_xx;
        self.failures += d.failures;
        self.latency.iter_mut().zip(d.latency).for_each(|(a, b)| *a += b);
    }
}

/// The oldest sample of `ring` within `secs` of `newest` (half a second of tick jitter allowed).
fn back<T: Copy>(ring: &VecDeque<T>, at_ms: impl Fn(&T) -> u64, newest: T, secs: u64) -> T {
    *ring.iter().find(|s| at_ms(s) + secs * 1000 + 500 >= at_ms(&newest)).unwrap_or(&newest)
}

fn deltas(h: &MemberHistory) -> Deltas {
    let Some(&n) = h.ring.back() else { return Deltas::default() };
    let (o, l) = (back(&h.ring, |s| s.at_ms, n, RATE_WINDOW_S), back(&h.ring, |s| s.at_ms, n, LATENCY_WINDOW_S));
    Deltas {
        elected: n.elected.saturating_sub(o.elected),
        sessions: n.sessions.saturating_sub(o.sessions),
        responses: n.responses.saturating_sub(o.responses),
        five_xx: n.five_xx.saturating_sub(o.five_xx),
        failures: n.failures.saturating_sub(o.failures),
        secs: (n.at_ms - o.at_ms) as f64 / 1000.0,
        latency: bucket_delta(&n, &l),
    }
}

/// Sticky decisions and 503s of a pool over the rate window.
fn pool_delta(ring: &VecDeque<PoolSample>) -> ([u64; STICKY_OUTCOMES], u64) {
    let Some(&newest) = ring.back() else { return ([0; STICKY_OUTCOMES], 0) };
    let old = back(ring, |s| s.at_ms, newest, RATE_WINDOW_S);
    let mut sticky = [0; STICKY_OUTCOMES];
    for (i, d) in sticky.iter_mut().enumerate() {
        *d = newest.sticky[i].saturating_sub(old.sticky[i]);
    }
    (sticky, newest.unavailable.saturating_sub(old.unavailable))
}

fn bucket_delta(newest: &Sample, old: &Sample) -> [u64; BUCKETS] {
    let mut d = [0u64; BUCKETS];
    for (i, x) in d.iter_mut().enumerate() {
        *x = u64::from(newest.buckets[i].wrapping_sub(old.buckets[i]));
    }
    d
}

fn per_second(d: u64, secs: f64) -> f64 {
    if secs > 0.0 { d as f64 / secs } else { 0.0 }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part.min(whole) as f64 / whole as f64)
}

/// The `q` quantile in milliseconds of cumulative bucket counts, interpolated inside the bucket
/// as Prometheus' `histogram_quantile` does; `None` without samples.
fn quantile(cumulative: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total = cumulative[BUCKETS - 1];
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let i = cumulative.iter().position(|&c| c as f64 >= rank)?;
    if i >= LATENCY_BUCKETS.len() {
        return LATENCY_BUCKETS.last().map(|b| b * 1000.0);
    }
    let (lo, below) = if i == 0 { (0.0, 0) } else { (LATENCY_BUCKETS[i - 1], cumulative[i - 1]) };
    let in_bucket = (cumulative[i] - below) as f64;
    let frac = if in_bucket > 0.0 { (rank - below as f64) / in_bucket } else { 1.0 };
    Some((lo + (LATENCY_BUCKETS[i] - lo) * frac) * 1000.0)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A member's live figures (the balancer-manager JSON's member fields).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberFigures {
    /// Attempts sent to the member per second over the rate window.
    pub requests_per_second: f64,
    /// Its share of the pool's attempts over the rate window (`null`: no traffic).
    pub share: Option<f64>,
    /// Its share of the pool's new sessions over the rate window (`null`: none).
    pub new_session_share: Option<f64>,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Median response-head latency over the latency window (`null`: no response).
    pub p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub p99_ms: Option<f64>,
    /// Failed attempts (refused, reset, timeout, failOnStatus) per attempt, rate window.
    pub error_ratio: Option<f64>,
    /// 5xx answers per answer, rate window.
    pub five_xx_ratio: Option<f64>,
    /// When the member's state last changed (`null`: not since routeid first saw it).
    pub state_since: Option<String>,
}

/// A pool's live figures (the overview line).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolFigures {
    /// Members listed.
    pub members: usize,
    /// Members that take new sessions now.
    pub members_usable: usize,
    /// Attempts per second, all members.
    pub requests_per_second: f64,
    /// 5xx answers per answer (routeid's own 503s for want of a member included).
    pub five_xx_ratio: Option<f64>,
    /// 99th percentile latency of all members over the latency window.
    pub p99_ms: Option<f64>,
    /// Sticky hits per sticky decision (`null`: not sticky, or no traffic).
    pub sticky_hit_ratio: Option<f64>,
    /// `Ok`, `Degraded` (a member in error or failing checks) or `Down` (no member takes new
    /// sessions).
    pub state: &'static str,
}

/// Samples `proxy`'s table once a second into `live` until `shutdown` turns true.
pub async fn run(
    live: std::sync::Arc<Live>,
    proxy: std::sync::Arc<Proxy>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => live.tick(&proxy.snapshot(), Clock.now_ms(), SystemTime::now()),
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let mut c = [0u64; BUCKETS];
        // 100 answers: 50 within 1 ms, 49 in (1, 2.5] ms, 1 over 60 s.
        for (i, x) in c.iter_mut().enumerate() {
            *x = match i {
                0 => 50,
                i if i < BUCKETS - 1 => 99,
                _ => 100,
            };
        }
        assert_eq!(quantile(&c, 0.5), Some(1.0));
        let p99 = quantile(&c, 0.99).unwrap();
        assert!((p99 - 2.5).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&c, 1.0), Some(60_000.0), "the +Inf bucket reads as the largest bound");
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
    }

    fn proxy_with(members: &[&str]) -> std::sync::Arc<Proxy> {
        let m: String = members
            .iter()
            .enumerate()
            .map(|(i, r)| format!("      - {{address: \"127.0.0.1:{}\", route: {r}}}\n", 20_000 + i))
            .collect();
        let yaml = format!(
            "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: shop}}\nspec:\n  backend:\n    members:\n{m}"
        );
        let proxy = Proxy::new(crate::proxy::ProxySettings::default());
        proxy.publish(crate::standalone::parse_pools(&yaml).unwrap());
        proxy
    }

    fn ext(m: &Member) -> &MemberExt {
        m.runtime.extension.get::<MemberExt>().unwrap()
    }

    #[test]
    fn figures_follow_the_counters_and_forget_members_that_leave() {
        let proxy = proxy_with(&["a", "b"]);
        let live = Live::default();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        live.tick(&proxy.snapshot(), 1_000, wall);
        let snap = proxy.snapshot();
        let pool = &snap.table.pools()[0];
        let (a, b) = (&pool.members[0], &pool.members[1]);
        a.runtime.elected.fetch_add(30, Relaxed);
        a.runtime.sessions_started.fetch_add(3, Relaxed);
        for _ in 0..30 {
            ext(a).metrics.observe(200, 0.002);
        }
        b.runtime.elected.fetch_add(10, Relaxed);
        b.runtime.failures[0].fetch_add(1, Relaxed);
        for _ in 0..9 {
            ext(b).metrics.observe(503, 0.02);
        }
        live.tick(&snap, 11_000, wall + Duration::from_secs(10));
        let (m, p) = live.figures(pool, 11_000);
        assert_eq!(m[0].requests_per_second, 3.0);
        assert_eq!((m[0].share, m[1].share), (Some(0.75), Some(0.25)));
        assert_eq!((m[0].new_session_share, m[1].new_session_share), (Some(1.0), Some(0.0)));
        let p50 = m[0].p50_ms.unwrap();
        assert!((1.0..=2.5).contains(&p50), "{p50}");
        assert_eq!((m[1].error_ratio, m[1].five_xx_ratio), (Some(0.1), Some(1.0)));
        assert_eq!((p.members, p.members_usable, p.state), (2, 2, "Ok"));
        assert_eq!(p.five_xx_ratio, Some(9.0 / 39.0));
        assert_eq!(p.sticky_hit_ratio, None, "not sticky");
        assert_eq!(m[1].state_since, None, "no change seen yet");

        // b goes into error: Degraded, and the time of the change is kept.
        b.runtime.set_error(11_000, 60_000);
        live.tick(&snap, 12_000, wall + Duration::from_secs(11));
        let (m, p) = live.figures(pool, 12_000);
        assert_eq!(p.state, "Degraded");
        assert_eq!(m[1].state_since.as_deref(), Some("2027-01-15T08:00:11Z"));
        assert_eq!(live.sampled_at().as_deref(), Some("2027-01-15T08:00:11Z"));

        // b leaves the pool: its history goes at the next tick.
        proxy.publish(crate::standalone::parse_pools(&format!(
            "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: shop}}\nspec:\n  backend:\n    members:\n      - {{address: \"{}\", route: a}}\n",
            a.config.address
        )).unwrap());
        live.tick(&proxy.snapshot(), 13_000, wall + Duration::from_secs(12));
        let st = live.inner.lock().unwrap();
        let routes: Vec<&str> = st.pools.values().flat_map(|p| p.members.keys().map(|r| r.as_str())).collect();
        assert_eq!(routes, ["a"]);
        assert_eq!(st.pools.values().next().unwrap().members["a"].ring.len(), 4, "a keeps its history");
    }

    #[test]
    fn a_thousand_members_are_sampled_in_milliseconds() {
        let routes: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
        let proxy = proxy_with(&routes.iter().map(String::as_str).collect::<Vec<_>>());
        let live = Live::default();
        let snap = proxy.snapshot();
        let started = std::time::Instant::now();
        for t in 0..(RING as u64 + 5) {
            live.tick(&snap, 1_000 * (t + 1), SystemTime::now());
        }
        let per_tick = started.elapsed() / (RING as u32 + 5);
        let started = std::time::Instant::now();
        let (m, _) = live.figures(&snap.table.pools()[0], 70_000);
        let figures = started.elapsed();
        eprintln!("1,000 members: a tick takes {per_tick:?}, the figures {figures:?}");
        assert_eq!(m.len(), 1000);
        assert!(per_tick < Duration::from_millis(200), "{per_tick:?}");
        let st = live.inner.lock().unwrap();
        assert!(st.pools.values().all(|p| p.members.values().all(|h| h.ring.len() == RING)), "bounded");
    }

    #[test]
    fn ratios_and_rates() {
        assert_eq!(ratio(1, 0), None);
        assert_eq!(ratio(1, 4), Some(0.25));
        assert_eq!(per_second(10, 2.0), 5.0);
        assert_eq!(per_second(10, 0.0), 0.0);
    }
}
