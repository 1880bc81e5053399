//! ByRequests in large pools: Apache's exact sequence without touching every member per pick.
//!
//! Apache's request counting adds every eligible member's weight to its `lbstatus` on each
//! pick (and on each sticky hit), so a plain implementation costs O(members) per request. Here
//! each member's credit is kept as `lbstatus = base + g × w`, where `g` counts the rounds of
//! its *group* (the members a pick balances over: one lbSet's normal members, or its hot
//! standbys) and `w` is its weight. "Every eligible member gains its weight" is then `g += 1`,
//! and paying back the total changes one member's `base`. Members of equal weight keep their
//! relative order as `g` grows, so each group keeps one ordered queue per distinct weight
//! (a *class*), ordered by (`base` desc, index asc), and a pick compares the classes' heads.
//!
//! Cost of a pick: O(distinct weights in the group + log members), and O(1) amortised in the
//! steady state (a winner of a class usually goes to the back of its queue). Weights are
//! `loadFactor × 100` with `loadFactor` in 1–100, so a group has at most 100 classes; pools
//! have a few. Members in their slow-start ramp have a weight that changes with time: they
//! sit in a short *ramp* list with their `lbstatus` materialised, looked at on every pick.
//!
//! Eligibility changes keep the sequence exact:
//! - a member's error running out and its slow-start ramp ending are timers, fired on the
//!   first pick at or after their time;
//! - everything else that changes who is eligible (an error set or cleared, health checks,
//!   `forcerecovery`, a join time) goes through [`super::member::MemberRuntime`]'s methods,
//!   which bump a process-wide epoch: the next pick of every scheduled pool then re-syncs
//!   (O(members), rare: it happens per change, not per request);
//! - a retry's tried members are taken out of their class for the pick and put back with
//!   their credit unchanged (they do not gain, as in Apache);
//! - the time a pick is made at never goes back: a pick made with an earlier `now` than the
//!   last one (two threads racing for the lock) is made at the later one.
//!
//! Memory: one slot per member, plus at most twice the live entries of each class (stale
//! entries left by lazy removal are compacted away), plus one timer per member in error or
//! in its ramp.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::lb::LbContext;
use super::member::Member;
use super::pool::Tried;

/// No group: a member that never balances (Drain, Disabled, Stopped).
const NO_GROUP: u16 = u16::MAX;

/// Where a member's credit lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Not eligible now: `base` is its `lbstatus`.
    Out,
    /// In class `c` of its group: `lbstatus = base + g × w`.
    Class(u16),
    /// In its slow-start ramp: `base` is its `lbstatus`, updated on every pick.
    Ramp,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    base: i64,
    /// Bumped whenever the member leaves or re-enters a class: entries with another stamp are
    /// stale.
    stamp: u32,
    /// Its group (lbSet position × 2 + 1 for hot standbys), or [`NO_GROUP`].
    group: u16,
    place: Place,
}

/// A queue entry; the greatest is the class's head (highest `base`, then lowest index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    base: i64,
    idx: Reverse<u32>,
    stamp: u32,
}

impl Entry {
    fn live(&self, slots: &[Slot]) -> bool {
        slots[self.idx.0 as usize].stamp == self.stamp
    }
}

/// The members of a group that have one weight, in pick order.
#[derive(Debug)]
struct Class {
    w: i64,
    live: u32,
    /// Entries in descending order: a winner usually goes to the back.
    run: VecDeque<Entry>,
    /// Entries that did not fit at the back of `run`.
    heap: BinaryHeap<Entry>,
}

impl Class {
    fn new(w: i64) -> Class {
        Class { w, live: 0, run: VecDeque::new(), heap: BinaryHeap::new() }
    }

