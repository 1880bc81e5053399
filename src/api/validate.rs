//! Spec → validated pool configuration.
//!
//! Every problem is reported with its field path (`spec.backend.members[1].address: ...`), all
//! problems at once, so a user fixes a file in one pass. The result is a core [`PoolConfig`],
//! which cannot hold an invalid value: the proxy never re-checks what was validated here. It
//! lives in `api`, beside the spec it reads, so that the core depends on nothing user-facing.

use std::net::SocketAddr;
use std::time::Duration;

use crate::api::{self, BalancerPoolSpec};
use crate::core::config::{
    ActiveCheck, BackendTlsConfig, CookieConfig, DEFAULT_IDLE_TIMEOUT, FieldError, HealthConfig, HostMatch,
    MAX_ATTEMPTS, MAX_CONNECTIONS, MAX_ROUTE_LEN, MemberConfig, PoolConfig, PoolId, StickyConfig, Timeouts, TlsEntry,
    is_token, is_valid_route,
};
use crate::core::names::{CookieMode, CookieSecure, MemberStatus, SameSite};
use crate::core::route::Route;

struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), reason: reason.into() });
    }

    fn duration(&mut self, path: &str, raw: Option<&str>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.add(path, "must be longer than zero");
                    default
                }
                Err(_) => {
                    self.add(path, format!("{s:?} is not a duration like 60s, 500ms or 1m30s"));
                    default
                }
            },
        }
    }
}

fn normalise_prefix(p: &mut Problems, path: &str, raw: &str) -> String {
    if !raw.starts_with('/') {
        p.add(path, format!("{raw:?} must start with \"/\""));
    }
    if raw.bytes().any(|b| b == b'?' || b == b'#' || b == b';' || b.is_ascii_whitespace() || b.is_ascii_control()) {
        p.add(path, format!("{raw:?} may not contain '?', '#', ';', spaces or control characters"));
    }
    let trimmed = raw.trim_end_matches('/');
    if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() }
}

fn host_match(p: &mut Problems, path: &str, raw: &str) -> Option<HostMatch> {
    let h = raw.to_ascii_lowercase();
    let (wild, rest) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    let valid = !rest.is_empty()
        && rest.len() <= 253
        && rest
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !valid {
        p.add(path, format!("{raw:?} is not a host name or a \"*.domain\" wildcard"));
        return None;
    }
    Some(if wild { HostMatch::Wildcard(format!(".{rest}")) } else { HostMatch::Exact(rest.to_owned()) })
}

/// The attributes for plain and for HTTPS requests, which differ only in `Secure` under `Auto`.
fn cookie_attributes(c: &api::RouteCookie, p: &mut Problems, max_age: Option<Duration>) -> (String, String) {
    let mut a = String::new();
    let path = c.path.as_deref().unwrap_or("/");
    if !path.starts_with('/') || path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
        p.add(
            "spec.sticky.cookie.path",
            format!("{path:?} must start with \"/\" and hold no ';' or control characters"),
        );
    }
    a.push_str("; Path=");
    a.push_str(path);
    if let Some(d) = &c.domain {
        let ok = !d.is_empty() && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            p.add("spec.sticky.cookie.domain", format!("{d:?} is not a domain"));
        }
        a.push_str("; Domain=");
        a.push_str(d);
    }
    if let Some(m) = max_age {
        a.push_str(&format!("; Max-Age={}", m.as_secs()));
    }
    let mut rest = String::new();
    if c.http_only.unwrap_or(true) {
        rest.push_str("; HttpOnly");
    }
    match c.same_site {
        Some(SameSite::Strict) => rest.push_str("; SameSite=Strict"),
        Some(SameSite::Lax) => rest.push_str("; SameSite=Lax"),
        Some(SameSite::None) => {
            if c.secure == CookieSecure::Never {
                p.add(
                    "spec.sticky.cookie.sameSite",
                    "None requires secure: Auto or Always (browsers drop it otherwise)",
                );
            }
            rest.push_str("; SameSite=None");
        }
        None => {}
    }
    let (plain, secure) = match c.secure {
        CookieSecure::Always => (true, true),
        CookieSecure::Auto => (false, true),
        CookieSecure::Never => (false, false),
    };
    let render = |s: bool| format!("{a}{}{rest}", if s { "; Secure" } else { "" });
    (render(plain), render(secure))
}

