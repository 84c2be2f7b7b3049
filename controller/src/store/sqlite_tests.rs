//! The SQLite store's own behaviour: group commit, its failure isolation and bound, and the
//! run steps layout with the migration of stores written before it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed call fails the test with its error"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::FutureExt;
use prost::Message;
use syncfleet_proto::time::from_millis;
use syncfleet_proto::v1;

use super::{SqliteDb, SqliteStore, upsert_run};
use crate::store::{RunQuery, Store, StoreError};

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("controller.db")).unwrap()
}

fn run_with_steps(id: &str, created: i64, steps: usize) -> v1::Run {
    v1::Run {
        id: id.into(),
        agent: "a".into(),
        state: v1::RunState::Running as i32,
        created_at: Some(from_millis(created)),
        schedule: "nightly".into(),
        steps: (0..steps)
            .map(|i| v1::Step {
                index: u32::try_from(i).unwrap(),
                ma: "AD".into(),
                profile: format!("Delta Import {i}"),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Hold the writer thread inside an operation until the returned sender is dropped or sent
/// to; returns once the writer is held.
async fn hold_writer(
    store: &SqliteStore,
) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let s = store.clone();
    let task = tokio::spawn(async move {
        s.write(0, move |_w| {
            let _ = held_tx.send(());
            let _ = release_rx.recv();
            Ok(())
        })
        .await
        .unwrap();
    });
    held_rx.await.unwrap();
    (release_tx, task)
}

/// Wait until `n` operations wait in the writer's queue.
async fn queued(store: &SqliteStore, n: usize) {
    let queue = store.db.queue.as_ref().unwrap();
    while queue.max_capacity() - queue.capacity() < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_commits_and_are_all_durable_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (release, holder) = hold_writer(&store).await;
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move {
                let name = format!("agent-{i:03}");
                s.put_agent(&v1::Agent {
                    name: name.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
                let ev = v1::AgentEvent {
                    seq: 1,
                    run_id: format!("run-{i:03}"),
                    ..Default::default()
                };
                assert_eq!(s.commit_agent_events(&name, &[ev], &[]).await.unwrap(), 1);
            })
        })
        .collect();
    // Every first write is queued behind the held one: they are committed together.
    queued(&store, 300).await;
    release.send(()).unwrap();
    holder.await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let (ops, commits) = store.write_stats();
    assert_eq!(ops, 1 + 300 + 300);
    assert!(
        commits <= 1 + 1 + 300,
        "the 300 queued writes shared one commit: {commits} commits for {ops} operations"
    );
    drop(store);
    let reopened = open(&dir);
    assert_eq!(reopened.list_agents().await.unwrap().len(), 300);
    for i in [0, 150, 299] {
        let a = reopened
            .get_agent(&format!("agent-{i:03}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.last_event_seq, 1);
    }
}

#[tokio::test]
async fn one_failing_operation_in_a_group_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (release, holder) = hold_writer(&store).await;
    let before = {
        let s = store.clone();
        tokio::spawn(async move { s.put_state("k/before", b"1").await })
    };
    let failing = {
        let s = store.clone();
        tokio::spawn(async move {
            s.write(0, |w| {
                super::upsert_state(w, "k/failing", b"x")?;
                w.conn
                    .execute("INSERT INTO no_such_table VALUES (1)", [])
                    .map_err(|e| w.err(e))?;
                Ok(())
            })
            .await
        })
    };
    let panicking = {
        let s = store.clone();
        tokio::spawn(async move {
            s.update_state("k/panicking", Box::new(|_| panic!("a broken update")))
                .await
        })
    };
    let after = {
        let s = store.clone();
        tokio::spawn(async move { s.put_state("k/after", b"2").await })
    };
    queued(&store, 4).await;
    let commits_before = store.write_stats().1;
    release.send(()).unwrap();
    holder.await.unwrap();
    before.await.unwrap().unwrap();
    after.await.unwrap().unwrap();
    let err = failing.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, StoreError::Sqlite { .. }) && err.to_string().contains("no_such_table"),
        "{err}"
    );
    let err = panicking.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("a broken update"), "{err}");
    // The held operation's commit, then one for the four.
    assert_eq!(store.write_stats().1, commits_before + 2);
    drop(store);
    let reopened = open(&dir);
    let keys: Vec<String> = reopened
        .list_state("k/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["k/after", "k/before"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_the_store_mid_stream_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let (s, acked, count) = (store.clone(), Arc::clone(&acked), Arc::clone(&count));
            tokio::spawn(async move {
                let key = format!("k/{i:03}");
                s.put_state(&key, b"v").await.unwrap();
                acked.lock().unwrap().push(key);
                count.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    while count.load(Ordering::SeqCst) < 50 {
        tokio::task::yield_now().await;
    }
    // Callers stop waiting (their futures, holding the store, are dropped) while writes are
    // queued and in flight; the last handle's drop lets the writer finish.
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    drop(store);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 50);
    let reopened = open(&dir);
    let stored: std::collections::HashSet<String> = reopened
        .list_state("k/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !stored.contains(*k)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[tokio::test]
async fn the_write_queue_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore {
        db: Arc::new(SqliteDb::open_with_queue(&dir.path().join("c.db"), 4).unwrap()),
    };
    let (release, holder) = hold_writer(&store).await;
    let writers: Vec<_> = (0..6)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { s.put_state(&format!("k/{i}"), b"v").await })
        })
        .collect();
    queued(&store, 4).await;
    let queue = store.db.queue.as_ref().unwrap();
    assert_eq!(queue.capacity(), 0);
    assert!(
        queue.reserve().now_or_never().is_none(),
        "a full queue makes the next caller wait"
    );
    release.send(()).unwrap();
    holder.await.unwrap();
    for w in writers {
        w.await.unwrap().unwrap();
    }
    assert_eq!(store.list_state("k/").await.unwrap().len(), 6);
}