    /// The head, after dropping stale entries in front.
    fn head(&mut self, slots: &[Slot]) -> Option<Entry> {
        while self.run.front().is_some_and(|e| !e.live(slots)) {
            self.run.pop_front();
        }
        while self.heap.peek().is_some_and(|e| !e.live(slots)) {
            self.heap.pop();
        }
        match (self.run.front(), self.heap.peek()) {
            (Some(a), Some(b)) => Some(*a.max(b)),
            (a, b) => a.or(b).copied(),
        }
    }

    fn push(&mut self, e: Entry, slots: &[Slot]) {
        if self.run.back().is_none_or(|b| e < *b) {
            self.run.push_back(e);
        } else {
            self.heap.push(e);
        }
        if self.run.len() + self.heap.len() > 2 * self.live as usize + 32 {
            self.drop_stale(slots);
        }
    }

    /// Drops stale entries, keeping the run's order and re-heaping the rest: O(entries), so
    /// O(1) amortised over the pushes that made them.
    fn drop_stale(&mut self, slots: &[Slot]) {
        self.run.retain(|e| e.live(slots));
        let mut rest = std::mem::take(&mut self.heap).into_vec();
        rest.retain(|e| e.live(slots));
        self.heap = BinaryHeap::from(rest);
    }

    /// Drops stale entries and puts the rest in one sorted run (when a schedule is built).
    fn compact(&mut self, slots: &[Slot]) {
        let mut all: Vec<Entry> = self.run.drain(..).chain(self.heap.drain()).filter(|e| e.live(slots)).collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        self.run = all.into();
    }
}

/// One lbSet's normal members, or its hot standbys.
#[derive(Debug, Default)]
struct Group {
    /// Rounds of request counting over this group.
    g: i64,
    /// Sum of the weights of the members in its classes.
    class_w: i64,
    classes: Vec<Class>,
    /// Members in their slow-start ramp.
    ramp: Vec<u32>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.class_w == 0 && self.ramp.is_empty()
    }
}

/// The request-counting state of one large ByRequests pool (see the module doc).
#[derive(Debug)]
pub(super) struct Schedule {
    epoch: u64,
    now_ms: u64,
    slots: Vec<Slot>,
    groups: Vec<Group>,
    /// (when, member): an error runs out or a ramp ends.
    timers: BinaryHeap<Reverse<(u64, u32)>>,
}

impl Schedule {
    /// A schedule over `members` with the `lbstatus` their runtimes hold, at epoch `epoch`.
    pub(super) fn new(members: &[Member], lb_sets: &[u32], ctx: &LbContext, epoch: u64) -> Schedule {
        use super::names::MemberStatus;
        let slots = members
            .iter()
            .map(|m| {
                let set = lb_sets.binary_search(&m.config.lb_set).ok();
                let group = match (m.config.status, set) {
                    (MemberStatus::Ok, Some(s)) => (s * 2) as u16,
                    (MemberStatus::HotStandby, Some(s)) => (s * 2 + 1) as u16,
                    _ => NO_GROUP,
                };
                let base = m.runtime.lbstatus.load(std::sync::atomic::Ordering::Relaxed);
                Slot { base, stamp: 0, group, place: Place::Out }
            })
            .collect();
        let groups = (0..lb_sets.len() * 2).map(|_| Group::default()).collect();
        let mut s = Schedule { epoch, now_ms: ctx.now_ms, slots, groups, timers: BinaryHeap::new() };
        s.place_all(members, ctx);
        s
    }

    /// Every member's credit as Apache's `lbstatus`.
    pub(super) fn lbstatus(&self, i: usize) -> i64 {
        let s = &self.slots[i];
        match s.place {
            Place::Class(c) => s.base + self.groups[s.group as usize].g * self.class(s.group, c).w,
            Place::Out | Place::Ramp => s.base,
        }
    }

