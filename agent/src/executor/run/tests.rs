//! What stops a run.

use syncfleet_proto::v1::{self, agent_event::Kind};

use crate::executor::testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_errors_stop_even_when_failures_continue() {
    let (h, sim) = quiet().await;
    use v1::Condition as C;
    sim.inject_failure(crate::engine::sim::ScriptedFailure::new(
        "HR",
        "completed-discovery-errors",
    ))
    .unwrap();
    sim.inject_failure(crate::engine::sim::ScriptedFailure::new(
        "AD",
        "stopped-connectivity",
    ))
    .unwrap();
    // on_failure continue: a stopped-connectivity import does not stop the run ...
    start_plan(
        &h,
        "cont",
        vec![
            vec![step("AD", "Delta Import", C::Always, None)],
            vec![step("HR", "Delta Import", C::Always, None)],
            vec![step("HR", "Delta Sync", C::Always, None)],
        ],
        |r| r.on_failure = v1::OnFailure::Continue as i32,
    );
    let events = wait_all(&h).await;
    let f = finished(&events, "cont");
    // ... but discovery errors on HR always stop before HR's sync.
    assert_eq!(f.state, v1::RunState::Failed as i32, "{f:?}");
    assert!(f.message.contains("discovery errors"), "{}", f.message);
    let started: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::StepStarted(s)) => Some(s.index),
            _ => None,
        })
        .collect();
    assert_eq!(started, [0, 1]);
}
