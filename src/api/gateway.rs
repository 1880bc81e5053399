//! The Gateway API subset routeid serves, written out here because the `gateway-api` crate is
//! built on kube 4 and does not mix with our kube 5 types.
//!
//! The field names and shapes follow the released CRDs of Gateway API v1.6: `GatewayClass`,
//! `Gateway` and `HTTPRoute` (`gateway.networking.k8s.io/v1`), `ReferenceGrant`
//! (`gateway.networking.k8s.io/v1beta1`), and from the experimental channel the HTTPRoute rule's
//! `sessionPersistence` (GEP-1619) and `XBackendTrafficPolicy`
//! (`gateway.networking.x-k8s.io/v1alpha1`). These are the *raw* forms, permissive like the
//! CRDs' own Go types: the translation in `crate::controller::gateway` checks the values and
//! reports what it does not serve.
//!
//! Fields the Gateway API has and routeid does not serve are not dropped on the floor: the
//! structs a user writes rules in keep them in an `unsupported` map ([`Unknown`]), so the
//! translation can answer `Accepted=False, UnsupportedValue` naming them instead of silently
//! behaving differently. The CRD schemas are the Gateway API project's own; none are generated
//! from these types.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The API group of the standard kinds.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The API group of the experimental `X*` kinds.
pub const X_GROUP: &str = "gateway.networking.x-k8s.io";
/// `GatewayClass.spec.controllerName` of the classes routeid serves.
pub const CONTROLLER_NAME: &str = "routeid.io/gateway-controller";
/// The Gateway API release whose CRDs these types follow (`SupportedVersion` compares the
/// installed CRDs' `gateway.networking.k8s.io/bundle-version` against it).
pub const BUNDLE_VERSION: &str = "v1.6";

/// Fields present in the object that routeid does not read, by name with their value.
pub type Unknown = BTreeMap<String, Value>;

/// A class of Gateways, naming the controller that serves them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GatewayClass",
    status = "GatewayClassStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// `routeid.io/gateway-controller` for the classes routeid serves.
    pub controller_name: String,
    /// Implementation-specific parameters; routeid takes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<Value>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What the controller of a class says about it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassStatus {
    /// `Accepted`, `SupportedVersion`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A set of listeners served by the installation of its class.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The GatewayClass.
    pub gateway_class_name: String,
    /// Where and how requests are accepted.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Requested addresses; routeid cannot assign addresses (they are the Service's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Value>,
    /// Other fields (`infrastructure`, `backendTLS`, `allowedListeners`, …).
    #[serde(flatten)]
    pub unsupported: Unknown,
}

/// One listener: a port, a protocol and optionally a hostname.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Unique within the Gateway; what `sectionName` names.
    pub name: String,
    /// Only requests for this host (or wildcard) are served; none: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The port clients connect to.
    pub port: i32,
    /// `HTTP` or `HTTPS` (others are refused).
    pub protocol: String,
    /// Certificates for `HTTPS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Which routes may attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// `listeners[].tls`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (default) or `Passthrough` (not served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `kubernetes.io/tls` Secrets.
    #[serde(default)]
    pub certificate_refs: Vec<SecretObjectReference>,
    /// Implementation-specific options; none are read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// A reference to a Secret (or another object, which is refused).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectReference {
    /// Empty: the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Default `Secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The name.
    pub name: String,
    /// Default: the Gateway's namespace. Another needs a ReferenceGrant there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `listeners[].allowedRoutes`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    /// From which namespaces; default `Same`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    /// Which route kinds; default: `HTTPRoute` (the only one routeid serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<RouteGroupKind>>,
}

/// `allowedRoutes.namespaces`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (default), `All` or `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The namespaces' labels, with `from: Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A route kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    /// Default `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `HTTPRoute`.
    pub kind: String,
}

/// What the controller says about a Gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Where the Gateway is reachable.
    #[serde(default)]
    pub addresses: Vec<GatewayStatusAddress>,
    /// `Accepted`, `Programmed`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Per listener.
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
}

/// `status.addresses[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatusAddress {
    /// `IPAddress` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub value: String,
}

