//! The driver's other calls, inventory and health over a scripted WMI surface.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::engine::wmi::fake::*;
use crate::engine::wmi::*;
use crate::engine::*;

#[tokio::test]
async fn stop_returns_the_engine_string() {
    let e = engine(FakeWmi::new());
    assert_eq!(e.stop(EXPORT_MA).await.unwrap(), "ma-not-running");
    e.api()
        .inner
        .lock()
        .unwrap()
        .state
        .get_mut(EXPORT_MA)
        .unwrap()
        .run_status = "in-progress".into();
    assert_eq!(e.stop(EXPORT_MA).await.unwrap(), "success");
    assert!(matches!(e.stop("x").await, Err(EngineError::NoSuchMa(_))));
    let e = engine(FakeWmi::new().failing("stop", WmiError::com(hresult::E_ACCESSDENIED)));
    assert!(matches!(
        e.stop(EXPORT_MA).await,
        Err(EngineError::Config(_))
    ));
}

#[tokio::test]
async fn status_reports_runs_in_progress() {
    let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
        s.run_status = "success".into();
        s.run_number = "12".into();
    }));
    assert_eq!(e.status(EXPORT_MA).await.unwrap(), MaStatus::Idle);
    {
        let mut i = e.api().inner.lock().unwrap();
        let st = i.state.get_mut(EXPORT_MA).unwrap();
        st.run_status = "in-progress".into();
        st.run_number = "13".into();
        st.run_profile = "Full Import".into();
    }
    assert_eq!(
        e.status(EXPORT_MA).await.unwrap(),
        MaStatus::InProgress {
            profile: "Full Import".into(),
            run_number: 13
        }
    );
    e.api()
        .inner
        .lock()
        .unwrap()
        .state
        .get_mut(EXPORT_MA)
        .unwrap()
        .run_status = "completing-referential-updates".into();
    assert!(matches!(
        e.status(EXPORT_MA).await.unwrap(),
        MaStatus::InProgress { run_number: 13, .. }
    ));
    // Never run: empty status is idle.
    assert_eq!(e.status(DS_MA).await.unwrap(), MaStatus::Idle);
    e.api()
        .inner
        .lock()
        .unwrap()
        .state
        .get_mut(DS_MA)
        .unwrap()
        .run_status = "connection-failure".into();
    assert!(matches!(
        e.status(DS_MA).await,
        Err(EngineError::Unavailable(_))
    ));
    assert!(matches!(e.status("x").await, Err(EngineError::NoSuchMa(_))));
}

#[tokio::test]
async fn pending_counters_are_parsed() {
    let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
        for (k, v) in [
            ("NumImportAdd", "1"),
            ("NumImportUpdate", "2"),
            ("NumImportDelete", "3"),
            ("NumExportAdd", "4"),
            ("NumExportUpdate", " 5 "),
            ("NumExportDelete", "6"),
            ("NumTotalConnectors", "25000"),
            ("NumCSObjects", "26000"),
        ] {
            s.counters.insert(k, v.into());
        }
    }));
    assert_eq!(
        e.pending(EXPORT_MA).await.unwrap(),
        PendingCounters {
            import_add: 1,
            import_update: 2,
            import_delete: 3,
            export_add: 4,
            export_update: 5,
            export_delete: 6,
            total_connectors: 25000,
            cs_objects: 26000,
        }
    );
}

#[tokio::test]
async fn pending_counter_errors_name_the_string() {
    let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
        s.counters.insert("NumExportDelete", "lots".into());
    }));
    let err = e.pending(EXPORT_MA).await.unwrap_err().to_string();
    assert!(
        err.contains("NumExportDelete") && err.contains("\"lots\""),
        "{err}"
    );

    let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
        s.counters.insert("NumImportAdd", "-1".into());
    }));
    assert!(matches!(
        e.pending(EXPORT_MA).await,
        Err(EngineError::Unavailable(_))
    ));

    let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
        s.counters.insert("NumImportAdd", "access-denied".into());
    }));
    assert!(matches!(
        e.pending(EXPORT_MA).await,
        Err(EngineError::Config(_))
    ));

    let e = engine(FakeWmi::new().failing("num", WmiError::com(hresult::RPC_E_DISCONNECTED)));
    assert!(matches!(
        e.pending(EXPORT_MA).await,
        Err(EngineError::Unavailable(_))
    ));
    let e = engine(FakeWmi::new());
    assert!(matches!(
        e.pending("x").await,
        Err(EngineError::NoSuchMa(_))
    ));
}

