//! The daemon refuses bad configuration with exit code 64 and a message naming the key, before
//! binding any port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::Command;

fn controller() -> Command {
    Command::new(env!("CARGO_BIN_EXE_syncfleet-controller"))
}

#[test]
fn misspelt_key_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "grpc_listn = \"127.0.0.1:1\"\n").unwrap();
    let out = controller()
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("grpc_listn") && err.contains("grpc_listen"),
        "{err}"
    );
}

#[test]
fn bad_value_from_environment_exits_64_before_binding() {
    // Hold a port: if the controller tried to bind before validating, it would say so.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = controller()
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .env("SYNCFLEET_GRPC_LISTEN", format!("127.0.0.1:{port}"))
        .env("SYNCFLEET_PENDING_DEADLINE", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pending-deadline") || err.contains("PENDING_DEADLINE"),
        "{err}"
    );
    assert!(!err.contains("cannot listen"), "{err}");
}

#[test]
fn cross_field_rule_names_the_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "heartbeat_interval = \"30s\"\nagent_lost_after = \"40s\"\n",
    )
    .unwrap();
    let out = controller()
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`agent_lost_after`"), "{err}");
}

#[test]
fn dump_config_prints_the_effective_settings() {
    let out = controller()
        .args(["serve", "--dump-config", "--grpc-listen", "127.0.0.1:9999"])
        .env("SYNCFLEET_FLEET", "prod-eu")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("grpc_listen = \"127.0.0.1:9999\""), "{text}");
    assert!(text.contains("fleet = \"prod-eu\""), "{text}");
    assert!(text.contains("pending_deadline = \"15m\""), "{text}");
}

#[test]
fn serve_without_pki_says_to_run_init() {
    let dir = tempfile::tempdir().unwrap();
    let out = controller()
        .args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("syncfleet-controller init"), "{err}");
}
