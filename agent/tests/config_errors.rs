//! The agent refuses bad configuration with exit code 64 and a message naming the key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_syncfleet-agent"))
}

#[test]
fn missing_name_exits_64() {
    let out = agent()
        .args(["run", "--controller", "https://127.0.0.1:1"])
        .env_remove("SYNCFLEET_AGENT_NAME")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`name`"));
}

#[test]
fn plain_http_controller_is_refused() {
    let out = agent()
        .args(["run", "--name", "s1", "--controller", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`controller`") && err.contains("https://"),
        "{err}"
    );
}

#[test]
fn missing_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args([
            "run",
            "--name",
            "s1",
            "--controller",
            "https://127.0.0.1:1",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca.pem"), "{err}");
}

#[test]
fn dump_config_shows_engine_and_labels() {
    let out = agent()
        .args([
            "run",
            "--name",
            "s1",
            "--controller",
            "https://c:7443",
            "--label",
            "env=prod",
            "--sim-server",
            "1",
            "--dump-config",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("env = \"prod\""), "{text}");
    assert!(
        text.contains("kind = \"sim\"") && text.contains("server = 1"),
        "{text}"
    );
}
