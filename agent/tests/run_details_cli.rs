//! `syncfleet-agent run-details`: the real binary on the real samples and on bad input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_syncfleet-agent"))
}

fn sample(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/run-history")
        .join(name)
}

const DELTA: &str =
    "HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_DS_DELTAIMPORT_stopped-connectivity.xml";
const EXPORT: &str =
    "HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_MOSS_EXPORT_completed-export-errors.xml";

fn json_of(path: &std::path::Path) -> serde_json::Value {
    let out = agent()
        .arg("run-details")
        .arg(path)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn delta_import_sample_is_normalized() {
    let v = json_of(&sample(DELTA));
    assert_eq!(v["ma"], "MOSSAD-company");
    assert_eq!(v["ma_id"], "{85098734-66BC-4938-8122-C5F585F463D0}");
    assert_eq!(v["run_number"], 1879);
    assert_eq!(v["profile"], "DS_DELTAIMPORT");
    assert_eq!(v["security_id"], "domain\\serviceacc");
    assert_eq!(v["result"], "stopped-connectivity");
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    // Sorted by step number although the engine lists step 2 first.
    assert_eq!(steps[0]["step_number"], 1);
    assert_eq!(steps[1]["step_number"], 2);
    assert_eq!(steps[0]["type"], "delta-import");
    assert_eq!(steps[0]["result"], "success");
    assert_eq!(steps[0]["counters"]["stage-add"], 3);
    assert_eq!(steps[0]["counters"]["stage-update"], 27);
    assert_eq!(steps[0]["counters"]["stage-rename"], 2);
    assert_eq!(steps[0]["counters"]["filtered-objects"], 46);
    assert_eq!(steps[1]["result"], "stopped-connectivity");
    assert_eq!(steps[1]["connection_result"], "failed-search");
    assert_eq!(steps[1]["partition"], "DC=ab,DC=company,DC=com");
    assert_eq!(steps[1]["started_at"], "2017-01-04T23:00:55.253Z");
    let incidents = steps[1]["connection_incidents"].as_array().unwrap();
    assert_eq!(incidents[1]["error_code"], "8453");
    assert_eq!(
        incidents[1]["error_literal"],
        "Replication access was denied."
    );
}

#[test]
fn export_sample_is_normalized() {
    let v = json_of(&sample(EXPORT));
    assert_eq!(v["result"], "completed-export-errors");
    let s = &v["steps"][0];
    assert_eq!(s["type"], "export");
    assert_eq!(s["counters"]["export-add"], 3);
    assert_eq!(s["counters"]["export-update"], 23);
    assert_eq!(s["counters"]["export-failure"], 1);
    assert_eq!(s["errors"]["count"], 1);
    assert_eq!(s["errors"]["first"][0]["error_type"], "ma-extension-error");
    assert_eq!(s["errors"]["first"][0]["error_code"], "0x80230703");
}

#[test]
fn utf16_file_with_bom_is_read() {
    let text = std::fs::read_to_string(sample(DELTA)).unwrap();
    let mut bytes = vec![0xFF, 0xFE];
    for u in text.encode_utf16() {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("utf16.xml");
    std::fs::write(&p, bytes).unwrap();
    assert_eq!(json_of(&p)["steps"][0]["counters"]["stage-add"], 3);
}

#[test]
fn bad_input_exits_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8]); 4] = [
        ("truncated.xml", b"<run-history><run-details><ma-name>x</ma-na"),
        ("dtd.xml", b"<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;&a;\">]><run-history>&b;</run-history>"),
        ("binary.xml", &[0x00, 0x9f, 0x92, 0x96, 0xff]),
        ("notxml.xml", b"hello"),
    ];
    for (name, body) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        let out = agent().arg("run-details").arg(&p).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
        assert!(err.starts_with("error: "), "{name}: {err}");
    }
    let out = agent()
        .args(["run-details", "/nonexistent/x.xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}
