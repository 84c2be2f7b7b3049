//! Parsing of run profile configuration XML in the engine's shape (fixtures next to this file)
//! and the merge of discovered profiles with declarations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

use std::collections::HashMap;

use super::*;

const AD_DELTA: &str = include_str!("fixtures/ad-delta-import-delta-sync.xml");
const AD_TWO_PARTITIONS: &str = include_str!("fixtures/ad-two-partitions-full-import.xml");
const ECMA_EXPORT_DROP: &str = include_str!("fixtures/ecma2-export-drop-file.xml");
const ECMA_FULL_IMPORT_FULL_SYNC: &str = include_str!("fixtures/ecma2-full-import-full-sync.xml");
const FIM_DELTA_COMBINED: &str = include_str!("fixtures/fim-delta-import-and-delta-sync.xml");
const FULL_IMPORT_TO_FILE: &str = include_str!("fixtures/full-import-to-file-stage-only.xml");
const FULL_SYNC: &str = include_str!("fixtures/full-sync.xml");
const MALFORMED: &str = include_str!("fixtures/malformed-truncated.xml");

const CONTOSO: &str = "{18A58F00-7B2D-4D9F-BA97-C17C4FDD11C4}";
const FABRIKAM: &str = "{C2D4E6F8-1A3B-4C5D-8E9F-0A1B2C3D4E5F}";

fn partitions() -> HashMap<String, String> {
    HashMap::from([
        (CONTOSO.to_owned(), "DC=contoso,DC=com".to_owned()),
        (FABRIKAM.to_owned(), "DC=fabrikam,DC=com".to_owned()),
    ])
}

fn step(t: &str, sub: &str, partition: &str) -> RunStepInfo {
    RunStepInfo {
        step_type: t.into(),
        subtype: sub.into(),
        partition: partition.into(),
    }
}

#[test]
fn multi_step_profile_keeps_order_subtypes_and_partition_names() {
    let p = parse_run_configuration("Delta Import Delta Sync", AD_DELTA, &partitions()).unwrap();
    assert_eq!(p.name, "Delta Import Delta Sync");
    assert_eq!(
        p.steps,
        [
            step("delta-import", "to-cs", "DC=contoso,DC=com"),
            step("apply-rules", "apply-pending", "DC=contoso,DC=com"),
        ]
    );
    assert!(!p.steps[0].is_sync(), "a stage-only import does not sync");
    assert!(p.steps[1].is_sync());
}

#[test]
fn partition_guids_resolve_in_any_case_and_stay_when_unknown() {
    // The first step's GUID is lower case in the XML; the declaration claims utf-16.
    let p = parse_run_configuration("Full Import", AD_TWO_PARTITIONS, &partitions()).unwrap();
    assert_eq!(
        p.steps,
        [
            step("full-import", "to-cs", "DC=contoso,DC=com"),
            step("full-import", "to-cs", "DC=fabrikam,DC=com"),
        ]
    );
    // Without partition names (mms_partition unreadable) the GUIDs are kept verbatim.
    let p = parse_run_configuration("Full Import", AD_TWO_PARTITIONS, &HashMap::new()).unwrap();
    assert_eq!(
        p.steps[0].partition,
        "{18a58f00-7b2d-4d9f-ba97-c17c4fdd11c4}"
    );
    assert_eq!(p.steps[1].partition, FABRIKAM);
}

#[test]
fn every_step_type_and_its_sync_class() {
    let none = HashMap::new();
    let cases: [(&str, RunStepInfo, bool); 5] = [
        (
            ECMA_EXPORT_DROP,
            step(
                "export",
                "to-file",
                "{5D2B8E41-7C36-4F09-A1E2-93B6C0D4F7A8}",
            ),
            false,
        ),
        (
            ECMA_FULL_IMPORT_FULL_SYNC,
            step(
                "full-import-reevaluate-rules",
                "",
                "{5D2B8E41-7C36-4F09-A1E2-93B6C0D4F7A8}",
            ),
            true,
        ),
        (
            FIM_DELTA_COMBINED,
            step("delta-import", "", "{7E9A1B3C-5D7F-4E2A-8B4C-6D8E0F2A4B6C}"),
            true,
        ),
        (
            FULL_SYNC,
            step("apply-rules", "reevaluate-flow-connectors", CONTOSO),
            true,
        ),
        (
            FULL_IMPORT_TO_FILE,
            step("full-import", "to-file, to-cs", CONTOSO),
            false,
        ),
    ];
    for (xml, want, sync) in cases {
        let p = parse_run_configuration("p", xml, &none).unwrap();
        assert_eq!(p.steps.len(), 1, "{xml}");
        assert_eq!(p.steps[0], want, "{xml}");
        assert_eq!(p.steps[0].is_sync(), sync, "{want:?}");
    }
}

