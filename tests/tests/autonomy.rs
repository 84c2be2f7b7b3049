//! Agent autonomy end to end: real controller and agents (simulated engines) over mTLS. The
//! controller is SIGKILLed for 30 s and restarted on the same store; the agents fire the
//! schedule themselves meanwhile and hand it back when the controller returns.
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

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Fleet, wait_for};
use syncfleet_proto::schedule_model::run_id_for;

const AGENTS: [&str; 2] = ["sync-01", "sync-02"];
const EVERY_MS: i64 = 3000;
const TERMINAL: [&str; 6] = [
    "succeeded",
    "completed_with_errors",
    "failed",
    "held",
    "cancelled",
    "unknown",
];

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Start an agent that becomes autonomous 2 s after losing its session and reconnects
/// within 2 s.
fn start_agent(fleet: &mut Fleet, name: &str, server: usize) {
    let toml = format!(
        "name = {name:?}\ncontroller = \"https://127.0.0.1:{}\"\ndata_dir = {:?}\n\
         autonomy_after = \"2s\"\nreconnect_max_backoff = \"2s\"\n\
         [labels]\nenv = \"e2e\"\n[engine]\nkind = \"sim\"\nserver = {server}\ntime_scale = 0.01\n",
        fleet.grpc_port,
        fleet.agent_dir(name)
    );
    fleet.start_agent_toml(name, &toml);
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

fn nominal_ms(run: &serde_json::Value) -> i64 {
    let s = run["nominal_time"].as_str().unwrap();
    chrono_ms(s)
}

fn chrono_ms(rfc3339: &str) -> i64 {
    // RFC 3339 with milliseconds and Z, as the CLI prints it.
    let t: chrono::DateTime<chrono::Utc> = rfc3339.parse().unwrap();
    t.timestamp_millis()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_string())
}

/// Run ids in an agent's journal (its real SQLite file).
fn journal_ids(fleet: &Fleet, agent: &str) -> BTreeSet<String> {
    let path = fleet.agent_dir(agent).join("agent.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn.prepare("SELECT run_id FROM runs").unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn agents_fire_their_schedule_while_the_controller_is_down_and_hand_it_back() {
    let mut fleet = Fleet::init(&AGENTS);
    fleet.start_controller();
    for (i, a) in AGENTS.iter().enumerate() {
        start_agent(&mut fleet, a, i);
    }
    fleet.wait_connected(&AGENTS);
    let yaml = fleet.dir.path().join("fleet.yaml");
    std::fs::write(
        &yaml,
        "kind: Sequence\nname: quick\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n---\n\
         kind: Schedule\nname: every-3s\nsequence: quick\ntargets: {selector: env=e2e}\n\
         trigger: {every: 3s}\ncatchup_window: 1m\n---\n\
         kind: Schedule\nname: watched\nsequence: quick\ntargets: {selector: env=e2e}\n\
         trigger: {every: 3s}\nautonomy: false\n",
    )
    .unwrap();
    let out = fleet.cli(&["apply", "-f", yaml.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    wait_for("first fires", Duration::from_secs(30), || {
        (runs_of(&fleet, "every-3s").len() >= 4).then_some(())
    });
    // Kill it between fire times (and let the agents store their schedule sets first).
    wait_for(
        "a moment between fire times",
        Duration::from_secs(10),
        || (1200..1800).contains(&(now_ms() % EVERY_MS)).then_some(()),
    );
    fleet.controller_mut().kill9();
    let killed = now_ms();
    std::thread::sleep(Duration::from_secs(30));
    let restarted = now_ms();
    fleet.start_controller();
    fleet.wait_connected(&AGENTS);

    // Every nominal time of the outage, on each agent.
    let outage: Vec<i64> = ((killed / EVERY_MS + 1)..)
        .map(|k| k * EVERY_MS)
        .take_while(|t| *t < restarted)
        .collect();
    assert!(outage.len() >= 9, "{outage:?}");
    let reported = wait_for(
        "the agents' autonomous runs to be reported and ended",
        Duration::from_secs(60),
        || {
            let runs = runs_of(&fleet, "every-3s");
            let done = AGENTS.iter().all(|a| {
                outage.iter().all(|t| {
                    runs.iter().any(|r| {
                        r["agent"] == *a
                            && nominal_ms(r) == *t
                            && TERMINAL.contains(&r["state"].as_str().unwrap_or_default())
                    })
                })
            });
            done.then_some(runs)
        },
    );
    // Give a wrong catch-up or a second dispatch every chance to happen.
    std::thread::sleep(Duration::from_secs(8));
    let runs = runs_of(&fleet, "every-3s");
    assert!(runs.len() >= reported.len());

    // Exactly one run per (agent, nominal time), in the store.
    let mut per: BTreeMap<(String, i64), Vec<&serde_json::Value>> = BTreeMap::new();
    for r in &runs {
        per.entry((r["agent"].as_str().unwrap().to_string(), nominal_ms(r)))
            .or_default()
            .push(r);
    }
    let duplicates: Vec<_> = per.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(duplicates.is_empty(), "{duplicates:#?}");
    let mut autonomous = 0;
    for a in AGENTS {
        let journal = journal_ids(&fleet, a);
        for t in &outage {
            let run = per[&(a.to_string(), *t)][0];
            assert_eq!(run["origin"], "autonomous", "{run:#}");
            let id = run_id_for(
                "every-3s",
                a,
                chrono::DateTime::from_timestamp_millis(*t).unwrap(),
            );
            assert_eq!(run["id"], id, "the controller's derived run id");
            assert!(
                journal.contains(&id),
                "executed by its agent: {id} in {a}'s journal"
            );
            autonomous += 1;
        }
    }
    // After the hand-over nothing of the outage is caught up again.
    assert!(
        runs.iter().all(|r| r["origin"] != "catch-up"),
        "{:#?}",
        runs.iter()
            .filter(|r| r["origin"] == "catch-up")
            .collect::<Vec<_>>()
    );
    // `autonomy: false`: never fired by the agents.
    let watched = runs_of(&fleet, "watched");
    assert!(
        watched
            .iter()
            .all(|r| r["origin"] != "autonomous" && !outage.contains(&nominal_ms(r))),
        "{watched:#?}"
    );
    // The agents say when they ran autonomously; /metrics counts the runs.
    for a in AGENTS {
        let agent = fleet.cli_json(&["agents", "show", a, "-o", "json"]);
        assert_eq!(agent["autonomous"], false, "{agent:#}");
        let since = chrono_ms(agent["autonomous_since"].as_str().unwrap());
        let until = chrono_ms(agent["autonomous_until"].as_str().unwrap());
        assert!(
            killed < since && since < restarted && until >= restarted,
            "{agent:#}"
        );
        let text = String::from_utf8_lossy(&fleet.cli(&["agents", "show", a]).stdout).to_string();
        assert!(text.contains("last ran autonomously from"), "{text}");
    }
    let metrics = wait_for("/metrics", Duration::from_secs(30), || {
        http_get(fleet.http_port, "/metrics")
    });
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("syncfleet_autonomous_runs_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert!(
        counted >= f64::from(autonomous),
        "{counted} < {autonomous}\n{metrics}"
    );
    println!(
        "outage nominal times per agent: {}, autonomous runs: {autonomous}, runs of the schedule: {}, duplicates: {}",
        outage.len(),
        runs.len(),
        duplicates.len()
    );
}
