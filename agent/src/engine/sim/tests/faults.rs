//! Export errors, obsoletion, failure injection, the freeze rule, unmanaged runs and server files.

use std::path::{Path, PathBuf};

use super::*;

fn server_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sim/server.toml")
}

fn export_total(p: &PendingCounters) -> u64 {
    p.export_add + p.export_update + p.export_delete
}

fn import_total(p: &PendingCounters) -> u64 {
    p.import_add + p.import_update + p.import_delete
}

/// HR changes synced, so AD and MIM Service have pending exports.
async fn with_pending_exports(e: &SimEngine, add: u64, update: u64, delete: u64) {
    e.inject_source_changes("HR", add, update, delete).unwrap();
    exec(e, "HR", "Delta Import").await;
    exec(e, "HR", "Delta Sync").await;
}

// ---------------------------------------------------------------------------------------------
// Export errors and obsoletion
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn export_error_rate_fails_a_fraction_of_the_exports() {
    let mut cfg = quiet(1e-3);
    cfg.mas[0].export_error_rate = 0.25; // AD
    let e = SimEngine::new(cfg);
    with_pending_exports(&e, 200, 400, 40).await;
    let before = pending(&e, "AD").await;
    let total = export_total(&before);
    assert!(total > 300, "{before:?}");

    let (out, run) = exec(&e, "AD", "Export").await;
    assert_eq!(out.result, "completed-export-errors");
    assert_eq!(
        vocab::classify(&out.result),
        ResultClass::CompletedWithErrors
    );
    let s = only_step(&run);
    let failed = s.counter("export-failure");
    assert!(failed.abs_diff(total / 4) <= 3, "{failed} of {total}");
    let exported =
        s.counter("export-add") + s.counter("export-update") + s.counter("export-delete");
    assert_eq!(exported + failed, total);
    // Every failure is an <export-error> the parser reads back.
    assert_eq!(s.errors.count, failed);
    let xml = e.run_details("AD", out.run_number.unwrap()).await.unwrap();
    assert_eq!(xml.matches("<export-error ").count() as u64, failed);
    for err in &s.errors.first {
        assert_eq!(err.kind, "export");
        assert_eq!(err.error_type, "permission-issue");
        assert_eq!(err.error_code.as_deref(), Some("0x80070005"));
        assert_eq!(err.error_literal.as_deref(), Some("Access is denied."));
        assert!(err.dn.starts_with("CN=User"), "{}", err.dn);
        assert!(is_engine_guid(&err.cs_guid));
    }
    // Failed exports stay pending; the confirming import sees only what was exported.
    assert_eq!(export_total(&pending(&e, "AD").await), failed);
    let (_, run) = exec(&e, "AD", "Delta Import").await;
    let s = only_step(&run);
    assert_eq!(
        s.counter("stage-update") + s.counter("stage-delete"),
        exported
    );

    // The MIM Service MA rejects everything: nothing leaves, the MPR denial is reported.
    let mut cfg = quiet(1e-3);
    cfg.mas[2].export_error_rate = 1.0;
    let e = SimEngine::new(cfg);
    with_pending_exports(&e, 20, 40, 4).await;
    let before = pending(&e, "MIM Service").await;
    let (out, run) = exec(&e, "MIM Service", "Export").await;
    assert_eq!(out.result, "completed-export-errors");
    let s = only_step(&run);
    assert_eq!(s.counter("export-failure"), export_total(&before));
    assert_eq!(s.errors.count, export_total(&before));
    assert_eq!(s.errors.first[0].error_type, "ma-extension-error");
    assert_eq!(s.errors.first[0].error_code.as_deref(), Some("0x80230703"));
    let after = pending(&e, "MIM Service").await;
    assert_eq!(
        (after.export_add, after.export_update, after.export_delete),
        (
            before.export_add,
            before.export_update,
            before.export_delete
        )
    );
}

