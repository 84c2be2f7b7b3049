//! Schedules end to end: real controller and agents, fleet files applied with the real CLI.
//! Waits are liveness bounds; counts that depend on timing are checked as ranges or lower
//! bounds, to allow for a loaded machine.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "these tests wait for real child processes by polling with short blocking sleeps"
)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Fleet, stdout, wait_for};

fn apply(fleet: &Fleet, yaml: &str) -> String {
    let path = fleet.dir.path().join(format!(
        "fleet-{}.yaml",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&path, yaml).unwrap();
    let out = fleet.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "apply failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    stdout(&out)
}

fn runs_of(fleet: &Fleet, schedule: &str) -> Vec<serde_json::Value> {
    let all = fleet.cli_json(&["runs", "list", "--limit", "1000", "-o", "json"]);
    all.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["schedule"] == schedule)
        .cloned()
        .collect()
}

fn schedule_json(fleet: &Fleet, name: &str) -> serde_json::Value {
    fleet.cli_json(&["schedules", "show", name, "-o", "json"])
}

fn ms(v: &serde_json::Value) -> i64 {
    let s = v.as_str().unwrap();
    chrono_free_parse(s)
}

/// Milliseconds since the epoch of an RFC 3339 UTC time like 2026-11-28T04:04:20.643Z.
fn chrono_free_parse(s: &str) -> i64 {
    let (date, time) = s.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    let millis: i64 = format!("{frac:0<3}")[..3].parse().unwrap();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + millis
}

const ONE_STEP: &str =
    "kind: Sequence\nname: quick\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n";

#[test]
fn a_two_second_cron_fires_on_three_agents_with_lateness() {
    let fleet = Fleet::started(&["sync-01", "sync-02", "sync-03"], 0.01);
    let diff = apply(
        &fleet,
        &format!(
            "{ONE_STEP}---\nkind: Schedule\nname: every-2s\nsequence: quick\ntargets: {{selector: env=e2e}}\ntrigger: {{cron: [\"*/2 * * * * *\"]}}\n"
        ),
    );
    assert!(diff.contains("created schedule/every-2s"), "{diff}");
    std::thread::sleep(Duration::from_secs(31));
    let mut per_agent: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for r in runs_of(&fleet, "every-2s") {
        per_agent
            .entry(r["agent"].as_str().unwrap().to_string())
            .or_default()
            .push(r);
    }
    assert_eq!(per_agent.len(), 3);
    for (agent, mut runs) in per_agent {
        assert!(
            (12..=16).contains(&runs.len()),
            "{agent}: {} runs in 30 s",
            runs.len()
        );
        runs.sort_by_key(|r| ms(&r["nominal_time"]));
        for pair in runs.windows(2) {
            let gap = ms(&pair[1]["nominal_time"]) - ms(&pair[0]["nominal_time"]);
            assert_eq!(gap, 2000, "{agent}: nominal times 2 s apart");
        }
        let started: Vec<&serde_json::Value> = runs
            .iter()
            .filter(|r| r["started_at"].is_string())
            .collect();
        assert!(started.len() >= runs.len() - 2);
        for r in started {
            let lateness = r["lateness_ms"].as_i64().unwrap();
            assert!(lateness >= 0, "{r:#}");
        }
    }
    let show = schedule_json(&fleet, "every-2s");
    assert!(
        show["counters"]["fired"].as_u64().unwrap() >= 36,
        "{show:#}"
    );
    assert_eq!(show["next"].as_array().unwrap().len(), 10);
}

