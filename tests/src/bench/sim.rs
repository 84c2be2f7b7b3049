//! The agent simulator: N agents in this process, one tokio task each on a shared runtime, each
//! with its own certificate and its own mTLS connection, speaking the real
//! `AgentService.Session` protocol: Hello; Welcome; heartbeats at the interval the Welcome
//! gives; a CommandAck for every command; RunStarted, StepStarted, StepFinished and
//! RunFinished events with a per-agent seq increasing by one, kept until an EventAck covers
//! them and replayed after a reconnect; a ScheduleSetAck for every ScheduleSet.
//!
//! The simulator records, for every StartRun, when the agent received it (wall clock), and
//! counts events sent and acknowledged. The orchestrator steers all agents at once through a
//! broadcast channel (drop and reconnect, emit a round of events, stop).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use syncfleet_proto::v1::{
    self, agent_event::Kind, agent_message::Msg as AgentMsg,
    agent_service_client::AgentServiceClient, command::Kind as CommandKind,
    controller_message::Msg as CtrlMsg,
};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint, Identity};

use super::controller::{Access, error_chain};
use super::enroll::{AgentIdentity, LABEL};
use super::error::{BenchError, Result, wait_until};

/// The management agent and run profile every simulated engine has.
pub const MA: &str = "AD";
pub const PROFILE: &str = "Delta Import";

/// How long the whole simulated fleet may take to connect, per agent (on top of a minute).
const CONNECT_PER_AGENT: Duration = Duration::from_millis(20);

/// A StartRun as one simulated agent received it.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub run_id: String,
    /// Index of the agent that received it.
    pub agent: u32,
    /// Wall-clock time of receipt, Unix milliseconds.
    pub at_ms: f64,
}

/// What the simulated agents do with a StartRun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RunMode {
    /// Execute it at once: RunStarted, per step StepStarted and StepFinished, RunFinished.
    Complete = 0,
    /// Accept it and keep it for the next [`Control::Emit`].
    Hold = 1,
}

/// A command to every simulated agent.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// Drop the session and its connection, then connect again at once.
    Reconnect,
    /// Send `events_per_run` events for the next held run as fast as the stream takes them.
    Emit,
    /// End the agent.
    Stop,
}

/// State shared by all simulated agents and the orchestrator.
#[derive(Debug, Default)]
pub struct Shared {
    pub accepted: Mutex<Vec<Accepted>>,
    /// Welcomes received (all sessions, all agents).
    pub welcomes: AtomicU64,
    pub events_sent: AtomicU64,
    pub events_acked: AtomicU64,
    /// Events sent by rounds of the events phase, and those of them acknowledged.
    pub round_events_sent: AtomicU64,
    pub round_events_acked: AtomicU64,
    /// Agents whose last emitted round is fully acknowledged.
    pub rounds_done: AtomicU64,
    /// Emit commands that found no held run.
    pub rounds_without_run: AtomicU64,
    /// StartRun commands for a run id the agent had already accepted.
    pub duplicates: AtomicU64,
    /// Sessions that ended other than by a Reconnect or Stop, and failed connects.
    pub session_failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// When the latest Welcome arrived, Unix microseconds.
    pub last_welcome_us: AtomicU64,
    /// When the latest round of events was fully acknowledged at an agent, Unix microseconds.
    pub last_round_done_us: AtomicU64,
    mode: AtomicU8,
}

impl Shared {
    pub fn set_mode(&self, mode: RunMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> RunMode {
        if self.mode.load(Ordering::SeqCst) == RunMode::Hold as u8 {
            RunMode::Hold
        } else {
            RunMode::Complete
        }
    }

    fn failed(&self, what: String) {
        self.session_failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(what);
    }

    /// The StartRuns received so far (a copy).
    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn accepted_count(&self) -> usize {
        self.accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The last session error, for timeout messages.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "no session error seen".into())
    }
}

/// The simulated fleet.
#[derive(Debug)]
pub struct SimFleet {
    pub shared: Arc<Shared>,
    pub names: Vec<String>,
    control: broadcast::Sender<Control>,
    tasks: JoinSet<()>,
}

