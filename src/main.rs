//! The `routeid` binary: parse the command line and run it.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use routeid::cli::{Cli, Command, LogFormat};
use routeid::proxy::ProxySettings;
use routeid::runtime::Running;
use routeid::{api, demo, standalone};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
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
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("routeid: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Crd => ExitCode::SUCCESS,
        Command::Demo { listen, admin_listen, check } => run_demo(listen, admin_listen, check).await,
        Command::Standalone { file, listen, admin_listen, proxy } => {
            run_standalone(&file, listen, admin_listen, proxy.settings()).await
        }
    }
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
    println!("Serving until Ctrl-C (admin: http://{}/readyz).", running.admin_addr);
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
    settings: ProxySettings,
) -> ExitCode {
    let pools = match standalone::load_file(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("routeid: {e}");
            return ExitCode::from(2);
        }
    };
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
    let running = match Running::start(settings, listen, admin_listen, pools).await {
        Ok((r, _)) => r,
        Err(e) => {
            eprintln!("routeid: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(proxy = %running.proxy_addr, admin = %running.admin_addr, pools = count, file = %file.display(), "routeid standalone serving");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match standalone::load_file(file) {
                Ok(pools) => {
                    let n = pools.len();
                    running.proxy.publish(pools);
                    tracing::info!(pools = n, file = %file.display(), "reloaded");
                }
                Err(e) => tracing::error!(error = %e, "reload refused; the previous pools keep serving"),
            },
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    ExitCode::SUCCESS
}
