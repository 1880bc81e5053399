//! The command line: `demo`, `standalone`, `controller`, `crd`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::proxy::ProxySettings;
use crate::proxy::listener::TrustedProxies;
use crate::proxy::tls::SecretRef;

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
        /// TLS listener.
        #[command(flatten)]
        tls: TlsArgs,
        /// Proxy tuning.
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// Run the Kubernetes controller and the proxy in one process: BalancerPools and their
    /// Services' EndpointSlices become the routing table.
    Controller(ControllerArgs),
    /// Print the BalancerPool CustomResourceDefinition as YAML.
    Crd,
    /// Validate pools without serving them (like `haproxy -c`, `nginx -t`): a pools file
    /// exactly as `standalone` reads it, or with `--kubeconfig` the BalancerPools of a cluster
    /// as the controller would serve them (only lists; nothing is written). Prints a summary
    /// and exits 0, or prints every problem and exits 2.
    Check(CheckArgs),
    /// List the Ingresses of a class (e.g. `nginx`) and, per annotation, whether routeid
    /// supports it, and which Ingresses routeid would refuse and why: what moving them to routeid
    /// means, before switching `ingressClassName`.
    IngressCheck {
        /// A kubeconfig file (default: `KUBECONFIG`, `~/.kube/config`, in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Only this namespace (default: all).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// The class whose Ingresses are checked.
        #[arg(long, default_value = "nginx")]
        class: String,
    },
}

/// `routeid check` flags: a file or a cluster.
#[derive(Debug, Args, Clone)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["file", "kubeconfig"]))]
pub struct CheckArgs {
    /// The pools file to check.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Check the BalancerPools of the cluster this kubeconfig names.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, requires = "kubeconfig")]
    pub context: Option<String>,
    /// Only this namespace (default: all).
    #[arg(short = 'n', long, requires = "kubeconfig")]
    pub namespace: Option<String>,
    /// Check the pools whose `spec.ingressClassName` is this.
    #[arg(long, default_value = "routeid", requires = "kubeconfig")]
    pub ingress_class: String,
    /// Also check pools without `spec.ingressClassName` (as a default-class controller).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub default_class: bool,
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
    /// Log one request in N (hot paths).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub access_log_sample: u32,
    /// Do not count requests in metrics (for measuring what metrics cost).
    #[arg(long)]
    pub no_metrics: bool,
    /// Token that allows changes in the balancer-manager; without one it is read-only.
    #[arg(long, env = "ROUTEID_MANAGER_TOKEN", hide_env_values = true)]
    pub manager_token: Option<String>,
    /// Front proxies (CIDRs or addresses, comma-separated) whose X-Forwarded-For/-Proto/-Host
    /// and PROXY protocol headers are believed; from any other peer they are replaced.
    #[arg(long, default_value = "")]
    pub trusted_proxies: TrustedProxies,
    /// The plain listener expects a PROXY protocol header (v1 or v2) from --trusted-proxies.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// The TLS listener expects a PROXY protocol header (v1 or v2) from --trusted-proxies.
    #[arg(long)]
    pub tls_proxy_protocol: bool,
    /// Time a client has for the PROXY header and the TLS handshake.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
}

/// The TLS listener's flags.
#[derive(Debug, Args, Clone)]
pub struct TlsArgs {
    /// Serve HTTPS here too (certificates from the pools' `frontend.tls` Secrets).
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// The Secret (`namespace/name`) served to clients that send no server name or an unknown
    /// one; without it such handshakes fail.
    #[arg(long)]
    pub default_tls_secret: Option<SecretRef>,
}

impl ProxyArgs {
    /// Refuses flag combinations that cannot work: a PROXY protocol listener believes headers
    /// from `--trusted-proxies` only, so with none it would drop every connection.
    pub fn check(&self) -> Result<(), String> {
        if (self.proxy_protocol || self.tls_proxy_protocol) && self.trusted_proxies.is_empty() {
            let flag = if self.proxy_protocol { "--proxy-protocol" } else { "--tls-proxy-protocol" };
            return Err(format!(
                "{flag} needs --trusted-proxies (the load balancer's addresses): without it every connection is refused"
            ));
        }
        Ok(())
    }

    /// The settings these flags describe.
    pub fn settings(&self) -> ProxySettings {
        ProxySettings {
            via: self.via,
            client_header_timeout: self.client_header_timeout,
            client_idle_timeout: self.client_idle_timeout,
            drain_timeout: self.drain_timeout,
            access_log: !self.no_access_log,
            access_log_sample: self.access_log_sample,
            metrics: !self.no_metrics,
            trusted_proxies: self.trusted_proxies.clone(),
            proxy_protocol: self.proxy_protocol,
            tls_proxy_protocol: self.tls_proxy_protocol,
            handshake_timeout: self.handshake_timeout,
        }
    }
}

/// `routeid controller` flags.
#[derive(Debug, Args, Clone)]
pub struct ControllerArgs {
    /// A kubeconfig file; without it `KUBECONFIG`, `~/.kube/config`, then the in-cluster service
    /// account are tried.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Watch only this namespace (sidecar mode, least privilege); all namespaces when absent.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Serve pools whose `spec.ingressClassName` is this.
    #[arg(long, default_value = "routeid")]
    pub ingress_class: String,
    /// Also serve pools without `spec.ingressClassName` (this installation is the default class).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub default_class: bool,
    /// Serve Kubernetes Ingresses whose IngressClass (named by `--ingress-class`) has
    /// `spec.controller: routeid.io/ingress-controller` (needs RBAC for ingresses and
    /// ingressclasses; `false` serves BalancerPools only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_ingresses: bool,
    /// Also serve Ingresses without any class when routeid's IngressClass carries
    /// `ingressclass.kubernetes.io/is-default-class: "true"`.
    #[arg(long)]
    pub watch_ingress_without_class: bool,
    /// Write this Service's load-balancer addresses (`NAMESPACE/NAME`) into the status of the
    /// Ingresses served.
    #[arg(long, conflicts_with = "publish_status_address")]
    pub publish_service: Option<String>,
    /// Write these addresses (comma-separated IPs or host names) into the status of the
    /// Ingresses served.
    #[arg(long, value_delimiter = ',')]
    pub publish_status_address: Vec<String>,
    /// Proxy listen address.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Admin listen address (/healthz, /readyz).
    #[arg(long, default_value = "0.0.0.0:9901")]
    pub admin_listen: SocketAddr,
    /// TLS listener.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Namespace of the leader-election Lease (default: `--namespace`, `POD_NAMESPACE`, `default`).
    #[arg(long)]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease and in Events (default: `POD_NAME`, the host name).
    #[arg(long)]
    pub identity: Option<String>,
    /// Do not elect a leader: this replica always writes status (a single replica).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Proxy tuning.
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy_args(args: &[&str]) -> ProxyArgs {
        let argv = ["routeid", "standalone", "-f", "pools.yaml"].iter().chain(args);
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Standalone { proxy, .. }) => proxy,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies() {
        for flag in ["--proxy-protocol", "--tls-proxy-protocol"] {
            let err = proxy_args(&[flag]).check().unwrap_err();
            assert!(err.starts_with(flag) && err.contains("--trusted-proxies"), "{err}");
            proxy_args(&[flag, "--trusted-proxies", "10.0.0.0/8"]).check().unwrap();
        }
        proxy_args(&[]).check().unwrap();
    }
}