#[test]
fn bare_configuration_root_is_accepted() {
    let xml = "<configuration><step><step-type type=\"export\"/><partition>DC=x</partition>\
               </step></configuration>";
    let p = parse_run_configuration("Export", xml, &HashMap::new()).unwrap();
    assert_eq!(p.steps, [step("export", "", "DC=x")]);
}

#[test]
fn bad_profiles_are_errors_naming_the_problem() {
    let none = HashMap::new();
    let e = parse_run_configuration("Broken", MALFORMED, &none).unwrap_err();
    assert!(matches!(e, ProfileXmlError::Xml(_)), "{e}");
    assert!(e.to_string().contains("not well-formed"), "{e}");

    let e = parse_run_configuration(
        "p",
        "<run-configuration><name>p</name><configuration/></run-configuration>",
        &none,
    )
    .unwrap_err();
    assert_eq!(e, ProfileXmlError::NoSteps);

    let e = parse_run_configuration(
        "p",
        "<configuration><step><step-type type=\"export\"/></step>\
         <step><step-type type=\"copy-everything\"/></step></configuration>",
        &none,
    )
    .unwrap_err();
    assert!(
        matches!(&e, ProfileXmlError::UnknownStepType { step: 2, found, .. } if found == "copy-everything"),
        "{e}"
    );

    let e = parse_run_configuration(
        "p",
        "<configuration><step><partition/></step></configuration>",
        &none,
    )
    .unwrap_err();
    assert_eq!(e, ProfileXmlError::NoStepType { step: 1 });

    let e = parse_run_configuration("p", "<ma-data/>", &none).unwrap_err();
    assert_eq!(e, ProfileXmlError::UnexpectedRoot("ma-data".into()));

    let e = parse_run_configuration("p", "", &none).unwrap_err();
    assert!(matches!(e, ProfileXmlError::Xml(_)), "{e}");

    // Entity expansion is refused, not performed.
    let bomb = "<!DOCTYPE r [<!ENTITY a \"aaaa\">]><configuration>&a;</configuration>";
    assert!(matches!(
        parse_run_configuration("p", bomb, &none),
        Err(ProfileXmlError::Xml(_))
    ));

    let huge = format!(
        "<configuration>{}</configuration>",
        " ".repeat(MAX_PROFILE_XML_BYTES)
    );
    assert!(matches!(
        parse_run_configuration("p", &huge, &none),
        Err(ProfileXmlError::TooLarge { .. })
    ));
}

fn row(ma_id: &str, ma: &str, name: &str, xml: &str) -> StoredProfile {
    StoredProfile {
        ma_id: ma_id.into(),
        ma_name: ma.into(),
        name: name.into(),
        configuration_xml: xml.into(),
    }
}

fn standard() -> Vec<RunProfileInfo> {
    vec![RunProfileInfo {
        name: "Standard".into(),
        steps: vec![step("export", "", "")],
    }]
}

fn declared(name: &str, s: RunStepInfo) -> RunProfileInfo {
    RunProfileInfo {
        name: name.into(),
        steps: vec![s],
    }
}

const AD_GUID: &str = "{85098734-66BC-4938-8122-C5F585F463D0}";

fn engine_profiles() -> EngineProfiles {
    EngineProfiles {
        profiles: vec![
            // ma_id as SQL Server prints a uniqueidentifier: no braces, upper case.
            row(
                "85098734-66BC-4938-8122-C5F585F463D0",
                "AD renamed",
                "Delta Import Delta Sync",
                AD_DELTA,
            ),
            row(&AD_GUID.to_lowercase(), "AD", "Full Sync", FULL_SYNC),
            row(AD_GUID, "AD", "Broken", MALFORMED),
            row(AD_GUID, "AD", "Overridden", MALFORMED),
            row(
                "{00000000-0000-0000-0000-000000000001}",
                "HR",
                "Export",
                ECMA_EXPORT_DROP,
            ),
        ],
        partitions: partitions(),
        partitions_unresolved: None,
    }
}

