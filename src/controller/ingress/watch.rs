//! The run loop's Ingress side: the watchers (Ingresses in scope, IngressClasses cluster
//! wide, the `--publish-service` Service outside `--namespace`), their events into [`super::Ingresses`], and what the loop tells about Ingresses
//! (Events, `status.loadBalancer`). Kept here so the shared loop only gains a few calls.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{
    Ingress, IngressClass, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressPortStatus, IngressStatus,
};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use super::{IngressKey, IngressNews, Publish, ingress_of};
use crate::controller::status::{Outbound, PoolEvent};
use crate::controller::watches::{self, Events};
use crate::controller::{ControllerOptions, ListState, Loop, watch_hint};

/// The Ingress and IngressClass watch streams; streams that never yield when Ingresses are off.
pub(crate) fn streams(client: &Client, opts: &ControllerOptions) -> (Events<Ingress>, Events<IngressClass>) {
    if opts.ingress.is_none() {
        return (futures_util::stream::pending().boxed(), futures_util::stream::pending().boxed());
    }
    let ingresses: Api<Ingress> = match &opts.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let classes: Api<IngressClass> = Api::all(client.clone());
    (
        watches::watch(ingresses, watcher::Config::default(), "ingresses"),
        watches::watch(classes, watcher::Config::default(), "ingressclasses"),
    )
}

/// A watch of the one `--publish-service` Service when it lies outside the watched namespace
/// (the Service watch does not see it); a stream that never yields otherwise. Needs only
/// get/list/watch on that Service in its namespace.
pub(crate) fn publish_service_stream(client: &Client, opts: &ControllerOptions) -> Events<Service> {
    match (&opts.publish, &opts.namespace) {
        (Publish::Service(ns, name), Some(watched)) if ns != watched && opts.ingress.is_some() => {
            let api: Api<Service> = Api::namespaced(client.clone(), ns);
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            tracing::info!(service = %format!("{ns}/{name}"), "watching the publish Service outside --namespace");
            watches::watch(api, config, "publish-service")
        }
        _ => futures_util::stream::pending().boxed(),
    }
}

fn key(i: &Ingress) -> IngressKey {
    (i.metadata.namespace.clone().unwrap_or_default(), i.metadata.name.clone().unwrap_or_default())
}

fn class_name(c: &IngressClass) -> String {
    c.metadata.name.clone().unwrap_or_default()
}

impl Loop {
    /// An Ingress watch event: the Ingress is (re-)translated, its news sent as Events.
    pub(crate) fn on_ingress(
        &mut self,
        ev: Result<watcher::Event<Ingress>, watcher::Error>,
        st: &mut ListState<IngressKey>,
    ) {
        let news = match ev {
            Ok(watcher::Event::Apply(mut i)) => {
                i.metadata.managed_fields = None;
                self.ingresses.apply(i, &mut self.index)
            }
            Ok(watcher::Event::Delete(i)) => {
                self.ingresses.delete(&key(&i), &mut self.index);
                Vec::new()
            }
            Ok(watcher::Event::Init) => {
                st.seen = Some(HashSet::new());
                Vec::new()
            }
            Ok(watcher::Event::InitApply(mut i)) => {
                if let Some(seen) = &mut st.seen {
                    seen.insert(key(&i));
                }
                i.metadata.managed_fields = None;
                self.ingresses.apply(i, &mut self.index)
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = st.seen.take() {
                    self.ingresses.retain(&seen, &mut self.index);
                }
                st.synced = true;
                Vec::new()
            }
            Err(e) => {
                self.watch_failed("ingresses", &e);
                Vec::new()
            }
        };
        self.send_ingress_news(news);
    }

