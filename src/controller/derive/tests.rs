//! The derivation table: conditions, route sources, ports, duplicates, IPv6, several slices,
//! the all-terminating fallback.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::api::{Backend, MemberOverride};

/// A slice fixture.
struct S(EndpointSlice);

fn slice(name: &str) -> S {
    S(EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: Vec::new(),
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        ports: Some(Vec::new()),
    })
}

impl S {
    fn v6(mut self) -> S {
        self.0.address_type = "IPv6".into();
        self
    }
    fn port(mut self, name: &str, n: i32) -> S {
        let name = (!name.is_empty()).then(|| name.to_owned());
        self.0.ports.get_or_insert_default().push(EndpointPort {
            name,
            port: Some(n),
            protocol: Some("TCP".into()),
            app_protocol: None,
        });
        self
    }
    fn ep(mut self, e: E) -> S {
        self.0.endpoints.push(e.0);
        self
    }
}

/// An endpoint fixture: ready by default (no conditions at all).
struct E(Endpoint);

fn ep(addr: &str, pod: &str) -> E {
    E(Endpoint {
        addresses: vec![addr.into()],
        target_ref: Some(ObjectReference { kind: Some("Pod".into()), name: Some(pod.into()), ..Default::default() }),
        ..Default::default()
    })
}

impl E {
    fn cond(mut self, ready: Option<bool>, serving: Option<bool>, terminating: Option<bool>) -> E {
        self.0.conditions = Some(EndpointConditions { ready, serving, terminating });
        self
    }
    fn terminating(self) -> E {
        self.cond(Some(false), Some(true), Some(true))
    }
    fn hostname(mut self, h: &str) -> E {
        self.0.hostname = Some(h.into());
        self
    }
    fn no_target(mut self) -> E {
        self.0.target_ref = None;
        self
    }
}

fn svc(port: IntOrString) -> ServiceRef {
    ServiceRef { name: "shop".into(), port }
}

fn http() -> ServiceRef {
    svc(IntOrString::String("http".into()))
}

fn members(d: &Derived) -> Vec<(String, String, MemberStatus)> {
    d.members.iter().map(|m| (m.route.to_string(), m.address.to_string(), m.status)).collect()
}

fn m(route: &str, addr: &str, status: MemberStatus) -> (String, String, MemberStatus) {
    (route.into(), addr.into(), status)
}

use MemberStatus::{Drain, Ok as Up};

#[test]
fn ready_terminating_and_not_serving() {
    let s = slice("s1")
        .port("http", 8080)
        .ep(ep("10.0.0.1", "a"))
        .ep(ep("10.0.0.2", "b").cond(Some(true), Some(true), Some(false)))
        .ep(ep("10.0.0.3", "c").terminating())
        .ep(ep("10.0.0.4", "d").cond(Some(false), Some(false), Some(true)))
        .ep(ep("10.0.0.5", "e").cond(Some(false), Some(false), Some(false)))
        .ep(ep("10.0.0.6", "f").cond(Some(false), None, None));
    let d = derive_members(&http(), RouteFrom::PodName, [&s.0]);
    assert_eq!(members(&d), [m("a", "10.0.0.1:8080", Up), m("b", "10.0.0.2:8080", Up), m("c", "10.0.0.3:8080", Drain)]);
    assert_eq!(d.terminating, ["c"]);
}

#[test]
fn missing_ready_means_ready_and_missing_serving_follows_ready() {
    assert_eq!(endpoint_state(&ep("10.0.0.1", "a").0), Some(EndpointState::Ready));
    assert_eq!(endpoint_state(&ep("10.0.0.1", "a").cond(None, None, None).0), Some(EndpointState::Ready));
    // An old API server that sets only ready/terminating: a terminating endpoint that is not
    // ready is not serving either.
    assert_eq!(endpoint_state(&ep("10.0.0.1", "a").cond(Some(false), None, Some(true)).0), None);
    // A missing ready on a terminating endpoint: serving (ready defaults to true) + terminating.
    assert_eq!(endpoint_state(&ep("10.0.0.1", "a").cond(None, None, Some(true)).0), Some(EndpointState::Terminating));
}

#[test]
fn all_terminating_take_all_traffic() {
    let s = slice("s1").port("http", 80).ep(ep("10.0.0.1", "a").terminating()).ep(ep("10.0.0.2", "b").terminating());
    let d = derive_members(&http(), RouteFrom::PodName, [&s.0]);
    assert_eq!(members(&d), [m("a", "10.0.0.1:80", Up), m("b", "10.0.0.2:80", Up)]);
    assert!(d.terminating.is_empty(), "no longer draining: they are all there is");
}

