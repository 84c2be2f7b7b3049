//! Controller high availability end to end: two real controllers on one real PostgreSQL
//! (`syncfleet_tests::postgres`), real agents on simulated engines, real mTLS. One controller
//! holds the leader lease; the other answers agents' sessions with the leader's address and
//! serves the operator API from the store. The leader is SIGKILLed, later the new leader is
//! SIGSTOPped past the lease TTL: every nominal time of the schedule ends as exactly one run
//! per agent or a counted skip, no run is executed twice, and the resumed old leader's writes
//! are refused (it steps down). Waits are liveness bounds; failover times are printed, never
//! asserted.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Fleet, Proc, bin, free_port, http_get, wait_for};
use prost::Message;
use syncfleet_proto::v1;
use syncfleet_tests::postgres::TestPostgres;

const AGENTS: [&str; 3] = ["sync-01", "sync-02", "sync-03"];
/// Short, so that the test does not wait long for takeovers (the default is 10 s).
const LEASE_TTL: &str = "4s";
const LONG: Duration = Duration::from_secs(120);
/// The soak's sequence and schedule: every agent, every 2 s, missed times caught up within 60 s.
const SOAK: &str = "kind: Sequence\nname: quick\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n---\nkind: Schedule\nname: soak\nsequence: quick\ntargets: {selector: env=e2e}\ntrigger: {every: 2s}\ncatchup_window: 60s\n";

/// One controller process of the pair: its data folder (a copy of the fleet's PKI), ports and
/// a CLI configuration that talks to it alone.
struct Controller {
    tag: &'static str,
    data: PathBuf,
    grpc: u16,
    http: u16,
    cli_config: PathBuf,
    proc: Option<Proc>,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

impl Controller {
    /// Controller `tag` of `fleet`: the first uses the fleet's own data folder and ports, the
    /// others a copy of its PKI folder (how several controllers share the CA) and new ports.
    fn new(fleet: &Fleet, tag: &'static str, first: bool) -> Controller {
        let (data, grpc, http) = if first {
            (fleet.data_dir(), fleet.grpc_port, fleet.http_port)
        } else {
            let data = fleet.dir.path().join(format!("controller-{tag}"));
            copy_dir(&fleet.pki(), &data.join("pki"));
            (data, free_port(), free_port())
        };
        let cli = std::fs::read_to_string(&fleet.cli_config).unwrap().replace(
            &format!("127.0.0.1:{}", fleet.grpc_port),
            &format!("127.0.0.1:{grpc}"),
        );
        let cli_config = fleet.dir.path().join(format!("cli-{tag}.toml"));
        std::fs::write(&cli_config, cli).unwrap();
        Controller {
            tag,
            data,
            grpc,
            http,
            cli_config,
            proc: None,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc)
    }

