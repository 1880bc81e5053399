//! Gateway API → pools: the third front door to the same core.
//!
//! [`translate`] is pure: the GatewayClasses, Gateways, HTTPRoutes, ReferenceGrants and
//! XBackendTrafficPolicies in scope, with the Services and EndpointSlices behind them, become
//! core [`PoolConfig`]s (one pool per HTTPRoute rule) and the status every object should have.
//! The controller feeds it and publishes the pools beside the BalancerPools' and Ingresses'; the
//! Lease holder writes the statuses.
//!
//! How the Gateway API maps onto routeid:
//! - a Gateway of a class whose `controllerName` is [`CONTROLLER_NAME`] is served by every
//!   replica of this installation; its listeners are served by routeid's own listeners, so a
//!   listener port must be one the installation says it serves ([`Listening`]); any other gets
//!   `Programmed=False` naming the flag and chart value that opens it;
//! - a rule is served only on the kind of connection of the listeners it attached through: its
//!   pool's [`core_gw::ServedOn`] is plain for HTTP listeners, secure for HTTPS ones, both when
//!   it attached through both kinds and they give it the same hostnames; when they give it
//!   different hostnames the rule is two pools, one per kind (ids [`pool_name`] + `:http` /
//!   `:https`), each with the hostnames of its kind. Within a kind routeid's listeners are
//!   shared (every HTTP port leads to `--listen`, every HTTPS port to `--tls-listen`), so a pool
//!   serves the union of the hostnames its route gets through the listeners of its kind, with
//!   the certificates of its HTTPS listeners;
//! - `backendRefs` weights are split over each Service's ready pods as member load factors
//!   (weights decide where *new* sessions go: a session stays on its pod);
//! - session persistence (the rule's, or else an XBackendTrafficPolicy's on a backend Service)
//!   becomes the pool's sticky settings: the cookie or header carries the pod name.
//!
//! Whatever of a route routeid does not serve makes the route `Accepted=False` with reason
//! `UnsupportedValue` and a message naming the field: it is not served at all, rather than
//! served differently from what was asked.

pub mod hosts;
pub mod report;
#[cfg(test)]
mod tests;
pub mod watch;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::derive::{self, SliceMembers};
use super::services;
use crate::api::gateway::{
    CONTROLLER_NAME, GROUP, Gateway, GatewayClass, HTTPBackendRef, HTTPRoute, HTTPRouteRule, Listener, ParentReference,
    ReferenceGrant, RouteGroupKind, SessionPersistence, XBackendTrafficPolicy,
};
use crate::api::validate::validate_service_backed;
use crate::api::{BalancerPoolSpec, MemberStatus, PathType, RouteFrom, ServiceRef};
use crate::core::config::{MemberConfig, PoolConfig, PoolId, StickyConfig, TlsEntry};
use crate::core::gateway as core_gw;
use hosts::Hosts;

/// `(namespace, name)` of a namespaced object.
pub type Key = (String, String);

/// Which Gateway listener ports this installation's proxy listeners serve: `--listen` serves
/// the HTTP ones, `--tls-listen` the HTTPS ones (set with `--gateway-http-ports` and
/// `--gateway-https-ports`, chart values `gateway.httpPorts` / `gateway.httpsPorts`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listening {
    /// HTTP listener ports served (the Service's ports that lead to `--listen`).
    pub http_ports: Vec<i32>,
    /// HTTPS listener ports served; empty without `--tls-listen`.
    pub https_ports: Vec<i32>,
}

/// The Services and EndpointSlices a translation reads (the controller's index, or a test's).
pub trait Backends {
    /// A Service.
    fn service(&self, key: &Key) -> Option<&Service>;
    /// The EndpointSlices of a Service.
    fn slices(&self, key: &Key) -> Vec<&EndpointSlice>;
}

/// Everything a translation reads.
pub struct Inputs<'a> {
    /// GatewayClasses by name.
    pub classes: &'a BTreeMap<String, Arc<GatewayClass>>,
    /// Gateways.
    pub gateways: &'a BTreeMap<Key, Arc<Gateway>>,
    /// HTTPRoutes.
    pub routes: &'a BTreeMap<Key, Arc<HTTPRoute>>,
    /// ReferenceGrants.
    pub grants: &'a BTreeMap<Key, Arc<ReferenceGrant>>,
    /// XBackendTrafficPolicies.
    pub policies: &'a BTreeMap<Key, Arc<XBackendTrafficPolicy>>,
    /// Namespace labels, for `allowedRoutes.namespaces.from: Selector`.
    pub namespaces: &'a HashMap<String, BTreeMap<String, String>>,
    /// Services and slices.
    pub backends: &'a dyn Backends,
    /// Which ports routeid serves.
    pub listening: &'a Listening,
    /// Serve only the GatewayClass of this name (`None`: every class naming routeid's controller).
    pub class: Option<&'a str>,
    /// The installed CRDs' `gateway.networking.k8s.io/bundle-version`, when it could be read.
    pub bundle_version: Option<&'a str>,
}

/// One status condition, before it gets its times and generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// Condition type (`Accepted`, `ResolvedRefs`, …).
    pub type_: &'static str,
    /// `True` or `False`.
    pub ok: bool,
    /// A reason of the Gateway API spec.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

impl Cond {
    fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Cond {
        Cond { type_, ok: true, reason, message: message.into() }
    }

    fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Cond {
        Cond { type_, ok: false, reason, message: message.into() }
    }
}

/// What one listener's status says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerReport {
    /// The listener's name.
    pub name: String,
    /// The route kinds it takes.
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Routes attached.
    pub attached_routes: i32,
    /// `Accepted`, `ResolvedRefs`, `Programmed`, `Conflicted`.
    pub conditions: Vec<Cond>,
    /// The certificates it serves (namespace, Secret), for a check of their content at status
    /// time ([`ListenerReport::check_certificates`]).
    pub certificates: Vec<(String, String)>,
}

