//! `routeid check` as users run it: the real binary on a pools file, and on the BalancerPools
//! of a cluster (the fake API server, through a kubeconfig file), exit codes and what it prints.

use std::ffi::OsStr;
use std::time::Duration;

use crate::support::cluster::*;
use crate::support::fake_apiserver::FakeApiServer;
use crate::support::*;
use serde_json::json;

/// Runs `routeid check <args>`, bounded in time; (exit code, stdout, stderr).
async fn check(args: &[&OsStr]) -> (Option<i32>, String, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_routeid"))
        .arg("check")
        .args(args)
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .output();
    let out = bounded_for(Duration::from_secs(20), run).await.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn a_good_file_prints_its_summary_and_exits_0() {
    let file = temp_file("pools.yaml", include_str!("../../examples/pools.yaml"));
    let (code, out, err) = check(&["-f".as_ref(), file.as_os_str()]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(": OK, 2 pools"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("default/shop") && l.contains("cookie ROUTEID")), "{out}");
}

#[tokio::test]
async fn a_bad_file_prints_every_problem_and_exits_2() {
    let yaml = "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {name: shop}\nspec:\n  \
                stiky: {names: [JSESSIONID]}\n  lbMethod: ByRequest\n  \
                backend: {members: [{address: localhost, route: a}]}\n";
    let file = temp_file("bad-pools.yaml", yaml);
    let (code, out, err) = check(&["-f".as_ref(), file.as_os_str()]).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(err.contains("document 1 (shop): spec.stiky: unknown field, did you mean spec.sticky?"), "{err}");
    assert!(err.contains("spec.lbMethod: \"ByRequest\" is not one of"), "{err}");
    assert!(err.contains("spec.backend.members[0].address: \"localhost\""), "{err}");
    let (code, _, err) = check(&["-f".as_ref(), "/nonexistent/pools.yaml".as_ref()]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot read it"), "{err}");
}

#[tokio::test]
async fn a_file_or_a_cluster_is_required() {
    let (code, _, err) = check(&[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--file") && err.contains("--kubeconfig"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_is_checked_as_the_controller_would_and_nothing_is_written() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let m = Member::start("shop-0").await;
        kube.put_slice(&slice("shop", "shop-0", m.addr, Cond::Ready)).await;
        kube.create_pool(&pool("shop", "shop", json!({"frontend": {"hosts": ["shop.example.com"]}}))).await;
        let kubeconfig = kubeconfig_file("kubeconfig", api.addr);
        let args = ["--kubeconfig".as_ref(), kubeconfig.as_os_str()];
        let (code, out, err) = check(&args).await;
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("OK, 1 pools, 1 members"), "{out}");
        assert!(out.lines().any(|l| l.starts_with("web/shop") && l.contains("shop.example.com")), "{out}");

        // A pool the CRD schema lets through but the controller refuses, and one that claims
        // the same host and prefix as an older pool.
        kube.create_pool(&pool("bad", "shop", json!({"frontend": {"hosts": ["bad host"]}}))).await;
        kube.create_pool(&pool("late", "shop", json!({"frontend": {"hosts": ["shop.example.com"]}}))).await;
        let writes = api.writes().len();
        let (code, out, err) = check(&args).await;
        assert_eq!(code, Some(2), "{out}{err}");
        assert!(err.contains("pool web/bad: spec.frontend.hosts[0]"), "{err}");
        assert!(err.contains("claims host shop.example.com prefix / already served by pool"), "{err}");
        assert_eq!(api.writes().len(), writes, "check wrote to the cluster");

        let (code, _, err) = check(&[args[0], args[1], "--context".as_ref(), "nope".as_ref()]).await;
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("nope"), "{err}");
    })
    .await;
}

/// The README's controller quick start, step by step, against the fake API server: the objects
/// of each file it applies, in its order, then `routeid check` serving the pool from the
/// Service's EndpointSlice (which the cluster's EndpointSlice controller would write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_controller_quick_start_works_in_order() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
    bounded(async {
        let readme = include_str!("../../README.md");
        let steps = [
            "kubectl apply --server-side -f crds/",
            "kubectl create namespace routeid",
            "kubectl apply -f examples/controller-rbac.yaml",
            "kubectl apply -f examples/shop-app.yaml",
            "kubectl apply -f examples/cluster-pool.yaml",
            "routeid check --kubeconfig ~/.kube/config",
        ];
        let at: Vec<usize> =
            steps.iter().map(|s| readme.find(s).unwrap_or_else(|| panic!("README lacks {s}"))).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "the README's steps are out of order: {steps:?}");

        let api = FakeApiServer::start().await;
        let client = api.client();
        let namespace = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "routeid"}});
        let files = [
            include_str!("../../examples/controller-rbac.yaml"),
            include_str!("../../examples/shop-app.yaml"),
            include_str!("../../examples/cluster-pool.yaml"),
        ];
        let docs = std::iter::once(namespace)
            .chain(files.iter().flat_map(|f| serde_saphyr::from_multiple::<serde_json::Value>(f).unwrap()));
        for doc in docs {
            let obj: DynamicObject = serde_json::from_value(doc).unwrap();
            let types = obj.types.clone().unwrap();
            let (group, version) = types.api_version.split_once('/').unwrap_or(("", &types.api_version));
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
            let api: kube::Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
                Some(ns) => kube::Api::namespaced_with(client.clone(), ns, &ar),
                None => kube::Api::all_with(client.clone(), &ar),
            };
            api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("{}: {e}", types.kind));
        }
        // What the EndpointSlice controller writes for the Service's two ready pods.
        let (m0, m1) = (Member::start("shop-0").await, Member::start("shop-1").await);
        let kube = Kube::new(&api);
        kube.put_slice(&slice("shop", "shop-0", m0.addr, Cond::Ready)).await;
        kube.put_slice(&slice("shop", "shop-1", m1.addr, Cond::Ready)).await;
        let kubeconfig = kubeconfig_file("kubeconfig", api.addr);
        let (code, out, err) = check(&["--kubeconfig".as_ref(), kubeconfig.as_os_str()]).await;
        assert_eq!(code, Some(0), "{out}{err}");
        let row = out.lines().find(|l| l.starts_with("web/shop")).unwrap_or_else(|| panic!("{out}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1..4], ["shop.example.com", "/shop", "2"], "{out}");
    })
    .await;
}
