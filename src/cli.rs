//! The command line: `demo`, `standalone`, `crd`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::proxy::ProxySettings;

/// routeid — a sticky-session load balancer for session-bound apps.
#[derive(Debug, Parser)]
#[command(name = "routeid", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Three demo members behind the proxy on 127.0.0.1, with a guided tour.
    Demo {
        /// Proxy listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listen address (/healthz, /readyz).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
        /// Run the tour and exit (0 when stickiness worked) instead of serving until Ctrl-C.
        #[arg(long)]
        check: bool,
    },
    /// Serve pools from a YAML file of BalancerPool documents; SIGHUP reloads it.
    Standalone {
        /// The pools file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Proxy listen address.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Admin listen address (/healthz, /readyz); loopback by default.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
        /// Proxy tuning.
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// Print the BalancerPool CustomResourceDefinition as YAML.
    Crd,
}

/// Listener-wide proxy settings.
#[derive(Debug, Args, Clone)]
pub struct ProxyArgs {
    /// Add a `Via` header to requests and responses.
    #[arg(long)]
    pub via: bool,
    /// Time a client has to send request headers (also the keep-alive wait on HTTP/1.1).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub client_header_timeout: Duration,
    /// Close a client connection idle for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub client_idle_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Do not log one line per request.
    #[arg(long)]
    pub no_access_log: bool,
}

impl ProxyArgs {
    /// The settings these flags describe.
    pub fn settings(&self) -> ProxySettings {
        ProxySettings {
            via: self.via,
            client_header_timeout: self.client_header_timeout,
            client_idle_timeout: self.client_idle_timeout,
            drain_timeout: self.drain_timeout,
            access_log: !self.no_access_log,
        }
    }
}
