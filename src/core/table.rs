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
use super::gateway::{PathMatch, RequestMatch, RouteOrder};
use super::pool::Pool;
use super::sticky::percent_decode;

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

/// One way into a pool: the pool's index in `pools`, and which of its Gateway API matches
/// ([`NO_MATCH`]: the pool's own host-and-prefix frontend, or a rule without matches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    pool: u32,
    rule_match: u32,
}

/// [`Entry::rule_match`] of a pool without Gateway API matches.
const NO_MATCH: u32 = u32::MAX;

/// The host and prefix index. It depends only on each pool's id, hosts, prefix and Gateway API
/// matches, so a rebuild where those are unchanged (members moved, nothing else) shares it.
#[derive(Debug, Default)]
struct Frontends {
    /// Per input, its index in `pools` (`None`: it lost a conflict).
    placed: Vec<Option<usize>>,
    by_id: HashMap<PoolId, usize>,
    exact: HashMap<String, Vec<Entry>>,
    wildcard: Vec<(String, Vec<Entry>)>,
    any_host: Vec<Entry>,
    conflicts: Vec<Conflict>,
}

/// Same id, hosts, prefix and matches: the frontend index does not care about anything else.
fn same_frontend(a: &Arc<PoolConfig>, b: &Arc<PoolConfig>) -> bool {
    fn rule(c: &PoolConfig) -> Option<(&[RequestMatch], &RouteOrder)> {
        c.gateway.as_ref().map(|g| (g.matches.as_slice(), &g.order))
    }
    Arc::ptr_eq(a, b)
        || (a.id == b.id
            && a.hosts == b.hosts
            && a.path_prefix == b.path_prefix
            && a.path_exact == b.path_exact
            && rule(a) == rule(b))
}

/// A request as the matcher sees it. `headers` gives the first value of a lower-case header.
pub struct RequestFacts<'a, H> {
    /// The host as sent (any case, with or without port).
    pub host: Option<&'a str>,
    /// The path, without query.
    pub path: &'a str,
    /// The query, without `?`.
    pub query: Option<&'a str>,
    /// The method as on the wire.
    pub method: &'a str,
    /// The request's headers.
    pub headers: &'a H,
    /// Whether the client's connection is secure: TLS at routeid, or a trusted front proxy said
    /// `https`. A Gateway API rule served on the other kind only is skipped.
    pub secure: bool,
}

/// Where the matcher reads request headers from (the proxy's header map; `()` for none), so
/// the core needs no HTTP library.
pub trait HeaderSource {
    /// The first value of header `name` (given in lower case).
    fn first(&self, name: &str) -> Option<&[u8]>;
}

impl HeaderSource for () {
    fn first(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

/// The pool a request goes to, and the Gateway API match that chose it.
#[derive(Clone, Copy, Debug)]
pub struct Found<'a> {
    /// The pool's index in [`RoutingTable::pools`].
    pub pool: usize,
    /// The rule's match that held (`None`: a pool without Gateway API matches).
    pub rule_match: Option<&'a RequestMatch>,
}

/// The Gateway API precedence of an entry, most specific first: an Exact path before a
/// PathPrefix, the longer path first, a method match, more header matches, more query matches;
/// then the oldest route, its `namespace/name`, the rule's index, the match's index. A pool
/// without a rule (BalancerPool, Ingress) has the same path keys, and ties go to it before any
/// rule, then to the older pool (listed first).
type Precedence<'a> = (
    bool,
    std::cmp::Reverse<usize>,
    bool,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
    Option<&'a RouteOrder>,
    u32,
    usize,
);