#[test]
fn route_sources() {
    let s = slice("s1").port("http", 80).ep(ep("10.0.0.1", "pod-a").hostname("web-0")).ep(ep("10.0.0.2", "pod-b"));
    let by_pod = derive_members(&http(), RouteFrom::PodName, [&s.0]);
    assert_eq!(members(&by_pod), [m("pod-a", "10.0.0.1:80", Up), m("pod-b", "10.0.0.2:80", Up)]);
    let by_host = derive_members(&http(), RouteFrom::Hostname, [&s.0]);
    assert_eq!(members(&by_host), [m("web-0", "10.0.0.1:80", Up)]);
    assert_eq!(by_host.skipped, [Skipped::NoRoute { slice: "s1".into(), count: 1 }]);
    let by_addr = derive_members(&http(), RouteFrom::Address, [&s.0]);
    assert_eq!(members(&by_addr), [m("10.0.0.1", "10.0.0.1:80", Up), m("10.0.0.2", "10.0.0.2:80", Up)]);
}

#[test]
fn endpoint_without_pod_name_is_skipped_and_reported() {
    let s = slice("s1").port("http", 80).ep(ep("10.0.0.1", "a")).ep(ep("10.0.0.2", "x").no_target());
    let d = derive_members(&http(), RouteFrom::PodName, [&s.0]);
    assert_eq!(members(&d), [m("a", "10.0.0.1:80", Up)]);
    assert_eq!(d.skipped[0].to_string(), "EndpointSlice s1: 1 endpoint(s) without a usable route");
}

#[test]
fn named_port_is_resolved_per_slice() {
    let s1 = slice("s1").port("metrics", 9090).port("http", 8080).ep(ep("10.0.0.1", "a"));
    let s2 = slice("s2").port("http", 8081).ep(ep("10.0.0.2", "b"));
    let d = derive_members(&http(), RouteFrom::PodName, [&s1.0, &s2.0]);
    assert_eq!(members(&d), [m("a", "10.0.0.1:8080", Up), m("b", "10.0.0.2:8081", Up)]);
}

#[test]
fn numbered_port_matches_the_endpoint_port() {
    let s1 = slice("s1").port("", 8080).ep(ep("10.0.0.1", "a"));
    let s2 = slice("s2").port("http", 9000).ep(ep("10.0.0.2", "b"));
    let d = derive_members(&svc(IntOrString::Int(8080)), RouteFrom::PodName, [&s1.0, &s2.0]);
    assert_eq!(members(&d), [m("a", "10.0.0.1:8080", Up)]);
    assert_eq!(d.skipped, [Skipped::NoMatchingPort { slice: "s2".into() }]);
}

#[test]
fn udp_ports_do_not_match() {
    let mut s = slice("s1").port("http", 80).ep(ep("10.0.0.1", "a"));
    s.0.ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    assert!(derive_members(&http(), RouteFrom::PodName, [&s.0]).members.is_empty());
}

#[test]
fn slice_with_no_matching_port() {
    let s = slice("s1").port("grpc", 9000).ep(ep("10.0.0.1", "a"));
    let d = derive_members(&http(), RouteFrom::PodName, [&s.0]);
    assert!(d.members.is_empty());
    assert_eq!(d.skipped, [Skipped::NoMatchingPort { slice: "s1".into() }]);
}

#[test]
fn duplicate_endpoints_in_two_slices_count_once() {
    let s1 = slice("s1").port("http", 80).ep(ep("10.0.0.1", "a").terminating()).ep(ep("10.0.0.2", "b"));
    let s2 = slice("s2").port("http", 80).ep(ep("10.0.0.1", "a")).ep(ep("10.0.0.2", "b"));
    for order in [[&s1.0, &s2.0], [&s2.0, &s1.0]] {
        let d = derive_members(&http(), RouteFrom::PodName, order);
        assert_eq!(members(&d), [m("a", "10.0.0.1:80", Up), m("b", "10.0.0.2:80", Up)], "ready wins");
    }
}

#[test]
fn same_pod_name_on_two_addresses_picks_the_ready_one() {
    // A StatefulSet pod recreated: the old address is terminating, the new one ready.
    let s1 = slice("s1").port("http", 80).ep(ep("10.0.0.9", "web-0").terminating());
    let s2 = slice("s2").port("http", 80).ep(ep("10.0.0.3", "web-0"));
    let d = derive_members(&http(), RouteFrom::PodName, [&s1.0, &s2.0]);
    assert_eq!(members(&d), [m("web-0", "10.0.0.3:80", Up)]);
}

