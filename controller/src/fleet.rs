//! The controller's live view of the fleet: which agents hold a session, the runs they were
//! sent, and how agent events change those runs.
//!
//! Delivery (at least once; the agent executes a run id at most once): a run is stored before it
//! is sent; a `StartRun` is (re)sent whenever the agent's session (re)opens while the run is
//! `pending` or `dispatched`; the agent dedups by run id. Agent events are applied to runs and
//! stored in one transaction per batch, and only then acknowledged, so an acknowledged event is
//! never lost.

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

/// What a new run is made of (see [`Fleet::create_run`]).
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    /// Fixed id (scheduled runs derive theirs from schedule, agent and nominal time); new UUID
    /// when `None`.
    pub id: Option<String>,
    pub agent: String,
    pub steps: Vec<v1::Step>,
    pub origin: String,
    pub requested_by: String,
    pub schedule: String,
    pub sequence: String,
    pub nominal_time: Option<prost_types::Timestamp>,
    pub on_failure: v1::OnFailure,
    pub continuation_of: String,
    pub approved_steps: Vec<u32>,
    pub skip_steps: Vec<u32>,
    pub jitter_ms: u64,
}

/// The steps of a run of a sequence: the plan flattened, each step knowing its stage.
pub fn steps_of(doc: &crate::model::SequenceDoc) -> Vec<v1::Step> {
    let mut out = Vec::new();
    for (si, stage) in doc.plan().into_iter().enumerate() {
        for step in stage.steps {
            out.push(v1::Step {
                index: u32::try_from(out.len()).unwrap_or(u32::MAX),
                stage: u32::try_from(si).unwrap_or(u32::MAX),
                ma: step.ma,
                profile: step.profile,
                only_if: step.only_if,
                guard: step.guard,
                state: v1::StepState::Waiting as i32,
                ..Default::default()
            });
        }
    }
    out
}

/// Outbound half of an agent's session stream.
pub type SessionTx = mpsc::Sender<Result<v1::ControllerMessage, Status>>;

struct Session {
    id: u64,
    tx: SessionTx,
    since: tokio::time::Instant,
}

