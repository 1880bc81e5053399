//! The routing table: every pool, indexed by host and path prefix.
//!
//! A table is immutable once built; the proxy reads it through one `Arc` snapshot per request
//! and a reload publishes a whole new table (pingora's lesson: one snapshot per change).
//!
//! Matching, as ingress-nginx users expect: pools with an exact host first, then wildcard hosts
//! (the longest suffix first), then pools without hosts; within a group the longest path prefix
//! that matches segment-wise wins.

use std::collections::HashMap;
use std::sync::Arc;

use super::config::{HostMatch, PoolConfig, PoolId};
use super::pool::Pool;

/// Two pools claim the same host and prefix: `loser` is left out, `winner` (listed first — the
/// older one) serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The pool that was left out.
    pub loser: PoolId,
    /// The pool that serves the host and prefix.
    pub winner: PoolId,
    /// The contested host (`*` for any) and prefix.
    pub host: String,
    /// The contested prefix.
    pub prefix: String,
}

/// All pools, ready for lookups.
#[derive(Debug, Default)]
pub struct RoutingTable {
    pools: Vec<Arc<Pool>>,
    /// Every config given to [`RoutingTable::build`], conflict losers included, in order: the
    /// next build compares against them to see whether the frontends changed.
    inputs: Vec<Arc<PoolConfig>>,
    frontends: Arc<Frontends>,
}

/// The host and prefix index. It depends only on each pool's id, hosts and prefix, so a
/// rebuild where those are unchanged (members moved, nothing else) shares it as it is.
#[derive(Debug, Default)]
struct Frontends {
    /// Per input, its index in `pools` (`None`: it lost a conflict).
    placed: Vec<Option<usize>>,
    by_id: HashMap<PoolId, usize>,
    exact: HashMap<String, Vec<usize>>,
    wildcard: Vec<(String, Vec<usize>)>,
    any_host: Vec<usize>,
    conflicts: Vec<Conflict>,
}

/// Same id, hosts and prefix: the frontend index does not care about anything else.
fn same_frontend(a: &Arc<PoolConfig>, b: &Arc<PoolConfig>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.id == b.id && a.hosts == b.hosts && a.path_prefix == b.path_prefix && a.path_exact == b.path_exact)
}

impl Frontends {
    fn build(configs: &[Arc<PoolConfig>]) -> Frontends {
        let mut f = Frontends::default();
        let mut claimed: HashMap<(String, &str, bool), &PoolId> = HashMap::new();
        for cfg in configs {
            let keys: Vec<String> = if cfg.hosts.is_empty() {
                vec!["*".to_owned()]
            } else {
                cfg.hosts
                    .iter()
                    .map(|h| match h {
                        HostMatch::Exact(e) => e.clone(),
                        HostMatch::Wildcard(w) => format!("*{w}"),
                    })
                    .collect()
            };
            let prefix = cfg.path_prefix.as_str();
            let exact = cfg.path_exact;
            if let Some((host, winner)) =
                keys.iter().find_map(|k| claimed.get(&(k.clone(), prefix, exact)).map(|w| (k.clone(), (*w).clone())))
            {
                f.conflicts.push(Conflict { loser: cfg.id.clone(), winner, host, prefix: prefix.to_owned() });
                f.placed.push(None);
                continue;
            }
            for k in keys {
                claimed.insert((k, prefix, exact), &cfg.id);
            }
            let idx = f.by_id.len();
            f.placed.push(Some(idx));
            f.by_id.insert(cfg.id.clone(), idx);
            if cfg.hosts.is_empty() {
                f.any_host.push(idx);
            }
            for h in &cfg.hosts {
                match h {
                    HostMatch::Exact(e) => f.exact.entry(e.clone()).or_default().push(idx),
                    HostMatch::Wildcard(w) => match f.wildcard.iter_mut().find(|(s, _)| s == w) {
                        Some((_, v)) => v.push(idx),
                        None => f.wildcard.push((w.clone(), vec![idx])),
                    },
                }
            }
        }
        let placed: Vec<&Arc<PoolConfig>> =
            configs.iter().zip(&f.placed).filter(|(_, p)| p.is_some()).map(|(c, _)| c).collect();
        // Longest first; an exact path before a prefix of the same length.
        let by_prefix_len = |v: &mut Vec<usize>| {
            v.sort_by_key(|&i| (std::cmp::Reverse(placed[i].path_prefix.len()), !placed[i].path_exact))
        };
        f.exact.values_mut().for_each(by_prefix_len);
        f.wildcard.iter_mut().for_each(|(_, v)| by_prefix_len(v));
        by_prefix_len(&mut f.any_host);
        f.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        f
    }
}

