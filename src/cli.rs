//! The command line: `demo`, `standalone`, `controller`, `crd`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::proxy::ProxySettings;
use crate::proxy::listener::TrustedProxies;
use crate::proxy::tls::SecretRef;

/// The version `--version` prints: the crate version and the git commit it was built from
/// (`build.rs`; `ROUTEID_GIT_COMMIT` at build time where there is no `.git`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("ROUTEID_GIT_COMMIT"), ")");

/// routeid — a sticky-session load balancer for session-bound apps.
#[derive(Debug, Parser)]
#[command(name = "routeid", version = VERSION, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace) or a filter such as `info,routeid=debug`.
    /// Without it the `RUST_LOG` environment variable is read, and `info` is the default.
    #[arg(long, global = true, value_parser = log_filter)]
    pub log_level: Option<String>,
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
// Parsed once at start and matched once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Three demo members behind the proxy on 127.0.0.1, with a guided tour.
    Demo {
        /// Proxy listen address (`HOST:PORT`, `:PORT` or `PORT` for every IPv4 address).
        #[arg(long, default_value = "127.0.0.1:8080", value_parser = listen_addr)]
        listen: SocketAddr,
        /// Admin listen address: /metrics, /healthz, /readyz, /balancer-manager and its JSON API
        /// under /balancer-manager/api/pools.
        #[arg(long, default_value = "127.0.0.1:9901", value_parser = listen_addr)]
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
        /// Proxy listen address (`HOST:PORT`, `:PORT` or `PORT` for every IPv4 address).
        #[arg(long, default_value = "0.0.0.0:8080", value_parser = listen_addr)]
        listen: SocketAddr,
        /// Admin listen address, loopback by default: /metrics, /healthz, /readyz,
        /// /balancer-manager and its JSON API under /balancer-manager/api/pools.
        #[arg(long, default_value = "127.0.0.1:9901", value_parser = listen_addr)]
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

/// A listen address as servers commonly take it: `HOST:PORT`, or `:PORT` / `PORT` for every
/// IPv4 address (as HAProxy's `bind :8080`).
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    let port = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    s.parse().map_err(|_| {
        format!("{s:?} is not a listen address like 0.0.0.0:8080, 127.0.0.1:8080, [::]:8080, :8080 or 8080")
    })
}

/// A duration as the documentation writes them (`60s`, `500ms`, `1m30s`).
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|_| format!("{s:?} is not a duration like 60s, 500ms or 1m30s"))
}

