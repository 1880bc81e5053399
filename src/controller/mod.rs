//! The Kubernetes control plane: BalancerPools and EndpointSlices in, routing tables out.
//!
//! One task runs the loop: two kube-runtime watchers (BalancerPools, and EndpointSlices that
//! carry the `kubernetes.io/service-name` label — never Pods), restricted to one namespace or
//! all, feed an [`index::Index`]. After each batch of watch events the loop re-derives only the
//! pools whose spec or slices changed ([`derive`] is pure), and when a derived config differs
//! from the one served it publishes the whole list to the proxy, which swaps one immutable
//! snapshot in: no request sees a half-built table, and member runtime state survives because
//! the core carries it over by route and address.
//!
//! Readiness: nothing is published and `/readyz` stays 503 until both watchers have completed
//! their first list. After that a lost API server keeps the last table serving and `/readyz`
//! ready while the watchers reconnect ([`watches`]: at once after `410 Gone`, otherwise within
//! 2 s); a re-list replaces the index contents only once it is complete (objects that vanished
//! meanwhile are dropped then, and the status writer forgets them). When the loop ends, nothing
//! watches any more and `/readyz` turns 503.
//! The first `/readyz` also waits until every named TLS Secret's watch has listed once (at most
//! [`TLS_READY_WAIT`]), so a new pod does not take HTTPS clients with an empty certificate store;
//! until then such a Secret is `SecretPending` in status, never a false `SecretNotFound` Event.
//!
//! Status and Events are computed here and written by [`status::Writer`], which only writes
//! while this replica holds the Lease ([`leader`]).

pub mod derive;
pub mod index;
pub mod ingress;
pub mod leader;
pub mod secrets;
pub mod services;
pub mod status;
pub mod watches;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::AdminState;
use crate::api::BalancerPool;
use crate::core::config::PoolId;
use crate::core::table::Conflict;
use crate::proxy::Proxy;
use crate::proxy::tls::{CertError, SecretRef, TlsProblem};
use index::{ClassFilter, Index, PoolChange, pool_id};
use leader::LeaderOptions;
use status::{Outbound, PoolEvent, Writer, WriterOptions, WriterStats};
use watches::Events;

/// Everything `routeid controller` can be told.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Watch this namespace only (sidecar mode, least privilege); `None` watches all.
    pub namespace: Option<String>,
    /// Which pools are ours.
    pub filter: ClassFilter,
    /// Who writes status.
    pub leader: LeaderOptions,
    /// How status and Events are written.
    pub writer: WriterOptions,
    /// How often statuses are recomputed without a change (member health moves on its own).
    pub status_resync: Duration,
    /// Serve Ingresses of this class too (`None`: BalancerPools only).
    pub ingress: Option<ingress::IngressFilter>,
    /// What Ingress status says about where the Ingresses are served.
    pub publish: ingress::Publish,
    /// At most one derivation + publication per this interval: the first change after a quiet
    /// period is published at once, changes arriving within the interval are folded into one
    /// publication at its end. Under a pod storm this bounds the CPU spent rebuilding the table
    /// (a rebuild costs the same for 1 or 100 changed slices), at the price of this much delay.
    pub min_publish_interval: Duration,
    /// The Secret (`--default-tls-secret`) served to TLS clients with no or an unknown name.
    pub default_tls_secret: Option<SecretRef>,
}

impl ControllerOptions {
    /// Defaults for `identity`: one Lease in `lease_namespace` per ingress class (`routeid-status`
    /// for the class `routeid`, `routeid-status-<class>` for others, so two installations serving
    /// different classes elect their writers apart), status writes at most once a second per pool
    /// and 20 per second overall, statuses refreshed every 10 s.
    pub fn new(namespace: Option<String>, filter: ClassFilter, lease_namespace: String, identity: String) -> Self {
        let lease_name = if filter.ingress_class == "routeid" {
            "routeid-status".to_owned()
        } else {
            format!("routeid-status-{}", filter.ingress_class)
        };
        let ingress = Some(ingress::IngressFilter { class: filter.ingress_class.clone(), watch_without_class: false });
        ControllerOptions {
            namespace,
            ingress,
            publish: ingress::Publish::default(),
            filter,
            leader: LeaderOptions {
                enabled: true,
                namespace: lease_namespace,
                name: lease_name,
                identity: identity.clone(),
                duration_secs: 15,
                grace_secs: 5,
            },
            writer: WriterOptions {
                min_interval: Duration::from_secs(1),
                rate: 20,
                reporter: Reporter { controller: "routeid".into(), instance: Some(identity) },
                field_manager: "routeid".into(),
            },
            status_resync: Duration::from_secs(10),
            min_publish_interval: Duration::from_millis(100),
            default_tls_secret: None,
        }
    }
}

