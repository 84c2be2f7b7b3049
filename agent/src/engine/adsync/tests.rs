//! Tests of the adsync driver: decision logic with the scripted fake runner, and the process
//! runner against a real child process (a Python stand-in speaking the host protocol).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use syncfleet_proto::vocab::{self, ResultClass};

use super::fake::FakeRunner;
use super::*;
use crate::engine::{MaStatus, SyncEngine, runhistory};

const AD: &str = "contoso.com";
const AD_ID: &str = "8e0ad4b2-1111-4c4c-9c9c-0123456789ab";

fn scheduler(enabled: bool, in_progress: bool, suspended: bool, staging: bool) -> Value {
    json!([{
        "AllowedSyncCycleInterval": "00:30:00",
        "SyncCycleEnabled": enabled,
        "SyncCycleInProgress": in_progress,
        "SchedulerSuspended": suspended,
        "StagingModeEnabled": staging,
        "MaintenanceEnabled": true
    }])
}

fn connectors() -> Value {
    json!([{
        "Name": AD,
        "Identifier": AD_ID,
        "ConnectorTypeName": "AD",
        "RunProfiles": [
            {"Name": "Full Import", "RunSteps": [{"Type": "FullImport"}]},
            {"Name": "Delta Import"},
            {"Name": "Delta Synchronization", "RunSteps": [{"Type": "DeltaSynchronization"}]},
            {"Name": "Export", "RunSteps": [{"Type": "Export"}]},
            {"Name": "Import and Export", "RunSteps": [{"Type": "DeltaImport"}, {"Type": "Export"}]},
            {"Name": "Custom"}
        ]
    }])
}

fn run(number: u64, profile: &str, complete: bool, result: &str) -> Value {
    json!([{
        "RunHistoryId": "0b5c0000-0000-0000-0000-000000000001",
        "ConnectorId": AD_ID,
        "ConnectorName": AD,
        "RunProfileName": profile,
        "RunNumber": number,
        "Username": "CONTOSO\\svc-syncfleet",
        "IsRunComplete": complete,
        "Result": result,
        "StartDate": "/Date(1700000000000)/",
        "EndDate": "/Date(1700000060000)/"
    }])
}

fn cfg() -> AdsyncConfig {
    AdsyncConfig {
        poll_interval: Duration::from_secs(1),
        scheduler_wait: Duration::from_secs(60),
        ..AdsyncConfig::default()
    }
}

fn engine(fake: &Arc<FakeRunner>) -> AdsyncEngine<FakeRunner> {
    fake.always("Get-ADSyncConnector", Ok(connectors()));
    AdsyncEngine::new(Arc::clone(fake), cfg()).unwrap()
}

// ---------------------------------------------------------------- built-in scheduler

#[tokio::test]
async fn takeover_records_the_scheduler_then_switches_its_cycle_off() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunner::new();
    fake.then(
        "Get-ADSyncScheduler",
        Ok(scheduler(true, false, false, false)),
    )
    .then(
        "Get-ADSyncScheduler",
        Ok(scheduler(false, false, false, false)),
    )
    .always("Set-ADSyncScheduler", Ok(json!([])));
    let done = take_over_builtin_scheduler(&fake, &cfg(), dir.path())
        .await
        .unwrap();
    assert_eq!(done, Takeover::SwitchedOff);
    assert_eq!(
        fake.calls_of("Set-ADSyncScheduler"),
        vec![json!({"SyncCycleEnabled": false})]
    );
    let record = read_record(dir.path()).unwrap().unwrap();
    assert!(record.sync_cycle_enabled_before);

    // Restore switches it on and forgets the record.
    fake.always("Set-ADSyncScheduler", Ok(json!([])));
    assert_eq!(
        restore_with(&fake, dir.path()).await.unwrap(),
        Restore::SwitchedOn
    );
    assert_eq!(
        fake.calls_of("Set-ADSyncScheduler").last(),
        Some(&json!({"SyncCycleEnabled": true}))
    );
    assert!(!state_path(dir.path()).exists());
    // A second restore changes nothing.
    assert_eq!(
        restore_with(&fake, dir.path()).await.unwrap(),
        Restore::NothingRecorded
    );
    assert_eq!(fake.calls_of("Set-ADSyncScheduler").len(), 2);
}

