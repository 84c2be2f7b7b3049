//! End-to-end on the PostgreSQL store: the real controller binary with
//! `--store postgres://…` on a real PostgreSQL server (`syncfleet_tests::postgres`), a real
//! agent, runs started through the `syncfleet` CLI.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Fleet, bin, free_port, stderr, wait_for};
use syncfleet_tests::postgres::TestPostgres;

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// The audit entry of the (one) successful `StartRun` for sync-01.
fn start_run_audit(fleet: &Fleet) -> Option<serde_json::Value> {
    fleet
        .cli_json(&["audit", "list", "--limit", "1000", "-o", "json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["action"] == "StartRun" && e["result"] == "ok" && e["target"] == "agent/sync-01"
        })
        .cloned()
}

#[test]
fn runs_and_audit_live_in_postgres_across_a_controller_restart() {
    let pg = TestPostgres::shared();
    let url = pg.create_database("e2e");
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller_with(&["--store", &url]);
    fleet.start_agent("sync-01", 0, 0.01);
    fleet.wait_connected(&["sync-01"]);

    let out = fleet.cli(&[
        "run",
        "sync-01",
        "--step",
        "AD:Delta Import",
        "--follow",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "run --follow failed: {}\n{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    let followed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = followed["id"].as_str().unwrap().to_string();
    let run = fleet.run_json(&id).unwrap();
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let audited = start_run_audit(&fleet).expect("no StartRun audit entry");

    // The state is in PostgreSQL, not in an SQLite file of the data directory.
    assert!(!fleet.data_dir().join("controller.db").exists());
    assert_eq!(
        pg.psql(&url, &format!("SELECT state FROM runs WHERE id = '{id}'")),
        "succeeded"
    );
    assert_eq!(
        pg.psql(
            &url,
            "SELECT count(*) FROM audit WHERE who LIKE 'operator/%'"
        )
        .parse::<u64>()
        .unwrap()
        .min(1),
        1
    );

    // Kill the controller without warning and start it again on the same database.
    fleet.controller_mut().kill9();
    fleet.start_controller_with(&["--store", &url]);
    let again = wait_for("the restarted controller to answer", RUN_TIMEOUT, || {
        fleet.run_json(&id)
    });
    assert_eq!(again["state"], "succeeded");
    assert_eq!(again["steps"], run["steps"]);
    assert_eq!(
        start_run_audit(&fleet).as_ref(),
        Some(&audited),
        "the audit entry changed"
    );
    fleet.wait_connected(&["sync-01"]);
    let list = fleet.cli_json(&["runs", "list", "--agent", "sync-01", "-o", "json"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str())
    );
}

/// A store that cannot be reached, or a `store` value of no accepted form, stops the
/// controller with a message naming the setting or the URL (never its password).
#[test]
fn bad_or_unreachable_store_stops_the_controller_with_a_clear_error() {
    let fleet = Fleet::init(&[]);
    let serve = |store_flag: Option<&str>, env: Option<&str>| {
        let mut cmd = Command::new(bin("syncfleet-controller"));
        cmd.args(["serve", "--fleet", "e2e", "--data-dir"])
            .arg(fleet.data_dir())
            .args(["--grpc-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--set", "console.listen=127.0.0.1:0"]);
        if let Some(s) = store_flag {
            cmd.args(["--store", s]);
        }
        if let Some(e) = env {
            cmd.env("SYNCFLEET_STORE", e);
        }
        cmd.output().unwrap()
    };

    let port = free_port();
    let out = serve(
        Some(&format!("postgres://sf:hunter2@127.0.0.1:{port}/syncfleet")),
        None,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot connect to the PostgreSQL store postgres://sf:***@127.0.0.1:{port}/syncfleet"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    // The effective configuration shows the store without its password.
    let mut cmd = Command::new(bin("syncfleet-controller"));
    let out = cmd
        .args(["serve", "--dump-config", "--data-dir"])
        .arg(fleet.data_dir())
        .env(
            "SYNCFLEET_STORE",
            "postgres://sf:hunter2@db.example/syncfleet",
        )
        .output()
        .unwrap();
    let dumped = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        dumped.contains("store = \"postgres://sf:***@db.example/syncfleet\""),
        "{dumped}"
    );
    assert!(!dumped.contains("hunter2"), "{dumped}");

    for (flag, env) in [
        (Some("mysql://sf:hunter2@db/x"), None),
        (None, Some("/var/lib/syncfleet/controller.db")),
    ] {
        let out = serve(flag, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains("`store`"), "{err}");
        assert!(
            err.contains("sqlite:PATH") && err.contains("postgres://USER"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}
