//! The `routeid` binary: parse the command line and run it.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use routeid::admin::AdminState;
use routeid::admin::manager::{Manager, Persistence};
use routeid::cli::{CheckArgs, Cli, Command, ControllerArgs, LogFormat, TlsArgs};
use routeid::log_writer::LogWriter;
use routeid::proxy::ProxySettings;
use routeid::runtime::{Running, TlsStart};
use routeid::{api, demo, standalone};
use tokio::signal::unix::{SignalKind, signal};

/// The process's only unsafe code, kept out of the library (which forbids it).
mod alloc;

/// mimalloc instead of the system allocator (`alloc` says why, and why not through the
/// `mimalloc` crate).
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;
use tracing_subscriber::EnvFilter;

/// Sets up logging to stderr through a writer thread ([`routeid::log_writer`]): the request
/// path formats its access-log line into its thread's chunk (bounded; beyond that lines are
/// dropped and counted in `routeid_log_lines_dropped_total` rather than slowing requests down),
/// other events are formatted by tracing-subscriber into the same chunks, and the writer thread
/// writes what has gathered in batches. The guard flushes the chunks when `main` returns.
///
/// The filter is `--log-level` when given, else `RUST_LOG`, else `info`.
fn init_logging(format: LogFormat, level: Option<&str>) -> Option<routeid::log_writer::FlushGuard> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // On a terminal tracing-subscriber colours its lines; the access log's own formatter
    // writes plain lines only, so there access-log lines go through tracing too.
    let (writer, guard) = match LogWriter::start_stderr(format, !ansi, routeid::runtime::worker_count()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("routeid: cannot start the log writer thread: {e}");
            return None;
        }
    };
    let dropped = writer.clone();
    routeid::metrics::count_dropped_log_lines(move || dropped.dropped());
    let mut filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // rustls logs a client's odd hello (an IP address as SNI, as wrk and curl send) at WARN, once
    // per connection: any client could flood the log. Failed handshakes are counted in
    // routeid_tls_handshake_errors_total instead; RUST_LOG=rustls=... still turns them on.
    let asked = level.map(str::to_owned).or_else(|| std::env::var("RUST_LOG").ok());
    // A span or field directive (`[...]`) may answer line by line (by the span a line is made
    // in); target and level directives answer the same for every line.
    let per_line = asked.as_deref().is_some_and(|v| v.contains('['));
    if !asked.is_some_and(|v| v.contains("rustls"))
        && let Ok(d) = "rustls=error".parse()
    {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer.clone()).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    // The filter is fixed from here on (nothing reloads it): with target and level directives
    // only, asked once whether access-log lines pass, not per request. When they do not,
    // requests emit their events to the filter, which turns them away at their call site.
    if per_line || tracing::enabled!(target: "routeid::access", tracing::Level::INFO) {
        writer.install(per_line);
    }
    Some(guard)
}