#[tokio::test(start_paused = true)]
async fn full_import_obsoletes_missing_objects_only_when_it_completes() {
    let e = SimEngine::new(quiet(1e-3));
    e.inject_source_changes("AD", 10, 20, 30).unwrap();

    // A stopped full import stages part of the adds and updates but obsoletes nothing.
    e.inject_failure(ScriptedFailure::new("AD", "stopped-deadlocked").with_profile("Full Import"))
        .unwrap();
    let (out, run) = exec(&e, "AD", "Full Import").await;
    assert_eq!(out.result, "stopped-deadlocked");
    assert_eq!(only_step(&run).counter("stage-delete"), 0);
    assert_eq!(pending(&e, "AD").await.import_delete, 0);

    // Discovery errors: staging done, no obsoletion, errors listed.
    e.inject_failure(
        ScriptedFailure::new("AD", "completed-discovery-errors").with_profile("Full Import"),
    )
    .unwrap();
    let (out, run) = exec(&e, "AD", "Full Import").await;
    assert_eq!(out.result, "completed-discovery-errors");
    assert_eq!(vocab::classify(&out.result), ResultClass::DiscoveryErrors);
    let s = only_step(&run);
    assert_eq!(s.counter("stage-delete"), 0);
    let p = pending(&e, "AD").await;
    assert_eq!(
        (p.import_add, p.import_update, p.import_delete),
        (10, 20, 0)
    );
    assert!((1..=MAX_FAILURES_PER_STEP).contains(&s.errors.count));
    assert_eq!(s.errors.first[0].kind, "discovery");
    assert_eq!(s.errors.first[0].error_type, "duplicate-object");
    assert!(s.errors.first[0].dn.starts_with("CN=User"));

    // A full import that completes obsoletes the 30 objects missing from the source.
    let (out, run) = exec(&e, "AD", "Full Import").await;
    assert_eq!(out.result, "success");
    let s = only_step(&run);
    assert_eq!(s.counter("stage-delete"), 30);
    assert_eq!(s.counter("stage-no-change"), 25_000 - 30);
    let (_, run) = exec(&e, "AD", "Delta Sync").await;
    assert_eq!(only_step(&run).counter("connector-delete-remove-mv"), 30);
    assert_eq!(pending(&e, "AD").await.total_connectors, 25_000 + 10 - 30);

    // A delta import sees deletions through the change log, even when stopped half-way.
    e.inject_source_changes("AD", 0, 0, 100).unwrap();
    e.inject_failure(
        ScriptedFailure::new("AD", "stopped-connectivity").with_profile("Delta Import"),
    )
    .unwrap();
    let (_, run) = exec(&e, "AD", "Delta Import").await;
    let staged = only_step(&run).counter("stage-delete");
    assert!((10..=90).contains(&staged), "{staged}");
}

