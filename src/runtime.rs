//! The scheduler the binary runs on, and starting and stopping the proxy and admin listeners
//! (shared by `standalone`, `demo` and the integration tests, so the tests run the listeners
//! users run).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::manager::{Manager, Persistence};
use crate::admin::{self, AdminState};
use crate::core::PoolConfig;
use crate::core::table::Conflict;
use crate::proxy::listener::Edge;
use crate::proxy::tls::{CertError, SecretRef, TlsData};
use crate::proxy::{Proxy, ProxySettings, server};

/// How many scheduler ticks (task polls) a tokio worker makes between two looks at the
/// runtime's shared queue.
///
/// A worker's own run queue holds 256 tasks. With more than that ready on one worker (hundreds
/// of HTTP/2 streams in flight: a task per stream and one per member connection), tokio moves
/// the queue's newer half (128 tasks, and the one being queued) to the back of the shared
/// queue. By default a worker takes one task from there every 2 to 127 ticks, tuned to about
/// 200 µs of polls (61 to start; near 127 for routeid's polls of a few µs), and a batch only
/// when its own queue runs empty, which under such a load it never does. The tasks moved there
/// waited while the others went round and round: with 64 clients × 10 HTTP/2 streams on one
/// worker, routeid's p99 was 9.5-12× its median (HAProxy's 1.6-1.9×), and the shared queue
/// held 130 tasks on average (`RuntimeMetrics::global_queue_depth`, sampled each ms). A look
/// every 4 ticks cut that p99 by 20-50 % with 64 or 32 clients, for 1-10 % more CPU per request
/// under that load (`bench/h2_tail.sh`, one worker; bench/README.md): fair turns cost a little
/// locality. Otherwise nothing changes: the shared queue is normally empty (it also takes
/// wake-ups from threads outside the runtime), and a look at an empty one is one atomic load.
/// With several workers, an idle one steals half of a full queue, so the queue overflows less;
/// a look at a non-empty shared queue takes its lock. HTTP/2's gathering of writes
/// (`proxy/coalesce.rs`) waits for tokio's I/O turn (every 61 ticks), not for this one. On one
/// CPU the single-threaded scheduler runs ([`scheduler_for`]): its own queue has no bound, so
/// no task is moved out of turn, and this interval only says how often it takes the wake-ups
/// sent from other threads.
pub const GLOBAL_QUEUE_INTERVAL: u32 = 4;

/// The binary's tokio runtime: one worker per CPU the process may use (its affinity and its
/// cgroup's CPU quota, as `std::thread::available_parallelism` reads them), or
/// `TOKIO_WORKER_THREADS`; fair to tasks past a worker's own queue (see
/// [`GLOBAL_QUEUE_INTERVAL`]). See [`scheduler_for`] for what one worker means. Fails on a
/// `TOKIO_WORKER_THREADS` that is not a number above 0 (tokio itself would panic on it).
pub fn scheduler() -> Result<tokio::runtime::Builder, String> {
    Ok(scheduler_for(workers(std::env::var_os("TOKIO_WORKER_THREADS"))?))
}

/// The runtime for `workers` workers. With one, tokio's single-threaded scheduler: the
/// multi-threaded one with a single worker runs a task woken by another task next (its "LIFO
/// slot"), so a request's answer is written to its client as soon as the member's bytes are
/// read, between other connections' reads, and each such write wakes the client's process
/// alone; the single-threaded scheduler runs ready tasks in the order they became ready, and
/// the writes of one turn go out together. Measured on one pinned core under a sticky load
/// (`bench/ab.sh`, 12 paired rounds, release builds): 1.0 µs less CPU per request (13.2 → 12.2,
/// nearly all of it the kernel's wake-ups of the peers), p99 ×0.64. What changes besides: the
/// future `block_on` runs (the binary's `main`) shares the one thread with the connections, so
/// slow synchronous work there goes to the blocking pool (the standalone file's reload); a task
/// woken by another waits its turn rather than running next. routeid never uses
/// `block_in_place`, and HTTP/2's gathering of writes ([`crate::proxy::coalesce`]) waits for the
/// end of a turn in both.
pub fn scheduler_for(workers: usize) -> tokio::runtime::Builder {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().global_queue_interval(GLOBAL_QUEUE_INTERVAL);
    builder
}

/// How many workers [`scheduler`] starts, for what is sized by them before the runtime exists
/// (the log's memory: [`crate::log_writer::thread_bytes`]); an invalid `TOKIO_WORKER_THREADS`,
/// which [`scheduler`] refuses, counts as the CPUs this process may use.
pub fn worker_count() -> usize {
    workers(std::env::var_os("TOKIO_WORKER_THREADS")).unwrap_or_else(|_| cpus())
}

