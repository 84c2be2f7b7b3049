//! Runs started outside syncfleet hold the same locks as runs the agent started, under paused
//! tokio time (the simulated runs last their realistic durations).

use crate::engine::sim::{SimConfig, SimEngine};
use crate::engine::{MaStatus, runhistory};
use crate::executor::testkit::{self, Harness};
use crate::executor::*;

struct Setup {
    h: Harness,
    sim: Arc<SimEngine>,
}

/// A quiet server at realistic speed (time_scale 1) under `mode`.
async fn setup(mode: RunMode) -> Setup {
    let mut cfg = SimConfig::example(1);
    cfg.time_scale = 1.0;
    for m in &mut cfg.mas {
        m.change_rate_per_hour = 0.0;
    }
    let (h, sim) = testkit::build(
        cfg,
        ExecutorOptions {
            run_mode: mode,
            stagger: Duration::from_millis(10),
            busy_poll: Duration::from_millis(500),
            ..ExecutorOptions::default()
        },
    )
    .await;
    Setup { h, sim }
}

fn start(s: &Setup, id: &str, ma: &str, profile: &str) {
    testkit::start(&s.h, id, &[(ma, profile)]);
}

fn events(s: &Setup, id: &str) -> Vec<Kind> {
    s.h.journal
        .events_after(0, 100_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.run_id == id)
        .filter_map(|e| e.kind)
        .collect()
}

/// Wait (in paused time) until `f` holds, at most `limit` of tokio time.
async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = tokio::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t0.elapsed()
}

fn waiting_reasons(evs: &[Kind]) -> Vec<String> {
    evs.iter()
        .filter_map(|k| match k {
            Kind::StepWaiting(w) => Some(w.reason.clone()),
            _ => None,
        })
        .collect()
}

fn run_finished(evs: &[Kind]) -> Option<v1::RunFinished> {
    evs.iter().find_map(|k| match k {
        Kind::RunFinished(f) => Some(f.clone()),
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_foreign_sync_holds_the_sync_gate_against_a_mim_service_delta_import() {
    let s = setup(RunMode::Unsupported).await;
    let n = s.sim.start_unmanaged("AD", "Full Sync").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    start(&s, "r", "MIM Service", "Delta Import");
    until(Duration::from_secs(30), || {
        !waiting_reasons(&events(&s, "r")).is_empty()
    })
    .await;
    let reason = waiting_reasons(&events(&s, "r")).remove(0);
    for part in [
        "AD",
        "Full Sync",
        &format!("run {n}"),
        "started outside syncfleet",
    ] {
        assert!(reason.contains(part), "{part:?} missing in {reason:?}");
    }
    assert!(s.sim.health().await.healthy, "the engine froze");
    // Once the foreign synchronization ends, the import runs and succeeds.
    until(Duration::from_secs(600), || {
        run_finished(&events(&s, "r")).is_some()
    })
    .await;
    let f = run_finished(&events(&s, "r")).unwrap();
    assert_eq!(f.state, v1::RunState::Succeeded as i32, "{f:?}");
    assert!(s.sim.health().await.healthy, "the engine froze");
    let foreign = runhistory::parse_one(&s.sim.run_details("AD", n).await.unwrap()).unwrap();
    assert_eq!(foreign.result(), Some("success"));
}

#[tokio::test(start_paused = true)]
async fn a_foreign_sync_holds_back_an_import_in_supported_mode_and_cancel_is_prompt() {
    let s = setup(RunMode::Supported).await;
    let n = s.sim.start_unmanaged("AD", "Full Sync").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    start(&s, "imp", "HR", "Delta Import");
    until(Duration::from_secs(30), || {
        !waiting_reasons(&events(&s, "imp")).is_empty()
    })
    .await;
    let reason = waiting_reasons(&events(&s, "imp")).remove(0);
    assert!(
        reason.contains("started outside syncfleet") && reason.contains("AD"),
        "{reason}"
    );
    assert!(
        !events(&s, "imp")
            .iter()
            .any(|k| matches!(k, Kind::StepStarted(_))),
        "the import started beside a synchronization"
    );
    // Cancelling a waiting step ends the run at once, not when the foreign run ends.
    assert!(s.h.exec.cancel("imp"));
    let took = until(Duration::from_secs(5), || {
        run_finished(&events(&s, "imp")).is_some()
    })
    .await;
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
    let f = run_finished(&events(&s, "imp")).unwrap();
    assert_eq!(f.state, v1::RunState::Cancelled as i32, "{f:?}");
    assert!(matches!(
        s.sim.status("AD").await.unwrap(),
        MaStatus::InProgress { run_number, .. } if run_number == n
    ));
}
