//! Memory bounds under slow peers: a client that reads a large response slowly costs a bounded
//! amount of the proxy's memory, whatever the member sends.

use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The resident set size (`VmRSS`) of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Waits until the RSS of `pid` stops growing (no growth over 600 ms), returning it.
async fn settled_rss_kib(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    let mut still = 0;
    while still < 6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_kib(pid);
        if now > last + 64 {
            still = 0;
        } else {
            still += 1;
        }
        last = last.max(now);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_cost_bounded_memory() {
    bounded(async {
        let m = Member::start("m").await;
        let file = temp_file("slow-readers.yaml", &pool_yaml("big", &[(m.addr, "m", 1)], ""));
        let p = spawn_standalone(&file, &[]).await;
        // Warm up: the allocator's arenas and the runtime's threads exist before the baseline.
        for _ in 0..20 {
            let got = get(p.proxy_addr, "/download?bytes=1048576", &[]).await;
            assert_eq!(got.body.len(), 1 << 20);
        }
        let base = settled_rss_kib(p.pid()).await;
        const READERS: u64 = 50;
        let mut conns = Vec::new();
        for _ in 0..READERS {
            let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
            s.write_all(b"GET /download?bytes=67108864 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            // The response has started; from here on the client reads nothing.
            let mut head = [0u8; 1024];
            let n = s.read(&mut head).await.unwrap();
            assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
            conns.push(s);
        }
        let grown = settled_rss_kib(p.pid()).await.saturating_sub(base);
        let per_reader = grown / READERS;
        eprintln!("RSS grew {grown} KiB for {READERS} slow readers: {per_reader} KiB each");
        assert!(per_reader <= 256, "each slow reader costs {per_reader} KiB, more than the 256 KiB bound");
        drop(conns);
    })
    .await;
}

/// The access log goes through a bounded queue to a writer thread: every line still arrives,
/// and the count of lines dropped (when the writer falls behind) is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_written_off_the_request_path_and_drops_are_counted() {
    bounded(async {
        let m = Member::start("m").await;
        let file = temp_file("access-log.yaml", &pool_yaml("log", &[(m.addr, "m", 1)], ""));
        let p = spawn_standalone(&file, &[]).await;
        for i in 0..50 {
            assert_eq!(get(p.proxy_addr, &format!("/logged-{i}"), &[]).await.status, 200);
        }
        wait_for(Duration::from_secs(10), "50 access-log lines", || {
            (0..50).all(|i| {
                p.stderr().contains(&format!("/logged-{i} ")) || p.stderr().contains(&format!("/logged-{i}\""))
            })
        })
        .await;
        let metrics = get(p.admin_addr, "/metrics", &[]).await.body;
        assert!(metrics.contains("routeid_log_lines_dropped_total 0"), "{metrics}");
    })
    .await;
}

/// A log filter that turns `routeid::access` off (`--log-level`, as `RUST_LOG` would) keeps the
/// access log off, while the other lines at its level stay on: the binary asks the filter once,
/// at start, instead of per request. The exit writes every line made before it, so the file is
/// whole when read. A span directive keeps the filter asked per line, and lines outside the
/// span pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_filter_that_turns_the_access_target_off_keeps_the_access_log_off() {
    bounded(async {
        let m = Member::start("m").await;
        let file = temp_file("access-off.yaml", &pool_yaml("quiet", &[(m.addr, "m", 1)], ""));
        for (filter, logged) in [("info,routeid::access=off", false), ("info,[nospan]=warn", true)] {
            let mut p = spawn_standalone(&file, &["--log-level", filter]).await;
            for i in 0..20 {
                assert_eq!(get(p.proxy_addr, &format!("/filtered-{i}"), &[]).await.status, 200);
            }
            let status = p.terminate().await;
            let log = p.stderr();
            // A clean exit, its last line written: every line made before it is in the file.
            assert!(status.success() && log.contains("shutting down"), "{filter}: {status}: {log}");
            let lines = (0..20).filter(|i| log.contains(&format!("/filtered-{i}\""))).count();
            assert_eq!(lines, if logged { 20 } else { 0 }, "{filter}: {log}");
        }
    })
    .await;
}

