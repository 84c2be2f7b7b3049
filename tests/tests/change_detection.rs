//! Runs on change end to end: a real OpenLDAP server (Debian's slapd, started by the harness on
//! a free port with its own database), a real PostgreSQL server, the real controller and a real
//! agent process polling them. Changes under the watched OU start the schedule's sequence on the
//! agent; ignored attributes and changes outside the scope start nothing; a burst becomes one
//! run that says how many changes it coalesced; an agent restarted between two changes misses
//! neither; a fallback interval fires when nothing changes.
#![allow(
    clippy::disallowed_methods,
    reason = "a test measures and waits in real time, next to real processes"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test: failures should be loud"
)]

mod common;

use std::time::{Duration, Instant};

use common::{Fleet, stdout, wait_for};
use syncfleet_tests::slapd::{OTHER, PEOPLE, ROOT_DN, ROOT_PASSWORD, TestSlapd};

const SEQ: &str =
    "kind: Sequence\nname: quick\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n";

/// Runs of schedule `schedule`, oldest first, as `runs list -o json` gives them.
fn runs_of(fleet: &Fleet, schedule: &str) -> Vec<serde_json::Value> {
    let v = fleet.cli_json(&["runs", "list", "--schedule", schedule, "-o", "json"]);
    let mut runs = v.as_array().cloned().unwrap_or_default();
    runs.reverse();
    runs
}

fn change_runs(fleet: &Fleet, schedule: &str) -> Vec<serde_json::Value> {
    runs_of(fleet, schedule)
        .into_iter()
        .filter(|r| r["origin"] == "change")
        .collect()
}

/// Waits until schedule `schedule` has `n` change runs; returns them and how long it took.
fn wait_change_runs(
    fleet: &Fleet,
    schedule: &str,
    n: usize,
    within: Duration,
) -> Vec<serde_json::Value> {
    wait_for(&format!("{n} change runs of {schedule}"), within, || {
        let r = change_runs(fleet, schedule);
        (r.len() >= n).then_some(r)
    })
}

/// No new change run of `schedule` for `quiet` (beyond `n`).
fn assert_no_more_change_runs(fleet: &Fleet, schedule: &str, n: usize, quiet: Duration, why: &str) {
    let other = common::poll(quiet, || {
        let r = change_runs(fleet, schedule);
        (r.len() != n).then_some(r)
    });
    assert!(other.is_none(), "{why}: {other:#?}");
}