fn sticky_config(s: &api::Sticky, p: &mut Problems) -> StickyConfig {
    let (cookie_name, param_name) = match s.names.as_slice() {
        [] => ("JSESSIONID".to_owned(), "jsessionid".to_owned()),
        [one] => (one.clone(), one.clone()),
        [a, b] => (a.clone(), b.clone()),
        _ => {
            p.add("spec.sticky.names", "takes one name, or two: [cookie name, URL parameter name]");
            (s.names[0].clone(), s.names[1].clone())
        }
    };
    for (i, n) in s.names.iter().enumerate().take(2) {
        if !is_token(n) {
            p.add(
                format!("spec.sticky.names[{i}]"),
                format!("{n:?} is not a cookie/parameter name (an RFC 6265 token)"),
            );
        }
    }
    let separator = match s.separator.as_deref() {
        None => Some(b'.'),
        Some("") => None,
        Some(sep)
            if sep.len() == 1 && sep.as_bytes()[0].is_ascii_graphic() && !b";,=\"\\".contains(&sep.as_bytes()[0]) =>
        {
            Some(sep.as_bytes()[0])
        }
        Some(sep) => {
            p.add(
                "spec.sticky.separator",
                format!("{sep:?} must be one visible ASCII character other than ; , = \" \\, or \"\" for none"),
            );
            Some(b'.')
        }
    };
    let cookie = s.cookie.as_ref().map(|c| {
        if !is_token(&c.name) {
            p.add("spec.sticky.cookie.name", format!("{:?} is not a cookie token (RFC 6265)", c.name));
        }
        if c.mode != CookieMode::Insert && c.name != cookie_name {
            p.add(
                "spec.sticky.cookie.name",
                format!(
                    "{:?} mode works on the session cookie: name must be {cookie_name:?} (sticky.names[0])",
                    c.mode
                ),
            );
        }
        let max_age = c.max_age.as_deref().map(|m| p.duration("spec.sticky.cookie.maxAge", Some(m), Duration::ZERO));
        let expires = c.expires.as_deref().map(|m| p.duration("spec.sticky.cookie.expires", Some(m), Duration::ZERO));
        let conditional_same_site_none =
            c.conditional_same_site_none == Some(true) && c.same_site == Some(SameSite::None);
        let (attributes, secure_attributes) = cookie_attributes(c, p, max_age);
        CookieConfig {
            name: c.name.clone(),
            mode: c.mode,
            indirect: c.indirect.unwrap_or(true),
            nocache: c.nocache.unwrap_or(true),
            attributes,
            conditional_same_site_none,
            expires,
            secure_attributes,
        }
    });
    let debug = s.debug_headers.clone().unwrap_or_default();
    StickyConfig {
        cookie_name,
        param_name,
        separator,
        path_parameter: s.path_parameter.unwrap_or(true),
        cookie,
        failover: s.failover.unwrap_or(true),
        change_on_failure: s.change_on_failure.unwrap_or(true),
        headers_to_member: debug.to_member,
        headers_to_client: debug.to_client,
        persistence: None,
    }
}

/// Validates a spec whose members are static (standalone mode).
///
/// `backend.service` is refused here: it needs the controller.
pub fn validate_static(id: PoolId, spec: &BalancerPoolSpec) -> Result<PoolConfig, Vec<FieldError>> {
    let mut p = Problems(Vec::new());
    if spec.backend.service.is_some() {
        p.add("spec.backend.service", "needs the Kubernetes controller; a standalone file lists backend.members");
    }
    let members = static_members(&mut p, spec);
    let sorted = members.windows(2).all(|w| w[0].route < w[1].route);
    let cfg = validate_with_members(&mut p, id, spec, members, sorted);
    if p.0.is_empty() { Ok(cfg) } else { Err(p.0) }
}