impl ListenerReport {
    /// `ResolvedRefs=False, InvalidCertificateRef` when a certificate's Secret is known broken
    /// (`problem` says why, or `None`).
    pub fn check_certificates(&mut self, problem: impl Fn(&str, &str) -> Option<String>) {
        let bad = self.certificates.iter().find_map(|(ns, n)| problem(ns, n).map(|why| (ns, n, why)));
        if let Some((ns, n, why)) = bad
            && let Some(c) = self.conditions.iter_mut().find(|c| c.type_ == "ResolvedRefs" && c.ok)
        {
            *c = Cond::no("ResolvedRefs", "InvalidCertificateRef", format!("Secret {ns}/{n}: {why}"));
        }
    }
}

/// What one Gateway's status says (addresses are added by the controller).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayReport {
    /// `Accepted`, `Programmed`.
    pub conditions: Vec<Cond>,
    /// Per listener, in spec order.
    pub listeners: Vec<ListenerReport>,
}

/// What one of a route's `status.parents` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentReport {
    /// The parent as the route names it.
    pub parent_ref: ParentReference,
    /// `Accepted`, `ResolvedRefs`.
    pub conditions: Vec<Cond>,
}

/// The result of a translation.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    /// One pool per rule of each accepted route.
    pub pools: Vec<PoolConfig>,
    /// Status of our GatewayClasses.
    pub classes: BTreeMap<String, Vec<Cond>>,
    /// Status of the Gateways of our classes.
    pub gateways: BTreeMap<Key, GatewayReport>,
    /// Status entries of routes attached (or trying to attach) to our Gateways.
    pub routes: BTreeMap<Key, Vec<ParentReport>>,
}

/// The id of rule `rule` of route `name`: a colon cannot be in a Kubernetes name, so it is no
/// BalancerPool's. A rule that gets different hostnames through its HTTP and HTTPS listeners
/// is two pools, this id with `:http` and with `:https` appended.
pub fn pool_name(route: &str, rule: usize) -> String {
    format!("httproute:{route}:{rule}")
}

/// Whether a pool was made from an HTTPRoute.
pub fn is_route_pool(id: &PoolId) -> bool {
    id.name.starts_with("httproute:")
}

/// The names of our classes, with their status.
fn classes(inputs: &Inputs<'_>, out: &mut Translation) {
    for (name, class) in inputs.classes {
        if class.spec.controller_name != CONTROLLER_NAME || inputs.class.is_some_and(|c| c != name) {
            continue;
        }
        let accepted = if class.spec.parameters_ref.is_some() {
            Cond::no("Accepted", "InvalidParameters", "routeid takes no parametersRef")
        } else {
            Cond::yes("Accepted", "Accepted", "served by routeid")
        };
        let mut conds = vec![accepted];
        conds.extend(inputs.bundle_version.map(supported_version));
        out.classes.insert(name.clone(), conds);
    }
}

/// `SupportedVersion`: whether the installed CRDs are the release routeid follows (same major
/// and minor version as [`crate::api::gateway::BUNDLE_VERSION`]).
pub fn supported_version(installed: &str) -> Cond {
    let minor = |v: &str| -> Option<(u32, u32)> {
        let mut parts = v.trim_start_matches('v').split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    let ours = crate::api::gateway::BUNDLE_VERSION;
    if minor(installed).is_some_and(|m| Some(m) == minor(ours)) {
        Cond::yes("SupportedVersion", "SupportedVersion", format!("the installed CRDs are {installed}"))
    } else {
        Cond::no(
            "SupportedVersion",
            "UnsupportedVersion",
            format!("the installed Gateway API CRDs are {installed}; routeid follows {ours}"),
        )
    }
}

/// A listener of one of our Gateways, as routes see it.
struct ListenerView<'a> {
    gateway: Key,
    listener: &'a Listener,
    /// Accepted, refs resolved, not conflicted: routes may attach.
    usable: bool,
    /// Certificates (namespace, Secret) to serve the attached routes' hosts with.
    certificates: Vec<(String, String)>,
    /// Which namespaces' routes it takes.
    from: From,
    attached: i32,
}

#[derive(Clone, Debug)]
enum From {
    Same,
    All,
    Selector(LabelSelector),
    /// Unknown `from` or a bad selector: nothing attaches.
    Nothing,
}

/// Whether a ReferenceGrant in `to_ns` lets a `from_kind` in `from_ns` refer to `to_kind` `name`.
fn granted(
    grants: &BTreeMap<Key, Arc<ReferenceGrant>>,
    from_kind: &str,
    from_ns: &str,
    to_ns: &str,
    to_kind: &str,
    name: &str,
) -> bool {
    grants.iter().filter(|((ns, _), _)| ns == to_ns).any(|(_, g)| {
        g.spec.from.iter().any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_ns)
            && g.spec
                .to
                .iter()
                .any(|t| t.group.is_empty() && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == name))
    })
}

/// Whether `labels` satisfy `sel` (matchLabels and the four matchExpressions operators); an
/// unknown operator matches nothing.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_labels && by_expr
}

fn listening_hint(protocol: &str, port: i32, listening: &Listening) -> Option<String> {
    let (ports, flag, value) = match protocol {
        "HTTPS" => (&listening.https_ports, "--gateway-https-ports (with --tls-listen)", "gateway.httpsPorts"),
        _ => (&listening.http_ports, "--gateway-http-ports", "gateway.httpPorts"),
    };
    if ports.contains(&port) {
        return None;
    }
    let served = if ports.is_empty() {
        "none".to_owned()
    } else {
        ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    };
    Some(format!(
        "routeid does not listen for {protocol} Gateway port {port} (served: {served}); \
         add it with {flag} or the chart value {value}"
    ))
}

