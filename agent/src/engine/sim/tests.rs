use super::*;
use crate::engine::runhistory::{self, RunDetails, StepDetails};
use syncfleet_proto::vocab::{self, ResultClass};

mod faults;

/// Example server 0 with no background change accrual, so counters depend only on calls.
fn quiet(time_scale: f64) -> SimConfig {
    let mut cfg = SimConfig::example(0);
    cfg.time_scale = time_scale;
    for ma in &mut cfg.mas {
        ma.change_rate_per_hour = 0.0;
    }
    cfg
}

fn sink() -> ProgressSink {
    tokio::sync::mpsc::unbounded_channel().0
}

async fn exec(e: &SimEngine, ma: &str, profile: &str) -> (ExecuteOutcome, RunDetails) {
    let out = e.execute(ma, profile, sink()).await.unwrap();
    let n = out.run_number.expect("run started");
    let xml = e.run_details(ma, n).await.unwrap();
    let run = runhistory::parse_one(&xml).unwrap();
    assert_eq!(run.run_number, n);
    assert_eq!(run.result(), Some(out.result.as_str()));
    (out, run)
}

fn only_step(run: &RunDetails) -> &StepDetails {
    assert_eq!(run.steps.len(), 1);
    &run.steps[0]
}

async fn pending(e: &SimEngine, ma: &str) -> PendingCounters {
    e.pending(ma).await.unwrap()
}

