//! A pool at run time and the choice of a member for one request attempt.
//!
//! [`Pool::choose`] applies the stickiness rules of the README: a route that names a member that takes sticky requests
//! wins; a route that names an unusable member fails over (or, with `failover: false`, gives
//! 503); an unknown or absent route is balanced by the lb method over the members that take new
//! sessions, then over hot standbys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::config::PoolConfig;
use super::lb::{ByBusyness, ByRequests, ByTraffic, Heartbeat, LbContext, LbMethod, LeastLatency};
use super::member::{Member, MemberRuntime, eligibility_epoch};
use super::names::{LbMethodName, MemberStatus};
use super::route::Route;
use super::schedule::Schedule;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why the lb method chose a member (the request is then a *route change* in a sticky pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balanced {
    /// The request carried no route.
    NoRoute,
    /// The route names no member of this pool (dead pod, forged value).
    UnknownRoute,
    /// The route names a member that cannot take it now (error, disabled, stopped).
    Failover,
    /// An earlier attempt of this request failed.
    Retry,
}

impl Balanced {
    /// A bounded label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Balanced::NoRoute => "no-route",
            Balanced::UnknownRoute => "unknown-route",
            Balanced::Failover => "failover",
            Balanced::Retry => "retry",
        }
    }
}

/// The outcome of choosing a member for one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The route named a member that takes the request.
    StickyHit(usize),
    /// The lb method chose.
    Balanced(usize, Balanced),
    /// Nothing can take the request.
    Unavailable(Unavailable),
}

/// Why no member can take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Every member is in error, disabled, stopped, draining or already tried.
    NoUsableMember,
    /// `failover: false` and the routed member is unusable.
    StickyMemberUnusable,
    /// A new request of an HTTPRoute rule fell in its invalid backendRefs' share
    /// ([`super::gateway::InvalidShare`]): the spec's `500`, no member at fault.
    InvalidBackend,
}

/// Members already attempted by one request, so a retry goes elsewhere. Fixed size: attempts
/// are bounded by [`super::config::MAX_ATTEMPTS`], and it lives on the stack.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tried {
    list: [u32; super::config::MAX_ATTEMPTS as usize],
    len: usize,
}

impl Tried {
    /// Records an attempt on member `i`.
    pub fn push(&mut self, i: usize) {
        if self.len < self.list.len() {
            self.list[self.len] = i as u32;
            self.len += 1;
        }
    }

    /// Whether member `i` was attempted.
    pub fn contains(&self, i: usize) -> bool {
        self.list[..self.len].contains(&(i as u32))
    }

    /// The members attempted, in order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.list[..self.len].iter().map(|&i| i as usize)
    }

    /// Number of attempts so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No attempt yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Up to this many members, a route is found by comparing routes, not by hashing.
const SMALL_POOL: usize = 8;

/// [`Pool::previous_index`] of a member that is new in this build.
const NOT_CARRIED: u32 = u32::MAX;

/// From this many members on, a ByRequests pool picks with a [`Schedule`] (O(distinct
/// weights and log members) per pick under a short per-pool lock) instead of the lock-free
/// scan of every member (measured in `bench/README.md`, "Pool size": a schedule pick costs
/// about as much as scanning three or four members, 29 ns, and the scan takes no lock).
const SCHEDULE_FROM: usize = 8;

/// The [`Schedule`] of a large ByRequests pool, built on its first pick.
#[derive(Debug)]
enum Scheduled {
    /// A small pool or another lb method: the lb method's scan over the members' atomics.
    Off,
    /// Not built yet: the members' `lbstatus` atomics hold the credit.
    Unbuilt,
    Built(Box<Schedule>),
    /// A newer pool took over (its `lbstatus` was written back to the atomics): picks made on
    /// this superseded snapshot scan the atomics, exactly, as a small pool does.
    Retired,
}

/// How a pool finds a member by route.
#[derive(Debug)]
enum RouteIndex {
    /// A few members: compare routes one by one, cheaper than hashing.
    Scan,
    /// Members sorted by route, as the controller derives them: binary search, nothing to
    /// build when a 10,000-member pool is republished.
    Sorted,
    /// Members in listed order (static pools): a hash index.
    Hashed(HashMap<Route, usize>),
}

/// A pool ready to serve: validated config, members with shared runtime, and an lb method.
#[derive(Debug)]
pub struct Pool {
    /// The validated configuration, shared with whoever published it.
    pub config: Arc<PoolConfig>,
    /// Members in listed order.
    pub members: Vec<Member>,
    /// Per member, its index in the pool this one was built from ([`NOT_CARRIED`] if new).
    carried: Vec<u32>,
    route_index: RouteIndex,
    /// The distinct lbSets, lowest first.
    lb_sets: Vec<u32>,
    lb: Box<dyn LbMethod>,
    /// New requests so far of a rule with an invalid backendRefs' share (only those count).
    new_requests: AtomicU64,
    /// Whether picks go through `schedule` (large ByRequests pools), so small pools never lock.
    uses_schedule: bool,
    schedule: Mutex<Scheduled>,
}

