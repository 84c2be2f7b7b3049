//! Results the retry policy lists are retried; guard-rail stops never are.

use std::time::Duration;

use syncfleet_proto::v1::{self, agent_event::Kind};
use syncfleet_proto::vocab::{self, ResultClass};

use crate::executor::testkit::*;
use crate::executor::{ExecutorOptions, RetryPolicy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlocks_are_retried_then_succeed() {
    let (h, sim) = quiet_with(ExecutorOptions {
        stagger: Duration::from_millis(1),
        busy_poll: Duration::from_millis(5),
        retry: RetryPolicy {
            delay: Duration::from_millis(5),
            ..RetryPolicy::default()
        },
        ..ExecutorOptions::default()
    })
    .await;
    sim.inject_failure(
        crate::engine::sim::ScriptedFailure::new("AD", "stopped-deadlocked").with_times(2),
    )
    .unwrap();
    start(&h, "r", &[("AD", "Delta Import")]);
    let events = wait_all(&h).await;
    let f = step_finished(&events, "r", 0);
    assert_eq!(vocab::classify(&f.result), ResultClass::Success, "{f:?}");
    assert!(f.detail.contains("attempt 3"), "{}", f.detail);
    let attempts: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::StepStarted(s)) => Some(s.attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    // A guard-rail stop is never retried.
    sim.inject_failure(crate::engine::sim::ScriptedFailure::new(
        "AD",
        "stopped-deletion-limit",
    ))
    .unwrap();
    start(&h, "g", &[("AD", "Delta Import")]);
    let events = wait_all(&h).await;
    assert_eq!(
        step_finished(&events, "g", 0).result,
        "stopped-deletion-limit"
    );
    assert_eq!(finished(&events, "g").state, v1::RunState::Failed as i32);
}

#[test]
fn retry_policy_refuses_guard_rail_results() {
    let mut p = RetryPolicy::default();
    assert_eq!(p.forbidden_entry(), None);
    p.results.push("stopped-deletion-threshold-exceeded".into());
    assert_eq!(
        p.forbidden_entry(),
        Some("stopped-deletion-threshold-exceeded")
    );
}
