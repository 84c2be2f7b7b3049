//! `Execute` through the driver over a scripted WMI surface.

use std::time::Duration;

use syncfleet_proto::vocab::{self, ResultClass};

use crate::engine::wmi::fake::*;
use crate::engine::wmi::*;
use crate::engine::*;

/// Runs `profile` of `ma` once on `e`, dropping its progress reports.
async fn execute(
    e: &WmiEngine<FakeWmi>,
    ma: &str,
    profile: &str,
) -> Result<ExecuteOutcome, EngineError> {
    let (tx, _rx) = sink();
    e.execute(ma, profile, tx).await
}

#[tokio::test]
async fn plain_success_gives_run_number_and_parsable_details() {
    let fake = FakeWmi::new()
        .with_state(EXPORT_MA, |s| s.run_number = "2589".into())
        .plan(ExecPlan {
            final_xml: Some(export_success_xml()),
            ..ExecPlan::returns("success")
        });
    let e = engine(fake);
    let out = execute(&e, EXPORT_MA, "Export").await.unwrap();
    assert_eq!(out.result, "success");
    assert_eq!(out.run_number, Some(2590));

    let xml = e.run_details(EXPORT_MA, 2590).await.unwrap();
    let run = runhistory::parse_one(&xml).unwrap();
    assert_eq!(run.run_number, 2590);
    assert_eq!(run.result(), Some("success"));
    let step = &run.steps[0];
    assert_eq!(step.step_type, "export");
    assert!(step.counters.contains_key("export-update"));
    assert!(!step.errors.first.is_empty());
}

#[tokio::test]
async fn engine_result_string_is_kept_verbatim_with_the_sample_counters() {
    let fake = FakeWmi::new()
        .with_state(DS_MA, |s| s.run_number = "1878".into())
        .plan(ExecPlan {
            final_xml: Some(DS_SAMPLE.to_owned()),
            ..ExecPlan::returns("stopped-connectivity")
        });
    let e = engine(fake);
    let out = execute(&e, DS_MA, "DS_DELTAIMPORT").await.unwrap();
    assert_eq!(out.result, "stopped-connectivity");
    assert_eq!(out.run_number, Some(1879));
    let run = runhistory::parse_one(&e.run_details(DS_MA, 1879).await.unwrap()).unwrap();
    assert_eq!(run.result(), Some("stopped-connectivity"));
    assert_eq!(run.steps.len(), 2);
    assert_eq!(
        run.steps[1].connection_result.as_deref(),
        Some("failed-search")
    );
}

#[tokio::test]
async fn completing_result_is_polled_until_final() {
    let fake = FakeWmi::new()
        .with_state(EXPORT_MA, |s| s.run_number = "7".into())
        .plan(ExecPlan {
            statuses_after: vec![
                "completing-referential-updates".into(),
                "completing-referential-updates".into(),
                "completing-referential-updates".into(),
                "completed-sync-errors".into(),
            ],
            ..ExecPlan::returns("completing-referential-updates")
        });
    let e = engine(fake);
    let out = execute(&e, EXPORT_MA, "Delta Sync").await.unwrap();
    assert_eq!(out.result, "completed-sync-errors");
    assert_eq!(out.run_number, Some(8));
    assert!(e.api().calls("run_status") >= 4);
}

#[tokio::test]
async fn completing_result_that_cannot_be_read_is_reported_raw() {
    let fake = FakeWmi::new()
        .plan(ExecPlan::returns("completing-obsoletion"))
        .failing("run_status", WmiError::com(hresult::RPC_E_DISCONNECTED));
    let e = engine(fake);
    let out = execute(&e, EXPORT_MA, "Full Import").await.unwrap();
    assert_eq!(out.result, "completing-obsoletion");
    assert_eq!(out.run_number, Some(1));
    assert_eq!(e.api().calls("run_status"), MAX_SETTLE_FAILURES as usize);
}

#[tokio::test]
async fn completing_settles_from_history_when_a_later_run_started() {
    let final_xml = renumbered(&export_success_xml(), 1);
    let fake = FakeWmi::new().plan(ExecPlan {
        wait_for_gate: true,
        final_xml: Some(final_xml),
        ..ExecPlan::returns("completing-referential-updates")
    });
    let gate = fake.gate();
    let e = engine(fake);
    let (tx, mut rx) = sink();
    let exec = e.execute(EXPORT_MA, "Export", tx);
    // Once the driver knows run 1, let Execute return `completing-*`; then another run
    // (number 2) starts while the driver waits for run 1 to settle.
    let other_run = async {
        assert_eq!(rx.recv().await.unwrap().run_number, 1);
        gate.send(()).unwrap();
        loop {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let mut i = e.api().inner.lock().unwrap();
            let st = i.state.get_mut(EXPORT_MA).unwrap();
            if st.run_status.starts_with("completing") {
                st.run_number = "2".into();
                st.run_status = "in-progress".into();
                st.statuses.clear();
                break;
            }
        }
    };
    let (out, ()) = tokio::join!(exec, other_run);
    let out = out.unwrap();
    assert_eq!(out.run_number, Some(1));
    assert_eq!(out.result, "success", "run 1's result from MIIS_RunHistory");
    assert_eq!(e.api().calls("history_details"), 1);
}