async fn wait_until_running(e: &SimEngine, ma: &str) -> u64 {
    for _ in 0..5_000 {
        if let MaStatus::InProgress { run_number, .. } = e.status(ma).await.unwrap() {
            return run_number;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{ma} never started");
}

async fn wait_until_idle(e: &SimEngine, ma: &str) {
    for _ in 0..10_000 {
        if e.status(ma).await.unwrap() == MaStatus::Idle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{ma} never finished");
}

fn strip_times(mut run: RunDetails) -> RunDetails {
    for s in &mut run.steps {
        s.started_at = None;
        s.finished_at = None;
        for i in &mut s.connection_incidents {
            i.date = None;
        }
    }
    run
}

fn is_engine_guid(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) else {
        return false;
    };
    let parts: Vec<&str> = inner.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && inner
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('A'..='F').contains(&c))
}

#[tokio::test]
async fn delta_cycle_counters_are_consistent() {
    let e = SimEngine::new(quiet(1e-4));
    let inventory = e.inventory().await.unwrap();
    let guid_of = |name: &str| {
        inventory
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .guid
            .clone()
    };
    e.inject_source_changes("HR", 10, 20, 3).unwrap();

    // Delta import stages the source changes.
    let (out, run) = exec(&e, "HR", "Delta Import").await;
    assert_eq!(out.result, "success");
    assert_eq!(run.ma, "HR");
    assert_eq!(run.ma_id, guid_of("HR"));
    assert_eq!(run.profile, "Delta Import");
    assert_eq!(run.security_id, "CONTOSO\\svc-syncfleet");
    let s = only_step(&run);
    assert_eq!(
        (s.step_type.as_str(), s.subtype.as_str()),
        ("delta-import", "to-cs")
    );
    assert_eq!(s.partition, "default");
    assert_eq!(s.connection_result.as_deref(), Some("success"));
    assert_eq!(s.connection_server.as_deref(), Some("SQL01.contoso.com"));
    assert_eq!(s.counter("stage-add"), 10);
    assert_eq!(s.counter("stage-update"), 20);
    assert_eq!(s.counter("stage-delete"), 3);
    assert_eq!(s.counter("stage-no-change"), 0);
    assert_eq!(s.counters.len(), 7 + 17 + 6, "all counters written");
    assert!(s.started_at.unwrap() <= s.finished_at.unwrap());
    let hr = pending(&e, "HR").await;
    assert_eq!(
        (hr.import_add, hr.import_update, hr.import_delete),
        (10, 20, 3)
    );
    assert_eq!(hr.total_connectors, 12_000);

    // Delta sync applies them and creates pending exports on the other MAs.
    let targets = ["AD", "MIM Service"];
    let mut before = Vec::new();
    for t in targets {
        before.push(pending(&e, t).await);
    }
    let (out, run) = exec(&e, "HR", "Delta Sync").await;
    assert_eq!(out.result, "success");
    let s = only_step(&run);
    assert_eq!(
        (s.step_type.as_str(), s.subtype.as_str()),
        ("apply-rules", "apply-pending")
    );
    assert_eq!(
        s.connection_result, None,
        "sync steps have an empty ma-connection"
    );
    assert_eq!(
        s.counter("disconnector-joined-flow") + s.counter("disconnector-projected-flow"),
        10
    );
    assert_eq!(
        s.counter("connector-flow") + s.counter("connector-no-flow"),
        20
    );
    assert_eq!(s.counter("connector-delete-remove-mv"), 3);
    assert_eq!(s.counter("flow-failure"), 0);
    assert!(!s.outbound.contains_key("HR"));
    assert!(s.outbound.contains_key("AD"), "{:?}", s.outbound);
    for (i, t) in targets.iter().enumerate() {
        let after = pending(&e, t).await;
        let out = s.outbound.get(*t).cloned().unwrap_or_default();
        assert!(
            out.values().all(|v| *v > 0),
            "zero outbound counters are omitted"
        );
        let get = |k: &str| out.get(k).copied().unwrap_or(0);
        assert_eq!(
            after.export_add - before[i].export_add,
            get("provisioned-add-flow")
        );
        assert_eq!(
            after.export_update - before[i].export_update,
            get("connector-flow")
        );
        assert_eq!(
            after.export_delete - before[i].export_delete,
            get("provisioned-disconnect")
        );
        assert_eq!(
            after.total_connectors - before[i].total_connectors,
            get("provisioned-add-flow")
        );
    }
    let hr = pending(&e, "HR").await;
    assert_eq!(
        (hr.import_add, hr.import_update, hr.import_delete),
        (0, 0, 0)
    );
    assert_eq!(hr.total_connectors, 12_000 + 10 - 3);
    assert_eq!(
        hr.export_add + hr.export_update + hr.export_delete,
        0,
        "HR is import-only"
    );

    // Export consumes AD's pending exports.
    let ad_before = pending(&e, "AD").await;
    assert!(ad_before.export_add > 0);
    let (out, run) = exec(&e, "AD", "Export").await;
    assert_eq!(out.result, "success");
    let s = only_step(&run);
    assert_eq!(s.step_type, "export");
    assert_eq!(s.subtype, "");
    assert_eq!(s.partition, "DC=contoso,DC=com");
    assert_eq!(s.connection_server.as_deref(), Some("DC01.contoso.com:389"));
    assert_eq!(s.counter("export-add"), ad_before.export_add);
    assert_eq!(s.counter("export-update"), ad_before.export_update);
    assert_eq!(s.counter("export-delete"), ad_before.export_delete);
    assert_eq!(s.counter("export-failure"), 0);
    let ad_after = pending(&e, "AD").await;
    assert_eq!(
        (
            ad_after.export_add,
            ad_after.export_update,
            ad_after.export_delete
        ),
        (0, 0, 0)
    );
    assert_eq!(
        ad_after.total_connectors,
        ad_before.total_connectors - ad_before.export_delete
    );

    // The confirming import sees the exported changes.
    let (_, run) = exec(&e, "AD", "Delta Import").await;
    let s = only_step(&run);
    assert_eq!(s.counter("stage-add"), 0);
    assert_eq!(
        s.counter("stage-update"),
        ad_before.export_add + ad_before.export_update
    );
    assert_eq!(s.counter("stage-delete"), ad_before.export_delete);
    assert!(s.has_staged_changes());

    // Syncing confirmations flows nowhere: the cycle converges.
    let mim_before = pending(&e, "MIM Service").await;
    let (_, run) = exec(&e, "AD", "Delta Sync").await;
    let s = only_step(&run);
    assert!(s.outbound.is_empty(), "{:?}", s.outbound);
    assert_eq!(
        s.counter("connector-no-flow"),
        ad_before.export_add + ad_before.export_update
    );
    assert_eq!(
        s.counter("connector-delete-leave-mv"),
        ad_before.export_delete
    );
    assert_eq!(pending(&e, "MIM Service").await, mim_before);

    // Nothing left: a delta import finds nothing.
    let (out, run) = exec(&e, "AD", "Delta Import").await;
    assert_eq!(out.result, "completed-no-objects");
    assert!(!only_step(&run).has_staged_changes());
}

#[tokio::test]
async fn full_import_and_full_sync_see_every_object() {
    let e = SimEngine::new(quiet(1e-4));
    e.inject_source_changes("AD", 4, 5, 2).unwrap();
    let (out, run) = exec(&e, "AD", "Full Import").await;
    assert_eq!(out.result, "success");
    let s = only_step(&run);
    assert_eq!(
        (s.step_type.as_str(), s.subtype.as_str()),
        ("full-import", "to-cs")
    );
    assert_eq!(s.counter("stage-no-change"), 25_000 - 5 - 2);
    assert_eq!(s.counter("stage-add"), 4);
    assert_eq!(s.counter("stage-update"), 5);
    assert_eq!(s.counter("stage-delete"), 2);

    let (out, run) = exec(&e, "AD", "Full Sync").await;
    assert_eq!(out.result, "success");
    let s = only_step(&run);
    assert_eq!(
        (s.step_type.as_str(), s.subtype.as_str()),
        ("apply-rules", "reevaluate-flow-connectors")
    );
    assert_eq!(
        s.counter("connector-flow") + s.counter("connector-no-flow"),
        25_000 - 2,
        "every remaining connector re-evaluated"
    );
    assert_eq!(s.counter("connector-delete-remove-mv"), 2);
    assert_eq!(pending(&e, "AD").await.total_connectors, 25_000 + 4 - 2);
    // AD flows to MIM Service, never to the import-only HR.
    assert!(s.outbound.contains_key("MIM Service"));
    assert!(!s.outbound.contains_key("HR"));
}

#[tokio::test]
async fn every_profile_round_trips_through_the_parser() {
    let mut cfg = SimConfig::example(1);
    cfg.time_scale = 1e-4;
    let e = SimEngine::new(cfg);
    let inventory = e.inventory().await.unwrap();
    assert_eq!(inventory.len(), 4);
    for ma in &inventory {
        e.inject_source_changes(&ma.name, 3, 7, 1).unwrap();
        let mut last_run = None;
        for profile in &ma.run_profiles {
            let out = e.execute(&ma.name, &profile.name, sink()).await.unwrap();
            let n = out.run_number.unwrap();
            if let Some(prev) = last_run {
                assert_eq!(n, prev + 1, "run numbers are consecutive per MA");
            }
            last_run = Some(n);
            let xml = e.run_details(&ma.name, n).await.unwrap();
            assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"utf-16\"?>\n<run-history>"));
            let run = runhistory::parse_one(&xml).unwrap();
            assert_eq!(run.ma, ma.name);
            assert_eq!(run.ma_id, ma.guid);
            assert_eq!(run.profile, profile.name);
            let s = only_step(&run);
            assert_eq!(s.step_type, profile.steps[0].step_type);
            assert_eq!(s.subtype, profile.steps[0].subtype);
            assert_eq!(s.partition, profile.steps[0].partition);
            assert!(is_engine_guid(&s.step_id), "{}", s.step_id);
            assert!(s.started_at.unwrap() <= s.finished_at.unwrap());
            assert_eq!(s.progress, None);
            assert_eq!(
                vocab::classify(&out.result),
                ResultClass::Success,
                "{} {}: {}",
                ma.name,
                profile.name,
                out.result
            );
        }
    }
}

