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
        let kubeconfig = temp_file(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
                 users: [{{name: fake, user: {{}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
                api.addr
            ),
        );
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
