//! The controller's live view of the fleet: which agents hold a session, the runs they were
//! sent, and how agent events change those runs.
//!
//! Delivery (design decision 2): a run is stored before it is sent; a `StartRun` is (re)sent
//! whenever the agent's session (re)opens while the run is `pending` or `dispatched`; the agent
//! dedups by run id. Agent events are applied to runs and stored in one transaction per batch,
//! and only then acknowledged, so an acknowledged event is never lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use syncfleet_proto::time::{from_millis, now, to_millis};
use syncfleet_proto::v1::{self, agent_event::Kind, controller_message::Msg as CtrlMsg};
use syncfleet_proto::vocab;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::store::{self, Store, StoreError};

/// Timing settings the fleet logic needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub agent_lost_after: Duration,
    pub pending_deadline: Duration,
}

/// Outbound half of an agent's session stream.
pub type SessionTx = mpsc::Sender<Result<v1::ControllerMessage, Status>>;

struct Session {
    id: u64,
    tx: SessionTx,
}

#[derive(Default, Clone)]
struct Live {
    last_seen_ms: i64,
    engine_healthy: bool,
    engine_detail: String,
    runs_in_flight: Vec<String>,
}

/// Shared controller state.
pub struct Fleet {
    pub store: Arc<dyn Store>,
    pub settings: Settings,
    sessions: std::sync::Mutex<HashMap<String, Session>>,
    live: std::sync::Mutex<HashMap<String, Live>>,
    updates: broadcast::Sender<v1::Run>,
    /// Serializes read-modify-write of runs (agent events, cancels, the sweeper).
    run_lock: tokio::sync::Mutex<()>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").finish_non_exhaustive()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Guarded maps are updated in single statements; a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Map a store error to a gRPC status (details stay in the controller's log).
pub fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e, "store error");
    match e {
        StoreError::BadPageToken => Status::invalid_argument(e.to_string()),
        _ => Status::internal(format!("controller store error: {e}")),
    }
}

fn state_of(run: &v1::Run) -> v1::RunState {
    v1::RunState::try_from(run.state).unwrap_or(v1::RunState::Unspecified)
}

fn start_command(run: &v1::Run) -> v1::ControllerMessage {
    v1::ControllerMessage {
        msg: Some(CtrlMsg::Command(v1::Command {
            command_id: format!("start:{}", run.id),
            kind: Some(v1::command::Kind::StartRun(v1::StartRun {
                run_id: run.id.clone(),
                steps: run
                    .steps
                    .iter()
                    .map(|s| v1::StepSpec {
                        ma: s.ma.clone(),
                        profile: s.profile.clone(),
                    })
                    .collect(),
                traceparent: String::new(),
                requested_at: run.created_at,
            })),
        })),
    }
}

fn cancel_command(run_id: &str, reason: &str) -> v1::ControllerMessage {
    v1::ControllerMessage {
        msg: Some(CtrlMsg::Command(v1::Command {
            command_id: format!("cancel:{run_id}:{}", uuid::Uuid::new_v4()),
            kind: Some(v1::command::Kind::CancelRun(v1::CancelRun {
                run_id: run_id.to_string(),
                reason: reason.to_string(),
            })),
        })),
    }
}