/// A listener's protocol and certificates: its `Accepted` and `ResolvedRefs`, and the
/// certificates (namespace, Secret) it may serve.
fn protocol_and_certificates(inputs: &Inputs<'_>, key: &Key, l: &Listener) -> (Cond, Cond, Vec<(String, String)>) {
    let mut accepted = Cond::yes("Accepted", "Accepted", "");
    let mut resolved = Cond::yes("ResolvedRefs", "ResolvedRefs", "");
    let mut certificates = Vec::new();
    match l.protocol.as_str() {
        "HTTP" => {}
        "HTTPS" => {
            let tls = l.tls.clone().unwrap_or_default();
            if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
                accepted = Cond::no("Accepted", "UnsupportedProtocol", "only tls.mode Terminate is served");
            } else if tls.certificate_refs.is_empty() {
                resolved = Cond::no("ResolvedRefs", "InvalidCertificateRef", "HTTPS needs tls.certificateRefs");
            }
            for c in &tls.certificate_refs {
                let ns = c.namespace.clone().unwrap_or_else(|| key.0.clone());
                let secret =
                    c.group.as_deref().unwrap_or("").is_empty() && c.kind.as_deref().unwrap_or("Secret") == "Secret";
                if !secret {
                    let msg = format!("certificateRef {:?} is not a Secret", c.name);
                    resolved = Cond::no("ResolvedRefs", "InvalidCertificateRef", msg);
                } else if ns != key.0 && !granted(inputs.grants, "Gateway", &key.0, &ns, "Secret", &c.name) {
                    let msg =
                        format!("Secret {ns}/{} needs a ReferenceGrant in {ns} for Gateways of {}", c.name, key.0);
                    resolved = Cond::no("ResolvedRefs", "RefNotPermitted", msg);
                } else {
                    certificates.push((ns, c.name.clone()));
                }
            }
        }
        other => {
            let msg = format!("protocol {other} is not served (HTTP and HTTPS are)");
            accepted = Cond::no("Accepted", "UnsupportedProtocol", msg);
        }
    }
    (accepted, resolved, certificates)
}

/// The route kinds a listener takes (HTTPRoute, unless `allowedRoutes.kinds` names others
/// only), and `InvalidRouteKinds` when it names a kind routeid does not serve.
fn route_kinds(l: &Listener) -> (Vec<RouteGroupKind>, Option<Cond>) {
    let http_route = |k: &RouteGroupKind| k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GROUP) == GROUP;
    match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
        None => (vec![RouteGroupKind { group: Some(GROUP.into()), kind: "HTTPRoute".into() }], None),
        Some(ks) => {
            let bad = ks.iter().any(|k| !http_route(k));
            let problem = bad.then(|| Cond::no("ResolvedRefs", "InvalidRouteKinds", "only HTTPRoute is served"));
            (ks.iter().filter(|k| http_route(k)).cloned().collect(), problem)
        }
    }
}

/// `allowedRoutes.namespaces`.
fn route_namespaces(l: &Listener) -> From {
    match l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref()) {
        None => From::Same,
        Some(n) => match (n.from.as_deref().unwrap_or("Same"), &n.selector) {
            ("Same", _) => From::Same,
            ("All", _) => From::All,
            ("Selector", Some(s)) => From::Selector(s.clone()),
            _ => From::Nothing,
        },
    }
}

/// The status and route-facing view of each listener of one Gateway.
fn listeners<'a>(inputs: &Inputs<'_>, key: &Key, gw: &'a Gateway) -> (Vec<ListenerReport>, Vec<ListenerView<'a>>) {
    let ls = &gw.spec.listeners;
    let mut reports = Vec::with_capacity(ls.len());
    let mut views = Vec::with_capacity(ls.len());
    for l in ls {
        let (accepted, mut resolved, certificates) = protocol_and_certificates(inputs, key, l);
        let (supported_kinds, kinds_problem) = route_kinds(l);
        if let Some(p) = kinds_problem {
            resolved = p;
        }
        let conflict = conflict_of(ls, l);
        let hint = listening_hint(&l.protocol, l.port, inputs.listening);
        let no_certificate = l.protocol == "HTTPS" && certificates.is_empty();
        let programmed = match (&conflict, &hint) {
            _ if !accepted.ok || no_certificate => {
                Cond::no("Programmed", "Invalid", "the listener is not accepted or has no usable certificate")
            }
            (Some(_), _) => Cond::no("Programmed", "Invalid", "the listener conflicts with another"),
            (None, Some(h)) => Cond::no("Programmed", "Invalid", h.clone()),
            (None, None) => Cond::yes("Programmed", "Programmed", ""),
        };
        let usable = accepted.ok && conflict.is_none() && !supported_kinds.is_empty();
        let conflicted = match conflict {
            Some(reason) => Cond::yes("Conflicted", reason, "another listener has this port"),
            None => Cond::no("Conflicted", "NoConflicts", ""),
        };
        reports.push(ListenerReport {
            name: l.name.clone(),
            supported_kinds,
            attached_routes: 0,
            conditions: vec![accepted, resolved, conflicted, programmed],
            certificates: certificates.clone(),
        });
        let from = route_namespaces(l);
        views.push(ListenerView { gateway: key.clone(), listener: l, usable, certificates, from, attached: 0 });
    }
    (reports, views)
}

/// `HostnameConflict` or `ProtocolConflict` when another listener of the Gateway has `l`'s port.
fn conflict_of(all: &[Listener], l: &Listener) -> Option<&'static str> {
    let same_port = all.iter().filter(|o| o.port == l.port && o.name != l.name);
    let mut reason = None;
    for o in same_port {
        if o.protocol != l.protocol {
            reason = Some("ProtocolConflict");
        } else if o.hostname.as_deref().unwrap_or("") == l.hostname.as_deref().unwrap_or("") {
            reason = reason.or(Some("HostnameConflict"));
        }
    }
    reason
}