/// What the controller has done, for tests, logs and the admin side.
#[derive(Debug, Default)]
pub struct ControllerStats {
    /// Both watchers completed their first list and a table was published.
    pub synced: AtomicBool,
    /// Routing tables published.
    pub publishes: AtomicU64,
    /// Pool re-derivations that changed members or rejected a spec.
    pub derivations: AtomicU64,
    /// Watch errors seen (each followed by a backoff and a reconnect).
    pub watch_errors: AtomicU64,
    /// Status and Event writes.
    pub writer: Arc<WriterStats>,
}

/// A running controller.
pub struct Controller {
    /// Counters.
    pub stats: Arc<ControllerStats>,
    leader: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Controller {
    /// Starts watching and publishing into `proxy`; sets `admin.ready` after the first complete
    /// sync.
    pub fn start(client: Client, opts: ControllerOptions, proxy: Arc<Proxy>, admin: Arc<AdminState>) -> Controller {
        if let Some(warning) = second_writer_warning(&opts) {
            tracing::warn!(namespace = ?opts.namespace, class = %opts.filter.ingress_class, "{warning}");
        }
        let stats = Arc::new(ControllerStats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (leader_rx, leader_task) = leader::spawn(client.clone(), opts.leader.clone(), shutdown_rx.clone());
        let (out, out_rx) = status::outbox();
        let writer = Writer::new(client.clone(), opts.writer.clone(), Arc::clone(&stats.writer));
        let writer_task = tokio::spawn(writer.run(out_rx, leader_rx.clone()));
        let index = Index::new(opts.filter.clone());
        let ingresses = ingress::Ingresses::new(opts.ingress.clone().unwrap_or(ingress::IngressFilter {
            class: opts.filter.ingress_class.clone(),
            watch_without_class: false,
        }));
        proxy.set_default_tls_secret(opts.default_tls_secret.clone());
        let (secrets, secret_rx) = secrets::SecretWatches::new(client.clone());
        let looper = Loop {
            client,
            opts,
            proxy,
            admin,
            stats: Arc::clone(&stats),
            out,
            leader: leader_rx.clone(),
            index,
            ingresses,
            conflicts: Vec::new(),
            ready: false,
            announced: false,
            ready_by: None,
            pending: HashSet::new(),
            secrets,
            tls_reported: HashMap::new(),
            publish_service: None,
            publish_service_missing: false,
        };
        let loop_task = tokio::spawn(looper.run(shutdown_rx, secret_rx));
        Controller { stats, leader: leader_rx, shutdown, tasks: vec![loop_task, writer_task, leader_task] }
    }

    /// Whether this replica writes status now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Stops watching (`/readyz` turns 503), releases the Lease and waits for the tasks. The
    /// proxy keeps serving the last table.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Loop {
    client: Client,
    opts: ControllerOptions,
    proxy: Arc<Proxy>,
    admin: Arc<AdminState>,
    stats: Arc<ControllerStats>,
    out: status::Outbox,
    leader: watch::Receiver<bool>,
    index: Index,
    ingresses: ingress::Ingresses,
    conflicts: Vec<Conflict>,
    /// The first table is published.
    ready: bool,
    /// `/readyz` is ready (after the first table and the first list of its Secrets).
    announced: bool,
    /// When the first readiness stops waiting for Secrets that have not listed.
    ready_by: Option<tokio::time::Instant>,
    /// Secrets whose watch has not reported yet.
    pending: HashSet<SecretRef>,
    /// One watch per Secret the pools name.
    secrets: secrets::SecretWatches,
    /// The TLS problems last reported by an Event, per pool.
    tls_reported: HashMap<PoolId, Vec<TlsProblem>>,
    /// The `--publish-service` Service when it lies outside `--namespace` (its own watch).
    publish_service: Option<Service>,
    /// The `--publish-service` Service was missing at the last status round (said once).
    publish_service_missing: bool,
}

/// Where a watcher is in its (re-)list.
struct ListState<K> {
    synced: bool,
    seen: Option<HashSet<K>>,
}

impl<K> Default for ListState<K> {
    fn default() -> Self {
        ListState { synced: false, seen: None }
    }
}

/// Why this instance may become a second status writer for pools another instance also
/// writes, if it may: a `--namespace` instance that serves the default class `routeid` elects
/// its own writer (its Lease lives where it may write, its own namespace), so beside a
/// cluster-wide installation of the same class both would write status and Events for that
/// namespace's pools. routeid warns rather than refuses: a namespace-only installation with no
/// cluster-wide one is legitimate (least privilege), and from inside one namespace it cannot
/// tell whether a cluster-wide installation exists.
pub fn second_writer_warning(opts: &ControllerOptions) -> Option<&'static str> {
    let namespaced_default = opts.namespace.is_some() && opts.filter.ingress_class == "routeid";
    namespaced_default.then_some(
        "this --namespace instance serves the default class routeid and elects its own status writer: \
         if a cluster-wide routeid of the same class runs too, both write status and Events for these \
         pools; give this instance its own --ingress-class (and --default-class=false), as the \
         chart's sidecar mode does with routeid-sidecar",
    )
}

/// What an operator can do about a watch error: the two setup mistakes get named.
fn watch_hint(e: &watcher::Error) -> &'static str {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    match code {
        Some(404) => "is the BalancerPool CRD installed? kubectl apply -f crds/",
        Some(401 | 403) => "the service account lacks RBAC permissions: see examples/controller-rbac.yaml",
        _ => "",
    }
}

