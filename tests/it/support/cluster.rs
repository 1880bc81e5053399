//! Controller test fixtures: a fake API server, the real proxy and the real controller wired
//! together, plus builders for BalancerPools and EndpointSlices.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use routeid::admin::AdminState;
use routeid::admin::manager::{Manager, Persistence};
use routeid::api::BalancerPool;
use routeid::controller::index::ClassFilter;
use routeid::controller::{Controller, ControllerOptions};
use routeid::core::PoolId;
use routeid::proxy::ProxySettings;
use routeid::runtime::Running;
use serde_json::{Value, json};

use crate::support::fake_apiserver::FakeApiServer;

pub const NS: &str = "web";

/// Options for a test controller: quick leases, quick status writes.
pub fn options(identity: &str) -> ControllerOptions {
    let filter = ClassFilter { ingress_class: "routeid".into(), default_class: true };
    let mut o = ControllerOptions::new(None, filter, NS.into(), identity.into());
    o.leader.duration_secs = 3;
    o.leader.grace_secs = 1;
    o.writer.min_interval = Duration::from_millis(100);
    o.writer.rate = 200;
    o.status_resync = Duration::from_millis(300);
    o
}

/// One routeid replica: proxy + controller.
pub struct Replica {
    pub running: Running,
    pub controller: Controller,
}

impl Replica {
    pub async fn start(api: &FakeApiServer, opts: ControllerOptions) -> Replica {
        Self::start_with_manager(api, opts, Manager::new(None, Persistence::InMemory)).await
    }

    /// A replica whose proxy runs with `settings` (a session key, a manual wall clock).
    pub async fn start_with_settings(api: &FakeApiServer, opts: ControllerOptions, settings: ProxySettings) -> Replica {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let admin = AdminState::new(Manager::new(None, Persistence::InMemory), false);
        let (running, _) = Running::start_with_admin(settings, any, any, Vec::new(), admin).await.unwrap();
        let controller = Controller::start(api.client(), opts, running.proxy.clone(), running.admin.clone());
        Replica { running, controller }
    }

    /// A replica whose balancer-manager is `manager`.
    pub async fn start_with_manager(api: &FakeApiServer, opts: ControllerOptions, manager: Manager) -> Replica {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let settings = ProxySettings { drain_timeout: Duration::from_secs(2), access_log: false, ..Default::default() };
        let admin = AdminState::new(manager, false);
        let (running, _) = Running::start_with_admin(settings, any, any, Vec::new(), admin).await.unwrap();
        let controller = Controller::start(api.client(), opts, running.proxy.clone(), running.admin.clone());
        Replica { running, controller }
    }

    /// A replica that also serves HTTPS (`--tls-listen`), certificates from Secrets.
    pub async fn start_tls(api: &FakeApiServer, opts: ControllerOptions) -> Replica {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let settings = ProxySettings { drain_timeout: Duration::from_secs(2), access_log: false, ..Default::default() };
        let tls =
            routeid::runtime::TlsStart { listen: any, secrets: Vec::new(), default: opts.default_tls_secret.clone() };
        let (running, _) = Running::start_full(
            settings,
            any,
            any,
            Vec::new(),
            routeid::admin::AdminState::new(
                routeid::admin::manager::Manager::new(None, routeid::admin::manager::Persistence::InMemory),
                false,
            ),
            Some(tls),
        )
        .await
        .unwrap();
        let controller = Controller::start(api.client(), opts, running.proxy.clone(), running.admin.clone());
        Replica { running, controller }
    }

    pub fn proxy(&self) -> SocketAddr {
        self.running.proxy_addr
    }

    /// Routes of a pool's members in the published table, with their state names.
    pub fn members(&self, name: &str) -> Vec<(String, String)> {
        let snap = self.running.proxy.snapshot();
        let id = PoolId { namespace: NS.into(), name: name.into() };
        let now = self.running.proxy.clock().now_ms();
        snap.table
            .pool(&id)
            .map(|p| p.members.iter().map(|m| (m.route().to_owned(), m.state_name(now).to_owned())).collect())
            .unwrap_or_default()
    }

