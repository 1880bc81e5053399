//! The controller's side of the CRD: CEL rules and printer columns are in the generated YAML,
//! and the cluster example is a valid Service-backed pool.

use routeid::api::BalancerPool;
use routeid::controller::derive::derive_pool;
use routeid::controller::index::pool_id;

#[test]
fn crd_carries_cel_rules_and_printer_columns() {
    let crd = routeid::api::crd_yaml().unwrap();
    for needle in [
        "has(self.service) != (has(self.members) && size(self.members) > 0)",
        "must be a cookie name (an RFC 6265 token)",
        "must be a duration like 2s, 500ms or 1m30s",
        "shortNames:\n    - bp",
        "categories:\n    - routeid",
    ] {
        assert!(crd.contains(needle), "the CRD lacks {needle:?}");
    }
    let v: serde_json::Value = serde_saphyr::from_str(&crd).unwrap();
    let columns: Vec<&str> = v["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Members", "Ready", "LB", "Age"]);
}

#[test]
fn the_cluster_example_is_a_valid_service_backed_pool() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster-pool.yaml")).unwrap();
    let pool: BalancerPool = serde_saphyr::from_str(&text).unwrap();
    let cfg = derive_pool(pool_id(&pool), &pool.spec, []).unwrap();
    assert_eq!(cfg.id.to_string(), "web/shop");
    assert!(cfg.members.is_empty(), "members come from slices, none given here");
    assert_eq!(pool.spec.backend.service.unwrap().name, "shop");
}

#[test]
fn the_rbac_example_grants_what_the_controller_uses() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/controller-rbac.yaml")).unwrap();
    for needle in ["balancerpools/status", "endpointslices", "events.k8s.io", "leases", "[get, list, watch]"] {
        assert!(text.contains(needle), "the RBAC example lacks {needle:?}");
    }
    assert!(!text.contains("pods"), "the controller never lists Pods");
}

/// The CRD's CEL rules, evaluated by kube's client-side CEL interpreter on the spec schema: what
/// an API server would refuse before the controller ever sees it.
#[test]
fn cel_rules_accept_good_specs_and_refuse_bad_ones() {
    use routeid::api::BalancerPoolSpec;
    use serde_json::json;
    let check = |spec: serde_json::Value| kube::core::cel::validate_cel_schema::<BalancerPoolSpec>(&spec, None);
    let svc = json!({"service": {"name": "shop", "port": "http"}});
    let good = json!({
        "backend": svc,
        "sticky": {"cookie": {"name": "ROUTEID", "maxAge": "30m"}},
        "timeouts": {"connect": "2s", "response": "1m30s", "idle": "500ms"},
        "health": {"passive": {"retryAfter": "60s"}},
    });
    check(good.clone()).unwrap_or_else(|e| panic!("a good spec refused: {e:?}"));
    check(json!({"backend": {"members": [{"address": "127.0.0.1:1", "route": "a"}]}})).unwrap();

    let refused = |spec: serde_json::Value, what: &str| {
        let err = check(spec).expect_err(what);
        format!("{err:?}")
    };
    let both = json!({"backend": {"service": {"name": "s", "port": 80}, "members": [{"address": "127.0.0.1:1", "route": "a"}]}});
    assert!(refused(both, "both sources").contains("exactly one of backend.service and backend.members"));
    assert!(refused(json!({"backend": {}}), "no source").contains("exactly one of"));
    let mut bad_cookie = good.clone();
    bad_cookie["sticky"]["cookie"]["name"] = json!("ROUTE ID");
    assert!(refused(bad_cookie, "a cookie name with a space").contains("RFC 6265 token"));
    for bad in ["2 parsecs", "soon", "1h 30m", "-1s", ""] {
        let mut s = good.clone();
        s["timeouts"]["connect"] = json!(bad);
        assert!(refused(s, bad).contains("must be a duration"), "{bad:?}");
    }
}
