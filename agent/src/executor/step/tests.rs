//! The watchdog ends a step the engine does not finish.

use std::time::Duration;

use syncfleet_proto::v1;
use syncfleet_proto::vocab;

use crate::executor::ExecutorOptions;
use crate::executor::testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_ends_a_frozen_step_and_reports_the_engine_unhealthy() {
    let (h, sim) = quiet_with(ExecutorOptions {
        stagger: Duration::from_millis(1),
        busy_poll: Duration::from_millis(20),
        watchdog: Duration::from_millis(300),
        stop_timeout: Duration::from_millis(100),
        ..ExecutorOptions::default()
    })
    .await;
    sim.inject_failure(crate::engine::sim::ScriptedFailure::new(
        "AD",
        crate::engine::sim::FREEZE,
    ))
    .unwrap();
    start(
        &h,
        "frozen",
        &[("AD", "Delta Import"), ("AD", "Delta Sync")],
    );
    let events = wait_all(&h).await;
    let f = step_finished(&events, "frozen", 0);
    assert_eq!(f.result, vocab::WATCHDOG_STOPPED);
    assert!(f.detail.contains("not responding"), "{}", f.detail);
    assert_eq!(
        finished(&events, "frozen").state,
        v1::RunState::Failed as i32
    );
    let health = h.exec.health().await;
    assert!(!health.healthy);
    assert!(health.detail.contains("watchdog"), "{}", health.detail);
    // After the service is restarted the agent sees a healthy engine again.
    sim.restart().await;
    for _ in 0..200 {
        if h.exec.health().await.healthy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("engine still reported unhealthy after restart");
}
