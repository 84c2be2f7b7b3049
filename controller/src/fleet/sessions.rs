//! The session table: which agent holds a session now, and what its last messages said
//! (liveness, engine health, runs in flight). A newer session of an agent replaces the older
//! one; the agent's stored state follows (connected, disconnected).

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use syncfleet_proto::time::{from_millis, now, to_millis};
use syncfleet_proto::v1;
use tokio::sync::mpsc;

use super::{Fleet, FleetError, lock};
use crate::store::StoreError;

/// Outbound half of an agent's session stream; an error ends the stream with that error.
///
/// What one connected agent costs the controller (64-bit, measured by the `session_footprint`
/// test): an entry in the session table (`Session`, 32 B, plus the name) and in the live table
/// (`Live`, 88 B, plus its strings and run ids in flight); the outbound queue, whose slots are
/// 296 B and which tokio allocates in blocks of 32 slots (about 9.5 KiB once the first message,
/// the Welcome, is queued; more only while the agent lags); the session task and its gRPC/HTTP2
/// stream and TLS connection, which dominate (tens of KiB). Schedule sets are cut from one shared
/// build per scheduler reload (`schedule::autonomy`), not kept per agent.
pub type SessionTx = mpsc::Sender<Result<v1::ControllerMessage, FleetError>>;

pub(super) struct Session {
    id: u64,
    tx: SessionTx,
    since: tokio::time::Instant,
}

#[derive(Default, Clone)]
pub(super) struct Live {
    last_seen_ms: i64,
    engine_healthy: bool,
    engine_detail: String,
    agent_problem: String,
    runs_in_flight: Vec<String>,
    /// Runs the engine executes that the agent did not start (last heartbeat).
    engine_runs: Vec<v1::EngineRun>,
    /// Engine run-history housekeeping from the last heartbeat (kept after a disconnect).
    housekeeping: Housekeeping,
    /// The agent's change sources as its last heartbeat described them (kept after a
    /// disconnect: the last word on them).
    change_sources: Vec<v1::ChangeSourceStatus>,
}

/// An agent's engine run-history housekeeping as its last heartbeat reported it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Housekeeping {
    /// Cutoff of the last successful ClearRuns (Unix ms; 0: none yet).
    pub runs_cleared_before_ms: i64,
    /// Successful ClearRuns calls since the agent started.
    pub clear_runs_total: u64,
    /// Why the last ClearRuns failed; empty after a success.
    pub clear_runs_problem: String,
}

/// The most engine runs of one heartbeat kept (one per MA is all an engine can run; the rest
/// of a larger list is dropped rather than held).
const MAX_ENGINE_RUNS: usize = 256;

/// The most change source statuses of one heartbeat kept (16 sources per schedule; the rest of
/// a larger list is dropped rather than held).
const MAX_CHANGE_SOURCES: usize = 256;

/// A change source status with its texts cut to a bounded length (it comes from the network
/// and is shown by `schedules show`).
fn bounded_source_status(s: &v1::ChangeSourceStatus) -> v1::ChangeSourceStatus {
    let cut = |t: &str| crate::limits::cut_to(t, crate::limits::MAX_TEXT).to_string();
    v1::ChangeSourceStatus {
        schedule: cut(&s.schedule),
        source: cut(&s.source),
        kind: cut(&s.kind),
        target: cut(&s.target),
        cursor: cut(&s.cursor),
        error: cut(&s.error),
        ..s.clone()
    }
}

/// The lock key of an agent's stored record (see `locks.rs`): every read-modify-write of it
/// holds this lock.
pub(super) fn agent_record_key(agent: &str) -> String {
    format!("agent/{agent}")
}

impl Fleet {
    pub(super) fn session_tx(&self, agent: &str) -> Option<SessionTx> {
        lock(&self.sessions).get(agent).map(|s| s.tx.clone())
    }

    pub fn is_connected(&self, agent: &str) -> bool {
        lock(&self.sessions).contains_key(agent)
    }

