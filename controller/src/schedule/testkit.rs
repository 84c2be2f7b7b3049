//! The scheduler tests' world: a real SQLite store, a real fleet, stand-in agents that report
//! through the fleet's event path, and paused tokio time.

pub(super) use std::collections::HashMap as Map;
pub(super) use std::sync::Arc;
pub(super) use std::time::Duration;

pub(super) use chrono::{DateTime, Utc};
pub(super) use syncfleet_proto::v1;
use syncfleet_proto::v1::agent_event::Kind;
use tokio::sync::Mutex;
pub(super) use tokio_util::sync::CancellationToken;

pub(super) use super::scheduler::{Clock, Scheduler, run_id_for};
use crate::documents;
pub(super) use crate::fleet::{Fleet, Settings};
use crate::store::sqlite::SqliteStore;
pub(super) use crate::store::{RunQuery, Store, StoredDocument};

pub(super) struct World {
    pub(super) _dir: tempfile::TempDir,
    pub(super) fleet: Arc<Fleet>,
    pub(super) store: Arc<dyn Store>,
    pub(super) shutdown: CancellationToken,
    pub(super) start: DateTime<Utc>,
}

pub(super) fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-28T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub(super) async fn world(yaml: &str, agents: &[&str]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
    // Concurrently, so that the store commits them in a few groups (thousands of agents).
    futures::future::join_all(agents.iter().map(|a| {
        let store = Arc::clone(&store);
        async move {
            store
                .put_agent(&v1::Agent {
                    name: (*a).to_string(),
                    labels: [("env".to_string(), "prod".to_string())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }))
    .await;
    let docs = documents::parse_str("test.yaml", yaml).unwrap();
    let stored: Vec<StoredDocument> = docs
        .iter()
        .map(|d| StoredDocument {
            kind: d.doc.kind().to_string(),
            name: d.doc.name().to_string(),
            json: documents::canonical_json(&d.doc),
        })
        .collect();
    store.write_documents(&stored, &[]).await.unwrap();
    let fleet = Fleet::new(
        Arc::clone(&store),
        Settings {
            heartbeat_interval: Duration::from_secs(1),
            agent_lost_after: Duration::from_secs(5),
            pending_deadline: Duration::from_secs(3600),
        },
    );
    World {
        _dir: dir,
        fleet,
        store,
        shutdown: CancellationToken::new(),
        start: t0(),
    }
}

pub(super) fn start_scheduler(
    w: &World,
    wall: DateTime<Utc>,
) -> (Arc<Scheduler>, CancellationToken) {
    let s = Scheduler::new(Arc::clone(&w.fleet), Clock::tokio_from(wall));
    let stop = w.shutdown.child_token();
    tokio::spawn(Arc::clone(&s).run(stop.clone()));
    (s, stop)
}

/// A world holding the sequence [`SEQ`] and one schedule `name` of it that fires every 10 s on
/// `agents`; `extra` is more lines of the schedule (`"overlap: skip\n"`).
pub(super) async fn every_10s(name: &str, agents: &[&str], extra: &str) -> World {
    let yaml = format!(
        "{SEQ}kind: Schedule\nname: {name}\nsequence: s\ntargets: {{agents: [{}]}}\ntrigger: {{every: 10s}}\n{extra}",
        agents.join(", ")
    );
    world(&yaml, agents).await
}

/// The controller dies (the scheduler behind `stop` stops) and a new one starts with its wall
/// clock at `wall`.
pub(super) async fn restart(
    w: &World,
    stop: &CancellationToken,
    wall: DateTime<Utc>,
) -> (Arc<Scheduler>, CancellationToken) {
    stop.cancel();
    advance(Duration::from_millis(200)).await;
    start_scheduler(w, wall)
}

/// A stand-in agent: every new run of its agents starts at once and finishes after
/// `duration` (tokio time), through the same event path real agents use. `final_state`
/// decides how runs end.
pub(super) fn fake_agents(w: &World, duration: Duration, held: bool) {
    let fleet = Arc::clone(&w.fleet);
    let mut rx = fleet.subscribe();
    let stop = w.shutdown.clone();
    tokio::spawn(async move {
        let seqs = Arc::new(Mutex::new(Map::<String, u64>::new()));
        loop {
            let run = tokio::select! {
                r = rx.recv() => match r { Ok(r) => r, Err(_) => continue },
                () = stop.cancelled() => return,
            };
            if run.state != v1::RunState::Pending as i32 {
                continue;
            }
            let fleet = Arc::clone(&fleet);
            let seqs = Arc::clone(&seqs);
            tokio::spawn(async move {
                let send = |kind: Kind| {
                    let fleet = Arc::clone(&fleet);
                    let seqs = Arc::clone(&seqs);
                    let run = run.clone();
                    async move {
                        let mut s = seqs.lock().await;
                        let seq = s.entry(run.agent.clone()).or_default();
                        let stored = *seq;
                        *seq += 1;
                        let ev = v1::AgentEvent {
                            seq: *seq,
                            at: Some(syncfleet_proto::time::now()),
                            run_id: run.id.clone(),
                            kind: Some(kind),
                        };
                        fleet
                            .apply_events(&run.agent, vec![ev], stored)
                            .await
                            .unwrap();
                    }
                };
                send(Kind::RunStarted(v1::RunStarted::default())).await;
                tokio::time::sleep(duration).await;
                if held {
                    send(Kind::StepHeld(v1::StepHeld {
                        index: 0,
                        reason: "812 pending export deletes exceed max_pending_deletes 500".into(),
                        pending: None,
                    }))
                    .await;
                }
                send(Kind::RunFinished(v1::RunFinished {
                    state: if held {
                        v1::RunState::Held
                    } else {
                        v1::RunState::Succeeded
                    } as i32,
                    result: String::new(),
                    message: String::new(),
                }))
                .await;
            });
        }
    });
}

/// Every run not ended yet starts and ends now, all agents reporting at once through the
/// fleet's event path (as a large fleet's sessions do): the run of `held_agent` ends held by a
/// guard rail, the others succeed. Each agent must have had no events before (one run each).
/// Returns how many runs ended.
pub(super) async fn finish_all(w: &World, held_agent: Option<&str>) -> usize {
    let open: Vec<v1::Run> = all_runs(w)
        .await
        .into_iter()
        .filter(|r| {
            !v1::RunState::try_from(r.state)
                .unwrap_or(v1::RunState::Unspecified)
                .is_terminal()
        })
        .collect();
    let n = open.len();
    futures::future::join_all(open.into_iter().map(|run| {
        let fleet = Arc::clone(&w.fleet);
        let held = held_agent == Some(run.agent.as_str());
        async move {
            let at = Some(syncfleet_proto::time::now());
            let event = |seq: u64, kind: Kind| v1::AgentEvent {
                seq,
                at,
                run_id: run.id.clone(),
                kind: Some(kind),
            };
            let mut events = vec![event(1, Kind::RunStarted(v1::RunStarted::default()))];
            if held {
                events.push(event(
                    2,
                    Kind::StepHeld(v1::StepHeld {
                        index: 0,
                        reason: "812 pending export deletes exceed max_pending_deletes 500".into(),
                        pending: None,
                    }),
                ));
            }
            let state = if held {
                v1::RunState::Held
            } else {
                v1::RunState::Succeeded
            };
            events.push(event(
                events.len() as u64 + 1,
                Kind::RunFinished(v1::RunFinished {
                    state: state as i32,
                    result: String::new(),
                    message: String::new(),
                }),
            ));
            // Each agent's first events: nothing of it is stored yet.
            fleet.apply_events(&run.agent, events, 0).await.unwrap();
        }
    }))
    .await;
    n
}

/// `n` agent names, `a0000`, `a0001`, ...
pub(super) fn many_agents(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("a{i:04}")).collect()
}

/// Every stored run, sorted by agent and nominal time (read page by page).
pub(super) async fn runs(w: &World) -> Vec<v1::Run> {
    let mut r = all_runs(w).await;
    r.sort_by_key(|r| (r.agent.clone(), r.nominal_time.map(|t| t.seconds)));
    r
}

async fn all_runs(w: &World) -> Vec<v1::Run> {
    let mut all = Vec::new();
    let mut page_token = None;
    loop {
        let page = w
            .store
            .list_runs(&RunQuery {
                limit: 1000,
                page_token,
                ..RunQuery::default()
            })
            .await
            .unwrap();
        all.extend(page.runs);
        match page.next_page_token {
            Some(t) => page_token = Some(t),
            None => return all,
        }
    }
}

pub(super) async fn counters(w: &World, s: &str) -> Map<String, u64> {
    w.store.counters(s).await.unwrap().into_iter().collect()
}

pub(super) async fn advance(d: Duration) {
    // Small steps so the scheduler, the store's blocking pool and the fake agents keep up.
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() {
        let s = step.min(left);
        tokio::time::sleep(s).await;
        tokio::task::yield_now().await;
        left -= s;
    }
    // Let blocking store calls settle.
    for _ in 0..20 {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub(super) const SEQ: &str =
    "kind: Sequence\nname: s\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n---\n";

pub(super) async fn nominal_secs(w: &World) -> Vec<i64> {
    runs(w)
        .await
        .iter()
        .map(|r| r.nominal_time.unwrap().seconds - w.start.timestamp())
        .collect()
}
