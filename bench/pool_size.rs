//! Cost of a balanced pick and of a `/metrics` scrape by pool size (`cargo bench --bench pool_size`).
//!
//! A balanced pick is `Pool::choose` for a request without a route, the call the proxy makes
//! for every new session, measured for each lb method over pools of 3, 1,000 and 10,000
//! members (all usable, loadFactor 1). A scrape is `Metrics::render` of a proxy serving one pool
//! of 10,000 members, the work behind one `GET /metrics`. Figures are thread CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) per operation; `POOL_SIZES=3,1000` changes the sizes and
//! `POOL_METHODS=ByRequests` the methods.

use std::hint::black_box;
use std::time::Duration;

use routeid::core::{PoolConfig, Tried};
use routeid::proxy::{Proxy, ProxySettings};

#[path = "../src/alloc.rs"]
mod alloc;
/// The allocator of the `routeid` binary (src/main.rs), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

const METHODS: [&str; 4] = ["ByRequests", "ByBusyness", "ByTraffic", "LeastLatency"];

fn cpu_time() -> Duration {
    cpu_time::ThreadTime::now().as_duration()
}

fn pool(members: usize, method: &str) -> PoolConfig {
    let list: String = (0..members)
        .map(|i| format!("      - {{address: \"10.{}.{}.{}:8080\", route: m{i}}}\n", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let yaml = format!(
        "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: big}}\nspec:\n  lbMethod: {method}\n  backend:\n    members:\n{list}"
    );
    let mut pools = routeid::standalone::parse_pools(&yaml).unwrap_or_else(|e| panic!("bench pool: {e:?}"));
    pools.remove(0)
}

/// CPU per pick, in nanoseconds: enough picks for about 0.2 s, at least one full round.
fn pick_ns(members: usize, method: &str) -> f64 {
    let proxy = Proxy::new(ProxySettings { access_log: false, ..Default::default() });
    proxy.publish(vec![pool(members, method)]);
    let snap = proxy.snapshot();
    let p = &snap.table.pools()[0];
    let now = proxy.clock().now_ms();
    let tried = Tried::default();
    // Warm up and size the run.
    let (mut n, t0) = (0u64, cpu_time());
    while cpu_time() - t0 < Duration::from_millis(20) || n < members as u64 {
        black_box(p.choose(None, &tried, now));
        n += 1;
    }
    let n = n * 10;
    let t0 = cpu_time();
    for _ in 0..n {
        black_box(p.choose(None, &tried, now));
    }
    (cpu_time() - t0).as_nanos() as f64 / n as f64
}

/// CPU per sticky hit in a ByRequests pool, in nanoseconds: `Pool::choose` with the route of
/// a member (cycling over up to 1,024 of them), which finds it and does Apache's accounting
/// (every usable member gains its weight, the routed one pays).
fn sticky_ns(members: usize) -> f64 {
    let proxy = Proxy::new(ProxySettings { access_log: false, ..Default::default() });
    proxy.publish(vec![pool(members, "ByRequests")]);
    let snap = proxy.snapshot();
    let p = &snap.table.pools()[0];
    let now = proxy.clock().now_ms();
    let tried = Tried::default();
    let routes: Vec<String> = (0..members.min(1_024)).map(|i| format!("m{i}")).collect();
    let (mut n, t0) = (0usize, cpu_time());
    while cpu_time() - t0 < Duration::from_millis(20) || n < routes.len() {
        black_box(p.choose(Some(&routes[n % routes.len()]), &tried, now));
        n += 1;
    }
    let n = n * 10;
    let t0 = cpu_time();
    for i in 0..n {
        black_box(p.choose(Some(&routes[i % routes.len()]), &tried, now));
    }
    (cpu_time() - t0).as_nanos() as f64 / n as f64
}

/// CPU per scrape of a 10,000-member pool, in milliseconds (median of 20).
fn scrape_ms(members: usize) -> (f64, usize) {
    let proxy = Proxy::new(ProxySettings { access_log: false, ..Default::default() });
    proxy.publish(vec![pool(members, "ByRequests")]);
    let snap = proxy.snapshot();
    let now = proxy.clock().now_ms();
    let mut times = Vec::new();
    let mut len = 0;
    for _ in 0..20 {
        let t0 = cpu_time();
        len = black_box(proxy.metrics().render(&snap.table, now)).len();
        times.push((cpu_time() - t0).as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], len)
}

fn main() {
    // As the binary does; the figures say when huge pages were not turned off.
    let huge_pages = alloc::no_huge_pages();
    if !matches!(huge_pages, alloc::HugePages::Off) {
        println!("(transparent huge pages {huge_pages})");
    }
    let sizes: Vec<usize> = std::env::var("POOL_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![3, 1_000, 10_000]);
    println!("balanced pick (Pool::choose, no route), CPU ns per pick:");
    print!("{:<14}", "members");
    for s in &sizes {
        print!("{s:>12}");
    }
    println!("{:>14}", "largest/3");
    let methods: Vec<String> = std::env::var("POOL_METHODS")
        .map(|s| s.split(',').map(|m| m.trim().to_owned()).collect())
        .unwrap_or_else(|_| METHODS.map(str::to_owned).to_vec());
    for method in methods.iter().map(String::as_str) {
        print!("{method:<14}");
        let ns: Vec<f64> = sizes.iter().map(|&s| pick_ns(s, method)).collect();
        for v in &ns {
            print!("{v:>12.0}");
        }
        match (ns.first(), ns.last()) {
            (Some(a), Some(b)) if *a > 0.0 => println!("{:>13.0}×", b / a),
            _ => println!(),
        }
    }
    print!("{:<14}", "sticky hit");
    let ns: Vec<f64> = sizes.iter().map(|&s| sticky_ns(s)).collect();
    for v in &ns {
        print!("{v:>12.0}");
    }
    match (ns.first(), ns.last()) {
        (Some(a), Some(b)) if *a > 0.0 => {
            println!("{:>13.1}×   (ByRequests, Pool::choose with a member's route)", b / a)
        }
        _ => println!(),
    }
    let big = sizes.iter().copied().max().unwrap_or(10_000);
    let (ms, bytes) = scrape_ms(big);
    println!("\n/metrics scrape of one pool of {big} members: {ms:.1} ms CPU (median of 20), {bytes} bytes");
}