#[derive(Default, Clone)]
struct Live {
    last_seen_ms: i64,
    engine_healthy: bool,
    engine_detail: String,
    agent_problem: String,
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
    /// Pending export counters from the agents' heartbeats (for `/metrics`).
    pub pending_exports: crate::pending::HeartbeatPending,
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
    // Steps carry their stage; consecutive steps of one stage form one plan stage.
    let mut stages: Vec<v1::PlanStage> = Vec::new();
    let mut current: Option<u32> = None;
    for s in &run.steps {
        if current != Some(s.stage) || stages.is_empty() {
            stages.push(v1::PlanStage::default());
            current = Some(s.stage);
        }
        if let Some(stage) = stages.last_mut() {
            stage.steps.push(v1::PlanStep {
                ma: s.ma.clone(),
                profile: s.profile.clone(),
                only_if: s.only_if,
                guard: s.guard,
            });
        }
    }
    v1::ControllerMessage {
        msg: Some(CtrlMsg::Command(v1::Command {
            command_id: format!("start:{}", run.id),
            kind: Some(v1::command::Kind::StartRun(v1::StartRun {
                run_id: run.id.clone(),
                steps: Vec::new(),
                traceparent: run.traceparent.clone(),
                requested_at: run.created_at,
                stages,
                on_failure: run.on_failure,
                approved_steps: run.approved_steps.clone(),
                skip_steps: run.skip_steps.clone(),
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
        }
        Some(Kind::StepSkipped(k)) => {
            if let Some(i) = step_mut(run, k.index) {
                let step = &mut run.steps[i];
                step.state = v1::StepState::Skipped as i32;
                step.detail.clone_from(&k.reason);
                step.started_at = None;
                step.finished_at = Some(at);
            }
        }
        Some(Kind::StepHeld(h)) => {
            if let Some(i) = step_mut(run, h.index) {
                let step = &mut run.steps[i];
                step.state = v1::StepState::Held as i32;
                step.detail.clone_from(&h.reason);
                if h.pending.is_some() {
                    step.pending_before = h.pending;
                }
            }
        }
        Some(Kind::RunFinished(f)) => {
            run.message.clone_from(&f.message);
            end_run(run, f.state(), &f.result, at);
        }
        None => {}
    }
}

/// End a run: its state, end time and result, and every step that did not end becomes
/// `not_run`.
///
/// The result is set here and only here, so a run has a result exactly when it has ended: the
/// agent's final result, or else the most severe result of its finished steps. An `unknown`
/// run has no result (its outcome was not observed; the steps that finished keep theirs). A
/// step that is `not_run` has no start, end, counters or progress: whatever it showed while it
/// ran was never confirmed, and a start without an end would read as a growing duration.
fn end_run(run: &mut v1::Run, state: v1::RunState, result: &str, at: prost_types::Timestamp) {
    run.state = state as i32;
    run.finished_at = Some(at);
    run.result = if state == v1::RunState::Unknown {
        String::new()
    } else if !result.is_empty() {
        result.to_string()
    } else {
        vocab::most_severe(
            run.steps
                .iter()
                .filter(|s| s.state == v1::StepState::Done as i32 && !s.result.is_empty())
                .map(|s| s.result.as_str()),
        )
        .unwrap_or_default()
        .to_string()
    };
    for step in &mut run.steps {
        let state = v1::StepState::try_from(step.state).unwrap_or(v1::StepState::Unspecified);
        if matches!(
            state,
            v1::StepState::Waiting | v1::StepState::Running | v1::StepState::Unspecified
        ) {
            if state == v1::StepState::Running && step.detail.is_empty() {
                step.detail =
                    "was running when the run ended; its outcome was not observed".to_string();
            }
            step.state = v1::StepState::NotRun as i32;
            step.started_at = None;
            step.finished_at = None;
            step.counters = None;
            step.progress.clear();
        }
    }
}

/// Why no new run may be created: the message says who paused what, why, and how to resume.
#[derive(Debug, Clone, PartialEq)]
pub enum RunBlocked {
    FleetPaused(v1::Pause),
    /// Schedule name and its pause.
    SchedulePaused(String, v1::Pause),
    /// Agent name and its drain.
    AgentDraining(String, v1::Pause),
}

impl std::fmt::Display for RunBlocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let by = |p: &v1::Pause| {
            if p.by.is_empty() {
                String::new()
            } else {
                format!(" by {}", p.by)
            }
        };
        match self {
            RunBlocked::FleetPaused(p) => write!(
                f,
                "the fleet is paused{}: {}; resume with 'syncfleet fleet resume'",
                by(p),
                p.note
            ),
            RunBlocked::SchedulePaused(name, p) => write!(
                f,
                "schedule {name} is paused{}: {}; resume it with 'syncfleet schedules resume {name}'",
                by(p),
                p.note
            ),
            RunBlocked::AgentDraining(agent, d) => write!(
                f,
                "agent {agent} is draining{}{}; resume it with 'syncfleet agents resume {agent}'",
                if d.by.is_empty() {
                    String::new()
                } else {
                    format!(" (by {})", d.by)
                },
                if d.note.is_empty() {
                    String::new()
                } else {
                    format!(": {}", d.note)
                }
            ),
        }
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
            pending_exports: crate::pending::HeartbeatPending::default(),
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

    /// Close an agent's live session at once with `reason` (revocation).
    pub async fn close_session(&self, agent: &str, reason: &str) {
        let session = lock(&self.sessions).remove(agent);
        if let Some(s) = session {
            let _ =
                s.tx.send(Err(Status::unauthenticated(reason.to_string())))
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
            agent_problem: String::new(),
            runs_in_flight: hello.runs_in_flight.clone(),
            drain: stored.as_ref().and_then(|s| s.agent.drain.clone()),
        };
        store::blocking(&self.store, {
            let agent = agent.clone();
            move |s| s.put_agent(&agent)
        })
        .await
        .map_err(store_status)?;
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            id,
            tx,
            since: tokio::time::Instant::now(),
        };
        if let Some(old) = lock(&self.sessions).insert(name.clone(), session) {
            tracing::warn!(agent = %name, old_session = old.id, "agent reconnected; replacing its previous session");
        }
        lock(&self.live).insert(
            name.clone(),
            Live {
                last_seen_ms: to_millis(&now_ts),
                engine_healthy: true,
                engine_detail: String::new(),
                agent_problem: String::new(),
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
            entry.agent_problem.clone_from(&hb.agent_problem);
            entry.runs_in_flight.clone_from(&hb.runs_in_flight);
            self.pending_exports.record(agent, hb);
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

    /// When a run may be dispatched: scheduled runs wait for nominal time + jitter.
    fn dispatch_at_ms(run: &v1::Run) -> i64 {
        run.nominal_time.as_ref().map_or(0, |t| {
            to_millis(t).saturating_add(i64::try_from(run.jitter_ms).unwrap_or(0))
        })
    }

    /// Queue `StartRun` on the agent's session; a pending run becomes dispatched. A run whose
    /// dispatch time has not come is left pending (the sweeper and a timer send it later).
    pub async fn send_start(&self, run: v1::Run) {
        let due = Self::dispatch_at_ms(&run);
        let now_ms = Utc::now().timestamp_millis();
        if due > now_ms && state_of(&run) == v1::RunState::Pending {
            return;
        }
        let Some(tx) = self.session_tx(&run.agent) else {
            return;
        };
        if state_of(&run) == v1::RunState::Pending && self.dispatch_blocked(&run.agent).await {
            // Paused fleet or draining agent: nothing new starts; the sweeper sends it after
            // the resume (or the pending deadline ends it).
            return;
        }
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

    /// Create and store an ad-hoc run, then dispatch it if its agent is connected.
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
        let steps = steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                v1::Step {
                    index: i,
                    stage: i,
                    ma: s.ma,
                    profile: s.profile,
                    state: v1::StepState::Waiting as i32,
                    ..Default::default()
                }
            })
            .collect();
        let (run, _) = self
            .create_run(
                NewRun {
                    agent: agent.to_string(),
                    steps,
                    origin: origin.to_string(),
                    requested_by: requested_by.to_string(),
                    ..NewRun::default()
                },
                true,
            )
            .await?;
        Ok(run)
    }

    /// Whether new runs may not start on `agent` now (fleet paused or agent draining).
    async fn dispatch_blocked(&self, agent: &str) -> bool {
        if matches!(self.fleet_pause().await, Ok(Some(_))) {
            return true;
        }
        let name = agent.to_string();
        matches!(
            store::blocking(&self.store, move |s| s.get_agent(&name)).await,
            Ok(Some(a)) if a.agent.drain.as_ref().is_some_and(|d| d.paused)
        )
    }

    /// Why a new run for `agent` may not be created now, if it may not: the fleet is paused,
    /// `schedule` (when given) is paused, or the agent drains.
    ///
    /// This is the one check every path that creates a run consults ([`Fleet::create_run`]
    /// enforces it; the scheduler asks first so it can count the skip): scheduled fires,
    /// catch-ups, buffered fire times released after the running run, manual runs and approval
    /// continuations. An approval passes no schedule: a guard rail pauses the schedule of the
    /// run it held, and approving that run is how an operator lets it through.
    pub async fn run_blocked(
        &self,
        agent: &str,
        schedule: Option<&str>,
    ) -> Result<Option<RunBlocked>, StoreError> {
        if let Some(p) = self.fleet_pause().await? {
            return Ok(Some(RunBlocked::FleetPaused(p)));
        }
        if let Some(name) = schedule
            && let Some(p) = self.schedule_pause(name).await?
        {
            return Ok(Some(RunBlocked::SchedulePaused(name.to_string(), p)));
        }
        let name = agent.to_string();
        if let Some(stored) = store::blocking(&self.store, move |s| s.get_agent(&name)).await?
            && let Some(d) = stored.agent.drain.filter(|d| d.paused)
        {
            return Ok(Some(RunBlocked::AgentDraining(agent.to_string(), d)));
        }
        Ok(None)
    }

    /// Fail with FAILED_PRECONDITION when the fleet is paused or the agent drains (manual runs
    /// honour the same rules as scheduled ones).
    pub async fn check_not_paused(&self, agent: &str) -> Result<(), Status> {
        match self.run_blocked(agent, None).await.map_err(store_status)? {
            Some(blocked) => Err(Status::failed_precondition(blocked.to_string())),
            None => Ok(()),
        }
    }

    /// The revocation of `agent` when it was revoked and has not enrolled again since.
    pub async fn revocation(&self, agent: &str) -> Result<Option<v1::Pause>, StoreError> {
        self.get_pause(&crate::security::revoked_key(agent)).await
    }

    /// Fail with FAILED_PRECONDITION when `agent` was revoked and has not enrolled again: its
    /// runs could never be dispatched.
    pub async fn check_not_revoked(&self, agent: &str) -> Result<(), Status> {
        let Some(r) = self.revocation(agent).await.map_err(store_status)? else {
            return Ok(());
        };
        Err(Status::failed_precondition(format!(
            "agent {agent} was revoked{}{}{}; it takes no runs until it enrols again with a new token ('syncfleet tokens create --agent {agent}', then 'syncfleet-agent enroll' on the server)",
            r.at.as_ref()
                .map(|at| format!(" at {}", syncfleet_proto::time::rfc3339(at)))
                .unwrap_or_default(),
            if r.by.is_empty() {
                String::new()
            } else {
                format!(" by {}", r.by)
            },
            if r.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.note)
            },
        )))
    }

    /// Fail the runs still pending for `agent` (just revoked): they could never be sent, and
    /// must not be sent to whatever enrols under its name later.
    pub async fn fail_pending_runs_of_revoked(&self, agent: &str) {
        let name = agent.to_string();
        let runs = match store::blocking(&self.store, move |s| {
            s.runs_in_states(Some(&name), &[v1::RunState::Pending])
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(agent, error = %e, "cannot list the pending runs of a revoked agent");
                return;
            }
        };
        for run in runs {
            let msg = format!(
                "agent {agent} was revoked before this run started; the run was never started"
            );
            if let Err(e) = self
                .finish_run_here(&run.id, v1::RunState::Failed, msg)
                .await
            {
                tracing::error!(error = %e, "cannot fail a pending run of a revoked agent");
            }
        }
    }

    /// Store a new run (validated against the agent's inventory) and dispatch it when its time
    /// has come and the agent is connected. Returns the run and whether it was new: a run whose
    /// id exists already (a duplicate scheduled fire) is returned unchanged.
    pub async fn create_run(&self, new: NewRun, validate: bool) -> Result<(v1::Run, bool), Status> {
        if new.steps.is_empty() {
            return Err(Status::invalid_argument("a run needs at least one step"));
        }
        let name = new.agent.clone();
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
                "no agent named {:?}; known agents: {}",
                new.agent,
                if known.is_empty() { "none yet" } else { &known }
            )));
        };
        self.check_not_revoked(&new.agent).await?;
        let schedule = (!new.schedule.is_empty() && new.continuation_of.is_empty())
            .then_some(new.schedule.as_str());
        if let Some(blocked) = self
            .run_blocked(&new.agent, schedule)
            .await
            .map_err(store_status)?
        {
            return Err(Status::failed_precondition(blocked.to_string()));
        }
        if validate {
            let specs: Vec<v1::StepSpec> = new
                .steps
                .iter()
                .map(|s| v1::StepSpec {
                    ma: s.ma.clone(),
                    profile: s.profile.clone(),
                })
                .collect();
            check_steps(&stored.agent, &specs)?;
        }
        let agent = new.agent.clone();
        let run = v1::Run {
            // Random (v4), not time-ordered (v7): the first 8 characters, which progress lines
            // show and `runs show` accepts as a prefix, must differ between runs created
            // together. Listings order by `created_at`.
            id: new.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            agent: new.agent,
            state: v1::RunState::Pending as i32,
            origin: new.origin,
            created_at: Some(now()),
            steps: new.steps,
            message: if self.is_connected(&agent) {
                String::new()
            } else {
                format!(
                    "agent {agent} is not connected; the run waits up to {} for it",
                    humantime::format_duration(self.settings.pending_deadline)
                )
            },
            requested_by: new.requested_by,
            schedule: new.schedule,
            sequence: new.sequence,
            nominal_time: new.nominal_time,
            on_failure: new.on_failure as i32,
            continuation_of: new.continuation_of,
            approved_steps: new.approved_steps,
            skip_steps: new.skip_steps,
            jitter_ms: new.jitter_ms,
            ..Default::default()
        };
        // The run's root span; its traceparent is stored with the run and sent in StartRun.
        let (run, span) = crate::telemetry::open_run_span(run);
        let inserted = store::blocking(&self.store, {
            let run = run.clone();
            move |s| s.insert_run(&run)
        })
        .await
        .map_err(store_status)?;
        if !inserted {
            let id = run.id.clone();
            let existing = store::blocking(&self.store, move |s| s.get_run(&id))
                .await
                .map_err(store_status)?;
            return Ok((existing.unwrap_or(run), false));
        }
        self.publish(&run);
        tracing::info!(parent: &span, run_id = %run.id, agent, steps = run.steps.len(), origin = %run.origin, "run created");
        tracing::Instrument::instrument(self.send_start(run.clone()), span).await;
        let id = run.id.clone();
        let current = store::blocking(&self.store, move |s| s.get_run(&id))
            .await
            .map_err(store_status)?;
        Ok((current.unwrap_or(run), true))
    }

    async fn get_pause(&self, key: &str) -> Result<Option<v1::Pause>, StoreError> {
        let k = key.to_string();
        let raw = store::blocking(&self.store, move |s| s.get_state(&k)).await?;
        raw.map(|b| {
            <v1::Pause as prost::Message>::decode(b.as_slice()).map_err(|e| StoreError::Corrupt {
                what: key.to_string(),
                detail: e.to_string(),
            })
        })
        .transpose()
        .map(|p| p.filter(|p| p.paused))
    }

    async fn put_pause(&self, key: &str, pause: &v1::Pause) -> Result<(), StoreError> {
        let k = key.to_string();
        let body = prost::Message::encode_to_vec(pause);
        store::blocking(&self.store, move |s| s.put_state(&k, &body)).await
    }

    /// The fleet-wide maintenance pause, when on.
    pub async fn fleet_pause(&self) -> Result<Option<v1::Pause>, StoreError> {
        self.get_pause("pause/fleet").await
    }

    pub async fn set_fleet_pause(&self, pause: &v1::Pause) -> Result<(), StoreError> {
        self.put_pause("pause/fleet", pause).await
    }

    /// A schedule's pause, when on.
    pub async fn schedule_pause(&self, schedule: &str) -> Result<Option<v1::Pause>, StoreError> {
        self.get_pause(&format!("pause/schedule/{schedule}")).await
    }

    /// The last pause record of a schedule, on or off (who resumed it, when).
    pub async fn schedule_pause_record(
        &self,
        schedule: &str,
    ) -> Result<Option<v1::Pause>, StoreError> {
        let k = format!("pause/schedule/{schedule}");
        let raw = store::blocking(&self.store, move |s| s.get_state(&k)).await?;
        Ok(raw.and_then(|b| <v1::Pause as prost::Message>::decode(b.as_slice()).ok()))
    }

    pub async fn set_schedule_pause(
        &self,
        schedule: &str,
        pause: &v1::Pause,
    ) -> Result<(), StoreError> {
        self.put_pause(&format!("pause/schedule/{schedule}"), pause)
            .await
    }

    /// Set or clear an agent's drain. Returns the agent, or `None` when unknown.
    pub async fn set_drain(
        &self,
        agent: &str,
        drain: v1::Pause,
    ) -> Result<Option<v1::Agent>, StoreError> {
        let _guard = self.run_lock.lock().await;
        let name = agent.to_string();
        let updated = store::blocking(&self.store, move |s| {
            let Some(mut stored) = s.get_agent(&name)? else {
                return Ok(None);
            };
            stored.agent.drain = Some(drain);
            s.put_agent(&stored.agent)?;
            Ok(Some(stored.agent))
        })
        .await?;
        Ok(updated.map(|a| self.agent_view(a)))
    }

    /// Approve a held run: create its continuation (the held step once with the guard lifted,
    /// then the rest of the plan) and link the two.
    pub async fn approve_run(&self, id: &str, who: &str, note: &str) -> Result<v1::Run, Status> {
        let rid = id.to_string();
        let held = store::blocking(&self.store, move |s| s.get_run(&rid))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no run with id {id:?}")))?;
        if state_of(&held) != v1::RunState::Held {
            return Err(Status::failed_precondition(format!(
                "run {id} is {}, not held; only held runs can be approved",
                state_of(&held).label()
            )));
        }
        if !held.continued_in.is_empty() {
            return Err(Status::failed_precondition(format!(
                "run {id} was already approved by {}; its continuation is run {}",
                held.approved_by, held.continued_in
            )));
        }
        let approved: Vec<u32> = held
            .steps
            .iter()
            .filter(|s| s.state == v1::StepState::Held as i32)
            .map(|s| s.index)
            .collect();
        let skip: Vec<u32> = held
            .steps
            .iter()
            .filter(|s| {
                s.state == v1::StepState::Done as i32 || s.state == v1::StepState::Skipped as i32
            })
            .map(|s| s.index)
            .collect();
        let steps = held
            .steps
            .iter()
            .map(|s| v1::Step {
                index: s.index,
                stage: s.stage,
                ma: s.ma.clone(),
                profile: s.profile.clone(),
                only_if: s.only_if,
                guard: s.guard,
                state: v1::StepState::Waiting as i32,
                ..Default::default()
            })
            .collect();
        let (run, _) = self
            .create_run(
                NewRun {
                    agent: held.agent.clone(),
                    steps,
                    origin: "approval".into(),
                    requested_by: who.to_string(),
                    schedule: held.schedule.clone(),
                    sequence: held.sequence.clone(),
                    on_failure: v1::OnFailure::try_from(held.on_failure).unwrap_or_default(),
                    continuation_of: held.id.clone(),
                    approved_steps: approved,
                    skip_steps: skip,
                    ..NewRun::default()
                },
                false,
            )
            .await?;
        {
            let _guard = self.run_lock.lock().await;
            let rid = id.to_string();
            let cont = run.id.clone();
            let who = who.to_string();
            let note = note.to_string();
            let updated = store::blocking(&self.store, move |s| {
                let Some(mut h) = s.get_run(&rid)? else {
                    return Ok(None);
                };
                h.continued_in = cont;
                h.approved_by = who;
                h.approved_at = Some(now());
                if !note.is_empty() {
                    h.message = format!("{} (approved: {note})", h.message);
                }
                s.put_runs(std::slice::from_ref(&h))?;
                Ok(Some(h))
            })
            .await
            .map_err(store_status)?;
            if let Some(h) = updated {
                self.publish(&h);
            }
        }
        Ok(run)
    }

    /// Dispatch a stored run now if it is still pending and due.
    pub async fn dispatch_run(&self, id: &str) {
        let id = id.to_string();
        if let Ok(Some(run)) = store::blocking(&self.store, move |s| s.get_run(&id)).await
            && state_of(&run) == v1::RunState::Pending
        {
            self.send_start(run).await;
        }
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
                            s.append_audit(&v1::AuditEntry {
                                at: Some(now()),
                                who: format!("agent/{agent_name}"),
                                action: "RunEvent".into(),
                                target: format!("run/{}", ev.run_id),
                                result: "denied".into(),
                                detail: format!(
                                    "event seq {} about a run of agent {} refused: agents may only report their own runs",
                                    ev.seq, r.agent
                                ),
                                ..Default::default()
                            })?;
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
            run.message = message;
            end_run(&mut run, state, "", now());
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
                    let created = run
                        .created_at
                        .as_ref()
                        .map_or(0, to_millis)
                        .max(Self::dispatch_at_ms(&run));
                    if now_ms >= Self::dispatch_at_ms(&run)
                        && now_ms - created < deadline_ms
                        && self.is_connected(&run.agent)
                    {
                        // Due (e.g. after its jitter) and its agent is here.
                        self.send_start(run).await;
                        continue;
                    }
                    if now_ms - created >= deadline_ms {
                        let deadline = humantime::format_duration(self.settings.pending_deadline);
                        let msg = match self.run_blocked(&run.agent, None).await {
                            Ok(Some(blocked)) => format!(
                                "not started within the pending deadline ({deadline}) because {blocked}; the run was never started"
                            ),
                            _ if self.is_connected(&run.agent) => format!(
                                "not started within the pending deadline ({deadline}); the run was never started"
                            ),
                            _ => format!(
                                "agent {} did not connect within the pending deadline ({deadline}); the run was never started",
                                run.agent
                            ),
                        };
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
                            self.orphan_runs(&a.name).await;
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "sweep: cannot list agents"),
        }
    }

    /// Runs that were sent to an agent now lost end `unknown`: their outcome may never be
    /// reported (if the agent returns with their events, those still apply).
    async fn orphan_runs(&self, agent: &str) {
        let name = agent.to_string();
        let runs = match store::blocking(&self.store, move |s| {
            s.runs_in_states(
                Some(&name),
                &[v1::RunState::Dispatched, v1::RunState::Running],
            )
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(agent, error = %e, "cannot list the runs of a lost agent");
                return;
            }
        };
        for run in runs {
            let msg = format!(
                "agent {agent} was lost (no session for {}) while this run was in flight; its outcome is unknown",
                humantime::format_duration(self.settings.agent_lost_after)
            );
            if let Err(e) = self
                .finish_run_here(&run.id, v1::RunState::Unknown, msg)
                .await
            {
                tracing::error!(error = %e, "cannot mark an orphaned run unknown");
            }
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
        assert_eq!(r.result, "", "no result before the run ends");
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
    fn an_interrupted_run_has_no_result_and_its_unfinished_steps_no_numbers() {
        let mut r = run();
        apply_event(&mut r, &ev(Kind::RunStarted(v1::RunStarted {})));
        apply_event(
            &mut r,
            &ev(Kind::StepFinished(v1::StepFinished {
                index: 0,
                result: "success".into(),
                ..Default::default()
            })),
        );
        apply_event(
            &mut r,
            &ev(Kind::StepStarted(v1::StepStarted {
                index: 1,
                ..Default::default()
            })),
        );
        apply_event(
            &mut r,
            &ev(Kind::StepProgress(v1::StepProgress {
                index: 1,
                progress: "10/200".into(),
                counters: Some(v1::StepCounters {
                    counters: [("stage-update".to_string(), 10u64)].into_iter().collect(),
                    outbound: Default::default(),
                }),
            })),
        );
        assert_eq!(r.state, v1::RunState::Running as i32);
        assert_eq!(r.result, "", "one of two steps done is not a success");
        apply_event(
            &mut r,
            &ev(Kind::RunFinished(v1::RunFinished {
                state: v1::RunState::Unknown as i32,
                result: String::new(),
                message: "the agent restarted".into(),
            })),
        );
        assert_eq!(r.state, v1::RunState::Unknown as i32);
        assert_eq!(r.result, "", "an unobserved outcome is not a success");
        assert_eq!(r.steps[0].result, "success");
        let s = &r.steps[1];
        assert_eq!(s.state, v1::StepState::NotRun as i32);
        assert!(s.started_at.is_none() && s.finished_at.is_none(), "{s:?}");
        assert!(s.counters.is_none() && s.progress.is_empty(), "{s:?}");
        assert!(s.detail.contains("not observed"), "{s:?}");
    }

    #[test]
    fn a_run_ended_without_a_final_result_takes_its_most_severe_step_result() {
        let mut r = run();
        for (index, result) in [(0, "completed-warnings"), (1, "success")] {
            apply_event(
                &mut r,
                &ev(Kind::StepFinished(v1::StepFinished {
                    index,
                    result: result.into(),
                    ..Default::default()
                })),
            );
        }
        assert_eq!(r.result, "");
        apply_event(
            &mut r,
            &ev(Kind::RunFinished(v1::RunFinished {
                state: v1::RunState::Succeeded as i32,
                ..Default::default()
            })),
        );
        assert_eq!(r.result, "completed-warnings");
    }

    #[tokio::test]
    async fn a_run_held_back_by_a_pause_past_the_deadline_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sqlite::SqliteStore::open(&dir.path().join("c.db")).unwrap());
        store
            .put_agent(&v1::Agent {
                name: "a".into(),
                ..Default::default()
            })
            .unwrap();
        let fleet = Fleet::new(
            Arc::clone(&store),
            Settings {
                heartbeat_interval: Duration::from_secs(1),
                agent_lost_after: Duration::from_secs(60),
                pending_deadline: Duration::from_secs(1),
            },
        );
        let mut r = run();
        r.state = v1::RunState::Pending as i32;
        r.created_at = Some(from_millis(Utc::now().timestamp_millis() - 10_000));
        store.insert_run(&r).unwrap();
        let pause = v1::Pause {
            paused: true,
            note: "MIM hotfix".into(),
            by: "operator/admin".into(),
            at: None,
        };
        fleet.set_fleet_pause(&pause).await.unwrap();
        // A new run is refused with the same reason.
        let refused = fleet
            .start_run(
                "a",
                vec![v1::StepSpec {
                    ma: "AD".into(),
                    profile: "Delta Import".into(),
                }],
                "manual",
                "operator/admin",
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("MIM hotfix"), "{refused:?}");
        fleet.sweep().await;
        let r = store.get_run("r").unwrap().unwrap();
        assert_eq!(r.state, v1::RunState::Failed as i32);
        assert!(
            r.message
                .contains("because the fleet is paused by operator/admin: MIM hotfix"),
            "{}",
            r.message
        );
        assert!(!r.message.contains("did not connect"), "{}", r.message);
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