impl Pool {
    /// Builds a pool, taking each member's runtime state from `previous` when the route and the
    /// address are unchanged, so a rebuild keeps counters, error and health state.
    ///
    /// The cost is one pass over the members without hashing or allocating per member when
    /// both pools are sorted by route (derived pools): the controller republishes a pool on
    /// every EndpointSlice change.
    pub fn new(config: impl Into<Arc<PoolConfig>>, previous: Option<&Pool>) -> Pool {
        Pool::with_schedule_from(config, previous, SCHEDULE_FROM)
    }

    /// [`Pool::new`], scheduling ByRequests picks from `schedule_from` members on (tests drive
    /// the schedule and the scan side by side with it).
    fn with_schedule_from(config: impl Into<Arc<PoolConfig>>, previous: Option<&Pool>, schedule_from: usize) -> Pool {
        let config: Arc<PoolConfig> = config.into();
        if let Some(prev) = previous {
            prev.retire_schedule();
        }
        let n = config.members.len();
        let sorted = n > SMALL_POOL && config.members_sorted;
        let mut carried = Vec::new();
        if let Some(prev) = previous {
            carried = vec![NOT_CARRIED; n];
            if sorted && matches!(prev.route_index, RouteIndex::Sorted) {
                // Both sorted: one merge walk.
                let (mut i, mut j) = (0, 0);
                while i < n && j < prev.members.len() {
                    let (new, old) = (&config.members[i], &prev.members[j].config);
                    match new.route.cmp(&old.route) {
                        std::cmp::Ordering::Less => i += 1,
                        std::cmp::Ordering::Greater => j += 1,
                        std::cmp::Ordering::Equal => {
                            if new.address == old.address {
                                carried[i] = j as u32;
                            }
                            i += 1;
                            j += 1;
                        }
                    }
                }
            } else {
                for (i, mc) in config.members.iter().enumerate() {
                    if let Some(j) = prev.member_index(&mc.route)
                        && prev.members[j].config.address == mc.address
                    {
                        carried[i] = j as u32;
                    }
                }
            }
        }
        let members: Vec<Member> = config
            .members
            .iter()
            .enumerate()
            .map(|(i, mc)| {
                let runtime = match (previous, carried.get(i)) {
                    (Some(prev), Some(&j)) if j != NOT_CARRIED => Arc::clone(&prev.members[j as usize].runtime),
                    _ => Arc::new(MemberRuntime::default()),
                };
                Member { config: mc.clone(), runtime }
            })
            .collect();
        let route_index = if n <= SMALL_POOL {
            RouteIndex::Scan
        } else if sorted {
            RouteIndex::Sorted
        } else {
            RouteIndex::Hashed(members.iter().enumerate().map(|(i, m)| (m.config.route.clone(), i)).collect())
        };
        let mut lb_sets: Vec<u32> = Vec::new();
        for m in &members {
            if !lb_sets.contains(&m.config.lb_set) {
                lb_sets.push(m.config.lb_set);
            }
        }
        lb_sets.sort_unstable();
        let lb: Box<dyn LbMethod> = match config.lb_method {
            LbMethodName::ByRequests => Box::new(ByRequests),
            LbMethodName::ByTraffic => Box::new(ByTraffic),
            LbMethodName::ByBusyness => Box::new(ByBusyness),
            LbMethodName::Heartbeat => Box::new(Heartbeat),
            LbMethodName::LeastLatency => Box::new(LeastLatency::default()),
        };
        let uses_schedule = config.lb_method == LbMethodName::ByRequests && n >= schedule_from;
        let schedule = Mutex::new(if uses_schedule { Scheduled::Unbuilt } else { Scheduled::Off });
        Pool {
            config,
            members,
            carried,
            route_index,
            lb_sets,
            lb,
            new_requests: AtomicU64::new(0),
            uses_schedule,
            schedule,
        }
    }

    /// Hands the request-counting state over to a pool built from this one: writes the
    /// schedule's credit back to the members' `lbstatus`, where the new pool reads it.
    fn retire_schedule(&self) {
        if self.uses_schedule {
            let mut s = self.lock_schedule();
            if let Scheduled::Built(sched) = &*s {
                sched.materialise(&self.members);
            }
            *s = Scheduled::Retired;
        }
    }

