//! The balancer-manager in a real browser: headless Chromium, driven through ChromeDriver's
//! WebDriver protocol. With JavaScript off it drains a member with the page's form; with
//! JavaScript on it watches the live view's figures move under traffic, drains a member
//! through the live view, checks that the page cannot reach another origin, and writes the
//! README's screenshot (`docs/balancer-manager.png`).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

struct Driver {
    child: Child,
    base: String,
    session: String,
    /// Chromium's user-data-dir, removed when the driver goes.
    profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let c = client();
    let addr: SocketAddr = url.trim_start_matches("http://").split('/').next().unwrap().parse().unwrap();
    let path = format!("/{}", url.trim_start_matches("http://").split_once('/').map_or("", |(_, p)| p));
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let got = send(&c, addr, method, &path, &[("content-type", "application/json")], body).await;
    let v: Value = serde_json::from_str(&got.body).unwrap_or(Value::Null);
    assert!(got.status.is_success(), "WebDriver {method} {path}: {} {}", got.status, got.body);
    v["value"].clone()
}

impl Driver {
    async fn start() -> Option<Driver> {
        Driver::start_with(&[]).await
    }

    /// Starts Chromium with extra command-line switches.
    async fn start_with(extra: &[&str]) -> Option<Driver> {
        let (Some(driver), Some(chromium)) = (find_on_path("chromedriver"), find_on_path("chromium")) else {
            panic!("this test needs Chromium and ChromeDriver: apt-get install chromium chromium-driver");
        };
        let port = free_port().port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while try_get(format!("127.0.0.1:{port}").parse().unwrap(), "/status", &[]).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // One profile per browser: the tests of this file run at once in one process.
        let profile = temp_path("routeid-chromium");
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .map(String::from)
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium, "args": args
        }}}});
        let v = call("POST", &format!("{base}/session"), Some(caps)).await;
        let session = v["sessionId"].as_str().expect("a session").to_owned();
        Some(Driver { child, base, session, profile })
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/session/{}{rest}", self.base, self.session)
    }

    async fn go(&self, url: &str) {
        call("POST", &self.url("/url"), Some(json!({"url": url}))).await;
    }

    async fn element(&self, css: &str) -> String {
        let v = call("POST", &self.url("/element"), Some(json!({"using": "css selector", "value": css}))).await;
        v.as_object().and_then(|o| o.values().next()).and_then(|e| e.as_str()).expect("element id").to_owned()
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        call("POST", &self.url(&format!("/element/{e}/click")), Some(json!({}))).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        call("POST", &self.url(&format!("/element/{e}/value")), Some(json!({"text": text}))).await;
    }

    async fn text(&self, css: &str) -> String {
        let e = self.element(css).await;
        call("GET", &self.url(&format!("/element/{e}/text")), None).await.as_str().unwrap_or("").to_owned()
    }

    async fn displayed(&self, css: &str) -> bool {
        let e = self.element(css).await;
        call("GET", &self.url(&format!("/element/{e}/displayed")), None).await.as_bool().unwrap_or(false)
    }

    async fn current_url(&self) -> String {
        call("GET", &self.url("/url"), None).await.as_str().unwrap_or("").to_owned()
    }

    /// Runs `script` in the page and returns its value; with `async_`, the script calls its
    /// last argument with the result.
    async fn execute(&self, script: &str, async_: bool) -> Value {
        let at = if async_ { "/execute/async" } else { "/execute/sync" };
        call("POST", &self.url(at), Some(json!({"script": script, "args": []}))).await
    }

    /// Waits until the text of `css` satisfies `ok` (the page redraws itself), within 15 s.
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let script = format!("const e = document.querySelector({css:?}); return e ? e.textContent : null;");
            let t = self.execute(&script, false).await;
            if let Some(t) = t.as_str().filter(|t| ok(t)) {
                return t.to_owned();
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {css} is {t}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self) -> Vec<u8> {
        let b64 = call("GET", &self.url("/screenshot"), None).await;
        base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or("")).expect("PNG")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver (apt); .ci/run installs them and runs it"]
