//! Measurements of the SQLite store at fleet scale. Ignored by default; run one with
//! `cargo nextest run -p syncfleet-controller --run-ignored only -E 'test(/measure_/)' --no-capture`
//! (a release build for figures worth quoting). They print figures and assert only that what
//! was acknowledged is stored, never a time.
//!
//! `SYNCFLEET_MEASURE_N` sets the number of concurrent writers (default 2,000) and
//! `SYNCFLEET_MEASURE_RUNS` the size of the run store of `measure_list_runs` (default 1,000,000).
//! `SYNCFLEET_MEASURE_DIR` keeps the database in that folder (default: a temporary folder), so
//! that `measure_list_runs` reuses a store it built before.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "measurements: a failed call fails the run, figures go to stdout"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use syncfleet_proto::time::from_millis;
use syncfleet_proto::v1;

use super::sqlite::SqliteStore;
use super::{RunQuery, Store};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The measurement's folder and, when it is temporary, its guard.
fn folder() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("SYNCFLEET_MEASURE_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).unwrap();
            (d, None)
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            (t.path().to_path_buf(), Some(t))
        }
    }
}

fn steps(n: usize) -> Vec<v1::Step> {
    (0..n)
        .map(|i| v1::Step {
            index: u32::try_from(i).unwrap(),
            ma: "Contoso AD".into(),
            profile: format!("Delta Import {i}"),
            state: v1::StepState::Waiting as i32,
            ..Default::default()
        })
        .collect()
}

fn run(id: String, agent: String, created_ms: i64, schedule: &str, n_steps: usize) -> v1::Run {
    v1::Run {
        id,
        agent,
        state: v1::RunState::Succeeded as i32,
        origin: "schedule".into(),
        created_at: Some(from_millis(created_ms)),
        schedule: schedule.into(),
        steps: steps(n_steps),
        requested_by: "spiffe://syncfleet/controller".into(),
        ..Default::default()
    }
}

/// `n` tasks at once, each `put_agent` of its own agent (a reconnect storm's writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run on demand, prints figures"]
async fn measure_put_agent_storm() {
    let n = env_usize("SYNCFLEET_MEASURE_N", 2000);
    let (dir, _guard) = folder();
    let path = dir.join("storm.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let agent = v1::Agent {
                    name: format!("agent-{i:05}"),
                    hostname: format!("sync-{i:05}.contoso.com"),
                    ..Default::default()
                };
                store.put_agent(&agent).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    println!(
        "put_agent storm: {n} concurrent writers, {took:.2?}, {:.0} ops/s",
        per_second(n, took)
    );
    drop(store);
    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(reopened.list_agents().await.unwrap().len(), n);
}

