//! Derivation + publication cost of the controller (`cargo bench --bench derive`).
//!
//! Drives the controller's real index and the real proxy publication — the code the watch loop
//! runs after a batch of events — without any API server:
//!
//! 1. one pool over 10,000 endpoints in 100 EndpointSlices; one slice changes per round (a pod
//!    turns terminating, or gets a new address);
//! 2. 1,000 pools × 10 endpoints (one slice each); one pool's slice changes per round.
//!
//! With `ROUTEID_BENCH_CHECKS=1` every pool has active health checks, so each publication also
//! reconciles a check task per member.
//!
//! Reported per round: wall time (p50, p99, max) and CPU time (process user+system over all
//! rounds, divided by the rounds), split into derivation (index update + re-derivation) and
//! publication (`Proxy::publish` of the full list: new snapshot, member state carried over),
//! plus the peak RSS of the process. Targets: under 1 ms CPU per changed slice
//! at 10,000 endpoints, under 100 MiB RSS.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use routeid::api::{ActiveHealth, Backend, BalancerPool, BalancerPoolSpec, Frontend, ServiceRef};
use routeid::controller::index::{ClassFilter, Index};
use routeid::proxy::{Proxy, ProxySettings};

const ROUNDS: usize = 300;

#[path = "../src/alloc.rs"]
mod alloc;
/// The allocator of the `routeid` binary (src/main.rs), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

/// What differs in a slice from its all-ready form.
#[derive(Clone, Copy)]
enum Change {
    None,
    /// Endpoint `i` is terminating (serving, not ready): its member turns `Drain`.
    Terminating(u32),
    /// The pod of endpoint `i` was replaced: a new pod name and a new address, so one member
    /// leaves and another joins.
    Replaced(u32),
}

/// The two kinds of change a round makes, for the report.
const KINDS: [&str; 2] = ["an endpoint turns terminating", "a pod is replaced (one member out, one in)"];

