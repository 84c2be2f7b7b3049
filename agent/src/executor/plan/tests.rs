//! `only_if` conditions skip steps with nothing to do.

use syncfleet_proto::v1;

use crate::executor::testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_skip_steps_with_nothing_to_do() {
    let (h, sim) = quiet().await;
    use v1::Condition as C;
    let cycle = || {
        vec![
            vec![step("HR", "Delta Import", C::Always, None)],
            vec![step("HR", "Delta Sync", C::StagedChanges, None)],
            vec![step("AD", "Export", C::PendingExports, None)],
            vec![step("AD", "Delta Import", C::Exported, None)],
        ]
    };
    // Nothing changed at the source: import, then every conditional step is skipped.
    start_plan(&h, "quiet", cycle(), |_| {});
    let events = wait_all(&h).await;
    assert_eq!(skipped(&events, "quiet"), [1, 2, 3]);
    let f = finished(&events, "quiet");
    assert_eq!(f.state, v1::RunState::Succeeded as i32, "{f:?}");
    // Source changes: the sync, the export and the confirming import all run.
    sim.inject_source_changes("HR", 5, 3, 0).unwrap();
    start_plan(&h, "busy", cycle(), |_| {});
    let events = wait_all(&h).await;
    let f = finished(&events, "busy");
    assert_eq!(f.state, v1::RunState::Succeeded as i32, "{f:?}");
    assert_eq!(skipped(&events, "busy"), Vec::<u32>::new(), "{events:#?}");
}