#[tokio::test]
async fn the_record_is_written_before_the_change_so_an_unclear_failure_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunner::new();
    fake.always(
        "Get-ADSyncScheduler",
        Ok(scheduler(true, false, false, false)),
    )
    .always(
        "Set-ADSyncScheduler",
        Err(AdsyncError::Died {
            command: "Set-ADSyncScheduler".into(),
            detail: "exit code 1".into(),
        }),
    );
    let err = take_over_builtin_scheduler(&fake, &cfg(), dir.path())
        .await
        .unwrap_err();
    assert!(matches!(err, SchedulerError::Refused { .. }), "{err}");
    // The change may have happened: the record stays so that a restore switches it back on.
    assert!(read_record(dir.path()).unwrap().is_some());
}

#[tokio::test]
async fn a_refused_switch_off_stops_the_agent_with_what_to_do_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunner::new();
    fake.always(
        "Get-ADSyncScheduler",
        Ok(scheduler(true, false, false, false)),
    )
    .always(
        "Set-ADSyncScheduler",
        Err(FakeRunner::ps_error(
            "Set-ADSyncScheduler",
            "Access is denied. The caller is not a member of ADSyncAdmins",
        )),
    );
    let err = take_over_builtin_scheduler(&fake, &cfg(), dir.path())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("Access is denied"), "{msg}");
    assert!(msg.contains("member of ADSyncAdmins"), "{msg}");
    assert!(
        msg.contains("Set-ADSyncScheduler -SyncCycleEnabled $false"),
        "{msg}"
    );
    assert!(read_record(dir.path()).unwrap().is_none());
}

#[tokio::test]
async fn a_cycle_that_stays_on_after_the_switch_off_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunner::new();
    fake.always(
        "Get-ADSyncScheduler",
        Ok(scheduler(true, false, false, false)),
    )
    .always("Set-ADSyncScheduler", Ok(json!([])));
    let err = take_over_builtin_scheduler(&fake, &cfg(), dir.path())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("still true"), "{err}");
    assert!(read_record(dir.path()).unwrap().is_none());
}

#[tokio::test]
async fn a_suspended_scheduler_is_refused_without_any_change() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunner::new();
    fake.always(
        "Get-ADSyncScheduler",
        Ok(scheduler(true, false, true, false)),
    );
    let err = take_over_builtin_scheduler(&fake, &cfg(), dir.path())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SchedulerSuspended"), "{err}");
    assert!(fake.calls_of("Set-ADSyncScheduler").is_empty());
    assert!(read_record(dir.path()).unwrap().is_none());
}

#[tokio::test]
async fn an_already_disabled_cycle_is_neither_recorded_nor_restored() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunner::new();
    fake.always(
        "Get-ADSyncScheduler",
        Ok(scheduler(false, false, false, false)),
    );
    let done = take_over_builtin_scheduler(&fake, &cfg(), dir.path())
        .await
        .unwrap();
    assert_eq!(done, Takeover::AlreadyOff { recorded: false });
    assert!(read_record(dir.path()).unwrap().is_none());
    assert_eq!(
        restore_with(&fake, dir.path()).await.unwrap(),
        Restore::NothingRecorded
    );
    assert!(fake.calls_of("Set-ADSyncScheduler").is_empty());
}

#[tokio::test(start_paused = true)]
async fn takeover_waits_for_a_cycle_in_progress_then_switches_off() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunner::new();
    fake.then(
        "Get-ADSyncScheduler",
        Ok(scheduler(true, true, false, false)),
    )
    .then(
        "Get-ADSyncScheduler",
        Ok(scheduler(true, true, false, false)),
    )
    .then(
        "Get-ADSyncScheduler",
        Ok(scheduler(true, false, false, false)),
    )
    .then(
        "Get-ADSyncScheduler",
        Ok(scheduler(false, false, false, false)),
    )
    .always("Set-ADSyncScheduler", Ok(json!([])));
    let start = tokio::time::Instant::now();
    let done = take_over_builtin_scheduler(&fake, &cfg(), dir.path())
        .await
        .unwrap();
    assert_eq!(done, Takeover::SwitchedOff);
    assert_eq!(start.elapsed(), CYCLE_POLL * 2);
    assert_eq!(fake.calls_of("Set-ADSyncScheduler").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn takeover_waits_for_a_cycle_in_progress_only_so_long() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunner::new();
    fake.always(
        "Get-ADSyncScheduler",
        Ok(scheduler(true, true, false, false)),
    );
    let err = take_over_builtin_scheduler(&fake, &cfg(), dir.path())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("still in progress after 60s"),
        "{err}"
    );
    assert!(fake.calls_of("Set-ADSyncScheduler").is_empty());
}