#[test]
fn a_sequence_longer_than_its_interval_never_overlaps_and_reports_saturation() {
    // A full import of 12,000 objects at 0.3× takes about 8 s; the schedule fires every 3 s.
    let fleet = Fleet::started(&["sync-01"], 0.3);
    apply(
        &fleet,
        "kind: Sequence\nname: long\nstages:\n  - steps: [{ma: HR, profile: Full Import}]\n---\nkind: Schedule\nname: tight\nsequence: long\ntargets: {agents: [sync-01]}\ntrigger: {every: 3s}\noverlap: skip\n",
    );
    let show = wait_for("two finished runs", Duration::from_secs(90), || {
        let s = schedule_json(&fleet, "tight");
        let finished = s["recent"]
            .as_array()?
            .iter()
            .filter(|r| r["duration_ms"].as_i64().unwrap_or(0) > 0)
            .count();
        (finished >= 2).then_some(s)
    });
    assert!(
        show["counters"]["skipped_overlap"].as_u64().unwrap() >= 2,
        "{show:#}"
    );
    let sat = show["saturation"].as_f64().unwrap();
    assert!(sat > 1.0, "saturation {sat}");
    let warning = show["warning"].as_str().unwrap();
    assert!(
        warning.contains("lengthen the interval or split the sequence"),
        "{warning}"
    );
    // The human view says it too.
    let human = stdout(&fleet.cli(&["schedules", "show", "tight"]));
    assert!(human.contains("lengthen the interval"), "{human}");
    // No two runs of the schedule overlapped.
    let mut spans: Vec<(i64, i64)> = runs_of(&fleet, "tight")
        .iter()
        .filter(|r| r["started_at"].is_string())
        .map(|r| {
            (
                ms(&r["started_at"]),
                r["finished_at"]
                    .as_str()
                    .map_or(i64::MAX, |_| ms(&r["finished_at"])),
            )
        })
        .collect();
    spans.sort();
    for p in spans.windows(2) {
        assert!(p[0].1 <= p[1].0, "runs overlapped: {p:?}");
    }
}

#[test]
fn a_controller_killed_for_three_intervals_catches_up_once_within_the_window() {
    let mut fleet = Fleet::started(&["sync-01", "sync-02"], 0.01);
    // `autonomy: false`: no agent fires these on its own while the controller is down, so the
    // restarted controller has nothing to wait for and decides the catch-up at once, before the
    // next regular fire time 1.2 s later (an autonomous schedule's catch-up waits for the agents'
    // hand-over, which `tests/tests/autonomy.rs` covers).
    apply(
        &fleet,
        &format!(
            "{ONE_STEP}---\nkind: Schedule\nname: wide\nsequence: quick\ntargets: {{selector: env=e2e}}\ntrigger: {{every: 4s}}\ncatchup_window: 30s\nautonomy: false\n---\nkind: Schedule\nname: narrow\nsequence: quick\ntargets: {{selector: env=e2e}}\ntrigger: {{every: 4s}}\ncatchup_window: 2s\nautonomy: false\n"
        ),
    );
    // Let each schedule fire at least once.
    wait_for("first fires", Duration::from_secs(30), || {
        (runs_of(&fleet, "wide").len() >= 2 && runs_of(&fleet, "narrow").len() >= 2).then_some(())
    });
    // Kill it between fire times, when nothing is in flight (a run in flight at the crash would
    // rightly count as still running and make the catch-up skip by the overlap policy).
    let terminal = [
        "succeeded",
        "completed_with_errors",
        "failed",
        "cancelled",
        "unknown",
    ];
    wait_for("a quiet moment", Duration::from_secs(60), || {
        let phase = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 4000;
        let quiet = runs_of(&fleet, "wide")
            .iter()
            .chain(runs_of(&fleet, "narrow").iter())
            .all(|r| terminal.contains(&r["state"].as_str().unwrap_or_default()));
        ((2000..3500).contains(&phase) && quiet).then_some(())
    });
    let before_wide = runs_of(&fleet, "wide").len();
    let before_narrow = runs_of(&fleet, "narrow").len();
    fleet.controller_mut().kill9();
    std::thread::sleep(Duration::from_secs(12));
    // Restart ~2.8 s after a fire time: that missed time is inside the wide window (30 s) and
    // outside the narrow one (2 s).
    wait_for("the right moment", Duration::from_secs(10), || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 4000;
        (2700..2900).contains(&now).then_some(())
    });
    fleet.start_controller();
    fleet.wait_connected(&["sync-01", "sync-02"]);
    // The catch-up waits until both agents have replayed what ran while the controller was
    // down; then it runs once per agent.
    let wide = wait_for("the catch-up runs", Duration::from_secs(30), || {
        let runs = runs_of(&fleet, "wide");
        (runs.iter().filter(|r| r["origin"] == "catch-up").count() >= 2).then_some(runs)
    });
    std::thread::sleep(Duration::from_secs(1));
    let wide = {
        let again = runs_of(&fleet, "wide");
        if again.len() >= wide.len() {
            again
        } else {
            wide
        }
    };
    let catchups: Vec<&serde_json::Value> =
        wide.iter().filter(|r| r["origin"] == "catch-up").collect();
    assert_eq!(
        catchups.len(),
        2,
        "one catch-up per agent: {catchups:#?}\n{}",
        fleet.controller.as_ref().unwrap().log_text()
    );
    assert_ne!(catchups[0]["agent"], catchups[1]["agent"]);
    assert!(wide.len() >= before_wide + 2);
    let narrow = runs_of(&fleet, "narrow");
    assert!(
        narrow.iter().all(|r| r["origin"] != "catch-up"),
        "no catch-up outside the window"
    );
    assert!(
        narrow.len() >= before_narrow,
        "only regular fires since the restart"
    );
    let wide_show = schedule_json(&fleet, "wide");
    let narrow_show = schedule_json(&fleet, "narrow");
    assert!(
        wide_show["counters"]["missed_catchup"].as_u64().unwrap() >= 2,
        "{wide_show:#}"
    );
    assert!(
        narrow_show["counters"]["missed_catchup"].as_u64().unwrap() >= 3,
        "{narrow_show:#}"
    );
}