/// Translates everything in scope (see the module docs).
pub fn translate(inputs: &Inputs<'_>) -> Translation {
    let mut out = Translation::default();
    classes(inputs, &mut out);
    let mut views: Vec<ListenerView<'_>> = Vec::new();
    for (key, gw) in inputs.gateways {
        let accepted = |c: &Vec<Cond>| c.iter().any(|c| c.type_ == "Accepted" && c.ok);
        if !out.classes.get(&gw.spec.gateway_class_name).is_some_and(accepted) {
            continue;
        }
        let (listeners, v) = listeners(inputs, key, gw);
        let mut conds = Vec::new();
        let any_usable = v.iter().any(|v| v.usable);
        conds.push(if !gw.spec.addresses.is_empty() {
            Cond::no("Accepted", "UnsupportedAddress", "routeid cannot assign spec.addresses; its Service's are used")
        } else if any_usable {
            Cond::yes("Accepted", "Accepted", "")
        } else {
            Cond::no("Accepted", "ListenersNotValid", "no listener is valid")
        });
        let programmed = listeners.iter().any(|l| l.conditions.iter().any(|c| c.type_ == "Programmed" && c.ok));
        conds.push(if programmed && gw.spec.addresses.is_empty() {
            Cond::yes("Programmed", "Programmed", "")
        } else {
            Cond::no("Programmed", "Invalid", "no listener is programmed")
        });
        out.gateways.insert(key.clone(), GatewayReport { conditions: conds, listeners });
        views.extend(v);
    }
    let cache = MemberCache::default();
    let mut routes: Vec<(&Key, &Arc<HTTPRoute>)> = inputs.routes.iter().collect();
    // Older routes first: their pools win a conflict, as for BalancerPools and Ingresses.
    routes.sort_by_key(|(k, r)| {
        (r.metadata.creation_timestamp.is_none(), r.metadata.creation_timestamp.clone(), (*k).clone())
    });
    for (key, route) in routes {
        route_pools(inputs, &cache, key, route, &mut views, &mut out);
    }
    for v in &views {
        if let Some(l) =
            out.gateways.get_mut(&v.gateway).and_then(|g| g.listeners.iter_mut().find(|l| l.name == v.listener.name))
        {
            l.attached_routes = v.attached;
        }
    }
    out
}

/// What a route got through its parents, per kind of listener: the hosts of its HTTP
/// listeners, those of its HTTPS listeners with their certificates (`None`: none of that kind).
#[derive(Default)]
struct Attached {
    plain: Option<Hosts>,
    secure: Option<Hosts>,
    certificates: Vec<(String, String)>,
}

/// One pool a rule becomes: the hosts, the kind of connection, and the id suffix (`None`: the
/// rule's own id; `http`/`https` when the rule gets different hostnames through the two kinds).
struct Variant<'a> {
    hosts: &'a Hosts,
    served_on: core_gw::ServedOn,
    suffix: Option<&'static str>,
}

impl Attached {
    /// One pool served on both kinds when both give the same hostnames, else one per kind.
    fn variants(&self) -> Vec<Variant<'_>> {
        use core_gw::ServedOn;
        let one = |hosts, served_on| Variant { hosts, served_on, suffix: None };
        match (&self.plain, &self.secure) {
            (Some(p), Some(s)) if hosts::same(p, s) => vec![one(p, ServedOn::Both)],
            (Some(p), Some(s)) => vec![
                Variant { hosts: p, served_on: ServedOn::Plain, suffix: Some("http") },
                Variant { hosts: s, served_on: ServedOn::Secure, suffix: Some("https") },
            ],
            (Some(p), None) => vec![one(p, ServedOn::Plain)],
            (None, Some(s)) => vec![one(s, ServedOn::Secure)],
            (None, None) => Vec::new(),
        }
    }
}