#[tokio::test]
async fn run_details_of_last_and_older_runs() {
    let older = renumbered(EXPORT_SAMPLE, 2500);
    let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
        s.run_number = "2590".into();
        s.details = EXPORT_SAMPLE.into();
        s.history.insert(2500, older.clone());
    }));
    assert_eq!(e.run_details(EXPORT_MA, 2590).await.unwrap(), EXPORT_SAMPLE);
    assert_eq!(e.api().calls("history_details"), 0);
    assert_eq!(e.run_details(EXPORT_MA, 2500).await.unwrap(), older);
    assert!(matches!(
        e.run_details(EXPORT_MA, 2400).await,
        Err(EngineError::NoSuchRun {
            run_number: 2400,
            ..
        })
    ));
    assert!(matches!(
        e.run_details("x", 1).await,
        Err(EngineError::NoSuchMa(_))
    ));
}

#[tokio::test]
async fn run_details_falls_back_to_history_when_a_new_run_raced() {
    // RunNumber() said 2590 but RunDetails() already shows 2591.
    let newer = renumbered(EXPORT_SAMPLE, 2591);
    let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
        s.run_number = "2590".into();
        s.details = newer;
        s.history.insert(2590, EXPORT_SAMPLE.into());
    }));
    assert_eq!(e.run_details(EXPORT_MA, 2590).await.unwrap(), EXPORT_SAMPLE);
    assert_eq!(e.api().calls("history_details"), 1);
}

#[tokio::test]
async fn inventory_uses_declared_or_standard_profiles() {
    let mut cfg = fast_config();
    cfg.profiles = vec![ProfileDecl {
        ma: DS_MA.into(),
        name: "DS_DELTAIMPORT".into(),
        step_types: vec![
            "delta-import/to-cs@DC=ab,DC=company,DC=com".into(),
            "apply-rules/apply-pending".into(),
        ],
    }];
    let e = WmiEngine::new(FakeWmi::new(), cfg).unwrap();
    let inv = e.inventory().await.unwrap();
    let export = inv.iter().find(|m| m.name == EXPORT_MA).unwrap();
    assert_eq!(export.guid, EXPORT_GUID);
    assert_eq!(export.ma_type, "Extensible2");
    let names: Vec<&str> = export
        .run_profiles
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "Full Import",
            "Delta Import",
            "Full Sync",
            "Delta Sync",
            "Export"
        ]
    );
    assert!(export.profile("Delta Sync").unwrap().steps[0].is_sync());
    assert!(!export.profile("Delta Import").unwrap().steps[0].is_sync());

    let ds = inv.iter().find(|m| m.name == DS_MA).unwrap();
    assert_eq!(ds.guid, "{85098734-66BC-4938-8122-C5F585F463D0}");
    assert_eq!(ds.run_profiles.len(), 1);
    let steps = &ds.run_profiles[0].steps;
    assert_eq!(steps[0].partition, "DC=ab,DC=company,DC=com");
    assert_eq!(steps[0].subtype, "to-cs");
    assert!(steps[1].is_sync());
}

#[tokio::test]
async fn health_and_info() {
    let e = engine(FakeWmi::new());
    assert_eq!(e.info().kind, "mim-wmi");
    assert_eq!(e.info().version, "unknown");
    let h = e.health().await;
    assert!(h.healthy, "{}", h.detail);
    assert_eq!(e.info().version, "FIMSynchronizationService 4.6.607.0");

    e.api().inner.lock().unwrap().service_running = false;
    let h = e.health().await;
    assert!(!h.healthy);
    assert!(
        h.detail.contains("FIMSynchronizationService"),
        "{}",
        h.detail
    );

    let e = engine(
        FakeWmi::new().failing("list_mas", WmiError::com(hresult::WBEM_E_INVALID_NAMESPACE)),
    );
    let h = e.health().await;
    assert!(!h.healthy);
    assert!(h.detail.contains("0x8004100e"), "{}", h.detail);
}

#[tokio::test]
async fn a_frozen_engine_is_unhealthy_and_calls_stop_piling_up() {
    let fake = FakeWmi::new();
    fake.hang.lock().unwrap().push("list_mas");
    let gate = fake.gate();
    let mut cfg = fast_config();
    cfg.blocking_timeout = Duration::from_millis(50);
    let e = WmiEngine::new(fake, cfg).unwrap();
    let h = e.health().await;
    assert!(!h.healthy);
    assert!(h.detail.contains("did not answer"), "{}", h.detail);
    // The hung call still holds its slot; fill the rest and see calls refused at once.
    e.outstanding
        .fetch_add(MAX_OUTSTANDING_CALLS, Ordering::SeqCst);
    let err = e.status(EXPORT_MA).await.unwrap_err().to_string();
    assert!(err.contains("frozen"), "{err}");
    e.outstanding
        .fetch_sub(MAX_OUTSTANDING_CALLS, Ordering::SeqCst);
    gate.send(()).unwrap();
}

