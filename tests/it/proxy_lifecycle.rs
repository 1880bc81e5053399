//! The proxy's life: reloads (in process and by SIGHUP to the binary), refused files, graceful
//! shutdown, the demo, and the client header timeout.

use std::time::{Duration, Instant};

use crate::support::*;
use routeid::proxy::ProxySettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_pools_while_a_slow_request_finishes_on_the_old_member() {
    bounded(async {
        let old = Member::start("old").await;
        let new = Member::start("new").await;
        let running = start_proxy(&pool_yaml("app", &[(old.addr, "old", 1)], "")).await;
        let addr = running.proxy_addr;
        let in_flight = tokio::spawn(async move { get(addr, "/slow?ms=1500", &[]).await });
        wait_for(Duration::from_secs(10), "the old member to see the slow request", || old.hits() == 1).await;

        let pools = routeid::standalone::parse_pools(&pool_yaml("app", &[(new.addr, "new", 1)], "")).unwrap();
        let conflicts = running.proxy.publish(pools);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        assert!(!in_flight.is_finished(), "the slow request is still in flight after the reload");

        // New requests go to the new member at once.
        for i in 0..3 {
            let got = get(addr, &format!("/after{i}"), &[]).await;
            assert_eq!(got.route(), "new");
        }
        // The in-flight request completes from the old member.
        let got = in_flight.await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.body, "route=old slow=1500");
        assert_eq!((old.hits(), new.hits()), (1, 3));
        running.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_an_invalid_file_keeps_the_old_table() {
    bounded(async {
        let a = Member::start("a").await;
        let b = Member::start("b").await;
        let file = temp_file("hup-pools.yaml", &pool_yaml("app", &[(a.addr, "a", 1)], ""));
        let mut proxy = spawn_standalone(&file, &["--no-access-log"]).await;
        assert_eq!(get(proxy.proxy_addr, "/", &[]).await.route(), "a");
        // The startup line says what `kill -HUP <pid>` needs, the version and where it listens.
        // It is written just after the listeners open (by the log's writer thread): awaited.
        wait_for(Duration::from_secs(5), "the startup line", || proxy.stderr().contains("standalone serving")).await;
        let started = proxy.stderr();
        assert!(started.contains(&format!("pid={}", proxy.pid())), "{started}");
        assert!(started.contains(&format!("version=\"{} (commit ", env!("CARGO_PKG_VERSION"))), "{started}");
        assert!(started.contains(&format!("proxy={}", proxy.proxy_addr)), "{started}");

        std::fs::write(&file, pool_yaml("app", &[(b.addr, "b", 1)], "")).unwrap();
        proxy.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = get(proxy.proxy_addr, "/", &[]).await;
            assert_eq!(got.status, 200, "no request fails during the reload: {got:?}");
            if got.route() == "b" {
                break;
            }
            assert!(Instant::now() < deadline, "SIGHUP did not switch to member b: {}", proxy.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // An invalid file is refused whole; the previous table keeps serving.
        std::fs::write(&file, "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {name: app}\nspec:\n  stiky: {names: [JSESSIONID]}\n  backend:\n    members:\n      - {address: localhost, route: c}\n").unwrap();
        let hits_before = a.hits();
        proxy.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !proxy.stderr().contains("reload refused") {
            assert!(Instant::now() < deadline, "no refusal logged: {}", proxy.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stderr = proxy.stderr();
        assert!(stderr.contains("spec.backend.members[0].address"), "{stderr}");
        assert!(stderr.contains("spec.stiky: unknown field, did you mean spec.sticky?"), "{stderr}");
        assert!(proxy.child_running(), "the process survives a bad reload");
        for _ in 0..3 {
            let got = get(proxy.proxy_addr, "/", &[]).await;
            assert_eq!(got.status, 200);
            assert_eq!(got.route(), "b");
        }
        assert_eq!(a.hits(), hits_before);
        drop(proxy);
        let _ = std::fs::remove_file(file);
    })
    .await;
}

#[tokio::test]
async fn a_bad_file_exits_2_naming_document_field_and_reason() {
    bounded(async {
        let yaml = "apiVersion: routeid.io/v1alpha1\nkind: BalancerPool\nmetadata: {name: shop}\nspec:\n  backend:\n    members:\n      - {address: localhost, route: shop-0, loadFactr: 2}\n";
        let file = temp_file("bad-pools.yaml", yaml);
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_routeid"))
            .arg("standalone")
            .arg("-f")
            .arg(&file)
            .args(["--listen", &free_port().to_string(), "--admin-listen", &free_port().to_string()])
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
        assert!(stderr.contains(&*file.display().to_string()), "names the file: {stderr}");
        assert!(
            stderr.contains(
                "document 1 (shop): spec.backend.members[0].address: \"localhost\" is not an ip:port address"
            ),
            "{stderr}"
        );
        assert!(
            stderr.contains("spec.backend.members[0].loadFactr: unknown field, did you mean spec.backend.members[0].loadFactor?"),
            "{stderr}"
        );
        let _ = std::fs::remove_file(file);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    bounded(async {
        let m = Member::start("m").await;
        let running = start_proxy(&pool_yaml("app", &[(m.addr, "m", 1)], "")).await;
        let addr = running.proxy_addr;
        let in_flight = tokio::spawn(async move { get(addr, "/slow?ms=1500", &[]).await });
        wait_for(Duration::from_secs(10), "the member to see the slow request", || m.hits() == 1).await;

        let shutdown = tokio::spawn(running.shutdown());
        // The listener goes away at once, while the slow request is still being served.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "the proxy still accepts connections after shutdown began");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!in_flight.is_finished(), "connections were refused while the request was still in flight");
        assert!(!shutdown.is_finished(), "shutdown waits for the in-flight request");

        let got = in_flight.await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.body, "route=m slow=1500");
        shutdown.await.expect("shutdown returns");
        assert!(TcpStream::connect(addr).await.is_err(), "refused after shutdown");
    })
    .await;
}

#[tokio::test]
async fn demo_check_runs_the_tour_and_exits_0() {
    bounded(async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_routeid"))
            .args(["demo", "--check", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
        assert!(stdout.contains("2. with cookie:"), "{stdout}");
        assert!(stdout.contains("Sticky: request 2 reached the same member as request 1"), "{stdout}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_header_timeout_closes_a_stalled_request_head() {
    bounded(async {
        let m = Member::start("m").await;
        let settings = ProxySettings {
            client_header_timeout: Duration::from_millis(300),
            drain_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let running = start_proxy_with(&pool_yaml("app", &[(m.addr, "m", 1)], ""), settings).await;

        let mut tcp = TcpStream::connect(running.proxy_addr).await.unwrap();
        let started = Instant::now();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: slow.test\r\nX-Partial: ").await.unwrap();
        // Read until the proxy closes the connection (an error response, if any, is drained).
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let took = started.elapsed();
        assert!(closed.is_ok(), "the stalled connection was still open after 5s");
        assert!(took >= Duration::from_millis(250), "closed after {took:?}, before the header timeout");
        assert_eq!(m.hits(), 0, "the partial request never reached a member");

        // A complete request on a fresh connection is still served.
        assert_eq!(get(running.proxy_addr, "/", &[]).await.route(), "m");
        running.shutdown().await;
    })
    .await;
}
