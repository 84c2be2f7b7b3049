//! `apply` checks fleet files against the inventories the agents reported: the real CLI against
//! a real controller with two simulated sync servers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use common::{Fleet, stderr, stdout};

const TYPO: &str = "kind: Sequence
name: delta
stages:
  - steps: [{ma: AD, profile: Delta Imprt}]
  - steps: [{ma: ADD, profile: Delta Sync}]
---
kind: Schedule
name: delta-hourly
sequence: delta
targets: {selector: env=e2e}
trigger: {every: 1h}
---
kind: Schedule
name: named
sequence: delta
targets: {agents: [sync-01, ghost-9]}
trigger: {every: 1h}
";

fn two_agents() -> Fleet {
    Fleet::started(&["sync-01", "sync-02"], 1.0)
}

#[test]
fn steps_missing_from_an_agents_inventory_refuse_the_apply_unless_forced() {
    let fleet = two_agents();
    let file = fleet.fleet_file("typo.yaml", TYPO);
    let f = file.to_str().unwrap();

    let out = fleet.cli(&["apply", "-f", f]);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "apply succeeded: {}{err}",
        stdout(&out)
    );
    // Per target agent, with the schedules that run the sequence there.
    for (agent, schedules) in [
        ("sync-01", "schedules delta-hourly, named"),
        ("sync-02", "schedule delta-hourly"),
    ] {
        let line = format!(
            "{f} document 1 (Sequence delta): stages[0].steps[0] \"AD:Delta Imprt\": agent {agent} ({schedules}) has no run profile \"Delta Imprt\" on MA \"AD\" (did you mean \"Delta Import\"?)"
        );
        assert!(err.contains(&line), "missing {line:?} in:\n{err}");
    }
    assert!(
        err.contains("stages[1].steps[0] \"ADD:Delta Sync\": agent sync-02 (schedule delta-hourly) has no management agent \"ADD\" (did you mean \"AD\"?)"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f} document 3 (Schedule named): targets.agents[1]: no agent named \"ghost-9\" has ever connected"
        )),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let stored = fleet.cli(&["get", "sequences", "-o", "json"]);
    assert!(!stdout(&stored).contains("delta"), "{}", stdout(&stored));

    // A dry run lists what each schedule's targets resolve to now, and the problems.
    let out = fleet.cli(&["apply", "-f", f, "--dry-run"]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(o.contains("created schedule/delta-hourly"), "{o}\n{e}");
    assert!(
        e.contains("schedule/delta-hourly targets (selector env=e2e): sync-01, sync-02"),
        "{o}\n{e}"
    );
    assert!(
        e.contains("schedule/named targets (agents): sync-01; unknown: ghost-9"),
        "{o}\n{e}"
    );
    let j = fleet.cli(&["apply", "-f", f, "--dry-run", "-o", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(
        j["targets"][0]["agents"],
        serde_json::json!(["sync-01", "sync-02"]),
        "{j:#}"
    );
    assert!(e.contains("has no run profile \"Delta Imprt\""), "{e}");
    assert!(
        !out.status.success(),
        "a dry run of a refused apply fails: {o}\n{e}"
    );

    // Forced: applied, and the warnings are still printed.
    let out = fleet.cli(&["apply", "-f", f, "--force"]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    assert!(o.contains("created sequence/delta"), "{o}");
    assert!(
        e.contains("warning: ") && e.contains("did you mean \"Delta Import\""),
        "{e}"
    );
    let audit = fleet.cli_json(&["audit", "list", "-o", "json"]);
    let apply = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "Apply" && a["result"] == "ok")
        .unwrap();
    assert!(
        apply["detail"].as_str().unwrap().contains("forced"),
        "{apply:#}"
    );
}

#[test]
fn a_fleet_file_matching_the_inventories_applies_cleanly() {
    let fleet = two_agents();
    let file = fleet.fleet_file(
        "good.yaml",
        &TYPO
            .replace("Delta Imprt", "Delta Import")
            .replace("ADD", "HR")
            .replace(", ghost-9", ""),
    );
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    assert!(!e.contains("warning"), "{e}");
    assert!(o.contains("created schedule/named"), "{o}");
}

#[test]
fn thousands_of_problems_come_back_as_a_readable_bounded_error() {
    let fleet = two_agents();
    // 4 stages of 64 steps, each naming an MA no agent has: 256 problems per target agent.
    let stages: String = (0..4)
        .map(|s| {
            let steps: Vec<String> = (0..64)
                .map(|i| format!("{{ma: \"Missing MA {s}-{i}\", profile: Delta Import}}"))
                .collect();
            format!("  - steps: [{}]\n", steps.join(", "))
        })
        .collect();
    let yaml = format!(
        "kind: Sequence\nname: wide\nstages:\n{stages}---\nkind: Schedule\nname: wide-hourly\nsequence: wide\ntargets: {{selector: env=e2e}}\ntrigger: {{every: 1h}}\n"
    );
    let file = fleet.fleet_file("wide.yaml", &yaml);
    let f = file.to_str().unwrap();
    let out = fleet.cli(&["apply", "-f", f]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        err.contains("has no management agent \"Missing MA 0-0\""),
        "{err:.2000}"
    );
    assert!(
        err.contains("more problem(s) not shown; 'apply --dry-run -o json' lists them all"),
        "{err:.2000}"
    );
    assert!(
        err.contains("512 step problem(s) against the agents' inventories"),
        "{err:.2000}"
    );
    assert!(err.len() < 8000, "{} bytes", err.len());
    // The dry run's JSON carries them, bounded too.
    let out = fleet.cli(&["apply", "-f", f, "--dry-run", "-o", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = j["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 501, "{}", stderr(&out));
    assert_eq!(
        warnings[500]["message"],
        "… and 12 more problem(s) (12 blocking) not listed"
    );
}
