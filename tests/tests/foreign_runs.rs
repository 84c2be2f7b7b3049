//! Runs started outside syncfleet (Sync Service Manager, a script) hold the same locks as the
//! agent's own runs: checked through the real binaries with the sim engine's `[[unmanaged]]`
//! runs, from the outside, through the CLI.
#![allow(
    clippy::disallowed_methods,
    reason = "a test measures and waits in real time, next to real processes"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::time::{Duration, Instant};

use common::{Fleet, stdout};

/// A server whose administrator starts a Full Sync of AD in Sync Service Manager as soon as the
/// engine is up; it lasts about 32 s (15,000 connectors at realistic speed).
const SERVER: &str = "seed = 11\ntime_scale = 1.0\n\
     [[mas]]\nname = \"AD\"\nma_type = \"AD\"\nconnectors = 15000\nchange_rate_per_hour = 0.0\n\
     [[mas]]\nname = \"HR\"\nma_type = \"MSSQL\"\nconnectors = 100\nchange_rate_per_hour = 0.0\n\
     [[mas]]\nname = \"MIM Service\"\nma_type = \"FIM\"\nconnectors = 100\nchange_rate_per_hour = 0.0\n\
     [[unmanaged]]\nma = \"AD\"\nprofile = \"Full Sync\"\nat_secs = 0.0\n";

fn start_fleet(run_mode: &str) -> Fleet {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let server = fleet.dir.path().join("foreign-server.toml");
    std::fs::write(&server, SERVER).unwrap();
    fleet.start_agent_with(
        "sync-01",
        &format!(
            "[engine]\nkind = \"sim\"\nsim_file = {server:?}\n[executor]\nrun_mode = {run_mode:?}\nstagger = \"10ms\"\nbusy_poll = \"200ms\"\n"
        ),
    );
    fleet.wait_connected(&["sync-01"]);
    fleet
}

/// Start a one-step run and wait until its step waits; returns the run id and the reason.
fn start_and_wait(fleet: &Fleet, step: &str) -> (String, String) {
    let out = fleet.cli(&["run", "sync-01", "--step", step]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out);
    let detail = common::wait_for(
        &format!("the step of run {id} ({step}) to wait for the foreign run"),
        Duration::from_secs(30),
        || {
            let run = fleet.run_json(&id)?;
            assert!(
                !["succeeded", "failed", "completed_with_errors", "unknown"]
                    .contains(&run["state"].as_str().unwrap_or_default()),
                "the run ended beside a foreign synchronization: {run:#}"
            );
            // A step not yet started is `waiting` too; the agent's reason fills the detail.
            let step = &run["steps"][0];
            let detail = step["detail"].as_str().unwrap_or_default();
            (step["state"] == "waiting" && !detail.is_empty()).then(|| detail.to_string())
        },
    );
    (id, detail)
}

#[test]
fn a_foreign_full_sync_holds_back_a_mim_service_delta_import_until_cancelled() {
    // Unsupported mode lets imports overlap a synchronization, but never a MIM Service MA
    // delta import: it freezes the engine.
    let fleet = start_fleet("unsupported");
    let (id, detail) = start_and_wait(&fleet, "MIM Service:Delta Import");
    for part in ["AD", "Full Sync", "started outside syncfleet"] {
        assert!(detail.contains(part), "{part:?} missing in {detail:?}");
    }
    // The engine did not freeze.
    let agent = fleet.cli_json(&["agents", "show", "sync-01", "-o", "json"]);
    assert_eq!(agent["engine_healthy"], true, "{agent:#}");
    // Cancelling a waiting run ends it at once, not when the foreign run ends.
    let t0 = Instant::now();
    let out = fleet.cli(&["runs", "cancel", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = fleet.wait_run_state(&id, &["cancelled"], Duration::from_secs(20));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        t0.elapsed()
    );
    assert!(run["steps"][0]["started_at"].is_null(), "{run:#}");
}

#[test]
fn a_foreign_full_sync_holds_back_imports_in_supported_mode_then_lets_them_run() {
    let fleet = start_fleet("supported");
    let (id, detail) = start_and_wait(&fleet, "HR:Delta Import");
    assert!(
        detail.contains("started outside syncfleet") && detail.contains("Full Sync"),
        "{detail}"
    );
    // When the administrator's synchronization ends, the import runs.
    let run = fleet.wait_run_state(
        &id,
        &["succeeded", "failed", "cancelled", "unknown"],
        Duration::from_secs(120),
    );
    assert_eq!(run["state"], "succeeded", "{run:#}");
}
