//! The shipped Prometheus material is valid for a real Prometheus: `promtool` checks the alert
//! rules and the example scrape configuration, and runs the rules' unit tests
//! (`deploy/prometheus/alerts_test.yml`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::workspace_root;

fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` (scripts/test does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_alert_rules_the_config_and_the_rule_tests() {
    let root = workspace_root();
    let rules = promtool(&root, &["check", "rules", "deploy/prometheus/alerts.yml"]);
    assert!(rules.contains("SUCCESS"), "{rules}");
    let config = promtool(
        &root,
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
    assert!(config.contains("SUCCESS"), "{config}");
    let tests = promtool(
        &root.join("deploy/prometheus"),
        &["test", "rules", "alerts_test.yml"],
    );
    assert!(tests.contains("SUCCESS"), "{tests}");
}