const DS_GUID: &str = "85098734-66BC-4938-8122-C5F585F463D0";
const CONTOSO_PARTITION: &str = "{18A58F00-7B2D-4D9F-BA97-C17C4FDD11C4}";

/// What the engine's database holds for the fake's two MAs.
fn engine_db() -> EngineProfiles {
    let row = |ma_id: &str, ma: &str, name: &str, xml: &str| StoredProfile {
        ma_id: ma_id.into(),
        ma_name: ma.into(),
        name: name.into(),
        configuration_xml: xml.into(),
    };
    EngineProfiles {
        profiles: vec![
            row(
                DS_GUID,
                DS_MA,
                "Delta Import Delta Sync",
                profile_xml::AD_DELTA,
            ),
            row(DS_GUID, DS_MA, "Full Sync", profile_xml::FULL_SYNC),
            row(DS_GUID, DS_MA, "Broken", profile_xml::MALFORMED),
            row(EXPORT_GUID, EXPORT_MA, "Export", profile_xml::EXPORT_DROP),
            row(
                EXPORT_GUID,
                EXPORT_MA,
                "Delta Import and Delta Sync",
                profile_xml::FIM_DELTA_COMBINED,
            ),
        ],
        partitions: [(
            CONTOSO_PARTITION.to_owned(),
            "DC=ab,DC=company,DC=com".to_owned(),
        )]
        .into_iter()
        .collect(),
        partitions_unresolved: None,
    }
}

fn discovering(cfg: WmiConfig, source: FakeProfiles) -> (WmiEngine<FakeWmi>, Arc<FakeProfiles>) {
    let source = Arc::new(source);
    let e = WmiEngine::new(FakeWmi::new(), cfg)
        .unwrap()
        .with_profile_source(Arc::clone(&source) as Arc<dyn ProfileSource>);
    (e, source)
}

#[tokio::test]
async fn inventory_returns_the_engines_profiles_with_their_steps() {
    let mut cfg = fast_config();
    // A declaration overrides the discovered profile of the same name.
    cfg.profiles = vec![ProfileDecl {
        ma: EXPORT_MA.into(),
        name: "Export".into(),
        step_types: vec!["export".into()],
    }];
    let (e, source) = discovering(cfg, FakeProfiles::answering(Ok(engine_db())));
    let inv = e.inventory().await.unwrap();

    let ds = inv.iter().find(|m| m.name == DS_MA).unwrap();
    let names: Vec<&str> = ds.run_profiles.iter().map(|p| p.name.as_str()).collect();
    // Not the standard profiles, and the broken one is left out.
    assert_eq!(names, ["Delta Import Delta Sync", "Full Sync"]);
    let steps = &ds.profile("Delta Import Delta Sync").unwrap().steps;
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].step_type, "delta-import");
    assert_eq!(steps[0].subtype, "to-cs");
    assert_eq!(steps[0].partition, "DC=ab,DC=company,DC=com");
    assert!(!steps[0].is_sync());
    assert!(
        steps[1].is_sync(),
        "the delta sync step holds the sync lock"
    );
    assert!(ds.profile("Full Sync").unwrap().steps[0].is_sync());

    let export = inv.iter().find(|m| m.name == EXPORT_MA).unwrap();
    let names: Vec<&str> = export
        .run_profiles
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["Export", "Delta Import and Delta Sync"]);
    assert_eq!(export.profile("Export").unwrap().steps[0].subtype, "");
    let combined = &export.profile("Delta Import and Delta Sync").unwrap().steps[0];
    assert!(
        combined.is_sync(),
        "an import without to-cs also synchronizes"
    );

    let origins = e.profile_origins();
    assert_eq!(
        origins[DS_MA],
        ProfileOrigin::Discovered {
            discovered: 2,
            declared: 0,
            undiscoverable: 1
        }
    );
    assert_eq!(
        origins[EXPORT_MA],
        ProfileOrigin::Discovered {
            discovered: 2,
            declared: 1,
            undiscoverable: 0
        }
    );

    // A second inventory within the reuse time does not read the database again.
    e.inventory().await.unwrap();
    assert_eq!(source.reads(), 1);
}