#[tokio::test]
async fn concurrent_sync_com_error_is_busy() {
    let fake = FakeWmi::new().plan(ExecPlan::refused(Err(WmiError::com(
        hresult::CONCURRENT_SYNC,
    ))));
    let e = engine(fake);
    let out = execute(&e, EXPORT_MA, "Delta Sync").await.unwrap();
    assert!(
        out.result.starts_with("call-failure: 0x8023063d"),
        "{}",
        out.result
    );
    assert_eq!(vocab::classify(&out.result), ResultClass::Busy);
    assert_eq!(out.run_number, None);
}

#[tokio::test]
async fn concurrent_sync_in_a_message_or_string_is_busy() {
    // A non-COM error whose text carries the HRESULT (e.g. the engine's BAIL text).
    let fake = FakeWmi::new().plan(ExecPlan::refused(Err(WmiError::Other(
        "BAIL: MMS(3120): ..\\ma.cpp(3419): 0x8023063D (The operation cannot be performed)".into(),
    ))));
    let e = engine(fake);
    let out = execute(&e, EXPORT_MA, "Delta Sync").await.unwrap();
    assert_eq!(vocab::classify(&out.result), ResultClass::Busy);
    assert!(out.result.contains("0x8023063d"));
    assert_eq!(out.run_number, None);

    // The same refusal returned as the Execute string: verbatim.
    let refusal = "call-failure: 0x8023063D other synchronization run profile is already running";
    let fake = FakeWmi::new().plan(ExecPlan::refused(Ok(refusal.into())));
    let e = engine(fake);
    let out = execute(&e, EXPORT_MA, "Delta Sync").await.unwrap();
    assert_eq!(out.result, refusal);
    assert_eq!(vocab::classify(&out.result), ResultClass::Busy);
    assert_eq!(out.run_number, None);
}

#[tokio::test]
async fn provider_strings_pass_through_verbatim() {
    for s in [CALL_FAILURE, CONNECTION_FAILURE, ACCESS_DENIED] {
        let e = engine(FakeWmi::new().plan(ExecPlan::refused(Ok(s.into()))));
        let out = execute(&e, EXPORT_MA, "Export").await.unwrap();
        assert_eq!(out.result, s);
        assert_eq!(out.run_number, None, "{s}");
    }
}

#[tokio::test]
async fn other_com_errors_become_call_failure_with_the_hresult() {
    let e = engine(FakeWmi::new().plan(ExecPlan::refused(Err(WmiError::com(
        hresult::WBEM_E_ACCESS_DENIED,
    )))));
    let out = execute(&e, EXPORT_MA, "Export").await.unwrap();
    assert!(
        out.result
            .starts_with("call-failure: 0x80041003 WBEM_E_ACCESS_DENIED"),
        "{}",
        out.result
    );
    assert_eq!(out.run_number, None);
}

#[tokio::test]
async fn lost_service_is_connection_failure() {
    let e = engine(FakeWmi::new().plan(ExecPlan::refused(Err(WmiError::com(
        hresult::RPC_S_SERVER_UNAVAILABLE,
    )))));
    let out = execute(&e, EXPORT_MA, "Export").await.unwrap();
    assert_eq!(out.result, CONNECTION_FAILURE);
    assert_eq!(vocab::classify(&out.result), ResultClass::TransientExternal);
    assert_eq!(out.run_number, None);
}

#[tokio::test]
async fn connection_lost_mid_run_follows_the_run_to_its_end() {
    let e = engine(FakeWmi::new().plan(ExecPlan {
        result: Err(WmiError::com(hresult::RPC_E_DISCONNECTED)),
        statuses_after: vec!["in-progress".into(), "in-progress".into(), "success".into()],
        ..ExecPlan::returns("")
    }));
    let out = execute(&e, EXPORT_MA, "Export").await.unwrap();
    assert_eq!(out.result, "success");
    assert_eq!(out.run_number, Some(1));
}

