//! `routeid controller` as users run it: the real binary, a kubeconfig file pointing at the fake
//! API server, traffic through it, a clean exit on SIGTERM.

use crate::support::cluster::*;
use crate::support::fake_apiserver::FakeApiServer;
use crate::support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_a_kubeconfig_serves_the_pool_and_exits_cleanly() {
    bounded(async {
        let api = FakeApiServer::start().await;
        let kube = Kube::new(&api);
        let m = Member::start("shop-0").await;
        kube.put_slice(&slice("shop", "shop-0", m.addr, Cond::Ready)).await;
        kube.create_pool(&pool("shop", "shop", json!({"frontend": {"hosts": ["shop.example.com"]}}))).await;
        let kubeconfig = kubeconfig_file("kubeconfig", api.addr);
        let args = ["controller", "--kubeconfig"].map(std::ffi::OsStr::new);
        let rest = ["--namespace", NS, "--identity", "bin-1"].map(std::ffi::OsStr::new);
        let mut p = spawn_routeid(&[&args[..], &[kubeconfig.as_os_str()], &rest[..]].concat()).await;
        let proxy_addr = p.proxy_addr;
        let got = get(proxy_addr, "/", &[("host", "shop.example.com")]).await;
        assert_eq!(got.route(), "shop-0");
        eventually(WAIT, "status written by the binary", || async {
            kube.status("shop").await.is_some_and(|s| s.member_count == Some(1))
        })
        .await;
        let status = p.terminate().await;
        assert!(status.success(), "{status}: {}", p.stderr());
        // The Lease was released on the way out.
        let lease = api.object("coordination.k8s.io", "v1", "leases", NS, "routeid-status").unwrap();
        assert!(lease.pointer("/spec/holderIdentity").is_none_or(|h| h.is_null()), "{lease}");
    })
    .await;
}

#[tokio::test]
async fn a_missing_kubeconfig_is_refused_with_exit_code_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_routeid"))
        .args(["controller", "--kubeconfig", "/nonexistent/kubeconfig", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read kubeconfig /nonexistent/kubeconfig"), "{err}");
}
