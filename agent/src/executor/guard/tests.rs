//! Guard rails hold a run; an approval lets the held step through once.

use syncfleet_proto::v1::{self, agent_event::Kind};

use crate::executor::plan::{PlannedStep, RunMemory};
use crate::executor::testkit::*;

fn count(n: u64) -> Option<v1::Limit> {
    Some(v1::Limit {
        kind: Some(v1::limit::Kind::Count(n)),
    })
}

fn percent(p: f64) -> Option<v1::Limit> {
    Some(v1::Limit {
        kind: Some(v1::limit::Kind::Percent(p)),
    })
}

fn guarded(guard: v1::Guard, approved: bool) -> PlannedStep {
    PlannedStep {
        index: 1,
        spec: v1::StepSpec {
            ma: "HR".into(),
            profile: "Delta Sync".into(),
        },
        only_if: v1::Condition::Always,
        guard: Some(guard),
        approved,
    }
}

/// Staged adds, updates and renames and pending export adds and updates hold a step like
/// deletes do; the reason names each counter above its limit, its value and the limit.
#[test]
fn guard_rails_on_adds_updates_and_renames_name_counter_value_and_limit() {
    let guard = v1::Guard {
        max_staged_adds: count(100),
        max_staged_updates: percent(5.0),
        max_staged_renames: count(10),
        max_pending_adds: count(50),
        max_pending_updates: percent(1.0),
        ..Default::default()
    };
    let pending = v1::PendingCounters {
        import_add: 101,
        import_update: 500,
        export_add: 50,
        export_update: 201,
        total_connectors: 20_000,
        ..Default::default()
    };
    let why = super::hold_reason(&guarded(guard, false), Some(&pending), 11).unwrap();
    assert_eq!(
        why,
        "101 staged adds on HR (NumImportAdd) exceed max_staged_adds 100; \
         11 staged renames on HR (stage-rename of the earlier steps of this run) exceed max_staged_renames 10; \
         201 pending export updates on HR (NumExportUpdate) exceed max_pending_updates 1% of 20000 connectors = 200"
    );
    // At the limits nothing holds: a limit is the most that may pass.
    let at_limits = v1::PendingCounters {
        import_add: 100,
        import_update: 1000,
        export_add: 50,
        export_update: 200,
        total_connectors: 20_000,
        ..Default::default()
    };
    assert_eq!(
        super::hold_reason(&guarded(guard, false), Some(&at_limits), 10),
        None
    );
    // An approval lifts the guard once; unreadable counters hold (fail closed).
    assert_eq!(
        super::hold_reason(&guarded(guard, true), Some(&pending), 11),
        None
    );
    let unread = super::hold_reason(&guarded(guard, false), None, 0).unwrap();
    assert!(unread.contains("could not be read"), "{unread}");
}

/// The staged-renames guard counts the renames the run's earlier steps staged, per MA.
#[test]
fn run_memory_sums_staged_renames_per_ma() {
    let mut m = RunMemory::default();
    let staged = |n: u64| v1::StepCounters {
        counters: [
            ("stage-rename".to_string(), n),
            ("stage-add".to_string(), 4),
        ]
        .into_iter()
        .collect(),
        outbound: Default::default(),
    };
    m.record("AD", &staged(7));
    m.record("AD", &staged(5));
    m.record("HR", &staged(0));
    assert_eq!(m.staged_renames("AD"), 12);
    assert_eq!(m.staged_renames("HR"), 0);
    assert_eq!(m.staged_renames("MIM Service"), 0);
}