// ---------------------------------------------------------------- staging mode

/// An engine whose scheduler reports `staging` mode, whose runs all succeed and whose last run
/// result names `profile`.
fn succeeding_engine(staging: bool, profile: &str) -> (Arc<FakeRunner>, AdsyncEngine<FakeRunner>) {
    let fake = Arc::new(FakeRunner::new());
    let e = engine(&fake);
    fake.always(
        "Get-ADSyncScheduler",
        Ok(scheduler(false, false, false, staging)),
    )
    .always(
        "Get-ADSyncRunProfileResult",
        Ok(run(7, profile, true, "success")),
    )
    .always(
        "Invoke-ADSyncRunProfile",
        Ok(json!([{"Result": "success"}])),
    );
    (fake, e)
}

#[tokio::test]
async fn staging_mode_refuses_exports_and_unknown_steps_but_runs_imports_and_syncs() {
    let (fake, e) = succeeding_engine(true, "Full Import");
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    for refused in ["Export", "Import and Export", "Custom", "Not Listed"] {
        let out = e.execute(AD, refused, tx.clone()).await.unwrap();
        assert_eq!(out.result, vocab::STAGING_MODE_REFUSED, "{refused}");
        assert_eq!(out.run_number, None);
    }
    assert!(fake.calls_of("Invoke-ADSyncRunProfile").is_empty());
    assert_eq!(
        vocab::classify(vocab::STAGING_MODE_REFUSED),
        ResultClass::GuardRail
    );
    for allowed in ["Full Import", "Delta Import", "Delta Synchronization"] {
        let out = e.execute(AD, allowed, tx.clone()).await.unwrap();
        assert_eq!(out.result, "success", "{allowed}");
    }
    assert_eq!(fake.calls_of("Invoke-ADSyncRunProfile").len(), 3);
    assert!(e.info().version.contains("staging mode"), "{:?}", e.info());
}

#[tokio::test]
async fn without_staging_mode_exports_run() {
    let (fake, e) = succeeding_engine(false, "Export");
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let out = e.execute(AD, "Export", tx).await.unwrap();
    assert_eq!(out.result, "success");
    assert_eq!(
        fake.calls_of("Invoke-ADSyncRunProfile"),
        vec![json!({"ConnectorName": AD, "RunProfileName": "Export"})]
    );
}

// ---------------------------------------------------------------- execute, status, stop

#[tokio::test]
async fn execute_reports_the_result_string_and_the_new_run_number() {
    let fake = Arc::new(FakeRunner::new());
    let e = engine(&fake);
    fake.always(
        "Get-ADSyncScheduler",
        Ok(scheduler(false, false, false, false)),
    )
    .then(
        "Get-ADSyncRunProfileResult",
        Ok(run(41, "Export", true, "success")),
    )
    .then(
        "Invoke-ADSyncRunProfile",
        Ok(json!([{"Result": "completed-export-errors"}])),
    )
    .then(
        "Get-ADSyncRunProfileResult",
        Ok(run(42, "Export", true, "completed-export-errors")),
    );
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let out = e.execute(AD, "Export", tx.clone()).await.unwrap();
    assert_eq!(out.result, "completed-export-errors");
    assert_eq!(out.run_number, Some(42));
    assert_eq!(
        fake.calls_of("Get-ADSyncRunProfileResult")[0],
        json!({"ConnectorId": AD_ID, "NumberRequested": 1})
    );

    // A run that did not start leaves the newest run as it was: no run number.
    fake.then(
        "Get-ADSyncRunProfileResult",
        Ok(run(42, "Export", true, "success")),
    )
    .then(
        "Invoke-ADSyncRunProfile",
        Ok(json!("no-start-ma-already-running")),
    )
    .then(
        "Get-ADSyncRunProfileResult",
        Ok(run(42, "Export", true, "success")),
    );
    let out = e.execute(AD, "Export", tx).await.unwrap();
    assert_eq!(out.result, "no-start-ma-already-running");
    assert_eq!(out.run_number, None);
}

