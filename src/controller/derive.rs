//! `(pool spec, EndpointSlices) -> PoolConfig`: the pure heart of the controller.
//!
//! No I/O, no clock, no client: the controller only feeds this and publishes the result, so the
//! semantics users rely on (README "How members are derived") are pinned down by unit tests here.
//!
//! - A **ready** endpoint is a normal member (a missing `ready` condition means ready, the API's
//!   documented default).
//! - A **serving and terminating** endpoint is a `Drain` member: it keeps its sticky sessions and
//!   gets no new ones (KEP-1672). A missing `serving` means serving, as kube-proxy reads it.
//! - Anything else is absent.
//! - When **no** endpoint is ready, the serving+terminating ones take all traffic, as kube-proxy
//!   does (KEP-1669): they become normal members rather than the pool going dark.
//! - The route is the pod name (`targetRef.name`), the endpoint's `hostname`, or its address.
//! - The port is resolved per slice, by name or by number, so one Service can map a port name to
//!   different numbers in different slices (a rolling change of `targetPort`).
//! - An endpoint listed in two slices (slices are being rebalanced) is one member; a ready entry
//!   wins over a terminating one.
//! - Members come out sorted by route: the order breaks lb ties, and it must not depend on the
//!   order in which slices arrived.
//!
//! Derivation is split in two steps so the controller can cache the first per slice and apply
//! the second incrementally ([`MemberClaims`]): when 1 of 100 slices of a 10,000-endpoint
//! Service changes, only that slice is re-read and only its candidates are re-merged.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::validate::validate_service_backed;
use crate::api::{BalancerPoolSpec, MemberStatus, RouteFrom, ServiceRef};
use crate::core::Route;
use crate::core::config::{FieldError, MemberConfig, PoolConfig, PoolId, is_valid_route};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What an endpoint's conditions make of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointState {
    /// Ready: takes new sessions.
    Ready,
    /// Serving but terminating: keeps its sessions, gets no new ones (unless nothing is ready).
    Terminating,
}

/// One usable endpoint of one slice, with the port already resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The member's route.
    pub route: Route,
    /// `ip:port`.
    pub address: SocketAddr,
    /// Ready or draining.
    pub state: EndpointState,
}

/// Why an endpoint or a slice gave no member; reported in status so a typo in a port name or a
/// pod without a name is visible rather than silent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// The slice has no port of that name or number.
    NoMatchingPort {
        /// The slice's name.
        slice: String,
    },
    /// The slice's addresses are not IPs (`addressType: FQDN`).
    NotIp {
        /// The slice's name.
        slice: String,
    },
    /// The Service has no such port (see [`super::services`]).
    ServicePort {
        /// What was resolved, and how.
        message: String,
    },
    /// Endpoints without the field that names the route, or whose value cannot be a route.
    NoRoute {
        /// The slice's name.
        slice: String,
        /// How many endpoints.
        count: usize,
    },
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::NoMatchingPort { slice } => write!(f, "EndpointSlice {slice} has no matching port"),
            Skipped::NotIp { slice } => write!(f, "EndpointSlice {slice} does not hold IP addresses"),
            Skipped::ServicePort { message } => f.write_str(message),
            Skipped::NoRoute { slice, count } => {
                write!(f, "EndpointSlice {slice}: {count} endpoint(s) without a usable route")
            }
        }
    }
}

/// The candidates of one slice: the unit the controller caches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceMembers {
    /// Usable endpoints of this slice.
    pub candidates: Vec<Candidate>,
    /// What was left out, and why.
    pub skipped: Vec<Skipped>,
}

/// Members of a pool, derived from all of its Service's slices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Derived {
    /// Members sorted by route; terminating ones are `Drain` unless nothing is ready.
    pub members: Vec<MemberConfig>,
    /// Routes of members that are terminating (kept `Drain` even over a spec override).
    pub terminating: Vec<Route>,
    /// What was left out, and why.
    pub skipped: Vec<Skipped>,
}

fn slice_name(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// The port number this slice gives the Service port `port` (by name, or by number).
pub fn resolve_port(slice: &EndpointSlice, port: &IntOrString) -> Option<u16> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let tcp = |p: &&k8s_openapi::api::discovery::v1::EndpointPort| p.protocol.as_deref().unwrap_or("TCP") == "TCP";
    let found = match port {
        IntOrString::String(name) => ports.iter().filter(tcp).find(|p| p.name.as_deref().unwrap_or("") == name),
        IntOrString::Int(n) => ports.iter().filter(tcp).find(|p| p.port == Some(*n)),
    }?;
    found.port.and_then(|n| u16::try_from(n).ok()).filter(|&n| n != 0)
}

