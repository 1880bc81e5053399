//! A translation's findings as the status objects the Gateway API defines.
//!
//! Conditions carry the object's `metadata.generation` as `observedGeneration`, and keep their
//! `lastTransitionTime` while their status holds, so a status computed again unchanged is equal
//! to the one written and is not written again. A route's `status.parents` entries of other
//! controllers are kept as they are: only routeid's own are replaced.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::{Cond, GatewayReport, ParentReport};
use crate::api::gateway::{
    CONTROLLER_NAME, GatewayClassStatus, GatewayStatus, GatewayStatusAddress, HTTPRouteStatus, ListenerStatus,
    RouteParentStatus,
};

/// The conditions `conds` say, as of `now`, keeping the transition time of those in `prev`
/// whose status did not change.
pub fn conditions(conds: &[Cond], prev: &[Condition], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    conds
        .iter()
        .map(|c| {
            let status = if c.ok { "True" } else { "False" };
            let since = prev
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .map_or(Time(now), |p| p.last_transition_time.clone());
            Condition {
                type_: c.type_.to_owned(),
                status: status.to_owned(),
                reason: c.reason.to_owned(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// A GatewayClass's status.
pub fn class_status(
    conds: &[Cond],
    prev: Option<&GatewayClassStatus>,
    generation: Option<i64>,
    now: Timestamp,
) -> GatewayClassStatus {
    let prev = prev.map(|p| p.conditions.as_slice()).unwrap_or_default();
    GatewayClassStatus { conditions: conditions(conds, prev, generation, now) }
}

/// A Gateway's status, listing `addresses` (where the installation is reachable).
pub fn gateway_status(
    report: &GatewayReport,
    addresses: Vec<GatewayStatusAddress>,
    prev: Option<&GatewayStatus>,
    generation: Option<i64>,
    now: Timestamp,
) -> GatewayStatus {
    let prev_conds = prev.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let listeners = report
        .listeners
        .iter()
        .map(|l| {
            let before = prev.and_then(|p| p.listeners.iter().find(|x| x.name == l.name));
            let before = before.map(|b| b.conditions.as_slice()).unwrap_or_default();
            ListenerStatus {
                name: l.name.clone(),
                supported_kinds: l.supported_kinds.clone(),
                attached_routes: l.attached_routes,
                conditions: conditions(&l.conditions, before, generation, now),
            }
        })
        .collect();
    GatewayStatus { addresses, conditions: conditions(&report.conditions, prev_conds, generation, now), listeners }
}

/// A route's status: other controllers' parent entries as they are, then routeid's.
pub fn route_status(
    parents: &[ParentReport],
    prev: Option<&HTTPRouteStatus>,
    generation: Option<i64>,
    now: Timestamp,
) -> HTTPRouteStatus {
    let prev = prev.map(|p| p.parents.as_slice()).unwrap_or_default();
    let mut out: Vec<RouteParentStatus> =
        prev.iter().filter(|p| p.controller_name != CONTROLLER_NAME).cloned().collect();
    for p in parents {
        let before = prev.iter().find(|x| x.controller_name == CONTROLLER_NAME && x.parent_ref == p.parent_ref);
        let before = before.map(|b| b.conditions.as_slice()).unwrap_or_default();
        out.push(RouteParentStatus {
            parent_ref: p.parent_ref.clone(),
            controller_name: CONTROLLER_NAME.to_owned(),
            conditions: conditions(&p.conditions, before, generation, now),
        });
    }
    HTTPRouteStatus { parents: out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::gateway::ParentReference;

    #[test]
    fn a_holding_condition_keeps_its_time_and_a_flipped_one_gets_now() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let first = conditions(&[Cond::yes("Accepted", "Accepted", "")], &[], Some(1), t0);
        let same = conditions(&[Cond::yes("Accepted", "Accepted", "")], &first, Some(1), t1);
        assert_eq!(same, first);
        let flipped = conditions(&[Cond::no("Accepted", "NotAllowedByListeners", "x")], &first, Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].observed_generation, Some(2));
    }

    #[test]
    fn other_controllers_parent_entries_are_kept() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let theirs = RouteParentStatus {
            parent_ref: ParentReference { name: "other".into(), ..Default::default() },
            controller_name: "example.com/gw".into(),
            conditions: Vec::new(),
        };
        let prev = HTTPRouteStatus { parents: vec![theirs.clone()] };
        let ours = ParentReport {
            parent_ref: ParentReference { name: "gw".into(), ..Default::default() },
            conditions: vec![Cond::yes("Accepted", "Accepted", "")],
        };
        let st = route_status(&[ours], Some(&prev), Some(1), t0);
        assert_eq!(st.parents.len(), 2);
        assert_eq!(st.parents[0], theirs);
        assert_eq!(st.parents[1].controller_name, CONTROLLER_NAME);
    }
}
