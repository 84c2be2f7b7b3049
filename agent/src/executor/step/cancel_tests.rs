//! Cancelling a step the engine does not stop (a frozen engine) ends the run after
//! `stop_timeout`, not when the watchdog fires hours later.

use crate::engine::sim::{FREEZE, ScriptedFailure, SimConfig};
use crate::executor::testkit;
use crate::executor::*;

#[tokio::test(start_paused = true)]
async fn a_cancelled_step_the_engine_does_not_stop_is_abandoned_after_the_stop_timeout() {
    let mut cfg = SimConfig::example(1);
    cfg.time_scale = 1.0;
    let (h, sim) = testkit::build(
        cfg,
        ExecutorOptions {
            stop_timeout: Duration::from_secs(30),
            ..ExecutorOptions::default()
        },
    )
    .await;
    sim.inject_failure(ScriptedFailure::new("AD", FREEZE))
        .unwrap();
    let (journal, exec) = (&h.journal, &h.exec);
    testkit::start(&h, "r", &[("AD", "Delta Import")]);
    let finished = || {
        journal
            .events_after(0, 1000)
            .unwrap()
            .into_iter()
            .find_map(|e| match e.kind {
                Some(Kind::RunFinished(f)) => Some(f),
                _ => None,
            })
    };
    while !journal
        .events_after(0, 1000)
        .unwrap()
        .iter()
        .any(|e| matches!(e.kind, Some(Kind::StepStarted(_))))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(exec.cancel("r"));
    let t0 = tokio::time::Instant::now();
    while finished().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the cancelled run is still open"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(finished().unwrap().state, v1::RunState::Cancelled as i32);
    let health = exec.health().await;
    assert!(!health.healthy);
    assert!(health.detail.contains("did not stop"), "{}", health.detail);
}
