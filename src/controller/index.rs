//! The controller's view of the cluster: pools and EndpointSlices in scope, and the derived
//! pool configurations cached per pool.
//!
//! Like linkerd's policy index, it is updated through `apply` / `delete` / `retain` calls from
//! the watchers and does no I/O itself, so the run loop, the tests and the benchmark drive the
//! same code. A change marks only the pools it concerns dirty; [`Index::rederive`] re-derives
//! just those, reusing each unchanged slice's candidates, and tells whether the routing table
//! must be republished. Nothing is published from a half-updated index: the loop publishes after
//! a batch of watch events, from [`Index::configs`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::derive::{self, MemberClaims, SERVICE_NAME_LABEL, Skipped, SliceMembers};
use super::services;
use crate::api::BalancerPool;
use crate::core::config::{FieldError, PoolConfig, PoolId};

/// Which pools this installation serves.
#[derive(Clone, Debug)]
pub struct ClassFilter {
    /// `spec.ingressClassName` served.
    pub ingress_class: String,
    /// Whether pools without `ingressClassName` are served too.
    pub default_class: bool,
}

impl ClassFilter {
    /// Whether a pool with this class is ours.
    pub fn serves(&self, class: Option<&str>) -> bool {
        match class {
            Some(c) => c == self.ingress_class,
            None => self.default_class,
        }
    }
}

/// `(namespace, service name)`.
pub type ServiceKey = (String, String);

/// Older pools first: pools with a creation time, by creation time, then by namespace/name.
type Priority = (bool, Option<Timestamp>, PoolId);

/// A pool and what was derived from it.
#[derive(Debug)]
pub struct PoolEntry {
    /// The object as last seen (its status included, to compare with what we would write).
    pub object: Arc<BalancerPool>,
    /// Older pools first: creation time, then namespace/name.
    priority: Priority,
    /// The latest derivation: valid (its config is `serving`), or the problems of the spec.
    pub result: Result<(), Vec<FieldError>>,
    /// The last valid config: what is published (an invalid spec keeps the old table). Shared
    /// with the proxy: an unchanged pool is recognised there by pointer.
    pub serving: Option<Arc<PoolConfig>>,
    /// What the derivation left out (ports that match nothing, endpoints without a route).
    pub skipped: Vec<Skipped>,
    /// Candidates per slice name, with the slice's resourceVersion they were read from.
    slice_cache: HashMap<String, (Option<String>, Arc<SliceMembers>)>,
    /// The candidates of every cached slice, by route.
    claims: MemberClaims,
    /// The slice port the cache was read with (the Service port resolved through the Service).
    slice_port: Option<IntOrString>,
}

/// What a re-derivation changed for one pool, for Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolChange {
    /// The pool.
    pub id: PoolId,
    /// Routes that became members (`route@address`).
    pub added: Vec<String>,
    /// Routes that are no longer members.
    pub removed: Vec<String>,
    /// The spec became invalid (or its problems changed): the message.
    pub rejected: Option<String>,
}

/// Pools and slices in scope.
#[derive(Debug)]
pub struct Index {
    filter: ClassFilter,
    pools: HashMap<PoolId, PoolEntry>,
    /// Pool ids by priority: the publication order.
    order: BTreeSet<Priority>,
    slices: HashMap<ServiceKey, BTreeMap<String, Arc<EndpointSlice>>>,
    slice_service: HashMap<(String, String), ServiceKey>,
    by_service: HashMap<ServiceKey, BTreeSet<PoolId>>,
    /// Services in scope: a backend's port is the Service's port ([`services`]).
    services: HashMap<ServiceKey, Arc<Service>>,
    dirty: BTreeSet<PoolId>,
    publish_needed: bool,
    /// Pools removed since [`Index::take_removed`]: whatever removed them (a deletion, a
    /// re-list that no longer holds them, a class change), the status writer must forget them.
    removed: Vec<PoolId>,
}

/// The id of a pool object (`default` namespace when unset, as in standalone files).
pub fn pool_id(p: &BalancerPool) -> PoolId {
    PoolId {
        namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: p.metadata.name.clone().unwrap_or_default(),
    }
}

fn service_of_pool(id: &PoolId, p: &BalancerPool) -> Option<ServiceKey> {
    p.spec.backend.service.as_ref().map(|s| (id.namespace.clone(), s.name.clone()))
}

