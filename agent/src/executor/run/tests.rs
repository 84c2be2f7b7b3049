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

/// The change to unhealthy is logged once, as an error with the engine-unhealthy event id; the
/// way back once, without it.
#[tokio::test]
async fn an_unhealthy_engine_is_logged_once_with_its_event_id() {
    use crate::event_ids::{EventId, capture};
    let (events, _guard) = capture::start();
    let (h, _sim) = quiet().await;
    assert!(h.exec.health().await.healthy);
    assert!(events.with_id(EventId::EngineUnhealthy).is_empty());
    *crate::executor::lock(&h.exec.stuck) = Some("a step could not be stopped".into());
    assert!(!h.exec.health().await.healthy);
    assert!(!h.exec.health().await.healthy);
    let seen = events.with_id(EventId::EngineUnhealthy);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].level, tracing::Level::ERROR);
    *crate::executor::lock(&h.exec.stuck) = None;
    assert!(h.exec.health().await.healthy);
    let back: Vec<_> = events
        .all()
        .into_iter()
        .filter(|s| s.message == "sync engine healthy again")
        .collect();
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(events.with_id(EventId::EngineUnhealthy).len(), 1);
}