/// A guard on staged adds holds the synchronization after an import staged too many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_adds_over_the_limit_hold_the_sync() {
    let (h, sim) = quiet().await;
    use v1::Condition as C;
    sim.inject_source_changes("HR", 40, 0, 0).unwrap();
    let guard = v1::Guard {
        max_staged_adds: count(25),
        ..Default::default()
    };
    start_plan(
        &h,
        "adds",
        vec![
            vec![step("HR", "Delta Import", C::Always, None)],
            vec![step("HR", "Delta Sync", C::Always, Some(guard))],
        ],
        |_| {},
    );
    let events = wait_all(&h).await;
    let f = finished(&events, "adds");
    assert_eq!(f.state, v1::RunState::Held as i32, "{f:?}");
    let held = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::StepHeld(s)) => Some(s),
            _ => None,
        })
        .unwrap();
    assert_eq!(held.index, 1);
    assert!(
        held.reason
            .starts_with("40 staged adds on HR (NumImportAdd) exceed max_staged_adds 25"),
        "{}",
        held.reason
    );
    assert_eq!(held.pending.unwrap().import_add, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_rail_holds_and_approval_lets_the_step_through_once() {
    let (h, sim) = quiet().await;
    use v1::Condition as C;
    sim.inject_source_changes("AD", 0, 0, 100).unwrap();
    let guard = v1::Guard {
        max_staged_deletes: Some(v1::Limit {
            kind: Some(v1::limit::Kind::Count(10)),
        }),
        ..Default::default()
    };
    let plan = || {
        vec![
            vec![step("AD", "Delta Import", C::Always, None)],
            vec![step("AD", "Delta Sync", C::Always, Some(guard))],
        ]
    };
    start_plan(&h, "r1", plan(), |_| {});
    let events = wait_all(&h).await;
    let f = finished(&events, "r1");
    assert_eq!(f.state, v1::RunState::Held as i32, "{f:?}");
    let held: Vec<&v1::StepHeld> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::StepHeld(s)) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].index, 1);
    assert!(
        held[0].reason.contains("100 staged deletes"),
        "{}",
        held[0].reason
    );
    // The sync never started.
    assert!(
        !events
            .iter()
            .any(|e| e.run_id == "r1"
                && matches!(&e.kind, Some(Kind::StepStarted(s)) if s.index == 1))
    );
    // Approved continuation: step 0 is not repeated, step 1 runs past its guard.
    start_plan(&h, "r2", plan(), |r| {
        r.skip_steps = vec![0];
        r.approved_steps = vec![1];
    });
    let events = wait_all(&h).await;
    let f = finished(&events, "r2");
    assert_eq!(f.state, v1::RunState::Succeeded as i32, "{f:?}");
    assert_eq!(skipped(&events, "r2"), [0]);
    assert!(events.iter().any(|e| e.run_id == "r2"
        && matches!(&e.kind, Some(Kind::StepFinished(s)) if s.index == 1 && s.result == "success")));
}

/// A guard rail's hold and the held run's end carry the run-held event id; a failed run's end
/// carries the run-failed id.
#[tokio::test]
async fn held_and_failed_runs_are_logged_with_their_event_ids() {
    use crate::event_ids::{EventId, capture};
    let (events, _guard) = capture::start();
    let (h, sim) = quiet().await;
    use v1::Condition as C;
    sim.inject_source_changes("AD", 0, 0, 100).unwrap();
    let guard = v1::Guard {
        max_staged_deletes: Some(v1::Limit {
            kind: Some(v1::limit::Kind::Count(10)),
        }),
        ..Default::default()
    };
    start_plan(
        &h,
        "held",
        vec![
            vec![step("AD", "Delta Import", C::Always, None)],
            vec![step("AD", "Delta Sync", C::Always, Some(guard))],
        ],
        |_| {},
    );
    wait_all(&h).await;
    let held = events.with_id(EventId::RunHeld);
    let messages: Vec<&str> = held.iter().map(|s| s.message.as_str()).collect();
    assert_eq!(messages, ["guard rail holds the run", "run finished"]);
    assert!(held.iter().all(|s| s.level == tracing::Level::WARN));
    assert!(events.with_id(EventId::RunFailed).is_empty());

    sim.inject_failure(crate::engine::sim::ScriptedFailure::new(
        "HR",
        "stopped-connectivity",
    ))
    .unwrap();
    start_plan(
        &h,
        "failed",
        vec![vec![step("HR", "Delta Import", C::Always, None)]],
        |_| {},
    );
    let journaled = wait_all(&h).await;
    assert_eq!(
        finished(&journaled, "failed").state,
        v1::RunState::Failed as i32
    );
    let failed = events.with_id(EventId::RunFailed);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].message, "run finished");
}