/// Apply one agent event to a run. Pure: the caller stores the result.
pub fn apply_event(run: &mut v1::Run, ev: &v1::AgentEvent) {
    let at = ev.at.unwrap_or_else(now);
    let step_mut = |run: &mut v1::Run, index: u32| -> Option<usize> {
        let i = usize::try_from(index).ok()?;
        (i < run.steps.len()).then_some(i)
    };
    match &ev.kind {
        Some(Kind::RunStarted(_)) if !state_of(run).is_terminal() => {
            run.state = v1::RunState::Running as i32;
            run.started_at.get_or_insert(at);
        }
        Some(Kind::RunStarted(_)) => {}
        Some(Kind::StepWaiting(w)) => {
            if let Some(i) = step_mut(run, w.index) {
                run.steps[i].state = v1::StepState::Waiting as i32;
                run.steps[i].detail.clone_from(&w.reason);
            }
        }
        Some(Kind::StepStarted(s)) => {
            if let Some(i) = step_mut(run, s.index) {
                let step = &mut run.steps[i];
                step.state = v1::StepState::Running as i32;
                step.started_at = Some(at);
                step.detail.clear();
                if s.run_number != 0 {
                    step.run_number = s.run_number;
                }
                if s.pending.is_some() {
                    step.pending_before = s.pending;
                }
                step.attempts = s.attempt.max(1);
            }
        }
        Some(Kind::StepProgress(p)) => {
            if let Some(i) = step_mut(run, p.index) {
                let step = &mut run.steps[i];
                step.progress.clone_from(&p.progress);
                if p.counters.is_some() {
                    step.counters.clone_from(&p.counters);
                }
            }
        }
        Some(Kind::StepFinished(f)) => {
            if let Some(i) = step_mut(run, f.index) {
                let step = &mut run.steps[i];
                step.state = v1::StepState::Done as i32;
                step.result.clone_from(&f.result);
                step.started_at = f.started_at.or(step.started_at);
                step.finished_at = f.finished_at.or(Some(at));
                step.counters = f.counters.clone().or(step.counters.take());
                step.run_number = f.run_number;
                step.connection_result.clone_from(&f.connection_result);
                step.error_count = f.error_count;
                step.detail.clone_from(&f.detail);
                step.progress.clear();
            }
            let results: Vec<&str> = run
                .steps
                .iter()
                .filter(|s| !s.result.is_empty())
                .map(|s| s.result.as_str())
                .collect();
            run.result = vocab::most_severe(results).unwrap_or_default().to_string();
        }
        Some(Kind::RunFinished(f)) => {
            run.state = f.state;
            if !f.result.is_empty() {
                run.result.clone_from(&f.result);
            }
            run.message.clone_from(&f.message);
            run.finished_at = Some(at);
            for step in &mut run.steps {
                if step.state != v1::StepState::Done as i32 {
                    step.state = v1::StepState::NotRun as i32;
                    step.progress.clear();
                }
            }
        }
        None => {}
    }
}

impl Fleet {
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> Arc<Self> {
        let (updates, _) = broadcast::channel(4096);
        Arc::new(Self {
            store,
            settings,
            sessions: std::sync::Mutex::new(HashMap::new()),
            live: std::sync::Mutex::new(HashMap::new()),
            updates,
            run_lock: tokio::sync::Mutex::new(()),
            next_session: AtomicU64::new(1),
        })
    }

    /// Subscribe to run changes (each message is the run as it is now).
    pub fn subscribe(&self) -> broadcast::Receiver<v1::Run> {
        self.updates.subscribe()
    }

    fn publish(&self, run: &v1::Run) {
        // No subscribers is fine.
        let _ = self.updates.send(run.clone());
    }

    fn session_tx(&self, agent: &str) -> Option<SessionTx> {
        lock(&self.sessions).get(agent).map(|s| s.tx.clone())
    }