fn slice_key(s: &EndpointSlice) -> (String, String) {
    (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default())
}

fn service_of_slice(s: &EndpointSlice) -> Option<ServiceKey> {
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((s.metadata.namespace.clone().unwrap_or_default(), svc.clone()))
}

impl Index {
    /// An empty index serving pools of `filter`.
    pub fn new(filter: ClassFilter) -> Index {
        Index {
            filter,
            pools: HashMap::new(),
            order: BTreeSet::new(),
            slices: HashMap::new(),
            slice_service: HashMap::new(),
            by_service: HashMap::new(),
            services: HashMap::new(),
            dirty: BTreeSet::new(),
            publish_needed: false,
            removed: Vec::new(),
        }
    }

    /// A pool was added or changed. Pools of another ingress class are treated as deleted.
    pub fn apply_pool(&mut self, pool: BalancerPool) {
        let id = pool_id(&pool);
        if !self.filter.serves(pool.spec.ingress_class_name.as_deref()) {
            self.delete_pool_id(&id);
            return;
        }
        let priority = (
            pool.metadata.creation_timestamp.is_none(),
            pool.metadata.creation_timestamp.as_ref().map(|t| t.0),
            id.clone(),
        );
        let new_service = service_of_pool(&id, &pool);
        match self.pools.get_mut(&id) {
            Some(e) => {
                let spec_changed = e.object.spec != pool.spec;
                let moved = e.priority != priority;
                let old_service = service_of_pool(&id, &e.object);
                e.object = Arc::new(pool);
                if spec_changed {
                    e.slice_cache.clear();
                    e.claims.clear();
                    e.slice_port = None;
                    self.dirty.insert(id.clone());
                }
                if moved {
                    self.order.remove(&e.priority);
                    self.order.insert(priority.clone());
                    self.publish_needed = true;
                }
                e.priority = priority;
                if old_service != new_service {
                    if let Some(s) = old_service
                        && let Some(set) = self.by_service.get_mut(&s)
                    {
                        set.remove(&id);
                    }
                    if let Some(s) = new_service {
                        self.by_service.entry(s).or_default().insert(id);
                    }
                }
            }
            None => {
                if let Some(s) = new_service {
                    self.by_service.entry(s).or_default().insert(id.clone());
                }
                self.order.insert(priority.clone());
                self.pools.insert(
                    id.clone(),
                    PoolEntry {
                        object: Arc::new(pool),
                        priority,
                        result: Err(Vec::new()),
                        serving: None,
                        skipped: Vec::new(),
                        slice_cache: HashMap::new(),
                        claims: MemberClaims::default(),
                        slice_port: None,
                    },
                );
                self.dirty.insert(id);
            }
        }
    }

    /// A pool was deleted.
    pub fn delete_pool(&mut self, pool: &BalancerPool) {
        self.delete_pool_id(&pool_id(pool));
    }

    /// A pool was deleted, by id (pools made from an Ingress have no object of their own).
    pub fn delete_pool_id(&mut self, id: &PoolId) {
        if let Some(e) = self.pools.remove(id) {
            self.order.remove(&e.priority);
            if let Some(s) = service_of_pool(id, &e.object)
                && let Some(set) = self.by_service.get_mut(&s)
            {
                set.remove(id);
                if set.is_empty() {
                    self.by_service.remove(&s);
                }
            }
            self.dirty.remove(id);
            if e.serving.is_some() {
                self.publish_needed = true;
            }
            self.removed.push(id.clone());
        }
    }

    /// The pools removed since the last call, however they went.
    pub fn take_removed(&mut self) -> Vec<PoolId> {
        std::mem::take(&mut self.removed)
    }

    /// Keeps only the pools whose ids are in `seen` (after a re-list).
    pub fn retain_pools(&mut self, seen: &HashSet<PoolId>) {
        let gone: Vec<PoolId> = self.pools.keys().filter(|id| !seen.contains(*id)).cloned().collect();
        for id in gone {
            self.delete_pool_id(&id);
        }
    }

    fn mark_service(&mut self, svc: &ServiceKey) {
        if let Some(pools) = self.by_service.get(svc) {
            self.dirty.extend(pools.iter().cloned());
        }
    }