    /// The schedule lock. A panic under it (a bug) leaves the schedule suspect: it is dropped
    /// and rebuilt from the atomics, which hold the credit as of the last hand-over.
    fn lock_schedule(&self) -> MutexGuard<'_, Scheduled> {
        match self.schedule.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                let mut g = poisoned.into_inner();
                *g = Scheduled::Unbuilt;
                self.schedule.clear_poison();
                g
            }
        }
    }

    /// Runs `f` on this pool's schedule brought up to `ctx`'s time, or returns `None` when the
    /// pool picks by scanning (small pool, another method, superseded snapshot).
    fn with_schedule<R>(&self, ctx: &LbContext, f: impl FnOnce(&mut Schedule, &LbContext) -> R) -> Option<R> {
        if !self.uses_schedule {
            return None;
        }
        let mut s = self.lock_schedule();
        let epoch = eligibility_epoch();
        if matches!(*s, Scheduled::Unbuilt) {
            *s = Scheduled::Built(Box::new(Schedule::new(&self.members, &self.lb_sets, ctx, epoch)));
        }
        let Scheduled::Built(sched) = &mut *s else {
            return None;
        };
        let ctx = sched.advance(&self.members, ctx, epoch);
        Some(f(sched, &ctx))
    }

    /// Member `i`'s request-counting credit (Apache's `lbstatus`, the balancer-manager's
    /// `lbstatus`), wherever it is kept.
    pub fn lbstatus(&self, i: usize) -> i64 {
        if self.uses_schedule
            && let Scheduled::Built(sched) = &*self.lock_schedule()
        {
            return sched.lbstatus(i);
        }
        self.members[i].runtime.lbstatus.load(Ordering::Relaxed)
    }

    /// Where member `i` came from in the pool this one was built from: `Some(j)` when the
    /// member kept its route and address (and so its runtime state). The proxy carries its own
    /// per-member state (connections, metric handles) along the same mapping.
    pub fn previous_index(&self, i: usize) -> Option<usize> {
        self.carried.get(i).filter(|&&j| j != NOT_CARRIED).map(|&j| j as usize)
    }

    /// The member with this route.
    pub fn member(&self, route: &str) -> Option<&Member> {
        self.member_index(route).map(|i| &self.members[i])
    }

    /// The member index with this route.
    pub fn member_index(&self, route: &str) -> Option<usize> {
        match &self.route_index {
            RouteIndex::Scan => self.members.iter().position(|m| m.config.route == route),
            RouteIndex::Sorted => {
                self.members.binary_search_by(|m| m.config.route.as_bytes().cmp(route.as_bytes())).ok()
            }
            RouteIndex::Hashed(map) => map.get(route).copied(),
        }
    }

    /// The lb method's name.
    pub fn lb_name(&self) -> &'static str {
        self.lb.name()
    }

    /// The lb context at `now_ms`.
    pub fn lb_context(&self, now_ms: u64) -> LbContext {
        let h = &self.config.health;
        LbContext {
            now_ms,
            slow_start_ms: h.slow_start.map_or(0, |d| d.as_millis() as u64),
            // Three missed checks make a heartbeat stale.
            heartbeat_ttl_ms: h.active.as_ref().map_or(0, |a| 3 * a.interval.as_millis() as u64),
        }
    }

    /// Chooses a member for one attempt of a request whose route (if any) is `route`.
    pub fn choose(&self, route: Option<&str>, tried: &Tried, now_ms: u64) -> Choice {
        let ctx = self.lb_context(now_ms);
        let mut reason = if tried.is_empty() { Balanced::NoRoute } else { Balanced::Retry };
        if let Some(route) = route {
            match self.member_index(route) {
                Some(i) if tried.is_empty() => {
                    if self.members[i].takes_sticky(now_ms) {
                        let set = self.members[i].config.lb_set;
                        let same_set =
                            |j: usize| self.members[j].config.lb_set == set && self.members[j].takes_new(now_ms);
                        // Gateway API session persistence: weights apply to new sessions only.
                        if self.config.sticky.as_ref().is_none_or(|s| s.persistence.is_none()) {
                            let scheduled = self.with_schedule(&ctx, |sched, ctx| {
                                let pos = self.lb_sets.binary_search(&set).unwrap_or_default();
                                sched.account_sticky(&self.members, pos, i, ctx);
                            });
                            if scheduled.is_none() {
                                self.lb.account_sticky(&self.members, &same_set, i, &ctx);
                            }
                        }
                        return Choice::StickyHit(i);
                    }
                    if self.config.sticky.as_ref().is_some_and(|s| !s.failover) {
                        return Choice::Unavailable(Unavailable::StickyMemberUnusable);
                    }
                    reason = Balanced::Failover;
                }
                Some(_) if self.config.sticky.as_ref().is_some_and(|s| !s.failover) => {
                    return Choice::Unavailable(Unavailable::StickyMemberUnusable);
                }
                Some(_) => {}
                None if tried.is_empty() => reason = Balanced::UnknownRoute,
                None => {}
            }
        }
        if tried.is_empty() && self.takes_invalid_share() {
            return Choice::Unavailable(Unavailable::InvalidBackend);
        }
        if let Some(i) = self.balance(tried, &ctx) {
            return Choice::Balanced(i, reason);
        }
        // Apache `forcerecovery`: when every member that could serve is in error, retry them
        // rather than fail every request until their retry time has passed.
        if self.config.health.force_recovery
            && self.force_recovery(tried, now_ms)
            && let Some(i) = self.balance(tried, &ctx)
        {
            return Choice::Balanced(i, reason);
        }
        Choice::Unavailable(Unavailable::NoUsableMember)
    }

    /// Whether this new request belongs to the rule's invalid backendRefs (one atomic add, and
    /// only in a rule that has some; the lb method is not consulted, so its sequence over the
    /// valid members is unchanged).
    fn takes_invalid_share(&self) -> bool {
        let Some(share) = self.config.gateway.as_ref().and_then(|g| g.invalid.as_ref()) else {
            return false;
        };
        share.takes(self.new_requests.fetch_add(1, Ordering::Relaxed))
    }

    /// Apache's order: lbSet 0's normal members, then its hot standbys, then lbSet 1's, ...
    /// A large ByRequests pool picks with its schedule, every other pool scans its members.
    fn balance(&self, tried: &Tried, ctx: &LbContext) -> Option<usize> {
        if let Some(chosen) = self.with_schedule(ctx, |sched, ctx| sched.balance(&self.members, tried, ctx)) {
            return chosen;
        }
        let now = ctx.now_ms;
        for &set in &self.lb_sets {
            let in_set = |i: usize| !tried.contains(i) && self.members[i].config.lb_set == set;
            let normal = |i: usize| in_set(i) && self.members[i].takes_new(now);
            if let Some(i) = self.lb.choose(&self.members, &normal, ctx) {
                return Some(i);
            }
            let standby = |i: usize| in_set(i) && self.members[i].takes_new_as_standby(now);
            if let Some(i) = self.lb.choose(&self.members, &standby, ctx) {
                return Some(i);
            }
        }
        None
    }

    /// Clears the error state of every untried member that is only unusable because it is in
    /// error (not disabled, draining, stopped or failing health checks). True when one was.
    fn force_recovery(&self, tried: &Tried, now_ms: u64) -> bool {
        let mut recovered = false;
        for (i, m) in self.members.iter().enumerate() {
            let eligible = matches!(m.config.status, MemberStatus::Ok | MemberStatus::HotStandby)
                && m.runtime.healthy.load(Ordering::Relaxed)
                && m.runtime.in_error(now_ms);
            if eligible && !tried.contains(i) {
                m.runtime.clear_error();
                recovered = true;
            }
        }
        if recovered {
            tracing::warn!(pool = %self.config.id, "every member was in error: forcing recovery");
        }
        recovered
    }

    /// Records a failed attempt that puts the member in error for `retryAfter`.
    pub fn member_failed(&self, index: usize, now_ms: u64) {
        self.members[index].runtime.set_error(now_ms, self.config.retry_after.as_millis() as u64);
    }
}