fn main() -> ExitCode {
    let huge_pages = alloc::no_huge_pages();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Crd) {
        return match api::crd_yaml() {
            Ok(y) => {
                print!("{y}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("routeid: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let _log_writer = init_logging(cli.log_format, cli.log_level.as_deref());
    match huge_pages {
        alloc::HugePages::Off => {}
        alloc::HugePages::LeftToMimalloc(v) => {
            tracing::info!(MIMALLOC_ALLOW_THP = ?v, "transparent huge pages left to mimalloc")
        }
        alloc::HugePages::Refused(e) => {
            tracing::warn!(error = %e, "cannot turn transparent huge pages off; the kernel's policy stays")
        }
    }
    let built = routeid::runtime::scheduler().and_then(|mut b| b.build().map_err(|e| e.to_string()));
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("routeid: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    let proxy = match &command {
        Command::Standalone { proxy, .. } => Some(proxy),
        Command::Controller(args) => Some(&args.proxy),
        Command::Demo { .. } | Command::Crd | Command::Check(_) | Command::IngressCheck { .. } => None,
    };
    if let Some(Err(e)) = proxy.map(|p| p.check()) {
        eprintln!("routeid: {e}");
        return ExitCode::from(2);
    }
    match command {
        Command::Crd => ExitCode::SUCCESS,
        Command::Demo { listen, admin_listen, check } => run_demo(listen, admin_listen, check).await,
        Command::Standalone { file, listen, admin_listen, tls, proxy } => {
            let settings = match proxy.load_settings(false) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("routeid: {e}");
                    return ExitCode::from(2);
                }
            };
            run_standalone(&file, listen, admin_listen, tls, settings, proxy.manager_token.clone()).await
        }
        Command::Controller(args) => run_controller(args).await,
        Command::Check(args) => run_check(args).await,
        Command::IngressCheck { kubeconfig, namespace, class } => {
            run_ingress_check(kubeconfig.as_deref(), namespace, &class).await
        }
    }
}

/// `routeid check`: exit 0 when every pool would be served, 2 when any would not (or the
/// cluster cannot be read).
async fn run_check(args: CheckArgs) -> ExitCode {
    let (source, report) = match &args.file {
        Some(file) => (file.display().to_string(), routeid::check::file(file)),
        None => {
            let client = match kube_client(args.kubeconfig.as_deref(), args.context.as_deref()).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("routeid check: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let filter = routeid::controller::index::ClassFilter {
                ingress_class: args.ingress_class.clone(),
                default_class: args.default_class,
            };
            match routeid::check::cluster(client, args.namespace.as_deref(), filter).await {
                Ok(r) => ("the cluster's BalancerPools".to_owned(), r),
                Err(e) => {
                    eprintln!("routeid check: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    if report.problems.is_empty() {
        print!("{source}: OK, {}", report.summary);
        return ExitCode::SUCCESS;
    }
    eprintln!("{source}: {} problem(s), nothing would be served as it is:", report.problems.len());
    for p in &report.problems {
        eprintln!("  {p}");
    }
    ExitCode::from(2)
}

/// `routeid ingress-check`: exit 0 when every annotation is supported and no Ingress would be
/// refused, 1 otherwise, 2 when the cluster cannot be read.
async fn run_ingress_check(kubeconfig: Option<&Path>, namespace: Option<String>, class: &str) -> ExitCode {
    use k8s_openapi::api::networking::v1::Ingress;
    let client = match kube_client(kubeconfig, None).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("routeid ingress-check: {e:#}");
            return ExitCode::from(2);
        }
    };
    let api: kube::Api<Ingress> = match &namespace {
        Some(ns) => kube::Api::namespaced(client, ns),
        None => kube::Api::all(client),
    };
    let list = match api.list(&Default::default()).await {
        Ok(l) => l.items,
        Err(e) => {
            eprintln!("routeid ingress-check: cannot list Ingresses: {e}");
            return ExitCode::from(2);
        }
    };
    let (text, unsupported) = routeid::controller::ingress::check::report(&list, class);
    print!("{text}");
    if unsupported == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

async fn run_demo(listen: std::net::SocketAddr, admin_listen: std::net::SocketAddr, check: bool) -> ExitCode {
    let pools = match demo::start_members().await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("routeid demo: cannot start the demo members: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings =
        ProxySettings { access_log: !check, drain_timeout: std::time::Duration::from_secs(2), ..Default::default() };
    let running = match Running::start(settings, listen, admin_listen, pools).await {
        Ok((r, _)) => r,
        Err(e) => {
            eprintln!("routeid demo: {e} (another program may use it: pass --listen 127.0.0.1:8081 or --admin-listen)");
            return ExitCode::from(2);
        }
    };
    let toured = demo::tour(running.proxy_addr).await;
    if let Err(e) = &toured {
        eprintln!("routeid demo: the tour failed: {e}");
    }
    if check {
        running.shutdown().await;
        return if toured.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    println!();
    println!(
        "routeid {} (pid {}) serving http://{} until Ctrl-C (admin: http://{}/readyz, /metrics, /balancer-manager).",
        routeid::cli::VERSION,
        std::process::id(),
        running.proxy_addr,
        running.admin_addr
    );
    wait_for_stop().await;
    running.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_stop() {
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run_standalone(
    file: &Path,
    listen: std::net::SocketAddr,
    admin_listen: std::net::SocketAddr,
    tls: TlsArgs,
    settings: ProxySettings,
    manager_token: Option<String>,
) -> ExitCode {
    let loaded = match standalone::load(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("routeid: {e}");
            return ExitCode::from(2);
        }
    };
    let tls_start = match standalone_tls(&tls, &loaded, file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("routeid: {e}");
            return ExitCode::from(2);
        }
    };
    let pools = loaded.pools;
    let count = pools.len();
    // Install the handlers before serving: once /readyz answers, a SIGHUP or SIGTERM must reach
    // the loop below rather than the default action (which kills the process).
    let (mut term, mut int, mut hup) =
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            _ => {
                eprintln!("routeid: cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
    let admin = AdminState::new(Manager::new(manager_token, Persistence::InMemory), true);
    let running = match Running::start_full(settings, listen, admin_listen, pools, admin, tls_start).await {
        Ok((r, _)) => r,
        Err(e) => {
            eprintln!("routeid: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        version = routeid::cli::VERSION,
        pid = std::process::id(),
        proxy = %running.proxy_addr,
        admin = %running.admin_addr,
        tls = %running.tls_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        pools = count,
        file = %file.display(),
        "routeid standalone serving (kill -HUP <pid> reloads the file)"
    );
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(file, &running.proxy).await,
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    ExitCode::SUCCESS
}

/// Reloads the pools file on SIGHUP. Reading and parsing it (YAML, every Secret's PEM) and
/// building the new table run on tokio's blocking pool: on one CPU the runtime has a single
/// thread, which would otherwise stop serving every connection for the whole parse.
async fn reload(file: &Path, proxy: &std::sync::Arc<routeid::proxy::Proxy>) {
    let (path, target) = (file.to_path_buf(), std::sync::Arc::clone(proxy));
    let done = tokio::task::spawn_blocking(move || {
        let loaded = standalone::load(&path)?;
        let (n, s) = (loaded.pools.len(), loaded.secrets.len());
        target.publish_with_secrets(loaded.pools, &loaded.secrets);
        Ok::<_, standalone::LoadError>((n, s))
    })
    .await;
    match done {
        Ok(Ok((n, s))) => {
            tracing::info!(pools = n, secrets = s, file = %file.display(), "reloaded");
            proxy.log_overrides();
        }
        Ok(Err(e)) => tracing::error!(error = %e, "reload refused; the previous pools keep serving"),
        Err(e) => tracing::error!(error = %e, "reload failed; the previous pools keep serving"),
    }
}

/// The TLS listener of a standalone run: it needs a certificate to serve, from the file.
fn standalone_tls(tls: &TlsArgs, loaded: &standalone::Loaded, file: &Path) -> Result<Option<TlsStart>, String> {
    let Some(listen) = tls.tls_listen else { return Ok(None) };
    if loaded.secrets.is_empty() {
        return Err(format!(
            "--tls-listen needs a certificate: {} holds no kind: Secret document of type kubernetes.io/tls",
            file.display()
        ));
    }
    if let Some(d) = &tls.default_tls_secret
        && !loaded.secrets.iter().any(|(r, _)| r == d)
    {
        return Err(format!("--default-tls-secret {d}: no such Secret in {}", file.display()));
    }
    Ok(Some(TlsStart { listen, secrets: loaded.secrets.clone(), default: tls.default_tls_secret.clone() }))
}

/// A client from `kubeconfig` (or `KUBECONFIG`, `~/.kube/config`, in-cluster), with `context`
/// instead of the kubeconfig's current one when given.
async fn kube_client(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let options = kube::config::KubeConfigOptions { context: context.map(str::to_owned), ..Default::default() };
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("cannot use kubeconfig {}", path.display()))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .context("cannot use the kubeconfig (KUBECONFIG or ~/.kube/config) with --context")?,
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster)")?,
    };
    kube::Client::try_from(config).context("cannot build the Kubernetes client")
}

async fn run_controller(args: ControllerArgs) -> ExitCode {
    use routeid::controller::{Controller, ControllerOptions, index::ClassFilter};
    let client = match kube_client(args.kubeconfig.as_deref(), args.context.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("routeid controller: {e:#}");
            return ExitCode::from(2);
        }
    };
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("routeid: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    // The manager (and its token) is part of the admin state before the listener accepts.
    let manager = Manager::new(args.proxy.manager_token.clone(), Persistence::Kubernetes(client.clone()));
    let admin = AdminState::new(manager, false);
    let tls = args.tls.tls_listen.map(|listen| TlsStart {
        listen,
        secrets: Vec::new(),
        default: args.tls.default_tls_secret.clone(),
    });
    let settings = match args.proxy.load_settings(true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("routeid controller: {e}");
            return ExitCode::from(2);
        }
    };
    let running = match Running::start_full(settings, args.listen, args.admin_listen, Vec::new(), admin, tls).await {
        Ok((r, _)) => r,
        Err(e) => {
            eprintln!("routeid controller: {e}");
            return ExitCode::from(2);
        }
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let identity = args
        .identity
        .clone()
        .or_else(|| env("POD_NAME"))
        .or_else(|| env("HOSTNAME"))
        .unwrap_or_else(|| format!("routeid-{}", std::process::id()));
    let lease_namespace = args
        .lease_namespace
        .clone()
        .or_else(|| args.namespace.clone())
        .or_else(|| env("POD_NAMESPACE"))
        .unwrap_or_else(|| "default".into());
    let filter = ClassFilter { ingress_class: args.ingress_class.clone(), default_class: args.default_class };
    let mut opts = ControllerOptions::new(args.namespace.clone(), filter, lease_namespace, identity.clone());
    opts.leader.enabled = !args.no_leader_election;
    opts.ingress = args.watch_ingresses.then(|| routeid::controller::ingress::IngressFilter {
        class: args.ingress_class.clone(),
        watch_without_class: args.watch_ingress_without_class,
    });
    opts.publish = match (&args.publish_service, args.publish_status_address.as_slice()) {
        (Some(s), _) => match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                routeid::controller::ingress::Publish::Service(ns.to_owned(), name.to_owned())
            }
            _ => {
                eprintln!("routeid controller: --publish-service takes NAMESPACE/NAME, not {s:?}");
                return ExitCode::from(2);
            }
        },
        (None, []) => routeid::controller::ingress::Publish::Nothing,
        (None, addrs) => routeid::controller::ingress::Publish::Addresses(addrs.to_vec()),
    };
    opts.default_tls_secret = args.tls.default_tls_secret.clone();
    opts.gateway = args.watch_gateways.then(|| routeid::controller::gateway::watch::GatewayOptions {
        listening: routeid::controller::gateway::Listening {
            http_ports: args.gateway_http_ports.clone(),
            https_ports: if args.tls.tls_listen.is_some() { args.gateway_https_ports.clone() } else { Vec::new() },
        },
        class: args.gateway_class.clone(),
        ..Default::default()
    });
    let controller = Controller::start(client, opts, running.proxy.clone(), running.admin.clone());
    tracing::info!(
        version = routeid::cli::VERSION,
        pid = std::process::id(),
        proxy = %running.proxy_addr,
        admin = %running.admin_addr,
        tls = %running.tls_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        ingress_class = %args.ingress_class,
        %identity,
        "routeid controller started; /readyz turns ready after the first sync"
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    controller.shutdown().await;
    running.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::alloc::Allocator;

    /// With `MIMALLOC_ALLOW_THP` set the kernel's setting is left alone; without it the
    /// process takes no huge pages. Starts from huge pages allowed, whatever the process
    /// inherited, and puts back what it found.
    #[test]
    fn huge_pages_are_off_unless_mimalloc_is_asked_for_them() {
        use rustix::thread::{disable_transparent_huge_pages, transparent_huge_pages_are_disabled};
        let before = transparent_huge_pages_are_disabled().unwrap();
        disable_transparent_huge_pages(false).unwrap();
        let left = super::alloc::no_huge_pages_unless(Some(std::ffi::OsStr::new("1")));
        assert!(matches!(left, super::alloc::HugePages::LeftToMimalloc(v) if v == "1"));
        assert!(!transparent_huge_pages_are_disabled().unwrap());
        let off = super::alloc::no_huge_pages_unless(None);
        assert!(matches!(off, super::alloc::HugePages::Off));
        assert!(transparent_huge_pages_are_disabled().unwrap());
        disable_transparent_huge_pages(before).unwrap();
    }

    /// Every size class the request path uses, at every alignment: aligned, usable, zeroed
    /// when asked, and kept across a `realloc` that grows and one that shrinks.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = Allocator;
        for size in [1usize, 7, 8, 24, 40, 1000, 1536, 4904, 8192, 70_000, 1 << 21] {
            for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let Ok(layout) = Layout::from_size_align(size.next_multiple_of(align), align) else { continue };
                // SAFETY: a non-zero size; every pointer goes back to the same allocator.
                unsafe {
                    let p = a.alloc_zeroed(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    assert!(std::slice::from_raw_parts(p, layout.size()).iter().all(|&b| b == 0));
                    p.write_bytes(0xA5, layout.size());
                    let bigger = layout.size() * 3;
                    let q = a.realloc(p, layout, bigger);
                    assert_eq!(q as usize % align, 0, "grown: size {size} align {align}");
                    assert!(std::slice::from_raw_parts(q, layout.size()).iter().all(|&b| b == 0xA5));
                    let grown = Layout::from_size_align_unchecked(bigger, align);
                    let r = a.realloc(q, grown, layout.size());
                    assert_eq!(r as usize % align, 0, "shrunk: size {size} align {align}");
                    assert!(std::slice::from_raw_parts(r, layout.size()).iter().all(|&b| b == 0xA5));
                    a.dealloc(r, layout);
                    let s = a.alloc(layout);
                    assert_eq!(s as usize % align, 0, "size {size} align {align}");
                    a.dealloc(s, layout);
                }
            }
        }
    }
}
