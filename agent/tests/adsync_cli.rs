//! The agent binary on an Entra Connect server (engine kind `adsync`), with a stand-in for
//! PowerShell speaking the host protocol (`agent/src/engine/adsync/stand_in.py`): the built-in
//! sync cycle is switched off at start or the agent refuses to run, and
//! `syncfleet-agent adsync restore-scheduler` switches it back on.
#![allow(
    clippy::disallowed_methods,
    reason = "a test measures and waits in real time, next to real processes"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use syncfleet_tests::daemon_config::without_syncfleet_env;

const STAND_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/engine/adsync/stand_in.py");

/// A config file for the adsync driver with the stand-in as PowerShell.
fn config(dir: &Path, extra_arg: Option<&str>) -> std::path::PathBuf {
    let mut args = format!("{STAND_IN:?}");
    if let Some(a) = extra_arg {
        args.push_str(&format!(", {a:?}"));
    }
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"s1\"\ncontroller = \"https://127.0.0.1:1\"\ndata_dir = {:?}\n\
             [engine]\nkind = \"adsync\"\npowershell = \"python3\"\nhost_args = [{args}]\n",
            dir.join("data")
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    path
}

/// TLS files that exist (the agent checks they can be read before it changes the engine; it
/// then fails to connect to the unreachable controller and keeps retrying).
fn tls_files(dir: &Path) {
    for f in ["ca.pem", "agent.pem", "agent.key"] {
        std::fs::write(dir.join("data").join(f), "not a certificate").unwrap();
    }
}

fn agent(dir: &Path, args: &[&str]) -> Output {
    without_syncfleet_env(Command::new(env!("CARGO_BIN_EXE_syncfleet-agent")))
        .args(args)
        .env("STAND_IN_STATE", dir.join("scheduler-state.json"))
        .output()
        .unwrap()
}

fn cycle_enabled(dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(dir.join("scheduler-state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["SyncCycleEnabled"].as_bool()
}

#[test]
fn the_agent_refuses_to_run_when_the_builtin_cycle_cannot_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Some("--deny-set"));
    tls_files(dir.path());
    let out = agent(dir.path(), &["run", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Access is denied"), "{err}");
    assert!(err.contains("member of ADSyncAdmins"), "{err}");
    assert!(err.contains("collide"), "{err}");
    assert!(!dir.path().join("data/adsync-scheduler.json").exists());
}

#[tokio::test]
async fn run_switches_the_builtin_cycle_off_and_restore_scheduler_switches_it_back_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), None);
    let cfg = cfg.to_str().unwrap();
    // Without its TLS files the agent stops before it changes the engine.
    let out = agent(dir.path(), &["run", "--config", cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca.pem"), "{err}");
    assert_eq!(cycle_enabled(dir.path()), None);
    assert!(!dir.path().join("data/adsync-scheduler.json").exists());

    // With them it records the cycle and switches it off, then runs (here: keeps retrying the
    // unreachable controller until it is ended).
    tls_files(dir.path());
    let mut child = without_syncfleet_env(Command::new(env!("CARGO_BIN_EXE_syncfleet-agent")))
        .args(["run", "--config", cfg])
        .env("STAND_IN_STATE", dir.path().join("scheduler-state.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cycle_enabled(dir.path()) != Some(false) {
        assert!(
            Instant::now() < deadline,
            "the agent did not switch the cycle off"
        );
        assert!(child.try_wait().unwrap().is_none(), "the agent exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(dir.path().join("data/adsync-scheduler.json").exists());

    let out = agent(
        dir.path(),
        &["adsync", "restore-scheduler", "--config", cfg],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("switched on again"), "{stdout}");
    assert_eq!(cycle_enabled(dir.path()), Some(true));
    assert!(!dir.path().join("data/adsync-scheduler.json").exists());

    let out = agent(
        dir.path(),
        &["adsync", "restore-scheduler", "--config", cfg],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("nothing to restore"), "{stdout}");
}

#[test]
fn bad_adsync_settings_are_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "name = \"s1\"\ncontroller = \"https://127.0.0.1:1\"\n[engine]\nkind = \"adsync\"\nmax_concurrent_runs = 0\n",
    )
    .unwrap();
    let out = agent(dir.path(), &["run", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("max_concurrent_runs"), "{err}");
}
