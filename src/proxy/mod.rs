//! The data plane: a hyper reverse proxy reading an atomically swapped routing snapshot.
//!
//! - [`Proxy`] holds the current [`Snapshot`] in an `ArcSwap`; [`Proxy::publish`] builds a new
//!   one from validated pools and swaps it in whole. Requests in flight keep the snapshot they
//!   started with; member runtime state is carried over by the core.
//! - [`forward`] is the per-request path: pool lookup, route extraction, member choice, retries.
//! - [`server`] is the listener: HTTP/1.1 and h2c, timeouts, upgrades, graceful drain.
//! - `tunnel` copies upgraded connections (WebSocket) and tracks them for the idle timeout and
//!   the drain.

pub(crate) mod access_log;
pub mod body;
pub(crate) mod coalesce;
pub mod forward;
pub mod gateway;
pub mod headers;
pub mod health;
pub mod listener;
pub mod overrides;
pub mod proxy_protocol;
pub mod response_timer;
pub mod server;
pub mod tls;
pub(crate) mod tunnel;
pub mod upstream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use http::uri::Authority;

use crate::core::config::{FieldError, MemberChange};
use crate::core::session::{SessionKey, WallClock};
use crate::core::table::Conflict;
use crate::core::{Clock, PoolConfig, RoutingTable};
use crate::metrics::{MemberMetrics, Metrics, PoolMetrics};
use upstream::MemberConns;

/// The most a connection buffers in user space in each direction (hyper's read buffer and write
/// queue for HTTP/1, the per-stream send buffer for HTTP/2). A client that reads a response
/// slowly then holds at most about twice this much of the proxy's memory (the member side's
/// read buffer and the client side's write queue); beyond it, backpressure reaches the member
/// through TCP flow control.
pub const MAX_BUF_PER_CONNECTION: usize = 32 * 1024;

/// Listener-wide settings (per-pool settings live in the pool).
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Add `Via` to requests and responses.
    pub via: bool,
    /// Time a new connection has to start its first request, and a client to send a request
    /// head; on HTTP/1.1 keep-alive it is also the wait for the next request (counted from the
    /// end of the last one), which closes silent and slowloris connections.
    pub client_header_timeout: Duration,
    /// A client connection with no request in flight (HTTP/2 PINGs do not count) is closed after
    /// this, and so is an upgraded connection (WebSocket) with no byte either way.
    pub client_idle_timeout: Duration,
    /// On shutdown, how long in-flight requests and upgraded connections may take to finish.
    pub drain_timeout: Duration,
    /// Emit one access-log event per request.
    pub access_log: bool,
    /// Log one request in this many (1: every request).
    pub access_log_sample: u32,
    /// Count requests in Prometheus metrics.
    pub metrics: bool,
    /// Peers whose `X-Forwarded-*` and PROXY protocol headers are believed.
    pub trusted_proxies: listener::TrustedProxies,
    /// The plain listener expects a PROXY protocol header (from trusted peers only).
    pub proxy_protocol: bool,
    /// The TLS listener expects a PROXY protocol header (from trusted peers only).
    pub tls_proxy_protocol: bool,
    /// Time a client has for the PROXY header and the TLS handshake.
    pub handshake_timeout: Duration,
    /// The key that seals Gateway API session values with an `absoluteTimeout`; the same on
    /// every replica. `None`: a random key per process (timed sessions end with it).
    pub session_key: Option<SessionKey>,
    /// The clock session expiry is read on (the system clock; tests move a manual one).
    pub wall_clock: WallClock,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            via: false,
            client_header_timeout: Duration::from_secs(15),
            client_idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            access_log: true,
            access_log_sample: 1,
            metrics: true,
            trusted_proxies: listener::TrustedProxies::default(),
            proxy_protocol: false,
            tls_proxy_protocol: false,
            handshake_timeout: Duration::from_secs(10),
            session_key: None,
            wall_clock: WallClock::System,
        }
    }
}

/// What the proxy keeps per member beside the core member: its connection pool, its authority
/// parsed once, its metric handles and its access-log fields. It lives in the member's runtime
/// ([`crate::core::member::Extension`]), so it is made once per route and address and a
/// republication does no per-member work for it.
#[derive(Debug)]
pub(crate) struct MemberExt {
    pub(crate) conns: Arc<MemberConns>,
    pub(crate) authority: Authority,
    /// `BALANCER_WORKER_NAME` (`http://10.0.0.1:8080`).
    pub(crate) worker_name: HeaderValue,
    pub(crate) metrics: MemberMetrics,
}

