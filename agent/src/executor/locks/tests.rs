//! The run modes' concurrency rules hold for a mix of runs on a simulated server.

use std::collections::HashMap;

use syncfleet_proto::v1::{self, agent_event::Kind};
use syncfleet_proto::vocab::{self, ResultClass};

use crate::executor::RunMode;
use crate::executor::testkit::*;

/// Replay the events in seq order and check the concurrency invariants of `mode`.
fn check_overlaps(h: &Harness, events: &[v1::AgentEvent], mode: RunMode) -> usize {
    let mut specs: HashMap<(String, u32), (String, String)> = HashMap::new();
    let mut active: Vec<(String, u32, bool)> = Vec::new();
    let mut max_parallel = 0;
    for ev in events {
        match &ev.kind {
            Some(Kind::StepStarted(s)) => {
                let sync = h.exec.is_sync_class(&s.ma, &s.profile);
                let key = (ev.run_id.clone(), s.index);
                specs.insert(key, (s.ma.clone(), s.profile.clone()));
                for (rid, idx, other_sync) in &active {
                    let (oma, _) = &specs[&(rid.clone(), *idx)];
                    assert_ne!(oma, &s.ma, "two runs on MA {} at once", s.ma);
                    match mode {
                        RunMode::Exclusive => panic!("exclusive mode ran two steps at once"),
                        RunMode::Supported => assert!(
                            !sync && !other_sync,
                            "supported mode: a synchronization overlapped another step"
                        ),
                        RunMode::Unsupported => {
                            assert!(!(sync && *other_sync), "two synchronizations at once")
                        }
                    }
                }
                active.push((ev.run_id.clone(), s.index, sync));
                max_parallel = max_parallel.max(active.len());
            }
            Some(Kind::StepFinished(f)) => {
                assert_ne!(
                    vocab::classify(&f.result),
                    ResultClass::Busy,
                    "a busy refusal leaked out as a result: {}",
                    f.result
                );
                active.retain(|(rid, idx, _)| !(rid == &ev.run_id && *idx == f.index));
            }
            _ => {}
        }
    }
    max_parallel
}

fn mixed_runs(h: &Harness) {
    let shapes: [&[(&str, &str)]; 4] = [
        &[("AD", "Delta Import"), ("AD", "Delta Sync")],
        &[("HR", "Delta Import"), ("HR", "Delta Sync")],
        &[("MIM Service", "Delta Import"), ("Entra ID", "Export")],
        &[
            ("Entra ID", "Delta Import"),
            ("AD", "Export"),
            ("Entra ID", "Delta Sync"),
        ],
    ];
    for i in 0..20 {
        start(h, &format!("r{i:02}"), shapes[i % shapes.len()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supported_mode_never_overlaps_a_synchronization() {
    let h = harness(RunMode::Supported).await;
    mixed_runs(&h);
    let events = wait_all(&h).await;
    let max = check_overlaps(&h, &events, RunMode::Supported);
    assert!(
        max >= 2,
        "imports should have overlapped at least once (max {max})"
    );
    let finished = events
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::RunFinished(_))))
        .count();
    assert_eq!(finished, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_and_exclusive_modes_keep_their_rules() {
    for mode in [RunMode::Unsupported, RunMode::Exclusive] {
        let h = harness(mode).await;
        mixed_runs(&h);
        let events = wait_all(&h).await;
        let max = check_overlaps(&h, &events, mode);
        if mode == RunMode::Exclusive {
            assert_eq!(max, 1);
        }
    }
}

#[test]
fn mim_service_delta_import_is_sync_class() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(harness(RunMode::Supported));
    assert!(h.exec.is_sync_class("MIM Service", "Delta Import"));
    assert!(h.exec.is_sync_class("AD", "Delta Sync"));
    assert!(!h.exec.is_sync_class("AD", "Delta Import"));
    assert!(!h.exec.is_sync_class("AD", "Export"));
}