// ---------------------------------------------------------------------------------------------
// Scripted failures
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn no_start_failures_leave_no_trace() {
    for result in [
        "no-start-full-import-required",
        "no-start-connection",
        "access-denied",
    ] {
        let e = SimEngine::new(quiet(1e-3));
        let n = exec(&e, "AD", "Delta Import").await.0.run_number.unwrap();
        e.inject_source_changes("AD", 0, 100, 0).unwrap();
        e.inject_failure(ScriptedFailure::new("AD", result))
            .unwrap();
        let out = e.execute("AD", "Delta Import", sink()).await.unwrap();
        assert_eq!(out.result, result);
        assert_eq!(out.run_number, None, "{result}");
        assert!(matches!(
            e.run_details("AD", n + 1).await,
            Err(EngineError::NoSuchRun { .. })
        ));
        assert_eq!(e.status("AD").await.unwrap(), MaStatus::Idle);
        assert_eq!(import_total(&pending(&e, "AD").await), 0, "{result}");
        // Nothing changed: the next run gets the next number and finds the changes.
        let (out, run) = exec(&e, "AD", "Delta Import").await;
        assert_eq!(out.run_number, Some(n + 1));
        assert_eq!(only_step(&run).counter("stage-update"), 100);
    }
    let e = SimEngine::new(quiet(1e-3));
    assert_eq!(
        vocab::classify("no-start-full-import-required"),
        ResultClass::NeedsFullImport
    );
    assert!(matches!(
        e.inject_failure(ScriptedFailure::new("Nope", "stopped-deadlocked")),
        Err(EngineError::NoSuchMa(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn stopped_failures_do_partial_work() {
    for result in [
        "stopped-deadlocked",
        "stopped-connectivity",
        "stopped-extension-dll-exception",
        "stopped-some-future-reason",
    ] {
        let e = SimEngine::new(quiet(1e-3));
        e.inject_source_changes("AD", 0, 1_000, 0).unwrap();
        e.inject_failure(ScriptedFailure::new("AD", result).with_profile("Delta Import"))
            .unwrap();
        let (out, run) = exec(&e, "AD", "Delta Import").await;
        assert_eq!(out.result, result);
        assert!(out.run_number.is_some());
        let s = only_step(&run);
        assert_eq!(s.result, result);
        assert!(s.finished_at.is_some());
        let staged = s.counter("stage-update");
        assert!((100..=900).contains(&staged), "{result}: {staged}");
        assert_eq!(pending(&e, "AD").await.import_update, staged);
        if result == "stopped-connectivity" {
            assert_eq!(s.connection_result.as_deref(), Some("dropped-connection"));
            assert_eq!(s.connection_incidents.len(), 2);
            let lost = &s.connection_incidents[1];
            assert_eq!(lost.connection_result, "dropped-connection");
            assert_eq!(lost.server, "DC01.contoso.com:389");
            assert_eq!(lost.error_code.as_deref(), Some("81"));
            assert_eq!(
                lost.error_literal.as_deref(),
                Some("The LDAP server is unavailable.")
            );
        } else {
            assert_eq!(s.connection_result.as_deref(), Some("success"));
        }
        // The rest is still in the source.
        let (out, run) = exec(&e, "AD", "Delta Import").await;
        assert_eq!(out.result, "success");
        assert_eq!(only_step(&run).counter("stage-update"), 1_000 - staged);
    }
    assert_eq!(
        vocab::classify("stopped-deadlocked"),
        ResultClass::TransientEngine
    );

    // A stopped sync commits the flows it processed; the rest stays staged.
    let e = SimEngine::new(quiet(1e-3));
    e.inject_source_changes("HR", 0, 500, 0).unwrap();
    exec(&e, "HR", "Delta Import").await;
    e.inject_failure(ScriptedFailure::new("HR", "stopped-deadlocked").with_profile("Delta Sync"))
        .unwrap();
    let (out, run) = exec(&e, "HR", "Delta Sync").await;
    assert_eq!(out.result, "stopped-deadlocked");
    let s = only_step(&run);
    let processed = s.counter("connector-flow") + s.counter("connector-no-flow");
    assert!((50..=450).contains(&processed), "{processed}");
    assert_eq!(pending(&e, "HR").await.import_update, 500 - processed);
}

#[tokio::test(start_paused = true)]
async fn completed_failures_do_full_work_with_error_entries() {
    // Sync errors on a delta sync: the failing objects stay staged.
    let e = SimEngine::new(quiet(1e-3));
    e.inject_source_changes("HR", 0, 50, 0).unwrap();
    exec(&e, "HR", "Delta Import").await;
    e.inject_failure(ScriptedFailure::new("HR", "completed-sync-errors"))
        .unwrap();
    let (out, run) = exec(&e, "HR", "Delta Sync").await;
    assert_eq!(out.result, "completed-sync-errors");
    let s = only_step(&run);
    let failed = s.counter("flow-failure");
    assert!((1..=MAX_FAILURES_PER_STEP).contains(&failed));
    assert_eq!(s.errors.count, failed);
    assert_eq!(s.errors.first[0].kind, "import");
    assert_eq!(s.errors.first[0].error_type, "extension-dll-exception");
    assert_eq!(
        s.counter("connector-flow") + s.counter("connector-no-flow"),
        50 - failed
    );
    assert_eq!(pending(&e, "HR").await.import_update, failed);

    // With nothing staged, the errors are earlier failures retried: still reported.
    e.inject_failure(ScriptedFailure::new("AD", "completed-sync-errors"))
        .unwrap();
    let (out, run) = exec(&e, "AD", "Delta Sync").await;
    assert_eq!(out.result, "completed-sync-errors");
    let s = only_step(&run);
    assert!(s.counter("flow-failure") >= 1);
    assert_eq!(s.errors.count, s.counter("flow-failure"));

    // Export errors on an export.
    let ad = pending(&e, "AD").await;
    assert!(export_total(&ad) > 0);
    e.inject_failure(ScriptedFailure::new("AD", "completed-export-errors"))
        .unwrap();
    let (out, run) = exec(&e, "AD", "Export").await;
    assert_eq!(out.result, "completed-export-errors");
    let s = only_step(&run);
    let failed = s.counter("export-failure");
    assert!(failed >= 1);
    assert_eq!(s.errors.count, failed);
    assert_eq!(s.errors.first[0].kind, "export");
    assert_eq!(export_total(&pending(&e, "AD").await), failed);

    // Errors on an import: every change staged, the failing objects listed.
    e.inject_source_changes("MIM Service", 3, 100, 0).unwrap();
    e.inject_failure(ScriptedFailure::new("MIM Service", "completed-sync-errors"))
        .unwrap();
    let (out, run) = exec(&e, "MIM Service", "Delta Import").await;
    assert_eq!(out.result, "completed-sync-errors");
    let s = only_step(&run);
    assert_eq!(
        (s.counter("stage-add"), s.counter("stage-update")),
        (3, 100)
    );
    assert!(s.counter("stage-failure") >= 1);
    assert_eq!(s.errors.count, s.counter("stage-failure"));
    assert_eq!(s.errors.first[0].error_type, "cs-attribute-type-mismatch");
    assert!(s.errors.first[0].dn.starts_with("Person-"));

    // Discovery errors on a delta import: staged (deletions come from the change log).
    e.inject_source_changes("MIM Service", 0, 10, 2).unwrap();
    e.inject_failure(ScriptedFailure::new(
        "MIM Service",
        "completed-discovery-errors",
    ))
    .unwrap();
    let (out, run) = exec(&e, "MIM Service", "Delta Import").await;
    assert_eq!(out.result, "completed-discovery-errors");
    let s = only_step(&run);
    assert_eq!(
        (s.counter("stage-update"), s.counter("stage-delete")),
        (10, 2)
    );
    assert!(s.errors.count >= 1);
    assert!(s.errors.first.iter().all(|err| err.kind == "discovery"));

    // A warning result: full work, no error entries.
    e.inject_source_changes("HR", 0, 7, 0).unwrap();
    e.inject_failure(ScriptedFailure::new("HR", "completed-warnings"))
        .unwrap();
    let (out, run) = exec(&e, "HR", "Delta Import").await;
    assert_eq!(out.result, "completed-warnings");
    let s = only_step(&run);
    assert_eq!(s.counter("stage-update"), 7);
    assert_eq!(s.errors.count, 0);
}

#[tokio::test(start_paused = true)]
async fn scripted_failures_honour_after_times_and_order() {
    let e = SimEngine::new(quiet(1e-3));
    e.inject_failure(
        ScriptedFailure::new("AD", "stopped-deadlocked")
            .with_profile("Delta Import")
            .with_after(2)
            .with_times(2),
    )
    .unwrap();
    let mut results = Vec::new();
    for _ in 0..5 {
        results.push(exec(&e, "AD", "Delta Import").await.0.result);
        // Other profiles do not match the entry and do not count.
        assert_eq!(exec(&e, "AD", "Export").await.0.result, "success");
    }
    assert_eq!(
        results,
        [
            "completed-no-objects",
            "completed-no-objects",
            "stopped-deadlocked",
            "stopped-deadlocked",
            "completed-no-objects"
        ]
    );

    // Entries apply in order; an execution the first one failed is not seen by the second.
    let mut cfg = quiet(1e-3);
    cfg.script = vec![
        ScriptedFailure::new("HR", "no-start-connection"),
        ScriptedFailure::new("HR", "stopped-connectivity").with_after(1),
    ];
    let e = SimEngine::new(cfg);
    let mut results = Vec::new();
    for _ in 0..4 {
        results.push(
            e.execute("HR", "Delta Import", sink())
                .await
                .unwrap()
                .result,
        );
    }
    assert_eq!(
        results,
        [
            "no-start-connection",
            "completed-no-objects",
            "stopped-connectivity",
            "completed-no-objects"
        ]
    );

    // Executions the engine refuses by its own rules do not consume an entry.
    let e = SimEngine::new(quiet(0.05));
    e.inject_failure(ScriptedFailure::new("AD", "stopped-deadlocked").with_profile("Delta Import"))
        .unwrap();
    let e2 = e.clone();
    let long = tokio::spawn(async move { e2.execute("AD", "Full Import", sink()).await });
    wait_until_running(&e, "AD").await;
    let refused = e.execute("AD", "Delta Import", sink()).await.unwrap();
    assert_eq!(refused.result, "no-start-ma-already-running");
    assert_eq!(long.await.unwrap().unwrap().result, "success");
    let out = e.execute("AD", "Delta Import", sink()).await.unwrap();
    assert_eq!(out.result, "stopped-deadlocked");
}

#[tokio::test(start_paused = true)]
async fn failure_rates_are_seeded_draws() {
    async fn results(cfg: SimConfig) -> Vec<(String, Option<u64>)> {
        let e = SimEngine::new(cfg);
        let mut out = Vec::new();
        for _ in 0..60 {
            let o = e.execute("AD", "Delta Import", sink()).await.unwrap();
            out.push((o.result, o.run_number));
        }
        out
    }
    let mut cfg = quiet(1e-3);
    cfg.mas[0].failure_rate = 0.5;
    cfg.mas[0].failure_results = vec![
        "stopped-deadlocked".into(),
        "no-start-connection".into(),
        "completed-warnings".into(),
    ];
    let a = results(cfg.clone()).await;
    let count = |r: &str| a.iter().filter(|(x, _)| x == r).count();
    let failed = 60 - count("completed-no-objects");
    assert!((15..=45).contains(&failed), "{failed}");
    for r in [
        "stopped-deadlocked",
        "no-start-connection",
        "completed-warnings",
    ] {
        assert!(count(r) > 0, "{r} never drawn: {a:?}");
    }
    for (r, n) in &a {
        assert_eq!(n.is_none(), r == "no-start-connection");
    }
    assert_eq!(a, results(cfg.clone()).await, "same seed, same failures");
    cfg.seed ^= 1;
    assert_ne!(a, results(cfg).await, "another seed, other failures");

    // The default result list is stopped-deadlocked; HR has no rate.
    let mut cfg = quiet(1e-3);
    cfg.mas[0].failure_rate = 1.0;
    assert_eq!(cfg.mas[0].failure_results, ["stopped-deadlocked"]);
    let e = SimEngine::new(cfg);
    assert_eq!(
        exec(&e, "AD", "Export").await.0.result,
        "stopped-deadlocked"
    );
    assert_eq!(exec(&e, "HR", "Export").await.0.result, "success");
}

// ---------------------------------------------------------------------------------------------
// Freeze
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn mim_service_import_during_a_sync_freezes_the_engine_until_restart() {
    // Realistic durations: a full sync of AD's 25,000 connectors takes 52 s.
    let e = SimEngine::new(quiet(1.0));
    e.inject_source_changes("MIM Service", 5, 5, 0).unwrap();
    let e2 = e.clone();
    let sync = tokio::spawn(async move { e2.execute("AD", "Full Sync", sink()).await });
    let ad_run = wait_until_running(&e, "AD").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Other imports may overlap a synchronization.
    let out = e.execute("HR", "Delta Import", sink()).await.unwrap();
    assert_eq!(out.result, "completed-no-objects");
    assert!(e.health().await.healthy);

    // The MIM Service MA delta import freezes the engine: its Execute never returns...
    let e3 = e.clone();
    let import =
        tokio::spawn(async move { e3.execute("MIM Service", "Delta Import", sink()).await });
    let mim_run = wait_until_running(&e, "MIM Service").await;
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    assert!(!import.is_finished());
    // ...nor does the synchronization that was running (it would have ended after 52 s).
    assert!(!sync.is_finished());
    let health = e.health().await;
    assert!(!health.healthy);
    assert_eq!(health.detail, FROZEN_DETAIL);
    assert_eq!(
        health.detail,
        "sync engine frozen: MIM Service MA delta import during a synchronization (restart the service)"
    );
    // Status still answers; Stop does not.
    assert_eq!(
        e.status("MIM Service").await.unwrap(),
        MaStatus::InProgress {
            profile: "Delta Import".into(),
            run_number: mim_run
        }
    );
    assert!(matches!(
        e.status("AD").await.unwrap(),
        MaStatus::InProgress { run_number, .. } if run_number == ad_run
    ));
    for ma in ["AD", "MIM Service", "HR"] {
        assert_eq!(e.stop(ma).await.unwrap(), "call-failure");
    }
    // Every later Execute hangs too, without starting a run.
    let e4 = e.clone();
    let parked = tokio::spawn(async move { e4.execute("HR", "Delta Import", sink()).await });
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(!parked.is_finished());
    assert_eq!(e.status("HR").await.unwrap(), MaStatus::Idle);
    assert_eq!(
        e.start_unmanaged("HR", "Delta Import"),
        Err("call-failure".to_owned())
    );
    let xml = e.run_details("MIM Service", mim_run).await.unwrap();
    assert_eq!(
        runhistory::parse_one(&xml).unwrap().result(),
        Some("in-progress")
    );

    // A restart ends the frozen runs with stopped-service-shutdown.
    assert_eq!(e.restart().await, 2);
    let out = sync.await.unwrap().unwrap();
    assert_eq!(out.result, SERVICE_SHUTDOWN);
    assert_eq!(out.run_number, Some(ad_run));
    assert_eq!(vocab::classify(&out.result), ResultClass::TransientExternal);
    let out = import.await.unwrap().unwrap();
    assert_eq!(out.result, "stopped-service-shutdown");
    assert_eq!(out.run_number, Some(mim_run));
    assert!(matches!(
        parked.await.unwrap(),
        Err(EngineError::Unavailable(_))
    ));
    let health = e.health().await;
    assert!(health.healthy);
    assert_eq!(health.detail, "");
    for ma in ["AD", "MIM Service", "HR"] {
        assert_eq!(e.status(ma).await.unwrap(), MaStatus::Idle);
    }

    // The sync committed what it processed before the freeze (12 of 52 s: 10 s, then HR's
    // 2 s delta import); the frozen import staged nothing.
    let xml = e.run_details("AD", ad_run).await.unwrap();
    let run = runhistory::parse_one(&xml).unwrap();
    let s = only_step(&run);
    assert_eq!(s.result, SERVICE_SHUTDOWN);
    assert!(s.finished_at.is_some());
    let evaluated = s.counter("connector-no-flow");
    assert!((5_700..5_800).contains(&evaluated), "{evaluated}");
    assert_eq!(import_total(&pending(&e, "MIM Service").await), 0);

    // The engine works again.
    let (out, run) = exec(&e, "MIM Service", "Delta Import").await;
    assert_eq!(out.run_number, Some(mim_run + 1));
    assert_eq!(only_step(&run).counter("stage-add"), 5);
    assert_eq!(exec(&e, "AD", "Delta Sync").await.0.result, "success");
}

#[tokio::test(start_paused = true)]
async fn scripted_freeze_and_full_import_freeze() {
    let mut cfg = quiet(1e-3);
    cfg.script
        .push(ScriptedFailure::new("AD", FREEZE).with_profile("Export"));
    let e = SimEngine::new(cfg);
    let e2 = e.clone();
    let export = tokio::spawn(async move { e2.execute("AD", "Export", sink()).await });
    let n = wait_until_running(&e, "AD").await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!export.is_finished());
    let health = e.health().await;
    assert!(!health.healthy);
    assert!(
        health.detail.starts_with("sync engine frozen: "),
        "{}",
        health.detail
    );
    assert!(health.detail.ends_with("(restart the service)"));
    assert_eq!(e.stop("AD").await.unwrap(), FROZEN_STOP_RESULT);
    assert_eq!(e.restart().await, 1);
    let out = export.await.unwrap().unwrap();
    assert_eq!(
        (out.result.as_str(), out.run_number),
        (SERVICE_SHUTDOWN, Some(n))
    );
    assert!(e.health().await.healthy);
    // The entry is spent.
    assert_eq!(exec(&e, "AD", "Export").await.0.result, "success");
    // A restart without a freeze ends nothing.
    assert_eq!(e.restart().await, 0);

    // A full import of the MIM Service MA during a sync freezes the engine as well.
    let e = SimEngine::new(quiet(1.0));
    let e2 = e.clone();
    let sync = tokio::spawn(async move { e2.execute("HR", "Delta Sync", sink()).await });
    wait_until_running(&e, "HR").await;
    let e3 = e.clone();
    let import =
        tokio::spawn(async move { e3.execute("MIM Service", "Full Import", sink()).await });
    wait_until_running(&e, "MIM Service").await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    let health = e.health().await;
    assert_eq!(
        health.detail,
        "sync engine frozen: MIM Service MA full import during a synchronization (restart the service)"
    );
    assert_eq!(e.restart().await, 2);
    assert_eq!(sync.await.unwrap().unwrap().result, SERVICE_SHUTDOWN);
    assert_eq!(import.await.unwrap().unwrap().result, SERVICE_SHUTDOWN);
}

// ---------------------------------------------------------------------------------------------
// Unmanaged runs
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn unmanaged_runs_are_visible_and_refuse_a_concurrent_execute() {
    // AD full import: ~2.6 s at this scale.
    let e = SimEngine::new(quiet(0.05));
    let n = e.start_unmanaged("AD", "Full Import").unwrap();
    assert_eq!(
        e.status("AD").await.unwrap(),
        MaStatus::InProgress {
            profile: "Full Import".into(),
            run_number: n
        }
    );
    let out = e.execute("AD", "Delta Import", sink()).await.unwrap();
    assert_eq!(out.result, "no-start-ma-already-running");
    assert_eq!(out.run_number, None);
    assert_eq!(
        e.start_unmanaged("AD", "Delta Import"),
        Err("no-start-ma-already-running".to_owned())
    );
    assert_eq!(
        e.start_unmanaged("Nope", "Delta Import"),
        Err("no-start-ma".to_owned())
    );
    assert_eq!(
        e.start_unmanaged("HR", "Delta Everything"),
        Err("no-start-unknown-profile-name".to_owned())
    );
    // An unmanaged synchronization refuses ours with 0x8023063d.
    let m = e.start_unmanaged("HR", "Full Sync").unwrap();
    let out = e
        .execute("MIM Service", "Delta Sync", sink())
        .await
        .unwrap();
    assert_eq!(out.result, CONCURRENT_SYNC_REFUSAL);
    assert_eq!(
        e.start_unmanaged("MIM Service", "Full Sync"),
        Err(CONCURRENT_SYNC_REFUSAL.to_owned())
    );
    // Run history is there, written for the administrator who clicked Run.
    let xml = e.run_details("AD", n).await.unwrap();
    let run = runhistory::parse_one(&xml).unwrap();
    assert_eq!(run.result(), Some("in-progress"));
    assert_eq!(run.security_id, "CONTOSO\\mim-admin");
    assert_eq!(run.profile, "Full Import");

    wait_until_idle(&e, "AD").await;
    wait_until_idle(&e, "HR").await;
    let run = runhistory::parse_one(&e.run_details("AD", n).await.unwrap()).unwrap();
    assert_eq!(run.result(), Some("success"));
    assert_eq!(only_step(&run).counter("stage-no-change"), 25_000);
    let run = runhistory::parse_one(&e.run_details("HR", m).await.unwrap()).unwrap();
    assert_eq!(run.result(), Some("success"));
    // Our next run gets the next number; Stop works on an unmanaged run too.
    assert_eq!(exec(&e, "AD", "Delta Sync").await.0.run_number, Some(n + 1));
    let k = e.start_unmanaged("AD", "Full Import").unwrap();
    assert_eq!(k, n + 2);
    assert_eq!(e.stop("AD").await.unwrap(), "success");
    let run = runhistory::parse_one(&e.run_details("AD", k).await.unwrap()).unwrap();
    assert_eq!(run.result(), Some(STOPPED_BY_USER));
}

#[tokio::test(start_paused = true)]
async fn configured_unmanaged_runs_start_at_their_time() {
    let mut cfg = quiet(0.01);
    cfg.unmanaged = vec![
        // 600 simulated seconds = 6 s of tokio time; the full import lasts 0.52 s.
        UnmanagedRun::new("AD", "Full Import", 600.0),
        UnmanagedRun::new("HR", "Delta Import", 600.0),
        // Still running then: refused, and not retried.
        UnmanagedRun::new("AD", "Delta Import", 610.0),
    ];
    let e = SimEngine::new(cfg);
    let first = exec(&e, "AD", "Delta Import").await.0.run_number.unwrap();
    tokio::time::sleep_until(e.inner.epoch + Duration::from_millis(5_990)).await;
    assert_eq!(e.status("AD").await.unwrap(), MaStatus::Idle);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        e.status("AD").await.unwrap(),
        MaStatus::InProgress {
            profile: "Full Import".into(),
            run_number: first + 1
        }
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(e.status("AD").await.unwrap(), MaStatus::Idle);
    let run = runhistory::parse_one(&e.run_details("AD", first + 1).await.unwrap()).unwrap();
    assert_eq!(run.result(), Some("success"));
    assert_eq!(run.security_id, "CONTOSO\\mim-admin");
    assert!(matches!(
        e.run_details("AD", first + 2).await,
        Err(EngineError::NoSuchRun { .. })
    ));
    let mut hr_runs = 0;
    for n in 0..20_000 {
        if e.run_details("HR", n).await.is_ok() {
            hr_runs += 1;
        }
    }
    assert_eq!(hr_runs, 1);
}

/// Without a runtime at construction, the scheduler starts on first use; times still count
/// from construction.
#[test]
fn unmanaged_scheduler_starts_lazily_without_a_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let mut cfg = quiet(0.01);
    cfg.unmanaged = vec![UnmanagedRun::new("HR", "Full Import", 100.0)];
    let e = SimEngine::new(cfg);
    rt.block_on(async {
        assert_eq!(e.status("HR").await.unwrap(), MaStatus::Idle);
        tokio::time::sleep_until(e.inner.epoch + Duration::from_millis(1_010)).await;
        assert!(matches!(
            e.status("HR").await.unwrap(),
            MaStatus::InProgress { .. }
        ));
        wait_until_idle(&e, "HR").await;
    });
}

// ---------------------------------------------------------------------------------------------
// Server files
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_example_server_file_loads_and_runs() {
    let cfg = SimConfig::from_toml_file(server_file()).unwrap();
    let kinds: Vec<(&str, &str)> = cfg
        .mas
        .iter()
        .map(|m| (m.name.as_str(), m.ma_type.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("AD", "AD"),
            ("HR", "MSSQL"),
            ("MIM Service", "FIM"),
            ("Entra ID", "Extensible2")
        ]
    );
    assert_eq!(cfg.seed, 20_240_601);
    assert_eq!(cfg.time_scale, 0.05);
    assert_eq!(cfg.security_id, "CONTOSO\\svc-syncfleet");
    assert!(!cfg.mas[1].receives_exports);
    assert_eq!(cfg.mas[0].failure_rate, 0.01);
    assert_eq!(
        cfg.mas[0].failure_results,
        ["stopped-deadlocked", "stopped-connectivity"]
    );
    assert_eq!(
        cfg.mas[1].failure_results,
        ["stopped-deadlocked"],
        "default"
    );
    assert_eq!(cfg.mas[3].export_error_rate, 0.01);
    assert_eq!(
        cfg.script[0],
        ScriptedFailure::new("HR", "no-start-full-import-required")
            .with_profile("Delta Import")
            .with_after(2)
    );
    assert_eq!(cfg.script[1].times, 2);
    assert_eq!(
        cfg.unmanaged,
        [UnmanagedRun::new("AD", "Full Import", 3_600.0)]
    );

    // The script works as written: HR's third delta import needs a full import first.
    let e = SimEngine::try_new(cfg).unwrap();
    let mut results = Vec::new();
    for _ in 0..3 {
        results.push(
            e.execute("HR", "Delta Import", sink())
                .await
                .unwrap()
                .result,
        );
    }
    assert_eq!(results[2], "no-start-full-import-required");
    assert_eq!(e.inventory().await.unwrap().len(), 4);
}

#[test]
fn every_ma_kind_is_in_the_examples() {
    let kinds = |cfg: &SimConfig| {
        let mut k: Vec<String> = cfg.mas.iter().map(|m| m.ma_type.clone()).collect();
        k.sort();
        k
    };
    let all = ["AD", "Extensible2", "FIM", "MSSQL"];
    assert_eq!(kinds(&SimConfig::example(1)), all);
    assert_eq!(kinds(&SimConfig::example(3)), all);
    assert_eq!(
        kinds(&SimConfig::from_toml_file(server_file()).unwrap()),
        all
    );
}

#[test]
fn server_file_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ad = "[[mas]]\nname = \"AD\"\nma_type = \"AD\"\n";
    let cases: Vec<(String, &str)> = vec![
        ("time_scale = \"fast\"\n".to_owned(), "`time_scale`"),
        (
            format!(
                "{ad}[[mas]]\nname = \"HR\"\nma_type = \"MSSQL\"\nexport_error_rate = \"high\"\n"
            ),
            "`mas[1].export_error_rate`",
        ),
        (format!("{ad}export_eror_rate = 0.1\n"), "export_eror_rate"),
        ("seeed = 1\n".to_owned(), "seeed"),
        ("[[mas]]\nname = \"AD\"\n".to_owned(), "ma_type"),
        (
            format!("{ad}export_error_rate = 1.5\n"),
            "mas[0].export_error_rate",
        ),
        (format!("{ad}failure_rate = -0.1\n"), "mas[0].failure_rate"),
        (
            format!("{ad}[[script]]\nma = \"HR\"\nresult = \"stopped-deadlocked\"\n"),
            "script[0].ma",
        ),
        (
            format!("{ad}[[script]]\nma = \"AD\"\nresult = \"stopped-deadlocked\"\ntimes = 0\n"),
            "script[0].times",
        ),
        (
            format!(
                "{ad}[[unmanaged]]\nma = \"AD\"\nprofile = \"Delta Everything\"\nat_secs = 1.0\n"
            ),
            "unmanaged[0].profile",
        ),
        (
            format!("{ad}[[unmanaged]]\nma = \"AD\"\nprofile = \"Export\"\nat_secs = -1.0\n"),
            "unmanaged[0].at_secs",
        ),
        ("seed = \n".to_owned(), "line 1"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("server-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let err = SimConfig::from_toml_file(&path).unwrap_err();
        let EngineError::Config(msg) = &err else {
            panic!("not a config error: {err:?}");
        };
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(key), "{key:?} not in {msg:?}");
        assert!(!msg.contains("sim sim"), "{msg}");
    }
    let missing = dir.path().join("absent.toml");
    let msg = SimConfig::from_toml_file(&missing).unwrap_err().to_string();
    assert!(
        msg.contains("absent.toml") && msg.contains("cannot read"),
        "{msg}"
    );
}