/// A steady access log to a file (stderr redirected, as `2>routeid.log` does): the writer ends
/// its writes on the file's 64 KiB boundaries, inside lines (the unit tests in
/// `src/log_writer.rs` check where the writes end); the file still holds every line once, whole,
/// once each has been ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_access_log_to_a_file_holds_every_line_whole() {
    bounded(async {
        const CLIENTS: usize = 16;
        const EACH: usize = 200;
        let m = Member::start("m").await;
        let file = temp_file("steady-log.yaml", &pool_yaml("log", &[(m.addr, "m", 1)], ""));
        let p = spawn_standalone(&file, &[]).await;
        // Lines of over 2 KB: several MB a second even from a debug build, a steady stream
        // whose writes end inside lines.
        let long = "p".repeat(2000);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (addr, long) = (p.proxy_addr, long.clone());
                tokio::spawn(async move {
                    for i in 0..EACH {
                        assert_eq!(get(addr, &format!("/hit-{c}-{i}-{long}"), &[]).await.status, 200);
                    }
                })
            })
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        // Lines ended with their newline: the file's last line may still be half written.
        let ended = |log: &str| -> Vec<String> {
            log.split_inclusive('\n').filter(|l| l.ends_with('\n') && l.contains("/hit-")).map(str::to_owned).collect()
        };
        wait_for(Duration::from_secs(10), "every access-log line", || ended(&p.stderr()).len() >= CLIENTS * EACH).await;
        let mut seen = std::collections::HashSet::new();
        for line in ended(&p.stderr()).iter().map(|l| l.trim_end_matches('\n')) {
            assert!(line.starts_with("20") && line.ends_with("malformed_route=false"), "a broken line: {line}");
            let path = line.split(" path=\"").nth(1).and_then(|r| r.split('"').next());
            assert!(path.is_some_and(|p| seen.insert(p.to_owned())), "a line twice or without its path: {line}");
        }
        assert_eq!(seen.len(), CLIENTS * EACH);
    })
    .await;
}

/// With stderr a pipe (a container's, read by its runtime), routeid widens the pipe to 1 MiB at
/// start, so the log writer's 64 KiB writes do not each wait for the reader; every access line
/// still arrives once and whole, and the last ones at a clean exit.
#[tokio::test]
async fn a_pipe_on_stderr_is_widened_and_carries_every_access_line() {
    bounded(async {
        let m = Member::start("m").await;
        let file = temp_file("pipe-log.yaml", &pool_yaml("piped", &[(m.addr, "m", 1)], ""));
        let (proxy, admin) = (free_port(), free_port());
        let args = ["standalone".as_ref(), "-f".as_ref(), file.as_os_str()];
        let mut child = routeid_command(&args, proxy, admin).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !matches!(try_get(admin, "/readyz", &[]).await, Ok(g) if g.status == 200) {
            assert!(child.try_wait().unwrap().is_none(), "routeid exited early");
            assert!(tokio::time::Instant::now() < deadline, "routeid never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(rustix::pipe::fcntl_getpipe_size(&stderr).unwrap(), 1024 * 1024);
        for i in 0..50 {
            assert_eq!(get(proxy, &format!("/piped-{i}"), &[]).await.status, 200);
        }
        let term = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(term.success());
        let log = tokio::task::spawn_blocking(move || {
            let mut log = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
            log
        })
        .await
        .unwrap();
        assert!(child.wait().unwrap().success(), "{log}");
        for i in 0..50 {
            let needle = format!("/piped-{i}\"");
            assert_eq!(log.lines().filter(|l| l.contains(&needle)).count(), 1, "{needle}: {log}");
        }
        assert!(log.contains("shutting down"), "{log}");
    })
    .await;
}
