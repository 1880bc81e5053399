//! Balancer-manager overrides kept in memory (standalone mode, and pools made from an Ingress),
//! and how they meet later edits of the pools file.
//!
//! Precedence, field by field (`loadFactor`, `lbSet`, `status`):
//! - A manager change **overrides** the file's value: a reload that leaves that field as it was
//!   keeps the override, so a reload does not undo an operator's drain.
//! - An **edit of the same field in the file** is newer than the override and ends it: the
//!   override remembers the file's value it replaced, and a publication bringing another value
//!   (neither the remembered one nor the override's) drops that field of the override.
//! - A member that **leaves its pool** (or a pool that goes) loses its overrides: a route added
//!   again later starts from the file, since it may name another backend by then.
//! - An override can be **cleared** (balancer-manager button, `DELETE .../override`): the file's
//!   value applies at once.
//!
//! Every drop is logged with its reason; every reload logs the overrides it keeps
//! ([`Overrides::log_kept`]).

use std::collections::HashMap;

use serde::Serialize;

use crate::core::config::{MemberChange, MemberConfig};
use crate::core::{PoolConfig, PoolId, Route};

/// One member's override: what the manager set, the file's values it replaced, and who set it
/// when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    /// The values set by the manager (`None`: not overridden).
    pub set: MemberChange,
    /// The file's values those replaced (the same fields as `set`).
    pub file: MemberChange,
    /// Unix time of the latest change, in milliseconds.
    pub made_at_unix_ms: u64,
    /// Who made it: the interface and the peer address of the request.
    pub made_by: String,
}

/// The overrides of every pool, by pool and route.
#[derive(Debug, Default)]
pub struct Overrides(HashMap<PoolId, HashMap<Route, Override>>);

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One field: `Some` while the override holds, `None` once a file edit of the field ended it
/// (`incoming` is neither the file value it replaced nor the override itself).
fn keep<T: PartialEq + Copy>(set: &mut Option<T>, file: &mut Option<T>, incoming: T) -> Option<&'static str> {
    match (*set, *file) {
        (Some(s), Some(f)) if incoming != s && incoming != f => {
            *set = None;
            *file = None;
            Some("the file changed it")
        }
        _ => None,
    }
}

impl Overrides {
    /// Records `change` (already validated) to member `m` of `pool`, made by `by`.
    pub fn record(&mut self, pool: &PoolId, m: &MemberConfig, change: MemberChange, by: String) {
        let entry = self.0.entry(pool.clone()).or_default().entry(m.route.clone()).or_insert_with(|| Override {
            set: MemberChange::default(),
            file: MemberChange::default(),
            made_at_unix_ms: 0,
            made_by: String::new(),
        });
        // A field overridden before keeps the file value remembered then; `m` shows the override.
        if change.load_factor.is_some() && entry.set.load_factor.is_none() {
            entry.file.load_factor = Some(m.load_factor);
        }
        if change.lb_set.is_some() && entry.set.lb_set.is_none() {
            entry.file.lb_set = Some(m.lb_set);
        }
        if change.status.is_some() && entry.set.status.is_none() {
            entry.file.status = Some(m.status);
        }
        entry.set.merge(change);
        entry.made_at_unix_ms = unix_ms();
        entry.made_by = by;
    }

    /// Clears the override of `route` in `pool`; whether there was one.
    pub fn clear(&mut self, pool: &PoolId, route: &str) -> Option<Override> {
        let routes = self.0.get_mut(pool)?;
        let gone = routes.remove(route);
        if routes.is_empty() {
            self.0.remove(pool);
        }
        gone
    }

    /// The override of one member, if any.
    pub fn get(&self, pool: &PoolId, route: &str) -> Option<&Override> {
        self.0.get(pool)?.get(route)
    }

    /// Whether there is none at all (the publication path then does nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Applies the overrides to the pools about to be published, after dropping those whose
    /// member left or whose field the file changed (each drop logged).
    pub fn apply(&mut self, configs: &mut [std::sync::Arc<PoolConfig>]) {
        if self.0.is_empty() {
            return;
        }
        self.0.retain(|id, routes| {
            let Some(c) = configs.iter_mut().find(|c| &c.id == id) else {
                for route in routes.keys() {
                    tracing::warn!(pool = %id, member = %route, "manager override dropped: the pool is gone");
                }
                return false;
            };
            routes.retain(|route, o| match c.members.iter().find(|m| &m.route == route) {
                None => {
                    tracing::warn!(pool = %id, member = %route, "manager override dropped: the member left the pool");
                    false
                }
                Some(m) => {
                    let reasons = [
                        keep(&mut o.set.load_factor, &mut o.file.load_factor, m.load_factor).map(|r| ("loadFactor", r)),
                        keep(&mut o.set.lb_set, &mut o.file.lb_set, m.lb_set).map(|r| ("lbSet", r)),
                        keep(&mut o.set.status, &mut o.file.status, m.status).map(|r| ("status", r)),
                    ];
                    for (field, why) in reasons.into_iter().flatten() {
                        tracing::warn!(pool = %id, member = %route, field, "manager override dropped: {why}");
                    }
                    o.set != MemberChange::default()
                }
            });
            if routes.is_empty() {
                return false;
            }
            let c = std::sync::Arc::make_mut(c);
            for m in &mut c.members {
                if let Some(o) = routes.get(&m.route) {
                    o.set.apply(m);
                }
            }
            true
        });
    }