/// Attaches a route to one parent; its `Accepted` condition.
fn attach(
    inputs: &Inputs<'_>,
    key: &Key,
    route: &HTTPRoute,
    p: &ParentReference,
    views: &mut [ListenerView<'_>],
    got: &mut Attached,
) -> Cond {
    let gw_key = (p.namespace.clone().unwrap_or_else(|| key.0.clone()), p.name.clone());
    let mut candidates: Vec<&mut ListenerView<'_>> = views
        .iter_mut()
        .filter(|v| v.gateway == gw_key)
        .filter(|v| p.section_name.as_deref().is_none_or(|s| s == v.listener.name))
        .filter(|v| p.port.is_none_or(|port| port == v.listener.port))
        .collect();
    if candidates.is_empty() {
        return Cond::no("Accepted", "NoMatchingParent", "no listener has this sectionName/port");
    }
    candidates.retain(|v| {
        v.usable
            && match &v.from {
                From::Same => key.0 == v.gateway.0,
                From::All => true,
                From::Selector(s) => inputs.namespaces.get(&key.0).is_some_and(|l| selector_matches(s, l)),
                From::Nothing => false,
            }
    });
    if candidates.is_empty() {
        return Cond::no("Accepted", "NotAllowedByListeners", "no listener allows routes from this namespace");
    }
    let mut matched = 0;
    for v in candidates {
        if let Some(h) = hosts::intersect(v.listener.hostname.as_deref(), &route.spec.hostnames) {
            // Only HTTP and HTTPS listeners are usable.
            let kind = if v.listener.protocol == "HTTPS" { &mut got.secure } else { &mut got.plain };
            *kind = Some(hosts::union(kind.take(), h));
            got.certificates.extend(v.certificates.iter().cloned());
            v.attached += 1;
            matched += 1;
        }
    }
    if matched == 0 {
        return Cond::no("Accepted", "NoMatchingListenerHostname", "no hostname of the route meets a listener's");
    }
    Cond::yes("Accepted", "Accepted", "")
}

/// Attaches a route to its parents and makes its pools.
fn route_pools(
    inputs: &Inputs<'_>,
    cache: &MemberCache,
    key: &Key,
    route: &HTTPRoute,
    views: &mut [ListenerView<'_>],
    out: &mut Translation,
) {
    let ours: Vec<&ParentReference> = route
        .spec
        .parent_refs
        .iter()
        .filter(|p| p.group.as_deref().unwrap_or(GROUP) == GROUP && p.kind.as_deref().unwrap_or("Gateway") == "Gateway")
        .filter(|p| out.gateways.contains_key(&(p.namespace.clone().unwrap_or_else(|| key.0.clone()), p.name.clone())))
        .collect();
    if ours.is_empty() {
        return;
    }
    let mut unsupported = unsupported(&route.spec);
    let mut got = Attached::default();
    let mut rules = Vec::new();
    let mut refs = Cond::yes("ResolvedRefs", "ResolvedRefs", "");
    if unsupported.is_empty() {
        for (i, rule) in route.spec.rules.iter().enumerate() {
            match rule_pool(inputs, cache, key, route, i, rule) {
                Ok((pool, problem)) => {
                    if let Some(p) = problem {
                        refs = p;
                    }
                    rules.push(pool);
                }
                Err(e) => unsupported.push(e),
            }
        }
    }
    let mut reports = Vec::new();
    for p in ours {
        let accepted = match unsupported.first() {
            Some(msg) => Cond::no("Accepted", "UnsupportedValue", msg.clone()),
            None => attach(inputs, key, route, p, views, &mut got),
        };
        reports.push(ParentReport { parent_ref: p.clone(), conditions: vec![accepted, refs.clone()] });
    }
    let mut pools = Vec::new();
    let made = got.variants().iter().try_for_each(|v| {
        let certs = if v.served_on == core_gw::ServedOn::Plain { &[][..] } else { &got.certificates[..] };
        rule_configs(key, &rules, v, certs).map(|p| pools.extend(p))
    });
    match made {
        Ok(()) => out.pools.extend(pools),
        Err(msg) => {
            for r in &mut reports {
                r.conditions[0] = Cond::no("Accepted", "UnsupportedValue", msg.clone());
            }
        }
    }
    out.routes.insert(key.clone(), reports);
}

/// The validated pools of a route's rules for one [`Variant`], or the first problem (the route
/// is then not served).
fn rule_configs(
    key: &Key,
    rules: &[RulePool],
    variant: &Variant<'_>,
    certs: &[(String, String)],
) -> Result<Vec<PoolConfig>, String> {
    let mut out = Vec::with_capacity(rules.len());
    for RulePool { index, spec, members, rule, persistence } in rules {
        let (i, mut spec) = (*index, spec.clone());
        if let Hosts::Some(h) = variant.hosts {
            spec.frontend.hosts = h.clone();
        }
        let name = match variant.suffix {
            Some(kind) => format!("{}:{kind}", pool_name(&key.1, i)),
            None => pool_name(&key.1, i),
        };
        let id = PoolId { namespace: key.0.clone(), name };
        match validate_service_backed(id, &spec, members.clone()) {
            Ok(mut cfg) => {
                cfg.tls = certificates(certs, variant.hosts);
                cfg.gateway = Some(core_gw::GatewayRule { served_on: variant.served_on, ..rule.clone() });
                cfg.sticky = persistence.clone().map(StickyConfig::persistence);
                out.push(cfg);
            }
            Err(problems) => {
                let msg = problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ");
                return Err(format!("spec.rules[{i}]: {msg}"));
            }
        }
    }
    Ok(out)
}

/// The certificates for a pool's hosts: every listener certificate, for every host (the SNI
/// store places each on the hosts it names).
fn certificates(certs: &[(String, String)], hosts: &Hosts) -> Vec<TlsEntry> {
    let Hosts::Some(names) = hosts else { return Vec::new() };
    let hosts: Vec<crate::core::config::HostMatch> = names.iter().filter_map(|h| host_match(h)).collect();
    let mut out: Vec<TlsEntry> = Vec::new();
    for (ns, name) in certs {
        if !out.iter().any(|t| t.secret_name == *name && t.namespace.as_deref() == Some(ns.as_str())) {
            out.push(TlsEntry { hosts: hosts.clone(), secret_name: name.clone(), namespace: Some(ns.clone()) });
        }
    }
    out
}

fn host_match(h: &str) -> Option<crate::core::config::HostMatch> {
    use crate::core::config::HostMatch;
    match h.strip_prefix("*.") {
        Some(rest) if !rest.is_empty() => Some(HostMatch::Wildcard(format!(".{rest}"))),
        Some(_) => None,
        None => Some(HostMatch::Exact(h.to_owned())),
    }
}

/// What of a route's spec routeid does not serve, one message per field.
fn unsupported(spec: &crate::api::gateway::HTTPRouteSpec) -> Vec<String> {
    let mut out: Vec<String> = spec.unsupported.keys().map(|k| format!("spec.{k} is not served")).collect();
    for (i, r) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        out.extend(r.unsupported.keys().map(|k| format!("{at}.{k} is not served")));
        for (j, m) in r.matches.iter().enumerate() {
            out.extend(m.unsupported.keys().map(|k| format!("{at}.matches[{j}].{k} is not served")));
            if let Some(t) = m.path.as_ref().and_then(|p| p.type_.as_deref())
                && t != "Exact"
                && t != "PathPrefix"
            {
                out.push(format!("{at}.matches[{j}].path.type {t} is not served (Exact and PathPrefix are)"));
            }
            for (what, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
                for (n, h) in list.iter().enumerate() {
                    if h.type_.as_deref().is_some_and(|t| t != "Exact") {
                        out.push(format!("{at}.matches[{j}].{what}[{n}].type is not served (Exact is)"));
                    }
                }
            }
        }
        for (j, f) in r.filters.iter().enumerate() {
            let served = ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite"];
            if !served.contains(&f.type_.as_str()) {
                out.push(format!("{at}.filters[{j}].type {} is not served", f.type_));
            }
        }
        for (j, b) in r.backend_refs.iter().enumerate() {
            if !b.filters.is_empty() {
                out.push(format!("{at}.backendRefs[{j}].filters are not served"));
            }
        }
        if let Some(sp) = &r.session_persistence
            && let Err(e) = persistence(sp, &format!("{at}.sessionPersistence"))
        {
            out.push(e);
        }
    }
    out
}

/// A GEP-2257 duration (`1h`, `30m`, `10s`, `500ms`, `1h30m`): 1–4 parts of 1–5 digits.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let (mut total, mut parts, mut rest) = (std::time::Duration::ZERO, 0, s);
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(n), 2)
        } else {
            match rest.as_bytes().first() {
                Some(b'h') => (std::time::Duration::from_secs(n * 3600), 1),
                Some(b'm') => (std::time::Duration::from_secs(n * 60), 1),
                Some(b's') => (std::time::Duration::from_secs(n), 1),
                _ => return None,
            }
        };
        total += unit;
        rest = &rest[len..];
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