#[tokio::test]
async fn names_are_escaped_in_xml() {
    let mut cfg = quiet(1e-4);
    cfg.mas[0].name = "R&D <\"Lab\"> 'x'".to_owned();
    cfg.mas[0].partition = "DC=r&d,DC=contoso,DC=com".to_owned();
    cfg.security_id = "R&D\\svc<sync>".to_owned();
    let e = SimEngine::new(cfg);
    let name = "R&D <\"Lab\"> 'x'";
    e.inject_source_changes(name, 1, 0, 0).unwrap();
    let (_, run) = exec(&e, name, "Delta Import").await;
    assert_eq!(run.ma, name);
    assert_eq!(run.security_id, "R&D\\svc<sync>");
    assert_eq!(only_step(&run).partition, "DC=r&d,DC=contoso,DC=com");
    e.inject_source_changes(name, 5, 0, 0).unwrap();
    exec(&e, name, "Delta Import").await;
    let (_, run) = exec(&e, name, "Delta Sync").await;
    // Outbound from the renamed MA to the others still parses.
    assert!(only_step(&run).outbound.contains_key("MIM Service"));
    // And outbound *to* it carries the escaped name.
    e.inject_source_changes("MIM Service", 10, 0, 0).unwrap();
    exec(&e, "MIM Service", "Delta Import").await;
    let (_, run) = exec(&e, "MIM Service", "Delta Sync").await;
    assert!(only_step(&run).outbound.contains_key(name));
}