/// At most this many watch events are folded into one publication.
const MAX_BATCH: usize = 4_096;

/// The longest the first readiness waits for the named Secrets' first list (a Secret the
/// service account may not read never lists: its watch error is logged, readiness goes on).
pub const TLS_READY_WAIT: Duration = Duration::from_secs(10);

/// The watch streams the loop reads, and where each is in its (re-)list.
struct Watches {
    pools: Events<BalancerPool>,
    pools_state: ListState<PoolId>,
    slices: Events<EndpointSlice>,
    slices_state: ListState<(String, String)>,
    services: Events<Service>,
    services_state: ListState<(String, String)>,
    ingresses: Events<k8s_openapi::api::networking::v1::Ingress>,
    ingress_state: ListState<(String, String)>,
    classes: Events<k8s_openapi::api::networking::v1::IngressClass>,
    class_state: ListState<String>,
    /// The `--publish-service` Service outside `--namespace`.
    publish: Events<Service>,
    publish_state: ListState<(String, String)>,
}

impl Watches {
    /// Starts every watch, in `--namespace` or cluster wide.
    fn start(client: &Client, opts: &ControllerOptions) -> Watches {
        fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
        where
            K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
            K::DynamicType: Default,
        {
            match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let ns = opts.namespace.as_deref();
        let slice_labels = watcher::Config::default().labels(derive::SERVICE_NAME_LABEL);
        let (ingresses, classes) = ingress::watch::streams(client, opts);
        let mut w = Watches {
            pools: watches::watch(api(client, ns), watcher::Config::default(), "balancerpools"),
            pools_state: ListState::default(),
            slices: watches::watch(api(client, ns), slice_labels, "endpointslices"),
            slices_state: ListState::default(),
            services: watches::watch(api(client, ns), watcher::Config::default(), "services"),
            services_state: ListState::default(),
            ingresses,
            ingress_state: ListState::default(),
            classes,
            class_state: ListState::default(),
            publish: ingress::watch::publish_service_stream(client, opts),
            publish_state: ListState::default(),
        };
        if opts.ingress.is_none() {
            w.ingress_state.synced = true;
            w.class_state.synced = true;
        }
        w
    }

    /// Every watch that gates publication has completed its first list.
    fn synced(&self) -> bool {
        self.pools_state.synced
            && self.slices_state.synced
            && self.services_state.synced
            && self.ingress_state.synced
            && self.class_state.synced
    }
}

/// When the loop publishes and refreshes statuses.
struct Pace {
    /// Statuses are recomputed on each tick (member health moves on its own).
    resync: tokio::time::Interval,
    last_publish: Option<tokio::time::Instant>,
    /// A change arrived too soon after the last publication: publish it then.
    publish_at: Option<tokio::time::Instant>,
}

impl Pace {
    fn new(status_resync: Duration) -> Pace {
        let mut resync = tokio::time::interval(status_resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pace { resync, last_publish: None, publish_at: None }
    }
}

/// Resolves at `t`, never without one.
async fn until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Sets `/readyz` unready when the run loop ends, however it ends (shutdown, a panic).
struct UnreadyOnExit(Arc<AdminState>);

impl Drop for UnreadyOnExit {
    fn drop(&mut self) {
        self.0.ready.store(false, Ordering::Release);
    }
}

impl Loop {
    async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut secret_rx: mpsc::UnboundedReceiver<secrets::SecretEvent>,
    ) {
        // Whatever ends this loop, nothing watches any more: `/readyz` must not stay 200.
        let _unready = UnreadyOnExit(Arc::clone(&self.admin));
        let mut w = Watches::start(&self.client, &self.opts);
        let mut pace = Pace::new(self.opts.status_resync);
        loop {
            let Some(mut status_due) = self.next_event(&mut w, &mut pace, &mut shutdown, &mut secret_rx).await else {
                return;
            };
            self.fold_ready_events(&mut w);
            self.forget_removed();
            self.announce_when_ready();
            if !w.synced() {
                continue;
            }
            status_due |= self.publish_when_due(&mut pace);
            if status_due && *self.leader.borrow() {
                self.send_statuses();
            }
        }
    }