fn slice(ns: &str, service: &str, name: &str, first_ip: u32, count: u32, change: Change, rv: u64) -> EndpointSlice {
    let endpoints = (0..count)
        .map(|i| {
            let term = matches!(change, Change::Terminating(t) if t == i);
            let replaced = matches!(change, Change::Replaced(r) if r == i);
            // A replacement pod gets an address from elsewhere in the pod network.
            let ip = if replaced { (first_ip + i) ^ 0x0080_0000 } else { first_ip + i };
            Endpoint {
                addresses: vec![std::net::Ipv4Addr::from(ip).to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(!term),
                    serving: Some(true),
                    terminating: Some(term),
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(if replaced { format!("{service}-{ip:x}-new") } else { format!("{service}-{ip:x}") }),
                    namespace: Some(ns.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    EndpointSlice {
        address_type: "IPv4".into(),
        endpoints,
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            resource_version: Some(rv.to_string()),
            labels: Some(BTreeMap::from([("kubernetes.io/service-name".to_owned(), service.to_owned())])),
            ..Default::default()
        },
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

fn pool(ns: &str, name: &str, service: &str, host: &str) -> BalancerPool {
    let mut p = BalancerPool::new(
        name,
        BalancerPoolSpec {
            frontend: Frontend { hosts: vec![host.into()], ..Default::default() },
            backend: Backend {
                service: Some(ServiceRef { name: service.into(), port: IntOrString::String("http".into()) }),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    if std::env::var_os("ROUTEID_BENCH_CHECKS").is_some() {
        // Every member health-checked: publication also reconciles the check tasks (spawned
        // here, never run: the runtime is not driven).
        p.spec.health.active = Some(ActiveHealth { path: Some("/healthz".into()), ..Default::default() });
    }
    p.metadata.namespace = Some(ns.into());
    p.metadata.generation = Some(1);
    p
}

/// CPU time of this thread (the benchmark runs on one thread: a current-thread runtime, no
/// health-check tasks), from `CLOCK_THREAD_CPUTIME_ID`: exact to the nanosecond, where
/// `/proc` figures are only brought up to date at scheduler ticks.
fn cpu_time() -> Duration {
    cpu_time::ThreadTime::now().as_duration()
}

fn peak_rss_mib() -> f64 {
    proc_status_mib("VmHWM:")
}

fn rss_mib() -> f64 {
    proc_status_mib("VmRSS:")
}

fn proc_status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

struct Times {
    derive: Vec<Duration>,
    publish: Vec<Duration>,
    /// CPU time of each round, per kind of change.
    cpu: [Vec<Duration>; 2],
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut t: Times, members: usize) {
    let total: Vec<Duration> = t.derive.iter().zip(&t.publish).map(|(a, b)| *a + *b).collect();
    let mut total = total;
    println!("{name}");
    println!("  members in the table: {members}");
    println!(
        "  derivation  wall p50 {:>8.3} ms  p99 {:>8.3} ms",
        pct(&mut t.derive, 0.5).as_secs_f64() * 1e3,
        pct(&mut t.derive, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  publication wall p50 {:>8.3} ms  p99 {:>8.3} ms",
        pct(&mut t.publish, 0.5).as_secs_f64() * 1e3,
        pct(&mut t.publish, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  both        wall p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        pct(&mut total, 0.5).as_secs_f64() * 1e3,
        pct(&mut total, 0.99).as_secs_f64() * 1e3,
        pct(&mut total, 1.0).as_secs_f64() * 1e3
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len().max(1) as u32;
    for (kind, cpu) in KINDS.iter().zip(&mut t.cpu) {
        if !cpu.is_empty() {
            println!(
                "  CPU per changed slice, {kind} ({} rounds): mean {:.3} ms, p50 {:.3} ms",
                cpu.len(),
                ms(mean(cpu)),
                ms(pct(cpu, 0.5))
            );
        }
    }
    let mut all: Vec<Duration> = t.cpu.concat();
    println!(
        "  CPU per changed slice, all {ROUNDS} rounds: mean {:.3} ms, p50 {:.3} ms",
        ms(mean(&all)),
        ms(pct(&mut all, 0.5))
    );
}

/// A storm: `per_batch` slices change before the next publication (the controller folds the
/// changes arriving within `min_publish_interval` into one rebuild). Returns the CPU time per
/// changed slice and the wall time per batch.
fn storm(
    index: &mut Index,
    proxy: &Proxy,
    batches: usize,
    per_batch: usize,
    mut change: impl FnMut(usize, usize) -> EndpointSlice,
) -> (Duration, Duration) {
    let (mut cpu, mut wall) = (Duration::ZERO, Duration::ZERO);
    for b in 0..batches {
        // Each batch's slices are built outside the measurement: building them is the API
        // server's and the decoder's work, not the controller's.
        let batch: Vec<EndpointSlice> = (0..per_batch).map(|i| change(b, i)).collect();
        let (cpu0, t0) = (cpu_time(), Instant::now());
        for s in batch {
            index.apply_slice(s);
        }
        index.rederive();
        assert!(index.take_publish_needed());
        proxy.publish(index.configs());
        wall += t0.elapsed();
        cpu += cpu_time() - cpu0;
    }
    (cpu / (batches * per_batch) as u32, wall / batches as u32)
}

/// Applies `change(round)` to the index, re-derives, publishes; times each half.
fn rounds(index: &mut Index, proxy: &Proxy, change: impl Fn(usize) -> (EndpointSlice, usize)) -> Times {
    let mut t = Times {
        derive: Vec::with_capacity(ROUNDS),
        publish: Vec::with_capacity(ROUNDS),
        cpu: [Vec::new(), Vec::new()],
    };
    for round in 0..ROUNDS {
        // Built outside the measurement: that is the API server's and the decoder's work.
        let (s, kind) = change(round);
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        index.apply_slice(s);
        let changes = index.rederive();
        let t1 = Instant::now();
        assert!(index.take_publish_needed(), "round {round}: the change must be published");
        let conflicts = proxy.publish(index.configs());
        let t2 = Instant::now();
        assert!(conflicts.is_empty() && changes.len() <= 1);
        t.cpu[kind].push(cpu_time() - cpu0);
        t.derive.push(t1 - t0);
        t.publish.push(t2 - t1);
    }
    t
}

fn main() {
    // As the binary does; the figures say when huge pages were not turned off.
    let huge_pages = alloc::no_huge_pages();
    if !matches!(huge_pages, alloc::HugePages::Off) {
        println!("(transparent huge pages {huge_pages})");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let filter = ClassFilter { ingress_class: "routeid".into(), default_class: true };
    println!("routeid controller: derivation + publication per changed EndpointSlice ({ROUNDS} rounds each)\n");
    // `cargo bench --bench derive -- one-pool` (or `many-pools`) runs one case, for a profiler.
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |case: &str| only.as_deref().is_none_or(|o| o == case);

    // 1. One pool, 10,000 endpoints in 100 slices of 100.
    if run("one-pool") {
        let proxy = Proxy::new(ProxySettings::default());
        let mut index = Index::new(filter.clone());
        index.apply_pool(pool("web", "big", "big", "big.example.com"));
        let base = u32::from(std::net::Ipv4Addr::new(10, 1, 0, 0));
        for s in 0..100u32 {
            index.apply_slice(slice("web", "big", &format!("big-{s}"), base + s * 100, 100, Change::None, 1));
        }
        let rss0 = rss_mib();
        let rss1 = initial(&mut index, &proxy, "1 pool x 10,000 endpoints in 100 slices");
        println!("  RSS: {rss0:.1} MiB with the slices indexed, {rss1:.1} MiB derived, {:.1} MiB published", rss_mib());
        // Each round one slice changes: in turn, an endpoint turns terminating, or a pod is
        // replaced (each against the slice's previous version, which undoes its last change).
        let t = rounds(&mut index, &proxy, |round| {
            let s = (round % 100) as u32;
            let kind = round % 2;
            let at = (round / 100) as u32 * 7 % 100;
            let change = if kind == 0 { Change::Terminating(at) } else { Change::Replaced(at) };
            (slice("web", "big", &format!("big-{s}"), base + s * 100, 100, change, 2 + round as u64), kind)
        });
        let members = proxy.snapshot().table.pools()[0].members.len();
        report("  one slice of 100 changes, per round:", t, members);
        let (cpu, wall) = storm(&mut index, &proxy, 20, 100, |b, s| {
            let s = s as u32;
            // A different endpoint of every slice turns terminating in each batch.
            let term = (s + b as u32 + 1) % 100;
            slice("web", "big", &format!("big-{s}"), base + s * 100, 100, Change::Terminating(term), 1_000 + b as u64)
        });
        println!(
            "  a rollout, all 100 slices changing within one publication interval: {:.3} ms CPU per changed slice ({:.2} ms wall per rebuild)",
            cpu.as_secs_f64() * 1e3,
            wall.as_secs_f64() * 1e3
        );
        println!("  peak RSS of the 10,000-endpoint case: {:.1} MiB", peak_rss_mib());
    }
    println!();
    // 2. 1,000 pools x 10 endpoints, one slice each.
    if run("many-pools") {
        let proxy = Proxy::new(ProxySettings::default());
        let mut index = Index::new(filter);
        let base = u32::from(std::net::Ipv4Addr::new(10, 2, 0, 0));
        for p in 0..1000u32 {
            let name = format!("p{p}");
            index.apply_pool(pool("web", &name, &name, &format!("{name}.example.com")));
            index.apply_slice(slice("web", &name, &format!("{name}-a"), base + p * 10, 10, Change::None, 1));
        }
        initial(&mut index, &proxy, "1,000 pools x 10 endpoints");
        let t = rounds(&mut index, &proxy, |round| {
            let p = (round * 7 % 1000) as u32;
            let name = format!("p{p}");
            let kind = round % 2;
            let at = round as u32 % 10;
            let change = if kind == 0 { Change::Terminating(at) } else { Change::Replaced(at) };
            (slice("web", &name, &format!("{name}-a"), base + p * 10, 10, change, 2 + round as u64), kind)
        });
        let members: usize = proxy.snapshot().table.pools().iter().map(|p| p.members.len()).sum();
        report("  one pool's slice changes, per round:", t, members);
        let (cpu, wall) = storm(&mut index, &proxy, 20, 100, |b, i| {
            let p = (b * 100 + i) as u32 % 1000;
            let name = format!("p{p}");
            slice(
                "web",
                &name,
                &format!("{name}-a"),
                base + p * 10,
                10,
                Change::Terminating((b + b / 10) as u32 % 10),
                10_000 + b as u64,
            )
        });
        println!(
            "  100 pools' slices changing within one publication interval: {:.3} ms CPU per changed slice ({:.2} ms wall per rebuild)",
            cpu.as_secs_f64() * 1e3,
            wall.as_secs_f64() * 1e3
        );
    }
    println!("\npeak RSS of the whole run: {:.1} MiB", peak_rss_mib());
}

/// Times the first derivation and publication of everything indexed, prints them, and returns
/// the RSS after the derivation.
fn initial(index: &mut Index, proxy: &Proxy, label: &str) -> f64 {
    let t0 = Instant::now();
    index.rederive();
    let d = t0.elapsed();
    let rss = rss_mib();
    index.take_publish_needed();
    let t1 = Instant::now();
    proxy.publish(index.configs());
    println!(
        "{label}: initial derivation {:.2} ms, publication {:.2} ms",
        d.as_secs_f64() * 1e3,
        t1.elapsed().as_secs_f64() * 1e3
    );
    rss
}
