//! The run loop's Gateway API side: watchers that wait for the CRDs, the objects they keep, the
//! translation's pools for publication and the statuses for the Lease holder.
//!
//! The Gateway API CRDs are optional: without them the controller serves BalancerPools and
//! Ingresses as before. Each API group (`gateway.networking.k8s.io`, and the experimental
//! `gateway.networking.x-k8s.io` for XBackendTrafficPolicy) is probed on its own; while a group
//! answers 404 its watchers do not run, the loop counts it as synced (there is nothing to wait
//! for), the absence is logged once, and the probe is repeated every
//! [`GatewayOptions::crd_poll`] until the CRDs appear.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use super::{Backends, Inputs, Key, Listening, Translation, report, translate};
use crate::api::gateway::{
    Gateway, GatewayClass, GatewayStatusAddress, HTTPRoute, ReferenceGrant, XBackendTrafficPolicy,
};
use crate::controller::index::Index;
use crate::controller::status::{GatewayApiStatus, Outbound};
use crate::controller::{Loop, watch_hint};
use crate::core::PoolConfig;

/// How the controller serves the Gateway API.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// Which listener ports routeid's listeners serve.
    pub listening: Listening,
    /// How often a missing API group is probed again.
    pub crd_poll: Duration,
    /// Serve only this GatewayClass (`--gateway-class`); `None`: every class naming routeid's
    /// controller.
    pub class: Option<String>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            listening: Listening { http_ports: vec![80], https_ports: vec![443] },
            crd_poll: Duration::from_secs(30),
            class: None,
        }
    }
}

/// One watch event of a Gateway API kind (or a namespace, for `from: Selector`).
pub enum GwEvent {
    /// The group's CRDs are not installed or not readable (sent once per absence).
    Absent(&'static str),
    /// GatewayClass.
    Class(Result<watcher::Event<GatewayClass>, watcher::Error>),
    /// Gateway.
    Gateway(Result<watcher::Event<Gateway>, watcher::Error>),
    /// HTTPRoute.
    Route(Result<watcher::Event<HTTPRoute>, watcher::Error>),
    /// ReferenceGrant.
    Grant(Result<watcher::Event<ReferenceGrant>, watcher::Error>),
    /// XBackendTrafficPolicy.
    Policy(Result<watcher::Event<XBackendTrafficPolicy>, watcher::Error>),
    /// Namespace labels.
    Namespace(Result<watcher::Event<Namespace>, watcher::Error>),
    /// The installed CRDs' bundle version (`None`: not readable).
    BundleVersion(Option<String>),
}

const STANDARD: &str = "gateway.networking.k8s.io";
const EXPERIMENTAL: &str = "gateway.networking.x-k8s.io";

/// Objects of one kind, with where their (re-)list is.
struct Kind<K> {
    objects: BTreeMap<Key, Arc<K>>,
    seen: Option<HashSet<Key>>,
    synced: bool,
}

impl<K> Default for Kind<K> {
    fn default() -> Self {
        Kind { objects: BTreeMap::new(), seen: None, synced: false }
    }
}

fn key_of<K: Resource>(o: &K) -> Key {
    (o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default())
}

impl<K: Resource + PartialEq> Kind<K> {
    /// Applies one event; whether anything changed. An error is returned for logging.
    fn on(&mut self, ev: Result<watcher::Event<K>, watcher::Error>) -> Result<bool, watcher::Error> {
        Ok(match ev? {
            watcher::Event::Apply(mut o) | watcher::Event::InitApply(mut o) => {
                o.meta_mut().managed_fields = None;
                let k = key_of(&o);
                if let Some(seen) = &mut self.seen {
                    seen.insert(k.clone());
                }
                let same = self.objects.get(&k).is_some_and(|old| **old == o);
                self.objects.insert(k, Arc::new(o));
                !same
            }
            watcher::Event::Delete(o) => self.objects.remove(&key_of(&o)).is_some(),
            watcher::Event::Init => {
                self.seen = Some(HashSet::new());
                false
            }
            watcher::Event::InitDone => {
                self.synced = true;
                let Some(seen) = self.seen.take() else { return Ok(false) };
                let before = self.objects.len();
                self.objects.retain(|k, _| seen.contains(k));
                before != self.objects.len()
            }
        })
    }
}

/// The Gateway API objects in scope and what was last made of them.
#[derive(Default)]
pub struct GatewayState {
    classes: Kind<GatewayClass>,
    gateways: Kind<Gateway>,
    routes: Kind<HTTPRoute>,
    grants: Kind<ReferenceGrant>,
    policies: Kind<XBackendTrafficPolicy>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Groups found missing (their kinds count as synced).
    absent: HashSet<&'static str>,
    /// The installed CRDs' `gateway.networking.k8s.io/bundle-version`.
    bundle_version: Option<String>,
    /// Something changed since the last translation.
    dirty: bool,
    /// The last translation (for statuses).
    last: Translation,
    /// The pools last published, shared with the proxy (an unchanged pool keeps its `Arc`).
    pools: Vec<Arc<PoolConfig>>,
    /// The Services the routes send to (whose changes need a new translation).
    backends: HashSet<Key>,
}

impl GatewayState {
    /// Every kind listed once, or its group absent: the first table may be published.
    pub fn synced(&self) -> bool {
        let std = self.absent.contains(STANDARD)
            || (self.classes.synced && self.gateways.synced && self.routes.synced && self.grants.synced);
        std && (self.absent.contains(EXPERIMENTAL) || self.policies.synced)
    }

