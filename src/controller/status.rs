//! What a pool's `status` should say, and the one writer that says it (plus Events).
//!
//! [`desired_status`] is pure: from the index entry, the published table and the conflicts it
//! computes `observedGeneration`, the members and the four conditions, carrying each
//! condition's `lastTransitionTime` over while its status is unchanged. Since the carried-over
//! times make an unchanged status compare equal, the run loop skips pools whose status is
//! already what the object holds.
//!
//! The [`Writer`] task does the API calls, off the run loop, fed through a bounded [`outbox`]:
//! only while this replica leads (every replica computes, one writes), coalesced per pool (the
//! latest status wins), at most one write per pool per `min_interval`, and at most `rate` writes
//! per second overall, so a storm of pod changes cannot turn into a storm of API writes. Events
//! go the same way, capped.
//!
//! Status reports what the **leader** sees. The spec-derived parts (members, `Accepted`,
//! `Conflict`) are the same on every replica, but member health (`Error`, `Unhealthy`, hence
//! `Degraded` and `readyMembers`) is each replica's own observation of the members it talks to;
//! when leadership moves, status shows the new leader's view (a member one replica cannot reach
//! may be fine from another). Events, too, are written only by the leader: while no replica
//! leads (between a leader's exit and the next election) Events are not queued for the next
//! leader, which writes the standing warnings (conflicts, Ingress problems) again when it takes
//! over; per-member Normal Events of that gap are lost.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::index::{PoolEntry, problems_message, truncate};
use crate::api::{BalancerPool, BalancerPoolStatus, Condition, MemberStatusEntry};
use crate::core::config::PoolId;
use crate::core::table::{Conflict, RoutingTable};

/// Condition types, as users see them in `kubectl describe`.
pub mod kinds {
    /// The spec is valid.
    pub const ACCEPTED: &str = "Accepted";
    /// At least one member takes new sessions.
    pub const READY: &str = "Ready";
    /// Some members are unhealthy (failed health checks) or in error (refused connections).
    pub const DEGRADED: &str = "Degraded";
    /// An older pool claims the same host and prefix.
    pub const CONFLICT: &str = "Conflict";
}

fn condition(prev: &[Condition], type_: &str, ok: bool, reason: &str, message: String, now: &str) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .or_else(|| Some(now.to_owned()));
    let mut message = message;
    truncate(&mut message, 900);
    Condition { type_: type_.into(), status: status.into(), reason: reason.into(), message, last_transition_time }
}

/// `TLSReady`: every Secret the pool names serves its hosts, or which one does not and why.
pub fn tls_condition(entry: &PoolEntry, problems: &[crate::proxy::tls::TlsProblem], now: &str) -> Condition {
    let prev = entry.object.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    match problems.first() {
        None => condition(prev, "TLSReady", true, "CertificatesServed", "every named Secret serves".into(), now),
        Some(first) => {
            let message = problems.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; ");
            condition(prev, "TLSReady", false, first.reason, message, now)
        }
    }
}

fn list_routes<'a>(routes: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = routes.collect();
    let shown = all.iter().take(10).copied().collect::<Vec<_>>().join(", ");
    if all.len() > 10 { format!("{shown} and {} more", all.len() - 10) } else { shown }
}

/// The status this replica would write for a pool. `now` is an RFC 3339 time for new
/// transitions; `now_ms` is the proxy clock (member error deadlines are in its milliseconds).
pub fn desired_status(
    entry: &PoolEntry,
    id: &PoolId,
    table: &RoutingTable,
    conflict: Option<&Conflict>,
    now_ms: u64,
    now: &str,
) -> BalancerPoolStatus {
    let prev = entry.object.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let (members, in_error) = member_entries(entry, id, table, now_ms);
    let ready_members = members.iter().filter(|m| m.ready).count();
    let conditions = vec![
        accepted(entry, prev, now),
        ready(entry, prev, conflict, ready_members, members.len(), now),
        degraded(prev, &in_error, now),
        conflicted(prev, conflict, now),
    ];
    BalancerPoolStatus {
        observed_generation: entry.object.metadata.generation,
        member_count: Some(u32::try_from(members.len()).unwrap_or(u32::MAX)),
        ready_members: Some(u32::try_from(ready_members).unwrap_or(u32::MAX)),
        members,
        conditions,
    }
}

