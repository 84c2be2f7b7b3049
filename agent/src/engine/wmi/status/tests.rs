//! Result strings and driver errors of failed WMI calls, and the pure helpers.

use syncfleet_proto::vocab::{self, ResultClass};

use crate::engine::wmi::fake::*;
use crate::engine::wmi::*;
use crate::engine::*;

#[test]
fn error_mapping() {
    let busy = result_from_error(&WmiError::Com {
        hresult: hresult::CONCURRENT_SYNC,
        message: String::new(),
    });
    assert_eq!(busy, "call-failure: 0x8023063d");
    assert_eq!(vocab::classify(&busy), ResultClass::Busy);
    assert_eq!(
        result_from_error(&WmiError::Com {
            hresult: 0x8004_1004,
            message: "provider failure".into()
        }),
        "call-failure: 0x80041004 provider failure"
    );
    assert_eq!(
        result_from_error(&WmiError::com(hresult::WBEM_E_TRANSPORT_FAILURE)),
        CONNECTION_FAILURE
    );
    assert_eq!(
        result_from_error(&WmiError::Other("no ReturnValue".into())),
        "call-failure: no ReturnValue"
    );

    let nf = WmiError::com(hresult::WBEM_E_NOT_FOUND);
    assert!(matches!(engine_error(Some("A"), "Stop", &nf), EngineError::NoSuchMa(m) if m == "A"));
    assert!(matches!(
        engine_error(None, "list", &nf),
        EngineError::Unavailable(_)
    ));
    assert!(matches!(
        engine_error(
            Some("A"),
            "Stop",
            &WmiError::com(hresult::WBEM_E_INVALID_CLASS)
        ),
        EngineError::Config(_)
    ));
    assert!(matches!(
        engine_error(
            Some("A"),
            "Stop",
            &WmiError::com(hresult::RPC_E_DISCONNECTED)
        ),
        EngineError::Unavailable(_)
    ));
    assert!(WmiError::com(hresult::RPC_E_DISCONNECTED).is_service_lost());
    assert!(!WmiError::com(hresult::WBEM_E_NOT_FOUND).is_service_lost());
}

#[test]
fn pure_helpers() {
    assert_eq!(
        ma_path("Fabrikam HR MA"),
        r#"MIIS_ManagementAgent.Name="Fabrikam HR MA""#
    );
    assert_eq!(
        ma_path(r#"a"b\c"#),
        r#"MIIS_ManagementAgent.Name="a\"b\\c""#
    );
    assert_eq!(
        run_history_path(EXPORT_GUID, 2590),
        r#"MIIS_RunHistory.Key="{FB0D00E1-4E0B-44DA-AF5F-62D4D99B2FBC}2590""#
    );
    assert_eq!(
        normalize_guid(" fb0d00e1-4e0b-44da-af5f-62d4d99b2fbc "),
        EXPORT_GUID
    );
    assert_eq!(normalize_guid(EXPORT_GUID), EXPORT_GUID);
    const EXE: &str =
        r"C:\Program Files\Microsoft Forefront Identity Manager\2010\Bin\miiserver.exe";
    let quoted = format!("\"{EXE}\" -x");
    assert_eq!(exe_from_service_path(&quoted).as_deref(), Some(EXE));
    assert_eq!(
        exe_from_service_path(r"C:\S\Bin\miiserver.exe /y").as_deref(),
        Some(r"C:\S\Bin\miiserver.exe")
    );
    assert_eq!(exe_from_service_path("  "), None);
    assert_eq!(parse_run_number(""), Ok(None));
    assert_eq!(parse_run_number(" 17 "), Ok(Some(17)));
    assert_eq!(parse_run_number("call-failure"), Err("call-failure".into()));
    assert!(refused_to_start("no-start-ma-update-in-progress"));
    assert!(!refused_to_start("stopped-connectivity"));
    assert!(is_provider_failure(" Connection-Failure "));
    assert!(!is_provider_failure("success"));
    assert_eq!(
        progress_of(&export_in_progress_xml("3/9"), 2590),
        Some(Some("3/9".into()))
    );
    assert_eq!(progress_of(EXPORT_SAMPLE, 2590), Some(None));
    assert_eq!(progress_of(EXPORT_SAMPLE, 1), None);
    assert_eq!(progress_of("connection-failure", 1), None);
    // Progress of the step still running in a two-step run: DS sample, step 2 unfinished.
    let running = DS_SAMPLE
        .replace("<end-date>2017-01-04 23:00:58.987</end-date>", "")
        .replace(
            "<step-result>stopped-connectivity</step-result>",
            "<step-result progress=\"5/46\">in-progress</step-result>",
        );
    assert_eq!(progress_of(&running, 1879), Some(Some("5/46".into())));
    for c in PendingCounter::ALL {
        assert!(c.method().starts_with("Num"));
    }
}
