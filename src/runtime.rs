//! Starting and stopping the proxy and admin listeners: shared by `standalone`, `demo` and the
//! integration tests, so the tests run exactly what users run.

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
