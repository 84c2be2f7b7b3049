//! `syncfleet run` on many agents: by label selector, followed to the end with the exit code
//! saying whether every run succeeded (and naming the ones that did not), `--max-parallel`
//! rolling through the agents, refusals with reasons, the idempotency key, and `timeline`
//! showing the runs — the real CLI against the real controller and five simulated agents.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::collections::BTreeSet;

use common::{Fleet, Proc, cli_with_config, stderr, wait_agents_connected, workspace_root};
use serde_json::Value;

const AGENTS: [&str; 5] = ["sync-01", "sync-02", "sync-03", "sync-04", "sync-05"];

/// sync-01..04 are production primaries, sync-05 the staging server. sync-03's engine lets the
/// first HR Delta Import through and fails the second with `stopped-connectivity` (HR is
/// imported once per delta cycle).
fn agent_toml(fleet: &Fleet, i: usize, name: &str) -> String {
    let env = if i < 4 { "prod" } else { "staging" };
    let engine = if name == "sync-03" {
        "[engine]\nkind = \"sim\"\n[engine.sim]\ntime_scale = 0.01\n\
         [[engine.sim.script]]\nma = \"HR\"\nprofile = \"Delta Import\"\n\
         result = \"stopped-connectivity\"\nafter = 1\n"
            .to_string()
    } else {
        format!("[engine]\nkind = \"sim\"\nserver = {i}\ntime_scale = 0.01\n")
    };
    format!(
        "name = {name:?}\ncontroller = \"https://127.0.0.1:{}\"\ndata_dir = {:?}\n\
         [labels]\nenv = {env:?}\n{engine}[executor]\nstagger = \"10ms\"\n",
        fleet.grpc_port,
        fleet.agent_dir(name)
    )
}