/// Ready, terminating-but-serving, or absent (`None`).
pub fn endpoint_state(e: &Endpoint) -> Option<EndpointState> {
    let c = e.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    if ready && !terminating {
        Some(EndpointState::Ready)
    } else if serving && terminating {
        Some(EndpointState::Terminating)
    } else {
        None
    }
}

/// The first address of an endpoint as an IP (consumers must use the first, per the API).
fn endpoint_ip(e: &Endpoint) -> Option<IpAddr> {
    e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok())
}

fn endpoint_route(e: &Endpoint, ip: IpAddr, from: RouteFrom) -> Option<Route> {
    let r = match from {
        RouteFrom::PodName => e.target_ref.as_ref().and_then(|t| t.name.clone())?,
        RouteFrom::Hostname => e.hostname.clone()?,
        // The canonical text form: `fd00::1`, never `fd00:0:0::1`, so the route is stable.
        RouteFrom::Address => ip.to_string(),
    };
    is_valid_route(&r).then(|| Route::from(r))
}

/// The usable endpoints of one slice for the Service port `port`.
pub fn slice_members(slice: &EndpointSlice, port: &IntOrString, route_from: RouteFrom) -> SliceMembers {
    let mut out = SliceMembers::default();
    if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
        out.skipped.push(Skipped::NotIp { slice: slice_name(slice) });
        return out;
    }
    let Some(port) = resolve_port(slice, port) else {
        if !slice.endpoints.is_empty() {
            out.skipped.push(Skipped::NoMatchingPort { slice: slice_name(slice) });
        }
        return out;
    };
    let mut no_route = 0;
    for e in &slice.endpoints {
        let Some(state) = endpoint_state(e) else { continue };
        let Some(ip) = endpoint_ip(e) else {
            no_route += 1;
            continue;
        };
        let Some(route) = endpoint_route(e, ip, route_from) else {
            no_route += 1;
            continue;
        };
        out.candidates.push(Candidate { route, address: SocketAddr::new(ip, port), state });
    }
    if no_route > 0 {
        out.skipped.push(Skipped::NoRoute { slice: slice_name(slice), count: no_route });
    }
    // Sorted once per slice, so a changed slice is compared with its cached version in one walk
    // ([`MemberClaims::replace`]).
    out.candidates.sort_unstable_by(candidate_order);
    out
}

/// Route, then state (ready first), then address.
fn candidate_order(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    (&a.route, a.state, a.address).cmp(&(&b.route, b.state, b.address))
}

/// Every candidate of a pool's slices, grouped by route: the state [`merge`] computes from
/// scratch, kept up to date one slice at a time by the controller. When 1 of 100 slices of a
/// 10,000-endpoint Service changes, only that slice's candidates are removed and added; the
/// members then come out of one ordered walk, with no sorting and no string copies.
#[derive(Clone, Debug, Default)]
pub struct MemberClaims {
    /// Per route, every (state, address) that claims it.
    routes: BTreeMap<Route, Claims>,
}

/// The claims on one route: usually exactly one, kept inline so the walk over 10,000 routes
/// touches no other memory.
#[derive(Clone, Debug)]
struct Claims {
    first: (EndpointState, SocketAddr),
    /// The same route listed again (by another slice, or with another address).
    more: Vec<(EndpointState, SocketAddr)>,
}

impl Claims {
    fn best(&self) -> (EndpointState, SocketAddr) {
        self.more.iter().copied().fold(self.first, std::cmp::min)
    }
}

impl MemberClaims {
    /// Adds a slice's candidates.
    pub fn add(&mut self, slice: &SliceMembers) {
        for c in &slice.candidates {
            self.add_one(c);
        }
    }

    /// Removes a slice's candidates (as added before: a multiset, so an endpoint listed by two
    /// slices stays while either lists it).
    pub fn remove(&mut self, slice: &SliceMembers) {
        for c in &slice.candidates {
            self.remove_one(c);
        }
    }

