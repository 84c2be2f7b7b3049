//! The engine's own errors, centrally: the object errors of a simulated export with errors and
//! the connection incidents of a failed import travel from the agent to the controller with
//! their steps, are stored, and are listed by `syncfleet runs show ID --errors` and
//! `runs show -o json` — through the real binaries.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::time::Duration;

use common::{Fleet, stdout};

/// A simulated server: HR (an import-only HR database) stages new and changed people; AD
/// rejects every export (`export_error_rate = 1`, the `permission-issue` / `0x80070005` errors
/// a real AD MA reports), and HR's first full import loses its connection.
const SERVER: &str = r#"seed = 5
time_scale = 0.01
[[mas]]
name = "HR"
ma_type = "MSSQL"
connectors = 5000
change_rate_per_hour = 0.0
receives_exports = false
source_events = [{at_secs = 0.0, add = 40, update = 40}]
[[mas]]
name = "AD"
ma_type = "AD"
connectors = 5000
change_rate_per_hour = 0.0
export_error_rate = 1.0
[[script]]
ma = "HR"
profile = "Full Import"
result = "stopped-connectivity"
"#;

const SEQUENCE: &str = "kind: Sequence
name: export-cycle
on_failure: continue
stages:
  - steps: [{ma: HR, profile: Delta Import}]
  - steps: [{ma: HR, profile: Delta Sync}]
  - steps: [{ma: AD, profile: Export}]
";

fn fleet() -> Fleet {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let server = fleet.dir.path().join("server.toml");
    std::fs::write(&server, SERVER).unwrap();
    fleet.start_agent_with(
        "sync-01",
        &format!(
            "[engine]\nkind = \"sim\"\nsim_file = {server:?}\n[executor]\nstagger = \"10ms\"\n"
        ),
    );
    fleet.wait_connected(&["sync-01"]);
    fleet
}

#[test]
fn an_export_with_errors_lists_its_object_errors_in_runs_show() {
    let fleet = fleet();
    let file = fleet.fleet_file("export-cycle.yaml", SEQUENCE);
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = fleet.cli(&["run", "sync-01", "--sequence", "export-cycle"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let id = stdout(&out).trim().to_string();
    let run = fleet.wait_run_state(
        &id,
        &["succeeded", "completed_with_errors", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(run["state"], "completed_with_errors", "{run:#}");
    let export = &run["steps"][2];
    assert_eq!(export["result"], "completed-export-errors", "{export:#}");
    let count = export["error_count"].as_u64().unwrap();
    let listed = export["object_errors"].as_array().unwrap();
    // More errors than a step carries: the first ten, and the rest counted.
    assert!(count > 10, "{export:#}");
    assert_eq!(listed.len(), 10, "{export:#}");
    assert_eq!(
        export["object_errors_omitted"].as_u64().unwrap(),
        count - 10
    );
    for e in listed {
        assert_eq!(e["kind"], "export", "{e}");
        assert_eq!(e["error_type"], "permission-issue", "{e}");
        assert_eq!(e["error_code"], "0x80070005", "{e}");
        assert_eq!(e["error_literal"], "Access is denied.", "{e}");
        assert!(e["dn"].as_str().unwrap().starts_with("CN="), "{e}");
        assert!(e["cs_guid"].as_str().unwrap().starts_with('{'), "{e}");
    }
    // The import and the sync had none.
    assert_eq!(run["steps"][0]["object_errors"], serde_json::json!([]));
    assert_eq!(run["steps"][1]["error_count"], 0);

    // The table: the run, then every error with its DN, type, code and literal.
    let out = fleet.cli(&["runs", "show", &id, "--errors"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("\nobject errors:\n"), "{text}");
    assert!(
        text.contains(&format!(
            "  step 3/3 AD: Export: completed-export-errors, {count} errors\n"
        )),
        "{text}"
    );
    let first_dn = listed[0]["dn"].as_str().unwrap();
    let row = text
        .lines()
        .find(|l| l.starts_with("    1 ") && l.contains("  export  "))
        .unwrap_or_else(|| panic!("no first error row in\n{text}"));
    assert!(row.contains(first_dn), "{row}");
    assert!(
        row.ends_with("permission-issue  0x80070005  Access is denied."),
        "{row}"
    );
    assert!(
        text.contains(&format!(
            "    … and {} more not listed; the engine's run history has them all (run {} of MA AD on sync-01)\n",
            count - 10,
            export["run_number"]
        )),
        "{text}"
    );
    assert!(
        text.contains("connection incidents: no failed connections reported"),
        "{text}"
    );
    // Without --errors the run is shown as before.
    let plain = stdout(&fleet.cli(&["runs", "show", &id]));
    assert!(!plain.contains("object errors"), "{plain}");
}

#[test]
fn a_lost_connection_lists_its_incidents_in_runs_show() {
    let fleet = fleet();
    let out = fleet.cli(&["run", "sync-01", "--step", "HR:Full Import"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let id = stdout(&out).trim().to_string();
    let run = fleet.wait_run_state(&id, &["succeeded", "failed"], Duration::from_secs(60));
    let step = &run["steps"][0];
    assert_eq!(step["result"], "stopped-connectivity", "{run:#}");
    let incidents = step["connection_incidents"].as_array().unwrap();
    let failed = incidents
        .iter()
        .find(|i| i["connection_result"] != "success")
        .unwrap_or_else(|| panic!("no failed incident in {step:#}"));
    assert_eq!(failed["connection_result"], step["connection_result"]);
    assert!(!failed["server"].as_str().unwrap().is_empty(), "{failed}");
    assert!(
        !failed["error_code"].as_str().unwrap().is_empty(),
        "{failed}"
    );
    assert!(failed["date"].is_string(), "{failed}");

    let text = stdout(&fleet.cli(&["runs", "show", &id, "--errors"]));
    assert!(text.contains("object errors: none reported"), "{text}");
    assert!(
        text.contains(&format!(
            "connection incidents:\n  step 1/1 HR: Full Import: connection result {}\n",
            step["connection_result"].as_str().unwrap()
        )),
        "{text}"
    );
    let code = failed["error_code"].as_str().unwrap();
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "    {}",
            failed["connection_result"].as_str().unwrap()
        )) && l.contains(code)),
        "{text}"
    );
}