/// The sequences of the example fleet (its schedules would fire runs of their own).
fn example_sequences() -> String {
    let text =
        std::fs::read_to_string(workspace_root().join("deploy/examples/fleet.yaml")).unwrap();
    text.split("\n---\n")
        .filter(|d| d.lines().any(|l| l == "kind: Sequence"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON on stdout ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

fn agents_of(runs: &Value) -> BTreeSet<String> {
    runs.as_array()
        .unwrap()
        .iter()
        .map(|r| r["agent"].as_str().unwrap().to_string())
        .collect()
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[test]
fn fan_out_by_selector_follows_every_run_and_fails_naming_the_failed_one() {
    let mut fleet = Fleet::init(&AGENTS);
    fleet.start_controller();
    for (i, name) in AGENTS.iter().enumerate() {
        let toml = agent_toml(&fleet, i, name);
        fleet.start_agent_toml(name, &toml);
    }
    fleet.wait_connected(&AGENTS);
    let seqs = fleet.fleet_file("sequences.yaml", &example_sequences());
    let out = fleet.cli(&["apply", "-f", seqs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let prod: BTreeSet<String> = AGENTS[..4].iter().map(|s| s.to_string()).collect();

    // Every production primary runs the delta cycle, and every run succeeds: exit 0.
    let out = fleet.cli(&[
        "run",
        "-l",
        "env=prod",
        "--sequence",
        "delta-cycle",
        "--follow",
        "-o",
        "json",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let v = json_of(&out);
    assert_eq!(agents_of(&v["runs"]), prod, "{v:#}");
    for r in v["runs"].as_array().unwrap() {
        assert_eq!(r["state"], "succeeded", "{r:#}");
        assert_eq!(r["sequence"], "delta-cycle");
    }
    assert_eq!(v["failed"], Value::Array(vec![]));
    assert!(err.contains("all 4 run(s) succeeded"), "{err}");
    // Not a terminal: one plain progress line per change, prefixed with the agent.
    assert!(err.contains("] sync-02: step 1/"), "{err}");
    let first_ids: Vec<String> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();

    // The second cycle fails on sync-03 (scripted connectivity failure): exit 1, naming the
    // agent, the run and its result; the others still succeed.
    let out = fleet.cli(&[
        "run",
        "-l",
        "env=prod",
        "--sequence",
        "delta-cycle",
        "--follow",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let failed_line = table
        .lines()
        .find(|l| l.starts_with("sync-03 "))
        .unwrap_or_else(|| panic!("no sync-03 row in\n{table}"));
    assert!(failed_line.contains(" failed "), "{table}");
    let failed_id = failed_line.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        err.contains(&format!(
            "sync-03: run {failed_id} ended failed (stopped-connectivity)"
        )),
        "{err}"
    );
    assert!(err.contains("1 of 4 run(s) did not succeed"), "{err}");
    for a in ["sync-01", "sync-02", "sync-04"] {
        let row = table.lines().find(|l| l.starts_with(a)).unwrap();
        assert!(row.contains(" succeeded "), "{table}");
    }
    assert!(
        !table.contains("sync-05"),
        "staging is not env=prod: {table}"
    );

    // --max-parallel 1 rolls through the named agents one at a time.
    let out = fleet.cli(&[
        "run",
        "sync-01",
        "sync-02",
        "sync-04",
        "--step",
        "AD:Delta Import",
        "--max-parallel",
        "1",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_of(&out);
    let mut runs: Vec<&Value> = v["runs"].as_array().unwrap().iter().collect();
    assert_eq!(runs.len(), 3, "{v:#}");
    runs.sort_by_key(|r| ms(&r["started_at"]));
    for pair in runs.windows(2) {
        assert!(
            ms(&pair[1]["started_at"]) >= ms(&pair[0]["finished_at"]),
            "runs overlapped with --max-parallel 1: {pair:#?}"
        );
    }

    // A draining agent is refused with its reason (exit 1); the others get a run. The same
    // idempotency key again starts nothing and returns the same runs.
    let out = fleet.cli(&["agents", "drain", "sync-05", "--note", "patching"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let args = [
        "run",
        "--all",
        "--step",
        "AD:Delta Import",
        "--idempotency-key",
        "retry-1",
        "-o",
        "json",
    ];
    let out = fleet.cli(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let first = json_of(&out);
    assert_eq!(first["refused"][0]["agent"], "sync-05", "{first:#}");
    assert!(
        first["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("drain"),
        "{first:#}"
    );
    assert_eq!(agents_of(&first["runs"]), prod);
    let before = fleet.cli_json(&["runs", "list", "--limit", "1000", "-o", "json"]);
    let again = json_of(&fleet.cli(&args));
    let ids = |v: &Value| -> BTreeSet<String> {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&first), ids(&again));
    let after = fleet.cli_json(&["runs", "list", "--limit", "1000", "-o", "json"]);
    assert_eq!(
        before.as_array().unwrap().len(),
        after.as_array().unwrap().len()
    );
    // Table mode: refusals on stderr with the reason.
    let out = fleet.cli(&["run", "-l", "env=staging", "--step", "AD:Delta Import"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("sync-05: refused: "),
        "{}",
        stderr(&out)
    );

    // A selector matching no agent is an error naming it.
    let out = fleet.cli(&["run", "-l", "env=nowhere", "--step", "AD:Delta Import"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("env=nowhere"), "{}", stderr(&out));

    // The timeline shows the runs started above, per server, with their steps.
    let tl = fleet.cli_json(&["timeline", "--since", "10m", "-o", "json"]);
    let servers = tl["servers"].as_array().unwrap();
    let shown: BTreeSet<String> = servers
        .iter()
        .flat_map(|s| s["runs"].as_array().unwrap().iter())
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    for id in first_ids.iter().chain([&failed_id]) {
        assert!(
            shown.contains(id),
            "run {id} missing from the timeline: {tl:#}"
        );
    }
    let s01 = servers.iter().find(|s| s["agent"] == "sync-01").unwrap();
    let kinds: BTreeSet<&str> = s01["runs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["steps"].as_array().unwrap().iter())
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains("import") && kinds.contains("sync"),
        "{kinds:?}"
    );
    let out = fleet.cli(&[
        "timeline", "--since", "10m", "-l", "env=prod", "--width", "60",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for a in ["sync-01", "sync-02", "sync-03", "sync-04"] {
        assert!(text.lines().any(|l| l == a), "{a} missing in\n{text}");
    }
    assert!(!text.lines().any(|l| l == "sync-05"), "{text}");
    assert!(
        text.contains(&format!("  {} delta-cycle", &failed_id[..8])),
        "{text}"
    );
    assert!(text.contains('#'), "synchronizations drawn: {text}");
    assert!(
        text.contains("legend: = import  # synchronization"),
        "{text}"
    );
}

/// The dev fleet labels its primaries `env=prod` and its last server `env=staging`, so the
/// fan-out by selector works on it as on a real fleet.
#[test]
fn dev_fleet_of_five_runs_the_delta_cycle_on_its_production_servers() {
    let dir = tempfile::tempdir().unwrap();
    let cli_config = dir.path().join("cli.toml");
    let mut cmd = common::dev_command("syncfleet-controller");
    cmd.args(["--agents", "5", "--time-scale", "0.01"])
        .arg("--cli-config")
        .arg(&cli_config);
    let _dev = Proc::spawn("dev", &mut cmd, dir.path().join("dev.log"));
    let cli = cli_with_config(&cli_config);
    let agents = wait_agents_connected(cli, 5);
    let env_of = |name: &str| -> String {
        agents
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .map(|a| a["labels"]["env"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(env_of("sync-01"), "prod");
    assert_eq!(env_of("sync-05"), "staging");
    let out = cli(&[
        "run",
        "-l",
        "env=prod",
        "--sequence",
        "delta-cycle",
        "--follow",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json_of(&out);
    let expected: BTreeSet<String> = AGENTS[..4].iter().map(|s| s.to_string()).collect();
    assert_eq!(agents_of(&v["runs"]), expected, "{v:#}");
    let out = cli(&["timeline", "--since", "10m", "-l", "env=prod", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tl = json_of(&out);
    for r in v["runs"].as_array().unwrap() {
        let shown = tl["servers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["agent"] == r["agent"])
            .flat_map(|s| s["runs"].as_array().unwrap().iter())
            .any(|t| t["id"] == r["id"]);
        assert!(shown, "run {} missing from the timeline: {tl:#}", r["id"]);
    }
}