/// The members as the published table holds them (and which are unhealthy or in error); for a
/// pool not in the table (a conflict loser), what would serve, none of it usable.
fn member_entries(
    entry: &PoolEntry,
    id: &PoolId,
    table: &RoutingTable,
    now_ms: u64,
) -> (Vec<MemberStatusEntry>, Vec<String>) {
    let mut members = Vec::new();
    let mut in_error = Vec::new();
    if let Some(pool) = table.pool(id) {
        for m in &pool.members {
            let state = m.state_name(now_ms);
            // Passive health (refused connections) and active health checks alike.
            if state == "Error" || state == "Unhealthy" {
                in_error.push(format!("{} ({state})", m.route()));
            }
            members.push(MemberStatusEntry {
                route: m.config.route.to_string(),
                address: m.config.address.to_string(),
                ready: m.takes_new(now_ms) || m.takes_new_as_standby(now_ms),
                state: state.into(),
            });
        }
    } else if let Some(cfg) = &entry.serving {
        for m in &cfg.members {
            members.push(MemberStatusEntry {
                route: m.route.to_string(),
                address: m.address.to_string(),
                ready: false,
                state: format!("{:?}", m.status),
            });
        }
    }
    (members, in_error)
}

/// `Accepted`: the spec is valid, or its problems (and whether an older spec still serves).
fn accepted(entry: &PoolEntry, prev: &[Condition], now: &str) -> Condition {
    match &entry.result {
        Ok(_) => condition(prev, kinds::ACCEPTED, true, "Valid", "the spec is valid".into(), now),
        Err(problems) => {
            let serving = if entry.serving.is_some() {
                "; the last valid spec keeps serving"
            } else {
                "; nothing is served for this pool"
            };
            let message = format!("{}{serving}", problems_message(problems));
            condition(prev, kinds::ACCEPTED, false, "InvalidSpec", message, now)
        }
    }
}

/// `Ready`: some member takes new sessions, or why none does.
fn ready(
    entry: &PoolEntry,
    prev: &[Condition],
    conflict: Option<&Conflict>,
    ready_members: usize,
    members: usize,
    now: &str,
) -> Condition {
    if let Some(c) = conflict {
        let message = format!("not served: {} claims the same host and prefix", c.winner);
        condition(prev, kinds::READY, false, "Conflict", message, now)
    } else if ready_members > 0 {
        let message = format!("{ready_members} of {members} members take new sessions");
        condition(prev, kinds::READY, true, "MembersAvailable", message, now)
    } else if entry.serving.is_none() {
        condition(prev, kinds::READY, false, "NotServed", "no valid spec has been served yet".into(), now)
    } else {
        let why = if entry.skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", entry.skipped.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        };
        condition(prev, kinds::READY, false, "NoReadyMembers", format!("no member takes new sessions{why}"), now)
    }
}

/// `Degraded`: members unhealthy or in error, as this replica (the leader) sees them.
fn degraded(prev: &[Condition], in_error: &[String], now: &str) -> Condition {
    if in_error.is_empty() {
        condition(prev, kinds::DEGRADED, false, "AllHealthy", "no member is unhealthy or in error".into(), now)
    } else {
        let msg = format!("unhealthy or in error: {}", list_routes(in_error.iter().map(String::as_str)));
        condition(prev, kinds::DEGRADED, true, "MembersUnhealthy", msg, now)
    }
}

/// `Conflict`: an older pool serves the same host and prefix.
fn conflicted(prev: &[Condition], conflict: Option<&Conflict>, now: &str) -> Condition {
    match conflict {
        Some(c) => {
            let message = format!("host {} prefix {} is served by the older pool {}", c.host, c.prefix, c.winner);
            condition(prev, kinds::CONFLICT, true, "HostPrefixClaimed", message, now)
        }
        None => {
            let message = "no older pool claims this host and prefix".into();
            condition(prev, kinds::CONFLICT, false, "NoConflict", message, now)
        }
    }
}

/// An Event to publish about a pool.
#[derive(Debug, Clone)]
pub struct PoolEvent {
    /// The pool.
    pub reference: ObjectReference,
    /// Warning for rejected specs, Normal otherwise.
    pub warning: bool,
    /// `MemberAdded`, `MemberRemoved`, `InvalidSpec`.
    pub reason: &'static str,
    /// What happened.
    pub note: String,
}