    /// A slice was added or changed.
    pub fn apply_slice(&mut self, slice: EndpointSlice) {
        let key = slice_key(&slice);
        let svc = service_of_slice(&slice);
        if let Some(old_svc) = self.slice_service.get(&key).cloned()
            && Some(&old_svc) != svc.as_ref()
        {
            self.remove_slice(&key, &old_svc);
        }
        let Some(svc) = svc else { return };
        let slices = self.slices.entry(svc.clone()).or_default();
        if let Some(old) = slices.get(&key.1)
            && old.metadata.resource_version.is_some()
            && old.metadata.resource_version == slice.metadata.resource_version
        {
            return;
        }
        slices.insert(key.1.clone(), Arc::new(slice));
        self.slice_service.insert(key, svc.clone());
        self.mark_service(&svc);
    }

    /// A slice was deleted.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        let key = slice_key(slice);
        if let Some(svc) = self.slice_service.get(&key).cloned() {
            self.remove_slice(&key, &svc);
        }
    }

    fn remove_slice(&mut self, key: &(String, String), svc: &ServiceKey) {
        self.slice_service.remove(key);
        if let Some(slices) = self.slices.get_mut(svc) {
            slices.remove(&key.1);
            if slices.is_empty() {
                self.slices.remove(svc);
            }
        }
        self.mark_service(svc);
    }

    /// Keeps only the slices whose `(namespace, name)` are in `seen` (after a re-list).
    pub fn retain_slices(&mut self, seen: &HashSet<(String, String)>) {
        let gone: Vec<((String, String), ServiceKey)> = self
            .slice_service
            .iter()
            .filter(|(k, _)| !seen.contains(*k))
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        for (k, s) in gone {
            self.remove_slice(&k, &s);
        }
    }

    /// A Service was added or changed: its pools re-resolve their port.
    pub fn apply_service(&mut self, svc: Service) {
        let key = (svc.metadata.namespace.clone().unwrap_or_default(), svc.metadata.name.clone().unwrap_or_default());
        let same_ports = self.services.get(&key).is_some_and(|old| old.spec == svc.spec);
        // Kept even when only the status moved: `--publish-service` reads its load balancer.
        self.services.insert(key.clone(), Arc::new(svc));
        if !same_ports {
            self.mark_service(&key);
        }
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, svc: &Service) {
        let key = (svc.metadata.namespace.clone().unwrap_or_default(), svc.metadata.name.clone().unwrap_or_default());
        if self.services.remove(&key).is_some() {
            self.mark_service(&key);
        }
    }

    /// Keeps only the Services whose `(namespace, name)` are in `seen` (after a re-list).
    pub fn retain_services(&mut self, seen: &HashSet<ServiceKey>) {
        let gone: Vec<ServiceKey> = self.services.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for k in gone {
            self.services.remove(&k);
            self.mark_service(&k);
        }
    }

    /// A Service in scope.
    pub fn service(&self, key: &ServiceKey) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// Whether some pool awaits re-derivation or the table must be republished.
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty() || self.publish_needed
    }

    /// Re-derives the dirty pools. Returns what changed per pool; afterwards
    /// [`Index::take_publish_needed`] tells whether the published table is stale.
    pub fn rederive(&mut self) -> Vec<PoolChange> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut changes = Vec::new();
        for id in dirty {
            let Some(e) = self.pools.get_mut(&id) else { continue };
            let spec = &e.object.spec;
            let mut derived = derive::Derived::default();
            if let Some(svc) = &spec.backend.service {
                let route_from = spec.backend.route_from.unwrap_or_default();
                let key = (id.namespace.clone(), svc.name.clone());
                let resolution = services::resolve(self.services.get(&key).map(|s| &**s), &svc.port);
                let port_problem = services::problem(&svc.name, &resolution);
                let port = resolution.slice_port();
                if e.slice_port.as_ref() != Some(port) {
                    if let Some(message) = &port_problem {
                        tracing::warn!(pool = %id, "{message}");
                    }
                    // Another slice port: every cached slice was read with the old one.
                    e.slice_cache.clear();
                    e.claims.clear();
                    e.slice_port = Some(port.clone());
                }
                let slices = self.slices.get(&key);
                // Only slices whose resourceVersion moved are read again, and only their
                // candidates are re-merged.
                let (cache, claims) = (&mut e.slice_cache, &mut e.claims);
                for (name, s) in slices.into_iter().flatten() {
                    let rv = &s.metadata.resource_version;
                    match cache.get_mut(name) {
                        Some((crv, _)) if crv.is_some() && crv == rv => {}
                        Some(cached) => {
                            let fresh = Arc::new(derive::slice_members(s, port, route_from));
                            claims.replace(&cached.1, &fresh);
                            *cached = (rv.clone(), fresh);
                        }
                        None => {
                            let fresh = Arc::new(derive::slice_members(s, port, route_from));
                            claims.add(&fresh);
                            cache.insert(name.clone(), (rv.clone(), fresh));
                        }
                    }
                }
                if cache.len() > slices.map_or(0, BTreeMap::len) {
                    cache.retain(|name, (_, m)| {
                        let keep = slices.is_some_and(|s| s.contains_key(name));
                        if !keep {
                            claims.remove(m);
                        }
                        keep
                    });
                }
                let mut skipped: Vec<Skipped> = cache.values().flat_map(|(_, m)| m.skipped.iter().cloned()).collect();
                if let Some(message) = port_problem {
                    skipped.push(Skipped::ServicePort { message });
                }
                derived = claims.derived(skipped);
            }
            e.skipped = std::mem::take(&mut derived.skipped);
            let mut change = PoolChange { id: id.clone(), added: Vec::new(), removed: Vec::new(), rejected: None };
            match derive::pool_config(id.clone(), spec, derived) {
                Ok(cfg) => {
                    if config_diff(e.serving.as_deref(), &cfg, &mut change) {
                        e.serving = Some(Arc::new(cfg));
                        self.publish_needed = true;
                    }
                    e.result = Ok(());
                }
                Err(problems) => {
                    if e.result.as_ref().err() != Some(&problems) {
                        change.rejected = Some(problems_message(&problems));
                    }
                    e.result = Err(problems);
                }
            }
            if !change.added.is_empty() || !change.removed.is_empty() || change.rejected.is_some() {
                changes.push(change);
            }
        }
        changes
    }

    /// Whether the table must be republished; resets the flag.
    pub fn take_publish_needed(&mut self) -> bool {
        std::mem::take(&mut self.publish_needed)
    }

    /// The configs to publish, older pools first (the older pool wins a host+prefix conflict).
    pub fn configs(&self) -> Vec<Arc<PoolConfig>> {
        self.order.iter().filter_map(|(_, _, id)| self.pools.get(id)?.serving.clone()).collect()
    }

    /// Every pool in scope.
    pub fn pools(&self) -> impl Iterator<Item = (&PoolId, &PoolEntry)> {
        self.pools.iter()
    }

    /// One pool.
    pub fn pool(&self, id: &PoolId) -> Option<&PoolEntry> {
        self.pools.get(id)
    }

    /// Number of slices held.
    pub fn slice_count(&self) -> usize {
        self.slice_service.len()
    }
}

