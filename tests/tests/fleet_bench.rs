//! `fleet-bench` in its short mode against the real controller and agent binaries: every row of
//! the budget table is measured and every count is right. Figures are printed, never asserted
//! (a loaded machine makes them vary; the budgets are checked by reading the report).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test: failures should be loud"
)]

mod common;

use std::process::Command;

#[test]
fn fleet_bench_short_mode_measures_every_row_with_consistent_counts() {
    // The controller and agent binaries it starts are found next to fleet-bench.
    let bin_dir = common::bin("syncfleet-controller")
        .parent()
        .unwrap()
        .to_path_buf();
    common::bin("syncfleet-agent");
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let agents = 200u64;
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-bench"))
        .args(["--agents", &agents.to_string()])
        .args(["--duration", "5s", "--schedule-every", "5s"])
        .args([
            "--store-runs",
            "20000",
            "--agent-idle",
            "5s",
            "--parse-mb",
            "5",
        ])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--json")
        .arg(&json_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "fleet-bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(v["errors"], serde_json::json!([]), "{v:#}");

    let figures = v["figures"].as_array().unwrap();
    for key in [
        "idle.controller_core_pct",
        "idle.controller_wakeups_per_s",
        "schedule.lateness_p50_ms",
        "schedule.lateness_p99_ms",
        "schedule.first_run_p99_ms",
        "schedule.last_run_p99_ms",
        "adhoc.all_accepted_ms",
        "events.per_second",
        "memory.idle_rss_mb",
        "memory.idle_pss_mb",
        "memory.after_runs_rss_mb",
        "memory.after_runs_pss_mb",
        "metrics.series",
        "metrics.scrape_mb",
        "metrics.scrape_p50_ms",
        "reconnect.all_welcomed_s",
        "restart.ready_s",
        "restart.all_welcomed_s",
        "simulator.rss_mb",
        "agent.rss_mb",
        "agent.pss_mb",
        "agent.cpu_ms",
        "agent.wakeups_per_min",
        "parse.errors-heavy.mb_per_s",
        "parse.errors-heavy.memory_ratio",
        "parse.node-heavy.mb_per_s",
        "parse.node-heavy.memory_ratio",
        "runs_list.p50_ms",
        "runs_list.p99_ms",
    ] {
        let f = figures
            .iter()
            .find(|f| f["key"] == key)
            .unwrap_or_else(|| panic!("row {key} missing from the report: {v:#}"));
        assert!(f["value"].is_number(), "row {key} has no number: {f}");
    }

    let checks = &v["checks"];
    let n = |k: &str| {
        checks[k]
            .as_u64()
            .unwrap_or_else(|| panic!("check {k} missing: {checks:#}"))
    };
    // Scheduled runs: one per agent per fire, each received by exactly its own agent.
    let fires = n("schedule.complete_fires");
    assert!(fires >= 1, "no complete fire: {checks:#}");
    assert_eq!(n("schedule.runs_in_complete_fires"), agents * fires);
    assert_eq!(
        n("schedule.runs_accepted_once_by_their_agent"),
        n("schedule.runs")
    );
    // `reconnect.all_listed_connected_s` is not required: after a storm the controller may list
    // an agent whose new session is live as disconnected (its old session's end is stored
    // after the new session's start); the report says so and `reconnect.listed_connected`
    // counts them.
    assert_eq!(n("reconnect.agents"), agents);
    // Every agent came back to the killed and restarted controller.
    assert_eq!(n("restart.agents"), agents);
    // The ad-hoc command reached every agent.
    assert_eq!(n("adhoc.runs_created"), agents);
    assert_eq!(n("adhoc.runs_accepted"), agents);
    // Every event sent was acknowledged (stored), and the events phase sent what it should.
    assert_eq!(n("events_acked"), n("events_sent"));
    assert_eq!(n("events.acked_in_phase"), n("events.expected_in_phase"));
    assert_eq!(n("events.round_events_sent"), n("events.expected_in_phase"));
    assert_eq!(n("events.rounds_without_run"), 0);
    assert_eq!(n("runs_list.store_runs"), 20000);
    assert_eq!(n("runs_list.page_len"), 50);
}
