//! A core-only builder of pool configurations for unit tests, so that the core's tests need
//! neither the user-facing spec nor its validation (`crate::api::validate` checks that the
//! builder's defaults are the validator's).

use std::net::SocketAddr;
use std::time::Duration;

use super::config::{
    DEFAULT_IDLE_TIMEOUT, HealthConfig, HostMatch, MemberConfig, PoolConfig, PoolId, StickyConfig, Timeouts,
};
use super::names::{LbMethodName, MemberStatus};

/// `PoolConfig::test("p").member("a").build()`: a pool in `default` with the validator's
/// defaults, any host, prefix `/`, no stickiness.
pub(crate) struct TestPool {
    cfg: PoolConfig,
}

impl PoolConfig {
    /// Starts a test pool named `name` in namespace `default`.
    pub(crate) fn test(name: &str) -> TestPool {
        TestPool {
            cfg: PoolConfig {
                id: PoolId { namespace: "default".into(), name: name.into() },
                hosts: Vec::new(),
                path_prefix: "/".into(),
                path_exact: false,
                rewrite_prefix: None,
                lb_method: LbMethodName::default(),
                sticky: None,
                members: Vec::new(),
                members_sorted: true,
                retry_after: Duration::from_secs(60),
                max_attempts: 3,
                timeouts: Timeouts {
                    connect: Duration::from_secs(2),
                    response: Duration::from_secs(60),
                    idle: DEFAULT_IDLE_TIMEOUT,
                },
                max_connections: None,
                health: HealthConfig {
                    active: None,
                    fail_on_status: Vec::new(),
                    fail_on_timeout: false,
                    force_recovery: true,
                    slow_start: None,
                },
                tls: Vec::new(),
                https_redirect: false,
                hsts: None,
                backend_tls: None,
            },
        }
    }
}

/// The stickiness a spec's `sticky: {}` validates to: `JSESSIONID|jsessionid`, separator `.`.
pub(crate) fn default_sticky() -> StickyConfig {
    StickyConfig {
        cookie_name: "JSESSIONID".into(),
        param_name: "jsessionid".into(),
        separator: Some(b'.'),
        path_parameter: true,
        cookie: None,
        failover: true,
        change_on_failure: true,
        headers_to_member: false,
        headers_to_client: false,
    }
}

impl TestPool {
    /// Adds a member `route` in state `Ok` at `address`, weight 1, lbSet 0.
    pub(crate) fn member_at(mut self, route: &str, address: &str) -> Self {
        let address: SocketAddr = address.parse().unwrap_or_else(|e| panic!("test address {address:?}: {e}"));
        self.cfg.members.push(MemberConfig {
            route: route.into(),
            address,
            load_factor: 1,
            status: MemberStatus::Ok,
            lb_set: 0,
        });
        self
    }

    /// Gives the last added member an administrative state.
    pub(crate) fn status(mut self, status: MemberStatus) -> Self {
        if let Some(m) = self.cfg.members.last_mut() {
            m.status = status;
        }
        self
    }

    /// Serves `host` (`shop.example.com` or `*.example.com`), as the validator normalises it.
    pub(crate) fn host(mut self, host: &str) -> Self {
        let h = host.to_ascii_lowercase();
        self.cfg.hosts.push(match h.strip_prefix("*.") {
            Some(rest) => HostMatch::Wildcard(format!(".{rest}")),
            None => HostMatch::Exact(h),
        });
        self
    }

    /// Serves the prefix `prefix`, without its trailing `/` as the validator normalises it.
    pub(crate) fn prefix(mut self, prefix: &str) -> Self {
        let trimmed = prefix.trim_end_matches('/');
        self.cfg.path_prefix = if trimmed.is_empty() { "/".into() } else { trimmed.into() };
        self
    }

    /// Makes the pool sticky with the default names, failing over or not.
    pub(crate) fn sticky(mut self, failover: bool) -> Self {
        self.cfg.sticky = Some(StickyConfig { failover, ..default_sticky() });
        self
    }

    /// The configuration; members listed in route order are marked sorted, as validation does.
    pub(crate) fn build(mut self) -> PoolConfig {
        self.cfg.members_sorted = self.cfg.members.windows(2).all(|w| w[0].route < w[1].route);
        self.cfg
    }
}
