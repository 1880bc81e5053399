//! Active health checks (Apache mod_proxy_hcheck, HAProxy `check inter/rise/fall`).
//!
//! One task per checked member, keyed by pool, route, address and check settings, so a reload
//! that keeps a member keeps its task (and its consecutive-result counters). Checks are spread
//! over the interval by a per-member offset, run over one keep-alive connection per member,
//! share a small global budget of concurrent checks, and touch the request path only through
//! the member's atomics: a check never blocks a request.
//!
//! A member changes state only after `fails` consecutive failed checks (healthy → unhealthy) or
//! `passes` consecutive passing ones (unhealthy → healthy). The response header
//! `X-Heartbeat: ready=N[&busy=M]` reports spare capacity for the Heartbeat lb method.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::api::CheckMethod;
use crate::core::config::ActiveCheck;
use crate::core::{Clock, Member, MemberRuntime, Pool, PoolId, Route, RoutingTable};

/// Checks in flight at once, across all pools: the checker's own connection budget.
const CHECK_BUDGET: usize = 64;
/// Slots the checks of one interval are spread over.
const SPREAD_SLOTS: u64 = 20;
/// Body bytes read to look for `expectBody`.
const MAX_CHECK_BODY: usize = 64 * 1024;

/// What one check task checks.
struct CheckKey {
    pool: PoolId,
    route: Route,
    address: SocketAddr,
    check: Arc<ActiveCheck>,
}

/// The checks of one pool: its settings and a task per member (route and address).
#[derive(Debug)]
struct PoolChecks {
    check: Arc<ActiveCheck>,
    tasks: HashMap<(Route, SocketAddr), AbortHandle>,
}

impl PoolChecks {
    fn abort_all(&mut self) {
        self.tasks.drain().for_each(|(_, t)| t.abort());
    }
}

/// The running health-check tasks.
#[derive(Debug)]
pub struct HealthChecks {
    /// Per pool: its check settings and the task checking each member.
    tasks: Mutex<HashMap<PoolId, PoolChecks>>,
    budget: Arc<Semaphore>,
}

impl Default for HealthChecks {
    fn default() -> Self {
        HealthChecks { tasks: Mutex::new(HashMap::new()), budget: Arc::new(Semaphore::new(CHECK_BUDGET)) }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for (_, mut checks) in tasks.drain() {
                checks.abort_all();
            }
        }
    }
}

impl HealthChecks {
    /// Makes the running checks match `table`: starts checks of new members, stops checks of
    /// members (or settings) that are gone, and marks members of pools without checks healthy.
    /// `previous[i]` is the pool that pool `i` of `table` was built from. Unchanged pools are
    /// skipped and a changed pool with the same check settings is reconciled along
    /// [`crate::core::Pool::previous_index`]: the cost follows the change, not the pool's size.
    /// Must run inside a tokio runtime.
    pub fn reconcile(&self, table: &RoutingTable, previous: &[Option<&Arc<Pool>>]) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let mut checked_pools = 0;
        for (i, pool) in table.pools().iter().enumerate() {
            let prev = previous.get(i).copied().flatten();
            let unchanged = prev.is_some_and(|p| Arc::ptr_eq(p, pool));
            let id = &pool.config.id;
            let Some(check) = &pool.config.health.active else {
                // An unchanged pool without checks has had none since it was built.
                if unchanged {
                    continue;
                }
                if let Some(mut gone) = tasks.remove(id) {
                    gone.abort_all();
                }
                // Members carried over from a pool without checks are healthy already and a new
                // runtime starts healthy: only checks that stopped can have left one unhealthy.
                let checks_stopped = prev.is_none_or(|p| p.config.health.active.is_some());
                for (j, m) in pool.members.iter().enumerate() {
                    if checks_stopped || pool.previous_index(j).is_none() {
                        m.runtime.set_healthy(true, Clock.now_ms());
                    }
                }
                continue;
            };
            checked_pools += 1;
            if unchanged && tasks.get(id).is_some_and(|c| !c.tasks.is_empty()) {
                continue;
            }
            let checks = tasks
                .entry(id.clone())
                .or_insert_with(|| PoolChecks { check: Arc::new(check.clone()), tasks: HashMap::new() });
            if *checks.check != *check {
                checks.abort_all();
                checks.check = Arc::new(check.clone());
            }
            let start = |m: &Member, check: &Arc<ActiveCheck>| {
                let key = CheckKey {
                    pool: id.clone(),
                    route: m.config.route.clone(),
                    address: m.config.address,
                    check: Arc::clone(check),
                };
                tokio::spawn(check_loop(key, Arc::clone(&m.runtime), Arc::clone(&self.budget))).abort_handle()
            };
            match prev {
                // The tasks match `old`'s members: start the new ones, stop the ones that left
                // (a member that kept its route and address was carried over, task and all).
                Some(old) if !checks.tasks.is_empty() => {
                    let mut kept = vec![false; old.members.len()];
                    for (j, m) in pool.members.iter().enumerate() {
                        match pool.previous_index(j) {
                            Some(k) => kept[k] = true,
                            None => {
                                let key = (m.config.route.clone(), m.config.address);
                                checks.tasks.entry(key).or_insert_with(|| start(m, &checks.check));
                            }
                        }
                    }
                    for (m, _) in old.members.iter().zip(&kept).filter(|(_, k)| !**k) {
                        if let Some(task) = checks.tasks.remove(&(m.config.route.clone(), m.config.address)) {
                            task.abort();
                        }
                    }
                }
                // New pool, new settings, or tasks never started: every member.
                _ => {
                    let wanted: HashSet<(Route, SocketAddr)> =
                        pool.members.iter().map(|m| (m.config.route.clone(), m.config.address)).collect();
                    checks.tasks.retain(|k, task| {
                        let keep = wanted.contains(k);
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    for m in &pool.members {
                        let key = (m.config.route.clone(), m.config.address);
                        checks.tasks.entry(key).or_insert_with(|| start(m, &checks.check));
                    }
                }
            }
        }
        if tasks.len() > checked_pools {
            // Pools that left the table.
            tasks.retain(|id, checks| {
                let keep = table.pool(id).is_some();
                if !keep {
                    checks.abort_all();
                }
                keep
            });
        }
    }
}

/// What one check found.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    passed: bool,
    heartbeat_ready: Option<u32>,
}