    /// Close an agent's live session at once with `reason` (revocation).
    pub async fn close_session(&self, agent: &str, reason: &str) {
        let session = lock(&self.sessions).remove(agent);
        if let Some(s) = session {
            let _ =
                s.tx.send(Err(FleetError::SessionClosed(reason.to_string())))
                    .await;
            tracing::warn!(agent, reason, "agent session closed");
            self.set_agent_state(agent, v1::AgentState::Disconnected)
                .await;
        }
    }

    /// How long the agent's current session has been open (`None` when not connected).
    pub fn connected_for(&self, agent: &str) -> Option<Duration> {
        lock(&self.sessions).get(agent).map(|s| s.since.elapsed())
    }

    /// An agent as stored, with live session facts overlaid.
    pub fn agent_view(&self, mut agent: v1::Agent) -> v1::Agent {
        if let Some(live) = lock(&self.live).get(&agent.name) {
            if live.last_seen_ms > 0 {
                agent.last_seen = Some(from_millis(live.last_seen_ms));
            }
            if self.is_connected(&agent.name) {
                agent.engine_healthy = live.engine_healthy;
                agent.engine_detail.clone_from(&live.engine_detail);
                agent.agent_problem.clone_from(&live.agent_problem);
                agent.runs_in_flight.clone_from(&live.runs_in_flight);
                agent.engine_runs.clone_from(&live.engine_runs);
                agent.change_sources.clone_from(&live.change_sources);
            }
        }
        if let Some(live) = lock(&self.live).get(&agent.name) {
            let h = &live.housekeeping;
            agent.runs_cleared_before =
                (h.runs_cleared_before_ms > 0).then(|| from_millis(h.runs_cleared_before_ms));
            agent.clear_runs_total = h.clear_runs_total;
            agent.clear_runs_problem.clone_from(&h.clear_runs_problem);
        }
        let connected = self.is_connected(&agent.name);
        super::autonomy::overlay_autonomy(&mut agent, connected);
        agent
    }