#[tokio::test]
async fn inventory_falls_back_when_the_database_cannot_be_read() {
    let mut cfg = fast_config();
    cfg.profiles = vec![ProfileDecl {
        ma: DS_MA.into(),
        name: "DS_DELTAIMPORT".into(),
        step_types: vec!["delta-import/to-cs".into()],
    }];
    let (e, _) = discovering(
        cfg,
        FakeProfiles::answering(Err(DiscoveryError::Denied(
            "SELECT permission was denied on the object 'mms_run_profile' (229)".into(),
        ))),
    );
    let inv = e.inventory().await.unwrap();
    let ds = inv.iter().find(|m| m.name == DS_MA).unwrap();
    assert_eq!(ds.run_profiles.len(), 1);
    assert_eq!(ds.run_profiles[0].name, "DS_DELTAIMPORT");
    let export = inv.iter().find(|m| m.name == EXPORT_MA).unwrap();
    assert_eq!(export.run_profiles.len(), STANDARD_PROFILES.len());

    let origins = e.profile_origins();
    match &origins[DS_MA] {
        ProfileOrigin::Declared { reason } => assert!(reason.contains("may not read"), "{reason}"),
        o => panic!("{o:?}"),
    }
    match &origins[EXPORT_MA] {
        ProfileOrigin::Standard { reason } => assert!(reason.contains("(229)"), "{reason}"),
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn a_database_that_does_not_answer_is_bounded_by_the_blocking_timeout() {
    let mut cfg = fast_config();
    cfg.blocking_timeout = Duration::from_millis(200);
    let mut source = FakeProfiles::answering(Ok(engine_db()));
    source.hang = true;
    let (e, _) = discovering(cfg, source);
    let inv = e.inventory().await.unwrap();
    let ds = inv.iter().find(|m| m.name == DS_MA).unwrap();
    assert_eq!(ds.run_profiles.len(), STANDARD_PROFILES.len());
    match &e.profile_origins()[DS_MA] {
        ProfileOrigin::Standard { reason } => {
            assert!(reason.contains("did not answer within"), "{reason}")
        }
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn discovery_off_never_reads_the_database() {
    let mut cfg = fast_config();
    cfg.discover = false;
    let (e, source) = discovering(cfg, FakeProfiles::answering(Ok(engine_db())));
    let inv = e.inventory().await.unwrap();
    assert_eq!(source.reads(), 0);
    let ds = inv.iter().find(|m| m.name == DS_MA).unwrap();
    assert_eq!(ds.run_profiles.len(), STANDARD_PROFILES.len());
    assert!(matches!(
        e.profile_origins()[DS_MA],
        ProfileOrigin::Standard { .. }
    ));
}

#[tokio::test]
async fn the_executor_takes_the_sync_class_from_discovered_steps() {
    use crate::executor::{Executor, ExecutorOptions};
    use crate::journal::Journal;

    let (e, _) = discovering(fast_config(), FakeProfiles::answering(Ok(engine_db())));
    let dir = tempfile::tempdir().unwrap();
    let exec = Executor::new(
        Arc::new(e),
        Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap()),
        Arc::new(tokio::sync::Notify::new()),
        ExecutorOptions::default(),
    );
    exec.refresh_inventory().await.unwrap();
    // Its second step synchronizes, although its name says nothing about it and it is not one
    // of the standard profiles.
    assert!(exec.is_sync_class(DS_MA, "Delta Import Delta Sync"));
    assert!(exec.is_sync_class(EXPORT_MA, "Delta Import and Delta Sync"));
    assert!(!exec.is_sync_class(EXPORT_MA, "Export"));
    // Not in the engine's database: not in the inventory.
    assert!(!exec.is_sync_class(DS_MA, "Delta Sync"));
}

#[tokio::test]
async fn clear_runs_calls_miis_server_with_the_engine_time_format() {
    let e = engine(FakeWmi::new());
    let t = chrono::DateTime::parse_from_rfc3339("2026-03-01T10:20:30.456Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert_eq!(e.clear_runs(t).await.unwrap(), "success");
    assert!(
        e.api()
            .inner
            .lock()
            .unwrap()
            .calls
            .contains(&"ClearRuns(2026-03-01 10:20:30.456)".to_string())
    );
    // The engine's refusal comes back verbatim.
    e.api().inner.lock().unwrap().clear_runs_answer = Some("access-denied".into());
    assert_eq!(e.clear_runs(t).await.unwrap(), "access-denied");
}