/// `status.listeners[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// The listener's name.
    pub name: String,
    /// The route kinds that may attach.
    #[serde(default)]
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Routes accepted on this listener.
    pub attached_routes: i32,
    /// `Accepted`, `ResolvedRefs`, `Programmed`, `Conflicted`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// HTTP routing rules attached to Gateway listeners.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced,
    status = "HTTPRouteStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteSpec {
    /// The Gateways (and listeners, by `sectionName`) this route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Hosts; intersected with each listener's hostname.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The rules; none means one rule sending `/` to nothing (404).
    #[serde(default)]
    pub rules: Vec<HTTPRouteRule>,
    /// Fields routeid does not serve.
    #[serde(flatten)]
    pub unsupported: Unknown,
}

/// `parentRefs[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// Default `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Default `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Default: the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Gateway's name.
    pub name: String,
    /// A listener's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A listener's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// One rule: matches, filters, backends, session persistence.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteRule {
    /// Optional rule name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// OR'd; none means `PathPrefix /`.
    #[serde(default)]
    pub matches: Vec<HTTPRouteMatch>,
    /// Applied in order.
    #[serde(default)]
    pub filters: Vec<HTTPRouteFilter>,
    /// Weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<HTTPBackendRef>,
    /// GEP-1619 (experimental channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
    /// Fields routeid does not serve (`timeouts`, `retry`, …).
    #[serde(flatten)]
    pub unsupported: Unknown,
}

/// `matches[]`: every condition given must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteMatch {
    /// Default `PathPrefix /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HTTPPathMatch>,
    /// Header matches.
    #[serde(default)]
    pub headers: Vec<HTTPValueMatch>,
    /// Query parameter matches.
    #[serde(default)]
    pub query_params: Vec<HTTPValueMatch>,
    /// An HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Fields routeid does not serve.
    #[serde(flatten)]
    pub unsupported: Unknown,
}

/// `matches[].path`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPPathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression` (not served).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPValueMatch {
    /// `Exact` (default) or `RegularExpression` (not served).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Header (case-insensitive) or parameter (case-sensitive) name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// `filters[]`: one of the typed members, named by `type`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect`, `URLRewrite`
    /// (served); `RequestMirror`, `CORS`, `ExtensionRef`, … (refused).
    #[serde(rename = "type")]
    pub type_: String,
    /// With `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// With `ResponseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// With `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// With `URLRewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// The configuration of filter types routeid does not serve.
    #[serde(flatten)]
    pub unsupported: Unknown,
}

/// A header to set or add.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct HTTPHeader {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    /// Replace (or add) these headers.
    #[serde(default)]
    pub set: Vec<HTTPHeader>,
    /// Append these.
    #[serde(default)]
    pub add: Vec<HTTPHeader>,
    /// Remove these names.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `RequestRedirect`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Replacement host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Replacement path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HTTPPathModifier>,
    /// Replacement port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// 301 or 302 (default); the experimental channel adds 303, 307, 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
}

/// `URLRewrite`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// Replacement `Host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Replacement path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HTTPPathModifier>,
}

/// A path replacement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPPathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub type_: String,
    /// With `ReplaceFullPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// With `ReplacePrefixMatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// `backendRefs[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPBackendRef {
    /// Default: the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Default `Service` (the only kind served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Service.
    pub name: String,
    /// Default: the route's namespace; another needs a ReferenceGrant there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service port (required for Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Share of new sessions; default 1, 0 sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Per-backend filters (not served).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Value>,
}

/// GEP-1619 session persistence.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionPersistence {
    /// The cookie or header name; a generated one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    /// How long a session lasts after it starts (GEP-2257 duration, e.g. `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout: Option<String>,
    /// How long a session lasts without a request (not served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// `Cookie` (default) or `Header`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Cookie attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_config: Option<CookieConfig>,
}

/// `sessionPersistence.cookieConfig`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CookieConfig {
    /// `Session` (default: no `Expires`/`Max-Age`) or `Permanent` (needs `absoluteTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_type: Option<String>,
}

/// What the controllers say about a route, one entry per parent they serve.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteStatus {
    /// Per parent and controller.
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

/// `status.parents[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent, as the route names it.
    pub parent_ref: ParentReference,
    /// Which controller wrote this entry (only our own are ever replaced).
    pub controller_name: String,
    /// `Accepted`, `ResolvedRefs`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Permits references from one namespace's objects into the namespace of the grant.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1beta1",
    kind = "ReferenceGrant",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantSpec {
    /// Who may refer.
    #[serde(default)]
    pub from: Vec<ReferenceGrantFrom>,
    /// To what, in this namespace.
    #[serde(default)]
    pub to: Vec<ReferenceGrantTo>,
}