fn precedence<'a>(cfg: &'a PoolConfig, rule_match: u32, pool: usize) -> Precedence<'a> {
    use std::cmp::Reverse;
    let m = cfg.gateway.as_ref().and_then(|g| g.matches.get(rule_match as usize));
    let (exact, len) = match m {
        Some(m) => (matches!(m.path, PathMatch::Exact(_)), m.path.value().len()),
        None if cfg.gateway.is_some() => (false, 1),
        None => (cfg.path_exact, cfg.path_prefix.len()),
    };
    let (method, headers, query) = m.map_or((false, 0, 0), |m| (m.method.is_some(), m.headers.len(), m.query.len()));
    (
        !exact,
        Reverse(len),
        !method,
        Reverse(headers),
        Reverse(query),
        cfg.gateway.as_ref().map(|g| &g.order),
        rule_match,
        pool,
    )
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
            // Gateway API rules never conflict: equal matches are ordered by precedence.
            if cfg.gateway.is_none() {
                if let Some((host, winner)) = keys
                    .iter()
                    .find_map(|k| claimed.get(&(k.clone(), prefix, exact)).map(|w| (k.clone(), (*w).clone())))
                {
                    f.conflicts.push(Conflict { loser: cfg.id.clone(), winner, host, prefix: prefix.to_owned() });
                    f.placed.push(None);
                    continue;
                }
                for k in keys {
                    claimed.insert((k, prefix, exact), &cfg.id);
                }
            }
            let idx = f.by_id.len();
            f.placed.push(Some(idx));
            f.by_id.insert(cfg.id.clone(), idx);
            let entries: Vec<Entry> = match cfg.gateway.as_ref().map(|g| g.matches.len()).filter(|&n| n > 0) {
                Some(n) => (0..n as u32).map(|m| Entry { pool: idx as u32, rule_match: m }).collect(),
                None => vec![Entry { pool: idx as u32, rule_match: NO_MATCH }],
            };
            if cfg.hosts.is_empty() {
                f.any_host.extend_from_slice(&entries);
            }
            for h in &cfg.hosts {
                match h {
                    HostMatch::Exact(e) => f.exact.entry(e.clone()).or_default().extend_from_slice(&entries),
                    HostMatch::Wildcard(w) => match f.wildcard.iter_mut().find(|(s, _)| s == w) {
                        Some((_, v)) => v.extend_from_slice(&entries),
                        None => f.wildcard.push((w.clone(), entries.clone())),
                    },
                }
            }
        }
        let placed: Vec<&Arc<PoolConfig>> =
            configs.iter().zip(&f.placed).filter(|(_, p)| p.is_some()).map(|(c, _)| c).collect();
        let by_precedence = |v: &mut Vec<Entry>| {
            v.sort_by_cached_key(|e| precedence(placed[e.pool as usize], e.rule_match, e.pool as usize))
        };
        f.exact.values_mut().for_each(by_precedence);
        f.wildcard.iter_mut().for_each(|(_, v)| by_precedence(v));
        by_precedence(&mut f.any_host);
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

    /// The pool for a `GET` with no query and no headers over a secure connection (the
    /// question the certificate store asks): `host` as sent (any case, with or without port),
    /// `path` the request path without query.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Pool>> {
        self.find_index(host, path).map(|i| &self.pools[i])
    }

    /// Like [`RoutingTable::find`], giving the pool's index in [`RoutingTable::pools`].
    pub fn find_index(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let req = RequestFacts { host, path, query: None, method: "GET", headers: &(), secure: true };
        self.find_request(&req).map(|f| f.pool)
    }

    /// The pool for a request, by host first (exact, then the longest wildcard, then pools
    /// for any host) and, among the pools of a host, by Gateway API match precedence; a Gateway
    /// API rule not served on this kind of connection is passed over as if it did not match.
    /// No allocation unless the host has upper-case letters.
    pub fn find_request<'s, H: HeaderSource>(&'s self, req: &RequestFacts<'_, H>) -> Option<Found<'s>> {
        let host = req.host.map(strip_port).filter(|h| !h.is_empty());
        if let Some(host) = host {
            let lowered;
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lowered = host.to_ascii_lowercase();
                lowered.as_str()
            } else {
                host
            };
            if let Some(p) = self.frontends.exact.get(host).and_then(|v| self.first_match(v, req)) {
                return Some(p);
            }
            for (suffix, v) in &self.frontends.wildcard {
                if host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && let Some(p) = self.first_match(v, req)
                {
                    return Some(p);
                }
            }
        }
        self.first_match(&self.frontends.any_host, req)
    }

    fn first_match<'s, H: HeaderSource>(&'s self, entries: &[Entry], req: &RequestFacts<'_, H>) -> Option<Found<'s>> {
        entries.iter().find_map(|e| {
            let c = &self.pools[e.pool as usize].config;
            let found = |rule_match| Some(Found { pool: e.pool as usize, rule_match });
            if c.gateway.as_ref().is_some_and(|g| !g.served_on.serves(req.secure)) {
                return None;
            }
            match c.gateway.as_ref().and_then(|g| g.matches.get(e.rule_match as usize)) {
                Some(m) => {
                    if request_matches(m, req) {
                        found(Some(m))
                    } else {
                        None
                    }
                }
                None if c.gateway.is_some() => found(None),
                None => {
                    let hit = if c.path_exact {
                        exact_matches(&c.path_prefix, req.path)
                    } else {
                        prefix_matches(&c.path_prefix, req.path)
                    };
                    if hit { found(None) } else { None }
                }
            }
        })
    }
}