#[tokio::test(start_paused = true)]
async fn second_execute_on_a_running_ma_is_refused() {
    // A full import of 25,000 objects: ~2.6 s at this scale, ended by `stop` below.
    let e = SimEngine::new(quiet(0.05));
    let e2 = e.clone();
    let first = tokio::spawn(async move { e2.execute("AD", "Full Import", sink()).await });
    let n = wait_until_running(&e, "AD").await;
    assert_eq!(
        e.status("AD").await.unwrap(),
        MaStatus::InProgress {
            profile: "Full Import".into(),
            run_number: n
        }
    );
    for profile in ["Delta Import", "Export", "Delta Sync"] {
        let out = e.execute("AD", profile, sink()).await.unwrap();
        assert_eq!(out.result, "no-start-ma-already-running");
        assert_eq!(out.run_number, None);
    }
    assert_eq!(e.stop("AD").await.unwrap(), "success");
    let out = first.await.unwrap().unwrap();
    assert_eq!(out.result, STOPPED_BY_USER);
    assert_eq!(out.run_number, Some(n));
    assert_eq!(e.status("AD").await.unwrap(), MaStatus::Idle);
    // Refusals do not consume run numbers.
    let next = e.execute("AD", "Delta Import", sink()).await.unwrap();
    assert_eq!(next.run_number, Some(n + 1));
}

#[tokio::test(start_paused = true)]
async fn second_concurrent_sync_is_refused_with_0x8023063d() {
    // A full sync of 12,000 connectors: ~1.3 s at this scale, ended by `stop` below.
    let e = SimEngine::new(quiet(0.05));
    let e2 = e.clone();
    let first = tokio::spawn(async move { e2.execute("HR", "Full Sync", sink()).await });
    let n = wait_until_running(&e, "HR").await;
    for (ma, profile) in [("AD", "Full Sync"), ("MIM Service", "Delta Sync")] {
        let out = e.execute(ma, profile, sink()).await.unwrap();
        assert!(out.result.contains("0x8023063d"), "{}", out.result);
        assert_eq!(out.result, CONCURRENT_SYNC_REFUSAL);
        assert_eq!(vocab::classify(&out.result), ResultClass::Busy);
        assert_eq!(out.run_number, None);
        assert_eq!(e.status(ma).await.unwrap(), MaStatus::Idle);
    }
    // Imports and exports on other MAs may overlap a sync.
    let out = e.execute("AD", "Delta Import", sink()).await.unwrap();
    assert!(out.run_number.is_some());
    assert_eq!(out.result, "completed-no-objects");
    let out = e.execute("MIM Service", "Export", sink()).await.unwrap();
    assert_eq!(out.result, "success");
    assert!(matches!(
        e.status("HR").await.unwrap(),
        MaStatus::InProgress { run_number, .. } if run_number == n
    ));
    assert_eq!(e.stop("HR").await.unwrap(), "success");
    assert_eq!(first.await.unwrap().unwrap().result, STOPPED_BY_USER);
    // Once the sync ended, the next one may start.
    let out = e.execute("AD", "Delta Sync", sink()).await.unwrap();
    assert_eq!(out.result, "success");
}

#[tokio::test(start_paused = true)]
async fn stop_ends_the_run_and_commits_the_processed_part() {
    let e = SimEngine::new(quiet(0.05));
    assert_eq!(e.stop("AD").await.unwrap(), "ma-not-running");
    e.inject_source_changes("AD", 0, 1_000, 0).unwrap();
    // Full import of ~26,000 objects: ~2.7 s at this scale.
    let e2 = e.clone();
    let run = tokio::spawn(async move { e2.execute("AD", "Full Import", sink()).await });
    let n = wait_until_running(&e, "AD").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = tokio::time::Instant::now();
    assert_eq!(e.stop("AD").await.unwrap(), "success");
    assert!(asked.elapsed() < Duration::from_secs(1), "stop is prompt");
    // Stop() returns once the run has stopped.
    assert_eq!(e.status("AD").await.unwrap(), MaStatus::Idle);
    let out = run.await.unwrap().unwrap();
    assert_eq!(out.result, STOPPED_BY_USER);
    assert_eq!(out.run_number, Some(n));
    assert_eq!(vocab::classify(&out.result), ResultClass::Intentional);
    assert_eq!(e.stop("AD").await.unwrap(), "ma-not-running");

    let xml = e.run_details("AD", n).await.unwrap();
    let run = runhistory::parse_one(&xml).unwrap();
    let s = only_step(&run);
    assert_eq!(s.result, STOPPED_BY_USER);
    assert!(s.finished_at.is_some());
    let staged = s.counter("stage-update");
    assert!(staged < 1_000, "stopped early: {staged}");
    assert_eq!(pending(&e, "AD").await.import_update, staged);
    // The unprocessed rest is still waiting in the source.
    let (_, run) = exec(&e, "AD", "Delta Import").await;
    assert_eq!(only_step(&run).counter("stage-update"), 1_000 - staged);
}

