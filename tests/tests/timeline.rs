//! What each server runs now and what ran when: `agents list` showing a run started outside
//! syncfleet (reported by the agent's heartbeat), a step's wait kept with its reason,
//! `runs list --watch` streaming changes, its filters, and `timeline` drawing the wait — the
//! real CLI against the real controller and a simulated server whose administrator starts a
//! Full Sync in Sync Service Manager.
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

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Fleet, bin, stderr, wait_for};
use serde_json::Value;

/// An administrator starts a Full Sync of AD as soon as the engine is up; it lasts about 13 s
/// (6,000 connectors at realistic speed).
const SERVER: &str = "seed = 11\ntime_scale = 1.0\n\
     [[mas]]\nname = \"AD\"\nma_type = \"AD\"\nconnectors = 6000\nchange_rate_per_hour = 0.0\n\
     [[mas]]\nname = \"HR\"\nma_type = \"MSSQL\"\nconnectors = 100\nchange_rate_per_hour = 0.0\n\
     [[mas]]\nname = \"MIM Service\"\nma_type = \"FIM\"\nconnectors = 100\nchange_rate_per_hour = 0.0\n\
     [[unmanaged]]\nma = \"AD\"\nprofile = \"Full Sync\"\nat_secs = 0.0\n";

/// Kills the watching CLI when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn agents_list_shows_an_outside_run_and_a_step_waits_for_it_visibly() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller_with(&["--set", "heartbeat_interval=1s"]);
    let server = fleet.dir.path().join("server.toml");
    std::fs::write(&server, SERVER).unwrap();
    fleet.start_agent_with(
        "sync-01",
        &format!(
            "[engine]\nkind = \"sim\"\nsim_file = {server:?}\n[executor]\nstagger = \"10ms\"\nbusy_poll = \"200ms\"\n"
        ),
    );
    fleet.wait_connected(&["sync-01"]);

    // The administrator's Full Sync shows in agents list, from the agent's heartbeat.
    let seen = wait_for(
        "the outside run in agents list",
        Duration::from_secs(30),
        || {
            let v = fleet.cli_json(&["agents", "list", "-o", "json"]);
            let runs = v[0]["engine_runs"].as_array()?.clone();
            (!runs.is_empty()).then_some(runs)
        },
    );
    assert_eq!(seen[0]["ma"], "AD", "{seen:#?}");
    assert_eq!(seen[0]["profile"], "Full Sync");
    assert_eq!(seen[0]["origin"], "outside syncfleet");
    assert!(seen[0]["seen_since"].is_string(), "{seen:#?}");
    let out = fleet.cli(&["agents", "list"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.lines().next().unwrap().ends_with("RUNNING"),
        "{table}"
    );
    assert!(
        table.contains("AD: Full Sync #") && table.contains("(outside syncfleet)"),
        "{table}"
    );

    // Watch runs from another "terminal" while a run waits for the outside sync.
    let mut watch = Child(
        Command::new(bin("syncfleet"))
            .arg("--config")
            .arg(&fleet.cli_config)
            .args(["runs", "list", "--since", "10m", "--watch", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = watch.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    let out = fleet.cli(&[
        "run",
        "sync-01",
        "--step",
        "HR:Delta Import",
        "--follow",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    let step = &run["steps"][0];
    let reason = step["wait_reason"].as_str().unwrap();
    assert!(
        reason.contains("Full Sync") && reason.contains("started outside syncfleet"),
        "{step:#}"
    );
    assert!(step["waiting_since"].is_string(), "{step:#}");
    assert!(step["waited_ms"].as_u64().unwrap() > 0, "{step:#}");
    assert_eq!(
        step["detail"], "",
        "the live detail is cleared once it runs"
    );

    // The watch printed the run as it changed, ending with its success, one JSON per line.
    let mut states = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !states.iter().any(|s| s == "succeeded") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the watch did not show run {id} ending: {states:?}"));
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("watch line is no JSON ({e}): {line}"));
        if v["id"] == id.as_str() {
            states.push(v["state"].as_str().unwrap().to_string());
        }
    }
    assert!(states.len() >= 2, "only the end was shown: {states:?}");
    drop(watch);

    // Filters of runs list.
    let listed = fleet.cli_json(&[
        "runs", "list", "--since", "10m", "-l", "env=e2e", "-o", "json",
    ]);
    assert_eq!(listed[0]["id"], id.as_str(), "{listed:#}");
    let none = fleet.cli_json(&["runs", "list", "-l", "env=nowhere", "-o", "json"]);
    assert_eq!(none, Value::Array(vec![]));
    let none = fleet.cli_json(&["runs", "list", "--schedule", "nightly", "-o", "json"]);
    assert_eq!(none, Value::Array(vec![]));
    let out = fleet.cli(&["runs", "list", "-l", "env"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("key=value"), "{}", stderr(&out));

    // The timeline draws the wait before the import and lists its reason.
    let tl = fleet.cli_json(&["timeline", "--since", "10m", "-o", "json"]);
    let tl_step = &tl["servers"][0]["runs"][0]["steps"][0];
    assert_eq!(tl["servers"][0]["agent"], "sync-01", "{tl:#}");
    assert_eq!(tl["servers"][0]["runs"][0]["id"], id.as_str());
    assert_eq!(tl_step["kind"], "import", "{tl:#}");
    assert_eq!(tl_step["waited_ms"], step["waited_ms"]);
    let out = fleet.cli(&["timeline", "--since", "10m", "--width", "50"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("  {} ad-hoc", &id[..8])))
        .unwrap_or_else(|| panic!("no row for {id} in\n{text}"));
    assert!(row.contains(".="), "a wait then the import: {text}");
    assert!(
        text.contains(&format!(
            "sync-01 {} step 1 HR: Delta Import waited",
            &id[..8]
        )),
        "{text}"
    );

    // Once the outside run has ended, agents list no longer shows it.
    wait_for(
        "the outside run to leave agents list",
        Duration::from_secs(60),
        || {
            let v = fleet.cli_json(&["agents", "list", "-o", "json"]);
            v[0]["engine_runs"].as_array()?.is_empty().then_some(())
        },
    );

    // Two syncfleet runs synchronizing on one server: never at once; the later one waits for
    // the synchronization gate and says so, and the timeline shows no two synchronizations
    // at once.
    let start = |step: &str| {
        let out = fleet.cli(&["run", "sync-01", "--step", step]);
        assert!(out.status.success(), "{}", stderr(&out));
        common::stdout(&out)
    };
    let ids = [start("HR:Delta Sync"), start("MIM Service:Delta Sync")];
    let runs: Vec<Value> = ids
        .iter()
        .map(|id| {
            fleet.wait_run_state(
                id,
                &["succeeded", "failed", "cancelled", "unknown"],
                Duration::from_secs(60),
            )
        })
        .collect();
    for r in &runs {
        assert_eq!(r["state"], "succeeded", "{r:#}");
    }
    let waited: Vec<&Value> = runs
        .iter()
        .map(|r| &r["steps"][0])
        .filter(|s| s["waited_ms"].as_u64().unwrap() > 0)
        .collect();
    assert_eq!(waited.len(), 1, "{runs:#?}");
    assert!(
        waited[0]["wait_reason"]
            .as_str()
            .unwrap()
            .contains("syncfleet run"),
        "{:#}",
        waited[0]
    );
    let tl = fleet.cli_json(&["timeline", "--since", "10m", "-o", "json"]);
    let overlaps = tl["servers"][0]["overlaps"].as_array().unwrap();
    assert!(
        overlaps.iter().all(|o| o["synchronizations"] == false),
        "{tl:#}"
    );
}