/// What the proxy needs beside the core pool.
#[derive(Debug)]
pub(crate) struct PoolExt {
    /// `BALANCER_NAME` (`namespace/name`).
    pub(crate) balancer_name: HeaderValue,
    /// Metric handles of the pool.
    pub(crate) metrics: PoolMetrics,
    /// A Gateway API rule's filters and session header, parsed (`None` for other pools).
    pub(crate) rule: Option<gateway::RuleExt>,
}

/// One immutable routing state: the core table and the proxy's per-pool extras, index-aligned.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The core table.
    pub table: RoutingTable,
    pub(crate) ext: Vec<Arc<PoolExt>>,
    /// The SNI store and the pools' TLS problems, made with the table.
    pub tls: Arc<tls::TlsSnapshot>,
}

/// The reverse proxy's shared state.
#[derive(Debug)]
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    publish_lock: Mutex<()>,
    health: health::HealthChecks,
    /// Upgraded connections, tracked for the idle timeout and the shutdown drain.
    pub(crate) tunnels: tunnel::Tunnels,
    metrics: Arc<Metrics>,
    /// In-memory balancer-manager changes (standalone mode), applied on every publication
    /// (precedence over file edits: see [`overrides`]).
    overlay: Mutex<overrides::Overrides>,
    /// Parsed TLS Secrets; read at publication only.
    tls: Mutex<tls::Certificates>,
    pub(crate) log_counter: std::sync::atomic::AtomicU32,
    pub(crate) clock: Clock,
    pub(crate) settings: ProxySettings,
    /// The session key in use: the configured one, else a random one.
    pub(crate) session_key: Option<SessionKey>,
}

impl Proxy {
    /// A proxy with an empty table (every request gets 404 until the first publish).
    pub fn new(settings: ProxySettings) -> Arc<Proxy> {
        Arc::new(Proxy {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            publish_lock: Mutex::new(()),
            health: health::HealthChecks::default(),
            tunnels: tunnel::Tunnels::default(),
            metrics: Arc::new(Metrics::new()),
            overlay: Mutex::new(overrides::Overrides::default()),
            tls: Mutex::new(tls::Certificates::default()),
            log_counter: std::sync::atomic::AtomicU32::new(0),
            clock: Clock,
            session_key: settings.session_key.clone().or_else(|| SessionKey::random().ok()),
            settings,
        })
    }

    /// The current snapshot (for the admin side and tests).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The metrics registry (the admin listener renders it; the controller counts into it).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The proxy's clock (error deadlines are in its milliseconds).
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Builds a new snapshot from validated pools (older first) and swaps it in atomically.
    /// Returns the pools left out because an older pool claims the same host and prefix.
    /// Configs are taken shared (`Arc`) or owned; an unchanged `Arc` is recognised by pointer.
    pub fn publish<C: Into<Arc<PoolConfig>>>(&self, configs: Vec<C>) -> Vec<Conflict> {
        // Serialise publishers so two reloads cannot both build from the same previous table.
        let _g = self.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.publish_locked(configs.into_iter().map(Into::into).collect())
    }

    /// Sets the Secret that serves TLS clients with no or an unknown server name, and republishes.
    pub fn set_default_tls_secret(&self, secret: Option<tls::SecretRef>) {
        let _g = self.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.tls.lock().unwrap_or_else(|e| e.into_inner()).set_default(secret);
        self.republish_locked();
    }

    /// Records changed Secrets (new content, or why there is none) and republishes the current
    /// pools with them: new handshakes use the new certificates, open connections keep theirs.
    /// Returns the problems found, by Secret, for the caller to report.
    pub fn update_tls_secrets(
        &self,
        changes: &[(tls::SecretRef, Result<tls::TlsData, tls::CertError>)],
    ) -> Vec<(tls::SecretRef, tls::CertError)> {
        let _g = self.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
        let problems = self.apply_secrets(changes);
        self.republish_locked();
        problems
    }