/// Members for unit tests: `(route, loadFactor)` on made-up addresses.
#[cfg(test)]
pub(crate) fn test_members(spec: &[(&str, u32)]) -> Vec<Member> {
    use super::config::MemberConfig;
    spec.iter()
        .enumerate()
        .map(|(i, (route, lf))| Member {
            config: MemberConfig {
                route: (*route).into(),
                address: std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
                load_factor: *lf,
                status: MemberStatus::Ok,
                lb_set: 0,
            },
            runtime: Arc::default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(members: &[(&str, MemberStatus)], failover: bool) -> Pool {
        let mut b = PoolConfig::test("p").sticky(failover);
        for (i, (r, s)) in members.iter().enumerate() {
            b = b.member_at(r, &format!("127.0.0.1:{}", 20_000 + i)).status(*s);
        }
        Pool::new(b.build(), None)
    }

    use MemberStatus::*;

    fn with_invalid_share(members: &[&str], weight: u32, total: u32) -> Pool {
        let mut b = PoolConfig::test("p").sticky(true);
        for (i, r) in members.iter().enumerate() {
            b = b.member_at(r, &format!("127.0.0.1:{}", 20_000 + i));
        }
        let mut cfg = b.build();
        let invalid = super::super::gateway::InvalidShare { weight, total, reason: "Service x/y not found".into() };
        cfg.gateway = Some(super::super::gateway::GatewayRule { invalid: Some(invalid), ..Default::default() });
        Pool::new(cfg, None)
    }

    #[test]
    fn new_requests_fall_in_the_invalid_share_sessions_and_retries_do_not() {
        let p = with_invalid_share(&["a", "b"], 1, 2);
        let new = |route| p.choose(route, &Tried::default(), 1);
        let bad = Choice::Unavailable(Unavailable::InvalidBackend);
        // Every other new request; the valid ones keep ByRequests' own sequence a, b, a, b.
        let seq: Vec<Choice> = (0..8).map(|_| new(None)).collect();
        let valid: Vec<Choice> = seq.iter().copied().filter(|c| *c != bad).collect();
        assert_eq!(seq.iter().filter(|c| **c == bad).count(), 4);
        assert_eq!(
            valid,
            [0, 1, 0, 1].map(|i| Choice::Balanced(i, Balanced::NoRoute)),
            "the lb method is not consulted for the invalid share"
        );
        // A session on a valid member stays pinned, whatever the share.
        for _ in 0..6 {
            assert_eq!(new(Some("b")), Choice::StickyHit(1));
        }
        // A retry goes to another member, never to the invalid share.
        let mut tried = Tried::default();
        tried.push(0);
        for _ in 0..6 {
            assert_eq!(p.choose(None, &tried, 1), Choice::Balanced(1, Balanced::Retry));
        }
    }

    #[test]
    fn a_rule_whose_backends_are_all_invalid_answers_every_request_from_the_share() {
        let p = with_invalid_share(&[], 2, 2);
        for route in [None, Some("a"), None] {
            assert_eq!(p.choose(route, &Tried::default(), 1), Choice::Unavailable(Unavailable::InvalidBackend));
        }
    }

    #[test]
    fn sticky_hit_on_usable_member() {
        let p = pool(&[("a", Ok), ("b", Ok)], true);
        assert_eq!(p.choose(Some("b"), &Tried::default(), 1), Choice::StickyHit(1));
    }

    #[test]
    fn unknown_route_is_balanced() {
        let p = pool(&[("a", Ok), ("b", Ok)], true);
        assert_eq!(p.choose(Some("zz"), &Tried::default(), 1), Choice::Balanced(0, Balanced::UnknownRoute));
        assert_eq!(p.choose(None, &Tried::default(), 1), Choice::Balanced(1, Balanced::NoRoute));
    }

    #[test]
    fn drain_keeps_sticky_but_gets_no_new() {
        let p = pool(&[("a", Drain), ("b", Ok)], true);
        assert_eq!(p.choose(Some("a"), &Tried::default(), 1), Choice::StickyHit(0));
        for _ in 0..5 {
            assert_eq!(p.choose(None, &Tried::default(), 1), Choice::Balanced(1, Balanced::NoRoute));
        }
    }

    #[test]
    fn disabled_and_stopped_fail_over() {
        let p = pool(&[("a", Disabled), ("b", Stopped), ("c", Ok)], true);
        assert_eq!(p.choose(Some("a"), &Tried::default(), 1), Choice::Balanced(2, Balanced::Failover));
        assert_eq!(p.choose(Some("b"), &Tried::default(), 1), Choice::Balanced(2, Balanced::Failover));
    }

    #[test]
    fn no_failover_gives_unavailable() {
        let p = pool(&[("a", Disabled), ("c", Ok)], false);
        assert_eq!(p.choose(Some("a"), &Tried::default(), 1), Choice::Unavailable(Unavailable::StickyMemberUnusable));
        // A route that names nothing is still balanced.
        assert_eq!(p.choose(Some("x"), &Tried::default(), 1), Choice::Balanced(1, Balanced::UnknownRoute));
    }

    #[test]
    fn hot_standby_only_when_no_normal_member() {
        let p = pool(&[("a", Ok), ("s", HotStandby)], true);
        for _ in 0..3 {
            assert_eq!(p.choose(None, &Tried::default(), 1), Choice::Balanced(0, Balanced::NoRoute));
        }
        p.member_failed(0, 1);
        assert_eq!(p.choose(None, &Tried::default(), 2), Choice::Balanced(1, Balanced::NoRoute));
    }

    #[test]
    fn error_state_expires_after_retry_after() {
        let p = pool(&[("a", Ok), ("b", Ok)], true);
        p.member_failed(0, 1000);
        assert_eq!(p.choose(Some("a"), &Tried::default(), 1001), Choice::Balanced(1, Balanced::Failover));
        let later = 1000 + 60_000;
        assert_eq!(p.choose(Some("a"), &Tried::default(), later + 1), Choice::StickyHit(0));
    }

    #[test]
    fn retries_skip_tried_members_and_run_out() {
        let p = pool(&[("a", Ok), ("b", Ok)], true);
        let mut tried = Tried::default();
        tried.push(0);
        assert_eq!(p.choose(Some("a"), &tried, 1), Choice::Balanced(1, Balanced::Retry));
        tried.push(1);
        assert_eq!(p.choose(None, &tried, 1), Choice::Unavailable(Unavailable::NoUsableMember));
    }

    fn with_sets(p: Pool, sets: &[u32]) -> Pool {
        let mut cfg = (*p.config).clone();
        for (m, s) in cfg.members.iter_mut().zip(sets) {
            m.lb_set = *s;
        }
        Pool::new(cfg, None)
    }

    #[test]
    fn lower_lbsets_first_with_their_standbys_before_higher_sets() {
        let p = with_sets(pool(&[("a", Ok), ("s0", HotStandby), ("b", Ok), ("c", Ok)], true), &[0, 0, 1, 1]);
        let t = Tried::default();
        for _ in 0..4 {
            assert_eq!(p.choose(None, &t, 1), Choice::Balanced(0, Balanced::NoRoute), "only set 0's normal member");
        }
        p.member_failed(0, 1);
        assert_eq!(p.choose(None, &t, 2), Choice::Balanced(1, Balanced::NoRoute), "then set 0's standby");
        p.member_failed(1, 2);
        let picks: Vec<_> = (0..4).map(|_| p.choose(None, &t, 3)).collect();
        assert_eq!(
            picks,
            [2, 3, 2, 3].map(|i| Choice::Balanced(i, Balanced::NoRoute)),
            "then set 1, balanced within the set"
        );
    }

    #[test]
    fn unhealthy_members_take_nothing_and_sticky_fails_over() {
        let p = pool(&[("a", Ok), ("b", Ok)], true);
        p.members[0].runtime.healthy.store(false, Ordering::Relaxed);
        assert_eq!(p.choose(Some("a"), &Tried::default(), 1), Choice::Balanced(1, Balanced::Failover));
        for _ in 0..3 {
            assert_eq!(p.choose(None, &Tried::default(), 1), Choice::Balanced(1, Balanced::NoRoute));
        }
        assert_eq!(p.members[0].state_name(1), "Unhealthy");
    }

    #[test]
    fn force_recovery_retries_members_in_error() {
        let p = pool(&[("a", Ok), ("b", Ok), ("d", Disabled)], true);
        p.member_failed(0, 1);
        p.member_failed(1, 1);
        let c = p.choose(None, &Tried::default(), 2);
        assert!(matches!(c, Choice::Balanced(0 | 1, Balanced::NoRoute)), "{c:?}");
        assert!(!p.members[0].runtime.in_error(2) && !p.members[1].runtime.in_error(2));
        // Unhealthy members are not recovered by it, and it can be turned off.
        let mut cfg = (*p.config).clone();
        cfg.health.force_recovery = false;
        let off = Pool::new(cfg, None);
        off.member_failed(0, 1);
        off.member_failed(1, 1);
        assert_eq!(off.choose(None, &Tried::default(), 2), Choice::Unavailable(Unavailable::NoUsableMember));
        let sick = pool(&[("a", Ok)], true);
        sick.members[0].runtime.healthy.store(false, Ordering::Relaxed);
        assert_eq!(sick.choose(None, &Tried::default(), 2), Choice::Unavailable(Unavailable::NoUsableMember));
    }

    #[test]
    fn rebuild_keeps_runtime_of_unchanged_members() {
        let p1 = pool(&[("a", Ok), ("b", Ok)], true);
        p1.member_failed(0, 5);
        let p2 = Pool::new(p1.config.clone(), Some(&p1));
        assert!(Arc::ptr_eq(&p1.members[0].runtime, &p2.members[0].runtime));
        let mut moved = (*p1.config).clone();
        moved.members[1].address = "127.0.0.1:1".parse().unwrap();
        let p3 = Pool::new(moved, Some(&p1));
        assert!(!Arc::ptr_eq(&p1.members[1].runtime, &p3.members[1].runtime));
    }

    fn big(routes: &[String], port_of: impl Fn(&str) -> u16) -> PoolConfig {
        let mut b = PoolConfig::test("big");
        for r in routes {
            b = b.member_at(r, &format!("127.0.0.1:{}", port_of(r)));
        }
        b.build()
    }

    #[test]
    fn large_rebuild_carries_state_along_the_routes() {
        let routes: Vec<String> = (0..40).map(|i| format!("pod-{i:02}")).collect();
        let p1 = Pool::new(big(&routes, |_| 9000), None);
        assert!(p1.config.members_sorted && matches!(p1.route_index, RouteIndex::Sorted));
        // pod-05 leaves, pod-40 joins, pod-10 moves to a new address.
        let mut next: Vec<String> = routes.iter().filter(|r| *r != "pod-05").cloned().collect();
        next.push("pod-40".into());
        let p2 = Pool::new(big(&next, |r| if r == "pod-10" { 9001 } else { 9000 }), Some(&p1));
        for (i, m) in p2.members.iter().enumerate() {
            let carried = p2.previous_index(i).map(|j| p1.members[j].route());
            match m.route() {
                "pod-40" | "pod-10" => assert_eq!(carried, None, "{}", m.route()),
                r => {
                    assert_eq!(carried, Some(r));
                    let j = p1.member_index(r).unwrap();
                    assert!(Arc::ptr_eq(&p1.members[j].runtime, &m.runtime));
                }
            }
            assert_eq!(p2.member_index(m.route()), Some(i), "found by binary search");
        }
        assert_eq!(p2.member_index("pod-05"), None);
        assert_eq!(p2.member_index("pod-99"), None);
        // Listed out of order, a large static pool is indexed by hash, and carries state too.
        let mut shuffled = next.clone();
        shuffled.reverse();
        let p3 = Pool::new(big(&shuffled, |r| if r == "pod-10" { 9001 } else { 9000 }), Some(&p2));
        assert!(!p3.config.members_sorted && matches!(p3.route_index, RouteIndex::Hashed(_)));
        for (i, m) in p3.members.iter().enumerate() {
            assert_eq!(p3.member_index(m.route()), Some(i));
            let j = p3.previous_index(i).expect("every member kept its route and address");
            assert!(Arc::ptr_eq(&p2.members[j].runtime, &m.runtime));
        }
    }

    /// xorshift64*: a seeded sequence for the randomised tests, no crate needed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
    }

    /// A random pool: 1–50 members with few or many distinct weights, some drained, disabled,
    /// stopped or standing by, in one or two lbSets, with or without slow start.
    fn random_config(rng: &mut Rng) -> PoolConfig {
        let n = 1 + rng.below(50);
        let mut b = PoolConfig::test("rand").sticky(rng.chance(80));
        for i in 0..n {
            b = b.member_at(&format!("m{i:02}"), &format!("127.0.0.1:{}", 20_000 + i));
        }
        let mut cfg = b.build();
        let many_weights = rng.chance(40);
        let two_sets = rng.chance(30);
        for m in &mut cfg.members {
            m.load_factor = if many_weights { 1 + rng.below(100) as u32 } else { 1 + rng.below(3) as u32 };
            m.status = random_status(rng);
            m.lb_set = if two_sets { rng.below(2) as u32 } else { 0 };
        }
        cfg.retry_after = Duration::from_millis(100);
        cfg.health.slow_start = rng.chance(50).then(|| Duration::from_millis(300));
        cfg.health.force_recovery = rng.chance(70);
        cfg
    }

    fn random_status(rng: &mut Rng) -> MemberStatus {
        match rng.below(20) {
            0 => Drain,
            1 => Disabled,
            2 => Stopped,
            3 | 4 => HotStandby,
            _ => Ok,
        }
    }

    /// The same pool twice: picks through the schedule (from 1 member on) and by the plain scan.
    struct Twins {
        fast: Pool,
        plain: Pool,
    }

    impl Twins {
        fn new(cfg: PoolConfig, previous: Option<&Twins>) -> Twins {
            let cfg = Arc::new(cfg);
            let fast = Pool::with_schedule_from(Arc::clone(&cfg), previous.map(|t| &t.fast), 0);
            let plain = Pool::with_schedule_from(cfg, previous.map(|t| &t.plain), usize::MAX);
            assert!(fast.uses_schedule && !plain.uses_schedule);
            Twins { fast, plain }
        }

        /// Applies `f` to both pools' member `i`.
        fn both(&self, i: usize, f: impl Fn(&MemberRuntime)) {
            f(&self.fast.members[i].runtime);
            f(&self.plain.members[i].runtime);
        }

        fn choose(&self, route: Option<&str>, tried: &Tried, now: u64, step: &str) {
            let (a, b) = (self.fast.choose(route, tried, now), self.plain.choose(route, tried, now));
            assert_eq!(a, b, "{step}: choice");
            for i in 0..self.fast.members.len() {
                assert_eq!(self.fast.lbstatus(i), self.plain.lbstatus(i), "{step}: lbstatus of member {i}");
            }
        }
    }

    /// Issue 13: the schedule of large ByRequests pools gives exactly the plain scan's choices
    /// and `lbstatus` values through thousands of random steps: balanced picks, sticky hits,
    /// unknown routes, retries with tried members, errors and their expiry, health checks,
    /// forcerecovery, slow start, and rebuilds that change weights, states and lbSets.
    #[test]
    fn the_schedule_matches_the_plain_scan_step_for_step() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..200 {
            let mut twins = Twins::new(random_config(&mut rng), None);
            let mut now = 10_000u64;
            let n = twins.fast.members.len();
            for i in 0..n {
                let joined = if rng.chance(70) { 0 } else { now - 10 * rng.below(40) as u64 };
                twins.both(i, |rt| rt.set_joined(joined));
            }
            // A third of the cases are mostly sticky hits, with no failure, health change or
            // rebuild: long stretches without a re-sync, where stale queue entries pile up and
            // get dropped.
            let calm = case % 3 == 0;
            for step in 0..1_500 {
                let at = format!("case {case}, step {step}, now {now}, {n} members");
                let route = |rng: &mut Rng| format!("m{:02}", rng.below(n));
                let action = match rng.below(100) {
                    a if !calm => a,
                    0..10 => 0,
                    10..80 => 40,
                    80..88 => 68,
                    _ => 99,
                };
                match action {
                    0..40 => twins.choose(None, &Tried::default(), now, &at),
                    40..65 => twins.choose(Some(&route(&mut rng)), &Tried::default(), now, &at),
                    65..68 => twins.choose(Some("nobody"), &Tried::default(), now, &at),
                    68..76 => {
                        let mut tried = Tried::default();
                        for _ in 0..1 + rng.below(3) {
                            tried.push(rng.below(n));
                        }
                        let r = rng.chance(50).then(|| route(&mut rng));
                        twins.choose(r.as_deref(), &tried, now, &at);
                    }
                    76..81 => {
                        let i = rng.below(n);
                        twins.fast.member_failed(i, now);
                        twins.plain.member_failed(i, now);
                    }
                    81..85 => {
                        let (i, up) = (rng.below(n), rng.chance(60));
                        twins.both(i, |rt| {
                            rt.set_healthy(up, now);
                        });
                    }
                    85..86 => {
                        let i = rng.below(n);
                        twins.both(i, |rt| rt.set_joined(now));
                    }
                    86..88 => {
                        let mut cfg = (*twins.fast.config).clone();
                        let m = &mut cfg.members[rng.below(n)];
                        match rng.below(3) {
                            0 => m.load_factor = 1 + rng.below(100) as u32,
                            1 => m.status = random_status(&mut rng),
                            _ => m.lb_set = rng.below(2) as u32,
                        }
                        twins = Twins::new(cfg, Some(&twins));
                    }
                    // Mostly steps of 10 ms, so that picks land exactly on error ends (100 ms
                    // after a failure) and ramp ends (300 ms after a member became usable).
                    _ => now += [1, 10, 10, 50, 100, 300][rng.below(6)],
                }
            }
            twins.choose(None, &Tried::default(), now, &format!("case {case}, last pick"));
            assert!(matches!(*twins.fast.lock_schedule(), Scheduled::Built(_)), "case {case} used the schedule");
        }
    }

    #[test]
    fn the_schedule_gives_apaches_golden_sequence_and_sticky_accounting() {
        let mut b = PoolConfig::test("golden");
        for (i, r) in ["n1", "n2", "n3"].iter().enumerate() {
            b = b.member_at(r, &format!("127.0.0.1:{}", 20_000 + i));
        }
        let mut cfg = b.build();
        for (m, lf) in cfg.members.iter_mut().zip([1, 2, 3]) {
            m.load_factor = lf;
        }
        let p = Pool::with_schedule_from(cfg, None, 0);
        let got: Vec<&str> = (0..12)
            .map(|_| match p.choose(None, &Tried::default(), 1) {
                Choice::Balanced(i, _) => p.members[i].route(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, ["n3", "n2", "n1", "n3", "n2", "n3", "n3", "n2", "n1", "n3", "n2", "n3"]);
        assert_eq!((0..3).map(|i| p.lbstatus(i)).collect::<Vec<_>>(), [0, 0, 0], "a full period ends where it began");
        // A sticky request to n1 pays for itself: n1 gains 100, pays 600.
        assert_eq!(p.choose(Some("n1"), &Tried::default(), 1), Choice::StickyHit(0));
        assert_eq!((0..3).map(|i| p.lbstatus(i)).collect::<Vec<_>>(), [-500, 200, 300]);
        // A newer pool takes the credit over.
        let next = Pool::with_schedule_from(p.config.clone(), Some(&p), 0);
        assert_eq!((0..3).map(|i| next.lbstatus(i)).collect::<Vec<_>>(), [-500, 200, 300]);
    }
}