    /// A Service or its slices changed (`None`: possibly any, as on a re-list): the pools are
    /// made again before the next publication if a route sends to it. A pod storm in Services no
    /// route names costs nothing here.
    pub fn touch(&mut self, service: Option<&Key>) {
        if self.gateways.objects.is_empty() {
            return;
        }
        match service {
            Some(k) => self.dirty |= self.backends.contains(k),
            None => self.dirty = true,
        }
    }

    /// Whether a translation is due.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Applies one event; `Err` carries a watch error's resource name for the loop to log.
    pub fn on(&mut self, ev: GwEvent) -> Result<(), (&'static str, watcher::Error)> {
        let changed = match ev {
            GwEvent::Absent(group) => {
                if self.absent.insert(group) {
                    tracing::info!(
                        group,
                        "the Gateway API CRDs of this group are not installed (or not readable); its objects are served once they are"
                    );
                }
                false
            }
            GwEvent::Class(e) => self.classes.on(e).map_err(|e| ("gatewayclasses", e))?,
            GwEvent::Gateway(e) => self.gateways.on(e).map_err(|e| ("gateways", e))?,
            GwEvent::Route(e) => self.routes.on(e).map_err(|e| ("httproutes", e))?,
            GwEvent::Grant(e) => self.grants.on(e).map_err(|e| ("referencegrants", e))?,
            GwEvent::Policy(e) => self.policies.on(e).map_err(|e| ("xbackendtrafficpolicies", e))?,
            GwEvent::Namespace(e) => self.on_namespace(e).map_err(|e| ("namespaces", e))?,
            GwEvent::BundleVersion(v) => {
                let changed = self.bundle_version != v;
                self.bundle_version = v;
                changed
            }
        };
        self.dirty |= changed;
        Ok(())
    }

    fn on_namespace(&mut self, ev: Result<watcher::Event<Namespace>, watcher::Error>) -> Result<bool, watcher::Error> {
        Ok(match ev? {
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                let name = n.metadata.name.unwrap_or_default();
                let labels = n.metadata.labels.unwrap_or_default();
                self.namespaces.insert(name, labels.clone()) != Some(labels)
            }
            watcher::Event::Delete(n) => self.namespaces.remove(&n.metadata.name.unwrap_or_default()).is_some(),
            watcher::Event::Init | watcher::Event::InitDone => false,
        })
    }

    /// Translates again when something changed; whether the pools differ from the last ones.
    pub fn retranslate(&mut self, index: &Index, opts: &GatewayOptions) -> bool {
        if !std::mem::take(&mut self.dirty) {
            return false;
        }
        let t = translate(&Inputs {
            classes: &self.classes.objects.iter().map(|((_, n), c)| (n.clone(), Arc::clone(c))).collect(),
            gateways: &self.gateways.objects,
            routes: &self.routes.objects,
            grants: &self.grants.objects,
            policies: &self.policies.objects,
            namespaces: &self.namespaces,
            backends: index,
            listening: &opts.listening,
            class: opts.class.as_deref(),
            bundle_version: self.bundle_version.as_deref(),
        });
        let mut changed = t.pools.len() != self.pools.len();
        let pools: Vec<Arc<PoolConfig>> = t
            .pools
            .iter()
            .map(|p| match self.pools.iter().find(|o| o.id == p.id && ***o == *p) {
                Some(old) => Arc::clone(old),
                None => {
                    changed = true;
                    Arc::new(p.clone())
                }
            })
            .collect();
        self.pools = pools;
        self.last = t;
        self.backends = self
            .routes
            .objects
            .iter()
            .flat_map(|((ns, _), r)| {
                r.spec
                    .rules
                    .iter()
                    .flat_map(|rule| &rule.backend_refs)
                    .map(move |b| (b.namespace.clone().unwrap_or_else(|| ns.clone()), b.name.clone()))
            })
            .collect();
        changed
    }