#[tokio::test]
async fn a_powershell_error_during_a_run_is_a_call_failure_with_its_message() {
    let fake = Arc::new(FakeRunner::new());
    let e = engine(&fake);
    fake.always("Get-ADSyncScheduler", Ok(scheduler(false, false, false, false)))
        .always("Get-ADSyncRunProfileResult", Ok(json!([])))
        .then(
            "Invoke-ADSyncRunProfile",
            Err(FakeRunner::ps_error(
                "Invoke-ADSyncRunProfile",
                "Unable to start run profile: 0x8023063d other synchronization run profile is already running",
            )),
        );
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let out = e.execute(AD, "Export", tx).await.unwrap();
    assert!(
        out.result.starts_with("call-failure: Unable to start"),
        "{}",
        out.result
    );
    assert_eq!(vocab::classify(&out.result), ResultClass::Busy);
}

#[tokio::test(start_paused = true)]
async fn the_run_number_is_reported_while_the_run_executes() {
    let fake = Arc::new(FakeRunner::new());
    let e = Arc::new(engine(&fake));
    fake.hold_invoke.store(true, Ordering::SeqCst);
    fake.always(
        "Get-ADSyncScheduler",
        Ok(scheduler(false, false, false, false)),
    )
    .then(
        "Get-ADSyncRunProfileResult",
        Ok(run(41, "Export", true, "success")),
    )
    .then(
        "Get-ADSyncRunProfileResult",
        Ok(run(41, "Export", true, "success")),
    )
    .always(
        "Get-ADSyncRunProfileResult",
        Ok(run(42, "Export", false, "in-progress")),
    )
    .always(
        "Invoke-ADSyncRunProfile",
        Ok(json!([{"Result": "success"}])),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn({
        let e = Arc::clone(&e);
        async move { e.execute(AD, "Export", tx).await }
    });
    let p = rx.recv().await.unwrap();
    assert_eq!(p.run_number, 42);
    assert!(!task.is_finished());
    fake.release.notify_one();
    let out = task.await.unwrap().unwrap();
    assert_eq!(out.run_number, Some(42));
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_powershell_process_died_is_followed_to_its_result() {
    let fake = Arc::new(FakeRunner::new());
    let e = engine(&fake);
    fake.always(
        "Get-ADSyncScheduler",
        Ok(scheduler(false, false, false, false)),
    )
    .then(
        "Get-ADSyncRunProfileResult",
        Ok(run(41, "Export", true, "success")),
    )
    .then(
        "Invoke-ADSyncRunProfile",
        Err(AdsyncError::Died {
            command: INVOKE_RUN_PROFILE.into(),
            detail: "exit code 0xC000013A".into(),
        }),
    )
    .then(
        "Get-ADSyncConnectorRunStatus",
        Ok(json!([{"ConnectorName": AD, "RunState": "Busy"}])),
    )
    .then(
        "Get-ADSyncRunProfileResult",
        Ok(run(42, "Export", false, "in-progress")),
    )
    .then("Get-ADSyncConnectorRunStatus", Ok(json!([])))
    .then(
        "Get-ADSyncRunProfileResult",
        Ok(run(42, "Export", true, "completed-export-errors")),
    );
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let out = e.execute(AD, "Export", tx.clone()).await.unwrap();
    assert_eq!(out.result, "completed-export-errors");
    assert_eq!(out.run_number, Some(42));

    // No new run in the engine: the failure is reported, not invented as a result.
    fake.then(
        "Get-ADSyncRunProfileResult",
        Ok(run(42, "Export", true, "success")),
    )
    .then(
        "Invoke-ADSyncRunProfile",
        Err(AdsyncError::Died {
            command: INVOKE_RUN_PROFILE.into(),
            detail: "exit code 1".into(),
        }),
    )
    .then("Get-ADSyncConnectorRunStatus", Ok(json!([])))
    .then(
        "Get-ADSyncRunProfileResult",
        Ok(run(42, "Export", true, "success")),
    );
    let err = e.execute(AD, "Export", tx).await.unwrap_err();
    assert!(err.to_string().contains("no run after run 42"), "{err}");
}

#[tokio::test]
async fn status_is_idle_on_an_empty_run_status_and_busy_with_the_running_profile() {
    let fake = Arc::new(FakeRunner::new());
    let e = engine(&fake);
    fake.then("Get-ADSyncConnectorRunStatus", Ok(json!([])));
    assert_eq!(e.status(AD).await.unwrap(), MaStatus::Idle);

    fake.then(
        "Get-ADSyncConnectorRunStatus",
        Ok(json!([{"ConnectorName": "contoso.onmicrosoft.com - AAD", "RunState": "Busy"}])),
    );
    assert_eq!(e.status(AD).await.unwrap(), MaStatus::Idle);

    fake.then(
        "Get-ADSyncConnectorRunStatus",
        Ok(json!([{"ConnectorName": AD, "RunState": "Busy"}])),
    )
    .then(
        "Get-ADSyncRunProfileResult",
        Ok(run(43, "Delta Import", false, "in-progress")),
    );
    assert_eq!(
        e.status(AD).await.unwrap(),
        MaStatus::InProgress {
            profile: "Delta Import".into(),
            run_number: 43
        }
    );
}

#[tokio::test]
async fn stop_uses_stop_adsyncrunprofile_only_when_the_connector_runs() {
    let fake = Arc::new(FakeRunner::new());
    let e = engine(&fake);
    fake.then("Get-ADSyncConnectorRunStatus", Ok(json!([])));
    assert_eq!(e.stop(AD).await.unwrap(), NOT_RUNNING);
    assert!(fake.calls_of("Stop-ADSyncRunProfile").is_empty());

    fake.then(
        "Get-ADSyncConnectorRunStatus",
        Ok(json!([{"ConnectorName": AD, "RunState": "Busy"}])),
    )
    .then(
        "Get-ADSyncRunProfileResult",
        Ok(run(43, "Export", false, "in-progress")),
    )
    .then("Stop-ADSyncRunProfile", Ok(json!([])));
    assert_eq!(e.stop(AD).await.unwrap(), "success");
    assert_eq!(
        fake.calls_of("Stop-ADSyncRunProfile"),
        vec![json!({"ConnectorName": AD})]
    );
}

#[tokio::test]
async fn a_powershell_error_surfaces_with_its_message() {
    let fake = Arc::new(FakeRunner::new());
    let e = AdsyncEngine::new(Arc::clone(&fake), cfg()).unwrap();
    fake.always(
        "Get-ADSyncConnector",
        Err(FakeRunner::ps_error(
            "Get-ADSyncConnector",
            "The sync command or cmdlet is not available",
        )),
    )
    .always(
        "Get-ADSyncScheduler",
        Err(FakeRunner::ps_error(
            "Get-ADSyncScheduler",
            "The ADSync service is not running",
        )),
    );
    let err = e.inventory().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("The sync command or cmdlet is not available"),
        "{err}"
    );
    let h = e.health().await;
    assert!(!h.healthy);
    assert!(
        h.detail.contains("The ADSync service is not running"),
        "{}",
        h.detail
    );
}

// ---------------------------------------------------------------- inventory, run details

#[tokio::test]
async fn inventory_lists_connectors_with_their_run_profiles_and_steps() {
    let fake = Arc::new(FakeRunner::new());
    let e = engine(&fake);
    let mas = e.inventory().await.unwrap();
    assert_eq!(mas.len(), 1);
    let ma = &mas[0];
    assert_eq!(ma.name, AD);
    assert_eq!(ma.guid, format!("{{{}}}", AD_ID.to_ascii_uppercase()));
    assert_eq!(ma.ma_type, "AD");
    let steps = |p: &str| -> Vec<String> {
        ma.profile(p)
            .unwrap()
            .steps
            .iter()
            .map(|s| format!("{}/{}", s.step_type, s.subtype))
            .collect()
    };
    assert_eq!(steps("Full Import"), ["full-import/to-cs"]);
    assert_eq!(steps("Delta Import"), ["delta-import/to-cs"]);
    assert_eq!(
        steps("Delta Synchronization"),
        ["apply-rules/apply-pending"]
    );
    assert_eq!(
        steps("Import and Export"),
        ["delta-import/to-cs", "export/"]
    );
    assert!(steps("Custom").is_empty());
}

#[tokio::test]
async fn steps_are_read_from_any_step_property_and_a_connector_without_profiles_gets_the_standard_ones()
 {
    let fake = Arc::new(FakeRunner::new());
    // As the host sends them: every property present, missing ones as "".
    fake.always(
        "Get-ADSyncConnector",
        Ok(json!([
            {"Name": AD, "Identifier": AD_ID, "ConnectorTypeName": "", "Type": "AD",
             "RunProfiles": [{"Name": "Delta Import and Sync", "RunSteps": [
                {"Type": "", "TaskType": "DeltaImport", "StepType": "", "PartitionName": "DC=contoso,DC=com"},
                {"Type": "", "TaskType": "DeltaSynchronization", "StepType": "", "PartitionName": ""}
             ]}]},
            {"Name": "contoso.onmicrosoft.com - AAD", "Identifier": "b891884f-051e-4a83-95af-2544101c9083",
             "ConnectorTypeName": "Extensible2", "Type": "", "RunProfiles": []}
        ])),
    );
    let e = AdsyncEngine::new(Arc::clone(&fake), cfg()).unwrap();
    let mas = e.inventory().await.unwrap();
    let ad = mas.iter().find(|m| m.name == AD).unwrap();
    assert_eq!(ad.ma_type, "AD");
    let p = ad.profile("Delta Import and Sync").unwrap();
    assert_eq!(p.steps.len(), 2);
    assert_eq!(p.steps[0].step_type, "delta-import");
    assert_eq!(p.steps[0].partition, "DC=contoso,DC=com");
    assert_eq!(p.steps[1].subtype, "apply-pending");
    let aad = mas.iter().find(|m| m.name != AD).unwrap();
    let names: Vec<&str> = aad.run_profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, STANDARD_PROFILES);
    assert_eq!(aad.profile("Export").unwrap().steps[0].step_type, "export");
}