impl SimFleet {
    /// Starts one task per identity and waits until every agent has its Welcome; at most
    /// `parallelism` first connects are in flight at once.
    pub async fn start(
        access: &Access,
        identities: Vec<AgentIdentity>,
        events_per_run: u32,
        parallelism: usize,
    ) -> Result<SimFleet> {
        let shared = Arc::new(Shared::default());
        let (control, _) = broadcast::channel(16);
        let gate = Arc::new(Semaphore::new(parallelism.max(1)));
        let mut tasks = JoinSet::new();
        let n = identities.len();
        let mut names = Vec::with_capacity(n);
        for (i, id) in identities.into_iter().enumerate() {
            names.push(id.name.clone());
            let tls = access.tls(Some(Identity::from_pem(&id.cert_pem, &id.key_pem)));
            let endpoint = Endpoint::from_shared(access.url.clone())
                .and_then(|e| e.tls_config(tls))
                .map_err(|e| BenchError::Connect {
                    url: access.url.clone(),
                    cause: e.to_string(),
                })?
                .connect_timeout(Duration::from_secs(60))
                // As the real agent: an HTTP/2 ping every 10 s.
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true);
            let agent = SimAgent {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                name: id.name,
                endpoint,
                shared: Arc::clone(&shared),
                events_per_run,
                next_seq: 1,
                acked: 0,
                outbox: VecDeque::new(),
                held: VecDeque::new(),
                round_target: None,
                seen: HashSet::new(),
            };
            tasks.spawn(agent.run(control.subscribe(), Arc::clone(&gate)));
        }
        let fleet = SimFleet {
            shared,
            names,
            control,
            tasks,
        };
        let timeout = Duration::from_secs(60) + CONNECT_PER_AGENT * u32::try_from(n).unwrap_or(0);
        let shared = Arc::clone(&fleet.shared);
        wait_until(
            format!("{n} simulated agents to be welcomed"),
            timeout,
            || (shared.welcomes.load(Ordering::SeqCst) >= n as u64).then_some(()),
        )
        .await
        .map_err(|e| {
            BenchError::Failed(format!("{e} (last session error: {})", shared.last_error()))
        })?;
        Ok(fleet)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Sends `c` to every agent.
    pub fn broadcast(&self, c: Control) {
        // No receivers only when every agent has ended, which `stop` alone causes.
        let _ = self.control.send(c);
    }

    /// Ends every agent and waits for their tasks.
    pub async fn stop(mut self) {
        self.broadcast(Control::Stop);
        let bounded = tokio::time::timeout(Duration::from_secs(30), async {
            while self.tasks.join_next().await.is_some() {}
        });
        if bounded.await.is_err() {
            self.tasks.abort_all();
        }
    }
}

/// Why a session ended.
enum Ended {
    Reconnect,
    Stop,
    Lost,
}

/// One simulated agent.
struct SimAgent {
    index: u32,
    name: String,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    events_per_run: u32,
    /// The seq of the next event.
    next_seq: u64,
    /// The highest seq the controller acknowledged.
    acked: u64,
    /// Events sent and not yet acknowledged (replayed after a reconnect).
    outbox: VecDeque<v1::AgentEvent>,
    /// Runs accepted in [`RunMode::Hold`], waiting for an [`Control::Emit`].
    held: VecDeque<String>,
    /// The seq whose acknowledgement completes the current round.
    round_target: Option<u64>,
    /// Run ids accepted (an agent never executes a run id twice).
    seen: HashSet<String>,
}

impl SimAgent {
    async fn run(mut self, mut control: broadcast::Receiver<Control>, gate: Arc<Semaphore>) {
        let mut first = Some(gate);
        loop {
            let permit = match &first {
                Some(g) => Arc::clone(g).acquire_owned().await.ok(),
                None => None,
            };
            match self.session(&mut control, permit).await {
                Ended::Stop => return,
                Ended::Reconnect => {}
                Ended::Lost => tokio::time::sleep(Duration::from_millis(500)).await,
            }
            first = None;
        }
    }

    fn hello(&self) -> v1::AgentMessage {
        v1::AgentMessage {
            msg: Some(AgentMsg::Hello(v1::Hello {
                name: self.name.clone(),
                agent_version: "fleet-bench".into(),
                labels: [(LABEL.0.to_string(), LABEL.1.to_string())].into(),
                engine: Some(v1::EngineInfo {
                    kind: "sim".into(),
                    version: "fleet-bench".into(),
                }),
                inventory: vec![v1::ManagementAgent {
                    name: MA.into(),
                    guid: String::new(),
                    r#type: "AD".into(),
                    run_profiles: vec![v1::RunProfile {
                        name: PROFILE.into(),
                        step_types: vec!["delta-import".into()],
                    }],
                }],
                runs_in_flight: Vec::new(),
                last_event_seq: self.next_seq - 1,
                hostname: "fleet-bench".into(),
                autonomy: Vec::new(),
                autonomous_since: None,
                autonomy_after_seconds: 0,
                schedule_set_version: 0,
            })),
        }
    }