/// Work for the writer.
#[derive(Debug)]
pub enum Outbound {
    /// The status a pool should have.
    Status {
        /// The pool.
        id: PoolId,
        /// The status.
        status: Box<BalancerPoolStatus>,
    },
    /// A pool is gone: forget what was written for it.
    Forget(PoolId),
    /// The status an Ingress should have (`status.loadBalancer`).
    IngressStatus {
        /// `(namespace, name)`.
        key: (String, String),
        /// The status.
        status: Box<k8s_openapi::api::networking::v1::IngressStatus>,
    },
    /// The status a Gateway API object should have.
    GatewayApi(Box<GatewayApiStatus>),
    /// An Event.
    Event(PoolEvent),
}

/// The hand-over from the run loop to the writer: bounded by what it holds, not by how often
/// the loop sends. Statuses are kept per pool and Ingress (the latest wins: a writer busy with
/// a slow API server never has more than one status per object waiting), removals as a set,
/// Events up to 1,000 (beyond that they are dropped, logged and counted: they are advisory).
/// The loop never waits on it.
pub fn outbox() -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared::default());
    (Outbox { shared: Arc::clone(&shared) }, OutboxReceiver { shared })
}

/// The run loop's end of [`outbox`]; dropping it closes the outbox.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The writer's end of [`outbox`].
#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

/// The writer has stopped: nothing more is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterGone;

#[derive(Debug, Default)]
struct Shared {
    held: std::sync::Mutex<Held>,
    notify: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Held {
    forget: BTreeSet<PoolId>,
    statuses: BTreeMap<PoolId, BalancerPoolStatus>,
    ingress: BTreeMap<(String, String), k8s_openapi::api::networking::v1::IngressStatus>,
    gateway: BTreeMap<(u8, String, String), GatewayApiStatus>,
    events: VecDeque<PoolEvent>,
    dropped_events: u64,
    sender_closed: bool,
    receiver_closed: bool,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Outbox {
    /// Hands work to the writer, coalescing it with what waits there.
    pub fn send(&self, o: Outbound) -> Result<(), WriterGone> {
        let mut h = self.shared.held();
        if h.receiver_closed {
            return Err(WriterGone);
        }
        match o {
            Outbound::Status { id, status } => {
                h.statuses.insert(id, *status);
            }
            Outbound::Forget(id) => {
                h.statuses.remove(&id);
                h.forget.insert(id);
            }
            Outbound::IngressStatus { key, status } => {
                h.ingress.insert(key, *status);
            }
            Outbound::GatewayApi(st) => {
                h.gateway.insert(st.key(), *st);
            }
            Outbound::Event(e) if h.events.len() >= MAX_QUEUED_EVENTS => {
                h.dropped_events += 1;
                tracing::warn!(reason = e.reason, dropped = h.dropped_events, "event queue full; event dropped");
            }
            Outbound::Event(e) => h.events.push_back(e),
        }
        drop(h);
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Statuses and removals waiting for the writer (for tests).
    pub fn waiting(&self) -> (usize, usize, usize) {
        let h = self.shared.held();
        (h.statuses.len(), h.forget.len(), h.events.len())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shared.held().sender_closed = true;
        self.shared.notify.notify_one();
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.shared.held().receiver_closed = true;
    }
}

impl OutboxReceiver {
    /// Waits for work; `None` once the loop's end is gone and nothing is left. Removals come
    /// first, so a pool removed and then re-added gets its new status written.
    pub async fn recv(&mut self) -> Option<Vec<Outbound>> {
        loop {
            {
                let mut h = self.shared.held();
                let forget = std::mem::take(&mut h.forget);
                let statuses = std::mem::take(&mut h.statuses);
                let ingress = std::mem::take(&mut h.ingress);
                let gateway = std::mem::take(&mut h.gateway);
                let events = std::mem::take(&mut h.events);
                let mut out: Vec<Outbound> = forget.into_iter().map(Outbound::Forget).collect();
                out.extend(statuses.into_iter().map(|(id, s)| Outbound::Status { id, status: Box::new(s) }));
                out.extend(ingress.into_iter().map(|(key, s)| Outbound::IngressStatus { key, status: Box::new(s) }));
                out.extend(gateway.into_values().map(|s| Outbound::GatewayApi(Box::new(s))));
                out.extend(events.into_iter().map(Outbound::Event));
                if !out.is_empty() {
                    return Some(out);
                }
                if h.sender_closed {
                    return None;
                }
            }
            self.shared.notify.notified().await;
        }
    }
}

/// A Gateway API object's status, written whole (a merge patch of `status`).
#[derive(Clone, Debug, PartialEq)]
pub enum GatewayApiStatus {
    /// A GatewayClass, by name.
    Class(String, crate::api::gateway::GatewayClassStatus),
    /// A Gateway.
    Gateway((String, String), crate::api::gateway::GatewayStatus),
    /// An HTTPRoute (its `parents`, other controllers' entries included).
    Route((String, String), crate::api::gateway::HTTPRouteStatus),
}

impl GatewayApiStatus {
    /// Kind and object, so a newer status of the same object replaces a waiting one.
    fn key(&self) -> (u8, String, String) {
        match self {
            GatewayApiStatus::Class(n, _) => (0, String::new(), n.clone()),
            GatewayApiStatus::Gateway((ns, n), _) => (1, ns.clone(), n.clone()),
            GatewayApiStatus::Route((ns, n), _) => (2, ns.clone(), n.clone()),
        }
    }
}

/// Writer tuning.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// At least this long between two status writes of one pool.
    pub min_interval: Duration,
    /// Writes (status and events) per second overall.
    pub rate: u32,
    /// The `reportingController` / `reportingInstance` of Events.
    pub reporter: Reporter,
    /// The field manager of status writes.
    pub field_manager: String,
}

/// Counters the tests and logs read.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Status writes accepted by the API server.
    pub status_writes: AtomicU64,
    /// Status writes that failed.
    pub status_errors: AtomicU64,
    /// Events published.
    pub events: AtomicU64,
}

/// The status and event writer task.
pub struct Writer {
    client: Client,
    opts: WriterOptions,
    stats: Arc<WriterStats>,
    pending: BTreeMap<PoolId, BalancerPoolStatus>,
    written: HashMap<PoolId, (Instant, BalancerPoolStatus)>,
    events: VecDeque<PoolEvent>,
    /// Ingress statuses to write (the latest wins).
    ingress_pending: BTreeMap<(String, String), k8s_openapi::api::networking::v1::IngressStatus>,
    /// Gateway API statuses to write, by kind and key (the latest wins).
    gateway_pending: BTreeMap<(u8, String, String), GatewayApiStatus>,
    tokens: f64,
    refilled: Instant,
}

/// Events queued beyond this are dropped (and logged): they are advisory.
const MAX_QUEUED_EVENTS: usize = 1_000;

/// The merge patch for a status: fields that became empty are sent as `null`, since a merge
/// patch leaves absent fields alone.
fn status_patch(status: &BalancerPoolStatus) -> Value {
    let mut v = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        for k in ["observedGeneration", "memberCount", "readyMembers", "members", "conditions"] {
            m.entry(k).or_insert(Value::Null);
        }
    }
    serde_json::json!({ "status": v })
}

