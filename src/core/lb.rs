//! Load-balancing methods.
//!
//! As in the first lb hook proposed for Apache's mod_proxy (2003), an lb method has two duties:
//! choose a member among those the pool says are eligible, and hear that a member was used for a
//! sticky request so its bookkeeping stays honest. Health, states and retries are the pool's job
//! ([`super::pool`]); an lb method only ranks eligible members.

use std::fmt::Debug;
use std::sync::atomic::Ordering::Relaxed;

use super::member::Member;

/// A way of choosing a member for a request that carries no usable route.
pub trait LbMethod: Send + Sync + Debug {
    /// Chooses one of the members for which `eligible(index)` holds, doing its bookkeeping.
    /// `None` when none is eligible.
    fn choose(&self, members: &[Member], eligible: &dyn Fn(usize) -> bool) -> Option<usize>;

    /// A sticky request went to `chosen`, outside the lb method's choice; `eligible` is the set
    /// that would have been balanced over.
    fn account_sticky(&self, members: &[Member], eligible: &dyn Fn(usize) -> bool, chosen: usize);

    /// The name shown in logs and the balancer-manager.
    fn name(&self) -> &'static str;
}

/// Apache's `byrequests`: weighted request counting.
///
/// On every request each eligible member's `lbstatus` grows by its `loadFactor`; the member with
/// the highest `lbstatus` wins (ties go to the member listed first) and pays back the total of
/// the factors. With factors 1, 2, 3 twelve requests go `n3 n2 n1 n3 n2 n3 n3 n2 n1 n3 n2 n3`,
/// exactly as Apache 2.4.
///
/// Each member's `lbstatus` is an atomic updated without a lock: a request sequence is exactly
/// Apache's when requests are serialised, and under concurrency two requests may read the same
/// maximum before either pays — a transient skew that the zero-sum bookkeeping corrects on the
/// next requests (the sum of all `lbstatus` stays zero), at no lock per request.
#[derive(Debug, Default, Clone, Copy)]
pub struct ByRequests;

impl LbMethod for ByRequests {
    fn choose(&self, members: &[Member], eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (i, m) in members.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            let factor = i64::from(m.config.load_factor);
            let status = m.runtime.lbstatus.fetch_add(factor, Relaxed) + factor;
            total += factor;
            if best.is_none_or(|(_, b)| status > b) {
                best = Some((i, status));
            }
        }
        let (winner, _) = best?;
        members[winner].runtime.lbstatus.fetch_sub(total, Relaxed);
        Some(winner)
    }

    fn account_sticky(&self, members: &[Member], eligible: &dyn Fn(usize) -> bool, chosen: usize) {
        let mut total: i64 = 0;
        for (i, m) in members.iter().enumerate() {
            if eligible(i) {
                let factor = i64::from(m.config.load_factor);
                m.runtime.lbstatus.fetch_add(factor, Relaxed);
                total += factor;
            }
        }
        members[chosen].runtime.lbstatus.fetch_sub(total, Relaxed);
    }

    fn name(&self) -> &'static str {
        "ByRequests"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pool::test_members;

    #[test]
    fn byrequests_matches_apache_for_weights_1_2_3() {
        let members = test_members(&[("n1", 1), ("n2", 2), ("n3", 3)]);
        let seq: Vec<&str> =
            (0..12).map(|_| members[ByRequests.choose(&members, &|_| true).unwrap()].route()).collect();
        assert_eq!(seq, ["n3", "n2", "n1", "n3", "n2", "n3", "n3", "n2", "n1", "n3", "n2", "n3"]);
    }

    #[test]
    fn byrequests_equal_weights_round_robin_in_listed_order() {
        let members = test_members(&[("a", 1), ("b", 1), ("c", 1)]);
        let seq: Vec<&str> = (0..6).map(|_| members[ByRequests.choose(&members, &|_| true).unwrap()].route()).collect();
        assert_eq!(seq, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn byrequests_skips_ineligible_and_handles_none() {
        let members = test_members(&[("a", 1), ("b", 1)]);
        assert_eq!(ByRequests.choose(&members, &|i| i == 1), Some(1));
        assert_eq!(ByRequests.choose(&members, &|_| false), None);
    }

    #[test]
    fn sticky_accounting_keeps_weights_over_mixed_traffic() {
        // Sticky requests to n1 pay for themselves: balanced traffic then compensates.
        let members = test_members(&[("n1", 1), ("n2", 1)]);
        for _ in 0..4 {
            ByRequests.account_sticky(&members, &|_| true, 0);
        }
        let seq: Vec<&str> = (0..4).map(|_| members[ByRequests.choose(&members, &|_| true).unwrap()].route()).collect();
        assert_eq!(seq, ["n2", "n2", "n2", "n2"]);
        let sum: i64 = members.iter().map(|m| m.runtime.lbstatus.load(Relaxed)).sum();
        assert_eq!(sum, 0, "bookkeeping is zero-sum");
    }
}
