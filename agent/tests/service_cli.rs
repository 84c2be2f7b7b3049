//! `syncfleet-agent service ...` off Windows: exit code 2 and a message saying how the agent
//! runs here instead.
#![cfg(not(windows))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

use std::process::Command;

#[test]
fn the_service_commands_exit_2_off_windows_and_say_how_to_run_the_agent() {
    for args in [
        &["service", "install"][..],
        &["service", "install", "--account", "CONTOSO\\svc-sync$"],
        &["service", "status"],
        &["service", "run", "--config", "agent.toml"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_syncfleet-agent"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("exist only on Windows"), "{err}");
        assert!(err.contains("syncfleet-agent run"), "{err}");
    }
}