/// Whether `new` differs from `old` at all, recording members added and removed (by route and
/// address) on the way: one walk over both member lists, which are sorted by route (a spec
/// override does not reorder them), instead of a comparison and then a diff.
fn config_diff(old: Option<&PoolConfig>, new: &PoolConfig, change: &mut PoolChange) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    // Every field but the members; naming them all makes a new field a compile error here.
    let PoolConfig {
        id,
        hosts,
        path_prefix,
        path_exact,
        rewrite_prefix,
        lb_method,
        sticky,
        members: _,
        members_sorted,
        retry_after,
        max_attempts,
        timeouts,
        max_connections,
        health,
        tls,
        https_redirect,
        hsts,
        backend_tls,
    } = new;
    let mut differs = old.is_none_or(|o| {
        o.id != *id
            || o.hosts != *hosts
            || o.path_prefix != *path_prefix
            || o.path_exact != *path_exact
            || o.rewrite_prefix != *rewrite_prefix
            || o.lb_method != *lb_method
            || o.sticky != *sticky
            || o.members_sorted != *members_sorted
            || o.retry_after != *retry_after
            || o.max_attempts != *max_attempts
            || o.timeouts != *timeouts
            || o.max_connections != *max_connections
            || o.health != *health
            || o.tls != *tls
            || o.https_redirect != *https_redirect
            || o.hsts != *hsts
            || o.backend_tls != *backend_tls
    });
    let old = old.map(|o| o.members.as_slice()).unwrap_or_default();
    let (mut i, mut j) = (0, 0);
    let label = |m: &crate::core::config::MemberConfig| format!("{}@{}", m.route, m.address);
    while i < old.len() || j < new.members.len() {
        let ord = match (old.get(i), new.members.get(j)) {
            (Some(o), Some(n)) => o.route.cmp(&n.route),
            (Some(_), None) => Less,
            _ => Greater,
        };
        match ord {
            Less => {
                change.removed.push(label(&old[i]));
                i += 1;
                differs = true;
            }
            Greater => {
                change.added.push(label(&new.members[j]));
                j += 1;
                differs = true;
            }
            Equal => {
                let (o, n) = (&old[i], &new.members[j]);
                if o.address != n.address {
                    change.removed.push(label(o));
                    change.added.push(label(n));
                }
                differs |= o != n;
                i += 1;
                j += 1;
            }
        }
    }
    differs
}