    pub async fn stop(self) {
        self.controller.shutdown().await;
        self.running.shutdown().await;
    }
}

/// Polls an async condition every 20 ms until it holds, panicking with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(15);

/// A Service-backed pool on `/` with a proxy route cookie; `extra` is merged into the spec.
pub fn pool(name: &str, service: &str, extra: Value) -> BalancerPool {
    let mut spec = json!({
        "backend": {"service": {"name": service, "port": "http"}},
        "sticky": {"names": ["JSESSIONID"], "cookie": {"name": "ROUTEID"}},
    });
    merge(&mut spec, &extra);
    serde_json::from_value(json!({
        "apiVersion": "routeid.io/v1alpha1", "kind": "BalancerPool",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }))
    .unwrap()
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Endpoint conditions.
#[derive(Clone, Copy, Debug)]
pub enum Cond {
    Ready,
    Terminating,
    NotReady,
}

impl Cond {
    /// The endpoint's `conditions`, as the EndpointSlice controller writes them.
    pub fn conditions(self) -> Value {
        let (ready, serving, terminating) = match self {
            Cond::Ready => (true, true, false),
            Cond::Terminating => (false, true, true),
            Cond::NotReady => (false, false, false),
        };
        json!({"ready": ready, "serving": serving, "terminating": terminating})
    }
}

/// A slice named `<service>-<pod>` holding one endpoint: the member's address, port `http`.
pub fn slice(service: &str, pod: &str, addr: SocketAddr, cond: Cond) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{pod}"), "namespace": NS,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}],
        "endpoints": [{
            "addresses": [addr.ip().to_string()],
            "conditions": cond.conditions(),
            "targetRef": {"kind": "Pod", "name": pod, "namespace": NS},
        }],
    }))
    .unwrap()
}

/// Typed access to the fake server through a real client.
pub struct Kube {
    pub client: Client,
}

impl Kube {
    pub fn new(api: &FakeApiServer) -> Kube {
        Kube { client: api.client() }
    }

    pub fn pools(&self) -> Api<BalancerPool> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn slices(&self) -> Api<EndpointSlice> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub async fn create_pool(&self, p: &BalancerPool) {
        self.pools().create(&PostParams::default(), p).await.unwrap();
    }

    pub async fn patch_pool(&self, name: &str, patch: Value) {
        self.pools().patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    }

    /// Creates or replaces a slice (apply).
    pub async fn put_slice(&self, s: &EndpointSlice) {
        let name = s.metadata.name.clone().unwrap();
        self.slices().patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(s)).await.unwrap();
    }

    pub async fn delete_slice(&self, name: &str) {
        self.slices().delete(name, &DeleteParams::default()).await.unwrap();
    }

    /// Creates or replaces a `kubernetes.io/tls` Secret in `ns` (apply).
    pub async fn put_tls_secret(&self, ns: &str, name: &str, data: &routeid::proxy::tls::TlsData) {
        use k8s_openapi::ByteString;
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "type": "kubernetes.io/tls",
        }))
        .unwrap();
        let mut secret = secret;
        secret.data = Some(
            [
                ("tls.crt".to_owned(), ByteString(data.crt.clone())),
                ("tls.key".to_owned(), ByteString(data.key.clone())),
            ]
            .into(),
        );
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), ns);
        api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&secret)).await.unwrap();
    }

    pub async fn status(&self, name: &str) -> Option<routeid::api::BalancerPoolStatus> {
        self.pools().get(name).await.ok().and_then(|p| p.status)
    }

    /// The status condition `type_` of a pool as `(status, reason, message)`.
    pub async fn condition(&self, name: &str, type_: &str) -> Option<(String, String, String)> {
        let st = self.status(name).await?;
        st.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }
}