/// A log filter `tracing` understands (a level, or `RUST_LOG` syntax).
fn log_filter(s: &str) -> Result<String, String> {
    let is_level = s.parse::<tracing_subscriber::filter::LevelFilter>().is_ok();
    if !is_level && !s.contains(['=', ',', '[']) {
        // A bare word is a target name to tracing (`loud` would log the target `loud`): a typo.
        return Err(format!("{s:?} is not a log level (error, warn, info, debug, trace) or filter"));
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{s:?} is not a log level (error, warn, info, debug, trace) or filter: {e}"))
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
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub client_header_timeout: Duration,
    /// Close a client connection idle for this long.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub client_idle_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, default_value = "30s", value_parser = duration)]
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
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub handshake_timeout: Duration,
    /// A file holding the key (at least 32 bytes) that seals Gateway API session values with an
    /// `absoluteTimeout`; every replica must read the same key (the chart mounts a Secret).
    /// Without it a random key is made at start, and such sessions end with the process and are
    /// not honoured by other replicas.
    #[arg(long, env = "ROUTEID_SESSION_KEY_FILE")]
    pub session_key_file: Option<PathBuf>,
}

/// The TLS listener's flags.
#[derive(Debug, Args, Clone)]
pub struct TlsArgs {
    /// Serve HTTPS here too (certificates from the pools' `frontend.tls` Secrets).
    #[arg(long, value_parser = listen_addr)]
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

    /// The settings these flags describe, with the session key read from its file; without
    /// one, a warning when this process serves Gateway API routes (`gateway`).
    pub fn load_settings(&self, gateway: bool) -> Result<ProxySettings, String> {
        let mut settings = self.settings();
        match &self.session_key_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("--session-key-file {}: {e}", path.display()))?;
                let key = crate::core::session::SessionKey::from_bytes(&bytes)
                    .map_err(|e| format!("--session-key-file {}: {e}", path.display()))?;
                settings.session_key = Some(key);
            }
            None if gateway => tracing::warn!(
                "no --session-key-file: Gateway API sessions with an absoluteTimeout use a random key, so they do not survive a restart and other replicas do not honour them"
            ),
            None => {}
        }
        Ok(settings)
    }

    /// The settings these flags describe (no session key: see [`ProxyArgs::load_settings`]).
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
            ..Default::default()
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
    /// Serve the Gateway API (GatewayClasses with `controllerName: routeid.io/gateway-controller`,
    /// their Gateways and HTTPRoutes). Without its CRDs the controller waits for them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_gateways: bool,
    /// Serve only the GatewayClass of this name (default: every GatewayClass whose
    /// `controllerName` is `routeid.io/gateway-controller`; name one when two installations run).
    #[arg(long)]
    pub gateway_class: Option<String>,
    /// The Gateway listener ports `--listen` serves (the ports of routeid's Service that lead to
    /// it): an HTTP listener on another port is `Programmed=False`.
    #[arg(long, value_delimiter = ',', default_value = "80")]
    pub gateway_http_ports: Vec<i32>,
    /// The Gateway listener ports `--tls-listen` serves; ignored without `--tls-listen`.
    #[arg(long, value_delimiter = ',', default_value = "443")]
    pub gateway_https_ports: Vec<i32>,
    /// Proxy listen address (`HOST:PORT`, `:PORT` or `PORT` for every IPv4 address).
    #[arg(long, default_value = "0.0.0.0:8080", value_parser = listen_addr)]
    pub listen: SocketAddr,
    /// Admin listen address: /metrics, /healthz, /readyz, /balancer-manager and its JSON API
    /// under /balancer-manager/api/pools.
    #[arg(long, default_value = "0.0.0.0:9901", value_parser = listen_addr)]
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
    fn listen_addresses_take_the_usual_short_forms() {
        for (given, meant) in [
            (":8080", "0.0.0.0:8080"),
            ("8080", "0.0.0.0:8080"),
            ("127.0.0.1:81", "127.0.0.1:81"),
            ("[::]:82", "[::]:82"),
        ] {
            assert_eq!(listen_addr(given).unwrap().to_string(), meant);
        }
        for bad in ["", ":", "localhost:80", "99999", ":http"] {
            let err = listen_addr(bad).unwrap_err();
            assert!(err.contains("like 0.0.0.0:8080"), "{err}");
        }
        let cli = Cli::try_parse_from(["routeid", "standalone", "-f", "p.yaml", "--listen", ":8080"]).unwrap();
        assert!(matches!(cli.command, Command::Standalone { listen, .. } if listen.to_string() == "0.0.0.0:8080"));
    }

    #[test]
    fn durations_and_log_levels_say_what_they_take() {
        let err = Cli::try_parse_from(["routeid", "standalone", "-f", "p", "--drain-timeout", "60"]).unwrap_err();
        assert!(err.to_string().contains("\"60\" is not a duration like 60s, 500ms or 1m30s"), "{err}");
        assert!(!err.to_string().contains("60sec"), "{err}");
        let cli = Cli::try_parse_from(["routeid", "--log-level", "debug", "crd"]).unwrap();
        assert_eq!(cli.log_level.as_deref(), Some("debug"));
        let cli = Cli::try_parse_from(["routeid", "crd", "--log-level", "info,routeid=trace"]).unwrap();
        assert_eq!(cli.log_level.as_deref(), Some("info,routeid=trace"));
        assert!(Cli::try_parse_from(["routeid", "--log-level", "loud", "crd"]).is_err());
    }

    #[test]
    fn help_names_every_admin_endpoint_and_rust_log() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = cmd.find_subcommand_mut("standalone").unwrap().render_long_help().to_string();
        for endpoint in ["/metrics", "/healthz", "/readyz", "/balancer-manager", "/balancer-manager/api/pools"] {
            assert!(help.contains(endpoint), "{endpoint} missing from: {help}");
        }
        let help = cmd.render_long_help().to_string();
        assert!(help.contains("--log-level") && help.contains("RUST_LOG"), "{help}");
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")) && VERSION.contains("(commit "), "{VERSION}");
    }

    #[test]
    fn the_controller_takes_a_kubeconfig_context() {
        let cli = Cli::try_parse_from(["routeid", "controller", "--context", "staging"]).unwrap();
        assert!(matches!(cli.command, Command::Controller(a) if a.context.as_deref() == Some("staging")));
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