    /// Logs every override in effect (after a reload), with the file value it shadows.
    pub fn log_kept(&self) {
        for (pool, routes) in &self.0 {
            for (route, o) in routes {
                tracing::info!(
                    pool = %pool,
                    member = %route,
                    set = ?o.set,
                    file = ?o.file,
                    made_at_unix_ms = o.made_at_unix_ms,
                    made_by = %o.made_by,
                    "manager override kept over the file (clear it in the balancer-manager to use the file's values)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MemberStatus;
    use std::sync::Arc;

    fn pool(members: &[(&str, u32, MemberStatus)]) -> Vec<Arc<PoolConfig>> {
        let m: String = members
            .iter()
            .enumerate()
            .map(|(i, (r, lf, _))| {
                format!("      - {{address: \"127.0.0.1:{}\", route: {r}, loadFactor: {lf}}}\n", 8000 + i)
            })
            .collect();
        let s: String = members.iter().map(|(r, _, s)| format!("    - {{route: {r}, status: {s:?}}}\n")).collect();
        let yaml = format!(
            "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: shop, namespace: web}}\nspec:\n  members:\n{s}  backend:\n    members:\n{m}"
        );
        crate::standalone::parse_pools(&yaml).unwrap().into_iter().map(Arc::new).collect()
    }

    fn id() -> PoolId {
        PoolId { namespace: "web".into(), name: "shop".into() }
    }

    fn drain() -> MemberChange {
        MemberChange { status: Some(MemberStatus::Drain), ..MemberChange::default() }
    }

    #[test]
    fn an_override_survives_reloads_that_leave_its_field_alone() {
        let mut o = Overrides::default();
        let file = pool(&[("a", 1, MemberStatus::Ok), ("b", 1, MemberStatus::Ok)]);
        o.record(&id(), &file[0].members[1], drain(), "api 127.0.0.1".into());
        // A reload that changes another field of b keeps the drain.
        let mut reload = pool(&[("a", 1, MemberStatus::Ok), ("b", 5, MemberStatus::Ok)]);
        o.apply(&mut reload);
        assert_eq!((reload[0].members[1].status, reload[0].members[1].load_factor), (MemberStatus::Drain, 5));
        // Re-publishing the published (overridden) configs changes nothing.
        o.apply(&mut reload);
        assert_eq!(reload[0].members[1].status, MemberStatus::Drain);
        let kept = o.get(&id(), "b").unwrap();
        assert_eq!(kept.file.status, Some(MemberStatus::Ok), "remembers the file's value");
        assert_eq!(kept.made_by, "api 127.0.0.1");
        assert!(kept.made_at_unix_ms > 0);
    }

    #[test]
    fn a_file_edit_of_the_same_field_wins() {
        let mut o = Overrides::default();
        let file = pool(&[("a", 1, MemberStatus::Ok)]);
        let change = MemberChange { load_factor: Some(7), status: Some(MemberStatus::Drain), lb_set: None };
        o.record(&id(), &file[0].members[0], change, "form".into());
        let mut edit = pool(&[("a", 1, MemberStatus::Disabled)]);
        o.apply(&mut edit);
        assert_eq!(edit[0].members[0].status, MemberStatus::Disabled, "the newer file edit wins");
        assert_eq!(edit[0].members[0].load_factor, 7, "the other field stays overridden");
        let mut edit = pool(&[("a", 2, MemberStatus::Disabled)]);
        o.apply(&mut edit);
        assert_eq!(edit[0].members[0].load_factor, 2);
        assert!(o.is_empty(), "nothing left to override");
    }

    #[test]
    fn a_member_that_leaves_loses_its_override_and_comes_back_from_the_file() {
        let mut o = Overrides::default();
        let file = pool(&[("a", 1, MemberStatus::Ok), ("b", 1, MemberStatus::Ok)]);
        o.record(&id(), &file[0].members[1], drain(), "api".into());
        o.apply(&mut pool(&[("a", 1, MemberStatus::Ok)]));
        assert!(o.is_empty());
        let mut back = pool(&[("a", 1, MemberStatus::Ok), ("b", 1, MemberStatus::Ok)]);
        o.apply(&mut back);
        assert_eq!(back[0].members[1].status, MemberStatus::Ok);
    }

    #[test]
    fn a_second_change_keeps_the_first_file_value_and_clear_forgets() {
        let mut o = Overrides::default();
        let mut file = pool(&[("a", 3, MemberStatus::Ok)]);
        let lf = |n| MemberChange { load_factor: Some(n), ..MemberChange::default() };
        o.record(&id(), &file[0].members[0], lf(5), "api".into());
        o.apply(&mut file);
        // The second change sees the published (overridden) member.
        o.record(&id(), &file[0].members[0], lf(9), "api".into());
        assert_eq!(o.get(&id(), "a").unwrap().file.load_factor, Some(3), "the file said 3");
        assert!(o.clear(&id(), "a").is_some());
        assert!(o.clear(&id(), "a").is_none());
        let mut reload = pool(&[("a", 3, MemberStatus::Ok)]);
        o.apply(&mut reload);
        assert_eq!(reload[0].members[0].load_factor, 3);
    }
}
