//! Which replica writes status: a `coordination.k8s.io/v1` Lease held through
//! `kube-lease-manager` (server-side apply makes two replicas' claims conflict rather than both
//! win). Every replica serves traffic whatever this says; only status and Events depend on it.
//!
//! A replica that cannot reach the API server keeps believing it leads until it can renew
//! (kube-lease-manager reports no change on errors), so for up to a lease duration two replicas
//! may both write. That is mostly harmless: both derive the same members and conditions from the
//! same objects, and the writes are idempotent merge patches; only member health (each replica's
//! own observation) may differ, and the next status round of the one leader settles it.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Leader-election settings.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    /// False: this replica always writes (a single replica, or tests).
    pub enabled: bool,
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Lease validity after a renewal, in seconds.
    pub duration_secs: u64,
    /// Renew this many seconds before expiry.
    pub grace_secs: u64,
}

/// Starts leader election; the receiver holds whether this replica leads now. The task stops
/// (releasing the Lease) when `shutdown` turns true.
pub fn spawn(
    client: Client,
    opts: LeaderOptions,
    mut shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(!opts.enabled);
    if !opts.enabled {
        let task = tokio::spawn(async move {
            stopped(&mut shutdown).await;
            drop(tx);
        });
        return (rx, task);
    }
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let built = LeaseManagerBuilder::new(client.clone(), opts.name.clone())
                .with_namespace(opts.namespace.clone())
                .with_identity(opts.identity.clone())
                .with_duration(opts.duration_secs)
                .with_grace(opts.grace_secs)
                .build()
                .await;
            let manager = match built {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, lease = %opts.name, "cannot set up leader election; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut shutdown) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            backoff = Duration::from_millis(500);
            let (mut lease_rx, lease_task) = manager.watch().await;
            loop {
                tokio::select! {
                    changed = lease_rx.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let leads = *lease_rx.borrow_and_update();
                        tracing::info!(identity = %opts.identity, leads, "leader election");
                        tx.send_replace(leads);
                    }
                    _ = stopped(&mut shutdown) => {
                        // Closing the channel makes the manager release the Lease.
                        drop(lease_rx);
                        let _ = lease_task.await;
                        tx.send_replace(false);
                        return;
                    }
                }
            }
            // The manager stopped (an error it could not recover from): start over.
            tx.send_replace(false);
            match lease_task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election stopped; restarting"),
                Err(e) => tracing::warn!(error = %e, "leader election task failed; restarting"),
                Ok(Ok(_)) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
    });
    (rx, task)
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