    /// Waits for the next thing to do and does its part; `None` when the loop must stop, else
    /// whether statuses are due.
    async fn next_event(
        &mut self,
        w: &mut Watches,
        pace: &mut Pace,
        shutdown: &mut watch::Receiver<bool>,
        secret_rx: &mut mpsc::UnboundedReceiver<secrets::SecretEvent>,
    ) -> Option<bool> {
        let publish_timer = until(pace.publish_at);
        let ready_timer = until(self.ready_by.filter(|_| !self.announced));
        tokio::select! {
            () = publish_timer => {}
            () = ready_timer => {}
            () = leader::stopped(shutdown) => return None,
            Some(ev) = w.pools.next() => self.on_pool(ev, &mut w.pools_state),
            Some(ev) = w.slices.next() => self.on_slice(ev, &mut w.slices_state),
            Some(ev) = w.services.next() => self.on_service(ev, &mut w.services_state),
            Some(ev) = w.ingresses.next() => self.on_ingress(ev, &mut w.ingress_state),
            Some(ev) = w.classes.next() => self.on_ingress_class(ev, &mut w.class_state),
            Some(ev) = w.publish.next() => {
                self.on_publish_service(ev, &mut w.publish_state);
                return Some(true);
            }
            Some(ev) = secret_rx.recv() => {
                self.on_secrets(ev, secret_rx);
                return Some(true);
            }
            _ = pace.resync.tick() => return Some(true),
            changed = self.leader.changed() => {
                changed.ok()?;
                self.on_leader_change();
                return Some(true);
            }
        }
        Some(false)
    }