    /// The pools to publish beside the BalancerPools' and Ingresses'.
    pub fn pools(&self) -> &[Arc<PoolConfig>] {
        &self.pools
    }

    /// The statuses that differ from the objects' own, to be written by the Lease holder.
    pub fn statuses(
        &self,
        addresses: &[GatewayStatusAddress],
        secret_problem: impl Fn(&str, &str) -> Option<String>,
    ) -> Vec<GatewayApiStatus> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut out = Vec::new();
        for (name, conds) in &self.last.classes {
            let Some(c) = self.classes.objects.get(&(String::new(), name.clone())) else { continue };
            let st = report::class_status(conds, c.status.as_ref(), c.metadata.generation, now);
            if c.status.as_ref() != Some(&st) {
                out.push(GatewayApiStatus::Class(name.clone(), st));
            }
        }
        for (key, r) in &self.last.gateways {
            let Some(g) = self.gateways.objects.get(key) else { continue };
            let mut r = r.clone();
            r.listeners.iter_mut().for_each(|l| l.check_certificates(&secret_problem));
            let st = report::gateway_status(&r, addresses.to_vec(), g.status.as_ref(), g.metadata.generation, now);
            if g.status.as_ref() != Some(&st) {
                out.push(GatewayApiStatus::Gateway(key.clone(), st));
            }
        }
        for (key, r) in &self.routes.objects {
            // A route no longer attached to routeid's Gateways loses routeid's entries.
            let parents = self.last.routes.get(key).map(Vec::as_slice).unwrap_or_default();
            let ours = |s: &crate::api::gateway::HTTPRouteStatus| {
                s.parents.iter().any(|p| p.controller_name == crate::api::gateway::CONTROLLER_NAME)
            };
            if parents.is_empty() && !r.status.as_ref().is_some_and(ours) {
                continue;
            }
            let st = report::route_status(parents, r.status.as_ref(), r.metadata.generation, now);
            if r.status.as_ref() != Some(&st) {
                out.push(GatewayApiStatus::Route(key.clone(), st));
            }
        }
        out
    }
}

impl Backends for Index {
    fn service(&self, key: &Key) -> Option<&k8s_openapi::api::core::v1::Service> {
        Index::service(self, key).map(|s| &**s)
    }

    fn slices(&self, key: &Key) -> Vec<&k8s_openapi::api::discovery::v1::EndpointSlice> {
        self.slices_of(key).map(|s| &**s).collect()
    }
}

/// What a probe of an API group found.
enum Probe {
    /// Installed and readable.
    Installed,
    /// 404: the CRDs are not installed.
    Absent,
    /// 401/403: installed or not, the service account may not list it.
    Forbidden,
}

/// Whether the API group of `K` is served and readable.
async fn probe<K>(api: &Api<K>) -> Result<Probe, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(Probe::Installed),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Probe::Absent),
        Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403 => Ok(Probe::Forbidden),
        Err(e) => Err(e),
    }
}

