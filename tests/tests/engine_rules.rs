//! The agent enforces the engine's concurrency rules for runs that arrive at once: checked from
//! the outside, through the CLI, on the timestamps the controller stored.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Fleet, bin, stdout};
use syncfleet_proto::vocab::{ResultClass, classify};

fn sync_class(ma: &str, profile: &str) -> bool {
    profile.ends_with("Sync") || (ma == "MIM Service" && profile.ends_with("Import"))
}

#[test]
fn twenty_runs_at_once_never_overlap_a_synchronization() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    fleet.start_agent_with(
        "sync-01",
        "[engine]\nkind = \"sim\"\nserver = 1\ntime_scale = 0.01\n[executor]\nstagger = \"20ms\"\nbusy_poll = \"50ms\"\n",
    );
    fleet.wait_connected(&["sync-01"]);

    let shapes: [&[&str]; 4] = [
        &["AD:Delta Import", "AD:Delta Sync"],
        &["HR:Delta Import", "HR:Delta Sync"],
        &[
            "MIM Service:Delta Import",
            "MIM Service:Delta Sync",
            "AD:Export",
        ],
        &[
            "Entra ID:Delta Import",
            "Entra ID:Delta Sync",
            "Entra ID:Export",
        ],
    ];
    // Start all twenty through the real CLI, concurrently.
    let children: Vec<_> = (0..20)
        .map(|i| {
            let mut cmd = Command::new(bin("syncfleet"));
            cmd.arg("--config")
                .arg(&fleet.cli_config)
                .args(["run", "sync-01"]);
            for s in shapes[i % shapes.len()] {
                cmd.args(["--step", s]);
            }
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout(&out)
        })
        .collect();
    assert_eq!(ids.len(), 20);

    let mut intervals = Vec::new();
    for id in &ids {
        let run = fleet.wait_run_state(
            id,
            &[
                "succeeded",
                "completed_with_errors",
                "failed",
                "cancelled",
                "unknown",
            ],
            Duration::from_secs(180),
        );
        assert_eq!(run["state"], "succeeded", "{run:#}");
        for s in run["steps"].as_array().unwrap() {
            let result = s["result"].as_str().unwrap();
            assert_ne!(classify(result), ResultClass::Busy, "{s:#}");
            assert!(!result.contains("0x8023063d"), "{s:#}");
            let ma = s["ma"].as_str().unwrap().to_string();
            let profile = s["profile"].as_str().unwrap().to_string();
            let start = s["started_at"].as_str().unwrap().to_string();
            let end = s["finished_at"].as_str().unwrap().to_string();
            intervals.push((start, end, ma, profile));
        }
    }
    // RFC 3339 UTC with milliseconds sorts as text. Supported mode: a synchronization overlaps
    // nothing; one MA never runs two profiles at once.
    let mut overlaps_seen = 0;
    for (i, a) in intervals.iter().enumerate() {
        for b in &intervals[i + 1..] {
            let overlap = a.0 < b.1 && b.0 < a.1;
            if !overlap {
                continue;
            }
            overlaps_seen += 1;
            assert_ne!(a.2, b.2, "two profiles on MA {} at once: {a:?} {b:?}", a.2);
            assert!(
                !sync_class(&a.2, &a.3) && !sync_class(&b.2, &b.3),
                "a synchronization overlapped another step: {a:?} {b:?}"
            );
        }
    }
    // The waits are visible to the operator in the log of at least one run, and imports did run
    // side by side (the rules serialize synchronizations, not everything).
    assert!(overlaps_seen > 0, "no parallelism at all: {intervals:?}");
}

#[test]
fn frozen_engine_is_stopped_by_the_watchdog_and_reported_unhealthy() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let server = fleet.dir.path().join("frozen-server.toml");
    std::fs::write(
        &server,
        "seed = 7\ntime_scale = 0.01\n\
         [[mas]]\nname = \"AD\"\nma_type = \"AD\"\nconnectors = 1000\nchange_rate_per_hour = 0.0\n\
         [[mas]]\nname = \"MIM Service\"\nma_type = \"FIM\"\nconnectors = 1000\nchange_rate_per_hour = 0.0\n\
         [[script]]\nma = \"AD\"\nprofile = \"Delta Import\"\nresult = \"freeze\"\n",
    )
    .unwrap();
    fleet.start_agent_with(
        "sync-01",
        &format!(
            "[engine]\nkind = \"sim\"\nsim_file = {server:?}\n[executor]\nstagger = \"10ms\"\nbusy_poll = \"100ms\"\nwatchdog = \"2s\"\nstop_timeout = \"500ms\"\n"
        ),
    );
    fleet.wait_connected(&["sync-01"]);
    let out = fleet.cli(&["run", "sync-01", "--step", "AD:Delta Import", "--follow"]);
    assert_eq!(out.status.code(), Some(1), "a watchdog stop is a failure");
    let list = fleet.cli_json(&["runs", "list", "-o", "json"]);
    let id = list[0]["id"].as_str().unwrap().to_string();
    let run = fleet.run_json(&id).unwrap();
    assert_eq!(run["state"], "failed", "{run:#}");
    assert_eq!(
        run["steps"][0]["result"], "stopped-watchdog-timeout",
        "{run:#}"
    );
    assert!(
        run["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("not responding"),
        "{run:#}"
    );
    // The next heartbeat carries the verdict to the controller.
    let agent = common::wait_for(
        "the agent to report its engine unhealthy",
        Duration::from_secs(60),
        || {
            let a = fleet.cli_json(&["agents", "show", "sync-01", "-o", "json"]);
            (a["engine_healthy"] == false).then_some(a)
        },
    );
    assert!(
        agent["engine_detail"]
            .as_str()
            .unwrap()
            .contains("watchdog"),
        "{agent:#}"
    );
}