async fn check_loop(key: CheckKey, runtime: Arc<MemberRuntime>, budget: Arc<Semaphore>) {
    let check = &*key.check;
    // Spread the members' checks over the interval, in up to SPREAD_SLOTS slots: checks that
    // share a slot share the runtime's wake-ups, which makes a check much cheaper than when each
    // one wakes the process on its own millisecond.
    let interval_ms = check.interval.as_millis().max(1) as u64;
    let slots = (interval_ms / 10).clamp(1, SPREAD_SLOTS);
    let mut h = DefaultHasher::new();
    (&key.route, key.address).hash(&mut h);
    tokio::time::sleep(Duration::from_millis(h.finish() % slots * (interval_ms / slots))).await;
    let host = HeaderValue::try_from(key.address.to_string()).unwrap_or(HeaderValue::from_static("localhost"));
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        ticker.tick().await;
        let Ok(permit) = budget.acquire().await else { return };
        let verdict = match tokio::time::timeout(check.timeout, check_once(&mut conn, key.address, &host, check)).await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(pool = %key.pool, member = %key.route, error = %e, "health check failed");
                conn = None;
                Verdict { passed: false, heartbeat_ready: None }
            }
            Err(_) => {
                tracing::debug!(pool = %key.pool, member = %key.route, "health check timed out");
                conn = None;
                Verdict { passed: false, heartbeat_ready: None }
            }
        };
        drop(permit);
        let now = Clock.now_ms();
        if let Some(ready) = verdict.heartbeat_ready {
            runtime.report_heartbeat(ready, now);
        }
        runtime.checks[usize::from(!verdict.passed)].fetch_add(1, Relaxed);
        if verdict.passed {
            passes += 1;
            fails = 0;
        } else {
            fails += 1;
            passes = 0;
        }
        let healthy = runtime.healthy.load(Relaxed);
        if healthy && fails >= check.fails {
            runtime.set_healthy(false, now);
            tracing::warn!(pool = %key.pool, member = %key.route, address = %key.address, fails, "member failed its health checks");
        } else if !healthy && passes >= check.passes {
            runtime.set_healthy(true, now);
            tracing::info!(pool = %key.pool, member = %key.route, address = %key.address, passes, "member passes its health checks again");
        }
    }
}

async fn check_once(
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
    addr: SocketAddr,
    host: &HeaderValue,
    check: &ActiveCheck,
) -> Result<Verdict, Box<dyn std::error::Error + Send + Sync>> {
    let sender = match conn {
        Some(s) if !s.is_closed() => s,
        _ => {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            conn.insert(sender)
        }
    };
    sender.ready().await?;
    let method = match check.method {
        CheckMethod::GET => Method::GET,
        CheckMethod::HEAD => Method::HEAD,
        CheckMethod::OPTIONS => Method::OPTIONS,
    };
    let req = Request::builder()
        .method(method)
        .uri(check.path.as_str())
        .header(header::HOST, host.clone())
        .header(header::USER_AGENT, "routeid-health-check")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let heartbeat_ready = resp.headers().get("x-heartbeat").and_then(|v| v.to_str().ok()).and_then(parse_heartbeat);
    let mut body = resp.into_body();
    let mut seen: Vec<u8> = Vec::new();
    let mut body_found = check.expect_body.is_none();
    // Read the whole body (so the connection can be reused), keeping at most MAX_CHECK_BODY.
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data()
            && !body_found
            && seen.len() < MAX_CHECK_BODY
        {
            seen.extend_from_slice(&data[..data.len().min(MAX_CHECK_BODY - seen.len())]);
        }
    }
    if let Some(want) = &check.expect_body {
        body_found = seen.windows(want.len().max(1)).any(|w| w == want.as_bytes());
    }
    Ok(Verdict { passed: check.status_passes(status) && body_found, heartbeat_ready })
}