#[tokio::test]
async fn an_event_rewrites_only_the_steps_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut run = run_with_steps("r1", 1_000, 10);
    assert_eq!(store.insert_runs(&[run.clone()]).await.unwrap(), [true]);
    run.steps[3].result = "success".into();
    run.state = v1::RunState::Succeeded as i32;
    let changed = {
        let run = run.clone();
        store
            .write(0, move |w| {
                let before = w.conn.total_changes();
                upsert_run(w, run)?;
                Ok(w.conn.total_changes() - before)
            })
            .await
            .unwrap()
    };
    assert_eq!(changed, 2, "the run's header and its one changed step");
    assert_eq!(store.get_run("r1").await.unwrap().unwrap(), run);
    // Fewer steps than stored: the extra ones go.
    run.steps.truncate(4);
    store.put_runs(&[run.clone()]).await.unwrap();
    assert_eq!(store.get_run("r1").await.unwrap().unwrap(), run);
}

/// The schema and records of a store written before run steps were stored apart.
const OLD_SCHEMA: &str = "
CREATE TABLE agents (name TEXT PRIMARY KEY, body BLOB NOT NULL, last_event_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE runs (id TEXT PRIMARY KEY, agent TEXT NOT NULL, state TEXT NOT NULL, created_at INTEGER NOT NULL, body BLOB NOT NULL, schedule TEXT NOT NULL DEFAULT '');
CREATE INDEX runs_by_agent ON runs (agent, created_at);
CREATE INDEX runs_by_created ON runs (created_at, id);
CREATE INDEX runs_by_state ON runs (state);
CREATE INDEX runs_by_schedule ON runs (schedule, created_at);
CREATE TABLE run_events (agent TEXT NOT NULL, seq INTEGER NOT NULL, run_id TEXT NOT NULL, at INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (agent, seq));
CREATE TABLE state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
";

#[tokio::test]
async fn a_store_of_the_old_layout_opens_with_identical_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.db");
    let runs: Vec<v1::Run> = (0..2500)
        .map(|i| {
            run_with_steps(
                &format!("run-{i:05}"),
                1_000 + i,
                usize::try_from(i % 4).unwrap() * 3,
            )
        })
        .collect();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        conn.execute_batch(OLD_SCHEMA).unwrap();
        for r in &runs {
            conn.execute(
                "INSERT INTO runs (id, agent, state, created_at, body, schedule) VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
                rusqlite::params![r.id, r.agent, crate::store::run_created_ms(r), r.encode_to_vec(), r.schedule],
            )
            .unwrap();
        }
    }
    for _ in 0..2 {
        // Opened twice: the migration runs once and changes nothing the second time.
        let store = SqliteStore::open(&path).unwrap();
        for r in [&runs[0], &runs[1], &runs[2], &runs[3], &runs[2499]] {
            assert_eq!(store.get_run(&r.id).await.unwrap().as_ref(), Some(r));
        }
        let page = store
            .list_runs(&RunQuery {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        let newest: Vec<v1::Run> = runs.iter().rev().take(1000).cloned().collect();
        assert_eq!(page.runs, newest);
        let all = store
            .runs_in_states(Some("a"), &[v1::RunState::Running])
            .await
            .unwrap();
        assert_eq!(all, runs);
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (version, headers_with_steps): (i64, i64) = (
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap(),
        {
            let mut n = 0;
            let mut st = conn.prepare("SELECT body FROM runs").unwrap();
            for body in st.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap() {
                n += i64::from(
                    !v1::Run::decode(&body.unwrap()[..])
                        .unwrap()
                        .steps
                        .is_empty(),
                );
            }
            n
        },
    );
    assert_eq!((version, headers_with_steps), (1, 0));
}

/// Every `list_runs` filter reads a page from an index in order: no full scan, no sort of
/// the matching runs.
#[test]
fn list_runs_queries_use_an_index_in_page_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("c.db")).unwrap();
    let token = Some(crate::store::page_token(5, "r"));
    let cases: Vec<(&str, RunQuery)> = vec![
        ("none", RunQuery::default()),
        (
            "agent",
            RunQuery {
                agent: Some("a".into()),
                ..Default::default()
            },
        ),
        (
            "schedule",
            RunQuery {
                schedule: Some("s".into()),
                ..Default::default()
            },
        ),
        (
            "state",
            RunQuery {
                states: vec![v1::RunState::Running],
                ..Default::default()
            },
        ),
        (
            "states",
            RunQuery {
                states: vec![v1::RunState::Running, v1::RunState::Failed],
                ..Default::default()
            },
        ),
        (
            "agent+state",
            RunQuery {
                agent: Some("a".into()),
                states: vec![v1::RunState::Succeeded],
                ..Default::default()
            },
        ),
        (
            "since",
            RunQuery {
                since_ms: Some(1),
                ..Default::default()
            },
        ),
        (
            "until",
            RunQuery {
                until_ms: Some(1),
                ..Default::default()
            },
        ),
        (
            "token",
            RunQuery {
                page_token: token.clone(),
                ..Default::default()
            },
        ),
        (
            "agent+token",
            RunQuery {
                agent: Some("a".into()),
                page_token: token.clone(),
                ..Default::default()
            },
        ),
        (
            "schedule+since+until",
            RunQuery {
                schedule: Some("s".into()),
                since_ms: Some(1),
                until_ms: Some(9),
                ..Default::default()
            },
        ),
        (
            "states+agent+token",
            RunQuery {
                agent: Some("a".into()),
                states: vec![v1::RunState::Running, v1::RunState::Failed],
                page_token: token,
                ..Default::default()
            },
        ),
    ];
    let conn = db.reader();
    for (name, q) in cases {
        let (sql, args) = SqliteDb::list_runs_sql(&q).unwrap();
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = st
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join(" | ");
        println!("{name}: {plan}");
        // Every read of `runs` goes through an index (a full scan is a bare `SCAN runs`); the
        // only sort is of a per-state subquery's page when several states are merged.
        let steps: Vec<&str> = plan.split(" | ").collect();
        for (i, step) in steps.iter().enumerate() {
            assert!(*step != "SCAN runs", "{name}: full scan: {plan}");
            if step.contains("TEMP B-TREE") {
                assert!(
                    i > 0 && steps[i - 1].starts_with("SCAN (subquery"),
                    "{name}: sorts the matching runs: {plan}"
                );
            }
        }
        assert!(plan.contains("USING INDEX runs_by_"), "{name}: {plan}");
        if q.agent.is_some() {
            assert!(
                plan.contains("runs_by_agent_created"),
                "{name}: the agent's index: {plan}"
            );
        }
    }
}
