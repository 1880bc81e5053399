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
use crate::proxy::{Proxy, ProxySettings, server};

/// A running proxy with its admin listener.
#[derive(Debug)]
pub struct Running {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin endpoints listen.
    pub admin_addr: SocketAddr,
    /// The proxy (publish new tables here).
    pub proxy: Arc<Proxy>,
    /// Readiness and other admin state.
    pub admin: Arc<AdminState>,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
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
        let listener = bind(listen).await?;
        let admin_listener = bind(admin_listen).await?;
        let proxy_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: listen, source })?;
        let admin_addr =
            admin_listener.local_addr().map_err(|source| StartError::Bind { addr: admin_listen, source })?;
        let proxy = Proxy::new(settings);
        let conflicts = proxy.publish(pools);
        let admin = Arc::new(admin);
        let (shutdown, rx) = watch::channel(false);
        let proxy_task = tokio::spawn(server::serve(listener, Arc::clone(&proxy), rx.clone()));
        let admin_task = tokio::spawn(admin::serve(admin_listener, Arc::clone(&admin), Arc::clone(&proxy), rx));
        Ok((Running { proxy_addr, admin_addr, proxy, admin, shutdown, proxy_task, admin_task }, conflicts))
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout) and returns
    /// when the proxy has drained.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.proxy_task.await;
        let _ = self.admin_task.await;
    }
}
