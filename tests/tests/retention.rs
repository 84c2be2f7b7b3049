//! Retention end to end: the real controller prunes back-dated runs, events and audit entries
//! of its SQLite store in batches while an operator starts runs, and reports it in /metrics;
//! a real agent clears its simulated engine's run history once the controller has stored the
//! runs, and the controller's /metrics shows it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::time::Duration;

use common::{Fleet, http_get, stdout, wait_for};

const RUN_TIMEOUT: Duration = Duration::from_secs(90);
const DAY_MS: i64 = 24 * 3600 * 1000;

/// A labelled sample `name{kind="KIND"}` of the controller's /metrics.
fn metric(fleet: &Fleet, name: &str, kind: &str) -> Option<f64> {
    labelled(fleet, name, "kind", kind)
}

/// A sample `name{label="value"}` of the controller's /metrics.
fn labelled(fleet: &Fleet, name: &str, label: &str, value: &str) -> Option<f64> {
    let (_, body) = http_get(fleet.http_port, "/metrics")?;
    let prefix = format!("{name}{{{label}=\"{value}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn start_run(fleet: &Fleet) -> String {
    let out = fleet.cli(&["run", "sync-01", "--step", "AD:Delta Import"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

#[test]
fn old_runs_events_and_audit_are_pruned_in_batches_while_runs_go_on() {
    let mut fleet = Fleet::started(&["sync-01"], 0.01);
    let old: Vec<String> = (0..3).map(|_| start_run(&fleet)).collect();
    let kept = start_run(&fleet);
    for id in old.iter().chain([&kept]) {
        fleet.wait_run_state(id, &["succeeded"], RUN_TIMEOUT);
    }

    // Back-date three runs (and copy them 2,000 times, so that pruning takes many batches),
    // their events, and the audit entries so far, with the controller stopped.
    fleet.controller_mut().kill9();
    let db = rusqlite::Connection::open(fleet.data_dir().join("controller.db")).unwrap();
    let back = 200 * DAY_MS;
    for id in &old {
        db.execute(
            "UPDATE runs SET created_at = created_at - ?1 WHERE id = ?2",
            rusqlite::params![back, id],
        )
        .unwrap();
        db.execute(
            "UPDATE run_events SET at = at - ?1 WHERE run_id = ?2",
            rusqlite::params![back, id],
        )
        .unwrap();
    }
    let copies = db
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO runs (id, agent, state, created_at, body, schedule)
             SELECT 'copy-' || i, agent, state, created_at, body, schedule
             FROM runs, n WHERE runs.id = ?1",
            [&old[0]],
        )
        .unwrap();
    assert_eq!(copies, 2000);
    let old_events: i64 = db
        .query_row(
            "SELECT count(*) FROM run_events WHERE at < ?1",
            [chrono_now_ms() - 100 * DAY_MS],
            |r| r.get(0),
        )
        .unwrap();
    assert!(old_events > 0);
    let old_audit = db
        .execute("UPDATE audit SET at = at - ?1", [500 * DAY_MS])
        .unwrap();
    assert!(old_audit > 0);
    drop(db);

    fleet.start_controller_with(&[
        "--set",
        "retention.runs=30d",
        "--set",
        "retention.events=10d",
        "--set",
        "retention.interval=1s",
        "--set",
        "retention.batch=10",
    ]);
    fleet.wait_connected(&["sync-01"]);
    // Writers while the pruner works through its ~200 batches: runs started meanwhile are
    // stored, dispatched and end as usual.
    let mut during = Vec::new();
    let mut started_mid_prune = 0;
    let pruned_runs = wait_for("the back-dated runs to be pruned", RUN_TIMEOUT, || {
        let before = metric(&fleet, "syncfleet_retention_pruned_rows_total", "runs");
        if before.is_some_and(|n| n >= 2003.0) {
            return before;
        }
        during.push(start_run(&fleet));
        let after = metric(&fleet, "syncfleet_retention_pruned_rows_total", "runs");
        if before.is_some_and(|n| n > 0.0) && after.is_some_and(|n| n < 2003.0) {
            started_mid_prune += 1;
        }
        None
    });
    assert_eq!(pruned_runs, 2003.0, "exactly the back-dated runs");
    assert!(
        started_mid_prune > 0,
        "no run was started while pruning was under way ({} runs started)",
        during.len()
    );
    for id in &during {
        fleet.wait_run_state(id, &["succeeded"], RUN_TIMEOUT);
    }

    for id in &old {
        let out = fleet.cli(&["runs", "show", id]);
        assert!(!out.status.success(), "{id} should be pruned");
    }
    let list = fleet.cli_json(&["runs", "list", "--limit", "1000", "-o", "json"]);
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&kept.as_str()));
    assert!(during.iter().all(|id| listed.contains(&id.as_str())));
    assert_eq!(listed.len(), 1 + during.len(), "{listed:?}");
    assert!(fleet.run_json(&kept).unwrap()["steps"][0]["counters"].is_object());

    // Events and audit entries: exactly the back-dated ones (the counters never go past them).
    wait_for("the back-dated events to be pruned", RUN_TIMEOUT, || {
        metric(&fleet, "syncfleet_retention_pruned_rows_total", "events")
            .filter(|n| *n as i64 == old_events)
    });
    wait_for(
        "the back-dated audit entries to be pruned",
        RUN_TIMEOUT,
        || {
            metric(&fleet, "syncfleet_retention_pruned_rows_total", "audit")
                .filter(|n| *n as usize == old_audit)
        },
    );
    let last = metric(
        &fleet,
        "syncfleet_retention_last_prune_timestamp_seconds",
        "runs",
    )
    .unwrap();
    assert!(
        (chrono_now_ms() as f64 / 1000.0 - last).abs() < 600.0,
        "{last}"
    );
    // The audit entries written since (this test's CLI calls) are kept.
    let audit_left = fleet.cli_json(&["audit", "list", "-o", "json"]);
    assert!(!audit_left.as_array().unwrap().is_empty());
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Run-history entries of `ma` in the simulated engine's state file.
fn sim_history(path: &std::path::Path, ma: &str) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(v["mas"][ma]["history"].as_object()?.len())
}

#[test]
fn the_agent_clears_engine_run_history_after_the_controller_stored_the_runs() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let state = fleet.dir.path().join("sim-state.json");
    fleet.start_agent_with(
        "sync-01",
        &format!(
            "[engine]\nkind = \"sim\"\ntime_scale = 0.01\nclear_runs_older_than = \"5s\"\nclear_runs_every = \"1s\"\n[engine.sim]\nstate_file = {state:?}\n"
        ),
    );
    fleet.wait_connected(&["sync-01"]);
    let ids: Vec<String> = (0..2).map(|_| start_run(&fleet)).collect();
    let mut finished_ms = 0;
    for id in &ids {
        let run = fleet.wait_run_state(id, &["succeeded"], RUN_TIMEOUT);
        let at = chrono::DateTime::parse_from_rfc3339(run["finished_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        finished_ms = finished_ms.max(at);
    }
    // Younger than 5 s: still in the engine's history.
    assert_eq!(sim_history(&state, "AD"), Some(2));

    // Stored by the controller and older than 5 s: cleared, and reported.
    wait_for(
        "the engine's run history to be cleared",
        RUN_TIMEOUT,
        || (sim_history(&state, "AD") == Some(0)).then_some(()),
    );
    let before = wait_for("the clearing to reach /metrics", RUN_TIMEOUT, || {
        labelled(
            &fleet,
            "syncfleet_engine_runs_cleared_before_timestamp_seconds",
            "agent",
            "sync-01",
        )
        .filter(|s| *s * 1000.0 >= finished_ms as f64)
    });
    assert!(before * 1000.0 >= finished_ms as f64);
    let calls = labelled(
        &fleet,
        "syncfleet_engine_clear_runs_total",
        "agent",
        "sync-01",
    )
    .unwrap();
    assert!(calls >= 1.0, "{calls}");
    assert_eq!(
        labelled(
            &fleet,
            "syncfleet_engine_clear_runs_failing",
            "agent",
            "sync-01"
        ),
        Some(0.0)
    );
    // `agents show` reports it too.
    let agent = fleet.cli_json(&["agents", "show", "sync-01", "-o", "json"]);
    assert!(
        agent["clear_runs_total"].as_u64().unwrap() >= 1,
        "{agent:#}"
    );
    assert_eq!(agent["clear_runs_problem"], "");
    assert!(agent["runs_cleared_before"].is_string(), "{agent:#}");
    // What the controller stored is untouched: the runs keep their engine statistics.
    for id in &ids {
        let run = fleet.run_json(id).unwrap();
        assert!(run["steps"][0]["counters"].is_object(), "{run:#}");
    }
}