impl RoutingTable {
    /// Builds a table from validated pools in priority order (older first). Runtime state of
    /// members is carried over from `previous`. Returns the pools left out by conflicts.
    ///
    /// The cost follows the change: a pool whose config is unchanged is the previous `Pool`
    /// (the same `Arc`), and when no pool's id, hosts or prefix changed the host index is
    /// shared, so republishing 1,000 pools after one of them changed rebuilds one pool.
    pub fn build<C: Into<Arc<PoolConfig>>>(
        configs: Vec<C>,
        previous: Option<&RoutingTable>,
    ) -> (RoutingTable, Vec<Conflict>) {
        let inputs: Vec<Arc<PoolConfig>> = configs.into_iter().map(Into::into).collect();
        let reuse = previous.filter(|p| {
            p.inputs.len() == inputs.len() && p.inputs.iter().zip(&inputs).all(|(a, b)| same_frontend(a, b))
        });
        let frontends = match reuse {
            Some(p) => Arc::clone(&p.frontends),
            None => Arc::new(Frontends::build(&inputs)),
        };
        let mut pools = Vec::with_capacity(frontends.by_id.len());
        for (i, cfg) in inputs.iter().enumerate() {
            if frontends.placed[i].is_none() {
                continue;
            }
            let prev = match reuse {
                // Same inputs in the same places: the previous pool is at the same index.
                Some(p) => p.frontends.placed[i].map(|j| &p.pools[j]),
                None => previous.and_then(|t| t.pool(&cfg.id)),
            };
            // An unchanged pool is the same pool: its members, lb state and everything the proxy
            // keeps beside it are reused as they are (publication cost follows the change).
            match prev {
                Some(p) if Arc::ptr_eq(&p.config, cfg) || p.config == *cfg => pools.push(Arc::clone(p)),
                _ => pools.push(Arc::new(Pool::new(Arc::clone(cfg), prev.map(|p| &**p)))),
            }
        }
        let conflicts = frontends.conflicts.clone();
        (RoutingTable { pools, inputs, frontends }, conflicts)
    }

    /// The index in `previous` of the pool that pool `i` of this table was built from (same
    /// id), found by position first: the common rebuild keeps every pool in its place.
    pub fn previous_index_of(&self, i: usize, previous: &RoutingTable) -> Option<usize> {
        let id = &self.pools.get(i)?.config.id;
        match previous.pools.get(i) {
            Some(p) if p.config.id == *id => Some(i),
            _ => previous.pool_index(id),
        }
    }

    /// All pools, in priority order.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// The pool with this id.
    pub fn pool(&self, id: &PoolId) -> Option<&Arc<Pool>> {
        self.frontends.by_id.get(id).map(|&i| &self.pools[i])
    }

    /// The index of the pool with this id in [`RoutingTable::pools`].
    pub fn pool_index(&self, id: &PoolId) -> Option<usize> {
        self.frontends.by_id.get(id).copied()
    }