/// The CPUs this process may use (its affinity and its cgroup's CPU quota), at least 1.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How many workers to start: `TOKIO_WORKER_THREADS` when set (a number above 0, as tokio
/// reads it, surrounding spaces allowed), else the CPUs this process may use (a CPU quota
/// rounded down, at least 1).
fn workers(from_env: Option<std::ffi::OsString>) -> Result<usize, String> {
    let Some(v) = from_env else {
        return Ok(cpus());
    };
    match v.to_str().and_then(|s| s.trim().parse::<usize>().ok()) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!("TOKIO_WORKER_THREADS must be a number above 0, not {v:?}")),
    }
}

/// A running proxy with its admin listener.
#[derive(Debug)]
pub struct Running {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin endpoints listen.
    pub admin_addr: SocketAddr,
    /// Where the TLS listener listens, if one was asked for.
    pub tls_addr: Option<SocketAddr>,
    /// The proxy (publish new tables here).
    pub proxy: Arc<Proxy>,
    /// Readiness and other admin state.
    pub admin: Arc<AdminState>,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    tls_task: Option<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
}

/// The TLS listener to open beside the plain one, and the certificates it starts with.
#[derive(Debug)]
pub struct TlsStart {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Secrets known at start (standalone: those of the file; controller: none yet).
    pub secrets: Vec<(SecretRef, Result<TlsData, CertError>)>,
    /// `--default-tls-secret`.
    pub default: Option<SecretRef>,
}

/// Why listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("cannot configure TLS: {0}")]
    Tls(#[from] rustls::Error),
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

impl Running {
    /// Binds both listeners, publishes `pools` and starts serving.
    pub async fn start(
        settings: ProxySettings,
        listen: SocketAddr,
        admin_listen: SocketAddr,
        pools: Vec<PoolConfig>,
    ) -> Result<(Running, Vec<Conflict>), StartError> {
        Self::start_with(settings, listen, admin_listen, pools, true).await
    }

    /// Like [`Running::start`], with `/readyz` answering 200 only if `ready`. The controller
    /// starts unready and sets `admin.ready` after its first complete sync, so no traffic is
    /// sent to a proxy that does not know its pools yet. The balancer-manager is read-only.
    pub async fn start_with(
        settings: ProxySettings,
        listen: SocketAddr,
        admin_listen: SocketAddr,
        pools: Vec<PoolConfig>,
        ready: bool,
    ) -> Result<(Running, Vec<Conflict>), StartError> {
        let admin = AdminState::new(Manager::new(None, Persistence::InMemory), ready);
        Self::start_with_admin(settings, listen, admin_listen, pools, admin).await
    }

    /// Like [`Running::start`], with the admin state (readiness, the balancer-manager and its
    /// token) made by the caller: it is whole before the admin listener accepts a connection.
    pub async fn start_with_admin(
        settings: ProxySettings,
        listen: SocketAddr,
        admin_listen: SocketAddr,
        pools: Vec<PoolConfig>,
        admin: AdminState,
    ) -> Result<(Running, Vec<Conflict>), StartError> {
        Self::start_full(settings, listen, admin_listen, pools, admin, None).await
    }

    /// Like [`Running::start_with_admin`], with a TLS listener when `tls` is given. Secrets that
    /// cannot serve are logged by name and reason; the pools that name them say so too.
    pub async fn start_full(
        settings: ProxySettings,
        listen: SocketAddr,
        admin_listen: SocketAddr,
        pools: Vec<PoolConfig>,
        admin: AdminState,
        tls: Option<TlsStart>,
    ) -> Result<(Running, Vec<Conflict>), StartError> {
        let listener = bind(listen).await?;
        let admin_listener = bind(admin_listen).await?;
        let tls_listener = match &tls {
            Some(t) => Some(bind(t.listen).await?),
            None => None,
        };
        let proxy_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: listen, source })?;
        let admin_addr =
            admin_listener.local_addr().map_err(|source| StartError::Bind { addr: admin_listen, source })?;
        let tls_addr = match (&tls_listener, &tls) {
            (Some(l), Some(t)) => Some(l.local_addr().map_err(|source| StartError::Bind { addr: t.listen, source })?),
            _ => None,
        };
        let proxy = Proxy::new(settings);
        let conflicts = match tls {
            Some(t) => {
                proxy.set_default_tls_secret(t.default);
                let (conflicts, problems) = proxy.publish_with_secrets(pools, &t.secrets);
                for (secret, e) in problems {
                    tracing::error!(%secret, reason = e.reason(), error = %e, "TLS Secret cannot serve");
                }
                conflicts
            }
            None => proxy.publish(pools),
        };
        let admin = Arc::new(admin);
        let (shutdown, rx) = watch::channel(false);
        let tls_task = match tls_listener {
            Some(l) => {
                let edge = Edge::tls(&proxy)?;
                Some(tokio::spawn(server::serve(l, edge, Arc::clone(&proxy), rx.clone())))
            }
            None => None,
        };
        let proxy_task = tokio::spawn(server::serve(listener, Edge::plain(&proxy), Arc::clone(&proxy), rx.clone()));
        let admin_task = tokio::spawn(admin::serve(admin_listener, Arc::clone(&admin), Arc::clone(&proxy), rx));
        let running =
            Running { proxy_addr, admin_addr, tls_addr, proxy, admin, shutdown, proxy_task, tls_task, admin_task };
        Ok((running, conflicts))
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout) and returns
    /// when the proxy has drained.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.proxy_task.await;
        if let Some(t) = self.tls_task {
            let _ = t.await;
        }
        let _ = self.admin_task.await;
    }
}