/// `from[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReferenceGrantFrom {
    /// The referrer's group (`gateway.networking.k8s.io`).
    pub group: String,
    /// The referrer's kind (`Gateway`, `HTTPRoute`).
    pub kind: String,
    /// The referrer's namespace.
    pub namespace: String,
}

/// `to[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReferenceGrantTo {
    /// `""` for Services and Secrets.
    #[serde(default)]
    pub group: String,
    /// `Service`, `Secret`.
    pub kind: String,
    /// One object only; none: every object of the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Backend traffic settings for a Service, where session persistence is heading upstream.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "gateway.networking.x-k8s.io",
    version = "v1alpha1",
    kind = "XBackendTrafficPolicy",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct XBackendTrafficPolicySpec {
    /// The Services (in the policy's namespace) it applies to.
    #[serde(default)]
    pub target_refs: Vec<LocalPolicyTargetReference>,
    /// Session persistence for the routes' rules that send to these Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
    /// Other fields (`retryConstraint`): not served.
    #[serde(flatten)]
    pub unsupported: Unknown,
}

/// `targetRefs[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalPolicyTargetReference {
    /// `""` for Services.
    #[serde(default)]
    pub group: String,
    /// `Service`.
    pub kind: String,
    /// The Service's name.
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_style_route_reads_with_session_persistence_and_keeps_unknown_fields() {
        let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: web}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  hostnames: ["shop.example.com"]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /cart}
      headers: [{name: x-env, value: canary}]
      queryParams: [{type: Exact, name: v, value: "2"}]
      method: GET
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: b}], remove: [x-c]}
    backendRefs: [{name: shop, port: 8080, weight: 70}, {name: shop-canary, port: 8080, weight: 30}]
    sessionPersistence:
      sessionName: SHOP
      absoluteTimeout: 1h
      type: Cookie
      cookieConfig: {lifetimeType: Permanent}
    timeouts: {request: 10s}
"#;
        let r: HTTPRoute = serde_saphyr::from_str(yaml).unwrap();
        let rule = &r.spec.rules[0];
        assert_eq!(r.spec.parent_refs[0].section_name.as_deref(), Some("http"));
        assert_eq!(rule.matches[0].query_params[0].name, "v");
        assert_eq!(rule.backend_refs[1].weight, Some(30));
        let sp = rule.session_persistence.as_ref().unwrap();
        assert_eq!(sp.absolute_timeout.as_deref(), Some("1h"));
        assert_eq!(sp.cookie_config.as_ref().unwrap().lifetime_type.as_deref(), Some("Permanent"));
        assert_eq!(rule.unsupported.keys().collect::<Vec<_>>(), ["timeouts"]);
        assert!(r.spec.unsupported.is_empty());
    }

    #[test]
    fn a_gateway_with_listeners_and_a_policy_read() {
        let gw: Gateway = serde_saphyr::from_str(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: web}
spec:
  gatewayClassName: routeid
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: a}}}}}
  - name: https
    port: 443
    protocol: HTTPS
    hostname: "*.example.com"
    tls: {certificateRefs: [{name: cert, namespace: certs}]}
"#,
        )
        .unwrap();
        assert_eq!(gw.spec.listeners[1].tls.as_ref().unwrap().certificate_refs[0].namespace.as_deref(), Some("certs"));
        let from = gw.spec.listeners[0].allowed_routes.as_ref().unwrap().namespaces.as_ref().unwrap();
        assert_eq!(from.from.as_deref(), Some("Selector"));
        let p: XBackendTrafficPolicy = serde_saphyr::from_str(
            r#"
apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackendTrafficPolicy
metadata: {name: p, namespace: web}
spec:
  targetRefs: [{group: "", kind: Service, name: shop}]
  sessionPersistence: {type: Header, sessionName: X-Session}
"#,
        )
        .unwrap();
        assert_eq!(p.spec.session_persistence.unwrap().type_.as_deref(), Some("Header"));
    }

    #[test]
    fn the_kinds_have_the_upstream_api_paths() {
        use kube::Resource;
        assert_eq!(HTTPRoute::api_version(&()), "gateway.networking.k8s.io/v1");
        assert_eq!(HTTPRoute::plural(&()), "httproutes");
        assert_eq!(ReferenceGrant::api_version(&()), "gateway.networking.k8s.io/v1beta1");
        assert_eq!(XBackendTrafficPolicy::plural(&()), "xbackendtrafficpolicies");
        assert_eq!(GatewayClass::plural(&()), "gatewayclasses");
    }
}