    /// The pool for a request: `host` as sent (any case, with or without port), `path` the
    /// request path without query.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Pool>> {
        self.find_index(host, path).map(|i| &self.pools[i])
    }

    /// Like [`RoutingTable::find`], giving the pool's index in [`RoutingTable::pools`].
    pub fn find_index(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(strip_port).filter(|h| !h.is_empty());
        if let Some(host) = host {
            let lowered;
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lowered = host.to_ascii_lowercase();
                lowered.as_str()
            } else {
                host
            };
            if let Some(p) = self.frontends.exact.get(host).and_then(|v| self.first_prefix(v, path)) {
                return Some(p);
            }
            for (suffix, v) in &self.frontends.wildcard {
                if host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && let Some(p) = self.first_prefix(v, path)
                {
                    return Some(p);
                }
            }
        }
        self.first_prefix(&self.frontends.any_host, path)
    }

    fn first_prefix(&self, candidates: &[usize], path: &str) -> Option<usize> {
        candidates.iter().copied().find(|&i| {
            let c = &self.pools[i].config;
            if c.path_exact { exact_matches(&c.path_prefix, path) } else { prefix_matches(&c.path_prefix, path) }
        })
    }
}

/// Segment-wise prefix match: `/shop` matches `/shop`, `/shop/x`, `/shop;jsessionid=...`, not
/// `/shopping`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with(';'),
        None => false,
    }
}

/// Exact match (Ingress `pathType: Exact`); a `;name=value` path parameter after the last segment
/// (`/login;jsessionid=...`) is not part of the path.
pub fn exact_matches(exact: &str, path: &str) -> bool {
    match path.strip_prefix(exact) {
        Some(rest) => rest.is_empty() || rest.starts_with(';'),
        None => false,
    }
}