/// Validates a spec whose members were derived from a Service's endpoints (controller mode).
///
/// `members` come from the controller's derivation; the spec's `members:` overrides (weight,
/// state) are applied to them by route here, exactly as for static members, so both sources
/// share one validation. Static `backend.members` are refused: a pool has one source.
/// `members` are strictly ordered by route, as the derivation produces them.
pub fn validate_service_backed(
    id: PoolId,
    spec: &BalancerPoolSpec,
    members: Vec<MemberConfig>,
) -> Result<PoolConfig, Vec<FieldError>> {
    let mut p = Problems(Vec::new());
    if spec.backend.service.is_none() {
        p.add("spec.backend.service", "is required: the controller derives members from a Service");
    }
    if !spec.backend.members.is_empty() {
        p.add("spec.backend.members", "must be empty when backend.service is set (exactly one source of members)");
    }
    // Derived members come sorted by route: the derivation's contract (see its tests), checked
    // in debug builds rather than paid for on every republication.
    debug_assert!(members.windows(2).all(|w| w[0].route < w[1].route));
    let cfg = validate_with_members(&mut p, id, spec, members, true);
    if p.0.is_empty() { Ok(cfg) } else { Err(p.0) }
}

fn static_members(p: &mut Problems, spec: &BalancerPoolSpec) -> Vec<MemberConfig> {
    let mut out: Vec<MemberConfig> = Vec::with_capacity(spec.backend.members.len());
    for (i, m) in spec.backend.members.iter().enumerate() {
        let path = format!("spec.backend.members[{i}]");
        let address = match m.address.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                p.add(
                    format!("{path}.address"),
                    format!("{:?} is not an ip:port address (e.g. 127.0.0.1:8081 or [::1]:8081)", m.address),
                );
                continue;
            }
        };
        if !is_valid_route(&m.route) {
            p.add(
                format!("{path}.route"),
                format!("{:?} must be 1–{MAX_ROUTE_LEN} characters of A-Z a-z 0-9 - _ . : ~", m.route),
            );
            continue;
        }
        if out.iter().any(|o| o.route == m.route) {
            p.add(format!("{path}.route"), format!("{:?} is used by another member of this pool", m.route));
            continue;
        }
        let load_factor = m.load_factor.unwrap_or(1);
        if !(1..=100).contains(&load_factor) {
            p.add(format!("{path}.loadFactor"), format!("{load_factor} is outside 1–100"));
        }
        let lb_set = m.lb_set.unwrap_or(0);
        if lb_set > 99 {
            p.add(format!("{path}.lbSet"), format!("{lb_set} is outside 0–99"));
        }
        out.push(MemberConfig {
            route: Route::from(m.route.as_str()),
            address,
            load_factor,
            status: MemberStatus::Ok,
            lb_set,
        });
    }
    out
}