/// Waits until the group is installed and readable, telling the loop once that it is not (so
/// missing CRDs or RBAC never hold the controller's readiness back). `false` when the loop is
/// gone or shutting down.
async fn wait_installed<K>(
    api: &Api<K>,
    group: &'static str,
    poll: Duration,
    tx: &mpsc::UnboundedSender<GwEvent>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let (mut told, mut forbidden_told, mut failing) = (false, false, false);
    // An unreachable API server is retried soon (backing off to `poll`); absent CRDs at `poll`.
    let mut retry = Duration::from_millis(250);
    loop {
        let found = probe(api).await;
        if let Ok(Probe::Forbidden) = found
            && !forbidden_told
        {
            forbidden_told = true;
            tracing::warn!(
                group,
                "the service account may not list this Gateway API group: it is not served until it may \
                 (see the chart's RBAC, or run with --watch-gateways=false)"
            );
        }
        let wait = match found {
            Ok(Probe::Installed) => return true,
            Ok(Probe::Absent | Probe::Forbidden) => {
                if !told {
                    told = true;
                    if tx.send(GwEvent::Absent(group)).is_err() {
                        return false;
                    }
                }
                poll
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(group, error = %e, "probing the Gateway API CRDs failed; retrying with backoff");
                }
                failing = true;
                retry = (retry * 2).min(poll);
                retry
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return false,
        }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn events<K>(api: Api<K>) -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default + Clone + Eq + std::hash::Hash,
{
    watcher(api, watcher::Config::default()).default_backoff().boxed()
}

/// Starts the watch tasks: events arrive on the returned channel.
pub fn spawn(
    client: &Client,
    namespace: Option<String>,
    opts: &GatewayOptions,
    shutdown: watch::Receiver<bool>,
) -> (mpsc::UnboundedReceiver<GwEvent>, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ns = namespace.as_deref();
    let classes: Api<GatewayClass> = Api::all(client.clone());
    let (gateways, routes, grants) =
        (api::<Gateway>(client, ns), api::<HTTPRoute>(client, ns), api::<ReferenceGrant>(client, ns));
    let policies = api::<XBackendTrafficPolicy>(client, ns);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let poll = opts.crd_poll;
    let (std_tx, mut std_shutdown) = (tx.clone(), shutdown.clone());
    let standard = tokio::spawn(async move {
        if !wait_installed(&classes, STANDARD, poll, &std_tx, &mut std_shutdown).await {
            return;
        }
        tracing::info!(
            "the Gateway API CRDs are installed; watching GatewayClasses, Gateways, HTTPRoutes, ReferenceGrants"
        );
        if std_tx.send(GwEvent::BundleVersion(bundle_version(&crds).await)).is_err() {
            return;
        }
        let merged = futures_util::stream::select_all([
            events(classes).map(GwEvent::Class).boxed(),
            events(gateways).map(GwEvent::Gateway).boxed(),
            events(routes).map(GwEvent::Route).boxed(),
            events(grants).map(GwEvent::Grant).boxed(),
            events(namespaces).map(GwEvent::Namespace).boxed(),
        ]);
        forward(merged, &std_tx, &mut std_shutdown).await;
    });
    let mut x_shutdown = shutdown;
    let experimental = tokio::spawn(async move {
        if !wait_installed(&policies, EXPERIMENTAL, poll, &tx, &mut x_shutdown).await {
            return;
        }
        forward(events(policies).map(GwEvent::Policy).boxed(), &tx, &mut x_shutdown).await;
    });
    (rx, vec![standard, experimental])
}

/// The `gateway.networking.k8s.io/bundle-version` of the installed GatewayClass CRD; `None`
/// when it cannot be read (no RBAC for CRDs, no annotation): `SupportedVersion` is then not said.
async fn bundle_version(crds: &Api<CustomResourceDefinition>) -> Option<String> {
    match crds.get_metadata("gatewayclasses.gateway.networking.k8s.io").await {
        Ok(m) => m.metadata.annotations?.remove("gateway.networking.k8s.io/bundle-version"),
        Err(e) => {
            tracing::info!(error = %e, "the Gateway API CRDs' bundle version is not readable; SupportedVersion is not reported");
            None
        }
    }
}

async fn forward(
    mut events: impl futures_util::Stream<Item = GwEvent> + Unpin,
    tx: &mpsc::UnboundedSender<GwEvent>,
    shutdown: &mut watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(ev) => if tx.send(ev).is_err() { return },
                None => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}

impl Loop {
    /// A Gateway API event into the state; watch errors are counted and logged.
    pub(crate) fn on_gateway_event(&mut self, ev: GwEvent) {
        if let Err((what, e)) = self.gateways.on(ev) {
            self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
            self.proxy.metrics().watch_restarts.with_label_values(&[what]).inc();
            tracing::warn!(error = %e, hint = watch_hint(&e), "{what} watch failed; the last table keeps serving, retrying with backoff");
        }
    }

    /// Sends the Gateway API statuses that changed (Lease holder only).
    pub(crate) fn send_gateway_statuses(&self) {
        let addresses: Vec<GatewayStatusAddress> = self
            .published_addresses()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|a| match (a.ip, a.hostname) {
                (Some(ip), _) => Some(GatewayStatusAddress { type_: "IPAddress".into(), value: ip }),
                (None, Some(h)) => Some(GatewayStatusAddress { type_: "Hostname".into(), value: h }),
                _ => None,
            })
            .collect();
        let problem = |ns: &str, name: &str| {
            let r = crate::proxy::tls::SecretRef::new(ns, name);
            self.proxy.tls_secret_problem(&r).map(|e| e.to_string())
        };
        for s in self.gateways.statuses(&addresses, problem) {
            let _ = self.out.send(Outbound::GatewayApi(Box::new(s)));
        }
    }
}