impl Writer {
    /// A writer; run it with [`Writer::run`].
    pub fn new(client: Client, opts: WriterOptions, stats: Arc<WriterStats>) -> Writer {
        let tokens = f64::from(opts.rate.max(1));
        Writer {
            client,
            opts,
            stats,
            pending: BTreeMap::new(),
            written: HashMap::new(),
            events: VecDeque::new(),
            ingress_pending: BTreeMap::new(),
            gateway_pending: BTreeMap::new(),
            tokens,
            refilled: Instant::now(),
        }
    }

    fn take_token(&mut self) -> bool {
        let rate = f64::from(self.opts.rate.max(1));
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn accept(&mut self, o: Outbound) {
        match o {
            Outbound::Status { id, status } => {
                if self.written.get(&id).is_some_and(|(_, s)| *s == *status) {
                    self.pending.remove(&id);
                } else {
                    self.pending.insert(id, *status);
                }
            }
            Outbound::IngressStatus { key, status } => {
                self.ingress_pending.insert(key, *status);
            }
            Outbound::GatewayApi(s) => {
                self.gateway_pending.insert(s.key(), *s);
            }
            Outbound::Forget(id) => {
                self.pending.remove(&id);
                self.written.remove(&id);
            }
            Outbound::Event(e) => {
                if self.events.len() < MAX_QUEUED_EVENTS {
                    self.events.push_back(e);
                } else {
                    tracing::warn!(reason = e.reason, "event queue full; event dropped");
                }
            }
        }
    }

    /// Writes what is due; returns when to look again.
    async fn flush(&mut self, recorder: &Recorder) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let due: Vec<PoolId> = self
            .pending
            .keys()
            .filter(|id| match self.written.get(*id) {
                Some((at, _)) if *at + self.opts.min_interval > now => {
                    let t = *at + self.opts.min_interval;
                    next = Some(next.map_or(t, |n| n.min(t)));
                    false
                }
                _ => true,
            })
            .cloned()
            .collect();
        for id in due {
            if !self.take_token() {
                return Some(now + Duration::from_millis(50));
            }
            let Some(status) = self.pending.remove(&id) else { continue };
            let api: Api<BalancerPool> = Api::namespaced(self.client.clone(), &id.namespace);
            let pp = PatchParams { field_manager: Some(self.opts.field_manager.clone()), ..Default::default() };
            match api.patch_status(&id.name, &pp, &Patch::Merge(status_patch(&status))).await {
                Ok(_) => {
                    self.stats.status_writes.fetch_add(1, Ordering::Relaxed);
                    self.written.insert(id, (Instant::now(), status));
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    tracing::debug!(pool = %id, "pool gone before its status was written");
                }
                Err(e) => {
                    self.stats.status_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(pool = %id, error = %e, "status write failed; will retry");
                    // Retry after the per-pool interval, unless a newer status replaced it.
                    self.pending.entry(id.clone()).or_insert(status);
                    self.written.insert(id, (Instant::now(), BalancerPoolStatus::default()));
                    let t = Instant::now() + self.opts.min_interval;
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        while let Some((key, status)) = self.ingress_pending.pop_first() {
            if !self.take_token() {
                self.ingress_pending.insert(key, status);
                return Some(now + Duration::from_millis(50));
            }
            self.write_ingress_status(&key, &status).await;
        }
        while let Some((key, status)) = self.gateway_pending.pop_first() {
            if !self.take_token() {
                self.gateway_pending.insert(key, status);
                return Some(now + Duration::from_millis(50));
            }
            self.write_gateway_status(&status).await;
        }
        while !self.events.is_empty() {
            if !self.take_token() {
                return Some(now + Duration::from_millis(50));
            }
            let Some(e) = self.events.pop_front() else { break };
            let ev = Event {
                type_: if e.warning { EventType::Warning } else { EventType::Normal },
                reason: e.reason.into(),
                note: Some(e.note.clone()),
                action: "Reconcile".into(),
                secondary: None,
            };
            match recorder.publish(&ev, &e.reference).await {
                Ok(()) => {
                    self.stats.events.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => tracing::warn!(error = %err, reason = e.reason, "event not published"),
            }
        }
        next
    }

    /// Writes one Ingress's `status.loadBalancer`; a failure is logged and retried on the next
    /// status round (the loop sends the status again while the object differs).
    async fn write_ingress_status(
        &self,
        key: &(String, String),
        status: &k8s_openapi::api::networking::v1::IngressStatus,
    ) {
        let api: Api<k8s_openapi::api::networking::v1::Ingress> = Api::namespaced(self.client.clone(), &key.0);
        let pp = PatchParams { field_manager: Some(self.opts.field_manager.clone()), ..Default::default() };
        let patch = serde_json::json!({ "status": status });
        match api.patch_status(&key.1, &pp, &Patch::Merge(patch)).await {
            Ok(_) => {
                self.stats.status_writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::debug!(ingress = %format!("{}/{}", key.0, key.1), "Ingress gone before its status was written");
            }
            Err(e) => {
                self.stats.status_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(ingress = %format!("{}/{}", key.0, key.1), error = %e, "Ingress status write failed; will retry");
            }
        }
    }

    /// Writes one Gateway API object's status; a failure is logged and retried on the next
    /// status round (the loop sends the status again while the object differs).
    async fn write_gateway_status(&self, status: &GatewayApiStatus) {
        use crate::api::gateway::{Gateway, GatewayClass, HTTPRoute};
        let pp = PatchParams { field_manager: Some(self.opts.field_manager.clone()), ..Default::default() };
        let c = self.client.clone();
        let (what, result) = match status {
            GatewayApiStatus::Class(name, st) => {
                let patch = Patch::Merge(serde_json::json!({ "status": st }));
                (
                    format!("GatewayClass {name}"),
                    Api::<GatewayClass>::all(c).patch_status(name, &pp, &patch).await.map(drop),
                )
            }
            GatewayApiStatus::Gateway((ns, name), st) => {
                let patch = Patch::Merge(serde_json::json!({ "status": st }));
                let api = Api::<Gateway>::namespaced(c, ns);
                (format!("Gateway {ns}/{name}"), api.patch_status(name, &pp, &patch).await.map(drop))
            }
            GatewayApiStatus::Route((ns, name), st) => {
                let patch = Patch::Merge(serde_json::json!({ "status": st }));
                let api = Api::<HTTPRoute>::namespaced(c, ns);
                (format!("HTTPRoute {ns}/{name}"), api.patch_status(name, &pp, &patch).await.map(drop))
            }
        };
        match result {
            Ok(()) => {
                self.stats.status_writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::debug!(object = %what, "gone before its status was written")
            }
            Err(e) => {
                self.stats.status_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(object = %what, error = %e, "status write failed; will retry");
            }
        }
    }

    /// Runs until `rx` closes. Writes only while `leader` holds; a replica that does not lead
    /// drops its work (the leader computes and writes its own).
    pub async fn run(mut self, mut rx: OutboxReceiver, mut leader: watch::Receiver<bool>) {
        let recorder = Recorder::new(self.client.clone(), self.opts.reporter.clone());
        let mut wake: Option<Instant> = None;
        let mut leading = *leader.borrow_and_update();
        loop {
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                work = rx.recv() => match work {
                    Some(work) => work.into_iter().for_each(|o| self.accept(o)),
                    None => return,
                },
                changed = leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = sleep => {}
            }
            // Read here, whichever branch woke the loop: a term that began while other work
            // was taken is seen before anything is written in it.
            let now_leading = *leader.borrow_and_update();
            if now_leading && !leading {
                // A new term writes everything again: what the last leader wrote may be stale.
                // Only a new term: a notification that changes nothing must not undo the
                // per-pool interval.
                self.written.clear();
            }
            leading = now_leading;
            if !leading {
                self.pending.clear();
                self.ingress_pending.clear();
                self.gateway_pending.clear();
                self.events.clear();
                wake = None;
                continue;
            }
            wake = self.flush(&recorder).await;
        }
    }
}

/// At most this many members are listed in `status.members` (`memberCount` counts them all): a
/// Service with thousands of pods must not make the object approach etcd's size limit, nor turn
/// every pod change into a large write.
pub const MAX_STATUS_MEMBERS: usize = 100;

/// Cuts `status.members` to [`MAX_STATUS_MEMBERS`] entries.
pub fn cap_members(status: &mut BalancerPoolStatus) {
    status.members.truncate(MAX_STATUS_MEMBERS);
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::api::{Backend, BalancerPoolSpec, ServiceRef};
    use crate::controller::index::{ClassFilter, Index};

    fn pool() -> BalancerPool {
        let mut p = BalancerPool::new(
            "shop",
            BalancerPoolSpec {
                backend: Backend {
                    service: Some(ServiceRef { name: "shop".into(), port: IntOrString::String("http".into()) }),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("web".into());
        p.metadata.generation = Some(3);
        p
    }

    fn id() -> PoolId {
        PoolId { namespace: "web".into(), name: "shop".into() }
    }

    fn status_of(ix: &Index, now: &str) -> BalancerPoolStatus {
        let (table, _) = RoutingTable::build(ix.configs(), None);
        desired_status(ix.pool(&id()).unwrap(), &id(), &table, None, 1, now)
    }

    #[test]
    fn transition_times_are_kept_while_a_condition_holds() {
        let mut ix = Index::new(ClassFilter { ingress_class: "routeid".into(), default_class: true });
        let mut p = pool();
        ix.apply_pool(p.clone());
        ix.rederive();
        let first = status_of(&ix, "T1");
        assert_eq!(first.observed_generation, Some(3));
        assert_eq!((first.member_count, first.ready_members), (Some(0), Some(0)));
        let ready = first.conditions.iter().find(|c| c.type_ == kinds::READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "NoReadyMembers"));
        // The object now holds that status: recomputing later changes nothing, so nothing is
        // written.
        p.status = Some(first.clone());
        ix.apply_pool(p.clone());
        assert_eq!(status_of(&ix, "T2"), first);
        // The spec turns invalid: Accepted flips (new time), Ready keeps its time.
        p.spec.timeouts.idle = Some("later".into());
        ix.apply_pool(p);
        ix.rederive();
        let second = status_of(&ix, "T3");
        let accepted = second.conditions.iter().find(|c| c.type_ == kinds::ACCEPTED).unwrap();
        assert_eq!((accepted.status.as_str(), accepted.reason.as_str()), ("False", "InvalidSpec"));
        assert_eq!(accepted.last_transition_time.as_deref(), Some("T3"));
        assert!(accepted.message.contains("spec.timeouts.idle") && accepted.message.contains("keeps serving"));
        let ready = second.conditions.iter().find(|c| c.type_ == kinds::READY).unwrap();
        assert_eq!(ready.last_transition_time.as_deref(), Some("T1"));
    }

    fn event(n: usize) -> Outbound {
        Outbound::Event(PoolEvent {
            reference: ObjectReference::default(),
            warning: false,
            reason: "MemberAdded",
            note: format!("member {n} added"),
        })
    }

    #[tokio::test]
    async fn the_outbox_holds_one_status_per_pool_and_a_bounded_number_of_events() {
        let (out, mut rx) = outbox();
        let pool = |n: usize| PoolId { namespace: "web".into(), name: format!("p{n}") };
        for round in 0..1_000 {
            for n in 0..3 {
                let status = BalancerPoolStatus { observed_generation: Some(round), ..Default::default() };
                out.send(Outbound::Status { id: pool(n), status: Box::new(status) }).unwrap();
            }
        }
        for n in 0..MAX_QUEUED_EVENTS + 50 {
            out.send(event(n)).unwrap();
        }
        out.send(Outbound::Forget(pool(1))).unwrap();
        assert_eq!(out.waiting(), (2, 1, MAX_QUEUED_EVENTS), "the latest status per pool, a capped event queue");
        let work = rx.recv().await.unwrap();
        assert!(matches!(&work[0], Outbound::Forget(id) if *id == pool(1)), "removals first");
        let statuses: Vec<_> = work
            .iter()
            .filter_map(|o| match o {
                Outbound::Status { id, status } => Some((id.name.clone(), status.observed_generation)),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, [("p0".to_owned(), Some(999)), ("p2".to_owned(), Some(999))]);
        assert_eq!(out.waiting(), (0, 0, 0));
        drop(out);
        assert!(rx.recv().await.is_none(), "closed once the loop's end is gone");
    }

    #[test]
    fn sending_to_a_stopped_writer_says_so() {
        let (out, rx) = outbox();
        drop(rx);
        assert_eq!(out.send(event(0)).unwrap_err(), WriterGone);
    }

    #[test]
    fn degraded_and_conflict_say_which_and_keep_their_times() {
        let c = degraded(&[], &["shop-1 (Error)".to_owned()], "T1");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "MembersUnhealthy"));
        assert!(c.message.contains("shop-1 (Error)"), "{}", c.message);
        let healthy = degraded(std::slice::from_ref(&c), &[], "T2");
        assert_eq!((healthy.status.as_str(), healthy.last_transition_time.as_deref()), ("False", Some("T2")));
        let still = degraded(std::slice::from_ref(&c), &["shop-2 (Unhealthy)".to_owned()], "T3");
        assert_eq!(still.last_transition_time.as_deref(), Some("T1"), "still degraded: the time holds");
        let claim = Conflict {
            host: "a.com".into(),
            prefix: "/".into(),
            winner: PoolId { namespace: "web".into(), name: "old".into() },
            loser: id(),
        };
        let c = conflicted(&[], Some(&claim), "T1");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "HostPrefixClaimed"));
        assert!(c.message.contains("web/old"), "{}", c.message);
        assert_eq!(conflicted(&[], None, "T1").reason, "NoConflict");
    }

    #[test]
    fn empty_fields_are_sent_as_null_in_the_merge_patch() {
        let patch = status_patch(&BalancerPoolStatus::default());
        for k in ["observedGeneration", "memberCount", "readyMembers", "members", "conditions"] {
            assert!(patch["status"][k].is_null(), "{k}: {patch}");
            assert!(patch["status"].as_object().unwrap().contains_key(k), "{k} present as null");
        }
    }
}