    /// Writes every member's `lbstatus` into its runtime, for whoever takes over.
    pub(super) fn materialise(&self, members: &[Member]) {
        for (i, m) in members.iter().enumerate() {
            m.runtime.lbstatus.store(self.lbstatus(i), std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn class(&self, group: u16, c: u16) -> &Class {
        &self.groups[group as usize].classes[c as usize]
    }

    /// Brings the schedule to `ctx`'s time (never backwards) and to the eligibility epoch
    /// `epoch`; returns the context to pick with.
    pub(super) fn advance(&mut self, members: &[Member], ctx: &LbContext, epoch: u64) -> LbContext {
        self.now_ms = self.now_ms.max(ctx.now_ms);
        let ctx = LbContext { now_ms: self.now_ms, ..*ctx };
        if epoch != self.epoch {
            self.epoch = epoch;
            self.resync(members, &ctx);
        }
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if at > ctx.now_ms {
                break;
            }
            self.timers.pop();
            self.detach(i as usize);
            self.attach(i as usize, members, &ctx);
        }
        ctx
    }

    /// Re-evaluates every member: O(members), on an eligibility change.
    fn resync(&mut self, members: &[Member], ctx: &LbContext) {
        for i in 0..self.slots.len() {
            self.slots[i].base = self.lbstatus(i);
            self.slots[i].place = Place::Out;
        }
        for g in &mut self.groups {
            *g = Group::default();
        }
        self.timers.clear();
        self.place_all(members, ctx);
    }

    fn place_all(&mut self, members: &[Member], ctx: &LbContext) {
        for i in 0..self.slots.len() {
            self.attach(i, members, ctx);
        }
        let Schedule { groups, slots, .. } = self;
        for c in groups.iter_mut().flat_map(|g| g.classes.iter_mut()) {
            c.compact(slots);
        }
    }

    /// Takes member `i` out of wherever it is, its `lbstatus` materialised in `base`.
    fn detach(&mut self, i: usize) -> Place {
        let value = self.lbstatus(i);
        let s = &mut self.slots[i];
        let place = s.place;
        match place {
            Place::Class(c) => {
                let g = &mut self.groups[s.group as usize];
                let class = &mut g.classes[c as usize];
                class.live -= 1;
                g.class_w -= class.w;
                s.stamp = s.stamp.wrapping_add(1);
            }
            Place::Ramp => self.groups[s.group as usize].ramp.retain(|&r| r as usize != i),
            Place::Out => {}
        }
        s.base = value;
        s.place = Place::Out;
        place
    }

    /// Puts a detached member where its state at `ctx`'s time says, arming its timer.
    fn attach(&mut self, i: usize, members: &[Member], ctx: &LbContext) {
        let group = self.slots[i].group;
        if group == NO_GROUP {
            return;
        }
        let m = &members[i];
        let rt = &m.runtime;
        if !rt.healthy.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if rt.in_error(ctx.now_ms) {
            let until = rt.error_until_ms.load(std::sync::atomic::Ordering::Relaxed);
            self.timers.push(Reverse((until, i as u32)));
            return;
        }
        let full = i64::from(m.config.load_factor) * 100;
        if ctx.factor(m) < full {
            let ends = rt.usable_since_ms(ctx.now_ms).saturating_add(ctx.slow_start_ms);
            self.timers.push(Reverse((ends, i as u32)));
            self.restore(i, Place::Ramp);
            return;
        }
        let g = &mut self.groups[group as usize];
        let c = match g.classes.iter().position(|c| c.w == full) {
            Some(c) => c,
            None => {
                g.classes.push(Class::new(full));
                g.classes.len() - 1
            }
        };
        self.restore(i, Place::Class(c as u16));
    }

    /// Puts a detached member back in `place`, its `lbstatus` unchanged.
    fn restore(&mut self, i: usize, place: Place) {
        let Schedule { slots, groups, .. } = self;
        let s = &mut slots[i];
        let g = &mut groups[s.group as usize];
        s.place = place;
        match place {
            Place::Class(c) => {
                let class = &mut g.classes[c as usize];
                class.live += 1;
                g.class_w += class.w;
                s.stamp = s.stamp.wrapping_add(1);
                s.base -= g.g * class.w;
                let e = Entry { base: s.base, idx: Reverse(i as u32), stamp: s.stamp };
                class.push(e, slots);
            }
            Place::Ramp => g.ramp.push(i as u32),
            Place::Out => {}
        }
    }

    /// Member `i` pays `total` back (it won, or a sticky request went to it).
    fn pay(&mut self, i: usize, total: i64) {
        let Schedule { slots, groups, .. } = self;
        let s = &mut slots[i];
        s.base -= total;
        if let Place::Class(c) = s.place {
            let class = &mut groups[s.group as usize].classes[c as usize];
            // A winner is usually the head of the run: drop its entry now rather than later.
            if class.run.front().is_some_and(|e| e.idx.0 as usize == i && e.stamp == s.stamp) {
                class.run.pop_front();
            }
            s.stamp = s.stamp.wrapping_add(1);
            let e = Entry { base: s.base, idx: Reverse(i as u32), stamp: s.stamp };
            class.push(e, slots);
        }
    }

    /// One round of request counting over group `gid`: every member gains its weight. Returns
    /// the total gained and the member with the highest credit (ties: lowest index); `None`
    /// when the group has no eligible member (and nothing changed).
    fn round(&mut self, gid: usize, members: &[Member], ctx: &LbContext) -> Option<(i64, usize)> {
        let Schedule { slots, groups, .. } = self;
        let g = &mut groups[gid];
        if g.is_empty() {
            return None;
        }
        g.g += 1;
        let mut total = g.class_w;
        let mut best: Option<(i64, Reverse<u32>)> = None;
        let mut consider = |value: i64, idx: u32| {
            let cand = (value, Reverse(idx));
            if best.is_none_or(|b| cand > b) {
                best = Some(cand);
            }
        };
        for class in &mut g.classes {
            if class.live > 0
                && let Some(head) = class.head(slots)
            {
                consider(head.base + g.g * class.w, head.idx.0);
            }
        }
        for &r in &g.ramp {
            let f = ctx.factor(&members[r as usize]);
            slots[r as usize].base += f;
            total += f;
            consider(slots[r as usize].base, r);
        }
        best.map(|(_, idx)| (total, idx.0 as usize))
    }

    /// Apache's order: lbSet 0's normal members, then its hot standbys, then lbSet 1's, ...;
    /// `tried` members are left out of the pick and keep their credit.
    pub(super) fn balance(&mut self, members: &[Member], tried: &Tried, ctx: &LbContext) -> Option<usize> {
        if tried.is_empty() {
            return (0..self.groups.len()).find_map(|gid| {
                let (total, winner) = self.round(gid, members, ctx)?;
                self.pay(winner, total);
                Some(winner)
            });
        }
        for gid in 0..self.groups.len() {
            let mut out = [(0u32, Place::Out); super::config::MAX_ATTEMPTS as usize];
            let mut n = 0;
            for t in tried.iter() {
                if self.slots[t].group as usize == gid && self.slots[t].place != Place::Out && n < out.len() {
                    out[n] = (t as u32, self.detach(t));
                    n += 1;
                }
            }
            let won = self.round(gid, members, ctx);
            if let Some((total, winner)) = won {
                self.pay(winner, total);
            }
            for &(t, place) in &out[..n] {
                self.restore(t as usize, place);
            }
            if let Some((_, winner)) = won {
                return Some(winner);
            }
        }
        None
    }

    /// A sticky request went to `chosen`: a round over the normal members of lbSet position
    /// `set`, and `chosen` pays (Apache's accounting for sticky requests).
    pub(super) fn account_sticky(&mut self, members: &[Member], set: usize, chosen: usize, ctx: &LbContext) {
        if let Some((total, _)) = self.round(set * 2, members, ctx) {
            self.pay(chosen, total);
        }
    }
}