/// Whether every condition of a Gateway API match holds for the request.
pub fn request_matches<H: HeaderSource>(m: &RequestMatch, req: &RequestFacts<'_, H>) -> bool {
    let path = match &m.path {
        PathMatch::Exact(p) => exact_matches(p, req.path),
        PathMatch::Prefix(p) => prefix_matches(p, req.path),
    };
    path && m.method.as_deref().is_none_or(|want| want == req.method)
        && m.headers.iter().all(|h| req.headers.first(&h.name).is_some_and(|v| v == h.value.as_bytes()))
        && m.query.iter().all(|q| {
            req.query
                .and_then(|query| query_value(query, &q.name))
                .is_some_and(|v| *percent_decode(v.as_bytes()) == *q.value.as_bytes())
        })
}

/// The value of the first `name=value` pair of a query (`name` alone has the empty value).
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| match pair.split_once('=') {
        Some((n, v)) if n == name => Some(v),
        None if pair == name => Some(""),
        _ => None,
    })
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

    use crate::core::gateway::{GatewayRule, HeaderMatch, QueryMatch};

    /// A Gateway API pool: one rule of route `ns/route` created at `created`, with `matches`.
    fn rule(name: &str, hosts: &[&str], created: i64, route: &str, idx: u32, matches: Vec<RequestMatch>) -> PoolConfig {
        let mut c = cfg(name, hosts, "/");
        c.gateway = Some(GatewayRule {
            matches,
            order: RouteOrder { created_unix: created, route: route.into(), rule: idx },
            ..Default::default()
        });
        c
    }

    fn prefix(p: &str) -> RequestMatch {
        RequestMatch { path: PathMatch::Prefix(p.into()), ..Default::default() }
    }

    fn exact(p: &str) -> RequestMatch {
        RequestMatch { path: PathMatch::Exact(p.into()), ..Default::default() }
    }

    struct Headers(&'static [(&'static str, &'static str)]);

    impl HeaderSource for Headers {
        fn first(&self, name: &str) -> Option<&[u8]> {
            self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes())
        }
    }

    fn route_for<'t>(t: &'t RoutingTable, host: &str, method: &str, pq: &str, headers: &Headers) -> Option<&'t str> {
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        let req = RequestFacts { host: Some(host), path, query, method, headers, secure: false };
        t.find_request(&req).map(|f| t.pools()[f.pool].config.id.name.as_str())
    }

    #[test]
    fn gateway_precedence_path_then_method_headers_query() {
        let with = |mut m: RequestMatch, f: &dyn Fn(&mut RequestMatch)| {
            f(&mut m);
            m
        };
        let hdr = |n: &str, v: &str| HeaderMatch { name: n.into(), value: v.into() };
        let qp = |n: &str, v: &str| QueryMatch { name: n.into(), value: v.into() };
        let (t, c) = RoutingTable::build(
            vec![
                rule("root", &["a.com"], 1, "ns/r", 0, vec![prefix("/")]),
                rule("long", &["a.com"], 1, "ns/r", 1, vec![prefix("/api/v1")]),
                rule("api", &["a.com"], 1, "ns/r", 2, vec![prefix("/api")]),
                rule("exact", &["a.com"], 9, "ns/z", 0, vec![exact("/api")]),
                rule("post", &["a.com"], 9, "ns/z", 1, vec![with(prefix("/api"), &|m| m.method = Some("POST".into()))]),
                rule(
                    "one-h",
                    &["a.com"],
                    9,
                    "ns/z",
                    2,
                    vec![with(prefix("/api"), &|m| m.headers = vec![hdr("x-a", "1")])],
                ),
                rule(
                    "two-h",
                    &["a.com"],
                    9,
                    "ns/z",
                    3,
                    vec![with(prefix("/api"), &|m| m.headers = vec![hdr("x-a", "1"), hdr("x-b", "2")])],
                ),
                rule(
                    "query",
                    &["a.com"],
                    9,
                    "ns/z",
                    4,
                    vec![with(prefix("/api"), &|m| m.query = vec![qp("v", "a b")])],
                ),
            ],
            None,
        );
        assert!(c.is_empty(), "rules never conflict");
        let none = Headers(&[]);
        assert_eq!(route_for(&t, "a.com", "GET", "/api", &none), Some("exact"), "Exact over any prefix");
        assert_eq!(route_for(&t, "a.com", "POST", "/api", &none), Some("exact"));
        assert_eq!(route_for(&t, "a.com", "GET", "/api/v1/x", &none), Some("long"), "the longest prefix");
        assert_eq!(route_for(&t, "a.com", "POST", "/api/x", &Headers(&[("x-a", "1")])), Some("post"), "method first");
        let both = Headers(&[("x-a", "1"), ("x-b", "2")]);
        assert_eq!(route_for(&t, "a.com", "GET", "/api/x?v=a%20b", &both), Some("two-h"), "most headers");
        assert_eq!(route_for(&t, "a.com", "GET", "/api/x?v=a%20b", &Headers(&[("x-a", "1")])), Some("one-h"));
        assert_eq!(route_for(&t, "a.com", "GET", "/api/x?w=1&v=a%20b", &none), Some("query"), "then query");
        assert_eq!(route_for(&t, "a.com", "GET", "/api/x?v=other", &Headers(&[("x-a", "2")])), Some("api"));
        assert_eq!(route_for(&t, "a.com", "GET", "/apix", &none), Some("root"), "segment-wise prefixes");
    }

    #[test]
    fn gateway_ties_go_to_the_oldest_route_then_its_name_then_the_rule() {
        let (t, _) = RoutingTable::build(
            vec![
                rule("young", &["a.com"], 20, "a/first", 0, vec![prefix("/x")]),
                rule("old-b", &["a.com"], 10, "ns/b", 0, vec![prefix("/x")]),
                rule("old-a-1", &["a.com"], 10, "ns/a", 1, vec![prefix("/x")]),
                rule("old-a-0", &["a.com"], 10, "ns/a", 0, vec![prefix("/y"), prefix("/x")]),
            ],
            None,
        );
        assert_eq!(route_for(&t, "a.com", "GET", "/x", &Headers(&[])), Some("old-a-0"));
        let (t, _) = RoutingTable::build(
            vec![
                rule("young", &["a.com"], 20, "a/first", 0, vec![prefix("/x")]),
                rule("old-b", &["a.com"], 10, "ns/b", 0, vec![prefix("/x")]),
                rule("old-a-1", &["a.com"], 10, "ns/a", 1, vec![prefix("/x")]),
            ],
            None,
        );
        assert_eq!(route_for(&t, "a.com", "GET", "/x", &Headers(&[])), Some("old-a-1"), "ns/a before ns/b");
        let (t, _) = RoutingTable::build(
            vec![
                rule("young", &["a.com"], 20, "a/first", 0, vec![prefix("/x")]),
                rule("old-b", &["a.com"], 10, "ns/b", 0, vec![prefix("/x")]),
            ],
            None,
        );
        assert_eq!(route_for(&t, "a.com", "GET", "/x", &Headers(&[])), Some("old-b"), "the oldest route");
    }

    #[test]
    fn gateway_hostnames_exact_over_wildcard_longest_wildcard_first() {
        let (t, _) = RoutingTable::build(
            vec![
                rule("any", &[], 1, "ns/any", 0, vec![]),
                rule("wild", &["*.example.com"], 1, "ns/w", 0, vec![exact("/only")]),
                rule("wild-eu", &["*.eu.example.com"], 1, "ns/weu", 0, vec![prefix("/")]),
                rule("exact", &["shop.eu.example.com"], 1, "ns/e", 0, vec![prefix("/cart")]),
            ],
            None,
        );
        let none = Headers(&[]);
        assert_eq!(route_for(&t, "shop.eu.example.com", "GET", "/cart/1", &none), Some("exact"));
        assert_eq!(route_for(&t, "shop.eu.example.com", "GET", "/other", &none), Some("wild-eu"), "falls through");
        assert_eq!(route_for(&t, "x.eu.example.com", "GET", "/only", &none), Some("wild-eu"), "longest wildcard");
        assert_eq!(route_for(&t, "x.example.com", "GET", "/only", &none), Some("wild"));
        assert_eq!(route_for(&t, "x.example.com", "GET", "/else", &none), Some("any"), "a rule without matches");
    }

    #[test]
    fn a_rule_found_by_request_says_which_match_held() {
        let (t, _) = RoutingTable::build(vec![rule("r", &[], 1, "ns/r", 0, vec![exact("/a"), prefix("/b")])], None);
        let req = RequestFacts { host: None, path: "/b/c", query: None, method: "GET", headers: &(), secure: false };
        let found = t.find_request(&req).unwrap();
        assert_eq!(found.rule_match.map(|m| &m.path), Some(&PathMatch::Prefix("/b".into())));
        // BalancerPools keep their frontends beside rules; equal paths go to the BalancerPool.
        let (t, c) = RoutingTable::build(
            vec![rule("rule", &["a.com"], 1, "ns/r", 0, vec![prefix("/x")]), cfg("pool", &["a.com"], "/x")],
            None,
        );
        assert!(c.is_empty());
        assert_eq!(name(&t, Some("a.com"), "/x/1"), Some("pool"));
        assert!(
            t.find_request(&RequestFacts { host: Some("a.com"), path: "/x/1", ..req }).unwrap().rule_match.is_none()
        );
    }

    #[test]
    fn a_gateway_rule_is_served_only_on_its_kind_of_connection() {
        use crate::core::gateway::ServedOn;
        let on = |mut c: PoolConfig, served_on: ServedOn| {
            if let Some(g) = c.gateway.as_mut() {
                g.served_on = served_on;
            }
            c
        };
        let (t, c) = RoutingTable::build(
            vec![
                on(rule("tls-only", &["a.com"], 1, "ns/t", 0, vec![prefix("/x")]), ServedOn::Secure),
                on(rule("both", &["a.com"], 1, "ns/b", 0, vec![prefix("/")]), ServedOn::Both),
                on(rule("plain-only", &["p.com"], 1, "ns/p", 0, vec![]), ServedOn::Plain),
                // One rule through an HTTP listener for h.com and an HTTPS one for s.com.
                on(rule("split:http", &["h.com"], 1, "ns/s", 0, vec![prefix("/")]), ServedOn::Plain),
                on(rule("split:https", &["s.com"], 1, "ns/s", 0, vec![prefix("/")]), ServedOn::Secure),
                cfg("pool", &["q.com"], "/"),
            ],
            None,
        );
        assert!(c.is_empty());
        let at = |host: &str, path: &str, secure: bool| {
            let req = RequestFacts { host: Some(host), path, query: None, method: "GET", headers: &(), secure };
            t.find_request(&req).map(|f| t.pools()[f.pool].config.id.name.as_str())
        };
        assert_eq!(at("a.com", "/x/1", true), Some("tls-only"));
        assert_eq!(at("a.com", "/x/1", false), Some("both"), "skipped as if it did not match: the next wins");
        assert_eq!(at("a.com", "/y", false), Some("both"));
        assert_eq!(at("a.com", "/y", true), Some("both"));
        assert_eq!(at("p.com", "/", false), Some("plain-only"));
        assert_eq!(at("p.com", "/", true), None, "no other candidate: 404");
        assert_eq!(at("h.com", "/", false), Some("split:http"));
        assert_eq!(at("h.com", "/", true), None);
        assert_eq!(at("s.com", "/", true), Some("split:https"));
        assert_eq!(at("s.com", "/", false), None, "the HTTPS listener's host is not served in clear text");
        assert_eq!(at("q.com", "/", false), Some("pool"), "BalancerPools serve both kinds");
        assert_eq!(at("q.com", "/", true), Some("pool"));
        assert_eq!(name(&t, Some("s.com"), "/"), Some("split:https"), "find asks as the certificate store does");
    }

    /// Lookup cost of 200 BalancerPool frontends against 200 Gateway API rules on one host
    /// (each with a method, a header and a query match), the request matching the last one.
    #[test]
    #[ignore = "a measurement, not a check: cargo test --lib lookup_cost -- --ignored --nocapture"]
    fn lookup_cost() {
        let n = 200;
        let legacy: Vec<PoolConfig> = (0..n).map(|i| cfg(&format!("p{i}"), &["a.com"], &format!("/p{i}"))).collect();
        let rules: Vec<PoolConfig> = (0..n)
            .map(|i| {
                let mut m = prefix(&format!("/p{i}"));
                m.method = Some("GET".into());
                m.headers = vec![HeaderMatch { name: "x-v".into(), value: "1".into() }];
                m.query = vec![QueryMatch { name: "q".into(), value: "1".into() }];
                rule(&format!("r{i}"), &["a.com"], 1, &format!("ns/r{i}"), 0, vec![m])
            })
            .collect();
        let headers = Headers(&[("x-v", "1")]);
        for (what, configs) in [("BalancerPool frontends", legacy), ("Gateway API rules", rules)] {
            let (t, _) = RoutingTable::build(configs, None);
            let path = format!("/p{}/x", n - 1);
            let req = RequestFacts {
                host: Some("a.com"),
                path: &path,
                query: Some("q=1"),
                method: "GET",
                headers: &headers,
                secure: false,
            };
            let rounds = 20_000;
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                assert!(std::hint::black_box(t.find_request(std::hint::black_box(&req))).is_some());
            }
            let per = started.elapsed().as_nanos() / rounds;
            println!("{what}: {n} on one host, the last one matching: {per} ns per lookup");
        }
    }
}