/// Session persistence, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// Header (true) or cookie.
    pub header: bool,
    /// The name, if given.
    pub name: Option<String>,
    /// `absoluteTimeout`.
    pub absolute_timeout: Option<std::time::Duration>,
    /// `Permanent` cookie.
    pub permanent: bool,
}

/// Checks a `sessionPersistence` (at `at`, for messages).
pub fn persistence(sp: &SessionPersistence, at: &str) -> Result<Persistence, String> {
    let header = match sp.type_.as_deref().unwrap_or("Cookie") {
        "Cookie" => false,
        "Header" => true,
        t => return Err(format!("{at}.type {t} is not served (Cookie and Header are)")),
    };
    if sp.idle_timeout.is_some() {
        return Err(format!("{at}.idleTimeout is not served"));
    }
    let absolute_timeout = match sp.absolute_timeout.as_deref() {
        None => None,
        Some(t) => match parse_duration(t) {
            Some(d) if !d.is_zero() => Some(d),
            _ => return Err(format!("{at}.absoluteTimeout {t:?} is not a duration like 1h or 30m")),
        },
    };
    let permanent = match sp.cookie_config.as_ref().and_then(|c| c.lifetime_type.as_deref()).unwrap_or("Session") {
        "Session" => false,
        "Permanent" => true,
        t => return Err(format!("{at}.cookieConfig.lifetimeType {t} is not Session or Permanent")),
    };
    if permanent && absolute_timeout.is_none() {
        return Err(format!("{at}: lifetimeType Permanent needs absoluteTimeout"));
    }
    if header && sp.cookie_config.is_some() {
        return Err(format!("{at}.cookieConfig is for type Cookie"));
    }
    if let Some(n) = &sp.session_name
        && !crate::core::config::is_token(n)
    {
        return Err(format!("{at}.sessionName {n:?} is not a cookie/header name"));
    }
    Ok(Persistence { header, name: sp.session_name.clone(), absolute_timeout, permanent })
}

/// The session name of a rule without `sessionName`: the same on every replica and across
/// restarts, different per rule (two rules keep independent sessions).
pub fn generated_session_name(route: &Key, rule: usize) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, format!("{}/{}/{rule}", route.0, route.1).as_bytes());
    let hex: String = d.as_ref()[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("routeid-{hex}")
}

/// The session persistence of a rule: its own, or else an XBackendTrafficPolicy's on one of its
/// backend Services.
fn rule_persistence<'a>(
    inputs: &'a Inputs<'_>,
    route_ns: &str,
    rule: &'a HTTPRouteRule,
) -> Option<&'a SessionPersistence> {
    rule.session_persistence.as_ref().or_else(|| {
        rule.backend_refs.iter().find_map(|b| {
            let ns = b.namespace.as_deref().unwrap_or(route_ns);
            inputs.policies.iter().filter(|((pns, _), _)| pns == ns).find_map(|(_, p)| {
                p.spec
                    .target_refs
                    .iter()
                    .any(|t| t.group.is_empty() && t.kind == "Service" && t.name == b.name)
                    .then_some(p.spec.session_persistence.as_ref())
                    .flatten()
            })
        })
    })
}

/// A rule, ready to become a pool: the spec the core validates (path, backend), the members,
/// and what only Gateway API pools have.
struct RulePool {
    index: usize,
    spec: BalancerPoolSpec,
    members: Vec<MemberConfig>,
    rule: core_gw::GatewayRule,
    persistence: Option<core_gw::SessionPersistence>,
}

/// The pool of rule `i` and a `ResolvedRefs` problem of its backends; `Err` when the rule asks
/// for something routeid does not serve.
fn rule_pool(
    inputs: &Inputs<'_>,
    cache: &MemberCache,
    key: &Key,
    route: &HTTPRoute,
    i: usize,
    rule: &HTTPRouteRule,
) -> Result<(RulePool, Option<Cond>), String> {
    let at = format!("spec.rules[{i}]");
    let gw_rule = gateway_rule(route, key, i, rule)?;
    let first = gw_rule.matches.first().map(|m| m.path.clone()).unwrap_or_default();
    let mut spec = BalancerPoolSpec::default();
    spec.frontend.path_prefix = Some(first.value().to_owned());
    spec.frontend.path_type = matches!(first, core_gw::PathMatch::Exact(_)).then_some(PathType::Exact);
    let persistence = match rule_persistence(inputs, &key.0, rule) {
        Some(sp) => {
            let p = persistence(sp, &format!("{at}.sessionPersistence"))?;
            let cookie_path = cookie_path(&gw_rule.matches);
            let core = core_gw::SessionPersistence {
                kind: if p.header { core_gw::SessionKind::Header } else { core_gw::SessionKind::Cookie },
                name: p.name.clone().unwrap_or_else(|| generated_session_name(key, i)),
                cookie_path,
                lifetime: if p.permanent {
                    core_gw::CookieLifetime::Permanent
                } else {
                    core_gw::CookieLifetime::Session
                },
                absolute_timeout: p.absolute_timeout,
            };
            if let Some(e) = core.validate(&format!("{at}.sessionPersistence")).first() {
                return Err(e.to_string());
            }
            Some(core)
        }
        None => None,
    };
    let (members, problem, invalid) = weighted_members(inputs, cache, key, &rule.backend_refs);
    let mut gw_rule = gw_rule;
    gw_rule.invalid = invalid;
    let first = rule.backend_refs.first().map_or_else(|| "none".to_owned(), |b| b.name.clone());
    spec.backend.service = Some(ServiceRef { name: first, port: IntOrString::Int(0) });
    Ok((RulePool { index: i, spec, members, rule: gw_rule, persistence }, problem))
}