#[test]
fn ipv6_addresses_are_formatted_right() {
    let s = slice("s1").v6().port("http", 8080).ep(ep("fd00:0:0:0::1", "a")).ep(ep("not-an-ip", "b"));
    let d = derive_members(&http(), RouteFrom::PodName, [&s.0]);
    assert_eq!(members(&d), [m("a", "[fd00::1]:8080", Up)]);
    let by_addr = derive_members(&http(), RouteFrom::Address, [&s.0]);
    assert_eq!(by_addr.members[0].route, "fd00::1");
}

#[test]
fn fqdn_slices_are_skipped() {
    let mut s = slice("s1").port("http", 80).ep(ep("example.com", "a"));
    s.0.address_type = "FQDN".into();
    let d = derive_members(&http(), RouteFrom::PodName, [&s.0]);
    assert!(d.members.is_empty());
    assert_eq!(d.skipped, [Skipped::NotIp { slice: "s1".into() }]);
}

#[test]
fn empty_slices_give_no_members_and_no_complaint() {
    let s1 = slice("s1");
    let s2 = slice("s2").port("http", 80);
    let d = derive_members(&http(), RouteFrom::PodName, [&s1.0, &s2.0]);
    assert_eq!(d, Derived::default());
    assert_eq!(derive_members(&http(), RouteFrom::PodName, []), Derived::default());
}

#[test]
fn two_slices_merge_in_route_order_whatever_the_slice_order() {
    let s1 = slice("s1").port("http", 80).ep(ep("10.0.0.4", "d")).ep(ep("10.0.0.2", "b"));
    let s2 = slice("s2").port("http", 80).ep(ep("10.0.0.3", "c")).ep(ep("10.0.0.1", "a"));
    let a = derive_members(&http(), RouteFrom::PodName, [&s1.0, &s2.0]);
    let b = derive_members(&http(), RouteFrom::PodName, [&s2.0, &s1.0]);
    assert_eq!(a, b);
    let routes: Vec<_> = a.members.iter().map(|m| m.route.as_str()).collect();
    assert_eq!(routes, ["a", "b", "c", "d"]);
}

fn pool_spec(overrides: Vec<MemberOverride>) -> BalancerPoolSpec {
    BalancerPoolSpec {
        backend: Backend { service: Some(http()), ..Default::default() },
        members: overrides,
        ..Default::default()
    }
}

fn id() -> PoolId {
    PoolId { namespace: "web".into(), name: "shop".into() }
}

#[test]
fn spec_overrides_apply_by_route_but_terminating_stays_drain() {
    let s = slice("s1").port("http", 80).ep(ep("10.0.0.1", "a")).ep(ep("10.0.0.2", "b").terminating());
    let spec = pool_spec(vec![
        MemberOverride { route: "a".into(), load_factor: Some(5), status: Some(MemberStatus::Disabled), lb_set: None },
        MemberOverride { route: "b".into(), load_factor: None, status: Some(MemberStatus::Ok), lb_set: None },
        MemberOverride { route: "gone".into(), load_factor: Some(2), status: None, lb_set: None },
    ]);
    let cfg = derive_pool(id(), &spec, [&s.0]).unwrap();
    let got: Vec<_> = cfg.members.iter().map(|m| (m.route.as_str(), m.load_factor, m.status)).collect();
    assert_eq!(got, [("a", 5, MemberStatus::Disabled), ("b", 1, MemberStatus::Drain)]);
}

#[test]
fn a_pool_needs_exactly_one_source() {
    let mut spec = pool_spec(Vec::new());
    spec.backend.members = vec![crate::api::StaticMember {
        address: "127.0.0.1:1".into(),
        route: "x".into(),
        load_factor: None,
        lb_set: None,
    }];
    let errs = derive_pool(id(), &spec, []).unwrap_err();
    assert_eq!(errs[0].path, "spec.backend.members");
    spec.backend = Backend::default();
    let errs = derive_pool(id(), &spec, []).unwrap_err();
    assert_eq!(errs[0].path, "spec.backend.service");
}

#[test]
fn invalid_spec_fields_are_reported_with_paths() {
    let mut spec = pool_spec(Vec::new());
    spec.timeouts.connect = Some("soon".into());
    let errs = derive_pool(id(), &spec, []).unwrap_err();
    assert_eq!(errs[0].path, "spec.timeouts.connect");
}
