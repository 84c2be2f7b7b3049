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

/// A fleet whose agent `sync-01` imports 300 adds into HR (2000 connectors) and the sequence
/// `hr-cycle` whose sync allows at most 5 % staged adds; started once, returning its run id
/// (the run ends held).
fn fleet_with_a_held_run() -> (Fleet, String) {
    let fleet = Fleet::with_a_guarded_sequence(&[]);

    let out = fleet.cli(&["run", "sync-01", "--sequence", "hr-cycle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    (fleet, id)
}

#[test]
fn staged_adds_over_the_guard_hold_the_run_with_the_reason() {
    let (fleet, id) = fleet_with_a_held_run();
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
        text.contains(&format!("approve with 'syncfleet runs approve {id} --note ...' or reject with 'syncfleet runs reject {id} --note ...'")),
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
fn a_rejected_held_run_stays_held_records_the_decision_and_cannot_be_approved() {
    let (fleet, id) = fleet_with_a_held_run();
    let run = fleet.wait_run_state(
        &id,
        &["held", "succeeded", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(run["state"], "held", "{run:#}");
    assert_eq!(run["rejected_by"], "");
    assert_eq!(run["rejected_at"], serde_json::Value::Null);

    // A note is required.
    let out = fleet.cli(&["runs", "reject", &id]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("--note"), "{}", stderr(&out));
    let out = fleet.cli(&["runs", "reject", &id, "--note", "  "]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));

    // A viewer may not reject; the refusal is audited.
    let vic = fleet.dir.path().join("vic").join("config.toml");
    let out = fleet.cli(&[
        "operators",
        "create",
        "vic",
        "--role",
        "viewer",
        "--out",
        vic.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = std::process::Command::new(common::bin("syncfleet"))
        .arg("--config")
        .arg(&vic)
        .args(["runs", "reject", &id, "--note", "looks odd"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("RejectRun needs the 'operate' permission"),
        "{}",
        stderr(&out)
    );

    // Prefix of the id, like the other run commands.
    let prefix = &id[..13];
    let out = fleet.cli(&[
        "runs",
        "reject",
        prefix,
        "--note",
        "HR feed doubled the joiners",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), id);
    assert!(
        stderr(&out).contains(&format!(
            "held run {id} on agent sync-01 rejected; it stays held and nothing of it runs"
        )),
        "{}",
        stderr(&out)
    );

    let run = fleet.cli_json(&["runs", "show", &id, "-o", "json"]);
    assert_eq!(run["state"], "held", "{run:#}");
    assert_eq!(run["rejected_by"], "operator/admin", "{run:#}");
    assert!(run["rejected_at"].is_string(), "{run:#}");
    assert_eq!(run["reject_note"], "HR feed doubled the joiners");
    assert_eq!(run["continued_in"], "");
    assert!(
        run["message"]
            .as_str()
            .unwrap()
            .ends_with("(rejected: HR feed doubled the joiners)"),
        "{run:#}"
    );
    let text = stdout(&fleet.cli(&["runs", "show", &id]));
    assert!(
        text.contains("held: rejected by operator/admin at ")
            && text.contains(": HR feed doubled the joiners\n"),
        "{text}"
    );
    assert!(!text.contains("approve with"), "{text}");

    // The decision is final: no approval, no second rejection.
    let out = fleet.cli(&["runs", "approve", &id, "--note", "fine after all"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "run {id} was already rejected by operator/admin at "
        )) && err.contains(": HR feed doubled the joiners; the decision is final"),
        "{err}"
    );
    let out = fleet.cli(&["runs", "reject", &id, "--note", "again"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!(
            "run {id} was already rejected by operator/admin at "
        )),
        "{}",
        stderr(&out)
    );
    // Nothing continued it.
    let runs = fleet.cli_json(&["runs", "list", "-o", "json"]);
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");

    let audit = fleet.cli_json(&["audit", "list", "--limit", "1000", "-o", "json"]);
    let entries: Vec<(String, String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "RejectRun" || e["action"] == "ApproveRun")
        .map(|e| {
            (
                e["who"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["result"].as_str().unwrap().to_string(),
                e["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |who: &str, action: &str, result: &str, detail: &str| {
        entries
            .iter()
            .any(|e| e.0 == who && e.1 == action && e.2 == result && e.3.contains(detail))
    };
    assert!(
        has("operator/vic", "RejectRun", "denied", ""),
        "{entries:#?}"
    );
    assert!(
        has(
            "operator/admin",
            "RejectRun",
            "ok",
            "HR feed doubled the joiners"
        ),
        "{entries:#?}"
    );
    assert!(
        has(
            "operator/admin",
            "ApproveRun",
            "error",
            "fine after all: run "
        ),
        "{entries:#?}"
    );
    assert!(
        !has("operator/admin", "ApproveRun", "ok", ""),
        "{entries:#?}"
    );
    assert!(
        has("operator/admin", "RejectRun", "error", "again: run "),
        "{entries:#?}"
    );
    let target = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "RejectRun" && e["result"] == "ok")
        .unwrap();
    assert_eq!(target["target"], format!("run/{prefix}"), "{target:#}");
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