    fn start(&mut self, fleet: &Fleet, store: &str) {
        let n = std::fs::read_dir(fleet.dir.path()).unwrap().count();
        let log = fleet
            .dir
            .path()
            .join(format!("controller-{}-{n}.log", self.tag));
        let mut cmd = Command::new(bin("syncfleet-controller"));
        cmd.args(["serve", "--fleet", "e2e", "--data-dir"])
            .arg(&self.data)
            .args(["--grpc-listen", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--http-listen", &format!("127.0.0.1:{}", self.http)])
            .args(["--set", "console.listen=127.0.0.1:0"])
            .args(["--store", store])
            .args(["--set", &format!("lease_ttl={LEASE_TTL}")])
            .args(["--set", &format!("advertise_url={}", self.url())]);
        let proc = Proc::spawn(&format!("controller-{}", self.tag), &mut cmd, log);
        let port = self.grpc;
        wait_for("the controller to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        self.proc = Some(proc);
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().unwrap()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("syncfleet"))
            .arg("--config")
            .arg(&self.cli_config)
            .args(args)
            .output()
            .unwrap()
    }

    fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "syncfleet {args:?} on controller {} failed: {}",
            self.tag,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// (role, epoch) from `/readyz`, or None when it does not answer.
    fn role(&self) -> Option<(String, i64)> {
        let (status, body) = http_get(self.http, "/readyz")?;
        if status != 200 {
            return None;
        }
        let field = |k: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        Some((field("role:")?, field("epoch:")?.parse().ok()?))
    }

    fn wait_role(&self, role: &str) -> i64 {
        wait_for(
            &format!("controller {} to be {role}", self.tag),
            LONG,
            || self.role().filter(|(r, _)| r == role).map(|(_, e)| e),
        )
    }

    /// Whether all of `AGENTS` have their session on this controller.
    fn all_connected(&self) -> bool {
        let out = self.cli(&["agents", "list", "-o", "json"]);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        let connected: BTreeSet<&str> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|a| a["state"] == "connected")
                    .filter_map(|a| a["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        out.status.success() && AGENTS.iter().all(|a| connected.contains(a))
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(self.http, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Start the three agents on `controllers` (in that order), with short reconnect backoff.
fn start_agents(fleet: &mut Fleet, controllers: &[String]) {
    for (i, name) in AGENTS.iter().enumerate() {
        let dir = fleet.agent_dir(name);
        fleet.start_agent_toml(
            name,
            &format!(
                "name = {name:?}\ncontrollers = {controllers:?}\ndata_dir = {dir:?}\nreconnect_max_backoff = \"2s\"\n[labels]\nenv = \"e2e\"\n[engine]\nkind = \"sim\"\nserver = {i}\ntime_scale = 0.01\n"
            ),
        );
    }
}

fn apply(ctl: &Controller, fleet: &Fleet, yaml: &str) {
    let path = fleet.fleet_file("soak.yaml", yaml);
    let out = ctl.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "apply on controller {} failed: {}",
        ctl.tag,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn soak_runs(pg: &TestPostgres, store: &str) -> usize {
    pg.psql(store, "SELECT count(*) FROM runs WHERE schedule = 'soak'")
        .parse()
        .unwrap()
}

/// Wait until `more` runs of `soak` were stored since now.
fn wait_more_runs(pg: &TestPostgres, store: &str, more: usize) {
    let from = soak_runs(pg, store);
    wait_for(&format!("{more} more runs of soak"), LONG, || {
        (soak_runs(pg, store) >= from + more).then_some(())
    });
}

/// Every stored run of schedule `soak`: (agent, nominal ms) → (id, state label).
fn stored_runs(pg: &TestPostgres, url: &str) -> BTreeMap<(String, i64), (String, String, String)> {
    let rows = pg.psql(
        url,
        "SELECT id, state, encode(body, 'hex') FROM runs WHERE schedule = 'soak' ORDER BY id",
    );
    let mut out = BTreeMap::new();
    for line in rows.lines().filter(|l| !l.is_empty()) {
        let mut cols = line.split('|');
        let (id, state, hex) = (
            cols.next().unwrap(),
            cols.next().unwrap(),
            cols.next().unwrap(),
        );
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let run = v1::Run::decode(bytes.as_slice()).unwrap();
        let nominal = run.nominal_time.unwrap();
        let ms = nominal.seconds * 1000 + i64::from(nominal.nanos) / 1_000_000;
        let previous = out.insert(
            (run.agent.clone(), ms),
            (id.to_string(), state.to_string(), run.origin.clone()),
        );
        assert!(
            previous.is_none(),
            "two runs of soak for {} at {ms}",
            run.agent
        );
    }
    out
}

/// Run ids in an agent's journal (its real SQLite file).
fn journal_ids(fleet: &Fleet, agent: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        fleet.agent_dir(agent).join("agent.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn.prepare("SELECT run_id FROM runs").unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Engine run numbers an agent's journal recorded more than once for one MA: a step
/// executed twice would show as two runs sharing one (it never should).
fn journal_step_rows(fleet: &Fleet, agent: &str) -> (i64, i64) {
    let conn = rusqlite::Connection::open_with_flags(
        fleet.agent_dir(agent).join("agent.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT COUNT(*), COUNT(DISTINCT ma || '#' || run_number) FROM steps WHERE run_number > 0",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

#[test]
fn failover_on_sigkill_and_sigstop_runs_every_fire_time_once_and_fences_the_old_leader() {
    let pg = TestPostgres::shared();
    let store = pg.create_database("ha_failover");
    let mut fleet = Fleet::init(&AGENTS);
    let mut a = Controller::new(&fleet, "a", true);
    let mut b = Controller::new(&fleet, "b", false);
    a.start(&fleet, &store);
    let epoch_a1 = a.wait_role("leader");
    b.start(&fleet, &store);
    assert_eq!(b.wait_role("follower"), epoch_a1);
    assert_eq!(a.metric("syncfleet_leader"), Some(1.0));
    assert_eq!(b.metric("syncfleet_leader"), Some(0.0));

    // The agents list the follower first: it sends them to the leader.
    start_agents(&mut fleet, &[b.url(), a.url()]);
    wait_for("all agents on controller a", LONG, || {
        a.all_connected().then_some(())
    });
    let redirected = fleet.agents["sync-01"].log_text();
    assert!(
        redirected.contains("going to the leader"),
        "the agent did not follow the follower's pointer:\n{redirected}"
    );

    // A mutation through the follower: stored, and the leader's scheduler woken.
    apply(&b, &fleet, SOAK);
    wait_more_runs(&pg, &store, 3 * AGENTS.len());

    // 1. The leader dies.
    let killed = Instant::now();
    a.proc.as_mut().unwrap().kill9();
    let epoch_b = b.wait_role("leader");
    assert_eq!(epoch_b, epoch_a1 + 1, "a new epoch for a new holder");
    wait_for("all agents on controller b", LONG, || {
        b.all_connected().then_some(())
    });
    let after_kill = killed.elapsed();
    eprintln!("failover after SIGKILL: all agents on the new leader after {after_kill:?}");
    a.start(&fleet, &store);
    assert_eq!(a.wait_role("follower"), epoch_b);
    wait_more_runs(&pg, &store, 3 * AGENTS.len());

    // 2. The new leader is paused past the lease TTL, then resumed.
    let stopped = Instant::now();
    b.proc().signal("STOP");
    let epoch_a2 = a.wait_role("leader");
    assert_eq!(epoch_a2, epoch_b + 1);
    let paused_for = Duration::from_secs(20);
    std::thread::sleep(paused_for.saturating_sub(stopped.elapsed()));
    b.proc().signal("CONT");
    wait_for("all agents on controller a again", LONG, || {
        a.all_connected().then_some(())
    });
    let after_stop = stopped.elapsed();
    eprintln!(
        "failover after SIGSTOP: all agents on the new leader after {after_stop:?} (the old leader was stopped for {paused_for:?})"
    );

    // The resumed old leader learns it lost the lease and steps down; it writes nothing.
    let log = wait_for("controller b to step down", LONG, || {
        let log = b.proc().log_text();
        log.contains("stepping down to follower").then_some(log)
    });
    let step_down = log
        .lines()
        .find(|l| l.contains("stepping down to follower"))
        .unwrap()
        .to_string();
    assert!(
        step_down.contains(&format!("epoch={epoch_b}")),
        "{step_down}"
    );
    assert_eq!(b.wait_role("follower"), epoch_a2);
    assert_eq!(b.metric("syncfleet_leader"), Some(0.0));
    assert_eq!(b.metric("syncfleet_leader_epoch"), Some(epoch_a2 as f64));
    let refused = log.lines().filter(|l| l.contains("write refused")).count();
    wait_more_runs(&pg, &store, 3 * AGENTS.len());

    // End the soak without cutting a fire time in half: move the schedule's next fire time an
    // hour away (the leader finishes the fire time in progress first), wait until its cursor
    // stays put, then read the store.
    apply(&a, &fleet, &SOAK.replace("every: 2s", "every: 1h"));
    let cursor_now = || {
        pg.psql(
            &store,
            "SELECT convert_from(value, 'UTF8') FROM state WHERE key = 'cursor/soak'",
        )
    };
    wait_for("the soak's last fire time", LONG, || {
        let before = cursor_now();
        std::thread::sleep(Duration::from_secs(3));
        (cursor_now() == before).then_some(())
    });
    let lease = pg.psql(
        &store,
        "SELECT holder, epoch FROM leases WHERE name = 'leader'",
    );
    assert!(
        lease.starts_with(&a.url()) && lease.ends_with(&format!("|{epoch_a2}")),
        "the lease is a's, epoch {epoch_a2}: {lease}"
    );
    let cursor: i64 = pg
        .psql(
            &store,
            "SELECT convert_from(value, 'UTF8') FROM state WHERE key = 'cursor/soak'",
        )
        .parse()
        .unwrap();
    let counters: HashMap<String, u64> = pg
        .psql(
            &store,
            "SELECT counter, value FROM schedule_counters WHERE schedule = 'soak'",
        )
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect();
    let runs = stored_runs(&pg, &store);
    let first = runs.keys().map(|(_, t)| *t).min().unwrap();

    // Every nominal time from the first to the cursor: per agent one run, or counted.
    let mut nominal_times = 0u64;
    let mut missing_pairs = 0u64;
    let mut runs_in_window = 0u64;
    let mut empty_times = 0u64;
    let mut t = first;
    while t <= cursor {
        nominal_times += 1;
        let have = AGENTS
            .iter()
            .filter(|a| runs.contains_key(&(a.to_string(), t)))
            .count() as u64;
        runs_in_window += have;
        missing_pairs += AGENTS.len() as u64 - have;
        if have == 0 {
            empty_times += 1;
        }
        t += 2000;
    }
    assert!(
        runs.keys().all(|(_, t)| (t - first) % 2000 == 0),
        "every run belongs to a 2 s fire time"
    );
    let counter = |k: &str| counters.get(k).copied().unwrap_or(0);
    // Counted once per fire time, or once per agent of a fire time.
    let per_time_skips =
        counter("missed_catchup") + counter("skipped_no_target") + counter("skipped_blackout");
    let per_agent_skips = counter("skipped_overlap")
        + counter("buffer_dropped")
        + counter("skipped_paused")
        + counter("skipped_drained");
    eprintln!(
        "soak: {nominal_times} nominal times x {} agents, {runs_in_window} runs in the window ({} stored, {} of them catch-up runs), {missing_pairs} (time, agent) pairs without a run, {empty_times} times without any run; counters {counters:?}; writes refused on the old leader: {refused}",
        AGENTS.len(),
        runs.len(),
        runs.values()
            .filter(|(_, _, o)| o.starts_with("catch-up"))
            .count()
    );
    assert!(
        nominal_times >= 15,
        "the soak covered {nominal_times} times"
    );
    assert_eq!(
        missing_pairs,
        per_time_skips * AGENTS.len() as u64 + per_agent_skips,
        "every (time, agent) without a run is a counted skip and no counted time has a run: {empty_times} empty times, counters {counters:?}"
    );

    // No run executed twice: each agent journaled exactly its own runs, once.
    let mut double = 0;
    for agent in AGENTS {
        let journal = journal_ids(&fleet, agent);
        let unique: BTreeSet<&String> = journal.iter().collect();
        double += journal.len() - unique.len();
        let mine: BTreeSet<&String> = runs
            .iter()
            .filter(|((a, _), _)| a == agent)
            .map(|(_, (id, _, _))| id)
            .collect();
        for ((a, t), (id, state, _)) in &runs {
            if a == agent && state == "succeeded" {
                assert!(
                    unique.contains(id),
                    "{agent} never executed run {id} at {t}"
                );
            }
        }
        for id in &unique {
            let other = runs
                .iter()
                .any(|((a, _), (rid, _, _))| rid == *id && a != agent);
            assert!(!other, "{agent} executed {id}, a run of another agent");
        }
        let soak_executed = unique.iter().filter(|id| mine.contains(*id)).count();
        let (rows, distinct) = journal_step_rows(&fleet, agent);
        assert_eq!(rows, distinct, "{agent}: one engine run per executed step");
        eprintln!("{agent}: {soak_executed} soak runs executed");
    }
    eprintln!("double executions: {double}");
    assert_eq!(double, 0);
}

/// Enrollment and renewal need the CA key: every controller reads it from its copy of the
/// PKI folder, so a follower enrolls an agent, which then finds the leader through it.
#[test]
fn a_follower_enrolls_an_agent_that_then_runs_on_the_leader() {
    let pg = TestPostgres::shared();
    let store = pg.create_database("ha_enroll");
    let mut fleet = Fleet::init(&[]);
    let mut a = Controller::new(&fleet, "a", true);
    let mut b = Controller::new(&fleet, "b", false);
    a.start(&fleet, &store);
    a.wait_role("leader");
    b.start(&fleet, &store);
    b.wait_role("follower");
    // `syncfleet-controller status` tells them apart, from the store.
    for (ctl, role) in [(&a, "leader"), (&b, "follower")] {
        let out = Command::new(bin("syncfleet-controller"))
            .args(["status", "--store", &store, "--grpc-listen"])
            .arg(format!("127.0.0.1:{}", ctl.grpc))
            .args(["--set", &format!("advertise_url={}", ctl.url())])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!("role: {role}\n")), "{text}");
        assert!(
            text.contains(&format!("leader: {} (epoch", a.url())),
            "{text}"
        );
    }

    // The CLI tries its addresses in order and uses the first that answers: a dead one, then
    // the follower (which serves the operator API too).
    let dead = format!("https://127.0.0.1:{}", free_port());
    let listed = |extra: &[&str], config: &Path| {
        let out = Command::new(bin("syncfleet"))
            .arg("--config")
            .arg(config)
            .args(extra)
            .args(["agents", "list", "-o", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    listed(
        &["--controller", &dead, "--controller", &b.url()],
        &fleet.cli_config,
    );
    let multi = fleet.dir.path().join("cli-multi.toml");
    std::fs::write(
        &multi,
        std::fs::read_to_string(&fleet.cli_config).unwrap().replace(
            &format!("controller = \"{}\"", a.url()),
            &format!("controllers = [{dead:?}, {:?}]", b.url()),
        ),
    )
    .unwrap();
    assert!(
        std::fs::read_to_string(&multi)
            .unwrap()
            .contains("controllers = [")
    );
    listed(&[], &multi);

    // The token is created through the follower (a store write), used through it too.
    let t = b.cli_json(&["tokens", "create", "--agent", "sync-09", "-o", "json"]);
    let (token, pin) = (
        t["token"].as_str().unwrap().to_string(),
        t["ca_pin"].as_str().unwrap().to_string(),
    );
    let dir = fleet.dir.path().join("enrolled").join("sync-09");
    let out = Command::new(bin("syncfleet-agent"))
        .args(["enroll", "--controller", &b.url(), "--token", &token])
        .args(["--ca-pin", &pin, "--name", "sync-09", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enrollment through the follower failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.start_agent_toml(
        "sync-09",
        &format!(
            "name = \"sync-09\"\ncontrollers = [{:?}]\ndata_dir = {dir:?}\nreconnect_max_backoff = \"2s\"\n[engine]\nkind = \"sim\"\nserver = 0\ntime_scale = 0.01\n",
            b.url()
        ),
    );
    // Only the follower is listed: the agent reaches the leader through its pointer.
    wait_for("sync-09 on the leader", LONG, || {
        let v = a.cli_json(&["agents", "list", "-o", "json"]);
        v.as_array()?
            .iter()
            .any(|x| x["name"] == "sync-09" && x["state"] == "connected")
            .then_some(())
    });
    // A run started through the follower is dispatched by the leader and runs.
    let started = b.cli_json(&["run", "sync-09", "--step", "AD:Delta Import", "-o", "json"]);
    let id = started["id"].as_str().unwrap().to_string();
    wait_for("the run to succeed", LONG, || {
        let r = b.cli_json(&["runs", "show", &id, "-o", "json"]);
        (r["state"] == "succeeded").then_some(())
    });
}

/// A run cancelled through a follower: the follower stores the cancellation and wakes the
/// leader, which sends the cancel command down the agent's session.
#[test]
fn a_run_cancelled_through_a_follower_stops_on_its_agent() {
    let pg = TestPostgres::shared();
    let store = pg.create_database("ha_cancel");
    let mut fleet = Fleet::init(&["sync-01"]);
    let mut a = Controller::new(&fleet, "a", true);
    let mut b = Controller::new(&fleet, "b", false);
    a.start(&fleet, &store);
    a.wait_role("leader");
    b.start(&fleet, &store);
    b.wait_role("follower");
    let dir = fleet.agent_dir("sync-01");
    fleet.start_agent_toml(
        "sync-01",
        &format!(
            "name = \"sync-01\"\ncontrollers = [{:?}, {:?}]\ndata_dir = {dir:?}\nreconnect_max_backoff = \"2s\"\n[engine]\nkind = \"sim\"\nserver = 0\ntime_scale = 0.1\n",
            b.url(),
            a.url()
        ),
    );
    wait_for("sync-01 on the leader", LONG, || {
        let v = a.cli_json(&["agents", "list", "-o", "json"]);
        v.as_array()?
            .iter()
            .any(|x| x["name"] == "sync-01" && x["state"] == "connected")
            .then_some(())
    });
    // A long step (a full import at a tenth of its real duration).
    let started = b.cli_json(&["run", "sync-01", "--step", "HR:Full Import", "-o", "json"]);
    let id = started["id"].as_str().unwrap().to_string();
    wait_for("the run to be running", LONG, || {
        let r = b.cli_json(&["runs", "show", &id, "-o", "json"]);
        (r["state"] == "running").then_some(())
    });
    let out = b.cli(&["runs", "cancel", &id, "--reason", "through the follower"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = wait_for("the run to end cancelled", LONG, || {
        let r = a.cli_json(&["runs", "show", &id, "-o", "json"]);
        (r["state"] == "cancelled").then_some(r)
    });
    // Stopped on the engine by the agent, not ended by the controller alone.
    assert_eq!(run["cancel_requested"], true, "{run:#}");
    assert_eq!(
        run["result"], "stopped-user-termination-from-wmi-or-ui",
        "{run:#}"
    );
}