/// Parses `ready=12&busy=3` (fields in any order, unknown ones ignored) into `ready`.
fn parse_heartbeat(v: &str) -> Option<u32> {
    v.split(['&', ';', ',']).find_map(|kv| kv.trim().strip_prefix("ready=")).and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(members: &[(&str, u16)], interval: Option<&str>, previous: Option<&RoutingTable>) -> RoutingTable {
        let m: String = members
            .iter()
            .map(|(r, port)| format!("      - {{address: \"127.0.0.1:{port}\", route: {r}}}\n"))
            .collect();
        let health =
            interval.map_or(String::new(), |i| format!("  health:\n    active: {{path: /h, interval: {i}}}\n"));
        let yaml = format!(
            "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: a}}\nspec:\n  backend:\n    members:\n{m}{health}"
        );
        let configs = crate::standalone::parse_pools(&yaml).unwrap();
        RoutingTable::build(configs, previous).0
    }

    fn running(checks: &HealthChecks) -> Vec<(String, tokio::task::Id)> {
        let tasks = checks.tasks.lock().unwrap();
        let mut v: Vec<_> = tasks
            .values()
            .flat_map(|p| p.tasks.iter().map(|((r, a), t)| (format!("{r}@{}", a.port()), t.id())))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn reconcile_follows_the_members_and_the_settings() {
        let checks = HealthChecks::default();
        let t1 = table(&[("a", 1), ("b", 2)], Some("1s"), None);
        checks.reconcile(&t1, &[None]);
        let first = running(&checks);
        assert_eq!(first.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a@1", "b@2"]);
        // b leaves, c joins, a stays: a keeps its task (and its rise/fall counters).
        let t2 = table(&[("a", 1), ("c", 3)], Some("1s"), Some(&t1));
        checks.reconcile(&t2, &[t2.previous_index_of(0, &t1).map(|j| &t1.pools()[j])]);
        let second = running(&checks);
        assert_eq!(second.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a@1", "c@3"]);
        assert_eq!(second[0].1, first[0].1, "a's task was kept");
        // a moves to a new address: a new task for the new address only.
        let t3 = table(&[("a", 4), ("c", 3)], Some("1s"), Some(&t2));
        checks.reconcile(&t3, &[t3.previous_index_of(0, &t2).map(|j| &t2.pools()[j])]);
        let third = running(&checks);
        assert_eq!(third.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a@4", "c@3"]);
        assert_eq!(third[1].1, second[1].1, "c's task was kept");
        // New settings: every task restarts.
        let t4 = table(&[("a", 4), ("c", 3)], Some("2s"), Some(&t3));
        checks.reconcile(&t4, &[t4.previous_index_of(0, &t3).map(|j| &t3.pools()[j])]);
        let fourth = running(&checks);
        assert!(fourth.iter().zip(&third).all(|(n, o)| n.0 == o.0 && n.1 != o.1));
        // Checks turned off: no task, and members are healthy.
        t4.pools()[0].members[0].runtime.healthy.store(false, Relaxed);
        let t5 = table(&[("a", 4), ("c", 3)], None, Some(&t4));
        checks.reconcile(&t5, &[t5.previous_index_of(0, &t4).map(|j| &t4.pools()[j])]);
        assert!(running(&checks).is_empty());
        assert!(t5.pools()[0].members.iter().all(|m| m.runtime.healthy.load(Relaxed)));
        // The pool leaves the table: nothing left behind.
        let t6 = table(&[("a", 4)], Some("1s"), Some(&t5));
        checks.reconcile(&t6, &[None]);
        checks.reconcile(&RoutingTable::default(), &[]);
        assert!(checks.tasks.lock().unwrap().is_empty());
    }

    #[test]
    fn heartbeat_header() {
        assert_eq!(parse_heartbeat("ready=12&busy=3"), Some(12));
        assert_eq!(parse_heartbeat("busy=3&ready=0"), Some(0));
        assert_eq!(parse_heartbeat("busy=3"), None);
        assert_eq!(parse_heartbeat("ready=-1"), None);
        assert_eq!(parse_heartbeat("ready=x"), None);
    }
}