/// The session cookie's `Path`: the path segments every match of the rule shares, so the
/// cookie is sent on each of them (a `PathPrefix` counts as its value, an `Exact` as `/`); `/`
/// for a rule without matches.
fn cookie_path(matches: &[core_gw::RequestMatch]) -> String {
    let paths = matches.iter().map(|m| match &m.path {
        core_gw::PathMatch::Prefix(p) => p.as_str(),
        core_gw::PathMatch::Exact(_) => "/",
    });
    let mut common: Option<Vec<&str>> = None;
    for p in paths {
        let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        common = Some(match common {
            None => segs,
            Some(c) => c.iter().zip(&segs).take_while(|(a, b)| a == b).map(|(a, _)| *a).collect(),
        });
    }
    format!("/{}", common.unwrap_or_default().join("/"))
}

/// The core form of a rule's matches, precedence data and filters, checked.
fn gateway_rule(route: &HTTPRoute, key: &Key, i: usize, rule: &HTTPRouteRule) -> Result<core_gw::GatewayRule, String> {
    let at = format!("spec.rules[{i}]");
    let matches = rule.matches.iter().map(request_match).collect();
    let created_unix = route.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
    let order = core_gw::RouteOrder {
        created_unix,
        route: format!("{}/{}", key.0, key.1),
        rule: u32::try_from(i).unwrap_or(u32::MAX),
    };
    // The kind of connection is the listeners' and is set per pool by `rule_configs`.
    let served_on = core_gw::ServedOn::Both;
    let out = core_gw::GatewayRule { matches, order, filters: filters(&rule.filters, &at)?, served_on, invalid: None };
    match out.validate(&at).first() {
        Some(e) => Err(e.to_string()),
        None => Ok(out),
    }
}

fn request_match(m: &crate::api::gateway::HTTPRouteMatch) -> core_gw::RequestMatch {
    let path = m.path.clone().unwrap_or_default();
    let value = path.value.unwrap_or_else(|| "/".to_owned());
    let path = match path.type_.as_deref() {
        Some("Exact") => core_gw::PathMatch::Exact(value),
        _ => {
            let trimmed = value.trim_end_matches('/');
            core_gw::PathMatch::Prefix(if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() })
        }
    };
    core_gw::RequestMatch {
        path,
        headers: m
            .headers
            .iter()
            .map(|h| core_gw::HeaderMatch { name: h.name.to_ascii_lowercase(), value: h.value.clone() })
            .collect(),
        query: m
            .query_params
            .iter()
            .map(|q| core_gw::QueryMatch { name: q.name.clone(), value: q.value.clone() })
            .collect(),
        method: m.method.clone(),
    }
}

fn header_modifier(h: &crate::api::gateway::HeaderModifier) -> core_gw::HeaderModifier {
    let pair = |x: &crate::api::gateway::HTTPHeader| (x.name.to_ascii_lowercase(), x.value.clone());
    core_gw::HeaderModifier {
        set: h.set.iter().map(pair).collect(),
        add: h.add.iter().map(pair).collect(),
        remove: h.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
    }
}

fn path_modifier(p: &crate::api::gateway::HTTPPathModifier, at: &str) -> Result<core_gw::PathModifier, String> {
    match (p.type_.as_str(), &p.replace_full_path, &p.replace_prefix_match) {
        ("ReplaceFullPath", Some(v), _) => Ok(core_gw::PathModifier::ReplaceFullPath(v.clone())),
        ("ReplacePrefixMatch", _, Some(v)) => Ok(core_gw::PathModifier::ReplacePrefixMatch(v.clone())),
        (t, _, _) => Err(format!("{at}.type {t} needs its value (replaceFullPath or replacePrefixMatch)")),
    }
}

/// A rule's filters: at most one of each type, each with its configuration.
fn filters(list: &[crate::api::gateway::HTTPRouteFilter], at: &str) -> Result<core_gw::Filters, String> {
    let mut out = core_gw::Filters::default();
    for (j, f) in list.iter().enumerate() {
        let here = format!("{at}.filters[{j}]");
        let missing = || format!("{here}: type {} without its configuration", f.type_);
        let twice = || format!("{here}: a second {} filter is not served", f.type_);
        match f.type_.as_str() {
            "RequestHeaderModifier" => {
                let h = f.request_header_modifier.as_ref().ok_or_else(missing)?;
                if out.request_headers.replace(header_modifier(h)).is_some() {
                    return Err(twice());
                }
            }
            "ResponseHeaderModifier" => {
                let h = f.response_header_modifier.as_ref().ok_or_else(missing)?;
                if out.response_headers.replace(header_modifier(h)).is_some() {
                    return Err(twice());
                }
            }
            "RequestRedirect" => {
                let r = f.request_redirect.as_ref().ok_or_else(missing)?;
                let port = match r.port {
                    None => None,
                    Some(p) => {
                        Some(u16::try_from(p).map_err(|_| format!("{here}.requestRedirect.port {p} is not a port"))?)
                    }
                };
                let redirect = core_gw::RequestRedirect {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    path: r
                        .path
                        .as_ref()
                        .map(|p| path_modifier(p, &format!("{here}.requestRedirect.path")))
                        .transpose()?,
                    port,
                    status: u16::try_from(r.status_code.unwrap_or(302)).unwrap_or(0),
                };
                if out.redirect.replace(redirect).is_some() {
                    return Err(twice());
                }
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref().ok_or_else(missing)?;
                let rewrite = core_gw::UrlRewrite {
                    hostname: r.hostname.clone(),
                    path: r.path.as_ref().map(|p| path_modifier(p, &format!("{here}.urlRewrite.path"))).transpose()?,
                };
                if out.rewrite.replace(rewrite).is_some() {
                    return Err(twice());
                }
            }
            other => return Err(format!("{here}.type {other} is not served")),
        }
    }
    Ok(out)
}

/// A backendRef resolved to its Service's slices.
struct Backend<'a> {
    service: Key,
    weight: u32,
    slices: Vec<&'a EndpointSlice>,
    port: IntOrString,
}

/// The members of each Service port derived once per translation: many rules share a Service.
type MemberCache = RefCell<HashMap<(Key, String), Rc<Vec<MemberConfig>>>>;