#[tokio::test(start_paused = true)]
async fn progress_is_reported_while_running() {
    let e = SimEngine::new(quiet(0.01));
    e.inject_source_changes("AD", 0, 500, 0).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let out = e.execute("AD", "Delta Import", tx).await.unwrap();
    let n = out.run_number.unwrap();
    let mut seen = Vec::new();
    while let Ok(p) = rx.try_recv() {
        seen.push(p);
    }
    assert_eq!(seen.len(), 9, "every 10 % except the end");
    let mut last_staged = 0;
    for (i, p) in seen.iter().enumerate() {
        assert_eq!(p.run_number, n);
        assert_eq!(
            p.progress.as_deref(),
            Some(format!("{}/500", 50 * (i + 1)).as_str())
        );
        let run = runhistory::parse_one(p.details_xml.as_deref().unwrap()).unwrap();
        let s = only_step(&run);
        assert_eq!(s.result, "in-progress");
        assert_eq!(s.finished_at, None);
        assert_eq!(s.progress, p.progress);
        assert!(s.counter("stage-update") >= last_staged);
        last_staged = s.counter("stage-update");
    }
    let (_, run) = exec(&e, "AD", "Delta Sync").await;
    assert_eq!(
        only_step(&run).counter("connector-flow") + only_step(&run).counter("connector-no-flow"),
        500
    );
}

#[tokio::test]
async fn unknown_names_are_reported() {
    let e = SimEngine::new(quiet(1e-4));
    let out = e.execute("AD", "Delta Everything", sink()).await.unwrap();
    assert_eq!(out.result, "no-start-unknown-profile-name");
    assert_eq!(out.run_number, None);
    assert!(matches!(
        e.execute("Nope", "Delta Import", sink()).await,
        Err(EngineError::NoSuchMa(ma)) if ma == "Nope"
    ));
    assert!(matches!(
        e.status("Nope").await,
        Err(EngineError::NoSuchMa(_))
    ));
    assert!(matches!(
        e.pending("Nope").await,
        Err(EngineError::NoSuchMa(_))
    ));
    assert!(matches!(
        e.stop("Nope").await,
        Err(EngineError::NoSuchMa(_))
    ));
    assert!(matches!(
        e.run_details("AD", 1).await,
        Err(EngineError::NoSuchRun { run_number: 1, .. })
    ));
    assert!(matches!(
        e.inject_source_changes("Nope", 1, 1, 1),
        Err(EngineError::NoSuchMa(_))
    ));
}

/// The same seed and the same calls give the same counters, ids and run numbers.
#[tokio::test]
async fn same_seed_same_calls_same_counters() {
    async fn script(e: &SimEngine) -> (Vec<RunDetails>, Vec<PendingCounters>) {
        e.inject_source_changes("HR", 40, 120, 6).unwrap();
        e.inject_source_changes("AD", 7, 30, 2).unwrap();
        let mut runs = Vec::new();
        for (ma, profile) in [
            ("HR", "Delta Import"),
            ("HR", "Delta Sync"),
            ("AD", "Delta Import"),
            ("AD", "Delta Sync"),
            ("AD", "Export"),
            ("MIM Service", "Export"),
            ("AD", "Delta Import"),
            ("AD", "Delta Sync"),
            ("MIM Service", "Full Sync"),
        ] {
            runs.push(strip_times(exec(e, ma, profile).await.1));
        }
        let mut pendings = Vec::new();
        for ma in ["AD", "HR", "MIM Service"] {
            pendings.push(pending(e, ma).await);
        }
        (runs, pendings)
    }
    let mut cfg = quiet(1e-4);
    cfg.error_rate = 0.5;
    let a = script(&SimEngine::new(cfg.clone())).await;
    let b = script(&SimEngine::new(cfg.clone())).await;
    assert_eq!(a, b);
    assert!(a.0.iter().any(|r| r.steps[0].outbound.len() > 1));

    cfg.seed ^= 1;
    let c = script(&SimEngine::new(cfg)).await;
    assert_ne!(a.0[0].ma_id, c.0[0].ma_id, "another seed, other GUIDs");
}

