//! `routeid check`: validate pools without serving them, like `haproxy -c` and `nginx -t`.
//!
//! A pools file is read by the very loader `routeid standalone` uses; BalancerPools in a cluster
//! go through the controller's own index (class filter, Service port resolution, EndpointSlice
//! derivation, validation, host and prefix conflicts) fed from one list of each kind. Nothing is
//! written anywhere: the cluster is only listed. Either way the answer is every problem found,
//! or a one-screen summary of what would be served.

use std::fmt::Write as _;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::api::BalancerPool;
use crate::controller::index::{ClassFilter, Index, problems_message};
use crate::core::config::{HostMatch, PoolConfig};
use crate::core::table::RoutingTable;

/// Rows of the summary before it says how many more there are: one screen.
const MAX_ROWS: usize = 40;

/// What a check found: the summary of the pools that would serve, and every problem.
#[derive(Debug, Default)]
pub struct Report {
    /// The one-screen table of pools.
    pub summary: String,
    /// One line per problem; empty when everything would be served.
    pub problems: Vec<String>,
}

/// The pools as one screen: name, hosts, prefix, members, lb method, stickiness.
pub fn summary(pools: &[Arc<PoolConfig>]) -> String {
    let members: usize = pools.iter().map(|p| p.members.len()).sum();
    let mut out = format!("{} pools, {} members\n", pools.len(), members);
    let rows: Vec<[String; 6]> = pools.iter().take(MAX_ROWS).map(|p| row(p)).collect();
    let header = ["POOL", "HOSTS", "PREFIX", "MEMBERS", "LB", "STICKY"].map(str::to_owned);
    let mut widths = [0usize; 6];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (w, cell)) in widths.iter().zip(r).enumerate() {
            let _ = if i + 1 == r.len() { write!(line, "{cell}") } else { write!(line, "{cell:<w$}  ") };
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if pools.len() > MAX_ROWS {
        let _ = writeln!(out, "... and {} more pools", pools.len() - MAX_ROWS);
    }
    out
}

fn row(p: &PoolConfig) -> [String; 6] {
    let hosts = if p.hosts.is_empty() {
        "*".to_owned()
    } else {
        let names: Vec<String> = p
            .hosts
            .iter()
            .map(|h| match h {
                HostMatch::Exact(h) => h.clone(),
                HostMatch::Wildcard(suffix) => format!("*{suffix}"),
            })
            .collect();
        names.join(",")
    };
    let prefix = if p.path_exact { format!("={}", p.path_prefix) } else { p.path_prefix.clone() };
    let sticky = match &p.sticky {
        None => "no".to_owned(),
        Some(s) => {
            let names = if s.cookie_name == s.param_name {
                s.cookie_name.clone()
            } else {
                format!("{}|{}", s.cookie_name, s.param_name)
            };
            match &s.cookie {
                Some(c) => format!("{names}, cookie {} ({:?})", c.name, c.mode),
                None => names,
            }
        }
    };
    [p.id.to_string(), hosts, prefix, p.members.len().to_string(), format!("{:?}", p.lb_method), sticky]
}

/// Checks a pools file exactly as `routeid standalone` loads it.
pub fn file(path: &std::path::Path) -> Report {
    match crate::standalone::load(path) {
        Ok(loaded) => {
            let pools: Vec<Arc<PoolConfig>> = loaded.pools.into_iter().map(Arc::new).collect();
            Report { summary: summary(&pools), problems: Vec::new() }
        }
        Err(e) => Report { summary: String::new(), problems: e.problems },
    }
}

/// Checks BalancerPools as the controller serving `filter` would, from one list of pools,
/// Services and EndpointSlices.
pub fn objects(
    filter: ClassFilter,
    pools: Vec<BalancerPool>,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
) -> Report {
    let mut index = Index::new(filter);
    for s in services {
        index.apply_service(s);
    }
    for s in slices {
        index.apply_slice(s);
    }
    for p in pools {
        index.apply_pool(p);
    }
    index.rederive();
    let mut problems: Vec<String> = index
        .pools()
        .filter_map(|(id, e)| e.result.as_ref().err().map(|p| format!("pool {id}: {}", problems_message(p))))
        .collect();
    let configs = index.configs();
    let (_, conflicts) = RoutingTable::build(configs.clone(), None);
    problems.extend(conflicts.into_iter().map(|c| {
        format!("pool {} claims host {} prefix {} already served by pool {}", c.loser, c.host, c.prefix, c.winner)
    }));
    Report { summary: summary(&configs), problems }
}

/// Lists BalancerPools, Services and EndpointSlices (of `namespace`, or all) and checks them.
/// Only lists: nothing is written.
pub async fn cluster(client: kube::Client, namespace: Option<&str>, filter: ClassFilter) -> Result<Report, String> {
    let pools = list::<BalancerPool>(&client, namespace).await?;
    let services = list::<Service>(&client, namespace).await?;
    let slices = list::<EndpointSlice>(&client, namespace).await?;
    Ok(objects(filter, pools, services, slices))
}

async fn list<K>(client: &kube::Client, namespace: Option<&str>) -> Result<Vec<K>, String>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: kube::Api<K> = match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    api.list(&Default::default()).await.map(|l| l.items).map_err(|e| format!("cannot list {kind}s: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_hosts_prefixes_members_and_stickiness() {
        let pools = crate::standalone::parse_pools(include_str!("../examples/pools.yaml")).unwrap();
        let pools: Vec<Arc<PoolConfig>> = pools.into_iter().map(Arc::new).collect();
        let text = summary(&pools);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2 pools, 5 members", "{text}");
        assert!(lines[1].starts_with("POOL") && lines[1].ends_with("STICKY"), "{text}");
        assert!(lines[2].starts_with("default/shop") && lines[2].contains("shop.example.com"), "{text}");
        assert!(lines[2].contains("JSESSIONID|jsessionid, cookie ROUTEID (Insert)"), "{text}");
        assert!(lines[3].starts_with("web/api") && lines[3].ends_with("no"), "{text}");
    }

    #[test]
    fn a_long_list_stays_on_one_screen() {
        let yaml: String = (0..50)
            .map(|i| {
                format!(
                    "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {{name: p{i}}}\nspec:\n  frontend: {{pathPrefix: /p{i}}}\n  backend: {{members: [{{address: \"127.0.0.1:80\", route: a}}]}}\n---\n"
                )
            })
            .collect();
        let pools: Vec<Arc<PoolConfig>> =
            crate::standalone::parse_pools(&yaml).unwrap().into_iter().map(Arc::new).collect();
        let text = summary(&pools);
        assert_eq!(text.lines().count(), 2 + MAX_ROWS + 1, "{text}");
        assert!(text.ends_with("... and 10 more pools\n"), "{text}");
    }
}