    /// Folds whatever else is already there into this batch: a burst of slice updates becomes
    /// one derivation per pool and one publication.
    fn fold_ready_events(&mut self, w: &mut Watches) {
        for _ in 0..MAX_BATCH {
            let mut progressed = false;
            if let Some(Some(ev)) = w.pools.next().now_or_never() {
                self.on_pool(ev, &mut w.pools_state);
                progressed = true;
            }
            if let Some(Some(ev)) = w.slices.next().now_or_never() {
                self.on_slice(ev, &mut w.slices_state);
                progressed = true;
            }
            if let Some(Some(ev)) = w.services.next().now_or_never() {
                self.on_service(ev, &mut w.services_state);
                progressed = true;
            }
            if let Some(Some(ev)) = w.ingresses.next().now_or_never() {
                self.on_ingress(ev, &mut w.ingress_state);
                progressed = true;
            }
            if let Some(Some(ev)) = w.classes.next().now_or_never() {
                self.on_ingress_class(ev, &mut w.class_state);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    /// This replica started or stopped leading.
    fn on_leader_change(&mut self) {
        if *self.leader.borrow() {
            // Events computed while another replica led were not written: repeat the standing
            // warnings about Ingresses.
            self.send_ingress_news(self.ingresses.standing_news());
            self.ingresses.reported_conflicts.clear();
            self.send_conflict_events();
        }
    }

    /// Tells the status writer to forget every pool the index dropped, however it went
    /// (deletion, a re-list that no longer holds it, a class change).
    fn forget_removed(&mut self) {
        for id in self.index.take_removed() {
            let _ = self.out.send(Outbound::Forget(id));
        }
    }

    /// Re-derives and publishes when there is work, at most once per `min_publish_interval`
    /// (a change within it is folded into one publication at its end); whether it did.
    fn publish_when_due(&mut self, pace: &mut Pace) -> bool {
        if !self.index.has_work() && self.ready {
            return false;
        }
        let now = tokio::time::Instant::now();
        let due = pace.last_publish.map(|t| t + self.opts.min_publish_interval).filter(|t| *t > now && self.ready);
        if let Some(t) = due {
            pace.publish_at = Some(t);
            return false;
        }
        pace.publish_at = None;
        pace.last_publish = Some(now);
        self.rederive_and_publish();
        true
    }

    /// One derivation of the changed pools, the table published if it changed, the Events.
    fn rederive_and_publish(&mut self) {
        let changes = self.index.rederive();
        let metrics = self.proxy.metrics();
        let rejected = changes.iter().filter(|c| c.rejected.is_some()).count() as u64;
        metrics.reconciles.with_label_values(&["error"]).inc_by(rejected);
        metrics.reconciles.with_label_values(&["ok"]).inc_by(changes.len() as u64 - rejected);
        if self.index.take_publish_needed() || !self.ready {
            let configs = self.index.configs();
            self.watch_secrets(&configs);
            self.conflicts = self.proxy.publish(configs);
            self.stats.publishes.fetch_add(1, Ordering::Relaxed);
            self.report_tls();
        }
        self.stats.derivations.fetch_add(changes.len() as u64, Ordering::Relaxed);
        let unix_now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        self.proxy.metrics().last_sync.set(unix_now);
        self.send_events(changes);
        self.send_conflict_events();
        if !self.ready {
            self.ready = true;
            self.ready_by = Some(tokio::time::Instant::now() + TLS_READY_WAIT);
            self.announce_when_ready();
        }
    }

    fn on_pool(&mut self, ev: Result<watcher::Event<BalancerPool>, watcher::Error>, st: &mut ListState<PoolId>) {
        match ev {
            Ok(watcher::Event::Apply(p)) => self.index.apply_pool(p),
            Ok(watcher::Event::Delete(p)) => self.index.delete_pool(&p),
            Ok(watcher::Event::Init) => st.seen = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(p)) => {
                if let Some(seen) = &mut st.seen {
                    seen.insert(pool_id(&p));
                }
                self.index.apply_pool(p);
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(mut seen) = st.seen.take() {
                    // The pools made from Ingresses are not BalancerPools: they stay.
                    seen.extend(self.ingresses.served().flat_map(|(_, ids)| ids.iter().cloned()));
                    self.index.retain_pools(&seen);
                }
                st.synced = true;
            }
            Err(e) => {
                self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                self.proxy.metrics().watch_restarts.with_label_values(&["balancerpools"]).inc();
                tracing::warn!(error = %e, hint = watch_hint(&e), "BalancerPool watch failed; the last table keeps serving, retrying with backoff");
            }
        }
    }

    fn on_slice(
        &mut self,
        ev: Result<watcher::Event<EndpointSlice>, watcher::Error>,
        st: &mut ListState<(String, String)>,
    ) {
        let key = |s: &EndpointSlice| {
            (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default())
        };
        match ev {
            Ok(watcher::Event::Apply(mut s)) => {
                s.metadata.managed_fields = None;
                self.index.apply_slice(s);
            }
            Ok(watcher::Event::Delete(s)) => self.index.delete_slice(&s),
            Ok(watcher::Event::Init) => st.seen = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(mut s)) => {
                if let Some(seen) = &mut st.seen {
                    seen.insert(key(&s));
                }
                s.metadata.managed_fields = None;
                self.index.apply_slice(s);
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = st.seen.take() {
                    self.index.retain_slices(&seen);
                }
                st.synced = true;
            }
            Err(e) => {
                self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                self.proxy.metrics().watch_restarts.with_label_values(&["endpointslices"]).inc();
                tracing::warn!(error = %e, hint = watch_hint(&e), "EndpointSlice watch failed; the last table keeps serving, retrying with backoff");
            }
        }
    }

    fn on_service(
        &mut self,
        ev: Result<watcher::Event<Service>, watcher::Error>,
        st: &mut ListState<(String, String)>,
    ) {
        let key = |s: &Service| {
            (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default())
        };
        match ev {
            Ok(watcher::Event::Apply(s)) => self.index.apply_service(s),
            Ok(watcher::Event::Delete(s)) => self.index.delete_service(&s),
            Ok(watcher::Event::Init) => st.seen = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(seen) = &mut st.seen {
                    seen.insert(key(&s));
                }
                self.index.apply_service(s);
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = st.seen.take() {
                    self.index.retain_services(&seen);
                }
                st.synced = true;
            }
            Err(e) => {
                self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                self.proxy.metrics().watch_restarts.with_label_values(&["services"]).inc();
                tracing::warn!(error = %e, hint = watch_hint(&e), "Service watch failed; the last table keeps serving, retrying with backoff");
            }
        }
    }