    pub fn is_connected(&self, agent: &str) -> bool {
        lock(&self.sessions).contains_key(agent)
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
                agent.runs_in_flight.clone_from(&live.runs_in_flight);
            }
        }
        agent
    }

    /// Register a session for `hello`, store the agent as connected, and return the Welcome
    /// plus the session id and the highest event seq already stored.
    pub async fn on_connect(
        &self,
        hello: &v1::Hello,
        tx: SessionTx,
    ) -> Result<(v1::Welcome, u64, u64), Status> {
        let name = hello.name.clone();
        let stored = store::blocking(&self.store, {
            let name = name.clone();
            move |s| s.get_agent(&name)
        })
        .await
        .map_err(store_status)?;
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
            runs_in_flight: hello.runs_in_flight.clone(),
        };
        store::blocking(&self.store, {
            let agent = agent.clone();
            move |s| s.put_agent(&agent)
        })
        .await
        .map_err(store_status)?;
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = lock(&self.sessions).insert(name.clone(), Session { id, tx }) {
            tracing::warn!(agent = %name, old_session = old.id, "agent reconnected; replacing its previous session");
        }
        lock(&self.live).insert(
            name.clone(),
            Live {
                last_seen_ms: to_millis(&now_ts),
                engine_healthy: true,
                engine_detail: String::new(),
                runs_in_flight: hello.runs_in_flight.clone(),
            },
        );
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

    async fn set_agent_state(&self, agent: &str, state: v1::AgentState) {
        let name = agent.to_string();
        let result = store::blocking(&self.store, move |s| {
            if let Some(mut stored) = s.get_agent(&name)? {
                stored.agent.state = state as i32;
                stored.agent.state_since = Some(now());
                stored.agent.runs_in_flight.clear();
                s.put_agent(&stored.agent)?;
            }
            Ok(())
        })
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
            entry.runs_in_flight.clone_from(&hb.runs_in_flight);
        }
    }

    /// Send `StartRun` for every pending or dispatched run of a (re)connected agent, and
    /// `CancelRun` for runs whose cancellation is still owed.
    pub async fn dispatch_for_agent(&self, agent: &str) {
        let name = agent.to_string();
        let runs = match store::blocking(&self.store, move |s| {
            s.runs_in_states(
                Some(&name),
                &[
                    v1::RunState::Pending,
                    v1::RunState::Dispatched,
                    v1::RunState::Running,
                ],
            )
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(agent, error = %e, "cannot load runs to dispatch");
                return;
            }
        };
        for run in runs {
            match state_of(&run) {
                v1::RunState::Pending | v1::RunState::Dispatched => {
                    self.send_start(run).await;
                }
                _ => {
                    if run.cancel_requested
                        && let Some(tx) = self.session_tx(agent)
                    {
                        let _ = tx
                            .send(Ok(cancel_command(&run.id, "cancel requested")))
                            .await;
                    }
                }
            }
        }
    }

    /// Queue `StartRun` on the agent's session; a pending run becomes dispatched.
    async fn send_start(&self, run: v1::Run) {
        let Some(tx) = self.session_tx(&run.agent) else {
            return;
        };
        if tx.send(Ok(start_command(&run))).await.is_err() {
            return;
        }
        if state_of(&run) == v1::RunState::Pending {
            let _guard = self.run_lock.lock().await;
            let id = run.id.clone();
            let updated = store::blocking(&self.store, move |s| {
                let Some(mut current) = s.get_run(&id)? else {
                    return Ok(None);
                };
                if state_of(&current) != v1::RunState::Pending {
                    return Ok(None);
                }
                current.state = v1::RunState::Dispatched as i32;
                current.message.clear();
                s.put_runs(std::slice::from_ref(&current))?;
                Ok(Some(current))
            })
            .await;
            match updated {
                Ok(Some(r)) => self.publish(&r),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot mark run dispatched"),
            }
        }
    }

    /// Create and store a run, then dispatch it if its agent is connected.
    pub async fn start_run(
        &self,
        agent: &str,
        steps: Vec<v1::StepSpec>,
        origin: &str,
        requested_by: &str,
    ) -> Result<v1::Run, Status> {
        if steps.is_empty() {
            return Err(Status::invalid_argument(
                "a run needs at least one step (MA and run profile)",
            ));
        }
        let name = agent.to_string();
        let stored = store::blocking(&self.store, move |s| s.get_agent(&name))
            .await
            .map_err(store_status)?;
        let Some(stored) = stored else {
            let known = store::blocking(&self.store, |s| s.list_agents())
                .await
                .map_err(store_status)?
                .into_iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Status::not_found(format!(
                "no agent named {agent:?}; known agents: {}",
                if known.is_empty() { "none yet" } else { &known }
            )));
        };
        check_steps(&stored.agent, &steps)?;
        let created = now();
        let run = v1::Run {
            id: uuid::Uuid::now_v7().to_string(),
            agent: agent.to_string(),
            state: v1::RunState::Pending as i32,
            result: String::new(),
            origin: origin.to_string(),
            created_at: Some(created),
            started_at: None,
            finished_at: None,
            steps: steps
                .into_iter()
                .enumerate()
                .map(|(i, s)| v1::Step {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    ma: s.ma,
                    profile: s.profile,
                    state: v1::StepState::Waiting as i32,
                    ..Default::default()
                })
                .collect(),
            message: if self.is_connected(agent) {
                String::new()
            } else {
                format!(
                    "agent {agent} is not connected; the run waits up to {} for it",
                    humantime::format_duration(self.settings.pending_deadline)
                )
            },
            requested_by: requested_by.to_string(),
            cancel_requested: false,
        };
        store::blocking(&self.store, {
            let run = run.clone();
            move |s| s.insert_run(&run)
        })
        .await
        .map_err(store_status)?;
        self.publish(&run);
        tracing::info!(run_id = %run.id, agent, steps = run.steps.len(), "run created");
        self.send_start(run.clone()).await;
        let id = run.id.clone();
        let current = store::blocking(&self.store, move |s| s.get_run(&id))
            .await
            .map_err(store_status)?;
        Ok(current.unwrap_or(run))
    }

    /// Apply a batch of events from `agent`'s session, store them with the runs they change,
    /// and return the highest seq now stored. Events at or below `stored_seq` are replays and
    /// are skipped; events about runs of other agents are refused (identity binding).
    pub async fn apply_events(
        &self,
        agent: &str,
        events: Vec<v1::AgentEvent>,
        stored_seq: u64,
    ) -> Result<u64, StoreError> {
        let fresh: Vec<v1::AgentEvent> =
            events.into_iter().filter(|e| e.seq > stored_seq).collect();
        if fresh.is_empty() {
            return Ok(stored_seq);
        }
        let _guard = self.run_lock.lock().await;
        let agent_name = agent.to_string();
        let (seq, changed) = store::blocking(&self.store, move |s| {
            let mut runs: HashMap<String, v1::Run> = HashMap::new();
            let mut order: Vec<String> = Vec::new();
            for ev in &fresh {
                if !runs.contains_key(&ev.run_id) {
                    match s.get_run(&ev.run_id)? {
                        Some(r) if r.agent == agent_name => {
                            order.push(r.id.clone());
                            runs.insert(r.id.clone(), r);
                        }
                        Some(r) => {
                            tracing::warn!(agent = %agent_name, run_id = %ev.run_id, owner = %r.agent, "event about another agent's run refused");
                            continue;
                        }
                        None => {
                            tracing::warn!(agent = %agent_name, run_id = %ev.run_id, "event about an unknown run ignored");
                            continue;
                        }
                    }
                }
                if let Some(run) = runs.get_mut(&ev.run_id) {
                    apply_event(run, ev);
                }
            }
            let changed: Vec<v1::Run> = order.iter().filter_map(|id| runs.remove(id)).collect();
            let seq = s.commit_agent_events(&agent_name, &fresh, &changed)?;
            Ok((seq, changed))
        })
        .await?;
        for run in &changed {
            self.publish(run);
        }
        Ok(seq)
    }

    /// The agent refused a command.
    pub async fn command_refused(&self, agent: &str, ack: &v1::CommandAck) {
        tracing::warn!(agent, command = %ack.command_id, reason = %ack.reason, "agent refused a command");
        let Some(run_id) = ack.command_id.strip_prefix("start:") else {
            return;
        };
        let message = format!("agent {agent} refused the run: {}", ack.reason);
        let _ = self
            .finish_run_here(run_id, v1::RunState::Failed, message)
            .await;
    }

    /// End a non-terminal run on the controller side (deadline, refusal, pending cancel).
    async fn finish_run_here(
        &self,
        run_id: &str,
        state: v1::RunState,
        message: String,
    ) -> Result<Option<v1::Run>, StoreError> {
        let _guard = self.run_lock.lock().await;
        let id = run_id.to_string();
        let updated = store::blocking(&self.store, move |s| {
            let Some(mut run) = s.get_run(&id)? else {
                return Ok(None);
            };
            if state_of(&run).is_terminal() {
                return Ok(None);
            }
            run.state = state as i32;
            run.message = message;
            run.finished_at = Some(now());
            for step in &mut run.steps {
                if step.state != v1::StepState::Done as i32 {
                    step.state = v1::StepState::NotRun as i32;
                }
            }
            s.put_runs(std::slice::from_ref(&run))?;
            Ok(Some(run))
        })
        .await?;
        if let Some(r) = &updated {
            self.publish(r);
        }
        Ok(updated)
    }

    /// Cancel a run. Pending runs end at once; dispatched or running runs are stopped by their
    /// agent (now, or when it reconnects).
    pub async fn cancel_run(&self, id: &str, reason: &str, who: &str) -> Result<v1::Run, Status> {
        let rid = id.to_string();
        let run = store::blocking(&self.store, move |s| s.get_run(&rid))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no run with id {id:?}")))?;
        let state = state_of(&run);
        if state.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "run {id} already ended ({}); nothing to cancel",
                state.label()
            )));
        }
        let why = if reason.is_empty() {
            format!("cancelled by {who}")
        } else {
            format!("cancelled by {who}: {reason}")
        };
        if state == v1::RunState::Pending {
            return self
                .finish_run_here(id, v1::RunState::Cancelled, why)
                .await
                .map_err(store_status)?
                .ok_or_else(|| Status::aborted("the run changed state meanwhile; try again"));
        }
        let updated = {
            let _guard = self.run_lock.lock().await;
            let rid = id.to_string();
            let msg = why.clone();
            store::blocking(&self.store, move |s| {
                let Some(mut run) = s.get_run(&rid)? else {
                    return Ok(None);
                };
                run.cancel_requested = true;
                run.message = msg;
                s.put_runs(std::slice::from_ref(&run))?;
                Ok(Some(run))
            })
            .await
            .map_err(store_status)?
        };
        let run = updated.ok_or_else(|| Status::not_found(format!("no run with id {id:?}")))?;
        self.publish(&run);
        if let Some(tx) = self.session_tx(&run.agent) {
            let _ = tx.send(Ok(cancel_command(id, &why))).await;
        }
        Ok(run)
    }

    /// Periodic housekeeping: fail runs pending past the deadline; mark long-disconnected
    /// agents lost.
    pub async fn sweep(&self) {
        let deadline_ms =
            i64::try_from(self.settings.pending_deadline.as_millis()).unwrap_or(i64::MAX);
        let now_ms = Utc::now().timestamp_millis();
        match store::blocking(&self.store, |s| {
            s.runs_in_states(None, &[v1::RunState::Pending])
        })
        .await
        {
            Ok(runs) => {
                for run in runs {
                    let created = run.created_at.as_ref().map_or(0, to_millis);
                    if now_ms - created >= deadline_ms {
                        let msg = format!(
                            "agent {} did not connect within the pending deadline ({}); the run was never started",
                            run.agent,
                            humantime::format_duration(self.settings.pending_deadline)
                        );
                        if let Err(e) = self
                            .finish_run_here(&run.id, v1::RunState::Failed, msg)
                            .await
                        {
                            tracing::error!(error = %e, "cannot fail an expired pending run");
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "sweep: cannot list pending runs"),
        }
        let lost_ms = i64::try_from(self.settings.agent_lost_after.as_millis()).unwrap_or(i64::MAX);
        match store::blocking(&self.store, |s| s.list_agents()).await {
            Ok(agents) => {
                for a in agents {
                    if a.state == v1::AgentState::Disconnected as i32 && !self.is_connected(&a.name)
                    {
                        let since = a.state_since.as_ref().map_or(0, to_millis);
                        if now_ms - since >= lost_ms {
                            tracing::warn!(agent = %a.name, "agent lost");
                            self.set_agent_state(&a.name, v1::AgentState::Lost).await;
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "sweep: cannot list agents"),
        }
    }

    /// Mark every agent stored as connected by a previous controller process as disconnected
    /// (no session survives a restart).
    pub async fn reset_sessions_after_restart(&self) {
        if let Ok(agents) = store::blocking(&self.store, |s| s.list_agents()).await {
            for a in agents {
                if a.state == v1::AgentState::Connected as i32 {
                    self.set_agent_state(&a.name, v1::AgentState::Disconnected)
                        .await;
                }
            }
        }
    }
}

/// Refuse steps that name an MA or run profile missing from the agent's last inventory, with
/// the names that do exist.
fn check_steps(agent: &v1::Agent, steps: &[v1::StepSpec]) -> Result<(), Status> {
    if agent.management_agents.is_empty() {
        return Ok(());
    }
    for s in steps {
        let Some(ma) = agent.management_agents.iter().find(|m| m.name == s.ma) else {
            let known: Vec<&str> = agent
                .management_agents
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            return Err(Status::invalid_argument(format!(
                "agent {} has no management agent {:?}; its MAs are: {}",
                agent.name,
                s.ma,
                known.join(", ")
            )));
        };
        if !ma.run_profiles.iter().any(|p| p.name == s.profile) {
            let known: Vec<&str> = ma.run_profiles.iter().map(|p| p.name.as_str()).collect();
            return Err(Status::invalid_argument(format!(
                "management agent {:?} on {} has no run profile {:?}; its run profiles are: {}",
                s.ma,
                agent.name,
                s.profile,
                known.join(", ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> v1::Run {
        v1::Run {
            id: "r".into(),
            agent: "a".into(),
            state: v1::RunState::Dispatched as i32,
            steps: vec![
                v1::Step {
                    index: 0,
                    ma: "AD".into(),
                    profile: "Delta Import".into(),
                    state: v1::StepState::Waiting as i32,
                    ..Default::default()
                },
                v1::Step {
                    index: 1,
                    ma: "AD".into(),
                    profile: "Delta Sync".into(),
                    state: v1::StepState::Waiting as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn ev(kind: Kind) -> v1::AgentEvent {
        v1::AgentEvent {
            seq: 1,
            at: Some(from_millis(1000)),
            run_id: "r".into(),
            kind: Some(kind),
        }
    }

    #[test]
    fn events_drive_the_run_to_its_end() {
        let mut r = run();
        apply_event(&mut r, &ev(Kind::RunStarted(v1::RunStarted {})));
        assert_eq!(r.state, v1::RunState::Running as i32);
        apply_event(
            &mut r,
            &ev(Kind::StepFinished(v1::StepFinished {
                index: 0,
                result: "stopped-connectivity".into(),
                counters: Some(v1::StepCounters {
                    counters: [("stage-add".to_string(), 3u64)].into_iter().collect(),
                    outbound: Default::default(),
                }),
                ..Default::default()
            })),
        );
        assert_eq!(r.result, "stopped-connectivity");
        apply_event(
            &mut r,
            &ev(Kind::RunFinished(v1::RunFinished {
                state: v1::RunState::Failed as i32,
                result: "stopped-connectivity".into(),
                message: "step 1 stopped".into(),
            })),
        );
        assert_eq!(r.state, v1::RunState::Failed as i32);
        assert_eq!(r.steps[0].state, v1::StepState::Done as i32);
        assert_eq!(r.steps[1].state, v1::StepState::NotRun as i32);
        assert_eq!(
            r.steps[0].counters.as_ref().unwrap().counters["stage-add"],
            3
        );
        // An event for a step index out of range changes nothing and does not panic.
        apply_event(
            &mut r,
            &ev(Kind::StepStarted(v1::StepStarted {
                index: 99,
                ..Default::default()
            })),
        );
    }

    #[test]
    fn unknown_steps_are_refused_with_the_known_names() {
        let agent = v1::Agent {
            name: "sync-01".into(),
            management_agents: vec![v1::ManagementAgent {
                name: "AD".into(),
                run_profiles: vec![v1::RunProfile {
                    name: "Delta Import".into(),
                    step_types: vec![],
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let bad = [v1::StepSpec {
            ma: "AD".into(),
            profile: "Delta Imprt".into(),
        }];
        let err = check_steps(&agent, &bad).unwrap_err();
        assert!(err.message().contains("Delta Import"), "{}", err.message());
        let bad = [v1::StepSpec {
            ma: "HR".into(),
            profile: "x".into(),
        }];
        assert!(
            check_steps(&agent, &bad)
                .unwrap_err()
                .message()
                .contains("AD")
        );
    }
}