async fn a_browser_drains_a_member_through_the_form() {
    bounded(async {
        // JavaScript off: the page's own forms (the live view needs the script).
        let Some(browser) = Driver::start_with(&["--blink-settings=scriptEnabled=false"]).await else { return };
        let a = Member::start("a").await;
        let b = Member::start("b").await;
        let yaml = pool_yaml("shop", &[(a.addr, "a", 1), (b.addr, "b", 1)], "  sticky:\n    cookie: {name: ROUTEID}\n");
        let settings = routeid::proxy::ProxySettings { drain_timeout: Duration::from_secs(5), ..Default::default() };
        let p = start_proxy_with_token(&yaml, settings, Some("s3cret")).await;

        browser.go(&format!("http://{}/balancer-manager", p.admin_addr)).await;
        assert!(browser.displayed("table.members").await, "the member table is shown");
        assert!(browser.text("#m-default-shop-b").await.contains("Ok"));
        browser.click("#f-default-shop-b option[value=Drain]").await;
        browser.type_into("#f-default-shop-b input[name=token]", "s3cret").await;
        browser.click("#f-default-shop-b button").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !browser.current_url().await.ends_with("/balancer-manager?saved=1") {
            assert!(Instant::now() < deadline, "the form post did not come back to the page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(browser.text("#notice").await, "Change saved.");
        let row = browser.text("#m-default-shop-b").await;
        assert!(row.contains("Drain"), "the page shows the new state: {row}");

        // The effect: b takes only its sticky traffic now.
        for _ in 0..6 {
            assert_eq!(get(p.proxy_addr, "/", &[]).await.route(), "a");
        }
        assert_eq!(get(p.proxy_addr, "/", &[("cookie", "ROUTEID=.b")]).await.route(), "b");

        let png = browser.screenshot().await;
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "a real screenshot");
        let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
        assert!(width >= 800, "full page width: {width}");
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-test");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("balancer-manager-form.png"), &png).unwrap();
        eprintln!("screenshot: {}", dir.join("balancer-manager-form.png").display());
        call("DELETE", &browser.url(""), None).await;
        p.shutdown().await;
    })
    .await;
}

/// Sends requests to `path` on the proxy until `stop` turns true (the traffic the live view shows).
fn traffic(
    proxy: SocketAddr,
    path: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c = client();
        let mut returning = false;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // Every other request is a returning session (a sticky hit in the shop pool).
            returning = !returning;
            let headers: &[(&str, &str)] = if returning { &[("cookie", "ROUTEID=.shop-0")] } else { &[] };
            let _ = send(&c, proxy, "GET", path, headers, Bytes::new()).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver (apt); .ci/run installs them and runs it"]
async fn the_live_manager_updates_itself_drains_a_member_and_stays_on_its_origin() {
    bounded(async {
        let Some(browser) = Driver::start().await else { return };
        let (a, b, c) = (Member::start("shop-0").await, Member::start("shop-1").await, Member::start("api-0").await);
        let d = Member::start("api-1").await;
        let gone = closed_port().await;
        let sticky = "  sticky:\n    cookie: {name: ROUTEID}\n  frontend: {pathPrefix: /}\n";
        let yaml = [
            pool_yaml("shop", &[(a.addr, "shop-0", 2), (b.addr, "shop-1", 1)], sticky),
            pool_yaml("api", &[(c.addr, "api-0", 1), (d.addr, "api-1", 1)], "  frontend: {pathPrefix: /api}\n"),
            pool_yaml("legacy", &[(gone, "legacy-0", 1)], "  frontend: {pathPrefix: /legacy}\n"),
        ]
        .join("---\n");
        let settings = routeid::proxy::ProxySettings { drain_timeout: Duration::from_secs(5), ..Default::default() };
        let p = start_proxy_with_token(&yaml, settings, Some("s3cret")).await;
        // The legacy pool's only member refuses: it is in error, the pool is Down.
        let refused = get(p.proxy_addr, "/legacy/", &[]).await.status;
        assert!(refused == 502 || refused == 503, "{refused}");

        let page_url = format!("http://{}/balancer-manager", p.admin_addr);
        let head = get(p.admin_addr, "/balancer-manager", &[]).await;
        let csp = head.headers["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        browser.go(&page_url).await;
        browser.wait_text("#o-default-legacy .pool-state", "the overview", |t| t == "Down").await;
        browser.execute("window.routeidMarker = 42; return null;", false).await;
        let before = browser.wait_text("#o-default-shop .rps", "the shop's rate", |_| true).await;
        assert_eq!(before, "0.0", "no traffic yet");

        // Traffic: the figures move without a reload.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = [traffic(p.proxy_addr, "/", stop.clone()), traffic(p.proxy_addr, "/api/x", stop.clone())];
        browser.wait_text("#o-default-shop .rps", "the shop's rate to rise", |t| t != "0.0").await;
        browser.wait_text("#r-default-shop-shop-0 td:nth-child(11)", "shop-0's p50", |t| t.ends_with("ms")).await;
        browser.wait_text("#r-default-shop-shop-1 td:nth-child(8)", "shop-1's share", |t| t.ends_with('%')).await;
        assert_eq!(browser.execute("return window.routeidMarker;", false).await, json!(42), "the page never reloaded");

        // Sign in once, drain shop-1 through the live view, confirm.
        browser.type_into("#token", "s3cret").await;
        browser.click("#signin-button").await;
        browser.wait_text("#signin", "signed in", |t| t.contains("Signed in")).await;
        browser.click("#r-default-shop-shop-1 button.edit").await;
        browser.click("#edit-status option[value=Drain]").await;
        browser.click("#edit-apply").await;
        let q = browser.wait_text("#confirm", "the confirmation", |t| t.contains("Drain")).await;
        assert!(q.contains("default/shop member shop-1"), "{q}");
        browser.click("#confirm-yes").await;
        browser.wait_text("#activity", "the change's outcome", |t| t.contains("done")).await;
        browser.wait_text("#r-default-shop-shop-1 td:nth-child(3)", "shop-1 draining", |t| t == "Drain").await;
        let who = browser.wait_text("#r-default-shop-shop-1 td.override", "the override", |t| t.contains("Drain")).await;
        assert!(who.contains("api from 127.0.0.1"), "who and when: {who}");
        for _ in 0..4 {
            assert_eq!(get(p.proxy_addr, "/", &[]).await.route(), "shop-0", "no new session for a drained member");
        }
        let snap = p.proxy.snapshot();
        let shop = snap.table.pools().iter().find(|x| x.config.id.name == "shop").unwrap();
        assert_eq!(shop.member("shop-1").unwrap().config.status, routeid::api::MemberStatus::Drain);

        // The page's script cannot reach another origin: the CSP refuses before any byte leaves.
        let outsider = Member::start("outsider").await;
        let probe = format!(
            "const done = arguments[arguments.length - 1];
             document.addEventListener('securitypolicyviolation', e => done('blocked by ' + e.violatedDirective));
             fetch('http://{}/steal').then(() => done('reached'), () => setTimeout(() => done('failed without CSP'), 500));",
            outsider.addr
        );
        let got = browser.execute(&probe, true).await;
        assert!(got.as_str().unwrap_or("").starts_with("blocked by connect-src"), "{got}");
        assert_eq!(outsider.hits(), 0, "nothing reached the other origin");

        // The README's picture, made here so that it cannot go stale silently.
        browser.wait_text("#o-default-shop .rps", "traffic still shown", |t| t != "0.0").await;
        browser.wait_text("#r-default-shop-shop-1 td:nth-child(16)", "when shop-1 changed", |t| t.ends_with("ago")).await;
        let png = browser.screenshot().await;
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000, "a real screenshot");
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("balancer-manager.png"), &png).unwrap();
        eprintln!("screenshot: {}", docs.join("balancer-manager.png").display());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for l in load {
            l.await.unwrap();
        }
        call("DELETE", &browser.url(""), None).await;
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver (apt); .ci/run installs them and runs it"]
async fn the_live_manager_pages_and_sorts_a_thousand_members() {
    bounded(async {
        let Some(browser) = Driver::start().await else { return };
        // 1,000 members on ports nothing listens on (none is tried: no traffic).
        let members: Vec<(SocketAddr, String)> =
            (0..1000u16).map(|i| (SocketAddr::from(([127, 0, 0, 1], 20_000 + i)), format!("m{i:04}"))).collect();
        let list: Vec<(SocketAddr, &str, u32)> =
            members.iter().enumerate().map(|(i, (a, r))| (*a, r.as_str(), 1 + (i % 7) as u32)).collect();
        let p = start_proxy_with_token(&pool_yaml("big", &list, ""), Default::default(), Some("s3cret")).await;
        let started = Instant::now();
        browser.go(&format!("http://{}/balancer-manager", p.admin_addr)).await;
        let pager = browser.wait_text("#pager-default-big", "the pager", |t| t.contains("of 20")).await;
        let shown = started.elapsed();
        assert!(pager.contains("1000 members"), "{pager}");
        let rows = browser.execute("return document.querySelectorAll('#t-default-big tr').length;", false).await;
        assert_eq!(rows, json!(51), "a header and one page of 50 rows");
        // Sort by weight, descending (two clicks): the heaviest members come first.
        browser.click("#t-default-big th:nth-child(5)").await;
        browser.click("#t-default-big th:nth-child(5)").await;
        browser.wait_text("#t-default-big tr:nth-child(2) td:nth-child(5)", "sorted by weight", |t| t == "7").await;
        browser.click("#pager-default-big button:last-child").await;
        browser.wait_text("#pager-default-big", "page 2", |t| t.contains("page 2 of 20")).await;
        let t = Instant::now();
        browser.execute("return null;", false).await;
        eprintln!("1,000 members: page shown in {shown:?}; a WebDriver round trip takes {:?}", t.elapsed());
        assert!(shown < Duration::from_secs(10), "{shown:?}");
        call("DELETE", &browser.url(""), None).await;
        p.shutdown().await;
    })
    .await;
}