    /// The object an Event about pool `id` goes to: the BalancerPool, or the Ingress it was made
    /// from (`None` when that Ingress is gone).
    fn event_reference(&self, id: &PoolId, entry: &index::PoolEntry) -> Option<ObjectReference> {
        match ingress::ingress_of(id) {
            Some(key) => self.ingresses.ingress(&key).map(|ing| ing.object_ref(&())),
            None => Some(entry.object.object_ref(&())),
        }
    }

    /// Sets `/readyz` ready once the first table is out and every named Secret has listed, or
    /// [`TLS_READY_WAIT`] has passed.
    fn announce_when_ready(&mut self) {
        if self.announced || !self.ready {
            return;
        }
        let waited_out = self.ready_by.is_some_and(|t| tokio::time::Instant::now() >= t);
        if !self.pending.is_empty() && !waited_out {
            return;
        }
        self.announced = true;
        self.admin.ready.store(true, Ordering::Release);
        self.stats.synced.store(true, Ordering::Release);
        if !self.pending.is_empty() {
            let unread: Vec<String> = self.pending.iter().take(5).map(ToString::to_string).collect();
            tracing::warn!(unread = self.pending.len(), first = ?unread, "TLS Secrets not read within {TLS_READY_WAIT:?}; ready without them");
        }
        tracing::info!(
            pools = self.index.pools().count(),
            slices = self.index.slice_count(),
            "first sync complete; serving"
        );
    }

    /// Watches exactly the Secrets the pools name; forgets the others. A new watch's Secret is
    /// pending (not missing) until the watch reports.
    fn watch_secrets(&mut self, configs: &[Arc<crate::core::PoolConfig>]) {
        let wanted = secrets::named(configs, self.opts.default_tls_secret.as_ref());
        let (gone, started) = self.secrets.reconcile(&wanted);
        self.proxy.forget_tls_secrets(&gone);
        gone.iter().for_each(|r| {
            self.pending.remove(r);
        });
        if !started.is_empty() {
            let marks: Vec<_> = started.iter().map(|r| (r.clone(), Err(CertError::Pending))).collect();
            self.proxy.update_tls_secrets(&marks);
            self.pending.extend(started);
        }
    }

    /// Hands changed Secrets (this one and any others already waiting) to the proxy in one
    /// publication.
    fn on_secrets(&mut self, first: secrets::SecretEvent, rx: &mut mpsc::UnboundedReceiver<secrets::SecretEvent>) {
        let mut changes = vec![(first.secret, first.data)];
        while let Ok(ev) = rx.try_recv() {
            changes.push((ev.secret, ev.data));
        }
        for (secret, _) in &changes {
            self.pending.remove(secret);
        }
        for (secret, e) in self.proxy.update_tls_secrets(&changes) {
            tracing::warn!(%secret, reason = e.reason(), error = %e, "TLS Secret cannot serve; its last good certificate (if any) keeps serving");
        }
        self.report_tls();
    }

