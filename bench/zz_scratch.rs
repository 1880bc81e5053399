use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use routeid::api::{Backend, BalancerPool, BalancerPoolSpec, ServiceRef};
use routeid::controller::index::{ClassFilter, Index};
use std::collections::BTreeMap;
use std::time::Instant;

fn slice(name: &str, first_ip: u32, count: u32, term: Option<u32>, rv: u64) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: (0..count)
            .map(|i| {
                let ip = first_ip + i;
                Endpoint {
                    addresses: vec![std::net::Ipv4Addr::from(ip).to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(term != Some(i)),
                        serving: Some(true),
                        terminating: Some(term == Some(i)),
                    }),
                    target_ref: Some(ObjectReference { name: Some(format!("big-{ip:x}")), ..Default::default() }),
                    ..Default::default()
                }
            })
            .collect(),
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("web".into()),
            resource_version: Some(rv.to_string()),
            labels: Some(BTreeMap::from([("kubernetes.io/service-name".to_owned(), "big".to_owned())])),
            ..Default::default()
        },
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

fn main() {
    let mut p = BalancerPool::new(
        "big",
        BalancerPoolSpec {
            backend: Backend {
                service: Some(ServiceRef { name: "big".into(), port: IntOrString::String("http".into()) }),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    p.metadata.namespace = Some("web".into());
    let mut ix = Index::new(ClassFilter { ingress_class: "routeid".into(), default_class: true });
    ix.apply_pool(p);
    let base = u32::from(std::net::Ipv4Addr::new(10, 1, 0, 0));
    for s in 0..100u32 {
        ix.apply_slice(slice(&format!("big-{s}"), base + s * 100, 100, None, 1));
    }
    ix.rederive();
    let n = 3000;
    let t = Instant::now();
    for r in 0..n {
        let s = (r % 100) as u32;
        ix.apply_slice(slice(&format!("big-{s}"), base + s * 100, 100, Some((r / 100 % 100) as u32), 2 + r as u64));
        ix.rederive();
        ix.take_publish_needed();
    }
    println!("apply+rederive: {:?}", t.elapsed() / n as u32);
}
