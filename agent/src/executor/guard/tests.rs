//! Guard rails hold a run; an approval lets the held step through once.

use syncfleet_proto::v1::{self, agent_event::Kind};

use crate::executor::testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_rail_holds_and_approval_lets_the_step_through_once() {
    let (h, sim) = quiet().await;
    use v1::Condition as C;
    sim.inject_source_changes("AD", 0, 0, 100).unwrap();
    let guard = v1::Guard {
        max_pending_deletes: None,
        max_staged_deletes: Some(v1::Limit {
            kind: Some(v1::limit::Kind::Count(10)),
        }),
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
        max_pending_deletes: None,
        max_staged_deletes: Some(v1::Limit {
            kind: Some(v1::limit::Kind::Count(10)),
        }),
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