    /// Replaces a slice's `old` candidates by its `new` ones, touching only the candidates that
    /// differ: both lists are sorted ([`slice_members`]), so this is one walk over 100
    /// candidates and a map update per endpoint that actually changed.
    pub fn replace(&mut self, old: &SliceMembers, new: &SliceMembers) {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let (a, b) = (&old.candidates, &new.candidates);
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let ord = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => candidate_order(x, y),
                (Some(_), None) => Less,
                _ => Greater,
            };
            match ord {
                Less => {
                    self.remove_one(&a[i]);
                    i += 1;
                }
                Greater => {
                    self.add_one(&b[j]);
                    j += 1;
                }
                Equal => {
                    i += 1;
                    j += 1;
                }
            }
        }
    }

    fn add_one(&mut self, c: &Candidate) {
        let claim = (c.state, c.address);
        match self.routes.get_mut(c.route.as_str()) {
            Some(claims) => claims.more.push(claim),
            None => {
                self.routes.insert(c.route.clone(), Claims { first: claim, more: Vec::new() });
            }
        }
    }

    fn remove_one(&mut self, c: &Candidate) {
        let claim = (c.state, c.address);
        let Some(claims) = self.routes.get_mut(c.route.as_str()) else { return };
        if claims.first == claim {
            match claims.more.pop() {
                Some(next) => claims.first = next,
                None => {
                    self.routes.remove(c.route.as_str());
                }
            }
        } else if let Some(k) = claims.more.iter().position(|x| *x == claim) {
            claims.more.swap_remove(k);
        }
    }

    /// Forgets everything (the spec changed: every slice is read again).
    pub fn clear(&mut self) {
        self.routes.clear();
    }

    /// The members: one per route (ready over terminating, then the lowest address, so the
    /// outcome does not depend on slice order), sorted by route, with the all-terminating
    /// fallback.
    pub fn derived(&self, skipped: Vec<Skipped>) -> Derived {
        let mut any_ready = false;
        let mut members: Vec<MemberConfig> = self
            .routes
            .iter()
            .map(|(route, claims)| {
                let (state, address) = claims.best();
                any_ready |= state == EndpointState::Ready;
                let status = if state == EndpointState::Terminating { MemberStatus::Drain } else { MemberStatus::Ok };
                MemberConfig { route: route.clone(), address, load_factor: 1, status, lb_set: 0 }
            })
            .collect();
        let mut terminating = Vec::new();
        for m in &mut members {
            if m.status == MemberStatus::Drain {
                if any_ready {
                    terminating.push(m.route.clone());
                } else {
                    m.status = MemberStatus::Ok;
                }
            }
        }
        Derived { members, terminating, skipped }
    }
}

/// Merges per-slice candidates into members: one per route (ready over terminating, then the
/// lowest address, so the outcome is independent of slice order), the all-terminating fallback,
/// sorted by route. The from-scratch form of [`MemberClaims`].
pub fn merge<'a>(slices: impl IntoIterator<Item = &'a SliceMembers>) -> Derived {
    let mut claims = MemberClaims::default();
    let mut skipped = Vec::new();
    for s in slices {
        skipped.extend(s.skipped.iter().cloned());
        claims.add(s);
    }
    claims.derived(skipped)
}

/// Members of a Service-backed pool from the Service's slices (in any order).
pub fn derive_members<'a>(
    service: &ServiceRef,
    route_from: RouteFrom,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Derived {
    let per_slice: Vec<SliceMembers> =
        slices.into_iter().map(|s| slice_members(s, &service.port, route_from)).collect();
    merge(&per_slice)
}

/// Validates a Service-backed pool with its derived members: the spec's `members:` overrides
/// apply by route, except that a terminating endpoint stays `Drain` even when an override says
/// `Ok` or `HotStandby` (it is going away: it must not take new sessions).
pub fn pool_config(id: PoolId, spec: &BalancerPoolSpec, derived: Derived) -> Result<PoolConfig, Vec<FieldError>> {
    let mut cfg = validate_service_backed(id, spec, derived.members)?;
    // Only an override can have lifted a terminating member out of Drain. Members keep the
    // derivation's route order through validation, so each is found by binary search.
    if !spec.members.is_empty() {
        for route in &derived.terminating {
            if let Ok(i) = cfg.members.binary_search_by(|m| m.route.cmp(route))
                && matches!(cfg.members[i].status, MemberStatus::Ok | MemberStatus::HotStandby)
            {
                cfg.members[i].status = MemberStatus::Drain;
            }
        }
    }
    Ok(cfg)
}

/// The whole derivation in one call: spec + slices → validated pool.
pub fn derive_pool<'a>(
    id: PoolId,
    spec: &BalancerPoolSpec,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Result<PoolConfig, Vec<FieldError>> {
    let derived = match &spec.backend.service {
        Some(svc) => derive_members(svc, spec.backend.route_from.unwrap_or_default(), slices),
        None => Derived::default(),
    };
    pool_config(id, spec, derived)
}

#[cfg(test)]
mod tests;