#[test]
fn ldap_changes_under_the_watched_ou_start_the_sequence_once_per_quiet_period() {
    let slapd = TestSlapd::start();
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let password = fleet.dir.path().join("ldap.password");
    std::fs::write(&password, ROOT_PASSWORD).unwrap();
    let credentials = format!(
        "[credentials.test-ldap]\nusername = {ROOT_DN:?}\npassword_file = {:?}\n",
        password
    );
    fleet.start_agent_with("sync-01", &credentials);
    fleet.wait_connected(&["sync-01"]);
    let quiet_for = 2;
    let file = fleet.fleet_file(
        "on-change.yaml",
        &format!(
            "{SEQ}---\nkind: Schedule\nname: people\nsequence: quick\ntargets: {{agents: [sync-01]}}\n\
             trigger:\n  on_change:\n    quiet_for: {quiet_for}s\n    min_interval: 1s\n    sources:\n      - name: people\n        poll: 1s\n        ldap:\n          url: {}\n          base: {PEOPLE:?}\n          object_classes: [inetOrgPerson]\n          ignore_attributes: [description]\n          credential: test-ldap\n",
            slapd.url()
        ),
    );
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));

    // The agent has its baseline once `schedules show` lists a successful poll of the source
    // (the OU is empty: there is no cursor yet).
    wait_for("the source's first poll", Duration::from_secs(30), || {
        let s = fleet.cli_json(&["schedules", "show", "people", "-o", "json"]);
        let status = &s["change_sources"][0]["status"];
        (status["last_poll"].is_string() && status["error"] == "").then_some(())
    });

    // One user added under the watched OU: one run within quiet_for + 5 s.
    let t = Instant::now();
    slapd.add_person(PEOPLE, "alice");
    let runs = wait_change_runs(&fleet, "people", 1, Duration::from_secs(quiet_for + 5 + 5));
    println!("first change run after {:?}", t.elapsed());
    assert_eq!(runs[0]["coalesced_changes"], 1, "{:#}", runs[0]);
    assert_eq!(runs[0]["agent"], "sync-01");
    fleet.wait_run_state(
        runs[0]["id"].as_str().unwrap(),
        &["succeeded"],
        Duration::from_secs(60),
    );

    // Only an ignored attribute changes: nothing starts. Outside the base: nothing starts.
    slapd.replace(
        &format!("uid=alice,{PEOPLE}"),
        "description",
        "badge reprinted",
    );
    slapd.add_person(OTHER, "mallory");
    assert_no_more_change_runs(
        &fleet,
        "people",
        1,
        Duration::from_secs(quiet_for + 6),
        "an ignored attribute or a change outside the base started a run",
    );

    // 50 users within the quiet period: one run that coalesced 50.
    for i in 0..50 {
        slapd.add_person(PEOPLE, &format!("burst{i:02}"));
    }
    let runs = wait_change_runs(&fleet, "people", 2, Duration::from_secs(60));
    assert_eq!(runs[1]["coalesced_changes"], 50, "{:#}", runs[1]);
    assert_no_more_change_runs(
        &fleet,
        "people",
        2,
        Duration::from_secs(quiet_for + 4),
        "the burst gave more than one run",
    );

    // The agent is stopped, a user is added, the agent starts again: the change is seen once.
    let agent = fleet.agents.get_mut("sync-01").unwrap();
    agent.kill9();
    slapd.add_person(PEOPLE, "while-down");
    fleet.start_agent_with("sync-01", &credentials);
    fleet.wait_connected(&["sync-01"]);
    let runs = wait_change_runs(&fleet, "people", 3, Duration::from_secs(60));
    assert_eq!(runs[2]["coalesced_changes"], 1, "{:#}", runs[2]);
    slapd.add_person(PEOPLE, "after-restart");
    let runs = wait_change_runs(&fleet, "people", 4, Duration::from_secs(60));
    assert_eq!(runs[3]["coalesced_changes"], 1, "{:#}", runs[3]);
    assert_no_more_change_runs(
        &fleet,
        "people",
        4,
        Duration::from_secs(quiet_for + 4),
        "a change was reported twice",
    );

    // What operators see.
    let show = stdout(&fleet.cli(&["schedules", "show", "people"]));
    assert!(show.contains("change sources"), "{show}");
    assert!(show.contains("on change of people (ldap)"), "{show}");
    let (_, metrics) = common::http_get(fleet.http_port, "/metrics").unwrap();
    assert!(
        metrics.contains("syncfleet_change_runs_total{schedule=\"people\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("syncfleet_changes_detected_total{schedule=\"people\"} 53"),
        "{metrics}"
    );
}

