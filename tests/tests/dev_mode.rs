//! `syncfleet-controller dev`: one command, a whole fleet, a CLI context for a second shell.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    Proc, bin, cli_with_config, free_port, run_followed, wait_agents_connected,
    wait_agents_connected_within, wait_for,
};

/// The 8-character id `run --follow` prints in its progress lines (`run 01a23390 ...`).
fn short_id_in(progress: &str) -> Option<String> {
    progress
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find_map(|w| {
            (w[0] == "run" && w[1].len() == 8 && w[1].bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| w[1].to_string())
        })
}

/// `syncfleet-controller dev` ([`common::dev_command`]), its CLI context
/// in `dir/cli.toml`, its log in `dir/dev.log`; returns the process and the file its banner
/// (stdout) goes to.
fn spawn_dev(dir: &std::path::Path, extra: &[&str]) -> (Proc, std::path::PathBuf) {
    let mut cmd = common::dev_command("syncfleet-controller");
    cmd.args(extra)
        .arg("--cli-config")
        .arg(dir.join("cli.toml"));
    let banner = dir.join("dev.stdout");
    let dev = Proc::spawn_with_stdout(
        "dev",
        &mut cmd,
        dir.join("dev.log"),
        std::fs::File::create(&banner).unwrap(),
    );
    (dev, banner)
}

#[test]
fn dev_mode_runs_a_fleet_the_cli_can_drive() {
    let dir = tempfile::tempdir().unwrap();
    let cli_config = dir.path().join("cli.toml");
    let (dev, banner) = spawn_dev(dir.path(), &["--log-format", "json"]);
    let cli = cli_with_config(&cli_config);
    // From "a second shell": the dev context written by `dev` is all the CLI needs.
    let agents = wait_agents_connected(cli, 3);
    for a in agents.as_array().unwrap() {
        let mas: Vec<&str> = a["management_agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert!(
            mas.contains(&"AD") && mas.contains(&"MIM Service"),
            "{mas:?}"
        );
    }
    let run = run_followed(cli, "sync-01", &["AD:Delta Import"]);
    let id = run["id"].as_str().unwrap();
    let out = cli(&["runs", "show", id, "-o", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let step = &shown["steps"][0];
    assert!(
        step["result"].as_str().unwrap().starts_with("success")
            || step["result"] == "completed-no-objects"
    );
    assert!(step["counters"]["stage-update"].is_u64(), "{shown:#}");
    // The short id that `--follow` prints names the run for `runs show`.
    let out = cli(&["run", "sync-01", "--step", "AD:Delta Import", "--follow"]);
    let progress = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{progress}");
    let short = short_id_in(&progress).unwrap_or_else(|| panic!("no short id in {progress}"));
    let out = cli(&["runs", "show", &short, "-o", "json"]);
    assert!(
        out.status.success(),
        "runs show {short}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        shown["id"].as_str().unwrap().starts_with(&short),
        "{shown:#}"
    );
    // The banner is on stdout and names the CLI; stderr holds only JSON log lines.
    let banner = std::fs::read_to_string(&banner).unwrap();
    assert!(banner.contains("syncfleet dev fleet is up"), "{banner}");
    assert!(banner.contains("CLI: "), "{banner}");
    for line in dev.log_text().lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON log line on stderr: {line}"
        );
    }
    // The example fleet is loaded, with the change-triggered schedule on the fleet's own
    // directory (slapd is installed where the tests run).
    assert!(banner.contains("directory: ldap://127.0.0.1:"), "{banner}");
    let out = cli(&["get", "schedules", "-o", "json"]);
    let scheds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<&str> = scheds
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "delta-every-3m",
            "nightly-full",
            "people-on-change",
            "staging-delta"
        ],
        "{scheds:#}"
    );
    // Ctrl-C stops it cleanly.
    dev.signal("INT");
    let mut dev = dev;
    let status = wait_for("dev mode to stop", Duration::from_secs(30), || {
        dev.child.try_wait().ok().flatten()
    });
    assert!(status.success(), "{}", dev.log_text());
    // The fleet and its temporary credentials are gone: the CLI says the controller is not
    // running rather than naming a missing file.
    let out = cli(&["agents", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not running"), "{err}");
    assert!(err.contains("syncfleet dev"), "{err}");
}

#[test]
fn dev_mode_runs_thousands_of_agents_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let cli_config = dir.path().join("cli.toml");
    let console = free_port();
    let cli = cli_with_config(&cli_config);

    // Beyond the maximum: refused before anything starts, naming the bound.
    let out = Command::new(bin("syncfleet-controller"))
        .args(["dev", "--agents", "5001", "--no-example-fleet"])
        .arg("--cli-config")
        .arg(&cli_config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("between 1 and 5000 (got 5001)"), "{err}");

    let mut cmd = common::dev_command("syncfleet-controller");
    cmd.args(["--agents", "2000", "--no-example-fleet"])
        .args(["--console-listen", &format!("127.0.0.1:{console}")])
        .args(["--log-format", "json"])
        .arg("--cli-config")
        .arg(&cli_config);
    let _dev = Proc::spawn("dev", &mut cmd, dir.path().join("dev.log"));
    // Every agent connected (the connection caps and the open-file limit follow --agents).
    let agents = wait_agents_connected_within(cli, 2000, Duration::from_secs(240));
    let names: std::collections::BTreeSet<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2000);
    assert!(
        names.contains("sync-01") && names.contains("sync-2000"),
        "{names:?}"
    );
    // And they work: a run on the last one.
    let run = run_followed(cli, "sync-2000", &["AD:Delta Import"]);
    assert_eq!(run["agent"], "sync-2000", "{run:#}");
}

/// The fleet's own directory never outlives it: a `dev` killed with SIGKILL (no chance to clean
/// up) takes its slapd with it, so no orphan keeps the directory's port.
#[test]
fn the_dev_directory_stops_when_the_fleet_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, banner) = spawn_dev(dir.path(), &[]);
    let addr: std::net::SocketAddr =
        wait_for("the banner's directory", Duration::from_secs(60), || {
            let text = std::fs::read_to_string(&banner).ok()?;
            let rest = text.split("directory: ldap://").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        });
    assert!(
        std::net::TcpStream::connect(addr).is_ok(),
        "the directory does not listen on {addr}: {}",
        dev.log_text()
    );
    dev.kill9();
    wait_for(
        "the directory to stop with its fleet",
        Duration::from_secs(15),
        || std::net::TcpStream::connect(addr).is_err().then_some(()),
    );
}
