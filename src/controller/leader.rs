//! Which replica writes status: a `coordination.k8s.io/v1` Lease held through
//! `kube-lease-manager` (server-side apply makes two replicas' claims conflict rather than both
//! win). Every replica serves traffic whatever this says; only status and Events depend on it.
//!
//! A replica that cannot reach the API server keeps believing it leads until it can renew
//! (kube-lease-manager reports no change on errors), so for up to a lease duration two replicas
//! may both write. That is mostly harmless: both derive the same members and conditions from the
//! same objects, and the writes are idempotent merge patches; only member health (each replica's
//! own observation) may differ, and the next status round of the one leader settles it.

//!
//! A standby replica also watches the Lease itself: kube-lease-manager looks at a Lease held by
//! another replica only when it expires, so a leader's graceful shutdown (which releases the
//! Lease) would still leave no writer for a whole lease duration. When the watch shows the Lease
//! released (no holder) or deleted, the standby starts its election over at once and takes the
//! free Lease. Without RBAC `list`/`watch` on leases this falls back to noticing at expiry.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::watches::{self, Events};

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
        let mut released = LeaseWatch { events: lease_watch(&client, &opts), holder: None, errors: 0 };
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
            match elect(manager, &opts, &tx, &mut shutdown, &mut released).await {
                Outcome::Shutdown => return,
                // Start over at once: the Lease is free.
                Outcome::Released => continue,
                Outcome::Failed => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
    });
    (rx, task)
}

/// How one run of a lease manager ended.
enum Outcome {
    /// This replica shuts down (the Lease is released if it held it).
    Shutdown,
    /// Another replica released the Lease.
    Released,
    /// The manager stopped on an error it could not recover from.
    Failed,
}

/// Runs one lease manager, passing on whether this replica leads, until it fails, the Lease
/// is released by another replica while this one stands by, or shutdown.
async fn elect(
    manager: LeaseManager,
    opts: &LeaderOptions,
    tx: &watch::Sender<bool>,
    shutdown: &mut watch::Receiver<bool>,
    released: &mut LeaseWatch,
) -> Outcome {
    let (mut lease_rx, lease_task) = manager.watch().await;
    loop {
        tokio::select! {
            changed = lease_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let leads = *lease_rx.borrow_and_update();
                // Only a real change is passed on: a renewal that says "still leading" must not
                // look like a new term (the status writer writes everything again on one).
                if tx.send_if_modified(|v| std::mem::replace(v, leads) != leads) {
                    tracing::info!(identity = %opts.identity, leads, "leader election");
                }
            }
            _ = stopped(shutdown) => {
                // Closing the channel makes the manager release the Lease.
                drop(lease_rx);
                let _ = lease_task.await;
                tx.send_replace(false);
                return Outcome::Shutdown;
            }
            free = released.next_free(opts), if !*tx.borrow() => if free {
                tracing::info!(lease = %opts.name, "the Lease was released; standing for election now");
                // Stopped, not closed: closing would make the manager "release" a Lease it
                // does not hold, which, read from its stale copy, could clear the new holder's.
                lease_task.abort();
                drop(lease_rx);
                return Outcome::Released;
            }
        }
    }
    tx.send_replace(false);
    match lease_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "leader election stopped; restarting"),
        Err(e) => tracing::warn!(error = %e, "leader election task failed; restarting"),
        Ok(Ok(_)) => {}
    }
    Outcome::Failed
}

/// The watch of this election's Lease object, for a standby to see it released.
struct LeaseWatch {
    events: Events<Lease>,
    /// The holder last seen.
    holder: Option<String>,
    errors: u64,
}

/// The watch of the one Lease `opts` names.
fn lease_watch(client: &Client, opts: &LeaderOptions) -> Events<Lease> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &opts.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", opts.name));
    watches::watch(api, config, "lease")
}

impl LeaseWatch {
    /// The next event's verdict: whether it shows the Lease released, i.e. held by another
    /// replica before and by none now (a Lease created without a holder is no news: the
    /// manager takes a Lease nobody ever held by itself).
    async fn next_free(&mut self, opts: &LeaderOptions) -> bool {
        let now = match self.events.next().await {
            Some(Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l))) => holder(&l),
            Some(Ok(watcher::Event::Delete(_))) => None,
            Some(Err(e)) => {
                self.errors += 1;
                if self.errors == 1 {
                    tracing::warn!(error = %e, lease = %opts.name, hint = "give the service account list and watch on leases",
                        "cannot watch the Lease; a released Lease is noticed only when it expires");
                } else {
                    tracing::debug!(error = %e, "Lease watch failed");
                }
                return false;
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) | None => return false,
        };
        let before = std::mem::replace(&mut self.holder, now);
        released(before.as_deref(), self.holder.as_deref(), &opts.identity)
    }
}

/// Whether a Lease went from held by another replica to held by none.
fn released(before: Option<&str>, now: Option<&str>, me: &str) -> bool {
    before.is_some_and(|h| h != me) && now.is_none()
}

/// Who holds the Lease; `None` when it is free (no holder, or an empty one).
fn holder(l: &Lease) -> Option<String> {
    l.spec.as_ref().and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty())
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    use super::*;

    #[test]
    fn released_means_held_by_another_before_and_by_none_now() {
        let held = |h: Option<&str>| Lease {
            spec: Some(LeaseSpec { holder_identity: h.map(Into::into), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(holder(&held(Some("replica-1"))).as_deref(), Some("replica-1"));
        assert_eq!(holder(&held(Some(""))), None);
        assert_eq!(holder(&Lease::default()), None);
        assert!(released(Some("replica-1"), None, "replica-2"));
        assert!(!released(None, None, "replica-2"), "created without a holder: the manager takes it");
        assert!(!released(Some("replica-2"), None, "replica-2"), "our own release");
        assert!(!released(Some("replica-1"), Some("replica-3"), "replica-2"), "taken over, not free");
    }
}