#[tokio::test]
async fn object_errors_when_the_error_rate_hits() {
    let mut cfg = quiet(1e-4);
    cfg.error_rate = 1.0;
    let e = SimEngine::new(cfg);
    e.inject_source_changes("HR", 0, 50, 0).unwrap();
    exec(&e, "HR", "Delta Import").await;
    let (out, run) = exec(&e, "HR", "Delta Sync").await;
    assert_eq!(out.result, "completed-sync-errors");
    let s = only_step(&run);
    let failed = s.counter("flow-failure");
    assert!((1..=MAX_FAILURES_PER_STEP).contains(&failed));
    assert_eq!(s.errors.count, failed);
    assert_eq!(
        s.counter("connector-flow") + s.counter("connector-no-flow"),
        50 - failed
    );
    let err = &s.errors.first[0];
    assert_eq!(err.kind, "import");
    assert_eq!(err.error_type, "extension-dll-exception");
    assert!(is_engine_guid(&err.cs_guid));
    assert!(err.dn.starts_with("EmployeeID="));
    assert!(
        err.error_literal
            .as_deref()
            .unwrap()
            .starts_with("System.NullReferenceException")
    );
    // Failed objects stay staged for the next sync.
    assert_eq!(pending(&e, "HR").await.import_update, failed);

    let ad = pending(&e, "AD").await;
    assert!(ad.export_update > 0);
    let (out, run) = exec(&e, "AD", "Export").await;
    assert_eq!(out.result, "completed-export-errors");
    let s = only_step(&run);
    let failed = s.counter("export-failure");
    assert!(failed >= 1);
    assert_eq!(s.counter("export-update"), ad.export_update - failed);
    let err = &s.errors.first[0];
    assert_eq!(err.kind, "export");
    assert_eq!(err.error_type, "permission-issue");
    assert_eq!(err.error_code.as_deref(), Some("0x80070005"));
    assert_eq!(err.error_literal.as_deref(), Some("Access is denied."));
    assert!(err.dn.starts_with("CN=User"));
    assert_eq!(pending(&e, "AD").await.export_update, failed);
}

#[tokio::test(start_paused = true)]
async fn source_changes_accrue_with_simulated_time() {
    let mut cfg = quiet(1e-3);
    cfg.mas[0].change_rate_per_hour = 36_000.0; // 10 per simulated second
    let e = SimEngine::new(cfg);
    // 30 ms of (paused, exact) tokio time = 30 simulated seconds = 300 changes.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (out, run) = exec(&e, "AD", "Delta Import").await;
    assert_eq!(out.result, "success");
    let s = only_step(&run);
    let staged = s.counter("stage-add") + s.counter("stage-update") + s.counter("stage-delete");
    assert!(staged.abs_diff(300) <= 1, "{staged}");
    let p = pending(&e, "AD").await;
    assert_eq!(p.import_add + p.import_update + p.import_delete, staged);
    assert_eq!(p.cs_objects, p.total_connectors + p.import_add);
    // HR has no change rate: nothing.
    assert_eq!(
        exec(&e, "HR", "Delta Import").await.0.result,
        "completed-no-objects"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_outlives_its_caller() {
    // A full import of 25,000 objects: ~2.6 s at this scale.
    let e = SimEngine::new(quiet(0.05));
    let fut = e.execute("AD", "Full Import", sink());
    assert!(
        tokio::time::timeout(Duration::from_millis(20), fut)
            .await
            .is_err()
    );
    let n = wait_until_running(&e, "AD").await;
    // In progress XML is already in the run history.
    let xml = e.run_details("AD", n).await.unwrap();
    assert_eq!(
        runhistory::parse_one(&xml).unwrap().result(),
        Some("in-progress")
    );
    wait_until_idle(&e, "AD").await;
    let xml = e.run_details("AD", n).await.unwrap();
    let run = runhistory::parse_one(&xml).unwrap();
    assert_eq!(run.result(), Some("success"));
    assert_eq!(only_step(&run).counter("stage-no-change"), 25_000);
}

#[tokio::test]
async fn history_is_bounded() {
    let mut cfg = quiet(1e-4);
    cfg.history_limit = 2;
    let e = SimEngine::new(cfg);
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(exec(&e, "AD", "Delta Import").await.0.run_number.unwrap());
    }
    assert!(matches!(
        e.run_details("AD", runs[0]).await,
        Err(EngineError::NoSuchRun { .. })
    ));
    assert!(e.run_details("AD", runs[1]).await.is_ok());
    assert!(e.run_details("AD", runs[2]).await.is_ok());
}

#[tokio::test]
async fn examples_describe_realistic_servers() {
    let zero = SimConfig::example(0);
    let names: Vec<(&str, &str, u64)> = zero
        .mas
        .iter()
        .map(|m| (m.name.as_str(), m.ma_type.as_str(), m.connectors))
        .collect();
    assert_eq!(
        names,
        vec![
            ("AD", "AD", 25_000),
            ("HR", "MSSQL", 12_000),
            ("MIM Service", "FIM", 30_000)
        ]
    );
    assert_eq!(zero.mas[0].partition, "DC=contoso,DC=com");
    let one = SimConfig::example(1);
    assert!(
        one.mas
            .iter()
            .any(|m| m.name == "Entra ID" && m.ma_type == "Extensible2")
    );
    assert_ne!(one.mas[0].connectors, zero.mas[0].connectors);
    let seeds: Vec<u64> = (0..6).map(|i| SimConfig::example(i).seed).collect();
    for (i, s) in seeds.iter().enumerate() {
        assert!(!seeds[..i].contains(s), "seeds differ");
    }
    assert_ne!(
        SimConfig::example(2).mas[0].connectors,
        SimConfig::example(3).mas[0].connectors
    );
    for i in 0..6 {
        SimConfig::example(i).validate().unwrap();
    }

    let e = SimEngine::new(zero.clone());
    let again = SimEngine::new(zero);
    let inv = e.inventory().await.unwrap();
    assert_eq!(
        inv,
        again.inventory().await.unwrap(),
        "GUIDs derive from the seed"
    );
    for ma in &inv {
        assert!(is_engine_guid(&ma.guid), "{}", ma.guid);
        let profiles: Vec<(&str, &str, &str)> = ma
            .run_profiles
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.steps[0].step_type.as_str(),
                    p.steps[0].subtype.as_str(),
                )
            })
            .collect();
        assert_eq!(profiles, STANDARD_PROFILES.to_vec());
    }
    assert!(
        inv.iter()
            .find(|m| m.name == "MIM Service")
            .unwrap()
            .is_mim_service()
    );
    assert_eq!(e.info().kind, "sim");
    assert_eq!(e.info().version, "MIM 2016 4.6.607.0");
    assert!(e.health().await.healthy);
    let sync_profiles: Vec<&str> = inv[0]
        .run_profiles
        .iter()
        .filter(|p| p.steps.iter().any(RunStepInfo::is_sync))
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(sync_profiles, vec!["Full Sync", "Delta Sync"]);
}