#[tokio::test]
async fn run_details_become_run_history_xml_with_counters() {
    let fake = Arc::new(FakeRunner::new());
    let e = engine(&fake);
    let mut result = run(42, "Delta Import", true, "success");
    result[0]["RunStepResults"] = json!([{
        "StepNumber": 1,
        "StepResult": "success",
        "StartDate": "2022-04-08T20:13:31.17",
        "EndDate": "/Date(1649448832183)/",
        "StageAdd": 3, "StageUpdate": 2, "StageNoChange": 10,
        "ConnectorFlow": 4, "FlowFailure": 0,
        "ExportAdd": 0,
        "StepXml": "<step-type type=\"delta-import\"><import-subtype>to-cs</import-subtype></step-type><partition>DC=contoso,DC=com</partition>",
        "ConnectorConnectionInformationXml": "<connection-result>success</connection-result><server>dc1.contoso.com:389</server>",
        "SyncErrors": ""
    }]);
    fake.then("Get-ADSyncRunProfileResult", Ok(result));
    let xml = e.run_details(AD, 42).await.unwrap();
    assert_eq!(
        fake.calls_of("Get-ADSyncRunProfileResult")[0],
        json!({"ConnectorId": AD_ID, "RunNumber": 42, "RunStepDetails": true})
    );
    let parsed = runhistory::parse_one(&xml).unwrap();
    assert_eq!(parsed.run_number, 42);
    assert_eq!(parsed.profile, "Delta Import");
    let step = &parsed.steps[0];
    assert_eq!(step.result, "success");
    assert_eq!(step.step_type, "delta-import");
    assert_eq!(step.partition, "DC=contoso,DC=com");
    assert_eq!(step.counters.get("stage-add"), Some(&3));
    assert_eq!(step.counters.get("connector-flow"), Some(&4));
    assert_eq!(
        step.started_at.map(|t| t.to_rfc3339()),
        Some("2022-04-08T20:13:31.170+00:00".to_owned())
    );

    // A malformed fragment: the counters are still reported.
    let mut bad = run(43, "Export", true, "success");
    bad[0]["RunStepResults"] = json!([{"StepNumber": 1, "StepResult": "success", "StepXml": "<step-type", "ExportAdd": 5}]);
    fake.then("Get-ADSyncRunProfileResult", Ok(bad));
    let xml = e.run_details(AD, 43).await.unwrap();
    let parsed = runhistory::parse_one(&xml).unwrap();
    assert_eq!(parsed.steps[0].counters.get("export-add"), Some(&5));

    fake.then("Get-ADSyncRunProfileResult", Ok(json!([])));
    assert!(matches!(
        e.run_details(AD, 44).await,
        Err(crate::engine::EngineError::NoSuchRun { run_number: 44, .. })
    ));
}