    /// Publishes pools and exactly these Secrets (a standalone file: Secrets it no longer holds
    /// are forgotten) in one swap. A broken Secret keeps its last good certificate.
    pub fn publish_with_secrets<C: Into<Arc<PoolConfig>>>(
        &self,
        configs: Vec<C>,
        secrets: &[(tls::SecretRef, Result<tls::TlsData, tls::CertError>)],
    ) -> (Vec<Conflict>, Vec<(tls::SecretRef, tls::CertError)>) {
        let _g = self.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut certs = self.tls.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<tls::SecretRef> =
                certs.known().filter(|r| !secrets.iter().any(|(s, _)| s == *r)).cloned().collect();
            gone.iter().for_each(|r| certs.forget(r, &self.metrics));
        }
        let problems = self.apply_secrets(secrets);
        (self.publish_locked(configs.into_iter().map(Into::into).collect()), problems)
    }

    /// Why the Secret `r` serves no certificate, if it is known and broken (for status; never
    /// called on the request path).
    pub fn tls_secret_problem(&self, r: &tls::SecretRef) -> Option<tls::CertError> {
        self.tls.lock().unwrap_or_else(|e| e.into_inner()).problem(r).cloned()
    }

    /// Forgets Secrets no pool names any more (their certificates and expiry series go).
    pub fn forget_tls_secrets(&self, gone: &[tls::SecretRef]) {
        let mut certs = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        gone.iter().for_each(|r| certs.forget(r, &self.metrics));
    }

    fn apply_secrets(
        &self,
        changes: &[(tls::SecretRef, Result<tls::TlsData, tls::CertError>)],
    ) -> Vec<(tls::SecretRef, tls::CertError)> {
        let mut certs = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        changes
            .iter()
            .filter_map(|(r, data)| {
                certs.apply(r, data.as_ref().map_err(Clone::clone), &self.metrics).map(|e| (r.clone(), e))
            })
            .collect()
    }

    fn republish_locked(&self) {
        let configs: Vec<Arc<PoolConfig>> =
            self.snapshot().table.pools().iter().map(|p| Arc::clone(&p.config)).collect();
        self.publish_locked(configs);
    }

    /// Records an operator's change to a member in memory (standalone mode) and publishes it.
    /// It is re-applied on every later publication (reloads included) until it is cleared, the
    /// file changes the same field, or the member leaves (see [`overrides`]). `by` says who
    /// made it (shown beside the override).
    pub fn apply_change(
        &self,
        pool: &crate::core::PoolId,
        route: &str,
        change: MemberChange,
        by: String,
    ) -> Result<(), ChangeError> {
        change.validate().map_err(ChangeError::Invalid)?;
        let _g = self.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
        // The published configs carry the overlay already; applying it again is idempotent.
        let configs: Vec<Arc<PoolConfig>> =
            self.snapshot().table.pools().iter().map(|p| Arc::clone(&p.config)).collect();
        let p = configs.iter().find(|c| &c.id == pool).ok_or(ChangeError::NoPool)?;
        let m = p.members.iter().find(|m| m.route == route).ok_or(ChangeError::NoMember)?;
        self.overlay.lock().unwrap_or_else(|e| e.into_inner()).record(pool, m, change, by);
        self.publish_locked(configs);
        Ok(())
    }

    /// Clears the in-memory override of a member and publishes the file's values again.
    /// Returns the override cleared.
    pub fn clear_change(&self, pool: &crate::core::PoolId, route: &str) -> Result<overrides::Override, ChangeError> {
        let _g = self.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
        let snap = self.snapshot();
        let p = snap.table.pool(pool).ok_or(ChangeError::NoPool)?;
        let m = p.member(route).ok_or(ChangeError::NoMember)?;
        let gone = self.overlay.lock().unwrap_or_else(|e| e.into_inner()).clear(pool, route);
        let Some(gone) = gone else { return Err(ChangeError::NoOverride) };
        // The published config carries the override: put the file's values back, then publish.
        let configs: Vec<Arc<PoolConfig>> = snap
            .table
            .pools()
            .iter()
            .map(|q| {
                let mut c = Arc::clone(&q.config);
                if &c.id == pool
                    && let Some(mc) = Arc::make_mut(&mut c).members.iter_mut().find(|x| x.route == m.config.route)
                {
                    gone.file.apply(mc);
                }
                c
            })
            .collect();
        self.publish_locked(configs);
        Ok(gone)
    }

    /// The in-memory override of a member, if any.
    pub fn override_of(&self, pool: &crate::core::PoolId, route: &str) -> Option<overrides::Override> {
        self.overlay.lock().unwrap_or_else(|e| e.into_inner()).get(pool, route).cloned()
    }

    /// Logs the overrides in effect (after a reload of the pools file).
    pub fn log_overrides(&self) {
        self.overlay.lock().unwrap_or_else(|e| e.into_inner()).log_kept();
    }

    /// The proxy's extras of a new pool.
    fn pool_ext(&self, p: &crate::core::Pool) -> PoolExt {
        PoolExt {
            metrics: self.metrics.pool_handles(p),
            balancer_name: HeaderValue::try_from(p.config.id.to_string()).unwrap_or(HeaderValue::from_static("")),
            rule: gateway::RuleExt::of(&p.config),
        }
    }

    /// The proxy's extras of member `i` of `pool`, made on first use (publication makes them
    /// for every new member, so requests find them made). `None` only if another adapter's
    /// state sits in the slot, which this crate never does.
    pub(crate) fn member_ext<'p>(&self, pool: &'p crate::core::Pool, i: usize) -> Option<&'p MemberExt> {
        let m = &pool.members[i];
        m.runtime.extension.get_or_init(|| {
            let addr = m.config.address;
            MemberExt {
                conns: MemberConns::new(addr),
                authority: Authority::try_from(addr.to_string().as_str())
                    .unwrap_or_else(|_| Authority::from_static("invalid.invalid")),
                worker_name: HeaderValue::try_from(format!("http://{addr}")).unwrap_or(HeaderValue::from_static("")),
                metrics: self.metrics.member_handles(&pool.config.id, m.route()),
            }
        })
    }

    fn publish_locked(&self, configs: Vec<Arc<PoolConfig>>) -> Vec<Conflict> {
        let started = std::time::Instant::now();
        let mut configs = configs;
        self.overlay.lock().unwrap_or_else(|e| e.into_inner()).apply(&mut configs);
        let previous = self.snapshot.load_full();
        let (table, conflicts) = RoutingTable::build(configs, Some(&previous.table));
        // Per new pool, the index of the previous pool of the same id, that pool and its extras.
        let prev_at: Vec<Option<usize>> =
            (0..table.pools().len()).map(|i| table.previous_index_of(i, &previous.table)).collect();
        let prevs: Vec<Option<(&Arc<crate::core::Pool>, &Arc<PoolExt>)>> =
            prev_at.iter().map(|j| j.map(|j| (&previous.table.pools()[j], &previous.ext[j]))).collect();
        let ext: Vec<Arc<PoolExt>> = table
            .pools()
            .iter()
            .zip(&prevs)
            .map(|(p, prev)| {
                // Members new to the pool get their extras now, off the request path; the others
                // carry theirs in their runtime.
                if prev.is_none_or(|(pp, _)| !Arc::ptr_eq(pp, p)) {
                    for i in (0..p.members.len()).filter(|&i| p.previous_index(i).is_none()) {
                        self.member_ext(p, i);
                    }
                }
                match prev {
                    Some((_, pe)) => Arc::clone(pe),
                    None => Arc::new(self.pool_ext(p)),
                }
            })
            .collect();
        // Series of members and pools that left.
        let mut survivors = vec![false; previous.table.pools().len()];
        for ((p, prev), j) in table.pools().iter().zip(&prevs).zip(&prev_at) {
            let (Some((old, _)), Some(j)) = (prev, j) else { continue };
            survivors[*j] = true;
            if Arc::ptr_eq(old, p) {
                continue;
            }
            let mut kept = vec![false; old.members.len()];
            for i in 0..p.members.len() {
                if let Some(j) = p.previous_index(i) {
                    kept[j] = true;
                }
            }
            for (m, _) in old.members.iter().zip(&kept).filter(|(_, k)| !**k) {
                // A member that only moved to a new address keeps its route, and its series.
                if p.member_index(m.route()).is_none() {
                    self.metrics.remove_member(&old.config.id, m.route());
                }
            }
        }
        for (old, _) in previous.table.pools().iter().zip(&survivors).filter(|(_, s)| !**s) {
            self.metrics.remove_pool(old);
        }
        if previous.table.pools().is_empty() {
            // Members present at startup are not "joining": no slow start for them (HAProxy).
            for m in table.pools().iter().flat_map(|p| p.members.iter()) {
                m.runtime.set_joined(0);
            }
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            let prev_pools: Vec<Option<&Arc<crate::core::Pool>>> = prevs.iter().map(|p| p.map(|(pp, _)| pp)).collect();
            self.health.reconcile(&table, &prev_pools);
        } else {
            tracing::warn!("published outside a runtime: health checks not started");
        }
        let tls = Arc::new(self.tls.lock().unwrap_or_else(|e| e.into_inner()).build(&table));
        self.metrics.publications.inc();
        self.metrics.publication_seconds.observe(started.elapsed().as_secs_f64());
        self.snapshot.store(Arc::new(Snapshot { table, ext, tls }));
        conflicts
    }
}