/// A Service port's members (ready, or draining while terminating), from its slices.
fn service_members(cache: &MemberCache, b: &Backend<'_>) -> Rc<Vec<MemberConfig>> {
    let port = match &b.port {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => format!("name:{s}"),
    };
    let k = (b.service.clone(), port);
    if let Some(m) = cache.borrow().get(&k) {
        return Rc::clone(m);
    }
    let per_slice: Vec<SliceMembers> =
        b.slices.iter().map(|s| derive::slice_members(s, &b.port, RouteFrom::PodName)).collect();
    let members = Rc::new(derive::merge(&per_slice).members);
    cache.borrow_mut().insert(k, Rc::clone(&members));
    members
}

/// Resolves a backendRef, or says why it cannot be used (`ResolvedRefs=False`).
fn backend<'a>(inputs: &'a Inputs<'_>, key: &Key, b: &HTTPBackendRef) -> Result<Backend<'a>, Cond> {
    let bad = |reason, msg: String| Err(Cond::no("ResolvedRefs", reason, msg));
    if !b.group.as_deref().unwrap_or("").is_empty() || b.kind.as_deref().unwrap_or("Service") != "Service" {
        return bad("InvalidKind", format!("backendRef {:?} is not a Service", b.name));
    }
    let ns = b.namespace.clone().unwrap_or_else(|| key.0.clone());
    if ns != key.0 && !granted(inputs.grants, "HTTPRoute", &key.0, &ns, "Service", &b.name) {
        return bad(
            "RefNotPermitted",
            format!("Service {ns}/{} needs a ReferenceGrant in {ns} for HTTPRoutes of {}", b.name, key.0),
        );
    }
    let svc_key = (ns, b.name.clone());
    let Some(svc) = inputs.backends.service(&svc_key) else {
        return bad("BackendNotFound", format!("Service {}/{} not found", svc_key.0, svc_key.1));
    };
    let Some(port) = b.port else {
        return bad("BackendNotFound", format!("backendRef {:?} needs a port", b.name));
    };
    let resolved = services::resolve(Some(svc), &IntOrString::Int(port));
    if let Some(msg) = services::problem(&b.name, &resolved) {
        return bad("BackendNotFound", msg);
    }
    let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
    let slices = inputs.backends.slices(&svc_key);
    Ok(Backend { service: svc_key, weight, slices, port: resolved.slice_port().clone() })
}

/// The route of a pod of a backend outside the route's namespace: `<pod>~<namespace>`.
/// Pod names are unique only within a namespace, so a rule reaching `a/web` and `b/web` would
/// otherwise hold two `web-0`. Always qualified (not only on a collision), so a route never
/// changes when a pod elsewhere comes or goes and sessions stay valid; `~` cannot occur in a
/// pod or namespace name, so no qualified route equals a pod name of the route's namespace.
/// `None` when the result is not a valid route (too long).
fn qualified_route(pod: &crate::core::Route, namespace: &str) -> Option<crate::core::Route> {
    let r = format!("{pod}~{namespace}");
    crate::core::config::is_valid_route(&r).then(|| crate::core::Route::from(r))
}

/// The members of a rule: every backend's pods, each backend's weight split over its ready
/// pods and scaled to load factors 1–100; a weight-0 backend's pods are `Drain` (their sessions
/// stay, no new ones). A pod reached through two backendRefs is one member with the summed
/// share; pods of a backend in another namespace get [`qualified_route`]s.
fn weighted_members(
    inputs: &Inputs<'_>,
    cache: &MemberCache,
    key: &Key,
    refs: &[HTTPBackendRef],
) -> (Vec<MemberConfig>, Option<Cond>, Option<core_gw::InvalidShare>) {
    let mut problem = None;
    let mut shares: BTreeMap<crate::core::Route, (MemberConfig, f64)> = BTreeMap::new();
    let mut invalid = core_gw::InvalidShare::default();
    let mut valid = 0_usize;
    for b in refs {
        let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
        invalid.total = invalid.total.saturating_add(weight);
        let backend = match backend(inputs, key, b) {
            Ok(b) => b,
            Err(c) => {
                invalid.weight = invalid.weight.saturating_add(weight);
                invalid.reason.push_str(if invalid.reason.is_empty() { "" } else { "; " });
                invalid.reason.push_str(&c.message);
                problem.get_or_insert(c);
                continue;
            }
        };
        valid += 1;
        let derived = service_members(cache, &backend);
        let ready = derived.iter().filter(|m| m.status == MemberStatus::Ok).count().max(1);
        let share = f64::from(backend.weight) / ready as f64;
        let qualify = backend.service.0 != key.0;
        for m in derived.iter() {
            let mut m = m.clone();
            if qualify {
                let Some(route) = qualified_route(&m.route, &backend.service.0) else {
                    tracing::warn!(route = %m.route, namespace = %backend.service.0,
                        "pod name too long to qualify with its namespace: left out of the rule");
                    continue;
                };
                m.route = route;
            }
            let s = if m.status == MemberStatus::Ok && backend.weight > 0 { share } else { 0.0 };
            if backend.weight == 0 {
                m.status = MemberStatus::Drain;
            }
            let e = shares.entry(m.route.clone()).or_insert((m, 0.0));
            e.1 += s;
        }
    }
    let max = shares.values().map(|(_, s)| *s).fold(0.0_f64, f64::max);
    let members = shares
        .into_values()
        .map(|(mut m, s)| {
            m.load_factor = if max > 0.0 { ((s / max * 100.0).round() as u32).clamp(1, 100) } else { 1 };
            m
        })
        .collect();
    (members, problem, invalid_share(invalid, valid))
}

/// The invalid backendRefs' share of a rule, if it has any: all of it when no backendRef is
/// valid (even at weight 0), as the spec answers such a rule `500`.
fn invalid_share(mut share: core_gw::InvalidShare, valid: usize) -> Option<core_gw::InvalidShare> {
    if share.reason.is_empty() {
        return None;
    }
    if valid == 0 {
        (share.weight, share.total) = (1, 1);
    }
    (share.weight > 0).then_some(share)
}