#[test]
fn discovered_profiles_are_matched_by_guid_and_declarations_override() {
    let eng = engine_profiles();
    let m = merge_profiles(
        "AD",
        &AD_GUID.to_lowercase(),
        vec![
            declared("Overridden", step("apply-rules", "apply-pending", "")),
            declared("Only Declared", step("export", "", "")),
        ],
        standard,
        Ok(&eng),
    );
    let names: Vec<&str> = m.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Delta Import Delta Sync",
            "Full Sync",
            "Overridden",
            "Only Declared"
        ]
    );
    assert_eq!(
        m.profiles[2].steps,
        [step("apply-rules", "apply-pending", "")]
    );
    assert_eq!(m.profiles[1].steps[0].partition, "DC=contoso,DC=com");
    // The broken profile is reported, not dropped silently, and the rest is discovered.
    assert_eq!(m.undiscoverable.len(), 1);
    assert_eq!(m.undiscoverable[0].profile, "Broken");
    assert!(matches!(
        m.undiscoverable[0].reason,
        ProfileXmlError::Xml(_)
    ));
    assert_eq!(
        m.origin,
        ProfileOrigin::Discovered {
            discovered: 3,
            declared: 2,
            undiscoverable: 1
        }
    );
    let said = m.origin.to_string();
    assert!(
        said.contains("discovered from the engine's database"),
        "{said}"
    );
    assert!(said.contains("1 undiscoverable"), "{said}");
}

#[test]
fn mas_are_matched_by_name_when_no_guid_matches() {
    let eng = engine_profiles();
    let m = merge_profiles(
        "HR",
        "{11111111-2222-3333-4444-555555555555}",
        Vec::new(),
        standard,
        Ok(&eng),
    );
    assert_eq!(m.profiles.len(), 1);
    assert_eq!(m.profiles[0].name, "Export");
    // An MA the database has no profiles for has none (not the standard ones).
    let m = merge_profiles(
        "New MA",
        "{99999999-0000-0000-0000-000000000000}",
        Vec::new(),
        standard,
        Ok(&eng),
    );
    assert!(m.profiles.is_empty());
    assert!(matches!(
        m.origin,
        ProfileOrigin::Discovered { discovered: 0, .. }
    ));
}

#[test]
fn without_discovery_declarations_then_standard_profiles() {
    let m = merge_profiles(
        "AD",
        AD_GUID,
        vec![declared("Mine", step("export", "", ""))],
        standard,
        Err("database unreachable"),
    );
    assert_eq!(m.profiles.len(), 1);
    assert_eq!(m.profiles[0].name, "Mine");
    assert_eq!(
        m.origin,
        ProfileOrigin::Declared {
            reason: "database unreachable".into()
        }
    );
    let m = merge_profiles("AD", AD_GUID, Vec::new(), standard, Err("discovery is off"));
    assert_eq!(m.profiles, standard());
    assert!(
        m.origin
            .to_string()
            .contains("standard single-step profiles")
    );
    assert!(m.origin.to_string().contains("discovery is off"));
}

#[test]
fn database_server_forms() {
    let db = || DEFAULT_DATABASE.to_owned();
    let l = parse_server("sql01\\MIM", db()).unwrap();
    assert_eq!(
        (l.host.as_str(), l.instance.as_deref(), l.port),
        ("sql01", Some("MIM"), None)
    );
    assert_eq!(
        l.to_string(),
        "SQL Server sql01\\MIM, database FIMSynchronizationService"
    );
    let l = parse_server("tcp:sql01.contoso.com,14330", "FIMSync".into()).unwrap();
    assert_eq!(
        (l.host.as_str(), l.instance, l.port, l.database.as_str()),
        ("sql01.contoso.com", None, Some(14330), "FIMSync")
    );
    for local in [".", "(local)", "", ".\\"] {
        let l = parse_server(local, db()).unwrap();
        assert_eq!(
            (l.host.as_str(), l.instance),
            ("localhost", None),
            "{local:?}"
        );
    }
    let e = parse_server("sql01,port", db()).unwrap_err();
    assert!(e.contains("must be a number"), "{e}");
}
