//! An agent whose journal cannot be written loses no run result: checked through the real
//! binaries. The test holds SQLite's write lock on the agent's real `agent.db` (another process
//! writing to it), so every write of the agent fails ("database is locked") while reads work,
//! as on a full disk; this needs no privileges, unlike a size-limited mount. The agent-level
//! tests (`executor::journal_failure_tests`) produce the disk-full error itself.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::time::Duration;

use common::{Fleet, stdout};

/// A Full Import of AD takes about 8 s (3,000 connectors at realistic speed).
const SERVER: &str = "seed = 5\ntime_scale = 1.0\n\
     [[mas]]\nname = \"AD\"\nma_type = \"AD\"\nconnectors = 3000\nchange_rate_per_hour = 0.0\n\
     [[mas]]\nname = \"HR\"\nma_type = \"MSSQL\"\nconnectors = 100\nchange_rate_per_hour = 0.0\n";

fn start_agent(fleet: &mut Fleet) {
    let server = fleet.dir.path().join("server.toml");
    // The engine's run history outlives the agent process, as the real engine's does.
    let state = fleet.dir.path().join("engine-state.json");
    std::fs::write(&server, format!("state_file = {state:?}\n{SERVER}")).unwrap();
    fleet.start_agent_with(
        "sync-01",
        &format!(
            "[engine]\nkind = \"sim\"\nsim_file = {server:?}\n[executor]\nstagger = \"10ms\"\nbusy_poll = \"200ms\"\n"
        ),
    );
    fleet.wait_connected(&["sync-01"]);
}

fn run(fleet: &Fleet, step: &str) -> String {
    let out = fleet.cli(&["run", "sync-01", "--step", step]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// Take SQLite's write lock on the agent's journal once run `id`'s step runs on the engine
/// (and, with `run_number`, once the agent journaled its engine run number).
fn lock_journal(fleet: &Fleet, id: &str, run_number: bool) -> rusqlite::Connection {
    common::wait_for("the step to run", Duration::from_secs(30), || {
        let run = fleet.run_json(id)?;
        (run["steps"][0]["state"] == "running").then_some(())
    });
    let path = fleet.agent_dir("sync-01").join("agent.db");
    if run_number {
        common::wait_for(
            "the step's engine run number in the agent journal",
            Duration::from_secs(30),
            || {
                let conn = rusqlite::Connection::open(&path).ok()?;
                let n: i64 = conn
                    .query_row(
                        "SELECT run_number FROM steps WHERE run_id = ?1",
                        [id],
                        |r| r.get(0),
                    )
                    .ok()?;
                (n > 0).then_some(())
            },
        );
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

/// Wait until `agents show` reports an agent problem (`Some(text)`) or none (`None`).
fn wait_agent_problem(fleet: &Fleet, want_problem: bool) -> serde_json::Value {
    common::wait_for(
        &format!("the agent to report a journal problem: {want_problem}"),
        Duration::from_secs(90),
        || {
            let a = fleet.cli_json(&["agents", "show", "sync-01", "-o", "json"]);
            let has = !a["agent_problem"].as_str().unwrap_or_default().is_empty();
            (has == want_problem).then_some(a)
        },
    )
}

#[test]
fn a_journal_that_cannot_be_written_holds_results_refuses_runs_and_recovers() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    start_agent(&mut fleet);
    let id = run(&fleet, "AD:Full Import");
    let lock = lock_journal(&fleet, &id, false);
    // The engine finishes the step; its result cannot be journaled: the agent says so.
    let agent = wait_agent_problem(&fleet, true);
    let problem = agent["agent_problem"].as_str().unwrap();
    assert!(
        problem.contains("journal cannot be written") && problem.contains("refused"),
        "{agent:#}"
    );
    let human = fleet.cli(&["agents", "show", "sync-01"]);
    assert!(
        stdout(&human).contains("agent health")
            && stdout(&human).contains("unhealthy: the agent journal cannot be written"),
        "{}",
        stdout(&human)
    );
    // New runs are refused with the reason.
    let refused = run(&fleet, "HR:Delta Import");
    let r = fleet.wait_run_state(&refused, &["failed"], Duration::from_secs(30));
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("journal cannot be written"),
        "{r:#}"
    );
    assert_eq!(fleet.run_json(&id).unwrap()["state"], "running");
    // Writes succeed again: the held result arrives and the agent is healthy again.
    drop(lock);
    let done = fleet.wait_run_state(
        &id,
        &["succeeded", "failed", "unknown", "completed_with_errors"],
        Duration::from_secs(60),
    );
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["steps"][0]["result"], "success", "{done:#}");
    assert!(
        done["steps"][0]["run_number"].as_u64().unwrap() > 0,
        "{done:#}"
    );
    wait_agent_problem(&fleet, false);
    let again = run(&fleet, "HR:Delta Import");
    let r = fleet.wait_run_state(&again, &["succeeded", "failed"], Duration::from_secs(60));
    assert_eq!(r["state"], "succeeded", "{r:#}");
}

#[test]
fn a_run_whose_result_was_held_when_the_agent_died_gets_it_from_the_engines_run_history() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    start_agent(&mut fleet);
    let id = run(&fleet, "AD:Full Import");
    let lock = lock_journal(&fleet, &id, true);
    // The engine finished the step; its result is held in the agent's memory only ...
    wait_agent_problem(&fleet, true);
    // ... when the agent dies. Then the disk is writable again and the agent restarts.
    fleet.agents.get_mut("sync-01").unwrap().kill9();
    drop(lock);
    start_agent(&mut fleet);
    let done = fleet.wait_run_state(
        &id,
        &["succeeded", "failed", "unknown", "completed_with_errors"],
        Duration::from_secs(60),
    );
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let step = &done["steps"][0];
    assert_eq!(step["result"], "success", "{done:#}");
    assert!(step["run_number"].as_u64().unwrap() > 0, "{done:#}");
    assert!(
        step["detail"].as_str().unwrap().contains("run history"),
        "{done:#}"
    );
    // The full import's counters, read from the engine: every connector, unchanged.
    assert_eq!(
        step["counters"]["stage-no-change"].as_u64(),
        Some(3000),
        "{done:#}"
    );
}