/// `n` tasks at once, each committing one agent's batch of 10 events with the run (10 steps)
/// they changed, twice (the second batch changes one step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run on demand, prints figures"]
async fn measure_event_commits() {
    let n = env_usize("SYNCFLEET_MEASURE_N", 2000);
    let (dir, _guard) = folder();
    let path = dir.join("events.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let mut runs = Vec::new();
    for i in 0..n {
        let agent = v1::Agent {
            name: format!("agent-{i:05}"),
            ..Default::default()
        };
        store.put_agent(&agent).await.unwrap();
        runs.push(run(
            format!("run-{i:05}"),
            agent.name,
            1_000 + i as i64,
            "",
            10,
        ));
    }
    store.insert_runs(&runs).await.unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = runs
        .into_iter()
        .map(|mut r| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let agent = r.agent.clone();
                for round in 0..2u64 {
                    let events: Vec<v1::AgentEvent> = (1..=10)
                        .map(|k| v1::AgentEvent {
                            seq: round * 10 + k,
                            run_id: r.id.clone(),
                            at: Some(from_millis(2_000)),
                            ..Default::default()
                        })
                        .collect();
                    let step = usize::try_from(round).unwrap();
                    r.steps[step].state = v1::StepState::Done as i32;
                    r.steps[step].result = "success".into();
                    let seq = store
                        .commit_agent_events(&agent, &events, std::slice::from_ref(&r))
                        .await
                        .unwrap();
                    assert_eq!(seq, round * 10 + 10);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    println!(
        "commit_agent_events: {n} concurrent agents x 2 batches of 10 events, {took:.2?}, {:.0} batches/s, {:.0} events/s",
        per_second(2 * n, took),
        per_second(20 * n, took)
    );
    drop(store);
    let reopened = SqliteStore::open(&path).unwrap();
    let r = reopened.get_run("run-00000").await.unwrap().unwrap();
    assert_eq!(r.steps.len(), 10);
    assert_eq!(r.steps[1].result, "success");
    assert_eq!(
        reopened
            .get_agent("agent-00000")
            .await
            .unwrap()
            .unwrap()
            .last_event_seq,
        20
    );
}

/// A store of `SYNCFLEET_MEASURE_RUNS` runs (10 steps each, 1,000 agents, 100 schedules, one
/// run per second), built with `insert_runs` in batches of 10,000; then the first page of
/// `list_runs` (50 runs) for each filter, the median of 21 calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run on demand, prints figures"]
async fn measure_list_runs() {
    let total = env_usize("SYNCFLEET_MEASURE_RUNS", 1_000_000);
    let (dir, _guard) = folder();
    let path = dir.join(format!("runs-{total}.db"));
    let existed = path.exists();
    let store = SqliteStore::open(&path).unwrap();
    const BASE_MS: i64 = 1_700_000_000_000;
    if !existed {
        let started = Instant::now();
        let mut i = 0;
        while i < total {
            let batch: Vec<v1::Run> = (i..(i + 10_000).min(total))
                .map(|k| {
                    run(
                        format!("{:08x}-{k:010}", k.wrapping_mul(2_654_435_761) as u32),
                        format!("agent-{:04}", k % 1000),
                        BASE_MS + k as i64 * 1000,
                        &format!("schedule-{:03}", k % 100),
                        10,
                    )
                })
                .collect();
            store.insert_runs(&batch).await.unwrap();
            i += batch.len();
        }
        let took = started.elapsed();
        println!(
            "built {total} runs (10 steps each) in {took:.2?}: {:.0} runs/s; file {} MB",
            per_second(total, took),
            std::fs::metadata(&path)
                .map(|m| m.len() / 1_000_000)
                .unwrap_or(0)
        );
    }
    let q = |f: &dyn Fn(&mut RunQuery)| {
        let mut q = RunQuery {
            limit: 50,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let mid = BASE_MS + (total as i64 / 2) * 1000;
    let first = store.list_runs(&q(&|_| {})).await.unwrap();
    let token = first.next_page_token.clone().unwrap();
    let cases: Vec<(&str, RunQuery)> = vec![
        ("none", q(&|_| {})),
        ("agent", q(&|q| q.agent = Some("agent-0042".into()))),
        ("schedule", q(&|q| q.schedule = Some("schedule-042".into()))),
        (
            "states=succeeded",
            q(&|q| q.states = vec![v1::RunState::Succeeded]),
        ),
        (
            "states=running (none match)",
            q(&|q| q.states = vec![v1::RunState::Running]),
        ),
        ("since", q(&|q| q.since_ms = Some(mid))),
        ("until", q(&|q| q.until_ms = Some(mid))),
        (
            "since+until",
            q(&|q| {
                q.since_ms = Some(mid - 3_600_000);
                q.until_ms = Some(mid);
            }),
        ),
        (
            "agent+states",
            q(&|q| {
                q.agent = Some("agent-0042".into());
                q.states = vec![v1::RunState::Succeeded];
            }),
        ),
        (
            "schedule+until",
            q(&|q| {
                q.schedule = Some("schedule-042".into());
                q.until_ms = Some(mid);
            }),
        ),
        ("page token", q(&|q| q.page_token = Some(token.clone()))),
        (
            "agent+page token",
            q(&|q| {
                q.agent = Some("agent-0000".into());
                q.page_token = Some(token.clone());
            }),
        ),
    ];
    println!("list_runs first page (50 runs) on {total} runs, median of 21:");
    for (name, query) in cases {
        let mut times = Vec::new();
        let mut got = 0;
        for _ in 0..21 {
            let started = Instant::now();
            let page = store.list_runs(&query).await.unwrap();
            times.push(started.elapsed());
            got = page.runs.len();
            if let Some(r) = page.runs.first() {
                assert_eq!(r.steps.len(), 10);
            }
        }
        times.sort();
        println!("  {name:<28} {:>9.2?}  ({got} runs)", times[10]);
    }
}

fn per_second(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64().max(1e-9)
}