#[test]
fn config_from_toml_with_defaults_and_validation() {
    let cfg: SimConfig = toml::from_str(
        "seed = 7\ntime_scale = 0.05\n[[mas]]\nname = \"LDAP\"\nma_type = \"Extensible2\"\n",
    )
    .unwrap();
    assert_eq!(cfg.seed, 7);
    assert_eq!(cfg.time_scale, 0.05);
    assert_eq!(cfg.error_rate, 0.0);
    assert_eq!(cfg.mas.len(), 1);
    assert_eq!(cfg.mas[0].connectors, 1_000);
    assert_eq!(cfg.mas[0].partition, "default");
    assert!(cfg.mas[0].receives_exports);
    assert_eq!((cfg.step_base_secs, cfg.secs_per_object), (2.0, 0.002));
    cfg.validate().unwrap();
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<SimConfig>(&json).unwrap(), cfg);
    assert!(
        toml::from_str::<SimConfig>("seeed = 1").is_err(),
        "typos are refused"
    );

    let mut bad = cfg.clone();
    bad.time_scale = 0.0;
    assert!(matches!(bad.validate(), Err(EngineError::Config(_))));
    let mut bad = cfg.clone();
    bad.error_rate = 2.0;
    assert!(bad.validate().is_err());
    let mut bad = cfg.clone();
    bad.secs_per_object = -1.0;
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("secs_per_object")
    );
    let mut bad = cfg.clone();
    bad.mas.push(bad.mas[0].clone());
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("appears twice")
    );
    assert!(SimEngine::try_new(bad.clone()).is_err());
    // `new` clamps instead.
    let e = SimEngine::new(bad);
    assert_eq!(e.config().mas.len(), 1);
    assert_eq!(e.config().time_scale, 0.05);
}

