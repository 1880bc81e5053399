//! The balancer-manager in a real browser: headless Chromium, driven through ChromeDriver's
//! WebDriver protocol, drains a member with the page's form; the test checks the effect and
//! keeps a screenshot in `target/browser-test/`.

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
        let profile = std::env::temp_dir().join(format!("routeid-chromium-{}", std::process::id()));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
                     "--window-size=1400,900", format!("--user-data-dir={}", profile.display())]
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

    async fn screenshot(&self) -> Vec<u8> {
        let b64 = call("GET", &self.url("/screenshot"), None).await;
        base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or("")).expect("PNG")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver (apt); .ci/run installs them and runs it"]
async fn a_browser_drains_a_member_through_the_form() {
    bounded(async {
        let Some(browser) = Driver::start().await else { return };
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
        std::fs::write(dir.join("balancer-manager.png"), &png).unwrap();
        eprintln!("screenshot: {}", dir.join("balancer-manager.png").display());
        call("DELETE", &browser.url(""), None).await;
        p.shutdown().await;
    })
    .await;
}