    /// An IngressClass watch event: every Ingress is looked at again (ours may have changed).
    pub(crate) fn on_ingress_class(
        &mut self,
        ev: Result<watcher::Event<IngressClass>, watcher::Error>,
        st: &mut ListState<String>,
    ) {
        let news = match ev {
            Ok(watcher::Event::Apply(c)) => self.ingresses.apply_class(class_name(&c), Some(c), &mut self.index),
            Ok(watcher::Event::Delete(c)) => self.ingresses.apply_class(class_name(&c), None, &mut self.index),
            Ok(watcher::Event::Init) => {
                st.seen = Some(HashSet::new());
                Vec::new()
            }
            Ok(watcher::Event::InitApply(c)) => {
                if let Some(seen) = &mut st.seen {
                    seen.insert(class_name(&c));
                }
                self.ingresses.apply_class(class_name(&c), Some(c), &mut self.index)
            }
            Ok(watcher::Event::InitDone) => {
                st.synced = true;
                match st.seen.take() {
                    Some(seen) => self.ingresses.retain_classes(&seen, &mut self.index),
                    None => Vec::new(),
                }
            }
            Err(e) => {
                self.watch_failed("ingressclasses", &e);
                Vec::new()
            }
        };
        self.send_ingress_news(news);
    }

    /// A watch event of the `--publish-service` Service outside the watched namespace; a re-list
    /// that no longer finds it forgets it (its deletion may have been missed).
    pub(crate) fn on_publish_service(
        &mut self,
        ev: Result<watcher::Event<Service>, watcher::Error>,
        st: &mut ListState<(String, String)>,
    ) {
        match ev {
            Ok(watcher::Event::Apply(mut s)) => {
                s.metadata.managed_fields = None;
                self.publish_service = Some(s);
            }
            Ok(watcher::Event::InitApply(mut s)) => {
                if let Some(seen) = &mut st.seen {
                    seen.insert((s.metadata.namespace.clone().unwrap_or_default(), s.name_any()));
                }
                s.metadata.managed_fields = None;
                self.publish_service = Some(s);
            }
            Ok(watcher::Event::Delete(_)) => self.publish_service = None,
            Ok(watcher::Event::Init) => st.seen = Some(HashSet::new()),
            Ok(watcher::Event::InitDone) => {
                if st.seen.take().is_some_and(|seen| seen.is_empty()) {
                    self.publish_service = None;
                }
            }
            Err(e) => self.watch_failed("publish-service", &e),
        }
    }

    fn watch_failed(&self, what: &'static str, e: &watcher::Error) {
        self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
        self.proxy.metrics().watch_restarts.with_label_values(&[what]).inc();
        tracing::warn!(error = %e, hint = watch_hint(e), "{what} watch failed; the last table keeps serving, retrying with backoff");
    }

    /// Sends news about Ingresses as Events on them (written by the Lease holder only).
    pub(crate) fn send_ingress_news(&self, news: Vec<IngressNews>) {
        for n in news {
            let Some(ing) = self.ingresses.ingress(&n.key) else { continue };
            let reference = ing.object_ref(&());
            let _ = self.out.send(Outbound::Event(PoolEvent {
                reference,
                warning: n.warning,
                reason: n.reason,
                note: n.note,
            }));
        }
    }

    /// A Warning Event on each Ingress that newly lost a host+path to an older object.
    pub(crate) fn send_conflict_events(&mut self) {
        let mut news = Vec::new();
        let mut now = HashSet::new();
        for c in &self.conflicts {
            let Some(key) = ingress_of(&c.loser) else { continue };
            now.insert((c.loser.clone(), c.winner.clone()));
            if self.ingresses.reported_conflicts.contains(&(c.loser.clone(), c.winner.clone())) {
                continue;
            }
            let winner = match ingress_of(&c.winner) {
                Some((ns, name)) => format!("Ingress {ns}/{name}"),
                None => format!("BalancerPool {}", c.winner),
            };
            news.push(IngressNews {
                key,
                warning: true,
                reason: "Conflict",
                note: format!("host {} path {} is already served by the older {winner}", c.host, c.prefix),
            });
        }
        self.ingresses.reported_conflicts = now;
        self.send_ingress_news(news);
    }

    /// The addresses `status.loadBalancer` lists; `None` when nothing is published.
    fn published_addresses(&self) -> Option<Vec<IngressLoadBalancerIngress>> {
        Some(match &self.opts.publish {
            Publish::Nothing => return None,
            Publish::Addresses(a) => a.iter().map(|a| lb_entry(a)).collect(),
            Publish::Service(ns, name) => self
                .publish_service
                .as_ref()
                .or_else(|| self.index.service(&(ns.clone(), name.clone())).map(|s| &**s))
                .and_then(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|i| IngressLoadBalancerIngress { ip: i.ip, hostname: i.hostname, ports: None })
                .collect(),
        })
    }