/// Replaces `prefix` at the start of `path_and_query` by `rewrite`; `None` when nothing changes.
pub fn rewrite_path(prefix: &str, rewrite: &str, path_and_query: &str) -> Option<String> {
    if prefix == rewrite {
        return None;
    }
    let rest = if prefix == "/" { path_and_query } else { path_and_query.strip_prefix(prefix)? };
    let mut out = String::with_capacity(rewrite.len() + rest.len() + 1);
    out.push_str(rewrite.trim_end_matches('/'));
    if !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    // `/shop?x` with rewrite `/` gives `/?x`; `/shop;a=b` gives `/;a=b` — both valid.
    Some(out)
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port → v6
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, hosts: &[&str], prefix: &str) -> PoolConfig {
        let mut b = PoolConfig::test(name).prefix(prefix).member_at("a", "127.0.0.1:1");
        for h in hosts {
            b = b.host(h);
        }
        b.build()
    }

    fn name<'a>(t: &'a RoutingTable, host: Option<&str>, path: &str) -> Option<&'a str> {
        t.find(host, path).map(|p| p.config.id.name.as_str())
    }

    #[test]
    fn host_and_prefix_precedence() {
        let (t, c) = RoutingTable::build(
            vec![
                cfg("catchall", &[], "/"),
                cfg("any-api", &[], "/api"),
                cfg("shop", &["shop.example.com"], "/"),
                cfg("shop-cart", &["shop.example.com"], "/cart"),
                cfg("wild", &["*.example.com"], "/"),
                cfg("wild-deep", &["*.eu.example.com"], "/"),
            ],
            None,
        );
        assert!(c.is_empty());
        assert_eq!(name(&t, Some("shop.example.com"), "/cart/1"), Some("shop-cart"));
        assert_eq!(name(&t, Some("SHOP.example.com:8080"), "/cartx"), Some("shop"));
        assert_eq!(name(&t, Some("x.example.com"), "/"), Some("wild"));
        assert_eq!(name(&t, Some("a.eu.example.com"), "/"), Some("wild-deep"));
        assert_eq!(name(&t, Some("example.com"), "/api/x"), Some("any-api"), "a wildcard needs a label in front");
        assert_eq!(name(&t, None, "/apix"), Some("catchall"));
        assert_eq!(name(&t, Some("[::1]:80"), "/api;jsessionid=x"), Some("any-api"));
    }

    #[test]
    fn an_exact_path_matches_itself_only_and_wins_over_the_same_prefix() {
        let exact = |name: &str, path: &str| {
            let mut c = cfg(name, &["a.com"], path);
            c.path_exact = true;
            c.path_prefix = path.into();
            c
        };
        let (t, c) = RoutingTable::build(
            vec![cfg("prefix", &["a.com"], "/login"), exact("exact", "/login"), exact("slash", "/login/")],
            None,
        );
        assert!(c.is_empty(), "an exact path and a prefix of the same text do not conflict");
        assert_eq!(name(&t, Some("a.com"), "/login"), Some("exact"));
        assert_eq!(name(&t, Some("a.com"), "/login;jsessionid=x.a"), Some("exact"));
        assert_eq!(name(&t, Some("a.com"), "/login/"), Some("slash"));
        assert_eq!(name(&t, Some("a.com"), "/login/x"), Some("prefix"));
        let (_, c) = RoutingTable::build(vec![exact("one", "/a"), exact("two", "/a")], None);
        assert_eq!(c[0].loser.name, "two");
    }

    #[test]
    fn no_match_without_catch_all() {
        let (t, _) = RoutingTable::build(vec![cfg("shop", &["shop.example.com"], "/shop")], None);
        assert_eq!(name(&t, Some("shop.example.com"), "/shopping"), None);
        assert_eq!(name(&t, Some("other"), "/shop"), None);
    }

    #[test]
    fn conflicts_keep_the_first() {
        let (t, c) =
            RoutingTable::build(vec![cfg("old", &["a.com"], "/x"), cfg("new", &["b.com", "a.com"], "/x/")], None);
        assert_eq!(t.pools().len(), 1);
        assert_eq!(c[0].loser.name, "new");
        assert_eq!(c[0].winner.name, "old");
    }

    #[test]
    fn rewrites() {
        assert_eq!(rewrite_path("/shop", "/", "/shop/cart?x=1").as_deref(), Some("/cart?x=1"));
        assert_eq!(rewrite_path("/shop", "/", "/shop").as_deref(), Some("/"));
        assert_eq!(rewrite_path("/shop", "/", "/shop?x").as_deref(), Some("/?x"));
        assert_eq!(rewrite_path("/shop", "/app", "/shop/a").as_deref(), Some("/app/a"));
        assert_eq!(rewrite_path("/", "/app", "/a/b").as_deref(), Some("/app/a/b"));
        assert_eq!(rewrite_path("/x", "/x", "/x/a"), None);
    }

    #[test]
    fn a_rebuild_with_the_same_frontends_shares_the_host_index() {
        let a = Arc::new(cfg("a", &["a.com"], "/"));
        let b = Arc::new(cfg("b", &["b.com"], "/"));
        let loser = Arc::new(cfg("late", &["a.com"], "/"));
        let (t1, c1) = RoutingTable::build(vec![a.clone(), loser.clone(), b.clone()], None);
        assert_eq!(c1.len(), 1);
        // b's members change: same hosts and prefixes everywhere.
        let mut b2 = (*b).clone();
        b2.members[0].address = "127.0.0.1:2".parse().unwrap();
        let (t2, c2) = RoutingTable::build(vec![a.clone(), loser.clone(), Arc::new(b2)], Some(&t1));
        assert!(Arc::ptr_eq(&t1.frontends, &t2.frontends), "host index shared");
        assert_eq!(c1, c2, "and the conflicts it found");
        assert!(Arc::ptr_eq(&t1.pools()[0], &t2.pools()[0]), "a unchanged: the same pool");
        assert!(!Arc::ptr_eq(&t1.pools()[1], &t2.pools()[1]), "b rebuilt");
        assert_eq!(name(&t2, Some("b.com"), "/"), Some("b"));
        assert_eq!(t2.previous_index_of(1, &t1), Some(1), "b, in its place");
        // A host changes: a new index, the loser now serves its own host.
        let moved = Arc::new(cfg("late", &["late.com"], "/"));
        let (t3, c3) = RoutingTable::build(vec![a, moved, b], Some(&t2));
        assert!(!Arc::ptr_eq(&t2.frontends, &t3.frontends) && c3.is_empty());
        assert_eq!(name(&t3, Some("late.com"), "/"), Some("late"));
        assert_eq!(t3.previous_index_of(1, &t2), None, "late is new");
        assert_eq!(t3.previous_index_of(2, &t2), Some(1), "b, found by id");
    }
}