#[test]
fn helpers_are_exact_at_the_edges() {
    assert_eq!(part(u64::MAX, 1.0), u64::MAX);
    assert_eq!(part(10, 0.0), 0);
    assert_eq!(part(10, f64::NAN), 0);
    assert_eq!(part(10, 0.55), 5);
    let mut cfg = SimConfig::example(0);
    assert_eq!(step_duration(&cfg, 0), Duration::from_secs(2));
    assert_eq!(step_duration(&cfg, 25_000), Duration::from_secs(52));
    assert_eq!(step_duration(&cfg, u64::MAX), Duration::from_secs(86_400));
    cfg.time_scale = 0.05;
    assert_eq!(step_duration(&cfg, 0), Duration::from_millis(100));
    cfg.time_scale = f64::NAN;
    assert_eq!(step_duration(&cfg, 5), Duration::ZERO);
    assert_eq!(xml::escape("a&b<c>\"'"), "a&amp;b&lt;c&gt;&quot;&apos;");
    assert_eq!(
        connection_server(&SimMaConfig::new(
            "AD",
            "AD",
            1,
            0.0,
            "DC=eu,DC=contoso,DC=com"
        )),
        "DC01.eu.contoso.com:389"
    );
}

#[tokio::test(start_paused = true)]
async fn source_events_arrive_at_their_time() {
    let mut cfg = SimConfig::example(0);
    cfg.time_scale = 0.01;
    for m in &mut cfg.mas {
        m.change_rate_per_hour = 0.0;
    }
    cfg.mas[0].source_events = vec![crate::engine::sim::SourceEvent {
        at_secs: 100.0,
        add: 0,
        update: 0,
        delete: 800,
    }];
    cfg.validate().unwrap();
    let sim = SimEngine::new(cfg);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    // Before its time the import finds nothing ...
    let out = sim.execute("AD", "Delta Import", tx.clone()).await.unwrap();
    assert_eq!(out.result, "completed-no-objects");
    // ... after it, the deletes are staged.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let out = sim.execute("AD", "Delta Import", tx).await.unwrap();
    let xml = sim
        .run_details("AD", out.run_number.unwrap())
        .await
        .unwrap();
    let d = crate::engine::runhistory::parse_one(&xml).unwrap();
    assert_eq!(d.steps[0].counter("stage-delete"), 800);
    assert_eq!(sim.pending("AD").await.unwrap().import_delete, 800);
}

#[tokio::test(start_paused = true)]
async fn run_history_and_run_numbers_outlive_the_process_with_a_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quiet(0.01);
    cfg.state_file = Some(dir.path().join("engine.json"));
    let first = SimEngine::try_new(cfg.clone()).unwrap();
    first.inject_source_changes("AD", 40, 0, 0).unwrap();
    let (out, run) = exec(&first, "AD", "Delta Import").await;
    let n = out.run_number.unwrap();
    assert_eq!(only_step(&run).counter("stage-add"), 40);
    let xml = first.run_details("AD", n).await.unwrap();
    drop(first);
    // A new process: the history of run n is read back as MIIS_RunHistory gives it.
    let second = SimEngine::try_new(cfg.clone()).unwrap();
    assert_eq!(second.run_details("AD", n).await.unwrap(), xml);
    let (next, _) = exec(&second, "AD", "Delta Import").await;
    assert_eq!(next.run_number, Some(n + 1));
    // Without the file, a new engine has no such run.
    let mut memory_only = cfg.clone();
    memory_only.state_file = None;
    assert!(matches!(
        SimEngine::new(memory_only).run_details("AD", n).await,
        Err(EngineError::NoSuchRun { .. })
    ));
    // A damaged file is refused with the file named and the fix.
    std::fs::write(dir.path().join("engine.json"), "{not json").unwrap();
    let err = SimEngine::try_new(cfg).unwrap_err().to_string();
    assert!(
        err.contains("engine.json") && err.contains("delete it"),
        "{err}"
    );
}

/// ClearRuns removes the runs that ended at or before the cutoff from every MA's history
/// (their details are gone), keeps later ones, and answers `success`.
#[tokio::test]
async fn clear_runs_removes_runs_that_ended_by_the_cutoff() {
    let e = SimEngine::new(quiet(1e-4));
    let (first, _) = exec(&e, "HR", "Delta Import").await;
    let (second, _) = exec(&e, "AD", "Delta Import").await;
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (third, _) = exec(&e, "HR", "Delta Import").await;
    assert_eq!(e.clear_runs(between).await.unwrap(), "success");
    for (ma, run) in [("HR", &first), ("AD", &second)] {
        let gone = e
            .run_details(ma, run.run_number.unwrap())
            .await
            .unwrap_err();
        assert!(matches!(gone, EngineError::NoSuchRun { .. }), "{gone:?}");
    }
    let third = third.run_number.unwrap();
    assert!(e.run_details("HR", third).await.is_ok());
    // Nothing left before the cutoff: a second call changes nothing.
    assert_eq!(e.clear_runs(between).await.unwrap(), "success");
    assert!(e.run_details("HR", third).await.is_ok());
}