    /// Logs once each time the `--publish-service` Service goes missing: the status then lists no
    /// address, which should not go unexplained.
    fn say_if_publish_service_missing(&mut self) {
        let Publish::Service(ns, name) = &self.opts.publish else { return };
        let found = self.publish_service.is_some() || self.index.service(&(ns.clone(), name.clone())).is_some();
        if !found && !self.publish_service_missing {
            tracing::warn!(service = %format!("{ns}/{name}"), "the --publish-service Service is not found (yet): Ingress status lists no address until it exists");
        }
        self.publish_service_missing = !found;
    }

    /// `status.loadBalancer` of every served Ingress, when it differs from what the object says;
    /// emptied on each Ingress that stopped being served (called by the Lease holder only).
    pub(crate) fn send_ingress_statuses(&mut self) {
        let Some(addresses) = self.published_addresses() else { return };
        self.say_if_publish_service_missing();
        self.clear_left_statuses(&addresses);
        for (key, _) in self.ingresses.served() {
            let Some(ing) = self.ingresses.ingress(key) else { continue };
            let mut entries = addresses.clone();
            if !self.ingresses.notes(key).is_empty() {
                // Ingress status has no conditions: the port status is where a problem goes.
                let port = IngressPortStatus {
                    port: 443,
                    protocol: "TCP".into(),
                    error: Some("routeid.io/TLSNotApplied".into()),
                };
                entries.iter_mut().for_each(|e| e.ports = Some(vec![port.clone()]));
            }
            let desired = IngressStatus { load_balancer: Some(IngressLoadBalancerStatus { ingress: Some(entries) }) };
            let current = ing.status.clone().unwrap_or_default();
            let same = current.load_balancer.and_then(|l| l.ingress).unwrap_or_default()
                == desired.load_balancer.clone().and_then(|l| l.ingress).unwrap_or_default();
            if !same {
                let _ = self.out.send(Outbound::IngressStatus { key: key.clone(), status: Box::new(desired) });
            }
        }
    }
}

impl Loop {
    /// Empties `status.loadBalancer` of the Ingresses that stopped being served, once each, and
    /// only where it still lists routeid's addresses: another controller that took the Ingress
    /// over may already have written its own.
    fn clear_left_statuses(&mut self, ours: &[IngressLoadBalancerIngress]) {
        let left: Vec<IngressKey> = self.ingresses.left().cloned().collect();
        for key in left {
            self.ingresses.status_cleared(&key);
            let Some(ing) = self.ingresses.ingress(&key) else { continue };
            let current =
                ing.status.as_ref().and_then(|s| s.load_balancer.as_ref()?.ingress.clone()).unwrap_or_default();
            if current.is_empty() || !same_addresses(&current, ours) {
                continue;
            }
            let empty = IngressStatus { load_balancer: Some(IngressLoadBalancerStatus { ingress: Some(Vec::new()) }) };
            let _ = self.out.send(Outbound::IngressStatus { key, status: Box::new(empty) });
        }
    }
}

/// Whether two address lists name the same addresses (ports aside).
fn same_addresses(a: &[IngressLoadBalancerIngress], b: &[IngressLoadBalancerIngress]) -> bool {
    let names = |l: &[IngressLoadBalancerIngress]| -> Vec<(Option<String>, Option<String>)> {
        l.iter().map(|e| (e.ip.clone(), e.hostname.clone())).collect()
    };
    names(a) == names(b)
}

fn lb_entry(a: &str) -> IngressLoadBalancerIngress {
    if a.parse::<std::net::IpAddr>().is_ok() {
        IngressLoadBalancerIngress { ip: Some(a.to_owned()), ..Default::default() }
    } else {
        IngressLoadBalancerIngress { hostname: Some(a.to_owned()), ..Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_routeid_s_own_addresses_are_cleared() {
        let ours = vec![lb_entry("203.0.113.7"), lb_entry("lb.example.com")];
        let mut with_ports = ours.clone();
        with_ports[0].ports = Some(vec![IngressPortStatus { port: 443, protocol: "TCP".into(), error: None }]);
        assert!(same_addresses(&with_ports, &ours), "ports aside");
        assert!(!same_addresses(&[lb_entry("198.51.100.9")], &ours), "another controller's status stays");
        assert!(!same_addresses(&ours[..1], &ours));
    }
}