fn validate_with_members(
    p: &mut Problems,
    id: PoolId,
    spec: &BalancerPoolSpec,
    mut members: Vec<MemberConfig>,
    members_sorted: bool,
) -> PoolConfig {
    let hosts: Vec<HostMatch> = spec
        .frontend
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| host_match(p, &format!("spec.frontend.hosts[{i}]"), h))
        .collect();
    let tls = tls_entries(p, &spec.frontend.tls, &hosts);
    let backend_tls = spec.backend.tls.as_ref().map(|t| backend_tls(p, t, spec.health.active.is_some()));
    let hsts = spec.frontend.hsts.as_ref().map(hsts_value);
    let raw_prefix = spec.frontend.path_prefix.as_deref().unwrap_or("/");
    let path_exact = spec.frontend.path_type == Some(api::PathType::Exact);
    let mut path_prefix = normalise_prefix(p, "spec.frontend.pathPrefix", raw_prefix);
    if path_exact {
        // Exact keeps a trailing slash: `/a/` and `/a` are two paths.
        path_prefix = raw_prefix.to_owned();
    }
    let rewrite_prefix =
        spec.frontend.rewrite_prefix.as_deref().map(|r| normalise_prefix(p, "spec.frontend.rewritePrefix", r));
    for (i, o) in spec.members.iter().enumerate() {
        let path = format!("spec.members[{i}]");
        if let Some(lf) = o.load_factor
            && !(1..=100).contains(&lf)
        {
            p.add(format!("{path}.loadFactor"), format!("{lf} is outside 1–100"));
        }
        if spec.members[..i].iter().any(|e| e.route == o.route) {
            p.add(format!("{path}.route"), format!("{:?} has two overrides", o.route));
        }
        // An override for a route that is not (yet) a member is kept silently: with Services,
        // a pod may come back under the same name.
        let found = if members_sorted {
            members.binary_search_by(|m| m.route.as_bytes().cmp(o.route.as_bytes())).ok()
        } else {
            members.iter().position(|m| m.route == o.route)
        };
        if let Some(m) = found.map(|i| &mut members[i]) {
            if let Some(lf) = o.load_factor {
                m.load_factor = lf.clamp(1, 100);
            }
            if let Some(s) = o.status {
                m.status = s;
            }
            if let Some(set) = o.lb_set {
                m.lb_set = set.min(99);
            }
        }
        if let Some(set) = o.lb_set
            && set > 99
        {
            p.add(format!("{path}.lbSet"), format!("{set} is outside 0–99"));
        }
    }
    let sticky = spec.sticky.as_ref().map(|s| sticky_config(s, p));
    let max_attempts = spec.health.passive.max_attempts.unwrap_or(3);
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        p.add("spec.health.passive.maxAttempts", format!("{max_attempts} is outside 1–{MAX_ATTEMPTS}"));
    }
    let t = &spec.timeouts;
    let timeouts = Timeouts {
        connect: p.duration("spec.timeouts.connect", t.connect.as_deref(), Duration::from_secs(2)),
        response: p.duration("spec.timeouts.response", t.response.as_deref(), Duration::from_secs(60)),
        idle: p.duration("spec.timeouts.idle", t.idle.as_deref(), DEFAULT_IDLE_TIMEOUT),
    };
    let max_connections = spec.backend.max_connections;
    if let Some(n) = max_connections
        && !(1..=MAX_CONNECTIONS).contains(&n)
    {
        p.add("spec.backend.maxConnections", format!("{n} is outside 1–{MAX_CONNECTIONS} (leave it out for no limit)"));
    }
    PoolConfig {
        id,
        hosts,
        path_prefix,
        path_exact,
        rewrite_prefix,
        lb_method: spec.lb_method,
        sticky,
        members,
        members_sorted,
        retry_after: p.duration(
            "spec.health.passive.retryAfter",
            spec.health.passive.retry_after.as_deref(),
            Duration::from_secs(60),
        ),
        max_attempts: max_attempts.clamp(1, MAX_ATTEMPTS),
        timeouts,
        max_connections: max_connections.map(|n| n.clamp(1, MAX_CONNECTIONS)),
        health: health_config(p, &spec.health),
        tls,
        https_redirect: spec.frontend.https_redirect.unwrap_or(false),
        hsts,
        backend_tls,
        gateway: None,
    }
}

fn status_ranges(p: &mut Problems, path: &str, raw: &str) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
            (Ok(lo), Ok(hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => out.push((lo, hi)),
            _ => p.add(path, format!("{part:?} is not a status or a range like 200-399")),
        }
    }
    out
}