#[test]
fn a_mass_delete_holds_the_run_pauses_the_schedule_and_approval_lets_it_through() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let server = fleet.dir.path().join("server.toml");
    std::fs::write(
        &server,
        "seed = 11\ntime_scale = 0.01\n\
         [[mas]]\nname = \"AD\"\nma_type = \"AD\"\nconnectors = 10000\nchange_rate_per_hour = 0.0\n\
         source_events = [{at_secs = 0.0, delete = 800}]\n\
         [[mas]]\nname = \"MIM Service\"\nma_type = \"FIM\"\nconnectors = 10000\nchange_rate_per_hour = 0.0\n",
    )
    .unwrap();
    fleet.start_agent_with(
        "sync-01",
        &format!(
            "[engine]\nkind = \"sim\"\nsim_file = {server:?}\n[executor]\nstagger = \"10ms\"\n"
        ),
    );
    fleet.wait_connected(&["sync-01"]);
    apply(
        &fleet,
        "kind: Sequence\nname: guarded\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n  - steps: [{ma: AD, profile: Delta Sync, guard: {max_staged_deletes: \"2%\"}}]\n---\nkind: Schedule\nname: guarded-5s\nsequence: guarded\ntargets: {agents: [sync-01]}\ntrigger: {every: 5s}\n",
    );
    let held = wait_for("a held run", Duration::from_secs(60), || {
        runs_of(&fleet, "guarded-5s")
            .into_iter()
            .find(|r| r["state"] == "held")
    });
    let id = held["id"].as_str().unwrap().to_string();
    let run = fleet.run_json(&id).unwrap();
    assert_eq!(run["steps"][0]["state"], "done");
    assert_eq!(run["steps"][1]["state"], "held", "{run:#}");
    let why = run["steps"][1]["detail"].as_str().unwrap();
    assert!(why.contains("800 staged deletes"), "{why}");
    assert!(
        run["message"]
            .as_str()
            .unwrap()
            .contains("syncfleet runs approve")
    );
    // The schedule paused itself with a note saying why.
    let show = schedule_json(&fleet, "guarded-5s");
    assert_eq!(show["pause"]["paused"], true, "{show:#}");
    assert!(
        show["pause"]["note"]
            .as_str()
            .unwrap()
            .contains("800 staged deletes"),
        "{show:#}"
    );
    assert_eq!(show["counters"]["held"], 1);
    // Nothing more runs while it is paused.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(runs_of(&fleet, "guarded-5s").len(), 1);
    // While the fleet is paused, approval creates no run and says why.
    let out = fleet.cli(&["fleet", "pause", "--note", "MIM hotfix"]);
    assert!(out.status.success());
    let out = fleet.cli(&["runs", "approve", &id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MIM hotfix"), "{err}");
    assert_eq!(runs_of(&fleet, "guarded-5s").len(), 1);
    assert_eq!(fleet.run_json(&id).unwrap()["continued_in"], "");
    let out = fleet.cli(&["fleet", "resume"]);
    assert!(out.status.success());
    // Approval: the held step runs once, as a linked run.
    let out = fleet.cli(&[
        "runs",
        "approve",
        &id,
        "--note",
        "OU move confirmed with HR",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cont = stdout(&out);
    let cont_run = fleet.wait_run_state(
        &cont,
        &["succeeded", "failed", "held"],
        Duration::from_secs(60),
    );
    assert_eq!(cont_run["state"], "succeeded", "{cont_run:#}");
    assert_eq!(cont_run["continuation_of"], id.as_str());
    assert_eq!(cont_run["steps"][0]["state"], "skipped");
    assert_eq!(cont_run["steps"][1]["state"], "done");
    assert!(
        cont_run["steps"][1]["counters"]["connector-delete-remove-mv"]
            .as_u64()
            .is_some(),
        "{cont_run:#}"
    );
    let run = fleet.run_json(&id).unwrap();
    assert_eq!(run["continued_in"], cont.as_str());
    assert_eq!(run["approved_by"], "operator/admin");
    // Approving twice is refused.
    assert!(!fleet.cli(&["runs", "approve", &id]).status.success());
}

#[test]
fn apply_get_apply_round_trips_and_invalid_files_change_nothing() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy/examples/fleet.yaml");
    let out = fleet.cli(&["apply", "-f", example.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(text.contains("created schedule/nightly-full"), "{text}");
    assert!(
        text.contains("Europe/Oslo"),
        "fire times shown in the schedule's zone: {text}"
    );
    // get -o yaml -> apply --dry-run: no change.
    let seqs = fleet.cli(&["get", "sequences", "-o", "yaml"]);
    let scheds = fleet.cli(&["get", "schedules", "-o", "yaml"]);
    let back = fleet.dir.path().join("back.yaml");
    std::fs::write(
        &back,
        format!("{}\n---\n{}", stdout(&seqs), stdout(&scheds)),
    )
    .unwrap();
    let out = fleet.cli(&["apply", "-f", back.to_str().unwrap(), "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines.iter().all(|l| l.starts_with("unchanged ")), "{text}");
    // An invalid file (bad cron field count, unknown overlap) applies nothing, and says where.
    let bad = fleet.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Sequence\nname: extra\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n---\nkind: Schedule\nname: broken\nsequence: extra\ntargets: {agents: [sync-01]}\ntrigger: {cron: [\"* * * *\"]}\noverlap: skipp\n",
    )
    .unwrap();
    let out = fleet.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml") && err.contains("overlap"), "{err}");
    let names = fleet.cli_json(&["get", "sequences", "-o", "json"]);
    assert!(
        !names
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "extra"),
        "nothing from the invalid file was applied"
    );
    // A manual run of a stored sequence honours the same rules.
    let out = fleet.cli(&["run", "sync-01", "--sequence", "nope"]);
    assert!(!out.status.success());
}

#[test]
fn pauses_and_drains_are_kept_across_restarts_with_who_and_when() {
    let mut fleet = Fleet::started(&["sync-01"], 0.01);
    apply(
        &fleet,
        &format!(
            "{ONE_STEP}---\nkind: Schedule\nname: s\nsequence: quick\ntargets: {{agents: [sync-01]}}\ntrigger: {{every: 1h}}\n"
        ),
    );
    fn ok(fleet: &Fleet, args: &[&str]) {
        let out = fleet.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A pause needs a reason.
    assert!(!fleet.cli(&["schedules", "pause", "s"]).status.success());
    ok(
        &fleet,
        &["schedules", "pause", "s", "--note", "AD schema change"],
    );
    ok(
        &fleet,
        &["agents", "drain", "sync-01", "--note", "patching"],
    );
    ok(&fleet, &["fleet", "pause", "--note", "MIM hotfix 4.6.607"]);
    // While paused and draining nothing new starts, and the operator is told why.
    let out = fleet.cli(&["run", "sync-01", "--step", "AD:Delta Import"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MIM hotfix"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.controller_mut().kill9();
    fleet.start_controller();
    let show = schedule_json(&fleet, "s");
    assert_eq!(show["pause"]["paused"], true);
    assert_eq!(show["pause"]["note"], "AD schema change");
    assert_eq!(show["pause"]["by"], "operator/admin");
    assert!(show["pause"]["at"].is_string());
    let agent = fleet.cli_json(&["agents", "show", "sync-01", "-o", "json"]);
    assert_eq!(agent["drain"]["draining"], true, "{agent:#}");
    assert_eq!(agent["drain"]["note"], "patching");
    let status = fleet.cli_json(&["fleet", "status", "-o", "json"]);
    assert_eq!(status["pause"]["note"], "MIM hotfix 4.6.607", "{status:#}");
    // Resume the fleet: the draining agent still refuses new runs.
    ok(&fleet, &["fleet", "resume"]);
    let out = fleet.cli(&["run", "sync-01", "--step", "AD:Delta Import"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("draining"));
    ok(&fleet, &["agents", "resume", "sync-01"]);
    fleet.wait_connected(&["sync-01"]);
    let out = fleet.cli(&["run", "sync-01", "--step", "AD:Delta Import", "--follow"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value column of a `key: value` line of human output.
fn human_field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{text}"))
        .trim()
        .to_string()
}

#[test]
fn a_run_has_no_result_until_it_ends_and_an_interrupted_run_is_not_a_success() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    // Scale 1.0: each delta import lasts about 2 s.
    fleet.start_agent("sync-01", 0, 1.0);
    fleet.wait_connected(&["sync-01"]);
    let out = fleet.cli(&[
        "run",
        "sync-01",
        "--step",
        "AD:Delta Import",
        "--step",
        "AD:Delta Import",
        "--step",
        "AD:Delta Import",
        "--step",
        "AD:Delta Import",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out);
    // In progress with a step done: no result yet, in JSON and in human output.
    let run = wait_for("step 2 running", Duration::from_secs(60), || {
        let r = fleet.run_json(&id)?;
        (r["steps"][0]["state"] == "done" && r["steps"][1]["state"] == "running").then_some(r)
    });
    assert_eq!(run["state"], "running", "{run:#}");
    assert_eq!(run["result"], "", "a running run has no result: {run:#}");
    let human = stdout(&fleet.cli(&["runs", "show", &id]));
    assert_eq!(human_field(&human, "result"), "-", "{human}");
    let list = fleet.cli_json(&["runs", "list", "-o", "json"]);
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    assert_eq!(listed["result"], "", "{listed:#}");
    // The agent dies in the middle of step 2 and comes back: the run ends unknown.
    fleet.agents.get_mut("sync-01").unwrap().kill9();
    fleet.start_agent("sync-01", 0, 1.0);
    let run = fleet.wait_run_state(&id, &["unknown"], Duration::from_secs(60));
    assert_ne!(run["result"], "success", "{run:#}");
    assert_eq!(
        run["result"], "",
        "an unobserved outcome has no result: {run:#}"
    );
    assert_eq!(run["steps"][0]["state"], "done");
    let steps = run["steps"].as_array().unwrap();
    let not_run: Vec<&serde_json::Value> =
        steps.iter().filter(|s| s["state"] == "not_run").collect();
    assert_eq!(not_run.len(), 3, "{run:#}");
    for s in &not_run {
        assert!(s["started_at"].is_null(), "not_run has no start: {s:#}");
        assert!(s["finished_at"].is_null(), "{s:#}");
        assert_eq!(s["counters"], serde_json::json!({}), "{s:#}");
        assert_eq!(s["progress"], "", "{s:#}");
    }
    let human = stdout(&fleet.cli(&["runs", "show", &id]));
    assert_eq!(human_field(&human, "state"), "unknown", "{human}");
    assert_ne!(human_field(&human, "result"), "success", "{human}");
    for line in human.lines().filter(|l| l.contains("not_run")) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // # STAGE MA PROFILE(2 words) STATE RESULT DURATION RUN# ERRORS COUNTERS
        let state_at = cols.iter().position(|c| *c == "not_run").unwrap();
        assert_eq!(
            cols[state_at + 2],
            "-",
            "no duration for a step not run: {line}"
        );
        assert_eq!(
            cols[state_at + 5],
            "-",
            "no counters for a step not run: {line}"
        );
    }
}

/// A `buffer_one` schedule on a one-step sequence that lasts about 13 s, firing every 5 s.
const LONG_BUFFERED: &str = "kind: Sequence\nname: long\nstages:\n  - steps: [{ma: HR, profile: Full Import}]\n---\nkind: Schedule\nname: buffered\nsequence: long\ntargets: {agents: [sync-01]}\ntrigger: {every: 5s}\noverlap: buffer_one\n";

fn counter(show: &serde_json::Value, name: &str) -> u64 {
    show["counters"][name].as_u64().unwrap_or(0)
}

/// `sync-01` at 0.5× running the [`LONG_BUFFERED`] schedule, once a fire time is buffered
/// behind its first run.
fn fleet_with_a_buffered_fire_time() -> Fleet {
    let fleet = Fleet::started(&["sync-01"], 0.5);
    apply(&fleet, LONG_BUFFERED);
    wait_for("a buffered fire time", Duration::from_secs(60), || {
        (counter(&schedule_json(&fleet, "buffered"), "buffered") >= 1).then_some(())
    });
    fleet
}

/// Waits until run `id` has ended (succeeded, completed with errors, failed or unknown).
fn wait_ended(fleet: &Fleet, id: &str) -> serde_json::Value {
    fleet.wait_run_state(
        id,
        &["succeeded", "completed_with_errors", "failed", "unknown"],
        Duration::from_secs(60),
    )
}

#[test]
fn a_buffered_fire_time_survives_a_controller_crash() {
    let mut fleet = fleet_with_a_buffered_fire_time();
    let runs = runs_of(&fleet, "buffered");
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let first = ms(&runs[0]["nominal_time"]);
    assert!(
        runs[0]["finished_at"].is_null(),
        "the first run still runs: {runs:#?}"
    );
    // The fire time after the running run's is the buffered one.
    let buffered = first + 5000;
    fleet.controller_mut().kill9();
    fleet.start_controller();
    let run = wait_for(
        "the buffered fire time to run",
        Duration::from_secs(90),
        || {
            runs_of(&fleet, "buffered")
                .into_iter()
                .find(|r| ms(&r["nominal_time"]) == buffered)
        },
    );
    assert_eq!(run["origin"], "schedule", "{run:#}");
    // It ran after the first run, never beside it.
    let all = runs_of(&fleet, "buffered");
    let first_run = all
        .iter()
        .find(|r| ms(&r["nominal_time"]) == first)
        .unwrap();
    let first_end = wait_ended(&fleet, first_run["id"].as_str().unwrap());
    let done = wait_ended(&fleet, run["id"].as_str().unwrap());
    assert!(
        ms(&done["started_at"]) >= ms(&first_end["finished_at"]),
        "{first_end:#}\n{done:#}"
    );
}

#[test]
fn a_paused_fleet_releases_no_buffered_run() {
    let fleet = fleet_with_a_buffered_fire_time();
    let out = fleet.cli(&["fleet", "pause", "--note", "MIM hotfix"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = runs_of(&fleet, "buffered").remove(0);
    wait_ended(&fleet, first["id"].as_str().unwrap());
    // Give a (wrong) release time to happen.
    std::thread::sleep(Duration::from_secs(3));
    let runs = runs_of(&fleet, "buffered");
    assert_eq!(
        runs.len(),
        1,
        "no run is created while the fleet is paused: {runs:#?}"
    );
    let show = schedule_json(&fleet, "buffered");
    assert!(
        counter(&show, "skipped_paused") >= 1,
        "the buffered fire time is counted as skipped: {show:#}"
    );
}

#[test]
fn blacked_out_fire_times_are_counted() {
    let fleet = Fleet::started(&["sync-01"], 0.01);
    // Every 2 s; a 4 s blackout opens every 10 s: the fire times at :x0 and :x2 are blacked out.
    apply(
        &fleet,
        &format!(
            "{ONE_STEP}---\nkind: Schedule\nname: dark\nsequence: quick\ntargets: {{agents: [sync-01]}}\ntrigger: {{every: 2s}}\nblackout: [{{cron: \"*/10 * * * * *\", duration: 4s}}]\n"
        ),
    );
    std::thread::sleep(Duration::from_secs(25));
    let runs = runs_of(&fleet, "dark");
    assert!(runs.len() >= 6, "{runs:#?}");
    for r in &runs {
        let phase = ms(&r["nominal_time"]).rem_euclid(10_000);
        assert!(phase >= 4000, "a run inside the blackout: {r:#}");
    }
    let show = schedule_json(&fleet, "dark");
    assert!(counter(&show, "skipped_blackout") >= 3, "{show:#}");
    let human = stdout(&fleet.cli(&["schedules", "show", "dark"]));
    assert!(
        human_field(&human, "counters").contains("skipped_blackout="),
        "{human}"
    );
}

#[test]
fn a_cron_that_can_never_fire_is_refused_at_apply() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let bad = fleet.dir.path().join("feb30.yaml");
    std::fs::write(
        &bad,
        format!(
            "{ONE_STEP}---\nkind: Schedule\nname: feb30\nsequence: quick\ntargets: {{agents: [sync-01]}}\ntrigger: {{cron: [\"0 2 * * *\", \"0 0 30 2 *\"]}}\n"
        ),
    )
    .unwrap();
    let out = fleet.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for part in ["feb30.yaml", "Schedule feb30", "trigger.cron[1]", "never"] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    let scheds = fleet.cli_json(&["get", "schedules", "-o", "json"]);
    assert!(
        scheds.as_array().unwrap().is_empty(),
        "nothing was applied: {scheds:#}"
    );
}