/// Why an operator's change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The values are out of range.
    #[error("{0}")]
    Invalid(FieldError),
    /// No such pool.
    #[error("no such pool")]
    NoPool,
    /// The member has no override to clear.
    #[error("the member has no manager override")]
    NoOverride,
    /// No member with that route in the pool.
    #[error("no member with that route in the pool")]
    NoMember,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(members: &[(&str, u16)]) -> Vec<PoolConfig> {
        let m: String = members
            .iter()
            .map(|(r, port)| format!("      - {{address: \"127.0.0.1:{port}\", route: {r}}}\n"))
            .collect();
        let yaml = format!(
            "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: a}}\nspec:\n  frontend: {{pathPrefix: /a}}\n  backend:\n    members:\n{m}---\napiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: b}}\nspec:\n  frontend: {{pathPrefix: /b}}\n  backend:\n    members:\n      - {{address: \"127.0.0.1:9\", route: b0}}\n"
        );
        crate::standalone::parse_pools(&yaml).unwrap()
    }

    #[tokio::test]
    async fn publication_reuses_what_did_not_change() {
        let proxy = Proxy::new(ProxySettings::default());
        proxy.publish(pools(&[("x", 1), ("y", 2)]));
        let first = proxy.snapshot();
        proxy.publish(pools(&[("x", 1), ("y", 2)]));
        let same = proxy.snapshot();
        for i in 0..2 {
            assert!(Arc::ptr_eq(&first.table.pools()[i], &same.table.pools()[i]), "an unchanged pool is reused");
            assert!(Arc::ptr_eq(&first.ext[i], &same.ext[i]), "and its extras");
        }
        // y moves, z joins: pool a is rebuilt, x keeps its connection pool, pool b is untouched.
        proxy.publish(pools(&[("x", 1), ("y", 3), ("z", 4)]));
        let changed = proxy.snapshot();
        assert!(!Arc::ptr_eq(&same.table.pools()[0], &changed.table.pools()[0]));
        let conns = |s: &Snapshot, i: usize| {
            let ext = s.table.pools()[0].members[i].runtime.extension.get::<MemberExt>();
            Arc::clone(&ext.expect("made at publication").conns)
        };
        assert!(Arc::ptr_eq(&conns(&same, 0), &conns(&changed, 0)), "x kept its warm connections");
        assert!(!Arc::ptr_eq(&conns(&same, 1), &conns(&changed, 1)), "y moved: new connections");
        assert!(Arc::ptr_eq(&same.table.pools()[1], &changed.table.pools()[1]));
        assert!(Arc::ptr_eq(&same.table.pools()[0].members[0].runtime, &changed.table.pools()[0].members[0].runtime));
    }

    #[tokio::test]
    async fn a_state_change_keeps_the_proxy_extras_whole() {
        let proxy = Proxy::new(ProxySettings::default());
        let yaml = |status: &str| {
            format!(
                "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: a}}\nspec:\n  backend:\n    members:\n      - {{address: \"127.0.0.1:1\", route: x}}\n      - {{address: \"127.0.0.1:2\", route: y}}\n  members:\n    - {{route: x, status: {status}}}\n"
            )
        };
        proxy.publish(crate::standalone::parse_pools(&yaml("Ok")).unwrap());
        let before = proxy.snapshot();
        proxy.publish(crate::standalone::parse_pools(&yaml("Drain")).unwrap());
        let after = proxy.snapshot();
        assert!(!Arc::ptr_eq(&before.table.pools()[0], &after.table.pools()[0]), "the pool is rebuilt");
        assert_eq!(after.table.pools()[0].members[0].config.status, crate::api::MemberStatus::Drain);
        assert!(Arc::ptr_eq(&before.ext[0], &after.ext[0]), "the pool's extras are kept");
        for (b, a) in before.table.pools()[0].members.iter().zip(&after.table.pools()[0].members) {
            let (b, a) = (b.runtime.extension.get::<MemberExt>(), a.runtime.extension.get::<MemberExt>());
            assert!(Arc::ptr_eq(&b.unwrap().conns, &a.unwrap().conns), "and each member's, in its runtime");
        }
    }
}