/// Validates `frontend.tls`: a certificate may only be named for hosts the pool serves, so one
/// tenant cannot put its certificate on another tenant's host; no hosts means all of them. A
/// pool that serves any host (no `frontend.hosts`) names no certificate at all: any host it
/// named could be another tenant's.
fn tls_entries(p: &mut Problems, raw: &[api::FrontendTls], pool_hosts: &[HostMatch]) -> Vec<TlsEntry> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        let path = format!("spec.frontend.tls[{i}]");
        if pool_hosts.is_empty() {
            p.add(
                path,
                "a pool that serves any host (no spec.frontend.hosts) cannot name certificates; \
                 list its hosts, or use --default-tls-secret",
            );
            continue;
        }
        let n = &t.secret_name;
        let dns = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
        if n.is_empty() || n.len() > 253 || !n.bytes().all(dns) {
            p.add(format!("{path}.secretName"), format!("{n:?} is not a Secret name"));
        }
        let mut hosts = Vec::with_capacity(t.hosts.len());
        for (j, h) in t.hosts.iter().enumerate() {
            let hpath = format!("{path}.hosts[{j}]");
            let Some(m) = host_match(p, &hpath, h) else { continue };
            if !pool_hosts.contains(&m) {
                p.add(hpath, format!("{h:?} is not one of spec.frontend.hosts"));
                continue;
            }
            hosts.push(m);
        }
        if t.hosts.is_empty() {
            hosts = pool_hosts.to_vec();
        }
        out.push(TlsEntry { hosts, secret_name: n.clone(), namespace: None });
    }
    out
}

