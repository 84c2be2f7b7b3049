//! Input limits end to end: the real CLI against a real controller. Oversized notes, reasons,
//! step lists and names are refused with an error that names the limit and the value, without
//! storing anything and without echoing the oversized input back; the audit log tells dry runs
//! from applies and keeps pause and drain notes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::time::Duration;

use common::{Fleet, stderr, stdout, wait_for};

const SEQUENCE: &str =
    "kind: Sequence\nname: quick\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n";

fn schedule(name: &str, extra: &str) -> String {
    format!(
        "---\nkind: Schedule\nname: {name}\nsequence: quick\ntargets: {{agents: [sync-01]}}\ntrigger: {{every: 1h}}\n{extra}"
    )
}

/// Run the CLI and require failure; returns stderr.
fn refused(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleet.cli(args);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "syncfleet {:?} succeeded: {}{err}",
        args.iter()
            .map(|a| a.chars().take(40).collect::<String>())
            .collect::<Vec<_>>(),
        stdout(&out)
    );
    err
}

fn ok(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleet.cli(args);
    assert!(
        out.status.success(),
        "syncfleet {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn notes_and_reasons_over_the_limit_are_refused_by_every_call() {
    let fleet = Fleet::started(&["sync-01"], 1.0);
    let file = fleet.fleet_file("f.yaml", &format!("{SEQUENCE}{}", schedule("hourly", "")));
    ok(&fleet, &["apply", "-f", file.to_str().unwrap()]);
    let long = "n".repeat(2000);
    let calls: Vec<Vec<&str>> = vec![
        vec!["schedules", "pause", "hourly", "--note", &long],
        vec!["fleet", "pause", "--note", &long],
        vec!["agents", "drain", "sync-01", "--note", &long],
        vec![
            "runs",
            "cancel",
            "0190d8e0-0000-7000-8000-000000000000",
            "--reason",
            &long,
        ],
        vec![
            "runs",
            "approve",
            "0190d8e0-0000-7000-8000-000000000000",
            "--note",
            &long,
        ],
    ];
    for args in &calls {
        let err = refused(&fleet, args);
        let field = if args.contains(&"--reason") {
            "reason"
        } else {
            "note"
        };
        assert!(
            err.contains(&format!("{field} is 2000 bytes; the limit is 1024")),
            "{:?}: {err}",
            &args[..2]
        );
        assert!(!err.contains(&long), "the note is echoed back: {err}");
    }
    // Nothing was stored.
    let show = fleet.cli_json(&["schedules", "show", "hourly", "-o", "json"]);
    assert!(!show.to_string().contains(&long[..1025]), "{show:#}");
    let status = fleet.cli_json(&["fleet", "status", "-o", "json"]);
    assert!(!status.to_string().contains(&long[..1025]), "{status:#}");
    let agent = fleet.cli_json(&["agents", "show", "sync-01", "-o", "json"]);
    assert!(!agent.to_string().contains(&long[..1025]), "{agent:#}");
    // A note at the limit is fine.
    let at_limit = "n".repeat(1024);
    ok(&fleet, &["fleet", "pause", "--note", &at_limit]);
}

#[test]
fn runs_with_too_many_steps_and_schedules_with_too_many_cron_entries_are_refused() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    // Ad-hoc run: 300 steps (the limit is 256 per run).
    let mut args = vec!["run".to_string(), "sync-01".to_string()];
    for _ in 0..300 {
        args.push("--step".into());
        args.push("AD:Delta Import".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = refused(&fleet, &args);
    assert!(
        err.contains("300 steps") && err.contains("at most 256 steps per run"),
        "{err}"
    );
    let runs = fleet.cli_json(&["runs", "list", "-o", "json"]);
    assert_eq!(runs.as_array().unwrap().len(), 0, "{runs:#}");

    // Fleet file: 2000 cron entries in one schedule (the limit is 64).
    let crons: Vec<String> = (0..2000)
        .map(|i| format!("\"{} {} * * *\"", i % 60, (i / 60) % 24))
        .collect();
    let file = fleet.fleet_file(
        "cron.yaml",
        &format!(
            "{SEQUENCE}---\nkind: Schedule\nname: busy\nsequence: quick\ntargets: {{agents: [sync-01]}}\ntrigger: {{cron: [{}]}}\n",
            crons.join(", ")
        ),
    );
    let err = refused(&fleet, &["apply", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("cron.yaml document 2 (Schedule busy)")
            && err.contains("trigger.cron: 2000 entries; at most 64"),
        "{err}"
    );
    let out = fleet.cli(&["get", "schedules", "-o", "json"]);
    assert!(!stdout(&out).contains("busy"), "{}", stdout(&out));
}

#[test]
fn errors_do_not_echo_huge_names() {
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();
    let huge = "x".repeat(100_000);
    let cases: Vec<Vec<&str>> = vec![
        vec!["schedules", "show", &huge],
        vec!["agents", "show", &huge],
        vec!["runs", "show", &huge],
        vec!["run", &huge, "--step", "AD:Delta Import"],
        vec!["schedules", "pause", &huge, "--note", "patching"],
        vec!["agents", "drain", &huge],
        vec!["runs", "cancel", &huge],
        vec!["delete", "schedule", &huge],
        vec!["agents", "revoke", &huge],
    ];
    for args in &cases {
        let err = refused(&fleet, args);
        assert!(
            err.contains(&format!("\"{}\"… (100000 bytes)", "x".repeat(64))),
            "{:?}: {}",
            &args[..2],
            err.chars().take(600).collect::<String>()
        );
        assert!(
            err.len() < 2000,
            "{:?}: {} bytes of error",
            &args[..2],
            err.len()
        );
    }
}

#[test]
fn the_audit_log_tells_dry_runs_from_applies_and_keeps_notes() {
    let fleet = Fleet::started(&["sync-01"], 1.0);
    let file = fleet.fleet_file("f.yaml", &format!("{SEQUENCE}{}", schedule("hourly", "")));
    let file = file.to_str().unwrap();
    ok(&fleet, &["apply", "-f", file, "--dry-run"]);
    ok(&fleet, &["apply", "-f", file]);
    ok(
        &fleet,
        &["schedules", "pause", "hourly", "--note", "CHG-1 schedule"],
    );
    ok(
        &fleet,
        &["agents", "drain", "sync-01", "--note", "CHG-2 patching"],
    );
    ok(&fleet, &["fleet", "pause", "--note", "CHG-3 freeze"]);
    let entries = wait_for("the audit entries", Duration::from_secs(10), || {
        let all = fleet.cli_json(&["audit", "list", "-o", "json"]);
        let all = all.as_array()?.clone();
        (all.iter().filter(|e| e["action"] == "Apply").count() == 2).then_some(all)
    });
    let detail = |action: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["detail"].as_str().unwrap().to_string())
            .collect()
    };
    let applies = detail("Apply");
    // Newest first.
    assert!(applies[0].starts_with("applied:"), "{applies:?}");
    assert!(applies[1].starts_with("dry run:"), "{applies:?}");
    assert!(
        applies[1].contains("2 created"),
        "the dry run's diff: {applies:?}"
    );
    assert_eq!(detail("PauseSchedule"), ["CHG-1 schedule"]);
    assert_eq!(detail("DrainAgent"), ["CHG-2 patching"]);
    assert_eq!(detail("PauseFleet"), ["CHG-3 freeze"]);
    // The table shows it too.
    let table = ok(&fleet, &["audit", "list"]);
    assert!(table.contains("dry run:"), "{table}");
}
