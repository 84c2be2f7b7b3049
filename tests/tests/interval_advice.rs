//! Interval advice end to end: two schedules share a simulated server; once one has enough
//! finished runs, `syncfleet schedules show -o json` gives the p95 of exactly those runs'
//! durations, the shortest interval under 0.8 and the server both compete for, and the table
//! says how many runs are missing before that.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::time::Duration;

use common::{Fleet, stdout, wait_for};

const TIMEOUT: Duration = Duration::from_secs(120);

fn apply(fleet: &Fleet, yaml: &str) {
    let path = fleet.fleet_file("advice.yaml", yaml);
    let out = fleet.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ts(v: &serde_json::Value) -> Option<i64> {
    Some(
        chrono::DateTime::parse_from_rfc3339(v.as_str()?)
            .ok()?
            .timestamp_millis(),
    )
}

/// Durations (ms) of the schedule's finished runs, from `runs list`.
fn finished_durations(fleet: &Fleet, schedule: &str) -> Vec<i64> {
    let all = fleet.cli_json(&["runs", "list", "--limit", "1000", "-o", "json"]);
    all.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["schedule"] == schedule)
        .filter(|r| {
            ["succeeded", "completed-with-errors", "failed"]
                .contains(&r["state"].as_str().unwrap_or_default())
        })
        .filter_map(|r| Some(ts(&r["finished_at"])? - ts(&r["started_at"])?))
        .filter(|d| *d > 0)
        .collect()
}

#[test]
fn schedules_show_advises_from_measured_durations_per_schedule_and_server() {
    let fleet = Fleet::started(&["sync-01", "sync-02"], 0.05);
    apply(
        &fleet,
        "kind: Sequence\nname: quick\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n---\n\
         kind: Schedule\nname: often\nsequence: quick\ntargets: {agents: [sync-01]}\ntrigger: {every: 2s}\n---\n\
         kind: Schedule\nname: nightly\nsequence: quick\ntargets: {selector: env=e2e}\ntrigger: {cron: [\"0 3 * * *\"]}\n",
    );

    // Before enough runs: the advice says how many are missing, in JSON and in the table.
    let early = fleet.cli_json(&["schedules", "show", "nightly", "-o", "json"]);
    assert_eq!(early["advice"]["runs_measured"], 0);
    assert_eq!(early["advice"]["runs_needed"], 5);
    assert_eq!(
        early["advice"]["summary"],
        "not enough data: 0 finished runs measured, advice needs at least 5 (5 more)"
    );
    let list = fleet.cli(&["schedules", "list"]);
    assert!(list.status.success());
    let table = stdout(&list);
    assert!(table.contains("MIN INTERVAL"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("nightly") && l.ends_with("needs 5 runs")),
        "{table}"
    );

    // Six finished runs of `often`, then pause it so that the set measured is fixed.
    wait_for("six finished runs of often", TIMEOUT, || {
        (finished_durations(&fleet, "often").len() >= 6).then_some(())
    });
    let out = fleet.cli(&["schedules", "pause", "often", "--note", "measure"]);
    assert!(out.status.success());
    wait_for("runs of often in flight to end", TIMEOUT, || {
        let all = fleet.cli_json(&["runs", "list", "--limit", "1000", "-o", "json"]);
        all.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["schedule"] == "often")
            .all(|r| !["pending", "dispatched", "running"].contains(&r["state"].as_str().unwrap()))
            .then_some(())
    });
    let mut durations = finished_durations(&fleet, "often");
    durations.sort_unstable();
    let n = durations.len();
    // Nearest rank: ceil(0.95 n).
    let p95 = durations[(n * 95).div_ceil(100) - 1];
    let shortest = (p95 * 5 / 4000 + 1) * 1000;

    let show = fleet.cli_json(&["schedules", "show", "often", "-o", "json"]);
    let advice = &show["advice"];
    assert_eq!(advice["runs_measured"], n as u64, "{show:#}");
    assert_eq!(advice["p95_duration_ms"], p95, "{show:#}");
    assert_eq!(advice["interval_ms"], 2000);
    assert_eq!(advice["shortest_interval_ms"], shortest);
    let sat = advice["saturation_p95"].as_f64().unwrap();
    assert!((sat - p95 as f64 / 2000.0).abs() < 1e-9, "{sat}");
    // The one server it targets, shared with `nightly` (too few runs to count).
    let servers = show["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{show:#}");
    assert_eq!(servers[0]["agent"], "sync-01");
    assert_eq!(servers[0]["competing"], serde_json::json!(["nightly"]));
    assert_eq!(servers[0]["unmeasured"], serde_json::json!(["nightly"]));
    assert_eq!(servers[0]["shortest_interval_ms"], shortest);
    let load = servers[0]["load_p95"].as_f64().unwrap();
    assert!((load - sat).abs() < 1e-9, "{load} {sat}");

    // `nightly` targets both servers; each lists `often` only where it runs.
    let nightly = fleet.cli_json(&["schedules", "show", "nightly", "-o", "json"]);
    let by_agent: Vec<(String, serde_json::Value)> = nightly["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["agent"].as_str().unwrap().to_string(),
                s["competing"].clone(),
            )
        })
        .collect();
    assert_eq!(
        by_agent,
        [
            ("sync-01".to_string(), serde_json::json!(["often"])),
            ("sync-02".to_string(), serde_json::json!([])),
        ]
    );

    // The human view shows the same figures.
    let text = stdout(&fleet.cli(&["schedules", "show", "often"]));
    assert!(text.contains(&format!("over {n} runs")), "{text}");
    assert!(text.contains("COMPETES WITH"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("sync-01") && l.contains("nightly")),
        "{text}"
    );
}