/// Validates `backend.tls`: a CA unless verification is explicitly off, a DNS server name.
fn backend_tls(p: &mut Problems, t: &api::BackendTls, active_checks: bool) -> BackendTlsConfig {
    let insecure = t.insecure_skip_verify.unwrap_or(false);
    if t.ca_secret_name.is_none() && !insecure {
        p.add("spec.backend.tls.caSecretName", "is required unless insecureSkipVerify is true");
    }
    if let Some(n) = &t.ca_secret_name
        && (n.is_empty() || !n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'))
    {
        p.add("spec.backend.tls.caSecretName", format!("{n:?} is not a Secret name"));
    }
    if let Some(n) = &t.server_name
        && rustls_pki_types::ServerName::try_from(n.as_str()).is_err()
    {
        p.add("spec.backend.tls.serverName", format!("{n:?} is not a DNS name or an IP address"));
    }
    if active_checks {
        p.add("spec.health.active", "active health checks speak plain HTTP: not supported with backend.tls yet");
    }
    BackendTlsConfig {
        ca_secret_name: t.ca_secret_name.clone(),
        server_name: t.server_name.clone(),
        insecure_skip_verify: insecure,
    }
}

/// The `Strict-Transport-Security` value (RFC 6797 §6.1).
fn hsts_value(h: &api::Hsts) -> String {
    let mut v = format!("max-age={}", h.max_age.unwrap_or(31_536_000));
    if h.include_sub_domains {
        v.push_str("; includeSubDomains");
    }
    if h.preload {
        v.push_str("; preload");
    }
    v
}

fn health_config(p: &mut Problems, h: &api::Health) -> HealthConfig {
    let active = h.active.as_ref().map(|a| {
        let path = a.path.clone().unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            p.add("spec.health.active.path", format!("{path:?} must start with \"/\" and hold no spaces"));
        }
        let bounded = |p: &mut Problems, field: &str, v: Option<u32>, default: u32| {
            let v = v.unwrap_or(default);
            if !(1..=100).contains(&v) {
                p.add(format!("spec.health.active.{field}"), format!("{v} is outside 1–100"));
            }
            v.clamp(1, 100)
        };
        ActiveCheck {
            method: a.method.unwrap_or_default(),
            path,
            interval: p.duration("spec.health.active.interval", a.interval.as_deref(), Duration::from_secs(5)),
            timeout: p.duration("spec.health.active.timeout", a.timeout.as_deref(), Duration::from_secs(2)),
            passes: bounded(p, "passes", a.passes, 2),
            fails: bounded(p, "fails", a.fails, 3),
            expect_status: status_ranges(
                p,
                "spec.health.active.expectStatus",
                a.expect_status.as_deref().unwrap_or("200-399"),
            ),
            expect_body: a.expect_body.clone().filter(|b| !b.is_empty()),
        }
    });
    for (i, s) in h.passive.fail_on_status.iter().enumerate() {
        if !(100..=599).contains(s) {
            p.add(format!("spec.health.passive.failOnStatus[{i}]"), format!("{s} is not an HTTP status"));
        }
    }
    HealthConfig {
        active,
        fail_on_status: h.passive.fail_on_status.clone(),
        fail_on_timeout: h.passive.fail_on_timeout.unwrap_or(false),
        force_recovery: h.passive.force_recovery.unwrap_or(true),
        slow_start: h.slow_start.as_deref().map(|s| p.duration("spec.health.slowStart", Some(s), Duration::ZERO)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Backend, Frontend, StaticMember};

    fn spec(members: &[(&str, &str)]) -> BalancerPoolSpec {
        BalancerPoolSpec {
            backend: Backend {
                members: members
                    .iter()
                    .map(|(a, r)| StaticMember {
                        address: (*a).into(),
                        route: (*r).into(),
                        load_factor: None,
                        lb_set: None,
                    })
                    .collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn id() -> PoolId {
        PoolId { namespace: "default".into(), name: "p".into() }
    }

    #[test]
    fn the_core_test_builder_matches_validation() {
        let mut s = spec(&[("127.0.0.1:2", "b"), ("127.0.0.1:1", "a")]);
        s.frontend.hosts = vec!["Shop.Example.com".into(), "*.example.org".into()];
        s.frontend.path_prefix = Some("/shop/".into());
        s.members =
            vec![api::MemberOverride { route: "a".into(), status: Some(MemberStatus::Drain), ..Default::default() }];
        s.sticky = Some(api::Sticky { failover: Some(false), ..Default::default() });
        let built = PoolConfig::test("p")
            .host("Shop.Example.com")
            .host("*.example.org")
            .prefix("/shop/")
            .member_at("b", "127.0.0.1:2")
            .member_at("a", "127.0.0.1:1")
            .status(MemberStatus::Drain)
            .sticky(false)
            .build();
        assert_eq!(validate_static(id(), &s).unwrap(), built);
    }

    #[test]
    fn defaults_are_applied() {
        let c = validate_static(id(), &spec(&[("127.0.0.1:1", "a")])).unwrap();
        assert_eq!(c.path_prefix, "/");
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.retry_after, Duration::from_secs(60));
        assert_eq!(c.timeouts.connect, Duration::from_secs(2));
        assert_eq!(c.timeouts.idle, Duration::from_secs(4), "below Node's 5 s keep-alive");
        assert_eq!(c.max_connections, None, "no cap unless asked");
        assert_eq!(c.members[0].load_factor, 1);
    }

    #[test]
    fn max_connections_is_checked() {
        let mut s = spec(&[("127.0.0.1:1", "a")]);
        s.backend.max_connections = Some(8);
        assert_eq!(validate_static(id(), &s).unwrap().max_connections, Some(8));
        for bad in [0, MAX_CONNECTIONS + 1] {
            s.backend.max_connections = Some(bad);
            let errs = validate_static(id(), &s).unwrap_err();
            assert_eq!(errs[0].path, "spec.backend.maxConnections", "{bad}");
            assert!(errs[0].reason.contains("no limit"), "{}", errs[0]);
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut s = spec(&[("nope", "a"), ("127.0.0.1:2", "b c"), ("127.0.0.1:3", "x"), ("127.0.0.1:4", "x")]);
        s.frontend = Frontend {
            hosts: vec!["bad host".into()],
            path_prefix: Some("shop".into()),
            rewrite_prefix: None,
            ..Default::default()
        };
        s.timeouts.connect = Some("2 parsecs".into());
        s.backend.members[2].load_factor = Some(0);
        let errs = validate_static(id(), &s).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.backend.members[0].address",
                "spec.backend.members[1].route",
                "spec.backend.members[2].loadFactor",
                "spec.backend.members[3].route",
                "spec.frontend.hosts[0]",
                "spec.frontend.pathPrefix",
                "spec.timeouts.connect",
            ]
        );
        assert!(errs[6].reason.contains("2 parsecs"), "{}", errs[6]);
    }

    #[test]
    fn prefixes_and_hosts_are_normalised() {
        let mut s = spec(&[("[::1]:80", "a")]);
        s.frontend = Frontend {
            hosts: vec!["Shop.Example.com".into(), "*.example.org".into()],
            path_prefix: Some("/shop/".into()),
            rewrite_prefix: Some("/".into()),
            ..Default::default()
        };
        let c = validate_static(id(), &s).unwrap();
        assert_eq!(c.hosts, [HostMatch::Exact("shop.example.com".into()), HostMatch::Wildcard(".example.org".into())]);
        assert_eq!(c.path_prefix, "/shop");
        assert_eq!(c.rewrite_prefix.as_deref(), Some("/"));
    }

    #[test]
    fn service_backend_is_refused_in_standalone() {
        let mut s = spec(&[]);
        s.backend.service = Some(api::ServiceRef {
            name: "x".into(),
            port: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80),
        });
        let errs = validate_static(id(), &s).unwrap_err();
        assert_eq!(errs[0].path, "spec.backend.service");
    }

    #[test]
    fn overrides_apply_to_members() {
        let mut s = spec(&[("127.0.0.1:1", "a"), ("127.0.0.1:2", "b")]);
        s.members = vec![api::MemberOverride {
            route: "b".into(),
            load_factor: Some(7),
            status: Some(MemberStatus::Drain),
            lb_set: None,
        }];
        let c = validate_static(id(), &s).unwrap();
        assert_eq!((c.members[1].load_factor, c.members[1].status), (7, MemberStatus::Drain));
    }

    #[test]
    fn sticky_cookie_is_validated() {
        let mut s = spec(&[("127.0.0.1:1", "a")]);
        s.sticky = Some(api::Sticky {
            names: vec!["JSESSIONID".into(), "jsessionid".into()],
            separator: Some("::".into()),
            cookie: Some(api::RouteCookie {
                name: "ROUTE ID".into(),
                same_site: Some(SameSite::None),
                secure: CookieSecure::Never,
                ..Default::default()
            }),
            ..Default::default()
        });
        let errs = validate_static(id(), &s).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.sticky.separator", "spec.sticky.cookie.name", "spec.sticky.cookie.sameSite"]);
    }

    #[test]
    fn cookie_attributes_are_rendered() {
        let mut s = spec(&[("127.0.0.1:1", "a")]);
        s.sticky = Some(api::Sticky {
            cookie: Some(api::RouteCookie {
                name: "ROUTEID".into(),
                secure: CookieSecure::Always,
                same_site: Some(SameSite::Lax),
                max_age: Some("1h".into()),
                domain: Some("example.com".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let c = validate_static(id(), &s).unwrap();
        let cookie = c.sticky.unwrap().cookie.unwrap();
        assert_eq!(cookie.attributes, "; Path=/; Domain=example.com; Max-Age=3600; Secure; HttpOnly; SameSite=Lax");
        assert_eq!((cookie.expires, cookie.conditional_same_site_none), (None, false));
        assert_eq!(cookie.secure_attributes, cookie.attributes);
    }

    #[test]
    fn expires_and_conditional_same_site_none() {
        let mut s = spec(&[("127.0.0.1:1", "a")]);
        s.sticky = Some(api::Sticky {
            cookie: Some(api::RouteCookie {
                name: "ROUTEID".into(),
                secure: CookieSecure::Always,
                same_site: Some(SameSite::None),
                expires: Some("2h".into()),
                conditional_same_site_none: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        let c = validate_static(id(), &s).unwrap();
        let cookie = c.sticky.unwrap().cookie.unwrap();
        assert_eq!(cookie.attributes, "; Path=/; Secure; HttpOnly; SameSite=None");
        assert!(cookie.conditional_same_site_none);
        assert_eq!(cookie.expires, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn an_exact_path_keeps_its_trailing_slash() {
        let mut s = spec(&[("127.0.0.1:1", "a")]);
        s.frontend.path_prefix = Some("/a/".into());
        s.frontend.path_type = Some(api::PathType::Exact);
        let c = validate_static(id(), &s).unwrap();
        assert_eq!((c.path_prefix.as_str(), c.path_exact), ("/a/", true));
    }

    #[test]
    fn secure_auto_differs_by_scheme_and_the_old_bool_still_reads() {
        let auto: api::RouteCookie = serde_saphyr::from_str("{name: R}").unwrap();
        assert_eq!(auto.secure, CookieSecure::Auto);
        let mut s = spec(&[("127.0.0.1:1", "a")]);
        s.sticky = Some(api::Sticky { cookie: Some(auto), ..Default::default() });
        let cookie = validate_static(id(), &s).unwrap().sticky.unwrap().cookie.unwrap();
        assert_eq!(cookie.attributes, "; Path=/; HttpOnly");
        assert_eq!(cookie.secure_attributes, "; Path=/; Secure; HttpOnly");
        for (yaml, want) in
            [("true", CookieSecure::Always), ("false", CookieSecure::Never), ("Never", CookieSecure::Never)]
        {
            let c: api::RouteCookie = serde_saphyr::from_str(&format!("{{name: R, secure: {yaml}}}")).unwrap();
            assert_eq!(c.secure, want, "{yaml}");
        }
        assert!(serde_saphyr::from_str::<api::RouteCookie>("{name: R, secure: Sometimes}").is_err());
    }

    #[test]
    fn backend_tls_needs_a_ca_unless_told_not_to_verify() {
        let mut s = spec(&[("127.0.0.1:1", "a")]);
        s.backend.tls = Some(api::BackendTls { server_name: Some("bad name".into()), ..Default::default() });
        s.health.active = Some(Default::default());
        let errs = validate_static(id(), &s).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.backend.tls.caSecretName", "spec.backend.tls.serverName", "spec.health.active"]);
        s.health.active = None;
        s.backend.tls = Some(api::BackendTls { insecure_skip_verify: Some(true), ..Default::default() });
        let c = validate_static(id(), &s).unwrap();
        assert!(c.backend_tls.unwrap().insecure_skip_verify);
    }

    #[test]
    fn tls_entries_name_only_the_pools_hosts() {
        let mut s = spec(&[("127.0.0.1:1", "a")]);
        s.frontend.hosts = vec!["shop.example.com".into(), "*.example.org".into()];
        s.frontend.tls = vec![
            api::FrontendTls { hosts: vec!["Shop.example.com".into()], secret_name: "shop-tls".into() },
            api::FrontendTls { hosts: vec![], secret_name: "all".into() },
        ];
        s.frontend.hsts = Some(api::Hsts { max_age: Some(60), include_sub_domains: true, preload: false });
        let c = validate_static(id(), &s).unwrap();
        assert_eq!(c.tls[0].hosts, [HostMatch::Exact("shop.example.com".into())]);
        assert_eq!(c.tls[1].hosts, c.hosts, "no hosts: every host of the pool");
        assert_eq!(c.hsts.as_deref(), Some("max-age=60; includeSubDomains"));
        s.frontend.tls =
            vec![api::FrontendTls { hosts: vec!["bank.example.net".into()], secret_name: "Bad_Name".into() }];
        let errs = validate_static(id(), &s).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.frontend.tls[0].secretName", "spec.frontend.tls[0].hosts[0]"]);
    }

    #[test]
    fn a_pool_serving_any_host_names_no_certificate() {
        let mut s = spec(&[("127.0.0.1:1", "a")]);
        for hosts in [vec!["bank.example.com".to_owned()], vec![]] {
            s.frontend.tls = vec![api::FrontendTls { hosts, secret_name: "evil".into() }];
            let errs = validate_static(id(), &s).unwrap_err();
            let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(paths, ["spec.frontend.tls[0]"]);
        }
    }
}
