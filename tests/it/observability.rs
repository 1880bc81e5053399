//! The chart's alert rules and Grafana dashboard against what routeid really exports: every
//! metric name they use appears in `/metrics`, every PromQL expression parses (`promtool check
//! rules`), and every alert fires on a broken system and stays silent on a healthy one
//! (`promtool test rules tests/promtool/routeid.rules.test.yaml`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

const RULES: &str = "charts/routeid/rules/routeid.rules.yaml";
const RULE_TESTS: &str = "tests/promtool/routeid.rules.test.yaml";
const DASHBOARD: &str = "charts/routeid/dashboards/routeid.json";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every PromQL expression of the dashboard (panel targets and variable queries), with
/// Grafana's variables replaced by what they stand for.
fn dashboard_exprs() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).unwrap()).unwrap();
    let panels = d["panels"].as_array().unwrap();
    let mut out: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("every target has an expr").to_owned())
        .collect();
    let queries = d["templating"]["list"].as_array().unwrap();
    out.extend(queries.iter().filter_map(|v| v["definition"].as_str()).map(str::to_owned));
    assert!(out.len() >= 20, "the dashboard has its panels: {}", out.len());
    out.into_iter()
        .map(|e| e.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$pool", ".*"))
        .collect()
}

/// `routeid_*` names in a text (the histogram series suffixes are the family's).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("routeid_") {
        if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        names.insert(name.trim_end_matches("_bucket").to_owned());
    }
    names
}

/// The families in a `/metrics` exposition.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    bounded(async {
        let (a, b) = (Member::start("a").await, Member::start("b").await);
        let yaml = pool_yaml(
            "shop",
            &[(a.addr, "a", 1), (b.addr, "b", 1)],
            "  sticky:\n    cookie: {name: ROUTEID}\n  health:\n    active: {path: /, interval: 1s}\n",
        );
        let p = start_proxy(&yaml).await;
        for _ in 0..4 {
            assert_eq!(get(p.proxy_addr, "/", &[]).await.status, 200);
        }
        // Series that only controller mode and TLS Secrets make: made here as they make them.
        let m = p.proxy.metrics();
        m.reconciles.with_label_values(&["ok"]).inc();
        m.watch_restarts.with_label_values(&["endpointslices"]).inc();
        m.last_sync.set(1e9);
        m.tls_expiry.with_label_values(&["web", "shop-tls"]).set(2e9);
        m.tls_handshake_errors.with_label_values(&["no-certificate"]).inc();
        let text = get(p.admin_addr, "/metrics", &[]).await.body;
        let have = exported(&text);
        let rules = std::fs::read_to_string(repo(RULES)).unwrap();
        let used: BTreeSet<String> =
            metric_names(&rules).into_iter().chain(metric_names(&dashboard_exprs().join("\n"))).collect();
        assert!(used.len() >= 15, "{used:?}");
        let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "used by the dashboard or the alerts but not exported: {missing:?}\nexported: {have:?}"
        );
        p.shutdown().await;
    })
    .await;
}

fn promtool() -> PathBuf {
    find_on_path("promtool").unwrap_or_else(|| panic!("this test needs promtool: apt-get install prometheus"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
#[ignore = "needs promtool (apt: prometheus); .ci/run installs it and runs it"]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = promtool();
    let out = run(Command::new(&promtool).args(["check", "rules"]).arg(repo(RULES)));
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let out = run(Command::new(&promtool).args(["test", "rules"]).arg(repo(RULE_TESTS)));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
#[ignore = "needs promtool (apt: prometheus); .ci/run installs it and runs it"]
fn every_dashboard_expression_parses() {
    // Each expression as a recording rule: `promtool check rules` parses it as Prometheus would.
    let exprs = dashboard_exprs();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().filter(|e| !e.starts_with("label_values(")).enumerate() {
        file.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let path = temp_file("dashboard-rules.yaml", &file);
    let out = run(Command::new(promtool()).args(["check", "rules"]).arg(&path));
    assert!(out.contains("SUCCESS"), "{out}");
    // The variable queries select on a metric that exists (checked above) and name a label.
    for q in exprs.iter().filter(|e| e.starts_with("label_values(")) {
        assert!(q.contains("routeid_pool_members") && (q.ends_with(" namespace)") || q.ends_with(" pool)")), "{q}");
    }
}