// ---------------------------------------------------------------- the process runner

fn stand_in(extra: &[&str]) -> AdsyncConfig {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/engine/adsync/stand_in.py");
    let mut args = vec![script.to_owned()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    AdsyncConfig {
        powershell: "python3".into(),
        host_args: Some(args),
        start_timeout: Duration::from_secs(20),
        call_timeout: Duration::from_secs(20),
        ..AdsyncConfig::default()
    }
}

async fn pid(r: &ProcessRunner) -> u64 {
    r.call("Test-Pid", json!({})).await.unwrap()[0]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn the_process_runner_speaks_the_protocol_and_skips_host_output() {
    let r = ProcessRunner::new(stand_in(&[]));
    let out = r.call("Get-ADSyncScheduler", json!({})).await.unwrap();
    let s = SchedulerState::parse(&out).unwrap();
    assert!(s.sync_cycle_enabled);
    assert!(!s.staging_mode_enabled);
    assert_eq!(r.call("Test-Noise", json!({})).await.unwrap(), json!([]));
    assert_eq!(
        r.call("Test-Wrapped", json!({})).await.unwrap(),
        json!([1, 2])
    );
    // The same process answers every control call.
    let first = pid(&r).await;
    assert_eq!(pid(&r).await, first);
}

#[tokio::test]
async fn a_cmdlet_error_comes_back_with_its_message_and_keeps_the_process() {
    let r = ProcessRunner::new(stand_in(&[]));
    let before = pid(&r).await;
    let err = r.call("Get-Nothing", json!({})).await.unwrap_err();
    assert_eq!(
        err,
        AdsyncError::PowerShell {
            command: "Get-Nothing".into(),
            message: "The term 'Get-Nothing' is not recognized".into(),
            category: "ObjectNotFound".into(),
        }
    );
    assert_eq!(pid(&r).await, before);
}

#[tokio::test]
async fn a_call_past_its_timeout_ends_the_process_and_the_next_call_starts_another() {
    let mut cfg = stand_in(&[]);
    cfg.call_timeout = Duration::from_millis(500);
    let r = ProcessRunner::new(cfg);
    let before = pid(&r).await;
    let err = r
        .call("Test-Sleep", json!({"Seconds": 30}))
        .await
        .unwrap_err();
    assert!(matches!(err, AdsyncError::Timeout { .. }), "{err}");
    assert_eq!(r.control_pid().await, None);
    assert_ne!(pid(&r).await, before);
}

#[tokio::test]
async fn a_process_that_dies_is_reported_with_its_stderr_and_replaced() {
    let r = ProcessRunner::new(stand_in(&[]));
    let before = pid(&r).await;
    let err = r.call("Test-Exit", json!({})).await.unwrap_err();
    let AdsyncError::Died { detail, .. } = &err else {
        panic!("{err}");
    };
    assert!(detail.contains("stand-in: exiting on request"), "{detail}");
    assert!(detail.contains('7'), "{detail}");
    assert_ne!(pid(&r).await, before);
}

#[tokio::test]
async fn an_answer_longer_than_the_limit_is_refused_and_the_process_replaced() {
    let mut cfg = stand_in(&[]);
    cfg.max_line_bytes = MIN_LINE_BYTES;
    let r = ProcessRunner::new(cfg);
    let before = pid(&r).await;
    let ok = r.call("Test-Big", json!({"Bytes": 1000})).await.unwrap();
    assert_eq!(ok[0].as_str().map(str::len), Some(1000));
    let err = r
        .call("Test-Big", json!({"Bytes": MIN_LINE_BYTES * 2}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_line_bytes"), "{err}");
    assert_ne!(pid(&r).await, before);
}

#[tokio::test]
async fn a_host_that_cannot_load_the_module_fails_to_start_with_its_reason() {
    let r = ProcessRunner::new(stand_in(&["--fail-start"]));
    let err = r.call("Get-ADSyncScheduler", json!({})).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AdsyncError::Start(_)), "{msg}");
    assert!(msg.contains("'ADSync' was not loaded"), "{msg}");
}

#[tokio::test]
async fn a_missing_powershell_is_a_start_error_naming_the_setting() {
    let mut cfg = stand_in(&[]);
    cfg.powershell = "/nonexistent/powershell.exe".into();
    let err = ProcessRunner::new(cfg)
        .call("Get-ADSyncScheduler", json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("engine.powershell"), "{err}");
}

#[tokio::test]
async fn a_run_has_no_call_timeout_and_does_not_block_control_calls() {
    let mut cfg = stand_in(&[]);
    cfg.call_timeout = Duration::from_millis(700);
    let r = Arc::new(ProcessRunner::new(cfg));
    let control = pid(&r).await;
    // The stand-in's run takes 2 s, longer than the call timeout.
    let run = tokio::spawn({
        let r = Arc::clone(&r);
        async move {
            r.call(
                INVOKE_RUN_PROFILE,
                json!({"ConnectorName": AD, "RunProfileName": "2"}),
            )
            .await
        }
    });
    // Control calls answer while the run holds its own process.
    let status = r
        .call("Get-ADSyncConnectorRunStatus", json!({}))
        .await
        .unwrap();
    assert_eq!(status, json!([]));
    assert!(
        !run.is_finished(),
        "the run ended before the control call answered"
    );
    assert_eq!(pid(&r).await, control);
    let out = run.await.unwrap().unwrap();
    assert_eq!(out, json!([{"Result": "success"}]));
}

#[test]
fn requests_are_ascii_and_decode_to_the_same_value() {
    let v = json!({"ConnectorName": "Bücher AG – 東京 😀", "RunProfileName": "Export"});
    let text = ascii_json(&v.to_string());
    assert!(text.is_ascii(), "{text}");
    assert!(text.contains("\\u00fc"), "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
}

#[tokio::test]
async fn non_ascii_connector_names_round_trip_through_a_real_process() {
    let r = ProcessRunner::new(stand_in(&[]));
    let name = "Bücher AG – 東京 😀";
    let out = r.call("Test-Echo", json!({"Text": name})).await.unwrap();
    assert_eq!(out, json!([name]));
}

#[test]
fn the_host_script_is_passed_encoded_and_whitelists_the_cmdlets() {
    use base64::Engine as _;
    let args = AdsyncConfig::default().args(HOST_SCRIPT);
    assert_eq!(
        &args[..5],
        [
            "-NoProfile",
            "-NonInteractive",
            "-ExecutionPolicy",
            "Bypass",
            "-EncodedCommand"
        ]
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&args[5])
        .unwrap();
    let units: Vec<u16> = bytes
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(String::from_utf16(&units).unwrap(), HOST_SCRIPT);
    for cmdlet in [
        "Get-ADSyncConnector",
        "Get-ADSyncConnectorRunStatus",
        "Get-ADSyncRunProfileResult",
        INVOKE_RUN_PROFILE,
        "Stop-ADSyncRunProfile",
        "Get-ADSyncScheduler",
        "Set-ADSyncScheduler",
    ] {
        assert!(HOST_SCRIPT.contains(&format!("'{cmdlet}'")), "{cmdlet}");
    }
}