    /// The change sources of `schedule` on every agent, as their last heartbeats described
    /// them: `(agent, status)`, by agent and source.
    pub fn change_source_status(&self, schedule: &str) -> Vec<(String, v1::ChangeSourceStatus)> {
        let mut out: Vec<(String, v1::ChangeSourceStatus)> = lock(&self.live)
            .iter()
            .flat_map(|(agent, live)| {
                live.change_sources
                    .iter()
                    .filter(|s| s.schedule == schedule)
                    .map(move |s| (agent.clone(), s.clone()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1.source).cmp(&(&b.0, &b.1.source)));
        out
    }

    /// Every change source of every agent in error: `(schedule, source, agents)` (for
    /// `/metrics`).
    pub fn change_source_errors(&self) -> Vec<(String, String, u64)> {
        let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
        for live in lock(&self.live).values() {
            for s in &live.change_sources {
                let n = counts
                    .entry((s.schedule.clone(), s.source.clone()))
                    .or_default();
                if !s.error.is_empty() {
                    *n += 1;
                }
            }
        }
        counts
            .into_iter()
            .map(|((s, src), n)| (s, src, n))
            .collect()
    }

    /// Every agent's engine run-history housekeeping from its last heartbeat, by name (for
    /// `/metrics`).
    pub fn housekeeping(&self) -> Vec<(String, Housekeeping)> {
        let mut out: Vec<(String, Housekeeping)> = lock(&self.live)
            .iter()
            .map(|(name, live)| (name.clone(), live.housekeeping.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Register a session for `hello`, store the agent as connected, and return the Welcome
    /// plus the session id and the highest event seq already stored.
    pub async fn on_connect(
        &self,
        hello: &v1::Hello,
        tx: SessionTx,
    ) -> Result<(v1::Welcome, u64, u64), FleetError> {
        let name = hello.name.clone();
        // What the agent covered on its own is recorded before anything is fired or sent to it.
        self.record_handover(hello).await;
        // The agent record's read-modify-write and the session's registration happen under
        // the record's lock, so an older session ending meanwhile (`set_agent_state`) either
        // comes first or sees this session and leaves the record alone.
        let record_lock = agent_record_key(&name);
        let _record = self.run_locks.lock(&record_lock).await;
        let stored = self.store.get_agent(&name).await?;
        let last_seq = stored.as_ref().map_or(0, |s| s.last_event_seq);
        let now_ts = now();
        let agent = v1::Agent {
            name: name.clone(),
            state: v1::AgentState::Connected as i32,
            labels: hello.labels.clone(),
            engine: hello.engine.clone(),
            management_agents: hello.inventory.clone(),
            agent_version: hello.agent_version.clone(),
            hostname: hello.hostname.clone(),
            last_seen: Some(now_ts),
            state_since: Some(now_ts),
            engine_healthy: true,
            engine_detail: String::new(),
            agent_problem: String::new(),
            runs_in_flight: hello.runs_in_flight.clone(),
            engine_runs: Vec::new(),
            change_sources: Vec::new(),
            drain: stored.as_ref().and_then(|s| s.agent.drain.clone()),
            autonomy_after_seconds: hello.autonomy_after_seconds,
            autonomous: false,
            // The last autonomous period: reported now, or kept from before.
            autonomous_since: hello
                .autonomous_since
                .or_else(|| stored.as_ref().and_then(|s| s.agent.autonomous_since)),
            autonomous_until: if hello.autonomous_since.is_some() {
                Some(now_ts)
            } else {
                stored.as_ref().and_then(|s| s.agent.autonomous_until)
            },
            // From heartbeats (`agent_view`).
            runs_cleared_before: None,
            clear_runs_total: 0,
            clear_runs_problem: String::new(),
        };
        self.store.put_agent(&agent).await?;
        self.lost_watch.forget(&name);
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            id,
            tx,
            since: tokio::time::Instant::now(),
        };
        if let Some(old) = lock(&self.sessions).insert(name.clone(), session) {
            tracing::warn!(agent = %name, old_session = old.id, "agent reconnected; replacing its previous session");
        }
        {
            let mut live = lock(&self.live);
            // Housekeeping figures are kept until the new session's first heartbeat.
            let (housekeeping, change_sources) = live
                .get(&name)
                .map(|l| (l.housekeeping.clone(), l.change_sources.clone()))
                .unwrap_or_default();
            live.insert(
                name.clone(),
                Live {
                    last_seen_ms: to_millis(&now_ts),
                    engine_healthy: true,
                    engine_detail: String::new(),
                    agent_problem: String::new(),
                    runs_in_flight: hello.runs_in_flight.clone(),
                    housekeeping,
                    engine_runs: Vec::new(),
                    change_sources,
                },
            );
        }
        tracing::info!(agent = %name, last_seq, agent_last_seq = hello.last_event_seq, "agent connected");
        let welcome = v1::Welcome {
            acked_event_seq: last_seq,
            heartbeat_interval_seconds: u32::try_from(self.settings.heartbeat_interval.as_secs())
                .unwrap_or(10),
            controller_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        Ok((welcome, id, last_seq))
    }

    /// The session `session_id` of `agent` ended. A newer session of the same agent is kept.
    pub async fn on_disconnect(&self, agent: &str, session_id: u64) {
        {
            let mut sessions = lock(&self.sessions);
            match sessions.get(agent) {
                Some(s) if s.id == session_id => {
                    sessions.remove(agent);
                }
                _ => return,
            }
        }
        tracing::info!(agent, "agent disconnected");
        self.set_agent_state(agent, v1::AgentState::Disconnected)
            .await;
    }

    pub(super) async fn set_agent_state(&self, agent: &str, state: v1::AgentState) {
        let record_lock = agent_record_key(agent);
        let _record = self.run_locks.lock(&record_lock).await;
        if state != v1::AgentState::Connected && self.is_connected(agent) {
            // A newer session registered (and stored the agent connected) since the caller
            // decided: the agent is connected.
            return;
        }
        let store = &self.store;
        let result: Result<(), StoreError> = async {
            if let Some(mut stored) = store.get_agent(agent).await? {
                let since = now();
                stored.agent.state = state as i32;
                stored.agent.state_since = Some(since);
                stored.agent.runs_in_flight.clear();
                store.put_agent(&stored.agent).await?;
                if state == v1::AgentState::Disconnected {
                    self.lost_watch.disconnected(agent, to_millis(&since));
                } else {
                    self.lost_watch.forget(agent);
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(agent, error = %e, "cannot store agent state");
        }
    }

    /// Heartbeat or any message: the agent is alive.
    pub fn touch(&self, agent: &str, hb: Option<&v1::Heartbeat>) {
        let mut live = lock(&self.live);
        let entry = live.entry(agent.to_string()).or_default();
        entry.last_seen_ms = Utc::now().timestamp_millis();
        if let Some(hb) = hb {
            entry.engine_healthy = hb.engine_healthy;
            entry.engine_detail.clone_from(&hb.engine_detail);
            entry.agent_problem.clone_from(&hb.agent_problem);
            entry.runs_in_flight.clone_from(&hb.runs_in_flight);
            entry.housekeeping = Housekeeping {
                runs_cleared_before_ms: hb.runs_cleared_before.as_ref().map_or(0, to_millis),
                clear_runs_total: hb.clear_runs_total,
                clear_runs_problem: crate::limits::cut_to(
                    &hb.clear_runs_problem,
                    crate::limits::MAX_TEXT,
                )
                .to_string(),
            };
            entry.engine_runs = hb
                .engine_runs
                .iter()
                .take(MAX_ENGINE_RUNS)
                .cloned()
                .collect();
            entry.change_sources = hb
                .change_sources
                .iter()
                .take(MAX_CHANGE_SOURCES)
                .map(bounded_source_status)
                .collect();
            self.pending_exports.record(agent, hb);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints what one session's structures weigh (run with `--nocapture`); the figures in the
    /// doc comment of `SessionTx` come from here.
    #[test]
    fn session_footprint() {
        let slot = std::mem::size_of::<Result<v1::ControllerMessage, FleetError>>();
        println!(
            "queue slot {slot} B, Session {} B, Live {} B",
            std::mem::size_of::<Session>(),
            std::mem::size_of::<Live>()
        );
        assert!(slot > 0);
    }

    /// A reconnect whose new session opens while the old one is being closed: the agent is
    /// connected, and its stored state must say so (listings, other controllers read it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_reconnect_racing_the_old_sessions_end_leaves_the_agent_stored_connected() {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, store) = super::super::fixtures::fleet(dir.path()).await;
        let hello = v1::Hello {
            name: "a".into(),
            ..Default::default()
        };
        let mut wrong = 0;
        for _ in 0..100 {
            let (tx1, _rx1) = mpsc::channel(8);
            let (_, old, _) = fleet.on_connect(&hello, tx1).await.unwrap();
            let (tx2, _rx2) = mpsc::channel(8);
            let f1 = std::sync::Arc::clone(&fleet);
            let f2 = std::sync::Arc::clone(&fleet);
            let h = hello.clone();
            let ends = tokio::spawn(async move { f1.on_disconnect("a", old).await });
            let opens = tokio::spawn(async move { f2.on_connect(&h, tx2).await.map(|w| w.1) });
            ends.await.unwrap();
            let new = opens.await.unwrap().unwrap();
            assert!(fleet.is_connected("a"));
            let stored = store.get_agent("a").await.unwrap().unwrap();
            if stored.agent.state != v1::AgentState::Connected as i32 {
                wrong += 1;
            }
            fleet.on_disconnect("a", new).await;
        }
        assert_eq!(
            wrong, 0,
            "stored as not connected while connected, in {wrong} of 100"
        );
    }
}