/// All problems of a spec in one line, bounded for a condition message or an Event note.
pub fn problems_message(problems: &[FieldError]) -> String {
    let mut s = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    truncate(&mut s, 900);
    s
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::api::{Backend, BalancerPoolSpec, Frontend, ServiceRef};

    fn index() -> Index {
        Index::new(ClassFilter { ingress_class: "routeid".into(), default_class: true })
    }

    fn pool(name: &str, service: &str, class: Option<&str>, created: &str) -> BalancerPool {
        let mut p = BalancerPool::new(
            name,
            BalancerPoolSpec {
                ingress_class_name: class.map(Into::into),
                frontend: Frontend { hosts: vec![format!("{name}.example.com")], ..Default::default() },
                backend: Backend {
                    service: Some(ServiceRef { name: service.into(), port: IntOrString::String("http".into()) }),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("web".into());
        p.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        p
    }

    fn slice(name: &str, service: Option<&str>, pods: &[&str], rv: &str) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: pods
                .iter()
                .enumerate()
                .map(|(i, p)| Endpoint {
                    addresses: vec![format!("10.0.0.{}", i + 1)],
                    target_ref: Some(ObjectReference { name: Some((*p).into()), ..Default::default() }),
                    ..Default::default()
                })
                .collect(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("web".into()),
                resource_version: Some(rv.into()),
                labels: service.map(|s| BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), s.to_owned())])),
                ..Default::default()
            },
            ports: Some(vec![EndpointPort { name: Some("http".into()), port: Some(80), ..Default::default() }]),
        }
    }

    fn routes(ix: &Index, name: &str) -> Vec<String> {
        let id = PoolId { namespace: "web".into(), name: name.into() };
        ix.pool(&id)
            .and_then(|e| e.serving.as_ref())
            .map(|c| c.members.iter().map(|m| m.route.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn only_pools_of_a_changed_service_are_rederived() {
        let mut ix = index();
        ix.apply_pool(pool("a", "svc-a", None, "2025-01-01T00:00:00Z"));
        ix.apply_pool(pool("b", "svc-b", None, "2025-01-01T00:00:00Z"));
        ix.apply_slice(slice("a-1", Some("svc-a"), &["a0"], "1"));
        ix.apply_slice(slice("b-1", Some("svc-b"), &["b0"], "1"));
        assert_eq!(ix.rederive().len(), 2);
        assert!(ix.take_publish_needed());
        ix.apply_slice(slice("a-1", Some("svc-a"), &["a0", "a1"], "2"));
        let changes = ix.rederive();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].added, ["a1@10.0.0.2:80"]);
        assert_eq!(routes(&ix, "a"), ["a0", "a1"]);
        assert!(ix.take_publish_needed());
        // The same resourceVersion again: nothing to do.
        ix.apply_slice(slice("a-1", Some("svc-a"), &["a0", "a1"], "2"));
        assert!(!ix.has_work());
    }

    #[test]
    fn a_status_only_update_does_not_rederive() {
        let mut ix = index();
        let mut p = pool("a", "svc-a", None, "2025-01-01T00:00:00Z");
        ix.apply_pool(p.clone());
        ix.rederive();
        ix.take_publish_needed();
        p.status = Some(Default::default());
        ix.apply_pool(p);
        assert!(!ix.has_work());
    }

    #[test]
    fn class_filter_and_priority_order() {
        let mut ix = index();
        ix.apply_pool(pool("young", "s", Some("routeid"), "2025-03-01T00:00:00Z"));
        ix.apply_pool(pool("old", "s", None, "2025-01-01T00:00:00Z"));
        ix.apply_pool(pool("other", "s", Some("nginx"), "2024-01-01T00:00:00Z"));
        ix.rederive();
        let names: Vec<String> = ix.configs().into_iter().map(|c| c.id.name.clone()).collect();
        assert_eq!(names, ["old", "young"]);
        // A pool that moves to another class is dropped.
        ix.apply_pool(pool("old", "s", Some("nginx"), "2025-01-01T00:00:00Z"));
        assert!(ix.take_publish_needed());
        let names: Vec<String> = ix.configs().into_iter().map(|c| c.id.name.clone()).collect();
        assert_eq!(names, ["young"]);
        let removed: Vec<String> = ix.take_removed().into_iter().map(|id| id.name).collect();
        assert_eq!(removed, ["old"], "a class change removes the pool: its status writes are forgotten");
    }

    #[test]
    fn relist_drops_what_vanished_and_relabelled_slices_move() {
        let mut ix = index();
        ix.apply_pool(pool("a", "svc-a", None, "2025-01-01T00:00:00Z"));
        ix.apply_slice(slice("s1", Some("svc-a"), &["a0"], "1"));
        ix.apply_slice(slice("s2", Some("svc-a"), &["a1"], "1"));
        ix.rederive();
        assert_eq!(routes(&ix, "a"), ["a0", "a1"]);
        // s2 now belongs to another Service: its endpoints leave pool a.
        ix.apply_slice(slice("s2", Some("svc-b"), &["a1"], "2"));
        ix.rederive();
        assert_eq!(routes(&ix, "a"), ["a0"]);
        // A re-list that no longer holds s1.
        ix.retain_slices(&HashSet::from([("web".to_owned(), "s2".to_owned())]));
        let changes = ix.rederive();
        assert_eq!(changes[0].removed, ["a0@10.0.0.1:80"]);
        assert!(routes(&ix, "a").is_empty());
        assert!(ix.take_removed().is_empty());
        ix.retain_pools(&HashSet::new());
        assert!(ix.configs().is_empty());
        assert_eq!(ix.slice_count(), 1);
        assert_eq!(ix.take_removed(), [PoolId { namespace: "web".into(), name: "a".into() }], "forget it");
        assert!(ix.take_removed().is_empty());
    }

    #[test]
    fn an_invalid_spec_keeps_the_last_valid_config() {
        let mut ix = index();
        let mut p = pool("a", "svc-a", None, "2025-01-01T00:00:00Z");
        ix.apply_pool(p.clone());
        ix.apply_slice(slice("s1", Some("svc-a"), &["a0"], "1"));
        ix.rederive();
        p.spec.timeouts.connect = Some("soon".into());
        ix.apply_pool(p);
        let changes = ix.rederive();
        assert!(changes[0].rejected.as_deref().unwrap().contains("spec.timeouts.connect"));
        let id = PoolId { namespace: "web".into(), name: "a".into() };
        assert!(ix.pool(&id).unwrap().result.is_err());
        assert_eq!(routes(&ix, "a"), ["a0"], "the last valid config still serves");
        // Slices still change underneath: the old config stays until the spec is fixed.
        ix.apply_slice(slice("s1", Some("svc-a"), &["a0", "a1"], "2"));
        assert!(ix.rederive().is_empty(), "the same problems are not reported twice");
        assert_eq!(routes(&ix, "a"), ["a0"]);
    }

    fn service(name: &str, port: i32, port_name: &str) -> Service {
        use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
        Service {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("web".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some(port_name.into()),
                    port,
                    target_port: Some(IntOrString::Int(8080)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_port_number_is_the_services_port_once_the_service_is_known() {
        let mut ix = index();
        let mut p = pool("a", "svc-a", None, "2025-01-01T00:00:00Z");
        // `port: 443` is the Service's port; the slices list the target port (80 here) by name.
        p.spec.backend.service.as_mut().unwrap().port = IntOrString::Int(443);
        ix.apply_pool(p);
        ix.apply_slice(slice("s1", Some("svc-a"), &["a0"], "1"));
        ix.rederive();
        assert!(routes(&ix, "a").is_empty(), "443 is no endpoint port and the Service is unknown");
        ix.apply_service(service("svc-a", 443, "http"));
        ix.rederive();
        assert_eq!(routes(&ix, "a"), ["a0"]);
        let id = PoolId { namespace: "web".into(), name: "a".into() };
        assert_eq!(ix.pool(&id).unwrap().serving.as_ref().unwrap().members[0].address.port(), 80);
        // The Service port is renamed: the slices no longer list it.
        ix.apply_service(service("svc-a", 443, "https"));
        ix.rederive();
        assert!(routes(&ix, "a").is_empty());
        // A number that is no Service port still matches an endpoint port (the old meaning),
        // and says so.
        let mut p = pool("a", "svc-a", None, "2025-01-01T00:00:00Z");
        p.spec.backend.service.as_mut().unwrap().port = IntOrString::Int(80);
        ix.apply_pool(p);
        ix.rederive();
        assert_eq!(routes(&ix, "a"), ["a0"]);
        let skipped = &ix.pool(&id).unwrap().skipped;
        assert!(skipped.iter().any(|s| s.to_string().contains("has no port 80")), "{skipped:?}");
        ix.delete_service(&service("svc-a", 443, "https"));
        ix.rederive();
        assert!(ix.pool(&id).unwrap().skipped.is_empty());
    }

    /// One endpoint for the incremental-derivation property: pod `p<n>`, address `10.0.0.<ip>`,
    /// and conditions (0 ready, 1 serving+terminating, 2 not serving).
    fn endpoint(pod: u8, ip: u8, cond: u8) -> Endpoint {
        use k8s_openapi::api::discovery::v1::EndpointConditions;
        Endpoint {
            addresses: vec![format!("10.0.0.{ip}")],
            conditions: Some(EndpointConditions {
                ready: Some(cond == 0),
                serving: Some(cond < 2),
                terminating: Some(cond == 1),
            }),
            target_ref: Some(ObjectReference { name: Some(format!("p{pod}")), ..Default::default() }),
            ..Default::default()
        }
    }

    proptest::proptest! {
        /// Slices updated and deleted in any order, with pods listed by two slices, turning
        /// terminating and moving: the incrementally maintained members always equal a
        /// derivation from scratch, and a change is published exactly when they differ.
        #[test]
        fn incremental_derivation_matches_a_fresh_one(
            ops in proptest::collection::vec(
                (0..3u8, proptest::option::weighted(0.85, proptest::collection::vec((0..6u8, 1..4u8, 0..3u8), 0..5))),
                1..40,
            )
        ) {
            let mut ix = index();
            let p = pool("a", "svc", None, "2025-01-01T00:00:00Z");
            let id = pool_id(&p);
            ix.apply_pool(p.clone());
            let mut current: BTreeMap<String, EndpointSlice> = BTreeMap::new();
            for (rv, (k, eps)) in ops.into_iter().enumerate() {
                let name = format!("s{k}");
                match eps {
                    Some(eps) => {
                        let mut s = slice(&name, Some("svc"), &[], &(rv + 1).to_string());
                        s.endpoints = eps.into_iter().map(|(pod, ip, cond)| endpoint(pod, ip, cond)).collect();
                        current.insert(name, s.clone());
                        ix.apply_slice(s);
                    }
                    None => {
                        if let Some(s) = current.remove(&name) {
                            ix.delete_slice(&s);
                        }
                    }
                }
                let before = ix.pool(&id).and_then(|e| e.serving.clone());
                ix.rederive();
                let fresh = derive::derive_pool(id.clone(), &p.spec, current.values()).map_err(|e| format!("{e:?}"));
                let fresh = fresh.map_err(proptest::test_runner::TestCaseError::fail)?;
                let now = ix.pool(&id).and_then(|e| e.serving.clone());
                proptest::prop_assert_eq!(now.as_deref(), Some(&fresh));
                let published = ix.take_publish_needed();
                proptest::prop_assert_eq!(published, before.as_deref() != Some(&fresh));
            }
        }
    }
}
