//! End-to-end: real controller and agent binaries on loopback with mTLS, driven by the real
//! `syncfleet` CLI.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::time::Duration;

use common::{Fleet, run_followed, stdout, wait_for};

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn run_with_follow_stores_counters_that_survive_a_controller_restart() {
    let mut fleet = Fleet::started(&["sync-01", "sync-02"], 0.01);

    // The inventory reaches the operator API.
    let agents = fleet.cli_json(&["agents", "list", "-o", "json"]);
    let a1 = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "sync-01")
        .unwrap();
    let mas: Vec<&str> = a1["management_agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(mas.contains(&"AD"), "{mas:?}");
    assert_eq!(a1["labels"]["env"], "e2e");

    let followed = run_followed(
        |a| fleet.cli(a),
        "sync-01",
        &["AD:Delta Import", "AD:Delta Sync"],
    );
    let id = followed["id"].as_str().unwrap().to_string();

    let run = fleet.run_json(&id).unwrap();
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["agent"], "sync-01");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["ma"], "AD");
    assert_eq!(steps[0]["profile"], "Delta Import");
    let r0 = steps[0]["result"].as_str().unwrap();
    assert!(r0 == "success" || r0 == "completed-no-objects", "{r0}");
    // Staging counters of an import are reported by the engine's own names.
    for c in [
        "stage-add",
        "stage-update",
        "stage-delete",
        "stage-no-change",
    ] {
        assert!(
            steps[0]["counters"][c].is_u64(),
            "missing {c}: {:#}",
            steps[0]
        );
    }
    assert!(steps[0]["started_at"].is_string() && steps[0]["finished_at"].is_string());
    assert!(
        steps[1]["counters"]["connector-flow"].is_u64(),
        "{:#}",
        steps[1]
    );

    // Kill the controller without warning and start it again: the run and its statistics are
    // read back from the store unchanged.
    fleet.controller_mut().kill9();
    fleet.start_controller();
    let again = wait_for("the restarted controller to answer", RUN_TIMEOUT, || {
        fleet.run_json(&id)
    });
    assert_eq!(again["steps"], run["steps"]);
    assert_eq!(again["state"], "succeeded");
    fleet.wait_connected(&["sync-01", "sync-02"]);

    // runs list sees it, filtered by agent.
    let list = fleet.cli_json(&["runs", "list", "--agent", "sync-01", "-o", "json"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str())
    );
    let list2 = fleet.cli_json(&["runs", "list", "--agent", "sync-02", "-o", "json"]);
    assert!(list2.as_array().unwrap().is_empty());
}

#[test]
fn failed_step_exits_non_zero_and_unknown_profiles_are_refused() {
    let fleet = Fleet::started(&["sync-01"], 0.01);
    let out = fleet.cli(&["run", "sync-01", "--step", "AD:Delta Imprt"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Delta Import"),
        "the error lists the real profiles: {err}"
    );
    let out = fleet.cli(&["run", "nope", "--step", "AD:Delta Import"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sync-01"));
}

#[test]
fn agent_killed_mid_run_never_executes_it_twice() {
    // Slow engine: a full import takes tens of seconds.
    let mut fleet = Fleet::started(&["sync-01"], 1.0);
    let out = fleet.cli(&["run", "sync-01", "--step", "AD:Full Import"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out);
    // Freeze the controller: from now on nothing the agent sends is processed or acknowledged.
    fleet.controller_mut().signal("STOP");
    wait_for("the agent to journal the run", RUN_TIMEOUT, || {
        fleet.journal_run("sync-01", &id)
    });
    // Crash the agent mid-run, thaw the controller, start the agent again.
    fleet.agents.get_mut("sync-01").unwrap().kill9();
    fleet.controller_mut().signal("CONT");
    fleet.start_agent("sync-01", 0, 1.0);
    let run = fleet.wait_run_state(&id, &["unknown", "succeeded", "failed"], RUN_TIMEOUT);
    assert_eq!(
        run["state"], "unknown",
        "an interrupted run is reported, not executed again: {run:#}"
    );
    assert_eq!(
        run["steps"][0]["result"], "",
        "the step never completed: {run:#}"
    );
    assert!(run["message"].as_str().unwrap().contains("restarted"));
    // The restarted agent did not start it (any resend was recognised from the journal).
    let log = fleet.agents["sync-01"].log_text();
    assert!(!log.contains("run accepted"), "executed again:\n{log}");
    assert_eq!(fleet.journal_run("sync-01", &id), Some(true));
}

#[test]
fn events_emitted_while_the_controller_is_down_arrive_after_it_returns() {
    let mut fleet = Fleet::started(&["sync-01"], 0.2);
    let out = fleet.cli(&[
        "run",
        "sync-01",
        "--step",
        "HR:Full Import",
        "--step",
        "HR:Delta Sync",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out);
    wait_for("the agent to journal the run", RUN_TIMEOUT, || {
        fleet.journal_run("sync-01", &id)
    });
    fleet.controller_mut().kill9();
    // The run finishes on the agent while no controller exists.
    wait_for("the run to finish on the agent", RUN_TIMEOUT, || {
        fleet.journal_run("sync-01", &id).filter(|f| *f)
    });
    fleet.start_controller();
    let run = fleet.wait_run_state(&id, &["succeeded", "failed", "unknown"], RUN_TIMEOUT);
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let steps = run["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["state"] == "done"), "{run:#}");
    assert!(
        steps[0]["counters"]["stage-no-change"].as_u64().unwrap() > 0,
        "{run:#}"
    );
}

#[test]
fn pending_run_for_an_absent_agent_fails_after_the_deadline() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller_with(&["--pending-deadline", "3s"]);
    fleet.start_agent("sync-01", 0, 0.01);
    fleet.wait_connected(&["sync-01"]);
    fleet.agents.get_mut("sync-01").unwrap().kill9();
    wait_for("the agent to be disconnected", RUN_TIMEOUT, || {
        let s = fleet.agent_states()?;
        (s.get("sync-01").map(String::as_str) == Some("disconnected")).then_some(())
    });
    let out = fleet.cli(&["run", "sync-01", "--step", "AD:Delta Import"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out);
    let run = fleet.run_json(&id).unwrap();
    assert_eq!(run["state"], "pending");
    let run = fleet.wait_run_state(&id, &["failed"], RUN_TIMEOUT);
    assert!(
        run["message"]
            .as_str()
            .unwrap()
            .contains("pending deadline"),
        "{run:#}"
    );
}