#[cfg(test)]
mod scheduler_tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::task::Poll;

    /// Ready again at once: the task goes to the back of its worker's queue.
    async fn requeue() {
        let mut woke = false;
        std::future::poll_fn(|cx| {
            if woke {
                return Poll::Ready(());
            }
            woke = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// The most polls of other tasks any one of `tasks` always-ready tasks waited between two
    /// of its own, on one worker.
    fn worst_wait(mut builder: tokio::runtime::Builder, tasks: u64) -> u64 {
        let rt = builder.worker_threads(1).build().expect("a runtime");
        rt.block_on(async {
            // Spawned from the worker itself, so that the order is the same on every run.
            let spawner = tokio::spawn(async move {
                let polls = Arc::new(AtomicU64::new(0));
                (0..tasks)
                    .map(|_| {
                        let polls = Arc::clone(&polls);
                        tokio::spawn(async move {
                            let (mut last, mut worst) = (None, 0);
                            for _ in 0..60 {
                                let now = polls.fetch_add(1, Relaxed);
                                worst = last.map_or(worst, |l| worst.max(now - l));
                                last = Some(now);
                                requeue().await;
                            }
                            worst
                        })
                    })
                    .collect::<Vec<_>>()
            });
            let spawned = spawner.await.expect("the spawner ran");
            let mut worst = 0;
            for t in spawned {
                worst = worst.max(t.await.expect("the task ran"));
            }
            worst
        })
    }

    #[test]
    fn one_worker_runs_the_single_threaded_scheduler() {
        use tokio::runtime::RuntimeFlavor;
        let flavor = |workers| scheduler_for(workers).build().expect("a runtime").handle().runtime_flavor();
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
        // As fair as the multi-threaded one with one worker (below): a task waits for the others
        // once round.
        let worst = worst_wait(scheduler_for(1), 600);
        assert!(worst < 2 * 600, "a task waited {worst} polls of others");
    }

    #[test]
    fn the_worker_count_comes_from_the_environment_or_the_cpus() {
        let env = |v: &str| workers(Some(v.into()));
        assert_eq!(env("3"), Ok(3));
        assert_eq!(env(" 1 "), Ok(1));
        for bad in ["0", "", "two", "-1"] {
            let e = env(bad).expect_err(bad);
            assert!(e.contains("TOKIO_WORKER_THREADS"), "{e}");
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(workers(None), Ok(cpus));
    }

    #[test]
    fn tasks_past_a_workers_queue_wait_their_turn() {
        // 600 tasks always ready, more than a worker's queue of 256: a fair scheduler polls each
        // once in every 600 polls or so. A task sent to the back of the shared queue waits there
        // behind the others sent before it, at most 600 - 128, taken one per `interval` ticks:
        // about interval × 472 polls of others.
        let worst = worst_wait(scheduler_for(2), 600);
        assert!(worst < 4 * 600, "a task waited {worst} polls of others");
        // tokio's own interval (61 to start, tuned towards 127 for polls this short): an order
        // of magnitude longer (measured: about 30,000).
        let mut tokio_default = tokio::runtime::Builder::new_multi_thread();
        tokio_default.enable_all().global_queue_interval(61);
        let worst = worst_wait(tokio_default, 600);
        assert!(worst > 4 * 600 * 5, "with an interval of 61 a task waited only {worst} polls");
    }
}
