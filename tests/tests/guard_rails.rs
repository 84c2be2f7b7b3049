//! Guard rails on staged adds (and the other new limits) through the real binaries: a run
//! whose import stages more adds than the sync's guard allows is held with a reason naming the
//! counter, its value and the limit; an approval lets it through; bad guard values are refused
//! by `apply` with the field and the fix.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::time::Duration;

use common::{Fleet, stderr, stdout};

#[test]
fn staged_adds_over_the_guard_hold_the_run_with_the_reason() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let server = fleet.dir.path().join("server.toml");
    std::fs::write(
        &server,
        "seed = 3\ntime_scale = 0.01\n\
         [[mas]]\nname = \"HR\"\nma_type = \"MSSQL\"\nconnectors = 2000\nchange_rate_per_hour = 0.0\n\
         receives_exports = false\nsource_events = [{at_secs = 0.0, add = 300}]\n\
         [[mas]]\nname = \"AD\"\nma_type = \"AD\"\nconnectors = 2000\nchange_rate_per_hour = 0.0\n",
    )
    .unwrap();
    fleet.start_agent_with(
        "sync-01",
        &format!(
            "[engine]\nkind = \"sim\"\nsim_file = {server:?}\n[executor]\nstagger = \"10ms\"\n"
        ),
    );
    fleet.wait_connected(&["sync-01"]);
    let file = fleet.fleet_file(
        "hr.yaml",
        "kind: Sequence\nname: hr-cycle\nstages:\n  - steps: [{ma: HR, profile: Delta Import}]\n  - steps: [{ma: HR, profile: Delta Sync, guard: {max_staged_adds: \"5%\", max_staged_updates: 1000}}]\n",
    );
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = fleet.cli(&["run", "sync-01", "--sequence", "hr-cycle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let run = fleet.wait_run_state(
        &id,
        &["held", "succeeded", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(run["state"], "held", "{run:#}");
    assert_eq!(run["steps"][0]["state"], "done");
    let sync = &run["steps"][1];
    assert_eq!(sync["state"], "held", "{run:#}");
    assert_eq!(
        sync["detail"],
        "300 staged adds on HR (NumImportAdd) exceed max_staged_adds 5% of 2000 connectors = 100"
    );
    assert_eq!(sync["pending_before"]["import_add"], 300);
    assert_eq!(sync["guard"]["max_staged_adds"], "5%");
    assert_eq!(sync["guard"]["max_staged_updates"], 1000);
    assert_eq!(
        sync["guard"]["max_pending_deletes"],
        serde_json::Value::Null
    );
    // The table says what tripped and how to approve.
    let text = stdout(&fleet.cli(&["runs", "show", &id]));
    assert!(
        text.contains("HELD: 300 staged adds on HR (NumImportAdd) exceed max_staged_adds 5% of 2000 connectors = 100"),
        "{text}"
    );
    assert!(
        text.contains("guard max_staged_adds=5% max_staged_updates=1000"),
        "{text}"
    );
    assert!(
        text.contains(&format!("approve with 'syncfleet runs approve {id}'")),
        "{text}"
    );
    // Approved once, the sync applies the adds.
    let out = fleet.cli(&["runs", "approve", &id, "--note", "HR onboarding batch"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cont = stdout(&out).trim().to_string();
    let cont_run = fleet.wait_run_state(
        &cont,
        &["succeeded", "failed", "held"],
        Duration::from_secs(60),
    );
    assert_eq!(cont_run["state"], "succeeded", "{cont_run:#}");
    assert_eq!(cont_run["steps"][1]["state"], "done");
}

#[test]
fn bad_guard_values_are_refused_by_apply_with_the_field_and_the_fix() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let file = fleet.fleet_file(
        "bad.yaml",
        "kind: Sequence\nname: too-many-percent\nstages:\n  - steps: [{ma: HR, profile: Delta Sync, guard: {max_staged_adds: \"150%\"}}]\n\
         ---\nkind: Sequence\nname: negative\nstages:\n  - steps: [{ma: AD, profile: Export, guard: {max_pending_updates: -5}}]\n\
         ---\nkind: Sequence\nname: misspelt\nstages:\n  - steps: [{ma: AD, profile: Delta Sync, guard: {max_staged_renme: 10}}]\n",
    );
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("(Sequence too-many-percent): stages[0].steps[0].guard.max_staged_adds: \"150%\" must be a percentage above 0 and at most 100"),
        "{err}"
    );
    assert!(
        err.contains("(Sequence negative): stages[0].steps[0].guard.max_pending_updates: expected a count (500) or a percentage (\"2%\")"),
        "{err}"
    );
    assert!(
        err.contains("(Sequence misspelt): stages[0].steps[0].guard: unknown field \"max_staged_renme\" (did you mean max_staged_renames?); allowed here: max_pending_deletes, max_staged_deletes, max_staged_adds, max_staged_updates, max_staged_renames, max_pending_adds, max_pending_updates"),
        "{err}"
    );
    // Nothing was applied.
    let seqs = fleet.cli_json(&["get", "sequences", "-o", "json"]);
    assert_eq!(seqs, serde_json::json!([]), "{seqs:#}");
}