#[test]
fn a_wrong_password_is_shown_as_the_sources_error_and_starts_nothing() {
    let slapd = TestSlapd::start();
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let password = fleet.dir.path().join("ldap.password");
    std::fs::write(&password, "not-the-password").unwrap();
    fleet.start_agent_with(
        "sync-01",
        &format!(
            "[credentials.test-ldap]\nusername = {ROOT_DN:?}\npassword_file = {:?}\n",
            password
        ),
    );
    fleet.wait_connected(&["sync-01"]);
    let file = fleet.fleet_file(
        "on-change.yaml",
        &format!(
            "{SEQ}---\nkind: Schedule\nname: people\nsequence: quick\ntargets: {{agents: [sync-01]}}\n\
             trigger:\n  on_change:\n    sources:\n      - name: people\n        poll: 1s\n        ldap: {{url: {}, base: {PEOPLE:?}, credential: test-ldap}}\n",
            slapd.url()
        ),
    );
    assert!(
        fleet
            .cli(&["apply", "-f", file.to_str().unwrap()])
            .status
            .success()
    );
    let error = wait_for(
        "the bind error in schedules show",
        Duration::from_secs(30),
        || {
            let s = fleet.cli_json(&["schedules", "show", "people", "-o", "json"]);
            let e = s["change_sources"][0]["status"]["error"]
                .as_str()?
                .to_string();
            (!e.is_empty()).then_some(e)
        },
    );
    assert!(error.to_lowercase().contains("bind"), "{error}");
    assert!(
        !error.contains("not-the-password"),
        "the error shows the secret: {error}"
    );
    // The agent's health says so too.
    let show = stdout(&fleet.cli(&["agents", "show", "sync-01"]));
    assert!(show.contains("1 polled, 1 failing"), "{show}");
    let line = show
        .lines()
        .find(|l| l.trim_start().starts_with("people/people (ldap "))
        .unwrap_or_else(|| panic!("no line for the failing source:\n{show}"));
    assert!(line.contains(&error), "{line}");
    let agent = fleet.cli_json(&["agents", "show", "sync-01", "-o", "json"]);
    assert_eq!(agent["change_sources"][0]["schedule"], "people");
    assert_eq!(agent["change_sources"][0]["error"], error.as_str());
    let (_, metrics) = common::http_get(fleet.http_port, "/metrics").unwrap();
    assert!(
        metrics.contains("syncfleet_change_source_errors{schedule=\"people\",source=\"people\"} 1"),
        "{metrics}"
    );
    slapd.add_person(PEOPLE, "alice");
    assert_no_more_change_runs(
        &fleet,
        "people",
        0,
        Duration::from_secs(8),
        "a source that cannot bind started a run",
    );
}

#[test]
fn a_sql_watermark_that_moves_starts_one_run_and_the_fallback_interval_fires_without_changes() {
    let pg = syncfleet_tests::postgres::TestPostgres::shared();
    let url = pg.create_database("changes");
    pg.psql(
        &url,
        "CREATE TABLE person (id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now())",
    );
    pg.psql(&url, "INSERT INTO person (id) VALUES (1)");
    let fleet = Fleet::started(&["sync-01"], 0.01);
    let file = fleet.fleet_file(
        "on-change.yaml",
        &format!(
            "{SEQ}---\nkind: Schedule\nname: hr\nsequence: quick\ntargets: {{agents: [sync-01]}}\n\
             trigger:\n  on_change:\n    quiet_for: 1s\n    min_interval: 1s\n    sources:\n      - name: hr\n        poll: 1s\n        sql: {{driver: postgres, connection: {url:?}, query: \"SELECT max(updated_at) FROM person\"}}\n\
             ---\nkind: Schedule\nname: fallback\nsequence: quick\ntargets: {{agents: [sync-01]}}\n\
             trigger:\n  every: 3s\n  on_change:\n    sources:\n      - name: hr\n        poll: 1h\n        sql: {{driver: postgres, connection: {url:?}, query: \"SELECT max(updated_at) FROM person\"}}\n"
        ),
    );
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    wait_for(
        "the SQL source's first poll",
        Duration::from_secs(30),
        || {
            let s = fleet.cli_json(&["schedules", "show", "hr", "-o", "json"]);
            (s["change_sources"][0]["status"]["cursor"]
                .as_str()
                .is_some_and(|c| !c.is_empty()))
            .then_some(())
        },
    );
    assert_no_more_change_runs(
        &fleet,
        "hr",
        0,
        Duration::from_secs(3),
        "a SQL source started a run without a change",
    );
    pg.psql(
        &url,
        "UPDATE person SET updated_at = now() + interval '1 second' WHERE id = 1",
    );
    let runs = wait_change_runs(&fleet, "hr", 1, Duration::from_secs(30));
    assert_eq!(runs[0]["coalesced_changes"], 1, "{:#}", runs[0]);
    assert_no_more_change_runs(
        &fleet,
        "hr",
        1,
        Duration::from_secs(4),
        "one moved watermark gave more than one run",
    );
    // The fallback schedule's source polls hourly and nothing changed for it: its interval
    // fires anyway.
    let fallback = wait_for("two fallback runs", Duration::from_secs(30), || {
        let r = runs_of(&fleet, "fallback");
        (r.len() >= 2).then_some(r)
    });
    assert!(
        fallback.iter().all(|r| r["origin"] != "change"),
        "{fallback:#?}"
    );
}