#[tokio::test]
async fn no_start_has_no_run_number_even_if_the_number_moved() {
    // A foreign run started on the MA between the snapshot and Execute.
    let fake = FakeWmi::new()
        .with_state(EXPORT_MA, |s| s.run_number = "4".into())
        .plan(ExecPlan {
            starts_run: true,
            statuses_after: vec!["in-progress".into()],
            ..ExecPlan::refused(Ok("no-start-ma-already-running".into()))
        });
    let e = engine(fake);
    let out = execute(&e, EXPORT_MA, "Export").await.unwrap();
    assert_eq!(out.result, "no-start-ma-already-running");
    assert_eq!(out.run_number, None);

    let e = engine(FakeWmi::new().plan(ExecPlan::refused(Ok(
        "no-start-unknown-profile-name".into(),
    ))));
    let out = execute(&e, EXPORT_MA, "Nope").await.unwrap();
    assert_eq!(out.run_number, None);
}

#[tokio::test]
async fn run_number_detection() {
    // Never run (empty RunNumber) → the first run is 1.
    let e = engine(FakeWmi::new().plan(ExecPlan::returns("success")));
    assert_eq!(
        execute(&e, EXPORT_MA, "Export").await.unwrap().run_number,
        Some(1)
    );

    // A result that is not no-start but came without a new run number: None.
    let e = engine(
        FakeWmi::new()
            .with_state(EXPORT_MA, |s| s.run_number = "41".into())
            .plan(ExecPlan::refused(Ok("stopped-server".into()))),
    );
    let out = execute(&e, EXPORT_MA, "Export").await.unwrap();
    assert_eq!(out.result, "stopped-server");
    assert_eq!(out.run_number, None);

    // RunNumber() itself answers with a provider string: no Execute, the string reported.
    let fake = FakeWmi::new().with_state(EXPORT_MA, |s| s.run_number = "connection-failure".into());
    let e = engine(fake);
    let out = execute(&e, EXPORT_MA, "Export").await.unwrap();
    assert_eq!(out.result, CONNECTION_FAILURE);
    assert_eq!(out.run_number, None);
    assert_eq!(e.api().calls("execute"), 0);

    // Unknown MA.
    let e = engine(FakeWmi::new());
    assert!(matches!(
        execute(&e, "No such MA", "Export").await,
        Err(EngineError::NoSuchMa(m)) if m == "No such MA"
    ));
}

#[tokio::test]
async fn progress_is_streamed_while_execute_blocks() {
    let fake = FakeWmi::new()
        .with_state(EXPORT_MA, |s| s.run_number = "2589".into())
        .plan(ExecPlan {
            in_progress_xml: Some(export_in_progress_xml("10/200")),
            wait_for_gate: true,
            final_xml: Some(EXPORT_SAMPLE.to_owned()),
            ..ExecPlan::returns("completed-export-errors")
        });
    let gate = fake.gate();
    let e = engine(fake);
    let (tx, mut rx) = sink();
    let exec = e.execute(EXPORT_MA, "Export", tx);
    let watch = async {
        let first = rx.recv().await.unwrap();
        // Advance the engine's progress and wait for the driver to report it.
        {
            let mut i = e.api().inner.lock().unwrap();
            i.state.get_mut(EXPORT_MA).unwrap().details = export_in_progress_xml("150/200");
        }
        let second = rx.recv().await.unwrap();
        gate.send(()).unwrap();
        (first, second)
    };
    let (out, (first, second)) = tokio::join!(exec, watch);
    assert_eq!(first.run_number, 2590);
    assert_eq!(first.progress.as_deref(), Some("10/200"));
    assert!(
        first
            .details_xml
            .as_deref()
            .unwrap()
            .contains("<run-number>2590")
    );
    assert_eq!(second.progress.as_deref(), Some("150/200"));
    let out = out.unwrap();
    assert_eq!(out.result, "completed-export-errors");
    assert_eq!(out.run_number, Some(2590));
    // Identical polls are not re-sent.
    let mut rest = 0;
    while let Ok(p) = rx.try_recv() {
        assert_ne!(p, second);
        rest += 1;
    }
    assert!(rest <= 1, "{rest} duplicate events");
}

#[tokio::test]
async fn progress_without_details_still_reports_the_run_number() {
    let fake = FakeWmi::new()
        .with_state(EXPORT_MA, |s| {
            s.run_number = "9".into();
            s.details = "<run-history/>".into();
        })
        .plan(ExecPlan {
            wait_for_gate: true,
            ..ExecPlan::returns("success")
        });
    let gate = fake.gate();
    let e = engine(fake);
    let (tx, mut rx) = sink();
    let exec = e.execute(EXPORT_MA, "Export", tx);
    let watch = async {
        let first = rx.recv().await.unwrap();
        gate.send(()).unwrap();
        first
    };
    let (out, first) = tokio::join!(exec, watch);
    assert_eq!(
        first,
        EngineProgress {
            run_number: 10,
            progress: None,
            details_xml: None
        }
    );
    assert_eq!(out.unwrap().run_number, Some(10));
}
