//! TLS Secrets, read with least privilege: one watch per Secret a pool names (or
//! `--default-tls-secret`), each restricted by `fieldSelector=metadata.name=<name>` in the pool's
//! namespace. The controller therefore never lists or receives a Secret no pool asked for —
//! neither its content nor its existence — which a namespace-wide watch (even one filtered by
//! `type=kubernetes.io/tls`) would do.
//!
//! A watch reports the Secret's content, or why there is none (deleted, never there, wrong
//! type), to the controller loop, which hands it to the proxy: a broken Secret keeps its last
//! good certificate there. Watches start and stop as pools start and stop naming Secrets.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::core::PoolConfig;
use crate::proxy::tls::{CertError, SecretRef, TlsData};

/// What a Secret watch saw.
#[derive(Debug)]
pub struct SecretEvent {
    /// Which Secret.
    pub secret: SecretRef,
    /// Its content, or why it cannot serve.
    pub data: Result<TlsData, CertError>,
}

/// The running Secret watches.
pub struct SecretWatches {
    client: Client,
    tasks: HashMap<SecretRef, JoinHandle<()>>,
    tx: mpsc::UnboundedSender<SecretEvent>,
}

impl SecretWatches {
    /// No watches yet; events arrive on the receiver.
    pub fn new(client: Client) -> (SecretWatches, mpsc::UnboundedReceiver<SecretEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (SecretWatches { client, tasks: HashMap::new(), tx }, rx)
    }

    /// Watches exactly `wanted`: starts the new ones, stops the others. Returns the stopped ones
    /// and the started ones (pending until their watch first lists).
    pub fn reconcile(&mut self, wanted: &HashSet<SecretRef>) -> (Vec<SecretRef>, Vec<SecretRef>) {
        let gone: Vec<SecretRef> = self.tasks.keys().filter(|r| !wanted.contains(*r)).cloned().collect();
        for r in &gone {
            if let Some(t) = self.tasks.remove(r) {
                t.abort();
            }
        }
        let mut started = Vec::new();
        for r in wanted {
            if !self.tasks.contains_key(r) {
                let task = tokio::spawn(watch_one(self.client.clone(), r.clone(), self.tx.clone()));
                self.tasks.insert(r.clone(), task);
                started.push(r.clone());
            }
        }
        (gone, started)
    }
}

impl std::fmt::Debug for SecretWatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretWatches").field("watching", &self.tasks.len()).finish()
    }
}

impl Drop for SecretWatches {
    fn drop(&mut self) {
        self.tasks.values().for_each(JoinHandle::abort);
    }
}

/// The Secrets `configs` name (`frontend.tls` certificates and `backend.tls.caSecretName`),
/// each in its pool's namespace, plus the default.
pub fn named(configs: &[std::sync::Arc<PoolConfig>], default: Option<&SecretRef>) -> HashSet<SecretRef> {
    let mut out = HashSet::new();
    for c in configs {
        let ns = &c.id.namespace;
        out.extend(c.tls.iter().map(|t| SecretRef::new(ns, &t.secret_name)));
        let ca = c.backend_tls.as_ref().and_then(|b| b.ca_secret_name.as_deref());
        out.extend(ca.map(|n| SecretRef::new(ns, n)));
    }
    out.extend(default.cloned());
    out
}

async fn watch_one(client: Client, r: SecretRef, tx: mpsc::UnboundedSender<SecretEvent>) {
    let api: Api<Secret> = Api::namespaced(client, &r.namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", r.name));
    let mut events = super::watches::watch(api, cfg, "secrets");
    let mut listed = false;
    let send = |data| tx.send(SecretEvent { secret: r.clone(), data }).is_ok();
    while let Some(ev) = events.next().await {
        let alive = match ev {
            Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                listed = true;
                send(TlsData::from_secret(&s))
            }
            Ok(watcher::Event::Delete(_)) => send(Err(CertError::Missing)),
            Ok(watcher::Event::Init) => {
                listed = false;
                true
            }
            Ok(watcher::Event::InitDone) => listed || send(Err(CertError::Missing)),
            Err(e) => {
                let hint = if e.to_string().contains("403") {
                    "the service account may not get/list/watch Secrets in this namespace"
                } else {
                    ""
                };
                tracing::warn!(secret = %r, error = %e, hint, "Secret watch failed; the last good certificate keeps serving, retrying with backoff");
                true
            }
        };
        if !alive {
            return;
        }
    }
}