    /// One session: connect, Hello, Welcome, then messages until it ends.
    async fn session(
        &mut self,
        control: &mut broadcast::Receiver<Control>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Ended {
        let channel = match self.endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                self.shared
                    .failed(format!("{}: connect: {}", self.name, error_chain(&e)));
                return Ended::Lost;
            }
        };
        let (tx, rx) = mpsc::channel(256);
        // The receiver is alive: this cannot fail.
        let _ = tx.send(self.hello()).await;
        let mut client = AgentServiceClient::new(channel);
        let mut inbound = match client.session(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                self.shared
                    .failed(format!("{}: session refused: {s}", self.name));
                return Ended::Lost;
            }
        };
        let welcome = match inbound.next().await {
            Some(Ok(v1::ControllerMessage {
                msg: Some(CtrlMsg::Welcome(w)),
            })) => w,
            other => {
                self.shared
                    .failed(format!("{}: no Welcome, got {other:?}", self.name));
                return Ended::Lost;
            }
        };
        drop(permit);
        self.on_ack(welcome.acked_event_seq);
        self.shared
            .last_welcome_us
            .fetch_max(now_us(), Ordering::SeqCst);
        self.shared.welcomes.fetch_add(1, Ordering::SeqCst);
        // Replay what the controller has not stored.
        for ev in self.outbox.clone() {
            if tx.send(event_msg(ev)).await.is_err() {
                return Ended::Lost;
            }
        }
        let every = Duration::from_secs(u64::from(welcome.heartbeat_interval_seconds.max(1)));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(m)) => {
                        if self.on_message(m, &tx).await.is_err() {
                            return Ended::Lost;
                        }
                    }
                    Some(Err(s)) => {
                        self.shared.failed(format!("{}: session failed: {s}", self.name));
                        return Ended::Lost;
                    }
                    None => {
                        self.shared.failed(format!("{}: session closed by the controller", self.name));
                        return Ended::Lost;
                    }
                },
                _ = heartbeat.tick() => {
                    let hb = v1::AgentMessage {
                        msg: Some(AgentMsg::Heartbeat(v1::Heartbeat {
                            sent_at: Some(syncfleet_proto::time::now()),
                            engine_healthy: true,
                            ..Default::default()
                        })),
                    };
                    if tx.send(hb).await.is_err() {
                        return Ended::Lost;
                    }
                }
                c = control.recv() => match c {
                    Ok(Control::Reconnect) => return Ended::Reconnect,
                    Ok(Control::Stop) | Err(broadcast::error::RecvError::Closed) => return Ended::Stop,
                    Ok(Control::Emit) => {
                        if self.emit_round(&tx).await.is_err() {
                            return Ended::Lost;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                },
            }
        }
    }

    /// The controller stored every event up to `seq`.
    fn on_ack(&mut self, seq: u64) {
        if seq > self.acked {
            let newly = seq.min(self.next_seq - 1).saturating_sub(self.acked);
            self.shared.events_acked.fetch_add(newly, Ordering::SeqCst);
            self.acked = seq;
        }
        while self.outbox.front().is_some_and(|e| e.seq <= self.acked) {
            self.outbox.pop_front();
        }
        if self.round_target.is_some_and(|t| self.acked >= t) {
            self.round_target = None;
            self.shared
                .round_events_acked
                .fetch_add(u64::from(self.events_per_run), Ordering::SeqCst);
            self.shared
                .last_round_done_us
                .fetch_max(now_us(), Ordering::SeqCst);
            self.shared.rounds_done.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn on_message(
        &mut self,
        m: v1::ControllerMessage,
        tx: &mpsc::Sender<v1::AgentMessage>,
    ) -> std::result::Result<(), ()> {
        let send = |msg| async move { tx.send(v1::AgentMessage { msg: Some(msg) }).await };
        match m.msg {
            Some(CtrlMsg::EventAck(a)) => self.on_ack(a.up_to_seq),
            Some(CtrlMsg::ScheduleSet(set)) => {
                send(AgentMsg::ScheduleSetAck(v1::ScheduleSetAck {
                    version: set.version,
                }))
                .await
                .map_err(drop)?;
            }
            Some(CtrlMsg::Command(cmd)) => {
                let mut ack = v1::CommandAck {
                    command_id: cmd.command_id.clone(),
                    accepted: true,
                    reason: String::new(),
                    duplicate: false,
                };
                let mut start = None;
                match cmd.kind {
                    Some(CommandKind::StartRun(s)) => {
                        let at_ms = now_ms();
                        if self.seen.insert(s.run_id.clone()) {
                            self.shared
                                .accepted
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(Accepted {
                                    run_id: s.run_id.clone(),
                                    agent: self.index,
                                    at_ms,
                                });
                            start = Some(s);
                        } else {
                            ack.duplicate = true;
                            self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(CommandKind::CancelRun(_)) | None => {}
                }
                send(AgentMsg::CommandAck(ack)).await.map_err(drop)?;
                if let Some(s) = start {
                    match self.shared.mode() {
                        RunMode::Hold => self.held.push_back(s.run_id),
                        RunMode::Complete => self.complete(&s, tx).await?,
                    }
                }
            }
            Some(CtrlMsg::Welcome(_)) | None => {}
        }
        Ok(())
    }

    /// Sends one event for `run_id` (kept in the outbox until acknowledged).
    async fn event(
        &mut self,
        run_id: &str,
        kind: Kind,
        tx: &mpsc::Sender<v1::AgentMessage>,
    ) -> std::result::Result<(), ()> {
        let ev = v1::AgentEvent {
            seq: self.next_seq,
            at: Some(syncfleet_proto::time::now()),
            run_id: run_id.to_string(),
            kind: Some(kind),
        };
        self.next_seq += 1;
        self.outbox.push_back(ev.clone());
        self.shared.events_sent.fetch_add(1, Ordering::SeqCst);
        tx.send(event_msg(ev)).await.map_err(drop)
    }

    /// Executes a run at once: every step succeeds.
    async fn complete(
        &mut self,
        s: &v1::StartRun,
        tx: &mpsc::Sender<v1::AgentMessage>,
    ) -> std::result::Result<(), ()> {
        let steps = if s.stages.is_empty() {
            s.steps.len()
        } else {
            s.stages.iter().map(|st| st.steps.len()).sum()
        };
        let run = s.run_id.as_str();
        self.event(run, Kind::RunStarted(v1::RunStarted::default()), tx)
            .await?;
        for i in 0..steps {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            self.event(run, step_started(index), tx).await?;
            self.event(run, step_finished(index), tx).await?;
        }
        self.event(run, run_finished(), tx).await
    }

    /// One round of the events phase: `events_per_run` events for the next held run.
    async fn emit_round(
        &mut self,
        tx: &mpsc::Sender<v1::AgentMessage>,
    ) -> std::result::Result<(), ()> {
        let Some(run) = self.held.pop_front() else {
            self.shared
                .rounds_without_run
                .fetch_add(1, Ordering::SeqCst);
            self.shared.rounds_done.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        };
        self.event(&run, Kind::RunStarted(v1::RunStarted::default()), tx)
            .await?;
        self.event(&run, step_started(0), tx).await?;
        for p in 0..self.events_per_run.saturating_sub(4) {
            let progress = Kind::StepProgress(v1::StepProgress {
                index: 0,
                progress: format!("{}/{}", p + 1, self.events_per_run - 4),
                counters: Some(counters(u64::from(p))),
            });
            self.event(&run, progress, tx).await?;
        }
        self.event(&run, step_finished(0), tx).await?;
        self.event(&run, run_finished(), tx).await?;
        self.round_target = Some(self.next_seq - 1);
        self.shared
            .round_events_sent
            .fetch_add(u64::from(self.events_per_run), Ordering::SeqCst);
        // Already acknowledged (cannot happen before the sends above, but keeps the count right).
        self.on_ack(self.acked);
        Ok(())
    }
}

fn event_msg(ev: v1::AgentEvent) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(AgentMsg::Event(ev)),
    }
}

fn counters(n: u64) -> v1::StepCounters {
    v1::StepCounters {
        counters: [
            ("stage-update".to_string(), n),
            ("stage-add".to_string(), 1),
        ]
        .into(),
        outbound: Default::default(),
    }
}

fn step_started(index: u32) -> Kind {
    Kind::StepStarted(v1::StepStarted {
        index,
        ma: MA.into(),
        profile: PROFILE.into(),
        run_number: 1,
        pending: None,
        attempt: 1,
    })
}

fn step_finished(index: u32) -> Kind {
    let now = syncfleet_proto::time::now();
    Kind::StepFinished(v1::StepFinished {
        index,
        result: "success".into(),
        started_at: Some(now),
        finished_at: Some(now),
        counters: Some(counters(3)),
        run_number: 1,
        connection_result: "success".into(),
        error_count: 0,
        detail: String::new(),
        ..Default::default()
    })
}

fn run_finished() -> Kind {
    Kind::RunFinished(v1::RunFinished {
        state: v1::RunState::Succeeded as i32,
        result: "success".into(),
        message: String::new(),
    })
}

/// Wall-clock now, Unix microseconds.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Wall-clock now, Unix milliseconds with sub-millisecond precision.
pub fn now_ms() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_secs_f64() * 1000.0
}