    /// An Event on each pool whose TLS problems changed to something new. A Secret not read yet
    /// (`SecretPending`) is no news: it shows in status only.
    fn report_tls(&mut self) {
        let snapshot = self.proxy.snapshot();
        let pending = CertError::Pending.reason();
        let mut reported = HashMap::with_capacity(snapshot.tls.problems.len());
        for (id, problems) in &snapshot.tls.problems {
            let problems: Vec<TlsProblem> = problems.iter().filter(|p| p.reason != pending).cloned().collect();
            if self.tls_reported.get(id) != Some(&problems)
                && let (Some(first), Some(entry)) = (problems.first(), self.index.pool(id))
                && let Some(reference) = self.event_reference(id, entry)
            {
                let note = problems.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; ");
                let _ =
                    self.out.send(Outbound::Event(PoolEvent { reference, warning: true, reason: first.reason, note }));
            }
            reported.insert(id.clone(), problems);
        }
        self.tls_reported = reported;
    }

    fn send_events(&self, changes: Vec<PoolChange>) {
        for c in changes {
            let Some(entry) = self.index.pool(&c.id) else { continue };
            let Some(reference) = self.event_reference(&c.id, entry) else { continue };
            let emit = |warning: bool, reason: &'static str, note: String| {
                let _ =
                    self.out.send(Outbound::Event(PoolEvent { reference: reference.clone(), warning, reason, note }));
            };
            if let Some(msg) = c.rejected {
                emit(true, "InvalidSpec", msg);
            }
            // The first sync "adds" every member: that is a restart, not news.
            if !self.ready {
                continue;
            }
            for (list, reason, verb) in [(&c.added, "MemberAdded", "added"), (&c.removed, "MemberRemoved", "removed")] {
                if list.len() <= 5 {
                    for m in list {
                        emit(false, reason, format!("member {m} {verb}"));
                    }
                } else {
                    let mut shown = list.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
                    shown.push_str(&format!(" and {} more", list.len() - 5));
                    emit(false, reason, format!("{} members {verb}: {shown}", list.len()));
                }
            }
        }
    }

    fn send_statuses(&mut self) {
        let snapshot = self.proxy.snapshot();
        let now_ms = self.proxy.clock().now_ms();
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        self.send_ingress_statuses();
        for (id, entry) in self.index.pools() {
            if ingress::ingress_of(id).is_some() {
                continue;
            }
            let conflict = self.conflicts.iter().find(|c| &c.loser == id);
            let mut desired = status::desired_status(entry, id, &snapshot.table, conflict, now_ms, &now);
            if let Some(problems) = snapshot.tls.problems.get(id) {
                desired.conditions.push(status::tls_condition(entry, problems, &now));
            }
            status::cap_members(&mut desired);
            if entry.object.status.as_ref() != Some(&desired) {
                let _ = self.out.send(Outbound::Status { id: id.clone(), status: Box::new(desired) });
            }
        }
    }
}

#[cfg(test)]
mod lease_name_tests {
    use super::*;

    #[test]
    fn each_ingress_class_elects_its_own_writer() {
        let opts = |class: &str| {
            let filter = ClassFilter { ingress_class: class.into(), default_class: true };
            ControllerOptions::new(None, filter, "ns".into(), "me".into())
        };
        assert_eq!(opts("routeid").leader.name, "routeid-status");
        assert_eq!(opts("internal").leader.name, "routeid-status-internal");
    }

    #[test]
    fn a_namespaced_instance_of_the_default_class_is_warned_about() {
        let opts = |ns: Option<&str>, class: &str| {
            let filter = ClassFilter { ingress_class: class.into(), default_class: true };
            ControllerOptions::new(ns.map(Into::into), filter, "ns".into(), "me".into())
        };
        assert!(second_writer_warning(&opts(Some("web"), "routeid")).is_some_and(|w| w.contains("--ingress-class")));
        assert_eq!(second_writer_warning(&opts(None, "routeid")), None, "cluster-wide: the one writer");
        assert_eq!(second_writer_warning(&opts(Some("web"), "routeid-sidecar")), None, "its own class, its own Lease");
        let mut single = opts(Some("web"), "routeid");
        single.leader.enabled = false;
        assert!(second_writer_warning(&single).is_some(), "without election it writes all the more");
    }
}
